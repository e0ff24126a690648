//! The kernel parity harness that `vlmix-cuda-check parity` runs on a GPU, tested here as the CPU
//! engine against itself (every output must match) and through a reference file (a perturbed
//! output must fail, by name).

use std::collections::HashMap;

use vlmix_cuda_check::parity;
use vlmix_engine::Cpu;

/// Every Device method and the layers the harness must exercise, as output-name prefixes.
const KERNELS: [&str; 33] = [
    "fill",
    "copy",
    "upload_into",
    "add",
    "add_assign",
    "scale",
    "add_bias",
    "bias_backward",
    "sum_squares",
    "gather_rows",
    "scatter_rows",
    "zero_rows",
    "gemm NN",
    "gemm TT",
    "gemm strided alpha beta",
    "embedding_forward",
    "embedding_backward",
    "layernorm forward",
    "layernorm backward dx",
    "layernorm (no bias) backward dweight",
    "rmsnorm forward",
    "rmsnorm backward dx",
    "rope (causal",
    "rope inverse",
    "attention causal forward",
    "attention full backward dq",
    "swiglu backward",
    "gelu Tanh backward",
    "cross_entropy open_lm z-loss logits/dlogits",
    "adamw (decay) param",
    "layer attention backward q_norm",
    "layer swiglu backward w12",
    "layer lm head dweight",
];

fn cpu() -> Cpu {
    Cpu::new().expect("OpenBLAS must be installed for the engine tests")
}

#[test]
fn cpu_against_itself_passes_every_output_and_covers_every_kernel() {
    let outcomes = parity::run(&cpu(), &cpu(), |_| 1e-12);
    let failed: Vec<_> = outcomes.iter().filter(|o| !o.ok).map(|o| (&o.output, o.error)).collect();
    assert!(failed.is_empty(), "{failed:?}");
    for kernel in KERNELS {
        assert!(outcomes.iter().any(|o| o.output.starts_with(kernel) && o.len > 0), "no output for {kernel}");
    }
    let names: std::collections::HashSet<_> = outcomes.iter().map(|o| &o.output).collect();
    assert_eq!(names.len(), outcomes.len(), "output names must be unique (the reference file keys on them)");
}

#[test]
fn a_reference_file_round_trips_and_names_a_wrong_output() {
    let outputs = parity::outputs(&cpu());
    let dir = std::env::temp_dir().join(format!("vlmix-cuda-parity-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("reference.safetensors");
    parity::write_reference(&path, &outputs).unwrap();
    let reference: HashMap<String, Vec<f32>> = parity::read_reference(&path).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(reference.len(), outputs.len());

    let mut got = outputs.clone();
    let (name, values) = got.iter_mut().find(|(n, _)| n == "rmsnorm backward dx").unwrap();
    values[3] += 1e-3 * values.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let name = name.clone();
    got.push(("not in the reference".into(), vec![1.0]));
    let outcomes = parity::compare(&reference, got, |_| 1e-4);
    let failed: Vec<_> = outcomes.iter().filter(|o| !o.ok).map(|o| o.output.as_str()).collect();
    assert_eq!(failed, [name.as_str(), "not in the reference"]);
    let wrong = outcomes.iter().find(|o| o.output == name).unwrap();
    assert!((wrong.error - 1e-3).abs() < 1e-5, "{wrong:?}");
}
