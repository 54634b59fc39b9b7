"""Redis Cluster topology as data: key slots, the slot map, and MOVED/ASK redirections.

Low level (imports no layer): the slot map is learnt from ``CLUSTER SHARDS`` (Redis 7.0+)
or, on servers that do not know that command, ``CLUSTER SLOTS``, through redis-py's
asyncio client with the same connection options as every other connection. Nodes are
``(host, port)`` pairs: that is how a redirection names them, so a ``MOVED`` reply and the
map agree on identity without a lookup by node id.
"""

from __future__ import annotations

import re
from typing import Any, Iterable, Mapping, NamedTuple, Sequence, TypeVar
from urllib.parse import urlsplit, urlunsplit

import redis.asyncio
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.asyncio.connection import ConnectionPool, SSLConnection, parse_url
from redis.exceptions import AskError, MovedError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError

from .speedups import key_slot, key_slots

__all__ = [
    "SLOT_COUNT",
    "ClusterUnreachableError",
    "Node",
    "NotAClusterError",
    "Redirect",
    "Shard",
    "SlotMap",
    "UncoveredSlotError",
    "describe_url",
    "fetch_from_node",
    "fetch_slot_map",
    "key_slot",
    "key_slots",
    "node_kwargs",
    "parse_redirect",
]

SLOT_COUNT = 16384
#: Seconds to connect to one startup node and to wait for its answer.
DEFAULT_FETCH_TIMEOUT = 5.0

K = TypeVar("K", str, bytes)


class Node(NamedTuple):
    """A cluster node as clients address it (and as MOVED/ASK replies name it)."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


class Shard(NamedTuple):
    """One primary, its replicas and the slot ranges (inclusive) it serves."""

    primary: Node
    replicas: tuple[Node, ...]
    slots: tuple[tuple[int, int], ...]


class UncoveredSlotError(LookupError):
    """No primary serves this slot (the cluster is down for it, or the map is partial)."""


class ClusterUnreachableError(RedisConnectionError):
    """No startup node gave a slot map; the message names every node tried and why."""


class NotAClusterError(ResponseError):
    """A startup node answered, but it runs without ``cluster-enabled``."""


# --------------------------------------------------------------------------------------
# the map
# --------------------------------------------------------------------------------------


class SlotMap:
    """Which primary serves each of the 16384 slots (plus each shard's replicas)."""

    __slots__ = ("_owner", "shards")

    def __init__(self, shards: Iterable[Shard]) -> None:
        self.shards: list[Shard] = sorted(
            (shard for shard in shards if shard.slots), key=lambda shard: shard.slots[0]
        )
        # One list entry per slot: a lookup is an index, the cheapest thing Python does.
        owner: list[Node | None] = [None] * SLOT_COUNT
        for shard in self.shards:
            for start, end in shard.slots:
                if not 0 <= start <= end < SLOT_COUNT:
                    raise ValueError(f"slot range {start}-{end} is outside 0-{SLOT_COUNT - 1}")
                owner[start : end + 1] = [shard.primary] * (end - start + 1)
        self._owner = owner

    @classmethod
    def from_shards_reply(cls, reply: Any, default_host: str, *, tls: bool = False) -> "SlotMap":
        """From a ``CLUSTER SHARDS`` reply (RESP2 lists or RESP3 maps, bytes or str)."""
        return cls(parse_shards_reply(reply, default_host, tls=tls))

    @classmethod
    def from_slots_reply(cls, reply: Any, default_host: str) -> "SlotMap":
        """From a ``CLUSTER SLOTS`` reply."""
        return cls(parse_slots_reply(reply, default_host))

    # -- lookups -----------------------------------------------------------------------

    def node_for_slot(self, slot: int) -> Node:
        node = self._owner[slot]
        if node is None:
            raise UncoveredSlotError(f"no primary serves slot {slot}")
        return node

    def node_for_key(self, key: str | bytes) -> Node:
        return self.node_for_slot(key_slot(key))

    def group_by_node(self, keys: Sequence[K]) -> dict[Node, list[K]]:
        """The keys per primary that serves them, each list in the order given."""
        owner = self._owner
        groups: dict[Node, list[K]] = {}
        for key, slot in zip(keys, key_slots(keys)):
            node = owner[slot]
            if node is None:
                raise UncoveredSlotError(f"no primary serves slot {slot} (key {key!r})")
            bucket = groups.get(node)
            if bucket is None:
                groups[node] = [key]
            else:
                bucket.append(key)
        return groups

    @property
    def primaries(self) -> list[Node]:
        """Primaries that serve slots, in the order of their first slot."""
        return [shard.primary for shard in self.shards]

    def replicas_of(self, primary: Node) -> tuple[Node, ...]:
        for shard in self.shards:
            if shard.primary == primary:
                return shard.replicas
        raise KeyError(primary)

    def ranges(self) -> list[tuple[int, int, Node]]:
        """(start, end, primary) for every run of slots one primary serves, in slot order."""
        result: list[tuple[int, int, Node]] = []
        for slot, node in enumerate(self._owner):
            if node is None:
                continue
            if result and result[-1][2] == node and result[-1][1] == slot - 1:
                result[-1] = (result[-1][0], slot, node)
            else:
                result.append((slot, slot, node))
        return result

    def uncovered(self) -> list[tuple[int, int]]:
        """Ranges of slots no primary serves (empty for a healthy cluster)."""
        result: list[tuple[int, int]] = []
        for slot, node in enumerate(self._owner):
            if node is not None:
                continue
            if result and result[-1][1] == slot - 1:
                result[-1] = (result[-1][0], slot)
            else:
                result.append((slot, slot))
        return result

    @property
    def covers_all(self) -> bool:
        return None not in self._owner

    # -- change --------------------------------------------------------------------------

    def assign(self, slot: int, node: Node) -> None:
        """Record that ``node`` serves ``slot`` now (what a MOVED reply says), in place.

        Only the slot owner changes; the shard list (replicas, ranges) is as last fetched
        until the map is fetched again.
        """
        self._owner[slot] = node

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SlotMap):
            return NotImplemented
        return self._owner == other._owner

    def __repr__(self) -> str:
        ranges = ", ".join(f"{a}-{b}: {node}" for a, b, node in self.ranges())
        return f"<SlotMap {ranges or 'empty'}>"


