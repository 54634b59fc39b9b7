"""Group members in several processes on a Redis Cluster: each process is a subprocess
running the installed package, with members on keys of many slots, sending to the group
and receiving from it at once; every delivery is counted (none lost, none twice)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import textwrap

#: The member process: makes its channels, joins them to the group, says "ready", waits
#: for "go" on stdin, then sends ``sends`` group messages while receiving on every one of
#: its channels until each has ``expected`` messages (or nothing came for a while), and
#: prints what each channel received.
MEMBER = textwrap.dedent(
    """
    import asyncio, json, sys
    from channels_redis_fast.core import RedisChannelLayer

    async def main(name, startup, process_channels, general_channels, sends, expected):
        layer = RedisChannelLayer(hosts=[{"cluster": startup}], capacity=1000)
        channels = [await layer.new_channel() for _ in range(process_channels)]
        channels += [f"{name}.worker{i}" for i in range(general_channels)]
        for channel in channels:
            await layer.group_add("room", channel)
        print(json.dumps({"ready": channels}), flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)  # "go"
        got = {channel: [] for channel in channels}

        async def receive(channel):
            while len(got[channel]) < expected:
                try:
                    message = await asyncio.wait_for(layer.receive(channel), 10)
                except asyncio.TimeoutError:
                    return
                got[channel].append([message["sender"], message["n"]])

        async def send():
            for n in range(sends):
                await layer.group_send("room", {"type": "m", "sender": name, "n": n})

        await asyncio.gather(send(), *[receive(channel) for channel in channels])
        # Anything more would be a duplicate: look once more, briefly.
        for channel in channels:
            try:
                message = await asyncio.wait_for(layer.receive(channel), 0.3)
                got[channel].append([message["sender"], message["n"]])
            except asyncio.TimeoutError:
                pass
        await layer.close_pools()
        print(json.dumps({"got": got}), flush=True)

    name, startup, pc, gc, sends, expected = sys.argv[1], json.loads(sys.argv[2]), *map(int, sys.argv[3:7])
    asyncio.run(main(name, startup, pc, gc, sends, expected))
    """
)


def test_members_in_three_processes_over_many_slots_get_every_message_once(cluster, tmp_path):
    processes, process_channels, general_channels, sends = 3, 6, 4, 25
    expected = processes * sends
    script = tmp_path / "member.py"
    script.write_text(MEMBER)
    names = [f"p{i}" for i in range(processes)]
    children = [
        subprocess.Popen(
            [sys.executable, str(script), name, json.dumps(cluster.urls[:2]), str(process_channels),
             str(general_channels), str(sends), str(expected)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            cwd=tempfile.gettempdir(),  # the installed package, not the checkout
            env=dict(os.environ),
        )
        for name in names
    ]
    try:
        members = {}
        for name, child in zip(names, children):
            line = child.stdout.readline()
            assert line, child.stderr.read()
            members[name] = json.loads(line)["ready"]
        # The members' keys lie in many slots, on every primary: one key per process for its
        # process channels (a random slot) and one per general channel (fixed names).
        general = {"asgi" + c for channels in members.values() for c in channels if "!" not in c}
        assert len({cluster.key_slot(key) for key in general}) == processes * general_channels
        assert {cluster.node_for_key(key).port for key in general} == {node.port for node in cluster.primaries()}
        for child in children:
            child.stdin.write("go\n")
            child.stdin.flush()
        results = {}
        for name, child in zip(names, children):
            out, err = child.communicate(timeout=120)
            assert child.returncode == 0, err
            results[name] = json.loads(out.strip().splitlines()[-1])["got"]
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
                child.wait()
    lost = duplicated = 0
    for name in names:
        assert sorted(results[name]) == sorted(members[name])
        for channel, got in results[name].items():
            pairs = [tuple(pair) for pair in got]
            wanted = {(sender, n) for sender in names for n in range(sends)}
            lost += len(wanted - set(pairs))
            duplicated += len(pairs) - len(set(pairs))
            for sender in names:  # one sender's messages arrive in the order it sent them
                assert [n for s, n in pairs if s == sender] == sorted(n for s, n in pairs if s == sender)
    assert (lost, duplicated) == (0, 0)
