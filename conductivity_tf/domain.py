"""The training domain of a model, and whether a volume lies inside it: plain numpy, no TensorFlow.

A volume is described by a few numbers that say what kind of structure it is (``describe``):

- ``porosity``: the conducting volume fraction;
- ``conducting_chord`` / ``insulating_chord``: the mean chord length of each phase in voxels (the mean length
  of the runs of that phase along the three axes; a feature size);
- ``anisotropy``: the largest over the smallest of the three per-axis mean chords of the conducting phase;
- ``spanning``: the smallest, over the three axes, fraction of conducting voxels in clusters that join the two
  faces normal to the axis (low near the percolation threshold, where a few necks carry the current).

``training_domain`` takes the central 99 % of each over the training split; ``outside`` names every number of a
volume that falls out of it, as a reason a person can read. A run directory keeps its domain in ``domain.json``.
"""

import json
import os

import numpy as np

from conductivity_tf import physics
from conductivity_tf.fileio import write_text

DESCRIPTORS = {
    "porosity": "porosity",
    "conducting_chord": "feature size of the conducting phase (mean chord, voxels)",
    "insulating_chord": "feature size of the insulating phase (mean chord, voxels)",
    "anisotropy": "anisotropy (largest / smallest mean chord over the axes)",
    "spanning": "closeness to the percolation threshold (fraction of the conducting phase joining both faces)",
}
DOMAIN_FILE = "domain.json"


def _mean_chords(phase):
    """Mean run length of ``phase`` (bool) along each axis; inf along an axis with no interruption."""
    out = []
    for axis in range(3):
        starts = np.count_nonzero(np.diff(phase, axis=axis, prepend=False) & phase)
        out.append(np.count_nonzero(phase) / starts if starts else float("inf"))
    return out


def describe(volume):
    """The descriptors of a binary volume (1 = conducting), as a dict."""
    conducting = np.asarray(volume) > 0
    chords = _mean_chords(conducting)
    finite = [c for c in chords if np.isfinite(c)] or [float(conducting.shape[0])]
    insulating = [c for c in _mean_chords(~conducting) if np.isfinite(c)] or [float(conducting.shape[0])]
    spanning = min(physics.spanning_fraction(conducting).values())
    return {"porosity": float(conducting.mean()), "conducting_chord": float(np.mean(finite)),
            "insulating_chord": float(np.mean(insulating)), "anisotropy": float(max(finite) / min(finite)),
            "spanning": float(spanning)}


def training_domain(descriptions, coverage=0.99):
    """{descriptor: [low, high]}: the central ``coverage`` of each descriptor over the training volumes."""
    tail = (1.0 - coverage) / 2.0 * 100.0
    return {name: [float(np.percentile([d[name] for d in descriptions], tail)),
                   float(np.percentile([d[name] for d in descriptions], 100.0 - tail))] for name in DESCRIPTORS}


def outside(description, domain):
    """The reasons (strings) a described volume lies outside ``domain``; empty when it lies inside."""
    reasons = []
    for name, label in DESCRIPTORS.items():
        low, high = domain[name]
        value = description[name]
        if value < low or value > high:
            reasons.append("{} {:.3g} outside the training range {:.3g}-{:.3g}".format(label, value, low, high))
    return reasons


def save(directory, domain):
    write_text(os.path.join(directory, DOMAIN_FILE), json.dumps(domain, indent=1) + "\n")


def load(directory):
    """The domain a run directory keeps, or None when it has none (a model from before domain checks)."""
    path = os.path.join(directory, DOMAIN_FILE)
    if not os.path.isfile(path):
        return None
    with open(path) as handle:
        return json.load(handle)
