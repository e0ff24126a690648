//! Checkpoint resume is exact: 10 steps straight give bit-for-bit the same weights and optimizer
//! moments as 5 steps, a checkpoint, a *new process* that loads it, and 5 more steps.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::json;
use std::path::{Path, PathBuf};
use vlmix_engine::adamw::{AdamW, AdamWConfig};
use vlmix_engine::checkpoint::{latest_checkpoint, load_checkpoint, save_checkpoint, TrainState};
use vlmix_engine::grad_clip::clip_grad_norm;
use vlmix_engine::nonfinite::ensure_finite;
use vlmix_engine::params::ParamStore;
use vlmix_models::lm::{Lm, LmConfig, LmInput};

const BATCH: usize = 2;
const SEQ: usize = 32;
const CHILD_ENV: &str = "VLMIX_LM_RESUME_CHILD_ROOT";

struct Run {
    lm: Lm,
    params: ParamStore,
    opt: AdamW,
}

fn new_run(seed: u64) -> Run {
    let mut params = ParamStore::new(vlmix_engine::Cpu::new().unwrap());
    let lm = Lm::new(LmConfig::preset("tiny").unwrap(), &mut params, seed).unwrap();
    let opt = AdamW::new(AdamWConfig::default(), &params);
    Run { lm, params, opt }
}

/// Warmup then decay, a function of the step alone (its state is the step).
fn lr_at(step: u64) -> f64 {
    3e-3 * ((step + 1) as f64 / 3.0).min(1.0) * 0.9f64.powi(step as i32)
}

/// The data stream: batch `cursor` is drawn from a generator seeded by it.
fn batch_at(cursor: u64, vocab: usize) -> (Vec<u32>, Vec<u32>) {
    let mut rng = ChaCha8Rng::seed_from_u64(1000 + cursor);
    let seq: Vec<u32> = (0..BATCH * (SEQ + 1)).map(|_| rng.gen_range(0..vocab as u32)).collect();
    let rows = seq.chunks(SEQ + 1);
    let inputs = rows.clone().flat_map(|r| r[..SEQ].to_vec()).collect();
    let targets = rows.flat_map(|r| r[1..].to_vec()).collect();
    (inputs, targets)
}

fn train(run: &mut Run, steps: std::ops::Range<u64>) {
    let vocab = run.lm.config().vocab;
    for step in steps {
        let (inputs, targets) = batch_at(step, vocab);
        run.params.zero_grad();
        let stats = run
            .lm
            .forward_backward(
                &mut run.params,
                &LmInput::tokens(BATCH, SEQ, &inputs),
                &targets,
                &[1.0; BATCH * SEQ],
                1.0,
                None,
            )
            .unwrap();
        ensure_finite("loss", stats.loss, step).unwrap();
        clip_grad_norm(&mut run.params, 1.0);
        run.opt.step(&mut run.params, lr_at(step));
    }
}

fn state(step: u64) -> TrainState {
    TrainState {
        step,
        schedule: json!({"kind": "warmup_exp_decay", "lr": lr_at(step)}),
        counters: json!({"tokens": step * (BATCH * SEQ) as u64}),
        data_cursor: json!(step),
    }
}

/// Child process: a model with different initial weights, restored from the checkpoint.
#[test]
fn resume_child() {
    let Some(root) = std::env::var_os(CHILD_ENV) else { return };
    let root = PathBuf::from(root);
    let mut run = new_run(999);
    let dir = latest_checkpoint(&root).unwrap().expect("parent wrote a checkpoint");
    let s = load_checkpoint(&dir, &mut run.params, &mut run.opt).unwrap();
    let cursor = s.data_cursor.as_u64().unwrap();
    assert_eq!(cursor, s.step);
    train(&mut run, cursor..10);
    save_checkpoint(&root, &state(10), &run.params, &run.opt).unwrap();
}

fn bits(x: &[f32]) -> Vec<u32> {
    x.iter().map(|v| v.to_bits()).collect()
}

fn scratch(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("vlmix-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn run_child(root: &Path) {
    let status = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "resume_child", "--test-threads=1"])
        .env(CHILD_ENV, root)
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "child process failed: {status}");
}

#[test]
fn ten_steps_equal_five_then_resume_in_a_new_process_for_five() {
    let mut straight = new_run(7);
    train(&mut straight, 0..10);

    let root = scratch("lm-resume");
    let mut first = new_run(7);
    train(&mut first, 0..5);
    save_checkpoint(&root, &state(5), &first.params, &first.opt).unwrap();
    run_child(&root);

    let mut resumed = new_run(123);
    let dir = latest_checkpoint(&root).unwrap().unwrap();
    assert!(dir.ends_with("step-00000010"), "{}", dir.display());
    let s = load_checkpoint(&dir, &mut resumed.params, &mut resumed.opt).unwrap();
    assert_eq!(s, state(10));
    assert_eq!(resumed.opt.steps(), straight.opt.steps());
    for id in straight.params.ids() {
        let name = &straight.params.info(id).name;
        assert!(bits(resumed.params.value(id)) == bits(straight.params.value(id)), "{name}: weights differ");
        assert!(bits(resumed.opt.exp_avg(id)) == bits(straight.opt.exp_avg(id)), "{name}: exp_avg differs");
        assert!(bits(resumed.opt.exp_avg_sq(id)) == bits(straight.opt.exp_avg_sq(id)), "{name}: exp_avg_sq differs");
    }
    std::fs::remove_dir_all(root).unwrap();
}
