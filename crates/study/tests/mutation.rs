//! Issue 26: the study TOML reader (`StudyConfig::load`: parse, then validate) given thousands of
//! seeded damaged configs ends in `Ok` or a clean `Err`: no panic, no allocation over the cap.

use serde_json::Value;
use vlmix_mutation::{byte_mutants, check, json_mutants, scratch_root, CappedAlloc, Mutant};
use vlmix_study::config::StudyConfig;

/// The config is 1 KiB: a reader asking for more trusted a declared size.
#[global_allocator]
static ALLOC: CappedAlloc = CappedAlloc { cap: 64 << 20 };

const PER_READER: usize = 1000;

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

    let tally = check("study TOML (structure)", &toml_mutants(BASE, 111, PER_READER), load);
    assert!(tally.err > 0, "damaged configs must be refused");
    let text = BASE.as_bytes();
    let boundaries: Vec<usize> =
        text.iter().enumerate().filter(|(_, b)| b"\n=[]{},\"".contains(b)).map(|(i, _)| i).collect();
    let tally = check("study TOML (bytes)", &byte_mutants(text, &boundaries, 112, PER_READER), load);
    assert!(tally.err > 0, "damaged configs must be refused");
}
