"""Whole volumes: windows labelled exactly (physics on each window) and combined by physics, against full solves;
volumes read slab by slab from disk give the answer they give in memory."""

import json

import numpy as np
import pytest
import tifffile

from conductivity_tf import microstructure, physics, volumes
from conductivity_tf import whole_volume as W
from conductivity_tf.errors import UserError
from tests.conftest import run_module


def _layers():
    fine = dict(radius=1.5)
    a = microstructure.generate("overlapping_spheres", 64, seed=1, porosity=0.75, **fine)
    b = microstructure.generate("overlapping_spheres", 64, seed=2, porosity=0.55, **fine)
    return np.concatenate([a[:32], b[:32]], axis=0)[:, :48, :40]   # in series along 0, in parallel along 1, 2


def test_layers_in_series_and_in_parallel_come_out_as_the_full_solve():
    v = _layers()
    full = [r.relative_conductivity for r in physics.solve(v)]
    result = W.predict_volume(volumes.VolumeSource.of(v), W.exact_labeller(1), window=16)
    assert result.plan.cells == (4, 3, 3)   # 40 voxels along axis 2: three cells of 13-14, no larger than 16
    assert result.values == pytest.approx(full, rel=0.02)
    assert result.uncertainty is None and result.solved_fraction == 1.0
    assert result.porosity == pytest.approx(v.mean())


def test_a_volume_without_a_spanning_path_gives_zero_along_that_axis():
    v = _layers()
    v[30:34] = 0                      # an insulating layer across axis 0
    result = W.predict_volume(volumes.VolumeSource.of(v), W.exact_labeller(1), window=16)
    assert result.values[0] == 0.0 and min(result.values[1:]) > 0.1


def _replayed(labeller):
    """``labeller``, whose labels of each batch, in the order the windows come, are given again on later calls."""
    seen = []

    def replay(chunk):
        if len(seen) < replay.calls + 1:
            seen.append(labeller(chunk))
        replay.calls += 1
        return seen[replay.calls - 1]

    replay.calls = 0
    return replay


def test_detours_raise_the_sealed_windows_towards_the_full_solve_and_keep_the_exact_limits():
    # blobs of correlation length 5 at porosity 0.35: few paths per 64^3 window, many of them leaving it and coming
    # back; the windows' insulating sides make their combination 7-10 % low, within 1.1 % with --detours (fine),
    # within 2.2 % with the default coarse proxy
    v = microstructure.generate("blobs", 192, seed=2, porosity=0.35, correlation_length=5)
    full = np.array([r.relative_conductivity for r in physics.solve(v)])
    labeller = _replayed(W.exact_labeller(1))
    plain = W.predict_volume(volumes.VolumeSource.of(v), labeller, window=64, detours="off")
    assert plain.detour_factors is None and plain.detours == "off" and np.all(np.array(plain.values) < 0.94 * full)
    for mode, within in (("fine", 0.03), ("coarse", 0.03)):
        labeller.calls = 0
        result = W.predict_volume(volumes.VolumeSource.of(v), labeller, window=64, detours=mode)
        factors = np.array(result.detour_factors)
        assert result.detours == mode and np.all(factors > 1.02)
        assert np.array(result.values) == pytest.approx(np.array(plain.values) * factors, rel=1e-12)
        assert np.all(np.abs(result.values / full - 1) < np.abs(plain.values / full - 1))
        assert np.max(np.abs(result.values / full - 1)) < within
    layers = _layers()                   # fine, well connected: in series and in parallel stay exact
    exact = [r.relative_conductivity for r in physics.solve(layers)]
    result = W.predict_volume(volumes.VolumeSource.of(layers), W.exact_labeller(1), window=16, detours=True)
    assert result.values == pytest.approx(exact, rel=0.02) and min(result.detour_factors) >= 1.0
    layers[30:34] = 0                    # and a volume without a path along 0 is still a zero along it
    cut = W.predict_volume(volumes.VolumeSource.of(layers), W.exact_labeller(1), window=16, detours=True)
    assert cut.values[0] == 0.0 and min(cut.values[1:]) > 0.1


