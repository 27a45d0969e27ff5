"""Per-rank timeline: spans of compute / send / recv-wait, and bytes on the wire.

The :class:`Timeline` is wrapped around the work by :class:`ffpipe.job.Job` (compute) and
:class:`ffpipe.comm.Comm` (send, receive-wait, bytes); schedules never touch it. On CPU a span is
two host-clock readings; on CUDA it is two CUDA events on the current stream, so a span covers what
the device did, and nothing synchronizes until :meth:`Timeline.records` at the end. Time not covered
by any span is ``idle``.

At the end :func:`report` gathers every rank's records on rank 0, which computes per-rank
utilization (compute / wall) and bubble fraction ((receive-wait + idle) / wall), and writes a
Chrome/Perfetto trace (``trace.json``, open it at ui.perfetto.dev) and a Gantt chart (``gantt.png``).
"""

from __future__ import annotations

import json
import time
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.distributed as dist

KINDS = ("compute", "send", "recv-wait")
COLORS = {"compute": "#2f7ed8", "send": "#f28f43", "recv-wait": "#d9534f", "idle": "#e6e6e6"}


class Timeline:
    def __init__(self, rank: int, device: torch.device):
        self.rank, self.device = rank, device
        self.cuda = device.type == "cuda"
        self.start()

    def start(self) -> None:
        """(Re)start the clock (the wall-clock origin and, on CUDA, a base event) and the counters."""
        self.spans: list[tuple[str, str, object, object]] = []  # kind, name, start, end (events or floats)
        self.bytes_sent = self.bytes_received = self.messages_sent = self.messages_received = 0
        self.steps: dict[str, int] = {}  # optimizer steps per trainee name, on this rank
        self.sent_by_kind: dict[str, int] = {}
        self._open: dict = {}
        self.t0_wall, self.t0 = time.time(), time.perf_counter()
        self.end_s: float | None = None
        if self.cuda:
            torch.cuda.synchronize(self.device)
            self.t0_wall = time.time()
            self.base = torch.cuda.Event(enable_timing=True)
            self.base.record()

    def _mark(self):
        if self.cuda:
            ev = torch.cuda.Event(enable_timing=True)
            ev.record()
            return ev
        return time.perf_counter()

    @contextmanager
    def span(self, kind: str, name: str):
        assert kind in KINDS, kind
        start = self._mark()
        try:
            yield
        finally:
            self.spans.append((kind, name, start, self._mark()))

    def begin(self, key) -> None:
        """Open a span that a hook will close (:meth:`end`); for code that has no ``with`` block."""
        self._open[key] = self._mark()

    def end(self, key, kind: str, name: str) -> None:
        start = self._open.pop(key, None)
        if start is not None:
            self.spans.append((kind, name, start, self._mark()))

    def count(self, kind: str, sent: int = 0, received: int = 0) -> None:
        """Bytes of one message, by what it carries (weights, negatives, activations)."""
        self.bytes_sent += sent
        self.bytes_received += received
        if sent:
            self.sent_by_kind[kind] = self.sent_by_kind.get(kind, 0) + sent
        self.messages_sent += bool(sent)
        self.messages_received += bool(received)

    def stop(self) -> None:
        """End of this rank's work: waits for the device once, fixes the wall time."""
        if self.cuda:
            end = self._mark()
            torch.cuda.synchronize(self.device)
            self.end_s = self.base.elapsed_time(end) / 1000
        else:
            self.end_s = time.perf_counter() - self.t0

    def _seconds(self, mark) -> float:
        if self.cuda:
            return self.base.elapsed_time(mark) / 1000
        return mark - self.t0

    def records(self) -> dict:
        """This rank's spans as seconds since its own origin, plus the origin's wall-clock time."""
        if self.end_s is None:
            self.stop()
        spans = [(k, n, self._seconds(a), self._seconds(b)) for k, n, a, b in self.spans]
        return {"rank": self.rank, "t0_wall": self.t0_wall, "end": self.end_s, "spans": spans,
                "bytes_sent": self.bytes_sent, "bytes_received": self.bytes_received,
                "messages_sent": self.messages_sent, "messages_received": self.messages_received,
                "sent_by_kind": dict(self.sent_by_kind), "steps": dict(self.steps), "device": str(self.device)}


def gather(records: dict, world_size: int) -> list[dict] | None:
    """Every rank's records on rank 0 (None elsewhere); no-op for a world of one."""
    if world_size == 1 or not dist.is_initialized():
        return [records]
    out = [None] * world_size if dist.get_rank() == 0 else None
    dist.gather_object(records, out, dst=0)
    return out


def _merged(spans, kinds) -> list[tuple[float, float]]:
    """The union of the spans of ``kinds`` as sorted disjoint intervals."""
    out: list[list[float]] = []
    for a, b in sorted((s[2], s[3]) for s in spans if s[0] in kinds):
        if out and a <= out[-1][1]:
            out[-1][1] = max(out[-1][1], b)
        else:
            out.append([a, b])
    return [(a, b) for a, b in out]


