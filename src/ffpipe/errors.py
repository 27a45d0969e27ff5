"""User-facing errors.

Everything a user can cause (a bad config value, a missing data file, a checkpoint that does not
fit) raises a subclass of :class:`FFPipeError`; the entry points turn it into one line on stderr
and exit code 2. ``assert`` is kept for internal invariants only.
"""


class FFPipeError(ValueError):
    """Base class: an error the user can fix, reported as one line without a traceback."""


class ConfigError(FFPipeError):
    """An invalid configuration value."""


class DataError(FFPipeError):
    """Missing, corrupt or mismatched data files."""


class CheckpointError(FFPipeError):
    """A checkpoint that cannot be read or does not match the configured model."""


class NonFiniteLossError(FFPipeError):
    """Training produced NaN/inf; carries where it happened."""


class CommError(FFPipeError):
    """A transfer between ranks failed: usually another rank died or timed out."""


class LaunchError(FFPipeError):
    """A distributed schedule started the wrong way (e.g. without torchrun)."""


def config_int(value, key: str, minimum: int) -> int:
    """``value`` as an int >= ``minimum``, or a ConfigError naming ``key``."""
    try:
        number = int(value)
        if number != value and not isinstance(value, str):
            raise ValueError
    except (TypeError, ValueError):
        raise ConfigError(f"{key} must be an integer, got {value!r}") from None
    if number < minimum:
        raise ConfigError(f"{key} must be >= {minimum}, got {number}")
    return number
