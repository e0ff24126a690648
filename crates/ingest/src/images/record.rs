//! One prepared image-caption pair and the facts its instruction and eval questions come from.
use anyhow::Result;
use image::RgbImage;
use serde::Serialize;
use sha2::{Digest, Sha256};

use vlmix_data::image_io;

/// Where an image comes from: the registry package and its licence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    Openclipart,
    Tuxpaint,
    NotoEmoji,
    Openmoji,
    FlagIcons,
    FashionMnist,
}

impl Source {
    pub const ALL: [Source; 6] = [
        Source::Openclipart,
        Source::Tuxpaint,
        Source::NotoEmoji,
        Source::Openmoji,
        Source::FlagIcons,
        Source::FashionMnist,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Source::Openclipart => "openclipart",
            Source::Tuxpaint => "tuxpaint",
            Source::NotoEmoji => "noto_emoji",
            Source::Openmoji => "openmoji",
            Source::FlagIcons => "flag_icons",
            Source::FashionMnist => "fashion_mnist",
        }
    }

    /// Fetched sources it is read from (scripts/data-sources.tsv names): without any of them the
    /// source is left out of the corpus.
    pub fn packages(self) -> &'static [&'static str] {
        match self {
            Source::Openclipart => &["openclipart-png", "openclipart-svg"],
            Source::Tuxpaint => &["tuxpaint-stamps-default"],
            Source::NotoEmoji => &["emoji-datasource-google"],
            Source::Openmoji => &["openmoji"],
            Source::FlagIcons => &["flag-icons"],
            Source::FashionMnist => &["fashion-mnist"],
        }
    }

    pub fn licence(self) -> &'static str {
        match self {
            Source::Openclipart => "Public domain (Open Clip Art Library dedication)",
            Source::Tuxpaint => "GPL-2.0-or-later",
            Source::NotoEmoji => "Apache-2.0 (Noto Emoji images); MIT (emoji-datasource metadata)",
            Source::Openmoji => "CC-BY-SA-4.0",
            Source::FlagIcons => "MIT",
            Source::FashionMnist => "MIT (Fashion-MNIST, Zalando SE)",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Split {
    Train,
    /// Never trained on (no caption shard, no instruction): reserved for evaluation.
    Heldout,
}

/// Source-specific facts, written into each sample's `.json` and used to ask questions.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Subject {
    Clipart {
        title: String,
        description: Option<String>,
        keywords: Vec<String>,
        category: Vec<String>,
    },
    Stamp {
        description: String,
        category: Vec<String>,
    },
    Emoji {
        name: String,
        category: String,
        subcategory: String,
        keywords: Vec<String>,
        skin_tone: Option<String>,
        codepoints: String,
    },
    Flag {
        country: String,
        code: String,
        capital: Option<String>,
        continent: Option<String>,
        iso: bool,
        aspect: String,
    },
    Fashion {
        label: String,
        index: usize,
    },
}

/// A normalised, encoded image with its caption.
#[derive(Debug, Clone)]
pub struct ImageRecord {
    /// WebDataset key, unique across all sources.
    pub key: String,
    pub source: Source,
    /// The item's own name inside its package (relative path, code point, index).
    pub origin: String,
    pub split: Split,
    pub png: Vec<u8>,
    pub width: u32,
    pub height: u32,
    /// SHA-256 of the decoded pixels, to find the same picture under two names.
    pub pixel_hash: [u8; 32],
    pub caption: String,
    pub subject: Subject,
}

impl ImageRecord {
    pub fn new(
        source: Source,
        origin: String,
        split: Split,
        image: &RgbImage,
        caption: String,
        subject: Subject,
    ) -> Result<Self> {
        let mut hasher = Sha256::new();
        hasher.update(image.width().to_le_bytes());
        hasher.update(image.height().to_le_bytes());
        hasher.update(image.as_raw());
        Ok(Self {
            key: make_key(source.name(), &origin),
            source,
            origin,
            split,
            png: image_io::encode_png(image)?,
            width: image.width(),
            height: image.height(),
            pixel_hash: hasher.finalize().into(),
            caption,
            subject,
        })
    }

    /// The sample's `.json` member.
    pub fn metadata(&self) -> serde_json::Value {
        serde_json::json!({
            "key": self.key,
            "source": self.source.name(),
            "package": self.source.packages(),
            "licence": self.source.licence(),
            "origin": self.origin,
            "split": self.split,
            "width": self.width,
            "height": self.height,
            "subject": self.subject,
        })
    }
}

/// `prefix_slug` of an origin: lower-case ASCII letters, digits and `_`, other runs become `-`;
/// long origins are cut and suffixed with a hash so keys stay unique and fit a tar name.
pub fn make_key(prefix: &str, origin: &str) -> String {
    let mut slug = String::with_capacity(origin.len());
    for c in origin.chars().flat_map(char::to_lowercase) {
        if c.is_ascii_alphanumeric() || c == '_' {
            slug.push(c);
        } else if !slug.ends_with('-') {
            slug.push('-');
        }
    }
    let slug = slug.trim_matches('-');
    let key = format!("{prefix}_{slug}");
    if key.len() <= 80 {
        return key;
    }
    let hash = hex_prefix(origin.as_bytes(), 8);
    format!("{}-{hash}", &key[..71])
}

/// First `n` hex digits of the SHA-256 of `bytes`.
pub fn hex_prefix(bytes: &[u8], n: usize) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect::<String>()[..n].to_string()
}

/// A stable number in 0..100 from a name: which items are held out never depends on order,
/// thread count or which other items exist.
pub fn bucket(name: &str) -> u32 {
    let digest = Sha256::digest(name.as_bytes());
    (u32::from_le_bytes([digest[0], digest[1], digest[2], digest[3]])) % 100
}

/// A stable pick among `n` options for `name` (template variation).
pub fn pick(name: &str, n: usize) -> usize {
    let digest = Sha256::digest(name.as_bytes());
    (u64::from_le_bytes(digest[..8].try_into().expect("8 bytes")) % n as u64) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_slugs_and_stay_unique_when_cut() {
        assert_eq!(make_key("openclipart", "animals/Dog 03.png"), "openclipart_animals-dog-03-png");
        let long_a = format!("{}a", "x".repeat(100));
        let long_b = format!("{}b", "x".repeat(100));
        let (a, b) = (make_key("p", &long_a), make_key("p", &long_b));
        assert!(a.len() <= 80 && a != b);
        vlmix_data::webdataset::validate_key(&a).unwrap();
    }

    #[test]
    fn buckets_are_stable_and_spread() {
        assert_eq!(bucket("fashion:42"), bucket("fashion:42"));
        let held = (0..10_000).filter(|i| bucket(&format!("x:{i}")) < 10).count();
        assert!((800..1200).contains(&held), "{held}");
    }
}
