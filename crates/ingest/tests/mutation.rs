//! Issue 26: the readers of registry packages behind `vlmix data prepare` (OLMES request files and
//! their config, Fashion-MNIST's gzipped IDX files, the emoji, OpenMoji and flag-icons JSON indexes,
//! Tux Paint's stamp descriptions) given thousands of seeded damaged files end in `Ok` or a clean
//! `Err`, a bad item being left out naming its file: no panic, no allocation over the cap. The
//! images themselves are vlmix-data's `image_mutation` test.

use std::io::Write;
use std::path::{Path, PathBuf};

use image::{Rgb, RgbImage};
use serde_json::{json, Value};
use vlmix_data::image_io::encode_png;
use vlmix_data::DataLayout;
use vlmix_ingest::images::{emoji, fashion, flags, openmoji, tuxpaint, ImageConfig, SourceOutput};
use vlmix_ingest::text_eval::read_oe_eval_requests;
use vlmix_mutation::{byte_mutants, check, json_mutants, scratch_dir, CappedAlloc, Mutant};

/// The packages built here are a few KiB: a reader asking for more trusted a declared size.
#[global_allocator]
static ALLOC: CappedAlloc = CappedAlloc { cap: 64 << 20 };

/// Inputs per reader: 1,000 in the test suite, more under scripts/fuzz.sh.
fn per_reader() -> usize {
    vlmix_mutation::per_reader(1000)
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(bytes).unwrap();
    gz.finish().unwrap()
}

fn write(path: &Path, bytes: &[u8]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, bytes).unwrap();
}

/// Records read and items left out (each naming its file) by one image source.
fn counts(output: SourceOutput) -> (usize, usize) {
    (output.records.len(), output.skipped.len())
}

const SVG: &str =
    r##"<svg xmlns="http://www.w3.org/2000/svg" width="8" height="6"><rect width="4" height="6" fill="#c00"/></svg>"##;

fn png(shade: u8) -> Vec<u8> {
    encode_png(&RgbImage::from_fn(8, 8, |x, y| Rgb([shade, x as u8 * 30, y as u8 * 30]))).unwrap()
}

fn request_lines() -> Vec<Value> {
    let request = |doc: u64, idx: usize, label: u64, continuation: &str| {
        json!({"doc_id": doc, "idx": idx, "label": label, "native_id": format!("q{doc}"),
               "request": {"context": format!("Question {doc}: which?"), "continuation": format!(" {continuation}")}})
    };
    vec![request(0, 0, 1, "red"), request(0, 1, 1, "blue"), request(1, 0, 0, "up"), request(1, 1, 0, "down")]
}

#[test]
fn olmes_requests_survive_mutation() {
    let dir = scratch_dir("olmes");
    let path = dir.path().join("requests.jsonl.gz");
    let config =
        json!({"task_config": {"primary_metric": "acc_per_char", "metric_kwargs": {"uncond_docid_offset": 1000000}}});
    std::fs::write(dir.path().join("config.json"), config.to_string()).unwrap();
    let lines: Vec<String> = request_lines().iter().map(Value::to_string).collect();
    let plain = format!("{}\n", lines.join("\n")).into_bytes();
    std::fs::write(&path, gzip(&plain)).unwrap();
    let read = || read_oe_eval_requests(&path, "arc_easy").map(|items| items.len());
    assert_eq!(read().unwrap(), 2, "the base requests must read");

    // The lines (compressed again, as the reader meets them), then the gzip stream itself.
    let mut mutants: Vec<Mutant> = Vec::new();
    for (i, line) in request_lines().iter().enumerate() {
        for m in json_mutants(line, 171 + i as u64, per_reader() / 8) {
            let mut file = lines.clone();
            file[i] = String::from_utf8_lossy(&m.bytes).into_owned();
            mutants
                .push(Mutant { bytes: gzip(file.join("\n").as_bytes()), what: format!("line {}: {}", i + 1, m.what) });
        }
    }
    let marks: Vec<usize> = plain.iter().enumerate().filter(|(_, b)| b"\n{}:,\"".contains(b)).map(|(i, _)| i).collect();
    mutants.extend(
        byte_mutants(&plain, &marks, 175, per_reader() / 4)
            .into_iter()
            .map(|m| Mutant { bytes: gzip(&m.bytes), what: format!("text: {}", m.what) }),
    );
    let gz = std::fs::read(&path).unwrap();
    mutants.extend(byte_mutants(&gz, &[4, 10, gz.len() - 8, gz.len() - 4], 176, per_reader() / 4));
    check("OLMES requests.jsonl.gz", &mutants, |bytes| {
        std::fs::write(&path, bytes)?;
        read()
    });
    std::fs::write(&path, &gz).unwrap();
    check("OLMES config.json", &json_mutants(&config, 177, per_reader()), |bytes| {
        std::fs::write(dir.path().join("config.json"), bytes)?;
        read()
    });
}

