"""Matrix-free multigrid-preconditioned conjugate gradients for the voxel conduction problem.

Internal to ``physics``. Layout: every array is the voxel grid padded by one cell on each side, so the
7-point stencil needs no bounds checks. The transport axis is array axis 0; the Dirichlet faces are
the outer faces of the first and last layers along it.

- ``cx[i, j, k]`` is the conductance between cells (i, j, k) and (i+1, j, k); ``cy``, ``cz`` likewise;
  zero wherever either cell is padding or insulating.
- ``diag`` is the sum of a cell's face conductances plus its Dirichlet boundary conductances; a cell
  with ``diag == 0`` is not an unknown (insulating, disconnected or padding) and stays zero.

Coarse levels aggregate 2x2x2 blocks. For piecewise-constant prolongation the Galerkin operator
P^T A P of a 7-point operator is again a 7-point operator whose face conductances are the sums of the
fine ones across each block interface; it is scaled by one half per level, which matches the
rediscretised operator for a uniform medium (the classical over-correction of aggregation
multigrid). Red-black Gauss-Seidel, red-then-black before and black-then-red after the coarse
correction, keeps the V-cycle a symmetric positive definite preconditioner for CG.

Below the first ``GRID_LEVELS`` grids the blocks grow large enough (8^3 voxels and more) to hold pore
branches that are not connected inside the block, and one aggregate per block would join them. The
coarser levels are therefore graphs: an aggregate is a piece of a 2x2x2 block of the level above
that is connected inside the block, the operator is the same scaled Galerkin product, and the
smoother is a forward Gauss-Seidel sweep before and a backward one after the coarse correction
(symmetric again). On 128^3 blobs of porosity 0.3 this takes CG from 21 to 14 iterations; these levels
hold under 1 % of the unknowns. The coarsest level is solved directly.

When every conducting voxel has the same conductivity (a binary volume, the common case), every face
between two unknowns has the same conductance c, and the fine-grid sweeps, restriction and CG's
operator product use c times the sum of the six neighbours instead of reading three conductance
arrays: x is zero wherever a cell is not an unknown, so the sum holds exactly the connected ones
(1.1x per solve at 64^3, 1.35x at 128^3, where the fine grid no longer fits in cache).
"""

import threading

import numpy as np
from numba import njit, prange

COARSE_SCALE = 0.5
COARSEST_CELLS = 256
GRID_LEVELS = 3          # levels kept as voxel grids; coarser levels aggregate connected pieces
# grids up to this many padded cells keep their arrays between solves (0.31 GB at 128^3)
MAX_KEPT_CELLS = 130 ** 3


class Workspace(object):
    """Arrays kept between solves of grids of one shape (the three axes of a volume, the samples of a
    dataset). Fresh memory costs a page fault per 4 KiB page on first touch, which was about a third of
    a 64^3 solve. Only the most recent padded shape is kept, and nothing for grids above
    ``MAX_KEPT_CELLS``; arrays handed out are only valid until the next solve."""

    def __init__(self):
        self.key = None
        self.arrays = {}
        self.keep = True

    def begin(self, padded_shape):
        """Start a solve on a padded grid of this shape; forget the arrays of any other shape."""
        key = tuple(padded_shape)
        if key != self.key:
            self.arrays = {}
            self.key = key
        self.keep = int(np.prod(key)) <= MAX_KEPT_CELLS

    def get(self, name, shape, dtype=np.float64, zero=True):
        """The array called ``name``; zero-filled when ``zero`` (else its contents are stale)."""
        dtype = np.dtype(dtype)
        array = self.arrays.get(name)
        if array is None or array.shape != tuple(shape) or array.dtype != dtype:
            array = np.zeros(shape, dtype)
            if self.keep:
                self.arrays[name] = array
        elif zero:
            array.fill(0)
        return array


_local = threading.local()


def workspace():
    """This thread's workspace."""
    if not hasattr(_local, "workspace"):
        _local.workspace = Workspace()
    return _local.workspace


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


