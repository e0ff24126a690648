//! Cooldown and fine-tuning with a trainable encoder tail (SigLIP's last block; the patch
//! projection): the tail trains, lands in the checkpoints with the stage's encoder record, and a
//! later stage loads it back.

use std::path::{Path, PathBuf};

use image::{Rgb, RgbImage};
use vlmix_data::tokenizer::SpecialTokens;
use vlmix_engine::safetensors_io::SafetensorsFile;
use vlmix_models::lm::LmConfig;
use vlmix_models::stage_record::{load_vlm, StageRecord};
use vlmix_models::vision::encoder::{open_encoder, EncoderSpec, FeatureLayer, PATCH_NAME};
use vlmix_models::vision::feature_cache::{image_key, FeatureCache};
use vlmix_train::corpus::{ImageCorpus, ImageExample};
use vlmix_train::schedule::{CooldownSchedule, WarmupCosine};
use vlmix_train::stages::{cooldown, finetune, Batching, CooldownSpec, FinetuneSpec, Start, TextStream};

const SPECIAL: SpecialTokens = SpecialTokens { eos: 0, pad: 1, image: 2 };

fn siglip_fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/tests/fixtures/siglip_tiny")
}

fn cpu() -> vlmix_engine::Cpu {
    vlmix_engine::Cpu::new().unwrap()
}

fn model() -> LmConfig {
    let mut config = LmConfig::preset("tiny").unwrap();
    (config.vocab, config.seq_len) = (64, 32);
    config
}

/// Eight coloured images, their frozen-part features cached, each with a caption and a conversation.
fn corpus(spec: &EncoderSpec, cache_dir: &Path) -> (ImageCorpus, FeatureCache) {
    let encoder = open_encoder(spec, Path::new("/nonexistent")).unwrap();
    let images: Vec<RgbImage> = (0..8u8)
        .map(|i| RgbImage::from_fn(20, 20, move |x, y| Rgb([i * 30, (x * 12) as u8, (y * 12) as u8])))
        .collect();
    let mut cache = FeatureCache::open(cache_dir, encoder.as_ref()).unwrap();
    cache.features(encoder.as_ref(), &images.iter().collect::<Vec<_>>()).unwrap();
    cache.flush().unwrap();
    let example = |i: usize, answer_only: bool| {
        let tokens: Vec<u32> = (0..8).map(|t| 3 + ((i * 5 + t) % 60) as u32).collect();
        let loss = (0..8).map(|t| !answer_only || t >= 5).collect();
        ImageExample { key: hex::encode(image_key(&images[i])), tokens, loss }
    };
    let corpus = ImageCorpus {
        encoder_id: encoder.id().to_string(),
        n_image_tokens: encoder.tokens(),
        feature_width: encoder.width(),
        captions: (0..8).map(|i| example(i, false)).collect(),
        instruct: (0..8).map(|i| example(i, true)).collect(),
    };
    (corpus, cache)
}

fn tensor(checkpoint: &Path, name: &str) -> Vec<f32> {
    SafetensorsFile::open(&checkpoint.join("model.safetensors"))
        .unwrap()
        .f32(name)
        .unwrap_or_else(|e| panic!("{name}: {e:#}"))
        .data
}

