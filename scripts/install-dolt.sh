#!/usr/bin/env bash
# Install the pinned `dolt` binary into <repo>/.tools/bin (git-ignored).
#
# Dolt tags its releases `vX.Y.Z` at the repository root, but its Go module lives
# in the `go/` subdirectory, so the Go module proxy knows no release tags after
# v0.40.4 (2022); newer builds are only reachable as pseudo-versions of a commit.
# The pin below is the newest one the proxy serves (see docs/dolt-server.md).
#
# Idempotent: a second run checks the installed binary and exits at once.
# Needs Go >= 1.26.2, a C/C++ toolchain and ICU headers (dolt's regex engine,
# github.com/dolthub/go-icu-regex, links libicu through cgo).
set -euo pipefail

# Commit 011a27ff4303 on dolt main, 2026-04-24: v1.86.4 + 50 commits (6 merges before v1.86.5).
DOLT_MODULE=github.com/dolthub/dolt/go
DOLT_MODULE_VERSION=v0.40.5-0.20260424001550-011a27ff4303
DOLT_VERSION=1.86.4 # what `dolt version` prints for that commit

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
tools="$repo/.tools"
dolt="$tools/bin/dolt"

installed_ok() {
    [[ -x "$dolt" ]] || return 1
    # `dolt version` writes under its root dir (~/.dolt) and may spawn `dolt send-metrics`:
    # give it a scratch root with metrics off.
    local scratch out
    scratch=$(mktemp -d)
    mkdir "$scratch/.dolt" && echo '{"metrics.disabled":"true"}' >"$scratch/.dolt/config_global.json"
    out=$(DOLT_ROOT_PATH="$scratch" DOLT_DISABLE_EVENT_FLUSH=1 "$dolt" version 2>/dev/null || true)
    rm -rf "$scratch"
    [[ "$out" == *"dolt version $DOLT_VERSION"* ]] || return 1
    # The printed version does not identify the commit; the embedded build info does.
    if command -v go >/dev/null 2>&1; then
        go version -m "$dolt" 2>/dev/null |
            grep -Eq "mod[[:space:]]+$DOLT_MODULE[[:space:]]+$DOLT_MODULE_VERSION([[:space:]]|$)" || return 1
    fi
}

if installed_ok; then
    echo "dolt $DOLT_VERSION ($DOLT_MODULE_VERSION) already installed at $dolt"
    exit 0
fi

# System packages needed by cgo: install only what is missing.
missing=()
for pkg in gcc g++ libicu-dev; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
    echo "installing missing system packages: ${missing[*]}"
    sudo_cmd=()
    [[ $(id -u) -eq 0 ]] || sudo_cmd=(sudo)
    "${sudo_cmd[@]}" apt-get update
    "${sudo_cmd[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}"
fi

command -v go >/dev/null 2>&1 || { echo "error: go is not on PATH (need Go >= 1.26.2)" >&2; exit 1; }

mkdir -p "$tools/bin" "$tools/go"
echo "building dolt $DOLT_VERSION ($DOLT_MODULE@$DOLT_MODULE_VERSION); this takes many minutes on 2 cores"
# Everything Go writes stays under .tools/go, so deleting .tools/ undoes the install.
env GOBIN="$tools/bin" \
    GOPATH="$tools/go" \
    GOMODCACHE="$tools/go/pkg/mod" \
    GOCACHE="$tools/go/cache" \
    GOFLAGS="-modcacherw -buildvcs=false" \
    GOTOOLCHAIN=local \
    CGO_ENABLED=1 \
    go install "$DOLT_MODULE/cmd/dolt@$DOLT_MODULE_VERSION"

if ! installed_ok; then
    echo "error: $dolt was built but does not report version $DOLT_VERSION" >&2
    exit 1
fi
echo "installed dolt $DOLT_VERSION at $dolt"
