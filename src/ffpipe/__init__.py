"""ffpipe: Forward-Forward and Pipeline Forward-Forward training on torch.distributed."""

__version__ = "0.1.0"
