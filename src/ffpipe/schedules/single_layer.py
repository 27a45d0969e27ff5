"""Single-Layer PFF (paper Algorithm 1): rank i trains layer i.

The layers are cut into contiguous blocks, one per rank (``parallel.layers_per_rank``, default as
even as possible, earlier ranks taking the extra layer). In chapter ``c``, rank ``i``

1. passes the chapter's data (images, labels, negative labels) through the upstream layers as their
   owners published them for chapter ``c``,
2. trains its own layers for epochs/chapters epochs each, and publishes each one (its weights) to
   every downstream rank the moment it is done;
3. the last rank then fits the softmax head and, with AdaptiveNEG, draws the negatives of a later
   chapter from its (complete) network and publishes them to every other rank.

Rank ``i`` cannot start chapter ``c`` before rank ``i - 1`` finished it: a staircase, so ``N`` ranks
need ``C + N - 1`` chapter slots for ``C`` chapters, and rank 0 uses negatives drawn ``N`` chapters
earlier (the newest ones that exist when it starts). With ``parallel.warm_start=true`` every rank
starts at once on the upstream weights of chapter ``c - 1`` (the shared initial weights in chapter
0) and the staircase disappears; negatives then lag 2 chapters. Random and fixed negatives are
derived from the seed on every rank and never cross the wire.

``parallel.exchange_every=K`` (an integer, needs ``warm_start``) goes beyond the paper: owners
publish their layer every ``K`` optimizer steps, and a downstream rank computes each minibatch's
input on the fly through its copies of the upstream layers, swapping in the version published ``K``
steps earlier (one period of slack, so nobody waits in steady state, and the run stays
deterministic). Fresher upstream weights cost an upstream forward per batch and more traffic.
"""

from ffpipe.errors import ConfigError
from ffpipe.ff import shuffled_batches

MIN_WORLD_SIZE = 2


def layer_blocks(num_layers: int, world: int, sizes=None) -> list[range]:
    """Contiguous layer ranges, one per rank."""
    if sizes is None:
        if world > num_layers:
            raise ConfigError(f"{world} ranks cannot each own a layer of a {num_layers}-layer net; "
                              f"use at most {num_layers} ranks, or more layers (model.widths)")
        base, extra = divmod(num_layers, world)
        sizes = [base + (r < extra) for r in range(world)]
    sizes = [int(s) for s in sizes]
    if len(sizes) != world or any(s < 1 for s in sizes) or sum(sizes) != num_layers:
        raise ConfigError(f"parallel.layers_per_rank must give each of the {world} ranks >= 1 layer and "
                          f"sum to {num_layers} layers, got {sizes}")
    starts = [sum(sizes[:r]) for r in range(world)]
    return [range(a, a + s) for a, s in zip(starts, sizes)]


