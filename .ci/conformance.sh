#!/usr/bin/env bash
# `make conformance`: run channels_redis 4.3.0's own test suite against this package.
#
# The suite is fetched (sdist) at run time into a temp dir and never committed.  Its imports
# are pointed at channels_redis_fast; the rest of each test file is left as it is.  It expects
# Redis on 127.0.0.1:6379 and a Sentinel on 26379 (master set "sentinel", sentinel password
# "channels_redis"): if nothing listens there, private ones are started with
# channels_redis_fast/testing/ and stopped afterwards.  This is the only place that uses
# those two ports.
#
#   make conformance                                   all six test files, our package
#   make conformance FILES="test_core.py test_utils.py"
#   CONFORMANCE_TARGET=channels_redis make conformance  the anchor itself, unmodified
#   CONFORMANCE_PYTEST_ARGS="-x -q" make conformance   extra pytest arguments
#   CONFORMANCE_TIMEOUT=1200                           seconds for the whole pytest run
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
cd "$ROOT"

ANCHOR_VERSION="4.3.0"
TARGET="${CONFORMANCE_TARGET:-channels_redis_fast}"
FILES="${FILES:-${*:-}}"
[ -n "$FILES" ] || FILES="test_core.py test_sentinel.py test_pubsub.py test_pubsub_sentinel.py test_serializers.py test_utils.py"
case "$TARGET" in
    channels_redis_fast|channels_redis) ;;
    *) die "CONFORMANCE_TARGET must be channels_redis_fast or channels_redis, not '$TARGET'" ;;
esac

ensure_redis
ensure_venv
if [ "$TARGET" = channels_redis_fast ]; then
    install_package tests
else
    section "pip install channels-redis==$ANCHOR_VERSION and its test requirements"
    "$VENV/bin/pip" install -q --disable-pip-version-check "channels-redis[cryptography]==$ANCHOR_VERSION" \
        pytest pytest-asyncio pytest-timeout async-timeout || die "pip install failed"
fi

