"""The backprop baseline: the same widths as an MLP with a softmax output, trained end to end on
the same data, augmentation, batch size and epoch budget (chapters only set logging/checkpoint
cadence here)."""

MAX_WORLD_SIZE = 1
SEVERAL_RANKS_HINT = "for several ranks use parallel=backprop_pipeline (GPipe / 1F1B)"


def run(job) -> None:
    for chapter in job.chapters():
        job.train(job.net.mlp, (job.train_inputs(chapter), job.data.train.y), chapter)
