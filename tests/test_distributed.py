"""The distributed schedules under torchrun with gloo on CPU, at world sizes 2 and 4.

Every run here is a real ``torchrun`` (or two, for multi-node) on small synthetic data, checked for
behaviour: who trained what, equality with sequential FF, bytes on the wire, telemetry outputs, and
clean failures.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from ffpipe.comm import pack, packed_numel, unpack
from ffpipe.evaluate import evaluate
from ffpipe.model import FFNet
from ffpipe.optim import Trainee
from ffpipe.schedules.federated import partition
from ffpipe.schedules.single_layer import layer_blocks

pytestmark = pytest.mark.slow

SMALL = ["experiment=smoke", "train.progress=false", "device=cpu", "threads=1", "train.epochs=4",
         "train.chapters=4", "train.eval_every=2"]
FOUR = ["model.widths=[32,32,32,32]"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(tmp_path: Path, nproc: int, *overrides, name="run", timeout=300):
    env = {**os.environ, "FFPIPE_OUTPUT_DIR": str(tmp_path), "FFPIPE_RUN_STAMP": name}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc),
           "-m", "ffpipe.train", *SMALL, *overrides]
    if nproc == 1:
        cmd = [sys.executable, "-m", "ffpipe.train", *SMALL, *overrides]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, out.stderr[-4000:]
    return json.loads((tmp_path / name / "summary.json").read_text())


def steps_per_chapter(summary) -> int:
    return summary["epochs_per_chapter"] * -(-summary["num_train"] // summary["batch_size"])


@pytest.mark.parametrize("world", [2, 4])
def test_all_layers_equals_sequential_and_trains_on_the_ring(tmp_path, world):
    seq = torchrun(tmp_path, 1, *FOUR, name="seq")
    # world 4 posts receives when waited for (NCCL's way), world 2 as soon as known (gloo's)
    post = "on_wait" if world == 4 else "early"
    pff = torchrun(tmp_path, world, *FOUR, "parallel=pff_all_layers", f"dist.post_receives={post}", name="pff")
    # same units, same inputs, same order: bit-identical (random negatives)
    assert pff["test_accuracy"] == seq["test_accuracy"] > 0.5
    assert pff["final_losses"] == seq["final_losses"]
    units = ["layer.0", "layer.1", "layer.2", "layer.3", "classifier"]
    for r in pff["ranks"]:  # rank r trained every unit in chapters r, r + N, ...
        owned = len(range(r["rank"], pff["chapters"], world))
        assert r["trained_steps"] == {u: owned * steps_per_chapter(pff) for u in units}
    # bytes: each chapter but the last passes every unit on; then the last owner hands them to rank 0
    net = FFNet(*_cfgs(tmp_path), input_dim=64, num_classes=10, total_epochs=4)
    unit_bytes = 4 * sum(packed_numel(t, True) for t in net.trainees().values())
    last_owner = (pff["chapters"] - 1) % world
    expected = unit_bytes * (pff["chapters"] - 1 + (last_owner != 0))
    assert sum(r["bytes_sent"] for r in pff["ranks"]) == expected
    assert sum(r["bytes_received"] for r in pff["ranks"]) == expected
    # telemetry files
    run_dir = tmp_path / "pff"
    trace = json.loads((run_dir / "trace.json").read_text())
    assert {e["tid"] for e in trace["traceEvents"]} == set(range(world))
    assert (run_dir / "gantt.png").stat().st_size > 0
    assert pff["world_size"] == world and pff["wall_seconds"] > 0
    for r in pff["ranks"]:
        assert 0 < r["utilization"] <= 1 and 0 <= r["bubble_fraction"] < 1
    # the final network was gathered on rank 0 and checkpointed: it evaluates to the same accuracy
    assert evaluate(str(run_dir / "checkpoints" / "last.pt"), [])["test_accuracy"] == pff["test_accuracy"]


def _cfgs(tmp_path):
    from hydra import compose, initialize_config_dir

    from ffpipe.train import config_dir
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose("config", overrides=[*SMALL, *FOUR])
    return cfg.model, cfg.classifier, cfg.optim


@pytest.mark.parametrize("world", [2, 4])
def test_single_layer_trains_each_block_on_its_rank(tmp_path, world):
    seq = torchrun(tmp_path, 1, *FOUR, name="seq")
    pff = torchrun(tmp_path, world, *FOUR, "parallel=pff_single_layer", name="pff")
    # the staircase trains every layer on exactly the sequential inputs
    assert pff["test_accuracy"] == seq["test_accuracy"]
    assert pff["final_losses"] == seq["final_losses"]
    blocks = layer_blocks(4, world)
    steps = pff["chapters"] * steps_per_chapter(pff)
    net = FFNet(*_cfgs(tmp_path), input_dim=64, num_classes=10, total_epochs=4)
    for r in pff["ranks"]:
        rank, own = r["rank"], [net.layers[i] for i in blocks[r["rank"]]]
        expected = {f"layer.{i}": steps for i in blocks[rank]}
        if rank == world - 1:
            expected["classifier"] = steps
        assert r["trained_steps"] == expected
        # every chapter: own weights to each downstream rank; at the end: full state to rank 0
        final = own + ([net.classifier.head] if rank == world - 1 else [])
        sent = pff["chapters"] * (world - 1 - rank) * sum(4 * packed_numel(t, False) for t in own)
        sent += (rank != 0) * sum(4 * packed_numel(t, True) for t in final)
        assert r["bytes_sent"] == sent


def test_single_layer_warm_start_and_adaptive_negatives_are_reproducible(tmp_path):
    args = ["parallel=pff_single_layer", "parallel.warm_start=true", "negatives=adaptive"]
    a = torchrun(tmp_path, 2, *args, name="a")
    b = torchrun(tmp_path, 2, *args, name="b")
    assert a["test_accuracy"] == b["test_accuracy"] > 0.5
    assert a["final_losses"] == b["final_losses"]
    neg = sum(r["bytes_sent_by_kind"].get("negatives", 0) for r in a["ranks"])
    # the last rank publishes chapter c's negatives (c >= 2, the warm-start lag) to rank 0
    assert neg == (a["chapters"] - 2) * a["num_train"] * 8


@pytest.mark.parametrize("world,extra", [
    (2, ["parallel.partition=iid"]),
    (4, ["parallel.partition=iid", "train.epochs=16", "train.chapters=8"]),
    (2, ["parallel.partition=dirichlet", "parallel.dirichlet_alpha=0.3"]),
])
def test_federated_trains_on_private_shards(tmp_path, world, extra):
    s = torchrun(tmp_path, world, "parallel=pff_federated", *extra)
    assert s["test_accuracy"] > 0.4
    assert set(s["ranks"][0]["bytes_sent_by_kind"]) == {"weights"}  # only weights cross
    assert sum(s["shards"]["sizes"]) == s["num_train"] and len(s["shards"]["sizes"]) == world


@pytest.mark.parametrize("schedule", ["pff_all_layers", "pff_single_layer"])
def test_perf_opt_layers_under_pff(tmp_path, schedule):
    s = torchrun(tmp_path, 2, "model=perf_opt", "negatives=none", f"parallel={schedule}")
    assert s["test_accuracy"] > 0.5 and s["classifier"] == "perf_opt_heads"


@pytest.mark.parametrize("world", [2, 4])
def test_dff_sends_activations_every_batch(tmp_path, world):
    s = torchrun(tmp_path, world, "parallel=dff", f"model.widths={[64] * world}".replace(" ", ""))
    assert s["test_accuracy"] > 0.5
    # every epoch: every sample's positive and negative activations cross every boundary
    act = sum(r["bytes_sent_by_kind"].get("activations", 0) for r in s["ranks"])
    assert act == s["epochs"] * s["num_train"] * 2 * 64 * 4 * (world - 1)
    for r in s["ranks"]:
        assert list(r["trained_steps"]) == [f"layer.{r['rank']}"] + (["classifier"] if r["rank"] == 0 else [])


@pytest.mark.parametrize("world,schedule", [(2, "gpipe"), (2, "1f1b"), (4, "1f1b")])
def test_backprop_pipeline(tmp_path, world, schedule):
    s = torchrun(tmp_path, world, "parallel=backprop_pipeline", f"parallel.schedule={schedule}", "optim.lr=0.01",
                 *FOUR)
    assert s["test_accuracy"] > 0.5
    assert [list(r["trained_steps"]) for r in s["ranks"]] == [[f"stage.{i}"] for i in range(world)]
    assert all(r["bytes_sent_by_kind"] for r in s["ranks"])  # activations forward, gradients back


def test_single_layer_exchanges_every_k_steps(tmp_path):
    args = ["parallel=pff_single_layer", "parallel.warm_start=true", "parallel.exchange_every=3"]
    a = torchrun(tmp_path, 2, *args, "model.widths=[64,64]", name="a")
    b = torchrun(tmp_path, 2, *args, "model.widths=[64,64]", name="b")
    assert a["test_accuracy"] == b["test_accuracy"] > 0.5
    # 8 steps per epoch, 16 epochs... here 4 epochs x 8 steps = 32 steps: rank 0 publishes layer.0
    # (weights only) after steps 3, 6, ..., 27 (each used 3 steps later, before step 32)
    weights = a["ranks"][0]["bytes_sent_by_kind"]["weights"]
    assert weights == 9 * 4 * (64 * 64 + 64)


def test_distributed_schedule_without_torchrun_names_the_command(tmp_path):
    out = subprocess.run([sys.executable, "-m", "ffpipe.train", "parallel=pff_all_layers", "experiment=smoke"],
                         env={**os.environ, "FFPIPE_OUTPUT_DIR": str(tmp_path)}, capture_output=True, text=True)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "torchrun --nproc-per-node 2 -m ffpipe.train parallel=pff_all_layers experiment=smoke" in out.stderr


def test_killed_rank_makes_the_other_exit_with_a_clear_error(tmp_path):
    port = free_port()
    procs = []
    for rank in range(2):
        env = {**os.environ, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2",
               "LOCAL_WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
               "FFPIPE_OUTPUT_DIR": str(tmp_path), "FFPIPE_RUN_STAMP": "killed"}
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "ffpipe.train", *SMALL, "parallel=pff_all_layers", "train.epochs=400",
             "train.chapters=400", "dist.timeout_s=60"],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    log = tmp_path / "killed" / "train.log"
    deadline = time.time() + 120
    while time.time() < deadline and "chapter 3/400" not in (log.read_text() if log.exists() else ""):
        time.sleep(0.2)
    procs[1].send_signal(signal.SIGKILL)
    _, err = procs[0].communicate(timeout=90)
    assert procs[0].returncode == 2, err[-3000:]
    assert "ffpipe: error: rank 0:" in err and "another rank probably died" in err
    assert "Traceback" not in err


def test_two_torchrun_agents_train_one_job(tmp_path):
    port = free_port()
    env = {**os.environ, "FFPIPE_OUTPUT_DIR": str(tmp_path), "FFPIPE_RUN_STAMP": "multinode"}
    agents = [subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--node-rank", str(node),
         "--nproc-per-node", "1", "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}",
         "--rdzv-id", "ffpipe-test", "-m", "ffpipe.train", *SMALL, "parallel=pff_all_layers"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for node in range(2)]
    for a in agents:
        _, err = a.communicate(timeout=300)
        assert a.returncode == 0, err[-3000:]
    s = json.loads((tmp_path / "multinode" / "summary.json").read_text())
    assert s["world_size"] == 2 and s["test_accuracy"] > 0.5


def test_one_wandb_run_per_training_run(tmp_path):
    pytest.importorskip("wandb")
    torchrun(tmp_path, 2, "parallel=pff_all_layers", "logger=wandb", "logger.mode=offline")
    assert len(list((tmp_path / "run" / "wandb").glob("offline-run-*"))) == 1


# -- units ------------------------------------------------------------------------------------------

def test_pack_roundtrip_includes_optimizer_state():
    a = Trainee("t", torch.nn.Linear(5, 3), {"name": "adam", "lr": 0.1}, 10)
    b = Trainee("t", torch.nn.Linear(5, 3), {"name": "adam", "lr": 0.1}, 10)
    a.module.weight.sum().backward()
    a.optimizer.step()
    unpack(b, pack(a, True), True)
    for key in ("weight", "bias"):
        assert torch.equal(getattr(a.module, key), getattr(b.module, key))
        pa, pb = getattr(a.module, key), getattr(b.module, key)
        for s in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(a.optimizer.state[pa][s], b.optimizer.state[pb][s])


def test_layer_blocks_and_partitions():
    assert layer_blocks(3, 2) == [range(0, 2), range(2, 3)]
    assert layer_blocks(4, 2, [1, 3]) == [range(0, 1), range(1, 4)]
    y = torch.arange(1000) % 10
    for kind in ("iid", "dirichlet"):
        shards = partition(y, 3, kind, 0.3, seed=0)
        assert torch.equal(torch.cat(shards).sort().values, torch.arange(1000))
        assert all(torch.equal(s, t) for s, t in zip(shards, partition(y, 3, kind, 0.3, seed=0)))
