"""Federated PFF: All-Layers PFF where every rank trains only on its own private shard.

The training set is split once into ``N`` shards: ``parallel.partition=iid`` (a seeded random split)
or ``dirichlet`` (non-IID: each class is spread over the ranks in proportions drawn from
Dir(``parallel.dirichlet_alpha``); small alpha gives each rank few classes). Each rank's chapters see
only its shard (inputs, negatives, the softmax head); only layer weights cross, around the ring.
The test set is shared. The paper defines this schedule but reports no results for it.
"""

import torch

from ffpipe.errors import ConfigError
from ffpipe.schedules.all_layers import ring

MIN_WORLD_SIZE = 2


def partition(y: torch.Tensor, world: int, kind: str, alpha: float, seed: int) -> list[torch.Tensor]:
    """Indices of each rank's shard (sorted), deterministic in ``seed``."""
    g = torch.Generator().manual_seed(seed)
    y = y.cpu()
    if kind == "iid":
        return [s.sort().values for s in torch.randperm(len(y), generator=g).tensor_split(world)]
    if kind != "dirichlet":
        raise ConfigError(f"parallel.partition must be iid or dirichlet, got {kind!r}")
    if not alpha > 0:
        raise ConfigError(f"parallel.dirichlet_alpha must be > 0, got {alpha}")
    shards = [[] for _ in range(world)]
    for c in y.unique():
        idx = (y == c).nonzero().squeeze(1)
        idx = idx[torch.randperm(len(idx), generator=g)]
        gammas = torch._standard_gamma(torch.full((world,), float(alpha)).double(), generator=g)
        cuts = (gammas / gammas.sum()).cumsum(0).mul(len(idx)).round().long()[:-1]
        for r, part in enumerate(idx.tensor_split(cuts)):
            shards[r].append(part)
    out = [torch.cat(s).sort().values for s in shards]
    for r, s in enumerate(out):
        if len(s) == 0:
            raise ConfigError(f"parallel.dirichlet_alpha={alpha} left rank {r} without data; raise it")
    return out


def run(job) -> None:
    p, train = job.cfg.parallel, job.data.train
    shard = partition(train.y, job.env.world_size, p.partition, float(p.dirichlet_alpha), int(job.cfg.seed))
    mine = shard[job.env.rank].to(train.y.device)
    labels = train.y.cpu()
    job.facts["shards"] = {"partition": p.partition, "sizes": [len(s) for s in shard],
                           "class_counts": [torch.bincount(labels[s], minlength=job.data.num_classes).tolist()
                                            for s in shard]}
    ring(job, train.x[mine], train.y[mine])
