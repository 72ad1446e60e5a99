"""Matrix-free multigrid-preconditioned conjugate gradients for the voxel conduction problem.

Internal to ``physics``; the padded layout and the operator (``cx``, ``cy``, ``cz``, ``diag``) are
``_discretisation``'s. ``VCycle`` is the preconditioner (grid levels here, graph levels from ``_graph_levels``),
``MultigridPCG`` the conjugate-gradient loop around it.

Coarse levels aggregate 2x2x2 blocks. For piecewise-constant prolongation the Galerkin operator
P^T A P of a 7-point operator is again a 7-point operator whose face conductances are the sums of the
fine ones across each block interface; it is scaled by one half per level, which matches the
rediscretised operator for a uniform medium (the classical over-correction of aggregation
multigrid). Red-black Gauss-Seidel, red-then-black before and black-then-red after the coarse
correction, keeps the V-cycle a symmetric positive definite preconditioner for CG.

When every conducting voxel has the same conductivity (a binary volume, the common case), every face
between two unknowns has the same conductance c, and the fine-grid sweeps, restriction and CG's
operator product use c times the sum of the six neighbours instead of reading three conductance
arrays: x is zero wherever a cell is not an unknown, so the sum holds exactly the connected ones
(1.1x per solve at 64^3, 1.35x at 128^3, where the fine grid no longer fits in cache).
"""

import numpy as np
from numba import njit, prange

from conductivity_tf._binary_level import (
    BinaryLevel,
    curvature_binary,
    first_sweep_binary,
    gauss_seidel_color_binary,
    initial_state_binary,
    step_binary,
)
from conductivity_tf._coarsening import coarsen, coarsen_from_diagonal
from conductivity_tf._discretisation import Workspace
from conductivity_tf._graph_levels import (
    GraphCoarsestSolver,
    GraphLevel,
    GridCoarsestSolver,
    aggregate,
    coarse_graph,
    graph_gauss_seidel,
    graph_prolong_add,
    graph_residual,
    graph_restrict,
    grid_graph,
)

COARSE_SCALE = 0.5


COARSEST_CELLS = 256


GRID_LEVELS = 3          # levels kept as voxel grids; coarser levels aggregate connected pieces


@njit(parallel=True, cache=True, fastmath=True)
def _residual(x, b, r, diag, cx, cy, cz):
    n0, n1, n2 = x.shape
    for i in prange(1, n0 - 1):
        for j in range(1, n1 - 1):
            for k in range(1, n2 - 1):
                v = b[i, j, k] - (
                    diag[i, j, k] * x[i, j, k]
                    - cx[i - 1, j, k] * x[i - 1, j, k] - cx[i, j, k] * x[i + 1, j, k]
                    - cy[i, j - 1, k] * x[i, j - 1, k] - cy[i, j, k] * x[i, j + 1, k]
                    - cz[i, j, k - 1] * x[i, j, k - 1] - cz[i, j, k] * x[i, j, k + 1])
                r[i, j, k] = v if diag[i, j, k] != 0.0 else 0.0     # a select: vectorised


@njit(parallel=True, cache=True, fastmath=True)
def _gauss_seidel_color(x, b, inv, cx, cy, cz, color):
    """One colour of red-black Gauss-Seidel. ``inv`` is 1/diag, 0 where a cell is not an unknown, so
    the update needs neither a branch nor a division (the cell's conductances are 0 there too).

    Each row is updated in two unit-stride passes that the compiler vectorises: the update of every
    cell into a row buffer, then the cells of this colour copied back by a select over the whole row (a
    stride-2 copy becomes gathers and scatters, 1.35x slower here). A cell's update reads only cells of
    the other colour, which this sweep does not write (the select writes their own values back), so
    this is the plain loop over this colour's cells (up to the order of the additions) at about twice
    its speed.
    """
    n0, n1, n2 = x.shape
    for i in prange(1, n0 - 1):
        row = np.empty(n2, x.dtype)
        for j in range(1, n1 - 1):
            for k in range(1, n2 - 1):
                row[k] = (b[i, j, k]
                          + cx[i - 1, j, k] * x[i - 1, j, k] + cx[i, j, k] * x[i + 1, j, k]
                          + cy[i, j - 1, k] * x[i, j - 1, k] + cy[i, j, k] * x[i, j + 1, k]
                          + cz[i, j, k - 1] * x[i, j, k - 1] + cz[i, j, k] * x[i, j, k + 1]) * inv[i, j, k]
            odd = (i + j + color) & 1         # this colour's cells have k & 1 == odd
            for k in range(1, n2 - 1):
                x[i, j, k] = row[k] if (k & 1) == odd else x[i, j, k]


