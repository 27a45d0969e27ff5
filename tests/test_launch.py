"""Launch plumbing: torchrun runs the same module, and all ranks agree on one run directory."""

import json
import os
import subprocess
import sys
from pathlib import Path

from ffpipe import distributed

REPO = Path(__file__).resolve().parents[1]


def test_run_stamp_is_shared_by_sibling_ranks():
    # Two "ranks" started by one parent (as torchrun's agent starts them) at different moments.
    code = ("import time, sys; from ffpipe.distributed import run_stamp; "
            "time.sleep(float(sys.argv[1])); print(run_stamp())")
    env = {**os.environ, "WORLD_SIZE": "2"}
    env.pop("FFPIPE_RUN_STAMP", None)
    procs = [subprocess.Popen([sys.executable, "-c", code, delay], env=env, stdout=subprocess.PIPE, text=True)
             for delay in ("0", "1.2")]
    stamps = {p.communicate()[0].strip() for p in procs}
    assert len(stamps) == 1


def test_run_stamp_env_override(monkeypatch):
    monkeypatch.setenv("FFPIPE_RUN_STAMP", "fixed/stamp")
    assert distributed.run_stamp() == "fixed/stamp"


def test_torchrun_runs_the_training_module(tmp_path):
    env = {**os.environ, "FFPIPE_OUTPUT_DIR": str(tmp_path), "PYTHON": sys.executable}
    out = subprocess.run(["bash", str(REPO / "launch" / "torchrun.sh"), "1", "experiment=smoke",
                          "train.progress=false", "device=cpu"], env=env, capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    summaries = list(tmp_path.rglob("summary.json"))
    assert len(summaries) == 1
    assert json.loads(summaries[0].read_text())["world_size"] == 1
