//! A study can start from an open_lm checkpoint instead of its own text pre-training: the `smoke`
//! study with `[pretrain] from` set to a `vlmix import openlm` directory runs end to end, branches
//! its 100 % cooldown from the imported weights, has no pre-training node, and says so in the report.
//!
//! The open_lm checkpoint is written by `export_openlm` from an LM of the prepared tokenizer's
//! vocabulary (bias LayerNorm and post-embedding norm, so the open_lm-only variants train too), then
//! imported by the binary. Needs the prepared data (`scripts/test.sh` prepares it).

use std::path::Path;
use std::process::Command;
use vlmix_data::tokenizer::TextTokenizer;
use vlmix_data::DataLayout;
use vlmix_engine::params::ParamStore;
use vlmix_models::lm::openlm_io::export_openlm;
use vlmix_models::lm::{Lm, LmConfig, NormKind};

const SMOKE: &str = include_str!("../../../configs/study/smoke.toml");

fn vlmix(args: &[&std::ffi::OsStr]) -> std::process::Output {
    let output = Command::new(env!("CARGO_BIN_EXE_vlmix")).args(args).output().expect("vlmix runs");
    assert!(output.status.success(), "vlmix {args:?} failed: {}", String::from_utf8_lossy(&output.stderr));
    output
}

fn replaced(text: &str, from: &str, to: &str) -> String {
    assert!(text.contains(from), "smoke.toml no longer contains {from:?}");
    text.replacen(from, to, 1)
}

#[test]
fn smoke_study_from_an_imported_openlm_checkpoint() {
    let layout = DataLayout::from_env(None).unwrap();
    let vocab = TextTokenizer::load(&layout.tokenizer_json())
        .expect("prepared tokenizer (run scripts/prepare.sh)")
        .vocab_size();
    let tmp = tempfile::tempdir().unwrap();

    let mut config = LmConfig::preset("tiny").unwrap();
    (config.vocab, config.seq_len, config.norm, config.post_embed_norm) = (vocab, 96, NormKind::LayerNorm, true);
    let mut params = ParamStore::new(vlmix_engine::Cpu::new().unwrap());
    Lm::new(config.clone(), &mut params, 7).unwrap();
    let hf = tmp.path().join("open_lm");
    export_openlm(&config, &params, &hf).unwrap();
    let imported = tmp.path().join("imported");
    vlmix(&["import".as_ref(), "openlm".as_ref(), hf.as_os_str(), "--out".as_ref(), imported.as_os_str()]);

    let mut study = replaced(
        SMOKE,
        "checkpoint_fractions = [0.5, 1.0]",
        &format!("checkpoint_fractions = [1.0]\nfrom = {:?}", imported.display().to_string()),
    );
    study = replaced(&study, "base = { fraction = 0.5,", "base = { fraction = 1.0,");
    let config_path = tmp.path().join("smoke_from_openlm.toml");
    std::fs::write(&config_path, study).unwrap();
    let run = tmp.path().join("run");
    vlmix(&["study".as_ref(), config_path.as_os_str(), "--quiet".as_ref(), "--out".as_ref(), run.as_os_str()]);

    let nodes = run.join("nodes");
    assert!(!nodes.join("pretrain").exists(), "no text pre-training node");
    let cooldown = nodes.join("cooldown-at100-img030-inst000-seed0");
    let model = LmConfig::from_toml_file(&cooldown.join("model.toml")).unwrap();
    assert_eq!(
        (model.norm, model.post_embed_norm, model.vocab),
        (NormKind::LayerNorm, true, vocab),
        "the cooldown trains the imported LM"
    );
    let results: serde_json::Value = serde_json::from_slice(&std::fs::read(run.join("results.json")).unwrap()).unwrap();
    let rows = results["rows"].as_array().unwrap();
    assert!(rows.iter().any(|r| r["stage"] == "finetune"), "fine-tuned models were evaluated: {rows:?}");
    let baseline = nodes.join("eval-text-baseline/done.json");
    let done: serde_json::Value = serde_json::from_slice(&std::fs::read(&baseline).unwrap()).unwrap();
    assert_eq!(done["outputs"]["imported"], true, "the text baseline is the imported model: {done}");
    let report = std::fs::read_to_string(run.join("report/index.html")).unwrap();
    assert!(
        report.contains("text model imported from") && report.contains("no text pre-training"),
        "the report says where the text model came from"
    );
    assert!(Path::new(&imported).join("import.json").is_file());
}