def test_detours_take_the_faces_proxy_where_the_renormalised_one_loses_the_walls_junctions(monkeypatch):
    # conducting walls of one thickness around cells stretched along axis 1: along axis 0 the current crosses the
    # stacked walls through the few walls that join them, which the renormalised proxy's cells lose (its sealed
    # windows keep a fifth of the windows' conductivity, and its factor overshoots by half); the windows'
    # combination is 28 % low, 6 % with the factor of the cells joined through their faces
    v = microstructure.foam(192, porosity=0.3, cell_size=[22, 110, 63], struts=False, conducting="solid",
                            uniform_thickness=True, domain=384, seed=1)
    full = physics.solve(v, axes=[0])[0].relative_conductivity
    source = volumes.VolumeSource.of(v)
    result = W.predict_volume(source, W.exact_labeller(1), window=64, detours=True)
    assert result.detour_proxies[0] == "faces"
    plain = result.values[0] / result.detour_factors[0]
    monkeypatch.setattr(W, "DETOUR_FIDELITY", 0.0)       # the renormalised proxy counted on every axis
    counted = W.predict_volume(source, W.exact_labeller(1), window=64, detours=True)
    assert counted.detour_proxies[0] == "renormalised"
    assert plain < 0.8 * full and counted.values[0] > 1.3 * full
    assert abs(result.values[0] / full - 1) < 0.07


def _links_reference(links, ends, axis):
    """sigma_eff of ``cell_grid.solve_links``' problem by a sparse direct solve of its graph (scipy), independent of
    the multigrid: the cells in a cluster joining both electrodes, the potential 1 beyond the inlet, 0 beyond the
    outlet."""
    import scipy.sparse as sp
    import scipy.sparse.csgraph as csg
    import scipy.sparse.linalg as sla

    m = links.shape[1:]
    index = np.arange(np.prod(m)).reshape(m)
    rows, cols, vals = [], [], []
    for a in range(3):
        here = np.take(index, range(m[a] - 1), axis=a).ravel()
        there = np.take(index, range(1, m[a]), axis=a).ravel()
        g = np.take(links[a], range(m[a] - 1), axis=a).ravel().astype(np.float64)
        rows += [here, there]
        cols += [there, here]
        vals += [g, g]
    rows, cols, vals = np.concatenate(rows), np.concatenate(cols), np.concatenate(vals)
    joined = vals > 0
    graph = sp.csr_matrix((vals[joined], (rows[joined], cols[joined])), shape=(index.size,) * 2)
    inlet = np.zeros(m)
    outlet = np.zeros(m)
    np.moveaxis(inlet, axis, 0)[0] = ends[axis][0]
    np.moveaxis(outlet, axis, 0)[-1] = ends[axis][1]
    inlet, outlet = inlet.ravel(), outlet.ravel()
    _, label = csg.connected_components(graph, directed=False)
    keep = np.isin(label, np.intersect1d(label[inlet > 0], label[outlet > 0]))
    if not keep.any():
        return 0.0
    sub = graph[keep][:, keep]
    matrix = sp.diags(np.asarray(sub.sum(axis=1)).ravel() + inlet[keep] + outlet[keep]) - sub
    phi = sla.spsolve(matrix.tocsc(), inlet[keep])
    current = float(np.sum(inlet[keep] * (1.0 - phi)))
    return current * m[axis] / (np.prod(m) / m[axis])