def _length(intervals) -> float:
    return sum(b - a for a, b in intervals)


def _overlap(xs, ys) -> float:
    total, i, j = 0.0, 0, 0
    while i < len(xs) and j < len(ys):
        total += max(0.0, min(xs[i][1], ys[j][1]) - max(xs[i][0], ys[j][0]))
        if xs[i][1] < ys[j][1]:
            i += 1
        else:
            j += 1
    return total


def _breakdown(spans) -> tuple[float, float, float]:
    """(compute, send, recv-wait) seconds; a wait inside a compute span (DFF waits for its next
    batch inside the training loop) counts as waiting, not computing."""
    compute, send, recv = (_merged(spans, (k,)) for k in KINDS)
    comm = _merged(spans, ("send", "recv-wait"))
    return _length(compute) - _overlap(compute, comm), _length(send), _length(recv) - _overlap(recv, send)


def analyse(all_records: list[dict]) -> dict:
    """Align ranks on wall-clock time and compute utilization / bubbles per rank."""
    origin = min(r["t0_wall"] for r in all_records)
    for r in all_records:
        shift = r["t0_wall"] - origin
        r["spans"] = [(k, n, a + shift, b + shift) for k, n, a, b in r["spans"]]
        r["end"] += shift
    wall = max(r["end"] for r in all_records)
    ranks = []
    for r in sorted(all_records, key=lambda r: r["rank"]):
        compute, send, recv = _breakdown(r["spans"])
        idle = max(wall - compute - send - recv, 0.0)
        ranks.append({
            "rank": r["rank"],
            "utilization": compute / wall if wall > 0 else 0.0,
            "bubble_fraction": (recv + idle) / wall if wall > 0 else 0.0,
            "compute_seconds": compute, "send_seconds": send, "recv_wait_seconds": recv, "idle_seconds": idle,
            "bytes_sent": r["bytes_sent"], "bytes_received": r["bytes_received"],
            "messages_sent": r["messages_sent"], "messages_received": r["messages_received"],
            "bytes_sent_by_kind": r["sent_by_kind"], "trained_steps": r["steps"], "device": r["device"],
        })
    return {"wall_seconds": wall, "ranks": ranks}


def write_trace(all_records: list[dict], path: Path) -> None:
    """Chrome trace-event JSON (Perfetto / chrome://tracing): one track per rank."""
    events = []
    for r in all_records:
        events.append({"ph": "M", "name": "thread_name", "pid": 0, "tid": r["rank"],
                       "args": {"name": f"rank {r['rank']} ({r['device']})"}})
        for kind, name, a, b in r["spans"]:
            events.append({"ph": "X", "name": name, "cat": kind, "pid": 0, "tid": r["rank"],
                           "ts": a * 1e6, "dur": max(b - a, 0.0) * 1e6})
    path.write_text(json.dumps({"traceEvents": events, "displayTimeUnit": "ms"}))


def write_gantt(all_records: list[dict], summary: dict, path: Path, title: str) -> None:
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    n = len(all_records)
    fig, ax = plt.subplots(figsize=(12, 1.2 + 0.5 * n))
    for r in all_records:
        y = r["rank"]
        ax.broken_barh([(0, summary["wall_seconds"])], (y - 0.4, 0.8), facecolors=COLORS["idle"])
        for kind in KINDS:
            bars = [(a, b - a) for k, _, a, b in r["spans"] if k == kind]
            if bars:
                ax.broken_barh(bars, (y - 0.4, 0.8), facecolors=COLORS[kind])
    ax.set_yticks(range(n), [f"rank {i}\n{summary['ranks'][i]['utilization']:.0%} busy" for i in range(n)])
    ax.invert_yaxis()
    ax.set_xlabel("seconds")
    ax.set_xlim(0, summary["wall_seconds"])
    ax.set_title(title, loc="left")
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in COLORS.values()]
    ax.legend(handles, list(COLORS), loc="lower right", bbox_to_anchor=(1.0, 1.0), ncol=4, frameon=False,
              fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def report(timeline: Timeline, world_size: int, run_dir: Path | None, title: str,
           extra: dict | None = None) -> tuple[dict, list[dict]] | None:
    """Gather on rank 0 (with ``extra`` per-rank fields) and write ``trace.json`` + ``gantt.png``;
    returns (summary, records) on rank 0, None elsewhere."""
    all_records = gather({**timeline.records(), **(extra or {})}, world_size)
    if all_records is None:
        return None
    summary = analyse(all_records)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_trace(all_records, run_dir / "trace.json")
    write_gantt(all_records, summary, run_dir / "gantt.png", title)
    return summary, all_records
