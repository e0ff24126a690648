//! The [`Scorer`] over a real model: a trained VLM, or a text-only LM (a pre-training checkpoint).
//!
//! Rows come from the layout training uses ([`VlmSequence`]), so the model is asked in its own format:
//! an image item is `[image slots][prompt text without the <image> marker][continuation]` (the
//! image always comes first, wherever the template puts the marker), and a text item is
//! `[EOS][context][continuation]`, because in the packed text stream every document follows an EOS.
//! Contexts longer than the model's window are cut from the left; image slots are always kept. The
//! VLM runs the rows (each image projected once per item, however many rows ask about it).

use crate::prompt::IMAGE_MARKER;
use crate::scorer::{Answer, ImageRef, LogLikelihood, Request, Scorer};
use anyhow::{bail, ensure, Context, Result};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::borrow::Cow;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use vlmix_data::sequence::{VlmRow, VlmSequence};
use vlmix_data::tokenizer::TextTokenizer;
use vlmix_data::vlm_batch::VlmBatch;
use vlmix_engine::checkpoint::resolve_checkpoint;
use vlmix_engine::cpu::target_log_probs;
use vlmix_engine::params::ParamStore;
use vlmix_engine::safetensors_io::SafetensorsFile;
use vlmix_engine::{Cpu, Device};
use vlmix_models::lm::{Lm, LmInput, PrefixCache};
use vlmix_models::stage_record::{load_vlm, weights_of, StageRecord};
use vlmix_models::vision::encoder::ImageEncoder;
use vlmix_models::vision::feature_cache::FeatureCache;
use vlmix_models::vision::projector::FC1_WEIGHT;
use vlmix_models::vlm::Vlm;

/// Rows (choices or prompts, of any items) run in one forward pass, at most.
const MAX_ROWS: usize = 64;
/// Padded positions (rows x longest row) of one forward pass, at most: long rows come fewer a pass.
const MAX_POSITIONS: usize = 8192;
/// Logit values one forward may produce (256 MB): big-vocabulary models score fewer rows at once.
const LOGITS_BUDGET: usize = 64 << 20;

/// Prefix caches of some rows and the host logits of each row's last position.
type CachedPrefixes<'a, D> = (Vec<PrefixCache<D>>, Cow<'a, [f32]>);

/// The network being scored.
#[allow(clippy::large_enum_variant)] // one per scorer, never moved in a loop: boxing would buy nothing
pub enum ScoredModel<D: Device = Cpu> {
    /// No projector: text items only.
    Text(Lm<D>),
    Vision(Vlm<D>),
}

impl<D: Device> ScoredModel<D> {
    fn lm(&self) -> &Lm<D> {
        match self {
            ScoredModel::Text(lm) => lm,
            ScoredModel::Vision(vlm) => &vlm.lm,
        }
    }

    fn lm_mut(&mut self) -> &mut Lm<D> {
        match self {
            ScoredModel::Text(lm) => lm,
            ScoredModel::Vision(vlm) => &mut vlm.lm,
        }
    }

