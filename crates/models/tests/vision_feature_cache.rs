//! Feature cache: hits equal what the encoder computed, survive reopening, and interrupted or foreign
//! files never pass as cached features.
use anyhow::Result;
use image::{Rgb, RgbImage};
use vlmix_models::vision::encoder::ImageEncoder;
use vlmix_models::vision::feature_cache::{image_key, FeatureCache};
use vlmix_models::vision::preprocess::{Preprocess, ResizeMode};
use vlmix_models::vision::resample::Resample;

/// A cheap deterministic encoder: 4 tokens (image quadrants) x 3 channel means, scaled by `gain`.
struct QuadrantMeans {
    preprocess: Preprocess,
    gain: f32,
    id: String,
}

impl QuadrantMeans {
    fn new(gain: f32) -> Self {
        let preprocess = Preprocess {
            resize: ResizeMode::Exact { height: 8, width: 8 },
            resample: Resample::Bilinear,
            rescale: 1.0 / 255.0,
            mean: [0.0; 3],
            std: [1.0; 3],
        };
        Self { id: format!("quadrants;gain={gain};{}", preprocess.descriptor()), preprocess, gain }
    }
}

impl ImageEncoder for QuadrantMeans {
    fn id(&self) -> &str {
        &self.id
    }
    fn preprocess(&self) -> &Preprocess {
        &self.preprocess
    }
    fn tokens(&self) -> usize {
        4
    }
    fn width(&self) -> usize {
        3
    }
    fn encode(&self, pixels: &[f32], batch: usize) -> Result<Vec<f32>> {
        let mut out = vec![0.0; batch * 12];
        for b in 0..batch {
            for c in 0..3 {
                for y in 0..8 {
                    for x in 0..8 {
                        let q = (y / 4) * 2 + x / 4;
                        out[b * 12 + q * 3 + c] += self.gain * pixels[b * 192 + c * 64 + y * 8 + x] / 16.0;
                    }
                }
            }
        }
        Ok(out)
    }
}

fn image(seed: u8) -> RgbImage {
    RgbImage::from_fn(16, 12, |x, y| {
        Rgb([seed.wrapping_mul(31).wrapping_add(x as u8 * 9), (y as u8) * 17, seed ^ (x * y) as u8])
    })
}

#[test]
fn misses_are_encoded_once_and_hits_survive_reopening() {
    let root = tempfile::tempdir().unwrap();
    let encoder = QuadrantMeans::new(1.0);
    let images: Vec<RgbImage> = (0..5).map(image).collect();
    let refs: Vec<&RgbImage> = images.iter().collect();
    let direct = {
        let pixels: Vec<f32> = images.iter().flat_map(|im| encoder.preprocess.pixels(im).unwrap()).collect();
        encoder.encode(&pixels, images.len()).unwrap()
    };

    let mut cache = FeatureCache::open(root.path(), &encoder).unwrap();
    let first = cache.features(&encoder, &refs).unwrap();
    let rounded: Vec<f32> = direct.iter().map(|&v| half::f16::from_f32(v).to_f32()).collect();
    assert_eq!(first, rounded, "misses return the stored f16 values of the encoder's output");
    assert_eq!((cache.stats().hits, cache.stats().misses), (0, 5));
    let again = cache.features(&encoder, &refs[1..3]).unwrap();
    assert_eq!((cache.stats().hits, cache.stats().misses), (2, 5));
    assert_eq!(again, rounded[12..36], "pending rows read back as stored");
    drop(cache);

    let mut reopened = FeatureCache::open(root.path(), &encoder).unwrap();
    assert_eq!(reopened.len(), 5);
    let hits = reopened.features(&encoder, &refs).unwrap();
    assert_eq!((reopened.stats().hits, reopened.stats().misses), (5, 0));
    assert_eq!(hits, rounded, "rows read from disk equal the rows computed");
    let mut row = vec![0.0; 12];
    assert!(reopened.get(&image_key(&images[4]), &mut row));
    assert!(!reopened.get(&image_key(&image(99)), &mut row));
}

#[test]
fn different_encoders_never_share_features() {
    let root = tempfile::tempdir().unwrap();
    let (a, b) = (QuadrantMeans::new(1.0), QuadrantMeans::new(2.0));
    let im = image(3);
    let fa = FeatureCache::open(root.path(), &a).unwrap().features(&a, &[&im]).unwrap();
    let mut cache_b = FeatureCache::open(root.path(), &b).unwrap();
    assert!(cache_b.is_empty());
    let fb = cache_b.features(&b, &[&im]).unwrap();
    assert_eq!(cache_b.stats().misses, 1);
    assert!(fa.iter().zip(&fb).all(|(x, y)| (2.0 * x - y).abs() <= 1e-3 * y.abs()));
}

#[test]
fn interrupted_writes_are_ignored_and_corrupt_shards_are_named() {
    let root = tempfile::tempdir().unwrap();
    let encoder = QuadrantMeans::new(1.0);
    let im = image(7);
    let dir = {
        let mut cache = FeatureCache::open(root.path(), &encoder).unwrap();
        cache.features(&encoder, &[&im]).unwrap();
        cache.dir().to_path_buf()
    };
    // What a writer killed before its rename leaves behind: a temp file with a partial shard.
    std::fs::write(dir.join(".tmp-shard-1-2-3.safetensors-99-0"), b"\x10\x00\x00\x00\x00\x00\x00\x00{\"keys\":")
        .unwrap();
    let cache = FeatureCache::open(root.path(), &encoder).unwrap();
    assert_eq!(cache.len(), 1);
    drop(cache);

    std::fs::write(dir.join("shard-0-0-0.safetensors"), b"garbage").unwrap();
    let err = FeatureCache::open(root.path(), &encoder).err().unwrap();
    assert!(format!("{err:#}").contains("shard-0-0-0.safetensors"), "{err:#}");
    std::fs::remove_file(dir.join("shard-0-0-0.safetensors")).unwrap();

    std::fs::write(dir.join("encoder.txt"), "someone else").unwrap();
    let err = FeatureCache::open(root.path(), &encoder).err().unwrap();
    assert!(format!("{err:#}").contains("someone else"), "{err:#}");
}
