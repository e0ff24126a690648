//! Issue 26: the model readers of outside files (open_lm imports in both layouts with their config
//! JSON, a SigLIP directory's `config.json`, `preprocessor_config.json` and weights, a stage's
//! records, the frozen-encoder feature cache's shards) given
//! thousands of seeded damaged inputs end in `Ok` or a clean `Err`: no panic, no allocation over
//! the cap.

use serde_json::Value;
use std::path::{Path, PathBuf};
use vlmix_models::lm::openlm_io::{import_openlm, ImportOptions};
use vlmix_models::lm::LmConfig;
use vlmix_models::stage_record::StageRecord;
use vlmix_models::vision::encoder::EncoderSpec;
use vlmix_models::vision::encoder::{FeatureLayer, SiglipEncoder};
use vlmix_mutation::{byte_mutants, check, json_mutants, scratch_root, CappedAlloc, Mutant};

/// The fixtures are under 300 KiB: a reader asking for more trusted a declared size.
#[global_allocator]
static ALLOC: CappedAlloc = CappedAlloc { cap: 64 << 20 };

/// Inputs per reader: 1,000 in the test suite, more under scripts/fuzz.sh.
fn per_reader() -> usize {
    vlmix_mutation::per_reader(1000)
}

fn fixture(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(path)
}

/// A copy of a fixture directory whose files the readers open by path; one file is replaced per input.
fn scratch_copy(tag: &str, from: &str) -> tempfile::TempDir {
    let dir = tempfile::Builder::new().prefix(&format!("vlmix-mutation-{tag}")).tempdir_in(scratch_root()).unwrap();
    for entry in std::fs::read_dir(fixture(from)).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, dir.path().join(path.file_name().unwrap())).unwrap();
    }
    dir
}

