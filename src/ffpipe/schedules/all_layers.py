"""All-Layers PFF (paper Algorithm 2): ranks take turns over the whole network.

Chapters are dealt round-robin: rank ``r`` trains chapters ``r, r + N, r + 2N, ...``. The owner of
chapter ``c`` trains every layer bottom-up (then the softmax head), starting each from the version
chapter ``c - 1`` produced: it receives that version from the previous rank on the ring as soon as
that rank finished it, and passes its own version on to the next rank as soon as it is done. So
rank ``r + 1`` trains layer 0 of chapter ``c + 1`` while rank ``r`` trains layer 1 of chapter ``c``:
a wavefront that keeps all ranks busy after a one-layer start-up. Each rank refreshes its own
negatives right after its chapter, for its next one (AdaptiveNEG: from the network it just trained),
so a chapter starts training the moment its first layer arrives.

Only layer states cross (parameters, plus optimizer state unless
``parallel.send_optimizer_state=false``). With random or fixed negatives the result equals
sequential FF exactly: the same units train on the same inputs in the same order.
"""

MIN_WORLD_SIZE = 2


def run(job) -> None:
    ring(job)


def chapter_inputs(job, chapter: int, x_all, y):
    """A chapter's images and its input stream, with negatives from this rank's current network."""
    x = job.train_inputs(chapter, x_all)
    return x, job.input_stream(x, job.negative_labels(chapter, x, y), y)


def ring(job, x_all=None, y=None) -> None:
    """The ring over ``(x_all, y)`` (default: the whole training split; Federated PFF passes this
    rank's private shard)."""
    net, comm, rank, world = job.net, job.comm, job.env.rank, job.env.world_size
    with_opt = bool(job.cfg.parallel.send_optimizer_state)
    units = list(net.layers) + ([net.classifier.head] if net.classifier.head is not None else [])
    prev, nxt, last = (rank - 1) % world, (rank + 1) % world, job.num_chapters - 1
    owned = range(rank, job.num_chapters, world)
    inputs = chapter_inputs(job, owned[0], x_all, y) if len(owned) else None
    for chapter in job.chapters(owned=owned):
        # post every receive of this chapter now: each lands while we train the layers below it
        incoming = {u.name: comm.recv_trainee(u, prev, with_opt) for u in units} if chapter > 0 else {}
        x, stream = inputs
        for layer in net.layers:
            if incoming:
                incoming[layer.name].wait()
            job.train(layer, stream, chapter)
            if chapter < last:
                comm.send_trainee(layer, nxt, with_opt)
            if layer is not net.layers[-1]:
                stream = job.propagate(layer, stream)
        if net.classifier.head is not None:
            if incoming:
                incoming["classifier"].wait()
            job.fit_classifier(x, chapter, y)
            if chapter < last:
                comm.send_trainee(net.classifier.head, nxt, with_opt)
        if chapter + world <= last:  # refresh negatives for this rank's next chapter, off the ring's path
            inputs = chapter_inputs(job, chapter + world, x_all, y)
    # the final network lives on the last chapter's owner; rank 0 reports it
    comm.collect(units, {u.name: last % world for u in units}, with_opt)
