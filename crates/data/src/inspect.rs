//! `vlmix data inspect PATH`: reads a dataset file (or every one under a folder) with the same
//! readers training uses, prints what it holds and lists every problem with file and member or
//! line, so a user finds a broken shard before committing hours of compute to it.
//!
//! Formats, by extension and then content: `.tar` WebDataset shards; `.json` LLaVA arrays; `.jsonl`
//! LLaVA lines, vision-language eval items, text documents (`{"id","text"}`) or text
//! multiple-choice items (`{"id","task","context","choices","gold"}`).
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use rayon::prelude::*;
use serde_json::Value;

use crate::image_io;
use crate::llava::LlavaSet;
use crate::vl_eval::EvalSet;
use crate::webdataset;

/// What one path holds and everything wrong with it.
#[derive(Debug, Clone, Default)]
pub struct InspectReport {
    pub path: PathBuf,
    pub format: String,
    /// Human-readable facts (counts, sizes, tasks).
    pub lines: Vec<String>,
    /// Each names its file and member or line.
    pub problems: Vec<String>,
}

impl InspectReport {
    /// True when nothing is malformed; the CLI exits non-zero otherwise.
    pub fn is_clean(&self) -> bool {
        self.problems.is_empty()
    }
}

impl fmt::Display for InspectReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{}: {}", self.path.display(), self.format)?;
        for line in &self.lines {
            writeln!(f, "  {line}")?;
        }
        for problem in &self.problems {
            writeln!(f, "  problem: {problem}")?;
        }
        if self.is_clean() {
            write!(f, "no problems found")
        } else {
            write!(f, "{} problem(s) found", self.problems.len())
        }
    }
}

/// Inspects a file or, recursively, every dataset file in a folder.
pub fn inspect_path(path: &Path) -> Result<InspectReport> {
    let meta = std::fs::metadata(path).with_context(|| format!("cannot read {}", path.display()))?;
    if meta.is_dir() {
        return inspect_dir(path);
    }
    let mut report = InspectReport { path: path.to_path_buf(), ..Default::default() };
    match detect(path)? {
        Kind::WebDataset => inspect_shard(path, &mut report),
        Kind::Llava => inspect_llava(path, &mut report)?,
        Kind::VlEval => inspect_vl_eval(path, &mut report)?,
        Kind::TextDocuments => inspect_text_documents(path, &mut report)?,
        Kind::TextChoice => inspect_text_choice(path, &mut report)?,
        Kind::Other(why) => {
            report.format = "unsupported".into();
            report.problems.push(format!("{}: {why}", path.display()));
        }
    }
    Ok(report)
}

enum Kind {
    WebDataset,
    Llava,
    VlEval,
    TextDocuments,
    TextChoice,
    Other(String),
}

fn detect(path: &Path) -> Result<Kind> {
    let ext = path.extension().map(|e| e.to_string_lossy().to_ascii_lowercase()).unwrap_or_default();
    match ext.as_str() {
        "tar" => return Ok(Kind::WebDataset),
        "json" | "jsonl" => {}
        _ => return Ok(Kind::Other("not a dataset file (.tar, .json or .jsonl)".into())),
    }
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let text = String::from_utf8_lossy(&bytes);
    let trimmed = text.trim_start();
    if trimmed.starts_with('[') {
        return Ok(Kind::Llava);
    }
    let Some(first) = trimmed.lines().next() else { return Ok(Kind::Other("empty file".into())) };
    let Ok(Value::Object(obj)) = serde_json::from_str::<Value>(first) else {
        let line = 1 + text[..text.len() - trimmed.len()].matches('\n').count();
        return Ok(Kind::Other(format!("line {line}: the first record is not a JSON object on one line")));
    };
    Ok(if obj.contains_key("conversations") {
        Kind::Llava
    } else if obj.contains_key("question") {
        Kind::VlEval
    } else if obj.contains_key("context") && obj.contains_key("choices") {
        Kind::TextChoice
    } else if obj.contains_key("text") {
        Kind::TextDocuments
    } else {
        let keys: Vec<&String> = obj.keys().collect();
        Kind::Other(format!(
            "JSON with fields {keys:?} is none of: LLaVA, VL eval, text documents, text multiple choice"
        ))
    })
}

