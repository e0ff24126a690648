//! Vision-language eval sets as JSONL, one item a line:
//! `{"id","task","image","question","answers":[..],"type":"open"|"yes_no"|"choice","choices"?,"chance"?}`.
//!
//! `image` is relative to the JSONL file's folder (or absolute). `answers[0]` is the gold answer
//! (vlmix-eval scores choices against it and treats several answers as VQA annotators), so writers
//! put exactly one answer for open questions. `chance` is the accuracy of guessing without the image;
//! left out, it is 0 for open questions, 1/2 for yes/no and 1/#choices for a choice. `id` may be a
//! number. vlmix-eval reads task files through these types.
use std::collections::HashSet;
use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::jsonl::string_or_number;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", try_from = "String")]
pub enum QuestionType {
    Open,
    YesNo,
    Choice,
}

impl TryFrom<String> for QuestionType {
    type Error = String;

    fn try_from(name: String) -> Result<Self, String> {
        match name.as_str() {
            "open" => Ok(Self::Open),
            "yes_no" => Ok(Self::YesNo),
            "choice" => Ok(Self::Choice),
            _ => Err(format!("field `type`: {name:?} is not one of \"open\", \"yes_no\", \"choice\"")),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(from = "EvalLine")]
pub struct EvalItem {
    pub id: String,
    pub task: String,
    pub image: String,
    pub question: String,
    pub answers: Vec<String>,
    #[serde(rename = "type")]
    pub kind: QuestionType,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub choices: Option<Vec<String>>,
    pub chance: f64,
}

/// An [`EvalItem`] as a line may give it: `chance` may be left out, `id` may be a number.
#[derive(Deserialize)]
struct EvalLine {
    #[serde(deserialize_with = "string_or_number")]
    id: String,
    task: String,
    image: String,
    question: String,
    answers: Vec<String>,
    #[serde(rename = "type")]
    kind: QuestionType,
    #[serde(default)]
    choices: Option<Vec<String>>,
    #[serde(default)]
    chance: Option<f64>,
}

impl From<EvalLine> for EvalItem {
    fn from(line: EvalLine) -> Self {
        let chance = line.chance.unwrap_or(match (line.kind, &line.choices) {
            (QuestionType::Open, _) => 0.0,
            (QuestionType::YesNo, _) => 0.5,
            (QuestionType::Choice, choices) => 1.0 / choices.as_ref().map_or(1, Vec::len).max(1) as f64,
        });
        let EvalLine { id, task, image, question, answers, kind, choices, .. } = line;
        Self { id, task, image, question, answers, kind, choices, chance }
    }
}

/// A yes/no answer (`Yes`, `no.`) as a bool; `None` for anything else.
pub fn yes_no_answer(answer: &str) -> Option<bool> {
    let answer = answer.trim().trim_end_matches('.').to_ascii_lowercase();
    match answer.as_str() {
        "yes" => Some(true),
        "no" => Some(false),
        _ => None,
    }
}

impl EvalItem {
    /// Checks one item whose image is relative to `base`; returns the image's path.
    pub fn check(&self, base: &Path) -> Result<PathBuf, String> {
        if self.id.is_empty() {
            return Err("field `id`: empty".into());
        }
        if self.task.trim().is_empty() {
            return Err("field `task`: empty".into());
        }
        if self.question.trim().is_empty() {
            return Err("field `question`: empty".into());
        }
        if self.answers.is_empty() || self.answers.iter().any(|a| a.trim().is_empty()) {
            return Err("field `answers`: needs at least one non-empty answer".into());
        }
        if !(0.0..=1.0).contains(&self.chance) {
            return Err(format!("field `chance`: {} is not a probability in [0, 1]", self.chance));
        }
        match (self.kind, &self.choices) {
            (QuestionType::Choice, Some(choices)) => {
                if choices.len() < 2 || choices.iter().any(|c| c.is_empty()) {
                    return Err("field `choices`: needs at least 2 non-empty choices".into());
                }
                if let Some(stray) = self.answers.iter().find(|a| !choices.contains(a)) {
                    return Err(format!("field `answers`: {stray:?} is not one of `choices` {choices:?}"));
                }
            }
            (QuestionType::Choice, None) => return Err("a choice item needs field `choices`".into()),
            (QuestionType::YesNo, _) => {
                if yes_no_answer(&self.answers[0]).is_none() {
                    return Err(format!(
                        "field `answers`: a yes_no answer must be yes or no, got {:?}",
                        self.answers[0]
                    ));
                }
            }
            (QuestionType::Open, _) => {}
        }
        let path = base.join(&self.image);
        if self.image.is_empty() || !path.is_file() {
            return Err(format!("field `image`: {} does not exist", path.display()));
        }
        Ok(path)
    }
}

/// A problem with one line (0: the whole file).
#[derive(Debug, Clone, PartialEq)]
pub struct EvalProblem {
    pub file: PathBuf,
    pub line: usize,
    pub message: String,
}

impl fmt::Display for EvalProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: {}", self.file.display(), self.line, self.message)
    }
}

