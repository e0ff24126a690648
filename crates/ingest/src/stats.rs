//! `vlmix data stats`: what a prepared folder holds (documents and tokens per source, image-caption pairs,
//! eval items per task, image sizes) and the licence of every source, as text or JSON.
use std::collections::BTreeMap;
use std::fmt;

use anyhow::Result;
use rayon::prelude::*;
use serde::Serialize;
use serde_json::Value;

use crate::attribution::{SourceLicence, LICENCES};
use crate::prepare::{read_manifest, Manifest};
use vlmix_data::layout::DataLayout;
use vlmix_data::provenance::DataProvenance;
use vlmix_data::webdataset::{list_shards, read_shard};

#[derive(Debug, Clone, Serialize)]
pub struct TextSourceStats {
    pub source: String,
    pub documents_train: usize,
    pub documents_validation: usize,
    pub bytes: usize,
    pub tokens_train: u64,
    pub tokens_validation: u64,
}

/// Widths and heights of the images in the training shards.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ImageSizes {
    pub images: usize,
    pub min_side: u32,
    pub max_side: u32,
    pub mean_width: f64,
    pub mean_height: f64,
    /// The most frequent `WxH` sizes with their counts.
    pub most_common: Vec<(String, usize)>,
    /// Samples the reader could not use, each naming shard and member.
    pub problems: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct DataStats {
    pub prepared: String,
    pub text: Vec<TextSourceStats>,
    pub duplicates_removed: usize,
    pub short_documents_removed: usize,
    pub tokenizer_vocab_size: usize,
    pub text_eval: BTreeMap<String, usize>,
    /// Image-caption pairs per source and split (`train`, `heldout`), from the image side's summary.
    pub image_pairs: BTreeMap<String, BTreeMap<String, usize>>,
    pub instruct_conversations: Option<usize>,
    pub vl_eval: BTreeMap<String, usize>,
    pub image_sizes: Option<ImageSizes>,
    pub licences: &'static [SourceLicence],
    /// Registry candidate of each source (package, version, sha256), and what is missing.
    pub provenance: DataProvenance,
}

impl DataStats {
    pub fn to_json(&self) -> Result<String> {
        Ok(serde_json::to_string_pretty(self)?)
    }

    pub fn collect(layout: &DataLayout) -> Result<Self> {
        let manifest = read_manifest(layout)?;
        let image_sizes = if layout.images_dir().join("train").is_dir() { Some(image_sizes(layout)?) } else { None };
        Ok(Self::from_manifest(layout, &manifest, image_sizes))
    }

    fn from_manifest(layout: &DataLayout, manifest: &Manifest, image_sizes: Option<ImageSizes>) -> Self {
        let text = manifest
            .text
            .sources
            .iter()
            .map(|(source, counts)| {
                let tokens = manifest.tokens.get(source).copied().unwrap_or_default();
                TextSourceStats {
                    source: source.clone(),
                    documents_train: counts.train.documents,
                    documents_validation: counts.validation.documents,
                    bytes: counts.train.bytes + counts.validation.bytes,
                    tokens_train: tokens.train,
                    tokens_validation: tokens.validation,
                }
            })
            .collect();
        let images = manifest.images.as_ref();
        let mut image_pairs = BTreeMap::new();
        for source in images.and_then(|i| i.get("sources")).and_then(Value::as_array).into_iter().flatten() {
            let name = source.get("source").and_then(Value::as_str).unwrap_or("?").to_string();
            let count = |split: &str| source.get(split).and_then(Value::as_u64).unwrap_or(0) as usize;
            image_pairs.insert(
                name,
                BTreeMap::from([("train".to_string(), count("train")), ("heldout".to_string(), count("heldout"))]),
            );
        }
        let vl_eval = images
            .and_then(|i| i.get("eval_tasks"))
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|t| Some((t.get("task")?.as_str()?.to_string(), t.get("items")?.as_u64()? as usize)))
            .collect();
        Self {
            prepared: layout.prepared.display().to_string(),
            text,
            duplicates_removed: manifest.text.removed.duplicates,
            short_documents_removed: manifest.text.removed.too_short,
            tokenizer_vocab_size: manifest.tokenizer.vocab_size,
            text_eval: manifest.text_eval.clone(),
            image_pairs,
            instruct_conversations: images
                .and_then(|i| i.get("instruct_conversations"))
                .and_then(Value::as_u64)
                .map(|n| n as usize),
            vl_eval,
            image_sizes,
            licences: LICENCES,
            provenance: manifest.provenance.clone(),
        }
    }
}

