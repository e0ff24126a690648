//! The vision-language benchmarks in the files they ship as, read into vlmix eval items
//! ([`EvalItem`], images relative to the set's image folder) so the existing scorers grade them:
//! - VQAv2: `v2_OpenEnded_mscoco_<split>_questions.json` (`{"data_subtype", "questions": [{"image_id",
//!   "question", "question_id"}]}`) + `v2_mscoco_<split>_annotations.json` (`{"annotations":
//!   [{"question_id", "answers": [{"answer"} x 10]}]}`); images `COCO_<data_subtype>_<image_id:012>.jpg`.
//!   Open questions scored with VQA accuracy over the ten answers.
//! - GQA: `<split>_balanced_questions.json` (`{"<qid>": {"imageId", "question", "answer"}}`); images
//!   `<imageId>.jpg`. Open questions, exact match.
//! - TextVQA: `TextVQA_0.5.1_<split>.json` (`{"data": [{"question_id", "image_id", "question",
//!   "answers": [10 strings]}]}`); images `<image_id>.jpg`. VQA accuracy over the ten answers.
//! - POPE: JSONL lines `{"question_id", "image", "text", "label": "yes"|"no"}`; yes/no questions.
//!
//! A question whose image is missing, or that lacks a field, is a problem naming the file and the
//! question, for the caller's `on_bad_record` policy.
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::jsonl::visit_lines;
use crate::vl_eval::{EvalItem, QuestionType};

/// The file layout of an eval set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EvalFormat {
    Vqav2,
    Gqa,
    Textvqa,
    Pope,
}

/// One benchmark as the user has it on disk.
#[derive(Debug, Clone)]
pub struct EvalSource {
    /// Task name in reports.
    pub name: String,
    pub format: EvalFormat,
    /// The questions file (VQAv2 questions JSON, GQA / TextVQA JSON, POPE JSONL).
    pub questions: PathBuf,
    /// VQAv2 only: the annotations JSON.
    pub annotations: Option<PathBuf>,
    pub images: PathBuf,
}

/// Items read from one source, and the problems of the questions left out.
#[derive(Debug, Clone, Default)]
pub struct EvalRead {
    pub items: Vec<EvalItem>,
    pub problems: Vec<String>,
}

impl EvalSource {
    /// Reads every question; only unreadable or wrongly shaped files are errors.
    pub fn read(&self) -> Result<EvalRead> {
        let mut read = EvalRead::default();
        let questions = match self.format {
            EvalFormat::Vqav2 => self.vqav2()?,
            EvalFormat::Gqa => self.gqa()?,
            EvalFormat::Textvqa => self.textvqa()?,
            EvalFormat::Pope => self.pope()?,
        };
        for question in questions {
            match question.and_then(|q| self.item(q)) {
                Ok(item) => read.items.push(item),
                Err(problem) => read.problems.push(problem),
            }
        }
        if read.items.is_empty() && read.problems.is_empty() {
            bail!("{}: no questions", self.questions.display());
        }
        Ok(read)
    }

    fn item(&self, q: Question) -> Result<EvalItem, String> {
        if !self.images.join(&q.image).is_file() {
            return Err(format!(
                "{}: question {}: image {} does not exist",
                self.questions.display(),
                q.id,
                self.images.join(&q.image).display()
            ));
        }
        let (kind, chance) =
            if self.format == EvalFormat::Pope { (QuestionType::YesNo, 0.5) } else { (QuestionType::Open, 0.0) };
        Ok(EvalItem {
            id: q.id,
            task: self.name.clone(),
            image: q.image,
            question: q.question,
            answers: q.answers,
            kind,
            choices: None,
            chance,
        })
    }

    fn problem(&self, id: &str, message: &str) -> String {
        format!("{}: question {id}: {message}", self.questions.display())
    }

