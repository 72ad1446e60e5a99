"""Coarse multigrid levels as graphs (internal to ``_multigrid``): nodes, each undirected coupling once (rows, cols,
vals > 0), a diagonal; aggregation, Galerkin products, Gauss-Seidel and direct solves on them.

Below the first ``GRID_LEVELS`` grids the blocks grow large enough (8^3 voxels and more) to hold pore
branches that are not connected inside the block, and one aggregate per block would join them. The
coarser levels are therefore graphs: an aggregate is a piece of a 2x2x2 block of the level above
that is connected inside the block, the operator is the same scaled Galerkin product, and the
smoother is a forward Gauss-Seidel sweep before and a backward one after the coarse correction
(symmetric again). On 128^3 blobs of porosity 0.3 this takes CG from 21 to 14 iterations; these levels
hold under 1 % of the unknowns. The coarsest level is solved directly."""

import numpy as np
from numba import njit


@njit(cache=True)
def cholesky(a):
    """Lower Cholesky factor of a small SPD matrix (in numba: no BLAS, so bitwise reproducible)."""
    n = a.shape[0]
    lower = np.zeros_like(a)
    for j in range(n):
        s = a[j, j]
        for k in range(j):
            s -= lower[j, k] * lower[j, k]
        d = np.sqrt(s)
        lower[j, j] = d
        for i in range(j + 1, n):
            s = a[i, j]
            for k in range(j):
                s -= lower[i, k] * lower[j, k]
            lower[i, j] = s / d
    return lower


@njit(cache=True)
def grid_graph(diag, cx, cy, cz):
    """A grid level as a graph: node of each active cell (-1 elsewhere), the nodes' diagonal and cell
    coordinates (unpadded), and the nonzero face conductances as edges."""
    n0, n1, n2 = diag.shape
    node = -np.ones((n0, n1, n2), dtype=np.int64)
    count = 0
    for i in range(n0):
        for j in range(n1):
            for k in range(n2):
                if diag[i, j, k] != 0.0:
                    node[i, j, k] = count
                    count += 1
    d = np.empty(count)
    coords = np.empty((count, 3), dtype=np.int64)
    faces = np.count_nonzero(cx) + np.count_nonzero(cy) + np.count_nonzero(cz)   # only between active cells
    rows = np.empty(faces, dtype=np.int64)
    cols = np.empty(faces, dtype=np.int64)
    vals = np.empty(faces)
    e = 0
    for i in range(1, n0 - 1):
        for j in range(1, n1 - 1):
            for k in range(1, n2 - 1):
                a = node[i, j, k]
                if a < 0:
                    continue
                d[a] = diag[i, j, k]
                coords[a, 0], coords[a, 1], coords[a, 2] = i - 1, j - 1, k - 1
                if cx[i, j, k] != 0.0:
                    rows[e], cols[e], vals[e] = a, node[i + 1, j, k], cx[i, j, k]
                    e += 1
                if cy[i, j, k] != 0.0:
                    rows[e], cols[e], vals[e] = a, node[i, j + 1, k], cy[i, j, k]
                    e += 1
                if cz[i, j, k] != 0.0:
                    rows[e], cols[e], vals[e] = a, node[i, j, k + 1], cz[i, j, k]
                    e += 1
    return node, d, coords, rows, cols, vals


@njit(cache=True)
def _find(parent, a):
    while parent[a] != a:
        parent[a] = parent[parent[a]]
        a = parent[a]
    return a


