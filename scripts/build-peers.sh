#!/usr/bin/env bash
# Build the peer binaries used by the integration tests (consul and
# consul-template) from the Go module pinned in tests/peers/, into
# target/peers/bin/.
#
# Versions live only in tests/peers/go.mod (+ go.sum). A consul already on
# PATH with the pinned major.minor version (`consul version`) is used instead
# of building one, which saves most of the build: target/peers/bin/consul is
# then a symlink to it, so everything that looks there (scripts/test.sh's
# CONVERGE_CONSUL_BIN, the tests' default) runs that consul. consul-template
# (benchmarks only) is always built.
#
# The binaries are built once and reused until go.mod/go.sum, the Go toolchain,
# or the consul on PATH (its path and `consul version`) change: a stamp file
# next to the binaries records the hash they were made from.
#
# Everything Go writes (module cache, build cache) stays under target/peers/,
# so a fresh clone needs nothing but a Go toolchain and access to the Go
# module proxy.
#
# Environment:
#   GO               Go binary to use (default: /usr/local/go/bin/go, then `go` on PATH)
#   PEERS_GO_P       value for `go build -p` (default: Go's default, = number of CPUs)
#   PEERS_FORCE=1    rebuild even if the stamp matches
#   PEERS_PATH_CONSUL=0  build consul even if a compatible one is on PATH
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

mkdir -p "$BIN_DIR" "$GOMODCACHE" "$GOCACHE"

# The pinned consul's major.minor, from the require line in go.mod.
PINNED="$(sed -nE 's#^[[:space:]]*github\.com/hashicorp/consul v([0-9]+\.[0-9]+)\..*#\1#p' "$MOD_DIR/go.mod")"
[[ -n "$PINNED" ]] || die "no github.com/hashicorp/consul version in $MOD_DIR/go.mod"

# A consul on PATH that is not ours and has the pinned major.minor: its
# resolved path, and its `consul version` (which names the build) in
# PATH_CONSUL_VERSION.
PATH_CONSUL=""
PATH_CONSUL_VERSION=""
if [[ "${PEERS_PATH_CONSUL:-1}" != 0 ]] && found="$(command -v consul)"; then
  found="$(readlink -f "$found")"
  case "$found" in
    "$(cd "$BIN_DIR" && pwd -P)"/*) ;; # our own build, reached through PATH
    *)
      version="$("$found" version 2>/dev/null)" || version=""
      have="$(sed -nE '1s#^Consul v([0-9]+\.[0-9]+)\..*#\1#p' <<<"$version")"
      if [[ "$have" == "$PINNED" ]]; then
        PATH_CONSUL="$found"
        PATH_CONSUL_VERSION="$(head -n2 <<<"$version")"
      else
        log "ignoring $found on PATH: it is not consul $PINNED.x ($(head -n1 <<<"$version"))"
      fi
      ;;
  esac
fi

hash_cmd() {
  if command -v sha256sum >/dev/null 2>&1; then sha256sum; else shasum -a 256; fi
}
# (A consul built here adds nothing, so such a build keeps its stamp.)
KEY="$( { cat "$MOD_DIR/go.mod" "$MOD_DIR/go.sum"; echo "go=$GO_VERSION recipe=$RECIPE";
          if [[ -n "$PATH_CONSUL" ]]; then echo "path-consul=$PATH_CONSUL $PATH_CONSUL_VERSION"; fi; } \
        | hash_cmd | cut -d' ' -f1 )"

up_to_date() {
  [[ -x "$BIN_DIR/consul" && -x "$BIN_DIR/consul-template" && -f "$STAMP" ]] \
    && [[ "$(cat "$STAMP")" == "$KEY" ]]
}

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
if [[ -n "$PATH_CONSUL" ]]; then
  log "using $PATH_CONSUL from PATH ($(head -n1 <<<"$PATH_CONSUL_VERSION"), pinned $PINNED.x): target/peers/bin/consul links to it"
  ln -sfn "$PATH_CONSUL" "$BIN_DIR/.consul.tmp"
  mv -f "$BIN_DIR/.consul.tmp" "$BIN_DIR/consul"
else
  build_one consul github.com/hashicorp/consul
fi

"$BIN_DIR/consul" version >/dev/null 2>&1 || die "built consul does not run: $BIN_DIR/consul version"
"$BIN_DIR/consul-template" -version >/dev/null 2>&1 \
  || die "built consul-template does not run: $BIN_DIR/consul-template -version"

echo "$KEY" >"$STAMP"
log "done: $("$BIN_DIR/consul" version | head -n1); $("$BIN_DIR/consul-template" -version 2>&1 | head -n1)"
