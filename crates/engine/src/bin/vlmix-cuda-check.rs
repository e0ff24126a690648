//! Checks the CUDA device on a GPU machine; `scripts/gpu-check.sh` runs it (see there).
//!
//! ```text
//! vlmix-cuda-check probe                       which CUDA libraries load (exit 1 when one is missing)
//! vlmix-cuda-check reference PATH              the CPU engine's kernel outputs, for a GPU machine without OpenBLAS
//! vlmix-cuda-check parity [--precision f32|bf16] [--reference PATH] [--json PATH]
//!                                              every Device kernel on CUDA against the CPU engine
//! vlmix-cuda-check gemm [--json PATH]          cuBLASLt GEMM TFLOP/s (f32 and bf16 inputs), the MFU denominator
//! vlmix-cuda-check attention [--json PATH]     flash-style attention (log-sum-exp saved) against the plain path
//! ```
//!
//! Tolerances (normwise relative error): 1e-4 for every output in f32; under bf16, outputs that pass
//! through a matrix product get 3e-2 (bf16 keeps 8 bits of mantissa: ~4e-3 per rounded input, grown
//! by the sums and the softmax), the others stay at 1e-4.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use vlmix_engine::cuda::{parity, probe, Precision};
use vlmix_engine::{AttnShape, Cpu, Cuda, Device, Gemm};

const F32_TOLERANCE: f64 = 1e-4;
const BF16_PRODUCT_TOLERANCE: f64 = 3e-2;

struct Args {
    rest: Vec<String>,
}

impl Args {
    /// The value after `flag`, removed from the arguments.
    fn take(&mut self, flag: &str) -> Result<Option<String>> {
        match self.rest.iter().position(|a| a == flag) {
            None => Ok(None),
            Some(i) if i + 1 < self.rest.len() => {
                let v = self.rest.remove(i + 1);
                self.rest.remove(i);
                Ok(Some(v))
            }
            Some(_) => bail!("{flag} needs a value"),
        }
    }

    fn done(self) -> Result<()> {
        if !self.rest.is_empty() {
            bail!("unexpected arguments: {}", self.rest.join(" "));
        }
        Ok(())
    }
}

