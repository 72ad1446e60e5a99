"""The training domain of a model, and whether a volume lies inside it: plain numpy, no TensorFlow.

A volume is described by a few numbers that say what kind of structure it is (``describe``):

- ``porosity``: the conducting volume fraction;
- ``conducting_chord`` / ``insulating_chord``: the mean chord length of each phase in voxels (the mean length
  of the runs of that phase along the three axes; a feature size);
- ``anisotropy``: the largest over the smallest of the three per-axis mean chords of the conducting phase;
- ``spanning``: the smallest, over the three axes, fraction of conducting voxels in clusters that join the two
  faces normal to the axis (low near the percolation threshold, where a few necks carry the current).

``describe`` also gives, per axis, the chords and spanning fractions (``axis_chords``, ``axis_spanning``), the series
bound of the spanning clusters (``axis_series``: slices in series, each filled as far as those clusters fill it) and
the geodesic tortuosity (``axis_tortuosity``: the shortest path from face to face over the straight one) and a
renormalised conductivity (``axis_renormalised``: 2x2x2 blocks merged level by level) and the conductivity of
the coarse problem of the volume's cells of 4^3 voxels joined through the voxel pairs across their faces
(``axis_faces``), the same problem with each junction capped by the harmonic mean of its two cells' renormalised
conductivities (``axis_capped``) and the fraction of the junctions' conductance the capping keeps
(``axis_capped_kept``), which the error model of ``uncertainty`` and the correction of ``correction`` use; the last
five come from ``coarse`` and ``faces``.

``training_domain`` takes the central 99 % of each over the training split (for a run with a correction, over
every train split the network or its correction was fitted on: ``evaluate.calibrate``); ``outside`` names every
number of a volume that falls out of it, as a reason a person can read. A run directory keeps its domain in
``domain.json``.
"""

import os
from concurrent.futures import ThreadPoolExecutor

import numba
import numpy as np
from numba import njit

from conductivity_tf.coarse import (
    _NONE,
    _ONE,
    CELL_LEVELS,
    _popcount,
    _renormalised,
    _tortuosity,
    renormalised_field,
)
from conductivity_tf.faces import _faces_and_capped
from conductivity_tf.fileio import read_json, write_json

DESCRIPTORS = {
    "porosity": "porosity",
    "conducting_chord": "feature size of the conducting phase (mean chord, voxels)",
    "insulating_chord": "feature size of the insulating phase (mean chord, voxels)",
    "anisotropy": "anisotropy (largest / smallest mean chord over the axes)",
    "spanning": "closeness to the percolation threshold (fraction of the conducting phase joining both faces)",
}
DOMAIN_FILE = "domain.json"


# rows of at most 64 voxels are packed into the bits of a word: eight 0/1 bytes (one little-endian word) times
# _GATHER put byte k's bit at bit 56 + k; a power of two times the de Bruijn constant has its exponent in the top
# six bits, which _CTZ maps back (the count of trailing zeros)
_GATHER = np.uint64(0x0102040810204080)
_DEBRUIJN = np.uint64(0x03F79D71B4CB0A89)
_CTZ = np.zeros(64, np.int64)
_CTZ[[((1 << i) * 0x03F79D71B4CB0A89 % (1 << 64)) >> 58 for i in range(64)]] = np.arange(64)


@njit(inline="always")
def _keep_run(rs, re, count, start, end, n2):
    """Keep the run start..end (exclusive) of a row of n2 voxels as run ``count``: (the next count, the run's
    voxels, its transitions to the insulating phase within the row)."""
    rs[count] = start
    re[count] = end
    return count + 1, end - start, (start > 0) + (end < n2)


@njit(inline="always")
def _root(parent, a):
    while parent[a] != a:
        parent[a] = parent[parent[a]]
        a = parent[a]
    return a


@njit(inline="always")
def _join(parent, rs, re, a0, a1, b0, b1):
    """Join the runs a0..a1 of one row with the overlapping runs b0..b1 of the row before it (along axis 0 or 1);
    the number of voxel pairs they share (conducting on both sides of the face between the rows)."""
    shared = 0
    p, q = a0, b0
    while p < a1 and q < b1:
        low = max(rs[p], rs[q])
        high = min(re[p], re[q])
        if high > low:
            shared += high - low
            x, y = _root(parent, p), _root(parent, q)
            if x != y:
                parent[max(x, y)] = min(x, y)
        if re[p] < re[q]:
            p += 1
        else:
            q += 1
    return shared


