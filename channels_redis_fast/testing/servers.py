"""The Redis and Sentinel servers of the harness: configuration, start, roles, failover."""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from typing import Any, Iterable

import redis

from .server_process import (
    LOOPBACK,
    START_TIMEOUT,
    ServerError,
    _conf_value,
    _Process,
    chosen_executable,
    find_executable,
    start_or_close,
)

__all__ = ["RedisServer", "SentinelServer"]


def _tls_server_lines(tls: dict, tls_port: int | None) -> list[str]:
    """redis.conf lines for TLS: certificates, client authentication, and the TLS port."""
    lines = []
    if tls_port is not None:
        lines.append(f"tls-port {tls_port}")
    lines += [
        f"tls-cert-file {_conf_value(tls['cert_file'])}",
        f"tls-key-file {_conf_value(tls['key_file'])}",
        f"tls-ca-cert-file {_conf_value(tls['ca_file'])}",
        f"tls-auth-clients {tls.get('auth_clients', 'no')}",
    ]
    return lines


def _tls_client_kwargs(tls: dict | None) -> dict:
    if not tls:
        return {}
    kwargs = {"ssl": True, "ssl_ca_certs": tls["ca_file"], "ssl_cert_reqs": "required"}
    if tls.get("client_cert_file"):
        kwargs["ssl_certfile"] = tls["client_cert_file"]
        kwargs["ssl_keyfile"] = tls.get("client_key_file")
    return kwargs


# --------------------------------------------------------------------------------------
# public classes
# --------------------------------------------------------------------------------------


class RedisServer(_Process):
    """A private redis-server.

    :param port: listen on this port (default: a free one, picked by the kernel).
    :param password: set ``requirepass``; clients then need it.
    :param unixsocket: also listen on a Unix socket in the server's directory (``unix_path``).
    :param replicaof: ``(host, port)`` of a master to replicate.
    :param masterauth: password of that master.
    :param extra_args: more ``--option value`` arguments for redis-server (e.g. TLS).
    :param bind: the ``bind`` directive (default: ``host``; e.g. ``"127.0.0.1 -::1"``).
    :param start: start now (default) or leave it to ``start()`` / ``with``.
    :param tls: serve TLS only (``port 0``, ``tls-port`` = ``port``) with these files, a dict
        with ``cert_file``, ``key_file``, ``ca_file`` (the CA that signed client certs),
        optional ``auth_clients`` (``"no"`` by default, ``"yes"`` or ``"optional"``) and
        optional ``client_cert_file``/``client_key_file`` for the harness's own client.
        ``url`` becomes ``rediss://…``; ``ssl_kwargs`` are the matching redis-py options.
    """

    kind = "redis"

    def __init__(
        self,
        *,
        port: int | None = None,
        password: str | None = None,
        unixsocket: bool = False,
        replicaof: tuple[str, int] | None = None,
        masterauth: str | None = None,
        extra_args: Iterable[str] = (),
        host: str = LOOPBACK,
        bind: str | None = None,
        start: bool = True,
        startup_timeout: float = START_TIMEOUT,
        binary: str | None = None,
        tls: dict | None = None,
    ) -> None:
        self.tls = dict(tls) if tls else None
        self.replicaof = (replicaof[0], int(replicaof[1])) if replicaof else None
        self.masterauth = masterauth
        self._unixsocket = unixsocket
        super().__init__(
            port=port,
            host=host,
            bind=bind,
            password=password,
            extra_args=list(extra_args),
            startup_timeout=startup_timeout,
            binary=binary,
        )
        self.unix_path: str | None = os.path.join(self.dir, "redis.sock") if unixsocket else None
        if start:
            start_or_close(self)

    @property
    def url(self) -> str:
        """``redis://[:password@]127.0.0.1:PORT`` (``rediss://`` when serving TLS)"""
        auth = f":{self.password}@" if self.password else ""
        scheme = "rediss" if self.tls else "redis"
        return f"{scheme}://{auth}{self.host}:{self.port}"

    @property
    def ssl_kwargs(self) -> dict:
        """redis-py options that reach this TLS server (empty for a plain one)."""
        return _tls_client_kwargs(self.tls)

    def start(self) -> "RedisServer":
        try:
            return super().start()  # type: ignore[return-value]
        except ServerError as exc:
            if self.tls and "tls" in str(exc).lower():
                raise ServerError(
                    f"redis-server could not start with TLS; it may have been built without "
                    f"TLS support (BUILD_TLS=yes).\n{exc}"
                ) from exc
            raise

    def _new_client(self, **kwargs: Any) -> redis.Redis:
        if self.tls:
            kwargs = {**self.ssl_kwargs, **kwargs}
        return super()._new_client(**kwargs)

    @property
    def unix_url(self) -> str:
        if not self.unix_path:
            raise ServerError("this server was started without unixsocket=True")
        auth = f":{self.password}@" if self.password else ""
        return f"unix://{auth}{self.unix_path}"

    def _command(self) -> list[str]:
        return [self._binary or find_executable("redis-server"), self.conffile, *self.extra_args]

    def _config_lines(self) -> list[str]:
        lines = [
            f"port {0 if self.tls else self.port}",
            *(_tls_server_lines(self.tls, self.port) if self.tls else []),
            f"bind {self.bind}",
            "protected-mode no",
            "daemonize no",
            f"dir {_conf_value(self.dir)}",
            f"logfile {_conf_value(self.logfile)}",
            "loglevel notice",
            'save ""',
            "appendonly no",
            "databases 16",
        ]
        if self.password:
            lines.append(f"requirepass {_conf_value(self.password)}")
        if self._unixsocket:
            lines += [f"unixsocket {_conf_value(self.unix_path)}", "unixsocketperm 700"]
        if self.replicaof:
            lines.append(f"replicaof {self.replicaof[0]} {self.replicaof[1]}")
            if self.masterauth:
                lines.append(f"masterauth {_conf_value(self.masterauth)}")
        return lines

    def _ready(self) -> bool:
        if not self.client().ping():
            return False
        # A replica answers PING while it is still loading the master's dataset; let it finish.
        if self.replicaof:
            info = self.client().info("replication")
            return info.get("master_link_status") == "up"
        return True

    def flushall(self) -> None:
        self.client().flushall()

    def wait_for_role(self, role: str, timeout: float = START_TIMEOUT) -> None:
        """Wait until INFO replication says ``role`` ("master" or "slave")."""
        deadline = time.monotonic() + timeout
        current = None
        while time.monotonic() < deadline:
            with contextlib.suppress(redis.RedisError, OSError):
                current = self.client().info("replication").get("role")
                if current == role:
                    return
            time.sleep(0.1)
        raise ServerError(f"{self!r} is {current!r}, not {role!r}, after {timeout} s")


