"""The fine level of a large binary volume held as one single-precision array (internal to ``physics``).

When every conducting voxel has the same conductivity u, every face between two unknowns has the conductance
u, each unknown's boundary conductance is 2u in the first and last layers, and the right-hand side is 2u in the
first layer: the whole operator follows from its diagonal (u times the number of unknown neighbours, plus the
boundary conductance; 0 off the unknowns). ``BinaryLevel`` keeps only that diagonal (4 bytes per voxel) and the
V-cycle's two vectors; the smoother divides by the diagonal where it is used instead of reading a stored
inverse, the first coarse level is built from the diagonal alone (``_coarsening.coarsen_from_diagonal``), and the
initial residual and the dissipated power are computed without storing the right-hand side. With CG's two other
vectors (A p is recomputed where it is needed instead of stored) that is about 27 bytes per voxel with the
coarse levels, the input and the clusters' bits, where the general layout (``_discretisation``: three
conductance arrays, the diagonal, the boundary conductances and the right-hand side in double precision, then
their single-precision copies) needs about 134. The layout is ``_discretisation``'s: padded by one cell,
transport along array axis 0.
"""

import numpy as np
from numba import njit, prange

from conductivity_tf._discretisation import initial_guess


@njit(parallel=True, cache=True)
def spanning_bits(labels, keep0, keep1, keep2):
    """uint8 per voxel: bit a set where the voxel's cluster joins the two faces normal to axis a (``keep_a``
    indexed by label), so that the labels can be freed before the solves."""
    n0, n1, n2 = labels.shape
    out = np.empty((n0, n1, n2), np.uint8)
    for i in prange(n0):
        for j in range(n1):
            for k in range(n2):
                v = labels[i, j, k]
                out[i, j, k] = np.uint8(keep0[v]) | (np.uint8(keep1[v]) << 1) | (np.uint8(keep2[v]) << 2)
    return out


@njit(cache=True, inline="always")
def _at(bits, axis, a, b, c):
    """The bits of the voxel at (a, b, c) of the grid with ``axis`` moved first (numpy's moveaxis order)."""
    if axis == 0:
        return bits[a, b, c]
    if axis == 1:
        return bits[b, a, c]
    return bits[b, c, a]


@njit(parallel=True, cache=True)
def binary_diagonal(bits, axis, u, diag):
    """The padded diagonal (float32, zeroed, shape of the moved grid + 2) for transport along ``axis`` of the
    voxels whose bit ``axis`` is set, each of conductivity ``u``."""
    m0, m1, m2 = diag.shape[0] - 2, diag.shape[1] - 2, diag.shape[2] - 2
    mask = np.uint8(1 << axis)
    for a in prange(m0):
        edge = 2.0 * u * ((a == 0) + (a == m0 - 1))
        for b in range(m1):
            for c in range(m2):
                if _at(bits, axis, a, b, c) & mask:
                    n = 0
                    if a > 0 and _at(bits, axis, a - 1, b, c) & mask:
                        n += 1
                    if a < m0 - 1 and _at(bits, axis, a + 1, b, c) & mask:
                        n += 1
                    if b > 0 and _at(bits, axis, a, b - 1, c) & mask:
                        n += 1
                    if b < m1 - 1 and _at(bits, axis, a, b + 1, c) & mask:
                        n += 1
                    if c > 0 and _at(bits, axis, a, b, c - 1) & mask:
                        n += 1
                    if c < m2 - 1 and _at(bits, axis, a, b, c + 1) & mask:
                        n += 1
                    diag[a + 1, b + 1, c + 1] = np.float32(u * n + edge)


@njit(cache=True, inline="always")
def _inverse(d):
    return np.float32(1.0) / d if d != 0.0 else np.float32(0.0)


@njit(parallel=True, cache=True, fastmath=True)
def first_sweep_binary(x, b, diag, color):
    """``_multigrid._first_sweep`` with 1/diag computed where it is used."""
    n0, n1, n2 = x.shape
    for i in prange(n0):
        for j in range(n1):
            for k in range(n2):
                x[i, j, k] = b[i, j, k] * _inverse(diag[i, j, k]) if (i + j + k + color) & 1 == 0 else 0.0


@njit(parallel=True, cache=True, fastmath=True)
def gauss_seidel_color_binary(x, b, diag, c, color):
    """``_multigrid._gauss_seidel_color_uniform`` with 1/diag computed where it is used (row buffers, the
    colour copied back by a select: see there)."""
    n0, n1, n2 = x.shape
    for i in prange(1, n0 - 1):
        row = np.empty(n2, x.dtype)
        for j in range(1, n1 - 1):
            for k in range(1, n2 - 1):
                row[k] = (b[i, j, k] + c * (x[i - 1, j, k] + x[i + 1, j, k] + x[i, j - 1, k] + x[i, j + 1, k]
                                            + x[i, j, k - 1] + x[i, j, k + 1])) * _inverse(diag[i, j, k])
            odd = (i + j + color) & 1
            for k in range(1, n2 - 1):
                x[i, j, k] = row[k] if (k & 1) == odd else x[i, j, k]


