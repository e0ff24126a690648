//! Vision-language eval sets, all on images no training shard or instruction contains:
//! held-out CIFAR-10 photos, held-out emoji concepts, the 1:1 flag drawings, and pictures rendered
//! from BIG-bench's geometric_shapes and color tasks (which have no training counterpart at all).
use std::collections::{BTreeSet, HashMap};

use anyhow::{bail, Result};
use image::{Rgb, RgbImage};

use super::bigbench::{read_examples, rgb_triple, svg_path_data, task_path, Example};
use super::cifar::{with_article, LABELS};
use super::emoji::CATEGORIES;
use super::record::{pick, ImageRecord, Split, Subject};
use super::ImageConfig;
use vlmix_data::image_io;
use vlmix_data::vl_eval::{EvalItem, QuestionType};
use vlmix_data::DataLayout;

/// Side of the colour swatches: a flat colour needs no resolution.
const SWATCH_SIDE: u32 = 32;

/// The tasks' items and the images they reference (file name under `images/`, PNG bytes).
pub struct EvalSets {
    pub tasks: Vec<(String, Vec<EvalItem>)>,
    pub images: Vec<(String, Vec<u8>)>,
    /// Items left out, with the reason (e.g. flags drawn identically for two countries).
    pub left_out: Vec<String>,
}

pub fn build(layout: &DataLayout, heldout: &[&ImageRecord], config: &ImageConfig) -> Result<EvalSets> {
    if let Some(record) = heldout.iter().find(|r| r.split != Split::Heldout) {
        bail!("eval sets may only use held-out images, got {}", record.key);
    }
    let mut sets = EvalSets { tasks: Vec::new(), images: Vec::new(), left_out: Vec::new() };
    let mut used_records: BTreeSet<&str> = BTreeSet::new();

    let cifar: Vec<(&ImageRecord, &str)> = heldout
        .iter()
        .filter_map(|r| match &r.subject {
            Subject::Cifar { label, .. } => Some((*r, label.as_str())),
            _ => None,
        })
        .collect();
    let what: Vec<EvalItem> = cifar
        .iter()
        .map(|(r, label)| {
            used_records.insert(&r.key);
            item(
                "cifar10_what",
                &r.key,
                &r.key,
                "What object is shown in this image? Answer with one word.",
                label,
                QuestionType::Open,
                None,
            )
        })
        .collect();
    let mut pope = Vec::with_capacity(cifar.len() * 2);
    for (r, label) in &cifar {
        let absent: Vec<&str> = LABELS.iter().copied().filter(|l| l != label).collect();
        let absent = absent[pick(&format!("{}:pope-absent", r.key), absent.len())];
        for (object, answer) in [(*label, "yes"), (absent, "no")] {
            let question = format!("Is there {} in the image?", with_article(object));
            pope.push(item(
                "pope_cifar",
                &format!("{}-{answer}", r.key),
                &r.key,
                &question,
                answer,
                QuestionType::YesNo,
                None,
            ));
        }
    }
    sets.push("cifar10_what", what, 1.0 / LABELS.len() as f64);
    sets.push("pope_cifar", pope, 0.5);

    let categories: Vec<String> = CATEGORIES.iter().map(|c| c.to_string()).collect();
    let mut emoji = Vec::new();
    for r in heldout {
        if let Subject::Emoji { category, skin_tone: None, .. } = &r.subject {
            if categories.contains(category) {
                used_records.insert(&r.key);
                let question = "Which emoji category does this emoji belong to?";
                emoji.push(item(
                    "emoji_category",
                    &r.key,
                    &r.key,
                    question,
                    category,
                    QuestionType::Choice,
                    Some(categories.clone()),
                ));
            }
        }
    }
    sets.push("emoji_category", emoji, 1.0 / categories.len() as f64);

    let flags: Vec<(&ImageRecord, &str)> = heldout
        .iter()
        .filter_map(|r| match &r.subject {
            Subject::Flag { country, iso: true, .. } => Some((*r, country.as_str())),
            _ => None,
        })
        .collect();
    let mut countries_per_picture: HashMap<[u8; 32], BTreeSet<&str>> = HashMap::new();
    for (r, country) in &flags {
        countries_per_picture.entry(r.pixel_hash).or_default().insert(country);
    }
    let mut flag_items = Vec::new();
    for (r, country) in &flags {
        let sharing = &countries_per_picture[&r.pixel_hash];
        if sharing.len() > 1 {
            sets.left_out.push(format!("flag_country {}: the same picture is the flag of {sharing:?}", r.key));
            continue;
        }
        used_records.insert(&r.key);
        flag_items.push(item(
            "flag_country",
            &r.key,
            &r.key,
            "Which country does this flag belong to?",
            country,
            QuestionType::Open,
            None,
        ));
    }
    sets.push_open("flag_country", flag_items);

    for r in heldout.iter().filter(|r| used_records.contains(r.key.as_str())) {
        sets.images.push((format!("{}.png", r.key), r.png.clone()));
    }

    shapes(layout, config, &mut sets)?;
    colours(layout, config, &mut sets)?;
    Ok(sets)
}

