//! Fashion-MNIST's test set (Debian `dataset-fashion-mnist`): 10,000 labelled 28 px grayscale
//! photographs of Zalando products in ten classes, as gzipped IDX files. The dataset stores them
//! negated (bright product on black); they are negated back to the product photos' dark-on-white.
//! Captions come from the label; images stay 28 px (see image_io).
use std::io::Read;
use std::path::Path;

use anyhow::{bail, Context, Result};
use image::{Rgb, RgbImage};
use rayon::prelude::*;

use super::record::{bucket, pick, ImageRecord, Source, Split, Subject};
use super::{ImageConfig, SourceOutput};
use vlmix_data::DataLayout;

const DATA_DIR: &str = "usr/share/datasets/fashion-mnist";
const IMAGES: &str = "t10k-images-idx3-ubyte.gz";
const LABELS_FILE: &str = "t10k-labels-idx1-ubyte.gz";

/// The ten classes in label order, one word each so an open answer is one word ("T-shirt/top"
/// and "Ankle boot" in the dataset's own names).
pub const LABELS: [&str; 10] =
    ["t-shirt", "trousers", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "boot"];

/// What kind of article each label is, for the instruction data's second question.
pub fn kind_of(label: &str) -> &'static str {
    match label {
        "sandal" | "sneaker" | "boot" => "footwear",
        "bag" => "a bag",
        _ => "clothing",
    }
}

const CAPTIONS: [&str; 4] =
    ["A photo of {}.", "A small grayscale photo of {}.", "A product photo showing {}.", "{} in a tiny photograph."];

pub fn load(layout: &DataLayout, config: &ImageConfig) -> Result<SourceOutput> {
    let dir = layout.require_source("fashion-mnist")?.join(DATA_DIR);
    let (images, labels) = (dir.join(IMAGES), dir.join(LABELS_FILE));
    let (side, pixels) = read_idx_images(&images)?;
    let labels = read_idx_labels(&labels)?;
    let count = pixels.len() / (side * side);
    if labels.len() != count {
        bail!("{} holds {count} images but {} has {} labels", images.display(), LABELS_FILE, labels.len());
    }
    let indices: Vec<usize> = (0..count).collect();
    let results: Vec<Result<ImageRecord, String>> = config
        .subset(&indices)
        .par_iter()
        .map(|&&index| {
            let image = &pixels[index * side * side..(index + 1) * side * side];
            one(index, side, image, labels[index], config)
                .map_err(|err| format!("{} image {index}: {err:#}", images.display()))
        })
        .collect();
    Ok(SourceOutput::from_results(results))
}

fn one(index: usize, side: usize, gray: &[u8], label: u8, config: &ImageConfig) -> Result<ImageRecord> {
    let Some(label) = LABELS.get(label as usize) else { bail!("label {label} is not one of the ten classes") };
    let image = RgbImage::from_fn(side as u32, side as u32, |x, y| {
        let v = 255 - gray[y as usize * side + x as usize];
        Rgb([v, v, v])
    });
    let origin = format!("{index:05}");
    let split =
        if bucket(&format!("fashion:{origin}")) < config.photo_heldout_percent { Split::Heldout } else { Split::Train };
    let template = CAPTIONS[pick(&format!("fashion-caption:{origin}"), CAPTIONS.len())];
    let caption = capitalise(&template.replace("{}", &with_article(label)));
    let subject = Subject::Fashion { label: label.to_string(), index };
    ImageRecord::new(Source::FashionMnist, origin, split, &image, caption, subject)
}

fn read_gz(path: &Path, limit: u64) -> Result<Vec<u8>> {
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut bytes = Vec::new();
    flate2::read::GzDecoder::new(file)
        .take(limit)
        .read_to_end(&mut bytes)
        .with_context(|| format!("decompressing {}", path.display()))?;
    Ok(bytes)
}