fn inspect_dir(dir: &Path) -> Result<InspectReport> {
    let mut report = InspectReport { path: dir.to_path_buf(), format: "folder".into(), ..Default::default() };
    let mut other = 0usize;
    for file in crate::layout::regular_files(dir)? {
        let ext = file.extension().map(|e| e.to_string_lossy().to_ascii_lowercase()).unwrap_or_default();
        if !matches!(ext.as_str(), "tar" | "json" | "jsonl") {
            other += 1;
            continue;
        }
        let child = inspect_path(&file)?;
        if child.format == "unsupported" && ext == "json" {
            other += 1;
            continue;
        }
        let rel = file.strip_prefix(dir).unwrap_or(&file).display().to_string();
        report.lines.push(format!(
            "{rel}: {}{}",
            child.format,
            child.lines.first().map(|l| format!(" - {l}")).unwrap_or_default()
        ));
        report.problems.extend(child.problems);
    }
    report.lines.push(format!("{other} other files (images, manifests) not inspected on their own"));
    Ok(report)
}

fn inspect_shard(path: &Path, report: &mut InspectReport) {
    report.format = "WebDataset shard".into();
    let mut samples = 0usize;
    let mut sizes = BTreeMap::<(u32, u32), usize>::new();
    let mut sources = BTreeMap::<String, usize>::new();
    let mut caption_chars = (usize::MAX, 0usize, 0usize);
    let result = webdataset::read_shard(path, |item| {
        match item {
            Ok(sample) => {
                samples += 1;
                *sizes.entry(sample.image.dimensions()).or_default() += 1;
                let source =
                    sample.metadata.as_ref().and_then(|m| m.get("source")).and_then(Value::as_str).unwrap_or("(none)");
                *sources.entry(source.to_string()).or_default() += 1;
                let n = sample.caption.chars().count();
                caption_chars = (caption_chars.0.min(n), caption_chars.1.max(n), caption_chars.2 + n);
            }
            Err(problem) => report.problems.push(problem.to_string()),
        }
        Ok(())
    });
    if let Err(err) = result {
        report.problems.push(format!("{}: {err:#}", path.display()));
    }
    report.lines.push(format!("{samples} image-caption samples"));
    if samples > 0 {
        let (w_min, w_max) =
            (sizes.keys().map(|s| s.0).min().unwrap_or(0), sizes.keys().map(|s| s.0).max().unwrap_or(0));
        let (h_min, h_max) =
            (sizes.keys().map(|s| s.1).min().unwrap_or(0), sizes.keys().map(|s| s.1).max().unwrap_or(0));
        report
            .lines
            .push(format!("image width {w_min}..{w_max}, height {h_min}..{h_max} px ({} distinct sizes)", sizes.len()));
        report.lines.push(format!(
            "caption length {}..{} chars, mean {:.0}",
            caption_chars.0,
            caption_chars.1,
            caption_chars.2 as f64 / samples as f64
        ));
        report.lines.push(format!("sources: {}", join_counts(&sources)));
    }
}

fn inspect_llava(path: &Path, report: &mut InspectReport) -> Result<()> {
    report.format = "LLaVA conversations".into();
    let set = LlavaSet::read(path, None)?;
    report.problems.extend(set.problems.iter().map(ToString::to_string));
    let with_image: Vec<&(usize, crate::llava::LlavaRecord)> =
        set.records.iter().filter(|(_, r)| r.image.is_some()).collect();
    let turns: usize = set.records.iter().map(|(_, r)| r.conversations.len()).sum();
    let max_turns = set.records.iter().map(|(_, r)| r.conversations.len()).max().unwrap_or(0);
    report.lines.push(format!(
        "{} conversations ({} with an image), {turns} turns, at most {max_turns} in one",
        set.records.len(),
        with_image.len()
    ));
    report.lines.push(format!("images resolved against {}", set.image_root.display()));
    let bad_images: Vec<String> = with_image
        .par_iter()
        .filter_map(|(line, record)| {
            let image = set.image_path(record)?;
            check_image(&image)
                .err()
                .map(|err| format!("{}:{line} (id {}): image {}: {err:#}", path.display(), record.id, image.display()))
        })
        .collect();
    report.problems.extend(bad_images);
    Ok(())
}

