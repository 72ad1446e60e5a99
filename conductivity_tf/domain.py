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
the coarse problem of the volume's cells of 4^3 voxels (``axis_cells``: the blocks merged twice, then solved), which
the error model of ``uncertainty`` and the correction of ``correction`` use.

``training_domain`` takes the central 99 % of each over the training split; ``outside`` names every number of a
volume that falls out of it, as a reason a person can read. A run directory keeps its domain in ``domain.json``.
"""

import os

import numpy as np
from numba import njit, prange

from conductivity_tf._binary_level import _at  # a grid's value with one axis moved first
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
_NONE, _ONE = np.uint64(0), np.uint64(1)
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


_M1, _M2, _M4 = np.uint64(0x5555555555555555), np.uint64(0x3333333333333333), np.uint64(0x0F0F0F0F0F0F0F0F)
_H01 = np.uint64(0x0101010101010101)


@njit(inline="always")
def _popcount(w):
    w = w - ((w >> _ONE) & _M1)
    w = (w & _M2) + ((w >> np.uint64(2)) & _M2)
    w = (w + (w >> np.uint64(4))) & _M4
    return int((w * _H01) >> np.uint64(56))


@njit(inline="always")
def _rows_search(words):
    """A breadth-first search, level by level, on a grid of rows of bits (the conducting cells), words (mu + 2,
    mv + 2) padded with empty rows: from the cells of row u = 1 to those of row u = mu, each cell joined to its
    neighbours along the bits and to the same bit of the rows at u +- 1 and v +- 1; returns the sum of the
    distances to the cells of row mu it reaches and their count. Only the rows next to the last level's are
    visited."""
    mu, mv = words.shape[0] - 2, words.shape[1] - 2
    front = np.zeros_like(words)
    following = np.zeros_like(words)
    seen = np.zeros_like(words)
    for v in range(1, mv + 1):
        front[1, v] = seen[1, v] = words[1, v]
    lo, hi = 1, 1                 # the rows the front may occupy
    old_lo, old_hi = 1, 0         # the rows of ``following`` that may hold the front before it
    total = reached = level = 0
    while lo <= hi:
        level += 1
        for u in range(old_lo, old_hi + 1):
            for v in range(1, mv + 1):
                following[u, v] = _NONE
        new_lo, new_hi = mu + 1, 0
        for u in range(max(1, lo - 1), min(mu, hi + 1) + 1):
            grown = _NONE
            for v in range(1, mv + 1):
                f = front[u, v]
                e = (f | (f << _ONE) | (f >> _ONE) | front[u - 1, v] | front[u + 1, v] | front[u, v - 1]
                     | front[u, v + 1]) & words[u, v] & ~seen[u, v]
                following[u, v] = e
                seen[u, v] |= e
                grown |= e
            if grown != _NONE:
                new_lo, new_hi = min(new_lo, u), max(new_hi, u)
        if new_hi == mu:
            for v in range(1, mv + 1):
                count = _popcount(following[mu, v])
                total += level * count
                reached += count
        old_lo, old_hi = lo, hi
        front, following = following, front
        lo, hi = new_lo, new_hi
    return total, reached


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


@njit(inline="always")
def _tortuosity(x):
    """The geodesic tortuosity along each axis (3,) of a 0/1 uint8 volume, on the volume coarsened twofold (a coarse
    voxel conducts where any of its eight does: a fifth of the cost; the finest necks it loses are in the spanning
    voxels per slice): the mean, over the conducting coarse voxels of the far face that a path reaches, of the
    length of the shortest 6-connected path to them from the near face, over the straight one; 0 without a path.
    The coarse volume's rows are the bits of words and each search advances a whole level at a time by shifts and
    ors (``_rows_search``: 5x the search below, which takes volumes of more than 128 voxels a side)."""
    n0, n1, n2 = x.shape
    m = ((n0 + 1) // 2, (n1 + 1) // 2, (n2 + 1) // 2)
    if max(m[0], m[2]) > 64:
        return _tortuosity_queue(x)
    rows = np.zeros((m[0] + 2, m[1] + 2), np.uint64)      # [i, j]: bit k
    for i in range(n0):
        for j in range(n1):
            row = x[i, j]
            bits = _NONE
            for k in range(n2):
                if row[k]:
                    bits |= _ONE << np.uint64(k >> 1)
            rows[i // 2 + 1, j // 2 + 1] |= bits
    out = np.zeros(3)
    for a in range(3):
        if m[a] < 2:
            continue
        if a == 0:
            words = rows
        elif a == 1:
            words = rows.T.copy()                          # [j, i]: bit k
        else:
            words = np.zeros((m[2] + 2, m[1] + 2), np.uint64)   # [k, j]: bit i
            for i in range(m[0]):
                for j in range(m[1]):
                    w = rows[i + 1, j + 1]
                    for k in range(m[2]):
                        if (w >> np.uint64(k)) & _ONE:
                            words[k + 1, j + 1] |= _ONE << np.uint64(i)
        total, reached = _rows_search(words)
        out[a] = total / reached / (m[a] - 1) if reached else 0.0
    return out


@njit(inline="always")
def _tortuosity_queue(x):
    """``_tortuosity`` by one breadth-first search from each near face with a queue, on a grid padded with an
    insulating layer (no bounds checks)."""
    n0, n1, n2 = x.shape
    m = ((n0 + 1) // 2, (n1 + 1) // 2, (n2 + 1) // 2)
    s1, s0 = m[2] + 2, (m[1] + 2) * (m[2] + 2)
    steps = (s0, s1, 1)
    coarse = np.zeros((m[0] + 2) * s0, np.uint8)
    for i in range(n0):
        for j in range(n1):
            base = (i // 2 + 1) * s0 + (j // 2 + 1) * s1 + 1
            row = x[i, j]
            for k in range(n2):
                coarse[base + (k >> 1)] |= row[k]
    out = np.zeros(3)
    unvisited = np.where(coarse == 1, -1, -2).astype(np.int16)   # -2 insulating, -1 not reached, else the distance
    distance = np.empty(coarse.size, np.int16)
    queue = np.empty(coarse.size, np.int32)
    for a in range(3):
        n = m[a]
        if n < 2:
            continue
        distance[:] = unvisited
        b, c = (1, 2) if a == 0 else ((0, 2) if a == 1 else (0, 1))
        tail = 0
        for u in range(1, m[b] + 1):       # the near face's conducting cells start the search
            for v in range(1, m[c] + 1):
                p = steps[a] + u * steps[b] + v * steps[c]
                if distance[p] == -1:
                    distance[p] = 0
                    queue[tail] = p
                    tail += 1
        far = n * steps[a]                 # the far face's cells lie at far <= p < far + steps[a] along axis 0,
        head = 0                           # and are told apart by their coordinate along the others' strides
        total = 0
        reached = 0
        while head < tail:
            p = queue[head]
            head += 1
            d = distance[p] + 1
            for o in (p - s0, p + s0, p - s1, p + s1, p - 1, p + 1):
                if distance[o] == -1:
                    distance[o] = d
                    queue[tail] = o
                    tail += 1
        for u in range(1, m[b] + 1):
            for v in range(1, m[c] + 1):
                p = far + u * steps[b] + v * steps[c]
                if distance[p] >= 0:
                    total += distance[p]
                    reached += 1
        out[a] = total / reached / (n - 1) if reached else 0.0
    return out


@njit(inline="always")
def _block(f, a, lo, hi):
    """Conductance along axis ``a`` of the block lo <= index < hi (at most two cells per side) of the cells'
    conductances ``f`` along it: the mean of the two Wiener-type estimates, layers normal to the axis in series
    with each layer's cells in parallel (an upper one) and columns along the axis in parallel with each column's
    cells in series (a lower one)."""
    b, c = (1, 2) if a == 0 else ((0, 2) if a == 1 else (0, 1))
    two = hi[a] - lo[a] == 2
    first = 0.0
    second = 0.0
    low = 0.0
    columns = 0
    for u in range(lo[b], hi[b]):
        for v in range(lo[c], hi[c]):
            p = float(_at(f, a, lo[a], u, v))
            columns += 1
            first += p
            if two:
                q = float(_at(f, a, lo[a] + 1, u, v))
                second += q
                if p > 0 and q > 0:
                    low += 2 * p * q / (p + q)
            else:
                low += p
    if not two:
        return first / columns
    first /= columns
    second /= columns
    low /= columns
    high = 2 * first * second / (first + second) if first > 0 and second > 0 else 0.0
    return 0.5 * (low + high)


@njit(cache=True)
def _block_table():
    """(3, 256): ``_block`` along each axis of the 2x2x2 blocks of 0/1 cells, the cell (di, dj, dk) as bit
    4 di + 2 dj + dk of the index."""
    table = np.empty((3, 256))
    cells = np.empty((2, 2, 2), np.uint8)
    for code in range(256):
        for b in range(8):
            cells[b >> 2, (b >> 1) & 1, b & 1] = (code >> b) & 1
        for a in range(3):
            table[a, code] = _block(cells, a, (0, 0, 0), (2, 2, 2))
    return table


_BLOCKS = _block_table()


@njit(cache=True, nogil=True)
def _first_level(x):
    """(3, m0, m1, m2): the 2x2x2 blocks of a 0/1 uint8 volume as cells, their conductance along each axis
    (``_block``; whole blocks looked up in ``_BLOCKS``; along a side of odd length the last block is one cell
    thick and counts as a whole one)."""
    n = (x.shape[0], x.shape[1], x.shape[2])
    m = ((n[0] + 1) // 2, (n[1] + 1) // 2, (n[2] + 1) // 2)
    cells = np.empty((3, m[0], m[1], m[2]))
    for i in range(m[0]):
        for j in range(m[1]):
            whole = 2 * i + 1 < n[0] and 2 * j + 1 < n[1]
            for k in range(m[2]):
                if whole and 2 * k + 1 < n[2]:
                    code = 0
                    for b in range(8):
                        code |= x[2 * i + (b >> 2), 2 * j + ((b >> 1) & 1), 2 * k + (b & 1)] << b
                    for a in range(3):
                        cells[a, i, j, k] = _BLOCKS[a, code]
                else:
                    lo = (2 * i, 2 * j, 2 * k)
                    hi = (min(2 * i + 2, n[0]), min(2 * j + 2, n[1]), min(2 * k + 2, n[2]))
                    for a in range(3):
                        cells[a, i, j, k] = _block(x, a, lo, hi)
    return cells


@njit(inline="always")
def _eight(p0, q0, p1, q1, p2, q2, p3, q3):
    """``_block`` of a whole block of 2x2x2 cells: the conductances of its four columns along the axis, each as its
    cell in the first layer (p) and in the second (q), in ``_block``'s order (the same sums, so the same value)."""
    first = second = low = 0.0
    for p, q in ((p0, q0), (p1, q1), (p2, q2), (p3, q3)):
        first += p
        second += q
        if p > 0 and q > 0:
            low += 2 * p * q / (p + q)
    first /= 4
    second /= 4
    low /= 4
    high = 2 * first * second / (first + second) if first > 0 and second > 0 else 0.0
    return 0.5 * (low + high)


