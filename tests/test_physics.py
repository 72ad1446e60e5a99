"""The solver's physics: exact cases, symmetries, bounds, conservation, bad input."""

import inspect
import json
import math

import numpy as np
import pytest
import scipy.ndimage

from conductivity_tf import cell_grid, microstructure, physics
from conductivity_tf.errors import UserError
from tests.conftest import assert_one_line_error, run_module


def close(a, b, rel=1e-6):
    return abs(a - b) <= rel * abs(b)


def test_straight_channels_give_porosity_and_unit_tortuosity():
    v = np.zeros((20, 12, 14), np.uint8)
    v[:, 1:3, 2:5] = 1
    v[:, 7, 9:13] = 1
    (r,) = physics.solve(v, axes=[0])
    eps = v.mean()
    assert close(r.relative_conductivity, eps) and close(r.tortuosity, 1.0)
    assert r.percolates and r.porosity == pytest.approx(eps)


def test_series_layers_give_the_harmonic_mean():
    # layers normal to axis 0: thicknesses 3, 5, 2 with conductivities 1, 0.25, 0.5 (phases 0, 1, 2)
    v = np.zeros((10, 6, 7), np.uint8)
    v[3:8] = 1
    v[8:] = 2
    sigma = {0: 1.0, 1: 0.25, 2: 0.5}
    expected = 10 / (3 / 1.0 + 5 / 0.25 + 2 / 0.5)          # relative to sigma_0 = 1
    assert close(physics.relative_conductivity(v, 0, sigma), expected)
    # the same layers are parallel to axes 1 and 2: arithmetic mean
    arithmetic = (3 * 1.0 + 5 * 0.25 + 2 * 0.5) / 10
    r = physics.solve(v, axes=[1, 2], sigma=sigma)
    assert close(r[0].relative_conductivity, arithmetic) and close(r[1].relative_conductivity, arithmetic)


def test_relative_to_the_largest_conductivity():
    v = np.ones((6, 6, 6), np.uint8)
    assert close(physics.relative_conductivity(v, 0, {1: 3.0}), 1.0)
    v[:, :, :3] = 2
    assert close(physics.relative_conductivity(v, 0, {1: 3.0, 2: 1.0}), (3.0 + 1.0) / 2 / 3.0)


def test_dead_end_pore_and_empty_volume_give_zero_without_iterating():
    v = np.zeros((12, 8, 8), np.uint8)
    v[:9, 3:5, 3:5] = 1                  # a channel that stops short of the outlet
    for volume in (v, np.zeros((8, 8, 8), np.uint8)):
        (r,) = physics.solve(volume, axes=[0])
        assert r.relative_conductivity == 0.0 and math.isinf(r.tortuosity)
        assert not r.percolates and r.iterations == 0


def test_all_conducting_block_gives_one():
    r = physics.solve(np.ones((9, 7, 5), np.uint8))
    assert all(close(x.relative_conductivity, 1.0) and close(x.tortuosity, 1.0) for x in r)


def test_disconnected_clusters_change_nothing():
    rng = np.random.default_rng(0)
    v = microstructure.blobs(24, porosity=0.45, correlation_length=2.0, seed=5)
    base = physics.relative_conductivity(v, 0)
    w = v.copy()
    w[:, 0, :] = 0
    w[:, 1, :] = 0
    w[5, 0, 3] = 1                       # an isolated voxel and an isolated pocket on the side
    w[10:14, 0, 10:14] = 1
    w2 = v.copy()
    w2[:, 0, :] = 0
    w2[:, 1, :] = 0
    assert close(physics.relative_conductivity(w, 0), physics.relative_conductivity(w2, 0), 1e-9)
    assert base > 0 and rng is not None


@pytest.fixture(scope="module")
def anisotropic():
    return microstructure.blobs((28, 24, 20), porosity=0.4, correlation_length=(1.5, 3.0, 4.5), seed=2)


