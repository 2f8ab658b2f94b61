#!/usr/bin/env bash
# The whole test suite, from a fresh Debian 12 machine with the Rust and Go
# toolchains: installs the real programs, builds Consul and consul-template
# from the pinned Go module (cached under target/peers/; a consul of the
# pinned major.minor already on PATH is used instead of building one) and
# Patroni from PyPI (pinned, cached in a venv under target/patroni/), then
# runs every test of the workspace, including the end-to-end tests against
# real haproxy, pgbouncer, keepalived and consul.
set -euo pipefail
cd "$(dirname "$0")/.."
CARGO_DENY_VERSION=0.20.2

bash scripts/install-deps.sh
if [ -f scripts/build-peers.sh ]; then
  bash scripts/build-peers.sh
  # target/peers/bin/consul is the built consul, or a link to the one on PATH.
  export CONVERGE_CONSUL_BIN="${CONVERGE_CONSUL_BIN:-$PWD/target/peers/bin/consul}"
  echo "test: consul $(readlink -f "$CONVERGE_CONSUL_BIN"): $("$CONVERGE_CONSUL_BIN" version | head -n1)"
fi
# Patroni, pinned, in a venv under target/patroni (cached).
CONVERGE_PATRONI_BIN="$(bash scripts/install-patroni.sh)"
export CONVERGE_PATRONI_BIN

echo "test: cargo fmt --check"
cargo fmt --all -- --check
echo "test: cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "test: cargo doc"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --locked
# Licences, duplicate versions and sources of every dependency (deny.toml).
# cargo-deny is built once from crates.io at a pinned version and kept
# under target/tools/. Advisories need a database this machine cannot
# fetch; deny.toml says so.
deny=target/tools/bin/cargo-deny
if ! "$deny" --version 2>/dev/null | grep -qx "cargo-deny $CARGO_DENY_VERSION"; then
  echo "test: building cargo-deny $CARGO_DENY_VERSION into target/tools (once)"
  cargo install cargo-deny --locked --version "$CARGO_DENY_VERSION" --root target/tools --quiet
fi
echo "test: cargo deny check licenses bans sources"
"$deny" deny check --hide-inclusion-graph licenses bans sources
echo "test: promtool check rules, promtool test rules (examples/prometheus)"
promtool check rules examples/prometheus/converge-alerts.yml
(cd examples/prometheus && promtool test rules converge-alerts.test.yml)
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
