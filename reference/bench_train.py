"""PyTorch twin of `vlmix bench train`: the same reference model and the same full training step.

Model: OpenLM decoder, vocab 8192, d 256, 4 layers, 4 heads, seq 256, batch 8, untied, gain-only
LayerNorm, QK-norm, z-loss 1e-4. Step: forward, masked z-loss cross-entropy, backward, global grad-norm
clip 1.0, AdamW (decay on matrices except the embedding). Eager mode, float32, 2 threads by default.

`--device cuda` runs the same step on GPU 0 (synchronised around the timed steps), optionally in bf16
autocast (`--precision bf16`, fp32 master weights as PyTorch AMP keeps them) and under `torch.compile`
(`--compile`), for the paper's shapes too (`--model openlm-79m|openlm-1b`: vocab 50432, seq 2048, open_lm's
decay rule); it adds peak GPU memory and, given the GPU's peak rate (`--peak-tflops`), MFU.

GFLOP/s use PaLM's count, (6 N + 12 L T d) per token, with N every parameter except the input
embedding (the output matrix counts).

Prints one JSON line on stdout; `--json PATH` also writes it to PATH.
"""

import argparse
import json
import os
import platform
import resource
import tempfile
import time
from pathlib import Path

import torch

from openlm import LmConfig, Transformer, masked_lm_loss, openlm_init_

REFERENCE = LmConfig(
    vocab=8192, d_model=256, n_layers=4, n_heads=4, seq_len=256,
    norm="gain_only_layer_norm", tied=False, qk_norm=True, z_loss=1e-4,
)
BATCH = 8
# The paper's shapes (crates/models/src/lm/config.rs presets of the same names).
PAPER = dict(vocab=50432, seq_len=2048, norm="gain_only_layer_norm", tied=False, qk_norm=True, z_loss=1e-4, decay="openlm")
MODELS = {
    "reference": REFERENCE,
    "openlm-79m": LmConfig(d_model=512, n_layers=8, n_heads=4, **PAPER),
    "openlm-1b": LmConfig(d_model=2048, n_layers=24, n_heads=16, **PAPER),
}


def flops_per_token(model: Transformer, cfg: LmConfig) -> float:
    n = sum(p.numel() for name, p in model.named_parameters() if not name.startswith("tok_embeddings"))
    return 6.0 * n + 12.0 * cfg.n_layers * cfg.seq_len * cfg.d_model


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.machine()


def write_atomically(path: Path, text: str):
    with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False) as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(f.name, path)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=10, help="timed steps")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path, help="also write the result JSON here")
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--model", choices=sorted(MODELS), default="reference")
    ap.add_argument("--batch", type=int, default=BATCH, help="sequences per step")
    ap.add_argument("--precision", choices=["f32", "bf16"], default="f32", help="bf16: autocast (cuda only)")
    ap.add_argument("--compile", action="store_true", help="torch.compile the model")
    ap.add_argument("--peak-tflops", type=float, help="the device's peak TFLOP/s, for MFU")
    args = ap.parse_args()
    if args.precision == "bf16" and args.device != "cuda":
        ap.error("--precision bf16 needs --device cuda")
    if args.device == "cuda" and not torch.cuda.is_available():
        ap.error(f"--device cuda: PyTorch {torch.__version__} sees no CUDA GPU")

    torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(0)
    cfg = MODELS[args.model]
    device = torch.device(args.device)
    model = Transformer(cfg)
    openlm_init_(model, gen)
    model.to(device)
    forward = torch.compile(model) if args.compile else model
    decayed = set(model.decayed_parameter_names())
    params = dict(model.named_parameters())
    opt = torch.optim.AdamW(
        [
            {"params": [p for n, p in params.items() if n in decayed], "weight_decay": 0.1},
            {"params": [p for n, p in params.items() if n not in decayed], "weight_decay": 0.0},
        ],
        lr=1e-3, betas=(0.9, 0.95), eps=1e-8,
    )
    batch = args.batch
    tokens = torch.randint(0, cfg.vocab, (batch, cfg.seq_len + 1), generator=gen).to(device)
    inputs, targets = tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous()
    loss_mask = torch.ones(batch, cfg.seq_len, device=device)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=args.precision == "bf16")

    def step():
        opt.zero_grad(set_to_none=True)
        with autocast:
            logits = forward(inputs)
        loss = masked_lm_loss(logits.float(), targets, loss_mask, cfg.z_loss, cfg.z_rule)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        return loss.item()

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    for _ in range(args.warmup):
        step()
    sync()
    start = time.perf_counter()
    for _ in range(args.steps):
        loss = step()
    sync()
    elapsed = time.perf_counter() - start

    tokens_per_s = batch * cfg.seq_len * args.steps / elapsed
    gflops = tokens_per_s * flops_per_token(model, cfg) / 1e9
    result = {
        "engine": "pytorch",
        "tokens_per_s": round(tokens_per_s, 1),
        "gflops": round(gflops, 2),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "step_ms": round(1000 * elapsed / args.steps, 1),
        "steps": args.steps,
        "warmup": args.warmup,
        "final_loss": round(loss, 4),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu": cpu_name(),
    }
    if device.type == "cuda":
        result.update({
            "device": torch.cuda.get_device_name(device),
            "model": args.model,
            "batch": batch,
            "seq_len": cfg.seq_len,
            "precision": args.precision,
            "compiled": args.compile,
            "peak_gpu_mb": round(torch.cuda.max_memory_allocated(device) / 2**20, 1),
            "cuda": torch.version.cuda,
        })
        if args.peak_tflops:
            result["mfu"] = round(gflops / 1e3 / args.peak_tflops, 4)
    line = json.dumps(result)
    print(line)
    if args.json:
        write_atomically(args.json, line + "\n")


if __name__ == "__main__":
    main()
