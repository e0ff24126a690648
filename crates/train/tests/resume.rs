//! A run killed mid-way and resumed ends bit-for-bit where an uninterrupted run ends.

use anyhow::{bail, Result};
use vlmix_engine::adamw::{AdamW, AdamWConfig};
use vlmix_engine::params::ParamStore;
use vlmix_models::lm::{Lm, LmConfig};
use vlmix_train::metrics;
use vlmix_train::schedule::{Schedule, WarmupCosine};
use vlmix_train::text_model::{TextModel, TokenBatch};
use vlmix_train::trainer::{train, BatchSource, LoopConfig};

/// Deterministic pseudo-text whose position is its cursor; can be told to "crash" at a batch.
struct Counting {
    next: u64,
    crash_at: Option<u64>,
    vocab: u32,
}

impl BatchSource for Counting {
    type Batch = TokenBatch;

    fn next_batch(&mut self) -> Result<TokenBatch> {
        if Some(self.next) == self.crash_at {
            bail!("simulated kill at batch {}", self.next);
        }
        let (batch, seq) = (2, 16);
        let stream: Vec<u32> = (0..batch * seq + 1)
            .map(|i| ((self.next as usize * 31 + i * 7 + i * i) % self.vocab as usize) as u32)
            .collect();
        self.next += 1;
        Ok(TokenBatch {
            batch,
            seq,
            inputs: stream[..batch * seq].to_vec(),
            targets: stream[1..].to_vec(),
            loss_mask: vec![1.0; batch * seq],
        })
    }

    fn token_counts(&self, b: &TokenBatch) -> (u64, u64) {
        (0, (b.batch * b.seq) as u64)
    }

    fn cursor(&self) -> serde_json::Value {
        serde_json::json!(self.next)
    }

    fn restore(&mut self, cursor: &serde_json::Value) -> Result<()> {
        self.next = cursor.as_u64().ok_or_else(|| anyhow::anyhow!("bad cursor {cursor}"))?;
        Ok(())
    }
}

fn model() -> (TextModel, AdamW) {
    let config = LmConfig::preset("tiny").unwrap();
    let mut params = ParamStore::new(vlmix_engine::Cpu::new().unwrap());
    let lm = Lm::new(config, &mut params, 7).unwrap();
    let opt = AdamW::new(AdamWConfig::default(), &params);
    (TextModel { lm, params, micro_batch: 2 }, opt)
}

fn loop_config() -> LoopConfig {
    LoopConfig {
        schedule: Schedule::WarmupCosine(WarmupCosine { peak: 3e-3, floor: 3e-5, warmup_steps: 2, total_steps: 12 }),
        clip_norm: 1.0,
        keep_steps: vec![6, 12],
        save_every: 4,
        stop_step: None,
    }
}

fn run(dir: &std::path::Path, crash_at: Option<u64>) -> Result<(TextModel, vlmix_train::trainer::LoopOutcome)> {
    let (mut m, mut opt) = model();
    let mut source = Counting { next: 0, crash_at, vocab: m.lm.config().vocab as u32 };
    let outcome = train(&mut m, &mut opt, &mut source, &loop_config(), dir, &mut |_, _, _| {})?;
    Ok((m, outcome))
}

#[test]
fn killed_and_resumed_equals_uninterrupted() {
    let straight = tempfile::tempdir().unwrap();
    let (reference, ref_outcome) = run(straight.path(), None).unwrap();

    let resumed = tempfile::tempdir().unwrap();
    let err = run(resumed.path(), Some(10)).err().expect("the first attempt crashes");
    assert!(err.to_string().contains("simulated kill"));
    let (model, outcome) = run(resumed.path(), None).unwrap();

    assert_eq!(outcome.steps, 12);
    assert_eq!(outcome.tokens, ref_outcome.tokens, "token counters survive the resume");
    for id in reference.params.ids() {
        assert_eq!(reference.params.value(id), model.params.value(id), "{} differs", reference.params.info(id).name);
    }
    let a = metrics::read(&straight.path().join("metrics.jsonl")).unwrap();
    let b = metrics::read(&resumed.path().join("metrics.jsonl")).unwrap();
    assert_eq!(a.len(), 12);
    let losses = |m: &[metrics::StepMetrics]| m.iter().map(|x| (x.step, x.loss, x.lr)).collect::<Vec<_>>();
    assert_eq!(losses(&a), losses(&b), "the metrics log reads as one uninterrupted run");
    let kept: Vec<u64> = outcome.kept.iter().map(|k| k.0).collect();
    assert_eq!(kept, vec![6, 12], "kept checkpoints survive pruning");
    let dirs = std::fs::read_dir(resumed.path().join("checkpoints"))
        .unwrap()
        .filter(|e| e.as_ref().unwrap().path().is_dir())
        .count();
    assert_eq!(dirs, 2, "rolling checkpoints are pruned");
}

