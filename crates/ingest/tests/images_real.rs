//! The image ingestion on a small real subset of the fetched packages (scripts/fetch-data.sh puts
//! them under $VLMIX_HOME/sources; scripts/test.sh runs it first). Fails, naming the fetch script,
//! when they are missing.
use std::collections::{BTreeMap, HashSet};
use std::path::Path;

use sha2::{Digest, Sha256};
use vlmix_data::inspect::inspect_path;
use vlmix_data::layout::UNAVAILABLE_STAMP;
use vlmix_data::llava::LlavaSet;
use vlmix_data::vl_eval::prepared::{COLOR_NAME, EMOJI_CATEGORY, FASHION_WHAT, FLAG_COUNTRY, POPE_FASHION, SHAPE_NAME};
use vlmix_data::vl_eval::{EvalSet, QuestionType};
use vlmix_data::webdataset::{list_shards, stream};
use vlmix_data::{image_io, DataLayout};
use vlmix_ingest::images::{prepare, ImageConfig};

fn pixels_hash(image: &image::RgbImage) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(image.width().to_le_bytes());
    hasher.update(image.height().to_le_bytes());
    hasher.update(image.as_raw());
    hasher.finalize().into()
}

fn shard_bytes(dir: &Path) -> Vec<Vec<u8>> {
    list_shards(dir).unwrap().iter().map(|p| std::fs::read(p).unwrap()).collect()
}

#[test]
fn real_subset_prepares_disjoint_train_instruct_and_eval_data() {
    let out = tempfile::tempdir().unwrap();
    let layout = DataLayout::from_env(Some(out.path())).unwrap();
    let config = ImageConfig { max_per_source: Some(80), samples_per_shard: 40, ..ImageConfig::default() };
    let summary = match prepare(&layout, &config) {
        Ok(summary) => summary,
        Err(err) => panic!("image preparation failed (are the sources fetched? run scripts/fetch-data.sh): {err:#}"),
    };
    println!("{summary}");
    for source in &summary.sources {
        assert!(source.train > 0, "{} gave no training images", source.source);
        assert!(source.skipped.is_empty(), "{}: {:?}", source.source, source.skipped);
    }

    let mut train_keys = HashSet::new();
    let mut train_pixels = HashSet::new();
    let mut per_source = BTreeMap::<String, usize>::new();
    for sample in stream(list_shards(&layout.images_dir().join("train")).unwrap(), 16) {
        let sample = sample.unwrap_or_else(|p| panic!("{p}"));
        let (w, h) = sample.image.dimensions();
        assert!(w.max(h) <= config.max_side && !sample.caption.is_empty(), "{} {w}x{h}", sample.key);
        let meta = sample.metadata.expect("every prepared sample has a .json");
        assert_eq!(meta["split"], "train");
        assert!(meta["licence"].as_str().is_some_and(|l| !l.is_empty()));
        *per_source.entry(meta["source"].as_str().unwrap().to_string()).or_default() += 1;
        train_keys.insert(sample.key);
        train_pixels.insert(pixels_hash(&sample.image));
    }
    for source in &summary.sources {
        assert_eq!(per_source.get(source.source).copied().unwrap_or(0), source.train, "{}", source.source);
    }
    let heldout_keys: HashSet<String> =
        stream(list_shards(&layout.images_dir().join("heldout")).unwrap(), 16).map(|s| s.unwrap().key).collect();
    assert!(train_keys.is_disjoint(&heldout_keys));
    assert!(!heldout_keys.is_empty());

    let instruct = LlavaSet::read(&summary.instruct_file, None).unwrap();
    assert!(instruct.problems.is_empty(), "{:?}", instruct.problems);
    assert_eq!(instruct.records.len(), summary.instruct_conversations);
    for (_, record) in &instruct.records {
        assert!(train_keys.contains(&record.id), "instruction about non-training image {}", record.id);
        assert!(record.exchanges().count() >= 2, "{} is not multi-turn", record.id);
        assert!(record.conversations[0].value.starts_with("<image>\n"));
    }

    assert!(summary.missing.is_empty(), "{:?}", summary.missing);
    let expected_tasks = [FASHION_WHAT, POPE_FASHION, EMOJI_CATEGORY, FLAG_COUNTRY, SHAPE_NAME, COLOR_NAME];
    for task in expected_tasks {
        let path = layout.eval_vl_dir().join(format!("{task}.jsonl"));
        let set = EvalSet::read(&path).unwrap();
        assert!(set.problems.is_empty(), "{:?}", set.problems);
        assert!(!set.items.is_empty(), "{task} is empty");
        for (_, item) in &set.items {
            let image = image_io::decode_rgb(&std::fs::read(layout.eval_vl_dir().join(&item.image)).unwrap()).unwrap();
            assert!(!train_pixels.contains(&pixels_hash(&image)), "{task} {} uses a training image", item.id);
            let stem = Path::new(&item.image).file_stem().unwrap().to_string_lossy().into_owned();
            assert!(!train_keys.contains(&stem), "{task} {} is a training key", item.id);
        }
        let yes = set.items.iter().filter(|(_, i)| i.answers[0] == "yes").count();
        match task {
            POPE_FASHION => {
                assert_eq!(yes * 2, set.items.len(), "POPE is balanced");
                assert!(set.items.iter().all(|(_, i)| i.kind == QuestionType::YesNo && i.chance == 0.5));
            }
            FASHION_WHAT => {
                assert!(set
                    .items
                    .iter()
                    .all(|(_, i)| vlmix_ingest::images::fashion::LABELS.contains(&i.answers[0].as_str())));
                assert!(set.items.iter().all(|(_, i)| i.chance == 0.1), "chance is one in ten labels");
            }
            FLAG_COUNTRY => {
                let distinct: HashSet<&str> = set.items.iter().map(|(_, i)| i.answers[0].as_str()).collect();
                assert_eq!(distinct.len(), set.items.len(), "one unambiguous flag per country");
                assert!(set.items.iter().all(|(_, i)| (i.chance - 1.0 / distinct.len() as f64).abs() < 1e-12));
            }
            EMOJI_CATEGORY | SHAPE_NAME | COLOR_NAME => {
                for (_, item) in &set.items {
                    let choices = item.choices.as_ref().unwrap();
                    assert!(choices.contains(&item.answers[0]));
                    assert!((item.chance - 1.0 / choices.len() as f64).abs() < 1e-12);
                }
            }
            _ => {}
        }
    }

    let report = inspect_path(&layout.prepared).unwrap();
    assert!(report.is_clean(), "{report}");

    let first = shard_bytes(&layout.images_dir().join("train"));
    prepare(&layout, &config).unwrap();
    assert_eq!(first, shard_bytes(&layout.images_dir().join("train")), "a second run writes identical shards");
}

