//! The bar for resumability: a `smoke` study killed with SIGKILL at several points and rerun
//! completes, with the same results as an uninterrupted run of the same seed.
//!
//! Needs the prepared data (`scripts/test.sh` fetches and prepares it before `cargo test`).

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

const CONFIG: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../configs/study/smoke.toml");

fn study(out: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_vlmix"));
    cmd.args(["study", CONFIG, "--quiet", "--out"]).arg(out).stdout(Stdio::null()).stderr(Stdio::piped());
    cmd
}

fn run_to_end(out: &Path) {
    let output = study(out).output().expect("vlmix runs");
    assert!(output.status.success(), "study failed: {}", String::from_utf8_lossy(&output.stderr));
}

/// Scores of every row, without timings (which differ between runs by nature).
fn scores(out: &Path) -> Vec<serde_json::Value> {
    let table: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("results.json")).expect("results.json")).unwrap();
    table["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| serde_json::json!([r["run_id"], r["tasks"], r["vision_stable_score"], r["text_stable_score"], r["bits_per_byte"]]))
        .collect()
}

#[test]
fn killed_smoke_study_resumes_to_identical_results() {
    let home = std::env::var("VLMIX_HOME").map(std::path::PathBuf::from).unwrap_or_else(|_| Path::new(&std::env::var("HOME").unwrap()).join(".cache/vlmix"));
    assert!(home.join("prepared/manifest.json").is_file(), "prepared data missing under {}: run scripts/test.sh (it runs scripts/fetch-data.sh and `vlmix data prepare`)", home.display());
    let tmp = tempfile::tempdir().unwrap();
    let (straight, killed) = (tmp.path().join("straight"), tmp.path().join("killed"));
    let started = Instant::now();
    run_to_end(&straight);
    // Each attempt runs a fifth of the uninterrupted wall time before SIGKILL, so the four kills land
    // at about 1/5 .. 4/5 of the work (pre-training, cooldowns, fine-tunes, evals) on any machine.
    let slice = started.elapsed() / 5;
    for _ in 0..4 {
        let mut child = study(&killed).spawn().expect("vlmix starts");
        std::thread::sleep(slice);
        assert!(child.try_wait().unwrap().is_none(), "the study finished before it could be killed");
        child.kill().unwrap();
        child.wait().unwrap();
    }
    assert!(!killed.join("results.json").exists(), "four kills left work to resume");
    run_to_end(&killed);

    let (a, b) = (scores(&straight), scores(&killed));
    assert!(!a.is_empty(), "the study produced result rows");
    assert_eq!(a, b, "a killed and resumed study must reproduce the uninterrupted results");
    assert!(killed.join("report/index.html").is_file());
}