    /// Prefix caches of `batch`'s rows (row `r`: its first `lens[r]` positions) and the logits at
    /// `rows`, the image slots showing the `projected` images.
    fn prefix_caches(
        &mut self,
        params: &ParamStore<D>,
        batch: &VlmBatch,
        projected: &D::Buf,
        lens: &[usize],
        rows: &[usize],
    ) -> Result<(Vec<PrefixCache<D>>, &D::Buf)> {
        match self {
            ScoredModel::Vision(vlm) => vlm.prefix_caches_of_projected(params, batch, projected, lens, rows),
            ScoredModel::Text(lm) => {
                ensure!(batch.slots.is_empty(), "a text-only model cannot read image slots");
                lm.prefix_caches(params, &LmInput::tokens(batch.batch, batch.seq, &batch.inputs), lens, rows)
            }
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
        let decoded = decode(image)?;
        self.cache
            .features(self.encoder.as_ref(), &[&decoded])
            .with_context(|| format!("encoding image {}", image.path.display()))
    }

    /// Encodes the uncached ones among `images` into the cache, many per forward pass (what [`Self::of`]
    /// does one at a time); returns how many were encoded.
    pub fn cache_all(&mut self, images: &[ImageRef]) -> Result<usize> {
        let misses = self.cache.stats().misses;
        for chunk in images.chunks(64) {
            let decoded = chunk.iter().map(decode).collect::<Result<Vec<_>>>()?;
            self.cache.cache_all(self.encoder.as_ref(), &decoded.iter().collect::<Vec<_>>())?;
        }
        self.cache.flush()?;
        Ok(self.cache.stats().misses - misses)
    }
}

/// The pixels of an image file (or of [`ImageRef::blank`]), decoded as the feature cache keys them.
fn decode(image: &ImageRef) -> Result<image::RgbImage> {
    if image.is_blank() {
        return Ok(ImageRef::blank_pixels());
    }
    let path = &image.path;
    let bytes = std::fs::read(path).with_context(|| format!("reading image {}", path.display()))?;
    vlmix_data::image_io::decode_rgb(&bytes).with_context(|| format!("decoding image {}", path.display()))
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

pub struct ModelScorer<D: Device = Cpu> {
    model: ScoredModel<D>,
    params: ParamStore<D>,
    tokenizer: TextTokenizer,
    images: Option<ImageFeatures>,
    /// Rows of this model: image slots of the attached encoder (none without one).
    layout: VlmSequence,
    d_model: usize,
    /// The last call's images and their projected tokens `[images * n_image_tokens, d_model]`: the
    /// blind control asks every item about the same image, and generation re-runs the prompt once
    /// per token.
    projected: Option<(Vec<PathBuf>, D::Owned)>,
    /// What [`shown_images`] hands a batch without image slots.
    no_image: D::Owned,
}

/// lm-eval's `_encode_pair` rule: trailing spaces of the context belong to the continuations.
fn split_trailing_space<'a>(context: &'a str, continuations: &[String]) -> (&'a str, Vec<String>) {
    let trimmed = context.trim_end_matches(' ');
    let moved = &context[trimmed.len()..];
    (trimmed, continuations.iter().map(|c| format!("{moved}{c}")).collect())
}

impl<D: Device> ModelScorer<D> {
    /// A scorer over a model whose parameters are in `params` (and which computes on their device);
    /// `images` is required for image items.
    pub fn new(
        model: ScoredModel<D>,
        params: ParamStore<D>,
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
        let layout = VlmSequence::new(config.seq_len, 0, tokenizer.special)?;
        let no_image = params.device().zeros(0);
        let mut scorer =
            Self { model, params, tokenizer, images: None, layout, d_model: config.d_model, projected: None, no_image };
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
            self.layout = VlmSequence::new(self.layout.seq_len(), encoder.tokens(), self.tokenizer.special)
                .context("the encoder's image tokens do not fit the model's window")?;
        }
        self.images = Some(images);
        self.projected = None;
        Ok(())
    }

