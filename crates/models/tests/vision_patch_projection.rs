//! Patch projection: shapes, a hand-computed token, and finite-difference gradients.
use vlmix_engine::params::ParamStore;
use vlmix_models::vision::patch_projection::{PatchProjection, BIAS, WEIGHT};
use vlmix_models::vision::patches::patchify;

fn pixels(batch: usize, size: usize) -> Vec<f32> {
    (0..batch * 3 * size * size).map(|i| ((i * 31 % 19) as f32 - 9.0) / 10.0).collect()
}

#[test]
fn tokens_are_linear_maps_of_patches() {
    let mut params = ParamStore::new(vlmix_engine::Cpu::new().unwrap());
    let proj = PatchProjection::new(8, 4, 5, &mut params, 3).unwrap();
    assert_eq!((proj.tokens(), proj.width()), (4, 5));
    let x = pixels(2, 8);
    let patches = patchify(&x, 2, 3, 8, 4);
    let out = proj.forward(&params, &patches, 2).unwrap();
    assert_eq!(out.len(), 2 * 4 * 5);
    // Token 3 of image 1 (bottom-right patch), channel 2, computed by hand.
    let (w, b) = (params.value(params.id(WEIGHT).unwrap()), params.value(params.id(BIAS).unwrap()));
    let mut want = b[2];
    for c in 0..3 {
        for y in 0..4 {
            for xx in 0..4 {
                want += w[2 * 48 + (c * 4 + y) * 4 + xx] * x[((3 + c) * 8 + 4 + y) * 8 + 4 + xx];
            }
        }
    }
    assert!((out[(4 + 3) * 5 + 2] - want).abs() < 1e-5, "{} vs {want}", out[(4 + 3) * 5 + 2]);
    let again = PatchProjection::from_store(8, 4, &params).unwrap();
    assert_eq!(again.forward(&params, &patches, 2).unwrap(), out);
    assert!(proj.forward(&params, &x[..x.len() - 1], 2).is_err(), "a wrong-sized input is refused");
    assert!(PatchProjection::from_store(8, 2, &params).is_err(), "patch size must match the stored weight");
}

#[test]
fn gradients_match_finite_differences() {
    let mut params = ParamStore::new(vlmix_engine::Cpu::new().unwrap());
    let proj = PatchProjection::new(6, 3, 4, &mut params, 9).unwrap();
    let x = patchify(&pixels(2, 6), 2, 3, 6, 3);
    let r: Vec<f32> = (0..2 * 4 * 4).map(|i| ((i * 7 % 11) as f32 - 5.0) / 6.0).collect();
    proj.backward(&mut params, &x, 2, &r).unwrap();
    for name in [WEIGHT, BIAS] {
        let id = params.id(name).unwrap();
        let grad = params.grad(id).to_vec();
        for (i, &analytic) in grad.iter().enumerate() {
            let orig = params.value(id)[i];
            let loss = |v: f32, params: &mut ParamStore| -> f64 {
                params.value_mut(id)[i] = v;
                proj.forward(params, &x, 2).unwrap().iter().zip(&r).map(|(&a, &b)| a as f64 * b as f64).sum()
            };
            let numeric = (loss(orig + 1e-2, &mut params) - loss(orig - 1e-2, &mut params)) / 2e-2;
            params.value_mut(id)[i] = orig;
            assert!(
                (analytic as f64 - numeric).abs() < 1e-3 * (1.0 + numeric.abs()),
                "{name}[{i}]: {analytic} vs {numeric}"
            );
        }
    }
}
