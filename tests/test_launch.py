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


def test_launch_scripts_parse():
    for script in ("torchrun.sh", "multinode.sh", "slurm.sbatch"):
        out = subprocess.run(["bash", "-n", str(REPO / "launch" / script)], capture_output=True, text=True)
        assert out.returncode == 0, out.stderr


def test_telemetry_counts_waits_inside_compute_as_waiting():
    from ffpipe.telemetry import analyse
    spans = [("compute", "train", 0.0, 10.0), ("recv-wait", "recv", 2.0, 5.0), ("send", "send", 6.0, 7.0),
             ("compute", "eval", 12.0, 14.0)]
    rec = {"rank": 0, "t0_wall": 100.0, "end": 20.0, "spans": spans, "bytes_sent": 8, "bytes_received": 4,
           "messages_sent": 1, "messages_received": 1, "sent_by_kind": {"weights": 8}, "steps": {}, "device": "cpu"}
    late = {**rec, "rank": 1, "t0_wall": 105.0, "end": 10.0, "spans": [("compute", "train", 0.0, 10.0)]}
    out = analyse([rec, late])
    r0, r1 = out["ranks"]
    assert out["wall_seconds"] == 20.0  # rank 1 started 5 s later and ended at 15 s on rank 0's clock
    assert r0["compute_seconds"] == 8.0 and r0["recv_wait_seconds"] == 3.0 and r0["send_seconds"] == 1.0
    assert r0["utilization"] == 0.4 and r0["bubble_fraction"] == (3.0 + 8.0) / 20.0
    assert r1["utilization"] == 0.5
