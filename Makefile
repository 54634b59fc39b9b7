# Two commands for a newcomer:  `make test`  and  `make bench`.  See README.rst.
SHELL := /bin/bash
VENV ?= .venv
FILES ?=

.PHONY: test bench conformance clean help

help:
	@echo "make test         install Redis if missing, build + install into $(VENV), run the suite (compiled, then pure), check the pure wheel"
	@echo "make bench        benchmarks on a private Redis"
	@echo "make conformance  channels_redis 4.3.0's own test suite against this package (FILES=\"test_core.py ...\", CONFORMANCE_TARGET=channels_redis)"
	@echo "make clean        remove build artefacts (keeps $(VENV))"

test:
	VENV="$(abspath $(VENV))" bash .ci/test.sh

bench:
	VENV="$(abspath $(VENV))" bash .ci/bench.sh

conformance:
	VENV="$(abspath $(VENV))" FILES="$(FILES)" bash .ci/conformance.sh

clean:
	rm -rf build dist *.egg-info ext/*.c ext/*.html channels_redis_fast/*.so
