"""Effective conductivity of a voxel microstructure: the solver that labels every sample.

Conventions (stated once, here):

- A volume is a 3-D array of phase labels. Axis ``i`` of the result is numpy axis ``i`` of the array
  as given. Each phase has a conductivity; by default phase 1 conducts (sigma = 1) and phase 0 is
  insulating (sigma = 0), the classic electrolyte-filled pore in an insulating matrix.
- Steady conduction div(sigma grad phi) = 0 by finite volumes on the voxel grid (7-point stencil, unit
  voxels). Between two voxels the face conductance is the harmonic mean of their conductivities; the
  Dirichlet faces are the outer faces of the first and last layers along the transport axis
  (phi = 1 and phi = 0, half a voxel from the centres); the four side faces carry no flux.
- Relative effective conductivity sigma_eff/sigma_0 = I L / (A dphi sigma_0) with I the total current,
  L the length along the axis, A the cross-section and sigma_0 the largest phase conductivity.
- Porosity eps is the volume fraction of conducting voxels (sigma > 0). Tortuosity factor
  tau = eps sigma_0 / sigma_eff (not squared; TauFactor's convention); sigma_eff = 0 and tau = inf when
  no conducting path joins the two faces. Conducting voxels not connected (6-connectivity) to both
  faces carry no current and are removed before solving.

The linear system is solved matrix-free by conjugate gradients preconditioned with a geometric
multigrid V-cycle compiled with numba (``_discretisation``: conductances, boundary faces and power;
``_multigrid``: grid levels and CG; ``_graph_levels``: coarse levels as graphs). The current is evaluated from
the dissipated power, which is second-order accurate in the solver's error, and the spread of the
current across all cross-sections is reported as a conservation check.

>>> import numpy as np
>>> v = np.zeros((8, 8, 8), np.uint8); v[:, 2:4, 2:4] = 1      # a straight channel along axis 0
>>> r = solve(v, axes=[0])[0]
>>> round(r.relative_conductivity, 6), round(r.tortuosity, 6)    # sigma_eff/sigma_0 = eps, tau = 1
(0.0625, 1.0)

Command line: ``python -m conductivity_tf.physics VOLUME [VOLUME ...] [--axis 0|1|2|all]
[--sigma PHASE=VALUE ...] [--json]``; ``--help`` says more.
"""

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Optional

import numpy as np
import scipy.ndimage
from numba import njit

from conductivity_tf._binary_level import binary_diagonal, power_and_sections_binary, spanning_bits
from conductivity_tf._discretisation import (
    Workspace,
    assemble,
    initial_guess,
    power_and_sections,
    spanning_field,
    workspace,
)
from conductivity_tf._multigrid import MultigridPCG
from conductivity_tf.errors import UserError, run_cli
from conductivity_tf.volumes import add_volume_arguments, binary_mask, load_volume_from_args

DEFAULT_SIGMA = {0: 0.0, 1: 1.0}
# binary volumes from this many voxels up are solved with the fine level held as its diagonal alone
# (``_binary_level``: about 30 bytes per voxel instead of ~143 at 500^3); below it the general layout, tuned for speed
BINARY_LEVEL_VOXELS = 160 ** 3


@dataclass
class AxisResult:
    """The solver's answer for one transport axis."""

    axis: int
    relative_conductivity: float
    tortuosity: float
    porosity: float
    percolates: bool
    current_spread: float = 0.0
    iterations: int = 0
    residual: float = 0.0
    seconds: float = 0.0
    potential: Optional[np.ndarray] = field(default=None, repr=False)

    def as_dict(self):
        d = asdict(self)
        d.pop("potential")
        return d


# ---------------------------------------------------------------------------------------------
# input checks


def parse_axes(axis):
    """``0``, ``'1'``, ``'all'``, ``None`` (all) or a list -> list of distinct axes in 0..2."""
    if axis is None or (isinstance(axis, str) and axis == "all"):
        return [0, 1, 2]
    items = [axis] if isinstance(axis, (int, np.integer, str)) else list(axis)
    axes = []
    for item in items:
        try:
            a = int(item)
        except (TypeError, ValueError):
            raise UserError("axis {!r} is not valid; use 0, 1, 2 or all".format(item))
        if a not in (0, 1, 2):
            raise UserError("axis {} is out of range; a volume has axes 0, 1 and 2 (or use all)".format(a))
        if a not in axes:
            axes.append(a)
    if not axes:
        raise UserError("no axis given; use 0, 1, 2 or all")
    return axes