@njit(parallel=True, cache=True)
def initial_state_binary(diag, u, x, r):
    """x = the linear potential between the faces on the unknowns (0 elsewhere), r = b - A x, where b is 2u on
    the unknowns of the first layer. Returns (|b|^2, sum b, b.x): |b| for CG's residual test, sum b the offset
    that makes CG's energy the dissipated power, b.x for that energy at the start."""
    n0, n1, n2 = diag.shape
    initial_guess(diag, x)
    first = 0
    xb = 0.0
    for j in range(1, n1 - 1):
        for k in range(1, n2 - 1):
            if diag[1, j, k] != 0.0:
                first += 1
                xb += 2.0 * u * x[1, j, k]
    for i in prange(n0):
        for j in range(n1):
            for k in range(n2):
                r[i, j, k] = 0.0
    for i in prange(1, n0 - 1):
        for j in range(1, n1 - 1):
            for k in range(1, n2 - 1):
                d = diag[i, j, k]
                if d != 0.0:
                    b = 2.0 * u if i == 1 else 0.0
                    ax = d * x[i, j, k] - u * (x[i - 1, j, k] + x[i + 1, j, k] + x[i, j - 1, k] + x[i, j + 1, k]
                                               + x[i, j, k - 1] + x[i, j, k + 1])
                    r[i, j, k] = np.float32(b - ax)
    return first * (2.0 * u) ** 2, first * 2.0 * u, xb


@njit(parallel=True, cache=True, fastmath=True)
def power_and_sections_binary(phi, diag, u):
    """``_discretisation.power_and_sections`` for the operator ``diag`` describes (single-precision phi and
    diagonal, double-precision sums)."""
    n0, n1, n2 = phi.shape
    sections = np.zeros(n0 - 1)
    per_layer = np.zeros(n0)
    for i in prange(1, n0 - 1):
        power = 0.0
        layer = 0.0
        below = 1.0 if i < n0 - 2 else 0.0
        rhs = 2.0 * u if i == 1 else 0.0
        for j in range(1, n1 - 1):
            for k in range(1, n2 - 1):
                d = np.float64(diag[i, j, k])
                if d == 0.0:
                    continue
                x = np.float64(phi[i, j, k])
                up = np.float64(phi[i + 1, j, k])
                ax = d * x - u * (np.float64(phi[i - 1, j, k]) + up + np.float64(phi[i, j - 1, k])
                                  + np.float64(phi[i, j + 1, k]) + np.float64(phi[i, j, k - 1])
                                  + np.float64(phi[i, j, k + 1]))
                power += rhs * (1.0 - 2.0 * x) + x * ax
                if diag[i + 1, j, k] != 0.0:
                    layer += u * (x - up)
        per_layer[i] = power
        sections[i] = layer * below
    inlet = 0.0
    outlet = 0.0
    for j in range(1, n1 - 1):
        for k in range(1, n2 - 1):
            if diag[1, j, k] != 0.0:
                inlet += 2.0 * u * (1.0 - np.float64(phi[1, j, k]))
            if diag[n0 - 2, j, k] != 0.0:
                outlet += 2.0 * u * np.float64(phi[n0 - 2, j, k])
    sections[0] = inlet
    sections[n0 - 2] = outlet
    return per_layer.sum(), sections


@njit(cache=True, fastmath=True, inline="always")
def _product(p, diag, c, i, j, k):
    """(A p) at (i, j, k): 0 off the unknowns."""
    v = diag[i, j, k] * p[i, j, k] - c * (p[i - 1, j, k] + p[i + 1, j, k] + p[i, j - 1, k] + p[i, j + 1, k]
                                          + p[i, j, k - 1] + p[i, j, k + 1])
    return v if diag[i, j, k] != 0.0 else 0.0


@njit(parallel=True, cache=True, fastmath=True)
def curvature_binary(p, diag, c):
    """p . A p, without storing A p (CG's step recomputes it: one array fewer, and fewer bytes moved than
    writing A p and reading it back)."""
    n0, n1, n2 = p.shape
    s = 0.0
    for i in prange(1, n0 - 1):
        for j in range(1, n1 - 1):
            for k in range(1, n2 - 1):
                s += p[i, j, k] * _product(p, diag, c, i, j, k)
    return s


@njit(parallel=True, cache=True, fastmath=True)
def step_binary(x, r, p, diag, c, alpha):
    """x += alpha p; r -= alpha A p (A p recomputed); return |r|^2."""
    n0, n1, n2 = p.shape
    s = 0.0
    for i in prange(1, n0 - 1):
        for j in range(1, n1 - 1):
            for k in range(1, n2 - 1):
                v = _product(p, diag, c, i, j, k)
                x[i, j, k] += alpha * p[i, j, k]
                w = r[i, j, k] - alpha * v
                r[i, j, k] = w
                s += w * w
    return s


class BinaryLevel(object):
    """The top level of the V-cycle for a binary volume: the diagonal (float32) and the vectors x, b."""

    def __init__(self, diag, ws, tag):
        self.diag = diag
        self.x = ws.get(tag + "x", diag.shape, np.float32, zero=False)
        self.b = ws.get(tag + "b", diag.shape, np.float32, zero=False)
        self.agg = None
