"""``benchmark solver``: our conduction solver against TauFactor (CPU) and PoreSpy ``tortuosity_fd`` on the same
volumes (the anchors come from the ``bench`` extra; a missing anchor is skipped, saying so); ``--memory``: the
solver's peak resident memory per voxel and time per direction, the binary fine level (``_binary_level``, the
default for large binary volumes) beside the general layout, each solve in a process of its own."""

import importlib.util
import json
import logging
import os
import statistics
import tempfile
import time

import numpy as np

from conductivity_tf import microstructure, physics, real_structures
from conductivity_tf.benchmark.common import (
    available_memory_mb,
    best_time,
    child_row,
    markdown_table,
    peak_resident_mb,
    say,
    write_csv,
)


def _taufactor():
    try:
        import taufactor

        return taufactor
    except ImportError:
        return None


def _porespy():
    try:
        import porespy

        logging.getLogger("porespy").setLevel(logging.ERROR)
        return porespy
    except ImportError:
        return None


def taufactor_relative_conductivity(taufactor, volume):
    """TauFactor's D_eff/D_0 along numpy axis 0 (its default convergence criterion)."""
    solver = taufactor.Solver(volume.astype(np.float32), device="cpu")
    solver.solve(verbose=False)
    return float(np.asarray(solver.D_eff).ravel()[0])


def porespy_relative_conductivity(porespy, volume):
    """PoreSpy's effective porosity / tortuosity along numpy axis 0."""
    result = porespy.simulations.tortuosity_fd(volume.astype(bool), axis=0)
    return float(result.effective_porosity / result.tortuosity)


def _anchor_installed(name):
    return importlib.util.find_spec(name) is not None


def _time_anchor(name, volume, repeats):
    """(best seconds, sigma) of an anchor on ``volume``; runs in the anchors' own process."""
    if name == "taufactor":
        module = _taufactor()
        return best_time(lambda: taufactor_relative_conductivity(module, volume), repeats)
    module = _porespy()
    return best_time(lambda: porespy_relative_conductivity(module, volume), repeats)


SOLVER_COLUMNS = ["size", "porosity", "ours_s", "iterations", "ours_sigma", "taufactor_s", "taufactor_sigma",
                  "porespy_s", "porespy_sigma", "speedup", "max_rel_diff"]


MEMORY_ROW = "SOLVER-MEMORY-ROW "
MEMORY_COLUMNS = ["volume", "voxels", "layout", "peak_mb", "bytes_per_voxel", "seconds_per_direction",
                  "iterations", "sigma"]


# the general layout's peak per voxel, measured (143 B at 500^3, more below), to tell beforehand whether it fits
GENERAL_BYTES_PER_VOXEL = 150


def _memory_one(job):
    """One solve of the job's axes in this process, as ``python -m conductivity_tf.physics`` does it: the
    volume loaded, then solved; the layout forced by ``physics.BINARY_LEVEL_VOXELS``."""
    physics.BINARY_LEVEL_VOXELS = 0 if job["layout"] == "binary" else 1 << 62
    physics.solve(microstructure.blobs(16, 0.5, 2, seed=0))          # this layout compiled outside the timing
    baseline = peak_resident_mb()
    volume = np.load(job["path"])
    t0 = time.perf_counter()
    results = physics.solve(volume, axes=job["axes"])
    seconds = time.perf_counter() - t0
    return {"sigma": [r.relative_conductivity for r in results], "iterations": [r.iterations for r in results],
            "seconds": seconds, "baseline_mb": baseline,
            "peak_mb": peak_resident_mb()}


