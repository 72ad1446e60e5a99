"""``python -m conductivity_tf.dataset build | merge | combine | import | info | verify``."""

import argparse
import os

from conductivity_tf.dataset.build import import_volumes, merge_parts, run_build
from conductivity_tf.dataset.manifest import combine, load_manifest, make_manifest, write_manifest
from conductivity_tf.dataset.reader import verify
from conductivity_tf.dataset.spec import load_build_spec
from conductivity_tf.errors import UserError, run_cli
from conductivity_tf.volumes import add_volume_arguments


def _parse_shard(text):
    try:
        i, n = (int(x) for x in text.split("/"))
        if not 0 <= i < n:
            raise ValueError
        return i, n
    except ValueError:
        raise UserError("--shard {!r} is not I/N with 0 <= I < N, e.g. --shard 0/4".format(text))


def build_parser():
    parser = argparse.ArgumentParser(prog="python -m conductivity_tf.dataset",
                                     description="Datasets of labelled microstructures (TFRecord shards + manifest).")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    b = sub.add_parser("build", help="generate and label samples into TFRecord shards",
                       description="Generate microstructures, label them on all three axes with the solver and "
                                   "write TFRecord shards. Re-running the same command finishes an interrupted build.")
    b.add_argument("--out", required=True, help="dataset directory")
    b.add_argument("--samples", type=int, help="number of samples (default 4096)")
    b.add_argument("--size", type=int, help="cube edge in voxels (default 32)")
    b.add_argument("--seed", type=int, help="dataset seed (default 0)")
    b.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="worker processes (default: all cores)")
    b.add_argument("--shard", help="I/N: build only this job's share of the shards (SLURM job arrays); "
                                   "then 'dataset merge'")
    b.add_argument("--config", help="YAML build specification (families, porosity ranges, parameters)")
    b.add_argument("--quiet", action="store_true", help="no progress bar")
    b.add_argument("overrides", nargs="*", metavar="key=value",
                   help="specification overrides, e.g. shard_size=128 families.fibres.weight=0")
    m = sub.add_parser("merge", help="write manifest.json once every --shard job has finished")
    m.add_argument("out", help="dataset directory the jobs wrote to")
    c = sub.add_parser("combine", help="one dataset made of several (no copies), e.g. to train on all of them",
                       description="Write a manifest in --out that lists the shards of the given datasets where they "
                                   "are (relative paths: keep the directories side by side); every split is the "
                                   "union of theirs. Train, evaluate or calibrate on --out as on one dataset.")
    c.add_argument("datasets", nargs="+", metavar="DIR")
    c.add_argument("--out", required=True, help="directory of the combined dataset's manifest")
    i = sub.add_parser("import", help="cut tomograms into cubes and label them")
    i.add_argument("--out", required=True)
    i.add_argument("volumes", nargs="+", metavar="VOLUME")
    i.add_argument("--tile", type=int, required=True, help="cube edge in voxels")
    i.add_argument("--stride", type=int, help="distance between cube origins (default: --tile)")
    i.add_argument("--seed", type=int, default=0, help="seed of the split assignment")
    i.add_argument("--quiet", action="store_true")
    add_volume_arguments(i)
    n = sub.add_parser("info", help="summarise a dataset")
    n.add_argument("path")
    v = sub.add_parser("verify", help="check checksums, record counts and labels")
    v.add_argument("path")
    return parser


def main(argv=None):
    parser = build_parser()
    # argparse cannot intermix a sub-command's positionals with its options: key=value overrides that come
    # between options are picked up here
    args, extra = parser.parse_known_args(argv)
    if extra:
        if args.command != "build" or any(e.startswith("-") or "=" not in e for e in extra):
            parser.error("unrecognized arguments: {}".format(" ".join(extra)))
        args.overrides = list(args.overrides) + extra
    if args.command == "build":
        spec = load_build_spec(args.config, args.overrides, samples=args.samples, size=args.size, seed=args.seed)
        if args.workers < 1:
            raise UserError("--workers {} must be at least 1".format(args.workers))
        shard = _parse_shard(args.shard) if args.shard else None
        records = run_build(spec, args.out, workers=args.workers, shard=shard, progress=not args.quiet)
        if shard is None:
            write_manifest(args.out, make_manifest(spec, records))
            print("wrote {} samples in {} shards to {}".format(sum(r["records"] for r in records), len(records),
                                                                args.out))
        else:
            print("shard job {}/{} done: {} shards in {}; run 'python -m conductivity_tf.dataset merge {}' when every "
                  "job has finished".format(shard[0], shard[1], len(records), args.out, args.out))
        return 0
    if args.command == "merge":
        manifest = merge_parts(args.out)
        print("merged {} shards ({} samples) into {}".format(len(manifest["shards"]), manifest["samples"],
                                                               os.path.join(args.out, "manifest.json")))
        return 0
    if args.command == "combine":
        manifest = combine(args.datasets, args.out)
        print("combined {} datasets into {}: {} samples (train {}, validation {}, test {})".format(
            len(args.datasets), args.out, manifest["samples"], manifest["counts"]["train"],
            manifest["counts"]["validation"], manifest["counts"]["test"]))
        return 0
    if args.command == "import":
        manifest = import_volumes(args.volumes, args.out, args.tile, args.stride, load_args=args, seed=args.seed,
                                  progress=not args.quiet)
        print("wrote {} tiles to {}".format(manifest["samples"], args.out))
        return 0
    if args.command == "info":
        manifest = load_manifest(args.path)
        stats = manifest["label_statistics"]
        print("dataset {}: {} samples of {}^3 (train {}, validation {}, test {}) in {} shards, {:.1f} MB".format(
            manifest["path"], manifest["samples"], manifest["sample_size"], manifest["counts"]["train"],
            manifest["counts"]["validation"], manifest["counts"]["test"], len(manifest["shards"]),
            sum(s["bytes"] for s in manifest["shards"]) / 1e6))
        if stats:
            print("  sigma_eff/sigma_0 mean {} (std {}), porosity mean {:.3f}, percolating {:.1%}".format(
                [round(x, 4) for x in stats["relative_conductivity_mean"]],
                [round(x, 4) for x in stats["relative_conductivity_std"]], stats["porosity_mean"],
                stats["percolating_fraction"]))
            print("  families: " + ", ".join("{} {}".format(k, v) for k, v in stats["families"].items()))
        return 0
    if args.command == "verify":
        problems = verify(args.path)
        for problem in problems:
            print("FAILED: " + problem)
        if problems:
            return 1
        print("OK: {} verified (checksums, record counts, labels)".format(args.path))
        return 0
    parser.print_help()
    return 2


def cli():
    run_cli(main)