/// A machine where one source could not be had: prepare builds everything else and names the corpus
/// part and the tasks it lost (the other sources are the real fetched ones, linked).
#[test]
fn a_missing_source_is_named_with_what_it_costs_and_the_rest_is_prepared() {
    let real = DataLayout::from_env(None).unwrap();
    let home = tempfile::tempdir().unwrap();
    let layout = DataLayout::new(home.path(), home.path().join("prepared"));
    std::fs::create_dir_all(home.path().join("sources")).unwrap();
    for entry in std::fs::read_dir(real.home.join("sources")).expect("run scripts/fetch-data.sh first") {
        let entry = entry.unwrap();
        if entry.file_name() != "fashion-mnist" {
            std::os::unix::fs::symlink(entry.path(), home.path().join("sources").join(entry.file_name())).unwrap();
        }
    }
    let gone = layout.source("fashion-mnist");
    std::fs::create_dir_all(&gone).unwrap();
    let why =
        "no candidate of fashion-mnist could be had: apt dataset-fashion-mnist=9.9: E: Version '9.9' was not found";
    std::fs::write(gone.join(UNAVAILABLE_STAMP), why).unwrap();

    let config = ImageConfig { max_per_source: Some(30), samples_per_shard: 40, ..ImageConfig::default() };
    let summary = prepare(&layout, &config).unwrap();
    assert_eq!(summary.missing.len(), 1, "{:?}", summary.missing);
    let lost = &summary.missing[0];
    assert_eq!((lost.package.as_str(), lost.reason.as_str()), ("fashion-mnist", why));
    assert_eq!(lost.corpus_parts, ["image corpus: fashion_mnist"]);
    assert_eq!(lost.tasks, [FASHION_WHAT, POPE_FASHION]);
    assert!(format!("{summary}").contains("MISSING fashion-mnist"), "{summary}");
    assert!(summary.sources.iter().all(|s| s.source != "fashion_mnist" && s.train > 0));
    for task in [EMOJI_CATEGORY, FLAG_COUNTRY, SHAPE_NAME, COLOR_NAME] {
        assert!(layout.eval_vl_dir().join(format!("{task}.jsonl")).is_file(), "{task} was not prepared");
    }
    for task in [FASHION_WHAT, POPE_FASHION] {
        assert!(!layout.eval_vl_dir().join(format!("{task}.jsonl")).exists(), "{task} exists without its source");
    }
}

/// The whole image preparation, timed: `cargo test --release -p vlmix-data --test images_real -- --ignored --nocapture`.
#[test]
#[ignore]
fn full_image_preparation() {
    let out = std::env::var_os("VLMIX_PREPARED_OUT").map(std::path::PathBuf::from);
    let scratch = tempfile::tempdir().unwrap();
    let layout = DataLayout::from_env(Some(out.as_deref().unwrap_or(scratch.path()))).unwrap();
    let summary = prepare(&layout, &ImageConfig::default()).unwrap();
    println!("{summary}");
    let report = inspect_path(&layout.prepared).unwrap();
    println!("{report}");
    assert!(report.is_clean());
}
