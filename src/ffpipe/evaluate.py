"""``python -m ffpipe.evaluate <checkpoint> [overrides]``: accuracy of a saved network.

The checkpoint carries the config it was trained with; overrides (typically ``data=...`` or
``data.root=...``) are applied on top of it with Hydra's compose API, so the same model can be
evaluated on another split or dataset.
"""

from __future__ import annotations

import argparse
import json
import sys

import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from ffpipe import checkpoint, distributed
from ffpipe.data import build_dataset
from ffpipe.errors import FFPipeError
from ffpipe.train import build_net, config_dir


def load_config(state: dict, overrides: list[str]):
    """The checkpoint's config with ``overrides`` applied. Group choices (``data=mnist``) replace
    that whole group with conf/'s version; dotted keys (``data.root=...``) edit single values."""
    saved = OmegaConf.create(state["config"])
    group_choices = [o for o in overrides if "=" in o and "." not in o.split("=", 1)[0]]
    if group_choices:
        with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
            fresh = compose("config", overrides=group_choices)
        for o in group_choices:
            group = o.split("=", 1)[0].lstrip("+~")
            saved[group] = fresh[group]
    dotted = [o for o in overrides if o not in group_choices]
    try:
        return OmegaConf.merge(saved, OmegaConf.from_dotlist(dotted))
    except Exception as e:
        raise FFPipeError(f"bad override in {dotted}: {e}") from None


def evaluate(path: str, overrides: list[str], device: str = "auto") -> dict:
    state = checkpoint.load(path)
    cfg = load_config(state, overrides)
    dev = distributed.resolve_device(device, 0)
    torch.manual_seed(int(cfg.seed))
    data = build_dataset(cfg.data, dev)
    net = build_net(cfg, data.input_dim, data.num_classes).to(dev)
    checkpoint.check_arch(state, net.arch(), path)
    checkpoint.restore(state, net)
    return {
        "checkpoint": str(path),
        "dataset": cfg.data.name,
        "chapter": int(state["chapter"]) + 1,
        "test_accuracy": float(net.accuracy(data.test.x, data.test.y)),
        "train_accuracy": float(net.accuracy(data.train.x, data.train.y)),
        "num_test": len(data.test),
        "num_train": len(data.train),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m ffpipe.evaluate", description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", help="path to a checkpoint (e.g. outputs/<date>/<time>/checkpoints/last.pt)")
    parser.add_argument("overrides", nargs="*", help="Hydra-style overrides, e.g. data=mnist data.root=/data")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    parser.add_argument("--json", action="store_true", help="print the result as one JSON object")
    args = parser.parse_args(argv)
    try:
        result = evaluate(args.checkpoint, args.overrides, args.device)
    except FFPipeError as e:
        print(f"ffpipe: error: {e}", file=sys.stderr)
        sys.exit(2)
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{result['dataset']}: test accuracy {result['test_accuracy']:.4f} ({result['num_test']} samples), "
              f"train accuracy {result['train_accuracy']:.4f} ({result['num_train']} samples), "
              f"checkpoint after chapter {result['chapter']}")


if __name__ == "__main__":
    main()
