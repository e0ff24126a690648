//! `vlmix encode`: image features from a frozen encoder, either into one safetensors file (for users
//! who precompute) or into the shared feature cache that training reads (`--shards`).
use anyhow::{bail, Context, Result};
use image::RgbImage;
use rayon::prelude::*;
use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Instant;
use vlmix_data::webdataset::{list_shards, split_member_name, IMAGE_EXTENSIONS};
use vlmix_data::{image_io, DataLayout};
use vlmix_engine::safetensors_io::{write_f32_tensors, F32View};
use vlmix_models::vision::encoder::{open_encoder, EncoderSpec, FeatureLayer, ImageEncoder};
use vlmix_models::vision::feature_cache::{FeatureCache, CACHE_SUBDIR};

/// Images decoded and looked up per step when filling the cache.
const CACHE_BATCH: usize = 256;

#[derive(clap::Args)]
pub struct Args {
    /// `efficientnet-lite0` (needs scripts/fetch-weights.sh), an EfficientNet .pth/.safetensors file,
    /// or a Hugging Face SigLIP directory (config.json, model.safetensors, preprocessor_config.json).
    #[arg(long)]
    encoder: String,
    /// Feature layer: penultimate (second-to-last block, as LLaVA/Prismatic) or last.
    #[arg(long, default_value = "penultimate")]
    layer: String,
    /// EfficientNet input size in pixels (default 224).
    #[arg(long)]
    resolution: Option<u32>,
    /// Image files (PNG, JPEG, WebP) to encode into --out.
    images: Vec<PathBuf>,
    /// Output file: tensor `features` [images, tokens, width] (f32).
    #[arg(long)]
    out: Option<PathBuf>,
    /// WebDataset shards (.tar files or folders of them) whose images go into the feature cache.
    #[arg(long, num_args = 1..)]
    shards: Vec<PathBuf>,
    /// Feature cache root (default $VLMIX_HOME/features).
    #[arg(long)]
    cache: Option<PathBuf>,
}

pub fn run(args: Args) -> Result<()> {
    let layout = DataLayout::from_env(None)?;
    let spec = EncoderSpec {
        source: args.encoder.clone(),
        layer: FeatureLayer::parse(&args.layer)?,
        resolution: args.resolution,
        trainable_blocks: 0,
    };
    match (args.images.is_empty(), args.shards.is_empty()) {
        (false, false) => bail!("give either IMAGE... with --out, or --shards, not both"),
        (true, true) => bail!("nothing to encode: give IMAGE... with --out, or --shards"),
        (false, true) => {
            let out = args.out.as_deref().context("--out FILE.safetensors is required with IMAGE...")?;
            let encoder = open_encoder(&spec, &layout.home)?;
            encode_files(encoder.as_ref(), &args.images, out)
        }
        (true, false) => {
            if args.out.is_some() {
                bail!("--out is for IMAGE...; --shards fills the feature cache");
            }
            let encoder = open_encoder(&spec, &layout.home)?;
            let root = args.cache.unwrap_or_else(|| layout.home.join(CACHE_SUBDIR));
            fill_cache(encoder.as_ref(), &args.shards, &root)
        }
    }
}

fn decode_file(path: &Path) -> Result<RgbImage> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    image_io::decode_rgb(&bytes).with_context(|| format!("decoding {}", path.display()))
}

