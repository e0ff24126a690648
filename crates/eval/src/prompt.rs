//! Prompt templates, fixed here so every model in a study is asked the same way.

use anyhow::{bail, Result};

/// Where the image's tokens go in a vision-language prompt; scorers replace it (LLaVA convention).
pub const IMAGE_MARKER: &str = "<image>";

/// Placeholder for the question inside [`DEFAULT_VL_TEMPLATE`].
pub const QUESTION_SLOT: &str = "{question}";

/// Default vision-language prompt: image first (as in cooldown data), then a short QA frame whose
/// answer follows "Answer:" the way lm-eval frames zero-shot questions.
pub const DEFAULT_VL_TEMPLATE: &str = "<image>\nQuestion: {question}\nAnswer:";

/// Separator between a context and a scored continuation (lm-eval's `target_delimiter`): the
/// continuation for choice "Paris" is " Paris".
pub const TARGET_DELIMITER: &str = " ";

/// A vision-language prompt template containing [`QUESTION_SLOT`] exactly once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VlTemplate(String);

impl VlTemplate {
    /// Checks the template has exactly one question slot and at most one image marker.
    pub fn new(template: &str) -> Result<Self> {
        if template.matches(QUESTION_SLOT).count() != 1 {
            bail!("prompt template {template:?} must contain {QUESTION_SLOT} exactly once");
        }
        if template.matches(IMAGE_MARKER).count() > 1 {
            bail!("prompt template {template:?} contains {IMAGE_MARKER} more than once");
        }
        Ok(Self(template.to_string()))
    }

    /// The prompt for one question.
    pub fn render(&self, question: &str) -> String {
        self.0.replacen(QUESTION_SLOT, question, 1)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for VlTemplate {
    fn default() -> Self {
        Self(DEFAULT_VL_TEMPLATE.to_string())
    }
}

/// The scored continuation for a choice: delimiter + choice text.
pub fn continuation(choice: &str) -> String {
    format!("{TARGET_DELIMITER}{choice}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_question_into_default_template() {
        let t = VlTemplate::default();
        assert_eq!(t.render("What colour?"), "<image>\nQuestion: What colour?\nAnswer:");
    }

    #[test]
    fn rejects_template_without_slot() {
        let err = VlTemplate::new("<image> Answer:").unwrap_err();
        assert!(err.to_string().contains("{question}"), "{err}");
    }
}
