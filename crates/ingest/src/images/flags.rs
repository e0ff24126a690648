//! flag-icons 7.5 (npm): every flag as a 4:3 SVG and a 1:1 SVG, with the country or region's name,
//! capital and continent from `country.json`.
//!
//! The 4:3 drawings are training images; the 1:1 drawings (re-composed for a square, never the
//! same picture) are held out, so "which country is this flag?" is asked of unseen images of
//! flags whose country the model has read about.
use std::path::Path;

use anyhow::{Context, Result};
use rayon::prelude::*;
use serde::Deserialize;

use super::record::{ImageRecord, Source, Split, Subject};
use super::{require_dir, ImageConfig, SourceOutput};
use vlmix_data::{image_io, DataLayout};

const PACKAGE_DIR: &str = "package";

#[derive(Deserialize)]
struct Country {
    code: String,
    name: String,
    capital: Option<String>,
    continent: Option<String>,
    #[serde(default)]
    iso: bool,
}

pub fn load(layout: &DataLayout, config: &ImageConfig) -> Result<SourceOutput> {
    let root = require_dir(&layout.require_source("flag-icons")?.join(PACKAGE_DIR))?;
    let index = root.join("country.json");
    let countries: Vec<Country> =
        serde_json::from_slice(&std::fs::read(&index).with_context(|| format!("reading {}", index.display()))?)
            .with_context(|| format!("parsing {}", index.display()))?;
    let jobs: Vec<(&Country, &str, Split)> =
        countries.iter().flat_map(|c| [(c, "4x3", Split::Train), (c, "1x1", Split::Heldout)]).collect();
    let results: Vec<Result<ImageRecord, String>> = config
        .subset(&jobs)
        .par_iter()
        .map(|(country, aspect, split)| {
            let path = root.join("flags").join(aspect).join(format!("{}.svg", country.code));
            one(&path, country, aspect, *split, config).map_err(|err| format!("{}: {err:#}", path.display()))
        })
        .collect();
    Ok(SourceOutput::from_results(results))
}

fn one(path: &Path, country: &Country, aspect: &str, split: Split, config: &ImageConfig) -> Result<ImageRecord> {
    let image = image_io::rasterize_svg(&std::fs::read(path).context("reading SVG")?, config.max_side)?;
    let mut caption = format!("The flag of {}.", country.name);
    if let Some(capital) = &country.capital {
        caption.push_str(&format!(" Capital: {capital}."));
    }
    if let Some(continent) = &country.continent {
        caption.push_str(&format!(" Continent: {continent}."));
    }
    let subject = Subject::Flag {
        country: country.name.clone(),
        code: country.code.clone(),
        capital: country.capital.clone(),
        continent: country.continent.clone(),
        iso: country.iso,
        aspect: aspect.to_string(),
    };
    ImageRecord::new(Source::FlagIcons, format!("{aspect}/{}", country.code), split, &image, caption, subject)
}
