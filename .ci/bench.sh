#!/usr/bin/env bash
# `make bench`: install .[tests,bench] and run the benchmarks on private Redis servers.
# (Placeholder runner; the side-by-side comparison with channels_redis is built on top of it.)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
cd "$ROOT"

ensure_redis
ensure_venv
install_package "tests,bench"

section "pytest bench --benchmark-only"
compgen -G "bench/*.py" >/dev/null || die "no benchmarks yet: bench/ has no .py files"
rc=0
"$VENV/bin/pytest" bench --benchmark-only --benchmark-group-by=group ${BENCH_ARGS:-} || rc=$?
[ "$rc" = 5 ] && die "no benchmarks collected in bench/"
exit "$rc"
