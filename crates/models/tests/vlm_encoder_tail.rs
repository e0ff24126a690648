//! A VLM whose encoder's end trains with it (SigLIP's last blocks, or the patch projection): the
//! gradient flows from the LM loss through projector into the tail, matching finite differences, and
//! every trainable parameter receives one.

mod common;

use std::path::{Path, PathBuf};

use common::{assert_every_parameter_gets_a_gradient, assert_gradients_match_finite_differences, image_batch, VOCAB};
use vlmix_data::vlm_batch::VlmBatch;
use vlmix_engine::params::ParamStore;
use vlmix_models::lm::{Lm, LmConfig};
use vlmix_models::vision::encoder::{EncoderSpec, FeatureLayer, PATCH_NAME};
use vlmix_models::vision::tail::EncoderTail;
use vlmix_models::vlm::Vlm;

fn siglip_fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/siglip_tiny")
}

/// A tiny LM + projector + the tail `spec` asks for, and a batch whose second sequence has an image.
fn setup(spec: &EncoderSpec) -> (Vlm, ParamStore, VlmBatch) {
    let mut config = LmConfig::preset("tiny").unwrap();
    config.vocab = VOCAB;
    let mut params = ParamStore::new(vlmix_engine::Cpu::new().unwrap());
    let lm = Lm::new(config, &mut params, 3).unwrap();
    let tail = EncoderTail::open(spec, &mut params, 5).unwrap().expect("the spec has a tail");
    let (width, n_img) = (tail.input_width(), tail.tokens());
    let mut vlm = Vlm::with_new_projector(lm, tail.output_width(), &mut params, 4).unwrap();
    vlm.set_tail(tail).unwrap();
    (vlm, params, image_batch(n_img, width, n_img + 6))
}

fn siglip_spec(layer: FeatureLayer) -> EncoderSpec {
    EncoderSpec { source: siglip_fixture().display().to_string(), layer, resolution: None, trainable_blocks: 1 }
}

fn patch_spec() -> EncoderSpec {
    EncoderSpec { source: PATCH_NAME.into(), layer: FeatureLayer::default(), resolution: Some(16), trainable_blocks: 0 }
}

fn assert_tail_trains(spec: &EncoderSpec, tail_prefix: &str, checked: &[&str]) {
    let (mut vlm, mut params, batch) = setup(spec);
    assert!(params.ids().all(|id| params.info(id).flags.trainable), "LM, projector and tail all train");
    let in_tail = assert_every_parameter_gets_a_gradient(&mut vlm, &mut params, &batch, tail_prefix);
    assert!(in_tail >= 2, "the tail's parameters are in the store");
    if !checked.is_empty() {
        assert_gradients_match_finite_differences(&mut vlm, &mut params, &batch, checked);
    }
}

#[test]
fn siglip_tail_blocks_get_gradients_through_the_projector() {
    assert_tail_trains(&siglip_spec(FeatureLayer::Penultimate), "vision_model.", &[]);
    let block = "vision_model.encoder.layers.2";
    assert_tail_trains(
        &siglip_spec(FeatureLayer::Last),
        "vision_model.",
        &[
            &format!("{block}.self_attn.in_proj.weight"),
            &format!("{block}.mlp.fc1.weight"),
            &format!("{block}.layer_norm2.bias"),
            "vision_model.post_layernorm.weight",
        ],
    );
}

#[test]
fn patch_projection_trains_through_the_projector() {
    assert_tail_trains(&patch_spec(), "patch_projection.", &["patch_projection.weight", "patch_projection.bias"]);
}

#[test]
fn a_tail_that_does_not_fit_the_projector_is_refused() {
    let mut params = ParamStore::new(vlmix_engine::Cpu::new().unwrap());
    let mut config = LmConfig::preset("tiny").unwrap();
    config.vocab = VOCAB;
    let lm = Lm::new(config, &mut params, 3).unwrap();
    let tail = EncoderTail::open(&patch_spec(), &mut params, 5).unwrap().unwrap();
    let mut vlm = Vlm::with_new_projector(lm, tail.output_width() + 1, &mut params, 4).unwrap();
    let err = vlm.set_tail(tail).unwrap_err().to_string();
    assert!(err.contains("projector takes"), "{err}");
    let frozen = EncoderSpec::frozen("efficientnet-lite0");
    assert!(EncoderTail::open(&frozen, &mut params, 0).unwrap().is_none(), "a frozen encoder has no tail");
}
