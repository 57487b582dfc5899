#!/usr/bin/env bash
# Comparator benchmark against reladiff, on the same tables in the same run.
#
#   bash tests/bench/compare.sh            # 1 000 000 rows
#   BENCH_10M=1 bash tests/bench/compare.sh  # also 10 000 000 rows (slow to load)
#   BENCH_ROWS=10000000 BENCH_CASES=PG-PG/identical bash tests/bench/compare.sh  # one case
#
# Needs PostgreSQL at 127.0.0.1:5432 and MariaDB at 127.0.0.1:3306 (the test servers).
# reladiff goes into its own virtualenv under .venv/ (its pinned dependencies must not
# change the project's), created on first use.  CPU heavy: run it on a quiet machine.
set -euo pipefail
cd "$(dirname "$0")/../.."

VENV=.venv
RELADIFF_VENV="$VENV/reladiff"
if [ ! -x "$RELADIFF_VENV/bin/reladiff" ]; then
    echo "installing reladiff into $RELADIFF_VENV ..." >&2
    python3 -m venv "$RELADIFF_VENV"
    "$RELADIFF_VENV/bin/pip" install -q 'reladiff[mysql,postgresql]'
fi
export RELADIFF="$RELADIFF_VENV/bin/reladiff"
exec "$VENV/bin/python" tests/bench/compare_bench.py
