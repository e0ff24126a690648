//! `vlmix bench score --json` prints one JSON line with both scoring methods, and they agree: the
//! fields `scripts/bench.sh score` reads (timings are not checked: they depend on the machine).

use std::process::Command;

#[test]
fn bench_score_prints_both_methods_as_json() {
    let out = Command::new(env!("CARGO_BIN_EXE_vlmix"))
        .args(["bench", "score", "--model", "tiny", "--n-heads", "2", "--seq-len", "64", "--json"])
        .args(["--items", "3", "--prefix", "8", "--choices", "4", "--choice-len", "3", "--threads", "1"])
        .output()
        .expect("vlmix runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON line");
    assert_eq!(report["engine"], "vlmix");
    // Whole rows: 12 rows of 8 + 2 positions; prefix cache: 3 prompts of 8, then 12 rows of 2.
    assert_eq!(report["full"]["positions"], 120);
    assert_eq!(report["cached"]["positions"], 3 * 8 + 12 * 2);
    for method in ["full", "cached"] {
        assert!(report[method]["items_per_s"].as_f64().is_some_and(|v| v > 0.0), "{report}");
    }
    let diff = report["max_score_diff"].as_f64().expect("max_score_diff");
    assert!(diff < 1e-3, "the methods disagree by {diff}");
}