# --------------------------------------------------------------------------------------
# replies
# --------------------------------------------------------------------------------------


def _text(value: Any) -> str:
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).decode("utf-8", "replace")
    return "" if value is None else str(value)


def _as_dict(value: Any) -> dict[str, Any]:
    """A RESP3 map or a RESP2 flat [key, value, ...] list, as a dict with str keys."""
    if isinstance(value, dict):
        return {_text(k): v for k, v in value.items()}
    items = list(value)
    return {_text(items[i]): items[i + 1] for i in range(0, len(items) - 1, 2)}


def _host(value: Any, default_host: str) -> str:
    # "" and "?" mean the node does not know its own address: it is the one we asked.
    host = _text(value)
    return default_host if host in ("", "?") else host


def parse_shards_reply(reply: Any, default_host: str, *, tls: bool = False) -> list[Shard]:
    """Shards of a ``CLUSTER SHARDS`` reply; failed replicas and slot-less shards are left out."""
    shards = []
    for raw in reply:
        shard = _as_dict(raw)
        flat = [int(x) for x in shard.get("slots") or []]
        slots = tuple(zip(flat[0::2], flat[1::2]))
        primary = None
        replicas = []
        for raw_node in shard.get("nodes") or []:
            node = _as_dict(raw_node)
            health = _text(node.get("health"))
            port = node.get("tls-port") if tls else node.get("port")
            if port is None:  # a server listening on the other kind of port only
                port = node.get("port") if tls else node.get("tls-port")
            if port is None:
                continue
            endpoint = node.get("endpoint")
            if _text(endpoint) in ("", "?"):
                endpoint = node.get("ip")
            address = Node(_host(endpoint, default_host), int(port))
            if _text(node.get("role")) == "master":
                # A failed primary can linger in the list beside the one that replaced it.
                if primary is None or health == "online":
                    primary = address
            elif health != "fail":
                replicas.append(address)
        if slots and primary is not None:
            shards.append(Shard(primary, tuple(r for r in replicas if r != primary), slots))
    return shards


def parse_slots_reply(reply: Any, default_host: str) -> list[Shard]:
    """Shards of a ``CLUSTER SLOTS`` reply (one entry per slot range, merged per primary)."""
    by_primary: dict[Node, tuple[list[Node], list[tuple[int, int]]]] = {}
    for entry in reply:
        start, end, primary_info, *replica_infos = entry
        primary = Node(_host(primary_info[0], default_host), int(primary_info[1]))
        replicas, slots = by_primary.setdefault(primary, ([], []))
        slots.append((int(start), int(end)))
        for info in replica_infos:
            replica = Node(_host(info[0], default_host), int(info[1]))
            if replica not in replicas:
                replicas.append(replica)
    return [Shard(node, tuple(replicas), tuple(sorted(slots))) for node, (replicas, slots) in by_primary.items()]


class Redirect(NamedTuple):
    """A ``MOVED`` or ``ASK`` error reply: where the slot is (MOVED) or this key is (ASK)."""

    kind: str  # "MOVED" or "ASK"
    slot: int
    host: str  # "" when the server does not know the address: the node that answered
    port: int

    def node(self, default_host: str) -> Node:
        return Node(self.host or default_host, self.port)


_REDIRECT = re.compile(r"^(?:(MOVED|ASK) )?(\d+) (\S*):(\d+)$")


def parse_redirect(error: BaseException | str | bytes) -> Redirect | None:
    """The redirection in an error reply, or None if it is not one.

    Takes the reply text (``"MOVED 3999 127.0.0.1:6381"``) or the exception a client
    raised for it: redis-py's MovedError/AskError drop the code from their message, ours
    (connection.reply_error) keep it; both are read.
    """
    if isinstance(error, BaseException):
        kind = "MOVED" if isinstance(error, MovedError) else "ASK" if isinstance(error, AskError) else None
        text = str(error.args[0]) if error.args else ""
    else:
        kind = None
        text = _text(error)
    match = _REDIRECT.match(text.strip())
    if match is None:
        return None
    code, slot, host, port = match.groups()
    kind = code or kind
    if kind is None:
        return None
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return Redirect(kind, int(slot), host, int(port))


