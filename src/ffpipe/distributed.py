"""Everything about ranks, devices and process groups lives here.

``torchrun`` sets ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``; a plain ``python -m ffpipe.train`` is a
world of one. Each rank gets ``cuda:LOCAL_RANK`` when CUDA is available, else the CPU. The backend
(``dist.backend=auto``) is NCCL when every local rank has a GPU of its own, and gloo otherwise: on
CPU, and when several ranks share one GPU (NCCL allows one rank per device; :mod:`ffpipe.comm`
then stages transfers through host memory).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from ffpipe.errors import ConfigError


@dataclass
class DistEnv:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str | None = None  # None: a world of one, no process group

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def env_rank() -> int:
    return int(os.environ.get("RANK", "0"))


def env_world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def resolve_device(name: str, local_rank: int) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("device=cuda but CUDA is not available here; use device=cpu or device=auto")
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    if name == "cpu":
        return torch.device("cpu")
    raise ConfigError(f"device must be auto, cpu or cuda, got {name!r}")


def choose_backend(name: str, device: torch.device) -> str:
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", env_world_size()))
    own_gpu = device.type == "cuda" and local_world <= torch.cuda.device_count()
    if name == "auto":
        return "nccl" if own_gpu else "gloo"
    if name == "nccl" and not own_gpu:
        why = ("the ranks run on the CPU" if device.type != "cuda" else
               f"{local_world} local ranks share {torch.cuda.device_count()} GPU(s)")
        raise ConfigError(f"dist.backend=nccl needs one GPU per rank, but {why}; use dist.backend=gloo or auto")
    if name not in ("nccl", "gloo"):
        raise ConfigError(f"dist.backend must be auto, nccl or gloo, got {name!r}")
    return name


def pin_cores(local_rank: int, threads: int) -> None:
    """Pin this process to its own ``threads`` cores (local rank r gets cores r*threads, ...)."""
    cores = sorted(os.sched_getaffinity(0))
    mine = cores[local_rank * threads: (local_rank + 1) * threads]
    if len(mine) < threads:
        raise ConfigError(f"dist.pin_cpu=true: local rank {local_rank} needs cores {local_rank * threads}.."
                          f"{(local_rank + 1) * threads - 1} but only {len(cores)} are available")
    os.sched_setaffinity(0, mine)


def setup(device_name: str, threads: int | None = None, backend: str = "auto",
          timeout_s: float = 600, pin_cpu: bool = False) -> DistEnv:
    """Join the process group if launched by torchrun, pick this rank's device and backend.
    ``timeout_s`` bounds how long a collective or transfer may wait for a peer; ``pin_cpu`` pins
    each local rank to its own ``threads`` cores."""
    rank, world = env_rank(), env_world_size()
    local = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_name, local)
    if pin_cpu:
        pin_cores(local, int(threads or 1))
    if threads:
        torch.set_num_threads(int(threads))
    if device.type == "cuda":
        torch.cuda.set_device(device)
    chosen = None
    if world > 1:
        chosen = choose_backend(backend, device)
        if not dist.is_initialized():
            dist.init_process_group(chosen, timeout=timedelta(seconds=float(timeout_s)),
                                    device_id=device if chosen == "nccl" else None)
    return DistEnv(rank, world, local, device, chosen)


def barrier(env: DistEnv) -> None:
    if env.world_size > 1:
        if env.backend == "nccl":
            dist.barrier(device_ids=[env.device.index])
        else:
            dist.barrier()


def torchrun_command(nproc: int, argv: list[str]) -> str:
    """The command line that would launch this same run under torchrun with ``nproc`` ranks."""
    import shlex  # noqa: PLC0415
    return f"torchrun --nproc-per-node {nproc} -m ffpipe.train " + " ".join(shlex.quote(a) for a in argv)


def teardown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def synchronize(device: torch.device) -> None:
    """Wait for queued device work (for honest timings at chapter boundaries only)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_memory_mb(device: torch.device) -> float:
    """Peak device memory (CUDA allocator) or peak resident set size of this process (CPU)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import resource  # noqa: PLC0415
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def _process_start_time(pid: int) -> float | None:
    """Wall-clock start time of ``pid`` from /proc (Linux), or None."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            ticks = int(f.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/stat") as f:
            btime = next(int(line.split()[1]) for line in f if line.startswith("btime"))
        return btime + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return None


def run_stamp() -> str:
    """The run directory's timestamp, identical on every rank of one launch.

    ``$FFPIPE_RUN_STAMP`` wins (set it on every node of a multi-node job that shares a filesystem).
    Under torchrun all local ranks are children of one agent process, so its start time names the
    run; a single process uses the current time.
    """
    if stamp := os.environ.get("FFPIPE_RUN_STAMP"):
        return stamp
    t = None
    if env_world_size() > 1:
        t = _process_start_time(os.getppid())
        if t is None and os.environ.get("TORCHELASTIC_RUN_ID", "none") != "none":
            return os.environ["TORCHELASTIC_RUN_ID"]
    return time.strftime("%Y-%m-%d/%H-%M-%S", time.localtime(t if t is not None else time.time()))
