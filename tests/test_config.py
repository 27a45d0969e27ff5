"""Every config group composes, and the experiments say what they promise."""

from pathlib import Path

import pytest

from ffpipe.train import config_dir

GROUPS = ["data", "model", "negatives", "classifier", "parallel", "optim", "logger", "experiment"]


def options(group):
    return sorted(p.stem for p in (Path(config_dir()) / group).glob("*.yaml"))


def test_defaults_compose(compose_cfg):
    cfg = compose_cfg()
    assert cfg.data.name == "mnist10k" and cfg.parallel.name == "sequential"
    assert cfg.train.epochs % cfg.train.chapters == 0


@pytest.mark.parametrize("group", GROUPS)
def test_every_option_composes(compose_cfg, group):
    assert options(group), f"conf/{group}/ is empty"
    for option in options(group):
        cfg = compose_cfg(f"{group}={option}")
        assert cfg.train.epochs > 0


def test_paper_mnist_is_the_papers_setup(compose_cfg):
    cfg = compose_cfg("experiment=paper_mnist")
    assert cfg.data.name == "mnist"
    assert list(cfg.model.widths) == [2000, 2000, 2000, 2000]
    assert (cfg.train.epochs, cfg.train.chapters, cfg.train.batch_size) == (100, 100, 64)
    assert cfg.optim.name == "adam" and cfg.optim.lr == 0.01 and cfg.classifier.lr == 1e-4
    assert cfg.optim.cooldown_from * cfg.train.epochs == 50


def test_mnist10k_experiment(compose_cfg):
    cfg = compose_cfg("experiment=mnist10k")
    assert cfg.data.name == "mnist10k" and cfg.data.num_train == 8000
    assert cfg.parallel.name == "sequential"


def test_data_root_defaults_to_env(compose_cfg, monkeypatch):
    monkeypatch.setenv("FFPIPE_DATA", "/some/where")
    assert compose_cfg().data.root == "/some/where"
    monkeypatch.delenv("FFPIPE_DATA")
    assert compose_cfg().data.root == "./data"
