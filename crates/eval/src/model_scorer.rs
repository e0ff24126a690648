//! The [`Scorer`] over a real model: a trained VLM, or a text-only LM (a pre-training checkpoint).
//!
//! Sequences are laid out the way training lays them out, so the model is asked in its own format:
//! an image item is `[image tokens][prompt text without the <image> marker][continuation]` (the
//! image always comes first, wherever the template puts the marker), and a text item is
//! `[EOS][context][continuation]`, because in the packed text stream every document follows an EOS.
//! Contexts longer than the model's window are cut from the left; image tokens are always kept.

use crate::prompt::IMAGE_MARKER;
use crate::scorer::{ImageRef, LogLikelihood, Scorer};
use anyhow::{bail, ensure, Context, Result};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::path::{Path, PathBuf};
use vlmix_data::tokenizer::TextTokenizer;
use vlmix_engine::checkpoint::resolve_checkpoint;
use vlmix_engine::params::ParamStore;
use vlmix_engine::safetensors_io::SafetensorsFile;
use vlmix_models::lm::{InjectedEmbeddings, Lm, LmInput};
use vlmix_models::stage_record::{load_vlm, weights_of, StageRecord};
use vlmix_models::vision::encoder::ImageEncoder;
use vlmix_models::vision::feature_cache::FeatureCache;
use vlmix_models::vision::projector::FC1_WEIGHT;
use vlmix_models::vlm::Vlm;

/// Rows (choices or rolling windows) run in one forward pass, at most.
const MAX_ROWS: usize = 16;
/// Logit values one forward may produce (256 MB): big-vocabulary, long-window models get fewer rows.
const LOGITS_BUDGET: usize = 64 << 20;

/// The network being scored.
#[allow(clippy::large_enum_variant)] // one per scorer, never moved in a loop: boxing would buy nothing
pub enum ScoredModel {
    /// No projector: text items only.
    Text(Lm),
    Vision(Vlm),
}

impl ScoredModel {
    fn lm(&mut self) -> &mut Lm {
        match self {
            ScoredModel::Text(lm) => lm,
            ScoredModel::Vision(vlm) => &mut vlm.lm,
        }
    }
}

/// Frozen-encoder features of image files, through the shared on-disk cache.
pub struct ImageFeatures {
    encoder: Box<dyn ImageEncoder>,
    cache: FeatureCache,
}

impl ImageFeatures {
    /// Opens the cache of `encoder` under `cache_root` (usually `$VLMIX_HOME/features`).
    pub fn open(encoder: Box<dyn ImageEncoder>, cache_root: &Path) -> Result<Self> {
        let cache = FeatureCache::open(cache_root, encoder.as_ref())?;
        Ok(Self { encoder, cache })
    }

    pub fn encoder(&self) -> &dyn ImageEncoder {
        self.encoder.as_ref()
    }

    /// `[tokens * width]` features of one image file (or of [`ImageRef::blank`]).
    pub fn of(&mut self, image: &ImageRef) -> Result<Vec<f32>> {
        let path = &image.path;
        let decoded = if image.is_blank() {
            ImageRef::blank_pixels()
        } else {
            let bytes = std::fs::read(path).with_context(|| format!("reading image {}", path.display()))?;
            vlmix_data::image_io::decode_rgb(&bytes).with_context(|| format!("decoding image {}", path.display()))?
        };
        self.cache
            .features(self.encoder.as_ref(), &[&decoded])
            .with_context(|| format!("encoding image {}", path.display()))
    }
}

/// How [`ModelScorer::generate_with`] picks each token.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Decoding {
    pub max_tokens: usize,
    /// 0 = greedy (argmax); otherwise softmax(logits / temperature) is sampled.
    pub temperature: f32,
    /// Sample only among the `k` most likely tokens (None = all).
    pub top_k: Option<usize>,
    pub seed: u64,
}

impl Decoding {
    pub fn greedy(max_tokens: usize) -> Self {
        Self { max_tokens, temperature: 0.0, top_k: None, seed: 0 }
    }
}

/// One forward window of [`ModelScorer::rolling_loglikelihood`] over a document of `n` tokens:
/// inputs are `[EOS] + tokens` from `start` to `end` (exclusive), and the window scores tokens
/// `end - scored .. end` (each token exactly once over all windows).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RollingWindow {
    pub start: usize,
    pub end: usize,
    pub scored: usize,
}

