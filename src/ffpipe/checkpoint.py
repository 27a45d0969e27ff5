"""Checkpoints: every trainee (module + optimizer), negatives state and chapter index.

Written atomically (temp file + ``os.replace``) so a crash never leaves a torn checkpoint and the
last good one survives; read with ``weights_only=True``.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from ffpipe.errors import CheckpointError

FORMAT = "ffpipe-checkpoint-v1"


def save(path: Path, state: dict) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"format": FORMAT, **state}, tmp)
    os.replace(tmp, path)


def load(path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle, zip and unsafe-global errors all mean "not our checkpoint"
        raise CheckpointError(f"cannot read checkpoint {path}: {str(e).splitlines()[0]}") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not an ffpipe checkpoint")
    return state


def check_arch(state: dict, arch: dict, path) -> None:
    saved = state.get("arch", {})
    diffs = [f"{k}: checkpoint {saved.get(k)!r} vs config {v!r}" for k, v in arch.items() if saved.get(k) != v]
    if diffs:
        raise CheckpointError(f"checkpoint {path} does not match this model ({'; '.join(diffs)})")


def capture(net, negatives, chapter: int, config: dict) -> dict:
    return {
        "arch": net.arch(),
        "trainees": {name: t.state_dict() for name, t in net.trainees().items()},
        "negatives": negatives.state_dict(),
        "chapter": chapter,
        "config": config,
    }


def restore(state: dict, net, negatives=None) -> int:
    """Load ``state`` into ``net`` (and negatives when given); return the next chapter. Training
    randomness is derived from (seed, chapter), so no RNG state needs restoring."""
    trainees = net.trainees()
    missing = sorted(set(trainees) - set(state["trainees"]))
    if missing:
        raise CheckpointError(f"checkpoint lacks {', '.join(missing)}")
    try:
        for name, t in trainees.items():
            t.load_state_dict(state["trainees"][name])
    except (RuntimeError, ValueError, KeyError) as e:
        raise CheckpointError(f"checkpoint does not fit the model: {str(e).splitlines()[0]}") from None
    if negatives is not None:
        negatives.load_state_dict(state.get("negatives", {}))
    return int(state["chapter"]) + 1
