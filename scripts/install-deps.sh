#!/usr/bin/env bash
# Installs the real programs converge drives and its tests run, from
# Debian's packages, when any is missing. Safe to run again: it installs
# nothing when everything is there. Services are not started by the install
# (converge and its tests start their own instances).
set -euo pipefail

# command → package that provides it
declare -A wanted=(
  [haproxy]=haproxy
  [pgbouncer]=pgbouncer
  [keepalived]=keepalived
  [ip]=iproute2
  [unshare]=util-linux
  [pgrep]=procps
  [psql]=postgresql-client
  [curl]=curl
  [promtool]=prometheus
  [python3]=python3
  [redis-server]=redis-server
  [redis-cli]=redis-tools
)
missing=()
for cmd in "${!wanted[@]}"; do
  command -v "$cmd" >/dev/null 2>&1 || [ -x "/usr/sbin/$cmd" ] || missing+=("${wanted[$cmd]}")
done
# The PostgreSQL server (initdb, postgres) lives outside PATH on Debian.
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing+=(postgresql)
# Patroni goes into a venv (scripts/install-patroni.sh); Debian's python3
# makes one only with python3-venv (which brings ensurepip).
/usr/bin/python3 -c 'import ensurepip' >/dev/null 2>&1 || missing+=(python3-venv)

if [ ${#missing[@]} -eq 0 ]; then
  echo "install-deps: haproxy, pgbouncer, keepalived, iproute2, postgresql, promtool, python3, python3-venv, redis-server present"
  exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
  echo "install-deps: missing packages: ${missing[*]}; run as root or install them" >&2
  exit 1
fi

echo "install-deps: installing ${missing[*]}"
# Keep package scripts from starting the distro services: the packaged
# pgbouncer would otherwise take 127.0.0.1:6432 on a machine that never
# asked for it.
policy=/usr/sbin/policy-rc.d
created_policy=0
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\nexit 101\n' >"$policy"
  chmod 755 "$policy"
  created_policy=1
fi
trap '[ "$created_policy" = 1 ] && rm -f "$policy"' EXIT
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "install-deps: done"
