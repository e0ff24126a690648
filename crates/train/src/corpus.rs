//! The image side of training data, resolved once per study: every training image's features are in
//! the feature cache and every caption / conversation is tokenized, keyed by the image's cache key.
//!
//! Building it decodes and encodes every image (minutes); loading it reads one JSON file (a blink),
//! so the many cooldown and fine-tuning runs of a study never touch image files.

use std::path::Path;

use anyhow::{bail, Context, Result};
use image::RgbImage;
use serde::{Deserialize, Serialize};
use vlmix_data::llava::LlavaSet;
use vlmix_data::packing::ImageText;
use vlmix_data::tokenizer::TextTokenizer;
use vlmix_data::webdataset;
use vlmix_engine::atomic_file::write_atomic;
use vlmix_models::vision::encoder::ImageEncoder;
use vlmix_models::vision::feature_cache::{image_key, FeatureCache, ImageKey};

/// How conversation turns are laid out after the image; the same frame eval asks questions in
/// (`vlmix_eval::prompt::DEFAULT_VL_TEMPLATE`), so a fine-tuned model answers in the format it is asked.
pub fn conversation_turn(question: &str) -> String {
    format!("\nQuestion: {question}\nAnswer:")
}

/// One image with the text that follows it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ImageExample {
    /// Feature-cache key (hex SHA-256 of the decoded image).
    pub key: String,
    pub tokens: Vec<u32>,
    /// Per token: trained to produce it (all caption tokens; only answers in conversations).
    pub loss: Vec<bool>,
}

impl ImageExample {
    pub fn text(&self) -> ImageText {
        ImageText { tokens: self.tokens.clone(), loss: self.loss.clone() }
    }

