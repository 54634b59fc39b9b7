"""``python -m channels_redis_fast check``: connect to every shard of a layer and say what is wrong.

Per shard (on a Redis Cluster: first the cluster as a whole, see cluster_check.py, then per
primary): reachable or not and why (refused, TLS, authentication, an ACL that lacks a
command the layer sends, ...), server name and version, mode, round-trip time,
maxmemory and maxmemory-policy; and the layer's configuration as the layer resolved it.

Exit status: 0 when no shard has an error (warnings are printed, and are no failure
unless ``--strict``), 1 when any shard has an error, 2 when the configuration cannot be
read or makes no layer, 3 with ``--strict`` when there are warnings but no error.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, Sequence

from .cluster_check import ClusterReport, check_cluster, render_cluster
from .hosts import parse_hosts
from .layer_config import BACKENDS, ConfigError, LayerConfig, from_settings, resolve
from .probe import ShardReport, check_shard

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_CONFIG = 2
EXIT_WARNING = 3

#: The order in which the resolved configuration is printed.
_CONFIG_ORDER = (
    "backend",
    "implementation",
    "prefix",
    "capacity",
    "channel_capacity",
    "expiry",
    "group_expiry",
    "strict_messages",
    "serializer_format",
    "encryption",
    "shards",
)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m channels_redis_fast check",
        description="Connect to every shard of a channel layer and report, per shard: "
        "reachable or not and why, server and version, mode, round-trip time, maxmemory "
        "and maxmemory-policy, and the commands the layer needs that the user may not run. "
        "Exit status: 0 no errors (warnings allowed), 1 errors, 2 unusable configuration, "
        "3 warnings only, with --strict.",
    )
    source = parser.add_mutually_exclusive_group()
    source.add_argument(
        "--settings",
        metavar="MODULE",
        help="a Django settings module (as DJANGO_SETTINGS_MODULE) whose CHANNEL_LAYERS to "
        "check; the default when neither this nor --hosts is given is $DJANGO_SETTINGS_MODULE",
    )
    source.add_argument(
        "--cluster",
        action="append",
        metavar="URL",
        help="a Redis Cluster's startup node (redis:// or rediss:// URL; repeat or separate with "
        "commas): the same as --hosts '{\"cluster\": [URL, ...]}'",
    )
    source.add_argument(
        "--hosts",
        action="append",
        help="a shard: redis://, rediss:// or unix:// URL, or a JSON host dict such as "
        '\'{"sentinels": [["10.0.0.1", 26379]], "master_name": "mymaster"}\'; repeat or '
        "separate URLs with commas for several shards, in the layer's order",
    )
    parser.add_argument("--layer", default="default", help="the CHANNEL_LAYERS alias (with --settings)")
    parser.add_argument(
        "--backend",
        default="core",
        help="with --hosts: core, pubsub, or a dotted path to a layer class (default: core)",
    )
    parser.add_argument("--prefix", default=None, help="with --hosts: the layer's prefix (default asgi)")
    parser.add_argument(
        "--config",
        default=None,
        metavar="JSON",
        help='with --hosts: more layer options as JSON, e.g. \'{"capacity": 500, "expiry": 30}\'',
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument(
        "--strict", action="store_true", help="exit 3 when there are warnings but no error"
    )
    return parser


def _layer_from_args(args: argparse.Namespace, parser: argparse.ArgumentParser) -> LayerConfig:
    if args.cluster:
        urls = [url for value in args.cluster for url in value.split(",") if url.strip()]
        args.hosts = [json.dumps({"cluster": [url.strip() for url in urls]})]
    if args.hosts:
        config: dict[str, Any] = {}
        if args.config:
            try:
                config = json.loads(args.config)
            except ValueError as exc:
                raise ConfigError(f"--config is not JSON: {exc}") from exc
            if not isinstance(config, dict):
                raise ConfigError("--config must be a JSON object")
        try:
            config["hosts"] = parse_hosts(args.hosts)
        except ValueError as exc:
            raise ConfigError(f"--hosts: {exc}") from exc
        if args.prefix is not None:
            config["prefix"] = args.prefix
        source = "--cluster" if args.cluster else "--hosts"
        return resolve(BACKENDS.get(args.backend, args.backend), config, source)
    if args.prefix is not None or args.config is not None or args.backend != "core":
        parser.error(
            "--prefix, --config and --backend go with --hosts or --cluster; --settings reads them "
            "from CHANNEL_LAYERS"
        )
    module = args.settings or os.environ.get("DJANGO_SETTINGS_MODULE")
    if not module:
        parser.error("give --hosts URL ... or --settings MODULE (or set DJANGO_SETTINGS_MODULE)")
    backend, config, source = from_settings(module, args.layer)
    return resolve(backend, config, source)


def _format_value(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, dict):
        return json.dumps(value) if value else "{}"
    return repr(value)


def _format_maxmemory(report: ShardReport) -> str:
    if report.maxmemory is None:
        return "unknown"
    if report.maxmemory == 0:
        return "0 (no limit)"
    return f"{report.maxmemory} bytes ({report.maxmemory / 1024 / 1024:.1f} MiB)"


def render(layer: LayerConfig, reports: list[ShardReport], cluster: ClusterReport | None = None) -> str:
    lines = [
        f"channels_redis_fast check: {layer.source}",
        "",
        "layer configuration (as the layer resolved it):",
    ]
    for name in _CONFIG_ORDER:
        if name in layer.resolved:
            lines.append(f"  {name:<18} {_format_value(layer.resolved[name])}")
    if layer.cluster is not None and cluster is not None:
        lines += render_cluster(layer.cluster, cluster)
    for report in reports:
        lines += ["", f"shard {report.index}: {report.host}  [{report.status.upper()}]"]
        if report.master:
            lines.append(f"  {'master':<18} {report.master} (from the sentinels)")
        lines.append(f"  {'reachable':<18} {'yes' if report.reachable else 'no'}")
        if report.reachable:
            server = f"{report.server} {report.version}" if report.server else "unknown"
            lines += [
                f"  {'server':<18} {server}",
                f"  {'mode':<18} {report.mode or 'unknown'}",
                f"  {'round trip':<18} {report.rtt_ms:.2f} ms (median of PINGs)",
                f"  {'maxmemory':<18} {_format_maxmemory(report)}",
                f"  {'maxmemory-policy':<18} {report.maxmemory_policy or 'unknown'}",
                f"  {'commands allowed':<18} {', '.join(report.permitted) or 'none'}",
            ]
        for finding in sorted(report.findings, key=lambda f: f.level != "error"):
            lines.append(f"  {finding.level.upper()}: {finding.message}")
    errors = sum(report.status == "error" for report in reports)
    warnings = sum(report.status == "warning" for report in reports)
    lines += [
        "",
        f"{len(reports)} shard(s): {len(reports) - errors - warnings} ok, "
        f"{warnings} with warnings, {errors} with errors"
        + (f"; the cluster: {cluster.status}" if cluster is not None else ""),
    ]
    return "\n".join(lines)


def exit_status(reports: list[ShardReport], strict: bool, cluster: ClusterReport | None = None) -> int:
    statuses = {report.status for report in reports} | ({cluster.status} if cluster is not None else set())
    if "error" in statuses:
        return EXIT_ERROR
    if strict and "warning" in statuses:
        return EXIT_WARNING
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        layer = _layer_from_args(args, parser)
    except ConfigError as exc:
        print(f"check: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    cluster: ClusterReport | None = None
    hosts = layer.hosts
    if layer.cluster is not None:
        cluster, hosts = check_cluster(layer.cluster)
    reports = [
        check_shard(index, host, layer.kind, layer.prefix, cluster=cluster is not None)
        for index, host in enumerate(hosts)
    ]
    status = exit_status(reports, args.strict, cluster)
    if args.json:
        print(
            json.dumps(
                {
                    "source": layer.source,
                    "layer": layer.resolved,
                    "shards": [report.as_dict() for report in reports],
                    **({"cluster": cluster.as_dict()} if cluster is not None else {}),
                    "exit_status": status,
                },
                default=str,
            )
        )
    else:
        print(render(layer, reports, cluster))
    return status
