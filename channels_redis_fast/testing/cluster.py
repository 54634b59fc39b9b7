"""A private Redis Cluster for tests: 3 primaries and 3 replicas on free loopback ports.

Typical use::

    with RedisCluster() as cluster:
        layer = RedisChannelLayer(hosts=[cluster.hosts_entry()])
        ...
        cluster.failover(cluster.replicas_of(cluster.node_for_key("asgi:x"))[0])
        cluster.migrate_slot(cluster.key_slot("asgi:x"), cluster.primaries()[1])
        cluster.kill(cluster.primaries()[0])      # returns the promoted replica

Every method that changes the topology returns only once every live node agrees on the
new one and every live replica has finished syncing, so the next step of a test starts
from a settled cluster. The harness asks the servers themselves (``CLUSTER NODES``,
``CLUSTER KEYSLOT``) and never the package's own slot code, which it is there to test.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import time
from typing import Any, Callable, NamedTuple

import redis

from .server_process import LOOPBACK, RESERVED_PORTS, ServerError, _conf_value, find_executable, start_or_close
from .servers import RedisServer

__all__ = ["ClusterNode", "NodeView", "RedisCluster"]

SLOTS = 16384
#: Small, so that a killed primary is replaced in seconds; large enough that a busy
#: two-core machine does not mark a healthy node as failing.
DEFAULT_NODE_TIMEOUT_MS = 2000
SETTLE_TIMEOUT = 60.0
#: The cluster bus listens on the client port + 10000 (before Redis 7.0's cluster-port).
BUS_OFFSET = 10000


def _bindable(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def free_cluster_port(host: str = LOOPBACK) -> int:
    """A free port whose cluster bus port (+10000) is free too; neither one reserved."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((host, 0))
            port = int(sock.getsockname()[1])
        bus = port + BUS_OFFSET
        if bus > 65535 or port in RESERVED_PORTS or bus in RESERVED_PORTS:
            continue
        if _bindable(host, bus):
            return port


class NodeView(NamedTuple):
    """One line of ``CLUSTER NODES``, as one node sees another."""

    node_id: str
    host: str
    port: int
    flags: frozenset[str]
    master_id: str | None
    slots: tuple[tuple[int, int], ...]

    @property
    def is_master(self) -> bool:
        return "master" in self.flags

    @property
    def failed(self) -> bool:
        return "fail" in self.flags or "fail?" in self.flags


def parse_cluster_nodes(text: str | bytes) -> list[NodeView]:
    """Parse a ``CLUSTER NODES`` reply (open migrations, ``[slot->-id]``, are left out)."""
    if isinstance(text, bytes):
        text = text.decode()
    views = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 8:
            continue
        address = fields[1].split("@", 1)[0].split(",", 1)[0]
        host, _, port = address.rpartition(":")
        slots = []
        for item in fields[8:]:
            if item.startswith("["):
                continue
            start, _, end = item.partition("-")
            slots.append((int(start), int(end or start)))
        views.append(
            NodeView(
                node_id=fields[0],
                host=host,
                port=int(port),
                flags=frozenset(fields[2].split(",")) - {"myself"},
                master_id=None if fields[3] == "-" else fields[3],
                slots=tuple(sorted(slots)),
            )
        )
    return views


