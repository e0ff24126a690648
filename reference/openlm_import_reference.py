"""Tiny open_lm checkpoints for `vlmix import openlm` (crates/models/tests/fixtures/openlm_import/<case>/),
and a loader that checks what `vlmix export openlm` writes.

Built the way mlfoundations/open_lm builds and saves its models (read from its source; no open_lm
install needed):
- open_lm/model.py: `Params` fields, module and parameter names (`tok_embeddings`, `layers.N.attention.
  {in_proj,out_proj,q_norm,k_norm,pos_embed}`, `layers.N.feed_forward.{w12,w3}` of `SwiGLUTorch`,
  `attention_norm`, `ffn_norm`, `norm`, `output`, `post_embed_norm`), weight tying by
  `tok_embeddings.weight = output.weight` (so a state dict holds both names, one storage), the
  forward (post-embed norm, pre-norm blocks, q/k norm over the full width before the head split, gate-
  first `w12`), and `reset_parameters`' truncated-normal init.
- open_lm/norms.py: `get_norm_class` names: `default_layer_norm` (torch.nn.LayerNorm, gain + bias),
  `lp_layer_norm` (same, autocast-free), `gain_only_layer_norm` / `gain_only_lp_layer_norm` (no bias),
  `rms_norm`.
- open_lm/positional_embedding/rotary.py: `RotaryEmbedding` registers a persistent `inv_freq` buffer
  `1 / 10000 ** (arange(0, d, 2).float() / d)` and builds its cos/sin tables from that buffer
  (`rotate_half` layout), so a bf16 buffer (FSDP `MixedPrecision(buffer_dtype=bfloat16)` in
  open_lm/main.py) is used as stored.
- open_lm/main.py `save_checkpoint`: `torch.save({"epoch", "name", "state_dict", "evaluation_loss"})`,
  keys prefixed `module.` under DDP.
- open_lm/hf/modeling_openlm.py + configuration_openlm.py (what DCLM-1B ships): `model.safetensors`
  with `base_model_prefix = "model"` keys, `config.json` holding the `Params` field names plus
  `norm_type`, `attn_name`, `model_type: "openlm"`.

Usage:
    python3 reference/openlm_import_reference.py [--out crates/models/tests/fixtures/openlm_import]
    python3 reference/openlm_import_reference.py --check DIR --case NAME   # an exported HF directory
"""

import argparse
import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from openlm import rotate_half, trunc_normal_

SHAPE = dict(vocab_size=64, dim=32, n_layers=2, n_heads=4, seq_len=8)
BATCH = 2
NORM_EPS = 1e-5

# name: (layout, norm name, qk_norm, weight_tying, post_embed_norm, inv_freq dtype, seed)
CASES = {
    "hf_dclm": ("hf", "gain_only_lp_layer_norm", True, False, False, torch.float32, 11),
    "pt_layer_norm_ddp": ("pt_module", "default_layer_norm", True, False, False, torch.float32, 12),
    "pt_tied_rms": ("pt", "rms_norm", False, True, False, torch.float32, 13),
    "hf_post_embed_norm": ("hf", "lp_layer_norm", True, False, True, torch.float32, 14),
    "pt_bf16_inv_freq": ("pt", "gain_only_layer_norm", True, False, False, torch.bfloat16, 15),
}


class Norm(nn.Module):
    """The norms of open_lm/norms.py `get_norm_class`, by name."""

    def __init__(self, kind: str, dim: int):
        super().__init__()
        self.kind = kind
        self.weight = nn.Parameter(torch.ones(dim))
        if kind in ("default_layer_norm", "lp_layer_norm"):
            self.bias = nn.Parameter(torch.zeros(dim))
        elif kind not in ("gain_only_layer_norm", "gain_only_lp_layer_norm", "rms_norm"):
            raise ValueError(f"unsupported norm {kind}")

    def forward(self, x):
        if self.kind == "rms_norm":
            return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + NORM_EPS) * self.weight
        return F.layer_norm(x, (x.shape[-1],), self.weight, getattr(self, "bias", None), NORM_EPS)


class Rotary(nn.Module):
    """`RotaryWithCast`: a persistent `inv_freq` buffer; tables from the buffer as stored."""

    def __init__(self, head_dim: int):
        super().__init__()
        self.register_buffer("inv_freq", 1.0 / (10000 ** (torch.arange(0, head_dim, 2).float() / head_dim)))

    def forward(self, q, k):
        t = torch.arange(q.shape[1], dtype=q.dtype)
        freqs = torch.outer(t, self.inv_freq.to(q.dtype))
        emb = torch.cat((freqs, freqs), dim=-1)
        cos, sin = emb.cos()[None, :, None, :], emb.sin()[None, :, None, :]
        return q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin


class CustomAttn(nn.Module):
    def __init__(self, p):
        super().__init__()
        d, self.n_heads = p["dim"], p["n_heads"]
        self.head_dim = d // self.n_heads
        self.in_proj = nn.Linear(d, 3 * d, bias=False)
        self.out_proj = nn.Linear(d, d, bias=False)
        self.pos_embed = Rotary(self.head_dim)
        self.q_norm = Norm(p["norm_type"], d) if p["apply_qk_norm"] else nn.Identity()
        self.k_norm = Norm(p["norm_type"], d) if p["apply_qk_norm"] else nn.Identity()

    def forward(self, x):
        b, s, _ = x.shape
        q, k, v = self.in_proj(x).chunk(3, dim=-1)
        q, k = self.q_norm(q), self.k_norm(k)
        q, k, v = (t.view(b, s, self.n_heads, self.head_dim) for t in (q, k, v))
        q, k = self.pos_embed(q, k)
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True)
        return self.out_proj(out.transpose(1, 2).reshape(b, s, -1))


class SwiGLUTorch(nn.Module):
    def __init__(self, d, hidden):
        super().__init__()
        self.w12 = nn.Linear(d, 2 * hidden, bias=False)
        self.w3 = nn.Linear(hidden, d, bias=False)

    def forward(self, x):
        gate, x = self.w12(x).chunk(2, dim=-1)
        return self.w3(F.silu(gate) * x)


