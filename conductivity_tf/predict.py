"""Predict sigma_eff/sigma_0 of volumes with a trained model (``evaluate`` measures one on a dataset split).

``python -m conductivity_tf.predict [--model DIR] VOLUME ... [--json]``: DIR is a run directory (from
``train``) or its ``saved_model/``; without ``--model`` the pretrained model shipped in the package is
used. Volumes must be binary (1 = conducting; a mask saved as 0/255 or 0/65535 conducts where white; use
``--otsu``/``--threshold``/``--phase-map`` otherwise): cubes of the model's input size, or larger volumes predicted
whole (``whole_volume``). The model is loaded with ``tf.saved_model.load``: no pickled Python objects are read.
"""

import argparse
import json
import os
import sys
import time

import numpy as np
import yaml
from tqdm import tqdm

from conductivity_tf import config as config_lib
from conductivity_tf import correction as correction_lib
from conductivity_tf import domain as domain_lib
from conductivity_tf import physics, plots, serving, strategies, whole_volume
from conductivity_tf import uncertainty as uncertainty_lib
from conductivity_tf.errors import UserError, run_cli
from conductivity_tf.metrics import Z90
from conductivity_tf.model import BFLOAT16_SIGNATURE, members_summary, network_input
from conductivity_tf.serving import PRECISION_HELP, PRECISIONS, resolve_precision
from conductivity_tf.volumes import (
    TIFF_SUFFIXES,
    VolumeSource,
    add_volume_arguments,
    binary_mask,
    load_volume_from_args,
    open_volume,
    save_volume,
)

PRETRAINED = os.path.join(os.path.dirname(os.path.abspath(__file__)), "pretrained")
ZERO_WITHOUT_PATH_HELP = ("predict exactly 0 along axes with no conducting path between the two faces, for a model "
                          "without an error model, correction or training domain (labels the connected clusters: "
                          "about 0.5 ms more per 64^3 volume on two cores); a model with one of those does it always, "
                          "from the descriptors it computes anyway")