fn inspect_vl_eval(path: &Path, report: &mut InspectReport) -> Result<()> {
    report.format = "vision-language eval items".into();
    let set = EvalSet::read(path)?;
    report.problems.extend(set.problems.iter().map(ToString::to_string));
    let mut tasks = BTreeMap::<String, (usize, String, f64)>::new();
    for (_, item) in &set.items {
        let kind = serde_json::to_value(item.kind).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default();
        let entry = tasks.entry(item.task.clone()).or_insert((0, kind, 0.0));
        entry.0 += 1;
        entry.2 += item.chance;
    }
    report.lines.push(format!("{} items in {} task(s)", set.items.len(), tasks.len()));
    for (task, (count, kind, chance)) in &tasks {
        report.lines.push(format!("{task}: {count} {kind} items, mean chance {:.4}", chance / *count as f64));
    }
    let base = path.parent().unwrap_or(Path::new("."));
    let mut first_use = BTreeMap::<&str, usize>::new();
    for (line, item) in &set.items {
        first_use.entry(item.image.as_str()).or_insert(*line);
    }
    let bad_images: Vec<String> = first_use
        .par_iter()
        .filter_map(|(image, line)| {
            check_image(&base.join(image)).err().map(|err| format!("{}:{line}: image {image}: {err:#}", path.display()))
        })
        .collect();
    report.problems.extend(bad_images);
    Ok(())
}

fn check_image(path: &Path) -> Result<()> {
    let bytes = std::fs::read(path).context("cannot read")?;
    image_io::decode_rgb(&bytes).map(|_| ())
}

/// Text documents JSONL (`{"id","source"?,"text"}`), the text side's format.
fn inspect_text_documents(path: &Path, report: &mut InspectReport) -> Result<()> {
    report.format = "text documents".into();
    let mut sources = BTreeMap::<String, usize>::new();
    let (mut docs, mut bytes) = (0usize, 0usize);
    for_each_json_line(path, report, |obj| {
        let text = match obj.get("text") {
            Some(Value::String(text)) if !text.trim().is_empty() => text,
            Some(Value::String(_)) => return Err("field `text`: empty".into()),
            _ => return Err("missing string field `text`".into()),
        };
        docs += 1;
        bytes += text.len();
        let source = obj.get("source").and_then(Value::as_str).unwrap_or("(none)");
        *sources.entry(source.to_string()).or_default() += 1;
        Ok(())
    })?;
    report.lines.insert(0, format!("{docs} documents, {bytes} bytes of text"));
    report.lines.push(format!("sources: {}", join_counts(&sources)));
    Ok(())
}

/// Text multiple-choice JSONL (`{"id","task","context","choices","gold"}`).
fn inspect_text_choice(path: &Path, report: &mut InspectReport) -> Result<()> {
    report.format = "text multiple-choice items".into();
    let mut tasks = BTreeMap::<String, usize>::new();
    let mut items = 0usize;
    for_each_json_line(path, report, |obj| {
        let task = obj.get("task").and_then(Value::as_str).ok_or("missing string field `task`")?;
        obj.get("context").and_then(Value::as_str).ok_or("missing string field `context`")?;
        let choices = obj.get("choices").and_then(Value::as_array).ok_or("missing array field `choices`")?;
        if choices.len() < 2 || choices.iter().any(|c| c.as_str().is_none_or(str::is_empty)) {
            return Err("field `choices`: needs at least 2 non-empty strings".into());
        }
        let gold = obj.get("gold").and_then(Value::as_u64).ok_or("missing integer field `gold`")?;
        if gold as usize >= choices.len() {
            return Err(format!("field `gold`: {gold} is out of range for {} choices", choices.len()));
        }
        items += 1;
        *tasks.entry(task.to_string()).or_default() += 1;
        Ok(())
    })?;
    report.lines.insert(0, format!("{items} items in {} task(s): {}", tasks.len(), join_counts(&tasks)));
    Ok(())
}

