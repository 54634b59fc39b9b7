"""The layer ``check`` inspects: from ``--hosts`` or a Django project's CHANNEL_LAYERS.

The backend class is built from its options as Channels builds it (``BACKEND(**CONFIG)``),
so what is reported (hosts, capacity, expiry, prefix...) is what the layer itself made of
the configuration, not a second reading of it. Building a layer opens no connection.
"""

from __future__ import annotations

import asyncio
import importlib
import os
from dataclasses import dataclass, field
from typing import Any

from ..cluster_config import ClusterConfig, cluster_config
from ..speedups import IMPLEMENTATION

CORE_BACKEND = "channels_redis_fast.core.RedisChannelLayer"
PUBSUB_BACKEND = "channels_redis_fast.pubsub.RedisPubSubChannelLayer"
#: ``--backend`` short names.
BACKENDS = {"core": CORE_BACKEND, "pubsub": PUBSUB_BACKEND}


class ConfigError(Exception):
    """The configuration cannot be read or does not make a channels_redis_fast layer."""


@dataclass
class LayerConfig:
    source: str
    backend: str
    #: "core" or "pubsub": which commands and data the shards must allow for.
    kind: str
    hosts: list[dict[str, Any]]
    prefix: str
    #: What the layer resolved, for display (never a password or an encryption key).
    resolved: dict[str, Any] = field(default_factory=dict)
    #: A ``cluster`` host entry: ``hosts`` is empty until check asks the cluster for its primaries.
    cluster: ClusterConfig | None = None


def _import_string(path: str) -> Any:
    module_name, _, attribute = path.rpartition(".")
    if not module_name:
        raise ConfigError(f"BACKEND {path!r} is not a dotted path to a class")
    try:
        return getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"cannot import BACKEND {path!r}: {exc}") from exc


def from_settings(module: str, alias: str) -> tuple[str, dict[str, Any], str]:
    """(BACKEND, CONFIG, description) of ``CHANNEL_LAYERS[alias]`` in a Django settings module.

    Read through ``django.conf.settings`` as the project reads it; the project's apps are
    not set up (the layer needs none of them).
    """
    os.environ["DJANGO_SETTINGS_MODULE"] = module
    try:
        from django.conf import settings
    except ImportError as exc:  # pragma: no cover - channels depends on Django
        raise ConfigError(f"--settings needs Django: {exc}") from exc
    try:
        layers = settings.CHANNEL_LAYERS
    except AttributeError:
        raise ConfigError(f"settings module {module!r} defines no CHANNEL_LAYERS") from None
    except ImportError as exc:
        raise ConfigError(f"cannot import settings module {module!r}: {exc}") from exc
    if alias not in layers:
        known = ", ".join(repr(name) for name in layers) or "none"
        raise ConfigError(f"CHANNEL_LAYERS in {module!r} has no layer {alias!r} (it has: {known})")
    entry = layers[alias]
    if "BACKEND" not in entry:
        raise ConfigError(f"CHANNEL_LAYERS[{alias!r}] in {module!r} has no BACKEND")
    return entry["BACKEND"], dict(entry.get("CONFIG") or {}), f"{module} CHANNEL_LAYERS[{alias!r}]"


def _common(config: dict[str, Any], layer: Any) -> dict[str, Any]:
    keys = list(config.get("symmetric_encryption_keys") or ())
    crypter = getattr(getattr(layer, "_serializer", None), "crypter", None)
    return {
        "implementation": IMPLEMENTATION,
        "serializer_format": config.get("serializer_format", "msgpack"),
        "encryption": f"on ({len(keys)} key(s))" if crypter is not None else "off",
        "channel_capacity": dict(config.get("channel_capacity") or {}),
    }


def _node_hosts(router: Any) -> list[dict[str, Any]]:
    """The connection options of every node the layer's router holds keys on, in order."""
    return [router.hosts[node] for node in router.nodes]


def _resolve_core(cls: type, config: dict[str, Any]) -> tuple[list, str, dict[str, Any]]:
    layer = cls(**config)
    resolved = {
        "capacity": layer.capacity,
        "expiry": layer.expiry,
        "group_expiry": layer.group_expiry,
        **_common(config, layer),
    }
    return _node_hosts(layer.router), layer.prefix, resolved


def _resolve_pubsub(cls: type, config: dict[str, Any]) -> tuple[list, str, dict[str, Any]]:
    # The pub/sub options live on the per-loop layer, which needs a running loop.
    async def build() -> tuple[list, str, dict[str, Any]]:
        proxy = cls(**config)
        try:
            inner = proxy._get_layer()
            resolved = {
                "capacity": inner.capacity,
                "expiry": "not used by the pub/sub layer",
                "group_expiry": "not used by the pub/sub layer",
                "strict_messages": inner.strict_messages,
                **_common(config, proxy),
            }
            return _node_hosts(inner.router), inner.prefix, resolved
        finally:
            await proxy.close()

    return asyncio.run(build())


def resolve(backend: str, config: dict[str, Any], source: str) -> LayerConfig:
    """Build the layer from its options; a ConfigError says what is wrong with them."""
    from ..core import RedisChannelLayer
    from ..pubsub import RedisPubSubChannelLayer

    cls = _import_string(BACKENDS.get(backend, backend))
    if not isinstance(cls, type):
        raise ConfigError(f"BACKEND {backend!r} is not a class")
    path = f"{cls.__module__}.{cls.__qualname__}"
    try:
        if issubclass(cls, RedisChannelLayer):
            kind = "core"
            hosts, prefix, resolved = _resolve_core(cls, config)
        elif issubclass(cls, RedisPubSubChannelLayer):
            kind = "pubsub"
            hosts, prefix, resolved = _resolve_pubsub(cls, config)
        else:
            raise ConfigError(
                f"BACKEND {path} is not a channels_redis_fast layer "
                f"(check knows {CORE_BACKEND} and {PUBSUB_BACKEND}, and their subclasses)"
            )
    except ConfigError:
        raise
    except (TypeError, ValueError, AssertionError, ImportError) as exc:
        raise ConfigError(f"{path}(**CONFIG) fails: {exc}") from exc
    cluster = cluster_config(config.get("hosts"))  # the layer accepted it: valid
    shards: Any = len(hosts) if cluster is None else f"the primaries of {cluster.describe()}"
    resolved = {"backend": path, "prefix": prefix, **resolved, "shards": shards}
    return LayerConfig(
        source=source, backend=path, kind=kind, hosts=hosts, prefix=prefix, resolved=resolved, cluster=cluster
    )