    /// Loads a checkpoint directory (`<stage>/checkpoints/step-N`, or a stage directory, meaning its
    /// latest checkpoint) onto `dev`: a VLM when the weights hold a projector, a text-only LM otherwise.
    pub fn from_checkpoint(
        dev: D,
        checkpoint: &Path,
        tokenizer: TextTokenizer,
        images: Option<ImageFeatures>,
    ) -> Result<Self> {
        let checkpoint = resolve_checkpoint(checkpoint)?;
        let config = StageRecord::of_checkpoint(&checkpoint)?.model;
        let weights = weights_of(&checkpoint);
        let file = SafetensorsFile::open(&weights)
            .with_context(|| format!("opening checkpoint weights {}", weights.display()))?;
        let model = if file.names().iter().any(|n| n == FC1_WEIGHT) {
            let (vlm, params) = load_vlm(dev, &config, &checkpoint)?;
            (ScoredModel::Vision(vlm), params)
        } else {
            let mut params = ParamStore::new(dev);
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

    /// Projects `images` into one buffer (reusing the last one when they are the same files);
    /// image `k` of a row's slots is `images[k]`'s projection.
    fn project(&mut self, images: &[&ImageRef]) -> Result<()> {
        let same = |held: &[PathBuf]| held.len() == images.len() && held.iter().zip(images).all(|(p, i)| *p == i.path);
        if images.is_empty() || self.projected.as_ref().is_some_and(|(held, _)| same(held)) {
            return Ok(());
        }
        let ScoredModel::Vision(vlm) = &mut self.model else {
            bail!(
                "the model is text-only (its checkpoint has no projector), so it cannot answer about image {}",
                images[0].key
            );
        };
        let encoded = self.images.as_mut().context("the model needs image features but no image encoder was given")?;
        let mut features = Vec::new();
        for image in images {
            features.extend(encoded.of(image)?);
        }
        let dev = self.params.device();
        let len = features.len() / vlm.encoder_width() * self.d_model;
        let mut projected = match self.projected.take() {
            Some((_, buf)) if dev.len(&buf) == len => buf,
            _ => dev.zeros(len),
        };
        vlm.project_features(&self.params, &dev.on_device(&features), images.len(), false, &mut projected)?;
        self.projected = Some((images.iter().map(|i| i.path.clone()).collect(), projected));
        Ok(())
    }

    /// Projects the distinct images of `requests`; returns each request's index into them.
    fn project_requests(&mut self, images: &[Option<&ImageRef>]) -> Result<Vec<usize>> {
        let mut distinct: Vec<&ImageRef> = Vec::new();
        let index = images
            .iter()
            .map(|image| match image {
                None => 0,
                Some(image) => distinct.iter().position(|d| d.path == image.path).unwrap_or_else(|| {
                    distinct.push(image);
                    distinct.len() - 1
                }),
            })
            .collect();
        self.project(&distinct)?;
        Ok(index)
    }

    /// Prompt ids: the text with the image marker removed, behind an EOS when there is no image;
    /// and the image slots the row starts with.
    fn prompt_ids(&self, image: bool, text: &str) -> Result<(usize, Vec<u32>)> {
        let text = text.replacen(IMAGE_MARKER, "", 1);
        if image {
            return Ok((self.layout.n_image_tokens(), self.tokenizer.encode(&text)?));
        }
        let mut ids = vec![self.tokenizer.special.eos];
        ids.extend(self.tokenizer.encode(&text)?);
        Ok((0, ids))
    }

    /// A scoring row for `continuation` after the image slots and `context`, keeping the newest
    /// context that fits the window. A continuation longer than the window itself is scored on its
    /// tail only: its head joins the context, as a rolling window would see it.
    fn scoring_row(&self, n_image: usize, context: &[u32], continuation: Vec<u32>) -> Result<VlmRow> {
        let seq_len = self.layout.seq_len();
        // Inputs hold everything but the last continuation token; at least one position must precede
        // the first continuation token (an image slot or a context token).
        let max_scored = if n_image > 0 { (seq_len + 1).saturating_sub(n_image) } else { seq_len };
        if continuation.len() > max_scored && max_scored > 0 {
            let split = continuation.len() - max_scored;
            let mut longer_context = context.to_vec();
            longer_context.extend_from_slice(&continuation[..split]);
            return self.scoring_row(n_image, &longer_context, continuation[split..].to_vec());
        }
        let room = (seq_len + 1).saturating_sub(n_image + continuation.len());
        let keep = context.len().min(room);
        if n_image + keep == 0 || n_image + keep + continuation.len() - 1 > seq_len {
            bail!(
                "a continuation of {} tokens does not fit the model's window of {seq_len} tokens",
                continuation.len()
            );
        }
        Ok(self.layout.scoring_row(n_image > 0, &context[context.len() - keep..], &continuation))
    }

    /// The row that scores each of `continuations` after `context` (and an image, when `image`;
    /// None for an empty continuation): what [`Scorer::loglikelihoods`] runs.
    pub fn choice_rows(&self, image: bool, context: &str, continuations: &[String]) -> Result<Vec<Option<VlmRow>>> {
        let (context, continuations) = split_trailing_space(context, continuations);
        let (n_image, context_ids) = self.prompt_ids(image, context)?;
        let mut rows = Vec::with_capacity(continuations.len());
        for cont in &continuations {
            let ids = self.tokenizer.encode(cont)?;
            rows.push(if ids.is_empty() { None } else { Some(self.scoring_row(n_image, &context_ids, ids)?) });
        }
        Ok(rows)
    }

    /// The batch the VLM runs for `rows` (padded to the longest); the image slots of a row show the
    /// projected image of its index.
    fn batch(&self, rows: &[(&VlmRow, usize)]) -> Result<VlmBatch> {
        let seq = rows.iter().map(|(r, _)| r.inputs.len()).max().context("no rows to score")?;
        let mut batch = VlmBatch::new(seq, self.layout.n_image_tokens());
        for (row, image) in rows {
            batch.push_row(row, &vec![*image; row.images.len()], self.tokenizer.special.pad)?;
        }
        Ok(batch)
    }

    /// Runs `rows` (whole prefixes, each with its image index) into prefix caches; returns them
    /// with the host logits of each row's last position (borrowed on the CPU: no copy).
    fn prefix_caches(&mut self, rows: &[(&VlmRow, usize)]) -> Result<CachedPrefixes<'_, D>> {
        let batch = self.batch(rows)?;
        let lens: Vec<usize> = rows.iter().map(|(r, _)| r.inputs.len()).collect();
        let last: Vec<usize> = lens.iter().enumerate().map(|(r, &len)| r * batch.seq + len - 1).collect();
        let block = self.layout.n_image_tokens() * self.d_model;
        let projected = shown_images(self.params.device(), &self.projected, &self.no_image, &batch, block)?;
        let (caches, logits) = self.model.prefix_caches(&self.params, &batch, projected, &lens, &last)?;
        Ok((caches, self.params.device().to_host(logits)))
    }

    /// Host logits `[positions.len(), vocab]` of `tokens` (`[prefixes.len(), width]`, row `r`
    /// continuing `prefixes[r]`) at `positions` (indices into `tokens`).
    fn continuation_logits(
        &mut self,
        prefixes: &[&PrefixCache<D>],
        tokens: &[u32],
        width: usize,
        positions: &[usize],
    ) -> Result<Cow<'_, [f32]>> {
        let input = LmInput::tokens(prefixes.len(), width, tokens);
        let logits = self.model.lm_mut().logits_continuing(&self.params, &input, prefixes, positions)?;
        Ok(self.params.device().to_host(logits))
    }