@njit(inline="always")
def _join_bits(parent, a0, b0, a, b):
    """``_join`` of two rows of at most 64 voxels given as the bits of words ``a`` and ``b``, their runs numbered
    from a0 and b0: each run of their common bits lies in one run of each row, found by counting the runs that
    start at or before it; no merge of the two lists of runs, whose branches the processor cannot predict."""
    common = a & b
    shared = _popcount(common)
    a_starts, b_starts = a & ~(a << _ONE), b & ~(b << _ONE)
    while common != _NONE:
        low = common & (~common + _ONE)
        upto = (low << _ONE) - _ONE                 # the bits up to and including the overlap's first
        x = _root(parent, a0 + _popcount(a_starts & upto) - 1)
        y = _root(parent, b0 + _popcount(b_starts & upto) - 1)
        if x != y:
            parent[max(x, y)] = min(x, y)
        common &= common + low                      # the overlap's bits cleared
    return shared


@njit(cache=True, nogil=True)
def _structure(x):
    """Chord counts and spanning clusters of a 0/1 uint8 volume in one pass over its runs along the last axis:
    (conducting voxels, run starts of each phase along each axis (2, 3), conducting voxels in 6-connected clusters
    touching both faces normal to each axis (3,), those voxels per slice normal to each axis (3, largest side),
    the coarse geodesic tortuosity along each axis (3,), ``_tortuosity``, the renormalised conductivity along each
    axis (3,), ``_renormalised``, and the conductivity of the volume's cells of 4^3 voxels joined through their
    faces' voxel pairs along each axis (3,), then capped by the cells' renormalised conductivities, with the fraction
    the capping keeps (3,) each, ``_faces_and_capped``).

    The runs of conducting voxels along the last axis are the nodes of a union-find; a run joins the runs it
    overlaps in the rows before it along axes 0 and 1, which is 6-connectivity. Along a line the runs of the two
    phases alternate, so the insulating runs follow from the transitions: along the last axis from the runs' ends,
    along axes 0 and 1 from the voxels two neighbouring rows share."""
    n0, n1, n2 = x.shape
    rows = n0 * n1
    rs = np.empty(rows * ((n2 + 1) // 2), np.int32)   # run start and end (exclusive) along the last axis
    re = np.empty_like(rs)
    first = np.empty(rows + 1, np.int64)              # runs of row i * n1 + j: first[row] .. first[row + 1]
    count = 0
    ones = 0
    ends = 0                                          # transitions along the last axis
    face = np.zeros((2, 2), np.int64)                 # conducting voxels on the faces normal to axes 0 and 1
    packed = n2 % 8 == 0 and n2 <= 64
    row_bits = np.empty(rows if packed else 0, np.uint64)   # each row's voxels as the bits of a word, if packed
    for i in range(n0):
        for j in range(n1):
            first[i * n1 + j] = count
            row = x[i, j]
            here = 0
            if packed:   # the row as the bits of one word, its runs found by bit arithmetic: 3.5x the byte loop
                words = row.view(np.uint64)
                bits = _NONE
                for b in range(n2 // 8):
                    bits |= ((words[b] * _GATHER) >> np.uint64(56)) << np.uint64(8 * b)
                row_bits[i * n1 + j] = bits
                while bits != _NONE:
                    low = bits & (~bits + _ONE)        # the lowest bit of the run
                    carried = bits + low               # the run's bits cleared, the bit after it set
                    after = carried & ~bits
                    start = _CTZ[(low * _DEBRUIJN) >> np.uint64(58)]
                    end = _CTZ[(after * _DEBRUIJN) >> np.uint64(58)] if after != _NONE else 64
                    bits &= carried
                    count, voxels, turns = _keep_run(rs, re, count, start, end, n2)
                    here += voxels
                    ends += turns
            else:
                k = 0
                while k < n2:
                    if row[k]:
                        start = k
                        k += 1
                        while k < n2 and row[k]:
                            k += 1
                        count, voxels, turns = _keep_run(rs, re, count, start, k, n2)
                        here += voxels
                        ends += turns
                    else:
                        k += 1
            ones += here
            face[0, 0] += here if i == 0 else 0
            face[0, 1] += here if i == n0 - 1 else 0
            face[1, 0] += here if j == 0 else 0
            face[1, 1] += here if j == n1 - 1 else 0
    first[rows] = count
    parent = np.arange(count, dtype=np.int32)
    shared = np.zeros(2, np.int64)
    for i in range(n0):
        for j in range(n1):
            r = i * n1 + j
            if packed:
                if j > 0:
                    shared[1] += _join_bits(parent, first[r], first[r - 1], row_bits[r], row_bits[r - 1])
                if i > 0:
                    shared[0] += _join_bits(parent, first[r], first[r - n1], row_bits[r], row_bits[r - n1])
                continue
            if j > 0:
                shared[1] += _join(parent, rs, re, first[r], first[r + 1], first[r - 1], first[r])
            if i > 0:
                shared[0] += _join(parent, rs, re, first[r], first[r + 1], first[r - n1], first[r - n1 + 1])
    size = np.zeros(count, np.int64)
    touches = np.zeros(count, np.int32)               # bit 2a: the low face normal to axis a, bit 2a + 1: high
    for i in range(n0):
        for j in range(n1):
            r = i * n1 + j
            bits = (1 if i == 0 else 0) | (2 if i == n0 - 1 else 0) | (4 if j == 0 else 0) | (8 if j == n1 - 1 else 0)
            for t in range(first[r], first[r + 1]):
                root = _root(parent, t)
                size[root] += re[t] - rs[t]
                touches[root] |= bits | (16 if rs[t] == 0 else 0) | (32 if re[t] == n2 else 0)
    spanning = np.zeros(3, np.int64)
    for t in range(count):
        if parent[t] == t:
            for a in range(3):
                if (touches[t] >> (2 * a)) & 3 == 3:
                    spanning[a] += size[t]
    # the voxels of the clusters joining the faces normal to each axis, per slice normal to that axis
    slices = np.zeros((3, max(n0, n1, n2)), np.int64)
    for i in range(n0):
        for j in range(n1):
            r = i * n1 + j
            for t in range(first[r], first[r + 1]):
                joins = touches[_root(parent, t)]
                if joins & 3 == 3:
                    slices[0, i] += re[t] - rs[t]
                if (joins >> 2) & 3 == 3:
                    slices[1, j] += re[t] - rs[t]
                if (joins >> 4) & 3 == 3:   # +1 where the run starts, -1 after it ends: summed below
                    slices[2, rs[t]] += 1
                    if re[t] < n2:
                        slices[2, re[t]] -= 1
    for k in range(1, n2):
        slices[2, k] += slices[2, k - 1]
    up = np.array([ones - shared[0], ones - shared[1], count], np.int64)
    changes = np.array([2 * ones - face[0, 0] - face[0, 1] - 2 * shared[0],
                        2 * ones - face[1, 0] - face[1, 1] - 2 * shared[1], ends], np.int64)
    lines = np.array([n1 * n2, n0 * n2, n0 * n1], np.int64)
    starts = np.zeros((2, 3), np.int64)
    for a in range(3):
        starts[1, a] = up[a]
        starts[0, a] = changes[a] + lines[a] - up[a]
    return ones, starts, spanning, slices


def _counts(x, capped=True):
    """Everything the descriptors of a 0/1 uint8 volume come from: ``_structure``'s counts, then the coarse
    estimates (``coarse``: the geodesic tortuosity, the renormalised conductivity, the cells joined through their
    faces, with ``capped`` also capped by the cells), each its own kernel. Joined in one kernel (or one parallel
    loop) the kernels would be compiled again together, which took numba 0.56 (the SDK images' stack) three
    minutes."""
    cells = renormalised_field(x, CELL_LEVELS)
    return _structure(x) + (_tortuosity(x), _renormalised(cells)) + _faces_and_capped(x, cells, capped)


def _mean_chords(voxels, starts):
    """Mean run length along each axis of a phase of ``voxels`` voxels with ``starts`` run starts per axis (inf
    for an empty phase)."""
    return [voxels / s if s else float("inf") for s in starts]


def _series(slices, shape):
    """Per axis, the series bound of the clusters joining the faces normal to it: the harmonic mean, over the slices
    normal to the axis, of the fraction of the slice those clusters fill (slices in series, each slice's voxels in
    parallel: an upper bound of sigma_eff/sigma_0 that sees the narrowest sections); 0 without such a cluster."""
    size = int(np.prod(shape))
    out = []
    for a in range(3):
        filled = slices[a, :shape[a]]
        out.append(float(shape[a] / np.sum((size // shape[a]) / filled)) if filled.min() > 0 else 0.0)
    return out


def _description(shape, ones, starts, spanning, slices, tortuosity, renormalised, faces, capped, kept):
    """The descriptors' dict from ``_structure``'s counts (plain Python numbers: this runs once per volume); without
    the capped junctions where they were not solved (NaN)."""
    size, ones = int(np.prod(shape)), int(ones)
    series = _series(slices, shape)
    starts, spanning = starts.tolist(), spanning.tolist()
    chords = _mean_chords(ones, starts[1])
    finite = [c for c in chords if c != float("inf")] or [float(shape[0])]
    insulating = [c for c in _mean_chords(size - ones, starts[0]) if c != float("inf")] or [float(shape[0])]
    fractions = [s / ones if ones else 0.0 for s in spanning]
    described = {"porosity": ones / size, "conducting_chord": sum(finite) / len(finite),
                 "insulating_chord": sum(insulating) / len(insulating), "anisotropy": max(finite) / min(finite),
                 "spanning": min(fractions),
                 # per axis, for the error model (uncertainty.py)
                 "axis_chords": [c if c != float("inf") else 0.0 for c in chords],
                 "axis_spanning": fractions, "axis_series": series,
                 "axis_tortuosity": [float(t) for t in tortuosity],
                 "axis_renormalised": [float(r) for r in renormalised], "axis_faces": [float(f) for f in faces]}
    if not np.isnan(capped[0]):
        described.update(axis_capped=[float(c) for c in capped], axis_capped_kept=[float(k) for k in kept])
    return described


def describe(volume):
    """The descriptors of a binary volume (1 = conducting), as a dict."""
    conducting = np.ascontiguousarray(np.asarray(volume) > 0)
    return _description(conducting.shape, *_counts(conducting.view(np.uint8)))


def describe_many(volumes, chunk=256, capped=True):
    """``describe`` of each volume of an (N, n0, n1, n2) batch, the volumes spread over numba's threads (the
    kernels release the GIL; ``chunk`` at a time, so that a dataset's split is not copied whole). Without
    ``capped``, the descriptions leave out ``axis_capped`` and ``axis_capped_kept`` (their solve is about a quarter
    of the time)."""
    volumes = np.asarray(volumes)
    if volumes.ndim != 4:
        raise ValueError("describe_many takes a batch (N, n0, n1, n2) of volumes, not shape {}".format(volumes.shape))
    out = []
    with ThreadPoolExecutor(max(1, min(numba.get_num_threads(), len(volumes)))) as pool:
        for begin in range(0, len(volumes), chunk):
            part = volumes[begin:begin + chunk]
            if not (part.dtype == np.uint8 and part.flags.c_contiguous and part.max(initial=0) <= 1):
                part = np.ascontiguousarray(part > 0).view(np.uint8)    # 0/1 bytes as they are: no copy
            out += [_description(volumes.shape[1:], *counts)
                    for counts in pool.map(lambda x: _counts(x, capped), part)]
    return out


def without_path(descriptions, axes=(0, 1, 2)):
    """(N, len(axes)) bool: where a described volume has no conducting path between the faces normal to the axis."""
    return np.array([[d["axis_spanning"][a] == 0.0 for a in axes] for d in descriptions], bool).reshape(-1, len(axes))


def training_domain(descriptions, coverage=0.99):
    """{descriptor: [low, high]}: the central ``coverage`` of each descriptor over the training volumes."""
    tail = (1.0 - coverage) / 2.0 * 100.0
    return {name: [float(np.percentile([d[name] for d in descriptions], tail)),
                   float(np.percentile([d[name] for d in descriptions], 100.0 - tail))] for name in DESCRIPTORS}


class Reason(str):
    """Why a volume lies outside the training domain: the sentence, with the descriptor, its label, the volume's
    value and the training range as attributes."""

    def __new__(cls, descriptor, value, low, high):
        label = DESCRIPTORS[descriptor]
        reason = str.__new__(cls, "{} {:.3g} outside the training range {:.3g}-{:.3g}".format(label, value, low, high))
        reason.descriptor, reason.label, reason.value, reason.low, reason.high = descriptor, label, value, low, high
        return reason


def outside(description, domain):
    """The ``Reason``s (strings) a described volume lies outside ``domain``; empty when it lies inside."""
    reasons = []
    for name in DESCRIPTORS:
        low, high = domain[name]
        value = description[name]
        if value < low or value > high:
            reasons.append(Reason(name, value, low, high))
    return reasons


def save(directory, domain):
    write_json(os.path.join(directory, DOMAIN_FILE), domain)


def load(directory):
    """The domain a run directory keeps, or None when it has none (a model from before domain checks)."""
    return read_json(os.path.join(directory, DOMAIN_FILE))
