//! Tokenized text shards: every document's token ids in one memory-mapped file, with document offsets so
//! packing can place an end-of-text token between documents and shuffle at document granularity.
//!
//! Layout (little-endian):
//! ```text
//! 0   magic "VLMXTOK1"
//! 8   u32 bytes per token id (2 when the vocabulary fits in u16, else 4)
//! 12  u32 reserved (0)
//! 16  u64 number of documents D
//! 24  u64 number of tokens N
//! 32  u64 vocabulary size
//! 40  24 bytes reserved (0)
//! 64  (D + 1) u64 token offsets: document d is tokens[offsets[d]..offsets[d+1]]
//! ..  N token ids
//! ```
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use memmap2::Mmap;
use vlmix_atomic_file::write_atomic_with;

const MAGIC: &[u8; 8] = b"VLMXTOK1";
const HEADER_BYTES: usize = 64;

/// Writes documents of token ids atomically; ids are stored as u16 when `vocab_size <= 65536`.
pub fn write_token_shard(path: &Path, vocab_size: usize, documents: &[Vec<u32>]) -> Result<()> {
    let mut writer = TokenShardWriter::new(path, vocab_size)?;
    for doc in documents {
        writer.push(doc)?;
    }
    writer.finish()
}

/// Writes a token shard one document at a time, for corpora larger than memory: token ids go to a
/// scratch file beside `path` as they come (only the 8-byte document offsets stay in memory), and
/// `finish` assembles header, offsets and ids into `path` atomically.
pub struct TokenShardWriter {
    path: PathBuf,
    scratch: PathBuf,
    body: BufWriter<File>,
    vocab_size: usize,
    token_bytes: u32,
    offsets: Vec<u64>,
}

impl TokenShardWriter {
    pub fn new(path: &Path, vocab_size: usize) -> Result<Self> {
        let scratch = path.with_extension("tokens-body.tmp");
        let file = File::create(&scratch).with_context(|| format!("create {}", scratch.display()))?;
        let token_bytes: u32 = if vocab_size <= 1 << 16 { 2 } else { 4 };
        Ok(Self {
            path: path.to_path_buf(),
            scratch,
            body: BufWriter::new(file),
            vocab_size,
            token_bytes,
            offsets: vec![0],
        })
    }

    /// Appends one document's ids; an id outside the vocabulary is an error.
    pub fn push(&mut self, doc: &[u32]) -> Result<()> {
        for &id in doc {
            anyhow::ensure!(
                (id as usize) < self.vocab_size,
                "token id {id} is outside the vocabulary of {}",
                self.vocab_size
            );
            if self.token_bytes == 2 {
                self.body.write_all(&(id as u16).to_le_bytes())?;
            } else {
                self.body.write_all(&id.to_le_bytes())?;
            }
        }
        self.offsets.push(self.offsets.last().copied().unwrap_or(0) + doc.len() as u64);
        Ok(())
    }

    pub fn n_docs(&self) -> usize {
        self.offsets.len() - 1
    }

    pub fn finish(mut self) -> Result<()> {
        self.body.flush().with_context(|| format!("write {}", self.scratch.display()))?;
        let n_tokens = *self.offsets.last().expect("starts with 0");
        let result = write_atomic_with(&self.path, |temp| {
            let mut out = BufWriter::new(File::create(temp).with_context(|| format!("create {}", temp.display()))?);
            out.write_all(MAGIC)?;
            out.write_all(&self.token_bytes.to_le_bytes())?;
            out.write_all(&0u32.to_le_bytes())?;
            out.write_all(&(self.offsets.len() as u64 - 1).to_le_bytes())?;
            out.write_all(&n_tokens.to_le_bytes())?;
            out.write_all(&(self.vocab_size as u64).to_le_bytes())?;
            out.write_all(&[0u8; 24])?;
            for offset in &self.offsets {
                out.write_all(&offset.to_le_bytes())?;
            }
            let mut body = File::open(&self.scratch).with_context(|| format!("open {}", self.scratch.display()))?;
            std::io::copy(&mut body, &mut out).with_context(|| format!("copy {}", self.scratch.display()))?;
            out.flush().with_context(|| format!("write {}", temp.display()))
        });
        result
    }
}

