//! `vlmix data prepare`, image side: registry packages -> image-caption WebDataset shards,
//! LLaVA instruction JSON and vision-language eval JSONL under the prepared folder:
//! ```text
//! images/train/shard-NNNNNN.tar     key.png + key.txt (caption) + key.json (source, licence, facts)
//! images/heldout/shard-NNNNNN.tar   same format; never used for training, reserved for eval
//! images/manifest.json              counts per source and split, shards, licences, settings
//! instruct/llava_instruct.json      LLaVA conversations about training images only
//! instruct/images/KEY.png
//! eval/vl/TASK.jsonl                eval items (see vl_eval), on held-out images only
//! eval/vl/images/KEY.png
//! ```
//! Images are RGB with alpha composited over white, shrunk (never enlarged) to `max_side`
//! and letterboxed to the encoder's square input at load time ([`vlmix_data::image_io::letterbox`]).
//! Each output folder is built beside the old one and swapped in whole.
pub mod emoji;
pub mod fashion;
pub mod flags;
pub mod instruct;
pub mod openclipart;
pub mod openmoji;
pub mod record;
pub mod tuxpaint;
pub mod vl_tasks;

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use rayon::prelude::*;
use serde::Serialize;

pub use record::{ImageRecord, Source, Split, Subject};

pub(crate) use vlmix_data::layout::regular_files;
use vlmix_data::layout::SourceMissing;
use vlmix_data::llava::write_llava;
use vlmix_data::provenance::MissingSource;
use vlmix_data::vl_eval::write_eval_set;
use vlmix_data::webdataset::ShardBuilder;
use vlmix_data::DataLayout;

/// Settings of the image preparation (kept in the image manifest, so a refresh redoes it alike).
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
#[serde(default)]
pub struct ImageConfig {
    /// Longer side of stored images. 224 is EfficientNet-Lite0's input: larger stores pixels the
    /// encoder throws away; smaller sources (28 px Fashion-MNIST, 64 px emoji) are kept as they are.
    pub max_side: u32,
    pub samples_per_shard: usize,
    /// Percent of clip art, stamps and emoji concepts held out.
    pub heldout_percent: u32,
    /// Percent of Fashion-MNIST photos held out (each gives one open and two yes/no eval items).
    pub photo_heldout_percent: u32,
    /// Reads only the first N items of each source (tests and quick looks); None reads all.
    pub max_per_source: Option<usize>,
}

impl ImageConfig {
    /// The items of a source this run reads: all, or `max_per_source` spread evenly over them
    /// (package order groups items by class, so a prefix would be one class).
    pub fn subset<'a, T>(&self, items: &'a [T]) -> Vec<&'a T> {
        match self.max_per_source {
            Some(n) if n < items.len() => (0..n).map(|i| &items[i * items.len() / n]).collect(),
            _ => items.iter().collect(),
        }
    }
}

impl Default for ImageConfig {
    fn default() -> Self {
        Self {
            max_side: 224,
            samples_per_shard: 1000,
            heldout_percent: 10,
            photo_heldout_percent: 10,
            max_per_source: None,
        }
    }
}

/// Records of one source and the items that could not be used (each naming its file).
#[derive(Default)]
pub struct SourceOutput {
    pub records: Vec<ImageRecord>,
    pub skipped: Vec<String>,
}

impl SourceOutput {
    fn from_results(results: Vec<Result<ImageRecord, String>>) -> Self {
        let mut out = Self::default();
        for result in results {
            match result {
                Ok(record) => out.records.push(record),
                Err(skip) => out.skipped.push(skip),
            }
        }
        out
    }
}

