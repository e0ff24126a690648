//! The patch-projection "encoder": one trainable linear map of raw pixel patches, no pretrained
//! vision at all (the paper's weakest ablation, Fuyu-style).
//!
//! `tokens = patches W^T + b` with `W` `[width, 3 * patch^2]` stored as `patch_projection.weight` /
//! `.bias` in the caller's `ParamStore`. It is trained with the rest of the model; its input, the raw
//! pixel patches, comes from the weightless [`PixelPatches`](super::encoder::PixelPatches) encoder
//! through the feature cache, like any frozen encoder's output.

use anyhow::{bail, ensure, Context, Result};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use vlmix_engine::layers::{Linear, LinearGrads, LinearParams};
use vlmix_engine::params::{ParamFlags, ParamId, ParamStore};
use vlmix_engine::{Cpu, Device};

pub const WEIGHT: &str = "patch_projection.weight";
pub const BIAS: &str = "patch_projection.bias";

pub struct PatchProjection<D: Device = Cpu> {
    image_size: usize,
    patch_size: usize,
    linear: Linear,
    weight: ParamId,
    bias: ParamId,
    dev: D,
}

impl<D: Device> PatchProjection<D> {
    /// Registers a freshly initialised projection (PyTorch `nn.Linear` init) of `patch_size` patches
    /// of `image_size` images to `width` channels.
    pub fn new(
        image_size: usize,
        patch_size: usize,
        width: usize,
        params: &mut ParamStore<D>,
        seed: u64,
    ) -> Result<Self> {
        if patch_size == 0 || patch_size > image_size || width == 0 {
            bail!("patch projection needs 0 < patch_size {patch_size} <= image_size {image_size} and width > 0");
        }
        let inp = 3 * patch_size * patch_size;
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let bound = 1.0 / (inp as f32).sqrt();
        let weight = (0..width * inp).map(|_| rng.gen_range(-bound..bound)).collect();
        let bias = (0..width).map(|_| rng.gen_range(-bound..bound)).collect();
        let weight = params.add(WEIGHT, &[width, inp], weight, ParamFlags::MATRIX)?;
        let bias = params.add(BIAS, &[width], bias, ParamFlags::NO_DECAY)?;
        Ok(Self::with_ids(params.device(), image_size, patch_size, width, weight, bias))
    }

    /// The projection already in `params` (after loading a checkpoint).
    pub fn from_store(image_size: usize, patch_size: usize, params: &ParamStore<D>) -> Result<Self> {
        let weight = params.id(WEIGHT).with_context(|| format!("parameter {WEIGHT} is not in the store"))?;
        let bias = params.id(BIAS).with_context(|| format!("parameter {BIAS} is not in the store"))?;
        let shape = params.info(weight).shape.clone();
        let inp = 3 * patch_size * patch_size;
        let [width, stored_inp] = shape[..] else { bail!("{WEIGHT} has shape {shape:?}, expected [width, {inp}]") };
        ensure!(
            stored_inp == inp,
            "{WEIGHT} has shape {shape:?}, expected [{width}, {inp}] for {patch_size}px patches"
        );
        ensure!(
            params.info(bias).shape == [width],
            "{BIAS} has shape {:?}, expected [{width}]",
            params.info(bias).shape
        );
        Ok(Self::with_ids(params.device(), image_size, patch_size, width, weight, bias))
    }

    fn with_ids(dev: &D, image_size: usize, patch_size: usize, width: usize, weight: ParamId, bias: ParamId) -> Self {
        let linear = Linear { in_dim: 3 * patch_size * patch_size, out_dim: width, bias: true };
        Self { image_size, patch_size, linear, weight, bias, dev: dev.clone() }
    }

    pub fn tokens(&self) -> usize {
        (self.image_size / self.patch_size).pow(2)
    }

    pub fn width(&self) -> usize {
        self.linear.out_dim
    }

    /// Values per input row: one flattened patch.
    pub fn patch_dim(&self) -> usize {
        self.linear.in_dim
    }

    fn check_patches(&self, patches: &D::Buf, batch: usize) -> Result<()> {
        let want = batch * self.tokens() * self.patch_dim();
        ensure!(
            self.dev.len(patches) == want,
            "patch projection input has {} values, expected [{batch}, {}, {}]",
            self.dev.len(patches),
            self.tokens(),
            self.patch_dim()
        );
        Ok(())
    }

    /// `[batch, tokens, width]` features of `patches` (`[batch, tokens, 3 * patch^2]`, from
    /// [`patchify`](super::patches::patchify)).
    pub fn forward(&self, params: &ParamStore<D>, patches: &D::Buf, batch: usize) -> Result<D::Owned> {
        let mut out = self.dev.zeros(batch * self.tokens() * self.width());
        self.forward_into(params, patches, batch, &mut out)?;
        Ok(out)
    }

    /// As [`forward`](Self::forward), into `out` (`[batch, tokens, width]`).
    pub fn forward_into(&self, params: &ParamStore<D>, patches: &D::Buf, batch: usize, out: &mut D::Buf) -> Result<()> {
        self.check_patches(patches, batch)?;
        let (n, got) = (batch * self.tokens() * self.width(), self.dev.len(out));
        ensure!(got == n, "patch projection output buffer has {got} values, expected {n}");
        let p = LinearParams { weight: params.value(self.weight), bias: Some(params.value(self.bias)) };
        self.linear.forward(&self.dev, &p, patches, out);
        Ok(())
    }

    /// Accumulates the gradients of the projection from `dfeatures` (`[batch, tokens, width]`).
    pub fn backward(
        &self,
        params: &mut ParamStore<D>,
        patches: &D::Buf,
        batch: usize,
        dfeatures: &D::Buf,
    ) -> Result<()> {
        self.check_patches(patches, batch)?;
        let (n, got) = (batch * self.tokens() * self.width(), self.dev.len(dfeatures));
        ensure!(got == n, "patch projection feature gradient has {got} values, expected {n}");
        let (values, mut grads) = params.split();
        let p = LinearParams { weight: values.get(self.weight), bias: Some(values.get(self.bias)) };
        let [weight, bias] = grads.get_many_mut([self.weight, self.bias]);
        self.linear.backward(&self.dev, &p, patches, dfeatures, None, &mut LinearGrads { weight, bias: Some(bias) });
        Ok(())
    }
}
