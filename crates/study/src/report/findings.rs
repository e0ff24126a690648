//! The paper's findings (PAPER.md, 1-6), each checked against this grid: agrees, disagrees, or
//! cannot tell at this size.
//!
//! Each finding has one primary contrast fixed before any result exists (listed in its question),
//! read on the vision gain: per item, the model's credit minus its blind control's (the blank
//! image), averaged over the vision tasks `[verdicts] vision_tasks` names, so a task's answer prior
//! cancels. Its interval carries item and seed noise ([`vlmix_eval::stats::contrast`]); its p-value
//! is Holm-adjusted across the findings, and the vision verdict is that adjusted test. Text is a
//! separate sub-verdict, comparing vision-language models with each other (every fine-tuned VLM is
//! behind the text-only model at this scale, which says nothing about introduction points); the VLM
//! vs. text-only gap stays as a descriptive line.
//!
//! A knob is judged along one line of its figure (the other knobs held fixed): the line that varies
//! it most, ties broken by the most runs, never by score.

use super::grid::{
    knob_series, replicate_groups, seed_noise, seed_noise_at, series_rows, Knob, KnobSeries, MeanPoint, Score,
};
use super::results_table::{design_of, percent, ResultRow, TaskScore};
use crate::config::{VerdictConfig, VisionMeasure};
use vlmix_eval::stats::RunItems;
use vlmix_eval::stats::{best_frequencies, contrast, holm, Contrast, Design, SeedNoise, SeedRun, Statistic, ALPHA};
use vlmix_eval::Modality;

/// A paper's claim as this grid answers it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Agrees,
    Disagrees,
    /// The interval contains the decision point, the noise is unmeasured, or the measure is missing.
    CannotTell,
    /// The grid does not vary what the claim is about.
    NotTested,
}

impl Verdict {
    pub fn label(self) -> &'static str {
        match self {
            Verdict::Agrees => "agrees",
            Verdict::Disagrees => "disagrees",
            Verdict::CannotTell => "cannot tell at this size",
            Verdict::NotTested => "not tested in this grid",
        }
    }

    /// Both parts of a two-part claim: agrees only if both do, disagrees if either does.
    fn and(self, other: Verdict) -> Self {
        match (self, other) {
            (Verdict::Disagrees, _) | (_, Verdict::Disagrees) => Verdict::Disagrees,
            (Verdict::Agrees, Verdict::Agrees) => Verdict::Agrees,
            (Verdict::NotTested, _) | (_, Verdict::NotTested) => Verdict::NotTested,
            _ => Verdict::CannotTell,
        }
    }

    /// "a is not worse than b by more than `margin`" from the interval of a - b: agrees when the
    /// interval's lower end clears -margin, disagrees when its upper end is below it.
    pub fn non_inferior(c: &Contrast, margin: f64) -> Self {
        if c.ci.lo >= -margin {
            Verdict::Agrees
        } else if c.ci.hi < -margin {
            Verdict::Disagrees
        } else {
            Verdict::CannotTell
        }
    }

    /// The sign of a - b from its interval.
    pub fn positive(c: &Contrast) -> Self {
        if c.ci.lo > 0.0 {
            Verdict::Agrees
        } else if c.ci.hi < 0.0 {
            Verdict::Disagrees
        } else {
            Verdict::CannotTell
        }
    }
}

/// A side verdict with the numbers behind it.
#[derive(Debug, Clone, PartialEq)]
pub struct SubVerdict {
    pub verdict: Verdict,
    pub text: String,
}

impl SubVerdict {
    /// Several parts that must all hold: agrees if every part does, disagrees if any part does.
    fn all(parts: Vec<SubVerdict>) -> Self {
        let verdict = if parts.iter().all(|t| t.verdict == Verdict::Agrees) {
            Verdict::Agrees
        } else if parts.iter().any(|t| t.verdict == Verdict::Disagrees) {
            Verdict::Disagrees
        } else {
            Verdict::CannotTell
        };
        SubVerdict { verdict, text: parts.iter().map(|t| t.text.as_str()).collect::<Vec<_>>().join(" · ") }
    }
}

