"""All communication between ranks, in one place.

Schedules exchange three kinds of things, always point to point and always asynchronously:

- a trainee's state (an FF layer, a softmax head): its parameters and, by default, its optimizer
  state, packed into one flat fp32 tensor (:func:`pack` / :func:`unpack`);
- negative labels (int64);
- activations (DFF), one tensor per batch.

``send`` never blocks compute: it enqueues an ``isend`` (NCCL: on NCCL's own stream; gloo: on its
background thread) and keeps the buffer alive until the transfer completes. ``recv`` returns an
:class:`Incoming` at once (gloo posts the ``irecv`` immediately; NCCL when it is waited for, see
``Comm.eager``); the receive is only waited for (and timed as ``recv-wait``) when the schedule
needs the data. Messages between two ranks are matched in the order they are posted. Every byte is
counted on the rank's :class:`~ffpipe.telemetry.Timeline`.

When several ranks share one GPU, NCCL cannot run (one communicator per device); the backend is then
gloo and tensors are staged through host memory here. A peer that dies (or a transfer that fails)
raises :class:`~ffpipe.errors.CommError` naming this rank, the peer and the message, so the job
ends with one clear line instead of hanging.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from ffpipe.errors import CommError, ConfigError
from ffpipe.telemetry import Timeline


def optimizer_tensors(trainee) -> list[torch.Tensor]:
    """The optimizer's per-parameter state tensors, in a fixed order (initialized if empty)."""
    opt = trainee.optimizer
    out = []
    for group in opt.param_groups:
        for p in group["params"]:
            state = opt.state[p]
            out += [state[k] for k in sorted(state) if torch.is_tensor(state[k])]
    return out


def state_tensors(trainee, with_optimizer: bool) -> list[torch.Tensor]:
    tensors = [p.data for p in trainee.module.parameters()]
    return tensors + optimizer_tensors(trainee) if with_optimizer else tensors


@torch.no_grad()
def pack(trainee, with_optimizer: bool) -> torch.Tensor:
    return torch.cat([t.reshape(-1).float() for t in state_tensors(trainee, with_optimizer)])


@torch.no_grad()
def unpack(trainee, flat: torch.Tensor, with_optimizer: bool) -> None:
    offset = 0
    for t in state_tensors(trainee, with_optimizer):
        n = t.numel()
        t.copy_(flat[offset:offset + n].view_as(t))
        offset += n
    assert offset == flat.numel(), (offset, flat.numel())


def packed_numel(trainee, with_optimizer: bool) -> int:
    return sum(t.numel() for t in state_tensors(trainee, with_optimizer))


class Incoming:
    """A receive; :meth:`wait` blocks (timed as ``recv-wait``) and returns the tensor."""

    def __init__(self, comm: Comm, buf: torch.Tensor, src: int, what: str, on_arrival=None, eager: bool = True):
        self.comm, self.work, self.buf, self.src, self.what = comm, None, buf, src, what
        self.on_arrival, self.value = on_arrival, None
        if eager:
            self.post()

    def post(self) -> None:
        try:
            self.work = dist.irecv(self.buf, self.src)
        except Exception as e:
            raise CommError(f"rank {self.comm.rank}: receiving {self.what} from rank {self.src} failed "
                            f"({str(e).splitlines()[0]}); another rank probably died") from None

    def wait(self):
        if self.value is None:
            if self.work is None:
                self.post()
            with self.comm.timeline.span("recv-wait", f"recv {self.what} <- {self.src}"):
                self.comm._wait(self.work, f"receiving {self.what} from rank {self.src}")
                data = self.buf.to(self.comm.device, non_blocking=True) if self.comm.staged else self.buf
                self.value = self.on_arrival(data) if self.on_arrival else data
        return self.value


class Comm:
    def __init__(self, rank: int, device: torch.device, timeline: Timeline, post_receives: str = "auto"):
        self.rank, self.device, self.timeline = rank, device, timeline
        backend = dist.get_backend() if dist.is_initialized() else None
        self.staged = backend == "gloo" and device.type == "cuda"
        # gloo receives in the background, so receives are posted as soon as they are known. NCCL
        # runs a rank's point-to-point ops in order on one stream: a receive posted early would hold
        # back every later send, so under NCCL a receive is posted when it is waited for.
        if post_receives not in ("auto", "early", "on_wait"):
            raise ConfigError(f"dist.post_receives must be auto, early or on_wait, got {post_receives!r}")
        self.eager = backend != "nccl" if post_receives == "auto" else post_receives == "early"
        self.pending: list[tuple[object, torch.Tensor, str]] = []

    def _wait(self, work, what: str) -> None:
        try:
            work.wait()
        except Exception as e:  # gloo: connection closed / timeout; NCCL: watchdog abort
            msg = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise CommError(f"rank {self.rank}: {what} failed ({msg}); another rank probably died or timed "
                            "out, see its log above") from None

    # -- raw tensors -----------------------------------------------------------------------------

    def send(self, tensor: torch.Tensor, dst: int, what: str, kind: str = "weights") -> None:
        with self.timeline.span("send", f"send {what} -> {dst}"):
            buf = tensor.detach()
            buf = buf.cpu() if self.staged else buf.contiguous()
            try:
                work = dist.isend(buf, dst)
            except Exception as e:
                raise CommError(f"rank {self.rank}: sending {what} to rank {dst} failed "
                                f"({str(e).splitlines()[0]}); another rank probably died") from None
        self.timeline.count(kind, sent=buf.numel() * buf.element_size())
        self.pending.append((work, buf, f"sending {what} to rank {dst}"))
        self.pending = [p for p in self.pending if not p[0].is_completed()]

    def recv(self, shape, dtype: torch.dtype, src: int, what: str, kind: str = "weights",
             on_arrival=None) -> Incoming:
        buf = torch.empty(shape, dtype=dtype, device="cpu" if self.staged else self.device)
        self.timeline.count(kind, received=buf.numel() * buf.element_size())
        return Incoming(self, buf, src, what, on_arrival, eager=self.eager)

    def flush(self) -> None:
        """Wait for every send still in flight (before the process group goes away)."""
        for work, _, what in self.pending:
            with self.timeline.span("send", f"flush: {what}"):
                self._wait(work, what)
        self.pending.clear()

    # -- trainees --------------------------------------------------------------------------------

    def send_trainee(self, trainee, dst: int, with_optimizer: bool) -> None:
        self.send(pack(trainee, with_optimizer), dst, trainee.name, "weights")

    def recv_trainee(self, trainee, src: int, with_optimizer: bool) -> Incoming:
        """Post the receive of ``trainee``'s state; ``.wait()`` loads it into ``trainee``."""
        def load(flat):
            unpack(trainee, flat, with_optimizer)
            return trainee
        return self.recv((packed_numel(trainee, with_optimizer),), torch.float32, src, trainee.name, "weights", load)

    def collect(self, trainees, owner_of: dict[str, int], with_optimizer: bool, dst: int = 0) -> None:
        """Bring every trainee's final state from its owner to rank ``dst`` (for evaluation, the
        summary and the checkpoint)."""
        if self.rank == dst:
            incoming = [self.recv_trainee(t, owner_of[t.name], with_optimizer) for t in trainees
                        if owner_of[t.name] != dst]
            for item in incoming:
                item.wait()
        else:
            for t in trainees:
                if owner_of[t.name] == self.rank:
                    self.send_trainee(t, dst, with_optimizer)
