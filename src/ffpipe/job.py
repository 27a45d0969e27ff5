"""A training job: the components a schedule needs, and everything wrapped around its work.

A schedule only says what happens inside a chapter, through the job::

    for chapter in job.chapters():
        x = job.train_inputs(chapter)
        stream = job.input_stream(x, job.negative_labels(chapter, x))
        for layer in job.net.layers:
            job.train(layer, stream, chapter)
            stream = job.propagate(layer, stream)

``job.train`` runs :func:`~ffpipe.ff.train_unit` inside a ``compute`` span of the rank's
:class:`~ffpipe.telemetry.Timeline` and records its stats; ``job.comm`` (:class:`~ffpipe.comm.Comm`)
times and counts every transfer. ``job.chapters()`` times each chapter (synchronizing the device at
its end only), then logs one line, updates the progress bar, W&B and ``metrics.jsonl``, evaluates
every ``train.eval_every`` chapters and writes the checkpoint; evaluation and checkpoint time are
kept out of ``train_seconds``.

Randomness is derived, not drawn from one stream: the shifts and negatives of chapter ``c`` and the
shuffles of trainee ``t`` in chapter ``c`` each come from a generator seeded by ``(seed, what, c,
t)``. Any rank can therefore reproduce any chapter's inputs, and a schedule that trains the same
units on the same inputs gets bit-identical results whichever rank trains them (All-Layers PFF
equals sequential FF exactly with random negatives); a resumed run continues the same streams.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from contextlib import nullcontext
from pathlib import Path

import torch
from omegaconf import OmegaConf
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from ffpipe import checkpoint
from ffpipe.comm import Comm
from ffpipe.data import Dataset, random_shift
from ffpipe.distributed import DistEnv, peak_memory_mb, synchronize
from ffpipe.errors import CheckpointError, ConfigError, config_int
from ffpipe.ff import UnitStats, train_unit
from ffpipe.negatives import wrong_labels
from ffpipe.telemetry import Timeline
from ffpipe.tracking import Tracker

log = logging.getLogger("ffpipe")
chapter_log = logging.getLogger("ffpipe.chapters")  # every rank's chapter lines


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
        self.seed = int(cfg.seed)
        self.config = OmegaConf.to_container(cfg, resolve=True)
        self.ckpt_path = self.run_dir / "checkpoints" / "last.pt"
        self.metrics_path = self.run_dir / "metrics.jsonl"
        self.ckpt_every = config_int(cfg.checkpoint.every, "checkpoint.every", 0)
        self.timeline = Timeline(env.rank, env.device)
        self.comm = Comm(env.rank, env.device, self.timeline, cfg.dist.get("post_receives", "auto"))
        self.tracker = Tracker(cfg.logger, str(self.run_dir), self.config, env.is_main)
        self.start_chapter = self._maybe_resume(cfg.train.get("resume"))
        self.train_seconds = self.eval_seconds = self.ckpt_seconds = 0.0
        self.stats: dict[str, UnitStats] = {}
        self.metrics_rows: list[dict] = []  # this rank's per-chapter metrics (gathered at the end)
        self.facts: dict = {}  # schedule-specific facts for summary.json (e.g. federated shards)
        self.last: dict[str, str] = {}  # progress-bar postfix

    def _maybe_resume(self, path) -> int:
        if not path:
            return 0
        if self.env.world_size > 1:
            raise ConfigError(f"train.resume works for single-process schedules (sequential, backprop); "
                              f"{self.cfg.parallel.name} on {self.env.world_size} ranks cannot resume yet. "
                              f"Its final checkpoint loads with python -m ffpipe.evaluate")
        state = checkpoint.load(path)
        checkpoint.check_arch(state, self.net.arch(), path)
        saved = state.get("config", {}).get("train", {})
        for key in ("epochs", "chapters"):
            if saved.get(key) != self.config["train"][key]:
                raise CheckpointError(f"cannot resume {path}: it was trained with train.{key}="
                                      f"{saved.get(key)}, this run has {self.config['train'][key]}")
        start = checkpoint.restore(state, self.net, self.negatives)
        log.info("resumed from %s at chapter %d/%d", path, start, self.num_chapters)
        return start

    # -- randomness: one derived stream per purpose, chapter and unit ----------------------------

    def rng(self, purpose: str, chapter: int, unit: str = "") -> torch.Generator:
        key = f"{self.seed}/{purpose}/{chapter}/{unit}".encode()
        seed = int.from_bytes(hashlib.sha256(key).digest()[:8], "little") >> 1
        return torch.Generator(device=self.env.device).manual_seed(seed)

    # -- what schedules call ----------------------------------------------------------------------

    def train_inputs(self, chapter: int, x: torch.Tensor | None = None) -> torch.Tensor:
        """Chapter ``chapter``'s training images (``x`` defaults to the whole training split): a
        freshly shifted copy when augmentation is on, identical on every rank."""
        x = self.data.train.x if x is None else x
        return random_shift(x, self.data.image_shape, self.max_shift, self.rng("shift", chapter))

    def negative_labels(self, chapter: int, x: torch.Tensor, y: torch.Tensor | None = None):
        """This rank's negative labels for ``chapter`` under the network as it is now on this rank
        (AdaptiveNEG falls back to random wrong labels while this rank has trained nothing yet)."""
        y = self.data.train.y if y is None else y
        with self.timeline.span("compute", "negatives"):
            fresh = not self.timeline.steps and self.start_chapter == 0
            return self.negatives.labels(0 if fresh else chapter, self.net, x, y,
                                         self.rng("negatives", chapter))

    def random_negatives(self, chapter: int, y: torch.Tensor | None = None) -> torch.Tensor:
        """Random wrong labels for ``chapter``, the same on every rank."""
        y = self.data.train.y if y is None else y
        return wrong_labels(y, self.data.num_classes, self.rng("negatives", chapter))

    def input_stream(self, x: torch.Tensor, y_neg, y: torch.Tensor | None = None):
        return self.net.input_stream(x, self.data.train.y if y is None else y, y_neg)

    def first_epoch(self, chapter: int) -> int:
        return chapter * self.epochs_per_chapter

    def train(self, trainee, inputs, chapter: int, batches=None, shuffle_key: str | None = None) -> UnitStats:
        """Train ``trainee`` for one chapter's epochs on ``inputs`` (or on ``batches(epoch)``, ready
        minibatches, for DFF): the one loop, :func:`train_unit`, timed as compute (unless the
        module times itself). ``shuffle_key`` shares one shuffle between trainees (pipeline stages)."""
        self_timed = getattr(trainee.module, "self_timed", False)
        with nullcontext() if self_timed else self.timeline.span("compute", f"train {trainee.name} ch{chapter}"):
            stats = train_unit(trainee, inputs, self.epochs_per_chapter, self.batch_size,
                               self.rng("shuffle", chapter, shuffle_key or trainee.name),
                               self.first_epoch(chapter), batches)
        self.stats[trainee.name] = stats
        self.timeline.steps[trainee.name] = self.timeline.steps.get(trainee.name, 0) + stats.steps
        return stats

    def propagate(self, trainee, stream):
        with self.timeline.span("compute", f"propagate {trainee.name}"):
            return trainee.module.propagate(stream)

    def fit_classifier(self, x: torch.Tensor, chapter: int, y: torch.Tensor | None = None) -> None:
        """Fit the readout on the current network (nothing to do for goodness / perf-opt heads)."""
        head = self.net.classifier.head
        if head is None:
            return
        with self.timeline.span("compute", "classifier features"):
            feats = self.net.classifier.features(x)
        self.train(head, (feats, self.data.train.y if y is None else y), chapter)

    def chapters(self, owned=None, complete: bool = True):
        """Yield the chapters this rank trains (all of them by default); everything around a
        chapter's work happens here. ``complete``: this rank holds the whole network at the end of
        each of its chapters, so it may evaluate it."""
        owned = [c for c in (range(self.num_chapters) if owned is None else owned) if c >= self.start_chapter]
        bar = tqdm(total=self.num_chapters, initial=self.start_chapter, desc="chapters", unit="ch",
                   disable=not (self.env.is_main and self.cfg.train.progress), dynamic_ncols=True)
        try:
            with logging_redirect_tqdm():
                for chapter in owned:
                    self.stats = {}
                    t0 = time.perf_counter()
                    yield chapter
                    synchronize(self.env.device)
                    seconds = time.perf_counter() - t0
                    self.train_seconds += seconds
                    self._end_chapter(chapter, seconds, complete)
                    bar.set_postfix(self.last, refresh=False)
                    bar.update(chapter + 1 - bar.n)
        finally:
            bar.close()

    # -- around the work ------------------------------------------------------------------------

    def _end_chapter(self, chapter: int, seconds: float, complete: bool) -> None:
        done = chapter + 1
        samples = len(self.data.train) * self.epochs_per_chapter
        metrics = {"chapter": done, "epoch": done * self.epochs_per_chapter, "rank": self.env.rank,
                   "samples_per_s": samples / max(seconds, 1e-9), "chapter_seconds": seconds}
        parts = []
        for name, st in self.stats.items():  # one host sync per chapter, here
            loss, metric = float(st.loss), float(st.metric)
            metric_name = "gap" if name.startswith("layer.") and self.net.kind == "ff" else "acc"
            metrics[f"{name}/loss"], metrics[f"{name}/{metric_name}"] = loss, metric
            parts.append(f"{name} loss {loss:.4f} {metric_name} {metric:.3f}")
        if complete and self.eval_every and (done % self.eval_every == 0) and done < self.num_chapters:
            with self.timeline.span("compute", "eval"):
                metrics["test_accuracy"] = self._timed_eval(self.data.test)
            parts.append(f"test acc {metrics['test_accuracy']:.4f}")
        self.last = {name: f"{metrics[name + '/loss']:.3f}" for name in self.stats}
        if "test_accuracy" in metrics:
            self.last["test_acc"] = f"{metrics['test_accuracy']:.4f}"
        self.metrics_rows.append(metrics)
        self.tracker.log(metrics)
        who = f" [rank {self.env.rank}]" if self.env.world_size > 1 else ""
        chapter_log.info("chapter %d/%d%s | %s | %.0f samples/s", done, self.num_chapters, who, " | ".join(parts),
                         metrics["samples_per_s"])
        self.run_dir.mkdir(parents=True, exist_ok=True)
        with open(self.metrics_path, "a") as f:  # one short append per line: ranks do not interleave
            f.write(json.dumps(metrics) + "\n")
        if self.env.world_size == 1 and self.ckpt_every and (done % self.ckpt_every == 0 or done == self.num_chapters):
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
        checkpoint.save(self.ckpt_path, checkpoint.capture(self.net, self.negatives, chapter, self.config))
        self.ckpt_seconds += time.perf_counter() - t0

    def summary(self, telemetry: dict | None = None, rows: list[dict] | None = None) -> dict:
        """Final evaluation and the facts of the run, as written to ``summary.json`` (rank 0).
        ``rows``: every rank's per-chapter metrics; each unit's final loss is from the last
        chapter that trained it, whichever rank that was."""
        final_losses = {}
        for row in sorted(rows if rows is not None else self.metrics_rows, key=lambda r: r["chapter"]):
            final_losses.update({k.removesuffix("/loss"): v for k, v in row.items() if k.endswith("/loss")})
        test_acc, train_acc = self._timed_eval(self.data.test), self._timed_eval(self.data.train)
        trained_chapters = self.num_chapters - self.start_chapter
        samples = len(self.data.train) * self.epochs_per_chapter * trained_chapters
        # several ranks: the run takes as long as its slowest rank (telemetry's aligned wall clock)
        seconds = telemetry["wall_seconds"] if telemetry and self.env.world_size > 1 else self.train_seconds
        cfg = self.cfg
        out = {
            "test_accuracy": test_acc,
            "train_accuracy": train_acc,
            "train_seconds": seconds,
            "samples_per_s": samples / max(seconds, 1e-9),
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
            "parallel_config": self.config["parallel"],
            "negatives": self.negatives.name,
            "classifier": self.net.classifier.name,
            "model": self.net.arch(),
            "seed": int(cfg.seed),
            "world_size": self.env.world_size,
            "threads": torch.get_num_threads(),
            "device": str(self.env.device),
            "backend": self.env.backend,
            "torch": torch.__version__,
            "final_losses": final_losses,
            "checkpoint": str(self.ckpt_path) if self.ckpt_path.exists() else None,
            "run_dir": str(self.run_dir),
        }
        out.update(self.facts)
        if telemetry:
            out.update(telemetry)
            ranks = telemetry["ranks"]
            out["bytes_sent_total"] = sum(r["bytes_sent"] for r in ranks)
            out["bytes_sent_per_epoch"] = out["bytes_sent_total"] / max(self.epochs_per_chapter * trained_chapters, 1)
            out["mean_utilization"] = sum(r["utilization"] for r in ranks) / len(ranks)
            out["mean_bubble_fraction"] = sum(r["bubble_fraction"] for r in ranks) / len(ranks)
        return out
