//! Issue 26: the study TOML reader (`StudyConfig::load`: parse, then validate) and the files of a
//! run directory the study reads back (`study.json`, a node's `done.json`, `metrics.jsonl` as resume
//! and the report read it) given thousands of seeded damaged files end in `Ok` or a clean `Err`: no
//! panic, no allocation over the cap.

use serde_json::Value;
use vlmix_mutation::{byte_mutants, check, json_mutants, scratch_root, CappedAlloc, Mutant};
use vlmix_study::config::StudyConfig;
use vlmix_study::executor::StudyDir;
use vlmix_study::plan::Plan;
use vlmix_study::report::TrainingCurve;
use vlmix_study::run::pinned;

/// The config is 1 KiB: a reader asking for more trusted a declared size.
#[global_allocator]
static ALLOC: CappedAlloc = CappedAlloc { cap: 64 << 20 };

/// Inputs per reader: 1,000 in the test suite, more under scripts/fuzz.sh.
fn per_reader() -> usize {
    vlmix_mutation::per_reader(1000)
}

const BASE: &str = include_str!("../../../configs/study/smoke.toml");

/// `count` structural mutants of the config's tables written back as TOML. Mutants TOML cannot
/// hold (a null, an integer over i64, a non-table root) are passed over: malformed text is the byte
/// mutants' part.
fn toml_mutants(base: &str, seed: u64, count: usize) -> Vec<Mutant> {
    let value: Value = toml::from_str(base).expect("the base config is TOML");
    let mutants: Vec<Mutant> = json_mutants(&value, seed, 4 * count)
        .into_iter()
        .filter_map(|m| {
            let text = toml::to_string(&serde_json::from_slice::<Value>(&m.bytes).ok()?).ok()?;
            Some(Mutant { bytes: text.into_bytes(), what: m.what })
        })
        .take(count)
        .collect();
    assert_eq!(mutants.len(), count, "too few structural mutants can be written as TOML");
    mutants
}

#[test]
fn study_toml_survives_mutation() {
    let dir = tempfile::Builder::new().prefix("vlmix-mutation-study").tempdir_in(scratch_root()).unwrap();
    let path = dir.path().join("study.toml");
    let load = |bytes: &[u8]| {
        std::fs::write(&path, bytes)?;
        let config = StudyConfig::load(&path)?;
        anyhow::Ok(config.points().len())
    };
    assert!(load(BASE.as_bytes()).unwrap() > 0, "the base config must load");

    let tally = check("study TOML (structure)", &toml_mutants(BASE, 111, per_reader()), load);
    assert!(tally.err > 0, "damaged configs must be refused");
    let text = BASE.as_bytes();
    let boundaries: Vec<usize> =
        text.iter().enumerate().filter(|(_, b)| b"\n=[]{},\"".contains(b)).map(|(i, _)| i).collect();
    let tally = check("study TOML (bytes)", &byte_mutants(text, &boundaries, 112, per_reader()), load);
    assert!(tally.err > 0, "damaged configs must be refused");
}

/// `study.json` as `vlmix study --report` and Slurm jobs read it back (`run::pinned`: parsed and
/// planned).
#[test]
fn pinned_study_json_survives_mutation() {
    let dir = tempfile::Builder::new().prefix("vlmix-mutation-pinned").tempdir_in(scratch_root()).unwrap();
    let config: StudyConfig = toml::from_str(BASE).unwrap();
    let base = serde_json::to_value(&config).unwrap();
    let read = |bytes: &[u8]| {
        std::fs::write(dir.path().join("study.json"), bytes)?;
        anyhow::Ok(pinned(dir.path())?.1.nodes.len())
    };
    assert!(read(&serde_json::to_vec(&base).unwrap()).unwrap() > 0, "the base record must plan");
    check("run study.json", &json_mutants(&base, 113, per_reader()), read);
}

/// Regression (found by the mutation test): `finetune.epochs` near `u32::MAX` passed validation and
/// made the plan list billions of nodes (an allocation abort); the plan now refuses it, naming it.
#[test]
fn a_huge_epoch_count_is_an_error_not_billions_of_nodes() {
    let mut config: StudyConfig = toml::from_str(BASE).unwrap();
    config.finetune.epochs = u32::MAX;
    config.validate().expect("validation has no upper bound on epochs");
    let err = format!("{:#}", Plan::build(&config).unwrap_err());
    assert!(err.contains("finetune.epochs = 4294967295") && err.contains("more than 100000"), "{err}");
}

