#!/usr/bin/env bash
# The whole test suite, from a fresh Debian 12 machine with the Rust and Go
# toolchains: installs the real programs, builds Consul and consul-template
# from the pinned Go module (cached under target/peers/; a consul of the
# pinned major.minor already on PATH is used instead of building one), then
# runs every test of the workspace, including the end-to-end tests against
# real haproxy, pgbouncer, keepalived and consul.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-deps.sh
if [ -f scripts/build-peers.sh ]; then
  bash scripts/build-peers.sh
  # target/peers/bin/consul is the built consul, or a link to the one on PATH.
  export CONVERGE_CONSUL_BIN="${CONVERGE_CONSUL_BIN:-$PWD/target/peers/bin/consul}"
  echo "test: consul $(readlink -f "$CONVERGE_CONSUL_BIN"): $("$CONVERGE_CONSUL_BIN" version | head -n1)"
fi

echo "test: cargo fmt --check"
cargo fmt --all -- --check
echo "test: cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "test: cargo doc"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --locked
echo "test: cargo test"
# Every test binary runs even after one fails, so a red run names every
# failing test at once instead of only the first binary's.
status=0
cargo test --workspace --locked --no-fail-fast 2>&1 | tee target/test.log || status=$?
# One closing line for the whole run, summed over every test binary, and
# the failing tests by name.
awk '/^test result:/ { p += $4; f += $6; i += $8 } END { printf "%d passed, %d failed, %d skipped\n", p, f, i }' target/test.log
grep -E '^test .* FAILED$' target/test.log || true
exit "$status"