    fn vqav2(&self) -> Result<Vec<Result<Question, String>>> {
        let questions = read_json(&self.questions)?;
        let annotations_path = self.annotations.as_ref().with_context(|| {
            format!(
                "eval set {:?}: format vqav2 needs `annotations` (the v2_mscoco_*_annotations.json file)",
                self.name
            )
        })?;
        let annotations = read_json(annotations_path)?;
        let subtype = questions.get("data_subtype").and_then(Value::as_str).with_context(|| {
            format!("{}: no \"data_subtype\" (e.g. val2014), which names the COCO images", self.questions.display())
        })?;
        let list = array_field(&questions, "questions", &self.questions)?;
        let mut answers: HashMap<String, Vec<String>> = HashMap::new();
        for annotation in array_field(&annotations, "annotations", annotations_path)? {
            let Some(id) = annotation.get("question_id").map(id_text) else { continue };
            let given: Vec<String> = annotation
                .get("answers")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|a| a.get("answer")?.as_str().map(str::to_string))
                .collect();
            answers.insert(id, given);
        }
        Ok(list
            .iter()
            .map(|q| {
                let id = q.get("question_id").map(id_text).ok_or_else(|| self.problem("?", "no question_id"))?;
                let image_id = q
                    .get("image_id")
                    .and_then(Value::as_u64)
                    .ok_or_else(|| self.problem(&id, "no numeric image_id"))?;
                let question = str_field(q, "question").ok_or_else(|| self.problem(&id, "no question"))?;
                let given = answers
                    .remove(&id)
                    .filter(|a| !a.is_empty())
                    .ok_or_else(|| self.problem(&id, &format!("no answers in {}", annotations_path.display())))?;
                Ok(Question { image: format!("COCO_{subtype}_{image_id:012}.jpg"), id, question, answers: given })
            })
            .collect())
    }

    fn gqa(&self) -> Result<Vec<Result<Question, String>>> {
        let questions = read_json(&self.questions)?;
        let Value::Object(map) = questions else {
            bail!("{}: expected an object of question id -> question (GQA's layout)", self.questions.display())
        };
        let mut out: Vec<(String, Result<Question, String>)> = map
            .into_iter()
            .map(|(id, q)| {
                let question = (|| {
                    let image = str_field(&q, "imageId").ok_or_else(|| self.problem(&id, "no imageId"))?;
                    let text = str_field(&q, "question").ok_or_else(|| self.problem(&id, "no question"))?;
                    let answer = str_field(&q, "answer")
                        .ok_or_else(|| self.problem(&id, "no answer (test-dev without answers cannot be scored)"))?;
                    Ok(Question {
                        image: format!("{image}.jpg"),
                        id: id.clone(),
                        question: text,
                        answers: vec![answer],
                    })
                })();
                (id, question)
            })
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out.into_iter().map(|(_, q)| q).collect())
    }

    fn textvqa(&self) -> Result<Vec<Result<Question, String>>> {
        let file = read_json(&self.questions)?;
        Ok(array_field(&file, "data", &self.questions)?
            .iter()
            .map(|q| {
                let id = q.get("question_id").map(id_text).ok_or_else(|| self.problem("?", "no question_id"))?;
                let image = str_field(q, "image_id").ok_or_else(|| self.problem(&id, "no image_id"))?;
                let question = str_field(q, "question").ok_or_else(|| self.problem(&id, "no question"))?;
                let answers: Vec<String> = q
                    .get("answers")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter_map(|a| a.as_str().map(str::to_string))
                    .collect();
                if answers.is_empty() {
                    return Err(self.problem(&id, "no answers (the test split has none)"));
                }
                Ok(Question { image: format!("{image}.jpg"), id, question, answers })
            })
            .collect())
    }

    fn pope(&self) -> Result<Vec<Result<Question, String>>> {
        let mut out = Vec::new();
        visit_lines(
            &self.questions,
            "POPE",
            |line| serde_json::from_str::<Value>(line).map_err(|e| format!("malformed JSON: {e}")),
            |item| {
                out.push(match item {
                    Err(problem) => Err(format!("{}:{}: {}", self.questions.display(), problem.line, problem.message)),
                    Ok(q) => (|| {
                        let id =
                            q.get("question_id").map(id_text).ok_or_else(|| self.problem("?", "no question_id"))?;
                        let image = str_field(&q, "image").ok_or_else(|| self.problem(&id, "no image"))?;
                        let question =
                            str_field(&q, "text").ok_or_else(|| self.problem(&id, "no text (the question)"))?;
                        let label = str_field(&q, "label")
                            .or_else(|| str_field(&q, "answer"))
                            .ok_or_else(|| self.problem(&id, "no label"))?;
                        let label = label.trim().to_ascii_lowercase();
                        if label != "yes" && label != "no" {
                            return Err(self.problem(&id, &format!("label {label:?} is not yes or no")));
                        }
                        Ok(Question { image, id, question, answers: vec![label] })
                    })(),
                });
                Ok(())
            },
        )?;
        Ok(out)
    }
}

