"""The chat workload: websocket clients in one room, through two Daphne processes.

    python bench/chat.py                               # both layers, 40 clients, 8 senders, 5 s
    python bench/chat.py --clients 100 --senders 16 --duration 10 --json /tmp/chat.json

The site is tests/chatsite (the one the Django end-to-end tests use): a consumer that joins
a group on connect and group_sends whatever it receives.  For each layer this starts a
private Redis and two Daphne processes with ``CRF_CHAT_BACKEND`` set to ``fast``
(channels_redis_fast) or ``stock`` (channels_redis 4.3), opens N websocket clients spread
over both, and lets S of them send in a closed loop (each waits for its own message to come
back before sending the next).  Every message goes to all N clients.

Reported per layer: messages/s (group_sends completed), deliveries/s (messages x clients
that got them), p50/p99 send-to-receive latency over all deliveries, the number of Redis
connections at the end, and Redis commands per chat message (INFO commandstats over the
measured window, commands Lua scripts run included, divided by the group_sends completed).
``fast-nolocal`` is channels_redis_fast with ``local_delivery`` off: the members a Daphne
process holds itself cost Redis traffic again.  Everything runs on this machine, so the client, both servers and
Redis share its cores: compare the layers with each other, not with other machines.

Importable: ``run_chat(backend, clients=..., senders=..., duration=...)`` returns the dict.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from channels_redis_fast.testing import LOOPBACK, RedisServer, free_port

CHATSITE = Path(__file__).resolve().parent.parent / "tests" / "chatsite"
BACKENDS = {
    "fast": "channels_redis_fast",
    "fast-nolocal": "crf, local_delivery off",
    "stock": "channels_redis 4.3",
}
START_TIMEOUT = 20.0


def start_daphne(name: str, redis_url: str, backend: str, logdir: str) -> tuple[subprocess.Popen, int]:
    port = free_port()
    env = dict(os.environ)
    env.update(
        DJANGO_SETTINGS_MODULE="chatsite.settings",
        PYTHONPATH=os.pathsep.join(filter(None, [str(CHATSITE), env.get("PYTHONPATH")])),
        CRF_CHAT_REDIS_URL=redis_url,
        CRF_CHAT_BACKEND="fast" if backend == "fast-nolocal" else backend,
        CRF_CHAT_LOCAL_DELIVERY="0" if backend == "fast-nolocal" else "1",
        CRF_CHAT_SERVER_NAME=name,
    )
    log = open(os.path.join(logdir, f"daphne-{name}.log"), "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "daphne", "-b", LOOPBACK, "-p", str(port), "chatsite.asgi:application"],
        cwd=CHATSITE, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    log.close()
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"daphne {name} exited with {proc.returncode}; see {logdir}")
        with contextlib.suppress(OSError):
            with urllib.request.urlopen(f"http://{LOOPBACK}:{port}/health/", timeout=1):
                return proc, port
        time.sleep(0.1)
    stop_process(proc)
    raise RuntimeError(f"daphne {name} did not answer HTTP within {START_TIMEOUT} s; see {logdir}")


def stop_process(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def percentile(sorted_values: list[float], q: float) -> float | None:
    if not sorted_values:
        return None
    index = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[index]


def redis_commands(client) -> int:
    """Commands the server ran so far (INFO, CONFIG and CLIENT, ours, left out)."""
    return sum(
        int(stats["calls"])
        for name, stats in client.info("commandstats").items()
        if name.removeprefix("cmdstat_").split("|")[0] not in ("info", "config", "client")
    )


async def drive(ports: list[int], clients: int, senders: int, duration: float, warmup: float,
                redis_client=None) -> dict:
    from websockets.asyncio.client import connect

    room = "bench"
    sockets = []
    for i in range(clients):
        port = ports[i % len(ports)]
        ws = await asyncio.wait_for(connect(f"ws://{LOOPBACK}:{port}/ws/chat/{room}/", open_timeout=20), 30)
        hello = json.loads(await asyncio.wait_for(ws.recv(), 20))
        assert hello["type"] == "joined", hello
        sockets.append(ws)

    sent_at: dict[str, float] = {}
    latencies: list[float] = []
    delivered = 0
    measuring = False
    echoes: dict[int, asyncio.Event] = {}
    stopping = False

    async def reader(index: int, ws) -> None:
        nonlocal delivered
        with contextlib.suppress(Exception):
            async for raw in ws:
                now = time.perf_counter()
                data = json.loads(raw)
                if data.get("type") != "message":
                    continue
                text = data["message"]
                started = sent_at.get(text)
                if started is not None and measuring:
                    latencies.append(now - started)
                    delivered += 1
                if text.startswith(f"{index}:") and index in echoes:
                    echoes[index].set()

    async def sender(index: int) -> int:
        ws = sockets[index]
        seq = 0
        done = 0
        while not stopping:
            text = f"{index}:{seq}"
            seq += 1
            event = echoes[index] = asyncio.Event()
            sent_at[text] = time.perf_counter()
            await ws.send(json.dumps({"message": text}))
            try:
                await asyncio.wait_for(event.wait(), 10)
            except asyncio.TimeoutError:
                break
            if measuring:
                done += 1
        return done

    readers = [asyncio.create_task(reader(i, ws)) for i, ws in enumerate(sockets)]
    tasks = [asyncio.create_task(sender(i)) for i in range(min(senders, clients))]
    await asyncio.sleep(warmup)
    commands_before = redis_commands(redis_client) if redis_client is not None else 0
    measuring = True
    started = time.perf_counter()
    await asyncio.sleep(duration)
    measuring = False
    elapsed = time.perf_counter() - started
    commands = redis_commands(redis_client) - commands_before if redis_client is not None else None
    stopping = True
    messages = sum(await asyncio.wait_for(asyncio.gather(*tasks), 20))
    await asyncio.sleep(0.2)
    for ws in sockets:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(ws.close(), 2)
    for task in readers:
        task.cancel()
    await asyncio.gather(*readers, return_exceptions=True)
    latencies.sort()
    return {
        "clients": clients,
        "senders": min(senders, clients),
        "seconds": round(elapsed, 3),
        "messages_per_s": round(messages / elapsed, 1),
        "deliveries_per_s": round(delivered / elapsed, 1),
        "p50_ms": round(percentile(latencies, 0.50) * 1000, 2) if latencies else None,
        "p99_ms": round(percentile(latencies, 0.99) * 1000, 2) if latencies else None,
        "mean_ms": round(statistics.fmean(latencies) * 1000, 2) if latencies else None,
        "redis_commands_per_message": round(commands / messages, 2) if commands is not None and messages else None,
    }


def run_chat(backend: str = "fast", clients: int = 40, senders: int = 8, duration: float = 5.0,
             warmup: float = 1.0, processes: int = 2) -> dict:
    """One run of the chat workload on a fresh Redis with ``processes`` Daphne servers."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {list(BACKENDS)}")
    procs: list[subprocess.Popen] = []
    with tempfile.TemporaryDirectory(prefix="crf-chat-bench-") as logdir, RedisServer() as redis:
        try:
            ports = []
            for i in range(processes):
                proc, port = start_daphne(f"{backend}-{i}", redis.url, backend, logdir)
                procs.append(proc)
                ports.append(port)
            client = redis.client()
            result = asyncio.run(drive(ports, clients, senders, duration, warmup, client))
            me = client.client_id()
            result["redis_connections"] = sum(1 for c in client.client_list() if int(c["id"]) != me)
        finally:
            for proc in procs:
                stop_process(proc)
    result["layer"] = BACKENDS[backend]
    result["processes"] = processes
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", default="fast,fast-nolocal,stock", help="comma list of fast, fast-nolocal, stock")
    parser.add_argument("--clients", type=int, default=40)
    parser.add_argument("--senders", type=int, default=8)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args(argv)
    results = []
    header = (f"{'layer':<26}{'clients':>8}{'senders':>8}{'msg/s':>10}{'deliv/s':>10}{'p50 ms':>9}{'p99 ms':>9}"
              f"{'conns':>7}{'cmds/msg':>10}")
    print(header, flush=True)
    for backend in [b.strip() for b in args.layers.split(",") if b.strip()]:
        r = run_chat(backend, args.clients, args.senders, args.duration, args.warmup, args.processes)
        results.append(r)
        print(
            f"{r['layer']:<26}{r['clients']:>8}{r['senders']:>8}{r['messages_per_s']:>10,.0f}"
            f"{r['deliveries_per_s']:>10,.0f}{r['p50_ms'] or float('nan'):>9.2f}{r['p99_ms'] or float('nan'):>9.2f}"
            f"{r['redis_connections']:>7}{r['redis_commands_per_message'] or float('nan'):>10.2f}",
            flush=True,
        )
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
