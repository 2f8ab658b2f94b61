# Shared by scripts/demo.sh and scripts/soak.sh: loopback ports, small HTTP
# backends, and stopping by pid everything the script started. Source it;
# it adds to the caller's `pids` array and sets an EXIT trap.
#
#   root=...            # --root of the converge the script runs
#   source scripts/lib/loopback.sh
#   start_backend NAME DIR   # sets port[NAME]

pids=()
declare -A port

stop_all() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  [ -f "$root/run/haproxy.pid" ] && kill "$(cat "$root/run/haproxy.pid")" 2>/dev/null || true
}
trap stop_all EXIT

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# An HTTP server on a free loopback port answering with NAME.
start_backend() {
  local name=$1 dir=$2
  mkdir -p "$dir/www/$name"
  echo "$name" >"$dir/www/$name/index.html"
  port[$name]=$(free_port)
  python3 -m http.server "${port[$name]}" --bind 127.0.0.1 --directory "$dir/www/$name" \
    >"$dir/$name.log" 2>&1 &
  pids+=($!)
}