fn write_json(path: Option<&Path>, value: &serde_json::Value) -> Result<()> {
    let text = serde_json::to_string_pretty(value)?;
    println!("{text}");
    if let Some(path) = path {
        std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

fn parity_cmd(mut args: Args) -> Result<bool> {
    let precision: Precision = args.take("--precision")?.as_deref().unwrap_or("f32").parse()?;
    let reference = args.take("--reference")?.map(PathBuf::from);
    let json = args.take("--json")?.map(PathBuf::from);
    args.done()?;
    let cuda = Cuda::with(0, precision)?;
    eprintln!("device: {}", cuda.describe());
    let want = match &reference {
        Some(path) => parity::read_reference(path)?,
        None => parity::outputs(&Cpu::new()?).into_iter().collect(),
    };
    let start = Instant::now();
    let got = parity::outputs(&cuda);
    let seconds = start.elapsed().as_secs_f64();
    let tolerance = |name: &str| match precision {
        Precision::Bf16 if parity::uses_products(name) => BF16_PRODUCT_TOLERANCE,
        _ => F32_TOLERANCE,
    };
    let outcomes = parity::compare(&want, got, tolerance);
    for o in &outcomes {
        eprintln!(
            "{} {:<48} error {:.2e} (tolerance {:.0e})",
            if o.ok { "ok  " } else { "FAIL" },
            o.output,
            o.error,
            o.tolerance
        );
    }
    let failed = outcomes.iter().filter(|o| !o.ok).count();
    eprintln!("{} passed, {failed} failed", outcomes.len() - failed);
    write_json(
        json.as_deref(),
        &serde_json::json!({
            "check": "kernel parity",
            "device": cuda.describe(),
            "precision": format!("{precision:?}"),
            "reference": reference.map_or("CPU engine, live".into(), |p| p.display().to_string()),
            "passed": outcomes.len() - failed,
            "failed": failed,
            "seconds": seconds,
            "gemm_plans_cached": cuda.cached_gemm_plans(),
            "outcomes": outcomes,
        }),
    )?;
    Ok(failed == 0)
}

/// TFLOP/s of `n x n x n` products, after one untimed call (NVRTC, plan, clocks).
fn gemm_rate(cuda: &Cuda, n: usize, reps: usize) -> f64 {
    let a = cuda.upload(&parity::random(n * n, 1, 1.0));
    let b = cuda.upload(&parity::random(n * n, 2, 1.0));
    let mut c = cuda.zeros(n * n);
    let g = Gemm::new(false, false, n, n, n);
    cuda.gemm(g, &a, &b, &mut c);
    cuda.synchronize();
    let start = Instant::now();
    for _ in 0..reps {
        cuda.gemm(g, &a, &b, &mut c);
    }
    cuda.synchronize();
    2.0 * (n as f64).powi(3) * reps as f64 / start.elapsed().as_secs_f64() / 1e12
}

fn gemm_cmd(mut args: Args) -> Result<bool> {
    let json = args.take("--json")?.map(PathBuf::from);
    args.done()?;
    let mut rates = serde_json::Map::new();
    let mut device = String::new();
    for precision in [Precision::F32, Precision::Bf16] {
        let cuda = Cuda::with(0, precision)?;
        device = cuda.describe();
        for n in [2048, 8192] {
            let rate = gemm_rate(&cuda, n, if n == 8192 { 10 } else { 50 });
            eprintln!("{precision:?} inputs, {n}^3: {rate:.1} TFLOP/s");
            rates.insert(format!("{precision:?} {n}^3 TFLOP/s"), rate.into());
        }
    }
    write_json(
        json.as_deref(),
        &serde_json::json!({ "check": "gemm rate", "device": device, "note": "bf16 includes casting A and B from f32 on every call", "rates": rates }),
    )?;
    Ok(true)
}

/// Seconds of `f`, synchronised on both ends.
fn timed(cuda: &Cuda, f: impl FnOnce()) -> f64 {
    cuda.synchronize();
    let start = Instant::now();
    f();
    cuda.synchronize();
    start.elapsed().as_secs_f64()
}

/// The trait's attention (flash attention for these shapes) against the plain path (both on the
/// GPU, f32): outputs, input gradients, time (second call, after compilation and plans) and the
/// saved buffer's size.
fn attention_cmd(mut args: Args) -> Result<bool> {
    let json = args.take("--json")?.map(PathBuf::from);
    args.done()?;
    let cuda = Cuda::new()?;
    let shapes = [
        AttnShape { batch: 2, seq: 100, heads: 3, head_dim: 20, causal: true },
        AttnShape { batch: 2, seq: 256, heads: 4, head_dim: 64, causal: false },
        AttnShape { batch: 1, seq: 2048, heads: 4, head_dim: 128, causal: true },
    ];
    let mut results = Vec::new();
    let mut ok = true;
    for shape in shapes {
        let flash = cuda.memory().saved_attention.is_flash(shape);
        ok &= flash;
        if !flash {
            eprintln!("{shape:?}: the trait's attention does not run flash attention");
        }
        let n = shape.rows() * shape.width();
        let up = |seed| cuda.upload(&parity::random(n, seed, 1.0));
        let (q, k, v, dout) = (up(1), up(2), up(3), up(4));
        let grads = || (cuda.zeros(n), cuda.zeros(n), cuda.zeros(n));
        let (mut out_p, mut probs) = (cuda.zeros(n), cuda.zeros(shape.probs_len()));
        let (mut dq_p, mut dk_p, mut dv_p) = grads();
        let (mut out_f, mut saved) = (cuda.zeros(n), cuda.zeros(cuda.attention_saved_len(shape)));
        let (mut dq_f, mut dk_f, mut dv_f) = grads();
        let mut times = [0.0; 4];
        for _ in 0..2 {
            times[0] = timed(&cuda, || cuda.plain_attention_forward(shape, &q, &k, &v, &mut probs, &mut out_p));
            times[1] = timed(&cuda, || {
                cuda.plain_attention_backward(shape, &q, &k, &v, &probs, &dout, &mut dq_p, &mut dk_p, &mut dv_p)
            });
            times[2] = timed(&cuda, || cuda.attention_forward(shape, &q, &k, &v, &mut saved, &mut out_f));
            times[3] = timed(&cuda, || {
                cuda.attention_backward(shape, &q, &k, &v, &out_f, &saved, &dout, &mut dq_f, &mut dk_f, &mut dv_f)
            });
        }
        let mut errors = serde_json::Map::new();
        for (name, plain, flash) in
            [("out", &out_p, &out_f), ("dq", &dq_p, &dq_f), ("dk", &dk_p, &dk_f), ("dv", &dv_p, &dv_f)]
        {
            let error = parity::normwise_error(&cuda.to_host(plain), &cuda.to_host(flash));
            ok &= error <= F32_TOLERANCE;
            eprintln!("{shape:?} {name}: error {error:.2e}");
            errors.insert(name.into(), error.into());
        }
        eprintln!(
            "  plain fwd {:.2} ms bwd {:.2} ms; flash fwd {:.2} ms bwd {:.2} ms",
            1e3 * times[0],
            1e3 * times[1],
            1e3 * times[2],
            1e3 * times[3]
        );
        results.push(serde_json::json!({
            "shape": format!("{shape:?}"),
            "errors": errors,
            "tolerance": F32_TOLERANCE,
            "plain_ms": [1e3 * times[0], 1e3 * times[1]],
            "flash_ms": [1e3 * times[2], 1e3 * times[3]],
            "saved_mib": { "plain": 4.0 * shape.probs_len() as f64 / (1 << 20) as f64, "flash": 4.0 * cuda.attention_saved_len(shape) as f64 / (1 << 20) as f64 },
        }));
    }
    write_json(
        json.as_deref(),
        &serde_json::json!({ "check": "flash attention", "device": cuda.describe(), "ok": ok, "shapes": results }),
    )?;
    Ok(ok)
}

fn main() -> Result<()> {
    let mut argv: Vec<String> = std::env::args().skip(1).collect();
    if argv.is_empty() {
        bail!("usage: vlmix-cuda-check probe | reference PATH | parity [--precision f32|bf16] [--reference PATH] [--json PATH] | gemm [--json PATH] | attention [--json PATH]");
    }
    let cmd = argv.remove(0);
    let args = Args { rest: argv };
    let ok = match cmd.as_str() {
        "probe" => {
            args.done()?;
            let missing = probe::missing();
            for m in &missing {
                eprintln!("missing: {m}");
            }
            if !missing.is_empty() {
                eprintln!("fix: {}", probe::LIBRARY_PATH_HINT);
            }
            missing.is_empty()
        }
        "reference" => {
            let [path] = args.rest.as_slice() else { bail!("usage: vlmix-cuda-check reference PATH") };
            let outputs = parity::outputs(&Cpu::new()?);
            parity::write_reference(Path::new(path), &outputs)?;
            eprintln!("{} CPU outputs written to {path}", outputs.len());
            true
        }
        "parity" => parity_cmd(args)?,
        "gemm" => gemm_cmd(args)?,
        "attention" => attention_cmd(args)?,
        other => bail!("unknown command {other:?} (probe, reference, parity, gemm, attention)"),
    };
    if !ok {
        std::process::exit(1);
    }
    Ok(())
}
