#!/usr/bin/env bash
# What a new user gets: clones this repository's committed HEAD into a temporary directory, points
# VLMIX_HOME at an empty temporary directory (no prepared data, no feature cache, no build), and runs
# README.md's test command there. Uncommitted changes are not part of the check: commit first.
#
# Nothing is reused: packages are downloaded from the registries again, so a pinned version that a
# registry dropped shows up here as it would for a new user. To save the downloads on a repeat, pass
# --reuse-downloads DIR (e.g. ~/.cache/vlmix/packages): those files are copied into the new
# VLMIX_HOME/packages (the fetch scripts still verify every sha256), and the script says it was used.
# With --run, README.md's main command (scripts/run.sh) runs after the tests in the same clone and
# VLMIX_HOME, as a new user would go on.
#
# Usage: scripts/fresh-check.sh [--reuse-downloads DIR] [--run]   (KEEP=1 keeps the temporary directories)
set -euo pipefail
reuse=""
main_job=0
while (($#)); do
    case "$1" in
    --reuse-downloads) reuse="${2:?--reuse-downloads needs a folder}"; shift 2 ;;
    --run) main_job=1; shift ;;
    *) echo "usage: scripts/fresh-check.sh [--reuse-downloads DIR] [--run]" >&2; exit 2 ;;
    esac
done
repo="$(cd "$(dirname "$0")/.." && pwd)"
work="$(mktemp -d "${TMPDIR:-/tmp}/vlmix-fresh.XXXXXX")"
[ "${KEEP:-0}" = 1 ] || trap 'rm -rf "$work"' EXIT
export VLMIX_HOME="$work/home"
mkdir -p "$VLMIX_HOME"

git clone --quiet "$repo" "$work/vlmix"
echo "fresh-check: clone of $(git -C "$work/vlmix" rev-parse --short HEAD) in $work/vlmix, VLMIX_HOME=$VLMIX_HOME"
if [ -n "$reuse" ]; then
    mkdir -p "$VLMIX_HOME/packages"
    find "$reuse" -maxdepth 1 -type f \( -name '*.deb' -o -name '*.whl' -o -name '*.tgz' -o -name '*.tar.gz' \) \
        -exec cp {} "$VLMIX_HOME/packages/" \;
    echo "fresh-check: NOT a true fresh check: reusing $(ls "$VLMIX_HOME/packages" | wc -l) downloaded package file(s) from $reuse"
else
    echo "fresh-check: true fresh check: every package is downloaded from its registry again"
fi

# README.md's test command: the first indented line after "Run the tests".
test_command="$(awk '/^Run the tests/ {found=1; next} found && /^    [^ ]/ {sub(/^    /, ""); print; exit}' "$work/vlmix/README.md")"
[ -n "$test_command" ] || { echo "fresh-check: README.md has no test command after 'Run the tests'" >&2; exit 1; }
echo "fresh-check: running '$test_command'"
start=$(date +%s)
status=0
(cd "$work/vlmix" && bash -c "$test_command") || status=$?
echo "fresh-check: '$test_command' exited $status after $(($(date +%s) - start)) s on a fresh clone with an empty VLMIX_HOME${reuse:+ (downloads reused)}"
if ((main_job)); then
    main_command="$(awk '/^Run the main job/ {found=1; next} found && /^    [^ ]/ {sub(/^    /, ""); print; exit}' "$work/vlmix/README.md")"
    echo "fresh-check: load average $(cut -d' ' -f1-3 /proc/loadavg); running '$main_command'"
    start=$(date +%s)
    run_status=0
    (cd "$work/vlmix" && bash -c "$main_command") || run_status=$?
    echo "fresh-check: '$main_command' exited $run_status after $(($(date +%s) - start)) s in the same clone and VLMIX_HOME"
    ((status)) || status=$run_status
fi
exit "$status"