@njit(cache=True)
def aggregate(coords, rows, cols):
    """Aggregate of each node: its piece of its 2x2x2 block (coords // 2) connected inside the block.
    Aggregates are numbered in order of their first node, so the result is reproducible."""
    n = coords.shape[0]
    parent = np.arange(n)
    for e in range(rows.shape[0]):
        a, b = rows[e], cols[e]
        if (coords[a, 0] // 2 == coords[b, 0] // 2 and coords[a, 1] // 2 == coords[b, 1] // 2
                and coords[a, 2] // 2 == coords[b, 2] // 2):
            ra, rb = _find(parent, a), _find(parent, b)
            if ra != rb:
                if ra < rb:
                    parent[rb] = ra
                else:
                    parent[ra] = rb
    agg = np.empty(n, dtype=np.int64)
    label = -np.ones(n, dtype=np.int64)
    count = 0
    for a in range(n):
        r = _find(parent, a)
        if label[r] < 0:
            label[r] = count
            count += 1
        agg[a] = label[r]
    return agg, count


@njit(cache=True)
def coarse_graph(d, coords, rows, cols, vals, agg, count, scale):
    """Galerkin operator of the aggregation ``agg`` (P^T A P with a 0/1 P), scaled: coarse diagonal,
    coordinates and edges, each coarse edge once (lower node first, sorted), duplicates summed in the
    order of the fine edges."""
    dc = np.zeros(count)
    for i in range(agg.shape[0]):
        dc[agg[i]] += d[i]
    coarse_coords = np.empty((count, 3), dtype=np.int64)
    for i in range(agg.shape[0]):
        for t in range(3):
            coarse_coords[agg[i], t] = coords[i, t] // 2
    inside = np.zeros(count)
    start = np.zeros(count + 1, dtype=np.int64)    # fine edges between aggregates, grouped by the lower one
    for e in range(rows.shape[0]):
        a, b = agg[rows[e]], agg[cols[e]]
        if a == b:
            inside[a] += vals[e]
        else:
            start[min(a, b) + 1] += 1
    for i in range(count):
        start[i + 1] += start[i]
    fill = start[:-1].copy()
    order = np.empty(start[count], dtype=np.int64)
    for e in range(rows.shape[0]):
        a, b = agg[rows[e]], agg[cols[e]]
        if a != b:
            lo = min(a, b)
            order[fill[lo]] = e
            fill[lo] += 1
    lows = np.empty(start[count], dtype=np.int64)
    highs = np.empty(start[count], dtype=np.int64)
    sums = np.empty(start[count])
    slot = -np.ones(count, dtype=np.int64)
    m = 0
    for lo in range(count):
        first = m
        for t in range(start[lo], start[lo + 1]):
            e = order[t]
            hi = max(agg[rows[e]], agg[cols[e]])
            if slot[hi] < first:            # first edge of this lower node to ``hi``
                slot[hi] = m
                lows[m], highs[m], sums[m] = lo, hi, 0.0
                m += 1
            sums[slot[hi]] += vals[e]
        for t in range(first + 1, m):       # insertion sort by the higher node: a few neighbours each
            h, v = highs[t], sums[t]
            u = t - 1
            while u >= first and highs[u] > h:
                highs[u + 1], sums[u + 1] = highs[u], sums[u]
                u -= 1
            highs[u + 1], sums[u + 1] = h, v
    for i in range(count):
        dc[i] = (dc[i] - 2.0 * inside[i]) * scale
    return dc, coarse_coords, lows[:m].copy(), highs[:m].copy(), sums[:m] * scale


@njit(cache=True)
def _csr(n, rows, cols, vals):
    """Symmetric off-diagonal part (-vals) in CSR form from the edge list."""
    indptr = np.zeros(n + 1, dtype=np.int64)
    for e in range(rows.shape[0]):
        indptr[rows[e] + 1] += 1
        indptr[cols[e] + 1] += 1
    for i in range(n):
        indptr[i + 1] += indptr[i]
    fill = indptr[:-1].copy()
    indices = np.empty(indptr[n], dtype=np.int64)
    data = np.empty(indptr[n])
    for e in range(rows.shape[0]):
        a, b = rows[e], cols[e]
        indices[fill[a]], data[fill[a]] = b, -vals[e]
        fill[a] += 1
        indices[fill[b]], data[fill[b]] = a, -vals[e]
        fill[b] += 1
    return indptr, indices, data


@njit(cache=True)
def graph_gauss_seidel(indptr, indices, data, inv, x, b, forward):
    n = x.shape[0]
    for t in range(n):
        i = t if forward else n - 1 - t
        s = b[i]
        for p in range(indptr[i], indptr[i + 1]):
            s -= data[p] * x[indices[p]]
        x[i] = s * inv[i]


@njit(cache=True)
def graph_residual(indptr, indices, data, diag, x, b, r):
    for i in range(x.shape[0]):
        s = b[i] - diag[i] * x[i]
        for p in range(indptr[i], indptr[i + 1]):
            s -= data[p] * x[indices[p]]
        r[i] = s


@njit(cache=True)
def graph_restrict(r, agg, rc):
    """rc = P^T r; ``agg`` is each node's (or, flattened, each grid cell's) aggregate, -1 for none."""
    rc[:] = 0.0
    for i in range(r.shape[0]):
        if agg[i] >= 0:
            rc[agg[i]] += r[i]


@njit(cache=True)
def graph_prolong_add(xc, agg, x):
    """x += P xc."""
    for i in range(x.shape[0]):
        if agg[i] >= 0:
            x[i] += xc[agg[i]]


class GraphLevel(object):
    """A coarse level as a graph (float64: these levels are small)."""

    def __init__(self, d, rows, cols, vals):
        self.n = len(d)
        self.diag, self.rows, self.cols, self.vals = d, rows, cols, vals
        self.indptr, self.indices, self.data = _csr(self.n, rows, cols, vals)
        self.inv = np.where(d != 0, 1.0 / np.where(d != 0, d, 1.0), 0.0)
        self.x = np.zeros(self.n)
        self.b = np.zeros(self.n)
        self.r = np.zeros(self.n)
        self.agg = None          # aggregate of each node on the next coarser level


@njit(cache=True)
def graph_dense(n, diag, rows, cols, vals):
    a = np.zeros((n, n))
    for i in range(n):
        a[i, i] = diag[i]
    for e in range(rows.shape[0]):
        a[rows[e], cols[e]] = a[cols[e], rows[e]] = -vals[e]
    return a


@njit(cache=True)
def cholesky_solve_vector(lower, b, x):
    n = lower.shape[0]
    y = np.zeros(n)
    for i in range(n):
        s = b[i]
        for k in range(i):
            s -= lower[i, k] * y[k]
        y[i] = s / lower[i, i]
    for i in range(n - 1, -1, -1):
        s = y[i]
        for k in range(i + 1, n):
            s -= lower[k, i] * y[k]
        y[i] = s / lower[i, i]
    x[:] = y


class GraphCoarsestSolver(object):
    def __init__(self, level):
        self.lower = cholesky(graph_dense(level.n, level.diag, level.rows, level.cols, level.vals))

    def solve(self, b, x):
        cholesky_solve_vector(self.lower, b, x)


class GridCoarsestSolver(object):
    """Direct solve (Cholesky) on the few active cells of a coarsest level that is still a grid."""

    def __init__(self, level):
        node, d, coords, rows, cols, vals = grid_graph(*(a.astype(np.float64) for a in (
            level.diag, level.cx, level.cy, level.cz)))
        self.cells = tuple(np.nonzero(node >= 0))      # in the order of the nodes
        self.n = len(d)
        self.lower = cholesky(graph_dense(self.n, d, rows, cols, vals)) if self.n else None

    def solve(self, b, x):
        x[...] = 0.0
        if self.n:
            y = np.empty(self.n)
            cholesky_solve_vector(self.lower, b[self.cells].astype(np.float64), y)
            x[self.cells] = y
