#!/usr/bin/env bash
# Prepares this machine for Kourier, from nothing: Java and Maven (Debian packages),
# kcat, Chromium (for the web UI's browser tests), a virtualenv in .venv with Kourier and its dev tools, and the Apache Kafka
# jars (resolved with Maven, cached in ~/.m2 and ~/.cache/kourier).
# Safe to run again: every step is skipped when already done.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=${KOURIER_VENV:-$ROOT/.venv}

missing=()
command -v java >/dev/null || missing+=(openjdk-17-jre-headless)
command -v mvn >/dev/null || missing+=(maven)
command -v kcat >/dev/null || missing+=(kcat)
[ -x /usr/bin/chromium ] || missing+=(chromium)
# Debian's python3 makes virtualenvs only with python3-venv (ensurepip).
command -v python3 >/dev/null || missing+=(python3 python3-venv)
command -v python3 >/dev/null && { python3 -c 'import ensurepip' 2>/dev/null || missing+=(python3-venv); }
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]} (Debian packages)" >&2
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# Kafka 4's broker runs on Java 17 or newer; an older java on the PATH fails it obscurely.
java_major=$({ java -version 2>&1 || true; } | sed -n 's/.*version "\([0-9][0-9]*\).*/\1/p' | head -n 1)
[ "${java_major:-0}" -ge 17 ] || {
  echo "setup: the Kafka broker needs Java 17 or newer, found ${java_major:-none} (java on the" \
    "PATH): install openjdk-17-jre-headless and put it first" >&2
  exit 1
}
python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
  || { echo "setup: Kourier needs Python 3.11 or newer" >&2; exit 1; }
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
# A virtualenv left without pip (made before python3-venv was installed) gets it.
if ! "$VENV/bin/python" -m pip --version >/dev/null 2>&1; then
  "$VENV/bin/python" -m ensurepip --upgrade >/dev/null \
    || { echo "setup: $VENV has no pip and cannot get one: remove it and run again" >&2; exit 1; }
fi
stamp="$VENV/.kourier-installed"
# The checkout counts too: an editable install points at the checkout it was made from.
want=$( (cat "$ROOT/pyproject.toml"; echo "$ROOT") | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "setup: installing Kourier and its dev tools into $VENV" >&2
  "$VENV/bin/python" -m pip install -q --upgrade pip
  "$VENV/bin/python" -m pip install -q -e "$ROOT[dev]"
  echo "$want" > "$stamp"
fi
"$VENV/bin/kourier" broker jars >/dev/null
