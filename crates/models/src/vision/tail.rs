//! The trainable end of an image encoder, which trains with the VLM: SigLIP's last blocks (the
//! paper's frozen-vs-unfrozen ablation) or the patch projection (its no-pretrained-vision ablation).
//!
//! Its input is what the frozen part of the encoder wrote to the feature cache (a SigLIP trunk's
//! hidden states, or raw pixel patches), so training runs only the tail, never the frozen part.
//! Its parameters live in the VLM's store and so in every checkpoint of the stages that train it.

use std::path::Path;

use anyhow::{bail, ensure, Result};
use vlmix_engine::layers::BufLen;
use vlmix_engine::params::ParamStore;
use vlmix_engine::{Cpu, Device, SavedAttention};

use super::encoder::{is_siglip_dir, EncoderSpec, PATCH_NAME, PATCH_RESOLUTION, PATCH_SIZE};
use super::patch_projection::PatchProjection;
use super::siglip::{SiglipConfig, SiglipTape, SiglipVision, TapeShape};

/// Output width of the patch projection.
pub const PATCH_WIDTH: usize = 256;

/// The tail's own buffers for `images` images of `tokens` tokens of `width`: its output (the
/// projector's input) and that output's gradient (the projector's backward writes it).
fn own_lens(width: usize, tokens: usize, images: usize) -> [BufLen; 2] {
    let n = images * tokens * width;
    [BufLen::saved(n), BufLen::scratch(n)]
}

/// Every buffer a tail of output `width` holds after a training step of `images` images of
/// `tokens` tokens: its own, then, for SigLIP blocks, the tape of `tape`'s shape on a device whose
/// attention saves `saved`. What [`EncoderTail::forward`] and [`EncoderTail::backward`] allocate
/// (and keep for later steps of as many images or fewer), and what memory plans sum.
pub fn activation_lens(
    width: usize,
    tokens: usize,
    tape: Option<TapeShape>,
    saved: SavedAttention,
    images: usize,
) -> Vec<BufLen> {
    let mut lens = own_lens(width, tokens, images).to_vec();
    lens.extend(tape.map_or(Vec::new(), |t| t.lens(saved, images)));
    lens
}

#[allow(clippy::large_enum_variant)] // one per model, never moved in a loop: boxing would buy nothing
enum Kind<D: Device> {
    Siglip { tower: SiglipVision<D>, tape: SiglipTape<D> },
    Patch(PatchProjection<D>),
}

pub struct EncoderTail<D: Device = Cpu> {
    kind: Kind<D>,
    dev: D,
    /// Images of the last forward.
    images: usize,
    /// The last forward's output (`[images, tokens, output_width]`, a prefix) and its gradient;
    /// both keep their largest size.
    out: D::Owned,
    d_out: D::Owned,
}

/// `buf[..len]`, first regrown to `len` from nothing when it is shorter.
fn grown<'a, D: Device>(dev: &D, buf: &'a mut D::Owned, len: usize) -> &'a mut D::Buf {
    if dev.len(buf) < len {
        *buf = dev.zeros(0);
        *buf = dev.zeros(len);
    }
    dev.slice_mut(buf, 0..len)
}

impl<D: Device> EncoderTail<D> {
    /// The tail `spec` asks for, registered in `params` (pretrained SigLIP blocks, or a fresh patch
    /// projection seeded by `seed`); `None` for a frozen encoder.
    pub fn open(spec: &EncoderSpec, params: &mut ParamStore<D>, seed: u64) -> Result<Option<Self>> {
        let kind = if spec.source == PATCH_NAME {
            let size = spec.resolution.unwrap_or(PATCH_RESOLUTION) as usize;
            Kind::Patch(PatchProjection::new(size, PATCH_SIZE as usize, PATCH_WIDTH, params, seed)?)
        } else {
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
            Kind::Siglip { tower, tape: SiglipTape::new() }
        };
        let dev = params.device().clone();
        Ok(Some(Self { kind, images: 0, out: dev.zeros(0), d_out: dev.zeros(0), dev }))
    }

    /// Values per image token coming in (the cached features).
    pub fn input_width(&self) -> usize {
        match &self.kind {
            Kind::Siglip { tower, .. } => tower.config().hidden_size,
            Kind::Patch(projection) => projection.patch_dim(),
        }
    }

    /// Values per image token going out (into the projector).
    pub fn output_width(&self) -> usize {
        match &self.kind {
            Kind::Siglip { tower, .. } => tower.config().hidden_size,
            Kind::Patch(projection) => projection.width(),
        }
    }

    pub fn tokens(&self) -> usize {
        match &self.kind {
            Kind::Siglip { tower, .. } => tower.config().tokens(),
            Kind::Patch(projection) => projection.tokens(),
        }
    }

    fn own_lens(&self, images: usize) -> [BufLen; 2] {
        own_lens(self.output_width(), self.tokens(), images)
    }

    /// `[images, tokens, output_width]` from `input` (`[images, tokens, input_width]`); with
    /// `train`, keeps what [`backward`](Self::backward) needs.
    pub fn forward(&mut self, params: &ParamStore<D>, input: &D::Buf, images: usize, train: bool) -> Result<&D::Buf> {
        let len = self.dev.len(input);
        ensure!(
            len == images * self.tokens() * self.input_width(),
            "encoder tail input has {len} values, expected [{images}, {}, {}]",
            self.tokens(),
            self.input_width()
        );
        let n = self.own_lens(images)[0].len;
        let out = grown(&self.dev, &mut self.out, n);
        match &mut self.kind {
            Kind::Siglip { tower, tape } => tower.forward_into(params, input, images, train.then_some(tape), out)?,
            Kind::Patch(projection) => projection.forward_into(params, input, images, out)?,
        }
        self.images = images;
        Ok(self.dev.slice(&self.out, 0..n))
    }

    /// The last forward's output and the buffer for its gradient, which the projector's backward
    /// writes before [`backward`](Self::backward) reads it.
    pub fn output_and_gradient(&mut self) -> (&D::Buf, &mut D::Buf) {
        let [out, d_out] = self.own_lens(self.images).map(|b| b.len);
        (self.dev.slice(&self.out, 0..out), grown(&self.dev, &mut self.d_out, d_out))
    }

    /// Backward of the last training [`forward`](Self::forward) (same `input`): accumulates the
    /// tail's gradients from the output's gradient ([`output_and_gradient`](Self::output_and_gradient)).
    /// The frozen part before it needs no gradient.
    pub fn backward(&mut self, params: &mut ParamStore<D>, input: &D::Buf, images: usize) -> Result<()> {
        let n = self.own_lens(images)[1].len;
        ensure!(
            images == self.images && self.dev.len(&self.d_out) >= n,
            "encoder tail backward of {images} images without a forward and an output gradient for them"
        );
        let d_out = self.dev.slice(&self.d_out, 0..n);
        match &mut self.kind {
            Kind::Siglip { tower, tape } => tower.backward(params, tape, d_out),
            Kind::Patch(projection) => projection.backward(params, input, images, d_out),
        }
    }
}
