//! A user's text corpus as training documents: DCLM-style JSONL (plain, `.zst` or `.gz`) with the
//! text under a named field, tokenized once into a token shard cached under
//! `$VLMIX_HOME/tokenized/<key>/` (the key hashes the files' paths, sizes and times, the field and the
//! tokenizer), or vlmix token shards used as they are.
//!
//! Without validation files, one document in [`HOLDOUT_EVERY`] is held out of training for
//! validation bits-per-byte ([`DocSplit`]), so a user's corpus is never scored on text it trained on.
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::{OnBadRecord, Skipped};
use crate::jsonl::visit_lines;
use crate::packing::TokenDocuments;
use crate::text::shard::{TokenShardWriter, TokenShards};
use crate::tokenizer::TextTokenizer;

/// One document in this many goes to validation when no validation files are named.
pub const HOLDOUT_EVERY: usize = 100;
/// Documents tokenized together (on all cores).
const BATCH: usize = 512;

/// The text sources of a study.
#[derive(Debug, Clone)]
pub struct TextSpec {
    /// JSONL(.zst/.gz) document files, or `.tokens` shards.
    pub files: Vec<PathBuf>,
    /// Same kinds; empty: hold out documents of `files`.
    pub validation_files: Vec<PathBuf>,
    /// Field holding the text (`a.b` reaches into nested objects).
    pub text_field: String,
    pub on_bad_record: OnBadRecord,
}

/// Training and validation documents, and what was left out reading them.
pub struct TextData {
    pub train: DocSplit,
    pub validation: DocSplit,
    pub skipped: Skipped,
}

/// Which documents of a collection a view shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Part {
    All,
    /// All but one document in each block of `stride`.
    Train {
        stride: usize,
        held: usize,
    },
    /// The last document of each of the first `held` blocks of `stride`.
    Validation {
        stride: usize,
        held: usize,
    },
}

/// A shared view of token documents: all of them, or the training or validation side of a hold-out.
#[derive(Clone)]
pub struct DocSplit {
    docs: Arc<TokenShards>,
    part: Part,
}

impl DocSplit {
    pub fn all(docs: TokenShards) -> Self {
        Self { docs: Arc::new(docs), part: Part::All }
    }

    /// (training, validation) views holding out one document in `every` (at least one).
    pub fn hold_out(docs: TokenShards, every: usize) -> Result<(Self, Self)> {
        let n = docs.n_docs();
        if n < 2 {
            bail!("the text holds {n} document(s); holding out validation text needs at least 2 (or name validation files)");
        }
        let held = (n / every.max(2)).max(1);
        let stride = n / held;
        let docs = Arc::new(docs);
        Ok((
            Self { docs: docs.clone(), part: Part::Train { stride, held } },
            Self { docs, part: Part::Validation { stride, held } },
        ))
    }

    fn doc_index(&self, d: usize) -> usize {
        match self.part {
            Part::All => d,
            Part::Validation { stride, .. } => d * stride + stride - 1,
            Part::Train { stride, held } => {
                let kept = stride - 1;
                if d / kept < held {
                    (d / kept) * stride + d % kept
                } else {
                    held * stride + (d - held * kept)
                }
            }
        }
    }
}

impl TokenDocuments for DocSplit {
    fn n_docs(&self) -> usize {
        match self.part {
            Part::All => self.docs.n_docs(),
            Part::Train { held, .. } => self.docs.n_docs() - held,
            Part::Validation { held, .. } => held,
        }
    }
    fn extend_with_doc(&self, d: usize, out: &mut Vec<u32>) {
        self.docs.extend_with_doc(self.doc_index(d), out)
    }
}

/// Token shards are used directly; anything else is a documents file.
fn is_token_shard(path: &Path) -> bool {
    path.extension().is_some_and(|e| e == "tokens")
}

/// Opens (tokenizing on first use) the training and validation text of `spec`.
pub fn open_text(
    spec: &TextSpec,
    tokenizer: &TextTokenizer,
    tokenizer_json: &Path,
    cache_root: &Path,
) -> Result<TextData> {
    let mut skipped = Skipped::default();
    let mut open = |files: &[PathBuf], what: &str| -> Result<TokenShards> {
        let shards = files.iter().filter(|f| is_token_shard(f)).count();
        if shards == files.len() {
            return TokenShards::open(files, tokenizer.vocab_size()).with_context(|| format!("data.text.{what}"));
        }
        if shards > 0 {
            bail!("data.text.{what}: mixes .tokens shards and document files; name one kind");
        }
        let (path, left_out) =
            tokenized(files, &spec.text_field, spec.on_bad_record, tokenizer, tokenizer_json, cache_root)
                .with_context(|| format!("data.text.{what}"))?;
        skipped.count = skipped.count.saturating_add(left_out.count);
        skipped.first.extend(left_out.first);
        TokenShards::open(&[path], tokenizer.vocab_size())
    };
    let train = open(&spec.files, "files")?;
    let (train, validation) = if spec.validation_files.is_empty() {
        DocSplit::hold_out(train, HOLDOUT_EVERY)?
    } else {
        (DocSplit::all(train), DocSplit::all(open(&spec.validation_files, "validation_files")?))
    };
    Ok(TextData { train, validation, skipped })
}