fn layout(dir: &Path) -> DataLayout {
    DataLayout::new(dir.join("home"), dir.join("prepared"))
}

/// Fashion-MNIST's two IDX files: their bytes (gzipped again) and the gzip streams.
#[test]
fn fashion_idx_files_survive_mutation() {
    let dir = scratch_dir("fashion");
    let layout = layout(dir.path());
    let data = layout.source("fashion-mnist").join("usr/share/datasets/fashion-mnist");
    let (images_path, labels_path) = (data.join("t10k-images-idx3-ubyte.gz"), data.join("t10k-labels-idx1-ubyte.gz"));
    let mut images = [0x803u32, 4, 6, 6].iter().flat_map(|v| v.to_be_bytes()).collect::<Vec<u8>>();
    images.extend((0..4 * 36).map(|i| (i * 7) as u8));
    let mut labels = [0x801u32, 4].iter().flat_map(|v| v.to_be_bytes()).collect::<Vec<u8>>();
    labels.extend([0, 3, 7, 9]);
    write(&images_path, &gzip(&images));
    write(&labels_path, &gzip(&labels));
    let config = ImageConfig::default();
    let read = || fashion::load(&layout, &config).map(counts);
    assert_eq!(read().unwrap(), (4, 0), "the base files must read");

    for (name, path, raw, seed) in [("images", &images_path, &images, 181), ("labels", &labels_path, &labels, 183)] {
        let header: Vec<usize> = (0..=16).step_by(4).collect();
        let mut mutants: Vec<Mutant> = byte_mutants(raw, &header, seed, per_reader() / 2)
            .into_iter()
            .map(|m| Mutant { bytes: gzip(&m.bytes), what: format!("IDX: {}", m.what) })
            .collect();
        let gz = gzip(raw);
        mutants.extend(byte_mutants(&gz, &[4, 10, gz.len() - 8, gz.len() - 4], seed + 1, per_reader() / 2));
        check(&format!("Fashion-MNIST {name} IDX .gz"), &mutants, |bytes| {
            std::fs::write(path, bytes)?;
            read()
        });
        std::fs::write(path, &gz).unwrap();
    }
}

/// The JSON index of an image package, damaged, read by its source's loader with its images intact.
fn index_survives(
    reader: &str,
    path: &Path,
    base: &Value,
    seed: u64,
    read: impl Fn() -> anyhow::Result<(usize, usize)>,
) {
    write(path, base.to_string().as_bytes());
    let (records, skipped) = read().unwrap();
    assert!(records > 0 && skipped == 0, "{reader}: the base package must read ({records} read, {skipped} left out)");
    check(reader, &json_mutants(base, seed, per_reader()), |bytes| {
        std::fs::write(path, bytes)?;
        read()
    });
}

