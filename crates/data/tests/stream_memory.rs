//! Reading 50 WebDataset shards holds the same memory as reading 5 (issue 14's bar: within 10 %).
//!
//! Peak RSS is a per-process number, so each read runs in a fresh child process (this test binary
//! re-run with `VLMIX_STREAM_CHILD` set), which reports its `VmHWM` after streaming every sample.
use std::path::{Path, PathBuf};
use std::process::Command;

use image::{Rgb, RgbImage};
use vlmix_data::byod::stream::{ShardStream, StreamConfig, StreamCursor};
use vlmix_data::byod::OnBadRecord;
use vlmix_data::image_io::encode_png;
use vlmix_data::webdataset::{CaptionKey, ShardBuilder};

const CHILD_ENV: &str = "VLMIX_STREAM_CHILD";
/// Samples per shard; with 128x128 noise images a shard is about 2 MB, and even 5 shards are many
/// times the reader's working set (shuffle buffer + read-ahead), so both reads reach steady state.
const PER_SHARD: usize = 40;
const SIDE: u32 = 128;

const SHUFFLE_BUFFER: usize = 32;

/// Incompressible pixels, so shards are as large as a real photo set's of this size.
fn noise_png(seed: u32) -> Vec<u8> {
    let mut state = seed.wrapping_mul(2_654_435_761).max(1);
    let image = RgbImage::from_fn(SIDE, SIDE, |_, _| {
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            state as u8
        };
        Rgb([next(), next(), next()])
    });
    encode_png(&image).unwrap()
}

fn write_shards(dir: &Path, n: usize) -> Vec<PathBuf> {
    (0..n)
        .map(|s| {
            let mut shard = ShardBuilder::new();
            for k in 0..PER_SHARD {
                let png = noise_png((s * PER_SHARD + k) as u32 + 1);
                shard.add(&format!("{:09}", s * 10_000 + k), &[("png", &png), ("txt", b"noise")]).unwrap();
            }
            let path = dir.join(format!("{s:05}.tar"));
            std::fs::write(&path, shard.finish().unwrap()).unwrap();
            path
        })
        .collect()
}

fn peak_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).expect("VmHWM in /proc/self/status");
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// The child's work: stream the first `n` shards of the folder, print samples and peak RSS.
fn child(dir: &Path, n: usize) {
    let shards: Vec<PathBuf> = (0..n).map(|s| dir.join(format!("{s:05}.tar"))).collect();
    let config = StreamConfig {
        seed: Some(3),
        shuffle_buffer: SHUFFLE_BUFFER,
        caption: CaptionKey::Member("txt".into()),
        on_bad_record: OnBadRecord::Fail,
    };
    let mut samples = 0usize;
    let mut pixels = 0u64;
    for sample in ShardStream::new(shards, config, StreamCursor::default()).unwrap() {
        // Consume each sample as training does (resize to the encoder's input), which is slower than
        // reading: the read-ahead stays full, so every run peaks at the reader's whole working set.
        let resized =
            image::imageops::resize(&sample.unwrap().image, 224, 224, image::imageops::FilterType::CatmullRom);
        pixels += u64::from(resized.width() * resized.height());
        samples += 1;
    }
    assert_eq!(pixels, samples as u64 * 224 * 224);
    println!("STREAM samples={samples} peak_rss_kib={}", peak_rss_kib());
}

fn measure(dir: &Path, n: usize) -> (usize, u64) {
    let output = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "peak_memory_of_50_shards_is_within_ten_percent_of_5", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, format!("{}:{n}", dir.display()))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "child failed: {stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    let line = stdout
        .lines()
        .find_map(|l| l.split_once("STREAM ").map(|(_, report)| report))
        .unwrap_or_else(|| panic!("no report in {stdout}"));
    let field =
        |name: &str| line.split_whitespace().find_map(|f| f.strip_prefix(name)).unwrap().parse::<u64>().unwrap();
    (field("samples=") as usize, field("peak_rss_kib="))
}

#[test]
fn peak_memory_of_50_shards_is_within_ten_percent_of_5() {
    if let Ok(spec) = std::env::var(CHILD_ENV) {
        let (dir, n) = spec.rsplit_once(':').unwrap();
        child(Path::new(dir), n.parse().unwrap());
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let shards = write_shards(dir.path(), 50);
    let shard_mb = std::fs::metadata(&shards[0]).unwrap().len() as f64 / 1e6;
    let (few_samples, few) = measure(dir.path(), 5);
    let (many_samples, many) = measure(dir.path(), 50);
    assert_eq!((few_samples, many_samples), (5 * PER_SHARD, 50 * PER_SHARD));
    let ratio = many as f64 / few as f64;
    println!("peak RSS: 5 shards {few} KiB, 50 shards {many} KiB (ratio {ratio:.3}; shards of {shard_mb:.1} MB, buffer {SHUFFLE_BUFFER})");
    assert!(
        ratio <= 1.10,
        "reading 50 shards peaked at {many} KiB, 5 shards at {few} KiB: memory grows with the shard count"
    );
}
