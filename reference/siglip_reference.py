"""Write the SigLIP parity fixture (crates/models/tests/fixtures/siglip_tiny/) with Hugging Face transformers.

A tiny random SiglipVisionModel (no pooling head) saved in Hugging Face format, its image processor
config, two deterministic PNG test images whose size differs from the model's (so resizing matters),
and the processor's and model's outputs on them. The model runs in float64 from the stored float32
weights; outputs are stored as float32.

Usage: python reference/siglip_reference.py [--out crates/models/tests/fixtures/siglip_tiny]
"""

import argparse
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import save_file
from transformers import SiglipImageProcessor, SiglipVisionConfig, SiglipVisionModel

IMAGE_SIZES = {"image_a.png": (48, 40), "image_b.png": (56, 44)}  # (width, height)


def test_image(width: int, height: int, variant: int) -> Image.Image:
    """Smooth colour gradients plus a hard-edged disc and bar, so resampling detail shows."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    r = 255 * x / (width - 1)
    g = 255 * y / (height - 1)
    b = 127.5 + 127.5 * np.sin((x + 2 * y) / (5.0 + variant))
    cx, cy, rad = width * (0.3 + 0.3 * variant), height * 0.45, min(width, height) * 0.22
    disc = (x - cx) ** 2 + (y - cy) ** 2 <= rad**2
    r, g, b = np.where(disc, 250.0, r), np.where(disc, 30.0 + 100 * variant, g), np.where(disc, 20.0, b)
    bar = (np.abs(y - height * 0.8) < 2.5) & (x > width * 0.1) & (x < width * 0.9)
    r, g, b = np.where(bar, 10.0, r), np.where(bar, 10.0, g), np.where(bar, 200.0, b)
    rgb = np.stack([r, g, b], axis=-1).round().clip(0, 255).astype(np.uint8)
    return Image.fromarray(rgb, mode="RGB")


def build_model(seed: int) -> SiglipVisionModel:
    config = SiglipVisionConfig(
        image_size=32, patch_size=8, num_channels=3, hidden_size=32, num_hidden_layers=3,
        num_attention_heads=4, intermediate_size=64, hidden_act="gelu_pytorch_tanh",
        layer_norm_eps=1e-6, attention_dropout=0.0, vision_use_head=False,
    )
    config._attn_implementation = "sdpa"  # eager would round the softmax to f32 even in f64
    torch.manual_seed(seed)
    model = SiglipVisionModel(config).eval()
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():  # non-trivial norm gains and biases, so every parameter matters
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            if "layer_norm" in name or "layernorm" in name:
                p.copy_(1.0 + 0.1 * noise if name.endswith("weight") else 0.1 * noise)
            elif name.endswith("bias"):
                p.copy_(0.05 * noise)
    return model


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    root = Path(__file__).resolve().parent.parent
    ap.add_argument("--out", type=Path, default=root / "crates/models/tests/fixtures/siglip_tiny")
    args = ap.parse_args()
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)

    model = build_model(seed=42)
    model.save_pretrained(out, safe_serialization=True)
    processor = SiglipImageProcessor(
        do_resize=True, size={"height": 32, "width": 32}, resample=Image.Resampling.BICUBIC,
        do_rescale=True, rescale_factor=1 / 255, do_normalize=True,
        image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5], do_convert_rgb=True,
    )
    processor.save_pretrained(out)

    images = []
    for variant, (name, (w, h)) in enumerate(IMAGE_SIZES.items()):
        img = test_image(w, h, variant)
        img.save(out / name, format="PNG", optimize=False, compress_level=9)
        images.append(Image.open(out / name).convert("RGB"))

    pixel_values = processor(images=images, return_tensors="pt")["pixel_values"]
    resized = np.stack([np.asarray(im.resize((32, 32), Image.Resampling.BICUBIC)) for im in images])
    # The processor's resize is exactly PIL's bicubic on the uint8 image; check it before recording that.
    assert torch.equal(pixel_values, torch.from_numpy(((resized / 255.0).astype(np.float32) - 0.5) / 0.5).permute(0, 3, 1, 2)), \
        "processor resize is not plain PIL bicubic"

    model64 = model.double()
    with torch.no_grad():
        result = model64(pixel_values=pixel_values.double(), output_hidden_states=True)
    hidden = result.hidden_states
    tensors = {
        "pixel_values": pixel_values.contiguous(),
        "resized_u8": torch.from_numpy(resized).contiguous(),
        "last_hidden_state": result.last_hidden_state.float().contiguous(),
        "penultimate": hidden[-2].float().contiguous(),
    }
    for i, h in enumerate(hidden):
        tensors[f"hidden_states.{i}"] = h.float().contiguous()
    save_file(tensors, out / "outputs.safetensors")
    print({k: list(v.shape) for k, v in tensors.items()})


if __name__ == "__main__":
    main()
