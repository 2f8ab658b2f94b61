#!/usr/bin/env bash
# Soak: `converge run` under steady change for a long time, sampling the
# daemon's resident memory, open fds, threads, children and temp files,
# then the slope of each (least squares over the samples). Steady growth is
# a leak to fix. BENCHMARKS.md ("Soak") has the results.
#
#   SOAK_SECONDS=3600 bash scripts/soak.sh      # default: one hour
#
# Two paths at once, on loopback, no Consul (the catalog file):
# - runtime API: backend `web` (runtime_api slots); one of its instances
#   flips health every 0.3 s (the file watch settles bursts for 200 ms),
#   applied over HAProxy's stats socket;
# - reload: backend `api` (no slots); one of its instances flips every
#   1.2 s, each flip a validated config and a HAProxy reload.
# Samples every 10 s go to target/soak/samples.csv. Everything started is
# stopped by pid at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh >/dev/null
source scripts/lib/converge-bin.sh
seconds=${SOAK_SECONDS:-3600}
dir=${SOAK_DIR:-$PWD/target/soak}
root=$dir/root
rm -rf "$dir"
mkdir -p "$dir/manifests" "$dir/tmp" "$root/run/haproxy"

source scripts/lib/loopback.sh
for b in w1 w2 a1 a2; do start_backend "$b" "$dir"; done
catalog() { # health of w2, health of a2
  cat >"$dir/catalog.yaml.new" <<CAT
services:
  web:
    - {id: w1, node: n1, address: 127.0.0.1, port: ${port[w1]}, health: passing}
    - {id: w2, node: n2, address: 127.0.0.1, port: ${port[w2]}, health: $1}
  api:
    - {id: a1, node: n1, address: 127.0.0.1, port: ${port[a1]}, health: passing}
    - {id: a2, node: n2, address: 127.0.0.1, port: ${port[a2]}, health: $2}
CAT
  mv "$dir/catalog.yaml.new" "$dir/catalog.yaml"
}
catalog passing passing
front=$(free_port)
cat >"$dir/manifests/site.yaml" <<SITE
nodes: {soak: {}}
haproxy: {stats_socket: /run/haproxy/admin.sock, httpclient_ssl_verify: none}
frontends:
  http_in:
    bind: ["127.0.0.1:$front"]
    default_backend: web
    routes: [{path_prefix: /api, backend: api}]
backends:
  web: {service: web, runtime_api: {slots: 4}, allow_empty: true}
  api: {service: api, allow_empty: true}
targets:
  haproxy:
    template: haproxy.cfg.tera
    destination: /etc/haproxy/haproxy.cfg
    validate: haproxy
    reload: {signal: {pidfile: /run/haproxy.pid, signal: SIGUSR2}}
SITE

TMPDIR=$dir/tmp "$bin" run --node soak --manifests "$dir/manifests" --templates templates \
  --catalog "$dir/catalog.yaml" --root "$root" --listen "127.0.0.1:$(free_port)" \
  >"$dir/converge.log" 2>&1 &
daemon=$!
pids+=($daemon)
cfg=$root/etc/haproxy/haproxy.cfg
for _ in $(seq 100); do [ -s "$cfg" ] && break; sleep 0.1; done
[ -s "$cfg" ] || { echo "soak: converge rendered nothing; its log:"; cat "$dir/converge.log"; exit 1; }
haproxy -W -f "$cfg" -p "$root/run/haproxy.pid" >"$dir/haproxy.log" 2>&1 &
pids+=($!)

sample() { # t, rss kB, fds, threads, children, temp files
  local t=$1
  local rss threads fds children temps
  rss=$(awk '/^VmRSS/ {print $2}' "/proc/$daemon/status")
  threads=$(awk '/^Threads/ {print $2}' "/proc/$daemon/status")
  fds=$(ls "/proc/$daemon/fd" | wc -l)
  children=$(pgrep -P "$daemon" | wc -l || true)
  temps=$(find "$dir/tmp" "$root/etc" -name '.*tmp*' -o -name '*.converge-*' 2>/dev/null | wc -l)
  echo "$t,$rss,$fds,$threads,$children,$temps" >>"$dir/samples.csv"
}
echo "seconds,rss_kb,fds,threads,children,temp_files" >"$dir/samples.csv"
start=$(date +%s)
tick=0
echo "soak: $seconds s; samples in $dir/samples.csv"
while :; do
  now=$(date +%s); elapsed=$((now - start))
  [ "$elapsed" -ge "$seconds" ] && break
  w=$([ $((tick % 2)) -eq 0 ] && echo critical || echo passing)
  a=$([ $(((tick / 4) % 2)) -eq 0 ] && echo critical || echo passing)
  catalog "$w" "$a"
  [ $((tick % 30)) -eq 0 ] && sample "$elapsed"
  tick=$((tick + 1))
  sleep 0.3
done
sample "$seconds"
kill -0 "$daemon" || { echo "soak: converge died; its log:"; tail -n 20 "$dir/converge.log"; exit 1; }
python3 - "$dir/samples.csv" <<'PY'
import csv, sys
rows = list(csv.DictReader(open(sys.argv[1])))
# The first 10 minutes (or first fifth) settle allocator and caches.
skip = min(60, len(rows) // 5)
rows = rows[skip:]
t = [float(r["seconds"]) for r in rows]
print(f"samples: {len(rows)} over {t[-1] - t[0]:.0f} s (after {skip} settling samples)")
print("| series | first | last | slope per hour |")
print("|---|---:|---:|---:|")
for key in ["rss_kb", "fds", "threads", "children", "temp_files"]:
    y = [float(r[key]) for r in rows]
    n = len(t); mt = sum(t) / n; my = sum(y) / n
    var = sum((a - mt) ** 2 for a in t)
    slope = sum((a - mt) * (b - my) for a, b in zip(t, y)) / var if var else 0.0
    print(f"| {key} | {y[0]:.0f} | {y[-1]:.0f} | {slope * 3600:+.1f} |")
PY
echo "soak: $(grep -c 'runtime API' "$dir/converge.log" || true) runtime-API updates logged, $(grep -c 'reload=' "$dir/converge.log" || true) reloads logged"