@njit(inline="always")
def _merged(f, i, j, k, out, c):
    """Write into out[:, c...] the three axes' ``_eight`` of the whole block of f (3, ...) at 2i, 2j, 2k."""
    i0, j0, k0 = 2 * i, 2 * j, 2 * k
    i1, j1, k1 = i0 + 1, j0 + 1, k0 + 1
    f0, f1, f2 = f[0], f[1], f[2]
    out[0, c[0], c[1], c[2]] = _eight(f0[i0, j0, k0], f0[i1, j0, k0], f0[i0, j0, k1], f0[i1, j0, k1],
                                      f0[i0, j1, k0], f0[i1, j1, k0], f0[i0, j1, k1], f0[i1, j1, k1])
    out[1, c[0], c[1], c[2]] = _eight(f1[i0, j0, k0], f1[i0, j1, k0], f1[i0, j0, k1], f1[i0, j1, k1],
                                      f1[i1, j0, k0], f1[i1, j1, k0], f1[i1, j0, k1], f1[i1, j1, k1])
    out[2, c[0], c[1], c[2]] = _eight(f2[i0, j0, k0], f2[i0, j0, k1], f2[i0, j1, k0], f2[i0, j1, k1],
                                      f2[i1, j0, k0], f2[i1, j0, k1], f2[i1, j1, k0], f2[i1, j1, k1])


