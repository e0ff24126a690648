//! Checks the CUDA device on a GPU machine; `scripts/gpu-check.sh` runs it (see there).
//!
//! ```text
//! vlmix-cuda-check probe                       which CUDA libraries load (exit 1 when one is missing)
//! vlmix-cuda-check reference PATH              the CPU engine's kernel outputs, for a GPU machine without OpenBLAS
//! vlmix-cuda-check parity [--precision f32|bf16] [--reference PATH] [--json PATH]
//!                                              every Device kernel on CUDA against the CPU engine
//! vlmix-cuda-check gemm [--json PATH]          cuBLASLt GEMM TFLOP/s (f32 and bf16 inputs), the MFU denominator
//! vlmix-cuda-check attention [--json PATH]     flash-style attention (log-sum-exp saved) against the plain path
//! vlmix-cuda-check compare-loss CPU F32 BF16 OUT   vlmix's first and 50th-step losses on CUDA against the CPU's
//! vlmix-cuda-check summary CHECKS.tsv MACHINE OUT  gpu-check.sh's summary.json (no Python needed)
//! ```
//!
//! Tolerances (normwise relative error): 1e-4 for every output in f32; under bf16, outputs that pass
//! through a matrix product get 3e-2 (bf16 keeps 8 bits of mantissa: ~4e-3 per rounded input, grown
//! by the sums and the softmax), the others stay at 1e-4.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use vlmix_cuda::{compile, probe, Cuda, Precision};
use vlmix_cuda_check::parity;
use vlmix_engine::{AttnShape, Cpu, Device};

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
    let tolerance = |name: &str| match precision {
        Precision::Bf16 if parity::uses_products(name) => BF16_PRODUCT_TOLERANCE,
        _ => F32_TOLERANCE,
    };
    let mut outcomes = Vec::new();
    let report = |outcomes: &[parity::Outcome], complete: bool| {
        let failed = outcomes.iter().filter(|o| !o.ok).count();
        json!({
            "check": "kernel parity",
            "device": cuda.describe(),
            "precision": format!("{precision:?}"),
            "reference": reference.as_ref().map_or("CPU engine, live".into(), |p| p.display().to_string()),
            "complete": complete,
            "passed": outcomes.len() - failed,
            "failed": failed,
            "seconds": start.elapsed().as_secs_f64(),
            "gemm_plans_cached": cuda.cached_gemm_plans(),
            "outcomes": outcomes,
        })
    };
    // Each comparison is printed and the JSON rewritten as it comes, so a fault or the deadline
    // leaves everything compared before it.
    let mut each = |name: String, got: Vec<f32>| {
        let o = parity::compare_one(&want, name, &got, tolerance);
        eprintln!(
            "{} {:<56} error {:.2e} (tolerance {:.0e})",
            if o.ok { "ok  " } else { "FAIL" },
            o.output,
            o.error,
            o.tolerance
        );
        outcomes.push(o);
        if let Some(path) = &json {
            let _ = std::fs::write(path, report(&outcomes, false).to_string());
        }
    };
    let mut panics = parity::each_output(&cuda, &mut each);
    if precision == Precision::F32 {
        panics.extend(parity::plain_attention_outputs(&cuda, &mut each));
    }
    for p in panics {
        eprintln!("FAIL section {p}");
        let tolerance = F32_TOLERANCE;
        outcomes.push(parity::Outcome {
            output: format!("section {p}"),
            len: 0,
            error: f64::INFINITY,
            tolerance,
            ok: false,
        });
    }
    let failed = outcomes.iter().filter(|o| !o.ok).count();
    eprintln!("{} passed, {failed} failed", outcomes.len() - failed);
    write_json(json.as_deref(), &report(&outcomes, true))?;
    Ok(failed == 0)
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
            let (a, b) = (parity::random(n * n, 1, 1.0), parity::random(n * n, 2, 1.0));
            let rate = cuda.gemm_rate(&a, &b, n, if n == 8192 { 10 } else { 50 });
            eprintln!("{precision:?} inputs, {n}^3: {rate:.1} TFLOP/s");
            rates.insert(format!("{precision:?} {n}^3 TFLOP/s"), rate.into());
        }
    }
    write_json(
        json.as_deref(),
        &serde_json::json!({ "check": "gemm rate", "device": device, "note": "bf16 operands cast once, untimed", "rates": rates }),
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
            eprintln!("{}", compile::versions());
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
        "compare-loss" => compare_loss(args)?,
        "summary" => summary(args)?,
        other => bail!("unknown command {other:?} (probe, reference, parity, gemm, attention, compare-loss, summary)"),
    };
    if !ok {
        std::process::exit(1);
    }
    Ok(())
}

