#!/usr/bin/env bash
# The whole test suite on a fresh machine: installs what it needs into .venv, then runs pytest.
# Extra arguments go to pytest (e.g. `bash scripts/test.sh -k pipeline`).
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
started=$(date +%s)
OPLOG_TEST_EXTRAS=1 bash scripts/install.sh
echo "install: $(( $(date +%s) - started )) s"
# The venv's bin first, so the suite finds its own nats-server and oplog.
export PATH="$repo/.venv/bin:$PATH"
# pytest's own closing line gives the suite's time (and is what CI reads last).
exec "$repo/.venv/bin/python" -m pytest "$@"
