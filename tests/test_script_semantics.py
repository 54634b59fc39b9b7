"""The core scripts against a plain model of channels_redis's send semantics.

channels_redis prunes expired members (score < now - expiry), refuses a send when the
live ones reach capacity, else adds the message and refreshes the key's TTL. Our scripts
read first and prune after their ZADD (see scripts.py); on random states, with members
around the expiry cutoff and at capacity, they must leave exactly what the model does.
"""

from __future__ import annotations

import hashlib
import random

from channels_redis_fast.scripts import GROUP_SEND, GROUP_SEND_KNOWN, SEND

NOW = 1000.0
EXPIRY = 60
GROUP_EXPIRY = 86400


def _deliver(state: dict, added: set, key: str, member: bytes, capacity: int) -> int:
    """The model for one key; returns 1 when the message was dropped for capacity."""
    alive = {m: s for m, s in state.get(key, {}).items() if s >= NOW - EXPIRY}
    full = len(alive) >= capacity
    if not full:
        alive[member] = NOW
        added.add(key)
    if alive:
        state[key] = alive
    else:
        state.pop(key, None)
    return int(full)


def _redis_state(client, keys: list[str]) -> dict:
    return {k: dict(client.zrange(k, 0, -1, withscores=True)) for k in keys if client.exists(k)}


def test_scripts_match_the_model_on_random_states(redis_server, redis_url):
    client = redis_server.client()
    rnd = random.Random(13)
    for _ in range(300):
        client.flushall()
        keys = [f"asgik{i}" for i in range(rnd.randint(1, 4))]
        state: dict = {}
        added: set = set()
        for key in keys:
            for j in range(rnd.randint(0, 6)):
                age = rnd.choice([0, 10, 59.5, 60, 60.5, 100])
                state.setdefault(key, {})[b"dup" if j == 0 and rnd.random() < 0.2 else b"m%d" % j] = NOW - age
        for key, members in state.items():
            client.zadd(key, members)
        capacities = [rnd.randint(0, 6) for _ in keys]
        payloads = [b"dup" if rnd.random() < 0.2 else b"new%d" % i for i in range(len(keys))]
        kind = rnd.choice(["send", "group", "known"])
        if kind == "send":
            result = client.eval(SEND, 1, keys[0], payloads[0], NOW, NOW - EXPIRY, capacities[0], EXPIRY)
            assert result == 1 - _deliver(state, added, keys[0], payloads[0], capacities[0])
        elif kind == "group":
            result = client.eval(GROUP_SEND, len(keys), *keys, NOW, NOW - EXPIRY, EXPIRY, *payloads, *capacities)
            assert result == sum(_deliver(state, added, k, p, c) for k, p, c in zip(keys, payloads, capacities))
        else:
            _known(client, rnd, keys, payloads, capacities, state, added)
        assert _redis_state(client, keys) == state
        for key in state:
            # EXPIRE where a message was added; keys made by the test have no TTL.
            assert (0 < client.ttl(key) <= EXPIRY) if key in added else client.ttl(key) == -1


SNAPSHOT = "asgi:group:g$plan"


def _known(client, rnd, keys, payloads, capacities, state, added) -> None:
    """GROUP_SEND_KNOWN: it delivers exactly when the live members are the plan's.

    Either way of the check may decide: the digest (which also sees the order) or the
    snapshot of the plan's members, which a send that passed the digest leaves behind.
    """
    members = {b"c%d" % i: NOW - rnd.choice([0, 0, 0, GROUP_EXPIRY, GROUP_EXPIRY + 1]) for i in range(3)}
    client.zadd("asgi:group:g", members)
    # In ZRANGE's order (score, then name), as the digest of a plan is made.
    live = [m for m, s in sorted(members.items(), key=lambda i: (i[1], i[0])) if s >= NOW - GROUP_EXPIRY]
    plan = rnd.choice([live, live, live[::-1], live[1:], [*live, b"c9"], [b"c9"]])
    digest = hashlib.sha1(b"\n".join(plan)).hexdigest()
    mark = b"\0" + digest.encode()
    snapshot_kind = rnd.choice(["none", "plan", "plan", "other mark", "other members"])
    snapshot = {
        "none": set(),
        "plan": {mark, *plan},
        "other mark": {b"\0" + b"0" * 40, *plan},
        "other members": {mark, *plan[1:], b"c8"},
    }[snapshot_kind]
    if snapshot:
        client.zadd(SNAPSHOT, {m: 0 for m in snapshot})
    group_before = client.zrange("asgi:group:g", 0, -1, withscores=True)
    ttl = rnd.choice([300, 300, 0])  # 0: a small group, checked by digest, no snapshot
    quick = ttl > 0 and snapshot_kind == "plan" and set(plan) == set(members)  # none expired either
    matches = bool(live) and set(plan) == set(live) and (quick or plan == live)
    result = client.eval(
        GROUP_SEND_KNOWN, len(keys) + 2, "asgi:group:g", SNAPSHOT, *keys, f"({NOW - GROUP_EXPIRY!r}", digest,
        NOW, NOW - EXPIRY, EXPIRY, ttl, *payloads, *capacities,
    )
    if matches:
        assert result == sum(_deliver(state, added, k, p, c) for k, p, c in zip(keys, payloads, capacities))
        assert client.zrange("asgi:group:g", 0, -1) == live
        if ttl:
            # The snapshot now stands for this plan's members, whichever way decided.
            assert set(client.zrange(SNAPSHOT, 0, -1)) == {mark, *live}
            assert set(client.zrange(SNAPSHOT, 0, -1, withscores=True)) == {(m, 0.0) for m in (mark, *live)}
            assert 0 < client.ttl(SNAPSHOT) <= 300
        else:
            assert set(client.zrange(SNAPSHOT, 0, -1)) == snapshot
            assert client.ttl(SNAPSHOT) == (-1 if snapshot else -2)
    else:
        assert result == -1  # and nothing written: not the group's pruning, not the snapshot
        assert client.zrange("asgi:group:g", 0, -1, withscores=True) == group_before
        assert set(client.zrange(SNAPSHOT, 0, -1)) == snapshot
        assert client.ttl(SNAPSHOT) == (-1 if snapshot else -2)
