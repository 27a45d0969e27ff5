"""Schedules: who trains which layer when. Each is a short ``run(job)`` over
:func:`ffpipe.ff.train_unit`; the chapter loop around them lives in :mod:`ffpipe.job`."""

from ffpipe.errors import ConfigError
from ffpipe.schedules import backprop, sequential

SCHEDULES = {"sequential": sequential, "backprop": backprop}


def get_schedule(name: str):
    try:
        return SCHEDULES[name]
    except KeyError:
        raise ConfigError(f"unknown parallel mode {name!r}; expected one of {', '.join(SCHEDULES)}") from None