def run_memory_suite(args):
    """Peak resident memory and time of the two layouts on the same volumes, side by side. The general layout is
    skipped, saying so, where it would not fit the memory available now (an 800^3 volume needs ~70 GB of it)."""
    sizes = [128, 192] if args.quick else [128, 256, 500]
    axes = physics.parse_axes(args.axis.split(",") if "," in args.axis else args.axis)
    rows, skipped = [], []
    with tempfile.TemporaryDirectory() as folder:
        cases = []
        for size in sizes:
            path = os.path.join(folder, "blobs{}.npy".format(size))
            np.save(path, microstructure.blobs(size, porosity=0.3, correlation_length=4, seed=size))
            cases.append(("blobs {}^3 (porosity 0.3)".format(size), path))
        for path in args.volumes or []:
            target = os.path.join(folder, "given{}.npy".format(len(cases)))
            np.save(target, (real_structures.read_phases(path) > 0).astype(np.uint8))
            cases.append((os.path.basename(path), target))
        for name, path in cases:
            voxels = int(np.prod(np.load(path, mmap_mode="r").shape))
            for layout in ("general", "binary"):
                available = available_memory_mb()
                need = GENERAL_BYTES_PER_VOXEL * voxels / 2 ** 20
                if layout == "general" and available is not None and need > 0.9 * available:
                    skipped.append("{}: the general layout skipped, it needs about {:.1f} GB and {:.1f} GB are "
                                   "available".format(name, need / 1024, available / 1024))
                    say(skipped[-1])
                    continue
                say("solver memory: {} ({} layout)".format(name, layout))
                got = child_row("solver", {"path": path, "layout": layout, "axes": axes}, MEMORY_ROW,
                                "the {} solve of {}".format(layout, name))
                rows.append({"volume": name, "voxels": voxels, "layout": layout, "peak_mb": got["peak_mb"],
                             "baseline_mb": got["baseline_mb"], "bytes_per_voxel": got["peak_mb"] * 2 ** 20 / voxels,
                             "seconds_per_direction": got["seconds"] / len(axes), "iterations": " ".join(
                                 str(i) for i in got["iterations"]),
                             "sigma": " ".join("{:.6f}".format(v) for v in got["sigma"]), "values": got["sigma"]})
    print(markdown_table(rows, MEMORY_COLUMNS))
    if args.csv:
        write_csv(args.csv, rows, MEMORY_COLUMNS)
    print()
    print("peak resident memory of the whole process (the kernel's VmHWM) over the voxels, axes {}; the interpreter "
          "and the compiled kernels alone: {:.0f} MB".format(",".join(map(str, axes)), rows[0]["baseline_mb"]))
    for line in skipped:
        print(line)
    for general in rows:
        binary = next((r for r in rows if r["volume"] == general["volume"] and r["layout"] == "binary"), None)
        if general["layout"] != "general" or binary is None:
            continue
        difference = max((abs(a / b - 1) for a, b in zip(binary["values"], general["values"]) if b > 0), default=0.0)
        print("{}: the binary level takes {:.1f} bytes per voxel against {:.1f} ({:.2f}x less) at {:.2f}x the time "
              "per direction ({:.2f} against {:.2f} s); sigma differs by at most {:.1e} (relative)".format(
                  general["volume"], binary["bytes_per_voxel"], general["bytes_per_voxel"],
                  general["bytes_per_voxel"] / binary["bytes_per_voxel"],
                  binary["seconds_per_direction"] / general["seconds_per_direction"],
                  binary["seconds_per_direction"], general["seconds_per_direction"], difference))
    return 0