    pub fn cache_key(&self) -> Result<ImageKey> {
        let bytes = hex::decode(&self.key).with_context(|| format!("bad image key {}", self.key))?;
        bytes.try_into().map_err(|_| anyhow::anyhow!("image key {} is not 32 bytes", self.key))
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ImageCorpus {
    /// The encoder whose cache holds the features.
    pub encoder_id: String,
    pub n_image_tokens: usize,
    pub feature_width: usize,
    pub captions: Vec<ImageExample>,
    pub instruct: Vec<ImageExample>,
}

/// Caption tokens: the caption itself, every token trained.
fn caption_example(key: ImageKey, caption: &str, tokenizer: &TextTokenizer) -> Result<ImageExample> {
    let tokens = tokenizer.encode(caption.trim())?;
    Ok(ImageExample { key: hex::encode(key), loss: vec![true; tokens.len()], tokens })
}

/// A conversation: questions framed as eval frames them, loss only on the answers (and their newline).
fn conversation_example(key: ImageKey, exchanges: &[(String, String)], tokenizer: &TextTokenizer) -> Result<ImageExample> {
    let (mut tokens, mut loss) = (Vec::new(), Vec::new());
    for (question, answer) in exchanges {
        let question = question.replace(vlmix_data::llava::IMAGE_PLACEHOLDER, "");
        let prompt = tokenizer.encode(&conversation_turn(question.trim()))?;
        loss.extend(std::iter::repeat_n(false, prompt.len()));
        tokens.extend(prompt);
        let reply = tokenizer.encode(&format!(" {}\n", answer.trim()))?;
        loss.extend(std::iter::repeat_n(true, reply.len()));
        tokens.extend(reply);
    }
    Ok(ImageExample { key: hex::encode(key), tokens, loss })
}

/// Encodes images in chunks through the cache (computing misses) and returns their keys.
fn cache_features(cache: &mut FeatureCache, encoder: &dyn ImageEncoder, images: &[RgbImage]) -> Result<Vec<ImageKey>> {
    let refs: Vec<&RgbImage> = images.iter().collect();
    cache.features(encoder, &refs)?;
    Ok(images.iter().map(image_key).collect())
}

const CHUNK: usize = 64;

impl ImageCorpus {
    /// Reads the training shards in `shards_dir` and the instruction file, fills the feature cache, tokenizes.
    /// A malformed sample is an error naming shard and member: training data is never silently thinned.
    pub fn build(
        shards_dir: &Path,
        instruct_file: Option<&Path>,
        max_images: Option<usize>,
        tokenizer: &TextTokenizer,
        encoder: &dyn ImageEncoder,
        cache: &mut FeatureCache,
        on_progress: &mut dyn FnMut(usize),
    ) -> Result<Self> {
        let shards = webdataset::list_shards(shards_dir)?;
        if shards.is_empty() {
            bail!("no WebDataset shards (*.tar) in {}; run `vlmix data prepare`", shards_dir.display());
        }
        let mut captions = Vec::new();
        let (mut images, mut texts) = (Vec::new(), Vec::new());
        let mut flush = |images: &mut Vec<RgbImage>, texts: &mut Vec<String>, captions: &mut Vec<ImageExample>| -> Result<()> {
            let keys = cache_features(cache, encoder, images)?;
            for (key, text) in keys.into_iter().zip(texts.iter()) {
                captions.push(caption_example(key, text, tokenizer)?);
            }
            on_progress(images.len());
            images.clear();
            texts.clear();
            Ok(())
        };
        let limit = max_images.unwrap_or(usize::MAX);
        for sample in webdataset::stream(shards, 256).take(limit) {
            let sample = sample.map_err(anyhow::Error::new)?;
            images.push(sample.image);
            texts.push(sample.caption);
            if images.len() == CHUNK {
                flush(&mut images, &mut texts, &mut captions)?;
            }
        }
        flush(&mut images, &mut texts, &mut captions)?;

        let mut instruct = Vec::new();
        if let Some(file) = instruct_file {
            let set = LlavaSet::read(file, None)?;
            if let Some(problem) = set.problems.first() {
                bail!("{problem} ({} problems in all; `vlmix data inspect` lists them)", set.problems.len());
            }
            for chunk in set.records[..set.records.len().min(limit)].chunks(CHUNK) {
                let mut images = Vec::with_capacity(chunk.len());
                for (line, record) in chunk {
                    let path = set.image_path(record).with_context(|| format!("{}:{line}: record {} has no image", file.display(), record.id))?;
                    let bytes = std::fs::read(&path).with_context(|| format!("{}:{line}: reading image {}", file.display(), path.display()))?;
                    images.push(vlmix_data::image_io::decode_rgb(&bytes).with_context(|| format!("{}:{line}: decoding {}", file.display(), path.display()))?);
                }
                let keys = cache_features(cache, encoder, &images)?;
                for (key, (_, record)) in keys.into_iter().zip(chunk) {
                    let exchanges: Vec<(String, String)> = record.exchanges().map(|(q, a)| (q.to_string(), a.to_string())).collect();
                    instruct.push(conversation_example(key, &exchanges, tokenizer)?);
                }
                on_progress(chunk.len());
            }
        }
        cache.flush()?;
        Ok(Self { encoder_id: encoder.id().to_string(), n_image_tokens: encoder.tokens(), feature_width: encoder.width(), captions, instruct })
    }

    pub fn save(&self, path: &Path) -> Result<()> {
        write_atomic(path, &serde_json::to_vec(self)?)
    }

    pub fn load(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).with_context(|| format!("reading image corpus {}", path.display()))?;
        serde_json::from_slice(&bytes).with_context(|| format!("parsing image corpus {}", path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conversations_train_only_on_answers() {
        let tokenizer = TextTokenizer::train(["Question: what is it? Answer: a cat and a dog"].into_iter(), 300).unwrap();
        let ex = conversation_example([7; 32], &[("<image>\nwhat is it?".into(), "a cat".into()), ("and?".into(), "a dog".into())], &tokenizer).unwrap();
        let trained: Vec<u32> = ex.tokens.iter().zip(&ex.loss).filter(|(_, &l)| l).map(|(&t, _)| t).collect();
        assert_eq!(tokenizer.decode(&trained).unwrap(), " a cat\n a dog\n");
        let all = tokenizer.decode(&ex.tokens).unwrap();
        assert_eq!(all, "\nQuestion: what is it?\nAnswer: a cat\n\nQuestion: and?\nAnswer: a dog\n");
        assert_eq!(ex.cache_key().unwrap(), [7; 32]);
    }
}
