#!/usr/bin/env bash
# `converge drill` on a local stack, all on loopback, for trying it and for
# the numbers in BENCHMARKS.md ("Failover drills"):
#
#   1. starts a Consul dev agent and two HTTP servers (b1, b2) registered
#      as service `web` with Consul HTTP checks (500 ms interval);
#   2. starts `converge run --consul` on examples/demo/manifests (backend
#      `web` with runtime-API slots) and HAProxy on the config it renders;
#   3. runs DRILLS (default 5) backend-kill drills: SIGSTOP to b2 (undone
#      with SIGCONT), probes every 50 ms through the frontend, budget 5 s;
#   4. prints each drill's verdict, RTO and split, then stops everything it
#      started, by pid. The reports stay in target/drill-demo/drills.
#
# NO_HAPROXY_CHECK=1 drops HAProxy's own health check from the site, so
# only Consul's check (and converge) take the stopped server out.
#
# Needs consul on PATH (scripts/build-peers.sh) and the programs
# scripts/install-deps.sh installs.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/converge-bin.sh
demo=${DEMO_DIR:-$PWD/target/drill-demo}
root=$demo/root
rm -rf "$demo"
mkdir -p "$demo/manifests" "$root/run/haproxy"
source scripts/lib/loopback.sh

# 1. Consul and the servers, each registered with Consul's own HTTP check.
http=$(free_port)
consul agent -dev -bind 127.0.0.1 -client 127.0.0.1 -http-port "$http" \
  -dns-port -1 -grpc-port -1 -serf-lan-port "$(free_port)" -serf-wan-port "$(free_port)" \
  -server-port "$(free_port)" >"$demo/consul.log" 2>&1 &
pids+=($!)
consul_url=http://127.0.0.1:$http
for _ in $(seq 100); do
  [ "$(curl -s "$consul_url/v1/status/leader")" != "" ] && [ "$(curl -s "$consul_url/v1/status/leader")" != '""' ] && break
  sleep 0.1
done
for b in b1 b2; do
  start_backend "$b" "$demo"
  curl -sf -X PUT "$consul_url/v1/agent/service/register" -d "{\"ID\":\"web-$b\",\"Name\":\"web\",
    \"Address\":\"127.0.0.1\",\"Port\":${port[$b]},
    \"Check\":{\"HTTP\":\"http://127.0.0.1:${port[$b]}/\",\"Interval\":\"500ms\",\"Timeout\":\"300ms\"}}"
done
b2_pid=${pids[-1]}

# 2. converge and HAProxy.
front=$(free_port)
sed "s/127.0.0.1:18080/127.0.0.1:$front/" examples/demo/manifests/site.yaml >"$demo/manifests/site.yaml"
if [ -n "${NO_HAPROXY_CHECK:-}" ]; then sed -i '/server_options/d' "$demo/manifests/site.yaml"; fi
listen=127.0.0.1:$(free_port)
"$bin" run -v --node demo --manifests "$demo/manifests" --templates templates \
  --consul "$consul_url" --root "$root" --listen "$listen" >"$demo/converge.log" 2>&1 &
pids+=($!)
cfg=$root/etc/haproxy/haproxy.cfg
for _ in $(seq 100); do grep -q "127.0.0.1:${port[b2]}" "$cfg" 2>/dev/null && break; sleep 0.1; done
haproxy -W -f "$cfg" -p "$root/run/haproxy.pid" >"$demo/haproxy.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$front/" >/dev/null && break; sleep 0.1; done

# 3. The drills.
for i in $(seq "${DRILLS:-5}"); do
  "$bin" drill --scenario backend-kill --manifests "$demo/manifests" --consul "$consul_url" \
    --daemon "$listen" --report-dir "$demo/drills" --interval 50ms --probe-timeout 500ms \
    --fault-pid "$b2_pid" --signal STOP --rto-budget "${BUDGET:-5s}" 2>>"$demo/drill.log" || true
  # Wait until both servers serve again before the next drill.
  for _ in $(seq 100); do
    r=$(for _ in 1 2 3 4 5 6; do curl -s --max-time 1 "http://127.0.0.1:$front/"; done)
    [[ $r == *b1* && $r == *b2* ]] && break
    sleep 0.2
  done
done

# 4. The numbers.
python3 - "$demo/drills" <<'PY'
import json, pathlib, sys
print("| drill | verdict | RTO ms | fault → converge saw it | converge | applied → probes OK |")
print("|---|---|---:|---:|---:|---:|")
for d in sorted(pathlib.Path(sys.argv[1]).iterdir()):
    j = json.loads((d / "report.json").read_text())
    r, s = j["report"], j["split"] or {}
    print(f"| {d.name} | {r['verdict']} | {r['rto_ms']} | {s.get('before_converge_ms', '-')} "
          f"| {s.get('converge_ms', '-')} | {s.get('after_converge_ms', '-')} |")
PY