/// What `prepare` wrote, also saved as `images/manifest.json`.
#[derive(Debug, Clone, Serialize)]
pub struct ImagePrepareSummary {
    pub config: ImageConfig,
    pub sources: Vec<SourceSummary>,
    /// Training images dropped because the same pixels are held out or already in training.
    pub duplicates_removed: Vec<String>,
    pub train_shards: Vec<ShardSummary>,
    pub heldout_shards: Vec<ShardSummary>,
    pub instruct_file: PathBuf,
    pub instruct_conversations: usize,
    pub instruct_turns: usize,
    pub eval_tasks: Vec<EvalTaskSummary>,
    pub eval_left_out: Vec<String>,
    /// Image sources whose packages this machine lacks, with the corpus parts and tasks lost.
    pub missing: Vec<MissingSource>,
    pub seconds: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct SourceSummary {
    pub source: &'static str,
    pub packages: &'static [&'static str],
    pub licence: &'static str,
    pub train: usize,
    pub heldout: usize,
    pub skipped: Vec<String>,
    /// Elements the SVG renderer could not draw as written (logged at debug; see render_warnings).
    pub renderer_warnings: usize,
    pub seconds: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ShardSummary {
    pub path: PathBuf,
    pub samples: usize,
    pub bytes: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct EvalTaskSummary {
    pub task: String,
    pub path: PathBuf,
    pub items: usize,
    #[serde(rename = "type")]
    pub kind: String,
    /// Mean chance accuracy over the items.
    pub chance: f64,
}

impl fmt::Display for ImagePrepareSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "image-caption pairs (max side {} px):", self.config.max_side)?;
        for s in &self.sources {
            writeln!(
                f,
                "  {:<12} train {:>6}  heldout {:>5}  skipped {:>3}  {:>6.1}s  {}",
                s.source,
                s.train,
                s.heldout,
                s.skipped.len(),
                s.seconds,
                s.licence
            )?;
        }
        let count = |shards: &[ShardSummary]| shards.iter().map(|s| s.samples).sum::<usize>();
        writeln!(
            f,
            "  shards: {} train ({} samples), {} heldout ({} samples); {} duplicate training images removed",
            self.train_shards.len(),
            count(&self.train_shards),
            self.heldout_shards.len(),
            count(&self.heldout_shards),
            self.duplicates_removed.len()
        )?;
        writeln!(
            f,
            "instruction conversations: {} ({} turns) in {}",
            self.instruct_conversations,
            self.instruct_turns,
            self.instruct_file.display()
        )?;
        for m in &self.missing {
            writeln!(f, "  {m}")?;
        }
        writeln!(f, "vision-language eval (held-out images only):")?;
        for t in &self.eval_tasks {
            writeln!(f, "  {:<17} {:>5} items  {:<7} chance {:.4}", t.task, t.items, t.kind, t.chance)?;
        }
        write!(f, "image preparation took {:.1}s", self.seconds)
    }
}

type Loader = fn(&DataLayout, &ImageConfig) -> Result<SourceOutput>;