fn encode_files(encoder: &dyn ImageEncoder, paths: &[PathBuf], out: &Path) -> Result<()> {
    let images: Vec<RgbImage> = paths.par_iter().map(|p| decode_file(p)).collect::<Result<_>>()?;
    let (h, w) = encoder.preprocess().output_size();
    let per_image = 3 * h as usize * w as usize;
    let mut features = Vec::with_capacity(images.len() * encoder.tokens() * encoder.width());
    for (chunk, names) in images.chunks(16).zip(paths.chunks(16)) {
        let mut pixels = vec![0.0f32; chunk.len() * per_image];
        pixels.par_chunks_mut(per_image).zip(chunk.par_iter().zip(names)).try_for_each(
            |(dst, (im, name))| -> Result<()> {
                dst.copy_from_slice(
                    &encoder.preprocess().pixels(im).with_context(|| format!("preprocessing {}", name.display()))?,
                );
                Ok(())
            },
        )?;
        features.extend(encoder.encode(&pixels, chunk.len())?);
    }
    let metadata = HashMap::from([
        ("encoder".to_string(), encoder.id().to_string()),
        (
            "images".to_string(),
            serde_json::to_string(&paths.iter().map(|p| p.display().to_string()).collect::<Vec<_>>())?,
        ),
    ]);
    let shape = vec![images.len(), encoder.tokens(), encoder.width()];
    write_f32_tensors(
        out,
        [("features".to_string(), F32View { shape: shape.clone(), data: &features })],
        Some(metadata),
    )?;
    println!("encode: wrote features {shape:?} to {}", out.display());
    Ok(())
}

/// Every `.tar` named directly or inside a named folder.
fn shard_paths(inputs: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut shards = Vec::new();
    for input in inputs {
        if input.is_dir() {
            shards.extend(list_shards(input)?);
        } else if input.is_file() {
            shards.push(input.clone());
        } else {
            bail!("{}: no such shard or folder", input.display());
        }
    }
    Ok(shards)
}

/// The image member of each sample of one shard (the first of `IMAGE_EXTENSIONS` order), as bytes.
fn shard_images(shard: &Path) -> Result<Vec<(String, Vec<u8>)>> {
    let file = std::fs::File::open(shard).with_context(|| format!("opening {}", shard.display()))?;
    let mut archive = tar::Archive::new(file);
    let mut by_key: Vec<(String, usize, Vec<u8>)> = Vec::new();
    let mut slot: HashMap<String, usize> = HashMap::new();
    for entry in archive.entries().with_context(|| format!("reading {}", shard.display()))? {
        let mut entry = entry.with_context(|| format!("reading {}", shard.display()))?;
        let name = entry
            .path()
            .with_context(|| format!("{}: bad member name", shard.display()))?
            .to_string_lossy()
            .into_owned();
        let Some((key, ext)) = split_member_name(&name) else { continue };
        let Some(rank) = IMAGE_EXTENSIONS.iter().position(|e| e.eq_ignore_ascii_case(ext)) else { continue };
        let mut bytes = Vec::new();
        entry.read_to_end(&mut bytes).with_context(|| format!("{}: reading member {name}", shard.display()))?;
        match slot.get(key) {
            Some(&i) if by_key[i].1 <= rank => {}
            Some(&i) => by_key[i] = (name, rank, bytes),
            None => {
                slot.insert(key.to_string(), by_key.len());
                by_key.push((name, rank, bytes));
            }
        }
    }
    Ok(by_key.into_iter().map(|(name, _, bytes)| (name, bytes)).collect())
}

