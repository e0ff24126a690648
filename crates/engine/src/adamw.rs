//! AdamW, numerically the same as `torch.optim.AdamW` (single-tensor CPU path): bias-corrected
//! moments and decoupled weight decay `p *= 1 - lr * wd` applied only to parameters flagged for
//! decay (which ones is the model's choice: the LM's `weight_decay_rule` decays every parameter, as
//! open_lm does, or weight matrices only). Frozen parameters are skipped.

use crate::params::{ParamId, ParamStore};
use crate::safetensors_io::{write_f32_tensors, F32View, SafetensorsFile};
use crate::{AdamWStep, Cpu, Device};
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::Path;

/// Hyper-parameters that stay fixed during a run; the learning rate comes with each step.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdamWConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    /// open_lm's betas (0.9, 0.95) and eps 1e-8; weight decay 0.1 (open_lm's default is 0.2,
    /// DCLM-1B trained with 0.033).
    fn default() -> Self {
        Self { beta1: 0.9, beta2: 0.95, eps: 1e-8, weight_decay: 0.1 }
    }
}

/// The optimizer state: both moments of every parameter, on the parameters' device.
pub struct AdamW<D: Device = Cpu> {
    pub config: AdamWConfig,
    steps: u64,
    /// Per parameter, updates it had before this run (moments continued from a branch checkpoint,
    /// [`AdamW::continue_from`]): its bias correction counts them, as torch's per-parameter `step`.
    prior_steps: Vec<u64>,
    exp_avg: Vec<D::Owned>,
    exp_avg_sq: Vec<D::Owned>,
}

const STEP_KEY: &str = "step";
/// Metadata key of the non-zero prior steps, a JSON object from parameter name to count.
const PRIOR_STEPS_KEY: &str = "prior_steps";
const EXP_AVG: &str = "exp_avg.";
const EXP_AVG_SQ: &str = "exp_avg_sq.";

impl<D: Device> AdamW<D> {
    /// Zeroed moments for every parameter of `params`.
    pub fn new(config: AdamWConfig, params: &ParamStore<D>) -> Self {
        let dev = params.device();
        let zeros = || params.ids().map(|id| dev.zeros(params.info(id).numel())).collect::<Vec<_>>();
        Self { config, steps: 0, prior_steps: vec![0; params.len()], exp_avg: zeros(), exp_avg_sq: zeros() }
    }

    /// Starts from the moments of every parameter `path` (an optimizer file of another run, e.g. the
    /// text checkpoint a cooldown branches from) holds under the same name and shape; the others
    /// (a new projector) keep zeroed moments. Returns how many parameters continue. Only before the
    /// first step; on error nothing changes.
    pub fn continue_from(&mut self, path: &Path, params: &ParamStore<D>) -> Result<usize> {
        anyhow::ensure!(self.steps == 0, "moments can only be continued before the first step");
        let file = SafetensorsFile::open(path)?;
        let (steps, prior) = (steps_in(&file)?, prior_steps_in(&file)?);
        let names = file.names();
        let mut continued = Vec::new();
        for id in params.ids() {
            let info = params.info(id);
            let [avg, avg_sq] = [EXP_AVG, EXP_AVG_SQ].map(|prefix| format!("{prefix}{}", info.name));
            if names.binary_search(&avg).is_err() {
                continue;
            }
            let (m, v) = (file.f32(&avg)?, file.f32(&avg_sq)?);
            for (name, shape) in [(&avg, &m.shape), (&avg_sq, &v.shape)] {
                if *shape != info.shape {
                    bail!(
                        "{}: tensor {name} has shape {shape:?} in the file but the model expects {:?}",
                        path.display(),
                        info.shape
                    );
                }
            }
            continued.push((id, steps + prior.get(&info.name).copied().unwrap_or(0), m.data, v.data));
        }
        let dev = params.device();
        let count = continued.len();
        for (id, before, m, v) in continued {
            self.prior_steps[id.0] = before;
            self.exp_avg[id.0] = dev.upload_vec(m);
            self.exp_avg_sq[id.0] = dev.upload_vec(v);
        }
        Ok(count)
    }

    /// Number of updates applied so far (drives bias correction).
    pub fn steps(&self) -> u64 {
        self.steps
    }

