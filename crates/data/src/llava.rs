//! LLaVA conversation data: `[{"id","image"?,"conversations":[{"from":"human","value":"<image>\n.."},
//! {"from":"gpt","value":".."}, ..]}, ..]`, the format of LLaVA-Instruct and llava_v1_5_mix665k.
//!
//! `image` is a path relative to an image folder (LLaVA's `--image_folder`; here the JSON file's
//! directory unless given). A record with an image carries exactly one `<image>` placeholder in
//! its human turns; text-only records carry none. A JSON array or JSON Lines both read, and every
//! problem names the file, the line where the record starts and its id.
use std::collections::HashSet;
use std::fmt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::Value;

/// The placeholder LLaVA replaces with the image's tokens.
pub const IMAGE_PLACEHOLDER: &str = "<image>";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Turn {
    /// "human" or "gpt".
    pub from: String,
    pub value: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LlavaRecord {
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    pub conversations: Vec<Turn>,
}

impl LlavaRecord {
    /// The (question, answer) pairs in order; the placeholder stays in the first question.
    pub fn exchanges(&self) -> impl Iterator<Item = (&str, &str)> {
        self.conversations.chunks_exact(2).map(|pair| (pair[0].value.as_str(), pair[1].value.as_str()))
    }
}

/// A problem with one record (or the whole file when `line` is 0).
#[derive(Debug, Clone, PartialEq)]
pub struct LlavaProblem {
    pub file: PathBuf,
    pub line: usize,
    pub id: Option<String>,
    pub message: String,
}

impl fmt::Display for LlavaProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.file.display(), self.line)?;
        if let Some(id) = &self.id {
            write!(f, " (id {id})")?;
        }
        write!(f, ": {}", self.message)
    }
}

/// The valid records of a file, each with its line, and every problem found.
#[derive(Debug, Clone, Default)]
pub struct LlavaSet {
    pub records: Vec<(usize, LlavaRecord)>,
    pub problems: Vec<LlavaProblem>,
    /// Folder the records' `image` paths are relative to.
    pub image_root: PathBuf,
}

impl LlavaSet {
    /// Reads and validates `path`; images resolve against `image_root` (default: the file's folder).
    /// Only I/O failures are errors: malformed content becomes problems.
    pub fn read(path: &Path, image_root: Option<&Path>) -> Result<Self> {
        let bytes = std::fs::read(path).with_context(|| format!("reading LLaVA file {}", path.display()))?;
        let image_root = image_root
            .map(Path::to_path_buf)
            .unwrap_or_else(|| path.parent().map(Path::to_path_buf).unwrap_or_default());
        let mut set = LlavaSet { image_root, ..Default::default() };
        let problem = |line: usize, id: Option<String>, message: String| LlavaProblem {
            file: path.to_path_buf(),
            line,
            id,
            message,
        };
        let text = match std::str::from_utf8(&bytes) {
            Ok(text) => text,
            Err(err) => {
                let line = LineIndex::new(&bytes).line_of(err.valid_up_to());
                set.problems.push(problem(line, None, format!("not UTF-8: {err}")));
                return Ok(set);
            }
        };
        let raw_records: Vec<(usize, &RawValue)> = match text.trim_start().chars().next() {
            Some('[') => match serde_json::from_str::<Vec<&RawValue>>(text) {
                Ok(raws) => {
                    let lines = LineIndex::new(text.as_bytes());
                    raws.into_iter().map(|raw| (lines.line_of(offset_in(text, raw.get())), raw)).collect()
                }
                Err(err) => {
                    set.problems.push(problem(err.line(), None, format!("malformed JSON array: {err}")));
                    return Ok(set);
                }
            },
            Some('{') => {
                let mut raws = Vec::new();
                for (index, line) in text.lines().enumerate() {
                    if line.trim().is_empty() {
                        continue;
                    }
                    match serde_json::from_str::<&RawValue>(line) {
                        Ok(raw) => raws.push((index + 1, raw)),
                        Err(err) => set.problems.push(problem(index + 1, None, format!("malformed JSON line: {err}"))),
                    }
                }
                raws
            }
            _ => {
                set.problems.push(problem(1, None, "expected a JSON array of records or JSON Lines".into()));
                return Ok(set);
            }
        };
        let mut ids = HashSet::new();
        for (line, raw) in raw_records {
            match parse_record(raw.get(), &set.image_root) {
                Ok(record) => {
                    if !ids.insert(record.id.clone()) {
                        set.problems.push(problem(line, Some(record.id.clone()), "duplicate id".into()));
                        continue;
                    }
                    set.records.push((line, record));
                }
                Err((id, message)) => set.problems.push(problem(line, id, message)),
            }
        }
        set.problems.sort_by_key(|p| p.line);
        if set.records.is_empty() && set.problems.is_empty() {
            set.problems.push(problem(1, None, "no records".into()));
        }
        Ok(set)
    }

