"""The training domain of a model, and whether a volume lies inside it: plain numpy, no TensorFlow.

A volume is described by a few numbers that say what kind of structure it is (``describe``):

- ``porosity``: the conducting volume fraction;
- ``conducting_chord`` / ``insulating_chord``: the mean chord length of each phase in voxels (the mean length
  of the runs of that phase along the three axes; a feature size);
- ``anisotropy``: the largest over the smallest of the three per-axis mean chords of the conducting phase;
- ``spanning``: the smallest, over the three axes, fraction of conducting voxels in clusters that join the two
  faces normal to the axis (low near the percolation threshold, where a few necks carry the current).

``describe`` also gives the chords and spanning fractions per axis (``axis_chords``, ``axis_spanning``), which the
error model of ``uncertainty`` uses.

``training_domain`` takes the central 99 % of each over the training split; ``outside`` names every number of a
volume that falls out of it, as a reason a person can read. A run directory keeps its domain in ``domain.json``.
"""

import os

import numpy as np
from numba import njit

from conductivity_tf import physics
from conductivity_tf.fileio import read_json, write_json

DESCRIPTORS = {
    "porosity": "porosity",
    "conducting_chord": "feature size of the conducting phase (mean chord, voxels)",
    "insulating_chord": "feature size of the insulating phase (mean chord, voxels)",
    "anisotropy": "anisotropy (largest / smallest mean chord over the axes)",
    "spanning": "closeness to the percolation threshold (fraction of the conducting phase joining both faces)",
}
DOMAIN_FILE = "domain.json"


@njit(cache=True)
def _run_starts(phase):
    """(voxels of each phase (2,), run starts of each phase along each axis (2, 3)) of a bool volume in one pass.
    A run of the conducting phase starts where a voxel conducts and the one before it along the axis does not
    (or at the face); along every line runs alternate, so the insulating phase's runs are the transitions plus
    the lines, less the conducting runs. The inner loops are branch-free, so they vectorise."""
    n0, n1, n2 = phase.shape
    x = phase.view(np.uint8)
    ones = 0
    up = np.zeros(3, np.int64)        # conducting runs per axis
    changes = np.zeros(3, np.int64)   # transitions per axis
    for i in range(n0):
        for j in range(n1):
            row = x[i, j]
            s = 0
            u0 = 0
            u1 = 0
            c0 = 0
            c1 = 0
            u2 = np.int64(row[0])
            c2 = 0
            for k in range(n2):
                a = np.int64(row[k])
                s += a
                b0 = np.int64(x[i - 1, j, k]) if i > 0 else 0
                b1 = np.int64(x[i, j - 1, k]) if j > 0 else 0
                u0 += a * (1 - b0)
                u1 += a * (1 - b1)
                c0 += a ^ b0
                c1 += a ^ b1
            for k in range(1, n2):
                a = np.int64(row[k])
                b = np.int64(row[k - 1])
                u2 += a * (1 - b)
                c2 += a ^ b
            ones += s
            up[0] += u0
            up[1] += u1
            up[2] += u2
            # the first layer's comparison with "nothing before" counted conducting voxels as changes
            changes[0] += c0 if i > 0 else 0
            changes[1] += c1 if j > 0 else 0
            changes[2] += c2
    voxels = np.array([n0 * n1 * n2 - ones, ones], np.int64)
    starts = np.zeros((2, 3), np.int64)
    lines = np.array([n1 * n2, n0 * n2, n0 * n1], np.int64)
    for a in range(3):
        starts[1, a] = up[a]
        starts[0, a] = changes[a] + lines[a] - up[a]
    return voxels, starts


def _mean_chords(voxels, starts):
    """Mean run length along each axis of a phase of ``voxels`` voxels with ``starts`` run starts per axis (inf
    for an empty phase)."""
    return [voxels / s if s else float("inf") for s in starts]


def describe(volume):
    """The descriptors of a binary volume (1 = conducting), as a dict."""
    conducting = np.ascontiguousarray(np.asarray(volume) > 0)
    voxels, starts = _run_starts(conducting)
    chords = _mean_chords(voxels[1], starts[1])
    finite = [c for c in chords if np.isfinite(c)] or [float(conducting.shape[0])]
    insulating = [c for c in _mean_chords(voxels[0], starts[0]) if np.isfinite(c)] or [float(conducting.shape[0])]
    spanning = physics.spanning_fraction(conducting)
    return {"porosity": float(voxels[1] / conducting.size), "conducting_chord": float(np.mean(finite)),
            "insulating_chord": float(np.mean(insulating)), "anisotropy": float(max(finite) / min(finite)),
            "spanning": float(min(spanning.values())),
            # per axis, for the error model (uncertainty.py)
            "axis_chords": [float(c) if np.isfinite(c) else 0.0 for c in chords],
            "axis_spanning": [float(spanning[a]) for a in range(3)]}


def training_domain(descriptions, coverage=0.99):
    """{descriptor: [low, high]}: the central ``coverage`` of each descriptor over the training volumes."""
    tail = (1.0 - coverage) / 2.0 * 100.0
    return {name: [float(np.percentile([d[name] for d in descriptions], tail)),
                   float(np.percentile([d[name] for d in descriptions], 100.0 - tail))] for name in DESCRIPTORS}


class Reason(str):
    """Why a volume lies outside the training domain: the sentence, with the descriptor, its label, the volume's
    value and the training range as attributes."""

    def __new__(cls, descriptor, value, low, high):
        label = DESCRIPTORS[descriptor]
        reason = str.__new__(cls, "{} {:.3g} outside the training range {:.3g}-{:.3g}".format(label, value, low, high))
        reason.descriptor, reason.label, reason.value, reason.low, reason.high = descriptor, label, value, low, high
        return reason


def outside(description, domain):
    """The ``Reason``s (strings) a described volume lies outside ``domain``; empty when it lies inside."""
    reasons = []
    for name in DESCRIPTORS:
        low, high = domain[name]
        value = description[name]
        if value < low or value > high:
            reasons.append(Reason(name, value, low, high))
    return reasons


def save(directory, domain):
    write_json(os.path.join(directory, DOMAIN_FILE), domain)


def load(directory):
    """The domain a run directory keeps, or None when it has none (a model from before domain checks)."""
    return read_json(os.path.join(directory, DOMAIN_FILE))
