//! The VLM trains its projector through the LM: gradients reach every trainable parameter, match
//! finite differences at the projector, and image positions carry no loss.

mod common;

use common::{assert_every_parameter_gets_a_gradient, assert_gradients_match_finite_differences, image_batch, VOCAB};
use vlmix_data::vlm_batch::VlmBatch;
use vlmix_engine::params::ParamStore;
use vlmix_models::lm::LmConfig;
use vlmix_models::vlm::Vlm;

const ENC: usize = 12;

fn setup() -> (Vlm, ParamStore, VlmBatch) {
    let mut config = LmConfig::preset("tiny").unwrap();
    config.vocab = VOCAB;
    let mut params = ParamStore::new(vlmix_engine::Cpu::new().unwrap());
    let vlm = Vlm::new(config, ENC, &mut params, 3).unwrap();
    (vlm, params, image_batch(4, ENC, 10))
}

#[test]
fn every_trainable_parameter_gets_a_gradient() {
    let (mut vlm, mut params, batch) = setup();
    assert_eq!(assert_every_parameter_gets_a_gradient(&mut vlm, &mut params, &batch, "projector."), 4);
}

#[test]
fn projector_gradient_matches_finite_differences() {
    let (mut vlm, mut params, batch) = setup();
    assert_gradients_match_finite_differences(
        &mut vlm,
        &mut params,
        &batch,
        &["projector.fc1.weight", "projector.fc2.bias"],
    );
}

#[test]
fn text_only_batches_need_no_features_and_bad_feature_sizes_are_errors() {
    let (mut vlm, mut params, mut batch) = setup();
    let mut text = batch.clone();
    text.slots.clear();
    text.features.clear();
    vlm.forward_backward(&mut params, &text).unwrap();
    batch.features.pop();
    let err = vlm.forward_backward(&mut params, &batch).unwrap_err().to_string();
    assert!(err.contains("feature values"), "{err}");
}