/// Cooldown then one fine-tuning epoch; returns (cooldown checkpoint, fine-tuned checkpoint).
fn cooldown_then_finetune(spec: &EncoderSpec, root: &Path) -> (PathBuf, PathBuf) {
    let (corpus, cache) = corpus(spec, &root.join("cache"));
    let docs: Vec<Vec<u32>> = (0..20).map(|d| (0..40).map(|t| 3 + ((d * 7 + t * 3) % 60) as u32).collect()).collect();
    let cooldown_spec = CooldownSpec {
        model: model(),
        start: Start::Scratch,
        // From scratch: a fresh warmup + cosine over 6 steps of 4 sequences.
        schedule: CooldownSchedule {
            text: WarmupCosine { peak: 3e-3, floor: 0.0, warmup_steps: 2, total_steps: 6 },
            fraction: 0.0,
            fresh_peak: 3e-3,
            fresh_warmup_steps: 2,
        },
        tokens: 6 * 4 * model().seq_len as u64,
        count_padding: true,
        // Two passes per step: the tail trains through micro-batches too.
        batching: Batching { batch_size: 4, micro_batch_size: Some(2) },
        weight_decay: 0.1,
        image_token_fraction: 0.5,
        instruction_share: 0.0,
        images_per_row: 1,
        fill_image_rows: false,
        encoder: spec.clone(),
        train_lm: true,
        seed: 1,
        text_stream: TextStream::Restart,
        continue_optimizer: false,
    };
    let outcome =
        cooldown(cpu(), &cooldown_spec, docs, &corpus, &cache, SPECIAL, &root.join("cooldown"), &mut |_, _, _| {})
            .unwrap();
    assert!(outcome.image_tokens > 0, "the cooldown saw images");
    let cooled = outcome.kept.last().unwrap().1.clone();
    let finetune_spec = FinetuneSpec {
        model: model(),
        start: cooled.clone(),
        epochs: 1,
        max_examples: None,
        batching: Batching { batch_size: 4, micro_batch_size: None },
        peak_lr: 1e-3,
        warmup_steps: 1,
        weight_decay: 0.0,
        seed: 2,
    };
    let tuned =
        finetune(cpu(), &finetune_spec, &corpus, &cache, SPECIAL, &root.join("finetune"), &mut |_, _, _| {}).unwrap();
    (cooled, tuned.epochs[0].1.clone())
}

#[test]
fn an_unfrozen_siglip_block_trains_in_cooldown_and_fine_tuning() {
    let root = tempfile::tempdir().unwrap();
    let spec = EncoderSpec {
        source: siglip_fixture().display().to_string(),
        layer: FeatureLayer::Penultimate,
        resolution: None,
        trainable_blocks: 1,
    };
    let (cooled, tuned) = cooldown_then_finetune(&spec, root.path());
    // The penultimate layer uses blocks 0 and 1 of 3: block 1 is the tail, block 0 stays in the trunk.
    let name = "vision_model.encoder.layers.1.mlp.fc1.weight";
    let pretrained =
        SafetensorsFile::open(&siglip_fixture().join("model.safetensors")).unwrap().f32(name).unwrap().data;
    let (after_cooldown, after_finetune) = (tensor(&cooled, name), tensor(&tuned, name));
    assert_ne!(after_cooldown, pretrained, "the tail block trained during the cooldown");
    assert_ne!(after_finetune, after_cooldown, "and again during fine-tuning");
    let names = SafetensorsFile::open(&tuned.join("model.safetensors")).unwrap().names();
    assert!(
        !names
            .iter()
            .any(|n| n.starts_with("vision_model.encoder.layers.0.") || n.starts_with("vision_model.embeddings")),
        "the frozen trunk is not in checkpoints"
    );

    assert_eq!(
        StageRecord::of_checkpoint(&tuned).unwrap().encoder.as_ref(),
        Some(&spec),
        "the fine-tune records the encoder it inherited"
    );
    let (vlm, params) = load_vlm(cpu(), &model(), &tuned).unwrap();
    assert_eq!(vlm.encoder_width(), 32, "the loaded VLM takes the trunk's hidden states");
    assert_eq!(params.value(params.id(name).unwrap()), &after_finetune[..]);
}

#[test]
fn the_patch_projection_trains_with_the_vlm() {
    let root = tempfile::tempdir().unwrap();
    let spec = EncoderSpec {
        source: PATCH_NAME.into(),
        layer: FeatureLayer::default(),
        resolution: Some(16),
        trainable_blocks: 0,
    };
    let (cooled, tuned) = cooldown_then_finetune(&spec, root.path());
    let name = "patch_projection.weight";
    assert_ne!(tensor(&cooled, name), tensor(&tuned, name), "the projection trains during fine-tuning");
    let (vlm, _) = load_vlm(cpu(), &model(), &tuned).unwrap();
    assert_eq!(vlm.encoder_width(), 192, "the loaded VLM takes raw 8x8 RGB patches");
}