@njit(cache=True, nogil=True)
def _coarser(cells):
    """The next level: 2x2x2 blocks of ``cells`` (3, n0, n1, n2) merged along each axis (``_block``; whole blocks
    by ``_eight``)."""
    n = (cells.shape[1], cells.shape[2], cells.shape[3])
    m = ((n[0] + 1) // 2, (n[1] + 1) // 2, (n[2] + 1) // 2)
    coarser = np.empty((3, m[0], m[1], m[2]))
    for i in range(m[0]):
        for j in range(m[1]):
            for k in range(m[2]):
                lo = (2 * i, 2 * j, 2 * k)
                hi = (min(2 * i + 2, n[0]), min(2 * j + 2, n[1]), min(2 * k + 2, n[2]))
                if hi[0] - lo[0] == 2 and hi[1] - lo[1] == 2 and hi[2] - lo[2] == 2:
                    _merged(cells, i, j, k, coarser, (i, j, k))
                else:
                    for a in range(3):
                        coarser[a, i, j, k] = _block(cells[a], a, lo, hi)
    return coarser


@njit(cache=True, nogil=True)
def _second_level(x):
    """``_coarser(_first_level(x))`` of a volume whose sides are multiples of 4, block by block of 4^3 voxels
    without the first level's array (its eight cells looked up in ``_BLOCKS``): 1.8x the two levels apart."""
    m = (x.shape[0] // 4, x.shape[1] // 4, x.shape[2] // 4)
    out = np.empty((3, m[0], m[1], m[2]))
    f = np.empty((3, 2, 2, 2))
    for i in range(m[0]):
        for j in range(m[1]):
            for k in range(m[2]):
                for di in range(2):
                    for dj in range(2):
                        r0, r1 = x[4 * i + 2 * di, 4 * j + 2 * dj], x[4 * i + 2 * di, 4 * j + 2 * dj + 1]
                        r2, r3 = x[4 * i + 2 * di + 1, 4 * j + 2 * dj], x[4 * i + 2 * di + 1, 4 * j + 2 * dj + 1]
                        for dk in range(2):
                            s = 4 * k + 2 * dk
                            code = (r0[s] | (r0[s + 1] << 1) | (r1[s] << 2) | (r1[s + 1] << 3) | (r2[s] << 4)
                                    | (r2[s + 1] << 5) | (r3[s] << 6) | (r3[s + 1] << 7))
                            for a in range(3):
                                f[a, di, dj, dk] = _BLOCKS[a, code]
                _merged(f, 0, 0, 0, out, (i, j, k))
    return out


@njit(cache=True, nogil=True)
def renormalised_field(x, levels):
    """(3, ...): the per-axis conductivities of the cells of a 0/1 uint8 volume renormalised ``levels`` times
    (cells of 2^levels voxels a side; ``levels`` >= 1)."""
    whole = x.shape[0] % 4 == 0 and x.shape[1] % 4 == 0 and x.shape[2] % 4 == 0
    if levels >= 2 and whole:
        cells = _second_level(x)
        levels -= 1
    else:
        cells = _first_level(x)
    for _ in range(levels - 1):
        cells = _coarser(cells)
    return cells


@njit(cache=True, nogil=True)
def _renormalised(cells):
    """sigma_eff/sigma_0 along each axis (3,) of a 0/1 uint8 volume estimated by real-space renormalisation from its
    cells (``renormalised_field``): blocks of 2x2x2 cells become one cell (``_block``, per axis), level after level,
    until one cell is left (``_coarser``). It sees necks in series, where few thin paths carry the current, which a
    mean over slices or a path length does not."""
    while cells.shape[1] > 1 or cells.shape[2] > 1 or cells.shape[3] > 1:
        cells = _coarser(cells)
    return cells[:, 0, 0, 0].copy()


CELL_LEVELS = 2          # the coarse solve's cells: 4^3 voxels (a 64^3 volume's 16^3 cells)
CELL_TOLERANCE = 1e-2    # it stops where the currents through its inlet and outlet agree to this


@njit(cache=True, nogil=True, fastmath=True)
def _cells_solved(cells):
    """sigma_eff along each axis (3,) of a grid of cells (3, m0, m1, m2), each with its conductivity along each
    axis (``renormalised_field``): ``physics``' problem on the cells (unit potential drop between the faces normal
    to the axis, insulating sides, faces between cells the harmonic mean of the two, the face cells half a cell from
    the electrode), solved by a conjugate gradient with a Jacobi preconditioner in float32 until the inlet and
    outlet currents agree to ``CELL_TOLERANCE``. It sees what the renormalisation of the cells into one merges
    away: which of them connect, around which detours. The cells lie in one array between an empty slab of cells
    before them and one after, stepped through from the first cell (no bounds or negative indices: the loops
    vectorise); a cell's neighbour along axis 1 or 2 past the side is the next row's first cell, joined to it by a
    zero conductance, so no cell is padding (the padded grid's loops had 1.26x the cells and took 1.7x the time)."""
    m = (cells.shape[1], cells.shape[2], cells.shape[3])
    steps = (m[1] * m[2], m[2], 1)
    lo = steps[0]                       # one empty slab before the cells and one after them
    n = m[0] * steps[0]
    size = n + 2 * lo
    s = np.zeros((3, size), np.float32)
    for i in range(m[0]):
        for j in range(m[1]):
            for k in range(m[2]):
                for a in range(3):
                    s[a, lo + i * steps[0] + j * steps[1] + k] = cells[a, i, j, k]
    g = np.zeros((3, size), np.float32)   # the conductance between a cell and the next one along each axis
    for i in range(m[0]):
        for j in range(m[1]):
            for k in range(m[2]):
                t = lo + i * steps[0] + j * steps[1] + k
                for a, last in ((0, i == m[0] - 1), (1, j == m[1] - 1), (2, k == m[2] - 1)):
                    if not last:
                        p, q = s[a, t], s[a, t + steps[a]]
                        g[a, t] = 2 * p * q / (p + q) if p * q > 0 else 0.0
    out = np.zeros(3)
    for a in range(3):
        b, c = (1, 2) if a == 0 else ((0, 2) if a == 1 else (0, 1))
        near, far = lo, lo + (m[a] - 1) * steps[a]
        d = np.zeros(size, np.float32)
        r = np.zeros(size, np.float32)
        for u in range(m[b]):
            for v in range(m[c]):
                f = u * steps[b] + v * steps[c]
                r[near + f] = 2 * s[a, near + f]
                d[near + f] += 2 * s[a, near + f]
                d[far + f] += 2 * s[a, far + f]
        inverse = np.zeros(size, np.float32)
        for t in range(lo, lo + n):
            e = d[t] + g[0, t] + g[0, t - steps[0]] + g[1, t] + g[1, t - steps[1]] + g[2, t] + g[2, t - 1]
            d[t] = e
            inverse[t] = 1.0 / e if e > 0 else 0.0
        x = np.zeros(size, np.float32)   # the potential, kept on the two faces only (all the currents need)
        z = r * inverse
        p = z.copy()
        ap = np.zeros(size, np.float32)
        # the cells and their six neighbours as views that start at index 0
        dc, rc, zc, ic, apc = d[lo:lo + n], r[lo:lo + n], z[lo:lo + n], inverse[lo:lo + n], ap[lo:lo + n]
        g0, g1, g2 = g[0, lo:lo + n], g[1, lo:lo + n], g[2, lo:lo + n]
        h0, h1 = g[0, lo - steps[0]:lo + n - steps[0]], g[1, lo - steps[1]:lo + n - steps[1]]
        h2 = g[2, lo - 1:lo + n - 1]
        pc = p[lo:lo + n]
        p0, q0 = p[lo + steps[0]:lo + n + steps[0]], p[lo - steps[0]:lo + n - steps[0]]
        p1, q1 = p[lo + steps[1]:lo + n + steps[1]], p[lo - steps[1]:lo + n - steps[1]]
        p2, q2 = p[lo + 1:lo + n + 1], p[lo - 1:lo + n - 1]
        rz = np.float32(0.0)
        for t in range(n):
            rz += rc[t] * zc[t]
        inlet = outlet = 0.0
        for _ in range(10 * (m[0] + m[1] + m[2]) + 100):
            pap = np.float32(0.0)
            for t in range(n):
                v = dc[t] * pc[t] - g0[t] * p0[t] - h0[t] * q0[t] - g1[t] * p1[t] - h1[t] * q1[t] - g2[t] * p2[t] \
                    - h2[t] * q2[t]
                apc[t] = v
                pap += pc[t] * v
            if pap <= 0:
                break
            alpha = np.float32(rz / pap)
            following = np.float32(0.0)
            for t in range(n):
                rc[t] -= alpha * apc[t]
                zc[t] = rc[t] * ic[t]
                following += rc[t] * zc[t]
            inlet = outlet = 0.0
            for u in range(m[b]):
                for v in range(m[c]):
                    f = u * steps[b] + v * steps[c]
                    x[near + f] += alpha * p[near + f]
                    if far != near:
                        x[far + f] += alpha * p[far + f]
                    inlet += 2 * s[a, near + f] * (1.0 - x[near + f])
                    outlet += 2 * s[a, far + f] * x[far + f]
            if abs(inlet - outlet) <= CELL_TOLERANCE * max(inlet, outlet) + 1e-7 * m[b] * m[c]:
                break
            beta = np.float32(following / rz)
            rz = following
            for t in range(n):
                pc[t] = zc[t] + beta * pc[t]
        # sigma = current * length / area
        out[a] = 0.5 * (inlet + outlet) * m[a] / (m[b] * m[c])
    return out


@njit(cache=True, nogil=True)
def _structure(x):
    """Chord counts and spanning clusters of a 0/1 uint8 volume in one pass over its runs along the last axis:
    (conducting voxels, run starts of each phase along each axis (2, 3), conducting voxels in 6-connected clusters
    touching both faces normal to each axis (3,), those voxels per slice normal to each axis (3, largest side),
    the coarse geodesic tortuosity along each axis (3,), ``_tortuosity``, the renormalised conductivity along each
    axis (3,), ``_renormalised``, and the conductivity of the volume's cells of 4^3 voxels solved along each axis
    (3,), ``_cells_solved``).

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
    cells = renormalised_field(x, CELL_LEVELS)
    return ones, starts, spanning, slices, _tortuosity(x), _renormalised(cells), _cells_solved(cells)


@njit(cache=True, nogil=True, parallel=True)
def _structures(x):
    """``_structure`` of each volume of a (N, n0, n1, n2) 0/1 uint8 batch, spread over the cores."""
    n = x.shape[0]
    ones = np.zeros(n, np.int64)
    starts = np.zeros((n, 2, 3), np.int64)
    spanning = np.zeros((n, 3), np.int64)
    slices = np.zeros((n, 3, max(x.shape[1], x.shape[2], x.shape[3])), np.int64)
    tortuosity = np.zeros((n, 3))
    renormalised = np.zeros((n, 3))
    solved = np.zeros((n, 3))
    for v in prange(n):
        ones[v], starts[v], spanning[v], slices[v], tortuosity[v], renormalised[v], solved[v] = _structure(x[v])
    return ones, starts, spanning, slices, tortuosity, renormalised, solved


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


def _description(shape, ones, starts, spanning, slices, tortuosity, renormalised, solved):
    """The descriptors' dict from ``_structure``'s counts (plain Python numbers: this runs once per volume)."""
    size, ones = int(np.prod(shape)), int(ones)
    series = _series(slices, shape)
    starts, spanning = starts.tolist(), spanning.tolist()
    chords = _mean_chords(ones, starts[1])
    finite = [c for c in chords if c != float("inf")] or [float(shape[0])]
    insulating = [c for c in _mean_chords(size - ones, starts[0]) if c != float("inf")] or [float(shape[0])]
    fractions = [s / ones if ones else 0.0 for s in spanning]
    return {"porosity": ones / size, "conducting_chord": sum(finite) / len(finite),
            "insulating_chord": sum(insulating) / len(insulating), "anisotropy": max(finite) / min(finite),
            "spanning": min(fractions),
            # per axis, for the error model (uncertainty.py)
            "axis_chords": [c if c != float("inf") else 0.0 for c in chords],
            "axis_spanning": fractions, "axis_series": series, "axis_tortuosity": [float(t) for t in tortuosity],
            "axis_renormalised": [float(r) for r in renormalised], "axis_cells": [float(c) for c in solved]}


def describe(volume):
    """The descriptors of a binary volume (1 = conducting), as a dict."""
    conducting = np.ascontiguousarray(np.asarray(volume) > 0)
    return _description(conducting.shape, *_structure(conducting.view(np.uint8)))


def describe_many(volumes, chunk=256):
    """``describe`` of each volume of an (N, n0, n1, n2) batch, the volumes spread over the cores (``chunk`` at a
    time, so that a dataset's split is not copied whole)."""
    volumes = np.asarray(volumes)
    if volumes.ndim != 4:
        raise ValueError("describe_many takes a batch (N, n0, n1, n2) of volumes, not shape {}".format(volumes.shape))
    out = []
    for begin in range(0, len(volumes), chunk):
        conducting = np.ascontiguousarray(volumes[begin:begin + chunk] > 0)
        counts = _structures(conducting.view(np.uint8))
        out += [_description(volumes.shape[1:], *[c[v] for c in counts]) for v in range(len(counts[0]))]
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