impl Drop for TokenShardWriter {
    /// The scratch file goes whether the shard was finished or abandoned on an error.
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.scratch);
    }
}

/// Several token shards read as one document collection (a user's pre-tokenized corpus in parts).
pub struct TokenShards {
    shards: Vec<TokenShard>,
    /// First document of each shard, plus the total at the end.
    starts: Vec<usize>,
}

impl TokenShards {
    /// Opens every shard; each must fit a vocabulary of `vocab_size` ids.
    pub fn open(paths: &[PathBuf], vocab_size: usize) -> Result<Self> {
        anyhow::ensure!(!paths.is_empty(), "no token shards given");
        let mut shards = Vec::with_capacity(paths.len());
        let mut starts = vec![0];
        for path in paths {
            let shard = TokenShard::open(path)?;
            anyhow::ensure!(
                shard.vocab_size() <= vocab_size,
                "{}: token shard was written for a vocabulary of {} ids, the tokenizer has {vocab_size}: tokenize it with this tokenizer",
                path.display(),
                shard.vocab_size()
            );
            starts.push(starts.last().copied().unwrap_or(0) + shard.n_docs());
            shards.push(shard);
        }
        Ok(Self { shards, starts })
    }

    pub fn n_docs(&self) -> usize {
        *self.starts.last().expect("starts with 0")
    }

    pub fn n_tokens(&self) -> usize {
        self.shards.iter().map(TokenShard::n_tokens).sum()
    }

    /// Appends document `d` (counted across all shards) to `out`.
    pub fn extend_with_doc(&self, d: usize, out: &mut Vec<u32>) {
        let shard = self.starts.partition_point(|&start| start <= d) - 1;
        self.shards[shard].extend_with_doc(d - self.starts[shard], out)
    }
}

/// A memory-mapped token shard.
pub struct TokenShard {
    path: PathBuf,
    map: Mmap,
    token_bytes: usize,
    n_docs: usize,
    n_tokens: usize,
    vocab_size: usize,
}

