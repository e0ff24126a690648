//! The text side of ingestion: read the text sources, clean, deduplicate, split by document, write
//! JSONL documents; tokenized shards come after the tokenizer is trained (see `crate::prepare`; [`vlmix_data::text::shard`]).
pub mod clean;
pub mod dedup;
pub mod documents;
pub mod sources;
pub mod split;

use std::collections::BTreeMap;

use anyhow::Result;
use serde::{Deserialize, Serialize};

use dedup::{dedup_exact, DedupCounts};
use documents::{write_documents, Document};
use sources::TextSource;
use vlmix_data::layout::DataLayout;

#[derive(Debug, Clone, Copy)]
pub struct CorpusOptions {
    /// Share of documents held out for validation (bits-per-byte), by id hash.
    pub validation_fraction: f64,
    /// Documents shorter than this many characters after cleaning are dropped (index stubs).
    pub min_chars: usize,
}

impl Default for CorpusOptions {
    fn default() -> Self {
        Self { validation_fraction: 0.02, min_chars: 24 }
    }
}

/// Documents and UTF-8 bytes of one source in one split.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SplitCounts {
    pub documents: usize,
    pub bytes: usize,
}

#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceCounts {
    pub train: SplitCounts,
    pub validation: SplitCounts,
}

#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CorpusReport {
    pub sources: BTreeMap<String, SourceCounts>,
    pub removed: DedupCounts,
}

/// The two splits of a built corpus, in source order.
pub struct Corpus {
    pub train: Vec<Document>,
    pub validation: Vec<Document>,
    pub report: CorpusReport,
}

/// Reads, cleans, deduplicates and splits the given sources and writes both splits' JSONL files.
pub fn build_corpus(layout: &DataLayout, sources: &[&TextSource], options: CorpusOptions) -> Result<Corpus> {
    let mut all = Vec::new();
    for source in sources {
        let started = std::time::Instant::now();
        let docs = source.read(layout)?;
        tracing::info!(
            source = source.name,
            documents = docs.len(),
            seconds = started.elapsed().as_secs_f32(),
            "read text source"
        );
        all.extend(docs);
    }
    let removed = dedup_exact(&mut all, options.min_chars);
    let mut report = CorpusReport { removed, ..Default::default() };
    let (validation, train): (Vec<Document>, Vec<Document>) =
        all.into_iter().partition(|d| split::is_validation(&d.id, options.validation_fraction));
    for (docs, is_val) in [(&train, false), (&validation, true)] {
        for doc in docs.iter() {
            let counts = report.sources.entry(doc.source.clone()).or_default();
            let split = if is_val { &mut counts.validation } else { &mut counts.train };
            split.documents += 1;
            split.bytes += doc.text.len();
        }
    }
    std::fs::create_dir_all(layout.text_dir())?;
    write_documents(&layout.text_documents("train"), &train)?;
    write_documents(&layout.text_documents("validation"), &validation)?;
    Ok(Corpus { train, validation, report })
}
