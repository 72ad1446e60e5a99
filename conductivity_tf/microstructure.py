"""Synthetic microstructures: plain functions, numpy out, seeded, no TensorFlow.

Every generator returns a uint8 array of shape (size, size, size) (or the given 3-tuple) with
1 = conducting phase (electrolyte-filled pore unless a generator says otherwise) and 0 = insulating,
and hits the requested porosity (conducting volume fraction) within 0.01 at 64^3 or larger.
Lengths (radius, correlation length) are in voxels.

>>> v = blobs(32, porosity=0.4, correlation_length=3, seed=1)
>>> v.dtype, v.shape, round(float(v.mean()), 2)
(dtype('uint8'), (32, 32, 32), 0.4)

Families: ``blobs`` (Gaussian random field, isotropic or anisotropic), ``overlapping_spheres``
(mono/polydisperse, either phase conducting), ``packed_spheres`` (non-overlapping particles),
``fibres`` (straight cylinders with an orientation spread), ``graded`` (porosity varying along an axis,
smoothly or in layers), ``spheroids`` (oriented rods and flakes), ``electrode`` (active particles, a
carbon-binder domain at necks and on surfaces, and pores; any phase conducting), ``granular`` (grain packings
consolidated by overgrowth and cement, porosity down to ~0.1, pores joined by thin throats) and ``foam``
(Voronoi struts or walls). ``generate(family, ...)`` dispatches by name; ``FAMILIES`` lists them.
"""

import math

import numpy as np
import scipy.ndimage
import scipy.spatial
from numba import njit

from conductivity_tf.errors import UserError


def _shape(size):
    shape = (int(size),) * 3 if np.isscalar(size) else tuple(int(s) for s in size)
    if len(shape) != 3 or min(shape) < 2:
        raise UserError("size {} is invalid; give an edge >= 2 or three of them".format(size))
    return shape


def _check_porosity(porosity, low=0.0, high=1.0, family=""):
    if not low < porosity < high:
        raise UserError("porosity {} is out of range for {}; use a value in ({}, {})".format(
            porosity, family or "this generator", low, high))


def _threshold(field, porosity):
    """1 where ``field`` is among the lowest ``porosity`` fraction of values (exact up to ties)."""
    flat = field.ravel()
    count = int(round(porosity * flat.size))
    out = np.zeros(flat.size, np.uint8)
    if count:
        out[np.argpartition(flat, count - 1)[:count]] = 1
    return out.reshape(field.shape)


def gaussian_field(size, correlation_length=4.0, seed=0):
    """A smooth Gaussian random field (periodic), unit variance; anisotropic with three lengths."""
    shape = _shape(size)
    lengths = np.broadcast_to(np.asarray(correlation_length, dtype=float), (3,))
    if np.any(lengths <= 0):
        raise UserError("correlation_length {} must be positive".format(correlation_length))
    rng = np.random.default_rng(seed)
    field = scipy.ndimage.gaussian_filter(rng.standard_normal(shape), sigma=lengths, mode="wrap")
    return (field - field.mean()) / (field.std() or 1.0)


def blobs(size, porosity=0.4, correlation_length=4.0, seed=0):
    """Gaussian-random-field "blobs": the field thresholded at the porosity quantile.

    correlation_length: a number (isotropic) or three (z, y, x) for anisotropic structures.
    """
    _check_porosity(porosity, family="blobs")
    return _threshold(gaussian_field(size, correlation_length, seed), porosity)


def _radii(rng, count, radius, polydispersity):
    if polydispersity <= 0:
        return np.full(count, float(radius))
    # log-normal radii with the given coefficient of variation, mean ``radius``
    s2 = math.log(1.0 + polydispersity ** 2)
    return radius * np.exp(rng.normal(-s2 / 2.0, math.sqrt(s2), count))


