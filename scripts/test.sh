#!/usr/bin/env bash
# The one test command (README and .ci/run both call it): installs every system and Python
# package the tests need, then runs lint, type checks and the whole test suite against the
# real things (kernel FUSE, git-lfs, PostgreSQL, S3 and GCS servers on 127.0.0.1).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-test-deps.sh
PYTHON="${PYTHON:-python}"
echo "== ruff" >&2
"$PYTHON" -m ruff check .
"$PYTHON" -m ruff format --check .
echo "== mypy" >&2
"$PYTHON" -m mypy
echo "== pytest" >&2
# pytest exits 5 when it collects nothing: with `set -e` that fails the run, as it should.
exec "$PYTHON" -m pytest -q -ra --durations=15 "$@"
