//! Eval tasks, read from JSONL files (one item per line; one file may hold several tasks) through
//! the types that write them: a vision-language line is a [`vlmix_data::vl_eval::EvalItem`], a text
//! multiple-choice line (lm-eval style) a [`vlmix_data::text_eval::ChoiceItem`]; their docs give the
//! fields and defaults. A line with `question` is vision-language, one with `context` text. `metric`
//! ("acc" or "acc_norm", the source suite's primary metric) defaults to acc_norm here; a task's items
//! must agree on it. Errors name file, line and field.

use crate::scorer::ImageRef;
use anyhow::{anyhow, bail, Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::HashSet;
use std::io::BufRead;
use std::path::{Path, PathBuf};
use vlmix_data::jsonl::{line_error, open_text};
use vlmix_data::text_eval::ChoiceItem;
pub use vlmix_data::text_eval::ChoiceMetric;
use vlmix_data::vl_eval::{yes_no_answer, EvalItem, QuestionType};

/// Which group a task's stable score is averaged into.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Modality {
    Vision,
    Text,
}

/// How a vision-language question is asked and scored.
#[derive(Debug, Clone, PartialEq)]
pub enum VlQuestion {
    /// Free-form answer, generated and scored with VQAv2 accuracy against `answers`.
    Open { answers: Vec<String> },
    /// POPE-style; `gold_yes` is whether the reference answer is "yes".
    YesNo { gold_yes: bool },
    /// Pick one of `choices` by log-likelihood; `gold` indexes `choices`.
    Choice { choices: Vec<String>, gold: usize },
}

/// One vision-language item.
#[derive(Debug, Clone, PartialEq)]
pub struct VlItem {
    pub id: String,
    pub image: ImageRef,
    pub question: String,
    pub kind: VlQuestion,
    pub chance: f64,
}

/// One text multiple-choice item: continuation `" " + choices[i]` scored after `context`, or after
/// `contexts[i]` when the task varies the context per choice (Winogrande's partial evaluation).
#[derive(Debug, Clone, PartialEq)]
pub struct TextChoiceItem {
    pub id: String,
    pub context: String,
    pub contexts: Option<Vec<String>>,
    pub choices: Vec<String>,
    pub gold: usize,
    pub chance: f64,
    /// Which of acc / acc_norm is the task's accuracy (both are recorded).
    pub metric: ChoiceMetric,
}

/// A task's items; all of one modality.
#[derive(Debug, Clone, PartialEq)]
pub enum TaskItems {
    Vision(Vec<VlItem>),
    Text(Vec<TextChoiceItem>),
}

/// A named task loaded from a JSONL file.
#[derive(Debug, Clone, PartialEq)]
pub struct Task {
    pub name: String,
    pub source: PathBuf,
    pub items: TaskItems,
}

impl Task {
    pub fn modality(&self) -> Modality {
        match self.items {
            TaskItems::Vision(_) => Modality::Vision,
            TaskItems::Text(_) => Modality::Text,
        }
    }

