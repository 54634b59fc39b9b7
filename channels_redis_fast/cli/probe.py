"""What ``check`` finds out about one shard, with synchronous redis-py.

Every probe is harmless on a live deployment: reads, and writes that cannot change
anything (ZADD XX, ZREM, EXPIRE and UNLINK of a key that does not exist, a PUBLISH nobody
receives). They use one key and one pub/sub channel, ``{prefix}#channels_redis_fast-check``:
``#`` is not allowed in channel names, so no layer ever writes it, and it is under the
prefix, so it meets the same ACL key and channel patterns as the layer's own.
"""

from __future__ import annotations

import socket
import ssl
import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Iterator, cast

import redis
from redis.exceptions import AuthenticationError, NoPermissionError, ResponseError
from redis.sentinel import MasterNotFoundError

from .hosts import describe_host, sentinel_for, sync_client

PROBE_NAME = "#channels_redis_fast-check"
#: PINGs timed for the round trip (the median is reported).
RTT_SAMPLES = 5
#: Redis versions older than this are not supported (setup.cfg, README).
MIN_REDIS_VERSION = (6, 2)
EVICTING_PREFIXES = ("volatile-", "allkeys-")


@dataclass(frozen=True)
class Need:
    """A command the layer sends, and how to try it without changing anything."""

    command: str
    #: Probe arguments; "{key}", "{group}" and "{channel}" are filled in per layer prefix.
    args: tuple[str, ...]
    #: Without it the layer fails (an error) or only loses a convenience (a warning).
    required: bool
    used_for: str


#: Why CLIENT ID and CLIENT UNBLOCK matter (the layer works without them).
_UNBLOCK = (
    "interrupting a blocking pop when a receive stops or the layer closes; without it "
    "a close waits up to brpop_timeout"
)
CORE_NEEDS = (
    Need("EVALSHA", ("EVALSHA", "0" * 40, "1", "{key}"), True, "every send and group_send (Lua scripts)"),
    Need("EVAL", ("EVAL", "return 0", "1", "{key}"), True, "reloading the scripts after a restart"),
    Need("ZADD", ("ZADD", "{key}", "XX", "0", "-"), True, "sends (inside the scripts) and group_add"),
    Need("ZCARD", ("ZCARD", "{key}"), True, "the capacity check of every send (inside the scripts)"),
    Need(
        "ZREMRANGEBYSCORE",
        ("ZREMRANGEBYSCORE", "{key}", "-inf", "-inf"),
        True,
        "dropping expired messages and group members",
    ),
    Need("EXPIRE", ("EXPIRE", "{key}", "1"), True, "the TTL of every channel and group key"),
    Need("ZRANGE", ("ZRANGE", "{group}", "0", "-1"), True, "group_send (reading the group)"),
    Need("ZREM", ("ZREM", "{group}", "-"), True, "group_discard"),
    Need("ZPOPMIN", ("ZPOPMIN", "{key}", "1"), True, "receive (batches after the blocking pop)"),
    Need("BZPOPMIN", ("BZPOPMIN", "{key}", "0.01"), True, "receive (the blocking pop)"),
    Need("CLIENT ID", ("CLIENT", "ID"), False, _UNBLOCK),
    Need("CLIENT UNBLOCK", ("CLIENT", "UNBLOCK", "{client_id}"), False, _UNBLOCK),
    Need("SCAN", ("SCAN", "0", "MATCH", "{key}", "COUNT", "10"), False, "flush()"),
    Need("TYPE", ("TYPE", "{key}"), False, "flush()"),
    Need("UNLINK", ("UNLINK", "{key}"), False, "flush()"),
)
PUBSUB_NEEDS = (
    Need("PUBLISH", ("PUBLISH", "{channel}", ""), True, "send and group_send"),
    Need("SUBSCRIBE", ("SUBSCRIBE", "{channel}"), True, "receive and group_add"),
    Need("UNSUBSCRIBE", ("UNSUBSCRIBE", "{channel}"), True, "freeing channels and group_discard"),
)
#: On a Redis Cluster the pub/sub layer uses sharded pub/sub (sharded_subscriber.py). The
#: probe's channel may live on another node: a MOVED reply still means the server knows the
#: command and the ACL allowed it (Redis checks the ACL before it redirects).
SHARDED_PUBSUB_NEEDS = (
    Need("SPUBLISH", ("SPUBLISH", "{channel}", ""), True, "send and group_send (sharded pub/sub)"),
    Need("SSUBSCRIBE", ("SSUBSCRIBE", "{channel}"), True, "receive and group_add (sharded pub/sub)"),
    Need("SUNSUBSCRIBE", ("SUNSUBSCRIBE", "{channel}"), True, "freeing channels and group_discard"),
)