/// lm-eval's `get_rolling_token_windows` with one token of context: disjoint blocks of `seq_len`
/// scored tokens, each fed the longest context that fits (the first from the EOS prefix).
pub fn rolling_windows(n_tokens: usize, seq_len: usize) -> Vec<RollingWindow> {
    let mut windows = Vec::new();
    let mut predicted = 0;
    while predicted < n_tokens {
        let end = (predicted + seq_len).min(n_tokens);
        windows.push(RollingWindow { start: end.saturating_sub(seq_len), end, scored: end - predicted });
        predicted = end;
    }
    windows
}

/// One row of a batched forward: its input ids and the positions scored against which targets.
struct Row {
    /// Image slots first (ids ignored), then text ids.
    inputs: Vec<u32>,
    /// Index in `inputs` of the position predicting `targets[0]`.
    first_scored: usize,
    targets: Vec<u32>,
}

pub struct ModelScorer {
    model: ScoredModel,
    params: ParamStore,
    tokenizer: TextTokenizer,
    images: Option<ImageFeatures>,
    seq_len: usize,
    d_model: usize,
    /// The last image's projected tokens `[n_image_tokens, d_model]`: consecutive items often ask
    /// about the same image, and generation re-runs the prompt once per token.
    projected: Option<(PathBuf, Vec<f32>)>,
    tokens: Vec<u32>,
    injected_rows: Vec<usize>,
    injected_values: Vec<f32>,
}

/// Log-probability of `target` and whether it is the argmax (first maximum, as torch.argmax).
fn score_row(logits: &[f32], target: u32) -> (f64, bool) {
    let (mut best, mut best_at) = (f32::NEG_INFINITY, 0);
    for (i, &x) in logits.iter().enumerate() {
        if x > best {
            best = x;
            best_at = i;
        }
    }
    let sum: f64 = logits.iter().map(|&x| ((x - best) as f64).exp()).sum();
    let lse = best as f64 + sum.ln();
    (logits[target as usize] as f64 - lse, best_at == target as usize)
}

/// lm-eval's `_encode_pair` rule: trailing spaces of the context belong to the continuations.
fn split_trailing_space<'a>(context: &'a str, continuations: &[String]) -> (&'a str, Vec<String>) {
    let trimmed = context.trim_end_matches(' ');
    let moved = &context[trimmed.len()..];
    (trimmed, continuations.iter().map(|c| format!("{moved}{c}")).collect())
}

impl ModelScorer {
    /// A scorer over a model whose parameters are in `params`; `images` is required for image items.
    pub fn new(
        mut model: ScoredModel,
        params: ParamStore,
        tokenizer: TextTokenizer,
        images: Option<ImageFeatures>,
    ) -> Result<Self> {
        let config = model.lm().config().clone();
        ensure!(
            tokenizer.vocab_size() <= config.vocab,
            "the tokenizer has {} ids but the model's vocabulary is {}: they were not trained together",
            tokenizer.vocab_size(),
            config.vocab
        );
        let mut scorer = Self {
            model,
            params,
            tokenizer,
            images: None,
            seq_len: config.seq_len,
            d_model: config.d_model,
            projected: None,
            tokens: Vec::new(),
            injected_rows: Vec::new(),
            injected_values: Vec::new(),
        };
        if let Some(images) = images {
            scorer.attach_images(images)?;
        }
        Ok(scorer)
    }

    /// Gives the scorer its image encoder, checking it fits the model's projector (callers load the
    /// checkpoint first so a text-only model never loads an encoder).
    pub fn attach_images(&mut self, images: ImageFeatures) -> Result<()> {
        if let ScoredModel::Vision(vlm) = &self.model {
            let encoder = images.encoder();
            ensure!(
                encoder.width() == vlm.encoder_width(),
                "the model's projector takes features of width {} but the encoder gives width {}: pass the encoder (and layer) it was trained with",
                vlm.encoder_width(),
                encoder.width()
            );
            ensure!(
                encoder.tokens() < self.seq_len,
                "{} image tokens leave no room for text in a window of {}",
                encoder.tokens(),
                self.seq_len
            );
        }
        self.images = Some(images);
        self.projected = None;
        Ok(())
    }

    /// Loads a checkpoint directory (`<stage>/checkpoints/step-N`, or a stage directory, meaning its
    /// latest checkpoint): a VLM when the weights hold a projector, a text-only LM otherwise.
    pub fn from_checkpoint(checkpoint: &Path, tokenizer: TextTokenizer, images: Option<ImageFeatures>) -> Result<Self> {
        let checkpoint = resolve_checkpoint(checkpoint)?;
        let config = StageRecord::of_checkpoint(&checkpoint)?.model;
        let weights = weights_of(&checkpoint);
        let file = SafetensorsFile::open(&weights)
            .with_context(|| format!("opening checkpoint weights {}", weights.display()))?;
        let model = if file.names().iter().any(|n| n == FC1_WEIGHT) {
            let (vlm, params) = load_vlm(&config, &checkpoint)?;
            (ScoredModel::Vision(vlm), params)
        } else {
            let mut params = ParamStore::new(vlmix_engine::Cpu::new()?);
            let lm = Lm::new(config, &mut params, 0)?;
            params.load_from(&file, true).with_context(|| format!("loading LM from {}", checkpoint.display()))?;
            (ScoredModel::Text(lm), params)
        };
        Self::new(model.0, model.1, tokenizer, images)
    }

