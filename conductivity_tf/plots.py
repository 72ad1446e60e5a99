"""Figures shared by the command-line tools and the notebooks (matplotlib, PNG)."""

import os

import numpy as np

from conductivity_tf.fileio import atomic_path


def _pyplot():
    import sys

    import matplotlib

    if "matplotlib.pyplot" not in sys.modules:  # scripts: draw to files; notebooks keep their own backend
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def parity_plot(path, truth, predicted, porosity=None, title="Test split", labels=None):
    """Predicted against true sigma_eff/sigma_0, one panel per axis, coloured by porosity."""

    plt = _pyplot()
    truth, predicted = np.atleast_2d(truth), np.atleast_2d(predicted)
    axes_count = truth.shape[1]
    fig, axes = plt.subplots(1, axes_count, figsize=(3.8 * axes_count + 1.2, 4.4), squeeze=False, dpi=110,
                             constrained_layout=True)
    top = max(float(truth.max()), float(predicted.max()), 1e-3) * 1.05
    for i, ax in enumerate(axes[0]):
        sc = ax.scatter(truth[:, i], predicted[:, i], s=6, c=porosity if porosity is not None else "tab:blue",
                        cmap="viridis", vmin=0, vmax=1, alpha=0.8, linewidths=0)
        ax.plot([0, top], [0, top], color="k", lw=0.8, ls="--", label="y = x")
        ax.set_xlim(0, top)
        ax.set_ylim(0, top)
        ax.set_aspect("equal")
        ax.set_title(labels[i] if labels else "axis {}".format(i))
        ax.set_xlabel("solver σ_eff/σ₀")
        if i == 0:
            ax.set_ylabel("CNN σ_eff/σ₀")
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    if porosity is not None:
        fig.colorbar(sc, ax=axes[0].tolist(), label="porosity ε", shrink=0.9)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def _series_label(row, keys):
    parts = []
    if row.get("machine"):
        parts.append(str(row.get("device") or row["machine"])[:28])
    for key in keys:
        value = row.get(key)
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        parts.append({"kind": "{}", "replicas": "{} repl.", "precision": "{}", "size": "{}³",
                      "micro_batch": "micro-batch {}", "gradient_accumulation": "GA {}",
                      "pipeline_stages": "{} stages"}[key].format(value))
    return ", ".join(parts)


def throughput_plots(rows, stem):
    """Throughput against batch size, accumulation steps and pipeline stages (one PNG each); rows are
    benchmark CSV rows, possibly from several machines. Returns the PNG paths."""

    plt = _pyplot()
    ok = [r for r in rows if r.get("samples_per_s") and not str(r.get("name", "")).startswith("reference")]
    specs = [
        ("batch", "global batch (samples per optimizer step)", "global_batch",
         lambda r: r["gradient_accumulation"] == 1 and r["pipeline_stages"] == 1,
         ["kind", "replicas", "precision", "size"]),
        ("accumulation", "gradient accumulation steps (micro-batches per optimizer step)", "gradient_accumulation",
         lambda r: r["pipeline_stages"] == 1, ["kind", "replicas", "precision", "size", "micro_batch"]),
        ("stages", "pipeline stages", "pipeline_stages", lambda r: True,
         ["kind", "precision", "size", "micro_batch", "gradient_accumulation"]),
    ]
    paths = []
    for what, xlabel, xkey, keep, keys in specs:
        series = {}
        for r in ok:
            if keep(r):
                series.setdefault(_series_label(r, keys), []).append((r[xkey], r["samples_per_s"],
                                                                    r.get("min_samples_per_s"),
                                                                    r.get("max_samples_per_s")))
        if what != "batch":  # a line needs at least two points of the varied quantity
            series = {k: v for k, v in series.items() if len({p[0] for p in v}) > 1}
        fig, ax = plt.subplots(figsize=(7.5, 4.8), dpi=110, constrained_layout=True)
        for label, points in sorted(series.items()):
            points.sort()
            xs = [p[0] for p in points]
            ys = [p[1] for p in points]
            low = [p[1] - (p[2] if p[2] is not None else p[1]) for p in points]
            high = [(p[3] if p[3] is not None else p[1]) - p[1] for p in points]
            ax.errorbar(xs, ys, yerr=[low, high], marker="o", capsize=3, label=label)
        if not series:
            ax.text(0.5, 0.5, "no configurations vary the {} here".format(what), transform=ax.transAxes,
                    ha="center", va="center", color="0.4")
        ax.set_xscale("log", base=2)
        from matplotlib.ticker import FuncFormatter

        ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: "{:g}".format(value)))
        ax.set_xlabel(xlabel)
        ax.set_ylabel("training throughput (samples/s)")
        ax.set_title("Training throughput against {} (median of timed windows; bars: min–max)".format(
            {"batch": "batch size", "accumulation": "accumulation steps", "stages": "pipeline stages"}[what]),
            fontsize=10)
        ax.grid(alpha=0.3, which="both")
        if series:
            ax.legend(fontsize=7, loc="best")
        path = "{}_vs_{}.png".format(stem, what)
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png")
        plt.close(fig)
        paths.append(path)
    return paths


