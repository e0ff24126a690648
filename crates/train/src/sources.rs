//! Batch sources of the three stages: packed text, the text/image mix, and instruction epochs.
//!
//! Each wraps a data-crate sampler, turns its sequences into the model's batch type (looking image
//! features up in the feature cache by the corpus's keys) and exposes the sampler's cursor, so the
//! trainer can checkpoint and resume the stream exactly.

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use vlmix_data::mixing::{MixConfig, MixCursor, MixingSampler};
use vlmix_data::packing::{epoch_order, Sequence, SequenceKind, TextCursor, TextPacker, TokenDocuments};
use vlmix_data::sequence::{ImageText, VlmSequence};
use vlmix_data::tokenizer::SpecialTokens;
use vlmix_data::vlm_batch::VlmBatch;
use vlmix_models::vision::feature_cache::FeatureCache;

use crate::corpus::{ImageCorpus, ImageExample};
use crate::text_model::TokenBatch;
use crate::trainer::BatchSource;

fn mask(bits: &[bool]) -> impl Iterator<Item = f32> + '_ {
    bits.iter().map(|&b| if b { 1.0 } else { 0.0 })
}

/// Packed text for pre-training.
pub struct TextSource<D> {
    packer: TextPacker<D>,
    batch_size: usize,
}

impl<D: TokenDocuments> TextSource<D> {
    pub fn new(docs: D, seq_len: usize, batch_size: usize, eos: u32, seed: u64) -> Result<Self> {
        Ok(Self { packer: TextPacker::new(docs, seq_len, eos, seed, TextCursor::default())?, batch_size })
    }
}

impl<D: TokenDocuments> BatchSource for TextSource<D> {
    type Batch = TokenBatch;

    fn next_batch(&mut self) -> Result<TokenBatch> {
        let rows: Vec<_> = (0..self.batch_size).map(|_| self.packer.next_sequence().row).collect();
        Ok(TokenBatch {
            batch: rows.len(),
            seq: rows[0].inputs.len(),
            inputs: rows.iter().flat_map(|r| r.inputs.iter().copied()).collect(),
            targets: rows.iter().flat_map(|r| r.targets.iter().copied()).collect(),
            loss_mask: rows.iter().flat_map(|r| mask(&r.loss_mask)).collect(),
        })
    }

    fn token_counts(&self, b: &TokenBatch) -> (u64, u64) {
        (0, (b.batch * b.seq) as u64)
    }

    fn cursor(&self) -> serde_json::Value {
        serde_json::to_value(self.packer.cursor).expect("cursor serialises")
    }

    fn restore(&mut self, cursor: &serde_json::Value) -> Result<()> {
        self.packer.cursor = serde_json::from_value(cursor.clone()).context("text cursor")?;
        Ok(())
    }
}

/// Builds the VLM batch of `seqs`, reading each image's features from the cache.
fn vlm_batch(seqs: &[Sequence], corpus: &ImageCorpus, cache: &FeatureCache, pad: u32) -> Result<VlmBatch> {
    let mut batch = VlmBatch::new(seqs[0].row.inputs.len(), corpus.n_image_tokens);
    let mut features = vec![0.0; corpus.n_image_tokens * corpus.feature_width];
    for s in seqs {
        let set = match s.kind {
            SequenceKind::Text => &[][..],
            SequenceKind::Caption => &corpus.captions[..],
            SequenceKind::Instruct => &corpus.instruct[..],
        };
        let mut images = Vec::with_capacity(s.examples.len());
        for &i in &s.examples {
            let example = &set[i as usize];
            if !cache.get(&example.cache_key()?, &mut features) {
                bail!(
                    "image {} is missing from the feature cache {}; rebuild the study's image corpus",
                    example.key,
                    cache.dir().display()
                );
            }
            images.push(batch.push_image(&features));
        }
        batch.push_sequence(s, &images, pad)?;
    }
    Ok(batch)
}

/// Caption and instruction texts of the corpus, as the mixing sampler reads them.
struct Texts<'a>(&'a [ImageExample]);

impl vlmix_data::mixing::ImageTexts for Texts<'_> {
    fn len(&self) -> u64 {
        self.0.len() as u64
    }
    fn text(&mut self, index: u64) -> Result<ImageText> {
        Ok(self.0[index as usize].text())
    }
}

