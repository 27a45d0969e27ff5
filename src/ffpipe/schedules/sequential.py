"""Sequential FF, the paper's baseline: one process trains every layer, chapter by chapter.

In each chapter: draw the chapter's negative labels, then for each layer bottom-up train it for
epochs/chapters epochs on the outputs of the (already updated) layers below, and finally fit the
classifier on the new features.
"""

MAX_WORLD_SIZE = 1
SEVERAL_RANKS_HINT = "for several ranks pick a distributed schedule, e.g. parallel=pff_all_layers"


def run(job) -> None:
    for chapter in job.chapters():
        x = job.train_inputs(chapter)
        stream = job.input_stream(x, job.negative_labels(chapter, x))
        for layer in job.net.layers:
            job.train(layer, stream, chapter)
            if layer is not job.net.layers[-1]:
                stream = job.propagate(layer, stream)
        job.fit_classifier(x, chapter)