class ClusterNode(RedisServer):
    """One ``redis-server --cluster-enabled yes`` of a RedisCluster."""

    def __init__(
        self,
        *,
        port: int,
        node_timeout_ms: int = DEFAULT_NODE_TIMEOUT_MS,
        password: str | None = None,
        start: bool = True,
        **kwargs: Any,
    ) -> None:
        self.node_timeout_ms = node_timeout_ms
        self._node_id: str | None = None
        super().__init__(port=port, password=password, masterauth=password, start=start, **kwargs)

    @property
    def address(self) -> tuple[str, int]:
        return (self.host, self.port)

    @property
    def bus_port(self) -> int:
        return self.port + BUS_OFFSET

    @property
    def node_id(self) -> str:
        """This node's cluster id (``CLUSTER MYID``; kept in nodes.conf across restarts)."""
        if self._node_id is None:
            self._node_id = _text(self.client().execute_command("CLUSTER", "MYID"))
        return self._node_id

    def _config_lines(self) -> list[str]:
        lines = super()._config_lines()
        lines += [
            "cluster-enabled yes",
            "cluster-config-file nodes.conf",
            f"cluster-node-timeout {self.node_timeout_ms}",
            # Let a replica take over however long its link was down: tests kill on purpose.
            "cluster-replica-validity-factor 0",
            # Keep the topology the tests built: no replica wanders to an orphaned master.
            "cluster-allow-replica-migration no",
            # A replica's first sync starts at once instead of after the default delay.
            "repl-diskless-sync yes",
            "repl-diskless-sync-delay 0",
        ]
        if self.masterauth:
            lines.append(f"masterauth {self.masterauth}")
        if self.tls:
            # TLS on the cluster bus and for replication too: the node has no plain port.
            lines += ["tls-cluster yes", "tls-replication yes"]
            if self.tls.get("client_cert_file"):
                lines += [
                    f"tls-client-cert-file {_conf_value(self.tls['client_cert_file'])}",
                    f"tls-client-key-file {_conf_value(self.tls['client_key_file'])}",
                ]
        return lines

    def view_text(self) -> str:
        """This node's ``CLUSTER NODES`` reply."""
        return _text(self.client().execute_command("CLUSTER", "NODES"))

    def view(self) -> list[NodeView]:
        """The cluster as this node sees it."""
        return parse_cluster_nodes(self.view_text())

    def cluster_info(self) -> dict[str, str]:
        text = _text(self.client().execute_command("CLUSTER", "INFO"))
        return dict(line.split(":", 1) for line in text.splitlines() if ":" in line)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class RedisCluster:
    """A private Redis Cluster: ``primaries`` shards with ``replicas`` replicas each.

    :param password: ``requirepass`` (and ``masterauth``) on every node.
    :param tls: serve TLS only, on the client, replication and cluster-bus links alike: the
        same dict as ``RedisServer(tls=...)``. ``urls`` become ``rediss://``; ``ssl_kwargs``
        are the redis-py options that reach the nodes.
    :param node_timeout_ms: ``cluster-node-timeout``: how soon a dead primary is replaced.
    :param start: start now (default) or leave it to ``start()`` / ``with``.

    ``startup_seconds`` says how long ``start()`` took, until the cluster had settled.
    """

    def __init__(
        self,
        primaries: int = 3,
        replicas: int = 1,
        *,
        password: str | None = None,
        tls: dict | None = None,
        node_timeout_ms: int = DEFAULT_NODE_TIMEOUT_MS,
        host: str = LOOPBACK,
        start: bool = True,
        startup_timeout: float = SETTLE_TIMEOUT,
        binary: str | None = None,
    ) -> None:
        if primaries < 3:
            raise ValueError("redis-cli --cluster create needs at least 3 primaries")
        self.primary_count = primaries
        self.replica_count = replicas
        self.password = password
        self.tls = dict(tls) if tls else None
        self.node_timeout_ms = node_timeout_ms
        self.host = host
        self.startup_timeout = startup_timeout
        self._binary = binary
        self.nodes: list[ClusterNode] = []
        self.startup_seconds: float | None = None
        self._closed = False
        if start:
            start_or_close(self)

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> "RedisCluster":
        """Start the nodes, join them with ``redis-cli --cluster create``, wait until settled."""
        if self._closed:
            raise ServerError(f"{self!r} is closed")
        if self.nodes:
            return self
        began = time.monotonic()
        for _ in range(self.primary_count * (1 + self.replica_count)):
            self.nodes.append(self._start_node())
        command = [
            find_executable("redis-cli"),
            "--cluster",
            "create",
            *(f"{node.host}:{node.port}" for node in self.nodes),
            "--cluster-replicas",
            str(self.replica_count),
            "--cluster-yes",
        ]
        if self.password:
            command += ["-a", self.password, "--no-auth-warning"]
        if self.tls:
            command += ["--tls", "--cacert", self.tls["ca_file"]]
            if self.tls.get("client_cert_file"):
                command += ["--cert", self.tls["client_cert_file"], "--key", self.tls["client_key_file"]]
        try:
            result = subprocess.run(command, capture_output=True, text=True, timeout=self.startup_timeout)
        except subprocess.TimeoutExpired as exc:
            # Say where it stood and what each node logged, so that a hang can be explained.
            said = exc.stdout.decode(errors="replace") if isinstance(exc.stdout, bytes) else exc.stdout or ""
            logs = "\n".join(node.log_tail(15) for node in self.nodes)
            raise ServerError(
                f"redis-cli --cluster create did not finish in {self.startup_timeout:.0f} s:\n{said}\n{logs}"
            ) from exc
        if result.returncode != 0 or "[OK] All 16384 slots covered" not in result.stdout:
            raise ServerError(f"redis-cli --cluster create failed:\n{result.stdout}\n{result.stderr}")
        self.wait_settled(self.startup_timeout)
        self.startup_seconds = time.monotonic() - began
        return self

    def _start_node(self) -> ClusterNode:
        error: ServerError | None = None
        for _attempt in range(5):
            node = ClusterNode(
                port=free_cluster_port(self.host),
                node_timeout_ms=self.node_timeout_ms,
                password=self.password,
                host=self.host,
                binary=self._binary,
                tls=self.tls,
                start=False,
            )
            try:
                node.start()
                return node
            except ServerError as exc:
                node.close()
                error = exc
                # Someone took one of the two ports since we probed them: pick others.
                if "in use" not in str(exc):
                    raise
        assert error is not None
        raise error

    def close(self) -> None:
        """Stop every node for good (they are also stopped at interpreter exit)."""
        self._closed = True
        for node in self.nodes:
            with contextlib.suppress(Exception):
                node.close()

    def __enter__(self) -> "RedisCluster":
        return self.start()

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        ports = ",".join(str(node.port) for node in self.nodes)
        return f"<RedisCluster {self.host}:[{ports}]>"

    # -- addresses -------------------------------------------------------------------------

    @property
    def urls(self) -> list[str]:
        """``redis://`` URLs of every node (startup nodes for a client)."""
        return [node.url for node in self.nodes]

    def hosts_entry(self, **options: Any) -> dict[str, Any]:
        """A layer ``hosts`` entry for this cluster: ``{"cluster": urls, **options}``."""
        return {"cluster": self.urls, **options}

    @property
    def ssl_kwargs(self) -> dict:
        """redis-py options that reach the nodes of a TLS cluster (empty for a plain one)."""
        return self.nodes[0].ssl_kwargs if self.nodes else {}

    @property
    def ports(self) -> list[int]:
        """Every port the cluster listens on: clients' and the cluster bus's."""
        return [port for node in self.nodes for port in (node.port, node.bus_port)]

    def live_nodes(self) -> list[ClusterNode]:
        return [node for node in self.nodes if node.running]

    def node_by_id(self, node_id: str) -> ClusterNode:
        for node in self.nodes:
            if node.node_id == node_id:
                return node
        raise KeyError(node_id)

    # -- topology, as the servers report it ------------------------------------------------

    def view(self) -> list[NodeView]:
        """``CLUSTER NODES`` from the first live node that answers."""
        error: Exception | None = None
        for node in self.live_nodes():
            try:
                return node.view()
            except (redis.RedisError, OSError) as exc:
                error = exc
        raise ServerError(f"no node of {self!r} answers CLUSTER NODES (last error: {error!r})")

    def primaries(self) -> list[ClusterNode]:
        """Live primaries that own slots, in slot order."""
        views = sorted(
            (v for v in self.view() if v.is_master and v.slots and not v.failed), key=lambda v: v.slots[0]
        )
        return [self.node_by_id(v.node_id) for v in views]

    def replicas(self) -> list[ClusterNode]:
        return [self.node_by_id(v.node_id) for v in self.view() if not v.is_master and not v.failed]

    def replicas_of(self, primary: ClusterNode) -> list[ClusterNode]:
        primary_id = primary.node_id
        return [
            self.node_by_id(v.node_id)
            for v in self.view()
            if v.master_id == primary_id and not v.is_master and not v.failed
        ]

    def key_slot(self, key: str | bytes) -> int:
        """The slot of ``key``, as the server computes it (``CLUSTER KEYSLOT``)."""
        for node in self.live_nodes():
            with contextlib.suppress(redis.RedisError, OSError):
                return int(node.client().execute_command("CLUSTER", "KEYSLOT", key))
        raise ServerError(f"no node of {self!r} answers CLUSTER KEYSLOT")

    def node_for_slot(self, slot: int) -> ClusterNode:
        """The primary that owns ``slot``."""
        for v in self.view():
            if v.is_master and not v.failed and any(a <= slot <= b for a, b in v.slots):
                return self.node_by_id(v.node_id)
        raise ServerError(f"slot {slot} has no live owner in {self!r}")

    def node_for_key(self, key: str | bytes) -> ClusterNode:
        return self.node_for_slot(self.key_slot(key))

    # -- waiting ---------------------------------------------------------------------------

    def wait_settled(self, timeout: float = SETTLE_TIMEOUT) -> None:
        """Wait until every live node agrees on the topology and the cluster is healthy.

        Settled means: each live node says ``cluster_state:ok`` and gives the same roles and
        slot ranges for every node, marks exactly the stopped nodes as failed, and has no
        open migration; every live replica's link is up and its sync is over (a manual
        failover before the first sync silently times out).
        """
        deadline = time.monotonic() + timeout
        problem: str | None = "nothing checked yet"
        while True:
            try:
                problem = self._unsettled()
            except (redis.RedisError, OSError) as exc:
                problem = f"a node did not answer: {exc!r}"
            if problem is None:
                return
            if time.monotonic() > deadline:
                raise ServerError(f"{self!r} did not settle within {timeout} s: {problem}")
            time.sleep(0.05)

    def _unsettled(self) -> str | None:
        live = self.live_nodes()
        live_ids = {node.node_id for node in live}
        expected: dict[str, tuple] | None = None
        for node in live:
            info = node.cluster_info()
            if info.get("cluster_state") != "ok":
                return f"{node!r} says cluster_state:{info.get('cluster_state')}"
            text = node.view_text()
            if "->-" in text or "-<-" in text:
                return f"{node!r} still has a slot migration open"
            views = parse_cluster_nodes(text)
            if len(views) != len(self.nodes):
                return f"{node!r} knows {len(views)} nodes, not {len(self.nodes)}"
            for v in views:
                if v.failed if v.node_id in live_ids else "fail" not in v.flags:
                    return f"{node!r} has {v.node_id[:8]} ({v.port}) flagged {sorted(v.flags)}"
            seen = {v.node_id: (v.is_master, v.master_id, v.slots) for v in views}
            if expected is None:
                expected = seen
            elif seen != expected:
                return f"{node!r} sees another topology than {live[0]!r}"
        assert expected is not None
        covered = sum(b - a + 1 for is_master, _, slots in expected.values() if is_master for a, b in slots)
        if covered != SLOTS:
            return f"{covered} slots covered, not {SLOTS}"
        for node in live:
            is_master, master_id, _ = expected[node.node_id]
            if is_master:
                continue
            info = node.client().info("replication")
            if info.get("master_link_status") != "up" or info.get("master_sync_in_progress"):
                return f"replica {node!r} has not finished syncing"
            if master_id not in live_ids:
                return f"replica {node!r} follows a stopped node"
        return None

    def _wait_for(self, what: str, predicate: Callable[[list[NodeView]], bool], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            with contextlib.suppress(redis.RedisError, OSError):
                if all(predicate(node.view()) for node in self.live_nodes()):
                    return
            if time.monotonic() > deadline:
                raise ServerError(f"{self!r}: not every node sees {what} after {timeout} s")
            time.sleep(0.05)

    # -- faults ----------------------------------------------------------------------------

    def failover(self, replica: ClusterNode, *, force: bool = False, timeout: float = SETTLE_TIMEOUT) -> None:
        """``CLUSTER FAILOVER`` on ``replica``; returns once every node sees it as the primary."""
        replica_id = replica.node_id
        old_master = next((v.master_id for v in replica.view() if v.node_id == replica_id), None)
        if old_master is None:
            raise ValueError(f"{replica!r} is not a replica")
        args = ["CLUSTER", "FAILOVER"] + (["FORCE"] if force else [])
        replica.client().execute_command(*args)

        def switched(views: list[NodeView]) -> bool:
            by_id = {v.node_id: v for v in views}
            return by_id[replica_id].is_master and by_id[old_master].master_id == replica_id

        self._wait_for(f"{replica!r} promoted", switched, timeout)
        self.wait_settled(timeout)

    def kill(self, node: ClusterNode, *, timeout: float = SETTLE_TIMEOUT) -> ClusterNode | None:
        """SIGKILL ``node``; for a primary, wait until a replica took its slots and return it."""
        was_primary = node in self.primaries()
        candidates = {replica.node_id for replica in self.replicas_of(node)} if was_primary else set()
        node.kill()
        if not was_primary:
            self.wait_settled(timeout)
            return None

        def promoted(views: list[NodeView]) -> bool:
            return any(v.node_id in candidates and v.is_master and v.slots for v in views)

        self._wait_for(f"a replacement for {node!r}", promoted, timeout)
        self.wait_settled(timeout)
        return next(n for n in self.primaries() if n.node_id in candidates)

    def restart(self, node: ClusterNode, *, timeout: float = SETTLE_TIMEOUT) -> None:
        """Start a stopped node again (a former primary rejoins as a replica); wait until settled."""
        node.start()
        self.wait_settled(timeout)

    # -- resharding ------------------------------------------------------------------------

    def begin_migration(self, slot: int, target: ClusterNode) -> ClusterNode:
        """Open a migration of ``slot`` to ``target`` (IMPORTING, then MIGRATING); returns the source."""
        source = self.node_for_slot(slot)
        if source is target:
            raise ValueError(f"slot {slot} already lives on {target!r}")
        target.client().execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", source.node_id)
        source.client().execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", target.node_id)
        return source

    def move_keys(self, slot: int, source: ClusterNode, target: ClusterNode, *, batch: int = 100, limit: int | None = None) -> int:
        """MIGRATE the slot's keys from ``source`` to ``target`` in batches; returns how many moved.

        ``limit`` stops after about that many keys, to leave a migration half done.
        """
        moved = 0
        auth = ["AUTH", self.password] if self.password else []
        while limit is None or moved < limit:
            count = batch if limit is None else min(batch, limit - moved)
            keys = source.client().execute_command("CLUSTER", "GETKEYSINSLOT", slot, count)
            if not keys:
                break
            # (Over TLS too: with tls-cluster the source dials the target with its TLS client.)
            source.client().execute_command("MIGRATE", target.host, target.port, "", 0, 5000, *auth, "KEYS", *keys)
            moved += len(keys)
        return moved

    def finish_migration(self, slot: int, source: ClusterNode, target: ClusterNode, *, timeout: float = SETTLE_TIMEOUT) -> None:
        """Move any keys left, then ``SETSLOT NODE``: target first, source next, then the rest."""
        self.move_keys(slot, source, target)
        order = [target, source] + [n for n in self.primaries() if n is not target and n is not source]
        for node in order:
            node.client().execute_command("CLUSTER", "SETSLOT", slot, "NODE", target.node_id)
        target_id = target.node_id

        def owned(views: list[NodeView]) -> bool:
            return any(v.node_id == target_id and any(a <= slot <= b for a, b in v.slots) for v in views)

        self._wait_for(f"slot {slot} on {target!r}", owned, timeout)
        self.wait_settled(timeout)

    def migrate_slot(self, slot: int, target: ClusterNode, *, batch: int = 100, timeout: float = SETTLE_TIMEOUT) -> ClusterNode:
        """Move ``slot`` and its keys to ``target``; returns the source."""
        source = self.begin_migration(slot, target)
        self.move_keys(slot, source, target, batch=batch)
        self.finish_migration(slot, source, target, timeout=timeout)
        return source

    def _open_migrations(self) -> list[tuple[int, ClusterNode, ClusterNode]]:
        """(slot, source, target) of every migration a live primary has left open."""
        found = []
        for node in self.live_nodes():
            for line in node.view_text().splitlines():
                fields = line.split()
                if len(fields) < 3 or "myself" not in fields[2].split(","):
                    continue
                for item in fields[8:]:
                    if "->-" in item:  # "[slot->-target_id]": this node is migrating it away
                        slot, _, target_id = item.strip("[]").partition("->-")
                        found.append((int(slot), node, self.node_by_id(target_id)))
        return found

    def reset(self, timeout: float = SETTLE_TIMEOUT) -> None:
        """Back to a healthy, empty cluster: stopped nodes started, open migrations finished,
        every primary FLUSHALLed. (Roles and slot owners stay as the last test left them.)"""
        for node in self.nodes:
            if not node.running:
                node.start()
        for slot, source, target in self._open_migrations():
            self.finish_migration(slot, source, target, timeout=timeout)
        for node in self.live_nodes():
            # An IMPORTING mark without its MIGRATING half (a test stopped between the two).
            for line in node.view_text().splitlines():
                if "myself" in line.split()[2]:
                    for item in line.split()[8:]:
                        if "-<-" in item:
                            node.client().execute_command("CLUSTER", "SETSLOT", int(item.strip("[]").partition("-<-")[0]), "STABLE")
        self.wait_settled(timeout)
        self.flushall()

    # -- data ------------------------------------------------------------------------------

    def flushall(self) -> None:
        """FLUSHALL on every primary (replicas follow)."""
        for node in self.primaries():
            node.client().flushall()