def conductivity_field(volume, sigma=None):
    """Per-voxel conductivity (float64) and sigma_0 from phase labels and a {phase: sigma} map.

    Raises UserError for anything the solver cannot take: not 3-D, empty, NaN/inf, float labels
    without a map, a phase with no conductivity, negative conductivities, nothing conducting.
    """
    field, sigma0, _ = _conductivity_field(volume, sigma)
    return field, sigma0


def _conductivity_field(volume, sigma, field=True):
    """``conductivity_field`` and the positive conductivities of the phases present (sorted). With ``field``
    False a binary volume whose phase 0 does not conduct gives its conducting voxels (bool) instead of the
    float64 field (1 byte per voxel instead of 8)."""
    volume = np.asarray(volume)
    if volume.ndim != 3:
        raise UserError("the volume has {} dimension(s), shape {}; the solver needs a 3-D array".format(
            volume.ndim, volume.shape))
    if volume.size == 0:
        raise UserError("the volume is empty (shape {}); give at least one voxel along each axis".format(
            volume.shape))
    if volume.dtype == bool:
        volume = volume.view(np.uint8)
    if not (np.issubdtype(volume.dtype, np.integer) or np.issubdtype(volume.dtype, np.floating)):
        raise UserError("volume dtype {} is not supported; give integer phase labels".format(volume.dtype))
    if np.issubdtype(volume.dtype, np.floating):
        if not np.all(np.isfinite(volume)):
            raise UserError("the volume contains NaN or infinite voxels; clean or segment it first")
        if sigma is None:
            raise UserError("the volume holds floating-point values, not phase labels; segment it (threshold "
                            "or Otsu) or give a conductivity for each value with --sigma PHASE=VALUE")
    small_labels = np.issubdtype(volume.dtype, np.integer) and volume.dtype.itemsize <= 2 and volume.min() >= 0
    binary = small_labels and volume.max() <= 1
    if binary:        # which of 0 and 1 occur, from one count
        ones = np.count_nonzero(volume)
        phases = np.array([p for p, present in ((0, ones < volume.size), (1, ones > 0)) if present], volume.dtype)
    elif small_labels:  # a count per label is much cheaper than sorting the voxels
        phases = np.flatnonzero(np.bincount(volume.ravel())).astype(volume.dtype)
    else:
        phases = np.unique(volume)
    if sigma is None:
        if not set(phases.tolist()) <= {0, 1}:
            shown = ", ".join(str(p) for p in phases[:8]) + (", ..." if len(phases) > 8 else "")
            raise UserError("the volume is not binary (phases {}); give a conductivity for each phase with "
                            "--sigma PHASE=VALUE, e.g. --sigma {}=1".format(shown, phases[-1]))
        sigma = DEFAULT_SIGMA
    sigma = {float(k): float(v) for k, v in dict(sigma).items()}
    for phase, value in sigma.items():
        if not math.isfinite(value) or value < 0:
            raise UserError("conductivity {} of phase {:g} is invalid; give a finite value >= 0".format(
                value, phase))
    missing = [p for p in phases.tolist() if float(p) not in sigma]
    if missing:
        raise UserError("phase(s) {} in the volume have no conductivity; add --sigma {:g}=VALUE".format(
            ", ".join("{:g}".format(p) for p in missing), missing[0]))
    sigma0 = max(sigma.values())
    if sigma0 <= 0:
        raise UserError("no phase conducts (all conductivities are 0); give one phase a positive --sigma")
    positive = sorted({sigma[float(p)] for p in phases.tolist()} - {0.0})
    if binary:
        low, high = sigma.get(0.0, 0.0), sigma.get(1.0, 0.0)
        if low == 0.0 and not field:
            return volume != 0, sigma0, positive
        if low == 0.0:
            values = volume.astype(np.float64)
            return (values * high if high != 1.0 else values), sigma0, positive
        return np.where(volume != 0, high, low), sigma0, positive
    table = np.array([sigma[float(p)] for p in phases.tolist()])
    if small_labels:
        lookup = np.zeros(int(phases[-1]) + 1)
        lookup[phases] = table
        return lookup[volume], sigma0, positive
    return table[np.searchsorted(phases, volume)], sigma0, positive


