"""``python -m ffpipe.bench`` (``make bench-ff``): sequential FF vs backprop on the MNIST10k split.

Each configuration runs as its own ``python -m ffpipe.train`` process, one after another (so the
timings do not compete for cores, and peak memory is per run), and its ``summary.json`` is read
back. Prints a table, then as its LAST line one JSON object for scripts, with at least
``ff_test_accuracy``, ``ff_train_seconds``, ``ff_samples_per_s``, ``bp_test_accuracy``,
``bp_train_seconds`` and ``peak_memory_mb``.

Compare times as ratios within one run of this script: absolute seconds depend on the machine and
on whatever else it is doing.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from ffpipe.sweep import launch

FF_ARGS = ["experiment=mnist10k"]
BP_ARGS = ["experiment=mnist10k", "parallel=backprop", "optim.lr=0.001"]


def row(name: str, split, s: dict) -> str:
    return (f"| {name:<8} | {str(split):>5} | {s['test_accuracy'] * 100:7.2f} | {s['train_accuracy'] * 100:7.2f} | "
            f"{s['train_seconds']:8.1f} | {s['samples_per_s']:9.0f} | {s['peak_memory_mb']:8.0f} |")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m ffpipe.bench", description=__doc__.splitlines()[0])
    p.add_argument("--splits", default="null", help="comma-separated data.split_seed values for FF "
                   "(null = first 8000 train / last 2000 test); backprop runs on the first")
    p.add_argument("--out", default="bench_results", help="where run directories go")
    p.add_argument("--no-backprop", action="store_true", help="skip the backprop baseline")
    p.add_argument("overrides", nargs="*", help="extra Hydra overrides for every run (e.g. train.epochs=10)")
    args = p.parse_args(argv)
    out = Path(args.out) / time.strftime("%Y-%m-%d_%H-%M-%S")
    splits = [s.strip() for s in args.splits.split(",") if s.strip()]

    ff = {}
    for split in splits:
        print(f"bench: FF on split {split} ...", file=sys.stderr, flush=True)
        ff[split] = launch([*FF_ARGS, f"data.split_seed={split}", *args.overrides], out / f"ff_split{split}",
                           threads=None)
    bp = None
    if not args.no_backprop:
        print(f"bench: backprop on split {splits[0]} ...", file=sys.stderr, flush=True)
        bp = launch([*BP_ARGS, f"data.split_seed={splits[0]}", *args.overrides], out / "bp", threads=None)

    first = ff[splits[0]]
    print(f"\nMNIST10k ({first['num_train']} train / {first['num_test']} test), "
          f"{first['epochs']} epochs, batch {first['batch_size']}, widths {first['model']['widths']}, "
          f"device {first['device']}, torch {first['torch']}")
    print("| run      | split | test %  | train % |  train s | samples/s |  peak MB |")
    print("|----------|-------|---------|---------|----------|-----------|----------|")
    for split, s in ff.items():
        print(row("FF", split, s))
    if bp:
        print(row("backprop", splits[0], bp))
        print(f"FF/backprop training time ratio: {first['train_seconds'] / bp['train_seconds']:.2f}x")

    result = {
        "ff_test_accuracy": first["test_accuracy"],
        "ff_train_accuracy": first["train_accuracy"],
        "ff_train_seconds": first["train_seconds"],
        "ff_samples_per_s": first["samples_per_s"],
        "ff_peak_memory_mb": first["peak_memory_mb"],
        "ff_splits": {k: v["test_accuracy"] for k, v in ff.items()},
        "bp_test_accuracy": bp["test_accuracy"] if bp else None,
        "bp_train_seconds": bp["train_seconds"] if bp else None,
        "bp_samples_per_s": bp["samples_per_s"] if bp else None,
        "bp_peak_memory_mb": bp["peak_memory_mb"] if bp else None,
        "peak_memory_mb": max([s["peak_memory_mb"] for s in ff.values()] + ([bp["peak_memory_mb"]] if bp else [])),
        "epochs": first["epochs"],
        "device": first["device"],
        "results_dir": str(out),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
