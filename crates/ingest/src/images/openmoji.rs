//! OpenMoji 17 (npm openmoji): colour SVGs rasterised with resvg, with the CLDR annotation, group,
//! subgroup and tags of `data/openmoji.json`. Held out by emoji concept, like the Noto set.
use std::path::Path;

use anyhow::{Context, Result};
use rayon::prelude::*;
use serde::Deserialize;

use super::emoji::{emoji_caption, split_for, tone_names};
use super::record::{ImageRecord, Source, Subject};
use super::{require_dir, ImageConfig, SourceOutput};
use vlmix_data::{image_io, DataLayout};

const PACKAGE_DIR: &str = "package";

#[derive(Deserialize)]
struct Entry {
    hexcode: String,
    group: String,
    subgroups: String,
    annotation: String,
    #[serde(default)]
    tags: String,
    #[serde(default)]
    openmoji_tags: String,
    /// "" for no skin tone, else a number or a list such as "1,3".
    #[serde(default)]
    skintone: serde_json::Value,
}

pub fn load(layout: &DataLayout, config: &ImageConfig) -> Result<SourceOutput> {
    let root = require_dir(&layout.require_source("openmoji")?.join(PACKAGE_DIR))?;
    let index = root.join("data/openmoji.json");
    let entries: Vec<Entry> =
        serde_json::from_slice(&std::fs::read(&index).with_context(|| format!("reading {}", index.display()))?)
            .with_context(|| format!("parsing {}", index.display()))?;
    let svgs = require_dir(&root.join("color/svg"))?;
    let results: Vec<Result<ImageRecord, String>> = config
        .subset(&entries)
        .par_iter()
        .map(|entry| {
            let path = svgs.join(format!("{}.svg", entry.hexcode));
            one(&path, entry, config).map_err(|err| format!("{}: {err:#}", path.display()))
        })
        .collect();
    Ok(SourceOutput::from_results(results))
}

fn one(path: &Path, entry: &Entry, config: &ImageConfig) -> Result<ImageRecord> {
    let image = image_io::rasterize_svg(&std::fs::read(path).context("reading SVG")?, config.max_side)?;
    let category = category_name(&entry.group);
    let mut keywords: Vec<String> = Vec::new();
    for tag in entry.tags.split(',').chain(entry.openmoji_tags.split(',')) {
        let tag = tag.trim().to_lowercase();
        if !tag.is_empty() && tag != entry.annotation && !keywords.contains(&tag) {
            keywords.push(tag);
        }
    }
    let toned = !matches!(&entry.skintone, serde_json::Value::Null | serde_json::Value::String(_))
        || entry.skintone.as_str().is_some_and(|s| !s.is_empty());
    let skin_tone = if toned { tone_names(&entry.hexcode) } else { None };
    let caption = emoji_caption(&entry.annotation, &category, &entry.subgroups, &keywords);
    let subject = Subject::Emoji {
        name: entry.annotation.clone(),
        category,
        subcategory: entry.subgroups.clone(),
        keywords,
        skin_tone,
        codepoints: entry.hexcode.clone(),
    };
    ImageRecord::new(
        Source::Openmoji,
        entry.hexcode.to_lowercase(),
        split_for(&entry.hexcode, config),
        &image,
        caption,
        subject,
    )
}

/// OpenMoji's group slugs as the Unicode category names the Noto set uses ("food-drink" ->
/// "Food & Drink"); OpenMoji's own extra groups keep their slug.
fn category_name(group: &str) -> String {
    let name = match group {
        "smileys-emotion" => "Smileys & Emotion",
        "people-body" => "People & Body",
        "animals-nature" => "Animals & Nature",
        "food-drink" => "Food & Drink",
        "travel-places" => "Travel & Places",
        "activities" => "Activities",
        "objects" => "Objects",
        "symbols" => "Symbols",
        "flags" => "Flags",
        "component" => "Component",
        other => other,
    };
    name.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_map_onto_the_unicode_categories() {
        for group in [
            "smileys-emotion",
            "people-body",
            "animals-nature",
            "food-drink",
            "travel-places",
            "activities",
            "objects",
            "symbols",
            "flags",
        ] {
            assert!(super::super::emoji::CATEGORIES.contains(&category_name(group).as_str()), "{group}");
        }
        assert_eq!(category_name("extras-openmoji"), "extras-openmoji");
    }
}
