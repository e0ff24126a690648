//! The image side of training data, resolved once per study: every training image's features are in
//! the feature cache and every caption / conversation is tokenized, keyed by the image's cache key.
//!
//! Building it decodes and encodes every image (minutes); loading it reads one JSON file (a blink),
//! so the many cooldown and fine-tuning runs of a study never touch image files.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use image::RgbImage;
use serde::{Deserialize, Serialize};
use vlmix_atomic_file::write_atomic;
use vlmix_data::byod::stream::{ShardStream, StreamConfig, StreamCursor};
use vlmix_data::byod::{OnBadRecord, Skipped};
use vlmix_data::image_texts::conversation_text;
use vlmix_data::llava::LlavaSet;
use vlmix_data::sequence::ImageText;
use vlmix_data::tokenizer::TextTokenizer;
use vlmix_models::vision::encoder::ImageEncoder;
use vlmix_models::vision::feature_cache::{CacheStats, CacheTimes, FeatureCache, ImageKey};

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

/// Where a corpus build's time went besides the feature cache's own phases ([`CacheTimes`]).
#[derive(Default)]
struct BuildTimes {
    /// Waiting for the caption stream (its reader thread reads shards and decodes ahead).
    wait_decode_s: f64,
    /// Reading and decoding the instruction images.
    decode_s: f64,
    /// Tokenizing captions and building conversations.
    text_s: f64,
    /// Writing the last feature shard.
    flush_s: f64,
}

impl BuildTimes {
    fn log(&self, total_s: f64, cache: &CacheTimes, stats: CacheStats) {
        let s = |v: f64| format!("{v:.1}");
        tracing::info!(
            total_s = s(total_s),
            images_encoded = stats.misses,
            images_cached = stats.hits,
            wait_for_caption_images_s = s(self.wait_decode_s),
            decode_instruction_images_s = s(self.decode_s),
            hash_s = s(cache.hash_s),
            lookup_s = s(cache.lookup_s),
            preprocess_s = s(cache.preprocess_s),
            encode_s = s(cache.encode_s),
            cache_write_s = s(cache.store_s + self.flush_s),
            text_s = s(self.text_s),
            "image corpus built"
        );
    }
}

/// Encodes images in chunks through the cache (computing misses) and returns their keys.
fn cache_features(cache: &mut FeatureCache, encoder: &dyn ImageEncoder, images: &[RgbImage]) -> Result<Vec<ImageKey>> {
    let refs: Vec<&RgbImage> = images.iter().collect();
    cache.cache_all(encoder, &refs)
}

const CHUNK: usize = 64;

/// Where the image-caption pairs come from: shards read as a (possibly shuffled) stream.
pub struct CaptionSource {
    pub shards: Vec<PathBuf>,
    pub stream: StreamConfig,
}

/// Where the instruction conversations come from.
pub struct InstructSource {
    /// LLaVA JSON (or JSON Lines).
    pub file: PathBuf,
    /// Folder the records' `image` paths are relative to (default: the file's folder).
    pub image_root: Option<PathBuf>,
    pub on_bad_record: OnBadRecord,
}

/// A built corpus and the records left out building it.
pub struct CorpusBuild {
    pub corpus: ImageCorpus,
    pub skipped_captions: Skipped,
    pub skipped_conversations: Skipped,
}