@njit(parallel=True, cache=True, fastmath=True)
def _gauss_seidel_color_uniform(x, b, inv, c, color):
    """``_gauss_seidel_color`` where every face between two unknowns has the conductance ``c`` (a binary
    volume). x is zero wherever a cell is not an unknown, so c times the sum of all six neighbours is
    the sum of the face currents: the sweep reads x, b and inv only, half the bytes of the general one."""
    n0, n1, n2 = x.shape
    for i in prange(1, n0 - 1):
        row = np.empty(n2, x.dtype)
        for j in range(1, n1 - 1):
            for k in range(1, n2 - 1):
                row[k] = (b[i, j, k] + c * (x[i - 1, j, k] + x[i + 1, j, k] + x[i, j - 1, k] + x[i, j + 1, k]
                                            + x[i, j, k - 1] + x[i, j, k + 1])) * inv[i, j, k]
            odd = (i + j + color) & 1         # this colour's cells have k & 1 == odd
            for k in range(1, n2 - 1):
                x[i, j, k] = row[k] if (k & 1) == odd else x[i, j, k]


@njit(parallel=True, cache=True, fastmath=True)
def _first_sweep(x, b, inv, color):
    """The first colour sweep from x = 0: that colour's cells get b / diag, the others (and the
    padding, where ``inv`` is 0) get 0. Same result as zeroing x and calling ``_gauss_seidel_color``,
    in one unit-stride pass over three arrays instead of two passes over seven."""
    n0, n1, n2 = x.shape
    for i in prange(n0):
        for j in range(n1):
            for k in range(n2):
                x[i, j, k] = b[i, j, k] * inv[i, j, k] if (i + j + k + color) & 1 == 0 else 0.0


@njit(parallel=True, cache=True, fastmath=True)
def _residual_restrict(x, b, diag, cx, cy, cz, rc):
    """rc = P^T (b - A x), the residual summed over each 2x2x2 block, without storing the residual.
    Each coarse plane is written by one thread; a row's residual goes into a unit-stride buffer (zero
    at the padding) whose pairs are then added to the coarse row."""
    n0, n1, n2 = x.shape
    m0, m1, m2 = rc.shape
    for I in prange(m0):
        for J in range(m1):
            for K in range(m2):
                rc[I, J, K] = 0.0
        if I == 0 or I == m0 - 1:
            continue
        row = np.zeros(2 * m2, x.dtype)
        for i in range(2 * I - 1, min(2 * I + 1, n0 - 1)):
            for j in range(1, n1 - 1):
                J = (j - 1) // 2 + 1
                for k in range(1, n2 - 1):
                    v = b[i, j, k] - (
                        diag[i, j, k] * x[i, j, k]
                        - cx[i - 1, j, k] * x[i - 1, j, k] - cx[i, j, k] * x[i + 1, j, k]
                        - cy[i, j - 1, k] * x[i, j - 1, k] - cy[i, j, k] * x[i, j + 1, k]
                        - cz[i, j, k - 1] * x[i, j, k - 1] - cz[i, j, k] * x[i, j, k + 1])
                    row[k] = v if diag[i, j, k] != 0.0 else 0.0
                for K in range(1, m2 - 1):
                    rc[I, J, K] += row[2 * K - 1] + row[2 * K]


