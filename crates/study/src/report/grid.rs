//! Reading the grid out of the results table: which knob each figure varies, the series drawn
//! for it (seeds averaged), and the marginal means the "what this grid says" table ranks.

use super::results_table::{percent, ResultRow};
use vlmix_eval::stats::{contrast, SeedNoise, SeedRun, Statistic};
use vlmix_eval::{Interval, Modality};

/// A knob of the study that a figure puts on its x axis.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Knob {
    Introduction,
    ImageTokenFraction,
    InstructionShare,
    FinetuneEpochs,
}

impl Knob {
    pub const ALL: [Knob; 4] =
        [Knob::Introduction, Knob::ImageTokenFraction, Knob::InstructionShare, Knob::FinetuneEpochs];

    /// The row's x value in display units (percent for shares, count for epochs); None for a
    /// text-only model, which has no image knobs.
    pub fn value(self, row: &ResultRow) -> Option<f64> {
        row.introduction?;
        Some(match self {
            Knob::Introduction => row.introduction? * 100.0,
            Knob::ImageTokenFraction => row.image_token_fraction * 100.0,
            Knob::InstructionShare => row.instruction_share * 100.0,
            Knob::FinetuneEpochs => f64::from(row.finetune_epochs),
        })
    }

    /// File-name stem of the knob's figure.
    pub fn slug(self) -> &'static str {
        match self {
            Knob::Introduction => "stable_vs_introduction",
            Knob::ImageTokenFraction => "stable_vs_image_token_fraction",
            Knob::InstructionShare => "stable_vs_instruction_share",
            Knob::FinetuneEpochs => "stable_vs_finetune_epochs",
        }
    }

    pub fn axis_label(self) -> &'static str {
        match self {
            Knob::Introduction => "images introduced at % of text pre-training",
            Knob::ImageTokenFraction => "image tokens in cooldown (%)",
            Knob::InstructionShare => "instruction data in image mix (%)",
            Knob::FinetuneEpochs => "fine-tuning epochs",
        }
    }

    /// Short name used in series labels and findings.
    pub fn short_name(self) -> &'static str {
        match self {
            Knob::Introduction => "intro",
            Knob::ImageTokenFraction => "img",
            Knob::InstructionShare => "instr",
            Knob::FinetuneEpochs => "ft",
        }
    }

    /// A value of this knob as text ("80 %", "2 ep").
    pub fn format(self, value: f64) -> String {
        match self {
            Knob::FinetuneEpochs => format!("{value} ep"),
            _ => format!("{} %", percent(value / 100.0)),
        }
    }
}

/// Which stable score a figure panel or finding reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Score {
    Vision,
    Text,
}

impl Score {
    pub fn of(self, row: &ResultRow) -> Option<f64> {
        match self {
            Score::Vision => row.vision_stable_score,
            Score::Text => row.text_stable_score,
        }
        .filter(|v| v.is_finite())
    }

    pub fn name(self) -> &'static str {
        match self {
            Score::Vision => "vision",
            Score::Text => "text",
        }
    }

    fn modality(self) -> Modality {
        match self {
            Score::Vision => Modality::Vision,
            Score::Text => Modality::Text,
        }
    }
}

/// Rows equal in every knob but the seed share this key: replicates of one configuration.
pub fn replicate_key(row: &ResultRow) -> String {
    format!(
        "{}|{:?}|{}|{}|{}|{}",
        row.stage,
        row.introduction,
        row.fresh_schedule,
        row.image_token_fraction,
        row.instruction_share,
        row.finetune_epochs
    )
}

/// Pooled seed noise of `value` over the image-trained configurations with several seeds.
pub fn seed_noise(rows: &[ResultRow], value: impl Fn(&ResultRow) -> Option<f64>) -> Option<SeedNoise> {
    seed_noise_of(rows, |_| true, value)
}

/// Seed noise of the configurations `compared` (pooled over those with replicates), else of every
/// configuration: training noise differs by configuration (one fine-tuning epoch spreads seeds far
/// wider than two), so a contrast carries its own arms' noise where they were replicated.
pub fn seed_noise_at(
    rows: &[ResultRow],
    compared: &[&ResultRow],
    value: impl Fn(&ResultRow) -> Option<f64>,
) -> Option<SeedNoise> {
    let keys: Vec<String> = compared.iter().map(|r| replicate_key(r)).collect();
    seed_noise_of(rows, |r| keys.contains(&replicate_key(r)), &value).or_else(|| seed_noise(rows, value))
}

fn seed_noise_of(
    rows: &[ResultRow],
    include: impl Fn(&ResultRow) -> bool,
    value: impl Fn(&ResultRow) -> Option<f64>,
) -> Option<SeedNoise> {
    let values: Vec<Vec<f64>> =
        replicate_groups(rows, include).iter().map(|g| g.iter().filter_map(|r| value(r)).collect()).collect();
    SeedNoise::pooled(&values)
}

