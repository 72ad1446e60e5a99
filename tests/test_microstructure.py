import numpy as np
import pytest

from conductivity_tf import domain, physics
from conductivity_tf import microstructure as ms
from conductivity_tf.errors import UserError

CASES = [
    ("blobs", dict(porosity=0.37, correlation_length=3)),
    ("blobs", dict(porosity=0.5, correlation_length=(1.5, 3, 6))),
    ("overlapping_spheres", dict(porosity=0.42, radius=5)),
    ("overlapping_spheres", dict(porosity=0.55, radius=4, polydispersity=0.4)),
    ("overlapping_spheres", dict(porosity=0.3, radius=4, conducting="spheres")),
    ("packed_spheres", dict(porosity=0.66, radius=4)),
    ("fibres", dict(porosity=0.72, radius=2, spread=20)),
    ("graded", dict(porosity_start=0.55, porosity_end=0.25)),
    ("graded", dict(porosity_start=0.3, porosity_end=0.6, layers=3, axis=2)),
    ("spheroids", dict(porosity=0.45, radius=2.5, aspect=5, spread=10)),
    ("spheroids", dict(porosity=0.6, radius=1.5, aspect=0.2, spread=30, axis=2, conducting="particles")),
    ("electrode", dict(porosity=0.35, binder=0.1)),
    ("electrode", dict(porosity=0.3, binder=0.08, conducting="binder")),
    ("electrode", dict(porosity=0.4, binder=0.15, conducting="solid")),
    ("electrode", dict(porosity=0.4, binder=0.15, conducting="active", polydispersity=0.2)),
    ("electrode", dict(porosity=0.45, binder=0.15, separation=1.0, roughness=0.15, speckle=0.5, conducting="active")),
    ("electrode", dict(porosity=0.3, binder=0.1, separation=0.8, speckle=1.0, conducting="binder")),
    ("granular", dict(porosity=0.12, radius=4)),
    ("foam", dict(porosity=0.88, cell_size=14)),
    ("foam", dict(porosity=0.12, struts=False, conducting="solid")),
    ("foam", dict(porosity=0.3, cell_size=(8, 40, 20), struts=False, conducting="solid")),
    ("foam", dict(porosity=0.3, cell_size=(20, 90, 50), struts=False, conducting="solid", uniform_thickness=True,
                  domain=192)),
    ("foam", dict(porosity=0.8, cell_size=10, uniform_thickness=True)),
]


def _target(params):
    if "binder" in params:  # electrode: the fraction of the phase that conducts
        return {"pores": params["porosity"], "binder": params["binder"], "solid": 1 - params["porosity"],
                "active": 1 - params["porosity"] - params["binder"]}[params.get("conducting", "pores")]
    if "porosity" in params:
        return params["porosity"]
    return ms.graded_mean_porosity(params["porosity_start"], params["porosity_end"])


@pytest.mark.parametrize("family, params", CASES)
def test_families_hit_the_porosity_at_64_and_are_seeded(family, params):
    v = ms.generate(family, 64, seed=11, **params)
    assert v.dtype == np.uint8 and v.shape == (64, 64, 64)
    assert set(np.unique(v).tolist()) <= {0, 1}
    assert abs(v.mean() - _target(params)) <= 0.01
    assert np.array_equal(v, ms.generate(family, 64, seed=11, **params))
    assert not np.array_equal(v, ms.generate(family, 64, seed=12, **params))


def test_graded_profile_follows_the_axis():
    v = ms.graded(48, porosity_start=0.6, porosity_end=0.2, axis=1, layers=4)
    per_slice = v.mean(axis=(0, 2))
    assert per_slice[:12].mean() == pytest.approx(0.6, abs=0.01)
    assert per_slice[-12:].mean() == pytest.approx(0.2, abs=0.01)
    assert np.all(np.diff(per_slice[::12]) < 0)