class Predictor(object):
    """A loaded model: ``predictor(volumes)`` -> (N, len(axes)) sigma_eff/sigma_0. With ``trusted=False`` the
    correction and error model its run directory keeps are not read (``calibrate`` fits them anew)."""

    def __init__(self, model_dir=None, precision="auto", trusted=True):
        # the run's own files first, without TensorFlow: one this version cannot use is refused before the model loads
        self.run_dir = os.path.dirname(serving.saved_model_dir(model_dir or PRETRAINED))
        self.domain = domain_lib.load(self.run_dir)
        self.error_model = uncertainty_lib.load(self.run_dir) if trusted else None
        self.correction = correction_lib.load(self.run_dir) if trusted else None
        loaded = serving.load(model_dir or PRETRAINED, default_dir=PRETRAINED)   # says first if there is no model
        from conductivity_tf.keras_compat import tf

        self.module, self.note, saved, config_path = loaded.module, loaded.note, loaded.saved, loaded.config_path
        self.has_bfloat16 = BFLOAT16_SIGNATURE in self.module.signatures
        self.precision = resolve_precision(precision, self.has_bfloat16, tf, saved)
        self.serve = self.module.signatures[BFLOAT16_SIGNATURE if self.precision == "bf16" else "serving_default"]
        positional, named = self.serve.structured_input_signature  # a signature's input is named, a function's not
        spec = named["volume"] if "volume" in named else positional[0]
        self.size = int(spec.shape[1])
        self.axes = [0, 1, 2]
        self.inputs = "volume"     # what the network sees (model.inputs): the volume, or also its spanning clusters
        if os.path.isfile(config_path):
            with open(config_path) as handle:
                run_config = yaml.safe_load(handle)
            self.axes = list(run_config["data"]["axes"])
            self.inputs = run_config["model"].get("inputs", "volume")
        self.served_uncertainty = "uncertainty" in self.serve.structured_outputs   # an ensemble's spread
        # in bfloat16 the network is fed the blocks its first convolution reads where the SavedModel has them
        self.serve_blocks, self.stem = serving.blocks_signature(self.module, self.size) if (
            self.precision == "bf16" and self.inputs == "volume") else (None, None)
        self.has_uncertainty = self.served_uncertainty or self.error_model is not None
        self.tf = tf
        serve = self.serve

        channels = self.inputs == "spanning"

        @tf.function
        def serve_bytes(volumes):
            return serve(volume=tf.cast(volumes, tf.float32) if channels else tf.cast(volumes, tf.float32)[..., None])

        self._serve_bytes = serve_bytes

    def check(self, volume, name="volume"):
        if volume.shape != (self.size,) * 3:
            raise UserError("{} has shape {} but the model takes {}^3 cubes; cut it into {}^3 tiles (python -m "
                            "conductivity_tf.dataset import --tile {}) or use a model trained at that size".format(
                                name, "x".join(map(str, volume.shape)), self.size, self.size, self.size))
        self.check_binary(volume, name)

    @staticmethod
    def check_binary(volume, name="volume"):
        values = np.unique(volume)
        if not set(values.tolist()) <= {0, 1}:
            raise UserError("{} is not binary (values {}); the model takes 1 = conducting, 0 = insulating: segment "
                            "it with --otsu / --threshold or map phases with --phase-map".format(
                                name, ", ".join(str(v) for v in values[:6])))

    @staticmethod
    def binary(volumes):
        """A batch as the network takes it: 0/1 or bool as it is, a mask saved as 0/255 or 0/65535 as 0/1
        (``volumes.binary_mask``); anything else a ``UserError`` (fed as they are, a 0/255 cube's 255s made the
        network state sigma_eff/sigma_0 of 4.6)."""
        volumes = np.asarray(volumes)
        if volumes.dtype == np.bool_ or (volumes.dtype == np.uint8 and volumes.max(initial=0) <= 1):
            return volumes                     # the usual labels: one pass over the bytes
        volumes = binary_mask(volumes)
        whole_volume.check_binary(volumes, "a volume of the batch")
        return volumes

    def _run(self, volumes, batch_size=16):
        """(values, uncertainty or None), each (N, len(axes)), straight from the model."""
        volumes = np.asarray(volumes)
        values, uncertainty = [], []
        for start in range(0, len(volumes), batch_size):
            chunk = volumes[start:start + batch_size]
            if chunk.dtype in (np.bool_, np.uint8):
                # bytes go in as they are and become floats inside the graph: 12 % less time per volume
                # than converting a float32 copy here (0.2 ms of 1.7 at 64^3)
                chunk = chunk.view(np.uint8)
                if self.serve_blocks is not None:   # the first convolution's blocks laid out here: a quarter less time
                    predicted = serving.run_blocks(self.serve_blocks, chunk, self.stem, self.tf)
                else:
                    predicted = self._serve_bytes(self.tf.constant(
                        physics.spanning_channels(chunk) if self.inputs == "spanning" else chunk))
            else:
                predicted = self.serve(volume=self.tf.constant(network_input(chunk, self.inputs)))
            values.append(predicted["relative_conductivity"].numpy())
            if self.served_uncertainty:
                uncertainty.append(predicted["uncertainty"].numpy())
        return np.concatenate(values, axis=0), np.concatenate(uncertainty, axis=0) if uncertainty else None

    def describe(self, volumes, capped=True):
        """``domain.describe_many`` of the volumes, with the capped junctions where ``capped`` and the run's
        correction reads them (their solve is about a quarter of the descriptors' time)."""
        return domain_lib.describe_many(volumes, capped=capped and correction_lib.reads_capped(self.correction))

    def corrected(self, volumes, values, served, descriptions=None):
        """(values, served spread, descriptions) with the run's correction applied (``correction.py``; the
        descriptions computed if not given); as they are for a run without one."""
        if self.correction is None:
            return values, served, descriptions
        if descriptions is None:
            descriptions = self.describe(volumes)
        factor = correction_lib.factor(self.correction, descriptions, values, self.axes)
        return values * factor, None if served is None else served * factor, descriptions

    def stated_uncertainty(self, volumes, values, served, descriptions=None, network=None, flags=None):
        """The (N, len(axes)) uncertainty stated with ``values``: the run's error model (``uncertainty.py``; of
        the corrected values, whose ``network`` values before the correction it may need; ``flags``, per volume the
        reasons it lies outside the training domain) where it has one, else the ensemble's calibrated spread
        ``served`` (None for a single network without one)."""
        if self.error_model is None:
            return served
        if descriptions is None:
            descriptions = self.describe(volumes)
        return uncertainty_lib.evaluate(self.error_model, descriptions, values, self.axes, served, network, flags)

    def __call__(self, volumes, batch_size=16, zero_without_path=False):
        """(N, len(axes)) predictions. With ``zero_without_path``, or a correction (whose descriptors say it), an
        axis along which a volume has no conducting path between its two faces is given exactly 0 (the network
        alone predicts a small positive value there); that labels the clusters of each volume
        (``domain.describe_many``)."""
        volumes = self.binary(volumes)
        predicted, _ = self._run(volumes, batch_size)
        predicted, _, descriptions = self.corrected(volumes, predicted, None)
        if zero_without_path or descriptions is not None:
            return self.zero_without_path(volumes, predicted, descriptions)
        return predicted

    def zero_without_path(self, volumes, predicted, descriptions=None):
        """``predicted`` with exact zeros along the axes where a volume has no conducting path (none of its
        conducting voxels is in a cluster joining the two faces; ``descriptions`` from ``domain.describe_many``)."""
        if descriptions is None:
            descriptions = self.describe(volumes)
        predicted[domain_lib.without_path(descriptions, self.axes)] = 0.0
        return predicted

    def predict(self, volumes, batch_size=16, max_error=None, zero_without_path=False, capped=True):
        """Predictions with how far to trust them: a ``Prediction`` of values, uncertainty (one calibrated
        standard deviation per value, 0 where solved; None for a model without one), the source of each value
        ('model' or 'solver') and, per volume, the reasons it lies outside the model's training domain.

        ``max_error`` REL: where a value's relative uncertainty exceeds REL, the model states none, or the volume
        lies outside the training domain, ``physics.solve`` answers instead. Axes without a conducting path are
        exact zeros with no uncertainty (from the solver's cluster labels), from ``--max-error``,
        ``zero_without_path`` or, for a model with an error model, correction or training domain, always: its
        descriptors, computed anyway, say where the network alone would state a small positive value. Without
        ``capped`` the descriptors leave out the capped junctions and the correction the members that read them
        (the windows of ``whole_volume``)."""
        volumes = self.binary(volumes)
        values, served = self._run(volumes, batch_size)
        values = network = values.astype(np.float64)  # the solver's values go in as they are
        wanted = self.domain or self.error_model or self.correction or max_error is not None or zero_without_path
        descriptions = self.describe(volumes, capped) if wanted else None
        values, served, descriptions = self.corrected(volumes, values, served, descriptions)
        flags = [domain_lib.outside(d, self.domain) for d in descriptions] if self.domain else [[] for _ in volumes]
        uncertainty = self.stated_uncertainty(volumes, values, served, descriptions, network, flags)
        source = np.full(values.shape, "model", dtype=object)
        if descriptions is not None:
            no_path = domain_lib.without_path(descriptions, self.axes)
            values[no_path], source[no_path] = 0.0, "solver"
            if uncertainty is not None:
                uncertainty = np.where(no_path, 0.0, uncertainty)
        if max_error is not None:
            for i, volume in enumerate(volumes):
                solve = [j for j in range(len(self.axes)) if not no_path[i, j] and (
                    flags[i] or uncertainty is None or uncertainty[i, j] > max_error * values[i, j])]
                if solve:
                    for j, result in zip(solve, physics.solve(volume, axes=[self.axes[j] for j in solve])):
                        values[i, j], source[i, j] = result.relative_conductivity, "solver"
                        if uncertainty is not None:
                            uncertainty[i, j] = 0.0
        return Prediction(values, uncertainty, source, flags)


