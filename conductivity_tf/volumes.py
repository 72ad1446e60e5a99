"""Reading, segmenting and tiling voxel volumes (no TensorFlow).

Formats: ``.npy``; ``.tif``/``.tiff`` stacks (multi-page and ImageJ hyperstacks, via tifffile);
raw binary with a given shape and dtype (C order, z slowest). Axis order is kept as stored: axis 0 is
the slowest-varying axis of the file (the slice index of a TIFF stack).

Voxel size is kept when the file says it (ImageJ ``spacing`` and TIFF resolution tags), in the file's
unit, as a (z, y, x) tuple; ``None`` when unknown.

>>> import numpy as np
>>> grey = np.random.default_rng(0).normal(size=(16, 16, 16))
>>> phases = segment(grey, threshold=0.0)               # 1 where grey > 0
>>> cubes = tile(phases, 8, stride=8)                    # eight 8^3 sub-volumes
>>> len(cubes), cubes[0][1].shape
(8, (8, 8, 8))
"""

import os
from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np

from conductivity_tf.errors import UserError
from conductivity_tf.fileio import atomic_path

TIFF_SUFFIXES = (".tif", ".tiff")


@dataclass
class Volume:
    array: np.ndarray
    voxel_size: Optional[Tuple[float, float, float]] = None
    unit: Optional[str] = None
    source: Optional[str] = None


def _read_tiff(path):
    import logging

    import tifffile

    log = logging.getLogger("tifffile")
    level = log.level
    log.setLevel(logging.CRITICAL)  # its warnings would be a second line; the error below says it all
    try:
        with tifffile.TiffFile(path) as tif:
            if not len(tif.pages):
                raise ValueError("no image pages found")
            array = tif.asarray()
            if array.ndim == 2 and len(tif.pages) > 1:
                # pages written one by one are separate series: the stack is all of them
                array = np.stack([page.asarray() for page in tif.pages])
            voxel_size, unit = None, None
            meta = tif.imagej_metadata or {}
            page = tif.pages[0]
            try:
                xres = page.tags["XResolution"].value
                yres = page.tags["YResolution"].value
                dx = xres[1] / xres[0] if xres[0] else None
                dy = yres[1] / yres[0] if yres[0] else None
            except (KeyError, ZeroDivisionError, TypeError):
                dx = dy = None
            dz = meta.get("spacing")
            if dx and dy and (dz or dx == dy):
                voxel_size = (float(dz or dx), float(dy), float(dx))
                unit = meta.get("unit")
    except (tifffile.TiffFileError, ValueError, OSError, KeyError, IndexError) as err:
        raise UserError("cannot read TIFF {}: {}; check that the file is a complete TIFF stack".format(
            path, str(err).splitlines()[0] if str(err) else type(err).__name__))
    finally:
        log.setLevel(level)
    squeezed = np.squeeze(array)
    if squeezed.ndim == 4 and squeezed.shape[-1] in (3, 4):
        raise UserError("TIFF {} is a colour stack (shape {}); save it as a single-channel stack".format(
            path, array.shape))
    return Volume(squeezed, voxel_size, unit, path)