@njit(parallel=True, cache=True, fastmath=True)
def _residual_restrict_uniform(x, b, diag, c, rc):
    """``_residual_restrict`` with one face conductance ``c`` and x zero off the unknowns."""
    n0, n1, n2 = x.shape
    m0, m1, m2 = rc.shape
    for I in prange(m0):
        for J in range(m1):
            for K in range(m2):
                rc[I, J, K] = 0.0
        if I == 0 or I == m0 - 1:
            continue
        row = np.zeros(2 * m2, x.dtype)
        for i in range(2 * I - 1, min(2 * I + 1, n0 - 1)):
            for j in range(1, n1 - 1):
                J = (j - 1) // 2 + 1
                for k in range(1, n2 - 1):
                    v = b[i, j, k] - (diag[i, j, k] * x[i, j, k] - c * (
                        x[i - 1, j, k] + x[i + 1, j, k] + x[i, j - 1, k] + x[i, j + 1, k]
                        + x[i, j, k - 1] + x[i, j, k + 1]))
                    row[k] = v if diag[i, j, k] != 0.0 else 0.0
                for K in range(1, m2 - 1):
                    rc[I, J, K] += row[2 * K - 1] + row[2 * K]


@njit(parallel=True, cache=True)
def _prolong_add(xc, x, diag):
    """x += P xc on the fine unknowns. Each coarse row is first spread to a fine row buffer (used for
    the two fine rows it covers), so that the update is a unit-stride pass: 2.5x faster than reading
    xc at k // 2 in it (gathers)."""
    n0, n1, n2 = x.shape
    m2 = xc.shape[2]
    for i in prange(1, n0 - 1):
        I = (i - 1) // 2 + 1
        row = np.zeros(2 * m2, x.dtype)
        for j in range(1, n1 - 1):
            J = (j - 1) // 2 + 1
            if (j - 1) % 2 == 0:
                for K in range(1, m2 - 1):
                    row[2 * K - 1] = xc[I, J, K]
                    row[2 * K] = xc[I, J, K]
            for k in range(1, n2 - 1):
                x[i, j, k] += row[k] if diag[i, j, k] != 0.0 else 0.0


@njit(parallel=True, cache=True, fastmath=True)
def _dot(a, b):
    n0, n1, n2 = a.shape
    s = 0.0
    for i in prange(n0):
        for j in range(n1):
            for k in range(n2):
                s += a[i, j, k] * b[i, j, k]
    return s


@njit(parallel=True, cache=True, fastmath=True)
def _matvec_dot(x, out, diag, cx, cy, cz):
    """out = A x; return x . out (one pass)."""
    n0, n1, n2 = x.shape
    s = 0.0
    for i in prange(1, n0 - 1):
        for j in range(1, n1 - 1):
            for k in range(1, n2 - 1):
                v = (diag[i, j, k] * x[i, j, k]
                     - cx[i - 1, j, k] * x[i - 1, j, k] - cx[i, j, k] * x[i + 1, j, k]
                     - cy[i, j - 1, k] * x[i, j - 1, k] - cy[i, j, k] * x[i, j + 1, k]
                     - cz[i, j, k - 1] * x[i, j, k - 1] - cz[i, j, k] * x[i, j, k + 1])
                out[i, j, k] = v
                s += x[i, j, k] * v
    return s


@njit(parallel=True, cache=True, fastmath=True)
def _matvec_dot_uniform(x, out, diag, c):
    """``_matvec_dot`` with one face conductance ``c`` and x zero off the unknowns."""
    n0, n1, n2 = x.shape
    s = 0.0
    for i in prange(1, n0 - 1):
        for j in range(1, n1 - 1):
            for k in range(1, n2 - 1):
                v = diag[i, j, k] * x[i, j, k] - c * (
                    x[i - 1, j, k] + x[i + 1, j, k] + x[i, j - 1, k] + x[i, j + 1, k]
                    + x[i, j, k - 1] + x[i, j, k + 1])
                v = v if diag[i, j, k] != 0.0 else 0.0
                out[i, j, k] = v
                s += x[i, j, k] * v
    return s


@njit(parallel=True, cache=True, fastmath=True)
def _step(x, r, p, q, alpha, r32):
    """x += alpha p; r -= alpha q; r32 = r in the preconditioner's precision; return |r|^2."""
    n0, n1, n2 = x.shape
    s = 0.0
    for i in prange(n0):
        for j in range(n1):
            for k in range(n2):
                x[i, j, k] += alpha * p[i, j, k]
                v = r[i, j, k] - alpha * q[i, j, k]
                r[i, j, k] = v
                r32[i, j, k] = v
                s += v * v
    return s