class Prediction(object):
    """What ``Predictor.predict`` returns: ``values`` and ``uncertainty`` (N, axes; uncertainty None when the
    model states none), ``source`` (N, axes of 'model' / 'solver'), ``flags`` (per volume, a list of reasons)."""

    def __init__(self, values, uncertainty, source, flags):
        self.values, self.uncertainty, self.source, self.flags = values, uncertainty, source, flags

    def interval(self, i):
        """The ~90 % interval (Z90 standard deviations, clipped at 0) of each value of volume ``i``, or None."""
        if self.uncertainty is None:
            return None
        half = Z90 * self.uncertainty[i]
        return [[max(0.0, float(v - h)), float(v + h)] for v, h in zip(self.values[i], half)]


def build_parser():

    parser = argparse.ArgumentParser(
        prog="python -m conductivity_tf.predict",
        description="Predict the relative effective conductivity sigma_eff/sigma_0 of voxel volumes with a trained "
                    "model (default: the pretrained model shipped with the package).")
    parser.add_argument("volumes", nargs="+", metavar="VOLUME", help=".npy, .tif/.tiff or raw binary")
    parser.add_argument("--model", help="a run directory or its saved_model/ (default: pretrained)")
    parser.add_argument("--batch-size", type=int, default=16, help="volumes per batch")
    parser.add_argument("--json", action="store_true", help="one JSON object per volume and line")
    parser.add_argument("--zero-without-path", action="store_true", help=ZERO_WITHOUT_PATH_HELP)
    parser.add_argument("--precision", default="auto", choices=PRECISIONS, help=PRECISION_HELP)
    parser.add_argument("--map", metavar="OUT",
                        help="volumes larger than the model's cube: write the local conductivity field (cells x 3 "
                             "axes) to OUT (.npy or .tif; with several volumes, each volume's name is added) and "
                             "slices of it to OUT's .png")
    parser.add_argument("--cell", type=int, help="volumes larger than the model's cube: cells of at most this many "
                                                 "voxels a side (up to the model's cube), each labelled by the "
                                                 "window centred on it (default: the model's cube, windows side by "
                                                 "side)")
    parser.add_argument("--exact-windows", action="store_true",
                        help="volumes larger than the model's cube: label every window with the physics solver "
                             "instead of the model (the combination's own error, as a reference)")
    parser.add_argument("--workers", type=int, help="processes for --exact-windows (default: every core)")
    parser.add_argument("--detours", nargs="?", const="fine", choices=whole_volume.DETOURS,
                        help="volumes larger than the model's cube: how to correct the whole for the current that "
                             "leaves a window and comes back, which each window's insulating sides cut: 'coarse' "
                             "(the default: estimated on the volume's cells of 8^3 voxels joined through their "
                             "faces, about a third more time), 'fine' (--detours alone: two proxies on cells of 4^3 "
                             "voxels, three to six times the windows' time; for poorly connected phases) or 'off'")
    parser.add_argument("--devices", help="volumes larger than the model's cube: spread the windows over these "
                                          "devices with MirroredStrategy, e.g. /gpu:0,/gpu:1 (or /cpu:0,/cpu:1)")
    parser.add_argument("--max-error", type=float, metavar="REL",
                        help="where a predicted value's relative uncertainty exceeds REL (e.g. 0.05), the model "
                             "states none, or the volume lies outside the model's training domain, the physics "
                             "solver answers instead; axes without a conducting path are exact zeros")
    add_volume_arguments(parser)
    return parser


