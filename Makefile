# Two commands for a newcomer:  `make test`  and  `make bench`.  See README.rst.
SHELL := /bin/bash
VENV ?= .venv
FILES ?=

.PHONY: test bench matrix conformance wheels clean help

help:
	@echo "make test         install Redis if missing, build + install into $(VENV), run the suite (compiled, then pure), check the pure wheel"
	@echo "make bench        benchmarks on a private Redis; exits 1 on a missed target (BENCH_ARGS=\"--quick --workloads stream,memory --report-only\")"
	@echo "make matrix       the suite in a fresh venv per combination (oldest/middle/newest deps, uvloop, Redis 6.2, Valkey 9.1; MATRIX=\"oldest uvloop\")"
	@echo "make conformance  channels_redis 4.3.0's own test suite against this package (FILES=\"test_core.py ...\", CONFORMANCE_TARGET=channels_redis)"
	@echo "make wheels       sdist, platform wheel built from it (auditwheel-repaired) and pure wheel, each installed and tested (WHEEL_TESTS=all|none|\"-k ...\")"
	@echo "make clean        remove build artefacts (keeps $(VENV))"

test:
	VENV="$(abspath $(VENV))" bash .ci/test.sh

# Side-by-side comparison with channels_redis and channels-nats (bench/run.py) on private Redis
# and nats-server processes, with the compiled extension required.  `make bench BENCH_ARGS="--quick --workloads stream,memory"`.
# Then the sync callers' rows (bench/sync_callers.py), unless only some workloads were asked for.
bench:
	VENV="$(abspath $(VENV))" bash -c 'set -euo pipefail; source .ci/common.sh; cd "$$ROOT"; \
		ensure_redis; ensure_nats; ensure_venv; install_package "tests,bench"; \
		section "python bench/run.py $(BENCH_ARGS)"; status=0; \
		CHANNELS_REDIS_FAST_REQUIRE_EXTENSIONS=1 "$$VENV/bin/python" bench/run.py $(BENCH_ARGS) || status=$$?; \
		case " $(BENCH_ARGS) " in *" --workloads"*|*" --render-only"*) exit $$status;; esac; \
		sync_args=""; case " $(BENCH_ARGS) " in *" --report-only "*) sync_args="--report-only";; esac; \
		section "python bench/sync_callers.py $$sync_args"; \
		CHANNELS_REDIS_FAST_REQUIRE_EXTENSIONS=1 "$$VENV/bin/python" bench/sync_callers.py $$sync_args || status=1; \
		exit $$status'

# Not part of `make test`; .ci/run runs it after `make test`.  See .ci/matrix.sh.
matrix:
	MATRIX_DIR="$(abspath $(or $(MATRIX_DIR),.matrix))" bash .ci/matrix.sh

conformance:
	VENV="$(abspath $(VENV))" FILES="$(FILES)" bash .ci/conformance.sh

# Not part of `make test`: the sdist, manylinux wheel (built from the sdist) and pure wheel in
# dist/ and wheelhouse/, each installed into a fresh venv and tested.  See .ci/wheels.sh.
wheels:
	bash .ci/wheels.sh

clean:
	rm -rf build dist *.egg-info ext/*.c ext/*.html channels_redis_fast/*.so
