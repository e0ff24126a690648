//! Multi-turn LLaVA conversations about training images, built only from their metadata (name,
//! category, keywords, colour word, country facts, Fashion-MNIST label). Question wording varies by a
//! stable hash of the key so the model cannot learn one template.
use super::fashion::{kind_of, with_article, LABELS};
use super::record::{pick, ImageRecord, Split, Subject};
use vlmix_data::llava::{LlavaRecord, Turn, IMAGE_PLACEHOLDER};

/// Basic colour terms answered when a name or keywords contain exactly one of them.
pub const COLOUR_WORDS: &[&str] =
    &["black", "white", "red", "green", "blue", "yellow", "orange", "purple", "brown", "gray", "grey", "pink"];

/// The conversation for a training image (held-out images get none).
pub fn conversation(record: &ImageRecord, image_path: &str) -> Option<LlavaRecord> {
    if record.split != Split::Train {
        return None;
    }
    let key = &record.key;
    let vary = |slot: &str, options: &[&str]| options[pick(&format!("{key}:{slot}"), options.len())].to_string();
    let mut qa: Vec<(String, String)> = Vec::new();
    match &record.subject {
        Subject::Clipart { title, keywords, category, .. } => {
            qa.push((
                vary(
                    "what",
                    &["What does this clip art show?", "What is this drawing of?", "Describe this picture briefly."],
                ),
                sentence(title),
            ));
            if !category.is_empty() {
                qa.push((
                    vary(
                        "cat",
                        &[
                            "Which section of the clip-art collection is it filed under?",
                            "What category is this clip art in?",
                        ],
                    ),
                    sentence(&category.join(" / ")),
                ));
            }
            if !keywords.is_empty() {
                qa.push((
                    vary("kw", &["Give a few keywords for it.", "Which tags describe it?"]),
                    keywords.iter().take(6).cloned().collect::<Vec<_>>().join(", "),
                ));
            }
            push_colour(&mut qa, &vary("colour", COLOUR_QUESTIONS), &[title.as_str()], keywords);
        }
        Subject::Stamp { description, category } => {
            qa.push((
                vary("what", &["What is in this picture?", "Describe this image.", "What does this stamp show?"]),
                description.clone(),
            ));
            if !category.is_empty() {
                qa.push((
                    vary("cat", &["What kind of thing is it?", "Which group of stamps does it belong to?"]),
                    sentence(&category.join(", ")),
                ));
            }
            push_colour(&mut qa, &vary("colour", COLOUR_QUESTIONS), &[description.as_str()], &[]);
        }
        Subject::Emoji { name, category, subcategory, keywords, skin_tone, .. } => {
            qa.push((
                vary("what", &["What does this emoji show?", "Which emoji is this?", "Name this emoji."]),
                sentence(name),
            ));
            qa.push((
                vary("cat", &["Which emoji category does it belong to?", "What is its emoji category?"]),
                sentence(category),
            ));
            qa.push((
                vary("sub", &["And its subgroup?", "Which subgroup within that category?"]),
                sentence(&subcategory.replace('-', " ")),
            ));
            if let Some(tone) = skin_tone {
                qa.push((vary("tone", &["What skin tone does it have?", "Which skin tone is shown?"]), sentence(tone)));
            }
            if !keywords.is_empty() {
                qa.push((
                    vary("kw", &["Give some keywords for it.", "Which words describe it?"]),
                    keywords.iter().take(6).cloned().collect::<Vec<_>>().join(", "),
                ));
            }
            push_colour(&mut qa, &vary("colour", COLOUR_QUESTIONS), &[name.as_str()], &[]);
        }
        Subject::Flag { country, capital, continent, .. } => {
            qa.push((vary("kind", &["What kind of picture is this?", "What is shown here?"]), "A flag.".to_string()));
            qa.push((
                vary("what", &["Which country or region does it belong to?", "Whose flag is it?", "Which flag is it?"]),
                sentence(country),
            ));
            if let Some(capital) = capital {
                qa.push((vary("capital", &["What is its capital?", "Which city is its capital?"]), sentence(capital)));
            }
            if let Some(continent) = continent {
                qa.push((
                    vary("continent", &["On which continent is it?", "Which continent is that in?"]),
                    sentence(continent),
                ));
            }
        }
        Subject::Fashion { label, .. } => {
            qa.push((
                vary("what", &["What is shown in this image?", "What is this?", "What object is in the photo?"]),
                sentence(&with_article(label)),
            ));
            qa.push((
                vary("kind", &["Is it clothing, footwear or a bag?", "Is that footwear, clothing or a bag?"]),
                sentence(kind_of(label)),
            ));
            let asked = if pick(&format!("{key}:pope"), 2) == 0 {
                label.clone()
            } else {
                let others: Vec<&str> = LABELS.iter().copied().filter(|l| l != label).collect();
                others[pick(&format!("{key}:absent"), others.len())].to_string()
            };
            let answer = sentence(if asked == *label { "yes" } else { "no" });
            qa.push((format!("Is there {} in the image?", with_article(&asked)), answer));
        }
    }
    let mut conversations = Vec::with_capacity(qa.len() * 2);
    for (i, (question, answer)) in qa.into_iter().enumerate() {
        let question = if i == 0 { format!("{IMAGE_PLACEHOLDER}\n{question}") } else { question };
        conversations.push(Turn { from: "human".into(), value: question });
        conversations.push(Turn { from: "gpt".into(), value: answer });
    }
    Some(LlavaRecord { id: key.clone(), image: Some(image_path.to_string()), conversations })
}

