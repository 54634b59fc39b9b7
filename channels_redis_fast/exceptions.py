"""The package's own exceptions: bad input, and a send whose outcome is unknown.

channels_redis validates with ``assert``, so its callers catch AssertionError and its
checks vanish under ``python -O``. Ours are raised explicitly and subclass
AssertionError too, so existing ``except AssertionError`` code keeps working.
"""

from channels.exceptions import ChannelFull
from redis.exceptions import ConnectionError as RedisConnectionError

__all__ = [
    "RESERVED_KEY",
    "ChannelFull",
    "InvalidMessageError",
    "ReplyLostError",
    "ReservedKeyError",
    "WrongClientPrefixError",
]

#: The message key that names a message's destination channel(s) in Redis, as
#: channels_redis writes it; a message sent to the layer may not carry it.
RESERVED_KEY = "__asgi_channel__"


class InvalidMessageError(AssertionError, TypeError):
    """A message that is not a dict."""


class ReservedKeyError(AssertionError, ValueError):
    """A message that carries the layer's own ``__asgi_channel__`` key (RESERVED_KEY)."""


class WrongClientPrefixError(AssertionError, ValueError):
    """A receive on a process-specific channel that another layer instance made."""


class ReplyLostError(RedisConnectionError):
    """The connection was lost after the command was sent and before its reply came.

    Redis may or may not have run it, so retrying a send may deliver the message twice.
    A plain redis ConnectionError, by contrast, means the command never left this
    process and is safe to retry. Subclassing ConnectionError keeps existing
    ``except ConnectionError`` handlers working.
    """