def _add_sphere(solid, centre, r):
    lo = [max(0, int(math.floor(c - r))) for c in centre]
    hi = [min(n, int(math.ceil(c + r)) + 1) for c, n in zip(centre, solid.shape)]
    if any(h <= low for low, h in zip(lo, hi)):
        return 0
    grids = np.ogrid[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
    inside = sum((g - c) ** 2 for g, c in zip(grids, centre)) <= r * r
    region = solid[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
    added = int(np.count_nonzero(inside & ~region))
    region |= inside
    return added


def overlapping_spheres(size, porosity=0.5, radius=4.0, polydispersity=0.0, conducting="pores", seed=0):
    """Randomly placed, freely overlapping spheres (the Boolean model).

    porosity: volume fraction of the conducting phase.
    conducting: 'pores' (the space between spheres conducts) or 'spheres' (the spheres conduct).
    polydispersity: coefficient of variation of log-normal radii (0 = monodisperse).
    Spheres are added one by one until the sphere fraction is reached (overshoot < one sphere).
    """
    _check_porosity(porosity, family="overlapping_spheres")
    if conducting not in ("pores", "spheres"):
        raise UserError("conducting={!r} is invalid; use 'pores' or 'spheres'".format(conducting))
    if radius <= 0:
        raise UserError("radius must be positive")
    shape = _shape(size)
    rng = np.random.default_rng(seed)
    sphere_fraction = 1.0 - porosity if conducting == "pores" else porosity
    target = int(round(sphere_fraction * np.prod(shape)))
    solid = np.zeros(shape, bool)
    filled = 0
    while filled < target:
        batch = 64
        centres = rng.uniform(0, 1, (batch, 3)) * np.array(shape)
        radii = _radii(rng, batch, radius, polydispersity)
        for c, r in zip(centres, radii):
            filled += _add_sphere(solid, c, r)
            if filled >= target:
                break
    phase = ~solid if conducting == "pores" else solid
    return phase.astype(np.uint8)


def packed_spheres(size, porosity=0.65, radius=5.0, polydispersity=0.2, seed=0, return_particles=False):
    """Non-overlapping spherical particles; the pores conduct.

    Random sequential addition that only tries where a particle fits: the Euclidean distance transform
    of the free space gives every voxel's clearance, a centre is drawn among the voxels whose clearance
    exceeds the particle's radius plus a gap, and a batch of particles is placed per transform (checked
    against each other). When no place is left for the current radius it shrinks by 20 % (small particles
    fill the gaps, as in a polydisperse powder), down to single voxels. Random packing of this kind reaches
    about 40 % particles, so the porosity must be at least 0.6. The last particle may overshoot by its
    own volume. With ``return_particles`` also return the centres (N, 3) and radii (N,).
    """
    _check_porosity(porosity, 0.6, 1.0, family="packed_spheres")
    if radius <= 0:
        raise UserError("radius must be positive")
    shape = _shape(size)
    rng = np.random.default_rng(seed)
    target = int(round((1.0 - porosity) * np.prod(shape)))
    solid = np.zeros(shape, bool)
    centres, radii_placed = [], []
    filled, scale = 0, 1.0
    # Above 64^3 each distance transform serves proportionally more placements, drawn from the clearances
    # sorted once per transform: one transform per 16 particles and a scan of the volume per particle made the
    # cost grow as the square of the volume (41 s at 128^3). Up to 64^3 the draws are those of the plain
    # scan, so the datasets built from this generator stay as they were.
    large = int(np.prod(shape)) > 64 ** 3
    tries = 16 * max(1, int(np.prod(shape)) // 64 ** 3)
    while filled < target:
        clearance = scipy.ndimage.distance_transform_edt(~solid) if solid.any() else np.full(shape, np.inf)
        if large:
            order = np.argsort(clearance.ravel(), kind="stable")
            ranked = clearance.ravel()[order]
        placed_now = 0
        for _ in range(tries):
            r = float(_radii(rng, 1, radius * scale, polydispersity)[0])
            if large:
                first = int(np.searchsorted(ranked, r + 1.0, side="left"))
                if first == len(ranked):
                    break
                index = order[int(rng.integers(first, len(ranked)))]
            else:
                candidates = np.flatnonzero(clearance.ravel() >= r + 1.0)
                if not len(candidates):
                    break
                index = candidates[int(rng.integers(len(candidates)))]
            c = np.array(np.unravel_index(index, shape), float)
            if placed_now and np.any(np.sqrt(((np.array(centres[-placed_now:]) - c) ** 2).sum(axis=1))
                                     < r + np.array(radii_placed[-placed_now:]) + 0.5):
                continue
            filled += _add_sphere(solid, c, r)
            centres.append(c)
            radii_placed.append(r)
            placed_now += 1
            if filled >= target:
                break
        if not placed_now:
            scale *= 0.8
            if radius * scale < 0.6:
                raise UserError("packed_spheres jammed at porosity {:.3f} before reaching {}; use a higher "
                                "porosity".format(1 - filled / np.prod(shape), porosity))
    volume = (~solid).astype(np.uint8)
    if return_particles:
        return volume, np.array(centres).reshape(-1, 3), np.array(radii_placed)
    return volume


def _fibre_distance(shape, point, direction):
    grids = np.ogrid[0:shape[0], 0:shape[1], 0:shape[2]]
    rel = [g - p for g, p in zip(grids, point)]
    along = sum(r * d for r, d in zip(rel, direction))
    return sum(r * r for r in rel) - along * along


def fibres(size, porosity=0.7, radius=2.0, axis=0, spread=15.0, seed=0):
    """A mat of straight cylindrical fibres; the space between them conducts.

    Fibres lie in the plane normal to ``axis`` (as in paper, felt and gas-diffusion layers), with
    out-of-plane angles drawn from a normal distribution of standard deviation ``spread`` degrees and
    uniformly distributed in-plane directions. spread=90 gives nearly isotropic orientations.
    """
    _check_porosity(porosity, family="fibres")
    if radius <= 0 or axis not in (0, 1, 2):
        raise UserError("fibres need radius > 0 and axis 0, 1 or 2")
    shape = _shape(size)
    rng = np.random.default_rng(seed)
    target = int(round((1.0 - porosity) * np.prod(shape)))
    solid = np.zeros(shape, bool)
    filled = 0
    others = [a for a in (0, 1, 2) if a != axis]
    while filled < target:
        tilt = math.radians(rng.normal(0.0, spread))
        phi = rng.uniform(0, 2 * math.pi)
        direction = np.zeros(3)
        direction[axis] = math.sin(tilt)
        direction[others[0]] = math.cos(tilt) * math.cos(phi)
        direction[others[1]] = math.cos(tilt) * math.sin(phi)
        point = rng.uniform(0, 1, 3) * np.array(shape)
        inside = _fibre_distance(shape, point, direction) <= radius * radius
        new = inside & ~solid
        count = int(np.count_nonzero(new))
        solid |= new  # the last fibre may overshoot: < 1 % of 64^3 for radius <= 3
        filled += count
    return (~solid).astype(np.uint8)


def graded(size, porosity_start=0.6, porosity_end=0.3, axis=0, correlation_length=3.0, layers=0, seed=0):
    """An electrode whose porosity varies along ``axis``: a Gaussian random field thresholded slice by
    slice so that the porosity goes linearly from ``porosity_start`` to ``porosity_end`` (``layers=0``)
    or in ``layers`` equal layers, the first at ``porosity_start`` and the last at ``porosity_end``.
    The mean porosity is the mean of the two.
    """
    for p in (porosity_start, porosity_end):
        _check_porosity(p, family="graded")
    shape = _shape(size)
    field = np.moveaxis(gaussian_field(shape, correlation_length, seed), axis, 0)
    n = field.shape[0]
    t = (np.arange(n) + 0.5) / n
    if layers > 1:  # equal layers, the first at porosity_start and the last at porosity_end
        t = np.floor(t * layers) / (layers - 1)
    profile = porosity_start + (porosity_end - porosity_start) * t
    out = np.stack([_threshold(field[i], profile[i]) for i in range(n)])
    return np.ascontiguousarray(np.moveaxis(out, 0, axis))


def graded_mean_porosity(porosity_start, porosity_end):
    return 0.5 * (porosity_start + porosity_end)


def _unit_vectors(rng, count, axis, spread):
    """``count`` unit vectors (z, y, x) scattered around ``axis`` with an angular spread of ``spread`` degrees
    (normal, folded); spread >= 90 gives uniformly random directions."""
    if spread >= 90:
        v = rng.standard_normal((count, 3))
    else:
        tilt = np.radians(np.abs(rng.normal(0.0, spread, count)))
        phi = rng.uniform(0, 2 * math.pi, count)
        others = [a for a in (0, 1, 2) if a != axis]
        v = np.zeros((count, 3))
        v[:, axis] = np.cos(tilt)
        v[:, others[0]] = np.sin(tilt) * np.cos(phi)
        v[:, others[1]] = np.sin(tilt) * np.sin(phi)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


@njit(cache=True)
def _spheroid_field(shape, centres, semi, directions, reach):
    """min over spheroids of the normalised distance sqrt((r.u)^2 / c^2 + (|r|^2 - (r.u)^2) / a^2), out to
    ``reach`` x each particle's long semi-axis, periodic (each box at most one period along an axis)."""
    field = np.full((shape[0], shape[1], shape[2]), np.inf)
    for p in range(centres.shape[0]):
        a, c = semi[p, 0], semi[p, 1]
        u0, u1, u2 = directions[p, 0], directions[p, 1], directions[p, 2]
        spans = np.empty(3, np.int64)
        starts = np.empty(3, np.int64)
        for d in range(3):
            spans[d] = min(2 * int(np.ceil(reach * max(a, c))) + 3, shape[d])
            starts[d] = int(np.floor(centres[p, d])) - spans[d] // 2
        for i in range(starts[0], starts[0] + spans[0]):
            r0 = i - centres[p, 0]
            for j in range(starts[1], starts[1] + spans[1]):
                r1 = j - centres[p, 1]
                for k in range(starts[2], starts[2] + spans[2]):
                    r2 = k - centres[p, 2]
                    along = r0 * u0 + r1 * u1 + r2 * u2
                    q = along * along / (c * c) + (r0 * r0 + r1 * r1 + r2 * r2 - along * along) / (a * a)
                    x, y, z = i % shape[0], j % shape[1], k % shape[2]
                    if q < field[x, y, z]:
                        field[x, y, z] = q
    return field


def spheroids(size, porosity=0.5, radius=2.0, aspect=4.0, axis=0, spread=90.0, polydispersity=0.2,
              conducting="pores", seed=0):
    """Freely overlapping spheroids: elongated rods (``aspect`` > 1) or flat flakes (``aspect`` < 1), their
    axes oriented around ``axis`` with an angular spread of ``spread`` degrees (0 = all aligned, 90 = random):
    graphite anodes, calendered cathodes, clay and flake packings.

    radius: the short semi-axis (a rod's radius, half a flake's thickness); the long one is
    ``radius * max(aspect, 1 / aspect)`` (documented ranges: radius 1 to 5 voxels, aspect 1/8 to 8).
    polydispersity: coefficient of variation of log-normal sizes. conducting: 'pores' or 'particles'. Periodic.
    The union is thresholded on the particles' normalised distance, so the porosity is exact and every
    particle keeps its shape (all scaled by the same factor, close to 1).
    """
    _check_porosity(porosity, family="spheroids")
    if conducting not in ("pores", "particles"):
        raise UserError("conducting={!r} is invalid; use 'pores' or 'particles'".format(conducting))
    if radius <= 0 or not 1.0 / 16 <= aspect <= 16 or axis not in (0, 1, 2):
        raise UserError("spheroids need radius > 0, aspect in [1/16, 16] and axis 0, 1 or 2")
    shape = _shape(size)
    rng = np.random.default_rng(seed)
    fraction = 1.0 - porosity if conducting == "pores" else porosity
    a, c = (radius, radius * aspect) if aspect >= 1 else (radius / aspect, radius)  # equatorial, polar semi-axes
    mean_volume = 4.0 / 3.0 * math.pi * a * a * c * (1.0 + polydispersity ** 2) ** 3
    # the Boolean model covers 1 - exp(-n v); 40 % more particles, so that the threshold scales them down a little
    count = max(4, int(math.ceil(1.4 * -math.log(1.0 - fraction) * np.prod(shape) / mean_volume)))
    centres = rng.uniform(0, 1, (count, 3)) * np.array(shape)
    scales = _radii(rng, count, 1.0, polydispersity)
    directions = _unit_vectors(rng, count, axis, spread)
    semi = np.stack([a * scales, c * scales], axis=1)
    field = _spheroid_field(np.array(shape, np.int64), centres, semi, directions, 1.3)  # squared distances
    particles = _threshold(field, fraction)
    return particles if conducting == "particles" else (1 - particles).astype(np.uint8)


ELECTRODE_PHASES = {"pores": 0, "active": 1, "binder": 2}


def _separated_centres(rng, shape, radii, separation, tries=48):
    """Centres (periodic) for particles of ``radii``, placed largest first by random sequential addition, each at
    least ``separation`` x (r_i + r_j) from every centre placed before it; a particle that finds no such place among
    ``tries`` candidates looks again 5 % closer (so a dense packing overlaps a little). Returns the centres and
    the radii in placement order."""
    box = np.asarray(shape, float)
    placed = np.sort(radii)[::-1]
    centres = np.empty((len(placed), 3))
    for n, r in enumerate(placed):
        reach = separation * (r + placed[:n])
        while True:
            candidates = rng.uniform(0, 1, (tries, 3)) * box
            gaps = candidates[:, None, :] - centres[None, :n]
            gaps -= box * np.round(gaps / box)
            fits = np.all(np.einsum("ijk,ijk->ij", gaps, gaps) >= reach * reach, axis=1)
            if fits.any():
                centres[n] = candidates[np.argmax(fits)]
                break
            reach = reach * 0.95
    return centres, placed


def _separated_particles(shape, rng, fraction, radius, polydispersity, separation, roughness):
    """Particles at a volume ``fraction``: centres kept apart (``_separated_centres``), then every particle grown
    by the same factor until the fraction is reached (the union thresholded on the normalised distance to the
    nearest centre), their surfaces made lumpy by a smooth random field of amplitude ``roughness``."""
    mean_volume = 4.0 / 3.0 * math.pi * radius ** 3 * (1.0 + polydispersity ** 2) ** 3
    count = max(2, int(round(fraction * np.prod(shape) / mean_volume)))
    centres, radii = _separated_centres(rng, shape, _radii(rng, count, radius, polydispersity), separation)
    semi = np.stack([radii, radii], axis=1)
    directions = np.tile([1.0, 0.0, 0.0], (count, 1))
    distance = np.sqrt(_spheroid_field(np.array(shape, np.int64), centres, semi, directions, 2.0))
    if roughness:
        lumps = scipy.ndimage.gaussian_filter(rng.standard_normal(shape), max(1.0, radius / 1.5), mode="wrap")
        distance += roughness * lumps / (lumps.std() or 1.0)
    return _threshold(distance, fraction).astype(bool)


def electrode(size, porosity=0.35, binder=0.1, radius=5.0, polydispersity=0.4, neck_preference=2.0,
              separation=0.0, roughness=0.0, speckle=0.0, conducting="pores", seed=0, return_phases=False):
    """A three-phase battery electrode: polydisperse active particles, a carbon-binder domain that gathers at the
    contacts and necks between particles and coats their surfaces, and pores.

    porosity and binder: the pore and carbon-binder volume fractions (the particles take the rest); documented
    ranges 0.2-0.5 and 0.03-0.25. neck_preference: how strongly the binder prefers concave places (necks,
    contacts) over open surfaces (0: a uniform coating). separation: 0 places the particles freely, overlapping
    as after calendering (the Boolean model); 0.6-1 keeps their centres at least that fraction of the sum of
    their radii apart and then grows them to the particle fraction, so that at 1 neighbours touch only at small
    contacts, as in as-cast electrodes (the particle network then conducts through narrow necks, or not at all).
    roughness: lumpy particle surfaces (0-0.3; the separated placement is used when it is > 0). speckle: the grain
    of the carbon-binder domain, from smooth coatings (0) to a fragmented, voxel-scale nanoporous phase (1).
    conducting: which phase the binary volume conducts through: 'pores' (ionic), 'active', 'binder' (the
    carbon-binder network alone) or 'solid' (active + binder: electronic); its conducting fraction is that
    phase's. With ``return_phases`` the uint8 phase map (0 pores, 1 active, 2 binder) is returned instead.
    """
    _check_porosity(porosity, 0.05, 0.9, family="electrode")
    if not 0 < binder < 1 - porosity - 0.05:
        raise UserError("binder={} is out of range; it must leave at least 5 % for the particles".format(binder))
    if conducting not in ("pores", "active", "binder", "solid"):
        raise UserError("conducting={!r} is invalid; use 'pores', 'active', 'binder' or 'solid'".format(conducting))
    if not (0 <= separation <= 1.2 and 0 <= roughness <= 1 and 0 <= speckle <= 1):
        raise UserError("electrode needs separation in [0, 1.2], roughness in [0, 1] and speckle in [0, 1]; got {}, "
                        "{}, {}".format(separation, roughness, speckle))
    shape = _shape(size)
    rng = np.random.default_rng(seed)
    if separation == 0 and roughness == 0:
        active = overlapping_spheres(shape, porosity=1.0 - porosity - binder, radius=radius,
                                     polydispersity=polydispersity, conducting="spheres", seed=seed).astype(bool)
    else:
        active = _separated_particles(shape, rng, 1.0 - porosity - binder, radius, polydispersity, separation,
                                      roughness)
    # binder goes first where the particles surround a pore voxel most (necks, contacts), then along surfaces;
    # a finer and stronger texture (speckle) breaks it into grains
    surround = scipy.ndimage.gaussian_filter(active.astype(float), sigma=max(1.0, radius / 3.0), mode="wrap")
    clearance = scipy.ndimage.distance_transform_edt(~active)
    texture = scipy.ndimage.gaussian_filter(rng.standard_normal(shape), 1.0 - 0.5 * speckle, mode="wrap")
    score = neck_preference * surround - 0.5 * clearance + (0.3 + 3.0 * speckle) * texture / (texture.std() or 1.0)
    score[active] = -np.inf
    phases = np.zeros(shape, np.uint8)
    phases[active] = 1
    phases[_threshold(-score, binder).astype(bool)] = 2
    if return_phases:
        return phases
    if conducting == "solid":
        return (phases > 0).astype(np.uint8)
    return (phases == ELECTRODE_PHASES[conducting]).astype(np.uint8)


def granular(size, porosity=0.2, radius=5.0, polydispersity=0.3, cement=1.0, seed=0):
    """A consolidated granular medium (sandstone-like): a random packing of grains grown into each other by
    overgrowth, with cement filling the narrow places first; the pores conduct.

    Grains are placed as freely overlapping spheres (a grain fraction of 0.45: grains in contact), then every
    grain grows by the same distance until the porosity is reached (documented range 0.06-0.5), so that the
    pore space becomes a network of pores joined by thin throats; ``cement`` (0 to about 3) closes necks and
    throats ahead of open pores.
    """
    _check_porosity(porosity, 0.02, 0.55, family="granular")
    shape = _shape(size)
    grains = overlapping_spheres(shape, porosity=0.45, radius=radius, polydispersity=polydispersity,
                                 conducting="spheres", seed=seed).astype(bool)
    clearance = scipy.ndimage.distance_transform_edt(~grains)
    surround = scipy.ndimage.gaussian_filter(grains.astype(float), sigma=max(1.0, radius / 2.5), mode="wrap")
    # pores are what stays farthest from the grains, and least surrounded by them
    return _threshold(-(clearance - cement * radius * surround), porosity)


def foam(size, porosity=0.85, cell_size=12.0, struts=True, conducting="pores", uniform_thickness=False, domain=None,
         seed=0):
    """A Voronoi foam: cells around random seeds, the solid along the cell edges (``struts=True``: open-cell,
    like metal and carbon foams and sintered struts) or the cell walls (``struts=False``: closed-cell).

    cell_size: mean distance between seeds (documented range 6-30 voxels), a number or three (z, y, x) for
    elongated cells: the foam of the mean size stretched along each axis (foams elongated along their rise
    direction, stretched and ice-templated cellular materials); walls and struts keep a uniform thickness in the
    stretched frame, so the faces across a long axis are the thicker. uniform_thickness: walls (or struts) of one
    thickness in voxels whatever their size and orientation, as where the wall material sets it (closed-cell
    polymer foams, the walls between packed grains): the solid is the voxels nearest the plane between their two
    nearest seeds (for struts, the larger of the distances to the planes with the second and third), measured in
    voxels, not the gap between the seeds' distances. conducting: 'pores' or 'solid' (the struts or walls
    conduct); porosity is the conducting fraction either way. domain: the edge (a number or three) of the periodic
    foam the seeds fill, of which the volume is the corner: a window of a larger sample, whose cells may be larger
    than the volume (None: the volume itself, periodic).
    """
    _check_porosity(porosity, family="foam")
    if conducting not in ("pores", "solid"):
        raise UserError("conducting={!r} is invalid; use 'pores' or 'solid'".format(conducting))
    lengths = np.broadcast_to(np.asarray(cell_size, dtype=float), (3,))
    if np.any(lengths <= 0):
        raise UserError("cell_size {} must be positive".format(cell_size))
    shape = _shape(size)
    extent = shape if domain is None else _shape(domain)
    if any(e < s for e, s in zip(extent, shape)):
        raise UserError("domain {} is smaller than the volume {}; give a domain at least its size".format(
            domain, "x".join(str(s) for s in shape)))
    rng = np.random.default_rng(seed)
    count = max(2, int(round(np.prod(extent) / np.prod(lengths))))
    seeds = rng.uniform(0, 1, (count, 3)) * np.array(extent)
    images = np.array([(i, j, k) for i in (-1, 0, 1) for j in (-1, 0, 1) for k in (-1, 0, 1)]) * np.array(extent)
    seeds = (seeds[None, :, :] + images[:, None, :]).reshape(-1, 3)
    if domain is not None:  # only the seeds near the window: its voxels' three nearest are within a few cells
        reach = 4.0 * lengths
        seeds = seeds[np.all((seeds > -reach) & (seeds < np.array(shape) + reach), axis=1)]
    frame = lengths.max() / lengths  # distances in a frame where the cells are isotropic (a scale is immaterial)
    tree = scipy.spatial.cKDTree(seeds * frame)
    points = (np.indices(shape).reshape(3, -1).T + 0.5) * frame
    distances, nearest = tree.query(points, k=3, workers=-1)   # the same answer, on every core
    if uniform_thickness:
        # the distance, in voxels, from each voxel to the plane between its nearest seed and the second (third):
        # in the stretched frame that plane is (q - m) . n = 0, so in voxels it is p . (frame n) = m . n
        first = tree.data[nearest[:, 0]]
        planes = []
        for other in (1, 2) if struts else (1,):
            second = tree.data[nearest[:, other]]
            normal = second - first
            middle = 0.5 * (first + second)
            planes.append(np.abs(np.einsum("ij,ij->i", points - middle, normal))
                          / np.linalg.norm(normal * frame, axis=1))
        gap = np.max(planes, axis=0)
    else:  # a wall is where the two nearest seeds are nearly equidistant, an edge where three are
        gap = distances[:, 2 if struts else 1] - distances[:, 0]
    solid_fraction = 1.0 - porosity if conducting == "pores" else porosity
    solid = _threshold(gap.reshape(shape), solid_fraction)
    return solid if conducting == "solid" else (1 - solid).astype(np.uint8)


FAMILIES = {
    "blobs": blobs,
    "overlapping_spheres": overlapping_spheres,
    "packed_spheres": packed_spheres,
    "fibres": fibres,
    "graded": graded,
    "spheroids": spheroids,
    "electrode": electrode,
    "granular": granular,
    "foam": foam,
}


def generate(family, size, seed=0, **params):
    """Make a microstructure of a named family; ``params`` are that generator's keyword arguments."""
    if family not in FAMILIES:
        raise UserError("unknown microstructure family {!r}; use one of {}".format(family, ", ".join(FAMILIES)))
    try:
        return FAMILIES[family](size, seed=seed, **params)
    except TypeError as err:
        raise UserError("bad parameters for {}: {}".format(family, err))
