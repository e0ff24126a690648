//! Multiple choice by log-likelihood, with lm-eval-harness's `acc` and `acc_norm`.
//!
//! lm-eval picks `argmax(ll)` for acc and `argmax(ll / len(choice))` for acc_norm, where `len` is
//! Python's length of the choice text without the leading delimiter: Unicode scalar values, which
//! equals the byte length for ASCII choices. Ties go to the first choice, as `np.argmax` does.

use anyhow::{bail, Result};

/// The two predictions lm-eval derives from one item's choice log-likelihoods.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChoicePrediction {
    /// Index with the highest summed log-likelihood.
    pub raw: usize,
    /// Index with the highest log-likelihood per character of the choice.
    pub length_normalized: usize,
}

/// Chooses among `choices` given each one's summed log-likelihood.
pub fn predict_choice(choices: &[String], loglikelihoods: &[f64]) -> Result<ChoicePrediction> {
    if choices.len() != loglikelihoods.len() {
        bail!("{} choices but {} log-likelihoods", choices.len(), loglikelihoods.len());
    }
    if choices.is_empty() {
        bail!("no choices to pick from");
    }
    let mut normalized = Vec::with_capacity(choices.len());
    for (choice, ll) in choices.iter().zip(loglikelihoods) {
        let length = choice.chars().count();
        if length == 0 {
            bail!("empty choice text cannot be length-normalised");
        }
        normalized.push(ll / length as f64);
    }
    Ok(ChoicePrediction { raw: first_argmax(loglikelihoods), length_normalized: first_argmax(&normalized) })
}

/// Index of the largest value; the first one on ties; NaN never wins.
fn first_argmax(values: &[f64]) -> usize {
    let mut best = 0;
    for (i, &v) in values.iter().enumerate() {
        if v > values[best] || values[best].is_nan() {
            best = i;
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(xs: &[&str]) -> Vec<String> {
        xs.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn length_normalisation_can_flip_the_choice() {
        // "cat": -6/3 = -2.0 per char; "elephant": -8/8 = -1.0 per char.
        let choices = strings(&["cat", "elephant"]);
        let p = predict_choice(&choices, &[-6.0, -8.0]).unwrap();
        assert_eq!(p, ChoicePrediction { raw: 0, length_normalized: 1 });
    }

    #[test]
    fn ties_go_to_the_first_choice() {
        let p = predict_choice(&strings(&["ab", "cd"]), &[-1.0, -1.0]).unwrap();
        assert_eq!(p, ChoicePrediction { raw: 0, length_normalized: 0 });
    }

    #[test]
    fn length_counts_characters_not_bytes() {
        // "é" is 2 bytes but 1 character: -1.5/1 beats -2/1 only if counted as characters.
        let p = predict_choice(&strings(&["é", "ab"]), &[-1.5, -2.5]).unwrap();
        assert_eq!(p.length_normalized, 1, "-1.5/1 = -1.5 < -2.5/2 = -1.25");
    }

    #[test]
    fn mismatched_lengths_are_an_error() {
        assert!(predict_choice(&strings(&["a"]), &[]).is_err());
        assert!(predict_choice(&strings(&["", "a"]), &[0.0, 0.0]).is_err());
    }
}