/// A question in common form before its image is checked.
struct Question {
    id: String,
    image: String,
    question: String,
    answers: Vec<String>,
}

fn read_json(path: &Path) -> Result<Value> {
    let bytes = std::fs::read(path).with_context(|| format!("reading eval file {}", path.display()))?;
    serde_json::from_slice(&bytes).with_context(|| format!("parsing eval file {}", path.display()))
}

fn array_field<'a>(value: &'a Value, field: &str, path: &Path) -> Result<&'a Vec<Value>> {
    value.get(field).and_then(Value::as_array).with_context(|| format!("{}: no array {field:?}", path.display()))
}

fn str_field(value: &Value, field: &str) -> Option<String> {
    value.get(field).and_then(Value::as_str).map(str::to_string).filter(|s| !s.trim().is_empty())
}

/// Question ids are numbers in VQAv2 / TextVQA / POPE and strings in GQA.
fn id_text(value: &Value) -> String {
    value.as_str().map_or_else(|| value.to_string(), str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn images(dir: &Path, names: &[&str]) -> PathBuf {
        let images = dir.join("images");
        std::fs::create_dir_all(&images).unwrap();
        for name in names {
            std::fs::write(images.join(name), b"jpeg").unwrap();
        }
        images
    }

    fn source(dir: &Path, format: EvalFormat, questions: &str, annotations: Option<&str>) -> EvalSource {
        EvalSource {
            name: "t".into(),
            format,
            questions: dir.join(questions),
            annotations: annotations.map(|a| dir.join(a)),
            images: dir.join("images"),
        }
    }

    #[test]
    fn vqav2_questions_and_annotations_give_ten_answers() {
        let dir = tempfile::tempdir().unwrap();
        images(dir.path(), &["COCO_val2014_000000000042.jpg"]);
        let questions = json!({
            "info": {}, "task_type": "Open-Ended", "data_type": "mscoco", "license": {}, "data_subtype": "val2014",
            "questions": [
                {"image_id": 42, "question": "What color is the cat?", "question_id": 42000},
                {"image_id": 7, "question": "Is it raining?", "question_id": 7001}
            ]
        });
        let answers: Vec<Value> =
            ["black", "black", "black", "dark", "black", "grey", "black", "black", "black", "black"]
                .iter()
                .enumerate()
                .map(|(i, a)| json!({"answer": a, "answer_confidence": "yes", "answer_id": i + 1}))
                .collect();
        let annotations = json!({
            "info": {}, "license": {}, "data_subtype": "val2014", "annotation_type": "mscoco", "data_type": "mscoco",
            "annotations": [
                {"question_type": "what color is the", "multiple_choice_answer": "black", "answers": answers, "image_id": 42, "answer_type": "other", "question_id": 42000},
                {"question_type": "is it", "multiple_choice_answer": "no", "answers": [{"answer": "no", "answer_confidence": "yes", "answer_id": 1}], "image_id": 7, "answer_type": "yes/no", "question_id": 7001}
            ]
        });
        std::fs::write(dir.path().join("q.json"), questions.to_string()).unwrap();
        std::fs::write(dir.path().join("a.json"), annotations.to_string()).unwrap();
        let read = source(dir.path(), EvalFormat::Vqav2, "q.json", Some("a.json")).read().unwrap();
        assert_eq!(read.items.len(), 1);
        let item = &read.items[0];
        assert_eq!(
            (item.id.as_str(), item.image.as_str(), item.kind),
            ("42000", "COCO_val2014_000000000042.jpg", QuestionType::Open)
        );
        assert_eq!(item.answers.len(), 10);
        assert_eq!(read.problems.len(), 1);
        assert!(
            read.problems[0].contains("q.json: question 7001: image")
                && read.problems[0].contains("COCO_val2014_000000000007.jpg does not exist"),
            "{:?}",
            read.problems
        );
        let err = format!("{:#}", source(dir.path(), EvalFormat::Vqav2, "q.json", None).read().unwrap_err());
        assert!(err.contains("needs `annotations`"), "{err}");
    }

    #[test]
    fn gqa_questions_read_with_their_single_answer() {
        let dir = tempfile::tempdir().unwrap();
        images(dir.path(), &["n161313.jpg", "n2.jpg"]);
        let questions = json!({
            "201307251": {"semantic": [], "entailed": [], "equivalent": ["201307251"], "question": "Is it overcast?", "imageId": "n161313", "isBalanced": true, "groups": {"global": null, "local": "06-weather"}, "answer": "no", "semanticStr": "...", "annotations": {}, "types": {"detailed": "weather", "semantic": "global", "structural": "verify"}, "fullAnswer": "No, it is clear."},
            "201640614": {"question": "Who is wearing the dress?", "imageId": "n2", "answer": "woman", "fullAnswer": "The woman is wearing a dress."},
            "999": {"question": "Which?", "imageId": "n3"}
        });
        std::fs::write(dir.path().join("testdev_balanced_questions.json"), questions.to_string()).unwrap();
        let read = source(dir.path(), EvalFormat::Gqa, "testdev_balanced_questions.json", None).read().unwrap();
        let got: Vec<(&str, &str, &str)> =
            read.items.iter().map(|i| (i.id.as_str(), i.image.as_str(), i.answers[0].as_str())).collect();
        assert_eq!(got, [("201307251", "n161313.jpg", "no"), ("201640614", "n2.jpg", "woman")]);
        assert!(read.problems[0].contains("question 999: no answer"), "{:?}", read.problems);
    }

    #[test]
    fn textvqa_reads_ten_answers_per_question() {
        let dir = tempfile::tempdir().unwrap();
        images(dir.path(), &["003a8ae2ef43b901.jpg"]);
        let file = json!({
            "dataset_type": "val", "dataset_name": "textvqa", "dataset_version": "0.5.1",
            "data": [
                {"question": "what is the brand of this camera?", "image_id": "003a8ae2ef43b901", "image_classes": ["Cassette deck"], "flickr_original_url": "https://x", "flickr_300k_url": "https://y", "image_width": 1024, "image_height": 664, "answers": ["nous les gosses", "dakota", "clos culombu", "dakota digital", "dakota", "dakota", "dakota digital", "dakota", "dakota", "dakota"], "question_tokens": ["what"], "question_id": 34602, "set_name": "val"}
            ]
        });
        std::fs::write(dir.path().join("TextVQA_0.5.1_val.json"), file.to_string()).unwrap();
        let read = source(dir.path(), EvalFormat::Textvqa, "TextVQA_0.5.1_val.json", None).read().unwrap();
        assert!(read.problems.is_empty(), "{:?}", read.problems);
        assert_eq!((read.items[0].id.as_str(), read.items[0].answers.len()), ("34602", 10));
    }

    #[test]
    fn pope_lines_become_yes_no_items() {
        let dir = tempfile::tempdir().unwrap();
        images(dir.path(), &["COCO_val2014_000000310196.jpg"]);
        let lines = [
            r#"{"question_id": 1, "image": "COCO_val2014_000000310196.jpg", "text": "Is there a snowboard in the image?", "label": "yes"}"#,
            r#"{"question_id": 2, "image": "COCO_val2014_000000310196.jpg", "text": "Is there a dog in the image?", "label": "no"}"#,
            r#"{"question_id": 3, "image": "COCO_val2014_000000310196.jpg", "text": "Is there a cat?", "label": "maybe"}"#,
            r#"{"question_id": 4, "image": "#,
        ];
        std::fs::write(dir.path().join("coco_pope_random.json"), lines.join("\n")).unwrap();
        let read = source(dir.path(), EvalFormat::Pope, "coco_pope_random.json", None).read().unwrap();
        assert_eq!(read.items.len(), 2);
        assert_eq!(
            (read.items[1].kind, read.items[1].answers[0].as_str(), read.items[1].chance),
            (QuestionType::YesNo, "no", 0.5)
        );
        assert!(read.problems[0].contains("question 3: label \"maybe\""), "{:?}", read.problems);
        assert!(read.problems[1].contains("coco_pope_random.json:4: malformed JSON"), "{:?}", read.problems);
    }
}