@dataclass
class Finding:
    level: str  # "error" or "warning"
    #: refused, tls, auth, acl, timeout, dns, sentinel, mode, replica, unsupported,
    #: eviction, info, version, unreachable
    kind: str
    message: str


class Findings:
    """A report's findings, and the status they add up to (for dataclass reports)."""

    findings: list[Finding]

    @property
    def status(self) -> str:
        levels = {finding.level for finding in self.findings}
        return "error" if "error" in levels else "warning" if "warning" in levels else "ok"

    def add(self, level: str, kind: str, message: str) -> None:
        self.findings.append(Finding(level, kind, message))

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(cast(Any, self)), "status": self.status}


@dataclass
class ShardReport(Findings):
    index: int
    host: str
    mode: str | None = None
    #: Where a sentinel entry's master is, as the sentinels said.
    master: str | None = None
    reachable: bool = False
    server: str | None = None
    version: str | None = None
    rtt_ms: float | None = None
    maxmemory: int | None = None
    maxmemory_policy: str | None = None
    #: The commands the layer needs that this server and user allow.
    permitted: list[str] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)


# ----------------------------------------------------------------------------- errors


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def classify(exc: BaseException, where: str) -> tuple[str, str]:
    """(kind, message) of a failure to reach or talk to ``where``."""
    chain = list(_chain(exc))
    for error in chain:
        if isinstance(error, AuthenticationError) or (
            isinstance(error, ResponseError) and str(error).startswith(("NOAUTH", "WRONGPASS"))
        ):
            return "auth", f"authentication failed at {where}: {error} (check the username and password)"
    for error in chain:
        if is_noperm(error):
            return "acl", f"ACL refused at {where}: {error}"
    for error in chain:
        if isinstance(error, ssl.SSLError) or "_ssl.c" in str(error) or "[SSL" in str(error):
            return "tls", (
                f"TLS failed at {where}: {error} (check rediss:// against the server's TLS "
                "port and the ssl_* options: CA, certificate, verification)"
            )
    for error in chain:
        if isinstance(error, ConnectionRefusedError) or "refused" in str(error).lower():
            return "refused", f"connection refused at {where}: nothing listens there ({exc})"
    for error in chain:
        if isinstance(error, socket.gaierror):
            return "dns", f"cannot resolve the host of {where}: {error}"
    for error in chain:
        if isinstance(error, MasterNotFoundError):
            return "sentinel", f"the sentinels do not name a master: {error}"
    for error in chain:
        if isinstance(error, (redis.TimeoutError, TimeoutError, socket.timeout)):
            return "timeout", f"no answer from {where} in time ({exc}): a firewall, or a frozen server"
    return "unreachable", f"cannot talk to {where}: {type(exc).__name__}: {exc}"


def is_noperm(exc: BaseException) -> bool:
    """An ACL refusal (redis-py strips the NOPERM prefix when it makes a NoPermissionError)."""
    return isinstance(exc, NoPermissionError) or (
        isinstance(exc, ResponseError) and str(exc).startswith("NOPERM")
    )


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


# ---------------------------------------------------------------------------- sentinel


def _check_sentinels(host: dict[str, Any], report: ShardReport) -> bool:
    """Ask every sentinel for the master; False (with an error) if none can be found."""
    name = host["master_name"]
    sentinel = sentinel_for(host, retry=False)
    failures = []
    answers = set()
    for address, client in zip(host["sentinels"], sentinel.sentinels):
        where = f"sentinel {address[0]}:{address[1]}"
        try:
            # The raw command: redis-py's sentinel_get_master_addr_by_name returns a bool
            # instead of the address in some releases, and in 6.x fails on a plain client
            # (its reply parser refuses the ``once`` option it passes). None = unknown.
            reply: Any = client.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", name)
        except (redis.RedisError, OSError) as exc:
            failures.append(classify(exc, where)[1])
            continue
        finally:
            client.close()
        if reply:
            answers.add(f"{_text(reply[0])}:{_text(reply[1])}")
        else:
            failures.append(f"{where} does not know a master named {name!r}")
    try:
        ip, port = sentinel.discover_master(name)
    except (redis.RedisError, OSError) as exc:
        kind, message = classify(exc, f"sentinels for {name!r}")
        report.add("error", kind, "; ".join([message, *failures]))
        return False
    report.master = f"{_text(ip)}:{port}"
    for failure in failures:
        report.add("warning", "sentinel", f"{failure} (the layer uses the other sentinels)")
    if len(answers) > 1:
        report.add("warning", "sentinel", f"the sentinels disagree on the master: {sorted(answers)}")
    return True