def label_clusters(mask):
    """6-connected clusters of ``mask``: (labels, 0 outside ``mask`` and 1..count inside, count).

    connected-components-3d is 4x faster than scipy.ndimage.label (0.5 against 2 ms at 64^3, a tenth
    of a solve there); scipy is the fallback where it is not installed."""
    try:
        import cc3d
    except ImportError:
        return scipy.ndimage.label(mask)
    return cc3d.connected_components(np.ascontiguousarray(mask), connectivity=6, return_N=True)


def _spanning_clusters(mask, axes):
    """Cluster labels of ``mask`` (6-connected) and, per axis, the labels touching both faces normal to it."""
    labels, count = label_clusters(mask)
    spanning = {}
    for axis in axes:
        first = np.take(labels, 0, axis=axis)
        last = np.take(labels, -1, axis=axis)
        spanning[axis] = np.intersect1d(first[first > 0], last[last > 0])
    return labels, count, spanning


def percolating_axes(mask, axes=(0, 1, 2)):
    """{axis: whether a 6-connected cluster of ``mask`` touches both faces normal to it}."""
    return {axis: bool(both.size) for axis, both in _spanning_clusters(mask, axes)[2].items()}


def connected_to_both_faces(mask, axes=(0, 1, 2)):
    """For each axis, the voxels of ``mask`` in a 6-connected cluster touching both faces normal to it."""
    labels, count, spanning = _spanning_clusters(mask, axes)
    out = {}
    for axis, both in spanning.items():
        keep = np.zeros(count + 1, bool)
        keep[both] = True
        out[axis] = keep[labels]
    return out


# ---------------------------------------------------------------------------------------------
# the solve


def _solve_axis0(s, tol, rtol, maxiter, uniform=None):
    """Solve with transport along axis 0 of the conductivity field ``s`` (percolating voxels only).

    ``uniform``: the one conductivity of every conducting voxel, if they share one.
    Returns (current for a unit potential drop, relative spread of the current over all sections,
    iterations, relative residual, potential on the unpadded grid).
    """

    ws = workspace()
    ws.begin(tuple(n + 2 for n in s.shape))
    cx, cy, cz, diag, bnd, rhs = assemble(s, ws)
    x0 = ws.get("x0", diag.shape, zero=False)
    initial_guess(diag, x0)
    # the face conductance between two voxels of conductivity ``uniform``, as the assembly computes it
    face = None if uniform is None else 2.0 * uniform * uniform / (uniform + uniform)
    solver = MultigridPCG(diag, cx, cy, cz, bnd, ws=ws, uniform=face)
    # offset sum(rhs): the solver's energy is then the dissipated power, the quantity sigma comes from
    phi, iterations, residual = solver.solve(rhs, x0=x0, rtol=rtol, maxiter=maxiter, tol=tol,
                                             offset=float(rhs.sum()))
    current, sections = power_and_sections(phi, diag, cx, cy, cz, bnd, rhs)
    mean = sections.mean()
    spread = float((sections.max() - sections.min()) / abs(mean)) if mean else 0.0
    return float(current), spread, iterations, residual, phi[1:-1, 1:-1, 1:-1]


_blas_controller = []


def _one_blas_thread():
    """A context limiting BLAS to one thread. Finding the BLAS libraries takes over a millisecond, so
    the controller (threadpoolctl >= 3) is made once and reused."""
    import threadpoolctl

    if not hasattr(threadpoolctl, "ThreadpoolController"):  # threadpoolctl 2
        return threadpoolctl.threadpool_limits(limits=1, user_api="blas")
    if not _blas_controller:
        _blas_controller.append(threadpoolctl.ThreadpoolController())
    return _blas_controller[0].limit(limits=1, user_api="blas")


