//! Line-by-line reading of JSONL files with per-line problems: the one reader behind every JSONL
//! format of vlmix-data, so each format only says how to parse and check one line. Files ending in
//! `.zst`/`.zstd` (DCLM's JSONL.zst) or `.gz` are decompressed as they stream.
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::Path;

use anyhow::{Context, Result};

/// One malformed line of a JSONL file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineProblem {
    /// 1-based.
    pub line: usize,
    pub message: String,
}

/// Visits every line of `path` (a `what` file, named in I/O errors): the parsed value or the problem
/// with that line. Blank lines are allowed (trailing newline); I/O errors abort with the file name.
pub fn visit_lines<T>(
    path: &Path,
    what: &str,
    parse: impl Fn(&str) -> std::result::Result<T, String>,
    mut visit: impl FnMut(std::result::Result<T, LineProblem>) -> Result<()>,
) -> Result<()> {
    for (index, line) in open_text(path, what)?.lines().enumerate() {
        let line = line
            .with_context(|| format!("{}:{}: unreadable (truncated, or not UTF-8 text)", path.display(), index + 1))?;
        if line.trim().is_empty() {
            continue;
        }
        visit(parse(&line).map_err(|message| LineProblem { line: index + 1, message }))?;
    }
    Ok(())
}

/// What is wrong with a line serde_json could not read into a format's type: malformed JSON, or the
/// field it names.
pub fn line_error(err: &serde_json::Error) -> String {
    match err.classify() {
        serde_json::error::Category::Syntax | serde_json::error::Category::Eof => format!("malformed JSON: {err}"),
        _ => err.to_string(),
    }
}

/// An id field that may be a JSON string or number (read as its decimal text).
pub fn string_or_number<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<String, D::Error> {
    #[derive(serde::Deserialize)]
    #[serde(untagged)]
    enum Id {
        Text(String),
        Number(serde_json::Number),
    }
    Ok(match <Id as serde::Deserialize>::deserialize(d)? {
        Id::Text(text) => text,
        Id::Number(number) => number.to_string(),
    })
}

/// A buffered reader of `path`'s text, decompressing `.zst`/`.zstd` and `.gz` files on the fly.
pub fn open_text(path: &Path, what: &str) -> Result<Box<dyn BufRead>> {
    let file = File::open(path).with_context(|| format!("open {what} file {}", path.display()))?;
    let name = path.file_name().map(|n| n.to_string_lossy().to_ascii_lowercase()).unwrap_or_default();
    Ok(if name.ends_with(".zst") || name.ends_with(".zstd") {
        let decoder =
            zstd::stream::read::Decoder::new(file).with_context(|| format!("{}: not a zstd stream", path.display()))?;
        Box::new(BufReader::new(decoder))
    } else if name.ends_with(".gz") {
        Box::new(BufReader::new(flate2::read::MultiGzDecoder::new(file)))
    } else {
        Box::new(BufReader::new(file))
    })
}

/// Reads every line of `path`, failing on the first malformed one with file and line number.
pub fn read_lines<T>(
    path: &Path,
    what: &str,
    parse: impl Fn(&str) -> std::result::Result<T, String>,
) -> Result<Vec<T>> {
    let mut values = Vec::new();
    visit_lines(path, what, parse, |item| match item {
        Ok(value) => {
            values.push(value);
            Ok(())
        }
        Err(p) => anyhow::bail!("{}:{}: {}", path.display(), p.line, p.message),
    })?;
    Ok(values)
}