/// One of the paper's findings, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct Finding {
    /// The paper's claim and the primary contrast fixed for it.
    pub question: String,
    /// The primary contrast as measured, with its interval (seed noise included), or why not.
    pub primary: String,
    /// Raw and Holm-adjusted p-value of the primary contrast (None: not tested).
    pub p: Option<(f64, f64)>,
    /// The vision side: the primary contrast's Holm-adjusted verdict.
    pub vision: Verdict,
    /// The text side, comparing vision-language models with each other.
    pub text: Option<SubVerdict>,
    /// Both sides together, where the claim has both.
    pub verdict: Verdict,
    /// Secondary comparisons, each with its own (per comparison) 95 % interval.
    pub answer: String,
    /// The line of the grid it was read from, with every point's mean stable scores.
    pub evidence: String,
}

/// Held-out bits-per-byte of one VLM may exceed another's by this share and text still "holds".
/// 2 % is above the pre-training run's own step (its last two checkpoints differ by 0.8 % at `mini`
/// size) and far below what cooldown and fine-tuning do to text (+22 % and more).
pub const BPB_TOLERANCE: f64 = 0.02;
/// Text multiple choice "holds" when a model is not worse than the other by this margin.
pub const TEXT_MARGIN: f64 = 0.02;
/// The paper's seed spread, 0.63 VQAv2 points, on the accuracy scale.
pub const PAPER_SEED_SPREAD: f64 = 0.0063;

/// What a contrast reads from a result row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Measure {
    /// Per item: credit minus the blind control's, over the verdict tasks.
    VisionGain,
    /// Per item credit over the verdict tasks.
    VisionAccuracy,
    /// Text multiple-choice credit.
    TextMc,
    /// Held-out nats per validation sequence (lower is better).
    Bpb,
}

impl Measure {
    fn statistic(self) -> Statistic {
        match self {
            Measure::Bpb => Statistic::LogTotal,
            _ => Statistic::GroupMean,
        }
    }

    /// How the items `items` returns are resampled: by image where items share one.
    fn design(self, row: &ResultRow, vision_tasks: &[String]) -> Design {
        match self {
            Measure::Bpb => Design::by_item(&[row.validation_nats.len()]),
            _ => design_of(self.tasks(row, vision_tasks).into_iter()),
        }
    }

    fn tasks<'r>(self, row: &'r ResultRow, vision_tasks: &[String]) -> Vec<&'r TaskScore> {
        let modality = if self == Measure::TextMc { Modality::Text } else { Modality::Vision };
        row.tasks
            .iter()
            .filter(|t| t.modality == modality)
            .filter(|t| modality == Modality::Text || vision_tasks.is_empty() || vision_tasks.contains(&t.task))
            .collect()
    }

    /// The row's items, with a key that must match between rows compared item by item.
    fn items(self, row: &ResultRow, vision_tasks: &[String]) -> Option<(RunItems, Vec<String>)> {
        match self {
            Measure::Bpb => (!row.validation_nats.is_empty())
                .then(|| (vec![row.validation_nats.clone()], vec![row.validation_nats.len().to_string()])),
            Measure::TextMc | Measure::VisionGain | Measure::VisionAccuracy => {
                let tasks = self.tasks(row, vision_tasks);
                if tasks.is_empty() || tasks.iter().any(|t| t.item_scores.is_empty()) {
                    return None;
                }
                let per_item = |t: &TaskScore| -> Option<Vec<f64>> {
                    if self != Measure::VisionGain {
                        return Some(t.item_scores.clone());
                    }
                    (t.blind_item_scores.len() == t.item_scores.len())
                        .then(|| t.item_scores.iter().zip(&t.blind_item_scores).map(|(s, b)| s - b).collect())
                };
                let items = tasks.iter().map(|t| per_item(t)).collect::<Option<RunItems>>()?;
                Some((items, tasks.iter().map(|t| format!("{}:{}", t.task, t.items_digest)).collect()))
            }
        }
    }
}

/// Reads contrasts out of the results, with the seed noise each measure shows between replicates.
struct Analysis<'a> {
    rows: &'a [ResultRow],
    vision_tasks: &'a [String],
    /// What the primary contrasts read (`[verdicts] vision_measure`).
    vision: Measure,
}

impl<'a> Analysis<'a> {
    fn new(rows: &'a [ResultRow], verdicts: &'a VerdictConfig) -> Self {
        let vision = match verdicts.vision_measure {
            VisionMeasure::Gain => Measure::VisionGain,
            VisionMeasure::Accuracy => Measure::VisionAccuracy,
        };
        Self { rows, vision_tasks: &verdicts.vision_tasks, vision }
    }

    /// The vision measure the primary contrasts do not read, co-reported beside them.
    fn other_vision(&self) -> Measure {
        match self.vision {
            Measure::VisionGain => Measure::VisionAccuracy,
            _ => Measure::VisionGain,
        }
    }

