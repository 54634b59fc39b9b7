"""A Cython-accelerated, wire-compatible drop-in for channels_redis."""

__version__ = "0.1.0"

from .speedups import IMPLEMENTATION  # noqa: E402

__all__ = ["IMPLEMENTATION", "__version__"]
