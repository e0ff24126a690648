//! Memory planning: what one training step holds, part by part, and the micro-batch that fits.
//!
//! The counts follow the buffers the code allocates (`lm/workspace.rs`, the engine layers' acts and
//! scratch, the VLM's projector and encoder tail, the batch the sources build), so a stage can plan
//! *before* it allocates anything and refuse a config that cannot fit with the numbers, instead of
//! dying in an allocation abort. Attention keeps its full softmax probabilities
//! (`[micro-batch, heads, seq, seq]` per layer) for the backward; the plan counts them, which is what
//! bounds the micro-batch at long sequences.

use std::path::Path;

use anyhow::{bail, Context, Result};

use crate::lm::LmConfig;
use crate::vision::encoder::{is_siglip_dir, EncoderSpec, PATCH_NAME};
use crate::vision::siglip::SiglipConfig;
use crate::vision::tail::PATCH_WIDTH;

const GIB: f64 = (1u64 << 30) as f64;
/// Share of the available memory a plan may use; the rest covers what the model does not count
/// (allocator slack, the tokenizer, the corpus index, memory-mapped shards).
pub const USABLE_FRACTION: f64 = 0.9;

/// Bytes of `bytes` as GiB with two decimals, the unit of every memory message.
pub fn gib(bytes: u64) -> String {
    format!("{:.2} GiB", bytes as f64 / GIB)
}

/// Storage of activations. Weights, gradients and AdamW moments are f32 in every case (master
/// copies); the CPU engine computes in `F32`, `Bf16` describes a mixed-precision device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Precision {
    F32,
    Bf16,
}

impl Precision {
    fn bytes(self) -> u64 {
        match self {
            Precision::F32 => 4,
            Precision::Bf16 => 2,
        }
    }
}

/// The trainable end of the image encoder, as far as memory is concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TailShape {
    /// The patch projection: `[in_dim] -> [width]` per image token.
    Linear { in_dim: usize, width: usize },
    /// `blocks` ViT blocks (SigLIP) of `width`, MLP `hidden`, `heads` heads.
    Vit { blocks: usize, width: usize, hidden: usize, heads: usize },
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

    /// Values the tail's forward keeps and its backward uses, per image of `tokens` tokens.
    fn activations_per_image(self, tokens: usize) -> u64 {
        match self {
            TailShape::Linear { width, .. } => prod(&[2, tokens, width]),
            // Per block (SiglipTape): x, ln1_out, h, ln2_out, q, k, v, att [T, W]; GELU pre/act [T, I];
            // probabilities [heads, T, T]; plus shared backward scratch and the output and its gradient.
            TailShape::Vit { blocks, width: w, hidden, heads } => {
                let block = prod(&[tokens, 8 * w + 2 * hidden + 4]) + prod(&[heads, tokens, tokens]);
                prod(&[blocks]) * block + prod(&[tokens, 4 * w + 2 * hidden]) + prod(&[2, tokens, w])
            }
        }
    }
}

/// Images in the batch: how many tokens each, how wide the cached features, and any trainable tail.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VisionShape {
    pub image_tokens: usize,
    pub feature_width: usize,
    pub tail: Option<TailShape>,
}

/// What a training step is made of: the LM, the images (VLM stages) and the activation precision.
#[derive(Clone, Debug, PartialEq)]
pub struct TrainShape {
    pub lm: LmConfig,
    pub vision: Option<VisionShape>,
    pub precision: Precision,
    /// Worker threads, each with its own attention-backward buffer of `[seq, seq]`.
    pub threads: usize,
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
    /// Bytes available when planned (MemAvailable, or a cgroup limit when lower).
    pub available: u64,
}

/// Product of sizes in u64, saturating: absurd configs must give huge numbers, never wrap around.
fn prod(xs: &[usize]) -> u64 {
    xs.iter().fold(1u64, |a, &x| a.saturating_mul(x as u64))
}

impl TrainShape {
    /// A text-only step of `lm` at f32 on this machine's thread pool.
    pub fn text(lm: LmConfig) -> Self {
        Self { lm, vision: None, precision: Precision::F32, threads: rayon::current_num_threads() }
    }

