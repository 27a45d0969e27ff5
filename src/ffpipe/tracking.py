"""Weights & Biases, kept at arm's length: a failing W&B never stops or hangs training."""

from __future__ import annotations

import logging
import os

from ffpipe.errors import ConfigError

log = logging.getLogger(__name__)


class Tracker:
    """Logs metric dicts to W&B on rank 0 when ``logger.name=wandb``; otherwise does nothing."""

    def __init__(self, cfg, run_dir: str, config: dict, is_main: bool):
        self.run = None
        if not is_main or cfg.name == "none":
            return
        if cfg.name != "wandb":
            raise ConfigError(f"unknown logger {cfg.name!r}; expected wandb or none")
        mode = cfg.get("mode", "online")
        if mode not in ("online", "offline", "disabled"):
            raise ConfigError(f"logger.mode must be online, offline or disabled, got {mode!r}")
        try:
            import wandb  # noqa: PLC0415

            os.environ.setdefault("WANDB_SILENT", "true")
            self.run = wandb.init(
                project=cfg.get("project", "ffpipe"), entity=cfg.get("entity"), name=cfg.get("run_name"),
                group=cfg.get("group"), tags=list(cfg.get("tags") or []), mode=mode, dir=run_dir,
                config=config, settings=wandb.Settings(init_timeout=float(cfg.get("init_timeout", 60))))
        except Exception as e:  # no account, no network, bad key, missing package...
            reason = str(e).splitlines()[0] if str(e) else type(e).__name__
            log.warning("W&B init failed (%s); continuing without W&B", reason)
            self.run = None

    def log(self, metrics: dict, step: int) -> None:
        if self.run is None:
            return
        try:
            self.run.log(metrics, step=step)
        except Exception as e:
            log.warning("W&B log failed (%s); disabling W&B for this run", e)
            self.run = None

    def finish(self, summary: dict) -> None:
        if self.run is None:
            return
        try:
            self.run.summary.update(summary)
            self.run.finish()
        except Exception as e:
            log.warning("W&B finish failed (%s)", e)
