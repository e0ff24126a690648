//! Bring your own data: the readers behind a study's `[data]` table, for data in the formats the field
//! ships it in (DCLM-style JSONL / JSONL.zst text, DataComp-style WebDataset shards, LLaVA JSON, the
//! VQAv2 / GQA / TextVQA / POPE eval files), plus the policy for records that cannot be read.
//!
//! Inputs are named by paths, globs (`shards/*.tar`) or brace ranges (`shards/{00000..00127}.tar`),
//! expanded here in one place so every source accepts the same forms.
pub mod eval_sets;
pub mod example;
pub mod stream;
pub mod text;

use std::fmt;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

/// What a reader does with a record it cannot use (a truncated shard's tail, an undecodable image,
/// a conversation whose image is missing, a malformed line).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnBadRecord {
    /// Stop with an error naming the file and member or line (the default: data is never thinned
    /// unless the user says so).
    #[default]
    Fail,
    /// Log it (file and member or line), leave it out and count it.
    Skip,
}

impl std::str::FromStr for OnBadRecord {
    type Err = anyhow::Error;

    fn from_str(text: &str) -> Result<Self> {
        match text {
            "fail" => Ok(Self::Fail),
            "skip" => Ok(Self::Skip),
            other => bail!("on_bad_record {other:?}: expected \"skip\" or \"fail\""),
        }
    }
}

/// Records left out under [`OnBadRecord::Skip`]: the count, and the first problems for the run's
/// outputs (every one is logged as it happens).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Skipped {
    pub count: u64,
    pub first: Vec<String>,
}

/// Problems kept in [`Skipped::first`]; the log has them all.
const KEPT_PROBLEMS: usize = 100;

impl Skipped {
    /// Applies `policy` to one bad record of `source` (e.g. "image-caption shards"): an error under
    /// `Fail`, a warning and a count under `Skip`.
    pub fn record(&mut self, policy: OnBadRecord, source: &str, problem: &dyn fmt::Display) -> Result<()> {
        match policy {
            OnBadRecord::Fail => bail!(
                "{source}: {problem} (on_bad_record = \"fail\"; \"skip\" leaves such records out and counts them)"
            ),
            OnBadRecord::Skip => {
                tracing::warn!(source, %problem, "skipped a bad record");
                self.count = self.count.saturating_add(1);
                if self.first.len() < KEPT_PROBLEMS {
                    self.first.push(problem.to_string());
                }
                Ok(())
            }
        }
    }
}

/// Expands `patterns` (paths, globs, brace ranges `{000..127}` and lists `{a,b}`) into files, in
/// pattern order and sorted within a glob. A pattern that names no file is an error naming it, since
/// a typo would otherwise silently shrink the data.
pub fn expand_paths(patterns: &[String], what: &str) -> Result<Vec<PathBuf>> {
    let mut paths = Vec::new();
    for pattern in patterns {
        let before = paths.len();
        for expanded in expand_braces(pattern).with_context(|| format!("{what}: pattern {pattern:?}"))? {
            if expanded.contains(['*', '?', '[']) {
                let matches = glob::glob(&expanded).with_context(|| format!("{what}: bad glob {expanded:?}"))?;
                let mut found = Vec::new();
                for entry in matches {
                    let path = entry.with_context(|| format!("{what}: reading a match of {expanded:?}"))?;
                    if path.is_file() {
                        found.push(path);
                    }
                }
                found.sort();
                paths.extend(found);
            } else {
                let path = PathBuf::from(&expanded);
                if !path.is_file() {
                    bail!("{what}: {} does not exist (from pattern {pattern:?})", path.display());
                }
                paths.push(path);
            }
        }
        if paths.len() == before {
            bail!("{what}: pattern {pattern:?} matches no file");
        }
    }
    Ok(paths)
}

/// Shell-style brace expansion: `{a..b}` counts (zero-padded to the width of `a` when it starts with 0,
/// as DataComp's shard names are), `{x,y}` lists; several braces multiply out left to right.
pub fn expand_braces(pattern: &str) -> Result<Vec<String>> {
    let Some(open) = pattern.find('{') else { return Ok(vec![pattern.to_string()]) };
    let close = pattern[open..].find('}').map(|i| open + i).with_context(|| format!("unclosed {{ at byte {open}"))?;
    let (head, body, tail) = (&pattern[..open], &pattern[open + 1..close], &pattern[close + 1..]);
    let choices: Vec<String> = if let Some((from, to)) = body.split_once("..") {
        let (a, b) = (from.parse::<u64>(), to.parse::<u64>());
        let (Ok(a), Ok(b)) = (a, b) else { bail!("range {{{body}}}: both ends must be non-negative integers") };
        if a > b {
            bail!("range {{{body}}}: the start is after the end");
        }
        if b - a > 10_000_000 {
            bail!("range {{{body}}}: more than 10 million names");
        }
        let width = if from.len() > 1 && from.starts_with('0') { from.len() } else { 0 };
        (a..=b).map(|n| format!("{n:0width$}")).collect()
    } else if body.contains(',') {
        body.split(',').map(str::to_string).collect()
    } else {
        bail!("braces {{{body}}}: expected a range {{a..b}} or a list {{x,y}}");
    };
    let tails = expand_braces(tail)?;
    Ok(choices.iter().flat_map(|choice| tails.iter().map(move |rest| format!("{head}{choice}{rest}"))).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn brace_ranges_and_lists_expand_like_a_shell() {
        assert_eq!(expand_braces("s/{00000..00002}.tar").unwrap(), ["s/00000.tar", "s/00001.tar", "s/00002.tar"]);
        assert_eq!(expand_braces("{8..10}").unwrap(), ["8", "9", "10"]);
        assert_eq!(expand_braces("{a,b}-{1..2}").unwrap(), ["a-1", "a-2", "b-1", "b-2"]);
        assert_eq!(expand_braces("plain.tar").unwrap(), ["plain.tar"]);
        for bad in ["{1..", "{3..1}", "{x..y}", "{one}"] {
            assert!(expand_braces(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn patterns_name_files_and_a_pattern_matching_nothing_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["00000.tar", "00001.tar", "00002.tar", "notes.txt"] {
            std::fs::write(dir.path().join(name), b"x").unwrap();
        }
        let root = dir.path().display();
        let got = expand_paths(&[format!("{root}/*.tar"), format!("{root}/notes.txt")], "shards").unwrap();
        let names: Vec<String> = got.iter().map(|p| p.file_name().unwrap().to_string_lossy().into_owned()).collect();
        assert_eq!(names, ["00000.tar", "00001.tar", "00002.tar", "notes.txt"]);
        assert_eq!(expand_paths(&[format!("{root}/{{00001..00002}}.tar")], "shards").unwrap().len(), 2);
        let err = expand_paths(&[format!("{root}/{{00002..00003}}.tar")], "shards").unwrap_err().to_string();
        assert!(err.contains("00003.tar does not exist"), "{err}");
        let err = expand_paths(&[format!("{root}/*.zst")], "text").unwrap_err().to_string();
        assert!(err.contains("matches no file"), "{err}");
    }

    #[test]
    fn skip_counts_and_fail_refuses() {
        let mut skipped = Skipped::default();
        skipped.record(OnBadRecord::Skip, "shards", &"a.tar: member k.jpg: truncated").unwrap();
        assert_eq!(skipped.count, 1);
        let err = skipped.record(OnBadRecord::Fail, "shards", &"b.tar: member x.png: bad").unwrap_err().to_string();
        assert!(err.contains("b.tar: member x.png") && err.contains("on_bad_record"), "{err}");
        assert_eq!(skipped.count, 1);
    }
}