    /// Whether the model can see images (it has a projector).
    pub fn is_vision(&self) -> bool {
        matches!(self.model, ScoredModel::Vision(_))
    }

    /// Number of image tokens each image takes (0 for a text-only model or without an encoder).
    fn n_image_tokens(&self) -> usize {
        match (&self.model, &self.images) {
            (ScoredModel::Vision(_), Some(images)) => images.encoder().tokens(),
            _ => 0,
        }
    }

    /// Projects `image` (reusing the last one when it is the same file).
    fn project(&mut self, image: &ImageRef) -> Result<()> {
        if self.projected.as_ref().is_some_and(|(path, _)| *path == image.path) {
            return Ok(());
        }
        let ScoredModel::Vision(vlm) = &mut self.model else {
            bail!(
                "the model is text-only (its checkpoint has no projector), so it cannot answer about image {}",
                image.key
            );
        };
        let images = self.images.as_mut().context("the model needs image features but no image encoder was given")?;
        let features = images.of(image)?;
        let mut projected = self.projected.take().map(|(_, v)| v).unwrap_or_default();
        projected.resize(features.len() / vlm.encoder_width() * self.d_model, 0.0);
        vlm.project_features(&self.params, &features, 1, false, &mut projected)?;
        self.projected = Some((image.path.clone(), projected));
        Ok(())
    }

    /// Prompt ids: the text with the image marker removed, behind an EOS when there is no image.
    fn prompt_ids(&mut self, image: Option<&ImageRef>, text: &str) -> Result<(usize, Vec<u32>)> {
        let text = text.replacen(IMAGE_MARKER, "", 1);
        match image {
            Some(image) => {
                self.project(image)?;
                Ok((self.n_image_tokens(), self.tokenizer.encode(&text)?))
            }
            None => {
                let mut ids = vec![self.tokenizer.special.eos];
                ids.extend(self.tokenizer.encode(&text)?);
                Ok((0, ids))
            }
        }
    }

    /// A scoring row for `continuation` after the image slots and `context`, keeping the newest
    /// context that fits the window. A continuation longer than the window itself is scored on its
    /// tail only: its head joins the context, as a rolling window would see it.
    fn scoring_row(&self, n_image: usize, context: &[u32], continuation: Vec<u32>) -> Result<Row> {
        // Inputs hold everything but the last continuation token; at least one position must precede
        // the first continuation token (an image slot or a context token).
        let max_scored = if n_image > 0 { (self.seq_len + 1).saturating_sub(n_image) } else { self.seq_len };
        if continuation.len() > max_scored && max_scored > 0 {
            let split = continuation.len() - max_scored;
            let mut longer_context = context.to_vec();
            longer_context.extend_from_slice(&continuation[..split]);
            return self.scoring_row(n_image, &longer_context, continuation[split..].to_vec());
        }
        let room = (self.seq_len + 1).saturating_sub(n_image + continuation.len());
        let keep = context.len().min(room);
        if n_image + keep == 0 || n_image + keep + continuation.len() - 1 > self.seq_len {
            bail!(
                "a continuation of {} tokens does not fit the model's window of {} tokens",
                continuation.len(),
                self.seq_len
            );
        }
        let mut inputs = vec![self.tokenizer.special.image; n_image];
        inputs.extend_from_slice(&context[context.len() - keep..]);
        let first_scored = inputs.len() - 1;
        inputs.extend_from_slice(&continuation[..continuation.len() - 1]);
        Ok(Row { inputs, first_scored, targets: continuation })
    }

