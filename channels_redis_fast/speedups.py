"""Chooses the compiled hot paths or their pure-Python twin, once, at import.

``CHANNELS_REDIS_FAST_NO_EXTENSIONS=1`` forces the pure twin;
``CHANNELS_REDIS_FAST_REQUIRE_EXTENSIONS=1`` turns a missing compiled module into an
ImportError instead of a silent fallback (wheels and CI use it to prove what they ship).
"""

from __future__ import annotations

import os
import platform
from typing import TYPE_CHECKING


def env_flag(name: str) -> bool:
    """Whether the environment variable ``name`` is set to something other than
    "", "0", "false" or "no" (any case): the rule for every CHANNELS_REDIS_FAST_* flag."""
    return os.environ.get(name, "").strip().lower() not in ("", "0", "false", "no")


NO_EXTENSIONS: bool = env_flag("CHANNELS_REDIS_FAST_NO_EXTENSIONS") or (
    platform.python_implementation() != "CPython"
)
REQUIRE_EXTENSIONS: bool = env_flag("CHANNELS_REDIS_FAST_REQUIRE_EXTENSIONS")

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

# The hot paths are the pure twin's __all__ (the one list of them): mypy reads their
# types there; at run time they come from whichever implementation is active, whose
# __all__ test_speedups_parity.py holds equal to the twin's.
if TYPE_CHECKING:
    from ._speedups_py import *  # noqa: F403
globals().update({name: getattr(_impl, name) for name in _impl.__all__})

__all__ = ["IMPLEMENTATION", "NO_EXTENSIONS", "REQUIRE_EXTENSIONS", "env_flag", *_impl.__all__]