    /// Pooled seed noise of `measure` over every configuration scored by several seeds.
    /// Pooled seed noise of `measure` over every replicated configuration (finding 6, the header).
    fn seed_noise(&self, measure: Measure) -> Option<SeedNoise> {
        seed_noise(self.rows, |row| self.statistic(measure, row))
    }

    /// Seed noise of the configurations `compared`, where replicated (see [`seed_noise_at`]).
    fn seed_noise_at(&self, measure: Measure, compared: &[&ResultRow]) -> Option<SeedNoise> {
        seed_noise_at(self.rows, compared, |row| self.statistic(measure, row))
    }

    fn statistic(&self, measure: Measure, row: &ResultRow) -> Option<f64> {
        measure.items(row, self.vision_tasks).map(|(items, _)| measure.statistic().of(&items))
    }

    /// `measure(a) - measure(b)` (for bits-per-byte: `log bpb(b) - log bpb(a)`, so that positive
    /// always means a is better); None when a side lacks the measure or the items differ.
    fn compare(&self, a: &[&ResultRow], b: &[&ResultRow], measure: Measure) -> Option<Contrast> {
        let collect = |rows: &[&ResultRow]| -> Option<Vec<(u64, RunItems, Vec<String>)>> {
            rows.iter().map(|r| measure.items(r, self.vision_tasks).map(|(i, k)| (r.seed, i, k))).collect()
        };
        let (a_items, b_items) = (collect(a)?, collect(b)?);
        let key = &a_items.first()?.2;
        if a_items.iter().chain(&b_items).any(|(_, _, k)| k != key) || b_items.is_empty() {
            return None;
        }
        let (a_runs, b_runs) = (seed_runs(&a_items), seed_runs(&b_items));
        let noise = self.seed_noise_at(measure, &[a, b].concat());
        let design = measure.design(a.first()?, self.vision_tasks);
        let c = match measure {
            Measure::Bpb => contrast(&b_runs, &a_runs, &design, measure.statistic(), noise),
            _ => contrast(&a_runs, &b_runs, &design, measure.statistic(), noise),
        };
        c.ok()
    }

    /// The text measure that can move: MC where the text-only model is above chance, else bits-per-byte.
    fn text_measure(&self) -> Measure {
        match text_only(self.rows) {
            Some(base) if base.text_ci.is_some_and(|ci| ci.lo > 0.0) => Measure::TextMc,
            _ => Measure::Bpb,
        }
    }
}

fn seed_runs(items: &[(u64, RunItems, Vec<String>)]) -> Vec<SeedRun<'_>> {
    items.iter().map(|(seed, items, _)| SeedRun { seed: *seed, items }).collect()
}

/// "+0.012 [-0.020, +0.044]", or for bits-per-byte the relative change of a against b.
fn show(c: &Contrast, measure: Measure) -> String {
    let seeds = match c.seed_variance {
        Some(_) => "",
        None => ", seed noise not measured",
    };
    match measure {
        Measure::Bpb => {
            let rel = |d: f64| 100.0 * ((-d).exp() - 1.0);
            format!("bits-per-byte {:+.1} % [{:+.1}, {:+.1}]{seeds}", rel(c.estimate), rel(c.ci.hi), rel(c.ci.lo))
        }
        Measure::TextMc => format!("text MC {:+.3} [{:+.3}, {:+.3}]{seeds}", c.estimate, c.ci.lo, c.ci.hi),
        Measure::VisionGain => format!("vision gain {:+.3} [{:+.3}, {:+.3}]{seeds}", c.estimate, c.ci.lo, c.ci.hi),
        Measure::VisionAccuracy => {
            format!("vision accuracy {:+.3} [{:+.3}, {:+.3}]{seeds}", c.estimate, c.ci.lo, c.ci.hi)
        }
    }
}

fn margin(measure: Measure) -> f64 {
    match measure {
        Measure::Bpb => (1.0 + BPB_TOLERANCE).ln(),
        _ => TEXT_MARGIN,
    }
}

fn point_label(knob: Knob, p: &MeanPoint) -> String {
    match (knob, p.fresh) {
        (Knob::Introduction, true) if p.x == 0.0 => "scratch (0 %)".to_string(),
        (Knob::Introduction, true) if p.x == 100.0 => "full (100 %)".to_string(),
        (_, true) => format!("{} (fresh)", knob.format(p.x)),
        _ => knob.format(p.x),
    }
}

