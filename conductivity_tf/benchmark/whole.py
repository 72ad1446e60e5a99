"""``benchmark whole``: whole volumes, side by side on the same files: the full solve (``physics.solve``, three
axes) against the model's windows combined by physics (``whole_volume``) with each detour correction (the default
coarse one, none, the fine one), and the same combination with exact window labels (the method's own error). Each
method runs in a process of its own, so its peak resident memory (the kernel's VmHWM of that process) is its own;
its time is the work after start-up (the model loaded, numba compiled on a small volume first), the median of
``--repeats`` runs for the full solve and the model's windows."""

import json
import os
import sys
import tempfile
import time

import numpy as np
from tqdm import tqdm

from conductivity_tf import kernels, microstructure, physics, real_structures, volumes, whole_volume
from conductivity_tf.benchmark.common import child_row, markdown_table, peak_resident_mb, say, write_csv
from conductivity_tf.errors import UserError
from conductivity_tf.metrics import Z90
from conductivity_tf.predict import Predictor, model_size

ROW_MARK = "WHOLE-ROW "
BATCH = 64  # windows per batch through the model (whole_volume.predict_volume's default)
FAMILIES = [("blobs", dict(porosity=0.4, correlation_length=4)),
            ("overlapping_spheres", dict(porosity=0.5, radius=4)),
            ("packed_spheres", dict(porosity=0.75, radius=5)),
            ("fibres", dict(porosity=0.7, radius=2.5)),
            ("graded", dict(porosity_start=0.6, porosity_end=0.3)),
            ("spheroids", dict(porosity=0.5)),
            ("electrode", dict(porosity=0.4)),
            ("granular", dict(porosity=0.2)),
            ("foam", dict(porosity=0.8))]
COLUMNS = ["volume", "shape", "porosity", "full_sigma", "full_s", "full_peak_mb", "whole_sigma", "whole_s",
           "whole_peak_mb", "speedup", "total_error_pct", "inside_90", "method_error_pct", "detour_factors",
           "exact_sigma", "windows", "plain_s", "plain_speedup", "plain_total_error_pct", "plain_method_error_pct",
           "fine_factors", "fine_proxies", "fine_s", "fine_peak_mb", "fine_speedup", "fine_total_error_pct",
           "fine_inside_90", "fine_method_error_pct"]


def _cases(args, folder):
    """[(name, .npy path)]: generated volumes, or each phase of the given volumes conducting in turn."""
    cases = []
    if args.volumes:
        for path in args.volumes:
            phases = real_structures.read_phases(path)
            values = np.unique(phases)
            conductors = [values[-1]] if len(values) == 2 else values
            for phase in conductors:
                name = "{} phase {}".format(os.path.basename(path), int(phase))
                target = os.path.join(folder, "case{}.npy".format(len(cases)))
                np.save(target, (phases == phase).astype(np.uint8))
                cases.append((name, target))
        return cases
    size = 128 if args.quick else args.size
    for family, params in FAMILIES[:2] if args.quick else FAMILIES:
        say("generating {} {}^3".format(family, size))
        try:
            volume = microstructure.generate(family, size, seed=5, **params)
        except UserError as err:
            say("skipped {}: {}".format(family, err))
            continue
        target = os.path.join(folder, "case{}.npy".format(len(cases)))
        np.save(target, volume)
        cases.append(("{} {}^3".format(family, size), target))
    return cases


def _timed(work, repeats):
    """(work()'s last result, the median of its wall times over ``repeats`` runs)."""
    seconds = []
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        result = work()
        seconds.append(time.perf_counter() - t0)
    return result, float(np.median(seconds))


def measure_one(job):
    """One method on one volume, in this process: its row (values, seconds: the median over ``repeats`` runs)."""
    path, method, repeats = job["path"], job["method"], job.get("repeats", 1)
    kernels.compile_kernels()  # every numba kernel (both solver paths, the descriptors) loaded outside the timing
    source = volumes.open_volume(path)
    if method == "full":
        volume = np.load(path)
        values, seconds = _timed(lambda: [r.relative_conductivity for r in physics.solve(volume)], repeats)
        return {"values": values, "seconds": seconds}
    if method == "exact":
        labeller, size = whole_volume.exact_labeller(job.get("workers")), job["window"]
    else:
        predictor = Predictor(job.get("model"))
        size = predictor.size
        plan = whole_volume.layout(source.shape, size, job.get("cell"))
        for batch in {min(plan.windows, BATCH), plan.windows % BATCH} - {0}:
            # traced, and the runtime's kernels chosen for the batches the windows come in, outside the timing
            # (as the solver's kernels are compiled outside it)
            predictor.predict(np.zeros((batch,) + (size,) * 3, np.uint8), batch_size=batch)
        labeller = whole_volume.model_labeller(predictor)
    result, seconds = _timed(lambda: whole_volume.predict_volume(source, labeller, size, job.get("cell"), batch=BATCH,
                                                                 detours=job.get("detours", "off")),
                             repeats if method == "model" else 1)
    getattr(labeller, "close", lambda: None)()
    return {"values": result.values, "uncertainty": result.uncertainty, "seconds": seconds,
            "windows": result.plan.windows, "porosity": result.porosity, "factors": result.detour_factors,
            "proxies": result.detour_proxies}


def _child(job):
    """``measure_one`` in a fresh process: (row, peak resident MB of that process)."""
    row = child_row("whole", job, ROW_MARK, "the {} measurement of {}".format(job["method"], job["path"]))
    return row, row.pop("peak_mb")


