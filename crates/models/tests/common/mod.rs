//! Checks shared by the VLM tests: a small image batch, finite differences of the loss, and the
//! every-parameter-gets-a-gradient check.

use vlmix_data::vlm_batch::{ImageSlot, VlmBatch};
use vlmix_engine::params::ParamStore;
use vlmix_models::vlm::Vlm;

/// Vocabulary of the tiny LMs these tests build.
pub const VOCAB: usize = 50;

/// Two sequences of `seq` tokens; the second starts with an image of `n_img` tokens of `width`
/// features, whose positions (but the last, which predicts the first text token) carry no loss.
pub fn image_batch(n_img: usize, width: usize, seq: usize) -> VlmBatch {
    let batch = 2;
    let inputs: Vec<u32> = (0..batch * seq).map(|i| (i * 7 % VOCAB) as u32).collect();
    let targets: Vec<u32> = (0..batch * seq).map(|i| ((i * 11 + 3) % VOCAB) as u32).collect();
    let loss_mask: Vec<f32> =
        (0..batch * seq).map(|r| if r >= seq && r < seq + n_img - 1 { 0.0 } else { 1.0 }).collect();
    let features: Vec<f32> = (0..n_img * width).map(|i| ((i * 37 % 23) as f32 - 11.0) / 9.0).collect();
    let slots = vec![ImageSlot { at: seq, image: 0 }];
    VlmBatch { batch, seq, inputs, targets, loss_mask, slots, n_image_tokens: n_img, features, ..Default::default() }
}

/// One forward + backward gives every parameter a non-zero gradient; returns how many parameters
/// have names starting with `prefix`.
pub fn assert_every_parameter_gets_a_gradient(
    vlm: &mut Vlm,
    params: &mut ParamStore,
    batch: &VlmBatch,
    prefix: &str,
) -> usize {
    params.zero_grad();
    vlm.forward_backward(params, batch).unwrap();
    let mut matching = 0;
    for id in params.ids() {
        let info = params.info(id);
        let norm: f64 = params.grad(id).iter().map(|g| (*g as f64).powi(2)).sum();
        assert!(norm > 0.0, "{} received no gradient", info.name);
        matching += info.name.starts_with(prefix) as usize;
    }
    matching
}

/// Central differences of the VLM loss against the analytic gradient, at six entries spread over
/// each named parameter.
pub fn assert_gradients_match_finite_differences(
    vlm: &mut Vlm,
    params: &mut ParamStore,
    batch: &VlmBatch,
    names: &[&str],
) {
    params.zero_grad();
    vlm.forward_backward(params, batch).unwrap();
    let ids: Vec<_> =
        names.iter().map(|name| params.id(name).unwrap_or_else(|| panic!("{name} is registered"))).collect();
    let analytics: Vec<Vec<f32>> = ids.iter().map(|&id| params.grad(id).to_vec()).collect();
    for ((&name, id), analytic) in names.iter().zip(ids).zip(analytics) {
        for i in (0..analytic.len()).step_by(analytic.len().div_ceil(6)) {
            let h = 1e-2f32;
            let original = params.value(id)[i];
            let mut loss_at = |value: f32| {
                params.value_mut(id)[i] = value;
                params.zero_grad();
                vlm.forward_backward(params, batch).unwrap().loss as f64
            };
            let (plus, minus) = (loss_at(original + h), loss_at(original - h));
            params.value_mut(id)[i] = original;
            let numeric = (plus - minus) / (2.0 * h as f64);
            let a = analytic[i] as f64;
            assert!(
                (a - numeric).abs() <= 2e-3 + 5e-2 * numeric.abs(),
                "{name}[{i}]: analytic {a} vs numeric {numeric}"
            );
        }
    }
}
