//! The mixing sampler: decides for each sequence whether it is text or image-text so that image tokens
//! make up a requested fraction of all (non-pad) tokens, the paper's knob "fraction of visual tokens".
//!
//! Error feedback, not coin flips: with `I` image tokens and `T` tokens so far, the deficit
//! `D = I - f*T` moves by a known amount for either choice, and the sampler takes the choice that leaves
//! `|D|` smaller. `|D|` therefore stays below one sequence's worth of tokens, so the fraction over any
//! window of steps is off by at most about `2 * seq_len / tokens in the window` (e.g. under 0.5 points
//! over 100 steps of 8 sequences), and the whole run is a pure function of the seed and data. The same
//! rule splits image examples between captions and instruction conversations (the paper's
//! instruction-share ablation). An image row holds one example, the paper's layout, or with
//! `images_per_row > 1` up to that many examples of one kind back to back (less padding: see
//! [`ImageRow`](crate::sequence::ImageRow)); the decision then weighs the whole row. The
//! cursor (counters, stream positions, recent window) is serialisable; a sampler rebuilt from it
//! continues exactly where the saved one stopped.
use std::collections::VecDeque;

use anyhow::Result;
use serde::{Deserialize, Serialize};

use crate::sequence::{ImageText, SpecialTokens, VlmSequence};

use crate::packing::{epoch_order, Sequence, SequenceKind, TextCursor, TextPacker, TokenDocuments};

/// Steps in the window the achieved fraction is reported over.
pub const WINDOW_STEPS: usize = 100;

/// Image examples addressed by index; only their text is needed to decide and pack, the trainer maps
/// `Sequence::example` back to the image (or its cached encoder features).
pub trait ImageTexts {
    fn len(&self) -> u64;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    fn text(&mut self, index: u64) -> Result<ImageText>;
}

impl ImageTexts for Vec<ImageText> {
    fn len(&self) -> u64 {
        Vec::len(self) as u64
    }
    fn text(&mut self, index: u64) -> Result<ImageText> {
        self.get(index as usize).cloned().ok_or_else(|| anyhow::anyhow!("image example {index} out of range"))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct MixConfig {
    pub seq_len: usize,
    /// Image tokens per image (the encoder's output length, e.g. 729 for SigLIP at 384 px).
    pub n_image_tokens: usize,
    /// Requested fraction of image tokens among all non-pad tokens, in [0, 1].
    pub image_token_fraction: f64,
    /// Fraction of image examples drawn from instruction conversations instead of captions.
    pub instruction_share: f64,
    /// At most this many image examples per row (1: the paper's single image per sequence).
    pub images_per_row: usize,
    /// Fill an image row's padding with the text stream, as far as the fraction rule wants text.
    #[serde(default)]
    pub fill_image_rows: bool,
    pub seed: u64,
    /// Log the achieved fraction every this many steps (0: never).
    pub log_every: u64,
    /// Where the text stream starts (None: the corpus's start in the order of `seed`).
    #[serde(default)]
    pub text_start: Option<TextStart>,
}

/// A text stream position and the seed of its document order. A cooldown branched from a
/// pre-training checkpoint continues pre-training's own stream there, so it reads text the model
/// has not seen yet, as the paper's cooldowns (which replace the rest of the text run) do.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TextStart {
    pub seed: u64,
    pub cursor: TextCursor,
}

/// Position in an indexed example set: seeded order per epoch.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExampleCursor {
    pub epoch: u64,
    pub position: u64,
}

/// Everything needed to resume: stream positions and the counters the decisions depend on.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MixCursor {
    pub text: TextCursor,
    pub captions: ExampleCursor,
    pub instruct: ExampleCursor,
    pub image_tokens: u64,
    pub total_tokens: u64,
    pub text_sequences: u64,
    pub caption_examples: u64,
    pub instruct_examples: u64,
    pub steps: u64,
    /// (image tokens, total tokens) of the last [`WINDOW_STEPS`] steps.
    pub window: VecDeque<(u64, u64)>,
}

