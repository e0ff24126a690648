//! Text documents as JSONL, one `{"id","source","text"}` object a line: the interchange format between
//! ingestion, the tokenizer and anything a user brings (e.g. DCLM-style JSONL with extra fields).
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use vlmix_atomic_file::write_atomic_with;

use vlmix_data::jsonl::read_lines;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Document {
    /// Unique and stable across runs: `<source>/<key within the source>`.
    pub id: String,
    /// Name of the source (e.g. `gcide`, `wikipedia`), used for per-source counts and attribution.
    pub source: String,
    pub text: String,
}

/// Writes documents atomically, one JSON object per line.
pub fn write_documents(path: &Path, documents: &[Document]) -> Result<()> {
    write_atomic_with(path, |temp| {
        let file = File::create(temp).with_context(|| format!("create {}", temp.display()))?;
        let mut out = BufWriter::new(file);
        for doc in documents {
            serde_json::to_writer(&mut out, doc)?;
            out.write_all(b"\n")?;
        }
        out.flush().with_context(|| format!("write {}", temp.display()))
    })
}

/// Parses one line; extra fields are ignored so files written by other tools load.
pub fn parse_document_line(line: &str) -> std::result::Result<Document, String> {
    let doc: Document = serde_json::from_str(line).map_err(|e| e.to_string())?;
    if doc.id.is_empty() {
        return Err("field \"id\" is empty".into());
    }
    if doc.text.is_empty() {
        return Err("field \"text\" is empty".into());
    }
    Ok(doc)
}

/// Reads a documents file, failing on the first malformed line with file and line number.
pub fn read_documents(path: &Path) -> Result<Vec<Document>> {
    read_lines(path, "documents", parse_document_line)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(id: &str, text: &str) -> Document {
        Document { id: id.into(), source: "test".into(), text: text.into() }
    }

    #[test]
    fn round_trip_keeps_unicode_and_newlines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.jsonl");
        let docs = vec![doc("a", "Ishmael—\"call me\"\nline two"), doc("b", "ü")];
        write_documents(&path, &docs).unwrap();
        assert_eq!(read_documents(&path).unwrap(), docs);
    }

    #[test]
    fn bad_json_line_names_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.jsonl");
        std::fs::write(
            &path,
            "{\"id\":\"a\",\"source\":\"s\",\"text\":\"ok\"}\n{\"id\":\"b\",\"source\":\"s\",\"text\":\n",
        )
        .unwrap();
        let err = read_documents(&path).unwrap_err().to_string();
        assert!(err.contains("bad.jsonl:2:"), "{err}");
    }

    #[test]
    fn missing_field_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("missing.jsonl");
        std::fs::write(&path, "\n{\"id\":\"a\",\"source\":\"s\"}\n").unwrap();
        let err = read_documents(&path).unwrap_err().to_string();
        assert!(err.contains("missing.jsonl:2:") && err.contains("missing field `text`"), "{err}");
    }

    #[test]
    fn extra_fields_from_other_tools_are_accepted() {
        let doc = parse_document_line(r#"{"id":"x","source":"dclm","text":"t","url":"u","score":0.9}"#).unwrap();
        assert_eq!(doc.text, "t");
    }
}
