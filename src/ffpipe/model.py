"""An FF network: layers keyed by their global index, plus how it classifies.

``FFNet.layers[i]`` is the :class:`~ffpipe.optim.Trainee` of global layer ``i`` whatever rank trains
it, so checkpoints written by one schedule load under another. Classification:

- ``goodness``: every label is embedded at once (a ``[C * B, D]`` batch) and the label whose
  goodness, summed over the hidden layers except the first, is highest wins;
- ``softmax``: a linear softmax head reads the (RMS-)normalized neutral-label activities of the
  hidden layers except the first, trained on detached features (``features()``) like any trainee;
- Performance-Optimized nets predict from their per-layer heads (``last``, or ``all`` summed).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ffpipe.errors import ConfigError
from ffpipe.ff import (
    EVAL_CHUNK,
    FFInputLayer,
    FFLayer,
    PerfOptLayer,
    SoftmaxHead,
    apply_chunked,
    embed_label,
    normalize,
)
from ffpipe.optim import Trainee

KINDS = ("ff", "perf_opt")


def check_widths(widths) -> list[int]:
    try:
        widths = [int(w) for w in widths]
    except (TypeError, ValueError):
        raise ConfigError(f"model.widths must be a list of positive integers, got {widths}") from None
    if not widths or any(w <= 0 for w in widths):
        raise ConfigError(f"model.widths must be a non-empty list of positive integers, got {widths}")
    return widths


class FFNet:
    def __init__(self, model_cfg, classifier_cfg, optim_cfg, input_dim: int, num_classes: int,
                 total_epochs: int):
        self.kind = model_cfg.kind
        if self.kind not in KINDS:
            raise ConfigError(f"model.kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        self.widths = check_widths(model_cfg.widths)
        if input_dim <= num_classes:
            raise ConfigError(f"inputs of {input_dim} values cannot carry a {num_classes}-class label")
        self.input_dim, self.num_classes, self.norm = input_dim, num_classes, model_cfg.norm
        dims = [input_dim, *self.widths]
        self.layers: list[Trainee] = []
        ff_opts = ({k: model_cfg[k] for k in ("norm", "goodness", "loss", "threshold", "alpha")}
                   if self.kind == "ff" else {})
        for i in range(len(self.widths)):
            if self.kind == "perf_opt":
                layer = PerfOptLayer(dims[i], dims[i + 1], num_classes, model_cfg.norm)
            elif i == 0:
                layer = FFInputLayer(dims[i], dims[i + 1], num_classes, **ff_opts)
            else:
                layer = FFLayer(dims[i], dims[i + 1], **ff_opts)
            self.layers.append(Trainee(f"layer.{i}", layer, optim_cfg, total_epochs))
        self.classifier = build_classifier(self, model_cfg, classifier_cfg, optim_cfg, total_epochs)

    def to(self, device) -> FFNet:
        for t in self.trainees().values():
            t.to(device)
        return self

    def trainees(self) -> dict[str, Trainee]:
        out = {t.name: t for t in self.layers}
        if self.classifier.head is not None:
            out[self.classifier.head.name] = self.classifier.head
        return out

    def arch(self) -> dict:
        """What a checkpoint must match to load into this net."""
        return {"kind": self.kind, "widths": self.widths, "input_dim": self.input_dim,
                "num_classes": self.num_classes, "classifier": self.classifier.name}

    # -- streams: what flows into layer 0 -------------------------------------------------------

    def input_stream(self, x: torch.Tensor, y: torch.Tensor, y_neg: torch.Tensor | None):
        """FF: ``(x with label values zeroed, y, y_neg)`` for :class:`FFInputLayer`, which makes the
        positive/negative pairs; perf-opt: ``(neutral x, y)``."""
        if self.kind == "perf_opt":
            return embed_label(x, None, self.num_classes), y
        x0 = x.clone()
        x0[:, : self.num_classes] = 0
        return x0, y, y_neg

    # -- inference over whole datasets, chunked ---------------------------------------------------

    @torch.no_grad()
    def goodness_scores(self, x: torch.Tensor, skip: int) -> torch.Tensor:
        """``[N, C]``: per label, goodness summed over layers ``skip..`` with that label embedded."""
        C = self.num_classes
        labels = torch.arange(C, device=x.device)
        out = []
        for xb in x.split(max(EVAL_CHUNK // C, 1)):
            b = xb.shape[0]
            h = embed_label(xb.repeat(C, 1), labels.repeat_interleave(b), C)  # label-major [C*b, D]
            score = torch.zeros(C * b, device=x.device)
            for i, t in enumerate(self.layers):
                h = t.module(h)
                if i >= skip:
                    score += t.module.goodness(h)
            out.append(score.view(C, b).T)
        return torch.cat(out)

    @torch.no_grad()
    def neutral_activities(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Each layer's activities for neutral-label input."""
        h, acts = embed_label(x, None, self.num_classes), []
        for t in self.layers:
            t.module.eval()
            h = apply_chunked(t.module, h)
            acts.append(h)
        return acts

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier.scores(x).argmax(1)

    @torch.no_grad()
    def accuracy(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Fraction correct, as a 0-dim device tensor (read it with ``float()`` when logging)."""
        return (self.predict(x) == y).float().mean()


def build_classifier(net: FFNet, model_cfg, cfg, optim_cfg, total_epochs: int):
    if net.kind == "perf_opt":
        return PerfOptReadout(net, model_cfg.get("heads", "all"))
    if cfg.name == "goodness":
        return GoodnessClassifier(net, cfg.skip_first)
    if cfg.name == "softmax":
        return SoftmaxClassifier(net, cfg, optim_cfg, total_epochs)
    raise ConfigError(f"unknown classifier {cfg.name!r}; expected goodness or softmax")


def first_scored_layer(net: FFNet, skip_first: bool) -> int:
    skip = 1 if skip_first else 0
    if skip >= len(net.widths):
        raise ConfigError("classifier.skip_first=true needs at least 2 hidden layers "
                          f"(model.widths={net.widths}); set classifier.skip_first=false")
    return skip


class GoodnessClassifier:
    name, head = "goodness", None

    def __init__(self, net: FFNet, skip_first: bool):
        self.net, self.skip = net, first_scored_layer(net, skip_first)

    def scores(self, x):
        return self.net.goodness_scores(x, self.skip)


class SoftmaxClassifier:
    name = "softmax"

    def __init__(self, net: FFNet, cfg, optim_cfg, total_epochs: int):
        self.net, self.skip = net, first_scored_layer(net, cfg.skip_first)
        in_features = sum(net.widths[self.skip:])
        head_optim = {**optim_cfg, "name": cfg.optimizer, "lr": cfg.lr, "weight_decay": cfg.weight_decay}
        self.head = Trainee("classifier", SoftmaxHead(in_features, net.num_classes), head_optim, total_epochs)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Length-normalized activities at unit RMS scale (L2 direction times sqrt(width)), so the
        head's learning rate does not depend on the layer widths or on ``model.norm``."""
        acts = self.net.neutral_activities(x)[self.skip:]
        return torch.cat([normalize(a, "rms") for a in acts], 1)

    def scores(self, x):
        self.head.module.eval()
        return apply_chunked(self.head.module, self.features(x))


class PerfOptReadout:
    """Predict from the Performance-Optimized layers' own heads: the last, or all (log-probs summed)."""

    name, head = "perf_opt_heads", None

    def __init__(self, net: FFNet, heads: str):
        if heads not in ("last", "all"):
            raise ConfigError(f"model.heads must be last or all, got {heads!r}")
        self.net, self.heads = net, heads

    def scores(self, x):
        acts = self.net.neutral_activities(x)
        pairs = list(zip(self.net.layers, acts))
        if self.heads == "last":
            pairs = pairs[-1:]
        return sum(F.log_softmax(apply_chunked(t.module.logits, a), 1) for t, a in pairs)
