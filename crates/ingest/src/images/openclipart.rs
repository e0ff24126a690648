//! Open Clip Art Library 0.18 (Debian openclipart-png + openclipart-svg): the PNG renderings, with
//! title, description and keywords read from the RDF metadata of the matching SVG.
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use rayon::prelude::*;

use super::record::{bucket, ImageRecord, Source, Split, Subject};
use super::{regular_files, require_dir, ImageConfig, SourceOutput};
use vlmix_data::{image_io, DataLayout};

const PNG_DIR: &str = "usr/share/openclipart/png";
const SVG_DIR: &str = "usr/share/openclipart/svg";

/// Keywords that say nothing about the picture (collection bookkeeping, tool names).
const EMPTY_KEYWORDS: &[&str] =
    &["", "hash", "unsorted", "clip art", "clipart", "image", "media", "png", "svg", "public domain", "externalsource"];

/// A title shared by more than this many drawings names a collection ("Part of the Flat Icon
/// Collection (date)", "Lemon SVG theme"), not the picture: the file name is used instead.
const GENERIC_TITLE_USES: usize = 3;

pub fn load(layout: &DataLayout, config: &ImageConfig) -> Result<SourceOutput> {
    let png_root = require_dir(&layout.require_source("openclipart-png")?.join(PNG_DIR))?;
    let svg_root = require_dir(&layout.require_source("openclipart-svg")?.join(SVG_DIR))?;
    let files: Vec<_> =
        regular_files(&png_root)?.into_iter().filter(|p| p.extension().is_some_and(|e| e == "png")).collect();
    let origins: Vec<String> = files
        .iter()
        .map(|png| {
            png.strip_prefix(&png_root)
                .expect("walked under root")
                .with_extension("")
                .to_string_lossy()
                .replace('\\', "/")
        })
        .collect();
    // Titles are counted over the whole collection so that a subset captions like the full run.
    let metadata: Vec<Option<RdfMetadata>> = origins
        .par_iter()
        .map(|origin| std::fs::read(svg_root.join(format!("{origin}.svg"))).ok().and_then(|svg| rdf_metadata(&svg)))
        .collect();
    let mut title_uses: HashMap<String, usize> = HashMap::new();
    for title in metadata.iter().flatten().filter_map(|m| m.title.as_deref()) {
        *title_uses.entry(title_family(title)).or_default() += 1;
    }
    let jobs: Vec<(&PathBuf, &String, &Option<RdfMetadata>)> =
        files.iter().zip(&origins).zip(&metadata).map(|((f, o), m)| (f, o, m)).collect();
    let results: Vec<Result<ImageRecord, String>> = config
        .subset(&jobs)
        .par_iter()
        .map(|&&(png, origin, meta)| {
            let generic = |title: &str| title_uses.get(&title_family(title)).is_some_and(|&n| n > GENERIC_TITLE_USES);
            one(png, &svg_root.join(format!("{origin}.svg")), origin.clone(), meta.as_ref(), generic, config)
                .map_err(|err| format!("{}: {err:#}", png.display()))
        })
        .collect();
    Ok(SourceOutput::from_results(results))
}

/// A title without parenthesised parts (dates, versions), lower-cased.
fn title_family(title: &str) -> String {
    title.split('(').next().unwrap_or(title).trim().to_lowercase()
}

fn one(
    png: &Path,
    svg: &Path,
    origin: String,
    meta: Option<&RdfMetadata>,
    generic: impl Fn(&str) -> bool,
    config: &ImageConfig,
) -> Result<ImageRecord> {
    let bytes = std::fs::read(png).context("reading PNG")?;
    let image = match image_io::decode_rgb(&bytes) {
        Ok(image) => image_io::fit_within(image, config.max_side),
        // A few renderings are ~15,000 px square, past the decoder's memory limit; the SVG they
        // were rendered from draws the same picture directly at the size kept.
        Err(png_error) => {
            let svg_bytes = std::fs::read(svg).map_err(|_| png_error)?;
            image_io::rasterize_svg(&svg_bytes, config.max_side).context("the PNG is unreadable and so is its SVG")?
        }
    };
    let folders: Vec<&str> = origin.split('/').collect();
    let category: Vec<String> = folders[..folders.len() - 1].iter().map(|f| humanise(f)).collect();
    let stem = humanise(folders[folders.len() - 1]);
    let title = meta.and_then(|m| m.title.clone()).filter(|t| !generic(t)).unwrap_or(stem);
    let description = meta.and_then(|m| m.description.clone());
    let keywords = meta.map(|m| m.keywords.clone()).unwrap_or_default();
    let mut caption = format!("Clip art: {}.", title.trim_end_matches('.'));
    if let Some(description) = &description {
        caption.push(' ');
        caption.push_str(description);
        if !description.ends_with(['.', '!', '?']) {
            caption.push('.');
        }
    }
    if !keywords.is_empty() {
        caption.push_str(&format!(" Keywords: {}.", keywords.join(", ")));
    }
    let split =
        if bucket(&format!("openclipart:{origin}")) < config.heldout_percent { Split::Heldout } else { Split::Train };
    let subject = Subject::Clipart { title, description, keywords, category };
    ImageRecord::new(Source::Openclipart, origin, split, &image, caption, subject)
}

