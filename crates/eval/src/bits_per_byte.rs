//! Validation bits-per-byte: tokenizer-independent text loss, so models with different
//! vocabularies compare (sum of negative log-likelihood in nats / ln 2 / UTF-8 bytes).

use crate::scorer::Scorer;
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::path::Path;

/// Bits-per-byte over a set of documents, with the sums it came from.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct BitsPerByte {
    pub bits_per_byte: f64,
    /// Total negative log-likelihood in nats.
    pub nll_nats: f64,
    pub bytes: u64,
    pub tokens: u64,
    pub documents: u64,
}

/// Scores every document from its first token and pools the losses (not a mean of per-document
/// ratios, so long documents weigh by their length).
pub fn bits_per_byte(scorer: &mut dyn Scorer, documents: &[String]) -> Result<BitsPerByte> {
    let mut nll_nats = 0.0;
    let mut bytes = 0u64;
    let mut tokens = 0u64;
    for (i, doc) in documents.iter().enumerate() {
        if doc.is_empty() {
            continue;
        }
        let ll = scorer.rolling_loglikelihood(doc).with_context(|| format!("scoring validation document {i}"))?;
        nll_nats -= ll.sum_logprob;
        bytes += doc.len() as u64;
        tokens += ll.n_tokens as u64;
    }
    if bytes == 0 {
        bail!("no non-empty validation documents to compute bits-per-byte on");
    }
    Ok(BitsPerByte {
        bits_per_byte: nll_nats / std::f64::consts::LN_2 / bytes as f64,
        nll_nats,
        bytes,
        tokens,
        documents: documents.iter().filter(|d| !d.is_empty()).count() as u64,
    })
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