    /// The records, or an error listing the problems (for training, which must not skip silently).
    pub fn into_records(self) -> Result<Vec<LlavaRecord>> {
        if let Some(first) = self.problems.first() {
            bail!("{} problem(s) in LLaVA data; first: {first}", self.problems.len());
        }
        Ok(self.records.into_iter().map(|(_, r)| r).collect())
    }

    /// Where a record's image lives.
    pub fn image_path(&self, record: &LlavaRecord) -> Option<PathBuf> {
        record.image.as_ref().map(|image| self.image_root.join(image))
    }
}

fn offset_in(text: &str, inner: &str) -> usize {
    inner.as_ptr() as usize - text.as_ptr() as usize
}

/// Line numbers of byte offsets, by binary search over the newline positions (a scan per record
/// made reading a 24k-record file quadratic: over a minute).
struct LineIndex(Vec<usize>);

impl LineIndex {
    fn new(bytes: &[u8]) -> Self {
        Self(bytes.iter().enumerate().filter(|(_, &b)| b == b'\n').map(|(i, _)| i).collect())
    }

    /// 1-based line of the byte at `offset`.
    fn line_of(&self, offset: usize) -> usize {
        self.0.partition_point(|&newline| newline < offset) + 1
    }
}

type RecordError = (Option<String>, String);

fn parse_record(json: &str, image_root: &Path) -> Result<LlavaRecord, RecordError> {
    let value: Value = serde_json::from_str(json).map_err(|err| (None, format!("malformed JSON: {err}")))?;
    let Value::Object(obj) = value else { return Err((None, "record is not a JSON object".into())) };
    let id = match obj.get("id") {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        Some(other) => return Err((None, format!("field `id`: expected a non-empty string or number, got {other}"))),
        None => return Err((None, "missing field `id`".into())),
    };
    let fail = |message: String| (Some(id.clone()), message);
    let image = match obj.get("image") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if !s.trim().is_empty() => Some(s.clone()),
        Some(other) => return Err(fail(format!("field `image`: expected a relative path string, got {other}"))),
    };
    let Some(Value::Array(turns)) = obj.get("conversations") else {
        return Err(fail("missing or non-array field `conversations`".into()));
    };
    if turns.is_empty() {
        return Err(fail("field `conversations`: empty".into()));
    }
    let mut conversations = Vec::with_capacity(turns.len());
    let mut placeholders = 0;
    for (i, turn) in turns.iter().enumerate() {
        let from = turn.get("from").and_then(Value::as_str);
        let value = turn.get("value").and_then(Value::as_str);
        let (Some(from), Some(value)) = (from, value) else {
            return Err(fail(format!("conversations[{i}]: needs string fields `from` and `value`, got {turn}")));
        };
        let expected = if i % 2 == 0 { "human" } else { "gpt" };
        if from != expected {
            return Err(fail(format!(
                "conversations[{i}]: `from` is {from:?}, expected {expected:?} (turns alternate human, gpt)"
            )));
        }
        if value.trim().is_empty() {
            return Err(fail(format!("conversations[{i}]: empty `value`")));
        }
        let here = value.matches(IMAGE_PLACEHOLDER).count();
        if here > 0 && from == "gpt" {
            return Err(fail(format!("conversations[{i}]: {IMAGE_PLACEHOLDER} in a gpt turn")));
        }
        placeholders += here;
        conversations.push(Turn { from: from.to_string(), value: value.to_string() });
    }
    if conversations.len() % 2 != 0 {
        return Err(fail("conversation ends with a human turn (no answer)".into()));
    }
    match (&image, placeholders) {
        (Some(image), 1) => {
            if Path::new(image).is_absolute() || image.split(['/', '\\']).any(|part| part == "..") {
                return Err(fail(format!("field `image`: {image:?} must be relative to the image folder")));
            }
            let path = image_root.join(image);
            if !path.is_file() {
                return Err(fail(format!("field `image`: {} does not exist", path.display())));
            }
        }
        (Some(_), n) => {
            return Err(fail(format!("has an image but {n} {IMAGE_PLACEHOLDER} placeholders (needs exactly 1)")))
        }
        (None, 0) => {}
        (None, n) => return Err(fail(format!("has no image but {n} {IMAGE_PLACEHOLDER} placeholder(s)"))),
    }
    Ok(LlavaRecord { id, image, conversations })
}

