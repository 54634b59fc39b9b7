"""Peers that are not Redis layers: channels-nats on a private ``nats-server``.

The bench compares our layers with channels_redis (workloads.ALL_LAYERS) and, where it can,
with channels-nats, the other published channel layer with fan-out figures. It runs on its
own ``nats-server`` (Debian's package; ``make bench`` installs it with ``ensure_nats``),
started here on a free loopback port and stopped at exit. Where the package or the binary
is missing, the peer's rows are skipped with the reason printed, as a missing channels_redis
is. channels-nats is used only through its public channel layer API.
"""

from __future__ import annotations

import atexit
import dataclasses
import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.request
from typing import Any

from channels_redis_fast.testing import LOOPBACK, free_port, port_is_open

import workloads as wl

NAME = "nats"
#: Column label in the table; the versions go into the spec's label, the caption and the chart.
COLUMN = "channels-nats"


def nats_binary() -> str | None:
    return os.environ.get("NATS_SERVER") or shutil.which("nats-server")


def server_version(binary: str) -> str:
    """``v2.9.10`` from ``nats-server --version`` (``nats-server: v2.9.10``)."""
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10)
    return (out.stdout or out.stderr).strip().rsplit(" ", 1)[-1].lstrip("v") or "?"


class NatsServer:
    """A private nats-server on a free loopback port, with no disk state; stopped at exit."""

    def __init__(self, binary: str | None = None, timeout: float = 10.0, monitor: bool = False) -> None:
        binary = binary or nats_binary()
        if binary is None:
            raise FileNotFoundError("nats-server not on PATH (Debian: apt-get install nats-server)")
        self.version = server_version(binary)
        self.port = free_port()
        self.url = f"nats://{LOOPBACK}:{self.port}"
        # The HTTP monitoring port, for total_connections(); off unless asked for.
        self.monitor_port = free_port() if monitor else None
        self._log = tempfile.NamedTemporaryFile("w+", prefix="nats-server-", suffix=".log")
        self._proc: subprocess.Popen | None = subprocess.Popen(
            [binary, "-a", LOOPBACK, "-p", str(self.port),
             *(["-m", str(self.monitor_port)] if self.monitor_port else [])],
            stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )
        atexit.register(self.close)
        deadline = time.monotonic() + timeout
        while not port_is_open(LOOPBACK, self.port, timeout=0.2):
            if self._proc.poll() is not None or time.monotonic() > deadline:
                self._log.seek(0)
                tail = self._log.read()[-2000:]
                self.close()
                raise RuntimeError(f"nats-server did not start on port {self.port}: {tail}")
            time.sleep(0.05)

    def total_connections(self) -> int:
        """Client connections the server has accepted since it started (``/varz``)."""
        if self.monitor_port is None:
            raise RuntimeError("started without monitor=True")
        url = f"http://{LOOPBACK}:{self.monitor_port}/varz"
        with urllib.request.urlopen(url, timeout=5) as response:
            return int(json.load(response)["total_connections"])

    def close(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        self._log.close()

    def __enter__(self) -> "NatsServer":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclasses.dataclass(frozen=True)
class NatsSpec(wl.LayerSpec):
    """channels-nats, built on the NATS server at ``server_url`` instead of the Redis URLs."""

    server_url: str = ""

    def make(self, urls: list[str], **options: Any) -> Any:
        if not self.server_url:
            raise RuntimeError("no nats-server started for the channels-nats peer")
        if set(options) - {"capacity"}:
            raise ValueError(f"channels-nats takes none of {sorted(set(options) - {'capacity'})}")
        return self.load()(servers=[self.server_url], **options)


def _version(dist: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "-"


def label(server_version_text: str) -> str:
    return f"channels-nats {_version('channels-nats')} (nats-server {server_version_text})"


def spec(server: NatsServer | None = None, url: str = "", server_version_text: str = "?") -> NatsSpec:
    if server is not None:
        url, server_version_text = server.url, server.version
    return NatsSpec(NAME, label(server_version_text), "channels_nats", "NatsChannelLayer", "nats", False,
                    server_url=url)


def unavailable() -> str | None:
    """Why the channels-nats rows cannot run here, or None when they can."""
    try:
        import channels_nats  # noqa: F401
    except Exception as exc:  # noqa: BLE001 - any import problem means "skip"
        return f"channels-nats not importable ({type(exc).__name__}: {exc}); pip install '.[bench]'"
    if nats_binary() is None:
        return "nats-server not on PATH (Debian package nats-server; `make bench` installs it)"
    return None


def runs(spec_: wl.LayerSpec, workload: type) -> bool:
    """Whether a rate workload applies to the layer: channels-nats has one server, no encryption."""
    if spec_.kind != "nats":
        return True
    return getattr(workload, "shards", 1) == 1 and not getattr(workload, "options", None)


def start(layers: list[wl.LayerSpec], skipped: dict[str, str], wanted: bool) -> NatsServer | None:
    """Start the private server and put the peer in ``layers``, or its reason in ``skipped``."""
    if not wanted:
        return None
    why = unavailable()
    if why is None:
        try:
            server = NatsServer()
        except Exception as exc:  # noqa: BLE001 - report and go on without the peer
            why = f"nats-server would not start ({type(exc).__name__}: {exc})"
        else:
            layers.append(spec(server))
            return server
    skipped[NAME] = why
    return None