fn read_json(path: &str) -> Result<Value> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?;
    serde_json::from_str(&text).with_context(|| format!("parsing {path}"))
}

/// A number of a JSON result; `null` (how serde writes an infinite or NaN error) reads as infinite.
fn number(v: &Value, key: &str) -> Option<f64> {
    v.get(key).map(|x| x.as_f64().unwrap_or(f64::INFINITY))
}

/// vlmix's losses on CUDA (f32, bf16) against the CPU's on the same seed and batch: step 1 (before
/// any update, f32 within 1e-5) and step 50 (f32 within 1e-3; bf16 within 2 % of ln(vocab)).
fn compare_loss(args: Args) -> Result<bool> {
    let [cpu, f32, bf16, out] = args.rest.as_slice() else {
        bail!("usage: vlmix-cuda-check compare-loss CPU F32 BF16 OUT")
    };
    let (cpu, f32, bf16) = (read_json(cpu)?, read_json(f32)?, read_json(bf16)?);
    let scale = 8192f64.ln(); // the reference model's initial loss
    let mut result = serde_json::Map::new();
    let mut ok = true;
    for (step, key, f32_bound) in [("first", "first_loss", 1e-5), ("final", "final_loss", 1e-3)] {
        let [c, f, b] = [&cpu, &f32, &bf16].map(|v| number(v, key).unwrap_or(f64::INFINITY));
        let (f32_diff, bf16_of_scale) = ((f - c).abs(), (b - c).abs() / scale);
        ok &= f32_diff <= f32_bound && bf16_of_scale <= 0.02;
        result.insert(step.into(), json!({ "cpu": c, "cuda_f32": f, "cuda_bf16": b, "f32_abs_diff": f32_diff, "f32_bound": f32_bound, "bf16_diff_of_scale": bf16_of_scale }));
    }
    result.insert("ok".into(), ok.into());
    write_json(Some(Path::new(out)), &Value::Object(result))?;
    Ok(ok)
}

/// H200 SXM dense bf16 (datasheet, without sparsity): the second MFU denominator.
const DATASHEET_BF16_TFLOPS: f64 = 989.0;

/// One check's row of `summary.json` from a `checks.tsv` line: `name, status, seconds, detail`,
/// where status is an exit code (detail: the result file, may be empty) or `not run` / `pending`
/// (detail: why). A result that cannot be read is noted in the row, never a missing summary.
fn summary_row(line: &str) -> Value {
    let mut cols = line.splitn(4, '\t');
    let (name, status, seconds, detail) =
        (cols.next().unwrap_or(""), cols.next().unwrap_or(""), cols.next().unwrap_or("0"), cols.next().unwrap_or(""));
    let mut row = json!({ "name": name, "seconds": seconds.parse::<u64>().unwrap_or(0) });
    let Ok(code) = status.parse::<i32>() else {
        row["status"] = status.into();
        row["why"] = detail.into();
        return row;
    };
    row["status"] = if code == 0 { "ok" } else { "failed" }.into();
    row["exit_code"] = code.into();
    if code == 124 || code == 137 {
        row["why"] = "ran past its share of the deadline".into();
    }
    if detail.is_empty() {
        return row;
    }
    match read_json(detail) {
        Ok(mut data) => {
            if let Some(outcomes) = data.get_mut("outcomes").map(Value::take) {
                // Keep the failures and the worst output, not every line.
                let outcomes = outcomes.as_array().cloned().unwrap_or_default();
                let ratio = |o: &Value| {
                    number(o, "error").unwrap_or(f64::INFINITY)
                        / number(o, "tolerance").unwrap_or(1.0).max(f64::MIN_POSITIVE)
                };
                data["worst"] = outcomes.iter().max_by(|a, b| ratio(a).total_cmp(&ratio(b))).cloned().into();
                data["failures"] = outcomes.iter().filter(|o| o["ok"] != true).cloned().collect();
                data.as_object_mut().map(|m| m.remove("outcomes"));
            }
            if let Some(gflops) = data.get("gflops").and_then(Value::as_f64) {
                data["mfu_datasheet"] = (gflops / 1e3 / DATASHEET_BF16_TFLOPS).into();
            }
            row["result"] = data;
        }
        Err(e) => row["result_error"] = format!("{e:#}").into(),
    }
    row
}

