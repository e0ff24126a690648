//! Projector: finite-difference gradient check of every parameter and of the input features.
use vlmix_engine::params::ParamStore;
use vlmix_models::vision::projector::{Projector, FC1_BIAS, FC1_WEIGHT, FC2_BIAS, FC2_WEIGHT};

/// Loss = sum(out * r) for fixed r, so dloss/dout = r.
fn loss(projector: &mut Projector, params: &ParamStore, features: &[f32], r: &[f32]) -> f64 {
    let mut out = vec![0.0; r.len()];
    projector.forward(params, features, &mut out).unwrap();
    out.iter().zip(r).map(|(&o, &w)| o as f64 * w as f64).sum()
}

#[test]
fn gradients_match_finite_differences() {
    let (enc, d, rows) = (6, 5, 4);
    let mut params = ParamStore::new(vlmix_engine::Cpu::new().unwrap());
    let mut projector = Projector::new(enc, d, &mut params, 7).unwrap();
    let features: Vec<f32> = (0..rows * enc).map(|i| ((i * 37 % 23) as f32 - 11.0) / 7.0).collect();
    let r: Vec<f32> = (0..rows * d).map(|i| ((i * 13 % 17) as f32 - 8.0) / 9.0).collect();

    let mut out = vec![0.0; rows * d];
    projector.forward(&params, &features, &mut out).unwrap();
    let mut dfeatures = vec![0.0; features.len()];
    projector.backward(&mut params, &features, &r, Some(&mut dfeatures)).unwrap();

    let eps = 1e-2f32;
    let check = |got: f32, want: f64, what: &str| {
        assert!((got as f64 - want).abs() <= 2e-3 * (1.0 + want.abs()), "{what}: analytic {got} vs numeric {want}");
    };
    for name in [FC1_WEIGHT, FC1_BIAS, FC2_WEIGHT, FC2_BIAS] {
        let id = params.id(name).unwrap();
        let analytic = params.grad(id).to_vec();
        assert!(analytic.iter().any(|&g| g != 0.0), "{name}: gradient is all zero");
        for (i, &want) in analytic.iter().enumerate() {
            let orig = params.value(id)[i];
            params.value_mut(id)[i] = orig + eps;
            let plus = loss(&mut projector, &params, &features, &r);
            params.value_mut(id)[i] = orig - eps;
            let minus = loss(&mut projector, &params, &features, &r);
            params.value_mut(id)[i] = orig;
            check(want, (plus - minus) / (2.0 * eps as f64), &format!("{name}[{i}]"));
        }
    }
    for i in 0..features.len() {
        let mut f = features.clone();
        f[i] += eps;
        let plus = loss(&mut projector, &params, &f, &r);
        f[i] -= 2.0 * eps;
        let minus = loss(&mut projector, &params, &f, &r);
        check(dfeatures[i], (plus - minus) / (2.0 * eps as f64), &format!("features[{i}]"));
    }
}

#[test]
fn backward_accumulates_and_store_round_trips() {
    let mut params = ParamStore::new(vlmix_engine::Cpu::new().unwrap());
    let mut projector = Projector::new(3, 2, &mut params, 1).unwrap();
    let features = [0.5f32, -1.0, 2.0, 1.5, 0.0, -0.5];
    let dout = [1.0f32, -2.0, 0.5, 0.25];
    let mut out = [0.0; 4];
    projector.forward(&params, &features, &mut out).unwrap();
    projector.backward(&mut params, &features, &dout, None).unwrap();
    let id = params.id(FC2_WEIGHT).unwrap();
    let once = params.grad(id).to_vec();
    projector.backward(&mut params, &features, &dout, None).unwrap();
    for (twice, once) in params.grad(id).iter().zip(&once) {
        assert!((twice - 2.0 * once).abs() < 1e-6);
    }

    let mut again = Projector::from_store(&params).unwrap();
    assert_eq!((again.encoder_width(), again.d_model()), (3, 2));
    let mut out2 = [0.0; 4];
    again.forward(&params, &features, &mut out2).unwrap();
    assert_eq!(out, out2);
    let err = again.forward(&params, &features[..5], &mut out2).unwrap_err();
    assert!(err.to_string().contains("multiple of the encoder width 3"), "{err}");
}