def run_solver_suite(args):
    if args.one:
        print(MEMORY_ROW + json.dumps(_memory_one(json.loads(args.one))), flush=True)
        return 0
    if args.memory:
        return run_memory_suite(args)
    import concurrent.futures
    import multiprocessing

    import numpy as np


    sizes = [64, 128] if args.quick else [64, 128, 256]
    porosities = [0.3, 0.5] if args.quick else [0.3, 0.45, 0.6]
    anchors = [name for name in ("taufactor", "porespy") if _anchor_installed(name)]
    for name in ("taufactor", "porespy"):
        if name not in anchors:
            say("{} is not installed: skipped (pip install -e .[bench])".format(name))
    # The anchors run in a process of their own: with torch (TauFactor's) imported, our solver's numba
    # kernels ran 10-65 % slower in the same process, which would measure the neighbour, not the
    # solver. The volumes go there by pipe; each side times itself.
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        def anchor(name, volume, repeats):
            return pool.submit(_time_anchor, name, volume, repeats).result()

        rows = []
        warm = microstructure.blobs(16, 0.5, 2, seed=0)
        physics.solve(warm, axes=[0])  # compile the numba kernels outside the timings
        for name in anchors:
            anchor(name, warm, 1)      # and import the anchors
        for size in sizes:
            # best of several runs in two rounds, each a block of ours then a block of TauFactor's, so that
            # a slow spell of this shared machine hits both; a 64^3 solve takes tens of milliseconds, so
            # more runs there
            rounds, repeats = {64: (2, 4), 128: (2, 2)}.get(size, (1, 1))
            for porosity in porosities:
                volume = microstructure.blobs(size, porosity=porosity, correlation_length=4, seed=size)
                row = {"size": size, "porosity": porosity}
                ours, theirs = [], []
                for _ in range(rounds):
                    # at least two of ours: the first solve at 256^3 spent 3 of its 4-5 s in the kernel,
                    # touching fresh memory (~2 GB); TauFactor's one run there takes 1.5-3 minutes
                    ours.append(best_time(lambda v=volume: physics.solve(v, axes=[0])[0], max(repeats, 2)))
                    if "taufactor" in anchors:
                        theirs.append(anchor("taufactor", volume, repeats))
                seconds, result = min(ours, key=lambda pair: pair[0])
                row.update(ours_s=seconds, iterations=result.iterations, ours_sigma=result.relative_conductivity)
                if theirs:
                    seconds, sigma = min(theirs, key=lambda pair: pair[0])
                    row.update(taufactor_s=seconds, taufactor_sigma=sigma)
                if "porespy" in anchors:
                    seconds, sigma = anchor("porespy", volume, 1)
                    row.update(porespy_s=seconds, porespy_sigma=sigma)
                anchor_times = [row[k] for k in ("taufactor_s", "porespy_s") if k in row]
                anchor_sigmas = [row[k] for k in ("taufactor_sigma", "porespy_sigma") if k in row]
                if anchor_times:
                    row["speedup"] = min(anchor_times) / row["ours_s"]
                    row["max_rel_diff"] = max(abs(row["ours_sigma"] - s) / s for s in anchor_sigmas)
                rows.append(row)
                say("solver {}^3 porosity {}: ours {:.3f} s{}".format(size, porosity, row["ours_s"], "".join(
                    ", {} {:.3f} s".format(k[:-2], row[k]) for k in ("taufactor_s", "porespy_s") if k in row)))
    print(markdown_table(rows, SOLVER_COLUMNS))
    if args.csv:
        write_csv(args.csv, rows, SOLVER_COLUMNS)
    # ratios, printed last
    print()
    for size in sizes:
        speedups = [r["speedup"] for r in rows if r["size"] == size and "speedup" in r]
        diffs = [r["max_rel_diff"] for r in rows if r["size"] == size and "max_rel_diff" in r]
        if speedups:
            print("{}^3: ours is {:.2f}x faster than the faster anchor (median over porosities; min {:.2f}x); "
                  "largest relative disagreement {:.2e}".format(size, statistics.median(speedups), min(speedups),
                                                                max(diffs)))
    if len(sizes) > 1:
        voxels = np.log([s ** 3 for s in sizes])
        times = np.log([statistics.median([r["ours_s"] for r in rows if r["size"] == s]) for s in sizes])
        exponent = float(np.polyfit(voxels, times, 1)[0])
        per_iteration = np.log([statistics.median([r["ours_s"] / max(r["iterations"], 1) for r in rows
                                                   if r["size"] == s]) for s in sizes])
        print("cost growth {}^3 -> {}^3: time ~ voxels^{:.2f} (1.00 = linear); time per CG iteration ~ voxels^{:.2f} "
              "(the rest is the growth in iterations)".format(sizes[0], sizes[-1], exponent,
                                                               float(np.polyfit(voxels, per_iteration, 1)[0])))
    return 0