def test_fibre_mats_conduct_less_across_the_mat():
    v = ms.fibres(48, porosity=0.6, radius=2, axis=0, spread=5, seed=1)
    r = [x.relative_conductivity for x in physics.solve(v)]
    assert r[0] < 0.9 * min(r[1], r[2])


def test_spheres_conducting_is_the_complement_model():
    pores = ms.overlapping_spheres(40, porosity=0.6, radius=4, seed=3)
    spheres = ms.overlapping_spheres(40, porosity=0.4, radius=4, conducting="spheres", seed=3)
    assert abs(pores.mean() - 0.6) < 0.01 and abs(spheres.mean() - 0.4) < 0.01


def test_packed_particles_do_not_overlap():
    v, centres, radii = ms.packed_spheres(48, porosity=0.68, radius=4, polydispersity=0.3, seed=2,
                                          return_particles=True)
    assert len(centres) > 20 and abs(v.mean() - 0.68) <= 0.01
    gaps = np.sqrt(((centres[:, None] - centres[None]) ** 2).sum(-1)) - radii[:, None] - radii[None]
    np.fill_diagonal(gaps, np.inf)
    assert gaps.min() > 0
    # on the grid: the particles' voxel counts, drawn one by one, add up to the solid volume
    total = 0
    for c, r in zip(centres, radii):
        one = np.zeros(v.shape, bool)
        total += ms._add_sphere(one, c, r)
    assert total == np.count_nonzero(v == 0)


@pytest.mark.parametrize("call, fragment", [
    (lambda: ms.blobs(32, porosity=1.2), "porosity 1.2"),
    (lambda: ms.packed_spheres(32, porosity=0.3), "packed_spheres"),
    (lambda: ms.generate("nope", 32), "unknown microstructure family"),
    (lambda: ms.generate("blobs", 32, radius=3), "bad parameters for blobs"),
    (lambda: ms.blobs(1), "size 1"),
])
def test_bad_parameters(call, fragment):
    with pytest.raises(UserError, match=fragment):
        call()


def test_aligned_flakes_block_the_current_across_them_and_rods_carry_it_along():
    flakes = ms.spheroids(48, porosity=0.55, radius=1.2, aspect=0.2, axis=0, spread=5, seed=4)
    rods = ms.spheroids(48, porosity=0.55, radius=1.5, aspect=6, axis=0, spread=5, seed=4)
    across = [r.relative_conductivity for r in physics.solve(flakes)]
    along = [r.relative_conductivity for r in physics.solve(rods)]
    assert across[0] < 0.8 * min(across[1], across[2])  # flakes lie normal to axis 0
    assert along[0] > 1.1 * max(along[1], along[2])     # the pores between aligned rods run along axis 0


def test_electrode_binder_gathers_at_the_particles_and_each_phase_has_its_fraction():
    import scipy.ndimage

    phases = ms.electrode(48, porosity=0.35, binder=0.12, radius=5, seed=5, return_phases=True)
    fractions = np.bincount(phases.ravel(), minlength=3) / phases.size
    assert abs(fractions[0] - 0.35) <= 0.01 and abs(fractions[2] - 0.12) <= 0.001
    distance = scipy.ndimage.distance_transform_edt(phases != 1)
    assert distance[phases == 2].mean() < 0.5 * distance[phases == 0].mean()
    # the binary volumes are the phases of the same map
    np.testing.assert_array_equal(ms.electrode(48, porosity=0.35, binder=0.12, radius=5, seed=5,
                                               conducting="binder"), (phases == 2).astype(np.uint8))


def test_separated_electrode_particles_touch_at_small_contacts_and_a_speckled_binder_conducts_less():
    def sigma(conducting, **params):  # median over seeds and axes, relative to the phase's fraction
        values = []
        for seed in range(3):
            v = ms.electrode(48, porosity=0.45, binder=0.15, radius=5, conducting=conducting, seed=seed, **params)
            values += [r.relative_conductivity / v.mean() for r in physics.solve(v)]
        return np.median(values)

    # the same particle fraction conducts through narrow contacts when the particles stand apart
    assert sigma("active", separation=1.0) < 0.5 * sigma("active")
    # a carbon-binder domain broken into grains conducts less than a smooth coating of the same fraction
    assert sigma("binder", separation=1.0, speckle=1.0) < 0.5 * sigma("binder", separation=1.0)


