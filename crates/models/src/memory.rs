//! Memory planning: what one training step holds, part by part, and the micro-batch that fits.
//!
//! The counts follow the buffers the code allocates (`lm/workspace.rs`, the engine layers' acts and
//! scratch, the VLM's projector and encoder tail, the batch the sources build), so a stage can plan
//! *before* it allocates anything and refuse a config that cannot fit with the numbers, instead of
//! dying in an allocation abort. Plans are made for a device, described by plain data
//! ([`DeviceMemory`], so a GPU plan can be made and tested anywhere) against its available memory
//! ([`vlmix_engine::Device::available_memory`]: MemAvailable on the CPU, free memory on a GPU). On the CPU,
//! attention keeps its full softmax probabilities (`[micro-batch, heads, seq, seq]` per layer) for the
//! backward, which is what bounds the micro-batch at long sequences; under flash attention (CUDA) it
//! keeps `[micro-batch, heads, seq]` log-sum-exps and the logits dominate instead.

use std::path::Path;

use anyhow::{bail, Result};
use vlmix_engine::device::gib;
use vlmix_engine::layers::{BufLen, Role};
use vlmix_engine::{AttnShape, DeviceMemory, SavedAttention};

use crate::lm::LmConfig;
use crate::vision::encoder::{is_siglip_dir, EncoderSpec, FeatureLayer, PATCH_NAME};
use crate::vision::siglip::{SiglipConfig, TapeShape};
use crate::vision::tail::PATCH_WIDTH;

/// Share of the available memory a plan may use; the rest covers what the model does not count
/// (allocator slack, the tokenizer, the corpus index, memory-mapped shards).
pub const USABLE_FRACTION: f64 = 0.9;

/// The trainable end of the image encoder, as far as memory is concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TailShape {
    /// The patch projection: `[in_dim] -> [width]` per image token.
    Linear { in_dim: usize, width: usize },
    /// `blocks` ViT blocks (SigLIP) of `width`, MLP `hidden`, `heads` heads; `post_layernorm`
    /// after them with `post` (the last-layer features).
    Vit { blocks: usize, width: usize, hidden: usize, heads: usize, post: bool },
}

impl TailShape {
    /// The tail `spec` trains, if any; `feature_width` is what the cache holds per image token.
    pub fn of(spec: &EncoderSpec, feature_width: usize) -> Result<Option<Self>> {
        if spec.source == PATCH_NAME {
            return Ok(Some(TailShape::Linear { in_dim: feature_width, width: PATCH_WIDTH }));
        }
        if spec.trainable_blocks == 0 || !is_siglip_dir(Path::new(&spec.source)) {
            return Ok(None);
        }
        let config = SiglipConfig::from_file(&Path::new(&spec.source).join("config.json"))?;
        Ok(Some(TailShape::Vit {
            blocks: spec.trainable_blocks,
            width: config.hidden_size,
            hidden: config.intermediate_size,
            heads: config.num_attention_heads,
            post: spec.layer == FeatureLayer::Last,
        }))
    }

    fn out_width(self) -> usize {
        match self {
            TailShape::Linear { width, .. } | TailShape::Vit { width, .. } => width,
        }
    }

    fn params(self) -> u64 {
        match self {
            TailShape::Linear { in_dim, width } => prod(&[in_dim, width]) + width as u64,
            // Per block: in_proj + out_proj with biases, fc1 + fc2 with biases, two LayerNorms; then post_layernorm.
            TailShape::Vit { blocks, width: w, hidden, .. } => {
                let block =
                    prod(&[4, w, w]) + 4 * w as u64 + prod(&[2, w, hidden]) + (hidden + w) as u64 + 4 * w as u64;
                prod(&[blocks]) * block + 2 * w as u64
            }
        }
    }

