//! Vision-language eval sets, all on images no training shard or instruction contains:
//! held-out Fashion-MNIST photos, held-out emoji concepts, the 1:1 flag drawings, and two tasks
//! generated from a documented rule (polygons, colour swatches) with no training counterpart.
use std::collections::{BTreeSet, HashMap};

use anyhow::{bail, Result};
use image::{Rgb, RgbImage};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::emoji::CATEGORIES;
use super::fashion::{with_article, LABELS};
use super::record::{pick, ImageRecord, Source, Split, Subject};
use super::ImageConfig;
use vlmix_data::image_io;
use vlmix_data::vl_eval::prepared::{COLOR_NAME, EMOJI_CATEGORY, FASHION_WHAT, FLAG_COUNTRY, POPE_FASHION, SHAPE_NAME};
use vlmix_data::vl_eval::{EvalItem, QuestionType};

/// Side of the colour swatches: a flat colour needs no resolution.
const SWATCH_SIDE: u32 = 32;

/// The eval tasks built from each image source's held-out images: without the source, they are lost.
pub fn tasks_of(source: Source) -> &'static [&'static str] {
    match source {
        Source::FashionMnist => &[FASHION_WHAT, POPE_FASHION],
        Source::NotoEmoji => &[EMOJI_CATEGORY],
        Source::FlagIcons => &[FLAG_COUNTRY],
        Source::Openclipart | Source::Tuxpaint | Source::Openmoji => &[],
    }
}

/// The tasks' items and the images they reference (file name under `images/`, PNG bytes).
pub struct EvalSets {
    pub tasks: Vec<(String, Vec<EvalItem>)>,
    pub images: Vec<(String, Vec<u8>)>,
    /// Items left out, with the reason (e.g. flags drawn identically for two countries).
    pub left_out: Vec<String>,
}