impl EvalSets {
    fn push(&mut self, task: &str, mut items: Vec<EvalItem>, chance: f64) {
        for item in &mut items {
            item.chance = chance;
        }
        self.tasks.push((task.to_string(), items));
    }

    /// Open answers: chance is one over the number of distinct answers, the accuracy of a model
    /// that knows the answer set but not the image and guesses uniformly (CIFAR-10 uses its ten
    /// labels, which a subset may not all reach).
    fn push_open(&mut self, task: &str, items: Vec<EvalItem>) {
        let distinct: BTreeSet<&str> = items.iter().map(|i| i.answers[0].as_str()).collect();
        let chance = if distinct.is_empty() { 0.0 } else { 1.0 / distinct.len() as f64 };
        self.push(task, items, chance);
    }
}

fn item(
    task: &str,
    id: &str,
    image_key: &str,
    question: &str,
    answer: &str,
    kind: QuestionType,
    choices: Option<Vec<String>>,
) -> EvalItem {
    EvalItem {
        id: id.to_string(),
        task: task.to_string(),
        image: format!("images/{image_key}.png"),
        question: question.to_string(),
        answers: vec![answer.to_string()],
        kind,
        choices,
        chance: 0.0,
    }
}

/// geometric_shapes: the path drawn as a black stroke. Where BIG-bench scores two names correct
/// (circle/ellipse, rectangle/trapezoid) the alternative is removed from the choices, leaving
/// one gold answer, since vlmix-eval scores only `answers[0]`.
fn shapes(layout: &DataLayout, config: &ImageConfig, sets: &mut EvalSets) -> Result<()> {
    let path = task_path(layout, "geometric_shapes")?;
    let examples: Vec<(usize, Example)> = read_examples(&path)?.into_iter().enumerate().collect();
    let mut items = Vec::new();
    for (index, example) in config.subset(&examples) {
        let at = || format!("{} example {index}", path.display());
        let Some(d) = svg_path_data(&example.input) else { bail!("{}: no <path d=...> in the input", at()) };
        let correct = example.correct();
        let Some(gold) = correct.first() else { bail!("{}: no correct shape", at()) };
        let choices: Vec<String> =
            example.target_scores.keys().filter(|k| *k == gold || !correct.contains(k)).cloned().collect();
        let image = image_io::rasterize_path(d, config.max_side).map_err(|err| anyhow::anyhow!("{}: {err:#}", at()))?;
        let key = format!("bigbench_shape_{index:03}");
        sets.images.push((format!("{key}.png"), image_io::encode_png(&image)?));
        let mut it = item(
            "geometric_shapes",
            &key,
            &key,
            "Which shape is drawn in this image?",
            gold,
            QuestionType::Choice,
            Some(choices),
        );
        it.chance = 1.0 / it.choices.as_ref().map_or(1, Vec::len) as f64;
        items.push(it);
    }
    sets.tasks.push(("geometric_shapes".into(), items));
    Ok(())
}

/// color/rgb: a flat swatch of the rgb triple; choices are BIG-bench's ten colour names.
fn colours(layout: &DataLayout, config: &ImageConfig, sets: &mut EvalSets) -> Result<()> {
    let path = task_path(layout, "color/rgb")?;
    let examples: Vec<(usize, Example)> = read_examples(&path)?.into_iter().enumerate().collect();
    let mut items = Vec::new();
    for (index, example) in config.subset(&examples) {
        let at = || format!("{} example {index}", path.display());
        let Some(rgb) = rgb_triple(&example.input) else { bail!("{}: no rgb(r, g, b) in the input", at()) };
        let correct = example.correct();
        let Some(gold) = correct.first() else { bail!("{}: no correct colour", at()) };
        let choices: Vec<String> = example.target_scores.keys().cloned().collect();
        let key = format!("bigbench_color_{index:04}");
        sets.images.push((
            format!("{key}.png"),
            image_io::encode_png(&RgbImage::from_pixel(SWATCH_SIDE, SWATCH_SIDE, Rgb(rgb)))?,
        ));
        let mut it =
            item("color_swatch", &key, &key, "What colour is this?", gold, QuestionType::Choice, Some(choices));
        it.chance = 1.0 / it.choices.as_ref().map_or(1, Vec::len) as f64;
        items.push(it);
    }
    sets.tasks.push(("color_swatch".into(), items));
    Ok(())
}