/// Writes records as a pretty JSON array (LLaVA's own layout), atomically.
pub fn write_llava(path: &Path, records: &[LlavaRecord]) -> Result<()> {
    let json = serde_json::to_vec_pretty(records).context("serialising LLaVA records")?;
    vlmix_atomic_file::write_atomic(path, &json)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: &str, image: Option<&str>, turns: &[(&str, &str)]) -> LlavaRecord {
        LlavaRecord {
            id: id.into(),
            image: image.map(Into::into),
            conversations: turns.iter().map(|(f, v)| Turn { from: (*f).into(), value: (*v).into() }).collect(),
        }
    }

    #[test]
    fn line_index_counts_newlines_before_the_offset() {
        let lines = LineIndex::new(b"a\nbc\n\nd");
        let got: Vec<usize> = (0..8).map(|offset| lines.line_of(offset)).collect();
        assert_eq!(got, vec![1, 1, 2, 2, 2, 3, 4, 4]);
    }

    #[test]
    fn written_records_read_back_with_lines() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("images")).unwrap();
        std::fs::write(dir.path().join("images/a.png"), b"x").unwrap();
        let records = vec![
            record(
                "a",
                Some("images/a.png"),
                &[("human", "<image>\nWhat is it?"), ("gpt", "A cat."), ("human", "Colour?"), ("gpt", "Black.")],
            ),
            record("t", None, &[("human", "Say hi."), ("gpt", "Hi.")]),
        ];
        let path = dir.path().join("d.json");
        write_llava(&path, &records).unwrap();
        let set = LlavaSet::read(&path, None).unwrap();
        assert!(set.problems.is_empty(), "{:?}", set.problems);
        assert_eq!(set.records.iter().map(|(_, r)| r.clone()).collect::<Vec<_>>(), records);
        assert_eq!(set.records[0].0, 2, "the first record starts on line 2 of a pretty array");
        assert_eq!(set.records[0].1.exchanges().count(), 2);
        assert_eq!(set.image_path(&records[0]).unwrap(), dir.path().join("images/a.png"));
    }

    #[test]
    fn malformed_records_are_problems_with_line_and_id() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.png"), b"x").unwrap();
        let lines = [
            r#"{"id":"ok","image":"a.png","conversations":[{"from":"human","value":"<image>\nQ"},{"from":"gpt","value":"A"}]}"#,
            r#"{"id":"noimg","image":"missing.png","conversations":[{"from":"human","value":"<image>\nQ"},{"from":"gpt","value":"A"}]}"#,
            r#"{"id":"twice","image":"a.png","conversations":[{"from":"human","value":"<image> <image>"},{"from":"gpt","value":"A"}]}"#,
            r#"{"id":"order","conversations":[{"from":"gpt","value":"A"},{"from":"human","value":"Q"}]}"#,
            r#"{"id": "broken", "conversations": ["#,
            r#"{"conversations":[]}"#,
            r#"{"id":"odd","conversations":[{"from":"human","value":"Q"}]}"#,
            r#"{"id":"ok","conversations":[{"from":"human","value":"Q"},{"from":"gpt","value":"A"}]}"#,
        ];
        let path = dir.path().join("d.jsonl");
        std::fs::write(&path, lines.join("\n")).unwrap();
        let set = LlavaSet::read(&path, None).unwrap();
        assert_eq!(set.records.len(), 1);
        let got: Vec<String> = set.problems.iter().map(ToString::to_string).collect();
        let want = [
            ":2 (id noimg): field `image`",
            ":3 (id twice): has an image but 2",
            ":4 (id order): conversations[0]",
            ":5: malformed JSON line",
            ":6: missing field `id`",
            ":7 (id odd): conversation ends with a human turn",
            ":8 (id ok): duplicate id",
        ];
        assert_eq!(got.len(), want.len(), "{got:#?}");
        for (g, w) in got.iter().zip(want) {
            assert!(g.contains(w) && g.contains("d.jsonl"), "{g} should contain {w}");
        }
        assert!(set.into_records().unwrap_err().to_string().contains("7 problem(s)"));
    }

    #[test]
    fn broken_array_names_the_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.json");
        std::fs::write(&path, "[\n {\"id\": \"a\",\n  \"conversations\": [}\n]").unwrap();
        let set = LlavaSet::read(&path, None).unwrap();
        assert_eq!(set.problems.len(), 1);
        assert_eq!(set.problems[0].line, 3, "{}", set.problems[0]);
    }
}
