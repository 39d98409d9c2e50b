#!/usr/bin/env bash
# The whole test suite: set-up, lint, types, then unit and integration tests against a
# genuine Apache Kafka broker that the tests start themselves (or KOURIER_BOOTSTRAP_SERVERS).
# Extra arguments go to pytest, e.g. `deploy/test.sh tests/unit -x`.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
"$ROOT/deploy/setup.sh"
VENV=${KOURIER_VENV:-$ROOT/.venv}
cd "$ROOT"
echo "== ruff" >&2
"$VENV/bin/ruff" check .
"$VENV/bin/ruff" format --check handlers streams examples tests
echo "== mypy --strict" >&2
"$VENV/bin/mypy" --strict handlers streams examples
echo "== import contracts" >&2
"$VENV/bin/lint-imports"
echo "== pytest" >&2
exec "$VENV/bin/python" -m pytest "${@:-tests}"
