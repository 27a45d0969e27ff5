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

from ffpipe import distributed
from ffpipe.backprop import BackpropNet
from ffpipe.data import build_dataset
from ffpipe.errors import FFPipeError, NonFiniteLossError, config_int
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
    if cfg.parallel.name == "backprop":
        return BackpropNet(cfg.model, cfg.optim, input_dim, num_classes, epochs)
    return FFNet(cfg.model, cfg.classifier, cfg.optim, input_dim, num_classes, epochs)


def run(cfg: DictConfig, run_dir: Path) -> dict:
    """Train as configured and return the summary (also written to ``run_dir/summary.json``)."""
    env = distributed.setup(cfg.device, cfg.get("threads"))
    if not env.is_main:
        logging.getLogger().setLevel(logging.WARNING)
    schedule = get_schedule(cfg.parallel.name)
    torch.manual_seed(int(cfg.seed))
    data = build_dataset(cfg.data, env.device)
    net = build_net(cfg, data.input_dim, data.num_classes).to(env.device)
    negatives = _NoNegatives() if cfg.parallel.name == "backprop" else build_negatives(cfg.negatives, net.kind)
    job = Job(cfg, env, data, net, negatives, run_dir)
    log.info("%s | %s on %s (%d train / %d test) | widths %s | %d epochs in %d chapters | %s",
             cfg.parallel.name, cfg.data.name, env.device, len(data.train), len(data.test), net.widths,
             job.epochs, job.num_chapters, f"negatives={job.negatives.name} classifier={net.classifier.name}")
    try:
        schedule.run(job)
    except NonFiniteLossError as e:
        last = f"; the last good checkpoint is {job.ckpt_path}" if job.ckpt_path.exists() else ""
        raise NonFiniteLossError(f"{e}{last}") from None
    summary = job.summary()
    if env.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        if job.metrics_path.exists():
            plot_metrics(job.metrics_path, run_dir / "curves.png", summary["test_accuracy"])
        log.info("test accuracy %.4f | train accuracy %.4f | %.1f s training | %.0f samples/s",
                 summary["test_accuracy"], summary["train_accuracy"], summary["train_seconds"],
                 summary["samples_per_s"])
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