fn json_of(path: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

/// Offsets of every zip record signature (local headers, central directory, end record).
fn zip_boundaries(bytes: &[u8]) -> Vec<usize> {
    let signatures: [&[u8]; 3] = [b"PK\x03\x04", b"PK\x01\x02", b"PK\x05\x06"];
    (0..bytes.len().saturating_sub(3)).filter(|&i| signatures.contains(&&bytes[i..i + 4])).collect()
}

/// The header and tensor-data offsets of a safetensors file.
fn safetensors_boundaries(bytes: &[u8]) -> Vec<usize> {
    let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: Value = serde_json::from_slice(&bytes[8..8 + header_len]).unwrap();
    let mut out = vec![8, 8 + header_len];
    for t in header.as_object().unwrap().values() {
        if let Some(offsets) = t["data_offsets"].as_array() {
            out.extend(offsets.iter().map(|o| 8 + header_len + o.as_u64().unwrap() as usize));
        }
    }
    out
}

/// Header mutants of a safetensors file, its tensor data kept.
fn safetensors_header_mutants(bytes: &[u8], seed: u64, count: usize) -> Vec<Mutant> {
    let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: Value = serde_json::from_slice(&bytes[8..8 + header_len]).unwrap();
    json_mutants(&header, seed, count)
        .into_iter()
        .map(|m| Mutant {
            bytes: [&(m.bytes.len() as u64).to_le_bytes()[..], &m.bytes, &bytes[8 + header_len..]].concat(),
            what: format!("header: {}", m.what),
        })
        .collect()
}

#[test]
fn openlm_torch_import_survives_mutation() {
    let dir = scratch_copy("openlm-pt", "openlm_import/pt_tied_rms");
    let (pt, config) = (dir.path().join("epoch_1.pt"), dir.path().join("model.json"));
    let import = || import_openlm(&pt, &ImportOptions { config: Some(config.clone()), ..Default::default() });
    import().expect("the base checkpoint must import");

    let base = std::fs::read(&pt).unwrap();
    check("open_lm torch checkpoint", &byte_mutants(&base, &zip_boundaries(&base), 11, per_reader()), |bytes| {
        std::fs::write(&pt, bytes)?;
        import()
    });
    std::fs::write(&pt, &base).unwrap();

    let base = json_of(&config);
    check("open_lm model config JSON", &json_mutants(&base, 12, per_reader()), |bytes| {
        std::fs::write(&config, bytes)?;
        import()
    });
}

#[test]
fn openlm_hf_import_survives_mutation() {
    let dir = scratch_copy("openlm-hf", "openlm_import/hf_dclm");
    let (weights, config) = (dir.path().join("model.safetensors"), dir.path().join("config.json"));
    let import = || import_openlm(dir.path(), &ImportOptions::default());
    import().expect("the base directory must import");

    let base = std::fs::read(&weights).unwrap();
    let mut mutants = byte_mutants(&base, &safetensors_boundaries(&base), 13, per_reader() / 2);
    mutants.extend(safetensors_header_mutants(&base, 14, per_reader() / 2));
    check("open_lm HF model.safetensors", &mutants, |bytes| {
        std::fs::write(&weights, bytes)?;
        import()
    });
    std::fs::write(&weights, &base).unwrap();

    let base = json_of(&config);
    check("open_lm HF config.json", &json_mutants(&base, 15, per_reader()), |bytes| {
        std::fs::write(&config, bytes)?;
        import()
    });
}

#[test]
fn siglip_directory_survives_mutation() {
    let dir = scratch_copy("siglip", "siglip_tiny");
    let load = || SiglipEncoder::load(dir.path(), FeatureLayer::Penultimate, 0);
    load().expect("the base directory must load");

    for (file, seed) in [("config.json", 21), ("preprocessor_config.json", 22)] {
        let path = dir.path().join(file);
        let base = json_of(&path);
        check(&format!("SigLIP {file}"), &json_mutants(&base, seed, per_reader()), |bytes| {
            std::fs::write(&path, bytes)?;
            load()
        });
        std::fs::write(&path, serde_json::to_vec(&base).unwrap()).unwrap();
    }

    let weights = dir.path().join("model.safetensors");
    let base = std::fs::read(&weights).unwrap();
    let mut mutants = byte_mutants(&base, &safetensors_boundaries(&base), 23, per_reader() / 2);
    mutants.extend(safetensors_header_mutants(&base, 24, per_reader() / 2));
    check("SigLIP model.safetensors", &mutants, |bytes| {
        std::fs::write(&weights, bytes)?;
        load()
    });
}

/// Regression (found by the mutation test): a `config.json` with a huge `num_hidden_layers` made the
/// SigLIP loader reserve room for that many blocks before reading any weight.
#[test]
fn huge_siglip_layer_count_is_an_error_not_an_allocation() {
    let dir = scratch_copy("siglip-layers", "siglip_tiny");
    let path = dir.path().join("config.json");
    let mut config = json_of(&path);
    config["num_hidden_layers"] = (1u64 << 44).into();
    std::fs::write(&path, serde_json::to_vec(&config).unwrap()).unwrap();
    let err = match SiglipEncoder::load(dir.path(), FeatureLayer::Penultimate, 0) {
        Ok(_) => panic!("loaded a tower of 2^44 blocks"),
        Err(e) => format!("{e:#}"),
    };
    assert!(err.contains("encoder.layers.3"), "the first missing block is named: {err}");
}

/// Regression (found by the mutation test with overflow checks): an `image_size` near `u64::MAX`
/// overflowed the patch count.
#[test]
fn huge_siglip_image_size_is_an_error_naming_the_field() {
    let mut config = json_of(&fixture("siglip_tiny/config.json"));
    config["image_size"] = u64::MAX.into();
    let err = format!("{:#}", vlmix_models::vision::siglip::SiglipConfig::from_json(&config).unwrap_err());
    assert!(err.contains("image_size"), "{err}");
}

/// TOML text for each JSON mutant that TOML can hold (no nulls, ...); the JSON text itself otherwise
/// (which the TOML reader must refuse cleanly).
fn as_toml(mutants: Vec<Mutant>) -> Vec<Mutant> {
    mutants
        .into_iter()
        .map(|m| {
            let toml = serde_json::from_slice::<Value>(&m.bytes).ok().and_then(|v| toml::to_string(&v).ok());
            Mutant { bytes: toml.map_or(m.bytes, String::into_bytes), what: m.what }
        })
        .collect()
}

/// A stage's record beside its checkpoints: `model.toml` and `encoder.json`.
#[test]
fn stage_records_survive_mutation() {
    let stage = tempfile::Builder::new().prefix("vlmix-mutation-stage").tempdir_in(scratch_root()).unwrap();
    let record = StageRecord {
        model: LmConfig::preset("tiny").unwrap(),
        encoder: Some(EncoderSpec::frozen(&fixture("siglip_tiny").display().to_string())),
    };
    record.write(stage.path()).unwrap();
    let checkpoint = stage.path().join("checkpoints/step-00000001");
    assert_eq!(StageRecord::of_checkpoint(&checkpoint).unwrap(), record, "the base record must read back");

    let path = stage.path().join("model.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let base: Value = serde_json::to_value(toml::from_str::<toml::Table>(&text).unwrap()).unwrap();
    let mut mutants = as_toml(json_mutants(&base, 31, per_reader() / 2));
    let lines: Vec<usize> = text.bytes().enumerate().filter(|(_, b)| b"\n=\"[".contains(b)).map(|(i, _)| i).collect();
    mutants.extend(byte_mutants(text.as_bytes(), &lines, 32, per_reader() / 2));
    check("stage model.toml", &mutants, |bytes| {
        std::fs::write(&path, bytes)?;
        StageRecord::of_checkpoint(&checkpoint)
    });
    std::fs::write(&path, text).unwrap();

    let path = stage.path().join("encoder.json");
    check("stage encoder.json", &json_mutants(&json_of(&path), 33, per_reader()), |bytes| {
        std::fs::write(&path, bytes)?;
        StageRecord::of_checkpoint(&checkpoint)
    });
}

/// A stand-in encoder for the feature cache: 2 tokens x 3 values per image, from its mean colour.
struct MeanColour {
    preprocess: vlmix_models::vision::preprocess::Preprocess,
}

impl vlmix_models::vision::encoder::ImageEncoder for MeanColour {
    fn id(&self) -> &str {
        "mean-colour-for-mutation"
    }
    fn preprocess(&self) -> &vlmix_models::vision::preprocess::Preprocess {
        &self.preprocess
    }
    fn tokens(&self) -> usize {
        2
    }
    fn width(&self) -> usize {
        3
    }
    fn encode(&self, pixels: &[f32], batch: usize) -> anyhow::Result<Vec<f32>> {
        let per = pixels.len() / batch;
        Ok((0..batch).flat_map(|b| (0..6).map(move |i| pixels[b * per + i * 5] * (i + 1) as f32)).collect())
    }
}

/// The feature cache's shards (`shard-*.safetensors`: keys and f16 features) given damaged bytes and
/// headers: reopening the cache and reading every key ends in an error naming the shard, or rows.
#[test]
fn feature_cache_shard_survives_mutation() {
    use vlmix_models::vision::feature_cache::{image_key, FeatureCache};
    use vlmix_models::vision::preprocess::{Preprocess, ResizeMode};
    let encoder = MeanColour {
        preprocess: Preprocess {
            resize: ResizeMode::Exact { height: 4, width: 4 },
            resample: vlmix_models::vision::resample::Resample::Bilinear,
            rescale: 1.0 / 255.0,
            mean: [0.0; 3],
            std: [1.0; 3],
        },
    };
    let root = tempfile::Builder::new().prefix("vlmix-mutation-features").tempdir_in(scratch_root()).unwrap();
    let images: Vec<image::RgbImage> = (0..5u8)
        .map(|i| image::RgbImage::from_fn(6, 5, |x, y| image::Rgb([i * 40, x as u8 * 30, y as u8 * 20])))
        .collect();
    let refs: Vec<&image::RgbImage> = images.iter().collect();
    let mut cache = FeatureCache::open(root.path(), &encoder).unwrap();
    cache.features(&encoder, &refs).unwrap();
    cache.flush().unwrap();
    let dir = cache.dir().to_path_buf();
    drop(cache);
    let shard = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "safetensors"))
        .expect("a flushed cache has a shard");
    let keys: Vec<_> = images.iter().map(image_key).collect();
    let read = || {
        let cache = FeatureCache::open(root.path(), &encoder)?;
        let mut row = vec![0.0f32; 6];
        anyhow::Ok(keys.iter().filter(|k| cache.get(k, &mut row)).count())
    };
    assert_eq!(read().unwrap(), 5, "the base cache must read back");

    let base = std::fs::read(&shard).unwrap();
    let mut mutants = byte_mutants(&base, &safetensors_boundaries(&base), 41, per_reader() / 2);
    mutants.extend(safetensors_header_mutants(&base, 42, per_reader() / 2));
    check("feature cache shard", &mutants, |bytes| {
        std::fs::write(&shard, bytes)?;
        read()
    });
}
