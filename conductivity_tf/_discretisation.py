"""The discretisation of the voxel conduction problem (internal to ``physics``): conductances, boundary faces,
the initial guess and the dissipated power, and the arrays kept between solves.

Layout: every array is the voxel grid padded by one cell on each side, so the
7-point stencil needs no bounds checks. The transport axis is array axis 0; the Dirichlet faces are
the outer faces of the first and last layers along it.

- ``cx[i, j, k]`` is the conductance between cells (i, j, k) and (i+1, j, k); ``cy``, ``cz`` likewise;
  zero wherever either cell is padding or insulating.
- ``diag`` is the sum of a cell's face conductances plus its Dirichlet boundary conductances; a cell
  with ``diag == 0`` is not an unknown (insulating, disconnected or padding) and stays zero.
- ``bnd`` is each cell's Dirichlet boundary conductance (2 sigma: half a voxel to the outer face), ``rhs`` the
  right-hand side for a potential of 1 at the inlet face and 0 at the outlet face.
"""

import threading

import numpy as np
from numba import njit, prange

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


def assemble_cells(sx, sy, sz, hx, hy, hz):
    """Padded system for transport along axis 0 of a grid of box cells with their own conductivity along each
    axis (``sx``, ``sy``, ``sz``: (n0, n1, n2)) and edge lengths ``hx`` (n0,), ``hy`` (n1,), ``hz`` (n2,).

    The conductance between two neighbours is that of their two halves in series (the harmonic mean of the
    two conductivities for equal cells), each half of length h / 2 and of the face's area; a cell of the
    first and last layers has the boundary conductance 2 sigma A / h to its outer face. Returns (cx, cy, cz,
    diag, bnd, rhs) as ``assemble`` does; for unit cubes and sx = sy = sz it is ``assemble``'s system.
    """
    shape = tuple(n + 2 for n in sx.shape)
    out = [np.zeros(shape) for _ in range(6)]
    _assemble_cells_into(*(np.ascontiguousarray(a, dtype=np.float64) for a in (sx, sy, sz, hx, hy, hz)), *out)
    return out


@njit(cache=True)
def _half_pair(a, b, ha, hb, area):
    """The conductance of two half cells in series (0 when either does not conduct)."""
    if a <= 0.0 or b <= 0.0:
        return 0.0
    return area / (0.5 * ha / a + 0.5 * hb / b)


@njit(parallel=True, cache=True)
def _assemble_cells_into(sx, sy, sz, hx, hy, hz, cx, cy, cz, diag, bnd, rhs):
    n0, n1, n2 = sx.shape
    for i in prange(n0):
        for j in range(n1):
            for k in range(n2):
                a = sx[i, j, k]
                if i + 1 < n0:
                    cx[i + 1, j + 1, k + 1] = _half_pair(a, sx[i + 1, j, k], hx[i], hx[i + 1], hy[j] * hz[k])
                if j + 1 < n1:
                    cy[i + 1, j + 1, k + 1] = _half_pair(sy[i, j, k], sy[i, j + 1, k], hy[j], hy[j + 1],
                                                         hx[i] * hz[k])
                if k + 1 < n2:
                    cz[i + 1, j + 1, k + 1] = _half_pair(sz[i, j, k], sz[i, j, k + 1], hz[k], hz[k + 1],
                                                         hx[i] * hy[j])
                g = 2.0 * a * hy[j] * hz[k] / hx[i] if a > 0.0 else 0.0
                bnd[i + 1, j + 1, k + 1] = g * ((i == 0) + (i == n0 - 1))
                rhs[i + 1, j + 1, k + 1] = g if i == 0 else 0.0
    for i in prange(1, n0 + 1):
        for j in range(1, n1 + 1):
            for k in range(1, n2 + 1):
                d = (bnd[i, j, k] + cx[i - 1, j, k] + cx[i, j, k] + cy[i, j - 1, k] + cy[i, j, k]
                     + cz[i, j, k - 1] + cz[i, j, k])
                diag[i, j, k] = d
