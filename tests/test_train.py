"""The entry points end to end: summary, checkpoints, resume, evaluate, W&B, and clean user errors."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ffpipe import checkpoint
from ffpipe.errors import CheckpointError, ConfigError, NonFiniteLossError
from ffpipe.evaluate import evaluate
from ffpipe.train import run

SUMMARY_KEYS = {"test_accuracy", "train_accuracy", "train_seconds", "epochs", "chapters", "dataset",
                "parallel", "negatives", "classifier", "samples_per_s", "peak_memory_mb"}


def cli(module, *args, env=None, cwd=None):
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True,
                          env=full_env, cwd=cwd, timeout=600)


def test_train_cli_writes_summary_and_checkpoint(tmp_path):
    out = cli("ffpipe.train", "experiment=smoke", "train.progress=false", env={"FFPIPE_OUTPUT_DIR": str(tmp_path)})
    assert out.returncode == 0, out.stderr
    run_dir = Path(out.stdout.strip().splitlines()[-1].removeprefix("run directory: "))
    summary = json.loads((run_dir / "summary.json").read_text())
    assert SUMMARY_KEYS <= set(summary)
    assert 0.5 < summary["test_accuracy"] <= 1 and 0 <= summary["train_accuracy"] <= 1
    assert (summary["dataset"], summary["parallel"], summary["negatives"], summary["classifier"]) == \
        ("synthetic", "sequential", "random", "softmax")
    assert (run_dir / "checkpoints" / "last.pt").exists() and (run_dir / ".hydra" / "config.yaml").exists()
    chapters = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [c["chapter"] for c in chapters] == [1, 2] and "layer.0/gap" in chapters[0]
    assert (run_dir / "curves.png").stat().st_size > 1000
    assert not list(run_dir.rglob("*.tmp"))

    ev = cli("ffpipe.evaluate", str(run_dir / "checkpoints" / "last.pt"), "--json")
    assert ev.returncode == 0, ev.stderr
    assert json.loads(ev.stdout)["test_accuracy"] == pytest.approx(summary["test_accuracy"])
    # A group override swaps the whole data config; dotted keys then edit it.
    other = evaluate(str(run_dir / "checkpoints" / "last.pt"), ["data=synthetic", "data.num_test=64"])
    assert other["num_test"] == 64 and other["dataset"] == "synthetic"


@pytest.mark.parametrize("override,message", [
    ("train.chapters=3", "chapters must be a positive divisor of train.epochs"),
    ("optim.lr=0", "learning rate must be > 0"),
    ("optim.lr=-1", "learning rate must be > 0"),
    ("model.widths=[64,0]", "model.widths"),
    ("train.epochs=abc", "train.epochs must be an integer"),
    ("train.batch_size=0", "train.batch_size must be >= 1"),
    ("negatives=none", "negatives=none only goes with model.kind=perf_opt"),
])
def test_bad_config_is_one_line_exit_2(tmp_path, override, message):
    out = cli("ffpipe.train", "experiment=smoke", override, env={"FFPIPE_OUTPUT_DIR": str(tmp_path)})
    assert out.returncode == 2
    assert "Traceback" not in out.stderr
    errors = [line for line in out.stderr.splitlines() if line.startswith("ffpipe: error:")]
    assert len(errors) == 1 and message in errors[0]
    assert not list(tmp_path.rglob("summary.json")) and not list(tmp_path.rglob("*.pt"))


@pytest.mark.parametrize("overrides,message", [
    (["data.root=/nonexistent", "data.download=false"], "missing data file /nonexistent/MNIST/raw/t10k-images"),
    (["data.num_train=10000"], "data.num_train must be in 1..9999"),
])
def test_bad_data_is_one_line_exit_2(tmp_path, shared_data, overrides, message):
    out = cli("ffpipe.train", "data=mnist10k", f"data.root={shared_data}", *overrides,
              env={"FFPIPE_OUTPUT_DIR": str(tmp_path)})
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert message in out.stderr


def test_corrupt_data_file_is_reported(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    (raw / "t10k-images-idx3-ubyte.gz").write_bytes(b"not a gzip file")
    (raw / "t10k-labels-idx1-ubyte.gz").write_bytes(b"not a gzip file")
    out = cli("ffpipe.train", "data=mnist10k", f"data.root={tmp_path}", env={"FFPIPE_OUTPUT_DIR": str(tmp_path / "o")})
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "corrupt data file" in out.stderr and "t10k-images-idx3-ubyte.gz" in out.stderr


@pytest.mark.parametrize("negatives", ["random", "fixed", "adaptive"])
def test_resume_after_a_crash_reproduces_the_uninterrupted_run(compose_cfg, tmp_path, monkeypatch, negatives):
    overrides = ["experiment=smoke", "train.progress=false", "train.epochs=6", "train.chapters=3",
                 f"negatives={negatives}"]
    whole = run(compose_cfg(*overrides), tmp_path / "whole")

    import ffpipe.job as job_module
    real_end = job_module.Job._end_chapter

    def crash_after_first_chapter(self, chapter, seconds, complete):
        real_end(self, chapter, seconds, complete)
        if chapter == 0:
            raise KeyboardInterrupt

    monkeypatch.setattr(job_module.Job, "_end_chapter", crash_after_first_chapter)
    with pytest.raises(KeyboardInterrupt):
        run(compose_cfg(*overrides), tmp_path / "crashed")
    monkeypatch.undo()
    ckpt = tmp_path / "crashed" / "checkpoints" / "last.pt"
    assert checkpoint.load(ckpt)["chapter"] == 0

    resumed = run(compose_cfg(*overrides, f"train.resume={ckpt}"), tmp_path / "resumed")
    assert resumed["resumed_from_chapter"] == 1
    assert resumed["test_accuracy"] == whole["test_accuracy"]
    assert resumed["final_losses"] == pytest.approx(whole["final_losses"], rel=1e-5)

    with pytest.raises(CheckpointError, match="train.epochs"):
        run(compose_cfg(*overrides[:2], f"train.resume={ckpt}"), tmp_path / "other")


def test_checkpoint_from_another_architecture_is_refused(compose_cfg, tmp_path):
    run(compose_cfg("experiment=smoke", "train.progress=false"), tmp_path / "a")
    ckpt = tmp_path / "a" / "checkpoints" / "last.pt"
    with pytest.raises(CheckpointError, match="widths"):
        run(compose_cfg("experiment=smoke", "train.progress=false", "model.widths=[32,32,32]",
                        f"train.resume={ckpt}"), tmp_path / "b")
    with pytest.raises(CheckpointError, match="widths"):
        evaluate(str(ckpt), ["model.widths=[32,32]"])
    (tmp_path / "junk.pt").write_bytes(b"junk")
    out = cli("ffpipe.evaluate", str(tmp_path / "junk.pt"))
    assert out.returncode == 2 and "cannot read checkpoint" in out.stderr and "Traceback" not in out.stderr


def test_non_finite_loss_names_layer_and_keeps_last_good_checkpoint(compose_cfg, tmp_path, monkeypatch):
    import ffpipe.ff as ff
    real = ff.FFLayer.objective
    calls = {"n": 0}

    def poisoned(self, pn):
        calls["n"] += 1
        loss, gap = real(self, pn)
        return (loss * float("nan"), gap) if calls["n"] > 52 else (loss, gap)

    monkeypatch.setattr(ff.FFLayer, "objective", poisoned)
    cfg = compose_cfg("experiment=smoke", "train.progress=false", "checkpoint.every=1")
    with pytest.raises(NonFiniteLossError, match=r"layer\.\d at epoch \d step \d+.*last good checkpoint"):
        run(cfg, tmp_path)
    assert checkpoint.load(tmp_path / "checkpoints" / "last.pt")["chapter"] == 0


@pytest.mark.parametrize("overrides", [
    ["classifier=goodness", "negatives=fixed"],
    ["negatives=adaptive"],
    ["model=perf_opt", "negatives=none"],
    ["model=perf_opt", "negatives=none", "model.heads=last"],
    ["parallel=backprop"],
    ["optim=sgd", "optim.lr=0.1", "model.goodness=sum", "model.loss=hinton", "model.threshold=0.5",
     "model.alpha=4", "model.norm=l2"],
])
def test_variants_train(compose_cfg, tmp_path, overrides):
    summary = run(compose_cfg("experiment=smoke", "train.progress=false", *overrides), tmp_path)
    assert summary["test_accuracy"] > 0.5, summary
    assert json.loads((tmp_path / "summary.json").read_text())["parallel"] == summary["parallel"]


def test_wandb_offline_writes_into_run_dir(compose_cfg, tmp_path):
    pytest.importorskip("wandb")
    run(compose_cfg("experiment=smoke", "train.progress=false", "logger=wandb", "logger.mode=offline"), tmp_path)
    assert list((tmp_path / "wandb").glob("offline-run-*"))


def test_wandb_init_failure_does_not_stop_the_run(compose_cfg, tmp_path, monkeypatch, caplog):
    wandb = pytest.importorskip("wandb")

    def broken(*a, **k):
        raise RuntimeError("no network")

    monkeypatch.setattr(wandb, "init", broken)
    summary = run(compose_cfg("experiment=smoke", "train.progress=false", "logger=wandb"), tmp_path)
    assert summary["test_accuracy"] > 0.5
    assert "W&B init failed" in caplog.text


def test_sequential_refuses_several_ranks(compose_cfg, tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(torch.distributed, "init_process_group", lambda *a, **k: None)
    with pytest.raises(ConfigError, match="one process"):
        run(compose_cfg("experiment=smoke", "train.progress=false"), tmp_path)


@pytest.mark.slow
def test_mnist10k_learns(compose_cfg, shared_data, tmp_path):
    """A short real-data run: FF on 8000 MNIST digits, tested on the other 2000."""
    summary = run(compose_cfg("experiment=mnist10k", f"data.root={shared_data}", "train.progress=false",
                              "train.epochs=4", "train.chapters=4", "model.widths=[500,500,500]"), tmp_path)
    assert summary["test_accuracy"] > 0.9, summary