def coarse_shape(shape):
    return tuple((n - 2 + 1) // 2 + 2 for n in shape)


def _coarsen(diag, cx, cy, cz, bnd, scale, ws, tag):
    """Galerkin coarse operator of 2x2x2 aggregation, scaled; returns coarse (diag, cx, cy, cz, bnd).

    ``bnd`` is each cell's Dirichlet boundary conductance (part of ``diag``).
    """
    shape = coarse_shape(diag.shape)
    out = [ws.get(tag + name, shape) for name in ("diag64", "cx64", "cy64", "cz64", "bnd64")]
    active = ws.get(tag + "active", shape, np.bool_)
    _coarsen_into(diag, cx, cy, cz, bnd, scale, out[0], out[1], out[2], out[3], out[4], active)
    return out


@njit(parallel=True, cache=True)
def _coarsen_into(diag, cx, cy, cz, bnd, scale, dc, xc, yc, zc, bc, active):
    """The coarse operator into zeroed arrays of the coarse shape (a coarse plane per thread)."""
    n0, n1, n2 = diag.shape
    m0, m1, m2 = dc.shape
    for I in prange(1, m0 - 1):
        for i in range(2 * I - 1, min(2 * I + 1, n0 - 1)):
            for j in range(1, n1 - 1):
                J = (j - 1) // 2 + 1
                for k in range(1, n2 - 1):
                    K = (k - 1) // 2 + 1
                    if diag[i, j, k] != 0.0:
                        active[I, J, K] = True
                    bc[I, J, K] += bnd[i, j, k]
                    # a fine face joins two blocks when its cells fall in different blocks
                    if i < n0 - 2 and (i + 1 - 1) // 2 + 1 != I:
                        xc[I, J, K] += cx[i, j, k]
                    if j < n1 - 2 and (j + 1 - 1) // 2 + 1 != J:
                        yc[I, J, K] += cy[i, j, k]
                    if k < n2 - 2 and (k + 1 - 1) // 2 + 1 != K:
                        zc[I, J, K] += cz[i, j, k]
    for I in prange(m0):
        for J in range(m1):
            for K in range(m2):
                xc[I, J, K] *= scale
                yc[I, J, K] *= scale
                zc[I, J, K] *= scale
                bc[I, J, K] *= scale
    for I in prange(1, m0 - 1):
        for J in range(1, m1 - 1):
            for K in range(1, m2 - 1):
                if active[I, J, K]:
                    dc[I, J, K] = (bc[I, J, K] + xc[I - 1, J, K] + xc[I, J, K] + yc[I, J - 1, K]
                                   + yc[I, J, K] + zc[I, J, K - 1] + zc[I, J, K])


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
def spanning_field(labels, keep, value, axis):
    """The conductivity field along ``axis`` of a volume whose conducting voxels all have conductivity
    ``value``: ``value`` where ``keep[labels]`` (clusters joining the two faces), else 0, float64, with
    ``axis`` moved first (numpy's moveaxis order)."""
    n0, n1, n2 = labels.shape
    if axis == 0:
        out = np.empty((n0, n1, n2))
        for a in prange(n0):
            for b in range(n1):
                for c in range(n2):
                    out[a, b, c] = value if keep[labels[a, b, c]] else 0.0
    elif axis == 1:
        out = np.empty((n1, n0, n2))
        for a in prange(n1):
            for b in range(n0):
                for c in range(n2):
                    out[a, b, c] = value if keep[labels[b, a, c]] else 0.0
    else:
        out = np.empty((n2, n0, n1))
        for a in prange(n2):
            for b in range(n0):
                for c in range(n1):
                    out[a, b, c] = value if keep[labels[b, c, a]] else 0.0
    return out


def assemble(s, ws=None):
    """Padded system for transport along axis 0 of the conductivity field ``s`` (unpadded).

    Returns (cx, cy, cz, diag, bnd, rhs): harmonic-mean face conductances, the diagonal, each cell's
    Dirichlet boundary conductance (2 sigma: half a voxel to the outer face) and the right-hand side
    for phi = 1 at the inlet face and 0 at the outlet face. With a workspace ``ws`` the arrays are its.
    """
    shape = tuple(n + 2 for n in s.shape)
    ws = ws or Workspace()
    # every entry inside the padding is written; the padding stays as created (zero)
    out = [ws.get(name, shape, zero=False) for name in ("cx", "cy", "cz", "diag", "bnd", "rhs")]
    _assemble_into(s, *out)
    return out


@njit(parallel=True, cache=True)
def _assemble_into(s, cx, cy, cz, diag, bnd, rhs):
    n0, n1, n2 = s.shape
    for i in prange(n0):
        for j in range(n1):
            for k in range(n2):
                a = s[i, j, k]
                fx = 0.0
                fy = 0.0
                fz = 0.0
                g = 0.0
                if a > 0.0:
                    if i + 1 < n0 and s[i + 1, j, k] > 0.0:
                        b = s[i + 1, j, k]
                        fx = 2.0 * a * b / (a + b)
                    if j + 1 < n1 and s[i, j + 1, k] > 0.0:
                        b = s[i, j + 1, k]
                        fy = 2.0 * a * b / (a + b)
                    if k + 1 < n2 and s[i, j, k + 1] > 0.0:
                        b = s[i, j, k + 1]
                        fz = 2.0 * a * b / (a + b)
                    if i == 0:
                        g += 2.0 * a
                    if i == n0 - 1:
                        g += 2.0 * a
                cx[i + 1, j + 1, k + 1] = fx
                cy[i + 1, j + 1, k + 1] = fy
                cz[i + 1, j + 1, k + 1] = fz
                bnd[i + 1, j + 1, k + 1] = g
                rhs[i + 1, j + 1, k + 1] = 2.0 * a if i == 0 else 0.0
    for i in prange(1, n0 + 1):
        for j in range(1, n1 + 1):
            for k in range(1, n2 + 1):
                if s[i - 1, j - 1, k - 1] > 0.0:
                    diag[i, j, k] = (bnd[i, j, k] + cx[i - 1, j, k] + cx[i, j, k] + cy[i, j - 1, k]
                                     + cy[i, j, k] + cz[i, j, k - 1] + cz[i, j, k])
                else:
                    diag[i, j, k] = 0.0


@njit(parallel=True, cache=True)
def initial_guess(diag, x0):
    """The linear potential between the faces (1 at the inlet, 0 at the outlet) on the unknowns, 0 elsewhere."""
    n0, n1, n2 = diag.shape
    m = n0 - 2
    for i in prange(n0):
        v = 1.0 - (i - 0.5) / m
        for j in range(n1):
            for k in range(n2):
                x0[i, j, k] = v if diag[i, j, k] != 0.0 else 0.0


@njit(parallel=True, cache=True, fastmath=True)
def power_and_sections(phi, diag, cx, cy, cz, bnd, rhs):
    """Dissipated power (= current for a unit potential drop) and the current through each section.

    power = sum g_in - 2 b.phi + phi.A.phi, second-order accurate in the error of phi;
    sections[0] is the inlet face, sections[k] the face between layers k and k+1, sections[-1] the outlet.
    """
    n0, n1, n2 = phi.shape
    sections = np.zeros(n0 - 1)
    per_layer = np.zeros(n0)
    for i in prange(1, n0 - 1):
        power = 0.0
        layer = 0.0
        below = 1.0 if i < n0 - 2 else 0.0      # the last layer's current leaves through the outlet
        for j in range(1, n1 - 1):
            for k in range(1, n2 - 1):
                x = phi[i, j, k]
                ax = (diag[i, j, k] * x
                      - cx[i - 1, j, k] * phi[i - 1, j, k] - cx[i, j, k] * phi[i + 1, j, k]
                      - cy[i, j - 1, k] * phi[i, j - 1, k] - cy[i, j, k] * phi[i, j + 1, k]
                      - cz[i, j, k - 1] * phi[i, j, k - 1] - cz[i, j, k] * phi[i, j, k + 1])
                power += rhs[i, j, k] * (1.0 - 2.0 * x) + x * ax
                layer += cx[i, j, k] * (x - phi[i + 1, j, k])
        per_layer[i] = power
        sections[i] = layer * below
    inlet = 0.0
    outlet = 0.0
    for j in range(1, n1 - 1):
        for k in range(1, n2 - 1):
            inlet += rhs[1, j, k] * (1.0 - phi[1, j, k])
            outlet += (bnd[n0 - 2, j, k] - rhs[n0 - 2, j, k]) * phi[n0 - 2, j, k]
    sections[0] = inlet
    sections[n0 - 2] = outlet
    return per_layer.sum(), sections


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


@njit(cache=True)
def _cholesky(a):
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


class _CoarsestSolver(object):
    """Direct solve (Cholesky) on the few active cells of a coarsest level that is still a grid."""

    def __init__(self, level):
        node, d, coords, rows, cols, vals = _grid_graph(*(a.astype(np.float64) for a in (
            level.diag, level.cx, level.cy, level.cz)))
        self.cells = tuple(np.nonzero(node >= 0))      # in the order of the nodes
        self.n = len(d)
        self.lower = _cholesky(_graph_dense(self.n, d, rows, cols, vals)) if self.n else None

    def solve(self, b, x):
        x[...] = 0.0
        if self.n:
            y = np.empty(self.n)
            _cholesky_solve_vector(self.lower, b[self.cells].astype(np.float64), y)
            x[self.cells] = y


# ---------------------------------------------------------------------------------------------
# coarse levels as graphs: nodes, each undirected coupling once (rows, cols, vals > 0), a diagonal


@njit(cache=True)
def _grid_graph(diag, cx, cy, cz):
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
def _aggregate(coords, rows, cols):
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
def _coarse_graph(d, coords, rows, cols, vals, agg, count, scale):
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
def _graph_gauss_seidel(indptr, indices, data, inv, x, b, forward):
    n = x.shape[0]
    for t in range(n):
        i = t if forward else n - 1 - t
        s = b[i]
        for p in range(indptr[i], indptr[i + 1]):
            s -= data[p] * x[indices[p]]
        x[i] = s * inv[i]


@njit(cache=True)
def _graph_residual(indptr, indices, data, diag, x, b, r):
    for i in range(x.shape[0]):
        s = b[i] - diag[i] * x[i]
        for p in range(indptr[i], indptr[i + 1]):
            s -= data[p] * x[indices[p]]
        r[i] = s


@njit(cache=True)
def _graph_restrict(r, agg, rc):
    """rc = P^T r; ``agg`` is each node's (or, flattened, each grid cell's) aggregate, -1 for none."""
    rc[:] = 0.0
    for i in range(r.shape[0]):
        if agg[i] >= 0:
            rc[agg[i]] += r[i]


@njit(cache=True)
def _graph_prolong_add(xc, agg, x):
    """x += P xc."""
    for i in range(x.shape[0]):
        if agg[i] >= 0:
            x[i] += xc[agg[i]]


class _GraphLevel(object):
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
def _graph_dense(n, diag, rows, cols, vals):
    a = np.zeros((n, n))
    for i in range(n):
        a[i, i] = diag[i]
    for e in range(rows.shape[0]):
        a[rows[e], cols[e]] = a[cols[e], rows[e]] = -vals[e]
    return a


@njit(cache=True)
def _cholesky_solve_vector(lower, b, x):
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


class _GraphCoarsestSolver(object):
    def __init__(self, level):
        self.lower = _cholesky(_graph_dense(level.n, level.diag, level.rows, level.cols, level.vals))

    def solve(self, b, x):
        _cholesky_solve_vector(self.lower, b, x)


class MultigridPCG(object):
    """Solve A x = b (padded layout, see module docstring) by CG with a multigrid V-cycle preconditioner."""

    def __init__(self, diag, cx, cy, cz, bnd, smoothing=2, fine_smoothing=1, cycle=1, ws=None, uniform=None):
        """``uniform``: the conductance of every face between two unknowns when they all have the same
        one (a binary volume); the fine-grid kernels then read half the bytes."""
        self.ws = ws = ws or Workspace()
        self.operator = (diag, cx, cy, cz)
        self.uniform = None if uniform is None else np.float32(uniform)
        self.levels = [_Level(diag, cx, cy, cz, ws, "L0.")]
        # red-black sweeps before and after the coarse correction: one on the fine grid, where a sweep
        # costs 8x a coarse one, and two below (measured: 6-15 % less time per solve than two everywhere,
        # one more CG iteration at most)
        self.smoothing = smoothing
        self.fine_smoothing = fine_smoothing
        self.cycle = cycle
        grid = (diag, cx, cy, cz)       # the double-precision operator of the last grid level
        while (len(self.levels) < GRID_LEVELS and np.count_nonzero(self.levels[-1].diag) > COARSEST_CELLS
               and min(self.levels[-1].diag.shape) > 3):
            lv = self.levels[-1]
            tag = "L{}.".format(len(self.levels))
            if len(self.levels) == 1:
                dc, xc, yc, zc, bnd = _coarsen(diag, cx, cy, cz, bnd, COARSE_SCALE, ws, tag)
            else:
                dc, xc, yc, zc, bnd = _coarsen(lv.diag, lv.cx, lv.cy, lv.cz, bnd, COARSE_SCALE, ws, tag)
            grid = (dc, xc, yc, zc)
            self.levels.append(_Level(dc, xc, yc, zc, ws, tag))
        if np.count_nonzero(self.levels[-1].diag) > COARSEST_CELLS:
            self._graph_levels(*grid)
        if isinstance(self.levels[-1], _GraphLevel):
            self.coarsest = _GraphCoarsestSolver(self.levels[-1])
        else:
            self.coarsest = _CoarsestSolver(self.levels[-1])

    def _graph_levels(self, diag, cx, cy, cz):
        """Graph levels below the last grid level, down to ``COARSEST_CELLS`` nodes."""
        node, d, coords, rows, cols, vals = _grid_graph(diag, cx, cy, cz)
        fine = self.levels[-1]
        while len(d) > COARSEST_CELLS:
            agg, count = _aggregate(coords, rows, cols)
            if count == len(d):      # nothing joins any more (separate pieces): solve this level directly
                break
            d, coords, rows, cols, vals = _coarse_graph(d, coords, rows, cols, vals, agg, count, COARSE_SCALE)
            if isinstance(fine, _Level):
                fine.agg = np.where(node >= 0, agg[np.maximum(node, 0)], -1).ravel()
            else:
                fine.agg = agg
            fine = _GraphLevel(d, rows, cols, vals)
            self.levels.append(fine)

    def _vcycle(self, depth):
        lv = self.levels[depth]
        if depth == len(self.levels) - 1:
            self.coarsest.solve(lv.b, lv.x)
            return
        if isinstance(lv, _GraphLevel):
            self._graph_vcycle(depth)
            return
        nxt = self.levels[depth + 1]
        if isinstance(nxt, _GraphLevel):
            self._presmooth(lv)
            _residual(lv.x, lv.b, lv.r, lv.diag, lv.cx, lv.cy, lv.cz)     # (not the top level: small grids)
            _graph_restrict(lv.r.ravel(), lv.agg, nxt.b)        # the grid's arrays are C-contiguous:
            self._vcycle(depth + 1)                              # ravel() gives views
            _graph_prolong_add(nxt.x, lv.agg, lv.x.ravel())
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
            _graph_gauss_seidel(lv.indptr, lv.indices, lv.data, lv.inv, lv.x, lv.b, True)
        _graph_residual(lv.indptr, lv.indices, lv.data, lv.diag, lv.x, lv.b, lv.r)
        _graph_restrict(lv.r, lv.agg, nxt.b)
        self._vcycle(depth + 1)
        _graph_prolong_add(nxt.x, lv.agg, lv.x)
        for _ in range(self.smoothing):
            _graph_gauss_seidel(lv.indptr, lv.indices, lv.data, lv.inv, lv.x, lv.b, False)

    def _presmooth(self, lv):
        """Red-black sweeps from x = 0 (the first sweep needs no neighbours)."""
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
        if lv is self.levels[0] and self.uniform is not None:
            _gauss_seidel_color_uniform(lv.x, lv.b, lv.inv, self.uniform, color)
        else:
            _gauss_seidel_color(lv.x, lv.b, lv.inv, lv.cx, lv.cy, lv.cz, color)

    def precondition(self, r, z):
        """z = M r: one V-cycle."""
        top = self.levels[0]
        top.b[...] = r
        self._vcycle(0)
        z[...] = top.x

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
        self._vcycle(0)
        z = top.x
        p = ws.get("cg.p" + suffix, b.shape, dtype, zero=False)
        np.copyto(p, z)
        rz = _dot(r, z)
        rel = np.sqrt(_dot(r, r)) / bnorm
        it = 0
        decrease = 0.0
        done = rel == 0.0 or (tol is None and rel <= rtol)    # the energy test needs one step
        while not done and it < maxiter:
            it += 1
            if rtol is None and self.uniform is not None:
                alpha = rz / _matvec_dot_uniform(p, q, diag, self.uniform)
            else:
                alpha = rz / _matvec_dot(p, q, diag, cx, cy, cz)
            if single:
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
            self._vcycle(0)
            rz_new = _dot(r, z)
            _direction(p, z, p.dtype.type(rz_new / rz))
            rz = rz_new
        if single:
            x64 = ws.get("cg.x", x.shape, np.float64, zero=False)
            np.copyto(x64, x)
            x = x64
        return x, it, rel
