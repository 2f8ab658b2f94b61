#!/usr/bin/env bash
# converge's main job on the embedded default, no Consul: it keeps a real
# HAProxy equal to a catalog file, and you watch traffic move.
#
#   1. starts three small HTTP backends on loopback (b1, b2, b3);
#   2. starts `converge run` on examples/demo/manifests and a catalog file
#      listing them, with every path under target/demo/root;
#   3. starts HAProxy (master-worker) on the config converge rendered, and
#      sends requests through it;
#   4. marks b2 critical in the catalog file: converge takes it out through
#      HAProxy's runtime API (no reload), and the requests show it;
#   5. brings b2 back, then stops everything it started, by pid.
#
# Installs the real programs when missing. Run it again at will.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh >/dev/null
source scripts/lib/converge-bin.sh
demo=${DEMO_DIR:-$PWD/target/demo}
root=$demo/root
rm -rf "$demo"
mkdir -p "$demo/manifests" "$root/run/haproxy"

source scripts/lib/loopback.sh

# 1. Backends: each answers with its own name.
for b in b1 b2 b3; do start_backend "$b" "$demo"; done

catalog() { # health of b2
  cat >"$demo/catalog.yaml" <<CAT
services:
  web:
    - {id: web-1, node: app1, address: 127.0.0.1, port: ${port[b1]}, health: passing}
    - {id: web-2, node: app2, address: 127.0.0.1, port: ${port[b2]}, health: $1}
    - {id: web-3, node: app3, address: 127.0.0.1, port: ${port[b3]}, health: passing}
CAT
}
catalog passing
front=$(free_port)
sed "s/127.0.0.1:18080/127.0.0.1:$front/" examples/demo/manifests/site.yaml >"$demo/manifests/site.yaml"

# 2. The daemon, following the catalog file.
listen=127.0.0.1:$(free_port)
"$bin" run -v --node demo --manifests "$demo/manifests" --templates templates \
  --catalog "$demo/catalog.yaml" --root "$root" --listen "$listen" \
  >"$demo/converge.log" 2>&1 &
pids+=($!)
cfg=$root/etc/haproxy/haproxy.cfg
for _ in $(seq 100); do [ -s "$cfg" ] && break; sleep 0.1; done
[ -s "$cfg" ] || { echo "converge rendered nothing; its log:"; cat "$demo/converge.log"; exit 1; }
echo "== converge rendered $cfg:"
sed -n '/^backend web/,$p' "$cfg"

# 3. HAProxy on that config.
haproxy -W -f "$cfg" -p "$root/run/haproxy.pid" >"$demo/haproxy.log" 2>&1 &
pids+=($!)
requests() {
  local out=()
  for _ in $(seq 12); do out+=("$(curl -s --max-time 2 "http://127.0.0.1:$front/" || echo "-")"); done
  echo "${out[*]}"
}
wait_for() { # a pattern in `requests`, for a few seconds
  for _ in $(seq 50); do r=$(requests); if eval "$1"; then echo "$r"; return 0; fi; sleep 0.1; done
  echo "$r"; return 1
}
echo
echo "== 12 requests through HAProxy on 127.0.0.1:$front (backend that answered):"
wait_for '[[ $r == *b1* && $r == *b2* && $r == *b3* ]]'

# 4. b2 fails its health check in the catalog.
echo
echo "== web-2 (b2) turns critical in the catalog file"
catalog critical
wait_for '[[ $r != *b2* && $r == *b1* ]]'
echo "   converge said: $(grep -E 'runtime API|reload=' "$demo/converge.log" | tail -n1 | sed 's/^.*INFO //')"

# 5. And back.
echo
echo "== web-2 (b2) passes again"
catalog passing
wait_for '[[ $r == *b2* ]]'
echo "   converge said: $(grep -E 'runtime API|reload=' "$demo/converge.log" | tail -n1 | sed 's/^.*INFO //')"
echo
echo "== converge status --node demo"
"$bin" status --node demo --manifests "$demo/manifests" --templates templates \
  --catalog "$demo/catalog.yaml" --root "$root" \
  --daemon "$listen" || true
echo
echo "Stopping the backends, HAProxy and converge (by pid). Logs stay in $demo."
