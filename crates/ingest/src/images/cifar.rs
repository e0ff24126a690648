//! The CIFAR-10 test set (10,000 labelled 32 px photos) shipped base64-encoded in BIG-bench's
//! cifar10_classification task. Captions come from the label; images stay 32 px (see image_io).
use anyhow::{bail, Context, Result};
use base64::Engine;
use rayon::prelude::*;

use super::bigbench::{read_examples, task_path, Example};
use super::record::{bucket, pick, ImageRecord, Source, Split, Subject};
use super::{ImageConfig, SourceOutput};
use vlmix_data::{image_io, DataLayout};

pub const LABELS: [&str; 10] =
    ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"];
pub const VEHICLES: [&str; 4] = ["airplane", "automobile", "ship", "truck"];

const CAPTIONS: [&str; 4] =
    ["A photo of {}.", "A small, low-resolution photo of {}.", "A picture showing {}.", "{} in a tiny photograph."];

pub fn load(layout: &DataLayout, config: &ImageConfig) -> Result<SourceOutput> {
    let path = task_path(layout, "cifar10_classification/base64")?;
    let examples = read_examples(&path)?;
    let indexed: Vec<(usize, &Example)> = examples.iter().enumerate().collect();
    let results: Vec<Result<ImageRecord, String>> = config
        .subset(&indexed)
        .par_iter()
        .map(|&&(index, example)| {
            one(index, example, config).map_err(|err| format!("{} example {index}: {err:#}", path.display()))
        })
        .collect();
    Ok(SourceOutput::from_results(results))
}

fn one(index: usize, example: &Example, config: &ImageConfig) -> Result<ImageRecord> {
    let label = match example.correct().as_slice() {
        [label] if LABELS.contains(&label.as_str()) => label.clone(),
        other => bail!("expected one CIFAR-10 label, got {other:?}"),
    };
    let bytes = base64::engine::general_purpose::STANDARD.decode(example.input.trim()).context("bad base64")?;
    let image = image_io::fit_within(image_io::decode_rgb(&bytes)?, config.max_side);
    let origin = format!("{index:05}");
    let split =
        if bucket(&format!("cifar10:{origin}")) < config.cifar_heldout_percent { Split::Heldout } else { Split::Train };
    let template = CAPTIONS[pick(&format!("cifar10-caption:{origin}"), CAPTIONS.len())];
    let caption = capitalise(&template.replace("{}", &with_article(&label)));
    ImageRecord::new(Source::Cifar10, origin, split, &image, caption, Subject::Cifar { label, index })
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

    #[test]
    fn articles_and_capitals() {
        assert_eq!(capitalise(&with_article("airplane")), "An airplane");
        assert_eq!(with_article("truck"), "a truck");
    }
}
