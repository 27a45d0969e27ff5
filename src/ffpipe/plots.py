"""Training curves from a run's ``metrics.jsonl`` (one JSON object per chapter), for runs without W&B."""

from __future__ import annotations

import json
import logging
from pathlib import Path

log = logging.getLogger(__name__)


def plot_metrics(metrics_path: Path, out_path: Path, final_test_accuracy: float | None = None) -> Path | None:
    """Write per-trainee losses, FF goodness gaps and test accuracy per chapter to ``out_path``."""
    try:
        import matplotlib  # noqa: PLC0415

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # noqa: PLC0415
    except Exception as e:  # plotting is a convenience; never fail a finished run over it
        log.warning("no training curves: matplotlib unavailable (%s)", e)
        return None
    rows = [json.loads(line) for line in Path(metrics_path).read_text().splitlines() if line.strip()]
    if not rows:
        return None
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    names = sorted({k.rsplit("/", 1)[0] for r in rows for k in r if "/" in k})
    color = {name: f"C{i}" for i, name in enumerate(names)}  # one colour per trainee in every panel
    panels = [("/loss", "loss", axes[0]), ("/gap", "goodness gap (pos - neg)", axes[1])]
    for suffix, title, ax in panels:
        for key in sorted({k for r in rows for k in r if k.endswith(suffix)}):
            pts = [(r["chapter"], r[key]) for r in rows if key in r]
            name = key.removesuffix(suffix)
            ax.plot(*zip(*pts), label=name, color=color[name])
        ax.set(title=title, xlabel="chapter")
        if ax.lines:
            ax.legend(fontsize="small")
    acc = [(r["chapter"], r["test_accuracy"]) for r in rows if "test_accuracy" in r]
    if final_test_accuracy is not None:
        acc.append((rows[-1]["chapter"], final_test_accuracy))
    if acc:
        axes[2].plot(*zip(*acc), marker="o")
    axes[2].set(title="test accuracy", xlabel="chapter")
    fig.tight_layout()
    fig.savefig(out_path, dpi=90)
    plt.close(fig)
    return Path(out_path)
