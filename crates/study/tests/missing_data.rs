//! A machine whose prepared data lacks a source (its registry package could not be had): a config
//! naming one of its tasks stops before anything is trained or written, saying which task, which
//! source, why and what to do; `--without-missing-tasks` leaves such tasks out and records them.
use std::path::{Path, PathBuf};

use vlmix_data::provenance::{DataProvenance, MissingSource};
use vlmix_study::config::StudyConfig;
use vlmix_study::evaluation::{leave_out_missing_tasks, task_files};
use vlmix_study::run::{run, RunOptions};

fn smoke() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/study/smoke.toml")
}

/// A prepared folder with every smoke task but fashion_what, whose source is recorded as missing.
fn prepared_without_fashion(dir: &Path) -> vlmix_data::DataLayout {
    let layout = vlmix_data::DataLayout::new(dir.join("home"), dir.join("prepared"));
    for (task_dir, task) in [(layout.eval_vl_dir(), "emoji_category"), (layout.eval_text_dir(), "arc_easy")] {
        std::fs::create_dir_all(&task_dir).unwrap();
        std::fs::write(task_dir.join(format!("{task}.jsonl")), "").unwrap();
    }
    let provenance = DataProvenance {
        sources: Vec::new(),
        missing: vec![MissingSource {
            package: "fashion-mnist".into(),
            reason: "no candidate of fashion-mnist could be had: apt dataset-fashion-mnist=9: not found".into(),
            corpus_parts: vec!["image corpus: fashion_mnist".into()],
            tasks: vec!["fashion_what".into(), "pope_fashion".into()],
        }],
    };
    let manifest = serde_json::json!({ "provenance": provenance });
    std::fs::write(layout.manifest(), manifest.to_string()).unwrap();
    layout
}

#[test]
fn a_config_naming_a_lost_task_stops_before_training_with_the_source_and_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let layout = prepared_without_fashion(dir.path());
    let out = dir.path().join("run");
    let options = RunOptions {
        out: out.clone(),
        data: Some(layout.prepared.clone()),
        dry_run: false,
        quiet: true,
        without_missing_tasks: false,
    };
    let err = format!("{:#}", run(&smoke(), &options).unwrap_err());
    for needed in [
        "eval.vision_tasks[0]",
        "fashion_what",
        "fashion-mnist",
        "not found",
        "scripts/fetch-data.sh fashion-mnist",
        "--without-missing-tasks",
    ] {
        assert!(err.contains(needed), "{needed:?} missing from: {err}");
    }
    assert!(!out.exists(), "nothing may be written before the config is known to run");
}

#[test]
fn without_missing_tasks_leaves_them_out_and_records_why() {
    let dir = tempfile::tempdir().unwrap();
    let layout = prepared_without_fashion(dir.path());
    let mut config = StudyConfig::load(&smoke()).unwrap();
    leave_out_missing_tasks(&mut config, &layout).unwrap();
    assert_eq!(config.eval.vision_tasks, ["emoji_category"]);
    assert_eq!(config.eval.text_tasks, ["arc_easy"]);
    assert_eq!(config.eval.left_out.len(), 1);
    assert_eq!(
        (config.eval.left_out[0].task.as_str(), config.eval.left_out[0].package.as_str()),
        ("fashion_what", "fashion-mnist")
    );
    assert_eq!(task_files(&config, &layout, true).unwrap().len(), 2);
}
