//! The text that follows an image in a training sequence when it is a LLaVA conversation.
//!
//! Conversations are rendered with one fixed template, shared by the cooldown mix and fine-tuning and
//! identical to the frame evaluation asks in (`vlmix_eval::prompt::DEFAULT_VL_TEMPLATE` without its
//! `<image>` marker): each exchange is `"\nQuestion: {human}\nAnswer:"` then `" {gpt}\n"`. The image
//! tokens already precede the text (as in the paper), so the placeholder is removed. Only the answers
//! and their closing newline are trained (LLaVA's masking of human turns); the newline teaches the
//! model where an answer ends, which is where generation stops.
use anyhow::{Context, Result};

use crate::llava::{LlavaRecord, IMAGE_PLACEHOLDER};
use crate::sequence::ImageText;
use crate::tokenizer::TextTokenizer;

/// A short answer as the instruction data writes it: "green" -> "Green.", "red heart" -> "Red heart."
/// (a text already ending in '.', '!' or '?' keeps its own punctuation).
pub fn answer_form(text: &str) -> String {
    let text = text.trim();
    let mut chars = text.chars();
    let capitalised: String = match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => String::new(),
    };
    if capitalised.ends_with(['.', '!', '?']) {
        capitalised
    } else {
        format!("{capitalised}.")
    }
}

/// One LLaVA conversation rendered with the template above.
pub fn conversation_text(record: &LlavaRecord, tokenizer: &TextTokenizer) -> Result<ImageText> {
    let mut text = ImageText { tokens: Vec::new(), loss: Vec::new() };
    for (human, gpt) in record.exchanges() {
        let question = human.replace(IMAGE_PLACEHOLDER, "");
        let prompt = format!("\nQuestion: {}\nAnswer:", question.trim());
        let answer = format!(" {}\n", gpt.trim());
        for (part, trained) in [(prompt, false), (answer, true)] {
            let ids = tokenizer.encode(&part).with_context(|| format!("conversation {}", record.id))?;
            text.loss.extend(std::iter::repeat_n(trained, ids.len()));
            text.tokens.extend(ids);
        }
    }
    anyhow::ensure!(!text.tokens.is_empty(), "conversation {} has no exchanges", record.id);
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::llava::Turn;

    #[test]
    fn answer_form_capitalises_and_closes_with_a_period() {
        assert_eq!(answer_form("yes"), "Yes.");
        assert_eq!(answer_form(" red heart "), "Red heart.");
        assert_eq!(answer_form("Smileys & Emotion"), "Smileys & Emotion.");
        assert_eq!(answer_form("Why not?"), "Why not?");
    }

    #[test]
    fn only_answers_are_trained_and_the_placeholder_is_removed() {
        let tok =
            TextTokenizer::train(["Question: What is it?\nAnswer: A red apple."; 30].iter().copied(), 300).unwrap();
        let turn = |from: &str, value: &str| Turn { from: from.into(), value: value.into() };
        let record = LlavaRecord {
            id: "r1".into(),
            image: Some("a.png".into()),
            conversations: vec![
                turn("human", "<image>\nWhat is it?"),
                turn("gpt", "A red apple."),
                turn("human", "What colour?"),
                turn("gpt", "Red."),
            ],
        };
        let text = conversation_text(&record, &tok).unwrap();
        let trained: Vec<u32> = text.tokens.iter().zip(&text.loss).filter(|(_, &l)| l).map(|(&t, _)| t).collect();
        assert_eq!(tok.decode(&trained).unwrap(), " A red apple.\n Red.\n");
        assert_eq!(
            tok.decode(&text.tokens).unwrap(),
            "\nQuestion: What is it?\nAnswer: A red apple.\n\nQuestion: What colour?\nAnswer: Red.\n"
        );
    }
}
