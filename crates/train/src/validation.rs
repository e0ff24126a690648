//! Held-out text loss during training, in bits per byte (tokenizer-independent, so runs with
//! different vocabularies compare). A fixed set of packed validation sequences is scored with the
//! LM alone; the pre-training curve of the report comes from these numbers.

use anyhow::{ensure, Result};
use vlmix_data::packing::{TextCursor, TextPacker, TokenDocuments};
use vlmix_data::tokenizer::TextTokenizer;
use vlmix_engine::params::ParamStore;
use vlmix_engine::Device;
use vlmix_models::lm::{Lm, LmInput};

pub struct ValidationSet {
    seq: usize,
    sequences: usize,
    inputs: Vec<u32>,
    targets: Vec<u32>,
    /// UTF-8 bytes of all targets, decoded.
    bytes: usize,
}

impl ValidationSet {
    /// The first `sequences` packed sequences of `docs` (a fixed seed, so every run scores the same text).
    pub fn new<D: TokenDocuments>(docs: D, seq: usize, sequences: usize, tokenizer: &TextTokenizer) -> Result<Self> {
        ensure!(docs.n_docs() > 0, "the validation split holds no documents");
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

    /// Bits per byte of the LM on the set (nats summed over tokens / ln 2 / bytes).
    pub fn bits_per_byte<D: Device>(&self, lm: &mut Lm<D>, params: &ParamStore<D>) -> Result<f64> {
        Ok(self.bits_per_byte_of(&self.nats_per_sequence(lm, params)?))
    }

    /// The set's bits per byte from [`nats_per_sequence`](Self::nats_per_sequence).
    pub fn bits_per_byte_of(&self, nats: &[f64]) -> f64 {
        nats.iter().sum::<f64>() / std::f64::consts::LN_2 / self.bytes.max(1) as f64
    }

    /// Summed negative log-likelihood (nats) of each validation sequence: what a paired interval of
    /// two models' bits-per-byte resamples (the same sequences, the same bytes).
    pub fn nats_per_sequence<D: Device>(&self, lm: &mut Lm<D>, params: &ParamStore<D>) -> Result<Vec<f64>> {
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
        Ok(nats)
    }
}