impl ImageCorpus {
    /// Reads the caption shards (the first `max_images` samples of the stream) and the instruction
    /// file, fills the feature cache and tokenizes. A bad record is an error naming its file and
    /// member or line, or, under `on_bad_record = "skip"`, logged, left out and counted.
    pub fn build(
        captions_from: &CaptionSource,
        instruct_from: Option<&InstructSource>,
        max_images: Option<usize>,
        tokenizer: &TextTokenizer,
        encoder: &dyn ImageEncoder,
        cache: &mut FeatureCache,
        on_progress: &mut dyn FnMut(usize),
    ) -> Result<CorpusBuild> {
        let started = Instant::now();
        let mut times = BuildTimes::default();
        let mut captions = Vec::new();
        let (mut images, mut texts) = (Vec::new(), Vec::new());
        let mut flush = |images: &mut Vec<RgbImage>,
                         texts: &mut Vec<String>,
                         captions: &mut Vec<ImageExample>,
                         times: &mut BuildTimes|
         -> Result<()> {
            let keys = cache_features(cache, encoder, images)?;
            let clock = Instant::now();
            for (key, text) in keys.into_iter().zip(texts.iter()) {
                captions.push(caption_example(key, text, tokenizer)?);
            }
            times.text_s += clock.elapsed().as_secs_f64();
            on_progress(images.len());
            images.clear();
            texts.clear();
            Ok(())
        };
        let limit = max_images.unwrap_or(usize::MAX);
        let mut stream =
            ShardStream::new(captions_from.shards.clone(), captions_from.stream.clone(), StreamCursor::default())?;
        let mut clock = Instant::now();
        for sample in stream.by_ref().take(limit) {
            let sample = sample?;
            times.wait_decode_s += clock.elapsed().as_secs_f64();
            images.push(sample.image);
            texts.push(sample.caption);
            if images.len() == CHUNK {
                flush(&mut images, &mut texts, &mut captions, &mut times)?;
            }
            clock = Instant::now();
        }
        flush(&mut images, &mut texts, &mut captions, &mut times)?;
        let skipped_captions = stream.skipped().clone();
        drop(stream);
        if captions.is_empty() {
            bail!("no usable image-caption samples in {} shard(s)", captions_from.shards.len());
        }

        let mut instruct = Vec::new();
        let mut skipped_conversations = Skipped::default();
        if let Some(from) = instruct_from {
            let (file, policy) = (&from.file, from.on_bad_record);
            let set = LlavaSet::read(file, from.image_root.as_deref())?;
            for problem in &set.problems {
                skipped_conversations.record(policy, "instruction data", problem)?;
            }
            for chunk in set.records[..set.records.len().min(limit)].chunks(CHUNK) {
                let clock = Instant::now();
                let mut images = Vec::with_capacity(chunk.len());
                let mut kept = Vec::with_capacity(chunk.len());
                for (line, record) in chunk {
                    let image = set
                        .image_path(record)
                        .with_context(|| format!("record {} has no image", record.id))
                        .and_then(|path| {
                            let bytes =
                                std::fs::read(&path).with_context(|| format!("reading image {}", path.display()))?;
                            vlmix_data::image_io::decode_rgb(&bytes)
                                .with_context(|| format!("decoding {}", path.display()))
                        });
                    match image {
                        Ok(image) => {
                            images.push(image);
                            kept.push((line, record));
                        }
                        Err(err) => skipped_conversations.record(
                            policy,
                            "instruction data",
                            &format!("{}:{line} (id {}): {err:#}", file.display(), record.id),
                        )?,
                    }
                }
                times.decode_s += clock.elapsed().as_secs_f64();
                let keys = cache_features(cache, encoder, &images)?;
                let clock = Instant::now();
                for (key, (line, record)) in keys.into_iter().zip(kept) {
                    let text =
                        conversation_text(record, tokenizer).with_context(|| format!("{}:{line}", file.display()))?;
                    instruct.push(ImageExample { key: hex::encode(key), tokens: text.tokens, loss: text.loss });
                }
                times.text_s += clock.elapsed().as_secs_f64();
                on_progress(chunk.len());
            }
        }
        let clock = Instant::now();
        cache.flush()?;
        times.flush_s = clock.elapsed().as_secs_f64();
        times.log(started.elapsed().as_secs_f64(), &cache.times(), cache.stats());
        let corpus = Self {
            encoder_id: encoder.id().to_string(),
            n_image_tokens: encoder.tokens(),
            feature_width: encoder.width(),
            captions,
            instruct,
        };
        Ok(CorpusBuild { corpus, skipped_captions, skipped_conversations })
    }

    pub fn save(&self, path: &Path) -> Result<()> {
        write_atomic(path, &serde_json::to_vec(self)?)
    }

    pub fn load(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).with_context(|| format!("reading image corpus {}", path.display()))?;
        serde_json::from_slice(&bytes).with_context(|| format!("parsing image corpus {}", path.display()))
    }
}