/// The mixing sampler over a text stream and the corpus's captions and conversations.
type CorpusSampler<'a, D> = MixingSampler<D, Texts<'a>, Texts<'a>>;

/// The mixing sampler of `config` over `docs` and `corpus`, at `cursor`.
fn corpus_sampler<D: TokenDocuments>(
    config: MixConfig,
    special: SpecialTokens,
    docs: D,
    corpus: &ImageCorpus,
    cursor: MixCursor,
) -> Result<CorpusSampler<'_, D>> {
    MixingSampler::new(config, special, docs, Texts(&corpus.captions), Texts(&corpus.instruct), cursor)
}

/// The cooldown mix: text sequences and image sequences at the requested image-token fraction.
pub struct MixedSource<'a, D> {
    sampler: CorpusSampler<'a, D>,
    corpus: &'a ImageCorpus,
    cache: &'a FeatureCache,
    pad: u32,
    batch_size: usize,
    rebuild: Box<dyn Fn(MixCursor) -> Result<CorpusSampler<'a, D>> + 'a>,
}

impl<'a, D: TokenDocuments + Clone + 'a> MixedSource<'a, D> {
    pub fn new(
        docs: D,
        corpus: &'a ImageCorpus,
        cache: &'a FeatureCache,
        config: MixConfig,
        special: SpecialTokens,
        batch_size: usize,
    ) -> Result<Self> {
        let rebuild = move |cursor: MixCursor| corpus_sampler(config, special, docs.clone(), corpus, cursor);
        let sampler = rebuild(MixCursor::start(&config))?;
        Ok(Self { sampler, corpus, cache, pad: special.pad, batch_size, rebuild: Box::new(rebuild) })
    }

    /// Steps of `batch_size` sequences until the mix of `config` has given `tokens` non-pad tokens
    /// (image and text): a dry run of the sampler's decisions, which need no image features. Budgets
    /// counted this way give every image-token fraction the same real data, whatever its padding.
    pub fn steps_for_tokens(
        docs: D,
        corpus: &ImageCorpus,
        config: MixConfig,
        special: SpecialTokens,
        batch_size: usize,
        tokens: u64,
    ) -> Result<u64> {
        let config = MixConfig { log_every: 0, ..config };
        let mut sampler = corpus_sampler(config, special, docs, corpus, MixCursor::start(&config))?;
        let mut steps = 0;
        while sampler.cursor().total_tokens < tokens {
            sampler.next_batch(batch_size)?;
            steps += 1;
        }
        Ok(steps.max(1))
    }

    pub fn achieved_image_fraction(&self) -> f64 {
        self.sampler.stats().cumulative_image_fraction
    }
}

impl<'a, D: TokenDocuments + Clone + 'a> BatchSource for MixedSource<'a, D> {
    type Batch = VlmBatch;

    fn next_batch(&mut self) -> Result<VlmBatch> {
        let seqs = self.sampler.next_batch(self.batch_size)?;
        vlm_batch(&seqs, self.corpus, self.cache, self.pad)
    }

    fn token_counts(&self, b: &VlmBatch) -> (u64, u64) {
        b.token_counts()
    }

    fn cursor(&self) -> serde_json::Value {
        serde_json::to_value(self.sampler.cursor()).expect("cursor serialises")
    }

    fn restore(&mut self, cursor: &serde_json::Value) -> Result<()> {
        let cursor: MixCursor = serde_json::from_value(cursor.clone()).context("mixing cursor")?;
        self.sampler = (self.rebuild)(cursor)?;
        Ok(())
    }
}

/// Where instruction fine-tuning stands: epoch and position in that epoch's seeded order.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EpochCursor {
    pub epoch: u64,
    pub position: u64,
}

/// Instruction conversations, whole epochs in a seeded order per epoch; the last batch of an epoch
/// may be short so epochs end exactly at step boundaries. `limit` takes a seeded random subset (the
/// same for every epoch), to bound fine-tuning cost on small machines.
pub struct InstructSource<'a> {
    corpus: &'a ImageCorpus,
    subset: Vec<u32>,
    cache: &'a FeatureCache,
    layout: VlmSequence,
    batch_size: usize,
    seed: u64,
    cursor: EpochCursor,
}

