//! One checkpoint's whole evaluation on a tiny random text model saved as a stage would save it.

use std::path::Path;
use vlmix_data::tokenizer::TextTokenizer;
use vlmix_engine::params::ParamStore;
use vlmix_engine::Cpu;
use vlmix_eval::{evaluate_checkpoint, load_tasks, CheckpointEval, EvalOptions, ImageFeatures, ValidationSet};
use vlmix_models::lm::{Lm, LmConfig};
use vlmix_models::stage_record::{weights_of, StageRecord};

const SENTENCES: &[&str] = &[
    "The cat sat on the mat and looked at the red ball.",
    "A dog runs in the green park with a blue frisbee.",
    "The quick brown fox jumps over the lazy dog near the river bank.",
];

#[test]
fn a_checkpoint_is_scored_with_its_held_out_bits_per_byte() {
    let tok = TextTokenizer::train(SENTENCES.iter().copied(), 320).unwrap();
    let config = LmConfig::preset("tiny").unwrap();
    let docs: Vec<Vec<u32>> = SENTENCES.iter().map(|s| tok.encode(s).unwrap()).collect();
    let set = ValidationSet::new(docs, 16, 5, &tok).unwrap();
    let mut params = ParamStore::new(Cpu::new().unwrap());
    let mut lm = Lm::new(config.clone(), &mut params, 7).unwrap();
    let direct = set.score(&mut lm, &params).unwrap();
    assert_eq!((direct.sequence_nats.len(), direct.tokens), (5, 80));
    let nats: f64 = direct.sequence_nats.iter().sum();
    assert!((direct.bits_per_byte - nats / std::f64::consts::LN_2 / direct.bytes as f64).abs() < 1e-12);
    // An untrained model is close to uniform: about ln(vocab) nats per token.
    let per_token = nats / 80.0;
    assert!((per_token / (config.vocab as f64).ln() - 1.0).abs() < 0.2, "{per_token}");

    let dir = tempfile::tempdir().unwrap();
    let stage = dir.path().join("stage");
    StageRecord { model: config, encoder: None }.write(&stage).unwrap();
    let checkpoint = stage.join("checkpoints").join("step-00000001");
    std::fs::create_dir_all(&checkpoint).unwrap();
    params.save_safetensors(&weights_of(&checkpoint)).unwrap();
    let file = dir.path().join("mc.jsonl");
    let line = serde_json::json!({"id": "1", "task": "mc", "context": "The cat sat on the", "choices": ["mat", "dog"], "gold": 0});
    std::fs::write(&file, format!("{line}\n")).unwrap();
    let tasks = load_tasks(&[file]).unwrap();
    let what = CheckpointEval { tasks: &tasks, options: EvalOptions::default(), validation: Some(&set) };
    let mut no_encoder = |_: &Path| -> anyhow::Result<ImageFeatures> { panic!("a text model opens no encoder") };
    let report =
        evaluate_checkpoint(Cpu::new().unwrap(), &checkpoint, tok, &mut no_encoder, &what, &mut |_, _| {}).unwrap();
    assert_eq!(report.tasks.len(), 1);
    assert_eq!(report.validation, Some(direct), "the checkpoint's LM scores as the model it was saved from");
}
