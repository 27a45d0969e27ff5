"""DFF, the distributed-FF baseline: activations cross the network every batch.

Rank ``i`` owns layer ``i`` (world size = number of layers). Rank 0 builds each minibatch of
positive/negative pairs, takes one optimizer step on layer 0, and sends that batch's layer-0
activations (both versions, ``[B, 2, D]``) to rank 1, which steps layer 1 on them and sends its own on,
and so on. Sends are asynchronous and each rank keeps ``parallel.prefetch`` receives posted, so
rank ``i`` works on batch ``b`` while rank ``i + 1`` works on batch ``b - 1``: per-batch pipelining.

At the end of every chapter every layer's weights go to rank 0, which fits the softmax head and draws
the next chapter's negatives from the complete network. Unlike PFF, DFF's traffic grows with the
dataset and the epochs: every epoch moves every sample's activations across every layer boundary.
"""

from collections import deque

import torch

from ffpipe.errors import ConfigError
from ffpipe.ff import shuffled_batches

MIN_WORLD_SIZE = 2


def batch_sizes(n: int, batch_size: int) -> list[int]:
    return [min(batch_size, n - start) for start in range(0, n, batch_size)]


def run(job) -> None:
    net, comm, rank, world = job.net, job.comm, job.env.rank, job.env.world_size
    if net.kind != "ff":
        raise ConfigError(f"parallel=dff trains FF layers (model=ff), got model.kind={net.kind}")
    if world != len(net.layers):
        raise ConfigError(f"parallel=dff runs one layer per rank: {len(net.layers)} layers need "
                          f"--nproc-per-node {len(net.layers)}, got {world} ranks")
    prefetch = int(job.cfg.parallel.prefetch)
    layer, n = net.layers[rank], len(job.data.train)
    sizes = batch_sizes(n, job.batch_size)
    in_dim = net.input_dim if rank == 0 else net.widths[rank - 1]
    owner = {t.name: i for i, t in enumerate(net.layers)}
    units = list(net.layers) + ([net.classifier.head] if net.classifier.head is not None else [])

    def relay(batches):
        """After each step on a batch, send this layer's activations for it downstream."""
        for batch in batches:
            yield batch
            if rank < world - 1:
                (out,) = layer.module.propagate(batch)
                comm.send(out, rank + 1, "activations", "activations")

    def from_upstream(epoch):
        posted = deque()
        for k in range(len(sizes)):
            while len(posted) < prefetch and k + len(posted) < len(sizes):
                size = sizes[k + len(posted)]
                posted.append(comm.recv((size, 2, in_dim), torch.float32, rank - 1, "activations", "activations"))
            yield (posted.popleft().wait(),)

    for chapter in job.chapters(complete=rank == 0):
        if rank == 0:
            x = job.train_inputs(chapter)
            stream = job.input_stream(x, job.negative_labels(chapter, x))
            order = job.rng("shuffle", chapter, layer.name)

            def batches(epoch, stream=stream, order=order):
                return relay(shuffled_batches(stream, job.batch_size, order))
        else:
            def batches(epoch):
                return relay(from_upstream(epoch))
        job.train(layer, None, chapter, batches=batches)
        # chapter end: the complete network meets on rank 0 (weights only: nobody else trains them)
        comm.collect(net.layers, owner, with_optimizer=False)
        if rank == 0:
            job.fit_classifier(x, chapter)
    comm.collect(units, {**owner, "classifier": 0}, with_optimizer=True)
