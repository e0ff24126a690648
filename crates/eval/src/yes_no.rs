//! Yes/no questions (POPE): answer parsing and the metrics POPE reports.
//!
//! POPE counts "yes" as the positive class and reports accuracy, precision, recall, F1 and the
//! share of "yes" answers (a model that always says yes scores 50 % accuracy, yes-ratio 1).

use serde::{Deserialize, Serialize};

/// Reads a generated answer as POPE's official script does: keep the first sentence, drop commas,
/// and call it "no" when a word is "no", "No" or "not"; anything else is "yes".
pub fn parse_yes_no(generated: &str) -> bool {
    let first_sentence = generated.split('.').next().unwrap_or_default().replace(',', "");
    !first_sentence.split(' ').any(|w| w == "no" || w == "No" || w == "not")
}

/// Confusion counts with "yes" as the positive class.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct YesNoCounts {
    pub true_yes: usize,
    pub false_yes: usize,
    pub true_no: usize,
    pub false_no: usize,
}

impl YesNoCounts {
    pub fn add(&mut self, predicted_yes: bool, gold_yes: bool) {
        match (predicted_yes, gold_yes) {
            (true, true) => self.true_yes += 1,
            (true, false) => self.false_yes += 1,
            (false, false) => self.true_no += 1,
            (false, true) => self.false_no += 1,
        }
    }

    /// POPE's metrics; a ratio with a zero denominator is reported as 0.
    pub fn metrics(&self) -> YesNoMetrics {
        let total = self.true_yes + self.false_yes + self.true_no + self.false_no;
        let ratio = |num: usize, den: usize| if den == 0 { 0.0 } else { num as f64 / den as f64 };
        let precision = ratio(self.true_yes, self.true_yes + self.false_yes);
        let recall = ratio(self.true_yes, self.true_yes + self.false_no);
        let f1 = if precision + recall == 0.0 { 0.0 } else { 2.0 * precision * recall / (precision + recall) };
        YesNoMetrics {
            accuracy: ratio(self.true_yes + self.true_no, total),
            precision,
            recall,
            f1,
            yes_ratio: ratio(self.true_yes + self.false_yes, total),
        }
    }
}

/// POPE's reported numbers for one task.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct YesNoMetrics {
    pub accuracy: f64,
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
    pub yes_ratio: f64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_like_pope() {
        assert!(parse_yes_no("Yes, there is a dog."));
        assert!(!parse_yes_no("No, there is not."));
        assert!(!parse_yes_no("There is not a dog"));
        assert!(parse_yes_no("There is a dog. No doubt."), "only the first sentence counts");
        assert!(parse_yes_no("Nope"), "only whole words count");
    }

    #[test]
    fn metrics_from_counts() {
        let mut c = YesNoCounts::default();
        // 3 gold yes (2 said yes), 2 gold no (1 said yes).
        for (p, g) in [(true, true), (true, true), (false, true), (true, false), (false, false)] {
            c.add(p, g);
        }
        let m = c.metrics();
        assert!((m.accuracy - 3.0 / 5.0).abs() < 1e-12);
        assert!((m.precision - 2.0 / 3.0).abs() < 1e-12);
        assert!((m.recall - 2.0 / 3.0).abs() < 1e-12);
        assert!((m.f1 - 2.0 / 3.0).abs() < 1e-12);
        assert!((m.yes_ratio - 3.0 / 5.0).abs() < 1e-12);
    }
}