fn distinct_values(series: &KnobSeries) -> usize {
    let mut xs: Vec<f64> = series.points.iter().map(|p| p.x).collect();
    xs.dedup();
    xs.len()
}

/// A knob's judged line and the rows at each of its points.
struct Line<'a> {
    knob: Knob,
    series: KnobSeries,
    text: Option<KnobSeries>,
    analysis: &'a Analysis<'a>,
}

impl<'a> Line<'a> {
    /// The vision line that varies `knob` most (ties: the most runs), with its text twin.
    fn new(analysis: &'a Analysis<'a>, knob: Knob) -> Option<Self> {
        let rows = analysis.rows;
        let runs = |s: &KnobSeries| s.points.iter().map(|p| p.runs).sum::<usize>();
        let series = knob_series(rows, knob, Score::Vision)
            .into_iter()
            .max_by(|a, b| distinct_values(a).cmp(&distinct_values(b)).then(runs(a).cmp(&runs(b))))?;
        let text = knob_series(rows, knob, Score::Text).into_iter().find(|t| t.label == series.label);
        Some(Self { knob, series, text, analysis })
    }

    fn at(&self, x: f64) -> Option<&MeanPoint> {
        self.series.points.iter().find(|p| p.x == x)
    }

    fn rows_at(&self, p: &MeanPoint) -> Vec<&'a ResultRow> {
        series_rows(self.analysis.rows, self.knob, &self.series.label, p.x, p.fresh)
    }

    fn label(&self, a: &MeanPoint, b: &MeanPoint) -> String {
        format!("{} vs. {}", point_label(self.knob, a), point_label(self.knob, b))
    }

    fn compare(&self, a: &MeanPoint, b: &MeanPoint, measure: Measure) -> Option<Contrast> {
        self.analysis.compare(&self.rows_at(a), &self.rows_at(b), measure)
    }

    /// "a vs. b: vision gain +0.012 [-0.020, +0.044]".
    fn describe(&self, a: &MeanPoint, b: &MeanPoint, measure: Measure) -> String {
        match self.compare(a, b, measure) {
            Some(c) => format!("{}: {}", self.label(a, b), show(&c, measure)),
            None => format!("{}: not comparable (missing item scores)", self.label(a, b)),
        }
    }

    /// The text side of "a holds text against b": non-inferiority within the measure's margin.
    fn text_holds(&self, a: &MeanPoint, b: &MeanPoint) -> SubVerdict {
        let measure = self.analysis.text_measure();
        let margin_note = format!(" (non-inferiority margin {})", margin_text(measure));
        self.text_side(a, b, |c| Verdict::non_inferior(c, margin(measure)), &margin_note)
    }

    /// The text side of "a is better than b at text".
    fn text_better(&self, a: &MeanPoint, b: &MeanPoint) -> SubVerdict {
        self.text_side(a, b, Verdict::positive, "")
    }

    /// a vs. b on the text measure, judged by `judge` when the seed noise was measured.
    fn text_side(&self, a: &MeanPoint, b: &MeanPoint, judge: impl Fn(&Contrast) -> Verdict, note: &str) -> SubVerdict {
        let measure = self.analysis.text_measure();
        match self.compare(a, b, measure) {
            Some(c) => SubVerdict {
                verdict: if c.seed_variance.is_some() { judge(&c) } else { Verdict::CannotTell },
                text: format!("{}: {}{note}", self.label(a, b), show(&c, measure)),
            },
            None => SubVerdict {
                verdict: Verdict::CannotTell,
                text: format!("{}: no text measure to compare", self.label(a, b)),
            },
        }
    }

    /// The interior introduction point nearest 80 % (the paper's), the arm findings 1 and 3 share.
    fn interior_near_80(&self) -> Option<&MeanPoint> {
        self.series
            .points
            .iter()
            .filter(|p| p.x > 0.0 && p.x < 100.0)
            .min_by(|a, b| (a.x - 80.0).abs().total_cmp(&(b.x - 80.0).abs()))
    }

    fn evidence(&self) -> String {
        let points = self
            .series
            .points
            .iter()
            .map(|v| {
                let t = self.text.as_ref().and_then(|t| t.points.iter().find(|t| t.x == v.x && t.fresh == v.fresh));
                let text_part = t.map(|t| format!(", text {:.3}", t.mean)).unwrap_or_default();
                let runs = if v.runs > 1 { format!(" ({} seeds)", v.runs) } else { String::new() };
                format!("{}: vision {:.3}{text_part}{runs}", point_label(self.knob, v), v.mean)
            })
            .collect::<Vec<_>>()
            .join(" · ");
        format!("with {}: {points}", self.series.label)
    }
}