def main(argv=None):

    args = build_parser().parse_args(argv)
    if args.batch_size < 1:
        raise UserError("--batch-size {} must be at least 1".format(args.batch_size))
    if args.max_error is not None and not args.max_error > 0:
        raise UserError("--max-error {} must be a positive relative error, e.g. 0.05".format(args.max_error))
    # every volume is opened (and a cube read and checked) before the model loads: a bad file fails fast
    sources = [(path, VolumeSource.of(load_volume_from_args(path, args).array, path) if args.otsu else
                open_volume(path, args)) for path in args.volumes]
    cubes = {}
    known = model_size(args.model, required=False)  # the model's cube from its run's configuration, if it has one
    for path, source in sources:
        if source.shape == (known,) * 3 or (known is None and len(set(source.shape)) == 1 and source.shape[0] <= 256):
            cubes[path] = source.read(0, source.shape[0])  # a cube the model may take as it is
            Predictor.check_binary(cubes[path], path)
    if args.devices and (args.exact_windows or args.max_error is not None):
        raise UserError("--devices spreads the model's windows over devices; it goes without --exact-windows and "
                        "--max-error")
    needs_predictor = not (args.exact_windows or args.devices)
    predictor = None
    size = known
    if size is None:  # no run configuration says the model's cube: the SavedModel does
        predictor = Predictor(args.model, args.precision) if needs_predictor else None
        size = predictor.size if predictor else model_size(args.model)
    whole = [(path, source) for path, source in sources if source.shape != (size,) * 3]
    for path, source in whole:  # checked before any work: the first slab binary, every side at least the cube
        whole_volume.check_binary(source.read(0, min(source.shape[0], size)), path)
        try:
            whole_volume.layout(source.shape, size, args.cell)
        except UserError as err:
            raise UserError("{}: {}".format(path, err))
    if (args.map or args.cell or args.devices or args.exact_windows or args.detours) and not whole:
        raise UserError("--map, --cell, --devices, --exact-windows and --detours are for volumes larger than the "
                        "model's {}^3 cube".format(size))
    if predictor is None and needs_predictor:  # every input checked: now the model (TensorFlow) is loaded
        predictor = Predictor(args.model, args.precision)
    if predictor is not None and predictor.note:
        print("conductivity_tf: note: " + predictor.note, file=sys.stderr, flush=True)
    volumes = [cubes[path] for path, source in sources if source.shape == (size,) * 3]
    names = [path for path, source in sources if source.shape == (size,) * 3]
    for start in range(0, len(volumes), args.batch_size):
        chunk = np.stack(volumes[start:start + args.batch_size])
        t0 = time.perf_counter()
        result = predictor.predict(chunk, args.batch_size, max_error=args.max_error,
                                   zero_without_path=args.zero_without_path)
        seconds = (time.perf_counter() - t0) / len(chunk)
        for i, (path, volume) in enumerate(zip(names[start:], chunk)):
            porosity = float(volume.mean())
            values = [float(v) for v in result.values[i]]
            uncertainty = None if result.uncertainty is None else [float(u) for u in result.uncertainty[i]]
            if args.json:
                print(json.dumps({"file": path, "relative_conductivity": values, "uncertainty": uncertainty,
                                  "interval_90": result.interval(i), "source": list(result.source[i]),
                                  "outside_training_domain": result.flags[i], "porosity": porosity,
                                  "seconds": seconds}), flush=True)
                continue
            parts = []
            for j, (axis, value) in enumerate(zip(predictor.axes, values)):
                stated = "" if uncertainty is None or result.source[i][j] == "solver" else \
                    " +- {:.4f}".format(Z90 * uncertainty[j])
                parts.append("axis {}: {:.4f}{}{}".format(axis, value, stated, " (solver)" if
                                                          result.source[i][j] == "solver" else ""))
            print("{}  porosity {:.4f}  sigma_eff/sigma_0 {}".format(path, porosity, "  ".join(parts)), flush=True)
            for reason in result.flags[i]:
                print("  outside the training domain: {}".format(reason), flush=True)
    for path, source in whole:
        predict_whole(args, predictor, size, path, source, several=len(whole) > 1)
    return 0


