"""The Forward-Forward algorithm on one process.

Read top to bottom:

1. labels are written into the first ``num_classes`` input values (one-hot, or 0.1 everywhere for
   the neutral label);
2. an :class:`FFLayer` normalizes its input (L2 length or RMS), applies Linear + ReLU, and scores
   a sample by its goodness (sum or mean of squared activities). Its objective raises goodness on
   positive data and lowers it on negative data (Hinton's thresholded softplus, or SymBa);
3. a :class:`PerfOptLayer` (paper section 4.4) instead trains Linear + ReLU + its own softmax head
   by cross-entropy on neutral-label input, with no negatives;
4. :func:`train_unit` is the ONE training loop: it trains any trainee (an FF layer, a head, a
   backprop MLP) for some epochs on tensors already on the device. Sequential FF and every
   distributed schedule call it; none has a loop of its own.

A layer's *stream* is what flows between layers: for FF one tensor ``[N, 2, D]`` holding each
sample's positive and negative version side by side (so one gather fetches both, and they go
through the layer as one batch); into the first FF layer ``(images, labels, negative labels)``,
which :class:`FFInputLayer` turns into the pair at half the cost; for Performance-Optimized layers
``([N, D], labels)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ffpipe.errors import ConfigError, NonFiniteLossError

NORMS, GOODNESS, LOSSES = ("l2", "rms"), ("sum", "mean"), ("hinton", "symba")
NORM_EPS = 1e-8
EVAL_CHUNK = 4096  # samples per no-grad forward when propagating whole datasets


def check_choice(key: str, value, options) -> None:
    if value not in options:
        raise ConfigError(f"{key} must be one of {', '.join(options)}, got {value!r}")


def embed_label(x: torch.Tensor, y: torch.Tensor | None, num_classes: int) -> torch.Tensor:
    """Copy of ``x`` [N, D] with its first ``num_classes`` values replaced by the one-hot label
    ``y`` [N], or by the neutral label ``1/num_classes`` (0.1 for ten classes) when ``y`` is None."""
    out = x.clone()
    if y is None:
        out[:, :num_classes] = 1.0 / num_classes
    else:
        out[:, :num_classes] = F.one_hot(y, num_classes).to(x.dtype)
    return out


def normalize(x: torch.Tensor, kind: str, eps: float = NORM_EPS) -> torch.Tensor:
    """Length (``l2``) or root-mean-square (``rms``) normalization over the feature dimension."""
    if kind == "l2":
        return x / (x.norm(dim=-1, keepdim=True) + eps)
    if kind == "rms":
        return x / (x.pow(2).mean(dim=-1, keepdim=True).sqrt() + eps)
    raise ConfigError(f"model.norm must be l2 or rms, got {kind!r}")


def goodness(h: torch.Tensor, kind: str) -> torch.Tensor:
    """Per-sample goodness: sum or mean of squared activities over the last dimension."""
    if kind == "sum":
        return h.pow(2).sum(dim=-1)
    if kind == "mean":
        return h.pow(2).mean(dim=-1)
    raise ConfigError(f"model.goodness must be sum or mean, got {kind!r}")


def ff_loss(g_pos: torch.Tensor, g_neg: torch.Tensor, kind: str, threshold: float, alpha: float) -> torch.Tensor:
    """``hinton``: softplus(theta - g_pos) + softplus(g_neg - theta), each scaled by ``alpha``;
    ``symba``: softplus(-alpha * (g_pos - g_neg)) (Lee & Song's symmetric loss)."""
    if kind == "hinton":
        return (F.softplus(alpha * (threshold - g_pos)) + F.softplus(alpha * (g_neg - threshold))).mean()
    if kind == "symba":
        return F.softplus(-alpha * (g_pos - g_neg)).mean()
    raise ConfigError(f"model.loss must be hinton or symba, got {kind!r}")


class FFLayer(nn.Module):
    """normalize -> Linear -> ReLU, trained by its local goodness objective."""

    def __init__(self, in_features: int, out_features: int, norm: str = "rms", goodness: str = "mean",
                 loss: str = "symba", threshold: float = 1.0, alpha: float = 4.0):
        super().__init__()
        self.linear = nn.Linear(in_features, out_features)
        self.norm, self.goodness_kind, self.loss_kind = norm, goodness, loss
        self.threshold, self.alpha = float(threshold), float(alpha)
        check_choice("model.norm", norm, NORMS)
        check_choice("model.goodness", goodness, GOODNESS)
        check_choice("model.loss", loss, LOSSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.linear(normalize(x, self.norm)))

    def goodness(self, h: torch.Tensor) -> torch.Tensor:
        return goodness(h, self.goodness_kind)

    def pair_objective(self, h: torch.Tensor):
        """Loss and mean goodness gap from activities ``h`` [B, 2, out] (positive, negative)."""
        g = self.goodness(h)
        return ff_loss(g[:, 0], g[:, 1], self.loss_kind, self.threshold, self.alpha), (g[:, 0] - g[:, 1]).mean()

    def objective(self, pn: torch.Tensor):
        """``pn`` [B, 2, D]: positives and negatives go through the layer as one batch."""
        return self.pair_objective(self(pn))

    @torch.no_grad()
    def propagate(self, stream):
        (pn,) = stream
        return (apply_chunked(self, pn),)


class FFInputLayer(FFLayer):
    """The first FF layer, which sees the label written into its input.

    A sample's positive and negative versions differ only in the label values, and a one-hot label
    adds the same energy whatever its class, so both share one normalization. The image part of
    the matmul is therefore computed once for the pair (forward, and the weight gradient in
    backward) and only the label columns are added per version: the same function as
    :class:`FFLayer` on the embedded inputs, at about half the cost of layer 0. Its stream is
    ``(images with label values zeroed, true labels, negative labels)``.
    """

    def __init__(self, in_features: int, out_features: int, num_classes: int, **kwargs):
        super().__init__(in_features, out_features, **kwargs)
        self.num_classes = num_classes

    def paired_pre_activations(self, x0: torch.Tensor, y_pos: torch.Tensor, y_neg: torch.Tensor) -> torch.Tensor:
        """``[B, 2, out]`` pre-activations of the positive and negative version of each image."""
        energy = x0.pow(2).sum(1, keepdim=True) + 1.0  # + one-hot label
        denom = energy.sqrt() if self.norm == "l2" else (energy / x0.shape[1]).sqrt()
        scale = 1.0 / (denom + NORM_EPS)
        base = self.linear(x0 * scale).unsqueeze(1)  # [B, 1, out], shared by the pair
        # The label columns as a tiny one-hot matmul (its backward is a matmul too; a gather's
        # backward is a slow scatter-add on CPU).
        labels = torch.stack([F.one_hot(y_pos, self.num_classes), F.one_hot(y_neg, self.num_classes)], 1)
        return base + (labels.to(x0.dtype) * scale.unsqueeze(1)) @ self.linear.weight[:, : self.num_classes].T

    def objective(self, x0, y_pos, y_neg):
        return self.pair_objective(F.relu(self.paired_pre_activations(x0, y_pos, y_neg)))

    @torch.no_grad()
    def propagate(self, stream):
        x0, y_pos, y_neg = stream
        out = [F.relu(self.paired_pre_activations(*part)) for part in
               zip(x0.split(EVAL_CHUNK), y_pos.split(EVAL_CHUNK), y_neg.split(EVAL_CHUNK))]
        return (torch.cat(out),)


class PerfOptLayer(nn.Module):
    """Performance-Optimized PFF layer: normalize -> Linear -> ReLU, plus a private softmax head on
    the normalized activities; trained end to end by cross-entropy inside layer + head only."""

    def __init__(self, in_features: int, out_features: int, num_classes: int, norm: str = "rms"):
        super().__init__()
        self.linear = nn.Linear(in_features, out_features)
        self.head = nn.Linear(out_features, num_classes)
        self.norm = norm
        check_choice("model.norm", norm, NORMS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.linear(normalize(x, self.norm)))

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        return self.head(normalize(h, self.norm))

    def objective(self, x: torch.Tensor, y: torch.Tensor):
        logits = self.logits(self(x))
        return F.cross_entropy(logits, y), (logits.argmax(1) == y).float().mean()

    @torch.no_grad()
    def propagate(self, stream):
        x, y = stream
        return apply_chunked(self, x), y


class SoftmaxHead(nn.Module):
    """Linear softmax classifier on fixed (detached) features; also the perf-opt-free FF readout."""

    def __init__(self, in_features: int, num_classes: int):
        super().__init__()
        self.linear = nn.Linear(in_features, num_classes)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        return self.linear(feats)

    def objective(self, feats: torch.Tensor, y: torch.Tensor):
        logits = self(feats)
        return F.cross_entropy(logits, y), (logits.argmax(1) == y).float().mean()


@torch.no_grad()
def apply_chunked(fn, x: torch.Tensor, chunk: int = EVAL_CHUNK) -> torch.Tensor:
    """``fn`` over ``x`` in row chunks (bounded activation memory), concatenated."""
    if x.shape[0] <= chunk:
        return fn(x)
    return torch.cat([fn(part) for part in x.split(chunk)])


@dataclass
class UnitStats:
    """What one :func:`train_unit` call measured; tensors stay on the device until read."""

    loss: torch.Tensor  # mean loss over all steps
    metric: torch.Tensor  # mean goodness gap (FF) or batch accuracy (softmax objectives)
    steps: int
    samples: int


def shuffled_batches(inputs: tuple[torch.Tensor, ...], batch_size: int, generator: torch.Generator):
    """One epoch of minibatches of ``inputs`` in a fresh on-device random order."""
    perm = torch.randperm(inputs[0].shape[0], device=inputs[0].device, generator=generator)
    for idx in perm.split(batch_size):
        yield tuple(t[idx] for t in inputs)


def train_unit(trainee, inputs: tuple[torch.Tensor, ...] | None, epochs: int, batch_size: int,
               generator: torch.Generator, first_epoch: int, batches=None) -> UnitStats:
    """Train ``trainee`` for ``epochs`` epochs on ``inputs`` (tensors aligned on dim 0, on the device).

    Each epoch draws a fresh on-device permutation and steps the trainee's optimizer once per
    minibatch of ``batch_size`` samples. ``batches(epoch)``, when given, supplies each epoch's
    minibatches instead (DFF: activations arriving from the previous rank). ``first_epoch`` is the
    global index of the first epoch, which sets the learning-rate cooldown. Per-step losses stay on
    the device, so the loop never waits on it; one check at the end names the first non-finite step.
    """
    if epochs <= 0:
        raise ConfigError(f"epochs per call must be positive, got {epochs}")
    module, opt = trainee.module, trainee.optimizer
    module.train()
    losses, metrics, per_epoch, samples = [], [], [], 0
    for e in range(epochs):
        trainee.set_epoch(first_epoch + e)
        epoch = batches(e) if batches is not None else shuffled_batches(inputs, batch_size, generator)
        per_epoch.append(0)
        for batch in epoch:
            opt.zero_grad(set_to_none=True)
            loss, metric = module.objective(*batch)
            loss.backward()
            opt.step()
            losses.append(loss.detach())
            metrics.append(metric.detach())
            per_epoch[-1] += 1
            samples += batch[0].shape[0]
    losses = torch.stack(losses)
    finite = torch.isfinite(losses)
    if not bool(finite.all()):  # the one host sync per call
        bad = int((~finite).nonzero()[0])
        epoch = next(i for i in range(epochs) if bad < sum(per_epoch[: i + 1]))
        raise NonFiniteLossError(
            f"non-finite loss in {trainee.name} at epoch {first_epoch + epoch} "
            f"step {bad - sum(per_epoch[:epoch])} (lower the learning rate, or check the input data)")
    return UnitStats(losses.mean(), torch.stack(metrics).mean(), len(losses), samples)