# ---------------------------------------------------------------------------- the shard


def _ping(client: redis.Redis) -> float:
    """Seconds for one round trip. A refused PING (an ACL without it) is a round trip too."""
    start = time.perf_counter()
    try:
        client.execute_command("PING")
    except ResponseError as exc:
        if not is_noperm(exc):
            raise
    return time.perf_counter() - start


def _version_tuple(version: str) -> tuple[int, ...]:
    parts = []
    for part in version.split("."):
        digits = "".join(ch for ch in part if ch.isdigit())
        parts.append(int(digits or 0))
    return tuple(parts)


def mode_findings(
    report: ShardReport, info: dict[str, Any], is_sentinel_entry: bool, cluster: bool = False
) -> None:
    """Mode of the server and whether this layer can use it.

    ``cluster``: the server is a primary of a ``cluster`` host entry, where cluster mode is
    what is wanted; a plain entry that reaches a cluster node is an error (keys of other
    slots answer MOVED).
    """
    redis_mode = str(info.get("redis_mode") or "standalone")
    report.mode = "sentinel" if is_sentinel_entry and redis_mode == "standalone" else redis_mode
    if cluster and redis_mode != "cluster":
        report.add("error", "mode", f"this server runs in {redis_mode} mode, not as a Redis Cluster node")
    elif redis_mode == "cluster" and not cluster:
        report.add(
            "error",
            "mode",
            "this server is a Redis Cluster node, which a plain host entry cannot use (keys on "
            'other nodes answer MOVED): configure hosts=[{"cluster": ["redis://HOST:PORT"]}] '
            "(the `cluster` option)",
        )
    elif redis_mode == "sentinel":
        report.add(
            "error",
            "mode",
            "this address is a Sentinel, not a data server; configure the shard as "
            '{"sentinels": [[host, port]], "master_name": NAME}',
        )
    if info.get("role") == "slave":
        report.add(
            "error",
            "replica",
            "this server is a replica: the layer's writes fail (READONLY); point the shard at "
            "the master, or at the sentinels that know it",
        )


def memory_findings(report: ShardReport, info: dict[str, Any], kind: str) -> None:
    maxmemory = info.get("maxmemory")
    report.maxmemory = int(maxmemory) if maxmemory is not None else None
    policy = info.get("maxmemory_policy")
    report.maxmemory_policy = str(policy) if policy is not None else None
    if policy is None or not str(policy).startswith(EVICTING_PREFIXES) or kind != "core":
        return  # the pub/sub layer stores no keys
    limit = "no maxmemory set yet" if not report.maxmemory else f"maxmemory {_bytes(report.maxmemory)}"
    if str(policy).startswith("volatile-"):
        scope = (
            "every key the layer writes has a TTL, so this policy may evict all of them"
        )
    else:
        scope = "this policy may evict any key, the layer's among them"
    report.add(
        "warning",
        "eviction",
        f"maxmemory-policy is {policy} ({limit}): when Redis is full it silently evicts "
        f"queued messages and group memberships ({scope}). Set maxmemory-policy noeviction: "
        "Redis then evicts nothing and answers writes past the limit with OOM errors",
    )


def _bytes(value: int) -> str:
    size = float(value)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{value} B"  # pragma: no cover


def _info(client: redis.Redis, report: ShardReport, kind: str, is_sentinel_entry: bool, cluster: bool) -> None:
    try:
        info = client.info()
    except ResponseError as exc:
        report.mode = "sentinel" if is_sentinel_entry else None
        policy_hint = (
            "; check with an admin user that maxmemory-policy is noeviction" if kind == "core" else ""
        )
        report.add(
            "warning",
            "info",
            f"INFO is not permitted for this user ({exc}), so the server version, mode and "
            f"maxmemory-policy are unknown{policy_hint}",
        )
        return
    name = str(info.get("server_name") or "redis")
    report.server = name
    report.version = str(info.get(f"{name}_version") or info.get("redis_version") or "") or None
    if name == "redis" and report.version and _version_tuple(report.version) < MIN_REDIS_VERSION:
        report.add(
            "warning",
            "version",
            f"Redis {report.version} is older than the supported "
            f"{'.'.join(map(str, MIN_REDIS_VERSION))}",
        )
    mode_findings(report, info, is_sentinel_entry, cluster)
    memory_findings(report, info, kind)


