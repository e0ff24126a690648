//! On-disk cache of frozen-encoder features, so each image is encoded once across all runs.
//!
//! Layout: `<root>/<first 16 hex of sha256(encoder id)>/` holds `encoder.txt` (the full
//! [`ImageEncoder::id`]: weights hash, feature layer, preprocessing) and append-only shards
//! `shard-*.safetensors`, each with `keys` (u8 `[n, 32]`, SHA-256 of the decoded image) and `features`
//! (f16 `[n, tokens, width]`). Shards are written whole through temp file + fsync + rename, so a killed
//! run loses at most the unflushed rows and never leaves a partial entry; concurrent runs write
//! distinct shard names and may at worst compute an image twice (the first copy read wins).
//!
//! Why f16: features are read back into an f32 projector; f16 keeps ~3 significant digits, well
//! inside the noise of training, and halves the disk (see README.md here for the sizes measured).
//!
//! Why key by decoded pixels rather than file bytes: the training loader holds decoded images, and
//! the same picture re-encoded (another PNG compressor) must still hit.

use super::encoder::ImageEncoder;
use anyhow::{bail, ensure, Context, Result};
use half::f16;
use half::slice::HalfFloatSliceExt;
use image::RgbImage;
use memmap2::Mmap;
use rayon::prelude::*;
use safetensors::tensor::{Dtype, TensorView};
use safetensors::SafeTensors;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;
use vlmix_atomic_file::write_atomic_with;

/// Where the caches live under `$VLMIX_HOME`.
pub const CACHE_SUBDIR: &str = "features";

/// SHA-256 of an image's width, height and RGB pixels.
pub type ImageKey = [u8; 32];

pub fn image_key(image: &RgbImage) -> ImageKey {
    let mut hasher = Sha256::new();
    hasher.update(image.width().to_le_bytes());
    hasher.update(image.height().to_le_bytes());
    hasher.update(image.as_raw());
    hasher.finalize().into()
}

/// Rows buffered in memory before they are written as one shard (also written on [`FeatureCache::flush`]
/// and on drop). At 224 px this is 32-128 MB of features per shard.
const SHARD_BYTES: usize = 64 << 20;
/// Images encoded per forward pass on a cache miss.
const ENCODE_BATCH: usize = 4;

const KEYS: &str = "keys";
const FEATURES: &str = "features";

struct Shard {
    map: Mmap,
    /// Byte offset of row 0 of `features` in the file.
    features_at: usize,
}

/// Seconds spent in each phase of [`FeatureCache::features`] since the cache was opened (logged by
/// the callers that fill it, to show where a cold corpus's time goes).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct CacheTimes {
    /// SHA-256 of the decoded pixels.
    pub hash_s: f64,
    /// Index look-ups and reading cached rows (f16 to f32).
    pub lookup_s: f64,
    /// Resize and normalise the misses.
    pub preprocess_s: f64,
    /// The encoder's forward on the misses.
    pub encode_s: f64,
    /// Adding new rows and writing shards.
    pub store_s: f64,
}

/// Hit and miss counts since the cache was opened.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheStats {
    pub hits: usize,
    pub misses: usize,
}

pub struct FeatureCache {
    dir: PathBuf,
    tokens: usize,
    width: usize,
    shards: Vec<Shard>,
    /// Key -> (shard, row) for rows on disk.
    index: HashMap<ImageKey, (usize, usize)>,
    pending_keys: Vec<ImageKey>,
    pending: Vec<f16>,
    pending_index: HashMap<ImageKey, usize>,
    stats: CacheStats,
    times: CacheTimes,
}

static SHARD_COUNTER: AtomicU64 = AtomicU64::new(0);

