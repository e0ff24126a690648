//! The trainable end of an image encoder, which trains with the VLM: SigLIP's last blocks (the
//! paper's frozen-vs-unfrozen ablation) or the patch projection (its no-pretrained-vision ablation).
//!
//! Its input is what the frozen part of the encoder wrote to the feature cache (a SigLIP trunk's
//! hidden states, or raw pixel patches), so training runs only the tail, never the frozen part.
//! Its parameters live in the VLM's store and so in every checkpoint of the stages that train it.

use std::path::Path;

use anyhow::{bail, ensure, Result};
use vlmix_engine::params::ParamStore;
use vlmix_engine::{Cpu, Device};

use super::encoder::{is_siglip_dir, EncoderSpec, PATCH_NAME, PATCH_RESOLUTION, PATCH_SIZE};
use super::patch_projection::PatchProjection;
use super::siglip::{SiglipConfig, SiglipTape, SiglipVision};

/// Output width of the patch projection.
pub const PATCH_WIDTH: usize = 256;

#[allow(clippy::large_enum_variant)] // one per model, never moved in a loop: boxing would buy nothing
pub enum EncoderTail<D: Device = Cpu> {
    Siglip { tower: SiglipVision<D>, tape: SiglipTape<D> },
    Patch(PatchProjection<D>),
}

impl<D: Device> EncoderTail<D> {
    /// The tail `spec` asks for, registered in `params` (pretrained SigLIP blocks, or a fresh patch
    /// projection seeded by `seed`); `None` for a frozen encoder.
    pub fn open(spec: &EncoderSpec, params: &mut ParamStore<D>, seed: u64) -> Result<Option<Self>> {
        if spec.source == PATCH_NAME {
            let size = spec.resolution.unwrap_or(PATCH_RESOLUTION) as usize;
            return Ok(Some(EncoderTail::Patch(PatchProjection::new(
                size,
                PATCH_SIZE as usize,
                PATCH_WIDTH,
                params,
                seed,
            )?)));
        }
        if spec.trainable_blocks == 0 {
            return Ok(None);
        }
        let dir = Path::new(&spec.source);
        if !is_siglip_dir(dir) {
            bail!("unfreezing encoder blocks needs a SigLIP directory; {} has no config.json", dir.display());
        }
        let config = SiglipConfig::from_file(&dir.join("config.json"))?;
        let tower = SiglipVision::register_tail(
            &config,
            &dir.join("model.safetensors"),
            spec.layer,
            spec.trainable_blocks,
            params,
        )?;
        Ok(Some(EncoderTail::Siglip { tower, tape: SiglipTape::new() }))
    }

    /// Values per image token coming in (the cached features).
    pub fn input_width(&self) -> usize {
        match self {
            EncoderTail::Siglip { tower, .. } => tower.config().hidden_size,
            EncoderTail::Patch(projection) => projection.patch_dim(),
        }
    }

    /// Values per image token going out (into the projector).
    pub fn output_width(&self) -> usize {
        match self {
            EncoderTail::Siglip { tower, .. } => tower.config().hidden_size,
            EncoderTail::Patch(projection) => projection.width(),
        }
    }

    pub fn tokens(&self) -> usize {
        match self {
            EncoderTail::Siglip { tower, .. } => tower.config().tokens(),
            EncoderTail::Patch(projection) => projection.tokens(),
        }
    }

    /// `[images, tokens, output_width]` from `input` (`[images, tokens, input_width]`); with
    /// `train`, keeps what [`backward`](Self::backward) needs.
    pub fn forward(&mut self, params: &ParamStore<D>, input: &D::Buf, images: usize, train: bool) -> Result<D::Owned> {
        let len = params.device().len(input);
        ensure!(
            len == images * self.tokens() * self.input_width(),
            "encoder tail input has {len} values, expected [{images}, {}, {}]",
            self.tokens(),
            self.input_width()
        );
        match self {
            EncoderTail::Siglip { tower, tape } => tower.forward(params, input, images, train.then_some(tape)),
            EncoderTail::Patch(projection) => projection.forward(params, input, images),
        }
    }

    /// Backward of the last training [`forward`](Self::forward) (same `input`): accumulates the
    /// tail's gradients from `doutput`. The frozen part before it needs no gradient.
    pub fn backward(
        &mut self,
        params: &mut ParamStore<D>,
        input: &D::Buf,
        images: usize,
        doutput: &D::Buf,
    ) -> Result<()> {
        match self {
            EncoderTail::Siglip { tower, tape } => tower.backward(params, tape, doutput),
            EncoderTail::Patch(projection) => projection.backward(params, input, images, doutput),
        }
    }
}