class Block(nn.Module):
    def __init__(self, p):
        super().__init__()
        d = p["dim"]
        self.hidden_dim = 256 * ((int(2 * 4 * d / 3) + 256 - 1) // 256)
        self.attention = CustomAttn(p)
        self.feed_forward = SwiGLUTorch(d, self.hidden_dim)
        self.attention_norm = Norm(p["norm_type"], d)
        self.ffn_norm = Norm(p["norm_type"], d)

    def forward(self, x):
        h = x + self.attention(self.attention_norm(x))
        return h + self.feed_forward(self.ffn_norm(h))


class Transformer(nn.Module):
    def __init__(self, p):
        super().__init__()
        d = p["dim"]
        self.post_embed_norm = Norm(p["norm_type"], d) if p["post_embed_norm"] else nn.Identity()
        self.tok_embeddings = nn.Embedding(p["vocab_size"], d)
        self.layers = nn.ModuleList(Block(p) for _ in range(p["n_layers"]))
        self.norm = Norm(p["norm_type"], d)
        self.output = nn.Linear(d, p["vocab_size"], bias=False)
        if p["weight_tying"]:
            self.tok_embeddings.weight = self.output.weight

    def forward(self, input_ids):
        x = self.post_embed_norm(self.tok_embeddings(input_ids))
        for layer in self.layers:
            x = layer(x)
        return self.output(self.norm(x))


def init_(model, p, gen):
    """open_lm's reset_parameters (seeded); gains 1 + 0.1 N(0,1) and biases 0.1 N(0,1) so they matter."""
    std = 1.0 / math.sqrt(p["dim"])
    for i, layer in enumerate(model.layers):
        depth = math.sqrt(2 * (i + 1))
        trunc_normal_(layer.attention.in_proj.weight, std, gen)
        trunc_normal_(layer.attention.out_proj.weight, std / depth, gen)
        trunc_normal_(layer.feed_forward.w12.weight, std, gen)
        trunc_normal_(layer.feed_forward.w3.weight, 1.0 / math.sqrt(layer.hidden_dim) / depth, gen)
    trunc_normal_(model.output.weight, std, gen)
    if not p["weight_tying"]:
        trunc_normal_(model.tok_embeddings.weight, std, gen)
    with torch.no_grad():
        for name, t in model.named_parameters():
            if t.ndim == 1:
                noise = 0.1 * torch.randn(t.shape, generator=gen, dtype=torch.float64)
                t.copy_((noise if name.endswith(".bias") else 1.0 + noise).to(t.dtype))


def params_of(case):
    layout, norm, qk, tied, post, _, _ = CASES[case]
    return dict(SHAPE, norm_type=norm, apply_qk_norm=qk, weight_tying=tied, post_embed_norm=post)


def hf_config(p):
    """config.json as open_lm/hf writes it: the Params field names, plus the norm and attention names."""
    return dict(
        architectures=["OpenLMForCausalLM"], model_type="openlm", dim=p["dim"], n_layers=p["n_layers"],
        n_heads=p["n_heads"], vocab_size=p["vocab_size"], seq_len=p["seq_len"], norm_eps=NORM_EPS,
        post_embed_norm=p["post_embed_norm"], weight_tying=p["weight_tying"], apply_qk_norm=p["apply_qk_norm"],
        positional_embedding_type="rotary", ffn_type="swiglu_torch", norm_type=p["norm_type"],
        attn_name="torch_attn", moe_freq=0, torch_dtype="float32",
    )


def model_config(p):
    """An open_lm `model_configs/*.json` file (the --model argument of a training run)."""
    return dict(
        hidden_dim=p["dim"], n_layers=p["n_layers"], n_heads=p["n_heads"], seq_len=p["seq_len"],
        vocab_size=p["vocab_size"], post_embed_norm=p["post_embed_norm"], weight_tying=p["weight_tying"],
        model_norm=p["norm_type"], qk_norm=p["apply_qk_norm"],
    )


def reference_logits(state, p, inputs):
    """The forward in float64 from the stored tensors (bf16 buffers used as stored)."""
    model = Transformer(p).double()
    model.load_state_dict({k: v.double() for k, v in state.items()}, strict=True)
    with torch.no_grad():
        return model(inputs)


def write_case(case, out_root: Path):
    layout, _, _, tied, _, inv_dtype, seed = CASES[case]
    p = params_of(case)
    gen = torch.Generator().manual_seed(seed)
    model = Transformer(p)
    init_(model, p, gen)
    state = model.state_dict()
    for name in list(state):
        if name.endswith("pos_embed.inv_freq"):
            state[name] = state[name].to(inv_dtype)
    inputs = torch.randint(0, p["vocab_size"], (BATCH, p["seq_len"]), generator=gen, dtype=torch.int64)
    logits = reference_logits(state, p, inputs)

    out = out_root / case
    out.mkdir(parents=True, exist_ok=True)
    if layout == "hf":
        save_file({f"model.{k}": v.contiguous() for k, v in state.items()}, out / "model.safetensors", metadata={"format": "pt"})
        (out / "config.json").write_text(json.dumps(hf_config(p), indent=2, sort_keys=True) + "\n")
        source, config = ".", None
    else:
        prefix = "module." if layout == "pt_module" else ""
        sd = {prefix + k: v for k, v in state.items()}
        if tied:  # the live module's state dict shares one storage between the two names
            assert sd["tok_embeddings.weight"].data_ptr() == sd["output.weight"].data_ptr()
        torch.save({"epoch": 1, "name": case, "state_dict": sd, "evaluation_loss": 4.0}, out / "epoch_1.pt")
        (out / "model.json").write_text(json.dumps(model_config(p), indent=2, sort_keys=True) + "\n")
        source, config = "epoch_1.pt", "model.json"
    save_file({"inputs": inputs, "logits": logits.to(torch.float32).contiguous()}, out / "expected.safetensors")
    (out / "case.json").write_text(json.dumps(dict(source=source, config=config, tied=tied, inv_freq_dtype=str(inv_dtype)), indent=2) + "\n")
    # The float32 forward's distance from the float64 answer: the noise floor of an f32 engine.
    with torch.no_grad():
        f32 = Transformer(p)
        f32.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
        dev = ((f32(inputs).double() - logits).abs().max() / logits.abs().max()).item()
    print(f"{case}: {layout}, logits max |x| {logits.abs().max().item():.3f}, f32 PyTorch vs f64 {dev:.1e}")


def check(directory: Path, case: str, fixtures: Path):
    """Loads an HF-layout directory as open_lm/hf does (Params from config.json, strict state dict under
    `model.`) and compares its logits on the case's inputs with the case's."""
    cfg = json.loads((directory / "config.json").read_text())
    p = {k: cfg[k] for k in ("dim", "n_layers", "n_heads", "vocab_size", "seq_len", "post_embed_norm", "weight_tying", "apply_qk_norm", "norm_type")}
    assert cfg["norm_eps"] == NORM_EPS and cfg["positional_embedding_type"] == "rotary" and cfg["ffn_type"] in ("swiglu", "swiglu_torch")
    tensors = load_file(directory / "model.safetensors")
    assert all(k.startswith("model.") for k in tensors), "every key carries the HF prefix"
    state = {k[len("model."):]: v for k, v in tensors.items()}
    expected = load_file(fixtures / case / "expected.safetensors")
    logits = reference_logits(state, p, expected["inputs"])
    dev = ((logits - expected["logits"].double()).abs().max() / expected["logits"].abs().max()).item()
    print(f"{directory}: open_lm-style load of {len(state)} tensors, logits vs fixture {case}: {dev:.1e}")
    if dev > 1e-5:
        raise SystemExit(f"logits deviate {dev:.1e} > 1e-5")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    default = Path(__file__).resolve().parent.parent / "crates/models/tests/fixtures/openlm_import"
    ap.add_argument("--out", default=str(default))
    ap.add_argument("--check", help="an HF-layout directory written by `vlmix export openlm`")
    ap.add_argument("--case", help="with --check: the fixture whose inputs and logits to compare with")
    args = ap.parse_args()
    torch.use_deterministic_algorithms(True)
    if args.check:
        check(Path(args.check), args.case, Path(args.out))
        return
    for case in CASES:
        write_case(case, Path(args.out))


if __name__ == "__main__":
    main()
