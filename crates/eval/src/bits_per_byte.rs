//! Held-out bits-per-byte, the one definition the study (pre-training curve, eval nodes) and
//! `vlmix eval` share: a fixed set of packed validation sequences scored with the LM alone (nats
//! summed over tokens / ln 2 / UTF-8 bytes of the targets, so models with different vocabularies
//! compare), kept per sequence because a paired interval of two models resamples sequences.

use anyhow::{bail, ensure, Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::path::Path;
use vlmix_data::packing::{TextCursor, TextPacker, TokenDocuments};
use vlmix_data::tokenizer::TextTokenizer;
use vlmix_engine::params::ParamStore;
use vlmix_engine::Device;
use vlmix_models::lm::{Lm, LmInput};
use vlmix_models::stage_record::{weights_of, StageRecord};

/// Sequences in a validation set unless a caller asks for another number.
pub const VALIDATION_SEQUENCES: usize = 32;

/// One model's bits-per-byte on a [`ValidationSet`], with the sums it came from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BitsPerByte {
    pub bits_per_byte: f64,
    /// Summed negative log-likelihood (nats) of each validation sequence, in set order.
    pub sequence_nats: Vec<f64>,
    /// UTF-8 bytes of every scored target, decoded.
    pub bytes: u64,
    pub tokens: u64,
}

/// The first `sequences` packed sequences of a document split (no shuffle, so every model of a
/// study, and `vlmix eval` on its checkpoints, scores the same text).
pub struct ValidationSet {
    seq: usize,
    sequences: usize,
    inputs: Vec<u32>,
    targets: Vec<u32>,
    bytes: usize,
}

impl ValidationSet {
    pub fn new<D: TokenDocuments>(docs: D, seq: usize, sequences: usize, tokenizer: &TextTokenizer) -> Result<Self> {
        ensure!(docs.n_docs() > 0, "the validation split holds no documents");
        ensure!(sequences > 0, "a validation set needs at least one sequence");
        let mut packer = TextPacker::new(docs, seq, tokenizer.special.eos, 0, TextCursor::default())?;
        let (mut inputs, mut targets) = (Vec::new(), Vec::new());
        for _ in 0..sequences {
            let s = packer.next_sequence();
            inputs.extend(s.row.inputs);
            targets.extend(s.row.targets);
        }
        let bytes = tokenizer.decode(&targets)?.len();
        Ok(Self { seq, sequences, inputs, targets, bytes })
    }

    /// Positions per sequence: the window of the models it scores.
    pub fn seq(&self) -> usize {
        self.seq
    }

    /// The LM's bits-per-byte on the set.
    pub fn score<D: Device>(&self, lm: &mut Lm<D>, params: &ParamStore<D>) -> Result<BitsPerByte> {
        let batch = 8.min(self.sequences);
        let mut nats = Vec::with_capacity(self.sequences);
        for start in (0..self.sequences).step_by(batch) {
            let n = batch.min(self.sequences - start);
            let range = start * self.seq..(start + n) * self.seq;
            let input = LmInput::tokens(n, self.seq, &self.inputs[range.clone()]);
            let nll = lm.token_nll(params, &input, &self.targets[range])?;
            let nll = params.device().to_host(nll);
            nats.extend(nll.chunks(self.seq).map(|row| row.iter().map(|&x| x as f64).sum::<f64>()));
        }
        Ok(BitsPerByte {
            bits_per_byte: nats.iter().sum::<f64>() / std::f64::consts::LN_2 / self.bytes.max(1) as f64,
            sequence_nats: nats,
            bytes: self.bytes as u64,
            tokens: self.targets.len() as u64,
        })
    }

    /// Scores the LM of a checkpoint (a VLM's projector is ignored), read at this set's window: an
    /// imported model may have been trained at another one.
    pub fn score_checkpoint<D: Device>(&self, dev: D, checkpoint: &Path) -> Result<BitsPerByte> {
        let mut config = StageRecord::of_checkpoint(checkpoint)?.model;
        config.seq_len = self.seq;
        let mut params = ParamStore::new(dev);
        let mut lm = Lm::new(config, &mut params, 0)?;
        params.load_partial_safetensors(&weights_of(checkpoint))?;
        self.score(&mut lm, &params).with_context(|| format!("bits-per-byte of {}", checkpoint.display()))
    }
}

/// Reads the `text` field of every line of a JSONL document file (the corpus format).
pub fn load_text_documents(path: &Path) -> Result<Vec<String>> {
    let content = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut docs = Vec::new();
    for (index, line) in content.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let at = || format!("{}:{}", path.display(), index + 1);
        let value: Value = serde_json::from_str(line).with_context(|| format!("{}: malformed JSON", at()))?;
        match value.get("text") {
            Some(Value::String(text)) => docs.push(text.clone()),
            Some(other) => bail!("{}: field `text`: expected a string, got {other}", at()),
            None => bail!("{}: missing field `text`", at()),
        }
    }
    Ok(docs)
}