fn for_each_json_line(
    path: &Path,
    report: &mut InspectReport,
    mut check: impl FnMut(&serde_json::Map<String, Value>) -> Result<(), String>,
) -> Result<()> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let mut ids = BTreeSet::new();
    for (index, line) in bytes.split(|&b| b == b'\n').enumerate() {
        let at = format!("{}:{}", path.display(), index + 1);
        let Ok(line) = std::str::from_utf8(line) else {
            report.problems.push(format!("{at}: not UTF-8"));
            continue;
        };
        if line.trim().is_empty() {
            continue;
        }
        let obj = match serde_json::from_str::<Value>(line) {
            Ok(Value::Object(obj)) => obj,
            Ok(_) => {
                report.problems.push(format!("{at}: not a JSON object"));
                continue;
            }
            Err(err) => {
                report.problems.push(format!("{at}: malformed JSON: {err}"));
                continue;
            }
        };
        if let Some(id) = obj.get("id") {
            let task = obj.get("task").map(ToString::to_string).unwrap_or_default();
            if !ids.insert((task, id.to_string())) {
                report.problems.push(format!("{at}: id {id} repeats"));
                continue;
            }
        }
        if let Err(message) = check(&obj) {
            report.problems.push(format!("{at}: {message}"));
        }
    }
    Ok(())
}

fn join_counts(counts: &BTreeMap<String, usize>) -> String {
    counts.iter().map(|(k, v)| format!("{k} {v}")).collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::webdataset::ShardBuilder;

    #[test]
    fn folder_report_names_every_broken_file_member_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let png = image_io::encode_png(&image::RgbImage::new(3, 2)).unwrap();
        let mut shard = ShardBuilder::new();
        shard.add("a", &[("png", &png), ("txt", b"caption")]).unwrap();
        shard.add("b", &[("png", &png), ("txt", b"caption")]).unwrap();
        let bytes = shard.finish().unwrap();
        std::fs::write(dir.path().join("good.tar"), &bytes).unwrap();
        std::fs::write(dir.path().join("cut.tar"), &bytes[..bytes.len() - 1500]).unwrap();
        std::fs::write(dir.path().join("x.png"), &png).unwrap();
        std::fs::write(dir.path().join("bad.png"), b"not a png").unwrap();
        let eval = [
            r#"{"id":"1","task":"t","image":"x.png","question":"Q?","answers":["yes"],"type":"yes_no","chance":0.5}"#,
            r#"{"id":"2","task":"t","image":"bad.png","question":"Q?","answers":["no"],"type":"yes_no","chance":0.5}"#,
            r#"{"id":"3","task":"t","image":"x.png","question":"Q?","answers":["no"],"type":"yes_no","chance":0.5"#,
        ];
        std::fs::write(dir.path().join("t.jsonl"), eval.join("\n")).unwrap();
        std::fs::write(
            dir.path().join("docs.jsonl"),
            "{\"id\":\"d\",\"text\":\"hello\"}\n{\"id\":\"e\",\"text\":\"\"}\n",
        )
        .unwrap();
        std::fs::write(dir.path().join("manifest.json"), "{\n \"a\": 1\n}").unwrap();

        let report = inspect_path(dir.path()).unwrap();
        assert!(!report.is_clean());
        let text = report.to_string();
        assert!(text.contains("good.tar: WebDataset shard - 2 image-caption samples"), "{text}");
        let find = |needle: &str| report.problems.iter().any(|p| p.contains(needle));
        assert!(find("cut.tar: member b.txt: truncated") || find("cut.tar: member -: broken tar"), "{text}");
        assert!(find("t.jsonl:2: image bad.png: unknown image format"), "{text}");
        assert!(find("t.jsonl:3: malformed JSON"), "{text}");
        assert!(find("docs.jsonl:2: field `text`: empty"), "{text}");
        assert_eq!(report.problems.len(), 4, "{text}");

        let single = inspect_path(&dir.path().join("good.tar")).unwrap();
        assert!(single.is_clean(), "{single}");
        let unknown = inspect_path(&dir.path().join("x.png")).unwrap();
        assert!(!unknown.is_clean() && unknown.format == "unsupported");
        assert!(inspect_path(&dir.path().join("missing.tar")).is_err());
    }
}