def test_the_cells_joined_by_their_own_conductances_solved_as_a_direct_solve_of_their_graph():
    from conductivity_tf import cell_grid, faces

    v = microstructure.blobs(48, porosity=0.3, correlation_length=2, seed=8)[:, :44, :40]   # sides not all x8
    links, ends = faces.face_links(v)
    assert links.shape == (3, 12, 11, 10)
    solved = cell_grid.solve_links(links, ends)
    reference = [_links_reference(links, ends, a) for a in range(3)]
    assert min(reference) > 0.005 and solved == pytest.approx(reference, rel=1e-6)
    # counted slab by slab (16, 16, 16 slices) it is the same problem as the volume's in memory
    source, whole = volumes.VolumeSource.of(v), W.WholeLinks(v.shape, 4)
    for start in range(0, 48, 16):
        whole.add(start, source.read(start, start + 16))
    slabs, slab_ends = whole.result()
    assert np.array_equal(slabs, links)
    assert all(np.array_equal(p, q) for a in range(3) for p, q in zip(slab_ends[a], ends[a]))
    # and from the overlapping slabs the windows are cut from (origins 0, 6, 16, 26, 32; cells of 4 and of 8)
    for cell in (4, 8):
        plan = W.layout(v.shape, 16, cell=10)
        assert any(o % cell for o in plan.origins[0])              # slabs not aligned to the cells
        whole = W.WholeLinks(v.shape, cell)
        for o in plan.origins[0]:
            whole.add(int(o), v[o:o + 16])
        fed, fed_ends = whole.result()
        links_c, ends_c = faces.face_links(v, cell)
        assert np.array_equal(fed, links_c)
        assert all(np.array_equal(p, q) for a in range(3) for p, q in zip(fed_ends[a], ends_c[a]))
    # grids side by side, unjoined, are each their own
    rng = np.random.default_rng(4)
    grids = []
    for _ in range(3):
        g = rng.random((3, 6, 6, 6)) * (rng.random((3, 6, 6, 6)) < 0.7)
        for a in range(3):
            np.moveaxis(g[a], a, 0)[-1] = 0.0          # nothing past the last cell
        sides = [tuple(rng.random((6, 6)) * (rng.random((6, 6)) < 0.7) for _ in range(2)) for _ in range(3)]
        grids.append((g, sides))
    apart = cell_grid.solve_links_apart(grids)
    for (g, sides), row in zip(grids, apart):
        assert row == pytest.approx([_links_reference(g, sides, a) for a in range(3)], rel=1e-4)   # the inlet current
    # slabs starting past the last whole layer counted (the slices between kept from the slab before)
    for cell in (4, 8):
        whole = W.WholeLinks(v.shape, cell)
        for start, stop in ((0, 13), (10, 26), (20, 36), (34, 48)):
            whole.add(start, v[start:stop])
        fed, fed_ends = whole.result()
        links_c, ends_c = faces.face_links(v, cell)
        assert np.array_equal(fed, links_c)
        assert all(np.array_equal(p, q) for a in range(3) for p, q in zip(fed_ends[a], ends_c[a]))
    gap = W.WholeLinks(v.shape, 8)
    gap.add(0, v[:16])
    with pytest.raises(ValueError, match="slices 16..19 were not given"):
        gap.add(20, v[20:36])
    cut = links.copy()
    cut[0, 5] = 0.0                                      # no conductance across one layer: no path along axis 0
    assert cell_grid.solve_links(cut, ends, axes=[0]) == [0.0] == [_links_reference(cut, ends, 0)]


def test_sealed_windows_of_the_faces_proxy_solved_apart_as_the_multigrid_solves_them():
    from conductivity_tf import cell_grid, faces

    chunk = np.stack([microstructure.blobs(32, porosity=p, correlation_length=2, seed=s)
                      for p, s in ((0.5, 1), (0.3, 2), (0.25, 3), (0.2, 4))])
    chunk[3, 16:, :, :] = 0                     # no path along axis 0 in the last window: its dead ends conduct
    for cell in (4, 8):
        got = faces.sealed_faces(chunk, cell)
        reference = np.array([cell_grid.solve_links(*faces.face_links(w, cell), tol=1e-9) for w in chunk])
        assert got[3, 0] == 0.0 and reference[3, 0] == 0.0 and got[3, 1] > 0.005
        assert np.count_nonzero(reference) >= 10
        assert np.allclose(got, reference, rtol=2e-3, atol=0)
        assert np.array_equal(got[1], faces.sealed_faces(chunk[1:2], cell)[0])   # each window on its own


def test_windows_without_a_path_where_the_whole_conducts_are_a_caution():
    v = np.zeros((16, 32, 16), np.uint8)
    v[:, :16] = 1                                       # window (0, 0, 0) conducts, window (0, 1, 0) is empty
    result = W.predict_volume(volumes.VolumeSource.of(v), W.exact_labeller(1), window=16)
    assert result.values[0] == pytest.approx(0.5) and result.without_path == [0.5, 0.5, 0.5]
    assert result.values[1] == 0.0       # along 1 the empty half cuts the path: a true zero, no caution
    assert [note.split(":")[0] for note in result.cautions] == ["axis 0", "axis 2"]
    assert "50 % of the 16^3 windows" in result.cautions[0]
    full = W.predict_volume(volumes.VolumeSource.of(np.ones((16, 32, 16), np.uint8)), W.exact_labeller(1), 16)
    assert full.values == pytest.approx([1.0, 1.0, 1.0]) and full.without_path == [0.0] * 3 and not full.cautions
    layer = _layers()
    layer[30:34] = 0                                    # no path at all along 0: an exact zero, nothing to caution
    cut = W.predict_volume(volumes.VolumeSource.of(layer), W.exact_labeller(1), window=16)
    assert cut.values[0] == 0.0 and cut.without_path[0] > 0 and not any(n.startswith("axis 0") for n in cut.cautions)