class SentinelServer(_Process):
    """A redis-sentinel monitoring one master.

    :param master: the RedisServer to monitor, or a ``(host, port)`` pair.
    :param name: the master set name (``SENTINEL get-master-addr-by-name NAME``).
    :param password: ``requirepass`` of the sentinel itself (clients pass it in
        ``sentinel_kwargs``).
    :param master_password: the master's password (``sentinel auth-pass``); taken from
        ``master`` when that is a RedisServer.
    :param down_after_ms, failover_timeout_ms: small so failover tests take seconds.
    :param tls: the master serves TLS: the same dict as ``RedisServer(tls=...)`` (taken from
        ``master`` when that is a TLS RedisServer). The sentinel itself still listens in plain
        text; it reaches the master with ``tls-replication yes`` and the client cert, if any.
    """

    kind = "sentinel"

    def __init__(
        self,
        master: RedisServer | tuple[str, int],
        *,
        name: str = "mymaster",
        port: int | None = None,
        password: str | None = None,
        master_password: str | None = None,
        quorum: int = 1,
        down_after_ms: int = 1000,
        failover_timeout_ms: int = 3000,
        extra_args: Iterable[str] = (),
        host: str = LOOPBACK,
        bind: str | None = None,
        start: bool = True,
        startup_timeout: float = START_TIMEOUT,
        binary: str | None = None,
        tls: dict | None = None,
    ) -> None:
        if tls is None and isinstance(master, RedisServer):
            tls = master.tls
        self.tls = dict(tls) if tls else None
        if isinstance(master, RedisServer):
            self.master_address = (master.host, master.port)
            if master_password is None:
                master_password = master.password
        else:
            self.master_address = (master[0], int(master[1]))
        self.name = name
        self.master_password = master_password
        self.quorum = quorum
        self.down_after_ms = down_after_ms
        self.failover_timeout_ms = failover_timeout_ms
        super().__init__(
            port=port,
            host=host,
            bind=bind,
            password=password,
            extra_args=list(extra_args),
            startup_timeout=startup_timeout,
            binary=binary,
        )
        if start:
            start_or_close(self)

    @property
    def address(self) -> tuple[str, int]:
        return (self.host, self.port)

    @property
    def sentinel_kwargs(self) -> dict:
        return {"password": self.password} if self.password else {}

    def hosts_entry(self, **extra: Any) -> dict:
        """A ``hosts`` entry for RedisChannelLayer that reaches the master through this sentinel."""
        entry: dict[str, Any] = {"sentinels": [self.address], "master_name": self.name}
        if self.password:
            entry["sentinel_kwargs"] = self.sentinel_kwargs
        if self.master_password:
            entry["password"] = self.master_password
        entry.update(extra)
        return entry

    def _command(self) -> list[str]:
        # A chosen server build runs its own sentinel (redis-server --sentinel), so a run
        # against Redis 6.2 or Valkey never mixes in the sentinel found on PATH.
        binary = (
            self._binary
            or chosen_executable("redis-sentinel")
            or chosen_executable("redis-server")
            or shutil.which("redis-sentinel")
            or find_executable("redis-server")
        )
        return [binary, self.conffile, "--sentinel", *self.extra_args]

    def _config_lines(self) -> list[str]:
        host, port = self.master_address
        name = self.name
        lines = [
            f"port {self.port}",
            f"bind {self.bind}",
            "protected-mode no",
            "daemonize no",
            f"dir {_conf_value(self.dir)}",
            f"logfile {_conf_value(self.logfile)}",
            f"sentinel monitor {name} {host} {port} {self.quorum}",
            f"sentinel down-after-milliseconds {name} {self.down_after_ms}",
            f"sentinel failover-timeout {name} {self.failover_timeout_ms}",
            f"sentinel parallel-syncs {name} 1",
        ]
        if self.master_password:
            lines.append(f"sentinel auth-pass {name} {_conf_value(self.master_password)}")
        if self.tls:
            tls = dict(self.tls)
            # The sentinel is the master's client: present the client cert, if there is one.
            if tls.get("client_cert_file"):
                tls["cert_file"] = tls["client_cert_file"]
                tls["key_file"] = tls["client_key_file"]
            lines += _tls_server_lines(tls, None) + ["tls-replication yes"]
        if self.password:
            lines.append(f"requirepass {_conf_value(self.password)}")
        return lines

    def _ready(self) -> bool:
        return self.get_master_addr() is not None

    def get_master_addr(self) -> tuple[str, int] | None:
        """What the sentinel answers to ``SENTINEL get-master-addr-by-name``."""
        reply = self.client().execute_command("SENTINEL", "get-master-addr-by-name", self.name)
        if not reply:
            return None
        host, port = reply
        host = host.decode() if isinstance(host, bytes) else host
        return (host, int(port))

    def replicas(self) -> list[dict]:
        reply = self.client().execute_command("SENTINEL", "replicas", self.name)
        result = []
        for item in reply or []:
            if isinstance(item, dict):
                entry = item
            else:
                entry = dict(zip(item[::2], item[1::2]))
            result.append(
                {
                    (k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
                    for k, v in entry.items()
                }
            )
        return result

    def wait_for_replicas(self, count: int = 1, timeout: float = 20.0) -> list[dict]:
        """Wait until the sentinel knows ``count`` healthy replicas (it polls the master's INFO)."""
        deadline = time.monotonic() + timeout
        known: list[dict] = []
        while time.monotonic() < deadline:
            with contextlib.suppress(redis.RedisError, OSError):
                known = [
                    r
                    for r in self.replicas()
                    if "s_down" not in r.get("flags", "") and "disconnected" not in r.get("flags", "")
                ]
                if len(known) >= count:
                    return known
            time.sleep(0.1)
        raise ServerError(
            f"sentinel {self.name!r} knows {len(known)} replica(s), wanted {count}, after {timeout} s"
            f"\n{self.log_tail()}"
        )

    def wait_for_master(self, address: tuple[str, int], timeout: float = 30.0) -> None:
        """Wait until the sentinel reports ``address`` as the master (after a failover)."""
        expected = (address[0], int(address[1]))
        deadline = time.monotonic() + timeout
        current = None
        while time.monotonic() < deadline:
            with contextlib.suppress(redis.RedisError, OSError):
                current = self.get_master_addr()
                if current == expected:
                    return
            time.sleep(0.1)
        raise ServerError(
            f"sentinel {self.name!r} still reports {current}, not {expected}, after {timeout} s"
            f"\n{self.log_tail()}"
        )

    def failover(self) -> None:
        """Ask for a failover now (``SENTINEL FAILOVER``), without waiting for it."""
        self.client().execute_command("SENTINEL", "FAILOVER", self.name)


# --------------------------------------------------------------------------------------
# command line: keep servers up for another program (used by .ci/conformance.sh)
# --------------------------------------------------------------------------------------
