//! README's bring-your-own-data example, end to end: `vlmix data make-example` writes DataComp-style
//! shards (one truncated), a LLaVA JSON (one conversation without its image), DCLM-style JSONL.zst
//! and VQAv2 / POPE eval files; `configs/study/byod.toml` trains and evaluates on them. The bad
//! records are named in the log and counted, never silently dropped.
//!
//! Needs the prepared data (`scripts/test.sh` prepares it before `cargo test`).

use std::path::Path;
use std::process::Command;

const CONFIG: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../configs/study/byod.toml");

fn vlmix(cwd: &Path, args: &[&str]) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_vlmix"))
        .args(args)
        .current_dir(cwd)
        .env("VLMIX_LOG", "warn")
        .output()
        .expect("vlmix runs");
    let log = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "vlmix {args:?} failed:\n{log}");
    log
}

#[test]
fn the_readme_example_trains_and_evaluates_on_user_files_naming_its_bad_records() {
    let tmp = tempfile::tempdir().unwrap();
    // The config's data paths are relative to the folder it is run from, as in the README.
    vlmix(tmp.path(), &["data", "make-example", "data/byod"]);
    let log = vlmix(tmp.path(), &["study", CONFIG, "--quiet", "--out", "run"]);
    assert!(log.contains("00004.tar"), "the truncated shard is named in the log:\n{log}");
    assert!(log.contains("byod-missing-image"), "the conversation without its image is named in the log:\n{log}");

    let run = tmp.path().join("run");
    let done: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run.join("nodes/image-corpus/done.json")).unwrap()).unwrap();
    let skipped = &done["outputs"]["skipped_records"];
    assert_eq!(skipped["captions"]["count"], 1, "{skipped}");
    assert_eq!(skipped["conversations"]["count"], 1, "{skipped}");
    assert!(skipped["captions"]["first"][0].as_str().unwrap().contains("00004.tar: member"), "{skipped}");

    let results: serde_json::Value = serde_json::from_slice(&std::fs::read(run.join("results.json")).unwrap()).unwrap();
    let tasks: Vec<String> = results["rows"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|r| r["tasks"].as_array().cloned().unwrap_or_default())
        .filter_map(|t| t["task"].as_str().map(str::to_owned))
        .collect();
    for task in ["vqav2_example", "pope_example", "arc_easy"] {
        assert!(tasks.iter().any(|t| t == task), "{task} scored: {tasks:?}");
    }
    assert!(run.join("report/index.html").is_file());
    assert!(
        std::fs::read_dir(run.join("nodes/pretrain")).unwrap().any(|e| e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .starts_with("events.out.tfevents")),
        "TensorBoard events beside metrics.jsonl"
    );
}
