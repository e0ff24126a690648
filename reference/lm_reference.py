"""Write the OpenLM parity fixtures for vlmix's Rust LM (crates/models/tests/fixtures/lm_parity_<case>/).

The reference runs in float64 from float32-representable initial weights and stores float32, so the
fixtures are the exact answer rounded once, and any gap the Rust f32 engine shows is its own.

Usage: python reference/lm_reference.py [--out crates/models/tests/fixtures]
"""

import argparse
import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from openlm import LmConfig, Transformer, masked_lm_loss, openlm_init_

CASES = {
    "openlm": dict(norm="gain_only_layer_norm", tied=False, z_loss=1e-4, qk_norm=True, seed=1234),
    "rms_tied": dict(norm="rms_norm", tied=True, z_loss=0.0, qk_norm=True, seed=5678),
    # open_lm's variants and training rules: LayerNorm with bias, post-embedding norm, z-loss over all
    # positions (large, so its gradient shows), weight decay on every parameter.
    "openlm_rules": dict(norm="layer_norm", tied=False, z_loss=1e-2, qk_norm=True, seed=4321, post_embed_norm=True, z_rule="openlm", decay="openlm"),
}
SHAPE = dict(vocab=64, d_model=32, n_layers=2, n_heads=4, seq_len=8)
BATCH = 2
ADAMW = dict(lr=1e-3, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)
CLIP = 1.0
STEPS = 3


def f32_state(model):
    return {n: p.detach().to(torch.float32).clone() for n, p in model.named_parameters()}


def make_batch(gen, vocab):
    inputs = torch.randint(0, vocab, (BATCH, SHAPE["seq_len"]), generator=gen, dtype=torch.int64)
    targets = torch.randint(0, vocab, (BATCH, SHAPE["seq_len"]), generator=gen, dtype=torch.int64)
    loss_mask = torch.ones(BATCH, SHAPE["seq_len"], dtype=torch.float32)
    loss_mask[0, :3] = 0.0  # a masked prefix, as answer-only fine-tuning does
    loss_mask[1, 5] = 0.0  # and a hole in the middle
    return inputs, targets, loss_mask


def run_reference(model, cfg, inputs, targets, loss_mask):
    """Forward + backward once, then STEPS of (zero_grad, backward, clip, AdamW) on the same batch."""
    logits = model(inputs)
    loss = masked_lm_loss(logits, targets, loss_mask, cfg.z_loss, cfg.z_rule)
    model.zero_grad()
    loss.backward()
    grads = {n: p.grad.to(torch.float32).contiguous() for n, p in model.named_parameters()}

    decayed = model.decayed_parameter_names()
    params = dict(model.named_parameters())
    opt = torch.optim.AdamW(
        [
            {"params": [params[n] for n in decayed], "weight_decay": ADAMW["weight_decay"]},
            {"params": [p for n, p in params.items() if n not in decayed], "weight_decay": 0.0},
        ],
        lr=ADAMW["lr"], betas=ADAMW["betas"], eps=ADAMW["eps"], foreach=False,
    )
    step_loss, step_norm = [], []
    for _ in range(STEPS):
        opt.zero_grad()
        step = masked_lm_loss(model(inputs), targets, loss_mask, cfg.z_loss, cfg.z_rule)
        step.backward()
        step_norm.append(torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP).item())
        step_loss.append(step.item())
        opt.step()
    return dict(
        forward={"logits": logits.detach().to(torch.float32).contiguous(), "loss": loss.detach().to(torch.float32)},
        grads=grads,
        after=f32_state(model),
        trajectory={
            "loss": torch.tensor(step_loss, dtype=torch.float32),
            "grad_norm": torch.tensor(step_norm, dtype=torch.float32),
        },
    )


def max_rel_dev(ours: dict, ref: dict) -> float:
    """Largest per-tensor max|a-b| / max|ref| over a dict of tensors."""
    return max(((ours[k] - ref[k]).abs().max() / ref[k].abs().max()).item() for k in ref)


def write_case(name, spec, out_root: Path):
    gen = torch.Generator().manual_seed(spec["seed"])
    rules = {k: spec[k] for k in ("post_embed_norm", "z_rule", "decay") if k in spec}
    cfg = LmConfig(**SHAPE, norm=spec["norm"], tied=spec["tied"], qk_norm=spec["qk_norm"], z_loss=spec["z_loss"], **rules)
    model = Transformer(cfg)
    openlm_init_(model, gen, norm_gain_noise=0.1)
    init = f32_state(model)
    inputs, targets, loss_mask = make_batch(gen, cfg.vocab)

    # The f32 twin measures the noise floor an f32 engine should expect against the f64 answer.
    f32_run = run_reference(model, cfg, inputs, targets, loss_mask)
    model = Transformer(cfg).double()
    model.load_state_dict({n: t.double() for n, t in init.items()})
    ref = run_reference(model, cfg, inputs, targets, loss_mask)

    out = out_root / f"lm_parity_{name}"
    out.mkdir(parents=True, exist_ok=True)
    config = dict(
        **SHAPE, batch=BATCH, ffn_hidden=cfg.ffn_hidden, norm=cfg.norm, norm_eps=1e-5, tied=cfg.tied,
        z_loss=cfg.z_loss, qk_norm=cfg.qk_norm, rope_base=10000.0,
        lr=ADAMW["lr"], betas=list(ADAMW["betas"]), eps=ADAMW["eps"], weight_decay=ADAMW["weight_decay"],
        clip=CLIP, steps=STEPS, decayed_params=model.decayed_parameter_names(),
    )
    if rules:  # only the open_lm-rules case names them, so the older fixtures stay byte-identical
        config.update(post_embed_norm=cfg.post_embed_norm, z_loss_rule=cfg.z_rule, weight_decay_rule=cfg.decay)
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    save_file(init, out / "init.safetensors")
    save_file({"inputs": inputs, "targets": targets, "loss_mask": loss_mask}, out / "batch.safetensors")
    save_file(ref["forward"], out / "forward.safetensors")
    save_file(ref["grads"], out / "grads.safetensors")
    save_file(ref["after"], out / "after_3_steps.safetensors")
    save_file(ref["trajectory"], out / "trajectory.safetensors")
    print(
        f"{name}: loss {ref['forward']['loss'].item():.6f}, pre-clip grad norms "
        f"{[round(v, 4) for v in ref['trajectory']['grad_norm'].tolist()]}; f32 PyTorch vs f64 reference, "
        + ", ".join(f"{k} {max_rel_dev(f32_run[k], ref[k]):.1e}" for k in ("forward", "grads", "after"))
    )


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent.parent / "crates/models/tests/fixtures"))
    args = ap.parse_args()
    torch.use_deterministic_algorithms(True)
    for name, spec in CASES.items():
        write_case(name, spec, Path(args.out))


if __name__ == "__main__":
    main()
