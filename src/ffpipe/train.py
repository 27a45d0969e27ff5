"""Entry point: ``python -m ffpipe.train [overrides]`` or ``torchrun ... -m ffpipe.train [overrides]``.

Builds the components named by the config, hands them to the schedule, writes ``summary.json``.
User errors end as one line on stderr and exit code 2, before anything but Hydra's own config
snapshot is written.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

from ffpipe import distributed, telemetry
from ffpipe.backprop import BackpropNet
from ffpipe.data import build_dataset
from ffpipe.errors import ConfigError, FFPipeError, LaunchError, NonFiniteLossError, config_int
from ffpipe.job import Job
from ffpipe.model import FFNet
from ffpipe.negatives import build_negatives
from ffpipe.plots import plot_metrics
from ffpipe.schedules import get_schedule

log = logging.getLogger("ffpipe")


def config_dir() -> str:
    """``conf/`` shipped inside the wheel, or the repository's top-level ``conf/`` (editable)."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "conf", here.parents[1] / "conf"):
        if (candidate / "config.yaml").is_file():
            return str(candidate)
    raise FileNotFoundError("ffpipe's conf/ folder was not found next to the package")


def _hydra_output_subdir():
    """Only rank 0 writes Hydra's ``.hydra/`` snapshot into the shared run directory."""
    return ".hydra" if distributed.env_rank() == 0 else None


OmegaConf.register_new_resolver("ffpipe_run_stamp", distributed.run_stamp, use_cache=True, replace=True)
OmegaConf.register_new_resolver("ffpipe_output_subdir", _hydra_output_subdir, replace=True)


def build_net(cfg: DictConfig, input_dim: int, num_classes: int):
    epochs = config_int(cfg.train.epochs, "train.epochs", 1)
    if cfg.parallel.name in ("backprop", "backprop_pipeline"):
        return BackpropNet(cfg.model, cfg.optim, input_dim, num_classes, epochs)
    return FFNet(cfg.model, cfg.classifier, cfg.optim, input_dim, num_classes, epochs)


def check_launch(schedule, name: str, world_size: int) -> None:
    """A distributed schedule needs torchrun (say exactly how to launch it); a single-process one
    refuses several ranks."""
    if world_size > getattr(schedule, "MAX_WORLD_SIZE", world_size):
        raise ConfigError(f"parallel={name} trains on one process, but WORLD_SIZE={world_size}; launch with "
                          f"--nproc-per-node=1, or {schedule.SEVERAL_RANKS_HINT}")
    if world_size < getattr(schedule, "MIN_WORLD_SIZE", 1):
        raise LaunchError(f"parallel={name} runs on several ranks, but this is a single process "
                          f"(WORLD_SIZE={world_size}). Launch it with torchrun, e.g.:\n  "
                          + distributed.torchrun_command(schedule.MIN_WORLD_SIZE, sys.argv[1:]))


def run(cfg: DictConfig, run_dir: Path) -> dict | None:
    """Train as configured and return the summary (also written to ``run_dir/summary.json``) on
    rank 0; other ranks return None."""
    schedule = get_schedule(cfg.parallel.name)
    check_launch(schedule, cfg.parallel.name, distributed.env_world_size())
    env = distributed.setup(cfg.device, cfg.get("threads"), cfg.dist.backend, cfg.dist.timeout_s,
                            bool(cfg.dist.get("pin_cpu", False)))
    if not env.is_main:  # other ranks: warnings, plus their own chapter lines
        logging.getLogger().setLevel(logging.WARNING)
        logging.getLogger("ffpipe.chapters").setLevel(logging.INFO)
    torch.manual_seed(int(cfg.seed))
    data = build_dataset(cfg.data, env.device)
    net = build_net(cfg, data.input_dim, data.num_classes).to(env.device)
    negatives = _NoNegatives() if isinstance(net, BackpropNet) else build_negatives(cfg.negatives, net.kind)
    job = Job(cfg, env, data, net, negatives, run_dir)
    log.info("%s on %d rank(s) (%s) | %s on %s (%d train / %d test) | widths %s | %d epochs in %d chapters | %s",
             cfg.parallel.name, env.world_size, env.backend or "no process group", cfg.data.name, env.device,
             len(data.train), len(data.test), net.widths, job.epochs, job.num_chapters,
             f"negatives={job.negatives.name} classifier={net.classifier.name}")
    distributed.barrier(env)
    job.timeline.start()
    try:
        schedule.run(job)
        job.comm.flush()
    except NonFiniteLossError as e:
        last = f"; the last good checkpoint is {job.ckpt_path}" if job.ckpt_path.exists() else ""
        raise NonFiniteLossError(f"{e}{last}") from None
    job.timeline.stop()
    gathered = telemetry.report(job.timeline, env.world_size, run_dir if env.is_main else None,
                                f"{cfg.parallel.name}, {env.world_size} rank(s)", {"metrics": job.metrics_rows})
    if not env.is_main:
        return None
    tele, records = gathered
    if env.world_size > 1:
        for rec in records:  # other ranks' chapters (rank 0 logged its own live)
            for row in rec["metrics"] if rec["rank"] != 0 else []:
                job.tracker.log(row)
        if job.ckpt_every:
            job.save_checkpoint(job.num_chapters - 1)  # the final network, gathered on rank 0 by the schedule
    summary = job.summary(tele, [row for rec in records for row in rec["metrics"]])
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    if job.metrics_path.exists():
        plot_metrics(job.metrics_path, run_dir / "curves.png", summary["test_accuracy"])
    job.tracker.log_timeline(tele, records, run_dir / "trace.json", run_dir / "gantt.png")
    log.info("test accuracy %.4f | train accuracy %.4f | %.1f s training | %.0f samples/s",
             summary["test_accuracy"], summary["train_accuracy"], summary["train_seconds"],
             summary["samples_per_s"])
    if env.world_size > 1:
        log.info("ranks: %s", " | ".join(
            f"rank {r['rank']} util {r['utilization']:.0%} bubble {r['bubble_fraction']:.0%} "
            f"sent {r['bytes_sent'] / 2**20:.1f} MiB" for r in tele["ranks"]))
    job.tracker.finish(summary)
    return summary


class _NoNegatives:
    """Backprop trains on labels directly; this stands in where the job and checkpoints expect negatives."""

    name = "n/a"

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass


def fail(e: Exception) -> None:
    print(f"ffpipe: error: {e}", file=sys.stderr)
    distributed.teardown()
    sys.exit(2)


@hydra.main(config_path=config_dir(), config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    run_dir = Path(hydra.core.hydra_config.HydraConfig.get().runtime.output_dir)
    try:
        run(cfg, run_dir)
    except FFPipeError as e:
        fail(e)
    if distributed.env_rank() == 0:
        print(f"run directory: {run_dir}")
    distributed.teardown()


if __name__ == "__main__":
    main()