/// Valid items with their lines, and every problem.
#[derive(Debug, Clone, Default)]
pub struct EvalSet {
    pub items: Vec<(usize, EvalItem)>,
    pub problems: Vec<EvalProblem>,
}

impl EvalSet {
    /// Reads and validates a JSONL file; only I/O failures are errors.
    pub fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read(path).with_context(|| format!("reading eval set {}", path.display()))?;
        let base = path.parent().unwrap_or(Path::new("."));
        let mut set = EvalSet::default();
        let mut seen = HashSet::new();
        for (index, line) in text.split(|&b| b == b'\n').enumerate() {
            let number = index + 1;
            let problem = |message: String| EvalProblem { file: path.to_path_buf(), line: number, message };
            let line = match std::str::from_utf8(line) {
                Ok(line) if line.trim().is_empty() => continue,
                Ok(line) => line,
                Err(err) => {
                    set.problems.push(problem(format!("not UTF-8: {err}")));
                    continue;
                }
            };
            match parse_item(line, base) {
                Ok(item) => {
                    if !seen.insert((item.task.clone(), item.id.clone())) {
                        set.problems.push(problem(format!("id {:?} repeats within task {:?}", item.id, item.task)));
                    } else {
                        set.items.push((number, item));
                    }
                }
                Err(message) => set.problems.push(problem(message)),
            }
        }
        if set.items.is_empty() && set.problems.is_empty() {
            set.problems.push(EvalProblem { file: path.to_path_buf(), line: 0, message: "no items".into() });
        }
        Ok(set)
    }
}

fn parse_item(line: &str, base: &Path) -> Result<EvalItem, String> {
    let item: EvalItem = serde_json::from_str(line).map_err(|err| crate::jsonl::line_error(&err))?;
    item.check(base).map(|_| item)
}

/// Writes items as JSONL, atomically.
pub fn write_eval_set(path: &Path, items: &[EvalItem]) -> Result<()> {
    let mut bytes = Vec::new();
    for item in items {
        serde_json::to_writer(&mut bytes, item).context("serialising eval item")?;
        bytes.write_all(b"\n")?;
    }
    vlmix_engine::atomic_file::write_atomic(path, &bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(id: &str, kind: QuestionType, answers: &[&str], choices: Option<&[&str]>) -> EvalItem {
        EvalItem {
            id: id.into(),
            task: "t".into(),
            image: "img/a.png".into(),
            question: "What?".into(),
            answers: answers.iter().map(|s| s.to_string()).collect(),
            kind,
            choices: choices.map(|c| c.iter().map(|s| s.to_string()).collect()),
            chance: 0.5,
        }
    }

    #[test]
    fn round_trip_and_line_numbered_problems() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("img")).unwrap();
        std::fs::write(dir.path().join("img/a.png"), b"x").unwrap();
        let good = vec![
            item("1", QuestionType::YesNo, &["yes"], None),
            item("2", QuestionType::Choice, &["red"], Some(&["red", "blue"])),
            item("3", QuestionType::Open, &["cat"], None),
        ];
        let path = dir.path().join("t.jsonl");
        write_eval_set(&path, &good).unwrap();
        let set = EvalSet::read(&path).unwrap();
        assert!(set.problems.is_empty(), "{:?}", set.problems);
        assert_eq!(set.items.iter().map(|(_, i)| i.clone()).collect::<Vec<_>>(), good);
        assert_eq!(set.items[0].1.kind, QuestionType::YesNo);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains(r#""type":"yes_no""#), "{text}");

        let mut bad_image = item("4", QuestionType::Open, &["x"], None);
        bad_image.image = "img/none.png".into();
        let lines = [
            serde_json::to_string(&good[0]).unwrap(),
            "{\"id\": 5, \"task\": ".to_string(),
            serde_json::to_string(&item("6", QuestionType::Choice, &["green"], Some(&["red", "blue"]))).unwrap(),
            serde_json::to_string(&bad_image).unwrap(),
            serde_json::to_string(&item("7", QuestionType::YesNo, &["maybe"], None)).unwrap(),
            serde_json::to_string(&good[0]).unwrap(),
            r#"{"id":"8","task":"t","image":"img/a.png","question":"Q","answers":["a"],"type":"essay","chance":0}"#
                .to_string(),
        ];
        let path = dir.path().join("bad.jsonl");
        std::fs::write(&path, lines.join("\n")).unwrap();
        let set = EvalSet::read(&path).unwrap();
        assert_eq!(set.items.len(), 1);
        let got: Vec<String> = set.problems.iter().map(ToString::to_string).collect();
        let want = [
            ":2: malformed JSON",
            ":3: field `answers`",
            ":4: field `image`",
            ":5: field `answers`",
            ":6: id \"1\" repeats",
            ":7: field `type`",
        ];
        assert_eq!(got.len(), want.len(), "{got:#?}");
        for (g, w) in got.iter().zip(want) {
            assert!(g.contains(w) && g.contains("bad.jsonl"), "{g} should contain {w}");
        }
    }
}