def load_volume(path, shape=None, dtype=None, offset=0):
    """Load a volume from ``.npy``, ``.tif``/``.tiff`` or raw binary (raw needs ``shape`` and ``dtype``).

    Returns a ``Volume``; raises ``UserError`` naming the file when it cannot be read as a 3-D volume.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise UserError("volume file {} does not exist; check the path".format(path))
    lower = path.lower()
    if lower.endswith(".npy"):
        try:
            volume = Volume(np.load(path, allow_pickle=False), source=path)
        except ValueError as err:
            raise UserError("cannot read {} as a .npy array ({}); save it with numpy.save (no pickled "
                            "objects)".format(path, str(err).splitlines()[0]))
        except OSError as err:
            raise UserError("cannot read {}: {}".format(path, err))
    elif lower.endswith(TIFF_SUFFIXES):
        volume = _read_tiff(path)
    else:
        if shape is None or dtype is None:
            raise UserError("{} is read as raw binary, which needs --shape Z Y X and --dtype (e.g. uint8); "
                            "or give a .npy or .tif file".format(path))
        shape = tuple(int(s) for s in shape)
        if len(shape) != 3 or min(shape) < 1:
            raise UserError("--shape {} is invalid; give three positive sizes Z Y X".format(
                " ".join(map(str, shape))))
        try:
            dt = np.dtype(dtype)
        except TypeError:
            raise UserError("--dtype {} is not a numpy dtype; use e.g. uint8, uint16, float32".format(dtype))
        expected = int(np.prod(shape)) * dt.itemsize
        actual = os.path.getsize(path) - offset
        if actual != expected:
            raise UserError("raw file {} has {} bytes but shape {} of {} needs {}; check --shape and "
                            "--dtype".format(path, actual, "x".join(map(str, shape)), dt.name, expected))
        volume = Volume(np.fromfile(path, dtype=dt, offset=offset).reshape(shape), source=path)
    if volume.array.ndim != 3:
        raise UserError("{} holds a {}-D array of shape {}; a volume must be 3-D".format(
            path, volume.array.ndim, volume.array.shape))
    if not (np.issubdtype(volume.array.dtype, np.number) or volume.array.dtype == np.bool_) or np.iscomplexobj(
            volume.array):
        raise UserError("{} holds {} values; a volume holds real phase labels or grey levels (save it as uint8, "
                        "an integer or a float type)".format(path, volume.array.dtype))
    return volume


def save_volume(path, array, voxel_size=None):
    """Save a volume as ``.npy`` or ``.tif`` (ImageJ stack), atomically."""
    path = os.fspath(path)
    array = np.asarray(array)
    with atomic_path(path) as tmp:
        if path.lower().endswith(TIFF_SUFFIXES):
            import tifffile

            kwargs = {}
            if voxel_size is not None:
                kwargs = dict(resolution=(1.0 / voxel_size[2], 1.0 / voxel_size[1]),
                              metadata={"spacing": voxel_size[0], "axes": "ZYX"})
            else:
                kwargs = dict(metadata={"axes": "ZYX"})
            tifffile.imwrite(tmp, array, imagej=True, **kwargs)
        elif path.lower().endswith(".npy"):
            with open(tmp, "wb") as handle:
                np.save(handle, array, allow_pickle=False)
        else:
            array.tofile(tmp)


def segment(grey, threshold=None, otsu=False, conducting="above"):
    """Grey levels -> uint8 phases, 1 = conducting. Give ``threshold`` or ``otsu=True``.

    conducting: 'above' (bright phase conducts) or 'below' (dark phase conducts, e.g. pores in CT).
    """
    grey = np.asarray(grey)
    if np.issubdtype(grey.dtype, np.floating) and not np.all(np.isfinite(grey)):
        raise UserError("the volume contains NaN or infinite voxels; clean it before segmenting")
    if otsu:
        from skimage.filters import threshold_otsu

        if grey.min() == grey.max():
            raise UserError("the volume has a single grey level; Otsu needs two phases to separate")
        threshold = threshold_otsu(grey)
    if threshold is None:
        raise UserError("segmentation needs --threshold VALUE or --otsu")
    if conducting not in ("above", "below"):
        raise UserError("conducting={!r} is invalid; use 'above' or 'below'".format(conducting))
    mask = grey > threshold if conducting == "above" else grey <= threshold
    return mask.astype(np.uint8)


# the conducting value of binary masks as image tools save them: white in 8 and in 16 bits
MASK_LEVELS = (255, 65535)


def binary_mask(array):
    """An integer volume whose only nonzero value is one of ``MASK_LEVELS`` (a segmented binary mask saved as 0/255,
    or 0/65535) as 0/1 uint8, 1 where it holds that value; any other volume unchanged. Read this way by ``predict``,
    ``dataset import`` and the solver without ``--sigma``."""
    array = np.asarray(array)
    if array.dtype.kind not in "ui" or array.size == 0:
        return array
    top = array.max()
    if int(top) not in MASK_LEVELS:
        return array
    conducting = array == top
    if np.count_nonzero(conducting) != np.count_nonzero(array):      # other nonzero values: not a mask
        return array
    return conducting.view(np.uint8)


def remap_phases(array, mapping):
    """Replace phase labels: ``mapping`` {old: new}; labels not in the mapping are an error."""
    array = np.asarray(array)
    values = np.unique(array)
    missing = [v for v in values.tolist() if v not in mapping]
    if missing:
        raise UserError("phase(s) {} have no entry in the phase map; add e.g. --phase-map {}=0".format(
            ", ".join(str(v) for v in missing), missing[0]))
    table = np.array([mapping[v] for v in values.tolist()])
    return table[np.searchsorted(values, array)].astype(np.uint8)


def tile(array, size, stride=None):
    """Cut cubic sub-volumes of edge ``size`` every ``stride`` voxels (default: no overlap).

    Returns a list of ((z, y, x) origin, view) pairs in C order of the origins.
    """
    array = np.asarray(array)
    stride = stride or size
    if size < 1 or stride < 1:
        raise UserError("tile size and stride must be positive (got {} and {})".format(size, stride))
    if any(n < size for n in array.shape):
        raise UserError("a volume of shape {} is smaller than the tile size {}; use a smaller --tile".format(
            array.shape, size))
    starts = [range(0, n - size + 1, stride) for n in array.shape]
    return [((z, y, x), array[z:z + size, y:y + size, x:x + size])
            for z in starts[0] for y in starts[1] for x in starts[2]]


# ---------------------------------------------------------------------------------------------
# volumes larger than memory: read slab by slab along axis 0


class VolumeSource(object):
    """A volume on disk read slab by slab along axis 0 (``read(start, stop)``), never whole: ``.npy`` by reads at
    the slab's offset, TIFF stacks page by page. ``transform`` (phases from grey levels, relabelling) is applied per
    slab. Volumes already in memory are wrapped as they are (``VolumeSource.of(array)``)."""

    def __init__(self, shape, dtype, read, name, transform=None, close=None):
        self.shape, self.dtype, self.name = tuple(int(n) for n in shape), np.dtype(dtype), name
        self._read, self._transform, self._close = read, transform, close

    @classmethod
    def of(cls, array, name="volume"):
        array = np.asarray(array)
        return cls(array.shape, array.dtype, lambda start, stop: array[start:stop], name)

    def read(self, start, stop):
        """Slices ``start`` .. ``stop`` - 1 along axis 0, as an array in memory (transformed)."""
        try:
            slab = np.array(self._read(start, stop))
        except (OSError, ValueError) as err:
            raise UserError("cannot read slices {}..{} of {} ({}); the file is damaged or truncated".format(
                start, stop - 1, self.name, str(err).splitlines()[0] if str(err) else type(err).__name__))
        return self._transform(slab) if self._transform else slab

    def close(self):
        if self._close:
            self._close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def open_volume(path, args=None):
    """A ``VolumeSource`` for ``path``: ``.npy`` read slab by slab, TIFF page by page, raw read whole; the
    command-line segmentation options of ``args`` (``--threshold``, ``--phase-map``) applied per slab
    (``--otsu`` needs the whole volume's histogram: use ``load_volume_from_args``), then a binary mask saved as
    0/255 or 0/65535 read as 0/1 (``binary_mask``; slab by slab: a slab's only nonzero value conducts)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise UserError("volume file {} does not exist; check the path".format(path))
    if args is not None:
        if getattr(args, "otsu", False):
            raise UserError("--otsu needs the whole volume in memory; give --threshold for a volume read slab by "
                            "slab")
        mapping = _parse_phase_map(args.phase_map) if getattr(args, "phase_map", None) else None
        threshold = getattr(args, "threshold", None)
        conducting = "below" if getattr(args, "dark_conducts", False) else "above"

        def transform(slab):
            if threshold is not None:
                slab = segment(slab, threshold=threshold, conducting=conducting)
            if mapping:
                slab = remap_phases(slab, mapping)
            return binary_mask(slab)
    else:
        transform = binary_mask
    lower = path.lower()
    if lower.endswith(".npy"):
        source = _npy_source(path, transform)
    elif lower.endswith(TIFF_SUFFIXES):
        source = _tiff_source(path, transform)
    else:
        if args is None or args.shape is None or args.dtype is None:
            raise UserError("{} is read as raw binary, which needs --shape Z Y X and --dtype (e.g. uint8); or give "
                            "a .npy or .tif file".format(path))
        array = load_volume(path, shape=args.shape, dtype=args.dtype).array  # checked sizes; reads it whole
        source = VolumeSource(array.shape, array.dtype, lambda a, b: array[a:b], path, transform)
    if len(source.shape) != 3:
        raise UserError("{} holds a {}-D array of shape {}; a volume must be 3-D".format(
            path, len(source.shape), source.shape))
    if not (np.issubdtype(source.dtype, np.number) or source.dtype == np.bool_) or np.issubdtype(
            source.dtype, np.complexfloating):
        raise UserError("{} holds {} values; a volume holds real phase labels or grey levels".format(
            path, source.dtype))
    return source


def _npy_source(path, transform):
    """A .npy file read slab by slab with plain reads at the slab's offset (a memory map would keep every page it
    touched resident); its size is checked against its header first."""
    try:
        with open(path, "rb") as handle:
            version = np.lib.format.read_magic(handle)
            shape, fortran, dtype = (np.lib.format.read_array_header_1_0(handle) if version == (1, 0) else
                                     np.lib.format.read_array_header_2_0(handle))
            offset = handle.tell()
    except (ValueError, OSError) as err:
        raise UserError("cannot read {} as a .npy array ({}); save it with numpy.save".format(
            path, str(err).splitlines()[0]))
    if dtype.hasobject:
        raise UserError("cannot read {} as a .npy array (it holds pickled objects); save it with numpy.save "
                        "(no pickled objects)".format(path))
    expected = offset + int(np.prod(shape)) * dtype.itemsize
    if os.path.getsize(path) < expected:
        raise UserError("{} is truncated: {} bytes, its header needs {}; copy it again".format(
            path, os.path.getsize(path), expected))
    if fortran or len(shape) != 3:
        array = np.load(path, allow_pickle=False)  # not sliceable by planes on disk: read as it is
        return VolumeSource(array.shape, array.dtype, lambda a, b: array[a:b], path, transform)
    plane = int(np.prod(shape[1:]))

    def read(start, stop):
        return np.fromfile(path, dtype=dtype, count=(stop - start) * plane,
                           offset=offset + start * plane * dtype.itemsize).reshape((stop - start,) + shape[1:])

    return VolumeSource(shape, dtype, read, path, transform)


def _tiff_source(path, transform):
    import logging

    import tifffile

    log = logging.getLogger("tifffile")
    log.setLevel(logging.CRITICAL)  # its warnings would be a second line; the errors below say it all
    try:
        tif = tifffile.TiffFile(path)
        pages = tif.pages
        if len(pages) < 2:  # one page holding the whole stack (or a 2-D image): read as load_volume reads it
            tif.close()
            array = _read_tiff(path).array
            return VolumeSource(array.shape, array.dtype, lambda a, b: array[a:b], path, transform)
        shape = (len(pages),) + tuple(pages[0].shape)
        dtype = pages[0].dtype
    except UserError:
        raise
    except (tifffile.TiffFileError, ValueError, OSError, KeyError, IndexError) as err:
        raise UserError("cannot read TIFF {}: {}; check that the file is a complete TIFF stack".format(
            path, str(err).splitlines()[0] if str(err) else type(err).__name__))

    def read(start, stop):
        try:
            return np.stack([pages[i].asarray() for i in range(start, stop)])
        except (tifffile.TiffFileError, KeyError, IndexError) as err:
            raise ValueError(str(err) or type(err).__name__)

    return VolumeSource(shape, dtype, read, path, transform, tif.close)


# ---------------------------------------------------------------------------------------------
# command-line options shared by every tool that reads volumes


def add_volume_arguments(parser):
    group = parser.add_argument_group("reading volumes")
    group.add_argument("--shape", nargs=3, type=int, metavar=("Z", "Y", "X"), help="shape of raw files")
    group.add_argument("--dtype", help="dtype of raw files, e.g. uint8, uint16, float32")
    group.add_argument("--threshold", type=float, help="segment grey levels: conducting where above it")
    group.add_argument("--otsu", action="store_true", help="segment grey levels with Otsu's threshold")
    group.add_argument("--dark-conducts", action="store_true",
                       help="with --threshold/--otsu: the dark phase conducts (pores in most CT scans)")
    group.add_argument("--phase-map", action="append", metavar="OLD=NEW",
                       help="relabel phases, e.g. --phase-map 85=1 --phase-map 0=0 --phase-map 170=0")


def _parse_phase_map(items):
    mapping = {}
    for item in items:
        old, sep, new = item.partition("=")
        try:
            if not sep:
                raise ValueError
            mapping[float(old) if "." in old else int(old)] = int(new)
        except ValueError:
            raise UserError("--phase-map {!r} is not OLD=NEW with integer labels, e.g. 85=1".format(item))
    return mapping


def load_volume_from_args(path, args):
    """Load one volume and apply the segmentation / relabelling the command-line options ask for."""
    volume = load_volume(path, shape=args.shape, dtype=args.dtype)
    try:
        if args.threshold is not None or args.otsu:
            volume.array = segment(volume.array, threshold=args.threshold, otsu=args.otsu,
                                   conducting="below" if args.dark_conducts else "above")
        if args.phase_map:
            volume.array = remap_phases(volume.array, _parse_phase_map(args.phase_map))
    except UserError as err:
        raise UserError("{}: {}".format(path, err))
    return volume