@njit(parallel=True, cache=True, fastmath=True)
def _step_single(x, r, p, q, alpha):
    """x += alpha p; r -= alpha q; return |r|^2 (single precision vectors, r is the V-cycle's input)."""
    n0, n1, n2 = x.shape
    s = 0.0
    for i in prange(n0):
        for j in range(n1):
            for k in range(n2):
                x[i, j, k] += alpha * p[i, j, k]
                v = r[i, j, k] - alpha * q[i, j, k]
                r[i, j, k] = v
                s += v * v
    return s


@njit(parallel=True, cache=True, fastmath=True)
def _direction(p, z, beta):
    """p = z + beta p (z in the preconditioner's precision)."""
    n0, n1, n2 = p.shape
    for i in prange(n0):
        for j in range(n1):
            for k in range(n2):
                p[i, j, k] = z[i, j, k] + beta * p[i, j, k]


@njit(parallel=True, cache=True)
def _to_single(diag, cx, cy, cz, d, x, y, z, inv):
    """The operator rounded to single precision, and 1/diag (0 where diag is 0), in one pass."""
    n0, n1, n2 = diag.shape
    for i in prange(n0):
        for j in range(n1):
            for k in range(n2):
                dv = np.float32(diag[i, j, k])
                d[i, j, k] = dv
                x[i, j, k] = np.float32(cx[i, j, k])
                y[i, j, k] = np.float32(cy[i, j, k])
                z[i, j, k] = np.float32(cz[i, j, k])
                inv[i, j, k] = np.float32(1.0) / dv if dv != 0 else np.float32(0.0)


class _Level(object):
    def __init__(self, diag, cx, cy, cz, ws, tag):
        dtype = np.float32
        # the preconditioner needs no double precision: single halves the memory traffic
        shape = diag.shape
        self.diag, self.cx, self.cy, self.cz, self.inv = (ws.get(tag + name, shape, dtype, zero=False)
                                                          for name in ("diag", "cx", "cy", "cz", "inv"))
        _to_single(diag, cx, cy, cz, self.diag, self.cx, self.cy, self.cz, self.inv)
        # written whole before they are read (x by the first sweep or the coarsest solve, b by the
        # restriction or the copy of the CG residual, r by the residual), so not zeroed
        self.x = ws.get(tag + "x", shape, dtype, zero=False)
        self.b = ws.get(tag + "b", shape, dtype, zero=False)
        self.r = ws.get(tag + "r", shape, dtype, zero=False)
        self.agg = None          # above a graph level: each cell's aggregate there (flattened), -1 if none


