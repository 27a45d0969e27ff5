"""Benchmark sweeps: one ``torchrun`` per point, each in its own run directory, then one table.

``python -m ffpipe.sweep --schedules pff_all_layers,pff_single_layer --world-sizes 1,2 [overrides]``
runs every (schedule, world size) point (world size 1 runs ``parallel=sequential``, the baseline of
the speedups) and then :func:`collect` turns the ``summary.json`` files into ``results.md``,
``results.csv`` and ``plots.png`` (speedup and parallel efficiency vs world size per schedule,
accuracy, bubble fraction and bytes per epoch per point). ``python -m ffpipe.sweep --collect DIR``
re-collects a finished sweep. Points run one after another so they never compete for cores.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

COLUMNS = ["name", "parallel", "world_size", "test_accuracy", "train_seconds", "speedup", "efficiency",
           "samples_per_s", "mean_utilization", "mean_bubble_fraction", "bytes_sent_per_epoch", "peak_memory_mb"]


def launch(overrides: list[str], out_dir: Path, nproc: int = 1, threads: int | None = 1,
           check: bool = True) -> dict | None:
    """Train one point (torchrun with ``nproc`` ranks, or a plain process for 1) and return its summary."""
    out_dir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "FFPIPE_OUTPUT_DIR": str(out_dir.parent), "FFPIPE_RUN_STAMP": out_dir.name}
    args = ["train.progress=false", *overrides] + ([f"threads={threads}"] if threads else [])
    if nproc == 1:
        cmd = [sys.executable, "-m", "ffpipe.train", *args]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc),
               "-m", "ffpipe.train", *args]
    print(f"sweep: {out_dir.name}: {' '.join(cmd[2:])}", file=sys.stderr, flush=True)
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    (out_dir / "launcher.log").write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr[-4000:])
        if check:
            raise SystemExit(f"sweep: {out_dir.name} failed (exit {proc.returncode}); see {out_dir / 'launcher.log'}")
        return None
    return json.loads((out_dir / "summary.json").read_text())


def _workload(s: dict) -> tuple:
    """What must match for two runs' times to be comparable."""
    return (s.get("dataset"), s.get("num_train"), s.get("epochs"), str((s.get("model") or {}).get("widths")),
            s.get("batch_size"))


def collect(root: Path) -> list[dict]:
    """Every ``summary.json`` under ``root`` as a row. Speedup and efficiency are against the
    single-thread sequential run of the same workload (dataset, size, epochs, widths, batch), if any."""
    rows, bases = [], {}
    for path in sorted(Path(root).glob("*/summary.json")):
        s = json.loads(path.read_text())
        row = {"name": path.parent.name, **{k: s.get(k) for k in COLUMNS if k in s},
               "threads": s.get("threads"), "workload": _workload(s)}
        rows.append(row)
        if row["parallel"] == "sequential" and row["world_size"] == 1:
            best = bases.get(row["workload"])
            if best is None or (row["threads"] or 1) < (best["threads"] or 1):
                bases[row["workload"]] = row
    for r in rows:
        base = bases.get(r["workload"])
        if base and r.get("train_seconds"):
            r["speedup"] = base["train_seconds"] / r["train_seconds"]
            r["efficiency"] = r["speedup"] / r["world_size"]
    write_tables(rows, Path(root))
    plot(rows, Path(root) / "plots.png")
    return rows


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "" if v is None else str(v)


def write_tables(rows: list[dict], root: Path) -> None:
    with open(root / "results.csv", "w", newline="") as f:
        w = csv.DictWriter(f, COLUMNS, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(_fmt(r.get(c)) for c in COLUMNS) + " |" for r in rows]
    (root / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    fig, ax = plt.subplots(1, 5, figsize=(25, 4.5))
    by = {}
    for r in rows:
        by.setdefault(r["parallel"], []).append(r)
    for name, rs in by.items():
        rs = sorted(rs, key=lambda r: r["world_size"])
        rs = [r for r in rs if r.get("speedup")]
        if rs:
            ax[0].plot([r["world_size"] for r in rs], [r["speedup"] for r in rs], "o-", label=name)
            ax[1].plot([r["world_size"] for r in rs], [r["efficiency"] for r in rs], "o-", label=name)
    ax[0].set(title="speedup vs sequential FF (1 rank)", xlabel="world size")
    ax[1].set(title="parallel efficiency", xlabel="world size")
    labels = [r["name"] for r in rows]
    ax[2].bar(labels, [100 * (r.get("test_accuracy") or 0) for r in rows])
    ax[2].set(title="test accuracy %")
    ax[2].set_ylim(min(100 * (r.get("test_accuracy") or 0) for r in rows) - 1, 100)
    ax[3].bar(labels, [r.get("mean_bubble_fraction") or 0 for r in rows])
    ax[3].set(title="mean bubble fraction")
    ax[4].bar(labels, [max(r.get("bytes_sent_per_epoch") or 0, 1) for r in rows])
    ax[4].set(title="bytes sent per epoch (all ranks)", yscale="log")
    for a in ax[2:]:
        a.tick_params(axis="x", labelsize=7, rotation=60)
    for a in ax[:2]:
        if a.lines:
            a.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m ffpipe.sweep", description=__doc__.splitlines()[0])
    p.add_argument("--schedules", default="pff_all_layers,pff_single_layer")
    p.add_argument("--world-sizes", default="1,2", help="1 = sequential FF (the speedup baseline)")
    p.add_argument("--threads", type=int, default=1, help="threads per rank (torch.set_num_threads)")
    p.add_argument("--out", default="sweep_results")
    p.add_argument("--collect", metavar="DIR", help="only re-collect a finished sweep directory")
    p.add_argument("overrides", nargs="*", help="Hydra overrides for every point (e.g. experiment=mnist10k)")
    args = p.parse_args(argv)
    if args.collect:
        collect(Path(args.collect))
        return
    root = Path(args.out) / time.strftime("%Y-%m-%d_%H-%M-%S")
    for n in [int(w) for w in args.world_sizes.split(",")]:
        schedules = ["sequential"] if n == 1 else args.schedules.split(",")
        for sched in schedules:
            launch([*args.overrides, f"parallel={sched}"], root / f"{sched}_w{n}", n, args.threads, check=False)
    collect(root)
    print(f"sweep: results in {root}", file=sys.stderr)


if __name__ == "__main__":
    main()
