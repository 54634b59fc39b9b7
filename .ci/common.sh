# Shared helpers for .ci/*.sh (sourced, not executed).
# Everything here is idempotent: re-running a step that is already done is cheap.

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$ROOT/.venv}"
PYTHON_BOOTSTRAP="${PYTHON:-python3}"

section() {
    printf '\n\033[1m==== %s ====\033[0m\n' "$*"
}

die() {
    printf '\nFAILED: %s\n' "$*" >&2
    exit 1
}

# Install Debian's redis-server, redis-sentinel and chromium (the Django end-to-end test's
# browser, driven by Playwright; never `playwright install`) when any of them is missing.
# Only the missing packages are installed, so a second run is a no-op.
CHROMIUM="${CHROMIUM:-/usr/bin/chromium}"
ensure_redis() {
    section "System packages: Redis binaries, Chromium"
    local missing=()
    command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
    command -v redis-sentinel >/dev/null 2>&1 || missing+=(redis-sentinel)
    [ -x "$CHROMIUM" ] || missing+=(chromium)
    if [ "${#missing[@]}" = 0 ]; then
        echo "found $(command -v redis-server): $(redis-server --version)"
        echo "found $CHROMIUM"
        return 0
    fi
    command -v apt-get >/dev/null 2>&1 \
        || die "${missing[*]} missing and no apt-get: install Redis >= 5 and Chromium yourself"
    local sudo=""
    if [ "$(id -u)" != 0 ]; then
        command -v sudo >/dev/null 2>&1 || die "${missing[*]} missing; run as root or install them"
        sudo="sudo"
    fi
    echo "installing ${missing[*]} with apt-get ..."
    # The packages' post-install scripts would start system services on 6379/26379; this
    # project runs its own private servers, so tell invoke-rc.d not to start anything.
    local policy=/usr/sbin/policy-rc.d made_policy=0
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' | $sudo tee "$policy" >/dev/null
        $sudo chmod +x "$policy"
        made_policy=1
    fi
    local rc=0
    {
        $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq \
            && $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
                "${missing[@]}" >/dev/null
    } || rc=$?
    if [ "$made_policy" = 1 ]; then $sudo rm -f "$policy"; fi
    [ "$rc" = 0 ] || die "apt-get install ${missing[*]} failed (exit $rc)"
    command -v redis-server >/dev/null 2>&1 || die "redis-server still not on PATH after apt-get"
    [ -x "$CHROMIUM" ] || die "$CHROMIUM still missing after apt-get install chromium"
    echo "installed: ${missing[*]} ($(redis-server --version))"
}

# Debian's nats-server, for the channels-nats peer rows of `make bench` only (never for the
# tests). Unlike ensure_redis it never fails the caller: where it cannot be installed the
# bench prints why and skips those rows. bench/peers.py starts its own private server.
ensure_nats() {
    section "System package: nats-server (channels-nats peer rows)"
    if command -v nats-server >/dev/null 2>&1; then
        echo "found $(command -v nats-server): $(nats-server --version 2>&1)"
        return 0
    fi
    local sudo=""
    if [ "$(id -u)" != 0 ]; then
        if ! command -v sudo >/dev/null 2>&1; then
            echo "nats-server missing and neither root nor sudo: the channels-nats rows will be skipped"
            return 0
        fi
        sudo="sudo"
    fi
    if ! command -v apt-get >/dev/null 2>&1; then
        echo "nats-server missing and no apt-get: the channels-nats rows will be skipped"
        return 0
    fi
    echo "installing nats-server with apt-get ..."
    # Its post-install script would start a system service; the bench runs its own.
    local policy=/usr/sbin/policy-rc.d made_policy=0 rc=0
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' | $sudo tee "$policy" >/dev/null
        $sudo chmod +x "$policy"
        made_policy=1
    fi
    {
        $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq \
            && $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
                nats-server >/dev/null
    } || rc=$?
    if [ "$made_policy" = 1 ]; then $sudo rm -f "$policy"; fi
    if [ "$rc" = 0 ] && command -v nats-server >/dev/null 2>&1; then
        echo "installed: $(nats-server --version 2>&1)"
    else
        echo "apt-get install nats-server failed (exit $rc): the channels-nats rows will be skipped"
    fi
    return 0
}

# Create (or reuse) the project's virtualenv.
ensure_venv() {
    section "Virtualenv $VENV"
    if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c 'import sys; assert sys.version_info >= (3, 10)' 2>/dev/null; then
        echo "reusing $("$VENV/bin/python" --version) in $VENV"
        return 0
    fi
    "$PYTHON_BOOTSTRAP" -c 'import sys; assert sys.version_info >= (3, 10), sys.version' \
        || die "$PYTHON_BOOTSTRAP is older than 3.10"
    rm -rf "$VENV"
    "$PYTHON_BOOTSTRAP" -m venv "$VENV" \
        || die "could not create a virtualenv (on Debian: apt-get install python3-venv)"
    "$VENV/bin/python" -m pip install -q --upgrade pip
    echo "created $("$VENV/bin/python" --version) in $VENV"
}

# Fingerprint of everything that goes into the installed package, plus the extras and the
# other requirements asked for.
_source_fingerprint() {
    local extras="$1"; shift
    (
        cd "$ROOT"
        {
            echo "extras=$extras no_ext=${CHANNELS_REDIS_FAST_NO_EXTENSIONS:-} with=$*"
            "$VENV/bin/python" --version
            find channels_redis_fast ext setup.py setup.cfg pyproject.toml MANIFEST.in README.rst \
                -type f \( -name '*.py' -o -name '*.pyx' -o -name '*.pxd' -o -name '*.pxi' \
                -o -name '*.h' -o -name '*.toml' -o -name '*.cfg' -o -name '*.in' -o -name '*.rst' \
                -o -name 'py.typed' \) -print0 2>/dev/null | sort -z | xargs -0 sha256sum
        } | sha256sum | cut -d' ' -f1
    )
}

# pip install ".[EXTRAS]" into the venv unless the same sources are already installed.
# Further arguments are requirements resolved together with it (pins: "redis==5.0.8").
install_package() {
    local extras="$1"; shift
    section "pip install .[$extras] $*"
    local stamp="$VENV/.channels_redis_fast-install" fp
    fp="$(_source_fingerprint "$extras" "$@")"
    if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$fp" ] \
        && (cd / && "$VENV/bin/python" -c 'import importlib.util as u, sys; sys.exit(u.find_spec("channels_redis_fast") is None)') 2>/dev/null; then
        echo "sources unchanged since the last install: skipping"
        return 0
    fi
    rm -f "$stamp"
    (cd "$ROOT" && "$VENV/bin/pip" install -q --disable-pip-version-check ".[$extras]" "$@") \
        || die "pip install .[$extras] $* failed"
    echo "$fp" >"$stamp"
}