/// Reads every image source of `layout` and writes shards, instruction data and eval sets.
pub fn prepare(layout: &DataLayout, config: &ImageConfig) -> Result<ImagePrepareSummary> {
    if config.max_side < 8
        || config.samples_per_shard == 0
        || config.heldout_percent >= 100
        || config.photo_heldout_percent >= 100
    {
        bail!("invalid image settings {config:?}");
    }
    let started = Instant::now();
    let loaders: [(Source, Loader); 6] = [
        (Source::Openclipart, openclipart::load),
        (Source::Tuxpaint, tuxpaint::load),
        (Source::NotoEmoji, emoji::load),
        (Source::Openmoji, openmoji::load),
        (Source::FlagIcons, flags::load),
        (Source::FashionMnist, fashion::load),
    ];
    let mut records = Vec::new();
    let mut sources = Vec::new();
    let mut missing = Vec::new();
    let mut missing_sources = Vec::new();
    for (source, load) in loaders {
        let begun = Instant::now();
        let output = match load(layout, config) {
            Ok(output) => output,
            Err(err) => {
                let Some(gone) = SourceMissing::of(&err) else {
                    return Err(err.context(format!("reading image source {}", source.name())));
                };
                let tasks = vl_tasks::tasks_of(source).iter().map(|t| t.to_string()).collect();
                let lost = MissingSource::image_corpus(&gone.package, &gone.reason, source.name(), tasks);
                tracing::warn!("image source {} left out: {gone}", source.name());
                missing.push(lost);
                missing_sources.push(source);
                continue;
            }
        };
        for skip in &output.skipped {
            tracing::warn!(source = source.name(), "skipped: {skip}");
        }
        let (renderer_warnings, first) = crate::render_warnings::take();
        if let Some(first) = first {
            tracing::warn!(
                "{}: the SVG renderer could not draw {renderer_warnings} element(s) as written, e.g. {first} \
                 (VLMIX_LOG=debug lists each)",
                source.name()
            );
        }
        sources.push(SourceSummary {
            source: source.name(),
            packages: source.packages(),
            licence: source.licence(),
            train: 0,
            heldout: 0,
            skipped: output.skipped,
            renderer_warnings,
            seconds: begun.elapsed().as_secs_f64(),
        });
        tracing::info!(
            source = source.name(),
            images = output.records.len(),
            seconds = begun.elapsed().as_secs_f64(),
            "read image source"
        );
        records.extend(output.records);
    }
    disambiguate_keys(&mut records)?;
    let duplicates_removed = remove_duplicates(&mut records);
    for summary in &mut sources {
        let of_source =
            |split| records.iter().filter(|r| r.source.name() == summary.source && r.split == split).count();
        summary.train = of_source(Split::Train);
        summary.heldout = of_source(Split::Heldout);
    }
    // Shard order is a hash of the key: sources interleave and the order never depends on threads.
    records.sort_by_cached_key(|r| (record::hex_prefix(r.key.as_bytes(), 16), r.key.clone()));
    let (train, heldout): (Vec<&ImageRecord>, Vec<&ImageRecord>) =
        records.iter().partition(|r| r.split == Split::Train);

    let mut train_shards = Vec::new();
    let mut heldout_shards = Vec::new();
    replace_dir(&layout.images_dir(), |staging| {
        train_shards = write_shards(&staging.join("train"), &train, config.samples_per_shard)?;
        heldout_shards = write_shards(&staging.join("heldout"), &heldout, config.samples_per_shard)?;
        Ok(())
    })?;
    let relocate = |shards: &mut Vec<ShardSummary>, split: &str| {
        for shard in shards.iter_mut() {
            shard.path = layout.images_dir().join(split).join(shard.path.file_name().expect("shard file name"));
        }
    };
    relocate(&mut train_shards, "train");
    relocate(&mut heldout_shards, "heldout");

    let instruct_file = layout.instruct_dir().join("llava_instruct.json");
    let conversations: Vec<_> =
        train.iter().filter_map(|r| instruct::conversation(r, &format!("images/{}.png", r.key))).collect();
    replace_dir(&layout.instruct_dir(), |staging| {
        write_files(&staging.join("images"), train.iter().map(|r| (format!("{}.png", r.key), r.png.as_slice())))?;
        write_llava(&staging.join("llava_instruct.json"), &conversations)
    })?;

    let eval = vl_tasks::build(&heldout, config, &missing_sources)?;
    let mut eval_tasks = Vec::new();
    replace_dir(&layout.eval_vl_dir(), |staging| {
        write_files(&staging.join("images"), eval.images.iter().map(|(name, png)| (name.clone(), png.as_slice())))?;
        for (task, items) in &eval.tasks {
            write_eval_set(&staging.join(format!("{task}.jsonl")), items)?;
            let kind = items
                .first()
                .map(|i| serde_json::to_value(i.kind).map(|v| v.as_str().unwrap_or_default().to_string()))
                .transpose()?
                .unwrap_or_default();
            let chance = items.iter().map(|i| i.chance).sum::<f64>() / items.len().max(1) as f64;
            let path = layout.eval_vl_dir().join(format!("{task}.jsonl"));
            eval_tasks.push(EvalTaskSummary { task: task.clone(), path, items: items.len(), kind, chance });
        }
        Ok(())
    })?;

    let summary = ImagePrepareSummary {
        config: config.clone(),
        sources,
        duplicates_removed,
        train_shards,
        heldout_shards,
        instruct_file,
        instruct_conversations: conversations.len(),
        instruct_turns: conversations.iter().map(|c| c.conversations.len()).sum(),
        eval_tasks,
        eval_left_out: eval.left_out,
        missing,
        seconds: started.elapsed().as_secs_f64(),
    };
    let manifest = serde_json::to_vec_pretty(&summary).context("serialising the image manifest")?;
    vlmix_atomic_file::write_atomic(&layout.images_dir().join("manifest.json"), &manifest)?;
    Ok(summary)
}

