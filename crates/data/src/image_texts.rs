//! The text that follows an image in a training sequence, built from the standard formats: captions of
//! WebDataset shards and LLaVA conversations. The mixing sampler only needs these token ids (to count
//! and pack); the trainer fetches the image itself by the example's index.
//!
//! Conversations are rendered with one fixed template, shared by mixing and fine-tuning so the model
//! sees the same format in both: for each exchange `"Question: {human}\nAnswer: {gpt}"` followed by a
//! newline between exchanges (the `<image>` placeholder is removed: the image tokens already precede the
//! text, as in the paper). Only the answer tokens are trained (LLaVA's masking of human turns).
use std::path::PathBuf;

use anyhow::{Context, Result};

use crate::llava::{LlavaRecord, IMAGE_PLACEHOLDER};
use crate::packing::ImageText;
use crate::tokenizer::TextTokenizer;
use crate::webdataset::{read_shard, WdsProblem};

/// Captions of every sample in `shards` (in shard order), tokenized, with the sample keys in the same
/// order. A malformed sample fails with its shard and member: training must not drop data silently.
pub fn caption_texts(
    shards: &[PathBuf],
    tokenizer: &TextTokenizer,
) -> Result<(Vec<String>, Vec<ImageText>)> {
    let mut keys = Vec::new();
    let mut captions = Vec::new();
    for shard in shards {
        read_shard(shard, |item| {
            let sample = item.map_err(|p: WdsProblem| anyhow::anyhow!("{p}"))?;
            keys.push(sample.key);
            captions.push(sample.caption);
            Ok(())
        })?;
    }
    let refs: Vec<&str> = captions.iter().map(String::as_str).collect();
    let texts = tokenizer
        .encode_batch(&refs)
        .context("tokenizing captions")?
        .into_iter()
        .map(ImageText::caption)
        .collect();
    Ok((keys, texts))
}

/// One LLaVA conversation rendered with the template above.
pub fn conversation_text(record: &LlavaRecord, tokenizer: &TextTokenizer) -> Result<ImageText> {
    let mut text = ImageText {
        tokens: Vec::new(),
        loss: Vec::new(),
    };
    for (n, (human, gpt)) in record.exchanges().enumerate() {
        let question = human.replace(IMAGE_PLACEHOLDER, "");
        let prompt = format!(
            "{}Question: {}\nAnswer:",
            if n > 0 { "\n" } else { "" },
            question.trim()
        );
        let answer = format!(" {}", gpt.trim());
        for (part, trained) in [(prompt, false), (answer, true)] {
            let ids = tokenizer
                .encode(&part)
                .with_context(|| format!("conversation {}", record.id))?;
            text.loss.extend(std::iter::repeat_n(trained, ids.len()));
            text.tokens.extend(ids);
        }
    }
    anyhow::ensure!(
        !text.tokens.is_empty(),
        "conversation {} has no exchanges",
        record.id
    );
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::llava::Turn;

    #[test]
    fn only_answers_are_trained_and_the_placeholder_is_removed() {
        let tok = TextTokenizer::train(
            ["Question: What is it?\nAnswer: A red apple."; 30]
                .iter()
                .copied(),
            300,
        )
        .unwrap();
        let turn = |from: &str, value: &str| Turn {
            from: from.into(),
            value: value.into(),
        };
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
        let trained: Vec<u32> = text
            .tokens
            .iter()
            .zip(&text.loss)
            .filter(|(_, &l)| l)
            .map(|(&t, _)| t)
            .collect();
        assert_eq!(tok.decode(&trained).unwrap(), " A red apple. Red.");
        assert_eq!(
            tok.decode(&text.tokens).unwrap(),
            "Question: What is it?\nAnswer: A red apple.\nQuestion: What colour?\nAnswer: Red."
        );
    }
}