const COLOUR_QUESTIONS: &[&str] = &["What colour is it?", "Which colour does it mainly have?"];

fn push_colour(qa: &mut Vec<(String, String)>, question: &str, texts: &[&str], keywords: &[String]) {
    let mut found: Vec<&str> = Vec::new();
    let words =
        texts.iter().flat_map(|t| t.split(|c: char| !c.is_alphanumeric())).chain(keywords.iter().map(String::as_str));
    for word in words {
        let word = word.to_lowercase();
        if let Some(colour) = COLOUR_WORDS.iter().find(|c| **c == word) {
            let colour = if *colour == "grey" { "gray" } else { colour };
            if !found.contains(&colour) {
                found.push(colour);
            }
        }
    }
    if let [colour] = found.as_slice() {
        qa.push((question.to_string(), sentence(colour)));
    }
}

/// "red heart" -> "Red heart.": the answer form the scorers ask for too.
fn sentence(text: &str) -> String {
    vlmix_data::image_texts::answer_form(text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::images::record::Source;
    use image::RgbImage;

    fn record(subject: Subject, split: Split) -> ImageRecord {
        ImageRecord::new(Source::NotoEmoji, "x".into(), split, &RgbImage::new(2, 2), "c".into(), subject).unwrap()
    }

    #[test]
    fn emoji_conversation_is_multi_turn_with_one_placeholder() {
        let subject = Subject::Emoji {
            name: "red heart".into(),
            category: "Smileys & Emotion".into(),
            subcategory: "heart".into(),
            keywords: vec!["love".into()],
            skin_tone: None,
            codepoints: "2764".into(),
        };
        let conv = conversation(&record(subject, Split::Train), "images/k.png").unwrap();
        let text: Vec<&str> = conv.conversations.iter().map(|t| t.value.as_str()).collect();
        assert!(text[0].starts_with("<image>\n"));
        assert_eq!(text[1], "Red heart.");
        assert_eq!(text[3], "Smileys & Emotion.");
        assert!(text.contains(&"Red."), "{text:?}");
        assert_eq!(text.iter().map(|t| t.matches("<image>").count()).sum::<usize>(), 1);
    }

    #[test]
    fn heldout_images_get_no_conversation_and_fashion_asks_yes_no() {
        let subject = Subject::Fashion { label: "coat".into(), index: 3 };
        assert!(conversation(&record(subject.clone(), Split::Heldout), "i.png").is_none());
        let conv = conversation(&record(subject, Split::Train), "i.png").unwrap();
        let last = conv.conversations.len() - 1;
        assert!(conv.conversations[last - 1].value.starts_with("Is there "));
        let yes = conv.conversations[last - 1].value.contains(" a coat ");
        assert_eq!(conv.conversations[last].value, if yes { "Yes." } else { "No." });
        assert_eq!(conv.conversations[3].value, "Clothing.");
    }
}
