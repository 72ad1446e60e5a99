"""Figures shared by the command-line tools and the notebooks (matplotlib, PNG)."""

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def parity_plot(path, truth, predicted, porosity=None, title="Test split", labels=None):
    """Predicted against true sigma_eff/sigma_0, one panel per axis, coloured by porosity."""
    from conductivity_tf.fileio import atomic_path

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
