//! The Slurm executor against a real Slurm: the `smoke` study submitted to a one-node cluster on this
//! machine (`scripts/slurm-local.sh`, which this test starts and stops) gives the same scores as the
//! local executor, and so does a run whose pre-training job is killed with `scancel` mid-study and
//! which is then re-submitted.
//!
//! Nothing here depends on timing: the scancel lands once pre-training has logged enough steps (read
//! from its `metrics.jsonl`), and waiting ends when the run's results exist or when no job of the run
//! is left in the queue.
//!
//! Needs the prepared data (`scripts/test.sh` prepares it) and root or sudo to install and start
//! Slurm; without Slurm the test says so loudly and skips.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

const CONFIG: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../configs/study/smoke.toml");
const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../scripts/slurm-local.sh");

/// Stops the cluster when the test ends, unless it was up before the test.
struct Cluster {
    started: bool,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if self.started {
            let _ = Command::new(SCRIPT).arg("stop").status();
        }
    }
}

fn cluster() -> Option<Cluster> {
    let already = Command::new("sinfo")
        .args(["-h", "-o", "%T"])
        .output()
        .is_ok_and(|o| o.status.success() && String::from_utf8_lossy(&o.stdout).contains("idle"));
    if already {
        return Some(Cluster { started: false });
    }
    let out = Command::new(SCRIPT).arg("start").output().expect("running scripts/slurm-local.sh");
    if !out.status.success() {
        eprintln!(
            "\n!!!!!!!! SKIPPED study_slurm: a local Slurm could not be started ({})\n{}{}!!!!!!!!\n",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        return None;
    }
    Some(Cluster { started: true })
}

fn vlmix(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_vlmix")).args(args).stdin(Stdio::null()).output().expect("vlmix runs");
    assert!(out.status.success(), "vlmix {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

fn submit(run: &Path) -> String {
    vlmix(&["study", CONFIG, "--executor", "slurm", "--out", run.to_str().unwrap()])
}

/// `vlmix study status` rows as (node, state, job).
fn status(run: &Path) -> Vec<(String, String, String)> {
    vlmix(&["study", "status", run.to_str().unwrap()])
        .lines()
        .skip(1)
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            // A state may be two words ("not submitted").
            let (state, job) =
                if f[1] == "not" { ("not submitted".to_string(), f[3]) } else { (f[1].to_string(), f[2]) };
            (f[0].to_string(), state, job.to_string())
        })
        .collect()
}

const QUEUED: [&str; 4] = ["pending", "running", "configuring", "completing"];

/// Waits until the run's results job is done; fails as soon as no job of the run is left queued
/// while the results are missing, printing the status and the failed jobs' logs.
fn wait_for_results(run: &Path) {
    loop {
        let rows = status(run);
        if rows.iter().all(|r| r.1 == "done") {
            return;
        }
        if !rows.iter().any(|r| QUEUED.contains(&r.1.as_str())) {
            // The last job may have finished between two looks.
            let rows = status(run);
            if rows.iter().all(|r| r.1 == "done") {
                return;
            }
            let logs: String = rows
                .iter()
                .filter(|r| r.1 == "failed")
                .map(|r| {
                    let dir = if r.0 == "results" { run.join("slurm") } else { run.join("nodes").join(&r.0) };
                    format!(
                        "--- {}:\n{}\n",
                        r.0,
                        std::fs::read_to_string(dir.join(format!("slurm-{}.log", r.2))).unwrap_or_default()
                    )
                })
                .collect();
            panic!("the run stopped without results: {rows:?}\n{logs}");
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

fn job_of(run: &Path, node: &str) -> String {
    let book: serde_json::Value = serde_json::from_slice(&std::fs::read(run.join("slurm/jobs.json")).unwrap()).unwrap();
    book["jobs"][node]["job_id"].as_str().unwrap().to_string()
}

fn steps(dir: &Path) -> usize {
    std::fs::read_to_string(dir.join("metrics.jsonl")).map(|t| t.lines().count()).unwrap_or(0)
}

#[test]
fn smoke_study_on_slurm_equals_local_also_after_scancel() {
    let home = vlmix_data::DataLayout::from_env(None).unwrap().home;
    assert!(
        home.join("prepared/manifest.json").is_file(),
        "prepared data missing under {}: run scripts/test.sh",
        home.display()
    );
    let Some(_cluster) = cluster() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let (local, straight, killed) = (tmp.path().join("local"), tmp.path().join("slurm"), tmp.path().join("killed"));
    vlmix(&["study", CONFIG, "--quiet", "--out", local.to_str().unwrap()]);

    // Uninterrupted: every node one job, the results job last; a re-submission while jobs are queued
    // submits nothing.
    let first = submit(&straight);
    assert!(first.contains("submitted pretrain: job") && first.contains("results and report: job"), "{first}");
    let again = submit(&straight);
    assert!(!again.contains("submitted "), "a re-submission must leave queued and running jobs alone:\n{again}");
    wait_for_results(&straight);
    assert_eq!(
        common::scores(&local),
        common::scores(&straight),
        "the Slurm executor must reproduce the local results"
    );
    let pretrain_job = job_of(&straight, "pretrain");
    assert!(
        straight.join(format!("nodes/pretrain/slurm-{pretrain_job}.log")).is_file(),
        "each job logs into its node's directory"
    );
    assert!(straight.join("report/index.html").is_file());
    let done = submit(&straight);
    assert!(done.contains("every node is finished") && !done.contains("submitted "), "{done}");

    // Killed: scancel pre-training once it has logged 40 of its 195 steps; its dependants are
    // cancelled by Slurm; a re-submission retries it and finishes with the same results.
    submit(&killed);
    let pretrain = killed.join("nodes/pretrain");
    let job = job_of(&killed, "pretrain");
    while steps(&pretrain) < 40 {
        assert!(!pretrain.join("done.json").exists(), "pre-training finished before the test saw 40 steps");
        std::thread::sleep(Duration::from_millis(2));
    }
    assert!(Command::new("scancel").arg(&job).status().unwrap().success());
    assert!(!pretrain.join("done.json").exists(), "the scancel landed inside pre-training");
    // Slurm takes a moment to stop the job; until then a re-submission rightly sees it running.
    while status(&killed).iter().any(|r| r.0 == "pretrain" && QUEUED.contains(&r.1.as_str())) {
        std::thread::sleep(Duration::from_millis(100));
    }
    let states = status(&killed);
    assert!(states.iter().any(|r| r.0 == "pretrain" && r.1 == "cancelled"), "{states:?}");
    let retried = submit(&killed);
    assert!(retried.contains("submitted pretrain: job"), "the cancelled node is retried:\n{retried}");
    assert_ne!(job_of(&killed, "pretrain"), job);
    wait_for_results(&killed);
    assert_eq!(
        common::scores(&local),
        common::scores(&killed),
        "a scancelled and re-submitted study must reproduce the local results"
    );
    let book: serde_json::Value =
        serde_json::from_slice(&std::fs::read(killed.join("slurm/jobs.json")).unwrap()).unwrap();
    assert_eq!(
        book["jobs"]["pretrain"]["previous"][0].as_str(),
        Some(job.as_str()),
        "the run directory keeps the cancelled job's id"
    );
}
