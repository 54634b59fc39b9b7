#!/usr/bin/env bash
# The whole test run behind `make test`: Redis binaries, venv, compiled install, mypy, the
# suite in compiled and in pure mode, and the pure wheel check.  Stops at the first failure.
#
#   PYTEST_ARGS="-x -k harness" make test     extra pytest arguments for both runs
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
cd "$ROOT"

ensure_redis
ensure_venv
install_package tests

section "Check: the installed package has the compiled _speedups"
(cd / && "$VENV/bin/python" - <<'PY') || die "the compiled extension is not installed"
import importlib.util, os, sys
import channels_redis_fast
spec = importlib.util.find_spec("channels_redis_fast._speedups")
origin = spec.origin if spec else None
print("package:", os.path.dirname(channels_redis_fast.__file__))
print("_speedups:", origin)
if not origin or not origin.endswith(".so"):
    sys.exit("channels_redis_fast._speedups is not a compiled .so")
if "site-packages" not in origin:
    sys.exit("channels_redis_fast is not imported from site-packages")
PY

section "mypy channels_redis_fast (settings in setup.cfg [mypy])"
"$VENV/bin/mypy" channels_redis_fast || die "mypy found type errors in channels_redis_fast"

run_suite() {
    local mode="$1"; shift
    section "pytest ($mode)"
    local rc=0
    env "$@" CHANNELS_REDIS_FAST_TEST_INSTALLED=1 "$VENV/bin/pytest" ${PYTEST_ARGS:-} || rc=$?
    case "$rc" in
        0) ;;
        5) die "pytest ($mode) collected no tests" ;;
        *) die "pytest ($mode) failed (exit $rc)" ;;
    esac
}

run_suite "compiled: CHANNELS_REDIS_FAST_REQUIRE_EXTENSIONS=1" CHANNELS_REDIS_FAST_REQUIRE_EXTENSIONS=1
run_suite "pure twin: CHANNELS_REDIS_FAST_NO_EXTENSIONS=1" CHANNELS_REDIS_FAST_NO_EXTENSIONS=1

section "Pure wheel (CHANNELS_REDIS_FAST_NO_EXTENSIONS=1 pip wheel .)"
wheeldir="$(mktemp -d "${TMPDIR:-/tmp}/crf-wheel.XXXXXX")"
trap 'rm -rf "$wheeldir"' EXIT
CHANNELS_REDIS_FAST_NO_EXTENSIONS=1 "$VENV/bin/pip" wheel -q --disable-pip-version-check . --no-deps -w "$wheeldir" \
    || die "pip wheel (pure) failed"
"$VENV/bin/python" - "$wheeldir" <<'PY' || die "the pure wheel is wrong"
import glob, sys, zipfile
wheels = glob.glob(sys.argv[1] + "/*.whl")
if len(wheels) != 1:
    sys.exit(f"expected one wheel, got {wheels}")
wheel = wheels[0]
print("wheel:", wheel.rsplit("/", 1)[-1])
if not wheel.endswith("-py3-none-any.whl"):
    sys.exit("the pure wheel is not tagged py3-none-any")
names = zipfile.ZipFile(wheel).namelist()
bad = [n for n in names if n.endswith((".so", ".pyd", ".pyx", ".pxd", ".c"))]
if bad:
    sys.exit(f"the pure wheel contains compiled or Cython files: {bad}")
if "channels_redis_fast/_speedups_py.py" not in names:
    sys.exit("the pure wheel lacks channels_redis_fast/_speedups_py.py")
print(f"{len(names)} files, no .so/.pyx/.c")
PY

section "make test: all steps passed"
