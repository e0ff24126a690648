//! Helpers shared by the study tests.

use std::path::Path;

/// Scores of every row of a run's `results.json`, without timings (which differ between runs by
/// nature): what two runs of one study must agree on.
pub fn scores(run: &Path) -> Vec<serde_json::Value> {
    let table: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run.join("results.json")).expect("results.json")).unwrap();
    table["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            serde_json::json!([
                r["run_id"],
                r["tasks"],
                r["vision_stable_score"],
                r["text_stable_score"],
                r["bits_per_byte"]
            ])
        })
        .collect()
}