impl MixCursor {
    /// The cursor a run of `config` starts from.
    pub fn start(config: &MixConfig) -> Self {
        Self { text: config.text_start.map(|s| s.cursor).unwrap_or_default(), ..Self::default() }
    }
}

/// Achieved mix, for logs and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct MixStats {
    pub steps: u64,
    pub cumulative_image_fraction: f64,
    pub window_image_fraction: f64,
    pub achieved_instruction_share: f64,
}

struct IndexedSet<S> {
    set: S,
    seed: u64,
    order: Option<(u64, Vec<u32>)>,
}

impl<S: ImageTexts> IndexedSet<S> {
    fn index_at(&mut self, cursor: ExampleCursor) -> u64 {
        let n = self.set.len() as usize;
        if self.order.as_ref().is_none_or(|(epoch, _)| *epoch != cursor.epoch) {
            self.order = Some((cursor.epoch, epoch_order(n, self.seed, cursor.epoch)));
        }
        self.order.as_ref().map_or(0, |(_, o)| o[cursor.position as usize] as u64)
    }
}

fn advance(cursor: ExampleCursor, len: u64) -> ExampleCursor {
    if cursor.position + 1 >= len {
        ExampleCursor { epoch: cursor.epoch + 1, position: 0 }
    } else {
        ExampleCursor { epoch: cursor.epoch, position: cursor.position + 1 }
    }
}

pub struct MixingSampler<D, C, I> {
    config: MixConfig,
    layout: VlmSequence,
    text: TextPacker<D>,
    captions: IndexedSet<C>,
    instruct: IndexedSet<I>,
    cursor: MixCursor,
}

impl<D: TokenDocuments, C: ImageTexts, I: ImageTexts> MixingSampler<D, C, I> {
    /// A sampler at `cursor` (`MixCursor::default()` to start).
    pub fn new(
        config: MixConfig,
        special: SpecialTokens,
        docs: D,
        captions: C,
        instruct: I,
        cursor: MixCursor,
    ) -> Result<Self> {
        check_fraction("image token fraction", config.image_token_fraction)?;
        check_fraction("instruction share", config.instruction_share)?;
        let layout = VlmSequence::new(config.seq_len, config.n_image_tokens, special)?;
        anyhow::ensure!(config.images_per_row >= 1, "images per row must be at least 1");
        if config.image_token_fraction > 0.0 {
            anyhow::ensure!(
                config.instruction_share == 1.0 || !captions.is_empty(),
                "an image token fraction above 0 needs image-caption examples; none were given"
            );
            anyhow::ensure!(
                config.instruction_share == 0.0 || !instruct.is_empty(),
                "an instruction share above 0 needs instruction examples; none were given"
            );
        }
        for (name, at, len) in
            [("caption", cursor.captions, captions.len()), ("instruction", cursor.instruct, instruct.len())]
        {
            anyhow::ensure!(
                len == 0 || at.position < len,
                "saved {name} cursor points at example {} of {}: it belongs to other data",
                at.position,
                len
            );
        }
        let text_seed = config.text_start.map_or(config.seed, |s| s.seed);
        let text = TextPacker::new(docs, config.seq_len, special.eos, text_seed, cursor.text)?;
        let captions = IndexedSet { set: captions, seed: config.seed ^ 0xC0FFEE, order: None };
        let instruct = IndexedSet { set: instruct, seed: config.seed ^ 0x1D57_C0DE, order: None };
        Ok(Self { config, layout, text, captions, instruct, cursor })
    }

    /// The state to save with a checkpoint.
    pub fn cursor(&self) -> &MixCursor {
        &self.cursor
    }

    pub fn stats(&self) -> MixStats {
        let c = &self.cursor;
        let (wi, wt) = c.window.iter().fold((0, 0), |(a, b), &(i, t)| (a + i, b + t));
        let image_examples = c.caption_examples + c.instruct_examples;
        MixStats {
            steps: c.steps,
            cumulative_image_fraction: achieved_image_fraction(c.image_tokens, c.total_tokens),
            window_image_fraction: achieved_image_fraction(wi, wt),
            achieved_instruction_share: ratio(c.instruct_examples, image_examples),
        }
    }

