"""Chooses the compiled hot paths or their pure-Python twin, once, at import.

``CHANNELS_REDIS_FAST_NO_EXTENSIONS=1`` forces the pure twin;
``CHANNELS_REDIS_FAST_REQUIRE_EXTENSIONS=1`` turns a missing compiled module into an
ImportError instead of a silent fallback (wheels and CI use it to prove what they ship).
"""

from __future__ import annotations

import os
import platform
from typing import TYPE_CHECKING


def _flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() not in ("", "0", "false", "no")


NO_EXTENSIONS: bool = _flag("CHANNELS_REDIS_FAST_NO_EXTENSIONS") or (
    platform.python_implementation() != "CPython"
)
REQUIRE_EXTENSIONS: bool = _flag("CHANNELS_REDIS_FAST_REQUIRE_EXTENSIONS")

if TYPE_CHECKING or NO_EXTENSIONS:
    from . import _speedups_py as _impl
else:
    try:
        from . import _speedups as _impl  # type: ignore[no-redef]
    except ImportError:  # pragma: no cover - depends on how the package was built
        if REQUIRE_EXTENSIONS:
            raise
        from . import _speedups_py as _impl  # type: ignore[no-redef]

#: "compiled" or "pure": which implementation of the hot paths is active.
IMPLEMENTATION: str = "pure" if _impl.__name__.endswith("_speedups_py") else "compiled"

ChannelBuffer = _impl.ChannelBuffer
CapacityMatcher = _impl.CapacityMatcher
consistent_hash = _impl.consistent_hash
demux_batch = _impl.demux_batch
encode_command = _impl.encode_command
encode_commands = _impl.encode_commands
key_slot = _impl.key_slot
key_slots = _impl.key_slots
pack_message = _impl.pack_message
unpack_message = _impl.unpack_message
random_prefix = _impl.random_prefix

__all__ = [
    "IMPLEMENTATION",
    "NO_EXTENSIONS",
    "REQUIRE_EXTENSIONS",
    "CapacityMatcher",
    "ChannelBuffer",
    "consistent_hash",
    "demux_batch",
    "encode_command",
    "encode_commands",
    "key_slot",
    "key_slots",
    "pack_message",
    "random_prefix",
    "unpack_message",
]