    pub fn exp_avg(&self, id: ParamId) -> &D::Buf {
        &self.exp_avg[id.0]
    }

    pub fn exp_avg_sq(&self, id: ParamId) -> &D::Buf {
        &self.exp_avg_sq[id.0]
    }

    /// One update of every trainable parameter from its current gradient.
    pub fn step(&mut self, params: &mut ParamStore<D>, lr: f64) {
        self.steps += 1;
        let c = self.config;
        let decay = (1.0 - lr * c.weight_decay) as f32;
        let flags: Vec<_> = params.ids().map(|id| params.info(id).flags).collect();
        let (dev, values, grads) = params.values_mut_and_grads();
        for (i, flag) in flags.iter().enumerate() {
            if !flag.trainable {
                continue;
            }
            // Same float order as PyTorch: scalars computed in f64 (Python floats), used as f32.
            let t = (self.prior_steps[i] + self.steps) as i32;
            let bias_correction1 = 1.0 - c.beta1.powi(t);
            let bias_correction2 = 1.0 - c.beta2.powi(t);
            let step = AdamWStep {
                neg_step_size: (-lr / bias_correction1) as f32,
                bias_correction2_sqrt: bias_correction2.sqrt() as f32,
                one_minus_beta1: (1.0 - c.beta1) as f32,
                beta2: c.beta2 as f32,
                one_minus_beta2: (1.0 - c.beta2) as f32,
                eps: c.eps as f32,
                decay: flag.weight_decay.then_some(decay),
            };
            dev.adamw_step(&step, &mut values[i], &grads[i], &mut self.exp_avg[i], &mut self.exp_avg_sq[i]);
        }
    }

    /// Writes both moments (named `exp_avg.<param>` / `exp_avg_sq.<param>`) and the step count.
    pub fn save(&self, path: &Path, params: &ParamStore<D>) -> Result<()> {
        let dev = params.device();
        let host: Vec<_> =
            params.ids().map(|id| (dev.to_host(&self.exp_avg[id.0]), dev.to_host(&self.exp_avg_sq[id.0]))).collect();
        let mut views = Vec::with_capacity(2 * params.len());
        for (id, (exp_avg, exp_avg_sq)) in params.ids().zip(&host) {
            let info = params.info(id);
            views.push((format!("{EXP_AVG}{}", info.name), F32View { shape: info.shape.clone(), data: exp_avg }));
            views.push((format!("{EXP_AVG_SQ}{}", info.name), F32View { shape: info.shape.clone(), data: exp_avg_sq }));
        }
        let prior: HashMap<&str, u64> = params
            .ids()
            .filter(|id| self.prior_steps[id.0] > 0)
            .map(|id| (params.info(id).name.as_str(), self.prior_steps[id.0]))
            .collect();
        let mut meta = HashMap::from([(STEP_KEY.to_string(), self.steps.to_string())]);
        if !prior.is_empty() {
            meta.insert(PRIOR_STEPS_KEY.to_string(), serde_json::to_string(&prior)?);
        }
        write_f32_tensors(path, views, Some(meta))
    }

    /// Restores moments and step count saved by `save` for the same parameters; on error
    /// nothing changes.
    pub fn load(&mut self, path: &Path, params: &ParamStore<D>) -> Result<()> {
        let file = SafetensorsFile::open(path)?;
        let (steps, prior) = (steps_in(&file)?, prior_steps_in(&file)?);
        let expected = 2 * params.len();
        if file.names().len() != expected {
            bail!("{}: optimizer state has {} tensors, the model needs {expected}", path.display(), file.names().len());
        }
        let mut exp_avg = Vec::with_capacity(params.len());
        let mut exp_avg_sq = Vec::with_capacity(params.len());
        for id in params.ids() {
            let info = params.info(id);
            for (prefix, out) in [(EXP_AVG, &mut exp_avg), (EXP_AVG_SQ, &mut exp_avg_sq)] {
                let name = format!("{prefix}{}", info.name);
                let t = file.f32(&name)?;
                if t.shape != info.shape {
                    bail!(
                        "{}: tensor {name} has shape {:?} in the file but the model expects {:?}",
                        path.display(),
                        t.shape,
                        info.shape
                    );
                }
                out.push(params.device().upload_vec(t.data));
            }
        }
        self.steps = steps;
        self.prior_steps = params.ids().map(|id| prior.get(&params.info(id).name).copied().unwrap_or(0)).collect();
        self.exp_avg = exp_avg;
        self.exp_avg_sq = exp_avg_sq;
        Ok(())
    }
}

