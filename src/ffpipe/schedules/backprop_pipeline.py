"""The backprop pipeline baseline: the same MLP, cut into one stage per rank and trained end to end
with ``torch.distributed.pipelining`` (``parallel.schedule``: ``gpipe`` or ``1f1b``).

Each minibatch is split into ``parallel.microbatches`` micro-batches that flow forward through the
stages and their gradients backward; GPipe runs all forwards then all backwards, 1F1B interleaves
them to bound activation memory. Both leave the (N - 1) / (M + N - 1) start-up and drain bubble that
FF's local losses avoid. The stage's forward and backward are timed as compute through module
hooks (and its optimizer step through optimizer hooks), so this baseline's utilization and bubbles
come from the same telemetry as PFF's; time inside the pipeline schedule that is neither (waiting
on p2p transfers, the schedule's own bookkeeping) is idle.

A stage is a trainee like any other: :func:`~ffpipe.ff.train_unit` calls its ``objective``, which
runs one pipeline step (forward + backward of every micro-batch), and steps its optimizer.
"""

import torch
import torch.nn.functional as F
from torch import nn
from torch.distributed.pipelining import PipelineStage, Schedule1F1B, ScheduleGPipe

from ffpipe.errors import ConfigError
from ffpipe.optim import Trainee
from ffpipe.schedules.single_layer import layer_blocks

MIN_WORLD_SIZE = 2
SCHEDULES = {"gpipe": ScheduleGPipe, "1f1b": Schedule1F1B}


class StageUnit(nn.Module):
    """One pipeline stage as a trainee: ``objective`` runs a whole pipeline step."""

    self_timed = True  # its forward/backward hooks record compute; waits inside step() are not compute

    def __init__(self, body: nn.Sequential, index: int, num_stages: int):
        super().__init__()
        self.body, self.index, self.num_stages = body, index, num_stages
        self.schedule = None

    def objective(self, x: torch.Tensor, y: torch.Tensor):
        losses: list[torch.Tensor] = []
        if self.index == 0:
            self.schedule.step(x)
        elif self.index == self.num_stages - 1:
            self.schedule.step(target=y, losses=losses)
        else:
            self.schedule.step()
        loss = torch.stack(losses).mean().detach() if losses else torch.zeros((), device=x.device)
        # gradients are already in the stage's parameters; this leaf only makes backward() a no-op
        return loss.requires_grad_(), torch.zeros((), device=x.device)


def stage_bodies(mlp_body: nn.Sequential, widths, world: int, sizes) -> list[nn.Sequential]:
    """Cut [Linear, ReLU] * L + [Linear] into contiguous stages of hidden layers (the output
    Linear goes with the last stage). The stages share modules with the full MLP."""
    blocks = layer_blocks(len(widths), world, sizes)
    parts = []
    for r, block in enumerate(blocks):
        mods = list(mlp_body[2 * block.start: 2 * block.stop])
        if r == world - 1:
            mods.append(mlp_body[-1])
        parts.append(nn.Sequential(*mods))
    return parts


def nbytes(tensors) -> int:
    tensors = tensors if isinstance(tensors, tuple | list) else (tensors,)
    return sum(t.numel() * t.element_size() for t in tensors if torch.is_tensor(t))


def timed(module: nn.Module, timeline, index: int, num_stages: int) -> None:
    """Record the stage's forward and backward passes as compute spans, and count the activations
    and gradients that cross stage boundaries (what the pipeline's own p2p ops carry)."""
    name, first, last = f"stage.{index}", index == 0, index == num_stages - 1

    def forward_done(m, args, out):
        timeline.end(("fwd", name), "compute", f"{name} forward")
        timeline.count("activations", sent=0 if last else nbytes(out), received=0 if first else nbytes(args))

    def backward_done(m, grad_in, grad_out):
        timeline.end(("bwd", name), "compute", f"{name} backward")
        timeline.count("gradients", sent=0 if first else nbytes(grad_in), received=0 if last else nbytes(grad_out))

    module.register_forward_pre_hook(lambda m, a: timeline.begin(("fwd", name)))
    module.register_forward_hook(forward_done)
    module.register_full_backward_pre_hook(lambda m, g: timeline.begin(("bwd", name)))
    module.register_full_backward_hook(backward_done)


def run(job) -> None:
    p, rank, world, net = job.cfg.parallel, job.env.rank, job.env.world_size, job.net
    if p.schedule not in SCHEDULES:
        raise ConfigError(f"parallel.schedule must be one of {', '.join(SCHEDULES)}, got {p.schedule!r}")
    if job.env.backend == "gloo" and job.env.device.type == "cuda":
        raise ConfigError("parallel=backprop_pipeline on GPUs needs one GPU per rank (NCCL): "
                          "torch.distributed.pipelining does not stage CUDA tensors through gloo")
    microbatches = int(p.microbatches)
    if microbatches < 1 or job.batch_size % microbatches:
        raise ConfigError(f"parallel.microbatches must divide train.batch_size={job.batch_size}, got {microbatches}")
    if len(job.data.train) % job.batch_size:
        raise ConfigError(f"parallel=backprop_pipeline needs equal minibatches: train.batch_size={job.batch_size} "
                          f"must divide the {len(job.data.train)} training samples")
    bodies = stage_bodies(net.mlp.module.body, net.widths, world, p.layers_per_rank)
    optim_cfg = {**job.cfg.optim}
    stages = [Trainee(f"stage.{i}", StageUnit(b, i, world), optim_cfg, job.epochs) for i, b in enumerate(bodies)]
    mine = stages[rank]
    timed(mine.module.body, job.timeline, rank, world)
    mine.optimizer.register_step_pre_hook(lambda *a: job.timeline.begin("opt"))
    mine.optimizer.register_step_post_hook(lambda *a: job.timeline.end("opt", "compute", "optimizer step"))
    pipe_stage = PipelineStage(mine.module.body, rank, world, job.env.device)
    mine.module.schedule = SCHEDULES[p.schedule](pipe_stage, microbatches, loss_fn=F.cross_entropy)
    y = job.data.train.y
    for chapter in job.chapters(complete=False):
        # every stage must shuffle alike: inputs on the first stage, targets on the last
        job.train(mine, (job.train_inputs(chapter), y), chapter, shuffle_key="mlp")
    job.comm.collect(stages, {s.name: i for i, s in enumerate(stages)}, with_optimizer=False)