    /// One optimizer step's worth of sequences.
    pub fn next_batch(&mut self, batch_size: usize) -> Result<Vec<Sequence>> {
        let (image_before, total_before) = (self.cursor.image_tokens, self.cursor.total_tokens);
        let batch = (0..batch_size).map(|_| self.next_sequence()).collect::<Result<Vec<_>>>()?;
        let c = &mut self.cursor;
        c.steps += 1;
        c.window.push_back((c.image_tokens - image_before, c.total_tokens - total_before));
        if c.window.len() > WINDOW_STEPS {
            c.window.pop_front();
        }
        if self.config.log_every > 0 && c.steps.is_multiple_of(self.config.log_every) {
            let s = self.stats();
            tracing::info!(
                step = s.steps,
                requested = self.config.image_token_fraction,
                window = s.window_image_fraction,
                cumulative = s.cumulative_image_fraction,
                achieved_instruction_share = s.achieved_instruction_share,
                "image token fraction"
            );
        }
        Ok(batch)
    }

    /// The next sequence, text or image, by the error-feedback rule.
    pub fn next_sequence(&mut self) -> Result<Sequence> {
        let f = self.config.image_token_fraction;
        if f == 0.0 {
            return Ok(self.take_text());
        }
        let deficit = self.cursor.image_tokens as f64 - f * self.cursor.total_tokens as f64;
        let (sequence, after, text_after) = self.image_row(deficit)?;
        let n_img = sequence.n_image_tokens as f64;
        let image_total = (sequence.n_image_tokens + sequence.n_text_tokens) as f64;
        let after_image = deficit + n_img - f * image_total;
        let after_text = deficit - f * self.config.seq_len as f64;
        if after_text.abs() < after_image.abs() {
            return Ok(self.take_text());
        }
        self.text.cursor = text_after;
        let c = &mut self.cursor;
        c.text = text_after;
        c.image_tokens += sequence.n_image_tokens as u64;
        c.total_tokens += (sequence.n_image_tokens + sequence.n_text_tokens) as u64;
        let examples = sequence.examples.len() as u64;
        if sequence.kind == SequenceKind::Instruct {
            c.instruct_examples += examples;
            c.instruct = after;
        } else {
            c.caption_examples += examples;
            c.captions = after;
        }
        Ok(sequence)
    }

    /// The image row the sampler would take next at image-token deficit `deficit`, and where its
    /// set's cursor and the text stream would then stand: its kind by the instruction-share rule,
    /// examples of that kind while they fit, then (with `fill_image_rows`) as much of the text
    /// stream as brings the deficit closest to zero.
    fn image_row(&mut self, deficit: f64) -> Result<(Sequence, ExampleCursor, TextCursor)> {
        let image_examples = self.cursor.caption_examples + self.cursor.instruct_examples;
        let want_instruct =
            (self.cursor.instruct_examples as f64 + 0.5) < self.config.instruction_share * (image_examples + 1) as f64;
        let (kind, mut cursor) = if want_instruct {
            (SequenceKind::Instruct, self.cursor.instruct)
        } else {
            (SequenceKind::Caption, self.cursor.captions)
        };
        let mut row = self.layout.row();
        let mut examples = Vec::new();
        while examples.len() < self.config.images_per_row {
            let (index, text, len) = if want_instruct {
                let index = self.instruct.index_at(cursor);
                (index, self.instruct.set.text(index)?, self.instruct.set.len())
            } else {
                let index = self.captions.index_at(cursor);
                (index, self.captions.set.text(index)?, self.captions.set.len())
            };
            if !row.push(&text) {
                break;
            }
            examples.push(index);
            cursor = advance(cursor, len);
        }
        let mut text_after = self.cursor.text;
        if self.config.fill_image_rows {
            let f = self.config.image_token_fraction;
            let (n_img, total) = (row.image_tokens() as f64, (row.image_tokens() + row.text_tokens()) as f64);
            let wanted = ((deficit + n_img - f * total) / f).round().max(0.0) as usize;
            let n = wanted.min(row.room());
            if n > 0 {
                let (tokens, after) = self.text.peek(self.cursor.text, n, n == row.room());
                row.fill(&tokens);
                text_after = after;
            }
        }
        let (n_image_tokens, n_text_tokens) = (row.image_tokens(), row.text_tokens());
        Ok((Sequence { kind, examples, row: row.finish(), n_image_tokens, n_text_tokens }, cursor, text_after))
    }

