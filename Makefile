# Two entry points for a fresh machine: `make test` and `make demo`.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: test demo lint typecheck unit integration bench bench-compare clean tools

# System tools, checked on every run (a .venv kept from another machine says nothing
# about what this one has installed).
tools:
	@command -v psql >/dev/null && command -v pgbench >/dev/null || \
	  (apt-get update -qq && apt-get install -y -qq postgresql-client postgresql-contrib >/dev/null)
	@# prometheus and promtool for tests/observability (Debian's package; recommends skipped).
	@command -v promtool >/dev/null && command -v prometheus >/dev/null || \
	  (apt-get update -qq && apt-get install -y -qq --no-install-recommends prometheus >/dev/null)

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

lint: $(STAMP)
	$(VENV)/bin/ruff check proxy comparator tests grafana

typecheck: $(STAMP)
	$(VENV)/bin/mypy proxy comparator

unit: $(STAMP)
	$(VENV)/bin/pytest -q tests/unit

test: tools lint typecheck $(STAMP)
	$(VENV)/bin/pytest -q tests

demo: tools $(STAMP)
	$(VENV)/bin/shadowproxy demo

bench: tools $(STAMP)
	bash tests/bench/pgbench.sh

# Comparator vs reladiff (CPU heavy; BENCH_10M=1 adds 10 000 000-row tables).
bench-compare: tools $(STAMP)
	bash tests/bench/compare.sh

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
