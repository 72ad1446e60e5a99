"""The conduction problem on a grid of box cells, each with its own conductivity along each axis (no TensorFlow).

``physics.solve``'s boundary conditions (unit potential drop between the two faces normal to the axis, insulating
sides) on cells instead of voxels: the coarse problem of a whole volume's windows (``whole_volume``), of its
renormalised proxy (``--detours``), and the reference of the model's slice-combining head. Same discretisation and
multigrid-preconditioned CG as the voxel solver (``_discretisation.assemble_cells``, ``_multigrid``). The same
problem on cells joined by their own conductances (``solve_links``): the cells joined through their faces
(``faces.face_links``), the other proxy of ``--detours``.

>>> import numpy as np
>>> from conductivity_tf import cell_grid
>>> print("{:.6f}".format(cell_grid.solve_cells(np.ones((4, 4, 4, 3)))[0]))   # a uniform grid: sigma itself
1.000000
"""

import math

import numpy as np
from numba import njit

from conductivity_tf._discretisation import Workspace, assemble_cells, initial_guess, power_and_sections
from conductivity_tf._graph_levels import _find  # the union-find's root, with path halving
from conductivity_tf._multigrid import MultigridPCG
from conductivity_tf.errors import UserError
from conductivity_tf.physics import _one_blas_thread, parse_axes


@njit(inline="always")
def _joining_both(parent, first, last, n0, n1, n2):
    """(n0, n1, n2) bool: the cells whose cluster (root in the union-find ``parent``) touches both faces."""
    keep = np.zeros((n0, n1, n2), np.bool_)
    for i in range(n0):
        for j in range(n1):
            for k in range(n2):
                root = _find(parent, (i * n1 + j) * n2 + k)
                keep[i, j, k] = first[root] and last[root]
    return keep


@njit(cache=True)
def _spanning_cells_kernel(s, axis):
    n0, n1, n2 = s.shape[0], s.shape[1], s.shape[2]
    parent = np.arange(n0 * n1 * n2).astype(np.int32)
    for i in range(n0):
        for j in range(n1):
            for k in range(n2):
                here = (i * n1 + j) * n2 + k
                for a in range(3):
                    if s[i, j, k, a] <= 0.0:
                        continue
                    if a == 0 and i + 1 < n0 and s[i + 1, j, k, 0] > 0.0:
                        there = here + n1 * n2
                    elif a == 1 and j + 1 < n1 and s[i, j + 1, k, 1] > 0.0:
                        there = here + n2
                    elif a == 2 and k + 1 < n2 and s[i, j, k + 1, 2] > 0.0:
                        there = here + 1
                    else:
                        continue
                    x, y = _find(parent, here), _find(parent, there)
                    if x != y:
                        parent[max(x, y)] = min(x, y)
    n = (n0, n1, n2)
    inlet = np.zeros(n0 * n1 * n2, np.bool_)
    outlet = np.zeros(n0 * n1 * n2, np.bool_)
    for u in range(n[(axis + 1) % 3]):
        for v in range(n[(axis + 2) % 3]):
            for end in range(2):
                t = 0 if end == 0 else n[axis] - 1
                if axis == 0:
                    i, j, k = t, u, v
                elif axis == 1:
                    i, j, k = v, t, u
                else:
                    i, j, k = u, v, t
                if s[i, j, k, axis] > 0.0:
                    root = _find(parent, (i * n1 + j) * n2 + k)
                    if end == 0:
                        inlet[root] = True
                    else:
                        outlet[root] = True
    return _joining_both(parent, inlet, outlet, n0, n1, n2)


def _spanning_cells(s, axis):
    """The cells of a grid with per-axis conductivities ``s`` (n0, n1, n2, 3) in a cluster joining the two faces
    normal to ``axis``; neighbours are joined along axis a where both conduct along a (a union-find over the
    cells: memory of one int32 a cell)."""
    return _spanning_cells_kernel(np.ascontiguousarray(s, dtype=np.float64), axis)