def comparison_plot(rows, path):
    """Hardware against hardware: throughput and FLOP utilisation per configuration, one bar per CSV row."""

    plt = _pyplot()
    ok = sorted([r for r in rows if r.get("samples_per_s") and not str(r.get("name", "")).startswith("reference")],
                key=lambda r: r["samples_per_s"])
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 0.32 * max(len(ok), 4) + 1.6), dpi=110,
                                      constrained_layout=True, sharey=True)
    machines = sorted({str(r.get("machine")) for r in ok})
    colours = {m: "C{}".format(i) for i, m in enumerate(machines)}
    labels = ["{} [{}]".format(r["name"], r.get("machine")) for r in ok]
    ys = np.arange(len(ok))
    left.barh(ys, [r["samples_per_s"] for r in ok], color=[colours[str(r.get("machine"))] for r in ok])
    left.set_yticks(ys)
    left.set_yticklabels(labels, fontsize=7)
    left.set_xscale("log")
    left.set_xlabel("training throughput (samples/s, log scale)")
    left.set_title("Throughput per configuration")
    right.barh(ys, [100.0 * (r.get("utilisation") or 0.0) for r in ok],
               color=[colours[str(r.get("machine"))] for r in ok])
    right.set_xlabel("FLOP utilisation (% of peak; see peak_source)")
    right.set_title("Utilisation")
    for ax in (left, right):
        ax.grid(alpha=0.3, axis="x")
    handles = [plt.Rectangle((0, 0), 1, 1, color=colours[m]) for m in machines]
    right.legend(handles, machines, fontsize=7, loc="lower right", title="machine")
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return path


def tradeoff_plot(path, curve):
    """The --max-error trade-off: realised MAPE and speed against the fraction of values solved."""

    plt = _pyplot()
    solved = [row["solved_fraction"] * 100.0 for row in curve]
    fig, left = plt.subplots(figsize=(6.4, 4.2), constrained_layout=True)
    left.plot(solved, [row["mape"] for row in curve], "o-", color="tab:red", label="realised MAPE")
    labels = {}  # one label per point: settings that solve the same values share it
    for row, x in zip(curve, solved):
        labels.setdefault((round(x, 6), round(row["mape"], 6)), []).append("{:g}".format(row["max_error"]))
    first = min(solved)
    for (x, mape), settings in labels.items():   # left of each point, but right of the leftmost (inside the axes)
        inside = x == round(first, 6)
        left.annotate("--max-error " + ", ".join(settings), (x, mape), textcoords="offset points",
                      xytext=(6 if inside else -4, 6), ha="left" if inside else "right", fontsize=8)
    left.margins(x=0.15, y=0.12)
    left.set_xlabel("values answered by the solver (%)")
    left.set_ylabel("MAPE over percolating values (%)", color="tab:red")
    right = left.twinx()
    right.plot(solved, [row["speedup"] for row in curve], "s--", color="tab:blue", label="speed")
    right.set_ylabel("speed against solving every tile (x)", color="tab:blue")
    left.set_title("Fast where the model knows, exact where it does not")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return path


def conductivity_map_plot(path, field, sizes=None, title=None):
    """The local conductivity field (cells, 3) of a whole volume: the middle slice normal to each axis (rows) of
    the cells' conductivity along each axis (columns), one colour scale; cells drawn at their size in voxels."""
    plt = _pyplot()
    field = np.asarray(field)
    edges = [np.concatenate([[0.0], np.cumsum(h)]) for h in sizes] if sizes is not None else \
        [np.arange(n + 1, dtype=float) for n in field.shape[:3]]
    top = max(float(field.max()), 1e-6)
    fig, axes = plt.subplots(3, 3, figsize=(11, 10), dpi=100, constrained_layout=True)
    image = None
    for row, normal in enumerate(range(3)):
        middle = field.shape[normal] // 2
        rest = [a for a in range(3) if a != normal]
        for column in range(3):
            panel = np.take(field[..., column], middle, axis=normal)
            ax = axes[row][column]
            image = ax.pcolormesh(edges[rest[1]], edges[rest[0]], panel, vmin=0.0, vmax=top, cmap="viridis")
            ax.set_aspect("equal")
            ax.invert_yaxis()
            ax.set_title("slice {} of axis {}: along axis {}".format(middle, normal, column), fontsize=9)
            ax.set_xlabel("axis {} (voxels)".format(rest[1]), fontsize=8)
            ax.set_ylabel("axis {} (voxels)".format(rest[0]), fontsize=8)
    fig.colorbar(image, ax=axes, shrink=0.6, label="local σ/σ₀ of the cell's window")
    if title:
        fig.suptitle(title)
    with atomic_path(path, suffix=".tmp.png") as tmp:
        fig.savefig(tmp)
    plt.close(fig)
    return path
