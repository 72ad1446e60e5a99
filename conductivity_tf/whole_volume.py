"""Whole volumes of any size: windows of the model's cube, combined by physics (no TensorFlow here).

A volume of sides N0, N1, N2 (each at least the window S, the model's cube) is divided into a grid of box cells
of at most ``cell`` voxels a side (default: the window; cell edges rounded to voxels, so the cells of one axis
differ by a voxel at most). Cell (i, j, k) takes the conductivity along each axis of the S^3 window centred on
it (moved inside the volume at its borders; windows overlap when ``cell`` < S). The cells' conductivities, one
per axis, make a coarse anisotropic conduction problem with ``physics``'s boundary conditions (unit potential
drop between the two faces normal to the axis, insulating sides), solved by ``cell_grid.solve_cells``. In series,
a window straddling two layers mixes their resistances in proportion and the cells' resistances add up to the
whole's; in parallel its conductances add: the combination keeps both limits.

The windows are labelled by a ``labeller``: the model (``model_labeller``: a ``predict.Predictor``, with its
uncertainty and ``--max-error`` fallback per window), or exactly by ``physics.solve`` in worker processes
(``exact_labeller``), the reference that measures the method's own error apart from the model's. The volume is
read slab by slab (``volumes.VolumeSource``) and the windows go to the labeller in batches, the next batch read
while the labeller works on this one (``ahead``), so memory holds two slabs of S slices, two batches of windows and
the coarse grid, whatever the volume's size.

The uncertainty of the whole comes from the windows': the coarse problem solved again with every cell's conductivity
one standard deviation lower and higher (errors taken as fully correlated, the cautious bound); half the difference
is the stated standard deviation. With a detour correction (below) it also includes, in quadrature, what the
correction leaves of the method's own error (``method_uncertainty``); without one it does not include that error: a
window conducts less than the same material inside a larger volume (its insulating sides cut the paths that leave
and come back), and most where the window is small against the structure. An axis along which some windows carry no
current while the whole does is such a case (measured: 29 % of the windows along the weak axis of a volume of
stretched cells, whose whole came out 61 % low; 5-8 % on a poorly connected electrode phase, 6-9 % low), and
``cautions`` says so. ``Detours`` corrects most of it from proxies of the volume solved whole and as sealed windows.
By default (``detours="coarse"``) one proxy, the volume's cells of 8^3 voxels joined through their faces (the
windows' solved apart on numba's threads, the whole's counted from the windows' slabs): it costs about a quarter of
the windows' time, and the method's error went from 0.2-12 % to 0.2-2.2 % on the generator families' 256^3 volumes.
``--detours`` (``"fine"``) takes two proxies on cells of 4^3 voxels, the cells joined through their faces and the
renormalised cells, at three to six times the windows' time: 0.2-1.1 % there, and 3-4 % on a poorly connected
electrode phase and along the weak axis of a volume of stretched cells, where the coarse proxy leaves 4 and 12 %.
"""

import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass
from typing import List, Optional

import numba
import numpy as np

from conductivity_tf import cell_grid, coarse, faces, physics
from conductivity_tf.errors import UserError