impl TokenShard {
    /// Opens and checks the header, the file size and the document offsets.
    pub fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).with_context(|| format!("open token shard {}", path.display()))?;
        // SAFETY: the shard is written once, atomically, and never modified in place afterwards.
        let map = unsafe { Mmap::map(&file) }.with_context(|| format!("map {}", path.display()))?;
        let bad = |what: String| anyhow::anyhow!("{}: not a valid token shard: {what}", path.display());
        if map.len() < HEADER_BYTES || &map[..8] != MAGIC {
            return Err(bad("missing the VLMXTOK1 header".into()));
        }
        let u32_at = |at: usize| u32::from_le_bytes(map[at..at + 4].try_into().expect("4 bytes"));
        let u64_at = |at: usize| u64::from_le_bytes(map[at..at + 8].try_into().expect("8 bytes"));
        let token_bytes = u32_at(8) as usize;
        if token_bytes != 2 && token_bytes != 4 {
            return Err(bad(format!("token width {token_bytes} bytes (expected 2 or 4)")));
        }
        let (n_docs, n_tokens, vocab_size) = (u64_at(16) as usize, u64_at(24) as usize, u64_at(32) as usize);
        let expected = HEADER_BYTES as u128 + (n_docs as u128 + 1) * 8 + n_tokens as u128 * token_bytes as u128;
        if map.len() as u128 != expected {
            return Err(bad(format!("{} bytes, header promises {expected} (truncated or corrupt)", map.len())));
        }
        let shard = Self { path: path.to_path_buf(), map, token_bytes, n_docs, n_tokens, vocab_size };
        let mut previous = 0;
        for d in 0..=n_docs {
            let offset = shard.offset(d);
            if offset < previous || offset > n_tokens || (d == 0 && offset != 0) || (d == n_docs && offset != n_tokens)
            {
                return Err(bad(format!("document offset {d} is {offset}, out of order or range")));
            }
            previous = offset;
        }
        Ok(shard)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
    pub fn n_docs(&self) -> usize {
        self.n_docs
    }
    pub fn n_tokens(&self) -> usize {
        self.n_tokens
    }
    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    fn offset(&self, d: usize) -> usize {
        let at = HEADER_BYTES + d * 8;
        u64::from_le_bytes(self.map[at..at + 8].try_into().expect("8 bytes")) as usize
    }

    /// Appends document `d`'s token ids to `out`.
    pub fn extend_with_doc(&self, d: usize, out: &mut Vec<u32>) {
        let base = HEADER_BYTES + (self.n_docs + 1) * 8;
        let (start, end) = (self.offset(d), self.offset(d + 1));
        let bytes = &self.map[base + start * self.token_bytes..base + end * self.token_bytes];
        if self.token_bytes == 2 {
            out.extend(bytes.chunks_exact(2).map(|b| u16::from_le_bytes([b[0], b[1]]) as u32));
        } else {
            out.extend(bytes.chunks_exact(4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]])));
        }
    }

    /// Every problem a full scan finds (token ids outside the vocabulary), for `vlmix data inspect`.
    pub fn check_token_ids(&self) -> Vec<String> {
        let mut problems = Vec::new();
        let mut tokens = Vec::new();
        for d in 0..self.n_docs {
            tokens.clear();
            self.extend_with_doc(d, &mut tokens);
            if let Some(bad) = tokens.iter().find(|&&t| t as usize >= self.vocab_size) {
                problems.push(format!(
                    "{}: document {d}: token id {bad} >= vocabulary size {}",
                    self.path.display(),
                    self.vocab_size
                ));
            }
        }
        problems
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_u16_and_u32() {
        let dir = tempfile::tempdir().unwrap();
        for vocab in [300usize, 70_000] {
            let path = dir.path().join(format!("s{vocab}.tokens"));
            let docs = vec![vec![1, 2, 3], vec![], vec![(vocab - 1) as u32]];
            write_token_shard(&path, vocab, &docs).unwrap();
            let shard = TokenShard::open(&path).unwrap();
            assert_eq!((shard.n_docs(), shard.n_tokens(), shard.vocab_size()), (3, 4, vocab));
            let mut out = Vec::new();
            for (d, doc) in docs.iter().enumerate().take(3) {
                out.clear();
                shard.extend_with_doc(d, &mut out);
                assert_eq!(&out, doc);
            }
            assert!(shard.check_token_ids().is_empty());
        }
    }

    #[test]
    fn truncated_shard_is_rejected_with_its_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.tokens");
        write_token_shard(&path, 100, &[vec![1, 2, 3, 4]]).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() - 2]).unwrap();
        let err = TokenShard::open(&path).err().unwrap().to_string();
        assert!(err.contains("t.tokens") && err.contains("truncated"), "{err}");
    }

    #[test]
    fn out_of_vocabulary_ids_are_refused_when_writing() {
        let dir = tempfile::tempdir().unwrap();
        assert!(write_token_shard(&dir.path().join("x"), 10, &[vec![10]]).is_err());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "no scratch file is left behind");
    }

    #[test]
    fn several_shards_read_as_one_collection() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a.tokens"), dir.path().join("b.tokens"));
        write_token_shard(&a, 50, &[vec![1], vec![2, 3]]).unwrap();
        write_token_shard(&b, 50, &[vec![], vec![4, 5, 6]]).unwrap();
        let set = TokenShards::open(&[a.clone(), b], 60).unwrap();
        assert_eq!((set.n_docs(), set.n_tokens()), (4, 6));
        let docs: Vec<Vec<u32>> = (0..4)
            .map(|d| {
                let mut out = Vec::new();
                set.extend_with_doc(d, &mut out);
                out
            })
            .collect();
        assert_eq!(docs, vec![vec![1], vec![2, 3], vec![], vec![4, 5, 6]]);
        let err = TokenShards::open(&[a], 40).err().unwrap().to_string();
        assert!(err.contains("a.tokens") && err.contains("vocabulary of 50"), "{err}");
    }
}