    /// Forward groups over `rows` (indices into `lens`, the rows' lengths) in order of length, so
    /// each pass pads little: at most [`MAX_ROWS`] rows and [`MAX_POSITIONS`] padded positions, and
    /// at most [`LOGITS_BUDGET`] logit values for the `scored` positions of a group.
    fn groups(&self, lens: &[usize], scored: &[usize]) -> Vec<Vec<usize>> {
        let vocab = self.model.lm().config().vocab;
        let mut order: Vec<usize> = (0..lens.len()).collect();
        order.sort_by_key(|&i| lens[i]);
        let mut groups: Vec<Vec<usize>> = Vec::new();
        let (mut longest, mut n_scored) = (0, 0);
        for i in order {
            let full = groups.last().is_none_or(|g| {
                let rows = g.len() + 1;
                rows > MAX_ROWS
                    || rows * longest.max(lens[i]) > MAX_POSITIONS
                    || (n_scored + scored[i]) * vocab > LOGITS_BUDGET
            });
            if full {
                groups.push(Vec::new());
                (longest, n_scored) = (0, 0);
            }
            longest = longest.max(lens[i]);
            n_scored += scored[i];
            groups.last_mut().expect("pushed above").push(i);
        }
        groups
    }

    /// Log-likelihoods of scoring rows (continuations after a context; each row
    /// with its image index). Rows that share everything before their first scored token (the
    /// choices of one item) share one prefix: it runs once into a prefix cache, whose last logits
    /// score every row's first token, and only the rest of each continuation runs after it.
    fn score_continuations(&mut self, rows: &[(VlmRow, usize)]) -> Result<Vec<LogLikelihood>> {
        let mut prefix_of: HashMap<(Option<usize>, &[u32]), usize> = HashMap::new();
        let mut prefixes: Vec<(VlmRow, usize)> = Vec::new();
        let mut users: Vec<Vec<usize>> = Vec::new();
        for (i, (row, image)) in rows.iter().enumerate() {
            let first = row.loss_mask.iter().position(|&m| m).context("a scoring row scores nothing")?;
            ensure!(row.loss_mask[first..].iter().all(|&m| m), "a scoring row's scored positions are not its tail");
            let key = ((!row.images.is_empty()).then_some(*image), &row.inputs[..=first]);
            let id = *prefix_of.entry(key).or_insert_with(|| {
                let prefix = VlmRow {
                    inputs: row.inputs[..=first].to_vec(),
                    targets: row.targets[..=first].to_vec(),
                    loss_mask: row.loss_mask[..=first].to_vec(),
                    images: row.images.clone(),
                };
                prefixes.push((prefix, *image));
                users.push(Vec::new());
                prefixes.len() - 1
            });
            users[id].push(i);
        }
        let vocab = self.model.lm().config().vocab;
        let pad = self.tokenizer.special.pad;
        let mut results = vec![NOTHING_SCORED; rows.len()];
        let lens: Vec<usize> = prefixes.iter().map(|(r, _)| r.inputs.len()).collect();
        for group in self.groups(&lens, &vec![1; lens.len()]) {
            let members: Vec<(&VlmRow, usize)> = group.iter().map(|&p| (&prefixes[p].0, prefixes[p].1)).collect();
            // Each user's first token, scored by its prefix's last logits.
            let firsts: Vec<(usize, usize)> =
                group.iter().enumerate().flat_map(|(k, &p)| users[p].iter().map(move |&i| (i, k))).collect();
            let picks: Vec<(usize, u32)> =
                firsts.iter().map(|&(i, k)| (k, rows[i].0.targets[lens[group[k]] - 1])).collect();
            let (caches, last_logits) = self.prefix_caches(&members)?;
            for (&(i, _), &score) in firsts.iter().zip(&target_log_probs(&last_logits, vocab, &picks)) {
                add_score(&mut results[i], score);
            }
            // (row, its prefix's place in the group) of rows with tokens after their prefix.
            let continuing: Vec<(usize, usize)> =
                firsts.into_iter().filter(|&(i, k)| rows[i].0.inputs.len() > lens[group[k]]).collect();
            let spans: Vec<usize> = continuing.iter().map(|&(i, _)| rows[i].0.inputs.len()).collect();
            let tails: Vec<usize> = continuing.iter().map(|&(i, k)| rows[i].0.inputs.len() - lens[group[k]]).collect();
            for part in self.groups(&spans, &tails) {
                let width = part.iter().map(|&c| tails[c]).max().expect("groups are not empty");
                let mut tokens = Vec::with_capacity(part.len() * width);
                // Per scored position: where it sits in `tokens`, the row it scores for, its target
                // (a pick of the position's own logits row).
                let (mut positions, mut owners, mut picks) = (Vec::new(), Vec::new(), Vec::new());
                for (r, &c) in part.iter().enumerate() {
                    let (i, k) = continuing[c];
                    let prefix = lens[group[k]];
                    tokens.extend_from_slice(&rows[i].0.inputs[prefix..]);
                    tokens.resize((r + 1) * width, pad);
                    for j in 0..tails[c] {
                        picks.push((positions.len(), rows[i].0.targets[prefix + j]));
                        positions.push(r * width + j);
                        owners.push(i);
                    }
                }
                let refs: Vec<&PrefixCache<D>> = part.iter().map(|&c| &caches[continuing[c].1]).collect();
                let logits = self.continuation_logits(&refs, &tokens, width, &positions)?;
                for (&i, &score) in owners.iter().zip(&target_log_probs(&logits, vocab, &picks)) {
                    add_score(&mut results[i], score);
                }
            }
        }
        Ok(results)
    }