fn fill_cache(encoder: &dyn ImageEncoder, inputs: &[PathBuf], root: &Path) -> Result<()> {
    let start = Instant::now();
    let shards = shard_paths(inputs)?;
    let mut cache = FeatureCache::open(root, encoder)?;
    let mut images = 0usize;
    let mut decode_s = 0.0;
    for shard in &shards {
        let clock = Instant::now();
        let members = shard_images(shard)?;
        decode_s += clock.elapsed().as_secs_f64();
        for batch in members.chunks(CACHE_BATCH) {
            let clock = Instant::now();
            let decoded: Vec<RgbImage> = batch
                .par_iter()
                .map(|(name, bytes)| {
                    image_io::decode_rgb(bytes).with_context(|| format!("{}: member {name}", shard.display()))
                })
                .collect::<Result<_>>()?;
            decode_s += clock.elapsed().as_secs_f64();
            let refs: Vec<&RgbImage> = decoded.iter().collect();
            cache.cache_all(encoder, &refs)?;
            images += batch.len();
        }
        tracing::info!(shard = %shard.display(), images, elapsed_s = start.elapsed().as_secs_f64(), "encoded shard");
    }
    cache.flush()?;
    let stats = cache.stats();
    let t = cache.times();
    tracing::info!(
        total_s = format!("{:.1}", start.elapsed().as_secs_f64()),
        read_and_decode_s = format!("{decode_s:.1}"),
        hash_s = format!("{:.1}", t.hash_s),
        lookup_s = format!("{:.1}", t.lookup_s),
        preprocess_s = format!("{:.1}", t.preprocess_s),
        encode_s = format!("{:.1}", t.encode_s),
        cache_write_s = format!("{:.1}", t.store_s),
        "encode: time per phase"
    );
    let bytes: u64 = std::fs::read_dir(cache.dir())?.filter_map(|e| e.ok()?.metadata().ok()).map(|m| m.len()).sum();
    println!(
        "encode: {images} images from {} shards in {:.1} s ({} cached, {} computed); cache {} holds {} images of {}x{} in {:.1} MB",
        shards.len(),
        start.elapsed().as_secs_f64(),
        stats.hits,
        stats.misses,
        cache.dir().display(),
        cache.len(),
        cache.tokens(),
        cache.width(),
        bytes as f64 / 1e6
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use vlmix_data::webdataset::ShardBuilder;
    use vlmix_engine::safetensors_io::SafetensorsFile;

    fn siglip_fixture() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/tests/fixtures/siglip_tiny")
    }

    fn encoder() -> Box<dyn ImageEncoder> {
        let spec = EncoderSpec {
            source: siglip_fixture().display().to_string(),
            layer: FeatureLayer::Penultimate,
            resolution: None,
            trainable_blocks: 0,
        };
        open_encoder(&spec, Path::new("/nonexistent")).unwrap()
    }

    #[test]
    fn encodes_files_into_a_features_tensor() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("f.safetensors");
        let images = vec![siglip_fixture().join("image_a.png"), siglip_fixture().join("image_b.png")];
        encode_files(encoder().as_ref(), &images, &out).unwrap();
        let got = SafetensorsFile::open(&out).unwrap().f32("features").unwrap();
        assert_eq!(got.shape, vec![2, 16, 32]);
        let want =
            SafetensorsFile::open(&siglip_fixture().join("outputs.safetensors")).unwrap().f32("penultimate").unwrap();
        let worst = got.data.iter().zip(&want.data).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
        assert!(worst < 1e-4, "max error {worst}");
    }

    #[test]
    fn shards_fill_the_cache_once() {
        let dir = tempfile::tempdir().unwrap();
        let png = |name: &str| std::fs::read(siglip_fixture().join(name)).unwrap();
        let (a, b) = (png("image_a.png"), png("image_b.png"));
        let mut shard = ShardBuilder::new();
        shard.add("s0", &[("png", &a), ("txt", b"a")]).unwrap();
        shard.add("s1", &[("png", &b), ("txt", b"b")]).unwrap();
        shard.add("s2", &[("png", &a), ("txt", b"same picture again")]).unwrap();
        let tar = dir.path().join("000.tar");
        std::fs::write(&tar, shard.finish().unwrap()).unwrap();
        assert_eq!(shard_images(&tar).unwrap().len(), 3);

        let encoder = encoder();
        let root = dir.path().join("cache");
        fill_cache(encoder.as_ref(), &[dir.path().to_path_buf()], &root).unwrap();
        let mut cache = FeatureCache::open(&root, encoder.as_ref()).unwrap();
        assert_eq!(cache.len(), 2, "identical pictures share one entry");
        let image = image_io::decode_rgb(&b).unwrap();
        cache.features(encoder.as_ref(), &[&image]).unwrap();
        assert_eq!((cache.stats().hits, cache.stats().misses), (1, 0));
        let err = fill_cache(encoder.as_ref(), &[dir.path().join("missing.tar")], &root).unwrap_err();
        assert!(err.to_string().contains("missing.tar"), "{err}");
    }
}