# cell = window, windows side by side: on fine structures the method's error (exact window labels against full
# solves) was 0.1-0.5 % with cell = window and 1-2 % with half-window cells (overlapping windows), which double
# count the windows' insulating sides
DEFAULT_CELL_FRACTION = 1.0
# the detour correction's two proxies, both on cells of 4^3 voxels: the volume renormalised twice (with 8^3 cells it
# corrected poorly connected phases the wrong way) and its cells joined through their faces (``faces.face_links``);
# their coarse problems solved to this tolerance (at 1e-3 the renormalised proxy's factors were up to 2 % off
# theirs at 1e-7, at 1e-5 within 0.2 %)
DETOUR_LEVELS = 2
DETOUR_TOL = 1e-5
# what predict_volume's ``detours`` takes: no correction, the coarse proxy (the default) or the two fine ones; the
# coarse proxy's cells have this many voxels a side (the fine ones 2^DETOUR_LEVELS): the cells joined through their
# faces on 8^3 voxels came within 2.2 % of the full solve on the nine generator families' 256^3 volumes (within
# 1.1 % on 4^3 voxels) at an eighth of the unknowns, their two solves 0.03-0.06 s against 0.23-0.4 s there
DETOURS = ("off", "coarse", "fine")
DEFAULT_DETOURS = "coarse"
COARSE_CELL = 8
# where the renormalised proxy's sealed windows, combined, keep less than this fraction of the windows' labels
# combined along an axis, its cells have lost the structure's junctions (a fifth to a quarter along the weak axis
# of closed-cell foams with thin walls, whose factor then overshot by 50-70 %; 0.5-0.8 on granular, electrode and
# blob volumes): that axis takes the faces proxy's factor alone
DETOUR_FIDELITY = 0.5
# the combination's own error left after the detour correction, one standard deviation relative to the value along
# each axis: METHOD_SLOPE[mode] * (METHOD_OFFSET + log(factor)), added to the windows' uncertainty in quadrature;
# fitted (the 90 % quantile of |error| / (METHOD_OFFSET + log(factor)), over Z90) on the 33 axes whose full solve
# exceeds 0.02 of 13 volumes of 192^3 outside both benchmarks (walls foams, granular, blobs, electrodes,
# overlapping spheres), labelled by exact windows
METHOD_OFFSET = 0.05
METHOD_SLOPE = {"coarse": 0.197, "fine": 0.068}
PROXIES = ("faces", "renormalised")


@dataclass
class Layout:
    """Cells and their windows along each axis: ``edges[a]`` (cells + 1 voxel positions), ``origins[a]`` (each
    cell's window origin), the window edge ``window``."""
    shape: tuple
    window: int
    edges: List[np.ndarray]
    origins: List[np.ndarray]

    @property
    def cells(self):
        return tuple(len(o) for o in self.origins)

    @property
    def sizes(self):
        return [np.diff(e).astype(np.float64) for e in self.edges]

    @property
    def windows(self):
        return int(np.prod(self.cells))


