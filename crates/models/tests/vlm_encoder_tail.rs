//! A VLM whose encoder's end trains with it (SigLIP's last blocks, or the patch projection): the
//! gradient flows from the LM loss through projector into the tail, matching finite differences, and
//! every trainable parameter receives one.

use std::path::{Path, PathBuf};

use vlmix_engine::params::ParamStore;
use vlmix_models::lm::{Lm, LmConfig};
use vlmix_models::vision::encoder::{EncoderSpec, FeatureLayer, PATCH_NAME};
use vlmix_models::vision::tail::EncoderTail;
use vlmix_models::vlm::{Vlm, VlmBatch};

fn siglip_fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/siglip_tiny")
}

/// A tiny LM + projector + the tail `spec` asks for, and a batch whose second sequence has an image.
fn setup(spec: &EncoderSpec) -> (Vlm, ParamStore, VlmBatch) {
    let mut config = LmConfig::preset("tiny").unwrap();
    config.vocab = 50;
    let mut params = ParamStore::new();
    let lm = Lm::new(config, &mut params, 3).unwrap();
    let tail = EncoderTail::open(spec, &mut params, 5).unwrap().expect("the spec has a tail");
    let (width, n_img) = (tail.input_width(), tail.tokens());
    let mut vlm = Vlm::with_new_projector(lm, tail.output_width(), &mut params, 4).unwrap();
    vlm.set_tail(tail).unwrap();
    let (batch, seq) = (2, n_img + 6);
    let inputs: Vec<u32> = (0..batch * seq).map(|i| (i * 7 % 50) as u32).collect();
    let targets: Vec<u32> = (0..batch * seq).map(|i| ((i * 11 + 3) % 50) as u32).collect();
    let loss_mask: Vec<f32> = (0..batch * seq).map(|r| if r >= seq && r < seq + n_img - 1 { 0.0 } else { 1.0 }).collect();
    let features: Vec<f32> = (0..n_img * width).map(|i| ((i * 37 % 23) as f32 - 11.0) / 9.0).collect();
    let b = VlmBatch { batch, seq, inputs, targets, loss_mask, image_sequences: vec![1], n_image_tokens: n_img, features };
    (vlm, params, b)
}

fn siglip_spec(layer: FeatureLayer) -> EncoderSpec {
    EncoderSpec { source: siglip_fixture().display().to_string(), layer, resolution: None, trainable_blocks: 1 }
}

fn patch_spec() -> EncoderSpec {
    EncoderSpec { source: PATCH_NAME.into(), layer: FeatureLayer::default(), resolution: Some(16), trainable_blocks: 0 }
}

fn assert_every_trainable_parameter_gets_a_gradient(spec: &EncoderSpec, tail_prefix: &str) {
    let (mut vlm, mut params, batch) = setup(spec);
    params.zero_grad();
    vlm.forward_backward(&mut params, &batch).unwrap();
    let mut tail_params = 0;
    for id in params.ids() {
        let info = params.info(id);
        assert!(info.flags.trainable, "{} is trainable", info.name);
        let norm: f64 = params.grad(id).iter().map(|g| (*g as f64).powi(2)).sum();
        assert!(norm > 0.0, "{} received no gradient", info.name);
        tail_params += info.name.starts_with(tail_prefix) as usize;
    }
    assert!(tail_params >= 2, "the tail's parameters are in the store");
}

/// Central differences of the VLM loss at a spread of entries of each named tail parameter.
fn assert_tail_gradients_match_finite_differences(spec: &EncoderSpec, names: &[&str]) {
    let (mut vlm, mut params, batch) = setup(spec);
    params.zero_grad();
    vlm.forward_backward(&mut params, &batch).unwrap();
    let analytics: Vec<Vec<f32>> = names.iter().map(|name| params.grad(params.id(name).unwrap_or_else(|| panic!("{name} is registered"))).to_vec()).collect();
    for (&name, analytic) in names.iter().zip(analytics) {
        let id = params.id(name).expect("checked above");
        for i in (0..analytic.len()).step_by(analytic.len().div_ceil(6)) {
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
fn siglip_tail_blocks_get_gradients_through_the_projector() {
    for layer in [FeatureLayer::Penultimate, FeatureLayer::Last] {
        assert_every_trainable_parameter_gets_a_gradient(&siglip_spec(layer), "vision_model.");
    }
    let block = "vision_model.encoder.layers.2";
    assert_tail_gradients_match_finite_differences(
        &siglip_spec(FeatureLayer::Last),
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
    assert_every_trainable_parameter_gets_a_gradient(&patch_spec(), "patch_projection.");
    assert_tail_gradients_match_finite_differences(&patch_spec(), &["patch_projection.weight", "patch_projection.bias"]);
}

#[test]
fn a_tail_that_does_not_fit_the_projector_is_refused() {
    let mut params = ParamStore::new();
    let mut config = LmConfig::preset("tiny").unwrap();
    config.vocab = 50;
    let lm = Lm::new(config, &mut params, 3).unwrap();
    let tail = EncoderTail::open(&patch_spec(), &mut params, 5).unwrap().unwrap();
    let mut vlm = Vlm::with_new_projector(lm, tail.output_width() + 1, &mut params, 4).unwrap();
    let err = vlm.set_tail(tail).unwrap_err().to_string();
    assert!(err.contains("projector takes"), "{err}");
    let frozen = EncoderSpec::frozen("efficientnet-lite0");
    assert!(EncoderTail::open(&frozen, &mut params, 0).unwrap().is_none(), "a frozen encoder has no tail");
}