    /// Decodes every prompt (its image an index into the projected images). A prompt runs once
    /// into a prefix cache; each new token then runs as a row continuing it, the prompts of a
    /// group in lockstep. `on_text(i, piece)` receives prompt `i`'s text as it grows.
    fn decode_all(&mut self, prompts: &[Prompt], on_text: &mut dyn FnMut(usize, &str)) -> Result<Vec<String>> {
        let mut rows = Vec::with_capacity(prompts.len());
        for prompt in prompts {
            let decoding = &prompt.decoding;
            ensure!(
                decoding.temperature >= 0.0 && decoding.temperature.is_finite(),
                "temperature must be a finite number >= 0, got {}",
                decoding.temperature
            );
            ensure!(decoding.top_k != Some(0), "top-k must be at least 1");
            let (n_image, ids) = self.prompt_ids(prompt.image.is_some(), prompt.text)?;
            ensure!(n_image + ids.len() > 0, "nothing to condition on: give an image or a prompt");
            // The prompt's newest tokens that leave the window room for every new token but the last.
            let room = (self.layout.seq_len() + 1).saturating_sub(n_image + decoding.max_tokens.max(1));
            let keep = ids.len().min(room);
            ensure!(
                n_image + keep > 0,
                "{} new tokens leave no room for the prompt in the model's window of {}",
                decoding.max_tokens,
                self.layout.seq_len()
            );
            rows.push((self.layout.prompt_row(n_image > 0, &ids[ids.len() - keep..]), prompt.image.unwrap_or(0)));
        }
        let mut decodes: Vec<Decode> = prompts.iter().map(|p| Decode::new(p.decoding.max_tokens)).collect();
        let mut rngs: Vec<ChaCha8Rng> = prompts.iter().map(|p| ChaCha8Rng::seed_from_u64(p.decoding.seed)).collect();
        let vocab = self.model.lm().config().vocab;
        let spans: Vec<usize> =
            rows.iter().zip(prompts).map(|((r, _), p)| r.inputs.len() + p.decoding.max_tokens).collect();
        for group in self.groups(&spans, &vec![1; rows.len()]) {
            let active: Vec<usize> = group.iter().copied().filter(|&i| !decodes[i].done).collect();
            if active.is_empty() {
                continue;
            }
            let members: Vec<(&VlmRow, usize)> = active.iter().map(|&i| (&rows[i].0, rows[i].1)).collect();
            let (caches, logits) = self.prefix_caches(&members)?;
            let mut logits = logits.into_owned();
            let mut live: Vec<usize> = (0..active.len()).collect();
            loop {
                for (n, &k) in live.iter().enumerate() {
                    let i = active[k];
                    let next = pick_token(&logits[n * vocab..(n + 1) * vocab], &prompts[i].decoding, &mut rngs[i]);
                    decodes[i].push(next, &self.tokenizer)?;
                    if let Some(piece) = decodes[i].new_text() {
                        on_text(i, piece);
                    }
                }
                live.retain(|&k| !decodes[active[k]].done);
                let Some(&first) = live.first() else { break };
                let width = decodes[active[first]].generated.len();
                let tokens: Vec<u32> =
                    live.iter().flat_map(|&k| decodes[active[k]].generated.iter().copied()).collect();
                let positions: Vec<usize> = (1..=live.len()).map(|r| r * width - 1).collect();
                let refs: Vec<&PrefixCache<D>> = live.iter().map(|&k| &caches[k]).collect();
                logits = self.continuation_logits(&refs, &tokens, width, &positions)?.into_owned();
            }
        }
        Ok(decodes.into_iter().map(|d| d.text).collect())
    }

