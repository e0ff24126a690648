//! The "what this grid says" table: each of the paper's questions answered from the grid.
//!
//! A knob is judged along one line of its figure (the other knobs held fixed, seeds averaged), not
//! from means over everything: in a one-knob-at-a-time grid those means would mix in the other
//! knobs' effects. The line used is the one that varies the knob most, ties broken by the best
//! vision score, so a full factorial grid is read at its best setting of the other knobs.

use super::grid::{knob_series, seed_spread, Knob, KnobSeries, MeanPoint, Score};
use super::results_table::ResultRow;

/// One answered question.
#[derive(Debug, Clone, PartialEq)]
pub struct Finding {
    pub question: String,
    pub answer: String,
    /// The means the answer rests on, e.g. "with img 20 %: 60 %: vision 0.301, text 0.112 · ...".
    pub evidence: String,
}

/// Answers the paper's questions that this grid can answer; says so where a knob was not varied.
pub fn findings(rows: &[ResultRow]) -> Vec<Finding> {
    let mut out = vec![
        best_value(rows, Knob::Introduction, "When should images be introduced?"),
        best_value(rows, Knob::ImageTokenFraction, "What share of image tokens is best?"),
        instruction_effect(rows),
        best_value(rows, Knob::FinetuneEpochs, "How many fine-tuning epochs?"),
    ];
    out.push(text_holds(rows));
    out.push(Finding {
        question: "How much do seeds move the vision score?".to_string(),
        answer: match seed_spread(rows) {
            Some(s) => format!("at most {s:.3} between seeds of one configuration"),
            None => "not measured (one seed per configuration)".to_string(),
        },
        evidence: String::new(),
    });
    out
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

fn best_point(points: &[MeanPoint]) -> Option<&MeanPoint> {
    points.iter().max_by(|a, b| a.mean.total_cmp(&b.mean))
}

/// The vision line that varies `knob` most (ties: highest vision score), with its text twin.
fn judged_line(rows: &[ResultRow], knob: Knob) -> Option<(KnobSeries, Option<KnobSeries>)> {
    let vision = knob_series(rows, knob, Score::Vision).into_iter().max_by(|a, b| {
        let best = |s: &KnobSeries| best_point(&s.points).map_or(f64::MIN, |p| p.mean);
        distinct_values(a).cmp(&distinct_values(b)).then(best(a).total_cmp(&best(b)))
    })?;
    let text = knob_series(rows, knob, Score::Text).into_iter().find(|t| t.label == vision.label);
    Some((vision, text))
}

fn evidence(knob: Knob, vision: &KnobSeries, text: Option<&KnobSeries>) -> String {
    let points = vision
        .points
        .iter()
        .map(|v| {
            let t = text.and_then(|t| t.points.iter().find(|t| t.x == v.x && t.fresh == v.fresh));
            let text_part = t.map(|t| format!(", text {:.3}", t.mean)).unwrap_or_default();
            format!("{}: vision {:.3}{text_part}", point_label(knob, v), v.mean)
        })
        .collect::<Vec<_>>()
        .join(" · ");
    format!("with {}: {points}", vision.label)
}

fn best_value(rows: &[ResultRow], knob: Knob, question: &str) -> Finding {
    let (answer, evidence) = match judged_line(rows, knob) {
        None => ("no image-trained models with scores yet".to_string(), String::new()),
        Some((vision, text)) => {
            let ev = evidence(knob, &vision, text.as_ref());
            let best = best_point(&vision.points).expect("series are never empty");
            let answer = if distinct_values(&vision) < 2 {
                format!("not varied in this grid (all at {})", point_label(knob, best))
            } else {
                let text_part = match text.as_ref().and_then(|t| best_point(&t.points)) {
                    Some(t) if knob == Knob::FinetuneEpochs => format!("; best for text: {}", point_label(knob, t)),
                    _ => String::new(),
                };
                format!("{} (vision stable score {:.3}){text_part}", point_label(knob, best), best.mean)
            };
            (answer, ev)
        }
    };
    Finding { question: question.to_string(), answer, evidence }
}

fn instruction_effect(rows: &[ResultRow]) -> Finding {
    let knob = Knob::InstructionShare;
    let question = "Does instruction data in the cooldown mix help?".to_string();
    let Some((vision, text)) = judged_line(rows, knob) else {
        return Finding { question, answer: "no image-trained models with scores yet".to_string(), evidence: String::new() };
    };
    let (lo, hi) = (vision.points.first().expect("non-empty"), vision.points.last().expect("non-empty"));
    let answer = if distinct_values(&vision) < 2 {
        format!("not varied in this grid (all at {})", knob.format(lo.x))
    } else {
        let delta = hi.mean - lo.mean;
        let verdict = if delta < 0.0 { "hurts" } else { "helps" };
        format!("{verdict} vision: {delta:+.3} going from {} to {}", knob.format(lo.x), knob.format(hi.x))
    };
    Finding { question, answer, evidence: evidence(knob, &vision, text.as_ref()) }
}

/// The best vision model's text score against the text-only model's (the paper: text holds).
fn text_holds(rows: &[ResultRow]) -> Finding {
    let question = "Do text scores hold at the best vision model?".to_string();
    let best = rows
        .iter()
        .filter(|r| r.introduction.is_some())
        .filter_map(|r| Score::Vision.of(r).map(|v| (r, v)))
        .max_by(|a, b| a.1.total_cmp(&b.1));
    let text_only = rows.iter().filter(|r| r.introduction.is_none()).filter_map(|r| Score::Text.of(r)).reduce(f64::max);
    let answer = match (best, text_only) {
        (Some((row, _)), Some(base)) => match Score::Text.of(row) {
            Some(t) => format!("{}: text {t:.3} vs. {base:.3} for the text-only model ({:+.3})", row.run_id, t - base),
            None => format!("{} has no text score", row.run_id),
        },
        (None, _) => "no image-trained models with scores yet".to_string(),
        (_, None) => "no text-only model evaluated".to_string(),
    };
    Finding { question, answer, evidence: String::new() }
}
