"""The backprop baseline: the same widths as an MLP with a softmax output, trained end to end on
the same data, augmentation, batch size and epoch budget (chapters only set logging/checkpoint
cadence here)."""

from ffpipe.ff import train_unit


def run(job) -> None:
    y = job.data.train.y
    for chapter in job.chapters():
        job.record("mlp", train_unit(job.net.mlp, (job.train_inputs(), y), job.epochs_per_chapter,
                                     job.batch_size, job.generator, job.first_epoch(chapter)))