    /// A VLM step (projector always, tail if any) at f32 on this machine's thread pool.
    pub fn vlm(lm: LmConfig, vision: VisionShape) -> Self {
        Self { vision: Some(vision), ..Self::text(lm) }
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

    /// Bytes of the LM's activation workspace for `batch` sequences of `seq` (exactly what
    /// `lm/workspace.rs` allocates), split into attention probabilities, logits, other saved
    /// activations and backward scratch.
    pub fn lm_activation_parts(&self, batch: usize, seq: usize) -> [Part; 4] {
        let c = &self.lm;
        let b = self.precision.bytes();
        let (d, h, layers) = (c.d_model, c.ffn_hidden(), c.n_layers);
        let rows = batch.saturating_mul(seq);
        let rd = prod(&[rows, d]);
        let qk = if c.qk_norm { 2 * rd + 4 * rows as u64 } else { 0 };
        // Per block: h, norm outputs x2, q, k, v, att; two norms' mean/rstd; SwiGLU gate_up + hidden; rope table.
        let block = 7 * rd + qk + 4 * rows as u64 + prod(&[rows, 3 * h]) + prod(&[seq, c.head_dim()]);
        let saved = prod(&[layers])
            .saturating_mul(block)
            .saturating_add(prod(&[layers + 2, rows, d]))
            .saturating_add(3 * rows as u64);
        let probs = prod(&[layers, batch, c.n_heads, seq, seq]);
        // d_residual, d_branch, d_norm; attention dq/dk/dv/datt; SwiGLU dhidden + dgate_up.
        let scratch = 7 * rd + prod(&[rows, 3 * h]);
        // The CPU attention backward keeps one [seq, seq] buffer per worker thread (always f32).
        let per_thread = prod(&[self.threads.max(1), seq, seq, 4]);
        [
            Part { name: "attention probabilities (saved for backward)", bytes: probs.saturating_mul(b) },
            Part { name: "logits", bytes: prod(&[rows, c.vocab]).saturating_mul(b) },
            Part { name: "other saved activations", bytes: saved.saturating_mul(b) },
            Part { name: "backward scratch", bytes: scratch.saturating_mul(b).saturating_add(per_thread) },
        ]
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
            let b = self.precision.bytes();
            let d = self.lm.d_model;
            let image_values = prod(&[v.image_tokens, v.feature_width]);
            // The source reads the global batch's cached features (f32) and each micro-batch copies its share.
            let copies = if micro_batch < global_batch { global_batch + micro_batch } else { global_batch };
            parts.push(Part {
                name: "image features read from the feature cache",
                bytes: prod(&[copies, 4]).saturating_mul(image_values),
            });
            // Projected rows and their gradient, projector GELU acts and scratch (hidden = d), the tail.
            let per_image = prod(&[6, v.image_tokens, d])
                .saturating_add(v.tail.map_or(0, |t| t.activations_per_image(v.image_tokens)));
            parts.push(Part {
                name: "projector and encoder-tail activations",
                bytes: per_image.saturating_mul(micro_batch as u64).saturating_mul(b),
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
                "needs {} at micro-batch {m} for {}; this machine has {} available (MemAvailable; plans use {:.0}% of it). {hint}",
                gib(b.total()),
                b.largest(4),
                gib(available),
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

/// Bytes this process may still allocate: `MemAvailable` from /proc/meminfo, or the cgroup's
/// remaining limit when that is lower (containers often see the host's MemAvailable).
pub fn available_memory() -> Result<u64> {
    let text = std::fs::read_to_string("/proc/meminfo")
        .context("reading /proc/meminfo for MemAvailable (memory planning needs Linux)")?;
    let mut available = meminfo_available(&text).context("/proc/meminfo has no MemAvailable line")?;
    let cgroup = |name: &str| {
        std::fs::read_to_string(Path::new("/sys/fs/cgroup").join(name)).ok().and_then(|t| t.trim().parse::<u64>().ok())
    };
    if let (Some(max), Some(current)) = (cgroup("memory.max"), cgroup("memory.current")) {
        available = available.min(max.saturating_sub(current));
    }
    Ok(available)
}

fn meminfo_available(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Refuses to allocate `bytes` for `what` when the machine does not have them: an error with the
/// numbers instead of an allocation abort.
pub fn ensure_available(what: &str, bytes: u64) -> Result<()> {
    let available = available_memory()?;
    if bytes > available {
        bail!("{what} needs {}, this machine has {} available (MemAvailable)", gib(bytes), gib(available));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB_BYTES: u64 = 1 << 30;

    fn shape(preset: &str) -> TrainShape {
        TrainShape { threads: 2, ..TrainShape::text(LmConfig::preset(preset).unwrap()) }
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
    fn bf16_halves_the_activations_but_not_the_weights() {
        let f32_shape = shape("openlm-79m");
        let bf16_shape = TrainShape { precision: Precision::Bf16, ..f32_shape.clone() };
        let (a, b) = (f32_shape.breakdown(64, 4), bf16_shape.breakdown(64, 4));
        assert_eq!(a.parts[0], b.parts[0]);
        assert_eq!(a.parts[3].bytes, 2 * b.parts[3].bytes);
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
        let err = format!(
            "{:#}",
            TrainShape { threads: 2, ..TrainShape::text(lm) }.plan(256, None, 23 * GIB_BYTES).unwrap_err()
        );
        assert!(
            err.contains("at micro-batch 1")
                && err.contains("optimizer state")
                && err.contains("this machine has 23.00 GiB available"),
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
        let text = TrainShape::text(lm.clone());
        let vlm = TrainShape::vlm(lm.clone(), vision);
        let d = lm.d_model as u64;
        assert_eq!(vlm.param_count() - text.param_count(), d * 320 + d * d + 2 * d);
        let with_tail = TrainShape::vlm(
            lm,
            VisionShape { tail: Some(TailShape::Vit { blocks: 2, width: 320, hidden: 1024, heads: 4 }), ..vision },
        );
        assert!(with_tail.breakdown(8, 2).total() > vlm.breakdown(8, 2).total() + 2 * 49 * 49 * 4 * 2 * 4);
        let features = vlm.breakdown(8, 2).parts.iter().find(|p| p.name.starts_with("image features")).unwrap().bytes;
        assert_eq!(features, (8 + 2) * 49 * 320 * 4);
    }

    #[test]
    fn mem_available_is_read_in_bytes() {
        let text = "MemTotal:       24000000 kB\nMemFree:         1000 kB\nMemAvailable:   23537392 kB\n";
        assert_eq!(meminfo_available(text), Some(23537392 * 1024));
        assert_eq!(meminfo_available("MemTotal: 1 kB\n"), None);
        assert!(available_memory().unwrap() > 0);
    }
}
