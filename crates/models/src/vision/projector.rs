//! The projector: a 2-layer GELU MLP mapping encoder features into the LM's embedding width.
//!
//! `fc1 [d, enc] + bias -> GELU (exact erf) -> fc2 [d, d] + bias`, as LLaVA-1.5 and Prismatic's
//! "gelu-mlp" projector. Parameters live in the caller's `ParamStore` under `projector.fc1.weight`,
//! `projector.fc1.bias`, `projector.fc2.weight`, `projector.fc2.bias`, so they share the LM's optimizer
//! and checkpoint.

use anyhow::{bail, Context, Result};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use vlmix_engine::layers::{
    BufLen, GeluMlp, GeluMlpActs, GeluMlpGrads, GeluMlpParams, GeluMlpScratch, LinearGrads, LinearParams,
};
use vlmix_engine::params::{ParamFlags, ParamId, ParamStore, Values};
use vlmix_engine::{Cpu, Device, GeluKind};

pub const FC1_WEIGHT: &str = "projector.fc1.weight";
pub const FC1_BIAS: &str = "projector.fc1.bias";
pub const FC2_WEIGHT: &str = "projector.fc2.weight";
pub const FC2_BIAS: &str = "projector.fc2.bias";

#[derive(Clone, Copy, Debug)]
struct ProjectorIds {
    fc1_weight: ParamId,
    fc1_bias: ParamId,
    fc2_weight: ParamId,
    fc2_bias: ParamId,
}

/// Saved activations of the last forward, sized for `rows` feature rows.
struct Workspace<D: Device> {
    rows: usize,
    acts: GeluMlpActs<D>,
    scratch: GeluMlpScratch<D>,
}

pub struct Projector<D: Device = Cpu> {
    mlp: GeluMlp,
    ids: ProjectorIds,
    dev: D,
    work: Option<Workspace<D>>,
}

/// The projector's layer: `encoder_width -> d_model -> d_model`, exact GELU.
fn mlp(encoder_width: usize, d_model: usize) -> GeluMlp {
    GeluMlp { in_dim: encoder_width, hidden: d_model, out_dim: d_model, gelu: GeluKind::Erf }
}

/// The buffers the projector's workspace holds for `rows` feature rows (what
/// [`Projector::forward`] allocates): the MLP's activations, then its backward scratch.
pub fn activation_lens(encoder_width: usize, d_model: usize, rows: usize) -> Vec<BufLen> {
    let mlp = mlp(encoder_width, d_model);
    let mut lens = mlp.acts_lens(rows).to_vec();
    lens.extend(mlp.scratch_lens(rows));
    lens
}

/// PyTorch's `nn.Linear` default initialisation: weight and bias uniform in `±1/sqrt(fan_in)`.
fn linear_init(rng: &mut ChaCha8Rng, out: usize, inp: usize) -> (Vec<f32>, Vec<f32>) {
    let bound = 1.0 / (inp as f32).sqrt();
    let weight = (0..out * inp).map(|_| rng.gen_range(-bound..bound)).collect();
    let bias = (0..out).map(|_| rng.gen_range(-bound..bound)).collect();
    (weight, bias)
}

