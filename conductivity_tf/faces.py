"""The coarse problem of a binary volume's cells joined through their faces, in numba (no TensorFlow): the volume cut
into cells of w^3 voxels (4 for ``domain``'s descriptor, 2^``coarse.CELL_LEVELS``; 4 or 8 for ``whole_volume``'s
detour proxies), two neighbouring cells joined by the fraction of the voxel pairs across their shared face that both
conduct, a face cell to the electrode by twice the conducting fraction of its outer voxel layer, the cells' interiors
taken as conducting.

- ``_faces_and_capped``: sigma_eff along each axis on 4^3-voxel cells, solved by a float32 conjugate gradient
  (``_links_solved``) until the inlet and outlet currents agree to ``CELL_TOLERANCE``, and the same problem with
  each junction capped by its two cells' renormalised conductivities (``_capped_links``), for ``domain``'s
  descriptors;
- ``face_links``: the same problem as arrays, for ``cell_grid.solve_links`` to any tolerance, the pairs counted on
  the rows as words of eight voxels (``_face_links``; volumes whose sides are not whole words padded,
  ``_padded_links``);
- ``sealed_faces``: a batch of windows' problems, each solved by the same conjugate gradient to
  ``SEALED_TOLERANCE``, the windows over numba's threads (the sealed windows of ``whole_volume``'s coarse proxy).
"""

import numpy as np
from numba import njit, prange

from conductivity_tf.coarse import _H01, _ONE, CELL_LEVELS

CELL_TOLERANCE = 1e-2    # it stops where the currents through its inlet and outlet agree to this
# ``sealed_faces``' tolerance: on the 8^3-voxel cells of 64^3 windows (8^3 cells each) of three volumes the windows'
# values summed came within 2e-6 of the multigrid's to 1e-10 (within 1.4e-4 at 1e-4, at the same cost); the
# detour factors of ``whole_volume`` within 0.05 % of those from multigrid solves to 1e-5 on 13 volumes. On cells
# of 4^3 voxels (16^3 a window) it stalls on some windows of poorly connected phases (23 % off at 1e-6)
SEALED_TOLERANCE = 1e-5