fn summary(args: Args) -> Result<bool> {
    let [checks, machine, out] = args.rest.as_slice() else {
        bail!("usage: vlmix-cuda-check summary CHECKS.tsv MACHINE OUT")
    };
    let text = std::fs::read_to_string(checks).unwrap_or_default();
    let rows: Vec<Value> = text.lines().filter(|l| !l.trim().is_empty()).map(summary_row).collect();
    let ok_result = |name: &str| rows.iter().find(|r| r["name"] == name && r["status"] == "ok").map(|r| &r["result"]);
    let ratio = |a: Option<&Value>, b: Option<&Value>, key: &str| -> Value {
        match (a.and_then(|a| a[key].as_f64()), b.and_then(|b| b[key].as_f64())) {
            (Some(a), Some(b)) if b > 0.0 => (a / b).into(),
            _ => Value::Null,
        }
    };
    let (vl79, vl1b) = (ok_result("vlmix 79m"), ok_result("vlmix 1b"));
    let (eager79, compile79, eager1b) =
        (ok_result("pytorch 79m-eager"), ok_result("pytorch 79m-compile"), ok_result("pytorch 1b-eager"));
    // The issue's bar, reported (a missed target is not a failed check).
    let bar = json!({
        "79m tokens/s vs pytorch eager (>= 1.0)": ratio(vl79, eager79, "tokens_per_s"),
        "79m tokens/s vs torch.compile (aim >= 1.0)": ratio(vl79, compile79, "tokens_per_s"),
        "1b MFU vs datasheet (>= 0.40)": vl1b.and_then(|r| r["gflops"].as_f64()).map(|g| g / 1e3 / DATASHEET_BF16_TFLOPS),
        "79m peak memory vs pytorch (<= 1.0)": ratio(vl79, eager79, "peak_gpu_mb"),
        "1b peak memory vs pytorch (<= 1.0)": ratio(vl1b, eager1b, "peak_gpu_mb"),
    });
    let mut counts: HashMap<String, usize> = HashMap::new();
    for r in &rows {
        *counts.entry(r["status"].as_str().unwrap_or("").to_string()).or_default() += 1;
    }
    let count = |s: &str| counts.get(s).copied().unwrap_or(0);
    let machine: Vec<String> = std::fs::read_to_string(machine).unwrap_or_default().lines().map(String::from).collect();
    let summary = json!({
        "machine": machine,
        "bar": bar,
        "datasheet_bf16_tflops": DATASHEET_BF16_TFLOPS,
        "passed": count("ok"),
        "failed": count("failed"),
        "not_run": count("not run"),
        "pending": count("pending"),
        "checks": rows,
    });
    std::fs::write(out, serde_json::to_string_pretty(&summary)? + "\n").with_context(|| format!("writing {out}"))?;
    for r in &rows {
        let why = r["why"].as_str().map(|w| format!(": {w}")).unwrap_or_default();
        eprintln!(
            "{:8} {} ({} s){why}",
            r["status"].as_str().unwrap_or(""),
            r["name"].as_str().unwrap_or(""),
            r["seconds"]
        );
    }
    eprintln!(
        "gpu-check: {} passed, {} failed, {} not run, {} pending; {out}",
        count("ok"),
        count("failed"),
        count("not run"),
        count("pending")
    );
    Ok(count("failed") == 0)
}