fn margin_text(measure: Measure) -> String {
    match measure {
        Measure::Bpb => format!("{:.0} %", 100.0 * BPB_TOLERANCE),
        _ => format!("{TEXT_MARGIN}"),
    }
}

/// The text-only model: the pre-training row that was scored on the text tasks, else the last one.
fn text_only(rows: &[ResultRow]) -> Option<&ResultRow> {
    let text_rows: Vec<&ResultRow> = rows.iter().filter(|r| r.introduction.is_none()).collect();
    text_rows.iter().copied().find(|r| r.text_stable_score.is_some()).or_else(|| text_rows.last().copied())
}

/// A primary test: a p-value and the verdict its direction gives when significant.
#[derive(Debug, Clone, Copy)]
struct Primary {
    p: f64,
    /// The verdict when the test is significant.
    direction: Verdict,
}

impl Primary {
    /// "a > b" from a contrast measured with seed noise; None without it (nothing to test with).
    fn greater(c: &Contrast) -> Option<Self> {
        c.seed_variance?;
        Some(Primary {
            p: c.p_two_sided(),
            direction: if c.estimate > 0.0 { Verdict::Agrees } else { Verdict::Disagrees },
        })
    }
}

/// A finding before the Holm step: its primary test and the rest.
struct Draft {
    finding: Finding,
    primary: Option<Primary>,
    /// The vision verdict when the primary test is not significant (finding 6's equivalence side).
    otherwise: Verdict,
    /// How the text sub-verdict combines with the vision verdict.
    text_part_of_claim: bool,
}

fn not_tested(question: &str, why: String) -> Draft {
    Draft {
        finding: Finding {
            question: question.to_string(),
            primary: why,
            p: None,
            vision: Verdict::NotTested,
            text: None,
            verdict: Verdict::NotTested,
            answer: String::new(),
            evidence: String::new(),
        },
        primary: None,
        otherwise: Verdict::NotTested,
        text_part_of_claim: false,
    }
}

fn draft(
    question: &str,
    line: &Line,
    primary: (String, Option<Primary>),
    text: Option<SubVerdict>,
    text_part: bool,
    answer: String,
) -> Draft {
    Draft {
        finding: Finding {
            question: question.to_string(),
            primary: primary.0,
            p: None,
            vision: Verdict::CannotTell,
            text,
            verdict: Verdict::CannotTell,
            answer,
            evidence: line.evidence(),
        },
        primary: primary.1,
        otherwise: Verdict::CannotTell,
        text_part_of_claim: text_part,
    }
}

/// The primary contrast a - b on the configured vision measure, described with the other vision
/// measure beside it, with its test.
fn vision_primary(line: &Line, a: &MeanPoint, b: &MeanPoint) -> (String, Option<Primary>) {
    let (measure, other) = (line.analysis.vision, line.analysis.other_vision());
    let beside = line.compare(a, b, other).map(|c| format!(" (beside it: {})", show(&c, other))).unwrap_or_default();
    match line.compare(a, b, measure) {
        Some(c) => (format!("{}: {}{beside}", line.label(a, b), show(&c, measure)), Primary::greater(&c)),
        None => (format!("{}: no item scores to compare", line.label(a, b)), None),
    }
}

/// Checks each of the paper's findings 1-6 against the grid, Holm-adjusting the primary tests.
pub fn findings(rows: &[ResultRow], verdicts: &VerdictConfig) -> Vec<Finding> {
    let analysis = Analysis::new(rows, verdicts);
    let drafts = vec![
        introduction(&analysis),
        image_token_fraction(&analysis, verdicts.image_token_optimum),
        scratch(&analysis),
        instruction(&analysis),
        epochs(&analysis),
        seeds(&analysis),
    ];
    let tested: Vec<f64> = drafts.iter().filter_map(|d| d.primary.map(|p| p.p)).collect();
    let mut adjusted = holm(&tested).into_iter();
    drafts
        .into_iter()
        .map(|d| {
            let mut f = d.finding;
            f.vision = d.otherwise;
            if let Some(primary) = d.primary {
                let p_holm = adjusted.next().expect("one adjusted p per test");
                f.p = Some((primary.p, p_holm));
                if p_holm < ALPHA {
                    f.vision = primary.direction;
                }
            }
            f.verdict = match (&f.text, d.text_part_of_claim) {
                (Some(text), true) => f.vision.and(text.verdict),
                _ => f.vision,
            };
            f
        })
        .collect()
}

