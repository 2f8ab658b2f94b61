#!/usr/bin/env bash
# converge's main job on the embedded default: the example manifests and
# catalog file, no Consul. Installs the real programs when missing, then
# applies node lb1 into target/demo (every destination, pidfile and socket
# under that directory) and plans again to show the node has converged.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
cargo build --release --locked --bin converge
bin="${CARGO_TARGET_DIR:-target}/release/converge"
root=${DEMO_ROOT:-target/demo}
mkdir -p "$root"

echo "== converge plan --node lb1 --root $root   (before)"
"$bin" plan --node lb1 --root "$root" && code=0 || code=$?
echo "(exit $code: 0 no changes, 2 changes)"

echo "== converge apply --once --node lb1 --root $root"
"$bin" apply --once --node lb1 --root "$root"

echo "== converge plan --node lb1 --root $root   (after)"
"$bin" plan --node lb1 --root "$root"
echo "(exit 0: converged; the files are under $root/etc)"