impl<'a> InstructSource<'a> {
    pub fn new(
        corpus: &'a ImageCorpus,
        cache: &'a FeatureCache,
        special: SpecialTokens,
        seq_len: usize,
        batch_size: usize,
        limit: Option<usize>,
        seed: u64,
    ) -> Result<Self> {
        if corpus.instruct.is_empty() {
            bail!("no instruction conversations to fine-tune on");
        }
        let mut subset = epoch_order(corpus.instruct.len(), seed ^ 0x5B5E7, 0);
        subset.truncate(limit.unwrap_or(usize::MAX).max(1));
        let layout = VlmSequence::new(seq_len, corpus.n_image_tokens, special)?;
        Ok(Self { corpus, subset, cache, layout, batch_size, seed, cursor: EpochCursor::default() })
    }

    pub fn steps_per_epoch(&self) -> u64 {
        self.subset.len().div_ceil(self.batch_size) as u64
    }
}

impl BatchSource for InstructSource<'_> {
    type Batch = VlmBatch;

    fn next_batch(&mut self) -> Result<VlmBatch> {
        let n = self.subset.len();
        let order = epoch_order(n, self.seed, self.cursor.epoch);
        let start = self.cursor.position as usize;
        let end = (start + self.batch_size).min(n);
        let seqs: Vec<Sequence> = order[start..end]
            .iter()
            .map(|&j| self.subset[j as usize])
            .map(|i| {
                Sequence::image(
                    SequenceKind::Instruct,
                    i as u64,
                    &self.corpus.instruct[i as usize].text(),
                    &self.layout,
                )
            })
            .collect();
        self.cursor = if end == n {
            EpochCursor { epoch: self.cursor.epoch + 1, position: 0 }
        } else {
            EpochCursor { epoch: self.cursor.epoch, position: end as u64 }
        };
        vlm_batch(&seqs, self.corpus, self.cache, self.layout.special().pad)
    }

    fn token_counts(&self, b: &VlmBatch) -> (u64, u64) {
        b.token_counts()
    }

    fn cursor(&self) -> serde_json::Value {
        serde_json::to_value(self.cursor).expect("cursor serialises")
    }

    fn restore(&mut self, cursor: &serde_json::Value) -> Result<()> {
        self.cursor = serde_json::from_value(cursor.clone()).context("instruction cursor")?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPECIAL: SpecialTokens = SpecialTokens { eos: 0, pad: 1, image: 2 };

    fn corpus() -> ImageCorpus {
        let captions = (0..50)
            .map(|i| ImageExample { key: format!("{i:064x}"), tokens: vec![3; 4 + i % 9], loss: vec![true; 4 + i % 9] })
            .collect();
        ImageCorpus { encoder_id: "test".into(), n_image_tokens: 16, feature_width: 4, captions, instruct: vec![] }
    }

    fn mix(image_token_fraction: f64) -> MixConfig {
        MixConfig {
            seq_len: 64,
            n_image_tokens: 16,
            image_token_fraction,
            instruction_share: 0.0,
            seed: 3,
            log_every: 0,
            text_start: None,
            images_per_row: 1,
            fill_image_rows: false,
        }
    }

    /// Image rows are short and padded, so a budget of real tokens takes more steps at a higher image
    /// fraction, and every fraction reads the budget to within one batch.
    #[test]
    fn token_budgets_count_real_tokens_not_padding() {
        let docs: Vec<Vec<u32>> = (0..40).map(|d| vec![5 + d as u32; 200]).collect();
        let (batch, budget) = (4, 20_000);
        let (corpus, mut steps) = (corpus(), Vec::new());
        for fraction in [0.0, 0.3, 0.6] {
            let n =
                MixedSource::steps_for_tokens(docs.clone(), &corpus, mix(fraction), SPECIAL, batch, budget).unwrap();
            let mut sampler = MixingSampler::new(
                mix(fraction),
                SPECIAL,
                docs.clone(),
                Texts(&corpus.captions),
                Texts(&[]),
                MixCursor::default(),
            )
            .unwrap();
            for _ in 0..n {
                sampler.next_batch(batch).unwrap();
            }
            let real = sampler.cursor().total_tokens;
            assert!(real >= budget && real < budget + (batch * 64) as u64, "fraction {fraction}: {real} real tokens");
            steps.push(n);
        }
        assert_eq!(steps[0], budget / (batch * 64) as u64 + 1, "text rows have no padding");
        assert!(steps[0] < steps[1] && steps[1] < steps[2], "padded image rows need more steps: {steps:?}");
    }
}