/// The VLM vs. text-only gap, described (not a verdict).
fn versus_text_only(analysis: &Analysis, model: &[&ResultRow]) -> String {
    let Some(base) = text_only(analysis.rows) else { return String::new() };
    let measure = analysis.text_measure();
    match analysis.compare(model, &[base], measure) {
        Some(c) => format!(" · descriptive, against the text-only model: {}", show(&c, measure)),
        None => String::new(),
    }
}

/// Finding 1: images ~80 % of the way in beat adding them to the fully trained model, text holding.
fn introduction(analysis: &Analysis) -> Draft {
    let q = "1. Introducing images ~80 % of the way through text pre-training beats adding them to the fully trained model, while text holds (primary: the vision measure, the interior point nearest 80 % vs. 100 %; text: the same two VLMs, non-inferiority).";
    let Some(line) = Line::new(analysis, Knob::Introduction) else {
        return not_tested(q, "no image-trained models with scores yet".to_string());
    };
    let (Some(full), Some(interior)) = (line.at(100.0), line.interior_near_80()) else {
        return not_tested(q, "needs an interior introduction point and the 100 % point on one line".to_string());
    };
    let primary = vision_primary(&line, interior, full);
    let text = line.text_holds(interior, full);
    let answer = versus_text_only(analysis, &line.rows_at(interior));
    draft(q, &line, primary, Some(text), true, answer.trim_start_matches(" · ").to_string())
}

/// Finding 2: the best image-token share lies where the paper predicts for this model size.
fn image_token_fraction(analysis: &Analysis, optimum: Option<[f64; 2]>) -> Draft {
    let q = "2. The visual-token fraction matters: 10-20 % is best at 1B, smaller models prefer more (primary: some share inside the range `[verdicts] image_token_optimum` predicts beats every share outside it, on the vision measure).";
    let Some(line) = Line::new(analysis, Knob::ImageTokenFraction) else {
        return not_tested(q, "no image-trained models with scores yet".to_string());
    };
    let Some([lo, hi]) = optimum else {
        return not_tested(
            q,
            "no predicted optimum: set `[verdicts] image_token_optimum = [lo, hi]` for this model size".to_string(),
        );
    };
    let inside_range = |p: &&MeanPoint| p.x >= 100.0 * lo - 1e-9 && p.x <= 100.0 * hi + 1e-9;
    let (inside, outside): (Vec<&MeanPoint>, Vec<&MeanPoint>) = line.series.points.iter().partition(inside_range);
    if inside.is_empty() || outside.is_empty() {
        return not_tested(
            q,
            format!(
                "the grid needs shares inside and outside the predicted {}-{} % (has {})",
                100.0 * lo,
                100.0 * hi,
                line.evidence()
            ),
        );
    }
    // Intersection-union: a point "wins" when it beats every point on the other side; the smallest
    // such p, Bonferroni-corrected over the candidates of its side and over the two directions.
    let win_p = |winners: &[&MeanPoint], losers: &[&MeanPoint]| -> Option<f64> {
        let per_winner = winners.iter().map(|w| {
            losers
                .iter()
                .map(|l| line.compare(w, l, line.analysis.vision).and_then(|c| c.seed_variance.map(|_| c.p_greater())))
                .try_fold(0.0f64, |worst, p| p.map(|p| worst.max(p)))
        });
        let best = per_winner.collect::<Option<Vec<f64>>>()?.into_iter().fold(1.0f64, f64::min);
        Some((2.0 * winners.len() as f64 * best).min(1.0))
    };
    let primary = match (win_p(&inside, &outside), win_p(&outside, &inside)) {
        (Some(agree), Some(disagree)) => Some(if agree <= disagree {
            Primary { p: agree, direction: Verdict::Agrees }
        } else {
            Primary { p: disagree, direction: Verdict::Disagrees }
        }),
        _ => None,
    };
    let pairs: Vec<String> = inside
        .iter()
        .flat_map(|i| outside.iter().map(move |o| (*i, *o)))
        .map(|(i, o)| line.describe(i, o, line.analysis.vision))
        .collect();
    let best = best_share_frequencies(&line);
    let text = SubVerdict::all(
        inside.iter().flat_map(|i| outside.iter().map(move |o| (*i, *o))).map(|(i, o)| line.text_holds(i, o)).collect(),
    );
    let described = format!("predicted best {}-{} %: {}", percent(lo), percent(hi), pairs.join(" · "));
    draft(q, &line, (described, primary), Some(text), false, best)
}