/// Title, description and keywords of an SVG's `cc:Work`, or None when the SVG does not parse.
pub struct RdfMetadata {
    pub title: Option<String>,
    pub description: Option<String>,
    pub keywords: Vec<String>,
}

pub fn rdf_metadata(svg: &[u8]) -> Option<RdfMetadata> {
    let text = String::from_utf8_lossy(svg);
    let options = roxmltree::ParsingOptions { allow_dtd: true, ..Default::default() };
    let doc = roxmltree::Document::parse_with_options(&text, options).ok()?;
    let work = doc.descendants().find(|n| n.tag_name().name() == "Work")?;
    let child_text = |name: &str| {
        work.children()
            .find(|n| n.tag_name().name() == name)
            .map(|n| clean(&n.descendants().filter(|d| d.is_text()).filter_map(|d| d.text()).collect::<String>()))
            .filter(|t| !t.is_empty())
    };
    let mut keywords: Vec<String> = Vec::new();
    if let Some(subject) = work.children().find(|n| n.tag_name().name() == "subject") {
        for li in subject.descendants().filter(|n| n.tag_name().name() == "li") {
            let word = clean(li.text().unwrap_or("")).to_lowercase();
            let junk = EMPTY_KEYWORDS.contains(&word.as_str()) || word.starts_with("0x") || word.len() > 40;
            if !junk && !keywords.contains(&word) {
                keywords.push(word);
            }
        }
    }
    let description = child_text("description").map(|d| shorten(&d, 300));
    Some(RdfMetadata { title: child_text("title"), description, keywords })
}

fn clean(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Cuts at a word boundary to at most `max` bytes.
fn shorten(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut cut = max;
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    let head = &text[..cut];
    head[..head.rfind(' ').unwrap_or(cut)].trim_end_matches([',', ';', ' ']).to_string()
}

/// "dog_03_drawn_with_strai_01" -> "dog 03 drawn with strai".
fn humanise(stem: &str) -> String {
    let words: Vec<&str> = stem.split(['_', '-', ' ']).filter(|w| !w.is_empty()).collect();
    let trimmed = match words.last() {
        Some(last) if words.len() > 1 && last.chars().all(|c| c.is_ascii_digit()) => &words[..words.len() - 1],
        _ => &words[..],
    };
    trimmed.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rdf_title_description_and_clean_keywords() {
        let svg = br#"<svg xmlns="http://www.w3.org/2000/svg" xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#" xmlns:cc="http://web.resource.org/cc/" xmlns:dc="http://purl.org/dc/elements/1.1/"><metadata><rdf:RDF><cc:Work rdf:about=""><dc:title>Red  apple</dc:title><dc:description>A shiny
            fruit</dc:description><dc:subject><rdf:Bag><rdf:li>Fruit</rdf:li><rdf:li></rdf:li><rdf:li>0x935a874</rdf:li><rdf:li>hash</rdf:li><rdf:li>fruit</rdf:li><rdf:li>food</rdf:li></rdf:Bag></dc:subject><dc:publisher><cc:Agent><dc:title>Someone</dc:title></cc:Agent></dc:publisher></cc:Work></rdf:RDF></metadata></svg>"#;
        let meta = rdf_metadata(svg).unwrap();
        assert_eq!(meta.title.as_deref(), Some("Red apple"));
        assert_eq!(meta.description.as_deref(), Some("A shiny fruit"));
        assert_eq!(meta.keywords, ["fruit", "food"]);
        assert!(rdf_metadata(b"<svg><unclosed></svg>").is_none());
    }

    #[test]
    fn file_stems_become_words() {
        assert_eq!(humanise("dog_03_drawn_with_strai_01"), "dog 03 drawn with strai");
        assert_eq!(humanise("malawi"), "malawi");
        assert_eq!(shorten("one two three", 9), "one two");
        assert_eq!(
            title_family("Part of the Flat Icon Collection (Wed Aug 25 2004)"),
            "part of the flat icon collection"
        );
    }
}
