//! Data provenance: the registry candidate each fetched source came from, and the sources this
//! machine could not get with what their absence costs. `vlmix data prepare` writes it into the
//! prepared manifest; `vlmix data stats`, the study's config check and every report read it.
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::DataLayout;

/// Data provenance of one fetched source: the registry candidate that was used.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FetchedSource {
    pub name: String,
    pub registry: String,
    /// `package=version` (apt), `package==version` (PyPI) or `package@version` (npm).
    pub package: String,
    pub file: String,
    /// Empty when the stamp predates provenance (an older fetch-data.sh).
    pub sha256: String,
    pub licence: String,
}

impl FetchedSource {
    /// A stamp: the data-sources.tsv row (name, registry, spec, file, sha256, size, licence, members).
    pub(crate) fn parse(name: &str, row: &str) -> Self {
        let fields: Vec<&str> = row.trim_end_matches('\n').split('\t').collect();
        match fields.as_slice() {
            [_, registry, package, file, sha256, _size, licence, ..] => Self {
                name: name.to_string(),
                registry: registry.to_string(),
                package: package.to_string(),
                file: file.to_string(),
                sha256: sha256.to_string(),
                licence: licence.to_string(),
            },
            _ => Self {
                name: name.to_string(),
                registry: "unknown".into(),
                package: "unknown (fetched by an older fetch-data.sh: rerun it)".into(),
                file: String::new(),
                sha256: String::new(),
                licence: String::new(),
            },
        }
    }
}

/// A source that could not be had, and the corpus parts and eval tasks prepared without it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MissingSource {
    /// scripts/data-sources.tsv name.
    pub package: String,
    pub reason: String,
    /// e.g. "text corpus: linux-doc", "image corpus: fashion_mnist".
    pub corpus_parts: Vec<String>,
    pub tasks: Vec<String>,
}

/// How a lost corpus part is named in `corpus_parts` (the one home of these prefixes).
const TEXT_CORPUS: &str = "text corpus: ";
const IMAGE_CORPUS: &str = "image corpus: ";

impl MissingSource {
    /// A text source left out of the pre-training corpus.
    pub fn text_corpus(package: &str, reason: &str, source: &str) -> Self {
        let corpus_parts = vec![format!("{TEXT_CORPUS}{source}")];
        Self { package: package.to_string(), reason: reason.to_string(), corpus_parts, tasks: Vec::new() }
    }

    /// An image source left out of the image-caption corpus, with the eval tasks built from it.
    pub fn image_corpus(package: &str, reason: &str, source: &str, tasks: Vec<String>) -> Self {
        let corpus_parts = vec![format!("{IMAGE_CORPUS}{source}")];
        Self { package: package.to_string(), reason: reason.to_string(), corpus_parts, tasks }
    }

    pub fn costs_text_corpus(&self) -> bool {
        self.corpus_parts.iter().any(|p| p.starts_with(TEXT_CORPUS))
    }

    pub fn costs_image_corpus(&self) -> bool {
        self.corpus_parts.iter().any(|p| p.starts_with(IMAGE_CORPUS))
    }

    /// Everything prepared without this source: corpus parts, then tasks.
    pub fn lost(&self) -> String {
        [&self.corpus_parts[..], &self.tasks[..]].concat().join(", ")
    }
}

impl std::fmt::Display for MissingSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MISSING {}: {} -> prepared without: {}", self.package, self.reason, self.lost())
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataProvenance {
    pub sources: Vec<FetchedSource>,
    #[serde(default)]
    pub missing: Vec<MissingSource>,
}

impl DataProvenance {
    /// The provenance in a prepared folder's manifest (empty for a manifest that predates it).
    pub fn read(layout: &DataLayout) -> Result<Self> {
        #[derive(Deserialize)]
        struct Manifest {
            #[serde(default)]
            provenance: DataProvenance,
        }
        let path = layout.manifest();
        let bytes = std::fs::read(&path)
            .with_context(|| format!("reading {} (run `vlmix data prepare` first)", path.display()))?;
        let manifest: Manifest =
            serde_json::from_slice(&bytes).with_context(|| format!("{}: field provenance", path.display()))?;
        Ok(manifest.provenance)
    }

    /// The missing source an eval task would have come from.
    pub fn lost_task(&self, task: &str) -> Option<&MissingSource> {
        self.missing.iter().find(|m| m.tasks.iter().any(|t| t == task))
    }
}