/// "how often each share is best over resamples: 10 % 0.02 · 30 % 0.41 · 60 % 0.57".
fn best_share_frequencies(line: &Line) -> String {
    let points: Vec<&MeanPoint> = line.series.points.iter().collect();
    let rows: Option<Vec<Vec<(u64, RunItems)>>> = points
        .iter()
        .map(|p| {
            line.rows_at(p)
                .iter()
                .map(|r| line.analysis.vision.items(r, line.analysis.vision_tasks).map(|(i, _)| (r.seed, i)))
                .collect()
        })
        .collect();
    let Some(rows) = rows else { return String::new() };
    let runs: Vec<Vec<SeedRun>> =
        rows.iter().map(|p| p.iter().map(|(seed, items)| SeedRun { seed: *seed, items }).collect()).collect();
    let (measure, tasks) = (line.analysis.vision, line.analysis.vision_tasks);
    let Some(design) = points.first().and_then(|p| line.rows_at(p).first().map(|r| measure.design(r, tasks))) else {
        return String::new();
    };
    let compared: Vec<&ResultRow> = points.iter().flat_map(|p| line.rows_at(p)).collect();
    let noise = line.analysis.seed_noise_at(measure, &compared);
    let Ok(freq) = best_frequencies(&runs, &design, Statistic::GroupMean, noise) else {
        return String::new();
    };
    let shown: Vec<String> =
        points.iter().zip(freq).map(|(p, f)| format!("{} {f:.2}", point_label(line.knob, p))).collect();
    format!(
        "how often each share has the best vision gain over item resamples and seed-noise draws: {}",
        shown.join(" · ")
    )
}

/// Finding 3: images from scratch hurt vision and text.
fn scratch(analysis: &Analysis) -> Draft {
    let q = "3. Images from scratch (0 %) hurt both vision and text (primary: the vision measure, the interior point nearest 80 % vs. scratch; text: the same two VLMs).";
    let Some(line) = Line::new(analysis, Knob::Introduction) else {
        return not_tested(q, "no image-trained models with scores yet".to_string());
    };
    let Some(zero) = line.at(0.0) else {
        return not_tested(q, "no scratch (0 %) point".to_string());
    };
    let Some(interior) = line.interior_near_80() else {
        return not_tested(q, "no interior introduction point besides scratch".to_string());
    };
    let primary = vision_primary(&line, interior, zero);
    let text = line.text_better(interior, zero);
    let others: Vec<String> = line
        .series
        .points
        .iter()
        .filter(|p| p.x > 0.0 && p.x != interior.x)
        .map(|p| line.describe(p, zero, line.analysis.vision))
        .collect();
    draft(q, &line, primary, Some(text), true, others.join(" · "))
}

/// Finding 4: instruction data in the cooldown mix hurts vision.
fn instruction(analysis: &Analysis) -> Draft {
    let q = "4. Instruction data mixed into pre-training hurts vision-language results (primary: the vision measure, no instruction data vs. the largest share).";
    let Some(line) = Line::new(analysis, Knob::InstructionShare) else {
        return not_tested(q, "no image-trained models with scores yet".to_string());
    };
    if distinct_values(&line.series) < 2 {
        return not_tested(
            q,
            format!("instruction share not varied (all at {})", line.knob.format(line.series.points[0].x)),
        );
    }
    let (lo, hi) = (&line.series.points[0], line.series.points.last().expect("two points"));
    let primary = vision_primary(&line, lo, hi);
    let text = line.text_better(lo, hi);
    draft(q, &line, primary, Some(text), false, String::new())
}