def solve_cells(conductivity, sizes=None, axes=None, tol=1e-8, maxiter=1000):
    """sigma_eff of a grid of box cells, each with its own conductivity along each axis, for each axis in ``axes``.

    conductivity: (n0, n1, n2, 3), cell (i, j, k)'s conductivity along axes 0, 1, 2 (>= 0).
    sizes: three 1-D arrays, the cells' edge lengths along each axis (default: unit cubes).
    The boundary conditions are ``solve``'s: unit potential drop between the two faces normal to the axis,
    insulating sides; cells not in a cluster joining both faces carry no current and are left out. Returns a list
    of floats (sigma_eff in the unit of ``conductivity``; 0 where no cluster joins the faces).
    """
    s = np.asarray(conductivity, dtype=np.float64)
    if s.ndim != 4 or s.shape[3] != 3 or min(s.shape[:3]) < 1:
        raise UserError("cell conductivities must have shape (n0, n1, n2, 3); got {}".format(s.shape))
    if not np.all(np.isfinite(s)) or s.min() < 0:
        raise UserError("cell conductivities must be finite and non-negative")
    sizes = [np.ones(n) for n in s.shape[:3]] if sizes is None else [np.asarray(h, np.float64) for h in sizes]
    if [len(h) for h in sizes] != list(s.shape[:3]) or min(h.min() for h in sizes) <= 0:
        raise UserError("cell sizes must be three arrays of positive lengths, one per cell along each axis")
    results = []
    with _one_blas_thread():
        for axis in parse_axes(axes):
            order = [axis] + [a for a in range(3) if a != axis]   # transport along the first array axis
            h = [sizes[a] for a in order]
            solution = _solve_moved_cells([np.transpose(s, order + [3])[..., order]], h, tol, maxiter)
            if solution is None:
                results.append(0.0)
                continue
            phi, system = solution
            current, _ = power_and_sections(phi, *system)
            results.append(float(current) * h[0].sum() / (h[1].sum() * h[2].sum()))
    return results


def _solve_moved_cells(held, h, tol, maxiter):
    """The potential (padded) and the system (diag, cx, cy, cz, bnd, rhs) of a grid of cells (n0, n1, n2, 3) for
    transport along its first axis, the cells of edges ``h``; None when no cluster joins the two faces. The grid
    comes in a one-element list ``held``, taken out of it here, so that its memory is freed before the solve."""
    s = held.pop()
    keep = _spanning_cells(s, 0)
    if not keep.any():
        return None
    fields = [np.where(keep, s[..., a], 0.0) for a in range(3)]
    del s, keep
    cx, cy, cz, diag, bnd, rhs = assemble_cells(*fields, *h)
    del fields
    system = (diag, cx, cy, cz, bnd, rhs)
    return _solve_system(system, tol, maxiter), system


def solve_cells_apart(conductivity, tol=1e-8, maxiter=1000):
    """``solve_cells`` of each of b equal grids of unit cells (b, n, n, n, 3), all three axes: (b, 3). The grids are
    laid side by side, one insulating cell apart, and solved at once per axis (one system instead of b); each
    grid's value is the current through its own inlet face."""
    s = np.asarray(conductivity, dtype=np.float64)
    if s.ndim != 5 or s.shape[4] != 3 or len(set(s.shape[1:4])) != 1:
        raise UserError("solve_cells_apart takes equal cubic grids (b, n, n, n, 3); got {}".format(s.shape))
    b, n = s.shape[0], s.shape[1]
    side = int(math.ceil(math.sqrt(b)))
    pitch = n + 1
    results = np.zeros((b, 3))
    with _one_blas_thread():
        for axis in range(3):
            order = [axis] + [a for a in range(3) if a != axis]
            grid = np.zeros((n, side * pitch - 1, side * pitch - 1, 3))
            for w in range(b):
                r, c = divmod(w, side)
                grid[:, r * pitch:r * pitch + n, c * pitch:c * pitch + n] = np.transpose(s[w], order + [3])[..., order]
            ones = [np.ones(m) for m in grid.shape[:3]]
            held = [grid]
            del grid
            solution = _solve_moved_cells(held, ones, tol, maxiter)
            if solution is None:
                continue
            phi, (_, _, _, _, _, rhs) = solution
            inlet = rhs[1, 1:-1, 1:-1] * (1.0 - phi[1, 1:-1, 1:-1])
            for w in range(b):
                r, c = divmod(w, side)
                # sigma = current * length / area, the grid's length n and area n^2
                results[w, axis] = inlet[r * pitch:r * pitch + n, c * pitch:c * pitch + n].sum() / n
    return results


@njit(cache=True)
def _spanning_links_kernel(g0, g1, g2, inlet, outlet):
    n0, n1, n2 = g0.shape
    parent = np.arange(n0 * n1 * n2).astype(np.int32)
    for i in range(n0):
        for j in range(n1):
            for k in range(n2):
                here = (i * n1 + j) * n2 + k
                for there, g in ((here + n1 * n2, g0[i, j, k]), (here + n2, g1[i, j, k]), (here + 1, g2[i, j, k])):
                    if g > 0.0:
                        x, y = _find(parent, here), _find(parent, there)
                        if x != y:
                            parent[max(x, y)] = min(x, y)
    first = np.zeros(n0 * n1 * n2, np.bool_)
    last = np.zeros(n0 * n1 * n2, np.bool_)
    for j in range(n1):
        for k in range(n2):
            if inlet[j, k] > 0.0:
                first[_find(parent, j * n2 + k)] = True
            if outlet[j, k] > 0.0:
                last[_find(parent, ((n0 - 1) * n1 + j) * n2 + k)] = True
    return _joining_both(parent, first, last, n0, n1, n2)


