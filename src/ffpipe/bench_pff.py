"""``python -m ffpipe.bench_pff`` (``make bench-pff``): PFF on 2 ranks against sequential FF.

Runs, one after another, each its own process tree and run directory (``--out``):

1. sequential FF on one thread, and on two threads (the same machine's fair baseline);
   every process of the 2-core comparison is pinned to its own core(s) (``dist.pin_cpu=true``);
2. All-Layers PFF and Single-Layer PFF on 2 single-thread ranks (the paper's measure: N compute
   units vs one), same config (``experiment=mnist10k`` unless overridden);
3. the backprop MLP through ``torch.distributed.pipelining`` with GPipe and with 1F1B on the same 2
   ranks (bubble fractions from the same telemetry; ``--bp-epochs`` epochs);
4. the paper's 4x2000 network on 4 ranks: All-Layers PFF (4 chapters) and DFF (1 epoch) on
   MNIST-sized synthetic data (60,000 28x28 samples), for the bytes each sends per epoch, read from
   the ranks' counters.

Prints a table, then as its LAST line one JSON object with ``speedup_all_layers``,
``speedup_single_layer``, ``speedup_all_layers_same_machine``, ``acc_*``, ``bytes_*_paper_net``
and ``bubble_*``. Compare times as ratios within one run of this script.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from ffpipe.sweep import collect, launch

BASE = ["experiment=mnist10k", "train.eval_every=0", "checkpoint.every=0", "dist.pin_cpu=true"]
PAPER_NET = ["model.widths=[2000,2000,2000,2000]", "train.batch_size=64", "data=synthetic",
             "data.image_shape=[1,28,28]", "data.num_test=1000", "train.eval_every=0", "checkpoint.every=0"]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m ffpipe.bench_pff", description=__doc__.splitlines()[0])
    p.add_argument("--out", default="bench_results")
    p.add_argument("--bp-epochs", type=int, default=5, help="epochs of the GPipe / 1F1B runs")
    p.add_argument("--skip-paper-net", action="store_true", help="skip the 4-rank 4x2000 bytes runs")
    p.add_argument("overrides", nargs="*", help="extra Hydra overrides for the 2-rank comparison runs")
    args = p.parse_args(argv)
    root = Path(args.out) / ("pff_" + time.strftime("%Y-%m-%d_%H-%M-%S"))
    cfg = [*BASE, *args.overrides]
    runs = {
        "sequential_1thread": launch(cfg, root / "sequential_1thread", 1, threads=1),
        "sequential_2threads": launch(cfg, root / "sequential_2threads", 1, threads=2),
        "all_layers_2ranks": launch([*cfg, "parallel=pff_all_layers"], root / "all_layers_2ranks", 2),
        "single_layer_2ranks": launch([*cfg, "parallel=pff_single_layer"], root / "single_layer_2ranks", 2),
    }
    bp = [*cfg, "parallel=backprop_pipeline", "optim.lr=0.001", f"train.epochs={args.bp_epochs}",
          f"train.chapters={args.bp_epochs}", "parallel.microbatches=5"]
    runs["gpipe_2ranks"] = launch([*bp, "parallel.schedule=gpipe"], root / "gpipe_2ranks", 2)
    runs["1f1b_2ranks"] = launch([*bp, "parallel.schedule=1f1b"], root / "1f1b_2ranks", 2)
    if not args.skip_paper_net:
        runs["paper_net_all_layers_4ranks"] = launch(
            [*PAPER_NET, "parallel=pff_all_layers", "data.num_train=1000", "train.epochs=4", "train.chapters=4"],
            root / "paper_net_all_layers_4ranks", 4)
        runs["paper_net_all_layers_weights_only_4ranks"] = launch(
            [*PAPER_NET, "parallel=pff_all_layers", "parallel.send_optimizer_state=false", "data.num_train=1000",
             "train.epochs=4", "train.chapters=4"], root / "paper_net_all_layers_weights_only_4ranks", 4)
        runs["paper_net_dff_4ranks"] = launch(
            [*PAPER_NET, "parallel=dff", "data.num_train=60000", "train.epochs=1", "train.chapters=1"],
            root / "paper_net_dff_4ranks", 4)

    print(f"\nMNIST10k, {runs['sequential_1thread']['epochs']} epochs, widths "
          f"{runs['sequential_1thread']['model']['widths']}; torch {runs['sequential_1thread']['torch']}")
    print("| run | ranks x threads | test % | train s | utilization per rank | bubble per rank | MiB sent |")
    print("|---|---|---|---|---|---|---|")
    for name, s in runs.items():
        ranks = s.get("ranks", [])
        util = " / ".join(f"{r['utilization']:.0%}" for r in ranks)
        bubble = " / ".join(f"{r['bubble_fraction']:.0%}" for r in ranks)
        print(f"| {name} | {s['world_size']} x {s['threads']} | {100 * s['test_accuracy']:.2f} | "
              f"{s['train_seconds']:.1f} | {util} | {bubble} | {sum(r['bytes_sent'] for r in ranks) / 2**20:.1f} |")

    print(file=sys.stderr)
    collect(root)  # results.md / results.csv / plots.png over every run of the bench
    seq1, seq2 = runs["sequential_1thread"], runs["sequential_2threads"]
    al, sl = runs["all_layers_2ranks"], runs["single_layer_2ranks"]

    def per_epoch(s, kind):
        if s is None:
            return None
        return sum(r["bytes_sent_by_kind"].get(kind, 0) for r in s["ranks"]) / s["epochs"]

    result = {
        "speedup_all_layers": seq1["train_seconds"] / al["train_seconds"],
        "speedup_single_layer": seq1["train_seconds"] / sl["train_seconds"],
        "speedup_all_layers_same_machine": seq2["train_seconds"] / al["train_seconds"],
        "acc_sequential": seq1["test_accuracy"],
        "acc_sequential_2threads": seq2["test_accuracy"],
        "acc_all_layers": al["test_accuracy"],
        "acc_single_layer": sl["test_accuracy"],
        "bytes_pff_per_epoch_paper_net": per_epoch(runs.get("paper_net_all_layers_4ranks"), "weights"),
        "bytes_pff_weights_only_per_epoch_paper_net": per_epoch(runs.get("paper_net_all_layers_weights_only_4ranks"),
                                                                "weights"),
        "bytes_dff_per_epoch_paper_net": per_epoch(runs.get("paper_net_dff_4ranks"), "activations"),
        "bytes_dff_weights_per_epoch_paper_net": per_epoch(runs.get("paper_net_dff_4ranks"), "weights"),
        "bubble_pff": al["mean_bubble_fraction"],
        "bubble_pff_single_layer": sl["mean_bubble_fraction"],
        "bubble_gpipe": runs["gpipe_2ranks"]["mean_bubble_fraction"],
        "bubble_1f1b": runs["1f1b_2ranks"]["mean_bubble_fraction"],
        "utilization_pff": al["mean_utilization"],
        "seconds": {k: v["train_seconds"] for k, v in runs.items()},
        "results_dir": str(root),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    sys.exit(main())
