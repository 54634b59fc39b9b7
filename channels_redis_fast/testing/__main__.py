"""``python -m channels_redis_fast.testing``: keep private servers alive for another program."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
from typing import Sequence

from .server_process import ServerError, _Process
from .servers import RedisServer, SentinelServer


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m channels_redis_fast.testing",
        description="Run a private Redis (and optionally a Sentinel) until SIGTERM/SIGINT.",
    )
    parser.add_argument("--port", type=int, default=None, help="Redis port (default: free port)")
    parser.add_argument("--bind", default=None, help="Redis/Sentinel bind directive")
    parser.add_argument("--password", default=None, help="requirepass for Redis")
    parser.add_argument("--no-redis", action="store_true", help="do not start Redis; monitor --master")
    parser.add_argument("--master", default=None, help="HOST:PORT of an existing master (with --no-redis)")
    parser.add_argument("--sentinel-port", type=int, default=None, help="also start a Sentinel here (0: free)")
    parser.add_argument("--sentinel-master-name", default="mymaster")
    parser.add_argument("--sentinel-password", default=None)
    parser.add_argument("--ready-file", default=None, help="write a JSON description here once ready")
    args = parser.parse_args(argv)

    stop = threading.Event()

    def _on_signal(signum: int, frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)

    servers: list[_Process] = []
    info: dict = {}
    try:
        if args.no_redis:
            if not args.master:
                parser.error("--no-redis needs --master HOST:PORT")
            mhost, _, mport = args.master.rpartition(":")
            master: RedisServer | tuple[str, int] = (mhost, int(mport))
        else:
            master = RedisServer(port=args.port, bind=args.bind, password=args.password)
            servers.append(master)
            info["redis"] = {"host": master.host, "port": master.port, "url": master.url, "pid": master.pid}
        if args.sentinel_port is not None:
            sentinel = SentinelServer(
                master,
                name=args.sentinel_master_name,
                port=args.sentinel_port or None,
                bind=args.bind,
                password=args.sentinel_password,
                master_password=args.password,
            )
            servers.append(sentinel)
            info["sentinel"] = {
                "host": sentinel.host,
                "port": sentinel.port,
                "master_name": sentinel.name,
                "pid": sentinel.pid,
            }
        text = json.dumps(info)
        if args.ready_file:
            tmp = args.ready_file + ".tmp"
            with open(tmp, "w") as fh:
                fh.write(text)
            os.replace(tmp, args.ready_file)
        print(text, flush=True)
        while not stop.wait(0.5):
            for server in servers:
                if not server.running:
                    print(f"{server!r} exited unexpectedly:\n{server.log_tail()}", file=sys.stderr)
                    return 1
        return 0
    except ServerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        for server in reversed(servers):
            server.close()


if __name__ == "__main__":
    sys.exit(main())