def solve(volume, axes=None, sigma=None, tol=1e-6, rtol=None, maxiter=1000, return_potential=False):
    """Relative effective conductivity and tortuosity factor along each requested axis.

    volume: 3-D array of phase labels (bool/int; float only with ``sigma``).
    axes: 0, 1, 2, a list of them, or None / 'all' for all three (one labelling, three solves).
    sigma: {phase: conductivity}; default {0: 0, 1: 1}.
    tol: relative accuracy of sigma_eff at which CG stops. sigma_eff comes from the dissipated power,
        which CG lowers towards its minimum; it stops when a step lowers it by at most tol (what is
        left is estimated from the last steps; measured: below 1.6 tol, mostly far below).
    rtol: if given, CG also runs until the residual is at most rtol times the right-hand side
        (for a potential field accurate everywhere; tol=None leaves only this test).
    Returns a list of ``AxisResult`` in the order of ``axes``.
    """
    axes = parse_axes(axes)
    # BLAS threads left spinning by a LAPACK call would fight numba's threads for the cores
    with _one_blas_thread():
        return _solve(volume, axes, sigma, tol, rtol, maxiter, return_potential)


def _solve(volume, axes, sigma, tol, rtol, maxiter, return_potential):
    large = np.asarray(volume).size >= BINARY_LEVEL_VOXELS and rtol is None
    s, sigma0, positive = _conductivity_field(volume, sigma, field=not large)
    if s.dtype == np.bool_:
        porosity, shape = np.count_nonzero(s) / s.size, s.shape
        bits, spanning = _spanning_bits(s, axes)
        del s                       # the conducting voxels are in ``bits`` now
        return _solve_binary(bits, spanning, shape, porosity, axes, sigma0, positive[0], tol, maxiter,
                             return_potential)
    conducting = s > 0
    porosity = np.count_nonzero(conducting) / conducting.size
    labels, count, spanning = _spanning_clusters(conducting, axes)
    uniform = positive[0] if len(positive) == 1 else None
    results = []
    for axis in axes:
        t0 = time.perf_counter()
        if not spanning[axis].size:
            results.append(_no_path(axis, porosity, s.shape, return_potential, t0))
            continue
        keep = np.zeros(count + 1, bool)
        keep[spanning[axis]] = True
        if uniform is not None:
            # every conducting voxel has the conductivity ``uniform``: the field along ``axis`` from the
            # cluster labels in one pass (transposing the float64 field took 2 ms at 64^3)

            s_axis = spanning_field(labels, keep, uniform, axis)
        else:
            s_axis = np.ascontiguousarray(np.moveaxis(np.where(keep[labels], s, 0.0), axis, 0))
        current, spread, iterations, residual, phi = _solve_axis0(
            s_axis, tol, rtol, maxiter, uniform=uniform)
        results.append(_axis_result(axis, current, s_axis.shape, sigma0, porosity, spread, iterations, residual,
                                    t0, phi if return_potential else None))
    return results


def _no_path(axis, porosity, shape, return_potential, t0):
    """The result along an axis no cluster spans: sigma 0, tau infinite."""
    return AxisResult(axis, 0.0, math.inf, porosity, False, potential=np.zeros(shape) if return_potential else None,
                      seconds=time.perf_counter() - t0)


def _axis_result(axis, current, moved, sigma0, porosity, spread, iterations, residual, t0, phi=None):
    """The result along ``axis`` from the current for a unit potential drop on the grid of shape ``moved``
    (transport first); ``phi`` (unpadded, transport first) becomes the potential in the volume's axes."""
    relative = float(current) * moved[0] / (moved[1] * moved[2] * sigma0)
    tau = porosity / relative if relative > 0 else math.inf
    return AxisResult(axis, relative, tau, porosity, True, spread, iterations, residual, time.perf_counter() - t0,
                      potential=None if phi is None else np.moveaxis(phi, 0, axis).astype(np.float64, order="C"))