def _error(values, reference):
    errors = [abs(v / r - 1) * 100 for v, r in zip(values, reference) if r > 0.02]
    return max(errors) if errors else None


def _inside_90(values, uncertainty, reference):
    """'k/n': on how many of the n axes whose full solve exceeds 0.02 the stated ~90 % interval (value +- Z90
    uncertainties) holds the full solve; '' when the model states no uncertainty."""
    if uncertainty is None:
        return ""
    checked = [abs(v - r) <= Z90 * u for v, u, r in zip(values, uncertainty, reference) if r > 0.02]
    return "{}/{}".format(sum(checked), len(checked))


def _row(name, shape, runs):
    """The table's row of one volume from its runs {key: (result, peak MB)}: the full solve, the model's windows
    with the default detour correction ("whole"), without ("plain"), with the fine one, and the exact windows."""
    (full, full_mb), (whole, whole_mb), (plain, _), (exact, _), (fine, fine_mb) = (
        runs[k] for k in ("full", "whole", "plain", "exact", "fine"))
    reference = full["values"]

    def corrected(factors):
        # the detour factors depend on the labeller only through whether the fine correction's renormalised proxy
        # counts along each axis (its windows against the labels'): the exact windows' combination times the model
        # run's factors is the corrected method's own error
        return [v * f for v, f in zip(exact["values"], factors)]

    return {"volume": name, "shape": "x".join(map(str, shape)), "porosity": whole["porosity"],
            "full_sigma": " ".join("{:.4f}".format(v) for v in reference),
            "full_s": full["seconds"], "full_peak_mb": full_mb,
            "whole_sigma": " ".join("{:.4f}".format(v) for v in whole["values"]),
            "whole_s": whole["seconds"], "whole_peak_mb": whole_mb, "speedup": full["seconds"] / whole["seconds"],
            "total_error_pct": _error(whole["values"], reference),
            "inside_90": _inside_90(whole["values"], whole["uncertainty"], reference),
            "method_error_pct": _error(corrected(whole["factors"]), reference),
            "detour_factors": " ".join("{:.3f}".format(f) for f in whole["factors"]),
            "exact_sigma": " ".join("{:.4f}".format(v) for v in exact["values"]), "windows": whole["windows"],
            "plain_s": plain["seconds"], "plain_speedup": full["seconds"] / plain["seconds"],
            "plain_total_error_pct": _error(plain["values"], reference),
            "plain_method_error_pct": _error(exact["values"], reference),
            "fine_factors": " ".join("{:.3f}".format(f) for f in fine["factors"]),
            "fine_proxies": " ".join(fine["proxies"]), "fine_s": fine["seconds"], "fine_peak_mb": fine_mb,
            "fine_speedup": full["seconds"] / fine["seconds"],
            "fine_total_error_pct": _error(fine["values"], reference),
            "fine_inside_90": _inside_90(fine["values"], fine["uncertainty"], reference),
            "fine_method_error_pct": _error(corrected(fine["factors"]), reference)}


def run_whole_suite(args):
    if args.one:
        job = json.loads(args.one)
        row = measure_one(job)
        row["peak_mb"] = peak_resident_mb()
        print(ROW_MARK + json.dumps(row), flush=True)
        return 0
    rows = []
    say("compiling the solver's kernels (cached on disk; once per install)")
    kernels.compile_kernels()   # the timed processes below then load them, none compiles inside its timing
    with tempfile.TemporaryDirectory() as folder:
        cases = _cases(args, folder)
        window = model_size(args.model)
        with tqdm(total=5 * len(cases), desc="whole-volume benchmark", unit="run", file=sys.stderr) as bar:
            for name, path in cases:
                shape = np.load(path, mmap_mode="r").shape
                bar.set_postfix_str(name)
                runs = {}
                for key, job in (("full", {"method": "full"}),
                                 ("whole", {"method": "model", "detours": whole_volume.DEFAULT_DETOURS}),
                                 ("plain", {"method": "model", "detours": "off"}),
                                 ("exact", {"method": "exact", "window": window}),
                                 ("fine", {"method": "model", "detours": "fine"})):
                    job.update(path=path, model=args.model, repeats=args.repeats)
                    runs[key] = _child(job)
                    bar.update()
                rows.append(_row(name, shape, runs))
    print(markdown_table(rows, COLUMNS))
    if args.csv:
        write_csv(args.csv, rows, COLUMNS)
    print()
    print("errors: the largest over the three axes of |whole / full solve - 1| where the full solve's "
          "sigma_eff/sigma_0 > 0.02; method: exact window labels, total: the model's; whole_*, speedup, "
          "total_error_pct, inside_90, method_error_pct: predict's default (the coarse detour correction, whose "
          "factors multiply the windows' combination along axes 0, 1, 2); plain_*: --detours off; fine_*: "
          "--detours fine (fine_proxies: the proxy each factor came from); inside_90: axes where the model's stated "
          "~90 % interval holds the full solve")
    for row in rows:
        print("{}: the model's windows combined are {:.0f}x faster than the full solve (3 axes) at {:.0f} MB peak "
              "against {:.0f} MB (--detours off {:.0f}x; --detours fine {:.0f}x at {:.0f} MB)".format(
                  row["volume"], row["speedup"], row["whole_peak_mb"], row["full_peak_mb"], row["plain_speedup"],
                  row["fine_speedup"], row["fine_peak_mb"]))
    return 0