impl FeatureCache {
    /// Opens (creating if needed) the cache of `encoder` under `root`, indexing every shard on disk.
    pub fn open(root: &Path, encoder: &dyn ImageEncoder) -> Result<Self> {
        let digest = hex::encode(Sha256::digest(encoder.id().as_bytes()));
        let dir = root.join(&digest[..16]);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating feature cache {}", dir.display()))?;
        let id_file = dir.join("encoder.txt");
        match std::fs::read_to_string(&id_file) {
            Ok(stored) if stored == encoder.id() => {}
            Ok(stored) => bail!("{}: belongs to encoder {stored:?}, not {:?}", id_file.display(), encoder.id()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                vlmix_atomic_file::write_atomic(&id_file, encoder.id().as_bytes())?;
            }
            Err(e) => return Err(e).with_context(|| format!("reading {}", id_file.display())),
        }
        let mut cache = Self {
            dir,
            tokens: encoder.tokens(),
            width: encoder.width(),
            shards: Vec::new(),
            index: HashMap::new(),
            pending_keys: Vec::new(),
            pending: Vec::new(),
            pending_index: HashMap::new(),
            stats: CacheStats::default(),
            times: CacheTimes::default(),
        };
        let mut paths: Vec<PathBuf> = std::fs::read_dir(&cache.dir)
            .with_context(|| format!("listing {}", cache.dir.display()))?
            .map(|e| e.map(|e| e.path()))
            .collect::<std::io::Result<_>>()
            .with_context(|| format!("listing {}", cache.dir.display()))?;
        paths.retain(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("shard-") && n.ends_with(".safetensors"))
        });
        paths.sort();
        for path in paths {
            cache.add_shard(path)?;
        }
        Ok(cache)
    }

    /// The directory holding this encoder's shards.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn tokens(&self) -> usize {
        self.tokens
    }

    pub fn width(&self) -> usize {
        self.width
    }

    /// Number of distinct images cached (on disk or pending).
    pub fn len(&self) -> usize {
        self.index.len() + self.pending_index.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn stats(&self) -> CacheStats {
        self.stats
    }

    pub fn times(&self) -> CacheTimes {
        self.times
    }

    fn row_len(&self) -> usize {
        self.tokens * self.width
    }

    fn add_shard(&mut self, path: PathBuf) -> Result<()> {
        let file = std::fs::File::open(&path).with_context(|| format!("opening {}", path.display()))?;
        // SAFETY: shards are immutable once renamed into place (writers only create new files).
        let map = unsafe { Mmap::map(&file) }.with_context(|| format!("mapping {}", path.display()))?;
        let parsed = SafeTensors::deserialize(&map)
            .map_err(|e| anyhow::anyhow!("{}: corrupt feature shard ({e}); delete it to recompute", path.display()))?;
        let keys = parsed.tensor(KEYS).map_err(|_| anyhow::anyhow!("{}: no tensor {KEYS}", path.display()))?;
        let features =
            parsed.tensor(FEATURES).map_err(|_| anyhow::anyhow!("{}: no tensor {FEATURES}", path.display()))?;
        let rows = keys.shape().first().copied().unwrap_or(0);
        ensure!(
            keys.dtype() == Dtype::U8 && keys.shape() == [rows, 32],
            "{}: {KEYS} is {:?} {:?}, expected U8 [rows, 32]",
            path.display(),
            keys.dtype(),
            keys.shape()
        );
        ensure!(
            features.dtype() == Dtype::F16 && features.shape() == [rows, self.tokens, self.width],
            "{}: {FEATURES} is {:?} {:?}, expected F16 {:?}",
            path.display(),
            features.dtype(),
            features.shape(),
            [rows, self.tokens, self.width]
        );
        let features_at = features.data().as_ptr() as usize - map.as_ptr() as usize;
        let shard = self.shards.len();
        for (row, key) in keys.data().chunks_exact(32).enumerate() {
            self.index.entry(key.try_into().unwrap()).or_insert((shard, row));
        }
        self.shards.push(Shard { map, features_at });
        Ok(())
    }

    /// Copies the features of `key` into `out` (`[tokens * width]` f32); false when not cached.
    pub fn get(&self, key: &ImageKey, out: &mut [f32]) -> bool {
        let n = self.row_len();
        assert_eq!(out.len(), n, "feature cache: output row has the wrong length");
        if let Some(&(shard, row)) = self.index.get(key) {
            let s = &self.shards[shard];
            let bytes = &s.map[s.features_at + row * n * 2..s.features_at + (row + 1) * n * 2];
            for (o, b) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                *o = f16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32();
            }
            return true;
        }
        if let Some(&row) = self.pending_index.get(key) {
            self.pending[row * n..(row + 1) * n].convert_to_f32_slice(out);
            return true;
        }
        false
    }

    /// Adds the features of one image (`[tokens * width]` f32); a no-op when already cached.
    pub fn insert(&mut self, key: ImageKey, features: &[f32]) -> Result<()> {
        let n = self.row_len();
        ensure!(
            features.len() == n,
            "feature cache: got {} values, expected {} tokens x {} width",
            features.len(),
            self.tokens,
            self.width
        );
        if self.index.contains_key(&key) || self.pending_index.contains_key(&key) {
            return Ok(());
        }
        self.pending_index.insert(key, self.pending_keys.len());
        self.pending_keys.push(key);
        let start = self.pending.len();
        self.pending.resize(start + n, f16::ZERO);
        self.pending[start..].convert_from_f32_slice(features);
        if self.pending.len() * 2 >= SHARD_BYTES {
            self.flush()?;
        }
        Ok(())
    }

    /// Writes pending rows as a new shard (atomically) and maps it.
    pub fn flush(&mut self) -> Result<()> {
        if self.pending_keys.is_empty() {
            return Ok(());
        }
        let rows = self.pending_keys.len();
        let name = format!(
            "shard-{}-{}-{}.safetensors",
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0),
            std::process::id(),
            SHARD_COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let path = self.dir.join(name);
        let keys: Vec<u8> = self.pending_keys.iter().flatten().copied().collect();
        let features: Vec<u8> = self.pending.iter().flat_map(|v| v.to_bits().to_le_bytes()).collect();
        let views = [
            (KEYS, TensorView::new(Dtype::U8, vec![rows, 32], &keys).map_err(|e| anyhow::anyhow!("{e}"))?),
            (
                FEATURES,
                TensorView::new(Dtype::F16, vec![rows, self.tokens, self.width], &features)
                    .map_err(|e| anyhow::anyhow!("{e}"))?,
            ),
        ];
        write_atomic_with(&path, |temp| {
            safetensors::serialize_to_file(views, None, temp).map_err(|e| anyhow::anyhow!("serialising features: {e}"))
        })?;
        self.pending_keys.clear();
        self.pending.clear();
        self.pending_index.clear();
        self.add_shard(path)
    }

    /// Features of a batch of images, `[images, tokens, width]`: cached rows are read, the rest are
    /// preprocessed and encoded (in parallel) and added to the cache. Values are always the stored
    /// f16 ones, whether computed now or read.
    pub fn features(&mut self, encoder: &dyn ImageEncoder, images: &[&RgbImage]) -> Result<Vec<f32>> {
        let mut out = vec![0.0f32; images.len() * self.row_len()];
        self.fill(encoder, images, Some(&mut out))?;
        Ok(out)
    }

    /// Makes sure every image's features are cached, encoding the misses, and returns the keys.
    pub fn cache_all(&mut self, encoder: &dyn ImageEncoder, images: &[&RgbImage]) -> Result<Vec<ImageKey>> {
        self.fill(encoder, images, None)
    }

    /// Encodes the misses among `images` into the cache and, given `out`, copies every image's
    /// features there.
    fn fill(
        &mut self,
        encoder: &dyn ImageEncoder,
        images: &[&RgbImage],
        mut out: Option<&mut [f32]>,
    ) -> Result<Vec<ImageKey>> {
        ensure!(
            encoder.tokens() == self.tokens && encoder.width() == self.width,
            "feature cache holds {}x{} features but the encoder gives {}x{}",
            self.tokens,
            self.width,
            encoder.tokens(),
            encoder.width()
        );
        let n = self.row_len();
        let clock = Instant::now();
        let keys: Vec<ImageKey> = images.par_iter().map(|im| image_key(im)).collect();
        self.times.hash_s += clock.elapsed().as_secs_f64();
        let clock = Instant::now();
        let mut missing: Vec<usize> = Vec::new();
        for (i, key) in keys.iter().enumerate() {
            let cached = match out.as_deref_mut() {
                Some(out) => self.get(key, &mut out[i * n..(i + 1) * n]),
                None => self.index.contains_key(key) || self.pending_index.contains_key(key),
            };
            if !cached {
                missing.push(i);
            }
        }
        self.times.lookup_s += clock.elapsed().as_secs_f64();
        self.stats.hits += images.len() - missing.len();
        self.stats.misses += missing.len();
        let (h, w) = encoder.preprocess().output_size();
        let per_image = 3 * h as usize * w as usize;
        for chunk in missing.chunks(ENCODE_BATCH) {
            let clock = Instant::now();
            let mut pixels = vec![0.0f32; chunk.len() * per_image];
            pixels.par_chunks_mut(per_image).zip(chunk.par_iter()).try_for_each(|(dst, &i)| -> Result<()> {
                dst.copy_from_slice(&encoder.preprocess().pixels(images[i])?);
                Ok(())
            })?;
            self.times.preprocess_s += clock.elapsed().as_secs_f64();
            let clock = Instant::now();
            let features = encoder.encode(&pixels, chunk.len())?;
            self.times.encode_s += clock.elapsed().as_secs_f64();
            ensure!(
                features.len() == chunk.len() * n,
                "encoder returned {} values for {} images",
                features.len(),
                chunk.len()
            );
            let clock = Instant::now();
            for (row, &i) in chunk.iter().enumerate() {
                self.insert(keys[i], &features[row * n..(row + 1) * n])?;
                if let Some(out) = out.as_deref_mut() {
                    // Read back the stored (f16-rounded) row, so a miss and a later hit give the same values.
                    self.get(&keys[i], &mut out[i * n..(i + 1) * n]);
                }
            }
            self.times.store_s += clock.elapsed().as_secs_f64();
        }
        Ok(keys)
    }
}

impl Drop for FeatureCache {
    fn drop(&mut self) {
        if let Err(err) = self.flush() {
            tracing::warn!("feature cache {}: could not write pending features: {err:#}", self.dir.display());
        }
    }
}