def test_the_models_windows_without_a_path_are_exact_zeros_and_cautioned_like_exact_ones():
    from conductivity_tf.predict import Predictor

    open_half = microstructure.blobs(64, 0.5, 3, seed=8)
    cut_half = open_half.copy()
    cut_half[30:33] = 0                                  # an insulating layer: no path along 0 in this window
    v = np.concatenate([open_half, cut_half], axis=1)    # (64, 128, 64): windows (0, 0, 0) and (0, 1, 0)
    predictor = Predictor(None, "fp32")
    assert predictor._run(cut_half[None])[0][0, 0] > 0   # the network alone gives the cut window a conductivity
    result = W.predict_volume(volumes.VolumeSource.of(v), W.model_labeller(predictor), window=64)
    assert result.field[0, 1, 0, 0] == 0.0 and result.field_uncertainty[0, 1, 0, 0] == 0.0
    assert min(result.field[0, 1, 0, 1:]) > 0.1 and min(result.field[0, 0, 0]) > 0.1
    assert result.without_path == [0.5, 0.0, 0.0] and result.values[0] > 0
    assert [note.split(":")[0] for note in result.cautions] == ["axis 0"]


def test_windows_outside_the_training_domain_are_counted_with_the_range_of_their_values():
    from conductivity_tf import domain

    v = np.concatenate([microstructure.blobs(32, 0.6, 2, seed=3)[:16], microstructure.blobs(32, 0.3, 2, seed=4)[:16]])
    trained_on = {name: [-np.inf, np.inf] for name in domain.DESCRIPTORS}
    trained_on["porosity"] = [0.45, 1.0]          # the lower layer's windows lie below it
    exact = W.exact_labeller(1)

    def labeller(chunk):
        values, uncertainty, from_solver, _ = exact(chunk)
        return values, uncertainty, from_solver, [domain.outside(domain.describe(w), trained_on) for w in chunk]

    result = W.predict_volume(volumes.VolumeSource.of(v), labeller, window=16)
    lower = [domain.describe(v[16:, j:j + 16, k:k + 16])["porosity"] for j in (0, 16) for k in (0, 16)]
    assert result.plan.windows == 8 and max(lower) < 0.45
    assert result.outside_domain == ["4 of 8 windows: porosity {:.3g}-{:.3g} outside the training range 0.45-1".format(
        min(lower), max(lower))]
    assert W.predict_volume(volumes.VolumeSource.of(v), exact, window=16).outside_domain == []


def test_windows_cover_a_volume_whose_sides_are_not_multiples_of_the_window():
    plan = W.layout((100, 64, 70), window=32)
    assert plan.cells == (4, 2, 3)
    for n, edges, origins in zip(plan.shape, plan.edges, plan.origins):
        assert edges[0] == 0 and edges[-1] == n and np.all(np.diff(edges) > 0)
        assert np.all(origins >= 0) and np.all(origins + 32 <= n)
        assert np.all(origins <= edges[:-1]) and np.all(origins + 32 >= edges[1:])  # each window holds its cell
    with pytest.raises(UserError, match="smaller than the model"):
        W.layout((100, 20, 70), window=32)


def _chords(chunk):
    """Windows labelled by their mean chords along each axis: cheap, and different for any other bytes."""
    from conductivity_tf import domain

    values = np.array([d["axis_chords"] for d in domain.describe_many(chunk)])
    return values, None, np.zeros(values.shape, bool), None


def test_npy_and_tiff_read_slab_by_slab_give_the_in_memory_answer(tmp_path):
    v = _layers()
    memory = W.predict_volume(volumes.VolumeSource.of(v), _chords, window=16)
    assert len(set(memory.field[..., 0].ravel().tolist())) == memory.plan.windows     # every window differs
    np.save(tmp_path / "v.npy", v)
    tifffile.imwrite(tmp_path / "v.tif", v)
    for name in ("v.npy", "v.tif"):
        with volumes.open_volume(tmp_path / name) as source:
            assert source.shape == v.shape
            read = W.predict_volume(source, _chords, window=16)
            assert read.values == memory.values and np.array_equal(read.field, memory.field)


