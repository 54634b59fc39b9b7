"""Server processes for the test harness: free ports, spawning, and cleanup at exit.

The plumbing under ``channels_redis_fast.testing``: each server runs in its own temp dir,
is killed if the process that started it dies, and is stopped at interpreter exit.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from typing import Any, Sequence, TypeVar

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry


LOOPBACK = "127.0.0.1"
RESERVED_PORTS = frozenset({6379, 26379})
START_TIMEOUT = 10.0
STOP_TIMEOUT = 10.0
INSTALL_HINT = (
    "Install Redis (server and sentinel), e.g. on Debian/Ubuntu: "
    "'apt-get install -y redis-server redis-sentinel'. `make test` does this for you."
)


class ServerError(RuntimeError):
    """A server did not start, or did not answer in time."""


class RedisNotInstalled(ServerError):
    """The redis-server binary is not on PATH."""


# --------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------


# A binary named here is taken from its variable when that is set (a path, or a name on
# PATH), so one suite runs against another server build (Redis 6.2, Valkey) unchanged.
BINARY_VARIABLES = {
    "redis-server": "CHANNELS_REDIS_FAST_REDIS_SERVER",
    "redis-sentinel": "CHANNELS_REDIS_FAST_REDIS_SENTINEL",
    "redis-cli": "CHANNELS_REDIS_FAST_REDIS_CLI",
}


def chosen_executable(name: str) -> str | None:
    """The binary that ``name``'s variable in BINARY_VARIABLES chooses, or None if unset."""
    variable = BINARY_VARIABLES.get(name)
    chosen = os.environ.get(variable, "") if variable else ""
    if not chosen:
        return None
    path = shutil.which(chosen)
    if path is None:
        raise RedisNotInstalled(f"{variable}={chosen!r} is not an executable file")
    return path


def find_executable(name: str = "redis-server") -> str:
    """Absolute path of a Redis binary: its variable's choice, else the one on PATH."""
    path = chosen_executable(name) or shutil.which(name)
    if path is None:
        raise RedisNotInstalled(f"'{name}' was not found on PATH. {INSTALL_HINT}")
    return path


def server_version(name: str = "redis-server") -> tuple[int, ...]:
    """The version that ``find_executable(name) --version`` reports (Valkey's own for Valkey)."""
    out = subprocess.run([find_executable(name), "--version"], capture_output=True, text=True).stdout
    for word in out.split():
        if word.startswith("v="):
            return tuple(int(part) for part in word[2:].split(".") if part.isdigit())
    raise ServerError(f"cannot read a version from {name} --version: {out!r}")


def free_port(host: str = LOOPBACK) -> int:
    """A port nobody listens on right now (the kernel's pick, never 6379/26379)."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((host, 0))
            port: int = sock.getsockname()[1]
        if port not in RESERVED_PORTS:
            return port


def port_is_open(host: str, port: int, timeout: float = 0.5) -> bool:
    """True if something accepts TCP connections on (host, port)."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _tail(path: str | None, lines: int = 25) -> str:
    if not path:
        return "(no log file)"
    try:
        with open(path, "rb") as fh:
            data = fh.read()[-16384:]
    except OSError as exc:
        return f"(log unreadable: {exc})"
    text = data.decode("utf-8", "replace").splitlines()[-lines:]
    return "\n".join(text) if text else "(log is empty)"