    /// Decodes after `prompt` (and the image), calling `on_text` with each new piece of text as it
    /// is produced. Stops at EOS, at a newline (the end of an answer in training data) or after
    /// `max_tokens`; returns the text before the stop. A prompt too long for the window loses its
    /// oldest tokens first, leaving room for the new ones.
    pub fn generate_with(
        &mut self,
        image: Option<&ImageRef>,
        prompt: &str,
        decoding: &Decoding,
        on_text: &mut dyn FnMut(&str),
    ) -> Result<String> {
        self.project(image.as_slice())?;
        let prompt = Prompt { image: image.map(|_| 0), text: prompt, decoding: *decoding };
        let mut texts = self.decode_all(&[prompt], &mut |_, piece| on_text(piece))?;
        Ok(texts.pop().expect("one text per prompt"))
    }
}

/// The projected images `batch`'s slots show: the first images of `projected` (image indices
/// count from its start), or `no_image` when the batch has no slots.
fn shown_images<'a, D: Device>(
    dev: &D,
    projected: &'a Option<(Vec<PathBuf>, D::Owned)>,
    no_image: &'a D::Owned,
    batch: &VlmBatch,
    block: usize,
) -> Result<&'a D::Buf> {
    match (projected, batch.slots.iter().map(|s| s.image + 1).max()) {
        (_, None) => Ok(no_image),
        (Some((_, p)), Some(shown)) => Ok(dev.slice(p, 0..shown * block)),
        (None, Some(_)) => bail!("image rows without a projected image"),
    }
}