def test_transposing_permutes_the_results(anisotropic):
    base = [r.relative_conductivity for r in physics.solve(anisotropic)]
    assert base[0] < base[1] < base[2]          # longer correlation along an axis conducts better
    perm = (2, 0, 1)
    moved = [r.relative_conductivity for r in physics.solve(np.transpose(anisotropic, perm))]
    for new_axis, old_axis in enumerate(perm):
        assert close(moved[new_axis], base[old_axis], 1e-6)


def test_mirror_images_give_equal_results(anisotropic):
    base = [r.relative_conductivity for r in physics.solve(anisotropic)]
    for flip_axis in (0, 1, 2):
        mirrored = [r.relative_conductivity for r in physics.solve(np.flip(anisotropic, flip_axis))]
        assert np.allclose(mirrored, base, rtol=1e-6)


def test_current_is_conserved_across_sections(anisotropic):
    for r in physics.solve(anisotropic, rtol=1e-10):
        assert r.current_spread < 1e-6 and r.residual <= 1e-10


@pytest.mark.parametrize("family, params", [
    ("blobs", dict(porosity=0.3, correlation_length=3)),
    ("blobs", dict(porosity=0.55, correlation_length=2)),
    ("overlapping_spheres", dict(porosity=0.4, radius=4)),
    ("overlapping_spheres", dict(porosity=0.5, radius=3, conducting="spheres")),
])
def test_isotropic_structures_stay_below_the_hashin_shtrikman_bound(family, params):
    v = microstructure.generate(family, 40, seed=1, **params)
    bound = physics.hashin_shtrikman_upper(v.mean())
    for r in physics.solve(v):
        assert 0 < r.relative_conductivity <= bound
        assert r.tortuosity >= 1.0


@pytest.mark.parametrize("size,porosity,seed", [(32, 0.35, 7), (48, 0.22, 3), (48, 0.3, 5), (64, 0.6, 64)])
def test_default_stop_gives_sigma_to_its_tolerance(size, porosity, seed):
    # the default stops on the dissipated power; a residual-based solve to 1e-11 is the reference
    v = microstructure.blobs(size, porosity=porosity, correlation_length=2.5, seed=seed)
    (tight,) = physics.solve(v, axes=[1], tol=None, rtol=1e-11)
    for tol in (1e-4, 1e-6):
        (r,) = physics.solve(v, axes=[1], tol=tol)
        assert close(r.relative_conductivity, tight.relative_conductivity, tol)
        assert 0 < r.iterations < tight.iterations
    assert r.residual > tight.residual


def test_solver_needs_a_stopping_rule():
    with pytest.raises(ValueError, match="rtol, tol"):
        physics.solve(microstructure.blobs(16, porosity=0.5, correlation_length=2, seed=0), tol=None)


def test_potential_is_a_field_between_the_dirichlet_values():
    v = microstructure.blobs(20, porosity=0.5, correlation_length=2, seed=3)
    (r,) = physics.solve(v, axes=[2], return_potential=True)
    phi = r.potential
    assert phi.shape == v.shape
    live = phi[v == 1]
    assert live.min() >= 0 and live.max() <= 1
    # potential falls from the inlet face (axis 2 = 0) to the outlet
    assert phi[:, :, 0][v[:, :, 0] == 1].mean() > phi[:, :, -1][v[:, :, -1] == 1].mean()


BAD_INPUTS = [
    (np.zeros((4, 4)), None, 0, "3-D"),
    (np.full((4, 4, 4), np.nan), {0: 0, 1: 1}, 0, "NaN"),
    (np.full((4, 4, 4), 0.5), None, 0, "segment"),
    (np.full((4, 4, 4), 2, np.uint8), None, 0, "--sigma"),
    (np.array([[[0, 1], [2, 1]]] * 2, np.uint8), {0: 0, 1: 1}, 0, "phase(s) 2"),
    (np.ones((4, 4, 4), np.uint8), None, 3, "axis 3"),
    (np.ones((4, 4, 4), np.uint8), {1: -1.0}, 0, "invalid"),
    (np.ones((4, 4, 4), np.uint8), {1: 0.0}, 0, "no phase conducts"),
    (np.zeros((0, 4, 4), np.uint8), None, 0, "empty"),
]