def test_a_truncated_npy_or_a_non_binary_volume_is_one_clear_error(tmp_path):
    v = _layers()
    np.save(tmp_path / "v.npy", v)
    data = (tmp_path / "v.npy").read_bytes()
    (tmp_path / "cut.npy").write_bytes(data[:len(data) // 2])
    with pytest.raises(UserError, match="cut.npy"):
        volumes.open_volume(tmp_path / "cut.npy")
    grey = v * 3
    with pytest.raises(UserError, match="not binary"):
        W.predict_volume(volumes.VolumeSource.of(grey, "grey.npy"), W.exact_labeller(1), window=16)
    # cells larger than the window would leave slices no window reads (uncounted, unlabelled)
    with pytest.raises(UserError, match="--cell 24 is larger than the model's 16.3 window"):
        W.predict_volume(volumes.VolumeSource.of(v), W.exact_labeller(1), window=16, cell=24)


def test_windows_spread_over_two_logical_cpus_give_the_one_device_answer(tmp_path):
    v = np.concatenate([microstructure.blobs(72, 0.5, 3, seed=6)[:64], microstructure.blobs(72, 0.4, 3, seed=7)])
    np.save(tmp_path / "v.npy", v[:, :64])
    answers = {}
    for name, extra in (("one", ["--precision", "fp32"]), ("mirrored", ["--devices", "/cpu:0,/cpu:1"]),
                        ("detours", ["--precision", "fp32", "--detours"])):
        proc = run_module("conductivity_tf.predict", tmp_path / "v.npy", "--json", *extra)
        assert proc.returncode == 0, proc.stderr
        answers[name] = json.loads(proc.stdout.splitlines()[-1])
    one, mirrored = answers["one"], answers["mirrored"]
    assert one["cells"] == mirrored["cells"] == [3, 1, 2] and one["windows"] == 6
    assert mirrored["relative_conductivity"] == pytest.approx(one["relative_conductivity"], rel=1e-4)
    assert min(one["relative_conductivity"]) > 0.05
    # the replicas state the run's error model too, as one device does
    assert min(one["uncertainty"]) > 0
    assert mirrored["uncertainty"] == pytest.approx(one["uncertainty"], rel=1e-3)
    # the default coarse detour correction and --detours (fine): the same windows' combination times each one's
    # factors (at least 1), the windows' uncertainty scaled with it and what each correction leaves of the method's
    # own error added in quadrature
    fine = answers["detours"]
    assert one["detours"] == "coarse" and fine["detours"] == "fine"
    assert one["detour_proxies"] == ["faces"] * 3 and set(fine["detour_proxies"]) <= set(W.PROXIES)
    assert len(fine["detour_factors"]) == 3 and min(fine["detour_factors"] + one["detour_factors"]) >= 1.0
    assert [v / f for v, f in zip(fine["relative_conductivity"], fine["detour_factors"])] == pytest.approx(
        [v / f for v, f in zip(one["relative_conductivity"], one["detour_factors"])], rel=1e-9)
    windows = {}
    for mode, answer in (("coarse", one), ("fine", fine)):
        method = [v * W.method_uncertainty(f, mode) for v, f in zip(answer["relative_conductivity"],
                                                                      answer["detour_factors"])]
        assert min(u - m for u, m in zip(answer["uncertainty"], method)) > 0
        windows[mode] = [np.sqrt(u * u - m * m) / f for u, m, f in zip(answer["uncertainty"], method,
                                                                        answer["detour_factors"])]
    assert windows["fine"] == pytest.approx(windows["coarse"], rel=1e-6)
    assert W.method_uncertainty(1.0, "coarse") == pytest.approx(W.METHOD_SLOPE["coarse"] * W.METHOD_OFFSET)
    assert W.method_uncertainty(2.0, "fine") > W.method_uncertainty(1.1, "fine") > W.method_uncertainty(1.0, "fine")


def test_the_whole_volume_benchmark_counts_the_axes_whose_interval_holds_the_full_solve():
    from conductivity_tf.benchmark.whole import _inside_90
    from conductivity_tf.metrics import Z90

    full = [0.30, 0.10, 0.01]                               # the third is below 0.02: not counted
    values = [0.30 + 0.9 * Z90 * 0.02, 0.10 + 1.1 * Z90 * 0.01, 0.5]
    assert _inside_90(values, [0.02, 0.01, 0.0], full) == "1/2"
    assert _inside_90(values, [0.02, 0.02, 0.0], full) == "2/2"
    assert _inside_90(values, None, full) == ""
