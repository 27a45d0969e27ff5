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
            return
        # Metrics are plotted against "chapter", not W&B's own step, so rank 0 can log the chapters
        # other ranks trained (gathered at the end) after its own, in any order.
        self.run.define_metric("chapter")
        self.run.define_metric("*", step_metric="chapter")

    def log(self, metrics: dict) -> None:
        if self.run is None:
            return
        try:
            self.run.log(metrics)
        except Exception as e:
            log.warning("W&B log failed (%s); disabling W&B for this run", e)
            self.run = None

    def log_timeline(self, telemetry: dict, records: list[dict], trace_path, gantt_path) -> None:
        """Per-rank utilization / bubbles / bytes, the spans as a table, the trace as a file."""
        if self.run is None:
            return
        try:
            import wandb  # noqa: PLC0415

            for r in telemetry["ranks"]:
                for key in ("utilization", "bubble_fraction", "bytes_sent", "bytes_received"):
                    self.run.summary[f"rank{r['rank']}/{key}"] = r[key]
            rows = [[rec["rank"], kind, name, a, b, b - a] for rec in records for kind, name, a, b in rec["spans"]]
            self.run.log({"timeline": wandb.Table(columns=["rank", "kind", "name", "start_s", "end_s", "seconds"],
                                                  data=rows),
                          "gantt": wandb.Image(str(gantt_path))})
            self.run.save(str(trace_path), base_path=str(trace_path.parent), policy="now")
        except Exception as e:
            log.warning("W&B timeline upload failed (%s)", e)

    def finish(self, summary: dict) -> None:
        if self.run is None:
            return
        try:
            self.run.summary.update(summary)
            self.run.finish()
        except Exception as e:
            log.warning("W&B finish failed (%s)", e)