@pytest.mark.parametrize("volume, sigma, axis, fragment", BAD_INPUTS)
def test_bad_input_raises_value_error(volume, sigma, axis, fragment):
    with pytest.raises(ValueError, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        physics.solve(volume, axes=[axis], sigma=sigma)


def test_cli_json_output(tmp_path):
    v = np.zeros((10, 8, 8), np.uint8)
    v[:, 2:4, 2:4] = 1
    np.save(tmp_path / "channel.npy", v)
    dead = np.zeros((10, 8, 8), np.uint8)
    dead[:6, 2:4, 2:4] = 1
    np.save(tmp_path / "dead.npy", dead)
    proc = run_module("conductivity_tf.physics", tmp_path / "channel.npy", tmp_path / "dead.npy",
                      "--axis", "all", "--json")
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [sorted(r) for r in rows] == [sorted(["file", "porosity", "axes", "relative_conductivity",
                                                 "tortuosity", "seconds"])] * 2
    assert rows[0]["axes"] == [0, 1, 2]
    assert rows[0]["relative_conductivity"][0] == pytest.approx(v.mean(), rel=1e-6)
    assert rows[0]["tortuosity"][0] == pytest.approx(1.0, rel=1e-6)
    assert rows[0]["relative_conductivity"][1:] == [0.0, 0.0] and rows[0]["tortuosity"][1:] == [None, None]
    assert rows[1]["relative_conductivity"] == [0.0, 0.0, 0.0]


def test_cli_sigma_for_multiphase(tmp_path):
    v = np.zeros((10, 6, 6), np.uint8)
    v[5:] = 7
    np.save(tmp_path / "two.npy", v)
    proc = run_module("conductivity_tf.physics", tmp_path / "two.npy", "--sigma", "0=1", "--sigma", "7=0.25",
                      "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["relative_conductivity"][0] == pytest.approx(10 / (5 + 5 / 0.25), rel=1e-6)


@pytest.mark.parametrize("make, args, fragment", [
    (lambda p: np.save(p / "v.npy", np.zeros((4, 4))), ["v.npy"], "3-D"),
    (lambda p: np.save(p / "v.npy", np.full((4, 4, 4), np.nan)), ["v.npy", "--sigma", "0=1"], "NaN"),
    (lambda p: np.save(p / "v.npy", np.full((4, 4, 4), 0.3)), ["v.npy"], "segment"),
    (lambda p: np.save(p / "v.npy", np.full((4, 4, 4), 3, np.uint8)), ["v.npy", "--sigma", "1=1"], "phase(s) 3"),
    (lambda p: np.save(p / "v.npy", np.ones((4, 4, 4), np.uint8)), ["v.npy", "--axis", "5"], "axis 5"),
    (lambda p: (p / "v.tif").write_bytes(b"II*\x00garbage"), ["v.tif"], "cannot read TIFF"),
    (lambda p: (p / "v.raw").write_bytes(b"\x00" * 10), ["v.raw", "--shape", "2", "2", "2", "--dtype", "uint8"],
     "has 10 bytes"),
    (lambda p: None, ["missing.npy"], "does not exist"),
    (lambda p: np.save(p / "v.npy", np.ones((4, 4, 4), np.uint8)), ["v.npy", "--sigma", "1:1"], "PHASE=VALUE"),
])
def test_cli_bad_input_one_line_exit_2(tmp_path, make, args, fragment):
    make(tmp_path)
    proc = run_module("conductivity_tf.physics", *args, cwd=tmp_path)
    assert_one_line_error(proc, fragment)
    assert proc.stdout == ""


def test_cli_and_python_give_the_same_message(tmp_path):
    np.save(tmp_path / "v.npy", np.full((4, 4, 4), 2, np.uint8))
    with pytest.raises(UserError) as err:
        physics.solve(np.load(tmp_path / "v.npy"))
    line = assert_one_line_error(run_module("conductivity_tf.physics", "v.npy", cwd=tmp_path))
    assert str(err.value) in line


def test_agrees_with_taufactor():
    taufactor = pytest.importorskip("taufactor", reason="taufactor is an anchor from the [bench] extra")
    from conductivity_tf.benchmark import taufactor_relative_conductivity

    for seed, eps in ((0, 0.3), (1, 0.5)):
        v = microstructure.blobs(48, porosity=eps, correlation_length=3, seed=seed)
        ours = physics.solve(v, axes=[0])[0].relative_conductivity
        theirs = taufactor_relative_conductivity(taufactor, v)
        assert abs(ours - theirs) <= 0.005 * theirs


def test_reused_working_arrays_give_the_results_of_fresh_ones():
    from conductivity_tf import _discretisation

    a = microstructure.blobs(24, 0.35, 3.0, seed=5)
    b = microstructure.overlapping_spheres(24, 0.6, radius=3.0, seed=6)
    _discretisation.workspace().begin((0,))       # forget any kept arrays: the next solve allocates afresh
    fresh = physics.solve(a, return_potential=True)
    kept_potential = fresh[0].potential.copy()
    physics.solve(b)                          # same shape: b's solve reuses (and overwrites) the arrays
    again = physics.solve(a)
    for r, s in zip(fresh, again):
        assert r.relative_conductivity == s.relative_conductivity and r.iterations == s.iterations
    # a potential handed out is the caller's, not a view of the working arrays
    np.testing.assert_array_equal(fresh[0].potential, kept_potential)


def _system(volume):
    """The padded system of a volume, transport along axis 0, percolating voxels only."""
    from conductivity_tf import _discretisation

    s, _ = physics.conductivity_field(volume)
    keep = physics.connected_to_both_faces(s > 0, (0,))[0]
    return _discretisation.assemble(np.where(keep, s, 0.0), _discretisation.Workspace())


def test_coarse_aggregates_split_blocks_into_their_connected_pieces():
    from conductivity_tf import _discretisation, _graph_levels

    # cells (2,2,2) and (2,3,3) share the block {2,3}^3 but touch only along an edge; they are joined
    # outside it through a 2x2 plate of cells in the block {0,1} x {2,3}^2
    v = np.zeros((6, 6, 6))
    v[1, 2:4, 2:4] = v[2, 2, 2] = v[2, 3, 3] = 1
    cx, cy, cz, diag, bnd, rhs = _discretisation.assemble(v)
    node, d, coords, rows, cols, vals = _graph_levels.grid_graph(diag, cx, cy, cz)
    agg, count = _graph_levels.aggregate(coords, rows, cols)
    assert len(d) == 6 and count == 3
    assert agg[node[3, 3, 3]] != agg[node[3, 4, 4]]         # same block, not connected inside it
    assert len(set(agg[node[2, 3:5, 3:5].ravel()])) == 1    # the plate is one aggregate


def test_graph_levels_are_the_grid_coarsening_where_blocks_are_connected():
    """Where every block is connected the graph level's Galerkin operator is the grid's coarse operator."""
    from conductivity_tf import _coarsening, _discretisation, _graph_levels

    cx, cy, cz, diag, bnd, rhs = _system(np.ones((16, 16, 16), np.uint8))
    dc, xc, yc, zc, _ = _coarsening.coarsen(diag, cx, cy, cz, bnd, 0.5, _discretisation.Workspace(), "t.")
    node, d, coords, rows, cols, vals = _graph_levels.grid_graph(diag, cx, cy, cz)
    agg, count = _graph_levels.aggregate(coords, rows, cols)
    gd, gcoords, grows, gcols, gvals = _graph_levels.coarse_graph(d, coords, rows, cols, vals, agg, count, 0.5)
    assert count == np.count_nonzero(dc) == 512
    cnode, cd, ccoords, crows, ccols, cvals = _graph_levels.grid_graph(dc, xc, yc, zc)
    order = np.lexsort(gcoords.T[::-1])                      # graph aggregates in grid order
    np.testing.assert_array_equal(gcoords[order], ccoords)
    np.testing.assert_allclose(gd[order], cd, rtol=1e-12)
    rank = np.empty(count, np.int64)
    rank[order] = np.arange(count)
    got = sorted(zip(np.minimum(rank[grows], rank[gcols]), np.maximum(rank[grows], rank[gcols]), gvals))
    want = sorted(zip(np.minimum(crows, ccols), np.maximum(crows, ccols), cvals))
    np.testing.assert_allclose(np.array(got), np.array(want), rtol=1e-12)


def test_preconditioner_with_graph_levels_is_symmetric_and_its_coarsest_solve_exact():
    from conductivity_tf import _discretisation, _graph_levels, _multigrid

    cx, cy, cz, diag, bnd, rhs = _system(microstructure.blobs(64, 0.3, 4.0, seed=64))
    solver = _multigrid.MultigridPCG(diag, cx, cy, cz, bnd, ws=_discretisation.Workspace())
    kinds = [type(level).__name__ for level in solver.levels]
    assert kinds[:_multigrid.GRID_LEVELS] == ["_Level"] * _multigrid.GRID_LEVELS
    assert "GraphLevel" in kinds
    rng = np.random.default_rng(0)
    active = diag != 0
    r1, r2 = (rng.standard_normal(diag.shape) * active for _ in range(2))

    def m(r):
        z = np.zeros_like(r)
        solver.preconditioner.precondition(r, z)
        return z.copy()

    assert np.sum(m(r1) * r2) == pytest.approx(np.sum(r1 * m(r2)), rel=1e-5)   # float32 smoothing
    last = solver.levels[-1]
    b = rng.standard_normal(last.n)
    x = np.zeros(last.n)
    solver.preconditioner.coarsest.solve(b, x)
    a = _graph_levels.graph_dense(last.n, last.diag, last.rows, last.cols, last.vals)
    np.testing.assert_allclose(a @ x, b, atol=1e-10)


def _reference_relative_conductivity(s, sigma0):
    """sigma_eff/sigma_0 along axis 0 of a conductivity field, from a scipy assembly and CG solve written
    independently of the solver's kernels (harmonic-mean faces, half-voxel Dirichlet faces)."""
    import scipy.sparse
    import scipy.sparse.linalg

    keep = physics.connected_to_both_faces(s > 0, (0,))[0]
    s = np.where(keep, s, 0.0)
    index = -np.ones(s.shape, np.int64)
    index[keep] = np.arange(keep.sum())
    rows, cols, vals = [], [], []
    diag = np.zeros(keep.sum())
    for axis in range(3):
        a = np.moveaxis(s, axis, 0)[:-1]
        b = np.moveaxis(s, axis, 0)[1:]
        both = (a > 0) & (b > 0)
        g = 2 * a[both] * b[both] / (a[both] + b[both])
        ia = np.moveaxis(index, axis, 0)[:-1][both]
        ib = np.moveaxis(index, axis, 0)[1:][both]
        rows += [ia, ib]
        cols += [ib, ia]
        vals += [-g, -g]
        np.add.at(diag, ia, g)
        np.add.at(diag, ib, g)
    rhs = np.zeros_like(diag)
    for layer, potential in ((0, 1.0), (-1, 0.0)):
        cells = index[layer][keep[layer]]
        diag[cells] += 2 * s[layer][keep[layer]]
        rhs[cells] += 2 * s[layer][keep[layer]] * potential
    n = len(diag)
    matrix = scipy.sparse.csr_matrix((np.concatenate(vals + [diag]), (np.concatenate(rows + [np.arange(n)]),
                                                                     np.concatenate(cols + [np.arange(n)]))))
    jacobi = scipy.sparse.diags(1.0 / diag)
    # the relative tolerance is ``rtol`` since scipy 1.12 and ``tol`` before (Python 3.8 has scipy <= 1.10)
    tolerance = "rtol" if "rtol" in inspect.signature(scipy.sparse.linalg.cg).parameters else "tol"
    phi, info = scipy.sparse.linalg.cg(matrix, rhs, M=jacobi, maxiter=20000, **{tolerance: 1e-13})
    assert info == 0
    inlet = index[0][keep[0]]
    current = np.sum(2 * s[0][keep[0]] * (1.0 - phi[inlet]))
    return current * s.shape[0] / (s.shape[1] * s.shape[2] * sigma0)


def test_three_phase_non_cubic_volume_agrees_with_an_independent_solve():
    """A 120x40x40 volume of three phases: the solver (with graph levels below the grids) gives the
    sigma_eff/sigma_0 of a plain scipy assembly and CG solve, along the long and a short axis."""
    from conductivity_tf import _multigrid

    first = microstructure.blobs(120, porosity=0.45, correlation_length=3.0, seed=21)[:, :40, :40]
    second = microstructure.blobs(120, porosity=0.5, correlation_length=2.0, seed=22)[:, :40, :40]
    volume = np.where(first == 1, 1, np.where(second == 1, 2, 0)).astype(np.uint8)
    sigma = {0: 0.0, 1: 1.0, 2: 0.1}
    s, sigma0 = physics.conductivity_field(volume, sigma)
    cx, cy, cz, diag, bnd, rhs = _system(np.asarray(s > 0, np.uint8))
    kinds = {type(level).__name__ for level in _multigrid.MultigridPCG(diag, cx, cy, cz, bnd).levels}
    assert kinds == {"_Level", "GraphLevel"}
    for axis in (0, 2):
        ours = physics.solve(volume, axes=[axis], sigma=sigma)[0].relative_conductivity
        reference = _reference_relative_conductivity(np.moveaxis(s, axis, 0), sigma0)
        assert ours == pytest.approx(reference, rel=1e-6)


def test_binary_volume_kernels_agree_with_the_general_ones_and_an_independent_solve():
    """A binary volume (one conductivity, here 2.5) takes the fine-grid kernels that read no face
    conductances; they give the general kernels' solve and the independent scipy solve's sigma."""
    volume = microstructure.blobs(40, porosity=0.35, correlation_length=2.5, seed=11)
    sigma = {0: 0.0, 1: 2.5}
    s, sigma0 = physics.conductivity_field(volume, sigma)
    s = np.where(physics.connected_to_both_faces(s > 0, (0,))[0], s, 0.0)
    general = physics._solve_axis0(s, 1e-10, None, 1000, uniform=None)
    uniform = physics._solve_axis0(s, 1e-10, None, 1000, uniform=2.5)
    assert uniform[0] == pytest.approx(general[0], rel=1e-9)
    assert uniform[2] == general[2]
    ours = physics.solve(volume, axes=[0], sigma=sigma)[0].relative_conductivity
    assert ours == pytest.approx(_reference_relative_conductivity(s, sigma0), rel=1e-6)


@pytest.mark.parametrize("shape,porosity", [((31, 17, 23), 0.3), ((40, 40, 40), 0.5), ((9, 50, 12), 0.25)])
def test_cluster_labels_are_the_6_connected_components(shape, porosity):
    # the same partition as scipy.ndimage.label (6-connectivity), whichever library labels
    mask = np.random.default_rng(sum(shape)).random(shape) < porosity
    mask = np.asfortranarray(mask) if shape[0] == 9 else mask
    labels, count = physics.label_clusters(mask)
    want, want_count = scipy.ndimage.label(mask)
    assert count == want_count > 10
    assert np.array_equal(labels > 0, mask)
    pairs = np.unique(np.stack([labels[mask], want[mask]]), axis=1)
    assert pairs.shape[1] == count      # one-to-one: no cluster split or merged


# ---------------------------------------------------------------------------------------------
# grids of cells with their own conductivity along each axis (the whole-volume combination)


def test_cells_in_series_and_in_parallel_combine_harmonically_and_arithmetically():
    s = np.ones((6, 4, 5, 3))
    s[3:] = 0.25                      # two slabs normal to axis 0, each three cells thick
    along, across_1, across_2 = cell_grid.solve_cells(s)
    assert along == pytest.approx(1.0 / (0.5 / 1.0 + 0.5 / 0.25), rel=1e-6)     # in series: 0.4
    assert across_1 == pytest.approx((1.0 + 0.25) / 2, rel=1e-6)                 # in parallel: 0.625
    assert across_2 == pytest.approx((1.0 + 0.25) / 2, rel=1e-6)


def test_cells_of_unequal_sizes_and_anisotropic_conductivities():
    s = np.ones((5, 3, 4, 3))
    s[..., 1] = 2.0
    s[..., 2] = 3.0
    s[2:, ..., 0] = 0.5               # along axis 0: 3 + 2 length units at 1, then 3 + 3 + 1 at 0.5
    sizes = [np.array([3.0, 2.0, 3.0, 3.0, 1.0]), np.array([1.0, 4.0, 2.0]), np.array([2.0, 1.0, 1.0, 5.0])]
    along, across_1, across_2 = cell_grid.solve_cells(s, sizes)
    assert along == pytest.approx(12.0 / (5.0 / 1.0 + 7.0 / 0.5), rel=1e-6)
    assert across_1 == pytest.approx(2.0, rel=1e-6) and across_2 == pytest.approx(3.0, rel=1e-6)


def test_cells_equal_to_voxels_give_the_voxel_solve():
    v = microstructure.blobs(24, 0.45, 2.5, seed=4)
    cells = np.repeat(v[..., None].astype(float), 3, axis=3)
    exact = [r.relative_conductivity for r in physics.solve(v, tol=1e-9)]
    assert cell_grid.solve_cells(cells, tol=1e-9) == pytest.approx(exact, rel=1e-5)


def test_cells_without_a_path_between_the_faces_give_zero():
    s = np.ones((6, 6, 6, 3))
    s[3, :, :, 0] = 0.0               # a layer that conducts only sideways blocks axis 0
    along, across_1, across_2 = cell_grid.solve_cells(s)
    assert along == 0.0 and across_1 > 0 and across_2 > 0
    s = np.ones((8, 8, 8, 3))
    s[2:7, 1:6, 1:6] = 0.0            # a hollow insulating box around a floating cluster (singular if kept)
    s[3:6, 2:5, 2:5] = 1.0
    without = s.copy()
    without[3:6, 2:5, 2:5] = 0.0
    assert cell_grid.solve_cells(s) == pytest.approx(cell_grid.solve_cells(without), rel=1e-6)


def test_grids_solved_apart_at_once_give_each_grids_own_solve():
    rng = np.random.default_rng(3)
    grids = rng.uniform(0.05, 1.0, (5, 6, 6, 6, 3)) * (rng.random((5, 6, 6, 6, 1)) < 0.7)
    grids[1, 2, :, :, 0] = 0.0                 # the second grid has no path along axis 0
    grids[3] *= np.array([1.0, 0.1, 3.0])      # the fourth is strongly anisotropic
    apart = cell_grid.solve_cells_apart(grids, tol=1e-12)
    own = np.array([cell_grid.solve_cells(g, tol=1e-12) for g in grids])
    assert apart[1, 0] == 0.0 and own[1, 0] == 0.0
    assert apart == pytest.approx(own, rel=2e-5, abs=1e-12)   # a current through one face: first order in phi
    assert len(set(np.round(apart[:, 1], 6))) == 5      # five different grids, five different values


def _binary_cases():
    rng = np.random.default_rng(0)
    channel = np.zeros((40, 40, 40), np.uint8)
    channel[:, 10, 10] = 1                                   # one channel: along 0 only, few unknowns
    cut = channel.copy()
    cut[20:] = 0                                             # no path at all
    return [microstructure.blobs(48, porosity=0.3, correlation_length=3.0, seed=31),
            microstructure.generate("fibres", 40, seed=32, porosity=0.7, radius=2.0),
            (rng.random((33, 35, 3)) < 0.6).astype(np.uint8), (rng.random((2, 30, 50)) < 0.6).astype(bool),
            channel, cut, np.ones((20, 21, 22), np.uint8)]


@pytest.mark.parametrize("case", range(7))
def test_the_binary_fine_level_gives_the_general_layouts_answer(monkeypatch, case):
    """Large binary volumes are solved with the fine level held as its diagonal (``_binary_level``); forced on
    small ones it gives the general layout's sigma (to its tolerance), current spread and potential, with
    another conductivity than 1 too, and zeros where nothing joins the faces."""
    volume = _binary_cases()[case]
    for sigma in (None, {0: 0.0, 1: 2.5}):
        monkeypatch.setattr(physics, "BINARY_LEVEL_VOXELS", 1 << 62)
        general = physics.solve(volume, sigma=sigma, return_potential=True)
        monkeypatch.setattr(physics, "BINARY_LEVEL_VOXELS", 0)
        binary = physics.solve(volume, sigma=sigma, return_potential=True)
        for g, b in zip(general, binary):
            assert b.percolates == g.percolates and b.porosity == g.porosity
            assert b.relative_conductivity == pytest.approx(g.relative_conductivity, rel=3e-6, abs=1e-12)
            assert b.potential.shape == volume.shape and np.abs(b.potential - g.potential).max() < 1e-3
            assert b.current_spread < 1e-2 or not b.percolates


def test_the_binary_fine_level_is_what_large_binary_volumes_get(monkeypatch):
    """Above BINARY_LEVEL_VOXELS a binary volume is solved without the general layout's arrays; a
    multi-phase one, or one whose potential must be accurate everywhere (rtol), still takes the general layout."""
    from conductivity_tf import _discretisation

    calls = []
    monkeypatch.setattr(physics, "assemble", lambda *a, **k: calls.append(1) or _discretisation.assemble(*a, **k))
    monkeypatch.setattr(physics, "BINARY_LEVEL_VOXELS", 30 ** 3)
    volume = microstructure.blobs(32, porosity=0.4, correlation_length=3.0, seed=33)
    physics.solve(volume)
    assert calls == []
    physics.solve(volume, rtol=1e-8)
    assert len(calls) == 3
    physics.solve(np.where(volume == 1, 2, volume).astype(np.uint8) + (volume == 0), sigma={1: 0.1, 2: 1.0})
    assert len(calls) == 6


def test_a_memory_mapped_volume_gives_the_answer_of_one_in_memory(tmp_path, monkeypatch):
    monkeypatch.setattr(physics, "BINARY_LEVEL_VOXELS", 0)
    volume = microstructure.blobs(40, porosity=0.35, correlation_length=3.0, seed=34)
    np.save(tmp_path / "v.npy", volume)
    mapped = np.load(tmp_path / "v.npy", mmap_mode="r")
    assert isinstance(mapped, np.memmap)
    assert [r.relative_conductivity for r in physics.solve(mapped)] == \
        [r.relative_conductivity for r in physics.solve(volume)]


def test_spanning_channels_hold_the_volume_and_per_axis_the_clusters_joining_both_faces():
    volume = np.zeros((12, 10, 8), np.uint8)
    volume[:, 2, 2] = 1                  # a rod along axis 0
    volume[5, :, 5:7] = 1                # a strip along axis 1, apart from the rod
    volume[2:4, 6:8, 0:2] = 1            # an isolated block
    channels = physics.spanning_channels(volume)
    assert channels.shape == (12, 10, 8, 4) and channels.dtype == np.uint8
    assert np.array_equal(channels[..., 0], volume)
    rod = np.zeros_like(volume)
    rod[:, 2, 2] = 1
    slab = np.zeros_like(volume)
    slab[5, :, 5:7] = 1
    assert np.array_equal(channels[..., 1], rod)
    assert np.array_equal(channels[..., 2], slab)          # it spans axis 1, not axis 2 (k 5..6 of 0..7)
    assert not channels[..., 3].any()
    batch = np.stack([volume, volume[::-1, :, ::-1]])
    both = physics.spanning_channels(batch.astype(np.float32))
    assert np.array_equal(both[0], channels) and np.array_equal(both[1], physics.spanning_channels(batch[1]))
