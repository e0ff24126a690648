//! Noto Color Emoji at 64 px from emoji-datasource-google (npm): `emoji.json` gives each emoji's
//! Unicode name, short names, category and subcategory, and its skin-tone variations.
//!
//! Emoji are held out by *concept* (code points without FE0F and skin-tone modifiers), for Noto
//! and OpenMoji alike, so an eval emoji is never seen in training in any artwork or skin tone.
use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result};
use rayon::prelude::*;
use serde::Deserialize;

use super::record::{bucket, ImageRecord, Source, Split, Subject};
use super::{require_dir, ImageConfig, SourceOutput};
use vlmix_data::{image_io, DataLayout};

const PACKAGE_DIR: &str = "package";

/// The categories of the Unicode emoji list, as emoji-datasource names them.
pub const CATEGORIES: &[&str] = &[
    "Smileys & Emotion",
    "People & Body",
    "Animals & Nature",
    "Food & Drink",
    "Travel & Places",
    "Activities",
    "Objects",
    "Symbols",
    "Flags",
];

#[derive(Deserialize)]
struct Entry {
    name: Option<String>,
    unified: String,
    image: String,
    short_name: String,
    #[serde(default)]
    short_names: Vec<String>,
    category: String,
    subcategory: String,
    #[serde(default)]
    has_img_google: bool,
    #[serde(default)]
    skin_variations: BTreeMap<String, Variation>,
}

#[derive(Deserialize)]
struct Variation {
    unified: String,
    image: String,
    #[serde(default)]
    has_img_google: bool,
}

struct Job<'a> {
    entry: &'a Entry,
    unified: &'a str,
    image: &'a str,
    skin_tone: Option<String>,
}

pub fn load(layout: &DataLayout, config: &ImageConfig) -> Result<SourceOutput> {
    let root = require_dir(&layout.require_source("emoji-datasource-google")?.join(PACKAGE_DIR))?;
    let index = root.join("emoji.json");
    let entries: Vec<Entry> =
        serde_json::from_slice(&std::fs::read(&index).with_context(|| format!("reading {}", index.display()))?)
            .with_context(|| format!("parsing {}", index.display()))?;
    let images = require_dir(&root.join("img/google/64"))?;
    let mut jobs = Vec::new();
    for entry in entries.iter().filter(|e| e.has_img_google) {
        jobs.push(Job { entry, unified: &entry.unified, image: &entry.image, skin_tone: None });
        for (tones, variation) in entry.skin_variations.iter().filter(|(_, v)| v.has_img_google) {
            jobs.push(Job {
                entry,
                unified: &variation.unified,
                image: &variation.image,
                skin_tone: tone_names(tones),
            });
        }
    }
    let results: Vec<Result<ImageRecord, String>> = config
        .subset(&jobs)
        .par_iter()
        .map(|job| one(&images, job, config).map_err(|err| format!("{}: {err:#}", images.join(job.image).display())))
        .collect();
    Ok(SourceOutput::from_results(results))
}

fn one(images: &Path, job: &Job, config: &ImageConfig) -> Result<ImageRecord> {
    let bytes = std::fs::read(images.join(job.image)).context("reading PNG")?;
    let image = image_io::fit_within(image_io::decode_rgb(&bytes)?, config.max_side);
    let entry = job.entry;
    let base_name = entry.name.clone().unwrap_or_else(|| entry.short_name.replace('_', " ")).to_lowercase();
    let name = match &job.skin_tone {
        Some(tone) => format!("{base_name}: {tone}"),
        None => base_name,
    };
    let keywords: Vec<String> = entry.short_names.iter().map(|s| s.replace('_', " ")).filter(|k| *k != name).collect();
    let caption = emoji_caption(&name, &entry.category, &entry.subcategory, &keywords);
    let split = split_for(job.unified, config);
    let subject = Subject::Emoji {
        name,
        category: entry.category.clone(),
        subcategory: entry.subcategory.clone(),
        keywords,
        skin_tone: job.skin_tone.clone(),
        codepoints: job.unified.to_string(),
    };
    ImageRecord::new(Source::NotoEmoji, job.unified.to_lowercase(), split, &image, caption, subject)
}

pub(super) fn emoji_caption(name: &str, category: &str, subcategory: &str, keywords: &[String]) -> String {
    let mut caption = format!("Emoji: {name}. Category: {category}, {}.", subcategory.replace('-', " "));
    if !keywords.is_empty() {
        caption.push_str(&format!(" Keywords: {}.", keywords.join(", ")));
    }
    caption
}

/// Held out when the emoji's concept falls in the held-out buckets.
pub(super) fn split_for(codepoints: &str, config: &ImageConfig) -> Split {
    if bucket(&format!("emoji:{}", concept(codepoints))) < config.heldout_percent {
        Split::Heldout
    } else {
        Split::Train
    }
}

/// Code points without the emoji presentation selector and skin-tone modifiers.
pub(super) fn concept(codepoints: &str) -> String {
    codepoints
        .split('-')
        .map(|c| c.trim().to_ascii_uppercase())
        .filter(|c| c != "FE0F" && tone_name(c).is_none())
        .collect::<Vec<_>>()
        .join("-")
}

fn tone_name(codepoint: &str) -> Option<&'static str> {
    Some(match codepoint {
        "1F3FB" => "light skin tone",
        "1F3FC" => "medium-light skin tone",
        "1F3FD" => "medium skin tone",
        "1F3FE" => "medium-dark skin tone",
        "1F3FF" => "dark skin tone",
        _ => return None,
    })
}

/// "1F3FB-1F3FD" -> "light skin tone, medium skin tone".
pub(super) fn tone_names(codepoints: &str) -> Option<String> {
    let names: Vec<&str> = codepoints.split('-').filter_map(|c| tone_name(&c.trim().to_ascii_uppercase())).collect();
    (!names.is_empty()).then(|| names.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn concept_ignores_presentation_and_skin_tone() {
        assert_eq!(concept("1F44B-1F3FD"), "1F44B");
        assert_eq!(concept("0023-fe0f-20e3"), "0023-20E3");
        assert_eq!(tone_names("1F3FB-1F3FF").as_deref(), Some("light skin tone, dark skin tone"));
        assert_eq!(tone_names("1F600"), None);
        let config = ImageConfig::default();
        assert_eq!(split_for("1F44B", &config), split_for("1F44B-1F3FE", &config));
    }
}
