import os
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from ffpipe.train import config_dir

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = (REPO.parent / "shared" / "data").resolve()


@pytest.fixture
def compose_cfg():
    """Compose conf/ with Hydra's compose API (as the entry point would), with overrides."""
    def _compose(*overrides):
        with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
            return compose("config", overrides=list(overrides))
    return _compose


@pytest.fixture
def shared_data():
    root = Path(os.environ.get("FFPIPE_DATA", SHARED_DATA))
    if not (root / "MNIST" / "raw" / "t10k-images-idx3-ubyte.gz").exists():
        pytest.skip(f"MNIST test files not found under {root}")
    return root