# --------------------------------------------------------------------------------------
# fetching the map
# --------------------------------------------------------------------------------------


def describe_url(url: str) -> str:
    """A startup URL without its password, for logs and errors."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rpartition("@")[2]
    user = f"{parts.username}:***@" if parts.username else "***@"
    return urlunsplit(parts._replace(netloc=user + netloc))


def node_kwargs(url: str, options: Mapping[str, Any], node: Node | None = None) -> dict[str, Any]:
    """redis-py ConnectionPool kwargs for a node: the startup URL's options over
    ``options``, the host and port replaced by ``node``'s (all nodes share scheme,
    credentials and TLS settings). ``ssl: True`` is honoured as ``rediss://`` is."""
    kwargs = {**options, **parse_url(url)}
    kwargs.pop("address", None)
    kwargs.pop("cluster", None)
    # A pool takes TLS as a connection class; the client-level ``ssl`` flag is not one of
    # its options.
    if kwargs.pop("ssl", False):
        kwargs.setdefault("connection_class", SSLConnection)
    if node is not None:
        kwargs["host"], kwargs["port"] = node.host, node.port
    return kwargs


async def _fetch_one(kwargs: dict[str, Any]) -> SlotMap:
    kwargs = {
        **kwargs,
        "decode_responses": False,
        "socket_timeout": kwargs.get("socket_timeout") or DEFAULT_FETCH_TIMEOUT,
        "socket_connect_timeout": kwargs.get("socket_connect_timeout") or DEFAULT_FETCH_TIMEOUT,
    }
    kwargs.pop("db", None)
    # One attempt per node: the next startup node is a better retry than this one again.
    kwargs.setdefault("retry", Retry(NoBackoff(), 0))
    tls = issubclass(kwargs.get("connection_class") or object, SSLConnection)
    pool = ConnectionPool(**kwargs)
    client = redis.asyncio.Redis(connection_pool=pool)
    try:
        try:
            reply = await client.execute_command("CLUSTER", "SHARDS")
            return SlotMap.from_shards_reply(reply, kwargs["host"], tls=tls)
        except ResponseError as exc:
            # Only "unknown subcommand" sends us to the older command; "cluster support
            # disabled", NOPERM and the like are answers in their own right.
            if "unknown" not in str(exc).lower():
                raise
        # Before Redis 7.0: the older command.
        reply = await client.execute_command("CLUSTER", "SLOTS")
        return SlotMap.from_slots_reply(reply, kwargs["host"])
    finally:
        closer = getattr(client, "aclose", None) or client.close
        await closer()
        await pool.disconnect()


async def fetch_from_node(kwargs: dict[str, Any]) -> SlotMap:
    """The slot map as one node (redis-py ConnectionPool ``kwargs``) sees it; one attempt."""
    return await _fetch_one(kwargs)


def _uncovered_count(slot_map: SlotMap) -> int:
    return sum(end - start + 1 for start, end in slot_map.uncovered())


async def fetch_slot_map(startup: Sequence[str], options: Mapping[str, Any] | None = None) -> SlotMap:
    """The slot map, from the first startup node that gives one covering every slot.

    ``startup`` are ``redis://`` / ``rediss://`` URLs; ``options`` are redis-py connection
    options applied to each (password, username, ssl, ssl_ca_certs, ...). When every node
    answers with a partial map (slots without a live primary), the fullest one is returned.
    Raises NotAClusterError if a node runs without cluster support, and
    ClusterUnreachableError, naming every node and its error, if none answered.
    """
    if not startup:
        raise ValueError("fetch_slot_map() needs at least one startup node")
    options = dict(options or {})
    failures: list[str] = []
    best: SlotMap | None = None
    for url in startup:
        try:
            slot_map = await _fetch_one(node_kwargs(url, options))
        except ResponseError as exc:
            if "cluster support disabled" in str(exc).lower():
                raise NotAClusterError(
                    f"{describe_url(url)} is not a Redis Cluster node ({exc}); a `cluster` host "
                    f"entry needs nodes started with cluster-enabled yes"
                ) from exc
            failures.append(f"{describe_url(url)} ({type(exc).__name__}: {exc})")
            continue
        except (redis.RedisError, OSError) as exc:
            failures.append(f"{describe_url(url)} ({type(exc).__name__}: {exc})")
            continue
        if slot_map.covers_all:
            return slot_map
        if best is None or _uncovered_count(slot_map) < _uncovered_count(best):
            best = slot_map
    if best is not None and best.shards:
        return best
    if best is not None:
        failures.append("(the nodes that answered serve no slots yet)")
    raise ClusterUnreachableError(
        f"No Redis Cluster startup node gave the slot map; tried {len(startup)}: " + "; ".join(failures)
    )
