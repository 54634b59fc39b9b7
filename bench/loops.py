"""Which event loop the bench runs on: asyncio's own, or uvloop (``--loop uvloop``).

Many deployments serve Channels with uvicorn on uvloop, so the bench can run every layer on
it too. Both loops are built through a loop factory, never a global policy, so that a child
process of the fan-out workload runs on the loop its parent was asked for.
"""

from __future__ import annotations

import asyncio
from typing import Any, Callable, Coroutine

CHOICES = ("asyncio", "uvloop")


def factory(name: str) -> Callable[[], asyncio.AbstractEventLoop]:
    """A function that makes a new event loop of the kind ``name``."""
    if name == "asyncio":
        return asyncio.new_event_loop
    if name == "uvloop":
        import uvloop  # the bench extra installs it; a clear ImportError otherwise

        return uvloop.new_event_loop
    raise ValueError(f"unknown event loop {name!r}: choose from {', '.join(CHOICES)}")


def version(name: str) -> str:
    if name == "uvloop":
        import uvloop

        return f"uvloop {uvloop.__version__}"
    return "asyncio"


def run(coro: Coroutine[Any, Any, Any], name: str = "asyncio") -> Any:
    """``asyncio.run`` on a loop of the kind ``name``."""
    loop = factory(name)()
    try:
        asyncio.set_event_loop(loop)
        return loop.run_until_complete(coro)
    finally:
        try:
            pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
            for task in pending:
                task.cancel()
            if pending:
                loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.run_until_complete(loop.shutdown_default_executor())
        finally:
            asyncio.set_event_loop(None)
            loop.close()