def run(job) -> None:
    net, comm, rank, world, p = job.net, job.comm, job.env.rank, job.env.world_size, job.cfg.parallel
    warm, with_opt = bool(p.warm_start), bool(p.send_optimizer_state)
    if p.exchange_every != "chapter":
        return run_every_k_steps(job, exchange_period(p.exchange_every, warm))
    blocks = layer_blocks(len(net.layers), world, p.layers_per_rank)
    owner = {f"layer.{i}": r for r, block in enumerate(blocks) for i in block}
    mine, upstream = [net.layers[i] for i in blocks[rank]], net.layers[: blocks[rank].start]
    head, last_rank, chapters = net.classifier.head, world - 1, job.num_chapters
    lag = 1 if warm else 0  # chapter c trains on the upstream layers of chapter c - lag
    neg_lag = 2 if warm else world  # AdaptiveNEG of chapter c comes from the network after c - neg_lag
    shared_negatives = job.negatives.name == "adaptive"
    y = job.data.train.y

    pending = {}  # upstream version -> its posted receives
    neg_pending = {}  # chapter -> negatives (received or, on the last rank, computed)

    def post(chapter: int) -> None:
        v = chapter - lag
        if 0 <= v < chapters and upstream:
            pending[v] = [comm.recv_trainee(u, owner[u.name], False) for u in upstream]
        if shared_negatives and rank != last_rank and neg_lag <= chapter < chapters:
            neg_pending[chapter] = comm.recv(y.shape, y.dtype, last_rank, f"negatives ch{chapter}", "negatives")

    def negatives(chapter, x):
        if not shared_negatives:
            return job.negative_labels(chapter, x)
        if chapter < neg_lag:  # no network has finished a chapter yet: random wrong labels
            return job.random_negatives(chapter)
        got = neg_pending.pop(chapter)
        return got if rank == last_rank else got.wait()

    post(0)
    for chapter in job.chapters(complete=rank == last_rank and not warm):
        for incoming in pending.pop(chapter - lag, []):
            incoming.wait()
        post(chapter + 1)
        x = job.train_inputs(chapter)
        stream = job.input_stream(x, negatives(chapter, x))
        for layer in upstream:
            stream = job.propagate(layer, stream)
        for layer in mine:
            job.train(layer, stream, chapter)
            if chapter + lag < chapters:  # a downstream rank will train on this version (weights only:
                for dst in range(rank + 1, world):  # nobody else ever trains this layer)
                    comm.send_trainee(layer, dst, False)
            if layer is not mine[-1]:  # the next rank computes its own input from the weights
                stream = job.propagate(layer, stream)
        if rank == last_rank:
            job.fit_classifier(x, chapter)
            later = chapter + neg_lag
            if shared_negatives and later < chapters:
                labels = job.negative_labels(later, job.train_inputs(later))
                neg_pending[later] = labels
                for dst in range(last_rank):
                    comm.send(labels, dst, f"negatives ch{later}", "negatives")
    units = list(net.layers) + ([head] if head is not None else [])
    comm.collect(units, {**owner, "classifier": last_rank}, with_opt)


def exchange_period(value, warm: bool) -> int:
    try:
        k = int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"parallel.exchange_every must be 'chapter' or a number of steps, got {value!r}") from None
    if k < 1:
        raise ConfigError(f"parallel.exchange_every must be >= 1 steps, got {k}")
    if not warm:
        raise ConfigError("parallel.exchange_every=<steps> runs every rank at once on fresh upstream weights; "
                          "it needs parallel.warm_start=true")
    return k


def run_every_k_steps(job, k: int) -> None:
    """Single-Layer PFF with the upstream layers refreshed every ``k`` steps (see the module doc)."""
    net, comm, rank, world, p = job.net, job.comm, job.env.rank, job.env.world_size, job.cfg.parallel
    blocks = layer_blocks(len(net.layers), world, p.layers_per_rank)
    if any(len(b) != 1 for b in blocks):
        raise ConfigError(f"parallel.exchange_every=<steps> needs one layer per rank: {len(net.layers)} layers "
                          f"on {world} ranks")
    layer, upstream = net.layers[rank], net.layers[:rank]
    total = job.num_chapters * job.epochs_per_chapter * -(-len(job.data.train) // job.batch_size)
    state = {"step": 0, "pending": None}
    shared_negatives = job.negatives.name == "adaptive"
    if shared_negatives:
        raise ConfigError("parallel.exchange_every=<steps> supports random and fixed negatives")

    def steps(stream, order):
        for batch in shuffled_batches(stream, job.batch_size, order):
            for u in upstream:
                batch = u.module.propagate(batch)
            yield batch
            state["step"] += 1
            s = state["step"]
            if s % k or s >= total:
                continue
            if s + k < total:  # a downstream rank loads this version at its step s + k
                for dst in range(rank + 1, world):
                    comm.send_trainee(layer, dst, False)
            if upstream:
                for incoming in state["pending"] or []:  # published at step s - k
                    incoming.wait()
                state["pending"] = ([comm.recv_trainee(u, j, False) for j, u in enumerate(upstream)]
                                    if s + k < total else None)

    for chapter in job.chapters(complete=False):
        x = job.train_inputs(chapter)
        stream = job.input_stream(x, job.negative_labels(chapter, x))
        order = job.rng("shuffle", chapter, layer.name)
        job.train(layer, None, chapter, batches=lambda epoch, s=stream, o=order: steps(s, o))
        if rank == world - 1:
            job.fit_classifier(x, chapter)
    head = net.classifier.head
    units = list(net.layers) + ([head] if head is not None else [])
    comm.collect(units, {**{u.name: i for i, u in enumerate(net.layers)}, "classifier": world - 1}, True)