def _die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    """Ask Linux to SIGKILL the server if the process that started it dies first."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        PR_SET_PDEATHSIG = 1
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except Exception:
        pass


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie is as good as gone
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


_SWEPT = False


def _sweep_stale_dirs() -> None:
    """Remove temp dirs left by owners that were SIGKILLed (their servers died with them)."""
    global _SWEPT
    if _SWEPT:
        return
    _SWEPT = True
    base = tempfile.gettempdir()
    try:
        names = os.listdir(base)
    except OSError:
        return
    for name in names:
        if not name.startswith(("crf-redis-", "crf-sentinel-")):
            continue
        path = os.path.join(base, name)
        try:
            with open(os.path.join(path, "owner")) as fh:
                pids = [int(x) for x in fh.read().split()]
        except (OSError, ValueError):
            continue  # not ours, or being created right now
        if pids and not any(_pid_alive(pid) for pid in pids):
            shutil.rmtree(path, ignore_errors=True)


def _conf_value(value: object) -> str:
    """Quote a value for a redis.conf line."""
    text = str(value)
    if text == "" or any(ch in text for ch in ' \t"\\'):
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return text


# Every live server, so that atexit (and stop_all) can reach the forgotten ones.
_LIVE: "weakref.WeakSet[_Process]" = weakref.WeakSet()
_LIVE_LOCK = threading.Lock()


def stop_all() -> None:
    """Stop every server this process started and has not stopped yet."""
    with _LIVE_LOCK:
        servers = list(_LIVE)
    for server in servers:
        with contextlib.suppress(Exception):
            server.close()


atexit.register(stop_all)


# --------------------------------------------------------------------------------------
# process plumbing shared by Redis and Sentinel
# --------------------------------------------------------------------------------------


_P = TypeVar("_P", bound="_Process")


class _Process:
    """A redis-server process with a generated config, a temp dir and a fixed port."""

    kind = "redis"

    def __init__(
        self,
        *,
        port: int | None,
        host: str,
        bind: str | None,
        password: str | None,
        extra_args: Sequence[str],
        startup_timeout: float,
        binary: str | None,
    ) -> None:
        self.host = host
        self.bind = bind or host
        self.password = password
        self.extra_args = [str(a) for a in extra_args]
        self.startup_timeout = startup_timeout
        self._binary = binary
        self._fixed_port = port is not None
        self.port: int = port if port is not None else free_port(host)
        _sweep_stale_dirs()
        self.dir = tempfile.mkdtemp(prefix=f"crf-{self.kind}-")
        self.logfile = os.path.join(self.dir, f"{self.kind}.log")
        self.conffile = os.path.join(self.dir, f"{self.kind}.conf")
        self.outfile = os.path.join(self.dir, f"{self.kind}.out")
        self.process: subprocess.Popen | None = None
        self._closed = False
        self._client: redis.Redis | None = None

    # -- to be specialised ---------------------------------------------------------------

    def _command(self) -> list[str]:
        raise NotImplementedError

    def _config_lines(self) -> list[str]:
        raise NotImplementedError

    def _ready(self) -> bool:
        return bool(self.client().ping())

    # -- lifecycle -------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.running and self.process is not None else None

    def start(self) -> "_Process":
        """Start the server (on the same port as before, if it ran already) and wait for it."""
        if self._closed:
            raise ServerError(f"{self!r} is closed")
        if self.running:
            return self
        attempts = 1 if self._fixed_port or self.process is not None else 5
        last_error: ServerError | None = None
        for _attempt in range(attempts):
            try:
                self._spawn_and_wait()
                return self
            except ServerError as exc:
                last_error = exc
                self._reap(signal.SIGKILL)
                if "already in use" not in self.log_tail(200):
                    raise
                # Someone took the port between our probe and the bind: take another one.
                self.port = free_port(self.host)
        assert last_error is not None
        raise last_error

    def _spawn_and_wait(self) -> None:
        with open(self.conffile, "w") as fh:
            fh.write("\n".join(self._config_lines()) + "\n")
        for stale in (self.logfile, self.outfile):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(stale)
        self._drop_client()
        main_thread = threading.current_thread() is threading.main_thread()
        with open(self.outfile, "wb") as out:
            self.process = subprocess.Popen(
                self._command(),
                cwd=self.dir,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                # PDEATHSIG fires when the starting *thread* exits, so only from the main thread.
                preexec_fn=_die_with_parent if (main_thread and sys.platform.startswith("linux")) else None,
            )
        with _LIVE_LOCK:
            _LIVE.add(self)
        # Who owns this directory: lets a later run remove it if both are dead (see _sweep_stale_dirs).
        with open(os.path.join(self.dir, "owner"), "w") as fh:
            fh.write(f"{os.getpid()} {self.process.pid}\n")
        deadline = time.monotonic() + self.startup_timeout
        error: Exception | None = None
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ServerError(
                    f"{self.kind} on {self.host}:{self.port} exited with code "
                    f"{self.process.returncode} while starting.\n{self.log_tail()}"
                )
            try:
                if self._ready():
                    return
            except (redis.RedisError, OSError) as exc:
                error = exc
                self._drop_client()
            time.sleep(0.05)
        raise ServerError(
            f"{self.kind} on {self.host}:{self.port} did not become ready within "
            f"{self.startup_timeout:.0f} s (last error: {error!r}).\n{self.log_tail()}"
        )

    def _reap(self, sig: int) -> None:
        proc = self.process
        self._drop_client()
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)
        try:
            proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait(STOP_TIMEOUT)

    def stop(self) -> None:
        """Stop the server gracefully (SIGTERM, then SIGKILL). The port stays reserved for start()."""
        self._reap(signal.SIGTERM)

    def kill(self) -> None:
        """SIGKILL the server, as a crash would."""
        self._reap(signal.SIGKILL)

    def restart(self) -> "_Process":
        """Stop and start again on the same port."""
        self.stop()
        return self.start()

    def close(self) -> None:
        """Stop the server for good and remove its directory."""
        if self._closed:
            return
        self._closed = True
        self.stop()
        with _LIVE_LOCK:
            _LIVE.discard(self)
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self: _P) -> _P:
        if not self.running:
            self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __del__(self) -> None:  # pragma: no cover - last resort
        with contextlib.suppress(Exception):
            self.close()

    # -- clients ---------------------------------------------------------------------------

    def client(self, **kwargs: Any) -> redis.Redis:
        """A synchronous redis-py client for this server (the default one is cached)."""
        if kwargs:
            return self._new_client(**kwargs)
        if self._client is None:
            self._client = self._new_client()
        return self._client

    def _new_client(self, **kwargs: Any) -> redis.Redis:
        options: dict[str, Any] = dict(
            host=self.host,
            port=self.port,
            password=self.password,
            socket_timeout=5,
            socket_connect_timeout=2,
            # Fail fast: the harness polls on its own, redis-py's backoff only slows it down.
            retry=Retry(NoBackoff(), 0),
        )
        options.update(kwargs)
        return redis.Redis(**options)

    def _drop_client(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(Exception):
                client.close()

    def log_tail(self, lines: int = 25) -> str:
        """The end of the server's log file, and of its stdout/stderr if it printed anything."""
        text = f"--- {self.logfile} ---\n{_tail(self.logfile, lines)}"
        if os.path.exists(self.outfile) and os.path.getsize(self.outfile):
            text += f"\n--- {self.outfile} ---\n{_tail(self.outfile, lines)}"
        return text

    def __repr__(self) -> str:
        state = "running" if self.running else ("closed" if self._closed else "stopped")
        return f"<{type(self).__name__} {self.host}:{self.port} {state}>"


def start_or_close(server: Any) -> None:
    """Start ``server``; if that fails part way, close what was started, then re-raise."""
    try:
        server.start()
    except BaseException:
        server.close()
        raise
