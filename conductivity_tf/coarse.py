"""Conduction estimated on a coarsened binary volume, in numba (no TensorFlow): the descriptors of ``domain`` that
see paths, cheap beside the solver.

- ``_tortuosity``: the geodesic tortuosity along each axis on the volume coarsened twofold, by breadth-first
  searches that advance a whole level at a time on the coarse rows held as the bits of words;
- ``renormalised_field`` / ``_renormalised``: real-space renormalisation, 2x2x2 blocks merged into one cell level by
  level, each block the mean of its two Wiener-type estimates (``_block``), looked up from a table at the first
  level;
- ``_faces_solved``: the coarse problem of the volume's cells of 4^3 voxels (2^``CELL_LEVELS``) joined through their
  faces, each conductance the fraction of the voxel pairs across the face that both conduct, solved by a float32
  conjugate gradient (``_links_solved``) until the inlet and outlet currents agree to ``CELL_TOLERANCE``;
  ``face_links`` gives the same problem as arrays.

``whole_volume`` uses the renormalised field and the cells joined through their faces as proxies of a volume's
detours.
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
CELL_TOLERANCE = 1e-2    # it stops where the currents through its inlet and outlet agree to this


@njit(cache=True, nogil=True, fastmath=True)
def _links_solved(g, ends, m):
    """sigma_eff along each axis (3,) of a grid of m0 x m1 x m2 cells joined by the conductances ``g`` (3, size;
    between a cell and the next along each axis, zero past a side) and to the electrodes of each axis by ``ends``
    (3, 2, size; inlet, outlet): ``physics``' problem on the cells (unit potential drop between the faces normal to
    the axis, insulating sides), solved by a conjugate gradient with a Jacobi preconditioner in float32 until the
    inlet and outlet currents agree to ``CELL_TOLERANCE``. The cells lie in one array between an empty slab of cells
    before them and one after, stepped through from the first cell (no bounds or negative indices: the loops
    vectorise); a cell's neighbour along axis 1 or 2 past the side is the next row's first cell, joined to it by a
    zero conductance, so no cell is padding (the padded grid's loops had 1.26x the cells and took 1.7x the time)."""
    steps = (m[1] * m[2], m[2], 1)
    lo = steps[0]
    n = m[0] * steps[0]
    size = n + 2 * lo
    out = np.zeros(3)
    for a in range(3):
        b, c = (1, 2) if a == 0 else ((0, 2) if a == 1 else (0, 1))
        near, far = lo, lo + (m[a] - 1) * steps[a]
        d = np.zeros(size, np.float32)
        r = np.zeros(size, np.float32)
        for u in range(m[b]):
            for v in range(m[c]):
                f = u * steps[b] + v * steps[c]
                r[near + f] = ends[a, 0, near + f]
                d[near + f] += ends[a, 0, near + f]
                d[far + f] += ends[a, 1, far + f]
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
                    inlet += ends[a, 0, near + f] * (1.0 - x[near + f])
                    outlet += ends[a, 1, far + f] * x[far + f]
            if abs(inlet - outlet) <= CELL_TOLERANCE * max(inlet, outlet) + 1e-7 * m[b] * m[c]:
                break
            beta = np.float32(following / rz)
            rz = following
            for t in range(n):
                pc[t] = zc[t] + beta * pc[t]
        # sigma = current * length / area
        out[a] = 0.5 * (inlet + outlet) * m[a] / (m[b] * m[c])
    return out


_LOW32, _BYTES4, _BYTE = np.uint64(0xFFFFFFFF), np.uint64(0x01010101), np.uint64(0xFF)


@njit(inline="always")
def _add_cells(out, at, words, a, b, count):
    """Add to out[at], out[at + 1], ... the conducting voxels of each 4-voxel cell of the row ``a & b`` of 0/1
    bytes (rows a and b of ``count`` little-endian words of eight voxels each in ``words``: two cells a word, each
    byte sum gathered into the top byte of a product)."""
    for q in range(count):
        w = words[a + q] & words[b + q]
        out[at + 2 * q] += ((w & _LOW32) * _BYTES4 >> np.uint64(24)) & _BYTE
        out[at + 2 * q + 1] += ((w >> np.uint64(32)) * _BYTES4 >> np.uint64(24)) & _BYTE


@njit(inline="always")
def _add_rows(out, at, words, a, b, count, w):
    """``_add_cells`` for cells of ``w`` = 4 voxels, and for w = 8 one cell a word (its byte sum in the top byte
    of one product)."""
    if w == 4:
        _add_cells(out, at, words, a, b, count)
    else:
        for q in range(count):
            out[at + q] += ((words[a + q] & words[b + q]) * _H01) >> np.uint64(56)


@njit(cache=True, nogil=True)
def _face_links(x, packed, w):
    """The coarse problem of ``_faces_solved``: (conductances g (3, size), electrode conductances ends
    (3, 2, size), cells per side m) of a C-contiguous 0/1 uint8 volume's cells of w^3 voxels. With ``packed``
    (w 4 or 8, the sides multiples of w, the last one of 8) the voxel pairs across the cells' faces and their
    outer layers are counted on the rows as words of eight voxels (``_add_rows``; 4x the voxel loop below); the
    same values either way."""
    shape = x.shape
    m = ((shape[0] + w - 1) // w, (shape[1] + w - 1) // w, (shape[2] + w - 1) // w)
    steps = (m[1] * m[2], m[2], 1)
    lo = steps[0]
    size = m[0] * steps[0] + 2 * lo
    if packed:
        counts = np.zeros((3, size), np.uint64)        # voxel pairs across the faces normal to each axis
        sides = np.zeros((3, 2, size), np.uint64)      # the outer layers normal to each axis
        words = x.reshape(-1).view(np.uint64)
        per_row = shape[2] // 8
        for i in range(shape[0]):
            for j in range(shape[1]):
                row = lo + (i // w) * steps[0] + (j // w) * steps[1]
                at = (i * shape[1] + j) * per_row
                if i % w == w - 1 and i + 1 < shape[0]:
                    _add_rows(counts[0], row, words, at, at + shape[1] * per_row, per_row, w)
                if j % w == w - 1 and j + 1 < shape[1]:
                    _add_rows(counts[1], row, words, at, at + per_row, per_row, w)
                if i == 0:
                    _add_rows(sides[0, 0], row, words, at, at, per_row, w)
                if i == shape[0] - 1:
                    _add_rows(sides[0, 1], row, words, at, at, per_row, w)
                if j == 0:
                    _add_rows(sides[1, 0], row, words, at, at, per_row, w)
                if j == shape[1] - 1:
                    _add_rows(sides[1, 1], row, words, at, at, per_row, w)
                first, last = words[at], words[at + per_row - 1]
                sides[2, 0, row] += first & _ONE
                sides[2, 1, row + m[2] - 1] += last >> np.uint64(56)
                cells = 8 // w    # per word
                for q in range(per_row):   # the pairs across the faces normal to axis 2: bytes 3 & 4 (w 4), 7 & next 0
                    word = words[at + q]
                    if w == 4:
                        counts[2, row + 2 * q] += (word >> np.uint64(24)) & (word >> np.uint64(32)) & _ONE
                    if q + 1 < per_row:
                        counts[2, row + cells * q + cells - 1] += (word >> np.uint64(56)) & words[at + q + 1] & _ONE
        # every cell is whole: w^2 voxel pairs across each inner face, w^2 voxels in each outer layer
        g = (counts / np.float32(w * w)).astype(np.float32)
        ends = (2 * sides / np.float32(w * w)).astype(np.float32)
        return g, ends, m
    pairs = np.zeros((3, size), np.float32)
    area = np.zeros((3, size), np.float32)
    outer = np.zeros((3, 2, size), np.float32)
    for i in range(shape[0]):     # one pass: the outer layers, and the pairs across the last layer of each cell
        for j in range(shape[1]):
            row = lo + (i // w) * steps[0] + (j // w) * steps[1]
            for k in range(shape[2]):
                t = row + k // w
                here = x[i, j, k]
                if i == 0:
                    outer[0, 0, t] += here
                if i == shape[0] - 1:
                    outer[0, 1, t] += here
                if j == 0:
                    outer[1, 0, t] += here
                if j == shape[1] - 1:
                    outer[1, 1, t] += here
            outer[2, 0, row] += x[i, j, 0]
            outer[2, 1, row + (shape[2] - 1) // w] += x[i, j, shape[2] - 1]
            if i % w == w - 1 and i + 1 < shape[0]:
                for k in range(shape[2]):
                    area[0, row + k // w] += 1
                    pairs[0, row + k // w] += x[i, j, k] & x[i + 1, j, k]
            if j % w == w - 1 and j + 1 < shape[1]:
                for k in range(shape[2]):
                    area[1, row + k // w] += 1
                    pairs[1, row + k // w] += x[i, j, k] & x[i, j + 1, k]
            for k in range(w - 1, shape[2] - 1, w):
                area[2, row + k // w] += 1
                pairs[2, row + k // w] += x[i, j, k] & x[i, j, k + 1]
    g = np.zeros((3, size), np.float32)
    ends = np.zeros((3, 2, size), np.float32)
    for a in range(3):
        for t in range(lo, size - lo):
            if area[a, t] > 0:
                g[a, t] = pairs[a, t] / area[a, t]
    for i in range(m[0]):
        for j in range(m[1]):
            for k in range(m[2]):
                t = lo + i * steps[0] + j * steps[1] + k
                extent = (min(w, shape[0] - i * w), min(w, shape[1] - j * w), min(w, shape[2] - k * w))
                for a in range(3):
                    face = extent[(a + 1) % 3] * extent[(a + 2) % 3]
                    for side in range(2):
                        ends[a, side, t] = 2 * outer[a, side, t] / face
    return g, ends, m


def face_links(x, cell=4):
    """The coarse problem of ``_faces_solved`` as arrays, for a solve to any tolerance (``cell_grid.solve_links``):
    (links (3, m0, m1, m2) float32, the conductance between each cell of ``cell``^3 voxels and the next along each
    axis, zero past the last; ends, per axis (inlet, outlet), the conductances of the first and last layer of cells
    normal to it to the electrodes, 2-D over the other two axes in order) of a 0/1 volume. A volume whose sides
    are not whole words of cells is counted on words too, padded with insulating voxels (``_padded_links``)."""
    x = np.ascontiguousarray(x, dtype=np.uint8)
    if not _packed(x.shape, cell) and cell in (4, 8):
        padded = _padded_links(x, cell)
        if padded is not None:
            return padded
    g, ends, m = _face_links(x, _packed(x.shape, cell), cell)
    n, lo = m[0] * m[1] * m[2], m[1] * m[2]
    links = g[:, lo:lo + n].reshape((3,) + tuple(m))
    e = ends[:, :, lo:lo + n].reshape((3, 2) + tuple(m))
    return links, [(np.take(e[a, 0], 0, axis=a), np.take(e[a, 1], m[a] - 1, axis=a)) for a in range(3)]


def _extents(n, w):
    """The voxels of each of the ceil(n / w) cells along a side of n voxels."""
    return np.minimum(w, n - np.arange(0, n, w))


def _padded_links(x, w):
    """``face_links`` of a volume whose sides are not multiples of the cell (or the last of 8) from its copy padded
    with insulating voxels up to them, counted on words: the padding adds no conducting pair, so the counts are the
    volume's; they are divided by the true areas of the last, smaller cells' faces, and the outer layers are summed
    from the volume itself. The same values as the voxel loop (tested); None where the padding would add a cell."""
    shape = x.shape
    target = [-(-n // w) * w for n in shape]
    target[2] = -(-target[2] // 8) * 8
    if -(-target[2] // w) != -(-shape[2] // w):
        return None
    padded = np.zeros(target, np.uint8)
    padded[:shape[0], :shape[1], :shape[2]] = x
    g, _, m = _face_links(padded, True, w)
    n, lo = m[0] * m[1] * m[2], m[1] * m[2]
    counts = g[:, lo:lo + n].reshape((3,) + tuple(m)) * np.float32(w * w)    # exact: w^2 is a power of two
    extents = [_extents(k, w).astype(np.float32) for k in shape]
    links = np.empty_like(counts)
    ends = []
    for a in range(3):
        b, c = [d for d in range(3) if d != a]
        area = np.expand_dims(np.outer(extents[b], extents[c]), a)       # voxel pairs across each face
        links[a] = counts[a] / area
        starts = [np.arange(0, shape[b], w), np.arange(0, shape[c], w)]
        faces = []
        for layer in (np.take(x, 0, axis=a), np.take(x, shape[a] - 1, axis=a)):
            outer = np.add.reduceat(np.add.reduceat(layer.astype(np.int64), starts[0], axis=0), starts[1], axis=1)
            faces.append((2 * outer / np.outer(extents[b], extents[c]).astype(np.int64)).astype(np.float32))
        ends.append(tuple(faces))
    return links, ends


@njit(inline="always")
def _packed(shape, w):
    """Whether ``_face_links`` can count a volume of ``shape``'s rows as words for cells of w voxels."""
    return (w == 4 or w == 8) and shape[0] % w == 0 and shape[1] % w == 0 and shape[2] % 8 == 0


@njit(cache=True, nogil=True)
def _faces_solved(x):
    """sigma_eff along each axis (3,) of a 0/1 uint8 volume estimated on its cells of 4^3 voxels (2^CELL_LEVELS) joined
    through their faces: the conductance between a cell and the next along an axis is the fraction of the voxel
    pairs across their shared face that both conduct, and a face cell's conductance to the electrode twice the
    conducting fraction of its outer voxel layer (the cells' interiors taken as conducting); solved by
    ``_links_solved``. Where thin walls or films carry the current, cells renormalised into one conductivity each
    lose the junctions between them; the pairs across the faces keep them. Cells at the far sides of a volume whose
    edge is not a multiple of 4 are smaller."""
    w = 1 << CELL_LEVELS
    g, ends, m = _face_links(x, _packed(x.shape, w), w)
    return _links_solved(g, ends, m)
