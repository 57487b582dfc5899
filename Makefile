# Two entry points for a fresh machine: `make test` and `make demo`.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: test demo compile lint typecheck unit integration bench bench-compare clean tools

# System tools, checked on every run (a .venv kept from another machine says nothing
# about what this one has installed).
tools:
	@command -v psql >/dev/null && command -v pgbench >/dev/null || \
	  (apt-get update -qq && apt-get install -y -qq postgresql-client postgresql-contrib >/dev/null)
	@# prometheus and promtool for tests/observability (Debian's package; recommends skipped).
	@command -v promtool >/dev/null && command -v prometheus >/dev/null || \
	  (apt-get update -qq && apt-get install -y -qq --no-install-recommends prometheus >/dev/null)

$(STAMP): pyproject.toml setup.py
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	SHADOWPROXY_PURE=1 $(PY) -m pip install -q -e '.[dev]'
	touch $@

# The relay's hot path compiled with mypyc (setup.py, HOT_PATH), next to its
# sources; rebuilt whenever one of them changes, so a test never runs stale code.
HOT_PY   := $(shell sed -n 's/^    "\(proxy\/.*\.py\)",$$/\1/p' setup.py)
COMPILED := $(VENV)/.compiled

$(COMPILED): $(STAMP) setup.py $(HOT_PY)
	$(PY) setup.py -q build_ext --inplace -j 2
	touch $@

compile: $(COMPILED)

lint: $(STAMP)
	$(VENV)/bin/ruff check proxy comparator tests grafana

typecheck: $(STAMP)
	$(VENV)/bin/mypy proxy comparator

unit: $(COMPILED)
	$(VENV)/bin/pytest -q tests/unit

test: tools lint typecheck $(COMPILED)
	$(VENV)/bin/pytest -q tests

demo: tools $(COMPILED)
	$(VENV)/bin/shadowproxy demo

bench: tools $(COMPILED)
	bash tests/bench/pgbench.sh

# Comparator vs reladiff (CPU heavy; BENCH_10M=1 adds 10 000 000-row tables).
bench-compare: tools $(STAMP)
	bash tests/bench/compare.sh

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache build
	find proxy -name '*.so' -delete
