# Shared by scripts/fetch-data.sh and scripts/check-sources.sh: the source manifest
# (scripts/data-sources.tsv, or $VLMIX_DATA_SOURCES) and the registry clients. Each client can be
# replaced by a stand-in for tests that have no network: VLMIX_APT_GET, VLMIX_APT_CACHE, VLMIX_PIP,
# VLMIX_NPM (a command line each; defaults apt-get, apt-cache, python3 -m pip, npm).
# shellcheck shell=bash

manifest="${VLMIX_DATA_SOURCES:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/data-sources.tsv}"
read -r -a apt_get_cmd <<<"${VLMIX_APT_GET:-apt-get}"
read -r -a apt_cache_cmd <<<"${VLMIX_APT_CACHE:-apt-cache}"
read -r -a pip_cmd <<<"${VLMIX_PIP:-python3 -m pip}"
read -r -a npm_cmd <<<"${VLMIX_NPM:-npm}"

# Source names in manifest order, each once.
source_names() {
    awk -F'\t' '$1 != "" && $1 !~ /^#/ && !seen[$1]++ { print $1 }' "$manifest"
}

# The candidate rows of one source, in the order they are tried.
candidate_rows() {
    awk -F'\t' -v name="$1" '$1 == name' "$manifest"
}

# Splits a manifest row into the row_* variables.
parse_row() {
    IFS=$'\t' read -r row_name row_registry row_spec row_file row_sha row_size row_licence row_members <<<"$1"
}

apt_updated=0
# Refreshes the apt lists once per run (as root, or with sudo).
apt_update_once() {
    ((apt_updated)) && return 0
    apt_updated=1
    local sudo_cmd=()
    [ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo)
    "${sudo_cmd[@]}" "${apt_get_cmd[@]}" update -qq
}

# Whether the registry offers a candidate today, without downloading it. Prints why not.
offered() { # registry spec
    local registry=$1 spec=$2 out
    case "$registry" in
    apt)
        # `apt-cache show PKG=VER` exits 0 for a version it does not know; madison lists what is offered.
        local package=${spec%%=*} version=${spec#*=} versions
        versions=$("${apt_cache_cmd[@]}" madison "$package" 2>/dev/null | awk -F'|' '{ gsub(/ /, "", $2); print $2 }')
        if grep -qxF "$version" <<<"$versions"; then return 0; fi
        echo "apt offers $(paste -sd, <<<"$versions" | sed 's/,/, /g; s/^$/nothing/') for $package, not $version"
        return 1 ;;
    pypi)
        local package=${spec%%==*} version=${spec##*==}
        out=$("${pip_cmd[@]}" index versions --disable-pip-version-check "$package" 2>&1) || {
            echo "${out:-pip index versions $package failed}" | tail -n 1
            return 1
        }
        local versions
        versions=$(grep '^Available versions:' <<<"$out" | cut -d: -f2- | tr -d ' ')
        if tr ',' '\n' <<<"$versions" | grep -qxF "$version"; then return 0; fi
        echo "PyPI offers ${versions:-nothing} for $package, not $version"
        return 1 ;;
    npm)
        out=$("${npm_cmd[@]}" view "$spec" version 2>&1) || {
            echo "$out" | grep -m1 -i 'err' || echo "$out" | tail -n 1
            return 1
        }
        [ -n "$out" ] && return 0
        echo "npm has no version matching $spec"
        return 1 ;;
    *)
        echo "unknown registry '$registry' in $manifest"
        return 1 ;;
    esac
}

# Downloads one candidate's file into dir (nothing installed); returns non-zero with the client's
# output in dir/client.log when the registry says no or cannot be reached.
download() { # registry spec file dir
    local registry=$1 spec=$2 file=$3 dir=$4 log="$4/client.log"
    case "$registry" in
    apt)
        # apt's sandbox user must be able to write the scratch folder.
        chmod 777 "$dir"
        if ! (cd "$dir" && "${apt_get_cmd[@]}" download -q "$spec") >"$log" 2>&1; then
            ((apt_updated)) && return 1
            apt_update_once >>"$log" 2>&1 || return 1
            (cd "$dir" && "${apt_get_cmd[@]}" download -q "$spec") >>"$log" 2>&1 || return 1
        fi ;;
    pypi)
        "${pip_cmd[@]}" download --no-deps --disable-pip-version-check -q -d "$dir" "$spec" >"$log" 2>&1 || return 1 ;;
    npm)
        "${npm_cmd[@]}" pack --loglevel=error --pack-destination "$dir" "$spec" >"$log" 2>&1 || return 1 ;;
    *)
        echo "unknown registry '$registry' in $manifest" >"$log"
        return 1 ;;
    esac
    [ -f "$dir/$file" ] || { echo "the $registry client fetched $spec but not the expected file $file" >>"$log"; return 1; }
}
