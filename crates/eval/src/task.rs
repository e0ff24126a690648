//! Eval tasks and their JSONL formats (one item per line; one file may hold several tasks).
//!
//! Vision-language line:
//! `{"id","task","image","question","answers":[..],"type":"open"|"yes_no"|"choice","choices"?,"chance"?}`
//! Text multiple-choice line (lm-eval style): `{"id","task","context","choices":[..],"gold":i,"chance"?,"metric"?}`
//! `image` is resolved against the file's directory. `chance` defaults to 0 for open questions,
//! 1/2 for yes/no and 1/#choices for multiple choice. `metric` ("acc" or "acc_norm", the source suite's
//! primary metric) defaults to acc_norm; a task's items must agree on it. Errors name file, line and field.

use crate::scorer::ImageRef;
use anyhow::{anyhow, bail, Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::HashSet;
use std::path::{Path, PathBuf};
pub use vlmix_data::text_eval::ChoiceMetric;

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
    let text = std::fs::read_to_string(path).with_context(|| format!("reading task file {}", path.display()))?;
    let base = path.parent().unwrap_or(Path::new("."));
    let mut tasks: Vec<Task> = Vec::new();
    let mut seen_ids: HashSet<(String, String)> = HashSet::new();
    for (index, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let at = || format!("{}:{}", path.display(), index + 1);
        let (task_name, item) = parse_line(line, base).with_context(at)?;
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
pub fn vl_task(name: &str, source: &Path, images: &Path, items: &[vlmix_data::vl_eval::EvalItem]) -> Result<Task> {
    let mut seen = HashSet::new();
    let mut parsed = Vec::with_capacity(items.len());
    for item in items {
        let at = || format!("{}: question {}", source.display(), item.id);
        if !seen.insert(item.id.clone()) {
            bail!("{}: field `id`: repeats within task {name:?}", at());
        }
        let Value::Object(obj) = serde_json::to_value(item).with_context(at)? else { bail!("{}: not an object", at()) };
        parsed.push(parse_vl(&obj, item.id.clone(), images).with_context(at)?);
    }
    if parsed.is_empty() {
        bail!("task {name:?} from {} has no items", source.display());
    }
    Ok(Task { name: name.to_string(), source: source.to_path_buf(), items: TaskItems::Vision(parsed) })
}

fn parse_line(line: &str, base: &Path) -> Result<(String, Item)> {
    let value: Value = serde_json::from_str(line).context("malformed JSON")?;
    let Value::Object(obj) = value else { bail!("line is not a JSON object") };
    let task = string_field(&obj, "task")?;
    if task.trim().is_empty() {
        bail!("field `task`: empty");
    }
    let id = id_field(&obj)?;
    let item = match (obj.contains_key("question"), obj.contains_key("context")) {
        (true, false) => Item::Vision(parse_vl(&obj, id, base)?),
        (false, true) => Item::Text(parse_text(&obj, id)?),
        (true, true) => bail!("has both `question` (vision-language) and `context` (text); pick one format"),
        (false, false) => bail!("missing field `question` (vision-language) or `context` (text multiple choice)"),
    };
    Ok((task, item))
}

fn parse_vl(obj: &Map<String, Value>, id: String, base: &Path) -> Result<VlItem> {
    let key = string_field(obj, "image")?;
    let path = base.join(&key);
    if !path.is_file() {
        bail!("field `image`: {} does not exist", path.display());
    }
    let question = string_field(obj, "question")?;
    let answers = string_list_field(obj, "answers")?;
    let kind = match string_field(obj, "type")?.as_str() {
        "open" => VlQuestion::Open { answers },
        "yes_no" => {
            let gold = crate::vqa_answer::normalize_answer(&answers[0]);
            let gold_yes = match gold.as_str() {
                "yes" => true,
                "no" => false,
                _ => bail!("field `answers`: a yes_no item's answer must be yes or no, got {:?}", answers[0]),
            };
            VlQuestion::YesNo { gold_yes }
        }
        "choice" => {
            let choices = choices_field(obj)?;
            let gold = choices
                .iter()
                .position(|c| *c == answers[0])
                .ok_or_else(|| anyhow!("field `answers`: {:?} is not one of `choices` {choices:?}", answers[0]))?;
            VlQuestion::Choice { choices, gold }
        }
        other => bail!("field `type`: {other:?} is not one of \"open\", \"yes_no\", \"choice\""),
    };
    let default_chance = match &kind {
        VlQuestion::Open { .. } => 0.0,
        VlQuestion::YesNo { .. } => 0.5,
        VlQuestion::Choice { choices, .. } => 1.0 / choices.len() as f64,
    };
    let chance = chance_field(obj, default_chance)?;
    Ok(VlItem { id, image: ImageRef { key, path }, question, kind, chance })
}

fn parse_text(obj: &Map<String, Value>, id: String) -> Result<TextChoiceItem> {
    let context = string_field(obj, "context")?;
    let choices = choices_field(obj)?;
    let gold = match obj.get("gold") {
        Some(Value::Number(n)) => {
            n.as_u64().ok_or_else(|| anyhow!("field `gold`: {n} is not a non-negative integer"))?
        }
        Some(other) => bail!("field `gold`: expected an integer index, got {other}"),
        None => bail!("missing field `gold`"),
    } as usize;
    if gold >= choices.len() {
        bail!("field `gold`: index {gold} is out of range for {} choices", choices.len());
    }
    let chance = chance_field(obj, 1.0 / choices.len() as f64)?;
    let contexts = match obj.get("contexts") {
        None | Some(Value::Null) => None,
        Some(Value::Array(values)) => {
            let contexts: Vec<String> = values
                .iter()
                .map(|v| v.as_str().map(str::to_owned).ok_or_else(|| anyhow!("field `contexts`: {v} is not a string")))
                .collect::<Result<_>>()?;
            if contexts.len() != choices.len() {
                bail!("field `contexts`: {} contexts for {} choices", contexts.len(), choices.len());
            }
            Some(contexts)
        }
        Some(other) => bail!("field `contexts`: expected a list of strings, got {other}"),
    };
    let metric = match obj.get("metric") {
        None | Some(Value::Null) => ChoiceMetric::AccNorm,
        Some(value) => serde_json::from_value(value.clone())
            .map_err(|_| anyhow!("field `metric`: {value} is not \"acc\" or \"acc_norm\""))?,
    };
    Ok(TextChoiceItem { id, context, contexts, choices, gold, chance, metric })
}

fn id_field(obj: &Map<String, Value>) -> Result<String> {
    match obj.get("id") {
        Some(Value::String(s)) if !s.is_empty() => Ok(s.clone()),
        Some(Value::Number(n)) => Ok(n.to_string()),
        Some(other) => bail!("field `id`: expected a non-empty string or a number, got {other}"),
        None => bail!("missing field `id`"),
    }
}

fn string_field(obj: &Map<String, Value>, name: &str) -> Result<String> {
    match obj.get(name) {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(other) => bail!("field `{name}`: expected a string, got {other}"),
        None => bail!("missing field `{name}`"),
    }
}

fn string_list_field(obj: &Map<String, Value>, name: &str) -> Result<Vec<String>> {
    let Some(value) = obj.get(name) else { bail!("missing field `{name}`") };
    let Value::Array(values) = value else { bail!("field `{name}`: expected an array of strings, got {value}") };
    if values.is_empty() {
        bail!("field `{name}`: empty");
    }
    values
        .iter()
        .enumerate()
        .map(|(i, v)| match v {
            Value::String(s) => Ok(s.clone()),
            other => bail!("field `{name}`[{i}]: expected a string, got {other}"),
        })
        .collect()
}

fn choices_field(obj: &Map<String, Value>) -> Result<Vec<String>> {
    let choices = string_list_field(obj, "choices")?;
    if choices.len() < 2 {
        bail!("field `choices`: needs at least 2 choices, got {}", choices.len());
    }
    if let Some(i) = choices.iter().position(|c| c.is_empty()) {
        bail!("field `choices`[{i}]: empty choice");
    }
    Ok(choices)
}

fn chance_field(obj: &Map<String, Value>, default: f64) -> Result<f64> {
    match obj.get("chance") {
        None | Some(Value::Null) => Ok(default),
        Some(Value::Number(n)) => match n.as_f64() {
            Some(c) if (0.0..=1.0).contains(&c) => Ok(c),
            _ => bail!("field `chance`: {n} is not a probability in [0, 1]"),
        },
        Some(other) => bail!("field `chance`: expected a number, got {other}"),
    }
}
