"""Sequential FF, the paper's baseline: one process trains every layer, chapter by chapter.

In each chapter: draw the chapter's negative labels, then for each layer bottom-up train it for
epochs/chapters epochs on the outputs of the (already updated) layers below, and finally fit the
classifier on the new features.
"""

from ffpipe.errors import ConfigError
from ffpipe.ff import train_unit

MAX_WORLD_SIZE = 1


def run(job) -> None:
    if job.env.world_size > MAX_WORLD_SIZE:
        raise ConfigError(f"parallel=sequential trains on one process, but WORLD_SIZE={job.env.world_size}; "
                          "launch with --nproc-per-node=1")
    net, y, epochs = job.net, job.data.train.y, job.epochs_per_chapter
    for chapter in job.chapters():
        x = job.train_inputs()
        stream = net.input_stream(x, y, job.negatives.labels(chapter, net, x, y, job.generator))
        for layer in net.layers:
            job.record(layer.name, train_unit(layer, stream, epochs, job.batch_size, job.generator,
                                              job.first_epoch(chapter)))
            if layer is not net.layers[-1]:
                stream = layer.module.propagate(stream)
        job.record("classifier", net.classifier.fit(x, y, epochs, job.batch_size, job.generator,
                                                    job.first_epoch(chapter)))