/// Builds every task whose images are here; `missing` sources' tasks are left out (the caller names them).
pub fn build(heldout: &[&ImageRecord], config: &ImageConfig, missing: &[Source]) -> Result<EvalSets> {
    if let Some(record) = heldout.iter().find(|r| r.split != Split::Heldout) {
        bail!("eval sets may only use held-out images, got {}", record.key);
    }
    let mut sets = EvalSets { tasks: Vec::new(), images: Vec::new(), left_out: Vec::new() };
    let mut used_records: BTreeSet<&str> = BTreeSet::new();

    let fashion: Vec<(&ImageRecord, &str)> = heldout
        .iter()
        .filter_map(|r| match &r.subject {
            Subject::Fashion { label, .. } => Some((*r, label.as_str())),
            _ => None,
        })
        .collect();
    let what: Vec<EvalItem> = fashion
        .iter()
        .map(|(r, label)| {
            used_records.insert(&r.key);
            item(
                FASHION_WHAT,
                &r.key,
                &r.key,
                "What object is shown in this image? Answer with one word.",
                label,
                QuestionType::Open,
                None,
            )
        })
        .collect();
    let mut pope = Vec::with_capacity(fashion.len() * 2);
    for (r, label) in &fashion {
        let absent: Vec<&str> = LABELS.iter().copied().filter(|l| l != label).collect();
        let absent = absent[pick(&format!("{}:pope-absent", r.key), absent.len())];
        for (object, answer) in [(*label, "yes"), (absent, "no")] {
            let question = format!("Is there {} in the image?", with_article(object));
            pope.push(item(
                POPE_FASHION,
                &format!("{}-{answer}", r.key),
                &r.key,
                &question,
                answer,
                QuestionType::YesNo,
                None,
            ));
        }
    }
    if !missing.contains(&Source::FashionMnist) {
        sets.push(FASHION_WHAT, what, 1.0 / LABELS.len() as f64);
        sets.push(POPE_FASHION, pope, 0.5);
    }

    let categories: Vec<String> = CATEGORIES.iter().map(|c| c.to_string()).collect();
    let mut emoji = Vec::new();
    for r in heldout {
        if let Subject::Emoji { category, skin_tone: None, .. } = &r.subject {
            if categories.contains(category) {
                used_records.insert(&r.key);
                let question = "Which emoji category does this emoji belong to?";
                emoji.push(item(
                    EMOJI_CATEGORY,
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
    if !missing.contains(&Source::NotoEmoji) {
        sets.push(EMOJI_CATEGORY, emoji, 1.0 / categories.len() as f64);
    }

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
            sets.left_out.push(format!("{FLAG_COUNTRY} {}: the same picture is the flag of {sharing:?}", r.key));
            continue;
        }
        used_records.insert(&r.key);
        flag_items.push(item(
            FLAG_COUNTRY,
            &r.key,
            &r.key,
            "Which country does this flag belong to?",
            country,
            QuestionType::Open,
            None,
        ));
    }
    if !missing.contains(&Source::FlagIcons) {
        sets.push_open(FLAG_COUNTRY, flag_items);
    }

    for r in heldout.iter().filter(|r| used_records.contains(r.key.as_str())) {
        sets.images.push((format!("{}.png", r.key), r.png.clone()));
    }

    shapes(config, &mut sets)?;
    colours(config, &mut sets)?;
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
    /// that knows the answer set but not the image and guesses uniformly (Fashion-MNIST uses its
    /// ten labels, which a subset may not all reach).
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

/// Items per class of the generated tasks. Items are shuffled with a fixed seed after generation,
/// so the first N of a file (what a study scores) stay near balanced.
const PER_CLASS: usize = 60;

/// The shapes of [`SHAPE_NAME`]: regular polygons by their number of sides, and a circle.
pub const SHAPES: [(&str, usize); 7] =
    [("triangle", 3), ("square", 4), ("pentagon", 5), ("hexagon", 6), ("heptagon", 7), ("octagon", 8), ("circle", 0)];

/// shape_name, by rule: a regular polygon with n sides (or a circle), at a random rotation, drawn
/// as a black outline on white; seven choices, chance 1/7.
fn shapes(config: &ImageConfig, sets: &mut EvalSets) -> Result<()> {
    let mut rng = ChaCha8Rng::seed_from_u64(0x5a4e);
    let mut drawn = Vec::new();
    for (name, sides) in SHAPES {
        for _ in 0..PER_CLASS {
            let turn = rng.gen_range(0.0..std::f64::consts::TAU);
            drawn.push((name, shape_path(sides, turn)));
        }
    }
    drawn.shuffle(&mut rng);
    let choices: Vec<String> = SHAPES.iter().map(|(name, _)| name.to_string()).collect();
    let mut items = Vec::new();
    let indexed: Vec<(usize, &(&str, String))> = drawn.iter().enumerate().collect();
    for (index, (name, d)) in config.subset(&indexed) {
        let image = image_io::rasterize_path(d, config.max_side)?;
        let key = format!("shape_{index:03}");
        sets.images.push((format!("{key}.png"), image_io::encode_png(&image)?));
        let question = "Which shape is drawn in this image?";
        items.push(item(SHAPE_NAME, &key, &key, question, name, QuestionType::Choice, Some(choices.clone())));
    }
    sets.push(SHAPE_NAME, items, 1.0 / choices.len() as f64);
    Ok(())
}

/// SVG path data of a regular polygon with `sides` corners on a circle of radius 40 around (50, 50),
/// turned by `turn` radians; `sides == 0` is the circle itself (two arcs).
fn shape_path(sides: usize, turn: f64) -> String {
    if sides == 0 {
        return "M 90,50 A 40,40 0 1,0 10,50 A 40,40 0 1,0 90,50 Z".to_string();
    }
    let corners: Vec<String> = (0..sides)
        .map(|k| {
            let angle = turn + std::f64::consts::TAU * k as f64 / sides as f64;
            format!("{:.2},{:.2}", 50.0 + 40.0 * angle.cos(), 50.0 + 40.0 * angle.sin())
        })
        .collect();
    format!("M {} Z", corners.join(" L "))
}

/// The colours of [`COLOR_NAME`] with their prototype sRGB values. No grey: the blind control
/// shows a blank image, which must not be an answer.
pub const COLOURS: [(&str, [u8; 3]); 10] = [
    ("red", [215, 35, 35]),
    ("orange", [240, 140, 25]),
    ("yellow", [240, 220, 40]),
    ("green", [40, 160, 60]),
    ("blue", [35, 75, 200]),
    ("purple", [130, 55, 170]),
    ("pink", [245, 135, 185]),
    ("brown", [125, 80, 40]),
    ("black", [20, 20, 20]),
    ("white", [240, 240, 240]),
];

/// The colour named by the rule: the prototype nearest in RGB.
pub fn nearest_colour(rgb: [u8; 3]) -> &'static str {
    let distance = |p: &[u8; 3]| (0..3).map(|c| (rgb[c] as i32 - p[c] as i32).pow(2)).sum::<i32>();
    COLOURS.iter().min_by_key(|(_, p)| distance(p)).expect("colours").0
}

/// color_name, by rule: a flat swatch of a prototype colour moved by up to 30 per channel, kept
/// only while that prototype is still the nearest (so every answer follows from the pixels);
/// ten choices, chance 1/10.
fn colours(config: &ImageConfig, sets: &mut EvalSets) -> Result<()> {
    let mut rng = ChaCha8Rng::seed_from_u64(0xc0102);
    let mut swatches = Vec::new();
    for (name, prototype) in COLOURS {
        while swatches.iter().filter(|(n, _)| *n == name).count() < PER_CLASS {
            let rgb = prototype.map(|v| (v as i32 + rng.gen_range(-30..=30)).clamp(0, 255) as u8);
            if nearest_colour(rgb) == name {
                swatches.push((name, rgb));
            }
        }
    }
    swatches.shuffle(&mut rng);
    let choices: Vec<String> = COLOURS.iter().map(|(name, _)| name.to_string()).collect();
    let mut items = Vec::new();
    let indexed: Vec<(usize, &(&str, [u8; 3]))> = swatches.iter().enumerate().collect();
    for (index, (name, rgb)) in config.subset(&indexed) {
        let key = format!("color_{index:03}");
        let swatch = RgbImage::from_pixel(SWATCH_SIDE, SWATCH_SIDE, Rgb(*rgb));
        sets.images.push((format!("{key}.png"), image_io::encode_png(&swatch)?));
        items.push(item(
            COLOR_NAME,
            &key,
            &key,
            "What colour is this?",
            name,
            QuestionType::Choice,
            Some(choices.clone()),
        ));
    }
    sets.push(COLOR_NAME, items, 1.0 / choices.len() as f64);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_swatch_prototype_is_its_own_nearest_and_grey_is_no_answer() {
        for (name, prototype) in COLOURS {
            assert_eq!(nearest_colour(prototype), name);
        }
        assert!(COLOURS.iter().all(|(name, _)| !["gray", "grey"].contains(name)));
    }

    #[test]
    fn generated_tasks_are_balanced_shuffled_and_reproducible() {
        let config = ImageConfig { max_side: 32, ..ImageConfig::default() };
        let build = || {
            let mut sets = EvalSets { tasks: Vec::new(), images: Vec::new(), left_out: Vec::new() };
            shapes(&config, &mut sets).unwrap();
            colours(&config, &mut sets).unwrap();
            sets
        };
        let (a, b) = (build(), build());
        assert_eq!(a.images, b.images);
        for (task, items) in &a.tasks {
            let classes = if task == SHAPE_NAME { SHAPES.len() } else { COLOURS.len() };
            assert_eq!(items.len(), classes * PER_CLASS);
            let first: BTreeSet<&str> = items[..3 * classes].iter().map(|i| i.answers[0].as_str()).collect();
            assert!(first.len() > classes / 2, "{task}: the first items are not shuffled: {first:?}");
            assert!((items[0].chance - 1.0 / classes as f64).abs() < 1e-12);
        }
    }
}