    /// Every buffer the tail holds after a training step of `images` images of `tokens` tokens on
    /// a device whose attention saves `saved`: what the tail allocates
    /// ([`crate::vision::tail::activation_lens`]). The CPU attention backward's per-thread
    /// `[tokens, tokens]` buffers come and go inside the kernel, within the LM's (its sequence holds
    /// the image's tokens and more).
    pub fn activation_lens(self, tokens: usize, images: usize, saved: SavedAttention) -> Vec<BufLen> {
        let tape = match self {
            TailShape::Linear { .. } => None,
            TailShape::Vit { blocks, width, hidden, heads, post } => {
                Some(TapeShape { width, hidden, heads, tokens, blocks, post })
            }
        };
        crate::vision::tail::activation_lens(self.out_width(), tokens, tape, saved, images)
    }
}

/// Images in the batch: how many tokens each, how wide the cached features, and any trainable tail.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VisionShape {
    pub image_tokens: usize,
    pub feature_width: usize,
    pub tail: Option<TailShape>,
}

impl VisionShape {
    /// The images a stage trains on: `image_tokens` cached features of `feature_width` per image,
    /// through the tail `encoder` trains (none without an encoder record).
    pub fn new(image_tokens: usize, feature_width: usize, encoder: Option<&EncoderSpec>) -> Result<Self> {
        let tail = match encoder {
            Some(spec) => TailShape::of(spec, feature_width)?,
            None => None,
        };
        Ok(VisionShape { image_tokens, feature_width, tail })
    }
}

/// What a training step is made of: the LM, the images (VLM stages) and the device it runs on.
/// Every buffer is f32 (the CUDA bf16 mode rounds only the inputs of its products).
#[derive(Clone, Debug, PartialEq)]
pub struct TrainShape {
    pub lm: LmConfig,
    pub vision: Option<VisionShape>,
    /// What attention saves there, and its per-worker backward buffers ([`vlmix_engine::Device::memory`]).
    pub device: DeviceMemory,
}

/// One consumer of memory.
#[derive(Clone, Debug, PartialEq)]
pub struct Part {
    pub name: &'static str,
    pub bytes: u64,
}

/// Every consumer at one micro-batch size.
#[derive(Clone, Debug, PartialEq)]
pub struct Breakdown {
    pub micro_batch: usize,
    pub parts: Vec<Part>,
}

impl Breakdown {
    pub fn total(&self) -> u64 {
        self.parts.iter().fold(0u64, |a, p| a.saturating_add(p.bytes))
    }

    /// "parameters 1.20 GiB, logits 0.80 GiB, ..." for the `n` largest parts.
    pub fn largest(&self, n: usize) -> String {
        let mut parts: Vec<&Part> = self.parts.iter().filter(|p| p.bytes > 0).collect();
        parts.sort_by_key(|p| std::cmp::Reverse(p.bytes));
        parts.iter().take(n).map(|p| format!("{} {}", p.name, gib(p.bytes))).collect::<Vec<_>>().join(", ")
    }
}

/// The chosen micro-batch and what the step then needs.
#[derive(Clone, Debug, PartialEq)]
pub struct MemoryPlan {
    pub global_batch: usize,
    pub micro_batch: usize,
    /// Forward/backward passes per optimizer step.
    pub micro_batches: usize,
    pub breakdown: Breakdown,
    /// Bytes available when planned ([`vlmix_engine::Device::available_memory`]).
    pub available: u64,
}

/// Product of sizes in u64, saturating: absurd configs must give huge numbers, never wrap around.
fn prod(xs: &[usize]) -> u64 {
    xs.iter().fold(1u64, |a, &x| a.saturating_mul(x as u64))
}

impl TrainShape {
    /// A text-only step of `lm` on `device` ([`vlmix_engine::Device::memory`]).
    pub fn text(lm: LmConfig, device: DeviceMemory) -> Self {
        Self { lm, vision: None, device }
    }