class VCycle(object):
    """The multigrid preconditioner of A (padded layout): grid levels of 2x2x2 aggregates, then graph levels,
    a direct solve at the bottom; ``run`` takes the top level's ``b`` to its ``x`` (one cycle)."""

    def __init__(self, diag, cx, cy, cz, bnd, smoothing=2, fine_smoothing=1, cycle=1, ws=None, uniform=None,
                 binary=False):
        """``uniform``: the conductance of every face between two unknowns when they all have the same
        one (a binary volume); the fine-grid kernels then read half the bytes. ``binary``: ``diag`` is a
        ``_binary_level`` diagonal (float32) that describes the whole operator with ``uniform`` (cx, cy, cz
        and bnd are not given); the top level is then a ``BinaryLevel``."""
        ws = ws or Workspace()
        self.uniform = None if uniform is None else np.float32(uniform)
        self.binary = binary
        self.levels = [BinaryLevel(diag, ws, "L0.") if binary else _Level(diag, cx, cy, cz, ws, "L0.")]
        # red-black sweeps before and after the coarse correction: one on the fine grid, where a sweep
        # costs 8x a coarse one, and two below (measured: 6-15 % less time per solve than two everywhere,
        # one more CG iteration at most)
        self.smoothing = smoothing
        self.fine_smoothing = fine_smoothing
        self.cycle = cycle
        grid = (diag, cx, cy, cz)       # the double-precision operator of the last grid level
        # a binary top level always has a grid level below it (it has no conductance arrays to solve on)
        while (len(self.levels) < GRID_LEVELS and (binary and len(self.levels) == 1 or (
                np.count_nonzero(self.levels[-1].diag) > COARSEST_CELLS and min(self.levels[-1].diag.shape) > 3))):
            lv = self.levels[-1]
            tag = "L{}.".format(len(self.levels))
            if binary and len(self.levels) == 1:
                dc, xc, yc, zc, bnd = coarsen_from_diagonal(diag, float(uniform), COARSE_SCALE, ws, tag)
            elif len(self.levels) == 1:
                dc, xc, yc, zc, bnd = coarsen(diag, cx, cy, cz, bnd, COARSE_SCALE, ws, tag)
            else:
                dc, xc, yc, zc, bnd = coarsen(lv.diag, lv.cx, lv.cy, lv.cz, bnd, COARSE_SCALE, ws, tag)
            grid = (dc, xc, yc, zc)
            self.levels.append(_Level(dc, xc, yc, zc, ws, tag))
        if np.count_nonzero(self.levels[-1].diag) > COARSEST_CELLS:
            self._graph_levels(*grid)
        if isinstance(self.levels[-1], GraphLevel):
            self.coarsest = GraphCoarsestSolver(self.levels[-1])
        else:
            self.coarsest = GridCoarsestSolver(self.levels[-1])

    def _graph_levels(self, diag, cx, cy, cz):
        """Graph levels below the last grid level, down to ``COARSEST_CELLS`` nodes."""
        node, d, coords, rows, cols, vals = grid_graph(diag, cx, cy, cz)
        fine = self.levels[-1]
        while len(d) > COARSEST_CELLS:
            agg, count = aggregate(coords, rows, cols)
            if count == len(d):      # nothing joins any more (separate pieces): solve this level directly
                break
            d, coords, rows, cols, vals = coarse_graph(d, coords, rows, cols, vals, agg, count, COARSE_SCALE)
            if isinstance(fine, _Level):
                fine.agg = np.where(node >= 0, agg[np.maximum(node, 0)], -1).ravel()
            else:
                fine.agg = agg
            fine = GraphLevel(d, rows, cols, vals)
            self.levels.append(fine)

    def _vcycle(self, depth):
        lv = self.levels[depth]
        if depth == len(self.levels) - 1:
            self.coarsest.solve(lv.b, lv.x)
            return
        if isinstance(lv, GraphLevel):
            self._graph_vcycle(depth)
            return
        nxt = self.levels[depth + 1]
        if isinstance(nxt, GraphLevel):
            self._presmooth(lv)
            _residual(lv.x, lv.b, lv.r, lv.diag, lv.cx, lv.cy, lv.cz)     # (not the top level: small grids)
            graph_restrict(lv.r.ravel(), lv.agg, nxt.b)        # the grid's arrays are C-contiguous:
            self._vcycle(depth + 1)                              # ravel() gives views
            graph_prolong_add(nxt.x, lv.agg, lv.x.ravel())
            self._smooth(lv, (1, 0))
            return
        self._presmooth(lv)
        # cycle = 1: V-cycle; 2: W-cycle (cheap in 3-D: each level has 1/8 of the cells)
        for _ in range(self.cycle if depth + 2 < len(self.levels) else 1):
            if depth == 0 and self.uniform is not None:
                _residual_restrict_uniform(lv.x, lv.b, lv.diag, self.uniform, nxt.b)
            else:
                _residual_restrict(lv.x, lv.b, lv.diag, lv.cx, lv.cy, lv.cz, nxt.b)
            self._vcycle(depth + 1)
            _prolong_add(nxt.x, lv.x, lv.diag)
        self._smooth(lv, (1, 0))

    def _graph_vcycle(self, depth):
        lv, nxt = self.levels[depth], self.levels[depth + 1]
        lv.x[:] = 0.0
        for _ in range(self.smoothing):
            graph_gauss_seidel(lv.indptr, lv.indices, lv.data, lv.inv, lv.x, lv.b, True)
        graph_residual(lv.indptr, lv.indices, lv.data, lv.diag, lv.x, lv.b, lv.r)
        graph_restrict(lv.r, lv.agg, nxt.b)
        self._vcycle(depth + 1)
        graph_prolong_add(nxt.x, lv.agg, lv.x)
        for _ in range(self.smoothing):
            graph_gauss_seidel(lv.indptr, lv.indices, lv.data, lv.inv, lv.x, lv.b, False)

    def _presmooth(self, lv):
        """Red-black sweeps from x = 0 (the first sweep needs no neighbours)."""
        if isinstance(lv, BinaryLevel):
            first_sweep_binary(lv.x, lv.b, lv.diag, 0)
        else:
            _first_sweep(lv.x, lv.b, lv.inv, 0)
        self._sweep(lv, 1)
        self._smooth(lv, (0, 1), self._sweeps(lv) - 1)

    def _sweeps(self, lv):
        return self.fine_smoothing if lv is self.levels[0] else self.smoothing

    def _smooth(self, lv, colors, times=None):
        for _ in range(self._sweeps(lv) if times is None else times):
            for color in colors:
                self._sweep(lv, color)

    def _sweep(self, lv, color):
        if isinstance(lv, BinaryLevel):
            gauss_seidel_color_binary(lv.x, lv.b, lv.diag, self.uniform, color)
        elif lv is self.levels[0] and self.uniform is not None:
            _gauss_seidel_color_uniform(lv.x, lv.b, lv.inv, self.uniform, color)
        else:
            _gauss_seidel_color(lv.x, lv.b, lv.inv, lv.cx, lv.cy, lv.cz, color)

    def run(self):
        """One cycle from the top level's ``b`` into its ``x``."""
        self._vcycle(0)

    def precondition(self, r, z):
        """z = M r: one V-cycle."""
        top = self.levels[0]
        top.b[...] = r
        self._vcycle(0)
        z[...] = top.x