/// Gives images whose names slug to the same key ("viewmag+" and "viewmag-") a hash suffix of
/// their origin, then checks that every key is unique.
fn disambiguate_keys(records: &mut [ImageRecord]) -> Result<()> {
    let mut uses: BTreeMap<String, usize> = BTreeMap::new();
    for r in records.iter() {
        *uses.entry(r.key.clone()).or_default() += 1;
    }
    for r in records.iter_mut().filter(|r| uses[&r.key] > 1) {
        let suffix = record::hex_prefix(format!("{}:{}", r.source.name(), r.origin).as_bytes(), 8);
        r.key = format!("{}-{suffix}", &r.key[..r.key.len().min(80)]);
    }
    let mut seen: BTreeMap<&str, &str> = BTreeMap::new();
    for r in records.iter() {
        if let Some(other) = seen.insert(&r.key, &r.origin) {
            bail!("two {} images map to key {}: {other:?} and {:?}", r.source.name(), r.key, r.origin);
        }
    }
    Ok(())
}

/// Drops training images whose pixels equal a held-out image (that would leak the eval) or an
/// earlier training image (by key order); returns the dropped keys.
fn remove_duplicates(records: &mut Vec<ImageRecord>) -> Vec<String> {
    records.sort_by(|a, b| a.key.cmp(&b.key));
    let heldout: HashSet<[u8; 32]> =
        records.iter().filter(|r| r.split == Split::Heldout).map(|r| r.pixel_hash).collect();
    let mut seen_train: HashSet<[u8; 32]> = HashSet::new();
    let mut removed = Vec::new();
    records.retain(|r| {
        let keep = r.split == Split::Heldout || (!heldout.contains(&r.pixel_hash) && seen_train.insert(r.pixel_hash));
        if !keep {
            removed.push(r.key.clone());
        }
        keep
    });
    removed
}

fn write_shards(dir: &Path, records: &[&ImageRecord], per_shard: usize) -> Result<Vec<ShardSummary>> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    records
        .par_chunks(per_shard)
        .enumerate()
        .map(|(index, chunk)| {
            let mut shard = ShardBuilder::new();
            for r in chunk {
                let json = serde_json::to_vec(&r.metadata()).context("serialising sample metadata")?;
                shard.add(&r.key, &[("json", &json), ("png", &r.png), ("txt", r.caption.as_bytes())])?;
            }
            let bytes = shard.finish()?;
            let path = dir.join(format!("shard-{index:06}.tar"));
            write_file(&path, &bytes)?;
            Ok(ShardSummary { path, samples: chunk.len(), bytes: bytes.len() })
        })
        .collect()
}

fn write_files<'a>(dir: &Path, files: impl Iterator<Item = (String, &'a [u8])>) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let files: Vec<(String, &[u8])> = files.collect();
    files.par_iter().try_for_each(|(name, bytes)| write_file(&dir.join(name), bytes))
}

/// Plain write: the staging folder is flushed as a whole by [`sync_filesystem`] before it is
/// swapped in (an fsync per file costs ~3 ms, over a minute for the ~27,000 image files).
fn write_file(path: &Path, bytes: &[u8]) -> Result<()> {
    std::fs::write(path, bytes).with_context(|| format!("writing {}", path.display()))
}