def spanning_channels(volumes):
    """uint8 (..., S0, S1, S2, 4) of one volume (S0, S1, S2) or a batch of them (N, S0, S1, S2): channel 0 the
    conducting voxels (non-zero; > 0.5 for floats), channel 1 + a those of them in a cluster joining the two faces
    normal to axis a (6-connected). The input of a network built with ``model.inputs: spanning``."""
    volumes = np.asarray(volumes)
    if volumes.ndim == 3:
        return spanning_channels(volumes[None])[0]
    out = np.empty(volumes.shape + (4,), np.uint8)
    for i, volume in enumerate(volumes):
        conducting = volume > 0.5 if np.issubdtype(volume.dtype, np.floating) else volume != 0
        labels, count, spanning = _spanning_clusters(conducting, [0, 1, 2])
        keeps = [np.zeros(count + 1, np.uint8) for _ in range(3)]
        for axis in range(3):
            keeps[axis][spanning[axis]] = 1
        _channels(np.ascontiguousarray(labels), *keeps, out[i])
    return out


@njit(cache=True)
def _channels(labels, keep0, keep1, keep2, out):
    """``spanning_channels`` of one volume from its cluster labels, in one serial pass (the threaded
    ``spanning_bits`` was several times slower on 64^3 volumes while other work shared the cores)."""
    n0, n1, n2 = labels.shape
    for i in range(n0):
        for j in range(n1):
            for k in range(n2):
                v = labels[i, j, k]
                out[i, j, k, 0] = 1 if v > 0 else 0
                out[i, j, k, 1] = keep0[v]
                out[i, j, k, 2] = keep1[v]
                out[i, j, k, 3] = keep2[v]


def _spanning_bits(conducting, axes):
    """(uint8 per voxel whose bit a is set in clusters joining the two faces normal to axis a, {axis: those
    clusters' labels}), the labels freed."""
    labels, count, spanning = _spanning_clusters(conducting, axes)
    keeps = [np.zeros(count + 1, bool) for _ in range(3)]
    for axis in axes:
        keeps[axis][spanning[axis]] = True
    return spanning_bits(labels, *keeps), spanning


def _solve_binary(bits, spanning, shape, porosity, axes, sigma0, uniform, tol, maxiter, return_potential):
    """``_solve`` for a large binary volume in about 28 bytes per voxel: the spanning clusters of every axis
    kept as ``bits`` (``_spanning_bits``), and per axis only the diagonal of the system (``_binary_level``) and
    CG's single-precision vectors."""
    results = []
    for axis in axes:
        t0 = time.perf_counter()
        if not spanning[axis].size:
            results.append(_no_path(axis, porosity, shape, return_potential, t0))
            continue
        moved = [shape[axis]] + [n for a, n in enumerate(shape) if a != axis]
        diag = np.zeros([n + 2 for n in moved], np.float32)
        binary_diagonal(bits, axis, float(uniform), diag)
        ws = Workspace()
        ws.begin(diag.shape)        # nothing kept beyond this solve above MAX_KEPT_CELLS
        solver = MultigridPCG(diag, None, None, None, None, ws=ws, uniform=uniform, binary=True)
        phi, iterations, residual = solver.solve(None, maxiter=maxiter, tol=tol)
        current, sections = power_and_sections_binary(phi, diag, float(uniform))
        mean = sections.mean()
        spread = float((sections.max() - sections.min()) / abs(mean)) if mean else 0.0
        results.append(_axis_result(axis, current, moved, sigma0, porosity, spread, iterations, residual, t0,
                                    phi[1:-1, 1:-1, 1:-1] if return_potential else None))
        del solver, phi, diag, ws
    return results


def relative_conductivity(volume, axis=0, sigma=None, **kwargs):
    """sigma_eff/sigma_0 along one axis (see ``solve``)."""
    return solve(volume, axes=[axis], sigma=sigma, **kwargs)[0].relative_conductivity


def tortuosity_factor(volume, axis=0, sigma=None, **kwargs):
    """tau = eps sigma_0 / sigma_eff along one axis (inf when not percolating; see ``solve``)."""
    return solve(volume, axes=[axis], sigma=sigma, **kwargs)[0].tortuosity


def hashin_shtrikman_upper(porosity):
    """Hashin-Shtrikman upper bound of sigma_eff/sigma_0 for an isotropic conductor in an insulator."""
    eps = np.asarray(porosity, dtype=float)
    return 2.0 * eps / (3.0 - eps)


