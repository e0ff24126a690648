"""PyTorch twin of `vlmix bench train`: the same reference model and the same full training step.

Model: OpenLM decoder, vocab 8192, d 256, 4 layers, 4 heads, seq 256, batch 8, untied, gain-only
LayerNorm, QK-norm, z-loss 1e-4. Step: forward, masked z-loss cross-entropy, backward, global grad-norm
clip 1.0, AdamW (decay on matrices except the embedding). Eager mode, float32, 2 threads by default.

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
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(0)
    cfg = REFERENCE
    model = Transformer(cfg)
    openlm_init_(model, gen)
    decayed = set(model.decayed_parameter_names())
    params = dict(model.named_parameters())
    opt = torch.optim.AdamW(
        [
            {"params": [p for n, p in params.items() if n in decayed], "weight_decay": 0.1},
            {"params": [p for n, p in params.items() if n not in decayed], "weight_decay": 0.0},
        ],
        lr=1e-3, betas=(0.9, 0.95), eps=1e-8,
    )
    tokens = torch.randint(0, cfg.vocab, (BATCH, cfg.seq_len + 1), generator=gen)
    inputs, targets = tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous()
    loss_mask = torch.ones(BATCH, cfg.seq_len)

    def step():
        opt.zero_grad(set_to_none=True)
        loss = masked_lm_loss(model(inputs), targets, loss_mask, cfg.z_loss)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        return loss.item()

    for _ in range(args.warmup):
        step()
    start = time.perf_counter()
    for _ in range(args.steps):
        loss = step()
    elapsed = time.perf_counter() - start

    tokens_per_s = BATCH * cfg.seq_len * args.steps / elapsed
    result = {
        "engine": "pytorch",
        "tokens_per_s": round(tokens_per_s, 1),
        "gflops": round(tokens_per_s * flops_per_token(model, cfg) / 1e9, 2),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "step_ms": round(1000 * elapsed / args.steps, 1),
        "steps": args.steps,
        "warmup": args.warmup,
        "final_loss": round(loss, 4),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu": cpu_name(),
    }
    line = json.dumps(result)
    print(line)
    if args.json:
        write_atomically(args.json, line + "\n")


if __name__ == "__main__":
    main()
