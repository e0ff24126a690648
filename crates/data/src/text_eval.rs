//! Text benchmarks as multiple-choice JSONL, one item a line:
//! `{"id","task","context","choices":[..],"gold":i,"chance":p,"metric"?}` and, for tasks scored by
//! partial evaluation (Winogrande), `"contexts":[..]`, one context per choice that replaces `context`.
//!
//! Choices are stored as lm-eval-harness documents hold them, without the target delimiter: a scorer
//! appends `" " + choice` to the context (the requests files carry that space; it is removed here).
//! `chance` is the accuracy of guessing uniformly, used by the stable score (accuracy minus chance);
//! left out, it is 1/#choices. `id` may be a number. vlmix-eval reads task files through these types.
//! The builder from OLMES' request files is in vlmix-ingest (`text_eval`).
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use vlmix_atomic_file::write_atomic_with;

use crate::jsonl::read_lines;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(from = "ChoiceLine")]
pub struct ChoiceItem {
    pub id: String,
    pub task: String,
    pub context: String,
    pub choices: Vec<String>,
    pub gold: usize,
    pub chance: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contexts: Option<Vec<String>>,
    /// The source suite's primary metric for this task (OLMES' `primary_metric`); None: the
    /// scorer's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metric: Option<ChoiceMetric>,
}

/// A [`ChoiceItem`] as a line may give it: `chance` may be left out, `id` may be a number.
#[derive(Deserialize)]
struct ChoiceLine {
    #[serde(deserialize_with = "crate::jsonl::string_or_number")]
    id: String,
    task: String,
    context: String,
    choices: Vec<String>,
    gold: usize,
    #[serde(default)]
    chance: Option<f64>,
    #[serde(default)]
    contexts: Option<Vec<String>>,
    #[serde(default)]
    metric: Option<ChoiceMetric>,
}

impl From<ChoiceLine> for ChoiceItem {
    fn from(line: ChoiceLine) -> Self {
        let chance = line.chance.unwrap_or(1.0 / line.choices.len().max(1) as f64);
        let ChoiceLine { id, task, context, choices, gold, contexts, metric, .. } = line;
        Self { id, task, context, choices, gold, chance, contexts, metric }
    }
}

/// How a multiple-choice item is judged: lm-eval's `acc` (highest summed log-likelihood) or
/// `acc_norm` (highest log-likelihood per character). Both are always recorded; this names the
/// one that is the task's accuracy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", try_from = "String")]
pub enum ChoiceMetric {
    Acc,
    AccNorm,
}

impl TryFrom<String> for ChoiceMetric {
    type Error = String;

    fn try_from(name: String) -> std::result::Result<Self, String> {
        match name.as_str() {
            "acc" => Ok(Self::Acc),
            "acc_norm" => Ok(Self::AccNorm),
            _ => Err(format!("field `metric`: {name:?} is not \"acc\" or \"acc_norm\"")),
        }
    }
}

impl ChoiceMetric {
    /// OLMES' names (`task_config.primary_metric`): `acc_raw` is acc, `acc_per_char` is acc_norm.
    pub fn from_olmes(name: &str) -> Option<Self> {
        match name {
            "acc_raw" => Some(Self::Acc),
            "acc_per_char" => Some(Self::AccNorm),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Acc => "acc",
            Self::AccNorm => "acc_norm",
        }
    }
}

impl ChoiceItem {
    /// The context that choice `i` is scored after.
    pub fn context_for(&self, i: usize) -> &str {
        self.contexts.as_ref().and_then(|c| c.get(i)).map_or(self.context.as_str(), String::as_str)
    }

    /// Checks one item; the message names the field.
    pub fn validate(&self) -> std::result::Result<(), String> {
        if self.id.is_empty() {
            return Err("field `id`: empty".into());
        }
        if self.task.trim().is_empty() {
            return Err("field `task`: empty".into());
        }
        if self.choices.len() < 2 {
            return Err(format!("field `choices`: needs at least 2 choices, got {}", self.choices.len()));
        }
        if let Some(i) = self.choices.iter().position(String::is_empty) {
            return Err(format!("field `choices`[{i}]: empty choice"));
        }
        if self.gold >= self.choices.len() {
            return Err(format!(
                "field `gold`: index {} is out of range for {} choices",
                self.gold,
                self.choices.len()
            ));
        }
        if !(self.chance > 0.0 && self.chance < 1.0) {
            return Err(format!("field `chance`: {} is not a probability in (0, 1)", self.chance));
        }
        if let Some(contexts) = &self.contexts {
            if contexts.len() != self.choices.len() {
                return Err(format!(
                    "field `contexts`: {} contexts for {} choices",
                    contexts.len(),
                    self.choices.len()
                ));
            }
        }
        Ok(())
    }
}

pub fn write_choice_items(path: &Path, items: &[ChoiceItem]) -> Result<()> {
    write_atomic_with(path, |temp| {
        let mut out = BufWriter::new(File::create(temp).with_context(|| format!("create {}", temp.display()))?);
        for item in items {
            serde_json::to_writer(&mut out, item)?;
            out.write_all(b"\n")?;
        }
        out.flush().with_context(|| format!("write {}", temp.display()))
    })
}

/// One line of a multiple-choice file, parsed and checked.
fn parse_choice_line(line: &str) -> std::result::Result<ChoiceItem, String> {
    let item = serde_json::from_str::<ChoiceItem>(line).map_err(|e| crate::jsonl::line_error(&e))?;
    item.validate().map(|()| item)
}

/// Reads a multiple-choice JSONL file, failing on the first bad line with file and line number.
pub fn read_choice_items(path: &Path) -> Result<Vec<ChoiceItem>> {
    read_lines(path, "eval", parse_choice_line)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn gold_out_of_range_and_bad_json_name_the_line() {
        let dir = tempfile::tempdir().unwrap();
        let good = r#"{"id":"t/1","task":"t","context":"Q:","choices":[" a"," b"],"gold":1,"chance":0.5}"#;
        let path = write(dir.path(), "mc.jsonl", &format!("{good}\n{}\n", good.replace("\"gold\":1", "\"gold\":2")));
        let err = read_choice_items(&path).unwrap_err().to_string();
        assert!(err.contains("mc.jsonl:2:") && err.contains("field `gold`: index 2"), "{err}");
        let path = write(dir.path(), "trunc.jsonl", &format!("{good}\n{}\n", &good[..30]));
        assert!(read_choice_items(&path).unwrap_err().to_string().contains("trunc.jsonl:2:"));
        let path = write(dir.path(), "nochoices.jsonl", r#"{"id":"x","task":"t","context":"c","gold":0,"chance":0.5}"#);
        let err = read_choice_items(&path).unwrap_err().to_string();
        assert!(err.contains("nochoices.jsonl:1:") && err.contains("missing field `choices`"), "{err}");
    }

    #[test]
    fn per_choice_contexts_must_match_choices() {
        let item = ChoiceItem {
            id: "w/1".into(),
            task: "winogrande".into(),
            context: String::new(),
            choices: vec![" x".into(), " x".into()],
            gold: 0,
            chance: 0.5,
            contexts: Some(vec!["Sarah".into(), "Maria".into()]),
            metric: None,
        };
        assert!(item.validate().is_ok());
        assert_eq!(item.context_for(1), "Maria");
        let bad = ChoiceItem { contexts: Some(vec!["a".into()]), ..item };
        assert!(bad.validate().is_err());
    }
}
