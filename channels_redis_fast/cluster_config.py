"""The ``cluster`` host entry: recognised and checked before anything is written.

A layer runs on a Redis Cluster when its ``hosts`` is one dict with a ``cluster`` key::

    hosts=[{"cluster": ["redis://10.0.0.1:6379", "redis://10.0.0.2:6379"], "password": "..."}]

The value lists startup nodes (one URL string is accepted too: a managed service's
configuration endpoint); every other key is a redis-py connection option applied to every
node of the cluster, those found later included. ``cluster_config`` sits beside
``utils.decode_hosts``: it returns None for ``hosts`` without a cluster entry, which then
go through decode_hosts as before.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping, NamedTuple
from urllib.parse import parse_qs, urlsplit

import redis.asyncio
from redis.asyncio.connection import ConnectionPool
from redis.exceptions import ClusterDownError, ResponseError

from .cluster_slots import Node, SlotMap, describe_url, fetch_slot_map, node_kwargs, parse_redirect
from .connection import check_protocol, reply_error

__all__ = [
    "ClusterConfig",
    "ClusterModeRequiredError",
    "cluster_config",
    "cluster_mode_error",
    "is_cluster_entry",
    "is_cluster_node",
    "load_slot_map",
    "PlainHostErrors",
]

CLUSTER_KEY = "cluster"
#: Keys that address one server; in a cluster entry the startup URLs do that.
_SINGLE_SERVER_KEYS = ("address", "host", "port", "path", "unix_socket_path", "sentinels", "master_name", "sentinel_kwargs")


class ClusterModeRequiredError(ResponseError):
    """A plain host entry reached a Redis Cluster node: the layer needs a ``cluster`` entry."""


class ClusterConfig(NamedTuple):
    """A checked cluster entry: startup node URLs and the options every node shares."""

    startup: tuple[str, ...]
    options: dict[str, Any]

    def node_kwargs(self, node: Node | None = None) -> dict[str, Any]:
        """redis-py ConnectionPool kwargs for ``node`` (or the first startup node): the
        startup URL's scheme, credentials and TLS options with the node's host and port
        (what connection.make_pool takes as a host entry without ``address``)."""
        return node_kwargs(self.startup[0], self.options, node)

    def describe(self) -> str:
        """Password-free, for logs and errors."""
        return "cluster:[" + ", ".join(describe_url(url) for url in self.startup) + "]"


def is_cluster_entry(entry: Any) -> bool:
    return isinstance(entry, Mapping) and CLUSTER_KEY in entry


def _db_error(where: str) -> ValueError:
    return ValueError(f"Redis Cluster has database 0 only; {where} asks for another one")


def _check_url(url: Any) -> str:
    if not isinstance(url, str):
        raise ValueError(f"cluster startup nodes are redis:// or rediss:// URL strings, not {url!r}")
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss"):
        raise ValueError(
            f"cluster startup node {describe_url(url)!r} must be a redis:// or rediss:// URL "
            f"(a cluster is reached over TCP)"
        )
    try:
        parts.port
    except ValueError as exc:
        raise ValueError(f"cluster startup node {describe_url(url)!r}: {exc}") from None
    if not parts.hostname:
        raise ValueError(f"cluster startup node {describe_url(url)!r} has no host")
    path = parts.path.strip("/")
    if path not in ("", "0"):
        raise _db_error(f"{describe_url(url)!r} (path /{path})")
    for value in parse_qs(parts.query).get("db", []):
        if value != "0":
            raise _db_error(f"{describe_url(url)!r} (db={value})")
    return url


def cluster_config(hosts: Iterable[Any] | None) -> ClusterConfig | None:
    """The cluster entry of a ``hosts`` option, checked; None when there is none.

    Raises ValueError, before any connection is made, for a cluster entry beside other
    hosts, no startup nodes, a URL that is not redis:// or rediss://, a database other than
    0 (in a URL path, a ``?db=`` query or a ``db`` option), keys that address a single
    server, startup URLs of different schemes, ``ssl_*`` options without TLS, and an
    unknown ``protocol``.
    """
    if not hosts or isinstance(hosts, (str, bytes)):
        return None
    entries = list(hosts)
    found = [entry for entry in entries if is_cluster_entry(entry)]
    if not found:
        return None
    if len(entries) > 1:
        raise ValueError(
            f"A `cluster` host entry must be the only entry in hosts (the cluster spreads keys over "
            f"its own nodes); got {len(entries)} entries. List every startup node inside `cluster`."
        )
    entry = dict(found[0])
    startup = entry.pop(CLUSTER_KEY)
    if isinstance(startup, str):
        startup = [startup]
    if isinstance(startup, (bytes, Mapping)) or not isinstance(startup, Iterable):
        raise ValueError(f"`cluster` takes a URL or a list of URLs of startup nodes, not {startup!r}")
    urls = tuple(_check_url(url) for url in startup)
    if not urls:
        raise ValueError("A `cluster` host entry needs at least one startup node URL")
    if len({urlsplit(url).scheme for url in urls}) > 1:
        raise ValueError("cluster startup nodes mix redis:// and rediss://; all nodes are reached the same way")
    misplaced = [key for key in _SINGLE_SERVER_KEYS if key in entry]
    if misplaced:
        raise ValueError(
            f"A `cluster` host entry names its nodes in `cluster`; remove {', '.join(misplaced)}"
        )
    tls_options = sorted(key for key in entry if key.startswith("ssl_"))
    if tls_options and urlsplit(urls[0]).scheme == "redis" and not entry.get("ssl"):
        raise ValueError(
            f"{', '.join(tls_options)} only apply to TLS: use rediss:// startup URLs or add ssl: True"
        )
    if entry.get("db") not in (None, 0, "0"):
        raise _db_error(f"the option db={entry['db']!r}")
    for url in urls:
        check_protocol({**entry, "address": url})
    return ClusterConfig(urls, entry)


async def load_slot_map(config: ClusterConfig) -> SlotMap:
    """The cluster's slot map, from the first startup node that answers.

    Raises ClusterUnreachableError naming every startup node and why it failed, or
    NotAClusterError for a node that runs without cluster support.
    """
    return await fetch_slot_map(config.startup, config.options)


async def is_cluster_node(url: str, options: Mapping[str, Any] | None = None) -> bool:
    """Whether the server at ``url`` runs with cluster support (``INFO cluster``)."""
    pool = ConnectionPool(**node_kwargs(url, options or {}))
    client = redis.asyncio.Redis(connection_pool=pool)
    try:
        info = await client.info("cluster")
    finally:
        closer = getattr(client, "aclose", None) or client.close
        await closer()
        await pool.disconnect()
    return bool(int(info.get("cluster_enabled", 0)))


def cluster_mode_error(error: BaseException, host: str) -> ClusterModeRequiredError | None:
    """For an error reply that only a cluster node gives (MOVED, ASK, CLUSTERDOWN) to a
    plain host entry, the error to raise instead, naming the ``cluster`` option; else None.

    ``host`` describes the entry (e.g. connection.describe_host(entry)), without password.
    """
    text = str(error.args[0]) if error.args else str(error)
    redirect = parse_redirect(error)
    if redirect is not None:
        reply = f"{redirect.kind} {redirect.slot} {redirect.host}:{redirect.port}"
    elif isinstance(error, ClusterDownError) or text.startswith("CLUSTERDOWN"):
        reply = text if text.startswith("CLUSTERDOWN") else f"CLUSTERDOWN {text}"
    else:
        return None
    url = host if "://" in host else f"redis://{host}"
    new = ClusterModeRequiredError(
        f"{host} is a Redis Cluster node (it answered {reply!r}), which a plain host entry "
        f"cannot use. Configure the layer with hosts=[{{\"cluster\": [\"{url}\"]}}] "
        f"(the `cluster` option; other connection options go beside it)."
    )
    new.__cause__ = error
    return new


class PlainHostErrors:
    """The error-reply factory of a plain (non-cluster) host's connections: replies only a
    cluster node gives become ClusterModeRequiredError, naming the ``cluster`` option,
    instead of a raw MOVED (hiredis calls this for error replies only)."""

    __slots__ = ("host",)

    def __init__(self, host: str) -> None:
        self.host = host

    def __call__(self, message: str) -> Exception:
        error = reply_error(message)
        if message.startswith(("MOVED ", "ASK ", "CLUSTERDOWN")):
            return cluster_mode_error(error, self.host) or error
        return error