/// Reads every training shard (all cores) and summarises image sizes.
fn image_sizes(layout: &DataLayout) -> Result<ImageSizes> {
    let shards = list_shards(&layout.images_dir().join("train"))?;
    // Per shard: (width, height) of every image, and the problems found.
    type ShardSizes = (Vec<(u32, u32)>, Vec<String>);
    let per_shard: Vec<Result<ShardSizes>> = shards
        .par_iter()
        .map(|shard| {
            let (mut sizes, mut problems) = (Vec::new(), Vec::new());
            read_shard(shard, |item| {
                match item {
                    Ok(sample) => sizes.push(sample.image.dimensions()),
                    Err(problem) => problems.push(problem.to_string()),
                }
                Ok(())
            })?;
            Ok((sizes, problems))
        })
        .collect();
    let mut stats = ImageSizes { min_side: u32::MAX, ..Default::default() };
    let mut counts: BTreeMap<(u32, u32), usize> = BTreeMap::new();
    for result in per_shard {
        let (sizes, problems) = result?;
        stats.problems.extend(problems);
        for (w, h) in sizes {
            stats.images += 1;
            stats.min_side = stats.min_side.min(w.min(h));
            stats.max_side = stats.max_side.max(w.max(h));
            stats.mean_width += w as f64;
            stats.mean_height += h as f64;
            *counts.entry((w, h)).or_default() += 1;
        }
    }
    if stats.images > 0 {
        stats.mean_width /= stats.images as f64;
        stats.mean_height /= stats.images as f64;
    } else {
        stats.min_side = 0;
    }
    let mut common: Vec<_> = counts.into_iter().collect();
    common.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    stats.most_common = common.into_iter().take(5).map(|((w, h), n)| (format!("{w}x{h}"), n)).collect();
    Ok(stats)
}

impl fmt::Display for DataStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "prepared data in {}", self.prepared)?;
        writeln!(f, "text documents and tokens (tokenizer vocabulary {}):", self.tokenizer_vocab_size)?;
        writeln!(
            f,
            "  {:<12} {:>9} {:>7} {:>12} {:>12} {:>10}",
            "source", "train", "valid", "bytes", "train tok", "valid tok"
        )?;
        let mut total = (0, 0, 0, 0u64, 0u64);
        for s in &self.text {
            writeln!(
                f,
                "  {:<12} {:>9} {:>7} {:>12} {:>12} {:>10}",
                s.source, s.documents_train, s.documents_validation, s.bytes, s.tokens_train, s.tokens_validation
            )?;
            total = (
                total.0 + s.documents_train,
                total.1 + s.documents_validation,
                total.2 + s.bytes,
                total.3 + s.tokens_train,
                total.4 + s.tokens_validation,
            );
        }
        writeln!(f, "  {:<12} {:>9} {:>7} {:>12} {:>12} {:>10}", "total", total.0, total.1, total.2, total.3, total.4)?;
        writeln!(
            f,
            "  removed: {} exact duplicates, {} too short",
            self.duplicates_removed, self.short_documents_removed
        )?;
        writeln!(f, "text eval items:")?;
        for (task, n) in &self.text_eval {
            writeln!(f, "  {task:<16} {n:>6}")?;
        }
        if self.image_pairs.is_empty() {
            writeln!(f, "image-caption pairs: none prepared")?;
        } else {
            let train: usize = self.image_pairs.values().map(|s| s["train"]).sum();
            let heldout: usize = self.image_pairs.values().map(|s| s["heldout"]).sum();
            writeln!(f, "image-caption pairs: {train} train, {heldout} held out")?;
            for (source, splits) in &self.image_pairs {
                writeln!(f, "  {source:<12} train {:>6}  heldout {:>5}", splits["train"], splits["heldout"])?;
            }
        }
        if let Some(n) = self.instruct_conversations {
            writeln!(f, "instruction conversations: {n}")?;
        }
        if !self.vl_eval.is_empty() {
            writeln!(f, "vision-language eval items:")?;
            for (task, n) in &self.vl_eval {
                writeln!(f, "  {task:<18} {n:>6}")?;
            }
        }
        if let Some(sizes) = &self.image_sizes {
            let common: Vec<String> = sizes.most_common.iter().map(|(s, n)| format!("{s} ({n})")).collect();
            writeln!(
                f,
                "training image sizes: {} images, sides {}..{} px, mean {:.0}x{:.0}; most common {}",
                sizes.images,
                sizes.min_side,
                sizes.max_side,
                sizes.mean_width,
                sizes.mean_height,
                common.join(", ")
            )?;
            for problem in &sizes.problems {
                writeln!(f, "  problem: {problem}")?;
            }
        }
        writeln!(f, "licences:")?;
        for l in self.licences {
            writeln!(f, "  {:<12} {:<24} {} [{}]", l.source, l.used_for, l.licence, l.package)?;
        }
        write!(f, "{}", ProvenanceTable(&self.provenance))
    }
}

/// The data provenance as a text table: one row per fetched source, then what is missing.
pub struct ProvenanceTable<'a>(pub &'a DataProvenance);

impl fmt::Display for ProvenanceTable<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "data provenance (registry candidate used; sha256 of the downloaded file):")?;
        if self.0.sources.is_empty() {
            writeln!(
                f,
                "  none recorded (prepared before provenance was kept: rerun scripts/fetch-data.sh and prepare)"
            )?;
        }
        for s in &self.0.sources {
            let sha = if s.sha256.is_empty() { "unknown" } else { &s.sha256 };
            writeln!(f, "  {:<32} {:<5} {:<50} {sha}", s.name, s.registry, s.package)?;
        }
        for m in &self.0.missing {
            writeln!(f, "  {m}")?;
        }
        Ok(())
    }
}