fn mlp_params<D: Device>(ids: ProjectorIds, v: Values<'_, D>) -> GeluMlpParams<'_, D> {
    GeluMlpParams {
        fc1: LinearParams { weight: v.get(ids.fc1_weight), bias: Some(v.get(ids.fc1_bias)) },
        fc2: LinearParams { weight: v.get(ids.fc2_weight), bias: Some(v.get(ids.fc2_bias)) },
    }
}

impl<D: Device> Projector<D> {
    /// Registers a freshly initialised projector from `encoder_width` to `d_model` in `params`.
    pub fn new(encoder_width: usize, d_model: usize, params: &mut ParamStore<D>, seed: u64) -> Result<Self> {
        if encoder_width == 0 || d_model == 0 {
            bail!("projector needs positive widths, got encoder {encoder_width} -> model {d_model}");
        }
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let (w1, b1) = linear_init(&mut rng, d_model, encoder_width);
        let (w2, b2) = linear_init(&mut rng, d_model, d_model);
        let ids = ProjectorIds {
            fc1_weight: params.add(FC1_WEIGHT, &[d_model, encoder_width], w1, ParamFlags::MATRIX)?,
            fc1_bias: params.add(FC1_BIAS, &[d_model], b1, ParamFlags::NO_DECAY)?,
            fc2_weight: params.add(FC2_WEIGHT, &[d_model, d_model], w2, ParamFlags::MATRIX)?,
            fc2_bias: params.add(FC2_BIAS, &[d_model], b2, ParamFlags::NO_DECAY)?,
        };
        Ok(Self::with_ids(params.device(), encoder_width, d_model, ids))
    }

    /// The projector already registered in `params` (e.g. after loading a checkpoint), with its
    /// widths read from the stored shapes.
    pub fn from_store(params: &ParamStore<D>) -> Result<Self> {
        let id = |name: &str| params.id(name).with_context(|| format!("parameter {name} is not in the store"));
        let ids = ProjectorIds {
            fc1_weight: id(FC1_WEIGHT)?,
            fc1_bias: id(FC1_BIAS)?,
            fc2_weight: id(FC2_WEIGHT)?,
            fc2_bias: id(FC2_BIAS)?,
        };
        let shape = |id: ParamId| params.info(id).shape.clone();
        let [d_model, encoder_width] = shape(ids.fc1_weight)[..] else {
            bail!("{FC1_WEIGHT} has shape {:?}, expected [d_model, encoder_width]", shape(ids.fc1_weight));
        };
        for (name, id, want) in [
            (FC1_BIAS, ids.fc1_bias, vec![d_model]),
            (FC2_WEIGHT, ids.fc2_weight, vec![d_model, d_model]),
            (FC2_BIAS, ids.fc2_bias, vec![d_model]),
        ] {
            if shape(id) != want {
                bail!("{name} has shape {:?}, expected {want:?}", shape(id));
            }
        }
        Ok(Self::with_ids(params.device(), encoder_width, d_model, ids))
    }

    fn with_ids(dev: &D, encoder_width: usize, d_model: usize, ids: ProjectorIds) -> Self {
        Self { mlp: mlp(encoder_width, d_model), ids, dev: dev.clone(), work: None }
    }

    pub fn encoder_width(&self) -> usize {
        self.mlp.in_dim
    }

    pub fn d_model(&self) -> usize {
        self.mlp.out_dim
    }

    fn rows(&self, features: &D::Buf) -> Result<usize> {
        let len = self.dev.len(features);
        if !len.is_multiple_of(self.mlp.in_dim) {
            bail!("projector input has {len} values, not a multiple of the encoder width {}", self.mlp.in_dim);
        }
        Ok(len / self.mlp.in_dim)
    }

    /// `features` `[rows, encoder_width]` -> `out` `[rows, d_model]`; keeps what backward needs.
    pub fn forward(&mut self, params: &ParamStore<D>, features: &D::Buf, out: &mut D::Buf) -> Result<()> {
        let rows = self.rows(features)?;
        let out_len = self.dev.len(out);
        if out_len != rows * self.mlp.out_dim {
            bail!("projector output has {out_len} values, expected {rows} x {}", self.mlp.out_dim);
        }
        if self.work.as_ref().is_none_or(|w| w.rows < rows) {
            self.work = Some(Workspace {
                rows,
                acts: self.mlp.acts(&self.dev, rows),
                scratch: self.mlp.scratch(&self.dev, rows),
            });
        }
        let work = self.work.as_mut().expect("allocated above");
        let p = mlp_params(self.ids, params.values());
        self.mlp.forward(&self.dev, &p, features, &mut work.acts, out);
        Ok(())
    }

    /// Backward of the last [`forward`](Self::forward) (same `features`): accumulates the projector's
    /// gradients in `params` and writes `dfeatures` when given (only an unfrozen encoder needs it).
    pub fn backward(
        &mut self,
        params: &mut ParamStore<D>,
        features: &D::Buf,
        dout: &D::Buf,
        dfeatures: Option<&mut D::Buf>,
    ) -> Result<()> {
        let rows = self.rows(features)?;
        let dev = &self.dev;
        if dev.len(dout) != rows * self.mlp.out_dim {
            bail!("projector output gradient has {} values, expected {rows} x {}", dev.len(dout), self.mlp.out_dim);
        }
        if let Some(dx) = &dfeatures {
            if dev.len(dx) != dev.len(features) {
                bail!("projector input gradient has {} values, expected {}", dev.len(dx), dev.len(features));
            }
        }
        let Some(work) = self.work.as_mut() else { bail!("projector backward called before forward") };
        let ids = self.ids;
        let (values, mut grads) = params.split();
        let p = mlp_params(ids, values);
        let [w1, b1, w2, b2] = grads.get_many_mut([ids.fc1_weight, ids.fc1_bias, ids.fc2_weight, ids.fc2_bias]);
        let mut g = GeluMlpGrads {
            fc1: LinearGrads { weight: w1, bias: Some(b1) },
            fc2: LinearGrads { weight: w2, bias: Some(b2) },
        };
        self.mlp.backward(&self.dev, &p, features, &work.acts, dout, dfeatures, &mut g, &mut work.scratch);
        Ok(())
    }
}
