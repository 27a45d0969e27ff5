"""A training job: the components a schedule needs, and the chapter loop that wraps its work.

A schedule only says what happens inside a chapter::

    for chapter in job.chapters():
        x = job.train_inputs()
        ...
        job.record(trainee.name, train_unit(...))

``job.chapters()`` times each chapter (synchronizing the device at its end only), then logs one
line, updates the progress bar, W&B and ``metrics.jsonl``, evaluates every ``train.eval_every``
chapters and writes the checkpoint; evaluation and checkpoint time are kept out of ``train_seconds``.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from ffpipe import checkpoint
from ffpipe.data import Dataset, random_shift
from ffpipe.distributed import DistEnv, peak_memory_mb, synchronize
from ffpipe.errors import CheckpointError, ConfigError, config_int
from ffpipe.ff import UnitStats
from ffpipe.tracking import Tracker

log = logging.getLogger("ffpipe")


def epochs_per_chapter(epochs: int, chapters: int) -> int:
    if epochs % chapters:
        raise ConfigError(f"train.chapters must be a positive divisor of train.epochs (every chapter "
                          f"trains epochs/chapters whole epochs); got epochs={epochs}, chapters={chapters}")
    return epochs // chapters


class Job:
    def __init__(self, cfg, env: DistEnv, data: Dataset, net, negatives, run_dir: Path):
        self.cfg, self.env, self.data, self.net, self.negatives = cfg, env, data, net, negatives
        self.run_dir = Path(run_dir)
        self.epochs = config_int(cfg.train.epochs, "train.epochs", 1)
        self.num_chapters = config_int(cfg.train.chapters, "train.chapters", 1)
        self.epochs_per_chapter = epochs_per_chapter(self.epochs, self.num_chapters)
        self.batch_size = config_int(cfg.train.batch_size, "train.batch_size", 1)
        self.max_shift = config_int(cfg.data.get("augment_shift", 0), "data.augment_shift", 0)
        self.eval_every = config_int(cfg.train.eval_every, "train.eval_every", 0)
        self.generator = torch.Generator(device=env.device).manual_seed(int(cfg.seed))
        self.config = OmegaConf.to_container(cfg, resolve=True)
        self.ckpt_path = self.run_dir / "checkpoints" / "last.pt"
        self.metrics_path = self.run_dir / "metrics.jsonl"
        self.ckpt_every = config_int(cfg.checkpoint.every, "checkpoint.every", 0)
        self.tracker = Tracker(cfg.logger, str(self.run_dir), self.config, env.is_main)
        self.start_chapter = self._maybe_resume(cfg.train.get("resume"))
        self.train_seconds = self.eval_seconds = self.ckpt_seconds = 0.0
        self.stats: dict[str, UnitStats] = {}
        self.last: dict[str, str] = {}  # progress-bar postfix

    def _maybe_resume(self, path) -> int:
        if not path:
            return 0
        state = checkpoint.load(path)
        checkpoint.check_arch(state, self.net.arch(), path)
        saved = state.get("config", {}).get("train", {})
        for key in ("epochs", "chapters"):
            if saved.get(key) != self.config["train"][key]:
                raise CheckpointError(f"cannot resume {path}: it was trained with train.{key}="
                                      f"{saved.get(key)}, this run has {self.config['train'][key]}")
        start = checkpoint.restore(state, self.net, self.negatives, self.generator)
        log.info("resumed from %s at chapter %d/%d", path, start, self.num_chapters)
        return start

    # -- what schedules call --------------------------------------------------------------------

    def train_inputs(self) -> torch.Tensor:
        """This chapter's training images: a freshly shifted copy when augmentation is on."""
        return random_shift(self.data.train.x, self.data.image_shape, self.max_shift, self.generator)

    def first_epoch(self, chapter: int) -> int:
        return chapter * self.epochs_per_chapter

    def record(self, name: str, stats: UnitStats | None) -> None:
        if stats is not None:
            self.stats[name] = stats

    def chapters(self):
        """Yield chapter indices; everything around a chapter's work happens here."""
        bar = tqdm(total=self.num_chapters, initial=self.start_chapter, desc="chapters", unit="ch",
                   disable=not (self.env.is_main and self.cfg.train.progress), dynamic_ncols=True)
        try:
            with logging_redirect_tqdm():
                for chapter in range(self.start_chapter, self.num_chapters):
                    self.stats = {}
                    t0 = time.perf_counter()
                    yield chapter
                    synchronize(self.env.device)
                    seconds = time.perf_counter() - t0
                    self.train_seconds += seconds
                    self._end_chapter(chapter, seconds)
                    bar.set_postfix(self.last, refresh=False)
                    bar.update()
        finally:
            bar.close()

    # -- around the work ------------------------------------------------------------------------

    def _end_chapter(self, chapter: int, seconds: float) -> None:
        done = chapter + 1
        samples = len(self.data.train) * self.epochs_per_chapter
        metrics = {"chapter": done, "epoch": done * self.epochs_per_chapter,
                   "samples_per_s": samples / max(seconds, 1e-9), "chapter_seconds": seconds}
        parts = []
        for name, st in self.stats.items():  # one host sync per chapter, here
            loss, metric = float(st.loss), float(st.metric)
            metric_name = "gap" if name.startswith("layer.") and self.net.kind == "ff" else "acc"
            metrics[f"{name}/loss"], metrics[f"{name}/{metric_name}"] = loss, metric
            parts.append(f"{name} loss {loss:.4f} {metric_name} {metric:.3f}")
        if self.eval_every and (done % self.eval_every == 0) and done < self.num_chapters:
            metrics["test_accuracy"] = self._timed_eval(self.data.test)
            parts.append(f"test acc {metrics['test_accuracy']:.4f}")
        self.last = {name: f"{metrics[name + '/loss']:.3f}" for name in self.stats}
        if "test_accuracy" in metrics:
            self.last["test_acc"] = f"{metrics['test_accuracy']:.4f}"
        self.tracker.log(metrics, step=done)
        if self.env.is_main:
            log.info("chapter %d/%d | %s | %.0f samples/s", done, self.num_chapters, " | ".join(parts),
                     metrics["samples_per_s"])
            self.run_dir.mkdir(parents=True, exist_ok=True)
            with open(self.metrics_path, "a") as f:
                f.write(json.dumps(metrics) + "\n")
        if self.ckpt_every and (done % self.ckpt_every == 0 or done == self.num_chapters):
            self.save_checkpoint(chapter)

    def _timed_eval(self, split) -> float:
        synchronize(self.env.device)
        t0 = time.perf_counter()
        acc = float(self.net.accuracy(split.x, split.y))
        self.eval_seconds += time.perf_counter() - t0
        return acc

    def save_checkpoint(self, chapter: int) -> None:
        if not self.env.is_main:
            return
        t0 = time.perf_counter()
        checkpoint.save(self.ckpt_path, checkpoint.capture(self.net, self.negatives, self.generator,
                                                           chapter, self.config))
        self.ckpt_seconds += time.perf_counter() - t0

    def summary(self) -> dict:
        """Final evaluation and the facts of the run, as written to ``summary.json``."""
        test_acc, train_acc = self._timed_eval(self.data.test), self._timed_eval(self.data.train)
        trained_chapters = self.num_chapters - self.start_chapter
        samples = len(self.data.train) * self.epochs_per_chapter * trained_chapters
        cfg = self.cfg
        return {
            "test_accuracy": test_acc,
            "train_accuracy": train_acc,
            "train_seconds": self.train_seconds,
            "samples_per_s": samples / max(self.train_seconds, 1e-9),
            "eval_seconds": self.eval_seconds,
            "checkpoint_seconds": self.ckpt_seconds,
            "peak_memory_mb": peak_memory_mb(self.env.device),
            "epochs": self.epochs,
            "chapters": self.num_chapters,
            "epochs_per_chapter": self.epochs_per_chapter,
            "resumed_from_chapter": self.start_chapter,
            "batch_size": self.batch_size,
            "dataset": cfg.data.name,
            "num_train": len(self.data.train),
            "num_test": len(self.data.test),
            "parallel": cfg.parallel.name,
            "negatives": self.negatives.name,
            "classifier": self.net.classifier.name,
            "model": self.net.arch(),
            "seed": int(cfg.seed),
            "world_size": self.env.world_size,
            "device": str(self.env.device),
            "torch": torch.__version__,
            "final_losses": {k: float(v.loss) for k, v in self.stats.items()},
            "checkpoint": str(self.ckpt_path) if self.ckpt_path.exists() else None,
            "run_dir": str(self.run_dir),
        }
