#!/usr/bin/env bash
# The test command of README.md: prerequisites (scripts/prepare.sh), then the whole test suite in
# release mode (the numerics tests are heavy in debug builds).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/prepare.sh
cargo test --release --workspace "$@"