/// What a row scores before any token is added.
const NOTHING_SCORED: LogLikelihood = LogLikelihood { sum_logprob: 0.0, n_tokens: 0, is_greedy: true };

/// Adds one scored token (its log-probability, and whether it was the argmax) to `ll`.
fn add_score(ll: &mut LogLikelihood, (logprob, greedy): (f64, bool)) {
    ll.sum_logprob += logprob;
    ll.n_tokens += 1;
    ll.is_greedy &= greedy;
}

/// One prompt of [`ModelScorer::decode_all`].
struct Prompt<'a> {
    /// Index into the projected images (None: text only).
    image: Option<usize>,
    text: &'a str,
    decoding: Decoding,
}

/// One decoding's state: the tokens so far and the text they decode to, until it stops.
struct Decode {
    generated: Vec<u32>,
    text: String,
    /// Bytes of `text` already handed out by [`Decode::new_text`].
    emitted: usize,
    budget: usize,
    done: bool,
}

impl Decode {
    fn new(max_tokens: usize) -> Self {
        Self { generated: Vec::new(), text: String::new(), emitted: 0, budget: max_tokens, done: max_tokens == 0 }
    }

    /// Takes the next token. Stops at EOS, at a newline (the end of an answer in training data;
    /// the text keeps what precedes it) and when the budget is spent.
    fn push(&mut self, next: u32, tokenizer: &TextTokenizer) -> Result<()> {
        self.budget = self.budget.saturating_sub(1);
        self.done = self.budget == 0;
        if next == tokenizer.special.eos {
            self.done = true;
            return Ok(());
        }
        self.generated.push(next);
        self.text = tokenizer.decode(&self.generated)?;
        if let Some(newline) = self.text.find('\n') {
            self.text.truncate(newline);
            self.done = true;
        }
        Ok(())
    }