def test_consolidation_narrows_the_pore_throats():
    tortuosity = [physics.solve(ms.granular(48, porosity=p, radius=4, seed=6), axes=[0])[0].tortuosity
                  for p in (0.3, 0.15)]
    assert 1.0 < tortuosity[0] < tortuosity[1] < float("inf")


def test_open_cell_foam_struts_conduct_as_one_network():
    struts = ms.foam(48, porosity=0.15, cell_size=12, conducting="solid", seed=7)
    sigma = [r.relative_conductivity for r in physics.solve(struts)]
    assert all(0.0 < s < 0.15 for s in sigma)


def test_elongated_foam_cells_stretch_the_walls_and_their_conduction_along_the_long_axes():
    walls = ms.foam(48, porosity=0.3, cell_size=(6, 36, 18), struts=False, conducting="solid", seed=3)
    chords = domain.describe(walls)["axis_chords"]
    assert chords[0] < 0.6 * chords[2] < 0.6 * chords[1]  # walls run along the cells' long axes
    sigma = [r.relative_conductivity for r in physics.solve(walls)]
    assert 0.0 < sigma[0] < 0.6 * sigma[2] and 0.0 < sigma[2] < sigma[1] < 0.3
    # the same cells, not stretched: no such order
    round_ = [r.relative_conductivity for r in physics.solve(ms.foam(48, porosity=0.3, cell_size=12, struts=False,
                                                                     conducting="solid", seed=3))]
    assert max(round_) < 1.3 * min(round_)


def _whole_chords(volume, axis):
    """Lengths of the runs of 1s along ``axis`` that start and end inside the volume."""
    lines = np.moveaxis(volume, axis, -1).reshape(-1, volume.shape[axis]).astype(np.int8)
    steps = np.diff(np.pad(lines, ((0, 0), (1, 1))), axis=1)
    starts, ends = np.nonzero(steps == 1)[1], np.nonzero(steps == -1)[1]
    whole = (starts > 0) & (ends < volume.shape[axis])
    return (ends - starts)[whole]


@pytest.mark.parametrize("seed", [3, 5])
def test_uniform_walls_are_as_thick_across_the_long_axes_as_across_the_short_one(seed):
    # flat cells (8 x 64 x 64 voxels): most walls are sheets across axis 0, crossed by axis-0 chords; the walls
    # joining them stand across axes 1 and 2, and the shortest whole chords along those axes cross them
    thickness = {}
    for uniform in (False, True):
        walls = ms.foam(48, porosity=0.4, cell_size=(8, 64, 64), struts=False, conducting="solid",
                        uniform_thickness=uniform, domain=128, seed=seed)
        sheets = np.median(_whole_chords(walls, 0))
        joining = min(np.percentile(_whole_chords(walls, a), 10) for a in (1, 2))
        thickness[uniform] = joining / sheets
    assert thickness[True] <= 2.0       # one thickness in voxels (the chords are whole voxels)
    assert thickness[False] >= 3.0      # one thickness in the frame where the cells are round: 8x apart in voxels


def test_a_foam_window_is_the_corner_of_the_larger_foam_it_is_cut_from():
    for uniform in (False, True):
        whole = ms.foam(80, porosity=0.3, cell_size=(10, 40, 25), struts=False, conducting="solid",
                        uniform_thickness=uniform, seed=3)
        corner = whole[:48, :40, :64]
        window = ms.foam((48, 40, 64), porosity=corner.mean(), cell_size=(10, 40, 25), struts=False,
                         conducting="solid", uniform_thickness=uniform, domain=80, seed=3)
        np.testing.assert_array_equal(window, corner)
    with pytest.raises(UserError, match="domain"):
        ms.foam(64, domain=48)