def replicated_labeller(model_dir, devices):
    """A whole-volume labeller whose windows are spread over ``devices`` (['/gpu:0', '/gpu:1'], or logical CPUs
    ['/cpu:0', '/cpu:1']) by ``strategies.make_strategy``'s MirroredStrategy: Keras's predict splits every batch
    of windows between the replicas. The run's network is rebuilt from its Keras weights, in float32."""
    model_dir = model_dir or PRETRAINED
    config_path, weights = os.path.join(model_dir, "config.yaml"), os.path.join(model_dir, "model.weights.h5")
    if not (os.path.isfile(config_path) and os.path.isfile(weights)):
        raise UserError("--devices rebuilds the model from its run directory's config.yaml and model.weights.h5, "
                        "which {} does not have".format(model_dir))
    kind = "cpu" if all(d.lower().startswith("/cpu:") for d in devices) else "gpu"
    hardware = strategies.make_strategy(config_lib.HardwareConfig(kind=kind, devices=list(devices)))
    with hardware.strategy.scope():
        served, scale = serving.keras_model(config_path, weights)
    inputs = config_lib.load_config(config_path).model.inputs

    trained_on, error_model = domain_lib.load(model_dir), uncertainty_lib.load(model_dir)
    correction = correction_lib.load(model_dir)

    def labeller(chunk):
        raw = served.predict(network_input(chunk, inputs), batch_size=len(chunk), verbose=0)
        mean, spread = members_summary(np, raw)
        spread = None if spread is None else spread * scale
        descriptions = domain_lib.describe_many(chunk, capped=False)   # as whole_volume.model_labeller's
        network = mean
        if correction is not None:   # as Predictor.corrected
            factor = correction_lib.factor(correction, descriptions, mean, [0, 1, 2])
            mean, spread = mean * factor, None if spread is None else spread * factor
        flags = [domain_lib.outside(d, trained_on) for d in descriptions] if trained_on else None
        # as Predictor states it: the run's error model where it has one, else the ensemble's calibrated spread
        uncertainty = spread if error_model is None else uncertainty_lib.evaluate(
            error_model, descriptions, mean, [0, 1, 2], spread, network, flags)
        # and as the one-device labeller: exact zeros along the axes a window has no conducting path
        without_path = domain_lib.without_path(descriptions)
        mean = np.where(without_path, 0.0, mean)
        if uncertainty is not None:
            uncertainty = np.where(without_path, 0.0, uncertainty)
        return mean, uncertainty, without_path, flags

    labeller.description = hardware.description
    return labeller


