"""Private Redis and Sentinel servers for tests and benchmarks.

Every server started here listens on a free loopback port (never 6379 or 26379 unless a
port is asked for explicitly), lives in its own temporary directory, keeps nothing on disk,
and is stopped when the interpreter exits even if the caller forgot to.  Only the standard
library and redis-py's synchronous client are used.

Typical use::

    with RedisServer() as server:
        layer = RedisChannelLayer(hosts=[server.url])
        ...
        server.restart()          # same port: clients may reconnect

    with RedisServer() as master, SentinelServer(master, name="mymaster") as sentinel:
        replica = RedisServer(replicaof=(master.host, master.port))
        sentinel.wait_for_replicas(1)
        master.kill()
        sentinel.wait_for_master((replica.host, replica.port))

    with RedisCluster() as cluster:      # 3 primaries + 3 replicas, settled
        layer = RedisChannelLayer(hosts=[cluster.hosts_entry()])
        cluster.failover(cluster.replicas()[0])

The module also runs as a script to keep servers alive for another program (see ``main``)::

    python -m channels_redis_fast.testing --port 6379 --sentinel-port 26379 \
        --sentinel-master-name sentinel --sentinel-password channels_redis
"""

from .server_process import (
    INSTALL_HINT,
    LOOPBACK,
    RESERVED_PORTS,
    RedisNotInstalled,
    ServerError,
    find_executable,
    free_port,
    port_is_open,
    server_version,
    stop_all,
)
from .cluster import ClusterNode, RedisCluster
from .servers import RedisServer, SentinelServer

__all__ = [
    "ClusterNode",
    "INSTALL_HINT",
    "LOOPBACK",
    "RESERVED_PORTS",
    "RedisCluster",
    "RedisNotInstalled",
    "RedisServer",
    "SentinelServer",
    "ServerError",
    "find_executable",
    "free_port",
    "port_is_open",
    "server_version",
    "stop_all",
]