    /// A VLM step (projector always, tail if any) on `device`.
    pub fn vlm(lm: LmConfig, vision: VisionShape, device: DeviceMemory) -> Self {
        Self { vision: Some(vision), ..Self::text(lm, device) }
    }

    /// Parameters of everything that lives in the step's `ParamStore`.
    pub fn param_count(&self) -> u64 {
        let mut n = self.lm.param_count().total as u64;
        if let Some(v) = &self.vision {
            let d = self.lm.d_model;
            let input = v.tail.map_or(v.feature_width, TailShape::out_width);
            // Projector: fc1 [d, input] + bias, fc2 [d, d] + bias.
            n = n.saturating_add(prod(&[d, input]) + prod(&[d, d]) + 2 * d as u64);
            n = n.saturating_add(v.tail.map_or(0, TailShape::params));
        }
        n
    }

    /// Bytes of the LM's activations for `batch` sequences of `seq`: the sum over what
    /// `lm/workspace.rs` allocates on the device ([`crate::lm::activation_lens`]), split into
    /// attention's saved buffers (probabilities, or log-sum-exps under flash attention), logits,
    /// other saved activations and backward scratch, plus the per-thread buffers the CPU's
    /// attention backward allocates inside the kernel.
    pub fn lm_activation_parts(&self, batch: usize, seq: usize) -> [Part; 4] {
        let c = &self.lm;
        let attn = AttnShape { batch, seq, heads: c.n_heads, head_dim: c.head_dim(), causal: true };
        let saved_name = match self.device.saved_attention.is_flash(attn) {
            true => "attention log-sum-exps (saved for backward)",
            false => "attention probabilities (saved for backward)",
        };
        let mut parts = [
            Part { name: saved_name, bytes: 0 },
            Part { name: "logits", bytes: 0 },
            Part { name: "other saved activations", bytes: 0 },
            // The CPU attention backward keeps one [seq, seq] buffer per worker thread.
            Part { name: "backward scratch", bytes: prod(&[self.device.attention_workers, seq, seq, 4]) },
        ];
        for l in crate::lm::activation_lens(c, self.device.saved_attention, batch, seq) {
            let part = match l.role {
                Role::SavedAttention => 0,
                Role::Logits => 1,
                Role::Saved => 2,
                Role::Scratch => 3,
            };
            parts[part].bytes = parts[part].bytes.saturating_add(prod(&[l.len, 4]));
        }
        parts
    }

    /// Every consumer of a step over a global batch of `global_batch` sequences taken `micro_batch`
    /// at a time (the last micro-batch may be smaller). VLM stages assume every sequence carries an
    /// image, the worst case of any mix.
    pub fn breakdown(&self, global_batch: usize, micro_batch: usize) -> Breakdown {
        let seq = self.lm.seq_len;
        let p = self.param_count();
        let mut parts = vec![
            Part { name: "parameters", bytes: p.saturating_mul(4) },
            Part { name: "gradients", bytes: p.saturating_mul(4) },
            Part { name: "optimizer state (AdamW moments)", bytes: p.saturating_mul(8) },
        ];
        parts.extend(self.lm_activation_parts(micro_batch, seq));
        // Token ids, targets (u32) and loss mask (f32) of the global batch, plus one micro-batch's copy.
        parts.push(Part { name: "batch tokens", bytes: prod(&[global_batch + micro_batch, seq, 12]) });
        if let Some(v) = &self.vision {
            let d = self.lm.d_model;
            let image_values = prod(&[v.image_tokens, v.feature_width]);
            // The source reads the global batch's cached features (f32) and each micro-batch copies its share.
            let copies = if micro_batch < global_batch { global_batch + micro_batch } else { global_batch };
            parts.push(Part {
                name: "image features read from the feature cache",
                bytes: prod(&[copies, 4]).saturating_mul(image_values),
            });
            // The VLM's image buffers and projector workspace (one image per sequence, the worst
            // case), then the encoder tail's.
            let input = v.tail.map_or(v.feature_width, TailShape::out_width);
            let mut lens = crate::vlm::image_activation_lens(input, d, v.image_tokens, micro_batch, micro_batch);
            if let Some(tail) = v.tail {
                lens.extend(tail.activation_lens(v.image_tokens, micro_batch, self.device.saved_attention));
            }
            parts.push(Part {
                name: "projector and encoder-tail activations",
                bytes: lens.iter().fold(0u64, |a, l| a.saturating_add(prod(&[l.len, 4]))),
            });
        }
        Breakdown { micro_batch, parts }
    }

