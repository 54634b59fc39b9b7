"""The event loop the suite runs on is the one asked for (``--loop``, see conftest.py)."""

import asyncio


async def test_async_tests_run_on_the_loop_asked_for(pytestconfig):
    loop = asyncio.get_running_loop()
    on_uvloop = type(loop).__module__.split(".")[0] == "uvloop"
    assert on_uvloop == (pytestconfig.getoption("--loop") == "uvloop"), type(loop)
