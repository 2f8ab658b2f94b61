# Sets `bin` to the converge binary a script runs: CONVERGE_BIN when set
# (the test suite passes the one it built), otherwise a release build.
if [ -z "${CONVERGE_BIN:-}" ]; then
  cargo build --release --locked --bin converge
fi
bin=${CONVERGE_BIN:-${CARGO_TARGET_DIR:-target}/release/converge}
