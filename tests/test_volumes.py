import os

import numpy as np
import pytest
import tifffile

from conductivity_tf import physics
from conductivity_tf import volumes as V
from conductivity_tf.errors import UserError
from tests.conftest import run_module


@pytest.fixture
def volume():
    return np.random.default_rng(0).integers(0, 2, (6, 7, 8), dtype=np.uint8)


@pytest.mark.parametrize("name", ["v.npy", "v.tif", "v.tiff"])
def test_round_trip_keeps_axis_order(tmp_path, volume, name):
    V.save_volume(tmp_path / name, volume)
    loaded = V.load_volume(tmp_path / name)
    assert np.array_equal(loaded.array, volume)
    assert [p.name for p in tmp_path.iterdir()] == [name]   # no temporary file left behind


def test_raw_needs_shape_and_dtype(tmp_path, volume):
    volume.astype(np.uint16).tofile(tmp_path / "v.raw")
    loaded = V.load_volume(tmp_path / "v.raw", shape=(6, 7, 8), dtype="uint16")
    assert np.array_equal(loaded.array, volume)
    with pytest.raises(UserError, match="needs --shape"):
        V.load_volume(tmp_path / "v.raw")
    with pytest.raises(UserError, match="has 672 bytes"):
        V.load_volume(tmp_path / "v.raw", shape=(6, 7, 9), dtype="uint16")


def test_imagej_hyperstack_and_voxel_size(tmp_path, volume):
    # a ZCYX hyperstack with one channel, 0.5 um voxels in-plane and 0.8 um slices
    tifffile.imwrite(tmp_path / "h.tif", volume[:, None], imagej=True, resolution=(2.0, 2.0),
                     metadata={"spacing": 0.8, "unit": "um", "axes": "ZCYX"})
    loaded = V.load_volume(tmp_path / "h.tif")
    assert np.array_equal(loaded.array, volume)
    assert loaded.voxel_size == pytest.approx((0.8, 0.5, 0.5)) and loaded.unit == "um"


def test_multipage_tiff_written_page_by_page(tmp_path, volume):
    with tifffile.TiffWriter(tmp_path / "pages.tif") as tif:
        for page in volume:
            tif.write(page)
    assert np.array_equal(V.load_volume(tmp_path / "pages.tif").array, volume)


def test_bad_files(tmp_path):
    (tmp_path / "bad.tif").write_bytes(b"II*\x00" + b"\x00" * 20)
    with pytest.raises(UserError, match="cannot read TIFF"):
        V.load_volume(tmp_path / "bad.tif")
    np.save(tmp_path / "flat.npy", np.zeros((3, 3)))
    with pytest.raises(UserError, match="must be 3-D"):
        V.load_volume(tmp_path / "flat.npy")
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(UserError, match="no pickled"):
        V.load_volume(tmp_path / "obj.npy")
    with pytest.raises(UserError, match="does not exist"):
        V.load_volume(tmp_path / "missing.npy")


def test_otsu_separates_a_bimodal_volume():
    rng = np.random.default_rng(1)
    truth = rng.integers(0, 2, (16, 16, 16))
    grey = np.where(truth == 1, 180.0, 60.0) + rng.normal(0, 15, truth.shape)
    assert np.array_equal(V.segment(grey, otsu=True), truth)
    assert np.array_equal(V.segment(grey, otsu=True, conducting="below"), 1 - truth)
    assert np.array_equal(V.segment(grey, threshold=120), truth)
    with pytest.raises(UserError, match="single grey level"):
        V.segment(np.ones((4, 4, 4)), otsu=True)


def test_remap_and_tile():
    v = np.array([0, 85, 170, 85] * 16, np.uint8).reshape(4, 4, 4)
    out = V.remap_phases(v, {0: 0, 85: 1, 170: 0})
    assert np.array_equal(out, (v == 85).astype(np.uint8))
    with pytest.raises(UserError, match="170"):
        V.remap_phases(v, {0: 0, 85: 1})
    big = np.arange(10 * 12 * 14).reshape(10, 12, 14)
    tiles = V.tile(big, 4, stride=3)
    assert len(tiles) == 3 * 3 * 4
    origin, cube = tiles[5]
    assert np.array_equal(cube, big[origin[0]:origin[0] + 4, origin[1]:origin[1] + 4, origin[2]:origin[2] + 4])
    with pytest.raises(UserError, match="smaller than the tile"):
        V.tile(big, 11)


def test_three_phase_electrode_from_tiff(shared_data, tmp_path):
    """The 256^3 three-phase electrode (values 0, 85, 170): read, tile, solve with phase conductivities."""
    loaded = V.load_volume(os.path.join(shared_data, "electrode-3phase-256.tiff"))
    assert loaded.array.shape == (256, 256, 256)
    assert set(np.unique(loaded.array).tolist()) == {0, 85, 170}
    origin, cube = V.tile(loaded.array, 48, stride=208)[0]
    sigma = {0: 0.0, 85: 1.0, 170: 0.1}
    r = physics.solve(cube, sigma=sigma)
    # each phase alone bounds the mixture: more than the 85-phase network alone, less than all conducting
    alone = physics.solve((cube == 85).astype(np.uint8))
    for mixed, single in zip(r, alone):
        assert single.relative_conductivity < mixed.relative_conductivity < 1.0
    # the CLI reads the same file with the same phase map and agrees on a tile saved as .npy
    np.save(tmp_path / "tile.npy", cube)
    proc = run_module("conductivity_tf.physics", tmp_path / "tile.npy", "--axis", "all", "--json",
                      "--sigma", "0=0", "--sigma", "85=1", "--sigma", "170=0.1")
    assert proc.returncode == 0, proc.stderr
    import json

    assert json.loads(proc.stdout)["relative_conductivity"] == pytest.approx(
        [x.relative_conductivity for x in r], rel=1e-6)


def test_written_files_get_the_usual_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        V.save_volume(tmp_path / "v.npy", np.zeros((2, 2, 2), np.uint8))
    finally:
        os.umask(old)
    assert (tmp_path / "v.npy").stat().st_mode & 0o777 == 0o644


def test_a_mask_saved_as_0_255_or_0_65535_reads_as_0_1_and_nothing_else_does():
    v = np.random.default_rng(1).integers(0, 2, (6, 7, 8), dtype=np.uint8)
    for level, dtype in ((255, np.uint8), (255, np.int16), (65535, np.uint16)):
        mask = V.binary_mask(v.astype(dtype) * dtype(level))
        assert mask.dtype == np.uint8 and np.array_equal(mask, v)
    for other in (v * 3, v * 200, v + (v == 0) * 255, v.astype(np.float32) * 255, np.zeros_like(v)):
        assert V.binary_mask(other) is other or np.array_equal(V.binary_mask(other), other)
    # three phases with 255 among them stay phases
    three = v.copy()
    three[0] = 255
    assert np.array_equal(V.binary_mask(three), three)
