"""What every suite shares: the machine's description, tables and CSVs, and timing (best of several runs, and
samples/s in windows of steps)."""

import csv
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time

import numpy as np

from conductivity_tf.errors import UserError
from conductivity_tf.fileio import atomic_path


def machine_description():
    """A short description of this machine for every CSV row."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {"machine": platform.node(), "cpu": cpu, "cores": os.cpu_count(),
            "python": platform.python_version()}


def markdown_table(rows, columns):
    def fmt(value):
        if isinstance(value, float):
            if math.isinf(value) or math.isnan(value):
                return str(value)
            return "{:.4g}".format(value)
        return "" if value is None else str(value)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(fmt(row.get(c)) for c in columns) + " |")
    return "\n".join(lines)


def write_csv(path, rows, columns):
    extra = machine_description()
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(columns) + list(extra))
            writer.writeheader()
            for row in rows:
                writer.writerow(dict({c: row.get(c) for c in columns}, **extra))


def read_csv_rows(paths):
    """Rows of benchmark CSVs (numbers converted), each tagged with its file."""
    rows = []
    for path in paths:
        if not os.path.isfile(path):
            raise UserError("{} not found; give CSV files written by 'benchmark train --csv'".format(path))
        with open(path, newline="") as handle:
            reader = csv.DictReader(handle)
            if not reader.fieldnames or "samples_per_s" not in reader.fieldnames:
                raise UserError("{} is not a train benchmark CSV (no samples_per_s column)".format(path))
            for raw in reader:
                row = {}
                for key, value in raw.items():
                    try:
                        row[key] = float(value) if value not in ("", None) else None
                    except ValueError:
                        row[key] = value
                row["source"] = path
                rows.append(row)
    return rows


def say(*args):
    print(*args, file=sys.stderr, flush=True)


def _kernel_mb(path, key):
    """The value (kB in the file) of line ``key`` of a /proc file, in MB; None where there is no such file or line."""
    try:
        with open(path) as lines:
            for line in lines:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return None


def available_memory_mb():
    """Memory the kernel says a new process can take without swapping (MemAvailable, MB); None if unknown."""
    return _kernel_mb("/proc/meminfo", "MemAvailable")


def peak_resident_mb():
    """This process's peak resident memory (MB) since it started: the kernel's VmHWM of its address space. The
    rusage maximum is not used: on Linux it carries the parent's peak into a child started by fork and exec."""
    peak = _kernel_mb("/proc/self/status", "VmHWM")
    if peak is not None:
        return peak
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def child_row(suite, job, mark, what):
    """Run ``python -m conductivity_tf.benchmark SUITE --one JOB`` in a fresh process (so that its peak resident
    memory is its own) and return the JSON row it prints after ``mark``; ``what`` names the job in the error."""
    proc = subprocess.Popen([sys.executable, "-m", "conductivity_tf.benchmark", suite, "--one", json.dumps(job)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True)
    out, err = proc.communicate()
    rows = [json.loads(line[len(mark):]) for line in out.splitlines() if line.startswith(mark)]
    if proc.returncode != 0 or not rows:
        lines = [line for line in err.splitlines() if line.strip()] or ["exit {}".format(proc.returncode)]
        raise UserError("{} failed: {}".format(what, lines[-1]))
    return rows[0]


def best_time(fn, repeats):
    """Run ``fn`` ``repeats`` times; return (best seconds, last result)."""
    best, result = math.inf, None
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - t0)
    return best, result


def window_rates(times, samples_per_tick, warmup, ticks_per_window, windows):
    """Samples/s in each of ``windows`` windows of ``ticks_per_window`` ticks after ``warmup`` ticks, from the
    wall times at the start and after every tick (a step, or an execution of several)."""
    rates = []
    for w in range(windows):
        start = warmup + w * ticks_per_window
        rates.append(samples_per_tick * ticks_per_window / (times[start + ticks_per_window] - times[start]))
    return rates


def windows_throughput(step, samples_per_step, windows=7, steps_per_window=10, warmup=3):
    """Median (min, max) samples/s over timed windows of ``steps_per_window`` calls to ``step``."""
    times = [time.perf_counter()]
    for _ in range(warmup + windows * steps_per_window):
        step()
        times.append(time.perf_counter())
    rates = window_rates(times, samples_per_step, warmup, steps_per_window, windows)
    return statistics.median(rates), min(rates), max(rates)


def synthetic_batch(count, size, outputs, seed=0):
    """Random binary volumes (count, size, size, size, 1) and labels (count, outputs), float32, in memory: every
    configuration is fed the same data, with no input cost."""
    rng = np.random.default_rng(seed)
    x = (rng.random((count, size, size, size, 1)) < 0.5).astype("float32")
    y = (rng.random((count, outputs)) * 0.3).astype("float32")
    return x, y
