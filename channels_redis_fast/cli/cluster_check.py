"""What ``check`` finds out about a Redis Cluster as a whole, before each primary is probed.

Every startup node is asked for the slot map with the layer's own code
(``cluster_slots.fetch_from_node``), so ``check`` sees what the layer would see; then
every primary of the fullest map is asked ``CLUSTER INFO``. Reported: which startup
nodes answer, the primaries with their slot ranges and replicas, the slots no primary
serves, and any node that says the cluster is down. Each primary is then checked as a
shard by probe.check_shard (reachability, version, maxmemory-policy, ACL).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import redis
from redis.asyncio.connection import SSLConnection as AsyncSSLConnection
from redis.exceptions import ResponseError

from ..cluster_config import ClusterConfig
from ..cluster_slots import SLOT_COUNT, Node, SlotMap, describe_url, fetch_from_node, node_kwargs
from .hosts import sync_client
from .probe import Finding, Findings, classify

__all__ = ["ClusterReport", "check_cluster", "sync_node_host"]


@dataclass
class StartupNode:
    url: str
    reachable: bool
    error: str | None = None


@dataclass
class Primary:
    address: str
    slots: list[tuple[int, int]]
    slot_count: int
    replicas: list[str]
    #: ``cluster_state`` from this primary's CLUSTER INFO (None: it did not answer).
    state: str | None = None


@dataclass
class ClusterReport(Findings):
    startup: list[StartupNode] = field(default_factory=list)
    primaries: list[Primary] = field(default_factory=list)
    uncovered: list[tuple[int, int]] = field(default_factory=list)
    covered: int = 0
    findings: list[Finding] = field(default_factory=list)


def sync_node_host(config: ClusterConfig, node: Node) -> dict[str, Any]:
    """A ``hosts``-style entry for probe.check_shard: the node's redis-py kwargs, with TLS
    as the ``ssl`` flag (the layer's kwargs name asyncio's connection class)."""
    kwargs = config.node_kwargs(node)
    connection_class = kwargs.pop("connection_class", None)
    if connection_class is not None and issubclass(connection_class, AsyncSSLConnection):
        kwargs["ssl"] = True
    return kwargs


def _ranges_text(ranges: list[tuple[int, int]], limit: int = 6) -> str:
    parts = [f"{a}-{b}" if a != b else str(a) for a, b in ranges[:limit]]
    if len(ranges) > limit:
        parts.append(f"... ({len(ranges) - limit} more ranges)")
    return ", ".join(parts)


async def _maps(config: ClusterConfig, report: ClusterReport) -> list[SlotMap]:
    maps = []
    for url in config.startup:
        where = f"startup node {describe_url(url)}"
        try:
            maps.append(await fetch_from_node(node_kwargs(url, config.options)))
        except ResponseError as exc:
            text = str(exc)
            if "cluster support disabled" in text.lower():
                message = (f"{where} is not a Redis Cluster node ({text}); a `cluster` host entry "
                           f"needs nodes started with cluster-enabled yes (use a plain host entry)")
            else:
                message = classify(exc, where)[1]
            report.startup.append(StartupNode(describe_url(url), True, message))
            report.add("error", "cluster", message)
        except (redis.RedisError, OSError) as exc:
            report.startup.append(StartupNode(describe_url(url), False, classify(exc, where)[1]))
        else:
            report.startup.append(StartupNode(describe_url(url), True))
    return maps


def _state(config: ClusterConfig, node: Node) -> str | None:
    client = sync_client(sync_node_host(config, node), retry=False)
    try:
        reply: Any = client.execute_command("CLUSTER", "INFO")
    except (redis.RedisError, OSError):
        return None  # probe.check_shard says why
    finally:
        client.close()
    if isinstance(reply, dict):
        return str(reply.get("cluster_state"))
    text = reply.decode() if isinstance(reply, bytes) else str(reply)
    for line in text.splitlines():
        if line.startswith("cluster_state:"):
            return line.partition(":")[2].strip()
    return None


def check_cluster(config: ClusterConfig) -> tuple[ClusterReport, list[dict[str, Any]]]:
    """The cluster's report, and a host entry per primary (for probe.check_shard).

    Never raises a Redis error: what fails is a finding.
    """
    report = ClusterReport()
    maps = asyncio.run(_maps(config, report))
    unreachable = [node for node in report.startup if not node.reachable]
    if not maps:
        if unreachable:
            report.add("error", "unreachable", "no startup node gave the slot map: "
                       + "; ".join(down.error or down.url for down in unreachable))
        return report, []
    for down in unreachable:
        report.add("warning", "unreachable", f"{down.error} (the layer asks the other startup nodes)")
    best = max(maps, key=lambda m: SLOT_COUNT - sum(b - a + 1 for a, b in m.uncovered()))
    if any(other != best for other in maps):
        report.add("warning", "cluster", "the startup nodes disagree on the slot map (a migration or "
                   "failover in progress?); reporting the fullest one")
    by_primary: dict[Node, list[tuple[int, int]]] = {}
    for start, end, node in best.ranges():
        by_primary.setdefault(node, []).append((start, end))
    for node in best.primaries:
        ranges = by_primary.get(node, [])
        report.primaries.append(Primary(
            address=str(node),
            slots=ranges,
            slot_count=sum(b - a + 1 for a, b in ranges),
            replicas=[str(replica) for replica in best.replicas_of(node)],
            state=_state(config, node),
        ))
    report.uncovered = best.uncovered()
    report.covered = SLOT_COUNT - sum(b - a + 1 for a, b in report.uncovered)
    if report.uncovered:
        report.add("error", "slots", f"{SLOT_COUNT - report.covered} of {SLOT_COUNT} slots have no primary "
                   f"({_ranges_text(report.uncovered)}): sends and receives on keys in them fail")
    for primary in report.primaries:
        if primary.state not in (None, "ok"):
            report.add("error", "cluster", f"primary {primary.address} says cluster_state:{primary.state}: "
                       "the cluster is down there (slots without a primary, or no majority of primaries)")
    return report, [sync_node_host(config, node) for node in best.primaries]


def render_cluster(config: ClusterConfig, report: ClusterReport) -> list[str]:
    lines = ["", f"cluster: {config.describe()}  [{report.status.upper()}]"]
    for startup in report.startup:
        lines.append(f"  {'startup node':<18} {startup.url}: "
                     + ("answers" if startup.reachable and not startup.error else startup.error or "no answer"))
    for primary in report.primaries:
        replicas = ", ".join(primary.replicas) or "none"
        lines.append(f"  {'primary':<18} {primary.address}: {primary.slot_count} slots "
                     f"({_ranges_text(primary.slots)}); replicas {replicas}; "
                     f"cluster_state {primary.state or 'unknown'}")
    if report.primaries:
        lines.append(f"  {'slots covered':<18} {report.covered} of {SLOT_COUNT}")
    for finding in sorted(report.findings, key=lambda f: f.level != "error"):
        lines.append(f"  {finding.level.upper()}: {finding.message}")
    return lines