    /// One forward over `rows` (padded to the longest); returns the log-probability of every row's
    /// targets (rows concatenated) and whether each was the argmax.
    fn forward_rows(&mut self, n_image: usize, rows: &[Row]) -> Result<Vec<(f64, bool)>> {
        let batch = rows.len();
        let seq = rows.iter().map(|r| r.inputs.len()).max().context("no rows to score")?;
        self.tokens.clear();
        for row in rows {
            self.tokens.extend_from_slice(&row.inputs);
            self.tokens.extend(std::iter::repeat_n(self.tokenizer.special.pad, seq - row.inputs.len()));
        }
        self.injected_rows.clear();
        self.injected_values.clear();
        if n_image > 0 {
            let (_, projected) = self.projected.as_ref().context("image rows without a projected image")?;
            for b in 0..batch {
                self.injected_rows.extend((0..n_image).map(|t| b * seq + t));
                self.injected_values.extend_from_slice(projected);
            }
        }
        let injected =
            (n_image > 0).then_some(InjectedEmbeddings { rows: &self.injected_rows, values: &self.injected_values[..] });
        let input = LmInput { batch, seq, tokens: &self.tokens, injected };
        let lm = self.model.lm();
        let vocab = lm.config().vocab;
        let logits = lm.logits(&self.params, &input)?;
        let mut out = Vec::with_capacity(rows.iter().map(|r| r.targets.len()).sum());
        for (b, row) in rows.iter().enumerate() {
            for (j, &target) in row.targets.iter().enumerate() {
                let at = b * seq + row.first_scored + j;
                out.push(score_row(&logits[at * vocab..(at + 1) * vocab], target));
            }
        }
        Ok(out)
    }

    /// Log-likelihoods of rows, scored a few at a time (see [`MAX_ROWS`], [`LOGITS_BUDGET`]).
    fn score_rows(&mut self, n_image: usize, rows: &[Row]) -> Result<Vec<LogLikelihood>> {
        let longest = rows.iter().map(|r| r.inputs.len()).max().unwrap_or(1);
        let per_forward = (LOGITS_BUDGET / (longest * self.model.lm().config().vocab)).clamp(1, MAX_ROWS);
        let mut results = Vec::with_capacity(rows.len());
        for chunk in rows.chunks(per_forward) {
            let scores = self.forward_rows(n_image, chunk)?;
            let mut at = 0;
            for row in chunk {
                let mine = &scores[at..at + row.targets.len()];
                at += row.targets.len();
                results.push(LogLikelihood {
                    sum_logprob: mine.iter().map(|s| s.0).sum(),
                    n_tokens: mine.len(),
                    is_greedy: mine.iter().all(|s| s.1),
                });
            }
        }
        Ok(results)
    }

    /// Decodes after `prompt` (and the image), calling `on_text` with each new piece of text as it
    /// is produced. Stops at EOS, at a newline (the end of an answer in training data) or after
    /// `max_tokens`; returns the text before the stop.
    pub fn generate_with(
        &mut self,
        image: Option<&ImageRef>,
        prompt: &str,
        decoding: &Decoding,
        on_text: &mut dyn FnMut(&str),
    ) -> Result<String> {
        ensure!(
            decoding.temperature >= 0.0 && decoding.temperature.is_finite(),
            "temperature must be a finite number >= 0, got {}",
            decoding.temperature
        );
        ensure!(decoding.top_k != Some(0), "top-k must be at least 1");
        let (n_image, mut context) = self.prompt_ids(image, prompt)?;
        ensure!(n_image + context.len() > 0, "nothing to condition on: give an image or a prompt");
        let mut rng = ChaCha8Rng::seed_from_u64(decoding.seed);
        let mut generated: Vec<u32> = Vec::new();
        let mut emitted = 0;
        let mut text = String::new();
        for _ in 0..decoding.max_tokens {
            let keep = context.len().min(self.seq_len - n_image);
            let mut inputs = vec![self.tokenizer.special.image; n_image];
            inputs.extend_from_slice(&context[context.len() - keep..]);
            let row = Row { first_scored: inputs.len() - 1, inputs, targets: Vec::new() };
            let next = self.next_token(n_image, row, decoding, &mut rng)?;
            if next == self.tokenizer.special.eos {
                break;
            }
            generated.push(next);
            context.push(next);
            text = self.tokenizer.decode(&generated)?;
            if let Some(newline) = text.find('\n') {
                text.truncate(newline);
                on_text(text.get(emitted..).unwrap_or_default());
                return Ok(text);
            }
            // Hold back a partial UTF-8 character until its last byte arrives.
            if !text.ends_with(char::REPLACEMENT_CHARACTER) {
                on_text(text.get(emitted..).unwrap_or_default());
                emitted = text.len();
            }
        }
        if emitted < text.len() {
            on_text(text.get(emitted..).unwrap_or_default());
        }
        Ok(text)
    }