    fn take_text(&mut self) -> Sequence {
        let sequence = self.text.next_sequence();
        let c = &mut self.cursor;
        c.text = self.text.cursor;
        c.text_sequences += 1;
        c.total_tokens += sequence.n_text_tokens as u64;
        sequence
    }
}

/// Checks a requested fraction of the mix (image tokens, instruction share, where images come in):
/// the one [0, 1] rule of configs, flags and results.
pub fn check_fraction(name: &str, value: f64) -> Result<()> {
    anyhow::ensure!((0.0..=1.0).contains(&value), "{name} = {value} is outside [0, 1]");
    Ok(())
}

/// Image tokens among all tokens: the achieved image-token fraction of a step, a window or a run.
pub fn achieved_image_fraction(image_tokens: u64, tokens: u64) -> f64 {
    ratio(image_tokens, tokens)
}

fn ratio(a: u64, b: u64) -> f64 {
    if b == 0 {
        0.0
    } else {
        a as f64 / b as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPECIAL: SpecialTokens = SpecialTokens { eos: 0, pad: 1, image: 2 };

    /// Documents and captions of varied lengths, generated deterministically.
    fn docs() -> Vec<Vec<u32>> {
        (0..300).map(|d| (0..(d * 37 % 900 + 5)).map(|t| 3 + (t * 7 + d) as u32 % 500).collect()).collect()
    }
    fn texts(n: usize, min: usize, spread: usize) -> Vec<ImageText> {
        (0..n).map(|i| ImageText::caption((0..(min + i * 13 % spread)).map(|t| 3 + t as u32).collect())).collect()
    }
    fn config(fraction: f64, instruct: f64) -> MixConfig {
        MixConfig {
            seq_len: 256,
            n_image_tokens: 64,
            image_token_fraction: fraction,
            instruction_share: instruct,
            seed: 42,
            log_every: 0,
            images_per_row: 1,
            fill_image_rows: false,
            text_start: None,
        }
    }
    fn sampler(cfg: MixConfig, cursor: MixCursor) -> MixingSampler<Vec<Vec<u32>>, Vec<ImageText>, Vec<ImageText>> {
        MixingSampler::new(cfg, SPECIAL, docs(), texts(997, 4, 40), texts(101, 20, 120), cursor).unwrap()
    }

    #[test]
    fn every_100_step_window_is_within_half_a_point_of_the_requested_fraction() {
        for fraction in [0.01, 0.05, 0.1, 0.2, 0.35, 0.5, 0.7] {
            let mut s = sampler(config(fraction, 0.0), MixCursor::default());
            let mut per_step = Vec::new();
            for _ in 0..600 {
                let batch = s.next_batch(8).unwrap();
                let image: usize = batch.iter().map(|q| q.n_image_tokens).sum();
                let total: usize = batch.iter().map(|q| q.n_image_tokens + q.n_text_tokens).sum();
                per_step.push((image, total));
            }
            for start in 0..=per_step.len() - WINDOW_STEPS {
                let (i, t) =
                    per_step[start..start + WINDOW_STEPS].iter().fold((0, 0), |(a, b), &(i, t)| (a + i, b + t));
                let achieved = i as f64 / t as f64;
                assert!(
                    (achieved - fraction).abs() < 0.005,
                    "fraction {fraction}: window at step {start} achieved {achieved}"
                );
            }
            assert!((s.stats().window_image_fraction - fraction).abs() < 0.005);
        }
    }

    #[test]
    fn pads_are_not_counted_and_text_only_or_image_only_extremes_work() {
        let mut text_only = sampler(config(0.0, 0.0), MixCursor::default());
        assert!(text_only.next_batch(16).unwrap().iter().all(|q| q.kind == SequenceKind::Text));
        let mut image_only = sampler(config(1.0, 0.0), MixCursor::default());
        let batch = image_only.next_batch(16).unwrap();
        assert!(batch.iter().all(|q| q.kind == SequenceKind::Caption));
        let counted: usize = batch.iter().map(|q| q.n_image_tokens + q.n_text_tokens).sum();
        let non_pad: usize = batch.iter().map(|q| q.row.inputs.iter().filter(|&&t| t != SPECIAL.pad).count()).sum();
        assert_eq!(counted, non_pad);
        assert_eq!(image_only.cursor().total_tokens as usize, counted);
    }

    #[test]
    fn instruction_share_of_image_sequences_is_held() {
        let mut s = sampler(config(0.3, 0.25), MixCursor::default());
        let mut kinds = Vec::new();
        for _ in 0..200 {
            kinds.extend(s.next_batch(8).unwrap().into_iter().map(|q| q.kind));
        }
        let instruct = kinds.iter().filter(|&&k| k == SequenceKind::Instruct).count() as f64;
        let image = kinds.iter().filter(|&&k| k != SequenceKind::Text).count() as f64;
        assert!((instruct / image - 0.25).abs() < 1.0 / image + 1e-9, "{}", instruct / image);
        assert!((s.stats().cumulative_image_fraction - 0.3).abs() < 0.005);
    }

    #[test]
    fn packed_rows_hold_several_examples_hold_the_mix_and_pad_less() {
        let run = |per_row: usize| {
            let mut s = sampler(MixConfig { images_per_row: per_row, ..config(0.4, 0.25) }, MixCursor::default());
            let (mut pads, mut examples, mut image_rows) = (0, 0, 0);
            for _ in 0..300 {
                for q in s.next_batch(8).unwrap().into_iter().filter(|q| q.kind != SequenceKind::Text) {
                    assert_eq!(q.examples.len(), q.row.images.len());
                    assert_eq!(
                        q.n_image_tokens + q.n_text_tokens + q.row.inputs.iter().filter(|&&t| t == 1).count(),
                        256
                    );
                    assert!(q.row.targets.iter().zip(&q.row.loss_mask).all(|(&t, &m)| !m || t != SPECIAL.image));
                    pads += 256 - q.n_image_tokens - q.n_text_tokens;
                    examples += q.examples.len();
                    image_rows += 1;
                }
            }
            let stats = s.stats();
            assert!((stats.window_image_fraction - 0.4).abs() < 0.005, "{per_row}: {stats:?}");
            assert!((stats.achieved_instruction_share - 0.25).abs() < 0.02, "{per_row}: {stats:?}");
            (pads as f64 / image_rows as f64, examples as f64 / image_rows as f64)
        };
        let (one_pads, one_examples) = run(1);
        let (packed_pads, packed_examples) = run(4);
        assert_eq!(one_examples, 1.0);
        assert!(packed_examples > 1.5, "{packed_examples} examples per packed row");
        assert!(packed_pads < one_pads / 2.0, "pads per image row: {packed_pads} packed vs {one_pads} one");
    }

    #[test]
    fn filled_image_rows_read_the_text_stream_on_hold_the_mix_and_pad_least() {
        for fraction in [0.1, 0.4, 0.55] {
            let run = |fill: bool| {
                let cfg = MixConfig { images_per_row: 4, fill_image_rows: fill, ..config(fraction, 0.25) };
                let mut s = sampler(cfg, MixCursor::default());
                let (mut text, mut pads) = (Vec::new(), 0);
                for _ in 0..300 {
                    for q in s.next_batch(8).unwrap() {
                        let inputs = &q.row.inputs[..q.n_image_tokens + q.n_text_tokens];
                        pads += 256 - inputs.len();
                        let text_from = match q.row.images.last() {
                            // Captions hold no EOS (token 0): the fill starts after the last one's.
                            Some(&last) => last + 64 + inputs[last + 64..].iter().position(|&t| t == 0).unwrap() + 1,
                            None => 0,
                        };
                        text.extend_from_slice(&inputs[text_from..]);
                    }
                }
                let stats = s.stats();
                assert!((stats.window_image_fraction - fraction).abs() < 0.005, "{fraction} {fill}: {stats:?}");
                assert!((stats.achieved_instruction_share - 0.25).abs() < 0.02, "{fraction} {fill}: {stats:?}");
                (text, pads)
            };
            let (text, pads) = run(true);
            let mut reference = TextPacker::new(docs(), 256, SPECIAL.eos, 42, TextCursor::default()).unwrap();
            assert_eq!(
                text,
                reference.peek(TextCursor::default(), text.len(), false).0,
                "{fraction}: one stream, in order"
            );
            let (_, unfilled_pads) = run(false);
            if fraction < 0.5 {
                assert!(pads * 3 < unfilled_pads, "{fraction}: {pads} pads filled vs {unfilled_pads}");
            }
        }
    }

    #[test]
    fn same_seed_same_batches_and_resume_from_saved_cursor_is_exact() {
        for fill_image_rows in [false, true] {
            same_batches_and_exact_resume(MixConfig { fill_image_rows, images_per_row: 2, ..config(0.2, 0.1) });
        }
        same_batches_and_exact_resume(config(0.2, 0.1));
    }

    fn same_batches_and_exact_resume(cfg: MixConfig) {
        let mut straight = sampler(cfg, MixCursor::default());
        let mut first: Vec<Vec<Sequence>> = (0..37).map(|_| straight.next_batch(4).unwrap()).collect();
        let saved = serde_json::to_string(straight.cursor()).unwrap();
        let rest: Vec<Vec<Sequence>> = (0..300).map(|_| straight.next_batch(4).unwrap()).collect();

        let mut again = sampler(cfg, MixCursor::default());
        assert_eq!((0..37).map(|_| again.next_batch(4).unwrap()).collect::<Vec<_>>(), first);

        let mut resumed = sampler(cfg, serde_json::from_str(&saved).unwrap());
        let resumed_rest: Vec<Vec<Sequence>> = (0..300).map(|_| resumed.next_batch(4).unwrap()).collect();
        assert_eq!(resumed_rest, rest);
        assert_eq!(resumed.cursor(), straight.cursor());

        let mut other_seed = sampler(MixConfig { seed: 7, ..cfg }, MixCursor::default());
        first.truncate(5);
        assert_ne!((0..5).map(|_| other_seed.next_batch(4).unwrap()).collect::<Vec<_>>(), first);
    }

    #[test]
    fn impossible_settings_are_refused() {
        let none: Vec<ImageText> = Vec::new();
        assert!(MixingSampler::new(
            config(0.2, 0.0),
            SPECIAL,
            docs(),
            none.clone(),
            none.clone(),
            MixCursor::default()
        )
        .is_err());
        assert!(MixingSampler::new(
            config(1.5, 0.0),
            SPECIAL,
            docs(),
            texts(3, 1, 2),
            none.clone(),
            MixCursor::default()
        )
        .is_err());
        let tight = MixConfig { seq_len: 65, ..config(0.2, 0.0) };
        assert!(MixingSampler::new(tight, SPECIAL, docs(), texts(3, 1, 2), none, MixCursor::default()).is_err());
    }

    #[test]
    fn text_start_continues_another_streams_order_and_position() {
        let mut pretrain = TextPacker::new(docs(), 256, SPECIAL.eos, 5, TextCursor::default()).unwrap();
        for _ in 0..10 {
            pretrain.next_sequence();
        }
        let text_start = Some(TextStart { seed: 5, cursor: pretrain.cursor });
        let cfg = MixConfig { text_start, ..config(0.0, 0.0) };
        let mut cooldown = sampler(cfg, MixCursor::start(&cfg));
        for _ in 0..3 {
            assert_eq!(cooldown.next_sequence().unwrap().row.inputs, pretrain.next_sequence().row.inputs);
        }
    }
}