#[test]
fn a_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let (mut m, mut opt) = model();
    let mut source = Counting { next: 0, crash_at: None, vocab: m.lm.config().vocab as u32 };
    let mut config = loop_config();
    config.schedule = Schedule::WarmupCosine(WarmupCosine { peak: 3e-3, floor: 3e-5, warmup_steps: 2, total_steps: 4 });
    train(&mut m, &mut opt, &mut source, &config, dir.path(), &mut |_, _, _| {}).unwrap();
    let saved = std::fs::read(dir.path().join("checkpoints/step-00000004/model.safetensors")).unwrap();

    // Poison a weight: the next loss is NaN.
    let id = m.params.ids().next().unwrap();
    m.params.value_mut(id).fill(f32::NAN);
    config.schedule = Schedule::WarmupCosine(WarmupCosine { peak: 3e-3, floor: 3e-5, warmup_steps: 2, total_steps: 8 });
    let fresh = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(fresh.path().join("checkpoints")).unwrap();
    let err = train(&mut m, &mut opt, &mut source, &config, fresh.path(), &mut |_, _, _| {}).unwrap_err();
    assert!(format!("{err:#}").to_lowercase().contains("loss"), "{err:#}");
    assert!(
        std::fs::read_dir(fresh.path().join("checkpoints")).unwrap().next().is_none(),
        "no checkpoint written after NaN"
    );
    assert_eq!(std::fs::read(dir.path().join("checkpoints/step-00000004/model.safetensors")).unwrap(), saved);
}

#[test]
fn stopping_early_keeps_the_full_runs_models() {
    let full = tempfile::tempdir().unwrap();
    run(full.path(), None).unwrap();

    let stopped = tempfile::tempdir().unwrap();
    let (mut m, mut opt) = model();
    let mut source = Counting { next: 0, crash_at: None, vocab: m.lm.config().vocab as u32 };
    let config = LoopConfig { stop_step: Some(6), ..loop_config() };
    let outcome =
        train(&mut m, &mut opt, &mut source, &config, stopped.path(), &mut |_, total, _| assert_eq!(total, 6)).unwrap();
    assert_eq!(outcome.steps, 6);
    assert_eq!(outcome.kept.iter().map(|k| k.0).collect::<Vec<_>>(), vec![6]);
    let weights =
        |dir: &std::path::Path| std::fs::read(dir.join("checkpoints/step-00000006/model.safetensors")).unwrap();
    assert_eq!(
        weights(full.path()),
        weights(stopped.path()),
        "the LR follows the whole schedule, so step 6 is the same model"
    );
}

#[test]
fn a_checkpoint_whose_counters_cannot_be_read_is_never_resumed_with_wrong_totals() {
    let (reference, ref_outcome) = run(tempfile::tempdir().unwrap().path(), None).unwrap();
    let dir = tempfile::tempdir().unwrap();
    run(dir.path(), Some(5)).err().expect("the first attempt crashes");
    let state = dir.path().join("checkpoints/step-00000004/state.json");
    let mut json: serde_json::Value = serde_json::from_slice(&std::fs::read(&state).unwrap()).unwrap();
    json["counters"] = serde_json::json!({ "seed": 7 });
    std::fs::write(&state, serde_json::to_vec(&json).unwrap()).unwrap();
    // The only checkpoint is set aside (the model untouched) and the run starts from the beginning.
    let (model, outcome) = run(dir.path(), None).unwrap();
    assert!(dir.path().join("checkpoints/damaged-step-00000004").is_dir());
    assert_eq!((outcome.steps, outcome.tokens), (12, ref_outcome.tokens));
    for id in reference.params.ids() {
        assert_eq!(reference.params.value(id), model.params.value(id));
    }
}

#[test]
fn checkpoints_written_before_the_counters_rename_still_resume() {
    let dir = tempfile::tempdir().unwrap();
    run(dir.path(), Some(5)).err().expect("the first attempt crashes");
    let state = dir.path().join("checkpoints/step-00000004/state.json");
    let text = std::fs::read_to_string(&state).unwrap().replace("\"counters\"", "\"rng\"");
    std::fs::write(&state, text).unwrap();
    let (_, outcome) = run(dir.path(), None).unwrap();
    let (_, straight) = run(tempfile::tempdir().unwrap().path(), None).unwrap();
    assert_eq!(outcome.tokens, straight.tokens);
}

#[test]
fn a_damaged_checkpoint_is_set_aside_and_the_run_resumes_from_the_one_before() {
    let straight = tempfile::tempdir().unwrap();
    let (reference, _) = run(straight.path(), None).unwrap();
    let reference_log = metrics::read(&straight.path().join("metrics.jsonl")).unwrap();
    let cut = |path: std::path::PathBuf| {
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    };
    for (what, file) in [("a tensor cut short", "model.safetensors"), ("a truncated state.json", "state.json")] {
        let dir = tempfile::tempdir().unwrap();
        run(dir.path(), Some(10)).err().expect("the first attempt crashes");
        // Checkpoints 6 (kept) and 8 (latest) remain; damage the latest and a middle metrics line.
        cut(dir.path().join("checkpoints/step-00000008").join(file));
        let log = dir.path().join("metrics.jsonl");
        let text = std::fs::read_to_string(&log).unwrap();
        let mut lines: Vec<&str> = text.lines().collect();
        lines[2] = "{\"step\": 2, \"tok";
        std::fs::write(&log, lines.join("\n") + "\n").unwrap();

        let (model, outcome) = run(dir.path(), None).unwrap_or_else(|e| panic!("{what}: {e:#}"));
        assert_eq!(outcome.steps, 12, "{what}");
        for id in reference.params.ids() {
            assert_eq!(
                reference.params.value(id),
                model.params.value(id),
                "{what}: {} differs",
                reference.params.info(id).name
            );
        }
        assert!(dir.path().join("checkpoints/damaged-step-00000008").is_dir(), "{what}: set aside for a look");
        let resumed_log = metrics::read(&log).unwrap();
        assert_eq!(resumed_log.len(), 11, "{what}: only the damaged line's point is lost");
        for m in &resumed_log {
            let r = &reference_log[m.step as usize];
            assert_eq!((m.step, m.loss), (r.step, r.loss), "{what}");
        }
    }
}