WORK="$(mktemp -d "${TMPDIR:-/tmp}/crf-conformance.XXXXXX")"
SERVER_PID=""
cleanup() {
    if [ -n "$SERVER_PID" ] && kill -0 "$SERVER_PID" 2>/dev/null; then
        kill -TERM "$SERVER_PID" 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || true
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 143' TERM
trap 'exit 130' INT

section "Fetch channels-redis==$ANCHOR_VERSION sdist"
"$VENV/bin/pip" download -q --disable-pip-version-check --no-deps --no-binary :all: \
    "channels-redis==$ANCHOR_VERSION" -d "$WORK/dl" 2>&1 | grep -v "is ignored: it is neither" || true
sdist="$(ls "$WORK"/dl/channels[-_]redis-"$ANCHOR_VERSION".tar.gz 2>/dev/null | head -n1)"
[ -n "$sdist" ] || die "could not download the channels-redis $ANCHOR_VERSION sdist"
tar -xzf "$sdist" -C "$WORK"
SUITE="$WORK/channels_redis-$ANCHOR_VERSION"
[ -d "$SUITE/tests" ] || die "the sdist has no tests/ directory"
# Never import the sdist's own sources: the installed target is what is under test.
rm -rf "$SUITE/channels_redis" "$SUITE"/*.egg-info
echo "suite: $SUITE (target: $TARGET)"

if [ "$TARGET" = channels_redis_fast ]; then
    section "Point the suite's imports at channels_redis_fast"
    "$VENV/bin/python" - "$SUITE/tests" <<'PY' || die "import rewrite failed"
import pathlib, re, sys
# Module references only: "channels_redis.<x>" anywhere (imports, patch targets) and
# "import channels_redis" / "from channels_redis import".  A bare "channels_redis" string
# (the Sentinel password) is left alone.
dotted = re.compile(r"(?<![\w.])channels_redis(?=\.[A-Za-z_])")
bare_import = re.compile(r"^(\s*(?:from|import)\s+)channels_redis\b", re.M)
changed = 0
for path in sorted(pathlib.Path(sys.argv[1]).glob("*.py")):
    old = path.read_text()
    new = bare_import.sub(r"\1channels_redis_fast", dotted.sub("channels_redis_fast", old))
    for a, b in zip(old.splitlines(), new.splitlines()):
        if a != b:
            changed += 1
            print(f"  {path.name}: {b.strip()}")
    left = re.findall(r"^\s*(?:from|import)\s+channels_redis\b(?!_fast).*$", new, re.M)
    if left:
        sys.exit(f"{path.name}: imports of channels_redis left: {left}")
    path.write_text(new)
print(f"{changed} line(s) rewritten")
PY
fi

section "Redis on 127.0.0.1:6379 and Sentinel on 26379"
port_open() {
    "$VENV/bin/python" -I -c 'import socket, sys
try:
    socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=0.5).close()
except OSError:
    sys.exit(1)' "$1"
}
harness_args=()
if port_open 6379; then
    echo "6379: already listening, using it"
    redis_up=1
else
    harness_args+=(--port 6379)
    redis_up=0
fi
if port_open 26379; then
    echo "26379: already listening, using it"
else
    harness_args+=(--sentinel-port 26379 --sentinel-master-name sentinel --sentinel-password channels_redis)
    [ "$redis_up" = 1 ] && harness_args+=(--no-redis --master 127.0.0.1:6379)
fi
if [ "${#harness_args[@]}" -gt 0 ]; then
    ready="$WORK/servers.json"
    # -I -m: the installed harness, with the source tree kept off sys.path.
    "$VENV/bin/python" -I -m channels_redis_fast.testing --bind "127.0.0.1 -::1" \
        --ready-file "$ready" "${harness_args[@]}" >"$WORK/servers.log" 2>&1 &
    SERVER_PID=$!
    for _ in $(seq 1 150); do
        [ -f "$ready" ] && break
        kill -0 "$SERVER_PID" 2>/dev/null || { cat "$WORK/servers.log" >&2; die "could not start Redis/Sentinel"; }
        sleep 0.1
    done
    [ -f "$ready" ] || { cat "$WORK/servers.log" >&2; die "Redis/Sentinel did not come up in 15 s"; }
    echo "started (pid $SERVER_PID): $(cat "$ready")"
fi
"$VENV/bin/python" -I - <<'PY' || die "the Sentinel on 26379 does not serve master set 'sentinel' with password 'channels_redis'"
import redis
s = redis.Redis(host="127.0.0.1", port=26379, password="channels_redis", socket_timeout=5)
addr = s.execute_command("SENTINEL", "get-master-addr-by-name", "sentinel")
print("sentinel 'sentinel' ->", addr)
assert addr, "no master"
assert redis.Redis(host="127.0.0.1", port=6379, socket_timeout=5).ping()
PY

section "pytest: channels_redis $ANCHOR_VERSION suite against $TARGET"
targets=()
for f in $FILES; do
    f="${f#tests/}"
    [ -f "$SUITE/tests/$f" ] || die "no such file in the suite: tests/$f"
    targets+=("tests/$f")
done
cd "$SUITE"
# The suite's own setup.cfg ([tool:pytest]: -p no:django, asyncio_mode=auto, timeout=10) applies.
# A hard limit for the whole run: a layer that leaves a non-daemon thread behind would
# otherwise keep pytest alive after its summary.
rc=0
timeout -k 15 "${CONFORMANCE_TIMEOUT:-1200}" \
    "$VENV/bin/pytest" -p no:cacheprovider -rfEX ${CONFORMANCE_PYTEST_ARGS:-} "${targets[@]}" || rc=$?
case "$rc" in
    0) ;;
    5) die "no tests collected" ;;
    124|137) die "the conformance run did not finish within ${CONFORMANCE_TIMEOUT:-1200} s (pytest hung?)" ;;
    *) die "the conformance suite failed (pytest exit $rc)" ;;
esac