/// Big-endian u32 number `n` of an IDX header.
fn header(bytes: &[u8], n: usize, path: &Path) -> Result<usize> {
    let field = bytes.get(4 * n..4 * n + 4).with_context(|| format!("{}: IDX header cut short", path.display()))?;
    Ok(u32::from_be_bytes(field.try_into().expect("4 bytes")) as usize)
}

/// An IDX image file (magic 0x803: unsigned bytes, 3 dimensions) -> (side, all pixels).
fn read_idx_images(path: &Path) -> Result<(usize, Vec<u8>)> {
    // 100,000 images of 28 x 28 would be 78 MB: far above any real test set, so a lying header
    // cannot make the reader allocate without bound.
    let bytes = read_gz(path, 80 << 20)?;
    if header(&bytes, 0, path)? != 0x803 {
        bail!("{}: not an IDX image file (magic {:#x}, expected 0x803)", path.display(), header(&bytes, 0, path)?);
    }
    let (count, rows, cols) = (header(&bytes, 1, path)?, header(&bytes, 2, path)?, header(&bytes, 3, path)?);
    if rows != cols || rows == 0 || rows > 256 {
        bail!("{}: images of {rows} x {cols} pixels; expected small squares", path.display());
    }
    let body = &bytes[16..];
    if body.len() != count * rows * cols {
        bail!("{}: header says {count} images of {rows} x {cols}, the file holds {} bytes", path.display(), body.len());
    }
    Ok((rows, body.to_vec()))
}

/// An IDX label file (magic 0x801: unsigned bytes, 1 dimension).
fn read_idx_labels(path: &Path) -> Result<Vec<u8>> {
    let bytes = read_gz(path, 1 << 20)?;
    if header(&bytes, 0, path)? != 0x801 {
        bail!("{}: not an IDX label file (magic {:#x}, expected 0x801)", path.display(), header(&bytes, 0, path)?);
    }
    let count = header(&bytes, 1, path)?;
    let body = &bytes[8..];
    if body.len() != count {
        bail!("{}: header says {count} labels, the file holds {}", path.display(), body.len());
    }
    Ok(body.to_vec())
}

/// "an airplane", "a cat".
pub fn with_article(noun: &str) -> String {
    let article = if noun.starts_with(['a', 'e', 'i', 'o', 'u']) { "an" } else { "a" };
    format!("{article} {noun}")
}

pub fn capitalise(text: &str) -> String {
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn gz(bytes: &[u8]) -> Vec<u8> {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        encoder.write_all(bytes).unwrap();
        encoder.finish().unwrap()
    }

    #[test]
    fn articles_and_capitals() {
        assert_eq!(capitalise(&with_article("airplane")), "An airplane");
        assert_eq!(with_article("boot"), "a boot");
    }

    #[test]
    fn idx_files_are_read_and_bad_headers_named() {
        let dir = tempfile::tempdir().unwrap();
        let mut images = vec![0, 0, 8, 3, 0, 0, 0, 2, 0, 0, 0, 2, 0, 0, 0, 2];
        images.extend([1, 2, 3, 4, 5, 6, 7, 8]);
        let path = dir.path().join("i.gz");
        std::fs::write(&path, gz(&images)).unwrap();
        assert_eq!(read_idx_images(&path).unwrap(), (2, vec![1, 2, 3, 4, 5, 6, 7, 8]));
        std::fs::write(&path, gz(&images[..20])).unwrap();
        let err = format!("{:#}", read_idx_images(&path).unwrap_err());
        assert!(err.contains("i.gz") && err.contains("2 images"), "{err}");
        std::fs::write(&path, gz(&[0, 0, 8, 1, 0, 0, 0, 3, 9, 9])).unwrap();
        let err = format!("{:#}", read_idx_labels(&path).unwrap_err());
        assert!(err.contains("3 labels"), "{err}");
        std::fs::write(&path, gz(&[0, 0, 8])).unwrap();
        assert!(format!("{:#}", read_idx_labels(&path).unwrap_err()).contains("cut short"));
    }
}
