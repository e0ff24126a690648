//! Global gradient-norm clipping, as `torch.nn.utils.clip_grad_norm_` (L2, over trainable
//! parameters): scale every gradient by `min(1, max_norm / (total_norm + 1e-6))`.

use crate::params::ParamStore;
use crate::Device;

/// L2 norm of all trainable gradients together (accumulated in f64).
pub fn grad_norm<D: Device>(params: &ParamStore<D>) -> f32 {
    let grads: Vec<&D::Buf> =
        params.ids().filter(|&id| params.info(id).flags.trainable).map(|id| params.grad(id)).collect();
    params.device().sum_squares(&grads).sqrt() as f32
}

/// Clips in place and returns the norm before clipping (NaN/inf when a gradient is non-finite,
/// so the caller can stop the run; see `nonfinite`).
pub fn clip_grad_norm<D: Device>(params: &mut ParamStore<D>, max_norm: f32) -> f32 {
    let total = grad_norm(params);
    let coef = (max_norm / (total + 1e-6)).min(1.0);
    if coef < 1.0 {
        let ids: Vec<_> = params.ids().filter(|&id| params.info(id).flags.trainable).collect();
        let dev = params.device().clone();
        for id in ids {
            dev.scale(params.grad_mut(id), coef);
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::params::ParamFlags;
    use crate::Cpu;

    #[test]
    fn clips_to_max_norm_and_ignores_frozen() {
        let mut s = ParamStore::new(Cpu::new().unwrap());
        let a = s.add("a", &[2], vec![0.0; 2], ParamFlags::MATRIX).unwrap();
        let b = s.add("b", &[1], vec![0.0], ParamFlags::NO_DECAY).unwrap();
        let f = s.add("f", &[1], vec![0.0], ParamFlags::FROZEN).unwrap();
        s.grad_mut(a).copy_from_slice(&[3.0, 0.0]);
        s.grad_mut(b).copy_from_slice(&[4.0]);
        s.grad_mut(f).copy_from_slice(&[100.0]);
        let norm = clip_grad_norm(&mut s, 1.0);
        assert!((norm - 5.0).abs() < 1e-6);
        let coef = 1.0 / (5.0 + 1e-6);
        assert!((s.grad(a)[0] - 3.0 * coef).abs() < 1e-7 && (s.grad(b)[0] - 4.0 * coef).abs() < 1e-7);
        assert_eq!(s.grad(f)[0], 100.0);
        assert!((grad_norm(&s) - 1.0).abs() < 1e-5);
    }

    #[test]
    fn small_gradients_are_untouched() {
        let mut s = ParamStore::new(Cpu::new().unwrap());
        let a = s.add("a", &[2], vec![0.0; 2], ParamFlags::MATRIX).unwrap();
        s.grad_mut(a).copy_from_slice(&[0.3, 0.4]);
        assert!((clip_grad_norm(&mut s, 1.0) - 0.5).abs() < 1e-6);
        assert_eq!(s.grad(a), &[0.3, 0.4]);
    }

    #[test]
    fn non_finite_gradient_gives_non_finite_norm() {
        let mut s = ParamStore::new(Cpu::new().unwrap());
        let a = s.add("a", &[2], vec![0.0; 2], ParamFlags::MATRIX).unwrap();
        s.grad_mut(a).copy_from_slice(&[f32::NAN, 1.0]);
        assert!(!clip_grad_norm(&mut s, 1.0).is_finite());
    }
}
