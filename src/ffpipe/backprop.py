"""An MLP trained end to end by backprop: the baseline FF is measured against."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ffpipe.ff import apply_chunked
from ffpipe.model import check_widths
from ffpipe.optim import Trainee


class MLP(nn.Module):
    def __init__(self, input_dim: int, widths: list[int], num_classes: int):
        super().__init__()
        dims = [input_dim, *widths]
        blocks = []
        for a, b in zip(dims[:-1], dims[1:]):
            blocks += [nn.Linear(a, b), nn.ReLU()]
        self.body = nn.Sequential(*blocks, nn.Linear(dims[-1], num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def objective(self, x: torch.Tensor, y: torch.Tensor):
        logits = self(x)
        return F.cross_entropy(logits, y), (logits.argmax(1) == y).float().mean()


class _NoClassifier:
    name, head = "mlp_softmax", None


class BackpropNet:
    """Same interface as :class:`ffpipe.model.FFNet` where the job and checkpoints touch it."""

    kind = "backprop"

    def __init__(self, model_cfg, optim_cfg, input_dim: int, num_classes: int, total_epochs: int):
        self.widths = check_widths(model_cfg.widths)
        self.input_dim, self.num_classes = input_dim, num_classes
        self.mlp = Trainee("mlp", MLP(input_dim, self.widths, num_classes), optim_cfg, total_epochs)
        self.classifier = _NoClassifier()

    def to(self, device) -> BackpropNet:
        self.mlp.to(device)
        return self

    def trainees(self) -> dict[str, Trainee]:
        return {"mlp": self.mlp}

    def arch(self) -> dict:
        return {"kind": self.kind, "widths": self.widths, "input_dim": self.input_dim,
                "num_classes": self.num_classes, "classifier": self.classifier.name}

    @torch.no_grad()
    def accuracy(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        self.mlp.module.eval()
        return (apply_chunked(self.mlp.module, x).argmax(1) == y).float().mean()