@njit(cache=True, nogil=True, fastmath=True)
def _links_solved(g, ends, m, tol, zero_without_path):
    """sigma_eff along each axis (3,) of a grid of m0 x m1 x m2 cells joined by the conductances ``g`` (3, size;
    between a cell and the next along each axis, zero past a side) and to the electrodes of each axis by ``ends``
    (3, 2, size; inlet, outlet): ``physics``' problem on the cells (unit potential drop between the faces normal to
    the axis, insulating sides), solved by a conjugate gradient with a Jacobi preconditioner in float32 until the
    inlet and outlet currents agree to ``tol``. The cells no path joins to the inlet keep a potential of exactly
    zero, so no current leaves through the outlet where no path joins the faces: with ``zero_without_path`` the
    value is then 0 (without, the inlet's vanishing current, +-1e-8). The cells lie in one array between an empty
    slab of cells before them and one after, stepped through from the first cell (no bounds or negative indices: the
    loops vectorise); a cell's neighbour along axis 1 or 2 past the side is the next row's first cell, joined to it by a
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
            if abs(inlet - outlet) <= tol * max(inlet, outlet) + 1e-7 * m[b] * m[c]:
                break
            beta = np.float32(following / rz)
            rz = following
            for t in range(n):
                pc[t] = zc[t] + beta * pc[t]
        # sigma = current * length / area
        out[a] = 0.0 if zero_without_path and outlet == 0.0 else 0.5 * (inlet + outlet) * m[a] / (m[b] * m[c])
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
    """The coarse problem of ``_faces_and_capped``: (conductances g (3, size), electrode conductances ends
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
    """The coarse problem of ``_faces_and_capped`` as arrays, for a solve to any tolerance (``cell_grid.solve_links``):
    (links (3, m0, m1, m2) float32, the conductance between each cell of ``cell``^3 voxels and the next along each
    axis, zero past the last; ends, per axis (inlet, outlet), the conductances of the first and last layer of cells
    normal to it to the electrodes, 2-D over the other two axes in order) of a 0/1 volume. A volume whose sides
    are not whole words of cells is counted on words too, padded with insulating voxels (``_padded_links``)."""
    x = np.ascontiguousarray(x, dtype=np.uint8)
    if not _packed(x.shape, cell) and cell in (4, 8):
        return _padded_links(x, cell)
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
    from the volume itself. The same values as the voxel loop (tested). Where the padding up to a whole word adds
    a layer of cells (cells of 4 voxels, a side of 8k + 1 to 8k + 4), that layer, all padding, is left out: no pair
    conducts across its face."""
    shape = x.shape
    target = [-(-n // w) * w for n in shape]
    target[2] = -(-target[2] // 8) * 8
    padded = np.zeros(target, np.uint8)
    padded[:shape[0], :shape[1], :shape[2]] = x
    g, _, m = _face_links(padded, True, w)
    n, lo = m[0] * m[1] * m[2], m[1] * m[2]
    cells = [-(-k // w) for k in shape]
    counts = g[:, lo:lo + n].reshape((3,) + tuple(m))[:, :, :, :cells[2]] * np.float32(w * w)   # w^2: exact
    extents = [_extents(k, w).astype(np.float32) for k in shape]
    links = np.empty_like(counts)
    ends = []
    for a in range(3):
        b, c = [d for d in range(3) if d != a]
        area = np.outer(extents[b], extents[c])       # voxel pairs across each face, voxels of each outer square
        links[a] = counts[a] / np.expand_dims(area, a)
        starts = [np.arange(0, shape[b], w), np.arange(0, shape[c], w)]
        faces = []
        for layer in (np.take(x, 0, axis=a), np.take(x, shape[a] - 1, axis=a)):
            outer = np.add.reduceat(np.add.reduceat(layer.astype(np.int64), starts[0], axis=0), starts[1], axis=1)
            faces.append((2 * outer / area).astype(np.float32))
        ends.append(tuple(faces))
    return links, ends


@njit(inline="always")
def _packed(shape, w):
    """Whether ``_face_links`` can count a volume of ``shape``'s rows as words for cells of w voxels."""
    return (w == 4 or w == 8) and shape[0] % w == 0 and shape[1] % w == 0 and shape[2] % 8 == 0


@njit(cache=True, nogil=True)
def _capped_links(g, cells, m):
    """The conductances ``g`` of ``_face_links`` (3, size) with each junction capped by the harmonic mean of its two
    cells' renormalised conductivities along the axis (``cells``, 3 x m0 x m1 x m2, ``coarse.renormalised_field``),
    and per axis the fraction of the junctions' conductance the capping keeps (1 without any). Where a cell's
    faces conduct but its inside does not (a film or a wall broken inside the cell), the faces' pairs alone join it
    as if it were whole; its renormalised conductivity does not."""
    steps = (m[1] * m[2], m[2], 1)
    lo = steps[0]
    capped = g.copy()
    kept = np.ones(3)
    for a in range(3):
        di, dj, dk = int(a == 0), int(a == 1), int(a == 2)
        total = limited = 0.0
        for i in range(m[0] - di):
            for j in range(m[1] - dj):
                for k in range(m[2] - dk):
                    t = lo + i * steps[0] + j * steps[1] + k
                    here, there = cells[a, i, j, k], cells[a, i + di, j + dj, k + dk]
                    mean = 2.0 * here * there / (here + there) if here + there > 0 else 0.0
                    if capped[a, t] > mean:
                        capped[a, t] = mean
                    total += g[a, t]
                    limited += capped[a, t]
        if total > 0:
            kept[a] = limited / total
    return capped, kept


@njit(cache=True, nogil=True)
def _faces_and_capped(x, cells, capped):
    """sigma_eff along each axis (3,) of a 0/1 uint8 volume estimated on its cells of 4^3 voxels (2^CELL_LEVELS)
    joined through their faces: the conductance between a cell and the next along an axis is the fraction of the
    voxel pairs across their shared face that both conduct, and a face cell's conductance to the electrode twice the
    conducting fraction of its outer voxel layer (the cells' interiors taken as conducting); solved by
    ``_links_solved``. Where thin walls or films carry the current, cells renormalised into one conductivity each
    lose the junctions between them; the pairs across the faces keep them. Cells at the far sides of a volume whose
    edge is not a multiple of 4 are smaller. Then the same problem with its junctions capped by the cells'
    renormalised conductivities (``_capped_links``; ``cells`` the volume's ``coarse.renormalised_field`` of
    ``CELL_LEVELS``) solved the same way (3,), and the fraction of the junctions' conductance the capping keeps
    (3,): the renormalisation sees the breaks inside a cell that the faces' pairs do not. Without ``capped`` the
    last two are NaN (not solved)."""
    w = 1 << CELL_LEVELS
    g, ends, m = _face_links(x, _packed(x.shape, w), w)
    faces = _links_solved(g, ends, m, CELL_TOLERANCE, False)
    if not capped:
        return faces, np.full(3, np.nan), np.full(3, np.nan)
    limited, kept = _capped_links(g, cells, m)
    return faces, _links_solved(limited, ends, m, CELL_TOLERANCE, False), kept


@njit(cache=True, parallel=True)
def _sealed_faces(chunk, w, tol):
    out = np.zeros((chunk.shape[0], 3))
    for b in prange(chunk.shape[0]):
        x = chunk[b]
        g, ends, m = _face_links(x, _packed(x.shape, w), w)
        out[b] = _links_solved(g, ends, m, tol, True)
    return out


def sealed_faces(chunk, cell, tol=SEALED_TOLERANCE):
    """(b, 3): sigma_eff along each axis of each volume of a batch (b, n0, n1, n2) of 0/1 volumes, estimated on its
    cells of ``cell``^3 voxels joined through their faces (``face_links``), each solved by ``_links_solved`` to
    ``tol``, exact zeros where no path joins the faces; the volumes spread over numba's threads."""
    return _sealed_faces(np.ascontiguousarray(chunk, dtype=np.uint8), int(cell), float(tol))