def bruggeman(porosity, exponent=1.5):
    """Bruggeman's estimate sigma_eff/sigma_0 = eps^exponent."""
    return np.asarray(porosity, dtype=float) ** exponent


# ---------------------------------------------------------------------------------------------
# command line


def _parse_sigma(items):
    if not items:
        return None
    sigma = {}
    for item in items:
        phase, sep, value = item.partition("=")
        try:
            if not sep:
                raise ValueError
            sigma[float(phase)] = float(value)
        except ValueError:
            raise UserError("--sigma {!r} is not PHASE=VALUE, e.g. --sigma 1=1 --sigma 0=0".format(item))
    return sigma


def build_parser():
    import argparse


    parser = argparse.ArgumentParser(
        prog="python -m conductivity_tf.physics",
        description="Relative effective conductivity sigma_eff/sigma_0 and tortuosity factor of voxel "
                    "volumes, by a finite-volume solve (Dirichlet faces normal to the axis, no-flux sides). "
                    "Axis i is numpy axis i of the array as loaded.",
        epilog="Examples:\n  python -m conductivity_tf.physics sample.npy --axis all --json\n"
               "  python -m conductivity_tf.physics electrode.tif --sigma 0=0 --sigma 85=1 --sigma 170=0.1\n"
               "  python -m conductivity_tf.physics scan.raw --shape 200 200 200 --dtype uint8 --otsu",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("volumes", nargs="+", metavar="VOLUME", help=".npy, .tif/.tiff or raw binary")
    parser.add_argument("--axis", default="0", help="transport axis: 0, 1, 2 or all (default 0)")
    parser.add_argument("--sigma", action="append", metavar="PHASE=VALUE",
                        help="conductivity of a phase (repeat per phase); default 0=0 1=1")
    parser.add_argument("--tol", type=float, default=1e-6,
                        help="relative accuracy of sigma_eff to stop at (default 1e-6)")
    parser.add_argument("--rtol", type=float, default=None,
                        help="also solve until the relative residual is at most this (a potential field "
                             "accurate everywhere, e.g. 1e-9)")
    parser.add_argument("--json", action="store_true", help="one JSON object per volume and line")
    add_volume_arguments(parser)
    return parser


def main(argv=None):
    import json


    args = build_parser().parse_args(argv)
    axes = parse_axes(args.axis.split(",") if "," in args.axis else args.axis)
    sigma = _parse_sigma(args.sigma)
    # check every file before solving any, so that a bad one late in the list costs nothing
    volumes = [(path, load_volume_from_args(path, args)) for path in args.volumes]
    for path, loaded in volumes:
        t0 = time.perf_counter()
        try:
            # without --sigma, a mask saved as 0/255 (or 0/65535) conducts where it is white, as a 0/1 one where 1
            results = solve(loaded.array if sigma else binary_mask(loaded.array), axes=axes, sigma=sigma,
                            tol=args.tol, rtol=args.rtol)
        except UserError as err:
            raise UserError("{}: {}".format(path, err))
        seconds = time.perf_counter() - t0
        if args.json:
            print(json.dumps({
                "file": path,
                "porosity": results[0].porosity,
                "axes": [r.axis for r in results],
                "relative_conductivity": [r.relative_conductivity for r in results],
                "tortuosity": [r.tortuosity if math.isfinite(r.tortuosity) else None for r in results],
                "seconds": seconds,
            }), flush=True)
        else:
            print("{}  shape {}  porosity {:.4f}".format(path, "x".join(map(str, loaded.array.shape)),
                                                         results[0].porosity))
            for r in results:
                print("  axis {}: sigma_eff/sigma_0 = {:.6f}  tortuosity = {:.4f}  {}".format(
                    r.axis, r.relative_conductivity, r.tortuosity,
                    "({} iterations, current spread {:.1e})".format(r.iterations, r.current_spread)
                    if r.percolates else "(no conducting path)"))
            print("  {:.2f} s".format(seconds), flush=True)
    return 0


def cli():

    run_cli(main)


if __name__ == "__main__":
    cli()