def _link_system(g, inlet, outlet):
    """The padded system (diag, cx, cy, cz, bnd, rhs) for transport along the first axis of cells joined by the
    conductances ``g`` (three (n0, n1, n2) arrays: to the next cell along each axis, zero past the last) and to the
    electrodes by ``inlet`` and ``outlet`` ((n1, n2), the first and last layer); cells not in a cluster joining both
    (a union-find over the joined cells) are left out. None when no cluster joins them."""
    g = [np.ascontiguousarray(a, dtype=np.float64) for a in g]
    inlet, outlet = (np.ascontiguousarray(a, dtype=np.float64) for a in (inlet, outlet))
    keep = _spanning_links_kernel(g[0], g[1], g[2], inlet, outlet)
    if not keep.any():
        return None
    shape = tuple(n + 2 for n in keep.shape)
    inner = (slice(1, -1),) * 3
    cx, cy, cz, bnd, rhs = (np.zeros(shape) for _ in range(5))
    for c, a in zip((cx, cy, cz), g):
        c[inner] = np.where(keep, a, 0.0)     # a link > 0 joins two cells of one cluster: both kept or neither
    del g
    rhs[1, 1:-1, 1:-1] = np.where(keep[0], inlet, 0.0)
    bnd[1, 1:-1, 1:-1] = rhs[1, 1:-1, 1:-1]
    bnd[-2, 1:-1, 1:-1] += np.where(keep[-1], outlet, 0.0)
    diag = bnd.copy()
    diag[inner] += cx[inner] + cx[:-2, 1:-1, 1:-1] + cy[inner] + cy[1:-1, :-2, 1:-1] + cz[inner] + cz[1:-1, 1:-1, :-2]
    return diag, cx, cy, cz, bnd, rhs


def _solve_system(system, tol, maxiter):
    """The potential (padded) of a padded system (diag, cx, cy, cz, bnd, rhs) by the multigrid-preconditioned CG."""
    diag, cx, cy, cz, bnd, rhs = system
    x0 = np.zeros(diag.shape)
    initial_guess(diag, x0)
    solver = MultigridPCG(diag, cx, cy, cz, bnd, ws=Workspace())
    phi, _, _ = solver.solve(rhs, x0=x0, maxiter=maxiter, tol=tol, offset=float(rhs.sum()))
    return phi


def solve_links(links, ends, axes=None, tol=1e-8, maxiter=1000):
    """sigma_eff along each axis in ``axes`` of a grid of unit cells joined by their own conductances: ``links``
    (3, n0, n1, n2), the conductance between each cell and the next along each axis (zero past the last), ``ends``
    per axis (inlet, outlet), the conductances of its first and last layer to the electrodes (2-D over the other two
    axes in order), as ``faces.face_links`` gives them; ``solve``'s boundary conditions. A list of floats."""
    results = []
    with _one_blas_thread():
        for axis in parse_axes(axes):
            order = [axis] + [a for a in range(3) if a != axis]
            system = _link_system([np.transpose(links[a], order) for a in order], *ends[axis])
            if system is None:
                results.append(0.0)
                continue
            phi = _solve_system(system, tol, maxiter)
            current, _ = power_and_sections(phi, *system)
            n = system[0].shape
            results.append(float(current) * (n[0] - 2) / ((n[1] - 2) * (n[2] - 2)))
    return results


def solve_links_apart(grids, tol=1e-8, maxiter=1000):
    """``solve_links`` of each of b equal cubic grids, all three axes: (b, 3). ``grids`` is a list of (links, ends)
    pairs; they are laid side by side, unjoined, and solved at once per axis (one system instead of b); each grid's
    value is the current through its own inlet face."""
    b, n = len(grids), grids[0][0].shape[1]
    side = int(math.ceil(math.sqrt(b)))
    results = np.zeros((b, 3))
    with _one_blas_thread():
        for axis in range(3):
            order = [axis] + [a for a in range(3) if a != axis]
            g = [np.zeros((n, side * n, side * n)) for _ in range(3)]
            inlet, outlet = np.zeros((side * n, side * n)), np.zeros((side * n, side * n))
            for w, (links, ends) in enumerate(grids):
                r, c = divmod(w, side)
                at = (slice(None), slice(r * n, r * n + n), slice(c * n, c * n + n))
                for q, a in zip(g, order):
                    q[at] = np.transpose(links[a], order)   # zero past each grid's last cell: grids stay apart
                inlet[at[1:]], outlet[at[1:]] = ends[axis]
            system = _link_system(g, inlet, outlet)
            del g
            if system is None:
                continue
            phi = _solve_system(system, tol, maxiter)
            current = system[5][1, 1:-1, 1:-1] * (1.0 - phi[1, 1:-1, 1:-1])
            for w in range(b):
                r, c = divmod(w, side)
                # sigma = current * length / area, the grid's length n and area n^2
                results[w, axis] = current[r * n:r * n + n, c * n:c * n + n].sum() / n
    return results
