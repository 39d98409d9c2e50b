#!/usr/bin/env bash
# The demo: sets up this machine (deploy/setup.sh), starts a local Apache Kafka broker,
# and walks through Kourier. Everything it starts is stopped by PID when it ends.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
"$ROOT/deploy/setup.sh"
VENV=${KOURIER_VENV:-$ROOT/.venv}
cd "$ROOT"  # examples/ is found from the project's root, wherever the demo is started
exec "$VENV/bin/python" -m examples.demo "$@"