/// The prior steps an optimizer file records (none in files of runs that started fresh).
fn prior_steps_in(file: &SafetensorsFile) -> Result<HashMap<String, u64>> {
    match file.metadata()?.get(PRIOR_STEPS_KEY) {
        Some(json) => serde_json::from_str(json).with_context(|| {
            format!("{}: metadata {PRIOR_STEPS_KEY:?} is not a map of step counts", file.path().display())
        }),
        None => Ok(HashMap::new()),
    }
}

fn steps_in(file: &SafetensorsFile) -> Result<u64> {
    let path = file.path().display();
    file.metadata()?
        .get(STEP_KEY)
        .with_context(|| format!("{path}: optimizer file has no {STEP_KEY:?} metadata"))?
        .parse()
        .with_context(|| format!("{path}: optimizer step is not an integer"))
}

/// The step count stored in an optimizer file (without loading the moments).
pub fn saved_steps(path: &Path) -> Result<u64> {
    steps_in(&SafetensorsFile::open(path)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::params::ParamFlags;
    use crate::scratch_dir;

    /// Literal transcription of the torch.optim.AdamW update in f64.
    #[allow(clippy::too_many_arguments)] // mirrors torch's functional signature
    fn reference(
        p: &mut [f64],
        g: &[f64],
        m: &mut [f64],
        v: &mut [f64],
        step: i32,
        lr: f64,
        c: AdamWConfig,
        decay: bool,
    ) {
        let (b1, b2) = (c.beta1, c.beta2);
        for j in 0..p.len() {
            if decay {
                p[j] *= 1.0 - lr * c.weight_decay;
            }
            m[j] = b1 * m[j] + (1.0 - b1) * g[j];
            v[j] = b2 * v[j] + (1.0 - b2) * g[j] * g[j];
            let mhat = m[j] / (1.0 - b1.powi(step));
            let denom = v[j].sqrt() / (1.0 - b2.powi(step)).sqrt() + c.eps;
            p[j] -= lr * mhat / denom;
        }
    }

    #[test]
    fn matches_reference_formula_and_respects_flags() {
        let c = AdamWConfig { beta1: 0.9, beta2: 0.95, eps: 1e-8, weight_decay: 0.1 };
        let mut s = ParamStore::new(Cpu::new().unwrap());
        let w0: Vec<f32> = (0..6).map(|i| 0.3 * i as f32 - 0.7).collect();
        let w = s.add("w", &[2, 3], w0.clone(), ParamFlags::MATRIX).unwrap();
        let n = s.add("n", &[6], w0.clone(), ParamFlags::NO_DECAY).unwrap();
        let f = s.add("f", &[6], w0.clone(), ParamFlags::FROZEN).unwrap();
        let mut opt = AdamW::new(c, &s);
        let mut want_w: Vec<f64> = w0.iter().map(|&x| x as f64).collect();
        let mut want_n = want_w.clone();
        let (mut mw, mut vw, mut mn, mut vn) = (vec![0.0; 6], vec![0.0; 6], vec![0.0; 6], vec![0.0; 6]);
        for step in 1..=5 {
            let grad: Vec<f32> = (0..6).map(|i| ((i * 7 + step * 3) % 5) as f32 - 2.0).collect();
            for id in [w, n, f] {
                s.grad_mut(id).copy_from_slice(&grad);
            }
            let g64: Vec<f64> = grad.iter().map(|&x| x as f64).collect();
            let lr = 1e-2 * step as f64;
            opt.step(&mut s, lr);
            reference(&mut want_w, &g64, &mut mw, &mut vw, step, lr, c, true);
            reference(&mut want_n, &g64, &mut mn, &mut vn, step, lr, c, false);
        }
        for (got, want) in [(s.value(w), &want_w), (s.value(n), &want_n)] {
            for (g, w) in got.iter().zip(want.iter()) {
                assert!((*g as f64 - w).abs() < 1e-5 * w.abs().max(1.0), "{g} vs {w}");
            }
        }
        assert_ne!(s.value(w), s.value(n), "weight decay must only touch decayed parameters");
        assert_eq!(s.value(f), w0.as_slice(), "frozen parameters must not move");
    }

    #[test]
    fn save_load_round_trip() {
        let dir = scratch_dir("adamw");
        let mut s = ParamStore::new(Cpu::new().unwrap());
        let w = s.add("w", &[4], vec![1.0, 2.0, 3.0, 4.0], ParamFlags::MATRIX).unwrap();
        let mut opt = AdamW::new(AdamWConfig::default(), &s);
        s.grad_mut(w).copy_from_slice(&[0.5, -0.5, 0.25, 1.0]);
        opt.step(&mut s, 1e-3);
        let path = dir.join("opt.safetensors");
        opt.save(&path, &s).unwrap();
        let mut back = AdamW::new(AdamWConfig::default(), &s);
        back.load(&path, &s).unwrap();
        assert_eq!(back.steps(), 1);
        assert_eq!(back.exp_avg(w), opt.exp_avg(w));
        assert_eq!(back.exp_avg_sq(w), opt.exp_avg_sq(w));

        let mut other = ParamStore::new(Cpu::new().unwrap());
        other.add("w", &[2, 2], vec![0.0; 4], ParamFlags::MATRIX).unwrap();
        let err = AdamW::new(AdamWConfig::default(), &other).load(&path, &other).unwrap_err().to_string();
        assert!(err.contains("exp_avg.w") && err.contains("[4]") && err.contains("[2, 2]"), "{err}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// A branch that continues a run's moments takes the same steps the run itself would have, on
    /// every parameter the run had; a new parameter starts fresh; a resumed branch keeps counting.
    #[test]
    fn continued_moments_step_like_the_run_they_continue() {
        let dir = scratch_dir("adamw-continue");
        let grad = |step: usize| -> Vec<f32> { (0..4).map(|i| ((i * 5 + step * 3) % 7) as f32 - 3.0).collect() };
        let mut text = ParamStore::new(Cpu::new().unwrap());
        let w = text.add("w", &[4], vec![0.5, -1.0, 2.0, 0.1], ParamFlags::MATRIX).unwrap();
        let mut run = AdamW::new(AdamWConfig::default(), &text);
        for step in 0..3 {
            text.grad_mut(w).copy_from_slice(&grad(step));
            run.step(&mut text, 1e-2);
        }
        let saved = dir.join("text.safetensors");
        run.save(&saved, &text).unwrap();

        let mut branch = ParamStore::new(Cpu::new().unwrap());
        let bw = branch.add("w", &[4], text.value(w).to_vec(), ParamFlags::MATRIX).unwrap();
        let proj = branch.add("proj", &[4], vec![0.0; 4], ParamFlags::MATRIX).unwrap();
        let mut opt = AdamW::new(AdamWConfig::default(), &branch);
        assert_eq!(opt.continue_from(&saved, &branch).unwrap(), 1, "only `w` is in the text run");
        let mut fresh_store = ParamStore::new(Cpu::new().unwrap());
        let fp = fresh_store.add("proj", &[4], vec![0.0; 4], ParamFlags::MATRIX).unwrap();
        let mut fresh = AdamW::new(AdamWConfig::default(), &fresh_store);
        for step in 3..5 {
            text.grad_mut(w).copy_from_slice(&grad(step));
            branch.grad_mut(bw).copy_from_slice(&grad(step));
            branch.grad_mut(proj).copy_from_slice(&grad(step));
            fresh_store.grad_mut(fp).copy_from_slice(&grad(step));
            run.step(&mut text, 1e-2);
            opt.step(&mut branch, 1e-2);
            fresh.step(&mut fresh_store, 1e-2);
        }
        assert_eq!(branch.value(bw), text.value(w), "continued moments and bias correction");
        assert_eq!(branch.value(proj), fresh_store.value(fp), "a new parameter starts at step 1");

        let saved_branch = dir.join("branch.safetensors");
        opt.save(&saved_branch, &branch).unwrap();
        let mut resumed = AdamW::new(AdamWConfig::default(), &branch);
        resumed.load(&saved_branch, &branch).unwrap();
        assert_eq!(resumed.prior_steps, opt.prior_steps);
        assert_eq!(opt.prior_steps, vec![3, 0]);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
