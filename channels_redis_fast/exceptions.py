"""Errors raised for bad input.

channels_redis validates with ``assert``, so its callers catch AssertionError and its
checks vanish under ``python -O``. Ours are raised explicitly and subclass
AssertionError too, so existing ``except AssertionError`` code keeps working.
"""

from channels.exceptions import ChannelFull

__all__ = ["ChannelFull", "InvalidMessageError", "ReservedKeyError", "WrongClientPrefixError"]


class InvalidMessageError(AssertionError, TypeError):
    """A message that is not a dict."""


class ReservedKeyError(AssertionError, ValueError):
    """A message that carries the layer's own ``__asgi_channel__`` key."""


class WrongClientPrefixError(AssertionError, ValueError):
    """A receive on a process-specific channel that another layer instance made."""