def model_size(model_dir, required=True):
    """The cube edge of a run's model, from its configuration (without loading the model); None when the run has
    no configuration and ``required`` is false."""
    config_path = os.path.join(model_dir or PRETRAINED, "config.yaml")
    if not os.path.isfile(config_path):
        if not required:
            return None
        raise UserError("--exact-windows takes its window size from the model's run directory; {} has no "
                        "config.yaml".format(model_dir or PRETRAINED))
    with open(config_path) as handle:
        return int(yaml.safe_load(handle)["data"]["size"])


def _map_path(out, path, several):
    stem, suffix = os.path.splitext(out)
    if suffix.lower() not in (".npy",) + TIFF_SUFFIXES:
        raise UserError("--map {} must end in .npy or .tif".format(out))
    if several:
        stem = "{}-{}".format(stem, os.path.splitext(os.path.basename(path))[0])
    return stem + suffix, stem + ".png"


def predict_whole(args, predictor, size, path, source, several=False):
    """One volume larger than the model's cube: windows labelled by the model (or the solver) and combined."""
    t0 = time.perf_counter()
    if args.exact_windows:
        labeller = whole_volume.exact_labeller(args.workers)
    elif args.devices:
        labeller = replicated_labeller(args.model, [d.strip() for d in args.devices.split(",") if d.strip()])
    else:
        labeller = whole_volume.model_labeller(predictor, args.max_error)
    plan = whole_volume.layout(source.shape, size, args.cell)
    with tqdm(total=plan.windows, desc="windows of {}".format(os.path.basename(path)), unit="window",
              disable=args.json or not sys.stderr.isatty(), file=sys.stderr) as bar:
        try:
            result = whole_volume.predict_volume(source, labeller, size, args.cell, args.batch_size, bar.update,
                                                 detours=args.detours or whole_volume.DEFAULT_DETOURS)
        finally:
            getattr(labeller, "close", lambda: None)()
    seconds = time.perf_counter() - t0
    maps = None
    if args.map:
        maps = _map_path(args.map, path, several)
        save_volume(maps[0], result.field.astype(np.float32))
        plots.conductivity_map_plot(maps[1], result.field, result.plan.sizes,
                                    title="{}: local σ/σ₀ of {} cells".format(os.path.basename(path),
                                                                          "x".join(map(str, result.plan.cells))))
    source_name = "solver windows" if args.exact_windows else "model windows"
    if args.json:
        print(json.dumps({"file": path, "relative_conductivity": result.values, "uncertainty": result.uncertainty,
                          "interval_90": result.interval(Z90), "source": [source_name] * 3,
                          "outside_training_domain": result.outside_domain, "porosity": result.porosity,
                          "seconds": seconds,
                          "shape": list(source.shape), "cells": list(result.plan.cells),
                          "windows": result.plan.windows, "solved_fraction": result.solved_fraction,
                          "windows_without_path": result.without_path, "cautions": result.cautions,
                          "detours": result.detours, "detour_factors": result.detour_factors,
                          "detour_proxies": result.detour_proxies,
                          "map": list(maps) if maps else None}), flush=True)
        return
    parts = []
    for axis, value in enumerate(result.values):
        stated = "" if result.uncertainty is None else " +- {:.4f}".format(Z90 * result.uncertainty[axis])
        parts.append("axis {}: {:.4f}{}".format(axis, value, stated))
    print("{}  {}  porosity {:.4f}  sigma_eff/sigma_0 {}  ({} windows of {}^3 by the {}, {:.1f} s)".format(
        path, "x".join(map(str, source.shape)), result.porosity, "  ".join(parts), result.plan.windows, size,
        "solver" if args.exact_windows else "model", seconds), flush=True)
    if result.detour_factors is not None:
        print("  detours: the windows' combination raised {} along axes 0 / 1 / 2 for the current that leaves a "
              "window and comes back (from the {} proxy, --detours {})".format(
                  " / ".join("x{:.3f}".format(f) for f in result.detour_factors),
                  " / ".join(result.detour_proxies), result.detours), flush=True)
    for note in result.cautions:
        print("  caution, " + note, flush=True)
    for reason in result.outside_domain:
        print("  outside the training domain: {}".format(reason), flush=True)
    if maps:
        print("  local conductivity: {} and {}".format(*maps), flush=True)


def cli():
    run_cli(main)


if __name__ == "__main__":
    cli()