/// A node's `done.json` of each stage kind, read as the executor does (a damaged one is set aside)
/// and then asked for the outputs its dependants use.
#[test]
fn done_records_survive_mutation() {
    let dir = tempfile::Builder::new().prefix("vlmix-mutation-done").tempdir_in(scratch_root()).unwrap();
    let study = StudyDir::open(dir.path()).unwrap();
    let node = study.node_dir("n");
    std::fs::create_dir_all(&node).unwrap();
    let outputs = [
        serde_json::json!({"stage": "pretrain", "checkpoints": {"0.5": "nodes/p/checkpoints/step-00000098", "1": "nodes/p/checkpoints/step-00000195"},
            "skipped_records": {"text": {"count": 0, "first": []}}, "steps": 195, "tokens": 199680,
            "validation_bpb": [{"bits_per_byte": 8.1, "fraction": 0.0}, {"bits_per_byte": 3.0, "fraction": 1.0}]}),
        serde_json::json!({"stage": "finetune", "epochs": {"1": "nodes/f/checkpoints/step-00000008", "2": "nodes/f/checkpoints/step-00000016"}, "tokens": 12288}),
        serde_json::json!({"stage": "eval", "bits_per_byte": 3.1, "validation_nats": [40.5, 38.25], "checkpoint": "nodes/f/checkpoints/step-00000008", "report": "nodes/e/eval.json",
            "skipped_records": {"eval": {"count": 0, "first": []}}, "text_stable_score": 0.05, "vision_stable_score": null}),
    ];
    let read = || {
        let Some(done) = study.done("n")? else { return anyhow::Ok(0) };
        let o = &done.outputs;
        let mut found = 0;
        if let Ok(p) = o.pretrain("n") {
            found += usize::from(p.checkpoints.at(0.5).is_some()) + usize::from(p.checkpoints.last().is_some());
        }
        if let Ok(f) = o.finetune("n") {
            found += usize::from(f.epoch("n", 2).is_ok());
        }
        found += usize::from(o.eval("n").is_ok() || o.cooldown("n").is_ok() || o.text_baseline("n").is_ok());
        Ok(found + usize::from(done.wall_s.is_finite()))
    };
    for (i, outputs) in outputs.into_iter().enumerate() {
        let base =
            serde_json::json!({"id": "n", "wall_s": 12.5, "finished_at": "2026-12-06T10:00:00Z", "outputs": outputs});
        std::fs::write(node.join("done.json"), base.to_string()).unwrap();
        assert!(read().unwrap() >= 2, "the base record must read back");
        let mut set_aside = 0;
        let name = ["pretrain", "finetune", "eval"][i];
        check(&format!("done.json ({name})"), &json_mutants(&base, 114 + i as u64, per_reader()), |bytes| {
            std::fs::write(node.join("done.json"), bytes)?;
            let found = read()?;
            set_aside += usize::from(std::fs::remove_file(node.join("done.json.damaged")).is_ok());
            anyhow::Ok(found)
        });
        assert!(set_aside > 0, "{name}: damaged records are set aside (their node reruns), not errors");
    }
}

/// `metrics.jsonl` through both of its readers: resume's (`metrics::read`: a torn last line is
/// skipped) and the report's curves.
#[test]
fn metrics_jsonl_survives_mutation() {
    let dir = tempfile::Builder::new().prefix("vlmix-mutation-metrics").tempdir_in(scratch_root()).unwrap();
    let path = dir.path().join("metrics.jsonl");
    let lines: Vec<String> = (0..6)
        .map(|s| {
            serde_json::json!({"step": s, "tokens": s * 4096, "loss": 3.5 / (s + 1) as f64, "lr": 1e-3, "achieved_image_fraction": 0.3,
                "tokens_per_s": 5120.5, "grad_norm": 0.75})
            .to_string()
        })
        .collect();
    let text = format!("{}\n", lines.join("\n"));
    let read = |bytes: &[u8]| {
        std::fs::write(&path, bytes)?;
        let resumed = vlmix_train::metrics::read(&path)?;
        let curve = TrainingCurve::load_jsonl("run", &path)?;
        anyhow::Ok((resumed.len(), curve.points.len()))
    };
    assert_eq!(read(text.as_bytes()).unwrap(), (6, 6), "the base file must read back");
    let base: Value = serde_json::from_str(&lines[2]).unwrap();
    let mut mutants: Vec<Mutant> = json_mutants(&base, 117, per_reader() / 2)
        .into_iter()
        .map(|m| {
            let line = String::from_utf8_lossy(&m.bytes).into_owned();
            let file = format!("{}\n{line}\n{}\n", lines[..2].join("\n"), lines[3..].join("\n"));
            Mutant { bytes: file.into_bytes(), what: format!("line 3: {}", m.what) }
        })
        .collect();
    let marks: Vec<usize> = text.bytes().enumerate().filter(|(_, b)| b"\n{}:,\"".contains(b)).map(|(i, _)| i).collect();
    mutants.extend(byte_mutants(text.as_bytes(), &marks, 118, per_reader() / 2));
    check("metrics.jsonl", &mutants, read);
}
