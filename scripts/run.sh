#!/usr/bin/env bash
# The main job of README.md: prerequisites, then the default `mini` study (resumable: rerun after an
# interruption and it continues). Pass another config or --out to change it.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/prepare.sh
config="${1:-configs/study/mini.toml}"
out="${2:-runs/mini}"
# The time before it is spent: the CPU, the SIMD level and the dry run's estimate (probed here, now).
target/release/vlmix study "$config" --out "$out" --without-missing-tasks --dry-run | grep -E '^(cpu|simd): |estimated'
# Tasks whose source package this machine could not get are left out, and the report says so at the top.
target/release/vlmix study "$config" --out "$out" --without-missing-tasks
echo "open $out/report/index.html in a browser"