    /// The micro-batch for `global_batch`: `requested` if it fits, else the largest that fits in
    /// [`USABLE_FRACTION`] of `available`, evened out so the micro-batches of a step have equal
    /// sizes where possible. Errors (naming the largest consumers) when nothing fits.
    pub fn plan(&self, global_batch: usize, requested: Option<usize>, available: u64) -> Result<MemoryPlan> {
        if global_batch == 0 {
            bail!("batch_size must be positive");
        }
        let usable = (available as f64 * USABLE_FRACTION) as u64;
        let fits = |m: usize| self.breakdown(global_batch, m).total() <= usable;
        let refuse = |m: usize, hint: &str| -> anyhow::Error {
            let b = self.breakdown(global_batch, m);
            anyhow::anyhow!(
                "needs {} at micro-batch {m} for {}; {} available ({}; plans use {:.0}% of it). {hint}",
                gib(b.total()),
                b.largest(4),
                gib(available),
                self.device.available_from,
                USABLE_FRACTION * 100.0
            )
        };
        let micro = match requested {
            Some(0) => bail!("micro_batch_size must be positive"),
            Some(m) => {
                let m = m.min(global_batch);
                if !fits(m) {
                    let hint = if fits(1) {
                        "Lower micro_batch_size, or leave it out to have it chosen."
                    } else {
                        "Even micro-batch 1 does not fit: use a smaller model or seq_len, or a machine with more memory."
                    };
                    return Err(refuse(m, hint));
                }
                m
            }
            None => {
                if !fits(1) {
                    return Err(refuse(1, "Even micro-batch 1 does not fit: use a smaller model or seq_len, or a machine with more memory."));
                }
                // Memory grows with the micro-batch, so the largest that fits is found by bisection.
                let (mut lo, mut hi) = (1, global_batch);
                while lo < hi {
                    let mid = lo + (hi - lo).div_ceil(2);
                    if fits(mid) {
                        lo = mid;
                    } else {
                        hi = mid - 1;
                    }
                }
                global_batch.div_ceil(global_batch.div_ceil(lo))
            }
        };
        Ok(MemoryPlan {
            global_batch,
            micro_batch: micro,
            micro_batches: global_batch.div_ceil(micro),
            breakdown: self.breakdown(global_batch, micro),
            available,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vlmix_engine::{Device, FlashHeadDims, SavedAttention};

    const GIB_BYTES: u64 = 1 << 30;
    /// A two-thread CPU, as `Cpu::memory` describes one.
    const CPU: DeviceMemory = DeviceMemory {
        saved_attention: SavedAttention::Probabilities,
        attention_workers: 2,
        available_from: "MemAvailable",
    };
    /// A GPU with flash attention, as `Cuda::memory` describes one (no GPU needed to plan for it).
    const GPU: DeviceMemory = DeviceMemory {
        saved_attention: SavedAttention::Flash(FlashHeadDims { multiple_of: 4, max: 128 }),
        attention_workers: 0,
        available_from: "free GPU memory",
    };

    fn shape(preset: &str) -> TrainShape {
        TrainShape::text(LmConfig::preset(preset).unwrap(), CPU)
    }

    #[test]
    fn weights_gradients_and_moments_are_four_copies_of_the_parameters() {
        let s = shape("openlm-79m");
        let b = s.breakdown(512, 1);
        let p = s.lm.param_count().total as u64;
        assert_eq!(b.parts[0].bytes, 4 * p);
        assert_eq!(b.parts[1].bytes, 4 * p);
        assert_eq!(b.parts[2].bytes, 8 * p);
    }

    #[test]
    fn attention_probabilities_grow_with_the_square_of_the_sequence() {
        let s = shape("openlm-79m");
        let [probs, logits, ..] = s.lm_activation_parts(1, 2048);
        // 8 layers x 4 heads x 2048^2 x 4 bytes = 512 MiB per sequence; logits 2048 x 50432 x 4.
        assert_eq!(probs.bytes, 8 * 4 * 2048 * 2048 * 4);
        assert_eq!(logits.bytes, 2048 * 50432 * 4);
        let [half, ..] = s.lm_activation_parts(1, 1024);
        assert_eq!(probs.bytes, 4 * half.bytes);
    }

    #[test]
    fn the_micro_batch_is_the_largest_that_fits_evened_out() {
        let s = shape("openlm-79m");
        let plan = s.plan(512, None, 23 * GIB_BYTES).unwrap();
        assert!(plan.breakdown.total() as f64 <= 23.0 * GIB_BYTES as f64 * USABLE_FRACTION);
        assert!(plan.micro_batch >= 2 && plan.micro_batch < 512, "{plan:?}");
        assert_eq!(plan.micro_batches, 512usize.div_ceil(plan.micro_batch));
        // One pass fewer would need a micro-batch that does not fit.
        let fewer = 512usize.div_ceil(plan.micro_batches - 1);
        assert!(s.breakdown(512, fewer).total() as f64 > 23.0 * GIB_BYTES as f64 * USABLE_FRACTION, "{plan:?}");
        // A small global batch that fits whole is one micro-batch.
        let small = shape("tiny").plan(16, None, 23 * GIB_BYTES).unwrap();
        assert_eq!((small.micro_batch, small.micro_batches), (16, 1));
        // A requested micro-batch is used as given.
        assert_eq!(s.plan(512, Some(3), 23 * GIB_BYTES).unwrap().micro_batches, 171);
    }

    #[test]
    fn an_absurd_model_is_refused_naming_its_largest_consumers() {
        let mut lm = LmConfig::preset("openlm-1b").unwrap();
        (lm.d_model, lm.n_layers, lm.n_heads) = (65536, 200, 512);
        let err = format!("{:#}", TrainShape::text(lm, CPU).plan(256, None, 23 * GIB_BYTES).unwrap_err());
        assert!(
            err.contains("at micro-batch 1")
                && err.contains("optimizer state")
                && err.contains("23.00 GiB available (MemAvailable"),
            "{err}"
        );
        // The 1.4B model's weights, gradients and moments alone exceed 23 GiB.
        let err = format!("{:#}", shape("openlm-1b").plan(256, None, 23 * GIB_BYTES).unwrap_err());
        assert!(
            err.contains("needs 35.")
                && err.contains("optimizer state (AdamW moments) 10.7")
                && err.contains("parameters 5.3"),
            "{err}"
        );
        // A requested micro-batch that is too large names the knob.
        let err = format!("{:#}", shape("openlm-79m").plan(512, Some(512), 23 * GIB_BYTES).unwrap_err());
        assert!(err.contains("at micro-batch 512") && err.contains("Lower micro_batch_size"), "{err}");
    }

    #[test]
    fn images_add_features_projector_and_tail() {
        let lm = LmConfig::preset("tiny").unwrap();
        let vision = VisionShape { image_tokens: 49, feature_width: 320, tail: None };
        let text = TrainShape::text(lm.clone(), CPU);
        let vlm = TrainShape::vlm(lm.clone(), vision, CPU);
        let d = lm.d_model as u64;
        assert_eq!(vlm.param_count() - text.param_count(), d * 320 + d * d + 2 * d);
        let with_tail = TrainShape::vlm(
            lm,
            VisionShape {
                tail: Some(TailShape::Vit { blocks: 2, width: 320, hidden: 1024, heads: 4, post: true }),
                ..vision
            },
            CPU,
        );
        assert!(with_tail.breakdown(8, 2).total() > vlm.breakdown(8, 2).total() + 2 * 49 * 49 * 4 * 2 * 4);
        let features = vlm.breakdown(8, 2).parts.iter().find(|p| p.name.starts_with("image features")).unwrap().bytes;
        assert_eq!(features, (8 + 2) * 49 * 320 * 4);
    }

    #[test]
    fn flash_attention_plans_log_sum_exps_instead_of_probabilities() {
        let lm = LmConfig::preset("openlm-79m").unwrap();
        let (cpu, gpu) = (TrainShape::text(lm.clone(), CPU), TrainShape::text(lm.clone(), GPU));
        let [saved, ..] = gpu.lm_activation_parts(2, 2048);
        // 8 layers x 2 sequences x 4 heads x 2048 rows x 4 bytes, what Cuda::attention_saved_len sizes.
        assert_eq!(saved.bytes, 8 * 2 * 4 * 2048 * 4);
        assert!(saved.name.contains("log-sum-exps"), "{}", saved.name);
        let [probs, logits, other, cpu_scratch] = cpu.lm_activation_parts(2, 2048);
        assert!(probs.name.contains("probabilities") && probs.bytes == 2048 * saved.bytes);
        // The rest is the same but the CPU's per-thread [seq, seq] backward buffers.
        let [_, gpu_logits, gpu_other, gpu_scratch] = gpu.lm_activation_parts(2, 2048);
        assert_eq!((logits, other), (gpu_logits, gpu_other));
        assert_eq!(cpu_scratch.bytes - gpu_scratch.bytes, 2 * 2048 * 2048 * 4);
        // A head dimension the flash kernels do not take saves probabilities on the GPU too.
        let odd = LmConfig { d_model: 8 * 7, n_heads: 8, ..lm };
        let [saved, ..] = TrainShape::text(odd, GPU).lm_activation_parts(1, 256);
        assert_eq!(saved.bytes, 8 * 8 * 256 * 256 * 4);
    }

    #[test]
    fn a_gpu_plan_uses_its_free_memory_and_fits_a_larger_micro_batch() {
        // The paper's 1.4B model at seq 2048 on an H200's ~139 GiB free, no GPU needed: micro-batch
        // 13 (119 GiB) with log-sum-exps, 7 if attention saved probabilities.
        let lm = LmConfig::preset("openlm-1b").unwrap();
        let h200 = 139 * GIB_BYTES;
        let gpu = TrainShape::text(lm.clone(), GPU).plan(256, None, h200).unwrap();
        let with_probs = TrainShape::text(lm.clone(), CPU).plan(256, None, h200).unwrap();
        assert_eq!((gpu.micro_batch, with_probs.micro_batch), (13, 7));
        assert!(gpu.breakdown.total() as f64 <= h200 as f64 * USABLE_FRACTION);
        assert_eq!(gpu.available, h200);
        // Too little free memory names the GPU's, not the machine's.
        let err = format!("{:#}", TrainShape::text(lm, GPU).plan(256, None, 20 * GIB_BYTES).unwrap_err());
        assert!(err.contains("20.00 GiB available (free GPU memory"), "{err}");
    }

    #[test]
    fn the_cpu_plans_against_mem_available() {
        let cpu = vlmix_engine::Cpu::new().unwrap();
        assert_eq!(cpu.memory().saved_attention, SavedAttention::Probabilities);
        assert!(cpu.available_memory().unwrap() > 0);
        let err = vlmix_engine::device::ensure_available(&cpu, "a test buffer", u64::MAX).unwrap_err().to_string();
        assert!(err.contains("a test buffer needs") && err.contains("MemAvailable"), "{err}");
    }
}