class MultigridPCG(object):
    """Solve A x = b (padded layout, see ``_discretisation``) by CG with a multigrid V-cycle preconditioner."""

    def __init__(self, diag, cx, cy, cz, bnd, smoothing=2, fine_smoothing=1, cycle=1, ws=None, uniform=None,
                 binary=False):
        """``uniform``: the conductance of every face between two unknowns when they all have the same
        one (a binary volume); the fine-grid kernels then read half the bytes. ``binary``: ``diag`` is a
        ``_binary_level`` diagonal that describes the whole system with ``uniform`` (cx, cy, cz, bnd None):
        ``solve`` then takes no right-hand side and works in single precision only."""
        self.ws = ws = ws or Workspace()
        self.operator = (diag, cx, cy, cz)
        self.binary = binary
        self.preconditioner = VCycle(diag, cx, cy, cz, bnd, smoothing, fine_smoothing, cycle, ws, uniform, binary)
        self.uniform = self.preconditioner.uniform

    @property
    def levels(self):
        return self.preconditioner.levels

    def solve(self, b, x0=None, rtol=None, maxiter=500, tol=None, offset=0.0):
        """Return (x, iterations, relative residual); x is the workspace's until its next solve.

        Stopping: with ``rtol``, when the residual is at most rtol times |b|; with ``tol``, when the
        last step lowered the energy E(x) = offset + x.Ax - 2 b.x by at most tol times E. CG minimises
        E, and each step lowers it by alpha r.z; what is left to lower is E(x) - E(x*) = |x - x*|_A^2,
        estimated as the last decrease while the decreases shrink at least 2x per step (else as the
        geometric tail of the last ratio). An estimate, not a bound: CG's decreases need not shrink
        steadily (on the 12,118 non-zero labels of data/small32 the error stayed below 1.6 tol, and
        below tol for all but 8). For a Dirichlet problem with offset = sum(b) (unit potential drop),
        E is the dissipated power, so ``tol`` is the relative accuracy of the effective conductivity.
        Given both, both must hold. Without ``rtol`` the vectors and the operator products are single
        precision (see below), and the residual returned is that system's.

        The loop uses numba kernels only: BLAS threads spinning between calls would compete with
        numba's threads for the cores. The preconditioned residual z is the top level's
        single-precision solution, used where it lies; the residual is copied into the top level as
        it is updated."""
        if rtol is None and tol is None:
            raise ValueError("give rtol, tol or both")
        ws = self.ws
        top = self.levels[0]
        if self.binary:
            return self._loop(*self._start_binary(), rtol, maxiter, tol)
        if rtol is None:
            # only sigma wanted: products with the operator rounded to single precision (half the
            # memory traffic). CG then converges to the solution of a system off by ~1e-7, but the
            # power computed afterwards with the exact operator is off by the square of that
            diag, cx, cy, cz = top.diag, top.cx, top.cy, top.cz
        else:
            diag, cx, cy, cz = self.operator
        # Without rtol the vectors are single precision too (the operator products already are):
        # CG's vector updates are half the memory traffic of an iteration, and the power computed
        # afterwards is second order in the error of x. The residual is then the V-cycle's right-hand
        # side itself. With rtol, double precision throughout.
        single = rtol is None
        dtype = np.float32 if single else b.dtype
        suffix = "32" if single else ""
        x = ws.get("cg.x" + suffix, b.shape, dtype, zero=x0 is None)
        if x0 is not None:
            np.copyto(x, x0)
        if single:
            b32 = ws.get("cg.b32", b.shape, dtype, zero=False)
            np.copyto(b32, b)
            b = b32
            r = top.b
        else:
            # r and q are written inside the padding before they are read; their padding stays zero
            r = ws.get("cg.r", b.shape, dtype, zero=False)
        _residual(x, b, r, diag, cx, cy, cz)
        bnorm = np.sqrt(_dot(b, b)) or 1.0
        energy = offset - _dot(x, r) - _dot(x, b)        # x.Ax - 2 b.x = -x.(r + b)
        q = ws.get("cg.q" + suffix, b.shape, dtype, zero=False)
        if not single:
            top.b[...] = r
        x, it, rel = self._loop(x, r, q, bnorm, energy, single, diag, cx, cy, cz, rtol, maxiter, tol)
        if single:
            x64 = ws.get("cg.x", x.shape, np.float64, zero=False)
            np.copyto(x64, x)
            x = x64
        return x, it, rel

    def _start_binary(self):
        """CG's start for a binary system: x, r = b - A x, q, |b| and the energy, in single precision, without
        storing b (``_binary_level.initial_state_binary``)."""
        top = self.levels[0]
        x = self.ws.get("cg.x32", top.diag.shape, np.float32, zero=False)
        r = top.b
        bb, offset, xb = initial_state_binary(top.diag, float(self.uniform), x, r)
        return x, r, None, np.sqrt(bb) or 1.0, offset - _dot(x, r) - xb, True, top.diag, None, None, None

    def _loop(self, x, r, q, bnorm, energy, single, diag, cx, cy, cz, rtol, maxiter, tol):
        """The preconditioned CG iterations from x with residual r (r is the top level's b when ``single``)."""
        ws = self.ws
        top = self.levels[0]
        self.preconditioner.run()
        z = top.x
        p = ws.get("cg.p" + ("32" if single else ""), x.shape, x.dtype, zero=False)
        np.copyto(p, z)
        rz = _dot(r, z)
        rel = np.sqrt(_dot(r, r)) / bnorm
        it = 0
        decrease = 0.0
        done = rel == 0.0 or (tol is None and rel <= rtol)    # the energy test needs one step
        while not done and it < maxiter:
            it += 1
            if self.binary:      # no q: A p recomputed in the step
                alpha = rz / curvature_binary(p, diag, self.uniform)
            elif rtol is None and self.uniform is not None:
                alpha = rz / _matvec_dot_uniform(p, q, diag, self.uniform)
            else:
                alpha = rz / _matvec_dot(p, q, diag, cx, cy, cz)
            if self.binary:
                rel = np.sqrt(step_binary(x, r, p, diag, self.uniform, np.float32(alpha))) / bnorm
            elif single:
                rel = np.sqrt(_step_single(x, r, p, q, np.float32(alpha))) / bnorm
            else:
                rel = np.sqrt(_step(x, r, p, q, alpha, top.b)) / bnorm
            decrease, previous = alpha * rz, decrease
            energy -= decrease
            # what is left to lower, estimated: the last decrease while decreases shrink at least
            # 2x per step, else the geometric tail decrease * ratio / (1 - ratio)
            ratio = decrease / previous if previous > 0 else 0.0
            left = decrease * max(1.0, ratio / (1.0 - ratio)) if ratio < 1.0 else np.inf
            done = rel == 0.0 or ((rtol is None or rel <= rtol) and (tol is None or left <= tol * energy))
            if done:
                break
            self.preconditioner.run()
            rz_new = _dot(r, z)
            _direction(p, z, p.dtype.type(rz_new / rz))
            rz = rz_new
        return x, it, rel
