"""Conduction estimated on a coarsened binary volume, in numba (no TensorFlow): the descriptors of ``domain`` that
see paths, cheap beside the solver.

- ``_tortuosity``: the geodesic tortuosity along each axis on the volume coarsened twofold, by breadth-first
  searches that advance a whole level at a time on the coarse rows held as the bits of words;
- ``renormalised_field`` / ``_renormalised``: real-space renormalisation, 2x2x2 blocks merged into one cell level by
  level, each block the mean of its two Wiener-type estimates (``_block``), looked up from a table at the first
  level;

``faces`` solves the coarse problem of the volume's cells joined through their faces; ``whole_volume`` uses the
renormalised field and those cells as proxies of a volume's detours.
"""

import numpy as np
from numba import njit

from conductivity_tf._binary_level import _at  # a grid's value with one axis moved first

_NONE, _ONE = np.uint64(0), np.uint64(1)

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


@njit(cache=True, nogil=True)
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


@njit(inline="always")
def _code(x, i, j, k):
    """The 2x2x2 block of 0/1 voxels of x at (i, j, k) as a byte, voxel (di, dj, dk) at bit 4 di + 2 dj + dk."""
    code = 0
    for b in range(8):
        code |= x[i + (b >> 2), j + ((b >> 1) & 1), k + (b & 1)] << b
    return code


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
                    code = _code(x, 2 * i, 2 * j, 2 * k)
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
                        for dk in range(2):
                            code = _code(x, 4 * i + 2 * di, 4 * j + 2 * dj, 4 * k + 2 * dk)
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


CELL_LEVELS = 2          # the coarse solve's cells: 2^CELL_LEVELS = 4 voxels a side (a 64^3 volume's 16^3 cells)