/// Finding 5: 2-4 fine-tuning epochs are best for vision; 2 is the sweet spot for text.
fn epochs(analysis: &Analysis) -> Draft {
    let q = "5. 2-4 fine-tuning epochs are best for vision; 2 is the sweet spot for text (primary: the vision measure, 2 vs. 1 epochs, each its own fine-tuning run; text: 2 epochs not worse than 1 or 3).";
    let Some(line) = Line::new(analysis, Knob::FinetuneEpochs) else {
        return not_tested(q, "no image-trained models with scores yet".to_string());
    };
    let (Some(one), Some(two)) = (line.at(1.0), line.at(2.0)) else {
        return not_tested(q, "needs 1 and 2 epochs on one line".to_string());
    };
    let primary = vision_primary(&line, two, one);
    let mut text = vec![line.text_holds(two, one)];
    let mut later = Vec::new();
    for p in line.series.points.iter().filter(|p| p.x > 2.0) {
        later.push(line.describe(p, two, line.analysis.vision));
        text.push(line.text_holds(two, p));
    }
    draft(q, &line, primary, Some(SubVerdict::all(text)), false, later.join(" · "))
}

/// Finding 6: seeds move scores little. Disagrees when two seeds of one configuration differ beyond
/// item noise (paired; Bonferroni over the pairs, then Holm); agrees only when the seed standard
/// deviation's 95 % upper end is within the paper's spread.
fn seeds(analysis: &Analysis) -> Draft {
    let q = "6. Seed-to-seed spread is small (<= 0.63 VQAv2 points), so single-seed grids are informative (primary: paired differences between seeds of one configuration, on the vision measure).";
    let mut pairs = Vec::new();
    for members in replicate_groups(analysis.rows, |_| true).iter().filter(|m| m.len() > 1) {
        for (i, a) in members.iter().enumerate() {
            for b in &members[i + 1..] {
                let items = |r: &ResultRow| analysis.vision.items(r, analysis.vision_tasks).map(|(i, _)| i);
                let (Some(ia), Some(ib)) = (items(a), items(b)) else { continue };
                // Item noise only: whether two seeds differ beyond what re-drawing items explains.
                let ra = [SeedRun { seed: 0, items: &ia }];
                let rb = [SeedRun { seed: 0, items: &ib }];
                let design = analysis.vision.design(a, analysis.vision_tasks);
                if let Ok(c) = contrast(&ra, &rb, &design, Statistic::GroupMean, None) {
                    // The configuration's id without the first run's seed in it.
                    let config = a.run_id.replace(&format!("-seed{}", a.seed), "");
                    pairs.push((format!("{config} seed {} vs. {}", a.seed, b.seed), c));
                }
            }
        }
    }
    let Some(noise) = analysis.seed_noise(analysis.vision) else {
        return not_tested(
            q,
            "one seed per configuration: seed spread not measured (add grid.extra_base_seeds)".to_string(),
        );
    };
    let sd = noise.sd_interval();
    let p = pairs.iter().map(|(_, c)| c.p_two_sided()).fold(1.0f64, f64::min) * pairs.len().max(1) as f64;
    // Item noise only, by design: whether two seeds differ beyond what redrawing items explains.
    let items_only = |c: &Contrast| show(c, analysis.vision).replace(", seed noise not measured", " (items only)");
    let described = pairs.iter().map(|(label, c)| format!("{label}: {}", items_only(c))).collect::<Vec<_>>();
    let equivalence = if sd.hi <= PAPER_SEED_SPREAD { Verdict::Agrees } else { Verdict::CannotTell };
    Draft {
        finding: Finding {
            question: q.to_string(),
            primary: described.join(" · "),
            p: None,
            vision: Verdict::CannotTell,
            text: None,
            verdict: Verdict::CannotTell,
            answer: format!(
                "{}; agrees only if its 95 % upper end is within the paper's {PAPER_SEED_SPREAD}",
                seed_noise_text(&noise, analysis.vision)
            ),
            evidence: String::new(),
        },
        primary: (!pairs.is_empty()).then_some(Primary { p: p.min(1.0), direction: Verdict::Disagrees }),
        otherwise: equivalence,
        text_part_of_claim: false,
    }
}

fn seed_noise_text(noise: &SeedNoise, measure: Measure) -> String {
    let sd = noise.sd_interval();
    let name = if measure == Measure::VisionGain { "vision gain" } else { "vision accuracy" };
    format!(
        "seed standard deviation of the {name} {:.4} [{:.4}, {:.4}] (chi-square, {} df)",
        noise.sd(),
        sd.lo,
        sd.hi,
        noise.df
    )
}

/// The seed noise every vision contrast carries, for the findings' header; None without replicates.
pub fn seed_noise_summary(rows: &[ResultRow], verdicts: &VerdictConfig) -> Option<String> {
    let analysis = Analysis::new(rows, verdicts);
    analysis.seed_noise(analysis.vision).map(|n| seed_noise_text(&n, analysis.vision))
}