    pub fn len(&self) -> usize {
        match &self.items {
            TaskItems::Vision(items) => items.len(),
            TaskItems::Text(items) => items.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

enum Item {
    Vision(VlItem),
    Text(TextChoiceItem),
}

/// Loads every task in the given JSONL files; a task name may appear in only one file.
pub fn load_tasks(paths: &[PathBuf]) -> Result<Vec<Task>> {
    let mut tasks: Vec<Task> = Vec::new();
    for path in paths {
        for task in load_task_file(path)? {
            if let Some(other) = tasks.iter().find(|t| t.name == task.name) {
                bail!("task {:?} is defined in both {} and {}", task.name, other.source.display(), path.display());
            }
            tasks.push(task);
        }
    }
    Ok(tasks)
}

/// Loads the tasks of one JSONL file, in order of first appearance.
pub fn load_task_file(path: &Path) -> Result<Vec<Task>> {
    let base = path.parent().unwrap_or(Path::new("."));
    let mut tasks: Vec<Task> = Vec::new();
    let mut seen_ids: HashSet<(String, String)> = HashSet::new();
    for (index, line) in open_text(path, "task")?.lines().enumerate() {
        let at = || format!("{}:{}", path.display(), index + 1);
        let line = line.with_context(|| format!("{}: unreadable (truncated, or not UTF-8 text)", at()))?;
        if line.trim().is_empty() {
            continue;
        }
        let (task_name, item) = parse_line(&line, base).map_err(|message| anyhow!("{}: {message}", at()))?;
        let id = match &item {
            Item::Vision(i) => i.id.clone(),
            Item::Text(i) => i.id.clone(),
        };
        if !seen_ids.insert((task_name.clone(), id.clone())) {
            bail!("{}: field `id`: {id:?} repeats within task {task_name:?}", at());
        }
        let task = match tasks.iter_mut().find(|t| t.name == task_name) {
            Some(task) => task,
            None => {
                let items = match item {
                    Item::Vision(_) => TaskItems::Vision(Vec::new()),
                    Item::Text(_) => TaskItems::Text(Vec::new()),
                };
                tasks.push(Task { name: task_name.clone(), source: path.to_path_buf(), items });
                tasks.last_mut().expect("just pushed")
            }
        };
        match (&mut task.items, item) {
            (TaskItems::Vision(items), Item::Vision(item)) => items.push(item),
            (TaskItems::Text(items), Item::Text(item))
                if items.first().is_some_and(|first| first.metric != item.metric) =>
            {
                bail!(
                    "{}: field `metric`: task {task_name:?} mixes {} and {}",
                    at(),
                    items[0].metric.name(),
                    item.metric.name()
                )
            }
            (TaskItems::Text(items), Item::Text(item)) => items.push(item),
            _ => bail!("{}: task {task_name:?} mixes vision-language and text items", at()),
        }
    }
    if tasks.is_empty() {
        bail!("task file {} has no items", path.display());
    }
    Ok(tasks)
}

/// A vision-language task from eval items read elsewhere (a benchmark in its own file layout), with
/// images relative to `images`; each item is checked exactly as a JSONL line is.
pub fn vl_task(name: &str, source: &Path, images: &Path, items: &[EvalItem]) -> Result<Task> {
    let mut seen = HashSet::new();
    let mut parsed = Vec::with_capacity(items.len());
    for item in items {
        let at = || format!("{}: question {}", source.display(), item.id);
        if !seen.insert(item.id.clone()) {
            bail!("{}: field `id`: repeats within task {name:?}", at());
        }
        parsed.push(vl_item(item.clone(), images).map_err(|message| anyhow!("{}: {message}", at()))?);
    }
    if parsed.is_empty() {
        bail!("task {name:?} from {} has no items", source.display());
    }
    Ok(Task { name: name.to_string(), source: source.to_path_buf(), items: TaskItems::Vision(parsed) })
}

/// One line: its task and item, or what is wrong with it (naming the field).
fn parse_line(line: &str, base: &Path) -> std::result::Result<(String, Item), String> {
    let value: Value = serde_json::from_str(line).map_err(|e| line_error(&e))?;
    let Value::Object(obj) = &value else { return Err("line is not a JSON object".into()) };
    match (obj.contains_key("question"), obj.contains_key("context")) {
        (true, false) => {
            let item: EvalItem = serde_json::from_value(value).map_err(|e| e.to_string())?;
            Ok((item.task.clone(), Item::Vision(vl_item(item, base)?)))
        }
        (false, true) => {
            let item: ChoiceItem = serde_json::from_value(value).map_err(|e| e.to_string())?;
            item.validate()?;
            let ChoiceItem { id, task, context, choices, gold, chance, contexts, metric } = item;
            let metric = metric.unwrap_or(ChoiceMetric::AccNorm);
            Ok((task, Item::Text(TextChoiceItem { id, context, contexts, choices, gold, chance, metric })))
        }
        (true, true) => Err("has both `question` (vision-language) and `context` (text); pick one format".into()),
        (false, false) => Err("missing field `question` (vision-language) or `context` (text multiple choice)".into()),
    }
}

/// A checked vision-language item with its image resolved against `base`.
fn vl_item(item: EvalItem, base: &Path) -> std::result::Result<VlItem, String> {
    let path = item.check(base)?;
    let EvalItem { id, image, question, answers, kind, choices, chance, .. } = item;
    let kind = match kind {
        QuestionType::Open => VlQuestion::Open { answers },
        QuestionType::YesNo => VlQuestion::YesNo { gold_yes: yes_no_answer(&answers[0]) == Some(true) },
        QuestionType::Choice => {
            let choices = choices.expect("checked: a choice item has choices");
            let gold = choices.iter().position(|c| *c == answers[0]).expect("checked: answers are choices");
            VlQuestion::Choice { choices, gold }
        }
    };
    Ok(VlItem { id, image: ImageRef { key: image, path }, question, kind, chance })
}

#[cfg(test)]
mod tests {
    use super::*;
    use vlmix_data::text_eval::write_choice_items;
    use vlmix_data::vl_eval::write_eval_set;

    #[test]
    fn files_written_by_the_data_types_load_as_written() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.png"), b"x").unwrap();
        let vl = EvalItem {
            id: "v1".into(),
            task: "colours".into(),
            image: "a.png".into(),
            question: "Which colour?".into(),
            answers: vec!["red".into()],
            kind: QuestionType::Choice,
            choices: Some(vec!["red".into(), "blue".into()]),
            chance: 0.5,
        };
        let text = ChoiceItem {
            id: "t1".into(),
            task: "piqa".into(),
            context: "Goal:".into(),
            choices: vec!["a".into(), "b".into(), "c".into()],
            gold: 2,
            chance: 1.0 / 3.0,
            contexts: None,
            metric: Some(ChoiceMetric::Acc),
        };
        write_eval_set(&dir.path().join("vl.jsonl"), std::slice::from_ref(&vl)).unwrap();
        write_choice_items(&dir.path().join("text.jsonl"), std::slice::from_ref(&text)).unwrap();
        let tasks = load_tasks(&[dir.path().join("vl.jsonl"), dir.path().join("text.jsonl")]).unwrap();
        let TaskItems::Vision(vl_items) = &tasks[0].items else { panic!("{tasks:?}") };
        assert_eq!(
            vl_items[0],
            VlItem {
                id: vl.id,
                image: ImageRef { key: vl.image, path: dir.path().join("a.png") },
                question: vl.question,
                kind: VlQuestion::Choice { choices: vl.choices.unwrap(), gold: 0 },
                chance: 0.5,
            }
        );
        let TaskItems::Text(text_items) = &tasks[1].items else { panic!("{tasks:?}") };
        assert_eq!(
            text_items[0],
            TextChoiceItem {
                id: text.id,
                context: text.context,
                contexts: None,
                choices: text.choices,
                gold: 2,
                chance: text.chance,
                metric: ChoiceMetric::Acc,
            }
        );
    }

    #[test]
    fn hand_written_lines_may_leave_out_chance_and_metric_and_number_their_ids() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.png"), b"x").unwrap();
        let path = dir.path().join("t.jsonl");
        std::fs::write(
            &path,
            [
                r#"{"id":7,"task":"pope","image":"a.png","question":"Is there a cat?","answers":["Yes."],"type":"yes_no"}"#,
                r#"{"id":8,"task":"mc","context":"c","choices":["x","y","z","w"],"gold":1}"#,
            ]
            .join("\n"),
        )
        .unwrap();
        let tasks = load_task_file(&path).unwrap();
        let TaskItems::Vision(vl) = &tasks[0].items else { panic!("{tasks:?}") };
        assert_eq!((vl[0].id.as_str(), &vl[0].kind, vl[0].chance), ("7", &VlQuestion::YesNo { gold_yes: true }, 0.5));
        let TaskItems::Text(text) = &tasks[1].items else { panic!("{tasks:?}") };
        assert_eq!((text[0].id.as_str(), text[0].chance, text[0].metric), ("8", 0.25, ChoiceMetric::AccNorm));
        std::fs::write(&path, r#"{"id":1,"task":"mc","context":"c","choices":["x","y"],"gold":0,"metric":"f1"}"#)
            .unwrap();
        let err = format!("{:#}", load_task_file(&path).unwrap_err());
        assert!(err.contains("t.jsonl:1: field `metric`: \"f1\" is not"), "{err}");
    }
}
