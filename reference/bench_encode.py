"""PyTorch twin of `vlmix bench encode`: EfficientNet-Lite0 image-encoder throughput.

The same weights (vlmix's safetensors conversion of efficientnet-lite0-57934424.pth, default
$VLMIX_HOME/models/efficientnet-lite0-57934424.safetensors, written on vlmix's first use of the
encoder), the same layer (the output of stage 7, 7x7x320 at 224 px: the "penultimate" features vlmix
caches) and the same arithmetic: batch norm folded into each convolution once (as vlmix does at load
time), TF "SAME" padding, ReLU6; the network is `forward` of reference/efficientnet_reference.py with
the folding. Synthetic 224x224 inputs (already normalised: preprocessing is not timed), eager float32
under `torch.inference_mode()`, `torch.set_num_threads(2)`, weights and inputs channels-last (oneDNN's
fast layout for convolutions: ~1.5x NCHW's speed here, so PyTorch gets its better layout).

FLOPs: 2 per multiply-add of every convolution, counted from the convolutions this forward runs
(vlmix derives the same number from the architecture table).

Prints one JSON line on stdout (the fields of `vlmix bench encode --json`); `--json PATH` also writes it.
"""

import argparse
import json
import os
import resource
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from bench_train import cpu_name, write_atomically
from efficientnet_reference import BN_EPS, STAGES, same_pad

SIZE = 224
WEIGHTS = "models/efficientnet-lite0-57934424.safetensors"


def fold(sd, conv: str, bn: str):
    """(weight, bias) of conv followed by eval-mode batch norm bn."""
    scale = sd[f"{bn}.weight"] / (sd[f"{bn}.running_var"] + BN_EPS).sqrt()
    weight = sd[f"{conv}.weight"] * scale[:, None, None, None]
    return weight.contiguous(memory_format=torch.channels_last), sd[f"{bn}.bias"] - sd[f"{bn}.running_mean"] * scale


def folded_network(sd):
    """Per convolution (weight, bias, stride, groups, relu6), and per block its residual flag."""
    stem = fold(sd, "_conv_stem", "_bn0")
    blocks, block, channels = [], 0, 32
    for kernel, stride, expand, out, repeats in STAGES:
        for r in range(repeats):
            p = f"_blocks.{block}"
            s = stride if r == 0 else 1
            convs = []
            if expand != 1:
                convs.append((*fold(sd, f"{p}._expand_conv", f"{p}._bn0"), 1, 1, True))
            hidden = channels * expand
            convs.append((*fold(sd, f"{p}._depthwise_conv", f"{p}._bn1"), s, hidden, True))
            convs.append((*fold(sd, f"{p}._project_conv", f"{p}._bn2"), 1, 1, False))
            blocks.append((convs, s == 1 and channels == out))
            channels, block = out, block + 1
    return (*stem, 2, 1, True), blocks


class Counter:
    flops = 0.0


def conv(x, weight, bias, stride, groups, relu6, counter=None):
    y = F.conv2d(same_pad(x, weight.shape[-1], stride), weight, bias, stride, 0, 1, groups)
    if counter is not None:
        counter.flops += 2.0 * y[0].numel() * weight[0].numel()  # per image: outputs x MACs each
    return F.relu6(y) if relu6 else y


def encode(net, x, counter=None):
    """Stage-7 feature map (batch, 320, 7, 7) of normalised pixels x (batch, 3, 224, 224)."""
    stem, blocks = net
    x = conv(x, *stem, counter)
    for convs, residual in blocks:
        h = x
        for c in convs:
            h = conv(h, *c, counter)
        x = h + x if residual else h
    return x


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    home = Path(os.environ.get("VLMIX_HOME", Path.home() / ".cache" / "vlmix"))
    ap.add_argument("--weights", type=Path, default=home / WEIGHTS,
                    help="EfficientNet-Lite0 safetensors (default: vlmix's conversion under $VLMIX_HOME)")
    ap.add_argument("--batch", type=int, default=4, help="images per forward pass (vlmix's feature cache uses 4)")
    ap.add_argument("--images", type=int, default=64, help="timed images (rounded up to whole batches)")
    ap.add_argument("--warmup", type=int, default=2, help="untimed batches first")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path, help="also write the result JSON here")
    args = ap.parse_args()
    if not args.weights.is_file():
        ap.error(f"{args.weights} is missing: run scripts/fetch-weights.sh, then `vlmix bench encode` once "
                 "(it converts the fetched pickle to safetensors), or pass --weights")
    if args.batch < 1 or args.images < 1:
        ap.error("--batch and --images must be at least 1")

    torch.set_num_threads(args.threads)
    net = folded_network(load_file(str(args.weights)))
    gen = torch.Generator().manual_seed(0)
    pixels = (torch.rand(args.batch, 3, SIZE, SIZE, generator=gen) * 2 - 1).contiguous(memory_format=torch.channels_last)
    batches = -(-args.images // args.batch)
    with torch.inference_mode():
        counter = Counter()
        features = encode(net, pixels[:1], counter)
        for _ in range(args.warmup):
            encode(net, pixels)
        start = time.perf_counter()
        for _ in range(batches):
            encode(net, pixels)
        elapsed = time.perf_counter() - start
    images = batches * args.batch
    result = {
        "engine": "pytorch",
        "encoder": "efficientnet-lite0",
        "resolution": SIZE,
        "layer": "penultimate",
        "tokens": features.shape[2] * features.shape[3],
        "width": features.shape[1],
        "batch": args.batch,
        "images": images,
        "warmup": args.warmup,
        "images_per_s": images / elapsed,
        "batch_ms": 1000 * elapsed / batches,
        "flops_per_image": counter.flops,
        "gflops": images * counter.flops / elapsed / 1e9,
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "threads": torch.get_num_threads(),
        "cpu": cpu_name(),
        "torch": torch.__version__,
    }
    line = json.dumps(result)
    print(line)
    if args.json:
        write_atomically(args.json, line + "\n")


if __name__ == "__main__":
    main()
