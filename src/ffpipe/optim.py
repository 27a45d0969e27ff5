"""Per-unit optimizers and the paper's linear learning-rate cooldown."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from ffpipe.errors import ConfigError


def build_optimizer(params, name: str, lr: float, weight_decay: float = 0.0, momentum: float = 0.9,
                    betas=(0.9, 0.999)) -> torch.optim.Optimizer:
    if not lr > 0:
        raise ConfigError(f"learning rate must be > 0 (optim.lr, or classifier.lr for the softmax head), got {lr}")
    if weight_decay < 0:
        raise ConfigError(f"weight_decay must be >= 0, got {weight_decay}")
    # Fused kernels (CPU and CUDA) update all parameters in one pass: on a 1000x1000 FF layer the
    # unfused Adam step is a third of the step time on CPU.
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, betas=tuple(betas), weight_decay=weight_decay, fused=True)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, betas=tuple(betas), weight_decay=weight_decay, fused=True)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay, fused=True)
    raise ConfigError(f"unknown optimizer {name!r}; expected adam, adamw or sgd")


def cooldown_factor(epoch: int, total_epochs: int, cooldown_from: float | None) -> float:
    """LR multiplier at the start of ``epoch`` (0-based): 1 until ``cooldown_from * total_epochs``,
    then linear towards 0, reaching ``1 / remaining`` in the last epoch (never exactly 0)."""
    if cooldown_from is None:
        return 1.0
    start = int(cooldown_from * total_epochs)
    if epoch < start:
        return 1.0
    return (total_epochs - epoch) / max(total_epochs - start, 1)


def init_optimizer_state(opt: torch.optim.Optimizer) -> None:
    """Create the optimizer's per-parameter state up front, exactly as its first step would (zero
    moments, step 0), so a trainee's full state has a fixed layout and can be sent to another rank
    before this rank ever trained it."""
    for group in opt.param_groups:
        for p in group["params"]:
            state = opt.state[p]
            if state:
                continue
            if isinstance(opt, torch.optim.Adam | torch.optim.AdamW):
                fused = group.get("fused") or group.get("capturable")
                state["step"] = torch.zeros((), dtype=torch.float32, device=p.device if fused else "cpu")
                state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            elif isinstance(opt, torch.optim.SGD) and group["momentum"] != 0:
                # SGD's first step sets buf = grad; with a zero buffer and dampening 0 it computes the same
                state["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)


class Trainee:
    """A module with its own optimizer and LR schedule: one FF layer, a softmax head, a whole MLP.

    ``module.objective(*batch)`` returns ``(loss, metric)``; :func:`ffpipe.ff.train_unit` is the
    single loop that trains any trainee.
    """

    def __init__(self, name: str, module: torch.nn.Module, optim_cfg: Mapping, total_epochs: int):
        self.name = name
        self.module = module
        self.base_lr = float(optim_cfg["lr"])
        self.total_epochs = total_epochs
        self.cooldown_from = optim_cfg.get("cooldown_from")
        if self.cooldown_from is not None and not 0 <= float(self.cooldown_from) <= 1:
            raise ConfigError(f"optim.cooldown_from must be a fraction in [0, 1] or null, got {self.cooldown_from}")
        self.optimizer = build_optimizer(module.parameters(), optim_cfg["name"], self.base_lr,
                                         float(optim_cfg.get("weight_decay", 0.0)),
                                         float(optim_cfg.get("momentum", 0.9)),
                                         optim_cfg.get("betas", (0.9, 0.999)))
        init_optimizer_state(self.optimizer)

    def to(self, device) -> Trainee:
        """Move the module and its optimizer state (parameters keep their identity)."""
        self.module.to(device)
        fused = self.optimizer.defaults.get("fused")
        for state in self.optimizer.state.values():
            for k, v in state.items():
                if torch.is_tensor(v) and (fused or k != "step"):  # unfused Adam keeps its step on the host
                    state[k] = v.to(device)
        return self

    def set_epoch(self, epoch: int) -> None:
        lr = self.base_lr * cooldown_factor(epoch, self.total_epochs, self.cooldown_from)
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def state_dict(self) -> dict:
        return {"module": self.module.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.module.load_state_dict(state["module"])
        self.optimizer.load_state_dict(state["optimizer"])