/// The image-trained rows `include` admits, grouped by configuration (rows that differ only in seed).
pub fn replicate_groups(rows: &[ResultRow], include: impl Fn(&ResultRow) -> bool) -> Vec<Vec<&ResultRow>> {
    let mut groups: Vec<(String, Vec<&ResultRow>)> = Vec::new();
    for row in rows.iter().filter(|r| r.introduction.is_some() && include(r)) {
        let key = replicate_key(row);
        match groups.iter_mut().find(|(k, _)| *k == key) {
            Some((_, members)) => members.push(row),
            None => groups.push((key, vec![row])),
        }
    }
    groups.into_iter().map(|(_, members)| members).collect()
}

/// 95 % interval of a figure point's mean stable score over its seeds: item noise of the runs' mean
/// plus `noise / runs` (the figures' error bars; the same rule as the findings' contrasts).
pub fn point_interval(runs: &[&ResultRow], score: Score, noise: Option<SeedNoise>) -> Option<Interval> {
    let items: Vec<_> =
        runs.iter().map(|r| r.run_items(score.modality()).map(|i| (r.seed, i))).collect::<Option<_>>()?;
    let seed_runs: Vec<SeedRun> = items.iter().map(|(seed, items)| SeedRun { seed: *seed, items }).collect();
    let design = runs.first()?.design(score.modality());
    let level = contrast(&seed_runs, &[], &design, Statistic::GroupMean, noise).ok()?;
    let mean = runs.iter().filter_map(|r| score.of(r)).sum::<f64>() / runs.len() as f64;
    Some(level.ci.shifted(mean - level.estimate))
}

/// A mean over the runs that share an x value (and schedule).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MeanPoint {
    pub x: f64,
    /// Fresh warmup + cosine cooldown (scratch / full): drawn hollow, not joined by the line.
    pub fresh: bool,
    pub mean: f64,
    pub runs: usize,
}

/// One line of a knob figure: the runs that agree on every other knob.
#[derive(Debug, Clone, PartialEq)]
pub struct KnobSeries {
    pub label: String,
    pub points: Vec<MeanPoint>,
}

/// Knobs whose value differs between image-trained rows.
pub fn varied_knobs(rows: &[ResultRow]) -> Vec<Knob> {
    Knob::ALL
        .into_iter()
        .filter(|k| {
            let mut values: Vec<f64> = rows.iter().filter_map(|r| k.value(r)).collect();
            values.sort_by(f64::total_cmp);
            values.dedup();
            values.len() > 1
        })
        .collect()
}

/// The series of a knob's figure: rows grouped by the other varied knobs, seeds averaged.
pub fn knob_series(rows: &[ResultRow], knob: Knob, score: Score) -> Vec<KnobSeries> {
    let others: Vec<Knob> = varied_knobs(rows).into_iter().filter(|k| *k != knob).collect();
    let mut groups: Vec<(String, Vec<&ResultRow>)> = Vec::new();
    for row in rows.iter().filter(|r| knob.value(r).is_some()) {
        let label = series_label(&others, row);
        match groups.iter_mut().find(|(l, _)| *l == label) {
            Some((_, members)) => members.push(row),
            None => groups.push((label, vec![row])),
        }
    }
    groups
        .into_iter()
        .map(|(label, members)| KnobSeries { label, points: means_by_value(&members, knob, score) })
        .filter(|s| !s.points.is_empty())
        .collect()
}

/// The label of a row's series: the values of the other varied knobs ("all runs" when none).
fn series_label(others: &[Knob], row: &ResultRow) -> String {
    let label = others
        .iter()
        .map(|k| format!("{} {}", k.short_name(), k.format(k.value(row).expect("image-trained row"))))
        .collect::<Vec<_>>()
        .join(" · ");
    if label.is_empty() {
        "all runs".to_string()
    } else {
        label
    }
}

/// The rows (seeds) behind one point of a series of `knob`'s figure.
pub fn series_rows<'a>(rows: &'a [ResultRow], knob: Knob, label: &str, x: f64, fresh: bool) -> Vec<&'a ResultRow> {
    let others: Vec<Knob> = varied_knobs(rows).into_iter().filter(|k| *k != knob).collect();
    rows.iter()
        .filter(|r| knob.value(r) == Some(x) && r.fresh_schedule == fresh && series_label(&others, r) == label)
        .collect()
}

/// Mean score per (knob value, schedule), sorted by value; rows lacking the score are skipped.
pub fn means_by_value(rows: &[&ResultRow], knob: Knob, score: Score) -> Vec<MeanPoint> {
    let mut points: Vec<(f64, bool, f64, usize)> = Vec::new();
    for row in rows {
        let (Some(x), Some(y)) = (knob.value(row), score.of(row)) else { continue };
        let fresh = row.fresh_schedule;
        match points.iter_mut().find(|p| p.0 == x && p.1 == fresh) {
            Some(p) => {
                p.2 += y;
                p.3 += 1;
            }
            None => points.push((x, fresh, y, 1)),
        }
    }
    let mut means: Vec<MeanPoint> =
        points.into_iter().map(|(x, fresh, sum, runs)| MeanPoint { x, fresh, mean: sum / runs as f64, runs }).collect();
    means.sort_by(|a, b| a.x.total_cmp(&b.x).then(a.fresh.cmp(&b.fresh)));
    means
}