    /// The token after `row`'s last input.
    fn next_token(&mut self, n_image: usize, row: Row, decoding: &Decoding, rng: &mut ChaCha8Rng) -> Result<u32> {
        let seq = row.inputs.len();
        let at = row.first_scored;
        self.tokens.clear();
        self.tokens.extend_from_slice(&row.inputs);
        self.injected_rows.clear();
        self.injected_rows.extend(0..n_image);
        let projected: &[f32] = match (&self.projected, n_image) {
            (_, 0) => &[],
            (Some((_, p)), _) => p,
            (None, _) => bail!("image rows without a projected image"),
        };
        let injected = (n_image > 0).then_some(InjectedEmbeddings { rows: &self.injected_rows, values: projected });
        let input = LmInput { batch: 1, seq, tokens: &self.tokens, injected };
        let lm = self.model.lm();
        let vocab = lm.config().vocab;
        let logits = &lm.logits(&self.params, &input)?[at * vocab..(at + 1) * vocab];
        Ok(pick_token(logits, decoding, rng))
    }
}

/// Argmax when greedy, else a sample from the tempered softmax over the top-k logits.
fn pick_token(logits: &[f32], decoding: &Decoding, rng: &mut ChaCha8Rng) -> u32 {
    if decoding.temperature == 0.0 || decoding.top_k == Some(1) {
        let mut best = 0;
        for (i, &x) in logits.iter().enumerate() {
            if x > logits[best] {
                best = i;
            }
        }
        return best as u32;
    }
    let mut order: Vec<u32> = (0..logits.len() as u32).collect();
    if let Some(k) = decoding.top_k.filter(|&k| k < logits.len()) {
        order.select_nth_unstable_by(k - 1, |&a, &b| logits[b as usize].total_cmp(&logits[a as usize]));
        order.truncate(k);
    }
    let max = order.iter().map(|&i| logits[i as usize]).fold(f32::NEG_INFINITY, f32::max);
    let weights: Vec<f64> =
        order.iter().map(|&i| (((logits[i as usize] - max) / decoding.temperature) as f64).exp()).collect();
    let mut draw = rng.gen::<f64>() * weights.iter().sum::<f64>();
    for (&id, &w) in order.iter().zip(&weights) {
        if draw < w {
            return id;
        }
        draw -= w;
    }
    *order.last().expect("vocabulary is not empty")
}

impl Scorer for ModelScorer {
    fn loglikelihood(&mut self, image: Option<&ImageRef>, context: &str, continuation: &str) -> Result<LogLikelihood> {
        let mut lls = self.loglikelihoods(image, context, &[continuation.to_string()])?;
        Ok(lls.remove(0))
    }

    /// All choices in one batched forward, one row each.
    fn loglikelihoods(
        &mut self,
        image: Option<&ImageRef>,
        context: &str,
        continuations: &[String],
    ) -> Result<Vec<LogLikelihood>> {
        let (context, continuations) = split_trailing_space(context, continuations);
        let (n_image, context_ids) = self.prompt_ids(image, context)?;
        let mut rows = Vec::with_capacity(continuations.len());
        let mut row_of = Vec::with_capacity(continuations.len());
        for cont in &continuations {
            let ids = self.tokenizer.encode(cont)?;
            if ids.is_empty() {
                row_of.push(None);
                continue;
            }
            row_of.push(Some(rows.len()));
            rows.push(self.scoring_row(n_image, &context_ids, ids)?);
        }
        let scored = if rows.is_empty() { Vec::new() } else { self.score_rows(n_image, &rows)? };
        Ok(row_of
            .into_iter()
            .map(|r| r.map_or(LogLikelihood { sum_logprob: 0.0, n_tokens: 0, is_greedy: true }, |i| scored[i]))
            .collect())
    }

    fn generate(&mut self, image: Option<&ImageRef>, prompt: &str, max_tokens: usize) -> Result<String> {
        self.generate_with(image, prompt, &Decoding::greedy(max_tokens), &mut |_| {})
    }

    fn rolling_loglikelihood(&mut self, text: &str) -> Result<LogLikelihood> {
        let mut all = vec![self.tokenizer.special.eos];
        all.extend(self.tokenizer.encode(text)?);
        let n = all.len() - 1;
        let rows: Vec<Row> = rolling_windows(n, self.seq_len)
            .into_iter()
            .map(|w| Row {
                inputs: all[w.start..w.end].to_vec(),
                first_scored: w.end - w.start - w.scored,
                targets: all[w.end - w.scored + 1..=w.end].to_vec(),
            })
            .collect();
        let mut total = LogLikelihood { sum_logprob: 0.0, n_tokens: 0, is_greedy: true };
        for ll in self.score_rows(0, &rows)? {
            total.sum_logprob += ll.sum_logprob;
            total.n_tokens += ll.n_tokens;
            total.is_greedy &= ll.is_greedy;
        }
        Ok(total)
    }
}
