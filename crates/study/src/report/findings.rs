//! The "what this grid says" table: each of the paper's questions answered from marginal means
//! (every run sharing a knob value, averaged), with the numbers behind the answer.

use super::grid::{means_by_value, seed_spread, varied_knobs, Knob, MeanPoint, Score};
use super::results_table::ResultRow;

/// One answered question.
#[derive(Debug, Clone, PartialEq)]
pub struct Finding {
    pub question: String,
    pub answer: String,
    /// The marginal means the answer rests on, e.g. "20 %: vision 0.301, text 0.112 · ...".
    pub evidence: String,
}

/// Answers the paper's questions that this grid can answer; says so where a knob was not varied.
pub fn findings(rows: &[ResultRow]) -> Vec<Finding> {
    let varied = varied_knobs(rows);
    let all: Vec<&ResultRow> = rows.iter().collect();
    let mut out = Vec::new();
    for (knob, question) in [
        (Knob::Introduction, "When should images be introduced?"),
        (Knob::ImageTokenFraction, "What share of image tokens is best?"),
        (Knob::FinetuneEpochs, "How many fine-tuning epochs?"),
    ] {
        out.push(best_value(&all, knob, question, varied.contains(&knob)));
    }
    out.push(instruction_effect(&all, varied.contains(&Knob::InstructionShare)));
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
    let base = knob.format(p.x);
    match (knob, p.fresh) {
        (Knob::Introduction, true) if p.x == 0.0 => "scratch (0 %)".to_string(),
        (Knob::Introduction, true) if p.x == 100.0 => "full (100 %)".to_string(),
        (_, true) => format!("{base} (fresh)"),
        _ => base,
    }
}

fn evidence(rows: &[&ResultRow], knob: Knob) -> String {
    let vision = means_by_value(rows, knob, Score::Vision);
    let text = means_by_value(rows, knob, Score::Text);
    vision
        .iter()
        .map(|v| {
            let t = text.iter().find(|t| t.x == v.x && t.fresh == v.fresh);
            let text_part = t.map(|t| format!(", text {:.3}", t.mean)).unwrap_or_default();
            format!("{}: vision {:.3}{text_part}", point_label(knob, v), v.mean)
        })
        .collect::<Vec<_>>()
        .join(" · ")
}

fn best_value(rows: &[&ResultRow], knob: Knob, question: &str, varied: bool) -> Finding {
    let vision = means_by_value(rows, knob, Score::Vision);
    let answer = if !varied {
        match vision.first() {
            Some(p) => format!("not varied in this grid (all at {})", point_label(knob, p)),
            None => "not varied in this grid".to_string(),
        }
    } else {
        match vision.iter().max_by(|a, b| a.mean.total_cmp(&b.mean)) {
            Some(best) => {
                let text_best = means_by_value(rows, knob, Score::Text).into_iter().max_by(|a, b| a.mean.total_cmp(&b.mean));
                let text_part = match text_best {
                    Some(t) if knob == Knob::FinetuneEpochs => format!("; for text: {}", point_label(knob, &t)),
                    _ => String::new(),
                };
                format!("{} (best vision stable score, {:.3}){text_part}", point_label(knob, best), best.mean)
            }
            None => "no vision scores yet".to_string(),
        }
    };
    Finding { question: question.to_string(), answer, evidence: evidence(rows, knob) }
}

fn instruction_effect(rows: &[&ResultRow], varied: bool) -> Finding {
    let question = "Does instruction data in the cooldown mix help?".to_string();
    let vision = means_by_value(rows, Knob::InstructionShare, Score::Vision);
    let answer = match (varied, vision.first(), vision.last()) {
        (true, Some(lo), Some(hi)) if lo.x != hi.x => {
            let delta = hi.mean - lo.mean;
            let verdict = if delta < 0.0 { "hurts" } else { "helps" };
            format!(
                "{verdict} vision: {:+.3} going from {} to {} instruction data",
                delta,
                Knob::InstructionShare.format(lo.x),
                Knob::InstructionShare.format(hi.x)
            )
        }
        _ => "not varied in this grid".to_string(),
    };
    Finding { question, answer, evidence: evidence(rows, Knob::InstructionShare) }
}
