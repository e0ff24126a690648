"""Write the SigLIP checkpoint-layout fixtures (crates/models/tests/fixtures/siglip_layout_*/) with transformers.

One small random SigLIP vision tower of an unusual shape (image 35, patch 7 -> 5x5 = 25 patches, width 42,
6 heads of head_dim 7, MLP 88, 3 blocks), saved in the three layouts Hugging Face checkpoints come in:

- `siglip_layout_unprefixed/`: a `SiglipVisionModel` (with its attention-pooling head) whose state-dict keys
  have no `vision_model.` prefix (`embeddings.patch_embedding.weight`, `encoder.layers.0...`,
  `post_layernorm.*`, `head.*`), as recent transformers releases save it. transformers 4.46.3 still writes
  the prefix, so this script saves with `save_pretrained` and then rewrites `model.safetensors` with the
  prefix stripped from every key (same tensors, same `{"format": "pt"}` metadata): that reproduces what the
  newer transformers write.
- `siglip_layout_prefixed/`: a `SiglipVisionModel` without the pooling head (`vision_use_head: false`), saved
  by `save_pretrained` as transformers 4.46.3 does it (`vision_model.` on every key).
- `siglip_layout_full/`: a full `SiglipModel` saved by `save_pretrained`: `vision_model.*` (with the pooling
  head `vision_model.head.*`), a tiny text tower `text_model.*`, `logit_scale`, `logit_bias`.

The vision tower's weights are identical in all three, so all three `outputs.safetensors` are identical too.
Every parameter is drawn from one seeded torch.Generator (not transformers' initialisers, whose truncated
normals differ in the last bit between torch builds). The reference forward runs in float64 (sdpa attention:
eager rounds the softmax to float32) from the stored float32 weights, on random pixel values in [-1, 1];
outputs are stored as float32. The script checks that the full model's vision tower gives the same answer.

Usage: python reference/siglip_layouts_reference.py [--out crates/models/tests/fixtures]
"""

import argparse
import json
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from transformers import SiglipConfig, SiglipModel, SiglipVisionConfig, SiglipVisionModel

VISION = dict(
    image_size=35, patch_size=7, num_channels=3, hidden_size=42, num_hidden_layers=3, num_attention_heads=6,
    intermediate_size=88, hidden_act="gelu_pytorch_tanh", layer_norm_eps=1e-6, attention_dropout=0.0,
)
TEXT = dict(
    vocab_size=32, hidden_size=42, intermediate_size=16, num_hidden_layers=1, num_attention_heads=6,
    max_position_embeddings=8, hidden_act="gelu_pytorch_tanh", layer_norm_eps=1e-6, attention_dropout=0.0,
)
PREPROCESSOR = {
    "do_convert_rgb": True, "do_normalize": True, "do_rescale": True, "do_resize": True,
    "image_mean": [0.5, 0.5, 0.5], "image_processor_type": "SiglipImageProcessor", "image_std": [0.5, 0.5, 0.5],
    "resample": 3, "rescale_factor": 1 / 255, "size": {"height": 35, "width": 35},
}


def randomise(model: torch.nn.Module, seed: int) -> None:
    """Every parameter from one generator, in named_parameters order: LayerNorm gains 1 + 0.1·N, LayerNorm
    biases 0.1·N, other biases 0.05·N, weights N / sqrt(fan_in) (fan_in = product of all but the first dim)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen, dtype=torch.float32)
            if "layer_norm" in name or "layernorm" in name:
                p.copy_(1.0 + 0.1 * noise if name.endswith("weight") else 0.1 * noise)
            elif name.endswith("bias"):
                p.copy_(0.05 * noise)
            else:
                fan_in = p[0].numel() if p.dim() > 1 else 1
                p.copy_(noise / fan_in**0.5)


def save_dir(model, out: Path, outputs: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    (out / "preprocessor_config.json").write_text(json.dumps(PREPROCESSOR, indent=2, sort_keys=True) + "\n")
    save_file(outputs, out / "outputs.safetensors")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    root = Path(__file__).resolve().parent.parent
    ap.add_argument("--out", type=Path, default=root / "crates/models/tests/fixtures")
    args = ap.parse_args()

    config = SiglipConfig(text_config=TEXT, vision_config=dict(VISION, vision_use_head=True))
    full = SiglipModel(config).eval()
    randomise(full, seed=2024)
    tower = {k: v for k, v in full.vision_model.state_dict().items()}

    def vision_only(use_head: bool) -> SiglipVisionModel:
        cfg = SiglipVisionConfig(**VISION, vision_use_head=use_head)
        cfg._attn_implementation = "sdpa"  # eager would round the softmax to f32 even in f64
        model = SiglipVisionModel(cfg).eval()
        wanted = {k: v for k, v in tower.items() if use_head or not k.startswith("head.")}
        model.vision_model.load_state_dict(wanted, strict=True)
        return model

    with_head, without_head = vision_only(True), vision_only(False)
    gen = torch.Generator().manual_seed(7)
    pixel_values = torch.rand((2, 3, 35, 35), generator=gen, dtype=torch.float32) * 2 - 1

    with torch.no_grad():
        result = without_head.double()(pixel_values=pixel_values.double(), output_hidden_states=True)
        full_vision = full.double().vision_model(pixel_values=pixel_values.double(), output_hidden_states=True)
    without_head.float()
    full.float()
    assert full.vision_model.encoder.layers[0].self_attn.__class__.__name__ == "SiglipSdpaAttention"
    assert torch.equal(result.last_hidden_state, full_vision.last_hidden_state), "full model's tower differs"
    hidden = result.hidden_states
    outputs = {
        "pixel_values": pixel_values.contiguous(),
        "last_hidden_state": result.last_hidden_state.float().contiguous(),
        "penultimate": hidden[-2].float().contiguous(),
    }

    save_dir(full, args.out / "siglip_layout_full", outputs)
    save_dir(without_head, args.out / "siglip_layout_prefixed", outputs)
    unprefixed = args.out / "siglip_layout_unprefixed"
    with tempfile.TemporaryDirectory() as tmp:
        save_dir(with_head, Path(tmp), outputs)
        state = load_file(Path(tmp) / "model.safetensors")
        assert all(k.startswith("vision_model.") for k in state), "transformers already writes unprefixed keys"
        unprefixed.mkdir(parents=True, exist_ok=True)
        for name in ["config.json", "preprocessor_config.json", "outputs.safetensors"]:
            shutil.copyfile(Path(tmp) / name, unprefixed / name)
        stripped = {k.removeprefix("vision_model."): v for k, v in state.items()}
        save_file(stripped, unprefixed / "model.safetensors", metadata={"format": "pt"})

    for d in ["siglip_layout_unprefixed", "siglip_layout_prefixed", "siglip_layout_full"]:
        keys = sorted(load_file(args.out / d / "model.safetensors"))
        print(d, len(keys), "tensors, e.g.", keys[:2], "...", keys[-2:])
    print({k: list(v.shape) for k, v in outputs.items()})


if __name__ == "__main__":
    main()
