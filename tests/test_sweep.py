"""Sweep collection: summaries in, tables and plots out."""

import csv
import json

from ffpipe.sweep import collect


def test_collect_tabulates_speedup_and_efficiency(tmp_path):
    points = {"sequential_w1": ("sequential", 1, 100.0), "pff_all_layers_w2": ("pff_all_layers", 2, 52.0),
              "pff_all_layers_w4": ("pff_all_layers", 4, 30.0)}
    for name, (parallel, world, seconds) in points.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "summary.json").write_text(json.dumps({
            "parallel": parallel, "world_size": world, "train_seconds": seconds, "test_accuracy": 0.98,
            "mean_bubble_fraction": 0.05, "bytes_sent_per_epoch": 1e6 * world, "threads": 1}))
    rows = {r["name"]: r for r in collect(tmp_path)}
    assert rows["pff_all_layers_w2"]["speedup"] == 100.0 / 52.0
    assert rows["pff_all_layers_w4"]["efficiency"] == 100.0 / 30.0 / 4
    with open(tmp_path / "results.csv") as f:
        assert len(list(csv.DictReader(f))) == 3
    assert "pff_all_layers_w4" in (tmp_path / "results.md").read_text()
    assert (tmp_path / "plots.png").stat().st_size > 0
