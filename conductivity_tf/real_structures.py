"""A model measured on structures it was not tuned on: imaged (or other third-party) volumes cut into tiles of
the model's size, each phase conducting in turn, labelled by the solver.

``phase_tiles(path, size)`` reads a volume (.npy, TIFF, or a TIFF inside a .zip), and for every phase of a
multi-phase volume (or the non-zero phase of a binary one) cuts non-overlapping tiles of that phase as the
conductor and solves them along the three axes. ``measure(predictor, groups, max_errors)`` reports, per
volume-phase and pooled, the errors of pure prediction over the percolating values, the calibration of the
stated uncertainty, and for each ``--max-error`` the fraction of values solved, the realised error and the time
per tile against solving every tile. ``python -m conductivity_tf.benchmark surrogate --tiles VOLUME ...``
prints them.
"""

import contextlib
import multiprocessing
import os
import tempfile
import time
import zipfile
from concurrent.futures import ProcessPoolExecutor

import numpy as np

from conductivity_tf import physics, volumes
from conductivity_tf.errors import UserError
from conductivity_tf.metrics import calibration_metrics


class TileGroup(object):
    """The tiles of one volume with one phase conducting: ``tiles`` (N, S, S, S) uint8, ``labels`` (N, 3)
    sigma_eff/sigma_0 from the solver, ``solve_seconds`` per tile (three axes)."""

    def __init__(self, name, phase, tiles, labels, solve_seconds):
        self.name, self.phase, self.tiles, self.labels, self.solve_seconds = name, phase, tiles, labels, solve_seconds


def read_phases(path):
    """The phase labels of a volume file; a .zip holding one TIFF stack is read from that stack."""
    if not path.lower().endswith(".zip"):
        return volumes.load_volume(path).array
    try:
        with zipfile.ZipFile(path) as archive:
            members = [n for n in archive.namelist() if n.lower().endswith(volumes.TIFF_SUFFIXES)]
            if not members:
                raise UserError("{} holds no TIFF stack; give a .npy, .tif or a .zip of one .tif".format(path))
            with tempfile.TemporaryDirectory() as scratch:
                return volumes.load_volume(archive.extract(members[0], scratch)).array
    except zipfile.BadZipFile as err:
        raise UserError("cannot read {} as a zip archive ({})".format(path, err))


def _solve(tile):
    start = time.perf_counter()
    results = physics.solve(tile)
    return [r.relative_conductivity for r in results], time.perf_counter() - start


def phase_tiles(path, size=64, workers=None):
    """A ``TileGroup`` per conducting phase of the volume at ``path``, tiles of edge ``size``."""
    phases = read_phases(path)
    values = np.unique(phases)
    if len(values) < 2:
        raise UserError("{} has a single phase ({}); nothing conducts or everything does".format(path, values))
    conductors = values[1:] if len(values) == 2 else values
    name = os.path.basename(path).split(".")[0]
    groups = []
    workers = workers or os.cpu_count()
    # spawned, not forked: numba's OpenMP threads (older numba) do not survive a fork
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) if workers > 1 else \
            contextlib.nullcontext() as pool:
        for phase in conductors:
            tiles = np.stack([t for _, t in volumes.tile((phases == phase).astype(np.uint8), size)])
            solved = list(pool.map(_solve, tiles, chunksize=4) if pool else map(_solve, tiles))
            groups.append(TileGroup(name, int(phase), tiles, np.array([s[0] for s in solved]),
                                    float(np.median([s[1] for s in solved]))))
    return groups


def _errors(truth, predicted):
    live = truth > 1e-6
    ape = np.abs(predicted[live] - truth[live]) / truth[live] * 100.0
    residual = predicted - truth
    total = float(((truth - truth.mean()) ** 2).sum()) or 1.0
    return {"values": int(live.sum()), "mape": float(ape.mean()) if ape.size else None,
            "median_ape": float(np.median(ape)) if ape.size else None,
            "r2": 1.0 - float((residual ** 2).sum()) / total}


def measure(predictor, groups, max_errors=(0.2, 0.1, 0.05, 0.02)):
    """Rows of the per-group table (pure prediction) and of the trade-off curve (``--max-error``)."""
    table, curve = [], []
    everything = {"truth": [], "predicted": [], "uncertainty": []}
    for group in groups:
        start = time.perf_counter()
        result = predictor.predict(group.tiles)
        seconds = (time.perf_counter() - start) / len(group.tiles)
        row = dict(_errors(group.labels, result.values), volume=group.name, phase=group.phase,
                   tiles=len(group.tiles), model_seconds=seconds, solver_seconds=group.solve_seconds,
                   flagged=sum(bool(f) for f in result.flags))
        if result.uncertainty is not None:
            row.update(calibration_metrics(group.labels, result.values, result.uncertainty))
            everything["uncertainty"].append(result.uncertainty)
        everything["truth"].append(group.labels)
        everything["predicted"].append(result.values)
        table.append(row)
    truth, predicted = np.concatenate(everything["truth"]), np.concatenate(everything["predicted"])
    pooled = dict(_errors(truth, predicted), volume="pooled", phase="all", tiles=sum(len(g.tiles) for g in groups))
    if everything["uncertainty"]:
        pooled.update(calibration_metrics(truth, predicted, np.concatenate(everything["uncertainty"])))
    table.append(pooled)
    solver = float(np.mean([g.solve_seconds for g in groups]))
    for max_error in max_errors:
        values, solved, elapsed, count = [], 0, 0.0, 0
        for group in groups:
            start = time.perf_counter()
            result = predictor.predict(group.tiles, max_error=max_error)
            elapsed += time.perf_counter() - start
            count += len(group.tiles)
            values.append(result.values)
            solved += int(np.sum(result.source == "solver"))
        values = np.concatenate(values)
        curve.append(dict(_errors(truth, values), max_error=max_error, solved_fraction=solved / values.size,
                          seconds_per_tile=elapsed / count, speedup=solver / (elapsed / count)))
    return table, curve