/// What a cached tokenization was made from, stored beside it.
#[derive(Debug, Serialize, Deserialize)]
struct CacheRecord {
    files: Vec<String>,
    text_field: String,
    documents: usize,
    tokens: u64,
    skipped: Skipped,
}

/// The cached token shard of `files` (tokenized now if absent) and the records left out making it.
fn tokenized(
    files: &[PathBuf],
    text_field: &str,
    policy: OnBadRecord,
    tokenizer: &TextTokenizer,
    tokenizer_json: &Path,
    cache_root: &Path,
) -> Result<(PathBuf, Skipped)> {
    let mut hash = Sha256::new();
    hash.update(std::fs::read(tokenizer_json).with_context(|| format!("reading {}", tokenizer_json.display()))?);
    hash.update(text_field.as_bytes());
    hash.update([u8::from(policy == OnBadRecord::Skip)]);
    for file in files {
        let meta = std::fs::metadata(file).with_context(|| format!("reading {}", file.display()))?;
        let modified =
            meta.modified().ok().and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok()).map_or(0, |d| d.as_nanos());
        let absolute = std::fs::canonicalize(file).unwrap_or_else(|_| file.clone());
        hash.update(format!("{}\0{}\0{modified}\0", absolute.display(), meta.len()).as_bytes());
    }
    let dir = cache_root.join(&hex::encode(hash.finalize())[..16]);
    let (shard, record_path) = (dir.join("documents.tokens"), dir.join("sources.json"));
    if let Ok(bytes) = std::fs::read(&record_path) {
        let record: CacheRecord =
            serde_json::from_slice(&bytes).with_context(|| format!("parsing {}", record_path.display()))?;
        if shard.is_file() {
            tracing::info!(shard = %shard.display(), documents = record.documents, "tokenized text cache hit");
            return Ok((shard, record.skipped));
        }
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut writer = TokenShardWriter::new(&shard, tokenizer.vocab_size())?;
    let mut skipped = Skipped::default();
    let mut tokens = 0u64;
    let mut batch: Vec<String> = Vec::with_capacity(BATCH);
    let mut flush = |batch: &mut Vec<String>, writer: &mut TokenShardWriter| -> Result<()> {
        let ids: Vec<Result<Vec<u32>>> = batch.par_iter().map(|text| tokenizer.encode(text)).collect();
        for doc in ids {
            let doc = doc?;
            tokens += doc.len() as u64;
            writer.push(&doc)?;
        }
        batch.clear();
        Ok(())
    };
    for file in files {
        let mut visit_error = None;
        let read = visit_lines(
            file,
            "text",
            |line| document_text(line, text_field),
            |item| {
                let handled = match item {
                    Ok(text) => {
                        batch.push(text);
                        if batch.len() == BATCH {
                            flush(&mut batch, &mut writer)
                        } else {
                            Ok(())
                        }
                    }
                    Err(problem) => skipped.record(
                        policy,
                        "text",
                        &format!("{}:{}: {}", file.display(), problem.line, problem.message),
                    ),
                };
                handled.map_err(|err| {
                    visit_error = Some(err);
                    anyhow::anyhow!("stopped")
                })
            },
        );
        if let Some(err) = visit_error {
            return Err(err);
        }
        if let Err(err) = read {
            // A file that cannot be read on (a truncated .zst, bytes that are not UTF-8): under
            // `skip` the rest of it is lost and counted as one bad record.
            skipped.record(policy, "text", &format!("{err:#} (the rest of the file is left out)"))?;
        }
    }
    flush(&mut batch, &mut writer)?;
    let documents = writer.n_docs();
    if documents == 0 {
        bail!("no usable documents in {} file(s) (field {text_field:?})", files.len());
    }
    writer.finish()?;
    let record = CacheRecord {
        files: files.iter().map(|f| f.display().to_string()).collect(),
        text_field: text_field.to_string(),
        documents,
        tokens,
        skipped: skipped.clone(),
    };
    vlmix_atomic_file::write_atomic(&record_path, &serde_json::to_vec_pretty(&record)?)?;
    tracing::info!(documents, tokens, skipped = skipped.count, shard = %shard.display(), "tokenized text");
    Ok((shard, skipped))
}

/// The text of one JSONL document: a non-empty string at `field` (dots reach into objects).
fn document_text(line: &str, field: &str) -> std::result::Result<String, String> {
    let value: Value = serde_json::from_str(line).map_err(|e| format!("malformed JSON: {e}"))?;
    let mut at = &value;
    for part in field.split('.') {
        at = at.get(part).ok_or_else(|| format!("no field {field:?}"))?;
    }
    match at {
        Value::String(text) if !text.trim().is_empty() => Ok(text.clone()),
        Value::String(_) => Err(format!("field {field:?} is empty")),
        other => Err(format!("field {field:?} is not a string: {}", preview(&other.to_string()))),
    }
}

