"""Schedules: who trains which layer when. Each is a short ``run(job)`` over
:func:`ffpipe.ff.train_unit`; the chapter loop around them lives in :mod:`ffpipe.job`."""

from ffpipe.errors import ConfigError
from ffpipe.schedules import all_layers, backprop, backprop_pipeline, dff, federated, sequential, single_layer

SCHEDULES = {
    "sequential": sequential,
    "backprop": backprop,
    "pff_single_layer": single_layer,
    "pff_all_layers": all_layers,
    "pff_federated": federated,
    "dff": dff,
    "backprop_pipeline": backprop_pipeline,
}


def get_schedule(name: str):
    try:
        return SCHEDULES[name]
    except KeyError:
        raise ConfigError(f"unknown parallel mode {name!r}; expected one of {', '.join(SCHEDULES)}") from None
