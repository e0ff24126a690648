#!/usr/bin/env bash
# The test command of README.md: whether every data source is still offered by its registry
# (scripts/check-sources.sh: a source with no candidate left fails the run, after everything else has
# run), prerequisites (scripts/prepare.sh), the lints (`cargo fmt --check`
# against rustfmt.toml, clippy with warnings as errors), then the whole test suite in release mode (the
# numerics tests are heavy in debug builds). Everything runs even when something fails
# (`--no-fail-fast` runs every test binary); the script exits non-zero if any lint or test failed.
set -euo pipefail
cd "$(dirname "$0")/.."
status=0
scripts/check-sources.sh || status=1
scripts/prepare.sh
cargo fmt --all -- --check || { echo "test.sh: formatting differs from rustfmt.toml (run cargo fmt --all)" >&2; status=1; }
cargo clippy --release --workspace --all-targets -- -D warnings || { echo "test.sh: clippy found warnings" >&2; status=1; }
cargo test --release --workspace --no-fail-fast "$@" || status=$?
exit "$status"
