//! The one interface evaluation needs from a model, so scoring is testable without one.
//!
//! Mirrors lm-eval-harness's request types (`loglikelihood`, `generate_until`) plus an optional
//! image, so an LM, a VLM or a test fake all plug in.

use anyhow::Result;
use std::path::PathBuf;

/// An image an eval item refers to: the string written in the task file and the path it resolves to.
///
/// Both are kept because a model may look features up in a cache by `key` rather than decode `path`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRef {
    /// The `image` field exactly as written in the JSONL line.
    pub key: String,
    /// `key` resolved against the task file's directory (absolute keys stay as they are).
    pub path: PathBuf,
}

/// Key of [`ImageRef::blank`].
pub const BLANK_IMAGE_KEY: &str = "<blank>";
/// Side (pixels) and grey level of the blank image.
pub const BLANK_IMAGE_SIDE: u32 = 224;
pub const BLANK_IMAGE_GREY: u8 = 128;

impl ImageRef {
    /// The blind control's image: a uniform mid-grey picture, encoded by the same frozen encoder (and
    /// feature cache) as every eval image, then projected by the model under test.
    ///
    /// Mid-grey through the encoder rather than zeros at the projector: it keeps the projector's
    /// input inside the distribution of real encoder features (the encoder's answer to an image with
    /// nothing in it), so the blind score measures what the model answers from the question alone.
    /// Zeros would be an activation pattern training never showed and could lower the blind score
    /// for reasons other than missing information, inflating the vision gain; another item's image
    /// would keep content that can correlate with the answer (same class, same colour).
    pub fn blank() -> Self {
        Self { key: BLANK_IMAGE_KEY.to_string(), path: PathBuf::new() }
    }

    pub fn is_blank(&self) -> bool {
        self.key == BLANK_IMAGE_KEY && self.path.as_os_str().is_empty()
    }

    /// The blank image's pixels.
    pub fn blank_pixels() -> image::RgbImage {
        image::RgbImage::from_pixel(BLANK_IMAGE_SIDE, BLANK_IMAGE_SIDE, image::Rgb([BLANK_IMAGE_GREY; 3]))
    }
}

/// Log-probability of a continuation given a context, as lm-eval's `loglikelihood` returns it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LogLikelihood {
    /// Sum of natural-log probabilities of the continuation's tokens.
    pub sum_logprob: f64,
    /// Number of continuation tokens scored.
    pub n_tokens: usize,
    /// Whether greedy decoding from the context would produce exactly the continuation.
    pub is_greedy: bool,
}

/// One question of a batch ([`Scorer::answer_all`]).
#[derive(Debug, Clone, Copy)]
pub enum Request<'a> {
    /// [`Scorer::loglikelihoods`] of `continuations` after `context`.
    Rank { image: Option<&'a ImageRef>, context: &'a str, continuations: &'a [String] },
    /// [`Scorer::generate`] after `prompt`.
    Generate { image: Option<&'a ImageRef>, prompt: &'a str, max_tokens: usize },
}

/// The answer to a [`Request`], of the same kind.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    Ranked(Vec<LogLikelihood>),
    Generated(String),
}

/// A model as evaluation sees it.
pub trait Scorer {
    /// Scores `continuation` after `context` (and the image, placed where the prompt's
    /// [`crate::prompt::IMAGE_MARKER`] is). The context's own tokens are not scored.
    fn loglikelihood(&mut self, image: Option<&ImageRef>, context: &str, continuation: &str) -> Result<LogLikelihood>;

    /// Scores several continuations of one context; models override this to share the context's
    /// forward pass across the choices of a multiple-choice item.
    fn loglikelihoods(
        &mut self,
        image: Option<&ImageRef>,
        context: &str,
        continuations: &[String],
    ) -> Result<Vec<LogLikelihood>> {
        continuations.iter().map(|c| self.loglikelihood(image, context, c)).collect()
    }

    /// Greedy decoding of at most `max_tokens` tokens after `prompt`; returns only the new text.
    fn generate(&mut self, image: Option<&ImageRef>, prompt: &str, max_tokens: usize) -> Result<String>;

    /// Answers many requests (one answer each, in order). Models override this to run the rows of
    /// many items in each forward pass; answers must equal the one-at-a-time methods'.
    fn answer_all(&mut self, requests: &[Request]) -> Result<Vec<Answer>> {
        requests
            .iter()
            .map(|r| match *r {
                Request::Rank { image, context, continuations } => {
                    self.loglikelihoods(image, context, continuations).map(Answer::Ranked)
                }
                Request::Generate { image, prompt, max_tokens } => {
                    self.generate(image, prompt, max_tokens).map(Answer::Generated)
                }
            })
            .collect()
    }
}
