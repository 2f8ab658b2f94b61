#!/usr/bin/env bash
# Build the peer binaries used by the integration tests (consul and
# consul-template) from the Go module pinned in tests/peers/, into
# target/peers/bin/.
#
# Versions live only in tests/peers/go.mod (+ go.sum). The binaries are built
# once and reused until go.mod/go.sum (or the Go toolchain) change: a stamp file
# next to the binaries records the hash they were built from.
#
# Everything Go writes (module cache, build cache) stays under target/peers/,
# so a fresh clone needs nothing but a Go toolchain and access to the Go
# module proxy.
#
# Environment:
#   GO               Go binary to use (default: /usr/local/go/bin/go, then `go` on PATH)
#   PEERS_GO_P       value for `go build -p` (default: Go's default, = number of CPUs)
#   PEERS_FORCE=1    rebuild even if the stamp matches
set -euo pipefail

die() { echo "build-peers: error: $*" >&2; exit 1; }
log() { echo "build-peers: $*" >&2; }

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
MOD_DIR="$ROOT/tests/peers"
OUT_ROOT="$ROOT/target/peers"
BIN_DIR="$OUT_ROOT/bin"
STAMP="$BIN_DIR/.stamp"

# Bump when the build recipe below changes in a way that should force a rebuild.
RECIPE=1

[[ -f "$MOD_DIR/go.mod" && -f "$MOD_DIR/go.sum" ]] \
  || die "missing $MOD_DIR/go.mod or go.sum"

if [[ -z "${GO:-}" ]]; then
  if [[ -x /usr/local/go/bin/go ]]; then
    GO=/usr/local/go/bin/go
  elif command -v go >/dev/null 2>&1; then
    GO="$(command -v go)"
  else
    die "no Go toolchain found (looked for /usr/local/go/bin/go and go on PATH); set GO=/path/to/go"
  fi
fi
[[ -x "$GO" ]] || die "GO=$GO is not executable"

# Hermetic-ish Go environment: caches under target/, never modify go.mod,
# never fetch another toolchain, ignore any go.work above us.
export GOMODCACHE="$OUT_ROOT/gomodcache"
export GOCACHE="$OUT_ROOT/gocache"
export GOTOOLCHAIN=local
export GOWORK=off
export GOFLAGS="-mod=readonly"
export CGO_ENABLED=0

GO_VERSION="$("$GO" env GOVERSION)" || die "'$GO env GOVERSION' failed"

hash_cmd() {
  if command -v sha256sum >/dev/null 2>&1; then sha256sum; else shasum -a 256; fi
}
KEY="$( { cat "$MOD_DIR/go.mod" "$MOD_DIR/go.sum"; echo "go=$GO_VERSION recipe=$RECIPE"; } \
        | hash_cmd | cut -d' ' -f1 )"

up_to_date() {
  [[ -x "$BIN_DIR/consul" && -x "$BIN_DIR/consul-template" && -f "$STAMP" ]] \
    && [[ "$(cat "$STAMP")" == "$KEY" ]]
}

mkdir -p "$BIN_DIR" "$GOMODCACHE" "$GOCACHE"

# Serialize concurrent invocations (e.g. parallel test runs).
if command -v flock >/dev/null 2>&1; then
  exec 9>"$OUT_ROOT/.build.lock"
  flock 9 || die "could not lock $OUT_ROOT/.build.lock"
fi

if [[ "${PEERS_FORCE:-0}" != 1 ]] && up_to_date; then
  log "up to date ($BIN_DIR, key ${KEY:0:12})"
  exit 0
fi

log "building peers with $GO_VERSION (key ${KEY:0:12}); the first build takes several minutes"
rm -f "$STAMP"

build_flags=(-trimpath -ldflags "-s -w")
if [[ -n "${PEERS_GO_P:-}" ]]; then
  build_flags+=(-p "$PEERS_GO_P")
fi

build_one() { # <name> <package>
  local name="$1" pkg="$2" start
  start=$SECONDS
  log "go build $pkg -> target/peers/bin/$name"
  (cd "$MOD_DIR" && "$GO" build "${build_flags[@]}" -o "$BIN_DIR/.$name.tmp" "$pkg") \
    || die "go build $pkg failed (module: $MOD_DIR; GOPROXY=$("$GO" env GOPROXY); see output above)"
  mv -f "$BIN_DIR/.$name.tmp" "$BIN_DIR/$name"
  log "built $name in $((SECONDS - start))s"
}

build_one consul-template github.com/hashicorp/consul-template
build_one consul github.com/hashicorp/consul

"$BIN_DIR/consul" version >/dev/null 2>&1 || die "built consul does not run: $BIN_DIR/consul version"
"$BIN_DIR/consul-template" -version >/dev/null 2>&1 \
  || die "built consul-template does not run: $BIN_DIR/consul-template -version"

echo "$KEY" >"$STAMP"
log "done: $("$BIN_DIR/consul" version | head -n1); $("$BIN_DIR/consul-template" -version 2>&1 | head -n1)"