_TARGETS = ("{key}", "{group}", "{channel}")


def _fill(args: tuple[str, ...], names: dict[str, str]) -> list[str]:
    return [names.get(arg, arg) if arg.startswith("{") else arg for arg in args]


def _try(client: redis.Redis, need: Need, args: list[str]) -> Any:
    """Run one probe; a NOPERM or unknown-command reply is raised, other replies are fine."""
    try:
        if need.command in ("SUBSCRIBE", "SSUBSCRIBE"):
            return _try_subscribe(client, args)
        return client.execute_command(*args)
    except ResponseError as exc:
        text = str(exc).lower()
        if is_noperm(exc) or "unknown command" in text or "unknown subcommand" in text:
            raise
        # Anything else (NOSCRIPT for the made-up SHA, MOVED on a cluster) means the command
        # was allowed to run.
        return None


def _try_subscribe(client: redis.Redis, args: list[str]) -> Any:
    # On a connection of its own, which is then closed, never returned to the pool.
    connection = client.connection_pool.make_connection()
    try:
        connection.connect()
        connection.send_command(*args)
        reply = connection.read_response()
        if isinstance(reply, ResponseError):
            raise reply
        return reply
    finally:
        connection.disconnect()


def _needs(kind: str, cluster: bool) -> tuple[Need, ...]:
    if kind == "core":
        return CORE_NEEDS
    return SHARDED_PUBSUB_NEEDS if cluster else PUBSUB_NEEDS


def _permissions(client: redis.Redis, report: ShardReport, kind: str, prefix: str, cluster: bool) -> None:
    names = {
        "{key}": prefix + PROBE_NAME,
        "{group}": f"{prefix}:group:{PROBE_NAME}",
        "{channel}": prefix + PROBE_NAME,
        "{client_id}": "0",
    }
    # Commands refused for their key or channel, not for themselves: one finding for all.
    denied_names: dict[str, list[str]] = {}
    denied_level = "warning"
    for need in _needs(kind, cluster):
        args = _fill(need.args, names)
        try:
            reply = _try(client, need, args)
        except ResponseError as exc:
            text = str(exc)
            level = "error" if need.required else "warning"
            if not is_noperm(exc):
                report.add(
                    level,
                    "unsupported",
                    f"the server does not know {need.command} ({text}); the layer uses it for "
                    f"{need.used_for}",
                )
            elif " run " in text or "command" in text:
                report.add(
                    level,
                    "acl",
                    f"ACL: this user may not run {need.command}, which the layer uses for "
                    f"{need.used_for} (NOPERM {text}); allow +{need.command.lower().replace(' ', '|')}",
                )
            else:
                target = next((names[arg] for arg in need.args if arg in _TARGETS), need.command)
                denied_names.setdefault(target, []).append(need.command)
                if need.required:
                    denied_level = "error"
            continue
        if need.command == "CLIENT ID" and reply is not None:
            names["{client_id}"] = str(reply)
        report.permitted.append(need.command)
    if denied_names:
        what = "channel" if kind == "pubsub" else "key"
        listed = "; ".join(f"{name!r} ({', '.join(commands)})" for name, commands in denied_names.items())
        report.add(
            denied_level,
            "acl",
            f"ACL: this user may not use the {what}s the layer uses under the prefix "
            f"{prefix!r}: {listed}; allow {'&' if what == 'channel' else '~'}{prefix}*",
        )


def check_shard(index: int, host: dict[str, Any], kind: str, prefix: str, cluster: bool = False) -> ShardReport:
    """Everything ``check`` reports about one ``hosts`` entry (``cluster``: a primary of a
    cluster entry); never raises a Redis error."""
    report = ShardReport(index=index, host=describe_host(host))
    is_sentinel_entry = "master_name" in host
    if is_sentinel_entry:
        report.mode = "sentinel"
        if not _check_sentinels(host, report):
            return report
    client = sync_client(host, retry=False)
    where = report.master or report.host
    try:
        try:
            samples = [_ping(client)]
        except (redis.RedisError, OSError) as exc:
            report.add("error", *classify(exc, where))
            return report
        report.reachable = True
        samples += [_ping(client) for _ in range(RTT_SAMPLES - 1)]
        report.rtt_ms = statistics.median(samples) * 1000
        _info(client, report, kind, is_sentinel_entry, cluster)
        _permissions(client, report, kind, prefix, cluster)
    except (redis.RedisError, OSError) as exc:
        report.add("error", *classify(exc, where))
    finally:
        client.close()
    return report
