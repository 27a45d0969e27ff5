"""Negative labels for supervised FF (the paper's RandomNEG, FixedNEG and AdaptiveNEG).

Every sampler returns, per training sample, a label that is never the true one. All of them work
on whole label tensors on the device; AdaptiveNEG scores every label for every sample in one
batched pass of the network (:meth:`ffpipe.model.FFNet.goodness_scores`).
"""

from __future__ import annotations

import torch

from ffpipe.errors import ConfigError


def wrong_labels(y: torch.Tensor, num_classes: int, generator: torch.Generator) -> torch.Tensor:
    """A uniformly random label different from ``y``, for every sample."""
    shift = torch.randint(1, num_classes, y.shape, device=y.device, generator=generator)
    return (y + shift) % num_classes


class RandomNeg:
    """New random wrong labels every chapter."""

    name = "random"

    def labels(self, chapter, net, x, y, generator):
        return wrong_labels(y, net.num_classes, generator)

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class FixedNeg:
    """One random wrong label per sample, drawn once at the start and kept."""

    name = "fixed"

    def __init__(self):
        self.fixed: torch.Tensor | None = None

    def labels(self, chapter, net, x, y, generator):
        if self.fixed is None or self.fixed.shape != y.shape:
            self.fixed = wrong_labels(y, net.num_classes, generator)
        self.fixed = self.fixed.to(y.device)  # restored checkpoints hold CPU tensors
        return self.fixed

    def state_dict(self) -> dict:
        return {} if self.fixed is None else {"fixed": self.fixed.cpu()}

    def load_state_dict(self, state: dict) -> None:
        self.fixed = state.get("fixed")


class AdaptiveNeg:
    """The most-predicted wrong label under the current network, recomputed every ``every``
    chapters. Before the network has trained at all (chapter 0) there is no prediction to adapt
    to, so chapter 0 uses random wrong labels.

    ``scorer=goodness`` (the paper's) scores each label by goodness, one batched pass of all labels;
    ``scorer=classifier`` asks the configured classifier instead, which for the softmax head is a
    single neutral-label pass (about 1/C of the cost)."""

    name = "adaptive"

    def __init__(self, every: int = 1, skip_first: bool = True, scorer: str = "goodness"):
        if int(every) < 1:
            raise ConfigError(f"negatives.every must be >= 1, got {every}")
        if scorer not in ("goodness", "classifier"):
            raise ConfigError(f"negatives.scorer must be goodness or classifier, got {scorer!r}")
        self.every, self.skip, self.scorer = int(every), 1 if skip_first else 0, scorer
        self.current: torch.Tensor | None = None

    def labels(self, chapter, net, x, y, generator):
        if chapter == 0 and self.current is None:
            self.current = wrong_labels(y, net.num_classes, generator)
        elif chapter % self.every == 0 or self.current is None or self.current.shape != y.shape:
            if self.scorer == "classifier":
                scores = net.classifier.scores(x).float()
            else:
                scores = net.goodness_scores(x, min(self.skip, len(net.layers) - 1))
            scores.scatter_(1, y.unsqueeze(1), float("-inf"))
            self.current = scores.argmax(1)
        self.current = self.current.to(y.device)  # restored checkpoints hold CPU tensors
        return self.current

    def state_dict(self) -> dict:
        return {} if self.current is None else {"current": self.current.cpu()}

    def load_state_dict(self, state: dict) -> None:
        self.current = state.get("current")


class NoNeg:
    """Performance-Optimized layers learn from labels directly and use no negatives."""

    name = "none"

    def labels(self, chapter, net, x, y, generator):
        return None

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


def build_negatives(cfg, model_kind: str):
    if model_kind == "perf_opt":
        if cfg.name != "none":
            raise ConfigError(f"model.kind=perf_opt trains without negatives; set negatives=none "
                              f"(got negatives={cfg.name})")
        return NoNeg()
    if cfg.name == "random":
        return RandomNeg()
    if cfg.name == "fixed":
        return FixedNeg()
    if cfg.name == "adaptive":
        return AdaptiveNeg(cfg.get("every", 1), cfg.get("skip_first", True), cfg.get("scorer", "goodness"))
    if cfg.name == "none":
        raise ConfigError("negatives=none only goes with model.kind=perf_opt; FF layers need negatives "
                          "(random, fixed or adaptive)")
    raise ConfigError(f"unknown negatives {cfg.name!r}; expected random, fixed, adaptive or none")