def layout(shape, window, cell=None):
    """The ``Layout`` of a volume of ``shape`` for windows of edge ``window`` and cells of about ``cell`` voxels
    (default: the window)."""
    cell = int(cell or round(window * DEFAULT_CELL_FRACTION))
    if cell < 1:
        raise UserError("--cell {} must be a positive number of voxels".format(cell))
    if cell > window:
        raise UserError("--cell {} is larger than the model's {}^3 window: each cell is labelled by the window centred "
                        "on it, which must hold the whole cell; give --cell {} or less".format(cell, window, window))
    if min(shape) < window:
        raise UserError("a volume of shape {} is smaller than the model's {}^3 cube along an axis; the whole-volume "
                        "prediction needs every side >= {}".format("x".join(map(str, shape)), window, window))
    edges, origins = [], []
    for n in shape:
        count = max(1, -(-n // cell))  # cells no larger than ``cell``: a window holds its whole cell
        e = np.round(np.linspace(0, n, count + 1)).astype(np.int64)
        centres = (e[:-1] + e[1:]) / 2.0
        o = np.clip(np.round(centres - window / 2.0).astype(np.int64), 0, n - window)
        edges.append(e)
        origins.append(o)
    return Layout(tuple(int(n) for n in shape), int(window), edges, origins)


def windows(source, plan, batch=64, counted=None, slabs=None):
    """Yield (cell indices (b, 3), windows (b, S, S, S) uint8) in batches, reading ``source`` one slab of S slices
    per layer of cells along axis 0. ``counted`` (a one-element list) gets the conducting voxels added up, each
    voxel once (every slab holds its layer of cells); ``slabs(start, slab)`` is called with every slab read."""
    s = plan.window
    index, chunk = [], []
    for i, o0 in enumerate(plan.origins[0]):
        slab = source.read(int(o0), int(o0) + s)
        check_binary(slab, source.name)
        if slabs is not None:
            slabs(int(o0), slab)
        if counted is not None:
            counted[0] += int(np.count_nonzero(slab[plan.edges[0][i] - o0:plan.edges[0][i + 1] - o0]))
        for j, o1 in enumerate(plan.origins[1]):
            for k, o2 in enumerate(plan.origins[2]):
                index.append((i, j, k))
                chunk.append(slab[:, o1:o1 + s, o2:o2 + s])
                if len(chunk) == batch:
                    yield np.array(index), np.ascontiguousarray(np.stack(chunk), dtype=np.uint8)
                    index, chunk = [], []
    if chunk:
        yield np.array(index), np.ascontiguousarray(np.stack(chunk), dtype=np.uint8)


def check_binary(slab, name):
    # min / max or comparisons: a fraction of np.unique's or np.bincount's time on a slab of millions of voxels
    if slab.dtype == np.bool_ or (slab.min(initial=0) >= 0 and slab.max(initial=0) <= 1 if slab.dtype.kind in "ui"
                                  else np.all((slab == 0) | (slab == 1))):
        return
    values = np.unique(slab)
    raise UserError("{} is not binary (values {}); the model takes 1 = conducting, 0 = insulating: segment it "
                    "with --threshold or map phases with --phase-map".format(
                        name, ", ".join(str(v) for v in values[:6])))


@dataclass
class WholeVolume:
    """What ``predict_volume`` returns: sigma_eff/sigma_0 of the whole volume along each axis, its uncertainty
    (one standard deviation; None when the windows state none), the cell field (cells, 3) and its uncertainty,
    the layout, the fraction of windows the solver labelled, the porosity, the fraction of windows without a
    conducting path along each axis, the cautions about the method on this volume, and the reasons windows lie
    outside the model's training domain (one line per reason: how many windows, the range of their values; empty
    when none does or nothing was checked); the detour correction taken (``DETOURS``), and unless "off" its
    factors and, per axis, the proxy each came from (``PROXIES``)."""
    values: List[float]
    uncertainty: Optional[List[float]]
    field: np.ndarray
    field_uncertainty: Optional[np.ndarray]
    plan: Layout
    solved_fraction: float
    porosity: float
    without_path: List[float]
    cautions: List[str]
    outside_domain: List[str]
    detour_factors: Optional[List[float]] = None
    detour_proxies: Optional[List[str]] = None
    detours: str = "off"

    def interval(self, z):
        if self.uncertainty is None:
            return None
        return [[max(0.0, v - z * u), v + z * u] for v, u in zip(self.values, self.uncertainty)]


def label(source, plan, labeller, batch=64, progress=None, each=None, slabs=None):
    """The cell field (cells + (3,)) from the windows' labels, its uncertainty (or None), the fraction of windows
    the solver labelled, the porosity and the reasons windows lie outside the training domain (``outside``).
    ``each(index, chunk)`` is called with every batch of windows too, ``slabs(start, slab)`` with every slab read."""
    cells = np.zeros(plan.cells + (3,))
    spread = None
    solved, counted = 0, [0]
    flagged = {}      # descriptor -> the values of the windows outside the domain by it
    for index, chunk in ahead(windows(source, plan, batch, counted, slabs)):
        values, uncertainty, from_solver, flags = labeller(chunk)
        if each is not None:
            each(index, chunk)
        for reasons in flags or []:
            for reason in reasons:
                flagged.setdefault(reason.descriptor, []).append(reason)
        cells[index[:, 0], index[:, 1], index[:, 2]] = values
        if uncertainty is not None:
            if spread is None:
                spread = np.zeros(plan.cells + (3,))
            spread[index[:, 0], index[:, 1], index[:, 2]] = uncertainty
        solved += int(np.count_nonzero(np.all(from_solver, axis=1)))
        if progress is not None:
            progress(len(chunk))
    return (cells, spread, solved / plan.windows, counted[0] / float(np.prod(source.shape)),
            outside(flagged, plan.windows))


def ahead(items):
    """``items`` (an iterator) one item ahead in a thread of its own: the next batch of windows is read, cut and
    counted into the detour proxy (numpy and numba's kernels, without the GIL) while the labeller works on this one.
    At 500^3 that work took a third of the wall time on one core of two."""
    with ThreadPoolExecutor(1) as pool:
        coming = pool.submit(next, items, None)
        while True:
            item = coming.result()
            if item is None:
                return
            coming = pool.submit(next, items, None)
            yield item


def outside(flagged, count):
    """One line per descriptor by which windows lie outside the training domain: how many, their values' range."""
    lines = []
    for reasons in flagged.values():
        values = [r.value for r in reasons]
        lines.append("{} of {} windows: {} {:.3g}-{:.3g} outside the training range {:.3g}-{:.3g}".format(
            len(reasons), count, reasons[0].label, min(values), max(values), reasons[0].low, reasons[0].high))
    return lines


def combine(field, spread, plan, axes=(0, 1, 2)):
    """sigma_eff/sigma_0 of the whole along ``axes`` from the cell field, and its uncertainty (or None)."""
    values = cell_grid.solve_cells(field, plan.sizes, axes)
    if spread is None:
        return [float(v) for v in values], None
    low = cell_grid.solve_cells(np.clip(field - spread, 0.0, None), plan.sizes, axes)
    high = cell_grid.solve_cells(field + spread, plan.sizes, axes)
    return [float(v) for v in values], [float(h - lo) / 2.0 for h, lo in zip(high, low)]


def detour_mode(detours):
    """One of ``DETOURS`` from a mode's name, or from True ("fine", what ``--detours`` alone asks for) and False
    ("off")."""
    if detours is True or detours is False:
        return "fine" if detours else "off"
    if detours not in DETOURS:
        raise UserError("--detours {} is not one of {}".format(detours, ", ".join(DETOURS)))
    return detours


def predict_volume(source, labeller, window, cell=None, batch=64, progress=None, detours=DEFAULT_DETOURS):
    """The whole volume's ``WholeVolume`` from windows labelled by ``labeller``, corrected for the current that
    leaves a window and comes back as ``detours`` says (``DETOURS``; ``Detours``)."""
    detours = detour_mode(detours)
    plan = layout(source.shape, window, cell)
    proxy = Detours(plan, detours) if detours != "off" else None
    cells, spread, solved, porosity, flagged = label(source, plan, labeller, batch, progress,
                                                     proxy.add if proxy else None, proxy.slab if proxy else None)
    values, uncertainty = combine(cells, spread, plan)
    without_path, notes = cautions(cells, values, window, detours)
    factors = None
    if proxy is not None:
        factors = proxy.factors(source, values)
        values = [v * f for v, f in zip(values, factors)]
        if uncertainty is not None:   # the windows' and what the correction leaves of the method's own error
            uncertainty = [float(np.hypot(u * f, v * method_uncertainty(f, detours)))
                           for u, f, v in zip(uncertainty, factors, values)]
    return WholeVolume(values, uncertainty, cells, spread, plan, solved, porosity, without_path, notes, flagged,
                       factors, proxy.chosen if proxy is not None else None, detours)


def method_uncertainty(factor, detours):
    """The relative uncertainty (one standard deviation) of the windows' combination corrected by a detour
    ``factor`` of mode ``detours``: it grows with the correction (``METHOD_SLOPE``)."""
    return METHOD_SLOPE[detours] * (METHOD_OFFSET + float(np.log(max(factor, 1.0))))


class Detours:
    """The correction of the windows' insulating sides, from proxies of the volume: each window conducts less than
    the same material inside the whole, whose current can leave the window and come back. A proxy's coarse problem
    solved whole (the detours in), against its windows each solved sealed and combined as the windows' labels are,
    gives per axis the factor by which sealing the windows lowered the proxy's whole; the windows' combination is
    multiplied by it. With ``mode`` "fine", two proxies on cells of 4^3 voxels, each of which keeps less of the
    detours than the volume (their factors came out at or below the exact one on every axis measured, but for the
    renormalised proxy's on the axes the fidelity rule below leaves out, and the faces proxy's once by 0.1 %): the
    cells joined through their faces (``faces.face_links``: the conducting voxel pairs across each face; it keeps
    the junctions of thin walls and throats, but takes a cell's interior as conducting, which joins large particles
    that touch at small contacts) and the volume renormalised ``DETOUR_LEVELS`` times
    (``coarse.renormalised_field``: each cell one conductivity per axis; it loses the junctions of thin walls, its
    sealed windows then keep under ``DETOUR_FIDELITY`` of the windows' labels and its factor overshoots, so it
    counts only where they keep more). Per axis the larger factor is taken. With "coarse", the cells joined through
    their faces on cells of ``COARSE_CELL``^3 voxels alone (an eighth of the unknowns; it keeps less of the detours,
    and its factor, below the fine one on 52 of 73 axes measured, came out above the exact one by more than 0.5 %
    on 7 of them, by 2.0 % at most)."""

    def __init__(self, plan, mode="fine"):
        self.plan = plan
        self.names = PROXIES if mode == "fine" else PROXIES[:1]
        self.cell = 1 << DETOUR_LEVELS if mode == "fine" else COARSE_CELL
        # each window's sealed value in each proxy, in its cell
        self.windows = {name: np.zeros(plan.cells + (3,)) for name in self.names}
        self.chosen = [PROXIES[0]] * 3      # per axis, the proxy its factor came from
        self.whole = WholeLinks(plan.shape, self.cell)     # the faces proxy of the whole, from the windows' slabs

    def add(self, index, chunk):
        """The proxies of a batch of windows (the labeller's), solved sealed, kept in their cells."""
        at = index[:, 0], index[:, 1], index[:, 2]
        if "renormalised" in self.names:
            self.windows["renormalised"][at] = _sealed(chunk, DETOUR_LEVELS)
        if self.cell == COARSE_CELL:
            self.windows["faces"][at] = faces.sealed_faces(chunk, self.cell)
        else:   # the float32 conjugate gradient stalls on some windows' 16^3 cells: one multigrid system per batch
            self.windows["faces"][at] = cell_grid.solve_links_apart(
                [faces.face_links(w, self.cell) for w in chunk], tol=DETOUR_TOL)

    def slab(self, start, slab):
        """A slab the windows were cut from, counted into the whole's faces proxy."""
        self.whole.add(start, slab)

    def factors(self, source, labels):
        """Per axis: the larger of the proxies' factors (each its whole over its windows combined, at least 1; 1
        where either carries no current), the renormalised proxy's only where its windows keep at least
        ``DETOUR_FIDELITY`` of ``labels``, the windows' labels combined. Sealing the windows loses current: the
        exact windows' combination came out below the full solve on nearly every axis measured, and factors below
        1 (0.994-0.998, on well-connected structures only) moved the answer away from it."""
        whole = {"faces": cell_grid.solve_links(*self.whole.result(), tol=DETOUR_TOL)}
        if "renormalised" in self.names:
            whole["renormalised"] = cell_grid.solve_cells(
                np.moveaxis(renormalised_volume(source, self.plan.window), 0, -1), tol=DETOUR_TOL)
        sealed = {name: cell_grid.solve_cells(self.windows[name], self.plan.sizes, tol=DETOUR_TOL)
                  for name in self.names}
        factors = []
        for a in range(3):
            joined = _factor(whole["faces"][a], sealed["faces"][a])
            faithful = ("renormalised" in self.names and labels[a] > 0
                        and sealed["renormalised"][a] >= DETOUR_FIDELITY * labels[a])
            renormalised = _factor(whole["renormalised"][a], sealed["renormalised"][a]) if faithful else 1.0
            self.chosen[a] = "renormalised" if renormalised > joined else "faces"
            factors.append(max(joined, renormalised))
        return factors


def _sealed(chunk, levels):
    """(b, 3): each window of a batch renormalised ``levels`` times and solved sealed, all in one system per axis."""
    fields = np.stack([np.moveaxis(coarse.renormalised_field(w, levels), 0, -1) for w in chunk])
    return cell_grid.solve_cells_apart(fields, tol=DETOUR_TOL)


def _factor(whole, sealed):
    return max(1.0, float(whole / sealed)) if whole > 0 and sealed > 0 else 1.0


class WholeLinks:
    """``faces.face_links`` of a whole volume's cells of ``cell``^3 voxels from its slabs along axis 0, given to
    ``add`` in order, each starting at or before where the previous one ended (they may overlap, as the windows'
    slabs do): the slices are counted once, in pieces of whole layers of cells; the slices a slab holds past its
    last whole layer are kept for the next piece, and the conductances between two pieces' cells come from the two
    slices that meet there. Memory: the links, and fewer than ``cell`` slices kept."""

    def __init__(self, shape, cell):
        self.shape, self.cell = tuple(int(n) for n in shape), int(cell)
        m = tuple(-(-k // self.cell) for k in self.shape)
        self.links = np.zeros((3,) + m, np.float32)
        self.ends = [[None, None], [np.zeros((m[0], m[2]), np.float32) for _ in range(2)],
                     [np.zeros((m[0], m[1]), np.float32) for _ in range(2)]]
        self.done = 0       # the slices counted: whole layers of cells, but at the volume's end
        self.rest = np.zeros((0,) + self.shape[1:], np.uint8)   # the slices from ``done`` on held so far
        self.last = None    # the last slice counted

    def add(self, start, slab):
        n, w = self.shape[0], self.cell
        stop, known = start + len(slab), self.done + len(self.rest)
        if start > known:
            raise ValueError("slices {}..{} were not given before the slab from {}".format(known, start - 1, start))
        if stop <= known:
            return      # the slices kept hold this slab's
        # the slices from ``done`` on: the kept ones before this slab, then the slab's (a view where it holds them all)
        held = np.concatenate([self.rest[:start - self.done], slab]) if start > self.done else slab[self.done - start:]
        end = n if stop >= n else stop // w * w     # the end of the last whole layer held
        if end > self.done:
            self._count(np.ascontiguousarray(held[:end - self.done], dtype=np.uint8), end)
            held = held[end - self.done:]
            self.done = end
        self.rest = np.array(held)

    def _count(self, piece, end):
        w = self.cell
        part, outer = faces.face_links(piece, w)
        c = self.done // w
        rows = slice(c, c + part.shape[1])
        self.links[:, rows] = part
        for a in (1, 2):
            for side in range(2):
                self.ends[a][side][rows] = outer[a][side]
        if self.done == 0:
            self.ends[0][0] = outer[0][0]
        if end == self.shape[0]:
            self.ends[0][1] = outer[0][1]
        if self.last is not None:
            self.links[0, c - 1] = _pairs_across(self.last, piece[0], w)
        self.last = piece[-1].copy()

    def result(self):
        """(links, ends) as ``faces.face_links`` gives them, once every slice is counted."""
        if self.done < self.shape[0]:
            raise ValueError("slices {}..{} were not given".format(self.done, self.shape[0] - 1))
        return self.links, [tuple(e) for e in self.ends]


def _pairs_across(before, after, w):
    """The fraction of the voxel pairs across two slices that both conduct, per square of w x w voxels (smaller at
    the far sides)."""
    both = (before & after).astype(np.float32)
    starts = [np.arange(0, k, w) for k in both.shape]
    pairs = np.add.reduceat(np.add.reduceat(both, starts[0], axis=0), starts[1], axis=1)
    area = np.outer(np.diff(np.append(starts[0], both.shape[0])), np.diff(np.append(starts[1], both.shape[1])))
    return pairs / area.astype(np.float32)


def renormalised_volume(source, window, levels=DETOUR_LEVELS):
    """(3, ...) the volume renormalised ``levels`` times, read in slabs of ``window`` slices rounded to whole
    blocks (the renormalisation is local to its blocks, so slab by slab is the whole at once)."""
    block = 2 ** levels
    step = max(block, window // block * block)
    shape = list(source.shape)
    for _ in range(levels):
        shape = [(n + 1) // 2 for n in shape]
    field = np.empty([3] + shape)
    row = 0
    for start in range(0, source.shape[0], step):
        slab = np.ascontiguousarray(source.read(start, min(start + step, source.shape[0])), dtype=np.uint8)
        cells = coarse.renormalised_field(slab, levels)
        field[:, row:row + cells.shape[1]] = cells
        row += cells.shape[1]
    return field


# what the cautions add per detour correction (measured with exact windows, the model's own error apart)
_CAUTIONS = {"fine": ", and even corrected for detours the value can be off (measured on such volumes: within 9 %)",
             "coarse": ", and even corrected for detours by the coarse proxy the value can be low (measured on such "
                       "volumes: by up to 16 %; --detours fine: within 9 %)",
             "off": ", and the whole-volume value is likely low (by 6-61 % on such volumes measured; --detours "
                    "corrects most of it)"}


def cautions(field, values, window, detours="off"):
    """The fraction of windows with no conducting path along each axis, and a caution for every axis whose
    whole conducts although some of its windows do not (windows below a representative volume of the phase)."""
    without_path = [float(np.mean(field[..., a] <= 0.0)) for a in range(3)]
    notes = []
    for axis, (fraction, value) in enumerate(zip(without_path, values)):
        if value > 0.0 and fraction > 0.0:
            notes.append("axis {}: {:.0f} % of the {}^3 windows carry no current along it although the whole does: "
                         "the windows are small against this structure{}; for the exact value solve the volume with "
                         "python -m conductivity_tf.physics".format(
                             axis, 100.0 * fraction, window,
                             _CAUTIONS[detours]))
    return without_path, notes


# ---------------------------------------------------------------------------------------------
# labellers: windows (b, S, S, S) uint8 -> (values (b, 3), uncertainty (b, 3) or None, from the solver (b, 3),
# per window the ``domain.Reason``s it lies outside the model's training domain, or None when not checked)


def model_labeller(predictor, max_error=None):
    """The model's labels (``predict.Predictor``, all three axes), with ``--max-error``'s fallback per window.
    A window without a conducting path along an axis is an exact zero there, as the exact labeller's is (its
    descriptors, computed for the uncertainty anyway, say so), so that ``cautions`` sees it. The windows are
    corrected by the members of the correction blind to the capped junctions, which are then not solved: summed
    over a volume's windows, the others' values came out further from the full solve (the shared electrode's
    active phase 7.9 -> 8.4 %, the TauFactor volume 11.9 -> 14.4 %) at 1.2x the time at 500^3."""
    if list(predictor.axes) != [0, 1, 2]:
        raise UserError("the whole-volume prediction needs a model of all three axes (data.axes=[0,1,2]); this "
                        "one predicts {}".format(predictor.axes))

    def labeller(chunk):
        result = predictor.predict(chunk, batch_size=len(chunk), max_error=max_error, zero_without_path=True,
                                   capped=False)
        return result.values, result.uncertainty, result.source == "solver", result.flags

    return labeller


def _one_thread():
    numba.set_num_threads(1)  # one worker = one core: the solver's threads would oversubscribe the machine


def _solve_window(window):
    return [r.relative_conductivity for r in physics.solve(window)]


def exact_labeller(workers=None):
    """``physics.solve`` on every window, in ``workers`` processes (default: every core; 1: in this process)."""
    workers = workers or os.cpu_count() or 1
    pool = None
    if workers > 1:
        # spawned: fork is refused once numba's OpenMP threads have run in this process
        pool = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                                   initializer=_one_thread)

    def labeller(chunk):
        values = np.array(list(pool.map(_solve_window, list(chunk)) if pool else map(_solve_window, chunk)))
        return values, None, np.ones(values.shape, bool), None

    labeller.close = pool.shutdown if pool else (lambda: None)
    return labeller
