//! The VLM trains its projector through the LM: gradients reach every trainable parameter, match
//! finite differences at the projector, and image positions carry no loss.

use vlmix_engine::params::ParamStore;
use vlmix_models::lm::LmConfig;
use vlmix_models::vlm::{Vlm, VlmBatch};

const ENC: usize = 12;

fn setup() -> (Vlm, ParamStore, VlmBatch) {
    let mut config = LmConfig::preset("tiny").unwrap();
    config.vocab = 50;
    let mut params = ParamStore::new();
    let vlm = Vlm::new(config, ENC, &mut params, 3).unwrap();
    let (batch, seq, n_img) = (2, 10, 4);
    let inputs: Vec<u32> = (0..batch * seq).map(|i| (i * 7 % 50) as u32).collect();
    let targets: Vec<u32> = (0..batch * seq).map(|i| ((i * 11 + 3) % 50) as u32).collect();
    // Sequence 1 has an image: its image positions except the last one carry no loss.
    let loss_mask: Vec<f32> = (0..batch * seq).map(|r| if r >= seq && r < seq + n_img - 1 { 0.0 } else { 1.0 }).collect();
    let features: Vec<f32> = (0..n_img * ENC).map(|i| ((i * 37 % 23) as f32 - 11.0) / 9.0).collect();
    let b = VlmBatch { batch, seq, inputs, targets, loss_mask, image_sequences: vec![1], n_image_tokens: n_img, features };
    (vlm, params, b)
}

#[test]
fn every_trainable_parameter_gets_a_gradient() {
    let (mut vlm, mut params, batch) = setup();
    params.zero_grad();
    vlm.forward_backward(&mut params, &batch).unwrap();
    for id in params.ids() {
        let info = params.info(id);
        let norm: f64 = params.grad(id).iter().map(|g| (*g as f64).powi(2)).sum();
        assert!(norm > 0.0, "{} received no gradient", info.name);
    }
}

#[test]
fn projector_gradient_matches_finite_differences() {
    let (mut vlm, mut params, batch) = setup();
    params.zero_grad();
    vlm.forward_backward(&mut params, &batch).unwrap();
    for name in ["projector.fc1.weight", "projector.fc2.bias"] {
        let id = params.id(name).unwrap();
        let analytic = params.grad(id).to_vec();
        for &i in &[0usize, 5, 11] {
            let h = 1e-2f32;
            let original = params.value(id)[i];
            params.value_mut(id)[i] = original + h;
            params.zero_grad();
            let plus = vlm.forward_backward(&mut params, &batch).unwrap().loss as f64;
            params.value_mut(id)[i] = original - h;
            params.zero_grad();
            let minus = vlm.forward_backward(&mut params, &batch).unwrap().loss as f64;
            params.value_mut(id)[i] = original;
            let numeric = (plus - minus) / (2.0 * h as f64);
            let a = analytic[i] as f64;
            assert!((a - numeric).abs() <= 2e-3 + 5e-2 * numeric.abs(), "{name}[{i}]: analytic {a} vs numeric {numeric}");
        }
    }
}

#[test]
fn text_only_batches_need_no_features_and_bad_feature_sizes_are_errors() {
    let (mut vlm, mut params, mut batch) = setup();
    let mut text = batch.clone();
    text.image_sequences.clear();
    text.features.clear();
    vlm.forward_backward(&mut params, &text).unwrap();
    batch.features.pop();
    let err = vlm.forward_backward(&mut params, &batch).unwrap_err().to_string();
    assert!(err.contains("feature values"), "{err}");
}