/// Flushes every written file of the filesystem holding `dir` to disk (Linux `syncfs`).
fn sync_filesystem(dir: &Path) -> Result<()> {
    use std::os::fd::AsRawFd;
    let handle = std::fs::File::open(dir).with_context(|| format!("opening {}", dir.display()))?;
    // SAFETY: syncfs only reads the descriptor, which `handle` keeps open for the call.
    if unsafe { libc::syncfs(handle.as_raw_fd()) } != 0 {
        return Err(std::io::Error::last_os_error()).with_context(|| format!("flushing {} to disk", dir.display()));
    }
    Ok(())
}

/// Builds `target` in a staging folder beside it and swaps it in, so a killed run leaves either
/// the previous complete folder or the new complete one.
fn replace_dir(target: &Path, fill: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let parent = target.parent().with_context(|| format!("{} has no parent folder", target.display()))?;
    let name =
        target.file_name().with_context(|| format!("{} has no name", target.display()))?.to_string_lossy().into_owned();
    std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    let staging = parent.join(format!(".tmp-{name}-{}", std::process::id()));
    let old = parent.join(format!(".old-{name}-{}", std::process::id()));
    for leftover in [&staging, &old] {
        if leftover.exists() {
            std::fs::remove_dir_all(leftover).with_context(|| format!("removing {}", leftover.display()))?;
        }
    }
    std::fs::create_dir_all(&staging).with_context(|| format!("creating {}", staging.display()))?;
    if let Err(err) = fill(&staging) {
        let _ = std::fs::remove_dir_all(&staging);
        return Err(err);
    }
    sync_filesystem(&staging)?;
    if target.exists() {
        std::fs::rename(target, &old).with_context(|| format!("moving aside {}", target.display()))?;
    }
    std::fs::rename(&staging, target).with_context(|| format!("moving {} into place", target.display()))?;
    if old.exists() {
        std::fs::remove_dir_all(&old).with_context(|| format!("removing {}", old.display()))?;
    }
    vlmix_atomic_file::sync_dir(parent)
}

pub(crate) fn require_dir(dir: &Path) -> Result<PathBuf> {
    if !dir.is_dir() {
        bail!("{} is missing: run scripts/fetch-data.sh to fetch and extract the image packages", dir.display());
    }
    Ok(dir.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::RgbImage;

    fn record(origin: &str, split: Split, shade: u8) -> ImageRecord {
        let image = RgbImage::from_pixel(2, 2, image::Rgb([shade; 3]));
        let subject = Subject::Fashion { label: "coat".into(), index: 0 };
        ImageRecord::new(Source::Openclipart, origin.into(), split, &image, "c".into(), subject).unwrap()
    }

    #[test]
    fn colliding_slugs_get_distinct_valid_keys() {
        let mut records = vec![
            record("icons/viewmag+", Split::Train, 1),
            record("icons/viewmag-", Split::Train, 2),
            record("icons/other", Split::Train, 3),
        ];
        assert_eq!(records[0].key, records[1].key);
        disambiguate_keys(&mut records).unwrap();
        assert_ne!(records[0].key, records[1].key);
        assert_eq!(records[2].key, "openclipart_icons-other");
        for r in &records {
            vlmix_data::webdataset::validate_key(&r.key).unwrap();
        }
    }

    #[test]
    fn training_copies_of_heldout_pixels_are_removed() {
        let mut records = vec![
            record("a", Split::Train, 7),
            record("b", Split::Heldout, 7),
            record("c", Split::Train, 8),
            record("d", Split::Train, 8),
        ];
        let removed = remove_duplicates(&mut records);
        assert_eq!(removed, ["openclipart_a", "openclipart_d"]);
        let kept: Vec<&str> = records.iter().map(|r| r.key.as_str()).collect();
        assert_eq!(kept, ["openclipart_b", "openclipart_c"]);
    }
}
