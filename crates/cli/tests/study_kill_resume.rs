//! The bar for resumability: a `smoke` study killed with SIGKILL inside pre-training, inside a
//! cooldown, inside a fine-tune and inside an evaluation, then rerun, completes with the same results
//! as an uninterrupted run of the same seed.
//!
//! Kills land by progress, never by time: the test watches the run directory (a node's live
//! `metrics.jsonl`, an evaluation's directory) and kills the process once the node it targets has
//! started and before it has finished, so the test means the same on a cold or warm feature cache and
//! on a fast or slow machine.
//!
//! Needs the prepared data (`scripts/test.sh` fetches and prepares it before `cargo test`).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const CONFIG: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../configs/study/smoke.toml");

fn study(out: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_vlmix"));
    cmd.args(["study", CONFIG, "--quiet", "--out"]).arg(out).stdout(Stdio::null()).stderr(Stdio::null());
    cmd
}

fn run_to_end(out: &Path) {
    let output = study(out).stderr(Stdio::piped()).output().expect("vlmix runs");
    assert!(output.status.success(), "study failed: {}", String::from_utf8_lossy(&output.stderr));
}

/// Where a kill lands: the first node whose id starts with `prefix`, once it has logged `min_steps`
/// training steps (0: once its directory exists, for evaluations, which log no steps).
struct KillPoint {
    prefix: &'static str,
    min_steps: usize,
}

/// Smoke's stages are 195 pre-training, 52 cooldown and 16 fine-tuning steps, so each point lies well
/// inside its node; an evaluation loads a model, an encoder and its tasks before it scores anything.
const KILL_POINTS: [KillPoint; 4] = [
    KillPoint { prefix: "pretrain", min_steps: 40 },
    KillPoint { prefix: "cooldown-", min_steps: 10 },
    KillPoint { prefix: "finetune-", min_steps: 3 },
    KillPoint { prefix: "eval-", min_steps: 0 },
];

/// The first unfinished node directory matching `point` that has reached it.
fn reached(run: &Path, point: &KillPoint) -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> =
        std::fs::read_dir(run.join("nodes")).ok()?.filter_map(|e| Some(e.ok()?.path())).collect();
    dirs.sort();
    dirs.into_iter().find(|dir| {
        let name = dir.file_name().unwrap().to_string_lossy();
        if !name.starts_with(point.prefix) || dir.join("done.json").exists() {
            return false;
        }
        let steps = std::fs::read_to_string(dir.join("metrics.jsonl")).map(|t| t.lines().count()).unwrap_or(0);
        steps >= point.min_steps
    })
}

/// Starts the study and SIGKILLs it as soon as `point` is reached; returns the node it was inside.
fn kill_at(run: &Path, point: &KillPoint) -> PathBuf {
    let mut child: Child = study(run).spawn().expect("vlmix starts");
    loop {
        if let Some(node) = reached(run, point) {
            child.kill().unwrap();
            child.wait().unwrap();
            return node;
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!(
                "the study exited ({status}) before reaching a {}* node with {} steps",
                point.prefix, point.min_steps
            );
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[test]
fn killed_smoke_study_resumes_to_identical_results() {
    let home = vlmix_data::DataLayout::from_env(None).unwrap().home;
    assert!(
        home.join("prepared/manifest.json").is_file(),
        "prepared data missing under {}: run scripts/test.sh (it runs scripts/fetch-data.sh and `vlmix data prepare`)",
        home.display()
    );
    let tmp = tempfile::tempdir().unwrap();
    let (straight, killed) = (tmp.path().join("straight"), tmp.path().join("killed"));
    run_to_end(&straight);

    for point in &KILL_POINTS {
        let node = kill_at(&killed, point);
        assert!(!node.join("done.json").exists(), "the kill landed inside {}", node.display());
    }
    assert!(!killed.join("results.json").exists(), "four kills left work to resume");
    run_to_end(&killed);

    let (a, b) = (common::scores(&straight), common::scores(&killed));
    assert!(!a.is_empty(), "the study produced result rows");
    assert_eq!(a, b, "a killed and resumed study must reproduce the uninterrupted results");
    assert!(killed.join("report/index.html").is_file());
}
