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
smoothly or in layers). ``generate(family, ...)`` dispatches by name; ``FAMILIES`` lists them.
"""

import math

import numpy as np
import scipy.ndimage

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
    while filled < target:
        clearance = scipy.ndimage.distance_transform_edt(~solid) if solid.any() else np.full(shape, np.inf)
        placed_now = 0
        for _ in range(16):
            r = float(_radii(rng, 1, radius * scale, polydispersity)[0])
            candidates = np.flatnonzero(clearance.ravel() >= r + 1.0)
            if not len(candidates):
                break
            c = np.array(np.unravel_index(candidates[int(rng.integers(len(candidates)))], shape), float)
            if any(np.sqrt(((c - q) ** 2).sum()) < r + rq + 0.5 for q, rq in zip(centres[-placed_now:] if placed_now
                                                                               else [], radii_placed[-placed_now:])):
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


FAMILIES = {
    "blobs": blobs,
    "overlapping_spheres": overlapping_spheres,
    "packed_spheres": packed_spheres,
    "fibres": fibres,
    "graded": graded,
}


def generate(family, size, seed=0, **params):
    """Make a microstructure of a named family; ``params`` are that generator's keyword arguments."""
    if family not in FAMILIES:
        raise UserError("unknown microstructure family {!r}; use one of {}".format(family, ", ".join(FAMILIES)))
    try:
        return FAMILIES[family](size, seed=seed, **params)
    except TypeError as err:
        raise UserError("bad parameters for {}: {}".format(family, err))