#[test]
fn emoji_index_survives_mutation() {
    let dir = scratch_dir("emoji");
    let layout = layout(dir.path());
    let root = layout.source("emoji-datasource-google").join("package");
    for (i, name) in ["1f44b.png", "1f44b-1f3fd.png", "1f600.png"].iter().enumerate() {
        write(&root.join("img/google/64").join(name), &png(i as u8 * 50));
    }
    let index = json!([
        {"name": "WAVING HAND SIGN", "unified": "1F44B", "image": "1f44b.png", "short_name": "wave", "short_names": ["wave"],
         "category": "People & Body", "subcategory": "hand-fingers-open", "has_img_google": true,
         "skin_variations": {"1F3FD": {"unified": "1F44B-1F3FD", "image": "1f44b-1f3fd.png", "has_img_google": true}}},
        {"name": null, "unified": "1F600", "image": "1f600.png", "short_name": "grinning", "category": "Smileys & Emotion",
         "subcategory": "face-smiling", "has_img_google": true}
    ]);
    let config = ImageConfig::default();
    index_survives("emoji.json", &root.join("emoji.json"), &index, 191, || emoji::load(&layout, &config).map(counts));
}

#[test]
fn openmoji_index_survives_mutation() {
    let dir = scratch_dir("openmoji");
    let layout = layout(dir.path());
    let root = layout.source("openmoji").join("package");
    for hex in ["1F600", "1F44B-1F3FD"] {
        write(&root.join(format!("color/svg/{hex}.svg")), SVG.as_bytes());
    }
    let index = json!([
        {"hexcode": "1F600", "group": "smileys-emotion", "subgroups": "face-smiling", "annotation": "grinning face",
         "tags": "face, grin", "openmoji_tags": "", "skintone": ""},
        {"hexcode": "1F44B-1F3FD", "group": "people-body", "subgroups": "hand-fingers-open", "annotation": "waving hand",
         "tags": "hand, wave", "openmoji_tags": "hello", "skintone": 3}
    ]);
    let config = ImageConfig { max_side: 16, ..Default::default() };
    index_survives("openmoji.json", &root.join("data/openmoji.json"), &index, 192, || {
        openmoji::load(&layout, &config).map(counts)
    });
}

#[test]
fn flag_index_survives_mutation() {
    let dir = scratch_dir("flags");
    let layout = layout(dir.path());
    let root = layout.source("flag-icons").join("package");
    for code in ["fr", "jp"] {
        for aspect in ["4x3", "1x1"] {
            write(&root.join(format!("flags/{aspect}/{code}.svg")), SVG.as_bytes());
        }
    }
    let index = json!([
        {"code": "fr", "name": "France", "capital": "Paris", "continent": "Europe", "iso": true},
        {"code": "jp", "name": "Japan", "capital": null, "continent": "Asia"}
    ]);
    let config = ImageConfig { max_side: 16, ..Default::default() };
    index_survives("flag-icons country.json", &root.join("country.json"), &index, 193, || {
        flags::load(&layout, &config).map(counts)
    });
}

#[test]
fn tuxpaint_descriptions_survive_mutation() {
    let dir = scratch_dir("tuxpaint");
    let layout = layout(dir.path());
    let stamps: PathBuf = layout.source("tuxpaint-stamps-default").join("usr/share/tuxpaint/stamps/animals");
    write(&stamps.join("cat.png"), &png(90));
    let text = "A cat sitting.\nfr.utf8=Un chat assis.\nde.utf8=Eine Katze.\n";
    let txt = stamps.join("cat.txt");
    write(&txt, text.as_bytes());
    let config = ImageConfig::default();
    let read = || tuxpaint::load(&layout, &config).map(counts);
    assert_eq!(read().unwrap(), (1, 0), "the base stamp must read");
    let marks: Vec<usize> = text.bytes().enumerate().filter(|(_, b)| b"\n=.".contains(b)).map(|(i, _)| i).collect();
    check("Tux Paint stamp description", &byte_mutants(text.as_bytes(), &marks, 194, per_reader()), |bytes| {
        std::fs::write(&txt, bytes)?;
        read()
    });
}
