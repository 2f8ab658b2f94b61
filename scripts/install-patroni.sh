#!/usr/bin/env bash
# Installs Patroni for the test kit from PyPI, at the versions pinned in
# tests/patroni/requirements.txt, into a venv at target/patroni (Debian's
# own pip is externally managed, so nothing goes into the system Python;
# /var/cache/converge-tests/patroni when the postgres user, who runs
# Patroni in the tests, cannot enter target/).
# Cached: the venv is kept while the requirements file is unchanged (a
# stamp holds its checksum), so a second run installs nothing.
#
# Prints the path of the patroni program on its last line.
set -euo pipefail
cd "$(dirname "$0")/.."

requirements=tests/patroni/requirements.txt
want="$(sha256sum "$requirements" | cut -d' ' -f1)"
mkdir -p target
venv="$PWD/target/patroni"
# The tests run Patroni as the `postgres` user (PostgreSQL refuses root),
# who must reach the venv. A checkout that user cannot enter (say under
# /root) gets the venv in a shared cache directory instead.
if [ "$(id -u)" -eq 0 ] && id postgres >/dev/null 2>&1 &&
  ! runuser -u postgres -- test -x "$PWD/target"; then
  venv=/var/cache/converge-tests/patroni
  echo "install-patroni: the postgres user cannot enter $PWD/target; using $venv" >&2
  mkdir -p "$(dirname "$venv")"
  chmod 755 "$(dirname "$venv")"
fi
stamp=$venv/.stamp

if [ -x "$venv/bin/patroni" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
  echo "install-patroni: $("$venv/bin/patroni" --version) in $venv (cached)" >&2
  echo "$venv/bin/patroni"
  exit 0
fi

# Debian's interpreter, not whichever python3 comes first on PATH: the
# venv must work for the `postgres` user the tests run Patroni as.
python=/usr/bin/python3
[ -x "$python" ] || python="$(command -v python3)"
echo "install-patroni: creating $venv with $("$python" --version)" >&2
rm -rf "$venv"
"$python" -m venv "$venv"
"$venv/bin/pip" install --quiet --disable-pip-version-check --no-deps \
  --requirement "$requirements" >&2
"$venv/bin/pip" check --disable-pip-version-check >&2
echo "$want" >"$stamp"
echo "install-patroni: $("$venv/bin/patroni" --version) in $venv" >&2
echo "$venv/bin/patroni"
