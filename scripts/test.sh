#!/usr/bin/env bash
# The whole test suite on a fresh machine: installs what it needs, then runs pytest.
# Extra arguments go to pytest (e.g. `bash scripts/test.sh -k pipeline`).
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
started=$(date +%s)
bash scripts/install.sh
echo "install: $(( $(date +%s) - started )) s"
exec python3 -m pytest "$@"