fn preview(text: &str) -> String {
    text.chars().take(60).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn tokenizer(dir: &Path) -> (TextTokenizer, PathBuf) {
        let text = "the quick brown fox jumps over the lazy dog and the cat";
        let tok = TextTokenizer::train([text; 30].iter().copied(), 300).unwrap();
        let path = dir.join("tokenizer.json");
        tok.save(&path).unwrap();
        (TextTokenizer::load(&path).unwrap(), path)
    }

    fn zst(path: &Path, lines: &[String]) {
        let mut encoder = zstd::stream::write::Encoder::new(std::fs::File::create(path).unwrap(), 3).unwrap();
        for line in lines {
            writeln!(encoder, "{line}").unwrap();
        }
        encoder.finish().unwrap();
    }

    #[test]
    fn dclm_jsonl_zst_is_tokenized_once_with_bad_lines_counted_and_a_hold_out() {
        let dir = tempfile::tempdir().unwrap();
        let (tok, tok_path) = tokenizer(dir.path());
        let mut lines: Vec<String> = (0..250)
            .map(|i| serde_json::json!({"text": format!("the fox {i}"), "url": "https://example.org", "metadata": {"language": "en"}}).to_string())
            .collect();
        lines[3] = "{\"text\": ".into();
        lines[7] = serde_json::json!({"url": "no text"}).to_string();
        let file = dir.path().join("shard_00000.jsonl.zst");
        zst(&file, &lines);
        let spec = TextSpec {
            files: vec![file.clone()],
            validation_files: vec![],
            text_field: "text".into(),
            on_bad_record: OnBadRecord::Skip,
        };
        let cache = dir.path().join("cache");
        let data = open_text(&spec, &tok, &tok_path, &cache).unwrap();
        assert_eq!(data.skipped.count, 2);
        assert!(data.skipped.first[0].contains("shard_00000.jsonl.zst:4: malformed JSON"), "{:?}", data.skipped);
        assert!(data.skipped.first[1].contains(":8: no field \"text\""), "{:?}", data.skipped);
        assert_eq!(data.train.n_docs() + data.validation.n_docs(), 248);
        assert_eq!(data.validation.n_docs(), 2);
        let mut first = Vec::new();
        data.train.extend_with_doc(0, &mut first);
        assert_eq!(tok.decode(&first).unwrap(), "the fox 0");
        let again = open_text(&spec, &tok, &tok_path, &cache).unwrap();
        assert_eq!(again.skipped, data.skipped, "a cache hit reports the same skipped records");
        assert_eq!(std::fs::read_dir(&cache).unwrap().count(), 1);
        let strict = TextSpec { on_bad_record: OnBadRecord::Fail, ..spec };
        let err = format!("{:#}", open_text(&strict, &tok, &tok_path, &cache).err().unwrap());
        assert!(err.contains("shard_00000.jsonl.zst:4"), "{err}");
    }

    #[test]
    fn a_truncated_zst_file_is_counted_under_skip() {
        let dir = tempfile::tempdir().unwrap();
        let (tok, tok_path) = tokenizer(dir.path());
        let lines: Vec<String> = (0..2000)
            .map(|i| serde_json::json!({"content": {"body": format!("dog {i} jumps over the lazy fox")}}).to_string())
            .collect();
        let file = dir.path().join("cut.jsonl.zst");
        zst(&file, &lines[..1000]);
        let first_frame = std::fs::read(&file).unwrap();
        zst(&file, &lines[1000..]);
        let second_frame = std::fs::read(&file).unwrap();
        std::fs::write(&file, [&first_frame[..], &second_frame[..second_frame.len() / 2]].concat()).unwrap();
        let spec = TextSpec {
            files: vec![file],
            validation_files: vec![],
            text_field: "content.body".into(),
            on_bad_record: OnBadRecord::Skip,
        };
        let data = open_text(&spec, &tok, &tok_path, &dir.path().join("cache")).unwrap();
        assert_eq!(data.skipped.count, 1);
        assert!(
            data.skipped.first[0].contains("cut.jsonl.zst:") && data.skipped.first[0].contains("rest of the file"),
            "{:?}",
            data.skipped
        );
        assert!(data.train.n_docs() + data.validation.n_docs() >= 1000 && data.train.n_docs() < 2000);
    }

    #[test]
    fn hold_out_views_partition_the_documents() {
        for n in [2usize, 5, 99, 100, 101, 350] {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("d.tokens");
            let docs: Vec<Vec<u32>> = (0..n as u32).map(|d| vec![d]).collect();
            crate::text::shard::write_token_shard(&path, 1000, &docs).unwrap();
            let (train, validation) = DocSplit::hold_out(TokenShards::open(&[path], 1000).unwrap(), 100).unwrap();
            let mut seen: Vec<u32> = Vec::new();
            for view in [&train, &validation] {
                for d in 0..view.n_docs() {
                    view.extend_with_doc(d, &mut seen);
                }
            }
            seen.sort();
            assert_eq!(seen, (0..n as u32).collect::<Vec<_>>(), "n = {n}");
            assert_eq!(validation.n_docs(), (n / 100).max(1));
        }
    }
}
