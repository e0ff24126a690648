//! Tux Paint's default stamps (Debian tuxpaint-stamps-default): each stamp is `name.png` or
//! `name.svg` beside `name.txt`, whose first line is the English description and whose other lines
//! are `lang.utf8=` translations.
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use rayon::prelude::*;

use super::record::{bucket, ImageRecord, Source, Split, Subject};
use super::{regular_files, require_dir, ImageConfig, SourceOutput};
use vlmix_data::{image_io, DataLayout};

const STAMPS_DIR: &str = "usr/share/tuxpaint/stamps";

pub fn load(layout: &DataLayout, config: &ImageConfig) -> Result<SourceOutput> {
    let root = require_dir(&layout.require_source("tuxpaint-stamps-default")?.join(STAMPS_DIR))?;
    let texts: Vec<PathBuf> =
        regular_files(&root)?.into_iter().filter(|p| p.extension().is_some_and(|e| e == "txt")).collect();
    let results: Vec<Result<ImageRecord, String>> = config
        .subset(&texts)
        .par_iter()
        .map(|txt| one(&root, txt, config).map_err(|err| format!("{}: {err:#}", txt.display())))
        .collect();
    Ok(SourceOutput::from_results(results))
}

fn one(root: &Path, txt: &Path, config: &ImageConfig) -> Result<ImageRecord> {
    let description = english_description(&std::fs::read_to_string(txt).context("reading description")?)?;
    // Tux Paint itself prefers a stamp's PNG, drawn at full size by the artist, over its SVG.
    let png = txt.with_extension("png");
    let svg = txt.with_extension("svg");
    let image = if png.is_file() {
        image_io::decode_rgb(&std::fs::read(&png).context("reading PNG")?).context("decoding PNG")?
    } else if svg.is_file() {
        image_io::rasterize_svg(&std::fs::read(&svg).context("reading SVG")?, config.max_side)
            .context("rasterising SVG")?
    } else {
        bail!("description without a .png or .svg image");
    };
    let image = image_io::fit_within(image, config.max_side);
    let rel = txt.strip_prefix(root).expect("walked under root").with_extension("");
    let origin = rel.to_string_lossy().replace('\\', "/");
    let category: Vec<String> =
        rel.parent().map(|p| p.iter().map(|c| c.to_string_lossy().replace('_', " ")).collect()).unwrap_or_default();
    let split =
        if bucket(&format!("tuxpaint:{origin}")) < config.heldout_percent { Split::Heldout } else { Split::Train };
    let caption = description.clone();
    ImageRecord::new(Source::Tuxpaint, origin, split, &image, caption, Subject::Stamp { description, category })
}

/// The first line that is not a `lang.utf8=` translation.
fn english_description(text: &str) -> Result<String> {
    let is_translation =
        |line: &str| line.split_once('=').is_some_and(|(lang, _)| lang.ends_with(".utf8") && !lang.contains(' '));
    match text.lines().map(str::trim).find(|line| !line.is_empty() && !is_translation(line)) {
        Some(line) => Ok(line.to_string()),
        None => bail!("no English description line"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn english_line_is_found_and_translations_skipped() {
        let text = "A calculator.  6x7=42\nach.utf8=Kalkuleta.\n";
        assert_eq!(english_description(text).unwrap(), "A calculator.  6x7=42");
        assert!(english_description("de.utf8=Hallo\n\n").is_err());
    }
}
