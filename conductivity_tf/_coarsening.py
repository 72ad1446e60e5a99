"""Coarse levels of the multigrid V-cycle (internal to ``physics``): the Galerkin operator of 2x2x2 aggregation.

For piecewise-constant prolongation P^T A P of a 7-point operator is again a 7-point operator whose face
conductances are the sums of the fine ones across each block interface, scaled (``_multigrid``'s
COARSE_SCALE); the diagonal of an active block is the sum of its face and boundary conductances. ``coarsen``
builds it from a level's arrays, ``coarsen_from_diagonal`` from the diagonal of a binary fine level
(``_binary_level``), both into float64 arrays of the coarse shape.
"""

import numpy as np
from numba import njit, prange


def coarse_shape(shape):
    return tuple((n - 2 + 1) // 2 + 2 for n in shape)


@njit(parallel=True, cache=True)
def coarsen_binary(diag, u, scale, dc, xc, yc, zc, bc, active):
    """``_coarsen_into`` for the operator ``diag`` describes (faces u between unknowns, boundary
    conductance 2u in the first and last layers), into zeroed float64 arrays of the coarse shape."""
    n0, n1, n2 = diag.shape
    m0, m1, m2 = dc.shape
    for I in prange(1, m0 - 1):
        for i in range(2 * I - 1, min(2 * I + 1, n0 - 1)):
            edge = 2.0 * u * ((i == 1) + (i == n0 - 2))
            for j in range(1, n1 - 1):
                J = (j - 1) // 2 + 1
                for k in range(1, n2 - 1):
                    K = (k - 1) // 2 + 1
                    if diag[i, j, k] == 0.0:
                        continue
                    active[I, J, K] = True
                    bc[I, J, K] += edge
                    if i < n0 - 2 and (i + 1 - 1) // 2 + 1 != I and diag[i + 1, j, k] != 0.0:
                        xc[I, J, K] += u
                    if j < n1 - 2 and (j + 1 - 1) // 2 + 1 != J and diag[i, j + 1, k] != 0.0:
                        yc[I, J, K] += u
                    if k < n2 - 2 and (k + 1 - 1) // 2 + 1 != K and diag[i, j, k + 1] != 0.0:
                        zc[I, J, K] += u
    _scale_and_sum(scale, dc, xc, yc, zc, bc, active)


def coarsen_from_diagonal(diag, u, scale, ws, tag):
    """``coarsen`` for the operator a ``_binary_level`` diagonal describes."""
    shape = coarse_shape(diag.shape)
    out = [ws.get(tag + name, shape) for name in ("diag64", "cx64", "cy64", "cz64", "bnd64")]
    active = ws.get(tag + "active", shape, np.bool_)
    coarsen_binary(diag, u, scale, out[0], out[1], out[2], out[3], out[4], active)
    return out


def coarsen(diag, cx, cy, cz, bnd, scale, ws, tag):
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
    _scale_and_sum(scale, dc, xc, yc, zc, bc, active)


@njit(parallel=True, cache=True)
def _scale_and_sum(scale, dc, xc, yc, zc, bc, active):
    """The coarse face and boundary conductances scaled, and the diagonal of the active cells as their sum."""
    m0, m1, m2 = dc.shape
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