    /// The text added since the last call, holding back a partial UTF-8 character until its last
    /// byte arrives (or decoding stops).
    fn new_text(&mut self) -> Option<&str> {
        if !self.done && self.text.ends_with(char::REPLACEMENT_CHARACTER) {
            return None;
        }
        let from = self.emitted;
        self.emitted = self.text.len();
        Some(self.text.get(from..).unwrap_or_default())
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

impl<D: Device> Scorer for ModelScorer<D> {
    fn loglikelihood(&mut self, image: Option<&ImageRef>, context: &str, continuation: &str) -> Result<LogLikelihood> {
        let mut lls = self.loglikelihoods(image, context, &[continuation.to_string()])?;
        Ok(lls.remove(0))
    }

    fn loglikelihoods(
        &mut self,
        image: Option<&ImageRef>,
        context: &str,
        continuations: &[String],
    ) -> Result<Vec<LogLikelihood>> {
        let request = Request::Rank { image, context, continuations };
        match self.answer_all(&[request])?.pop() {
            Some(Answer::Ranked(lls)) => Ok(lls),
            _ => unreachable!("answer_all answers a ranking request with a ranking"),
        }
    }

    fn generate(&mut self, image: Option<&ImageRef>, prompt: &str, max_tokens: usize) -> Result<String> {
        self.generate_with(image, prompt, &Decoding::greedy(max_tokens), &mut |_| {})
    }

    /// Every request's rows in shared forward passes: all ranked rows grouped by length, and every
    /// generation decoded in lockstep. The images are projected once per call.
    fn answer_all(&mut self, requests: &[Request]) -> Result<Vec<Answer>> {
        let images: Vec<Option<&ImageRef>> = requests
            .iter()
            .map(|r| match *r {
                Request::Rank { image, .. } | Request::Generate { image, .. } => image,
            })
            .collect();
        let index = self.project_requests(&images)?;
        // Identical rows and prompts (the blind control asks every item's question about the same
        // blank image) are scored and decoded once.
        type RowKey = (Option<usize>, usize, Vec<u32>, Vec<u32>);
        let mut unique_rows: HashMap<RowKey, usize> = HashMap::new();
        let mut unique_prompts: HashMap<(Option<usize>, &str, usize), usize> = HashMap::new();
        let mut rows: Vec<(VlmRow, usize)> = Vec::new();
        let mut prompts = Vec::new();
        let mut answer_of: Vec<Vec<Option<usize>>> = Vec::with_capacity(requests.len());
        for (r, request) in requests.iter().enumerate() {
            match *request {
                Request::Rank { image, context, continuations } => {
                    let mut slots = Vec::with_capacity(continuations.len());
                    for row in self.choice_rows(image.is_some(), context, continuations)? {
                        slots.push(row.map(|row| {
                            let first = row.loss_mask.iter().position(|&m| m).unwrap_or(row.inputs.len());
                            let key = (image.map(|_| index[r]), first, row.inputs.clone(), row.targets.clone());
                            *unique_rows.entry(key).or_insert_with(|| {
                                rows.push((row, index[r]));
                                rows.len() - 1
                            })
                        }));
                    }
                    answer_of.push(slots);
                }
                Request::Generate { image, prompt, max_tokens } => {
                    let image = image.map(|_| index[r]);
                    let slot = *unique_prompts.entry((image, prompt, max_tokens)).or_insert_with(|| {
                        prompts.push(Prompt { image, text: prompt, decoding: Decoding::greedy(max_tokens) });
                        prompts.len() - 1
                    });
                    answer_of.push(vec![Some(slot)]);
                }
            }
        }
        let scores = self.score_continuations(&rows)?;
        let texts = self.decode_all(&prompts, &mut |_, _| {})?;
        Ok(requests
            .iter()
            .zip(answer_of)
            .map(|(request, slots)| match request {
                Request::Rank { .. } => {
                    Answer::Ranked(slots.iter().map(|r| r.map_or(NOTHING_SCORED, |r| scores[r])).collect())
                }
                Request::Generate { .. } => Answer::Generated(texts[slots[0].expect("a prompt's slot")].clone()),
            })
            .collect())
    }
}
