//! The study config's `[data]` table: the user's own text, image-caption shards, instruction data,
//! eval sets and tokenizer. Every entry is optional; an absent one means the prepared registry data
//! (`vlmix data prepare`), so configs without `[data]` run exactly as before.
//!
//! Paths are relative to the directory vlmix runs in (like `encoder`); file lists take paths, globs
//! and brace ranges (`shards/{00000..00127}.tar`).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use vlmix_data::byod::eval_sets::{EvalFormat, EvalSource};
use vlmix_data::byod::stream::StreamConfig;
use vlmix_data::byod::text::TextSpec;
use vlmix_data::byod::{expand_paths, OnBadRecord, Skipped};
use vlmix_data::webdataset::{list_shards, CaptionKey};
use vlmix_data::DataLayout;
use vlmix_eval::task::{load_task_file, vl_task, Task};
use vlmix_train::corpus::{CaptionSource, InstructSource};

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataConfig {
    /// A Hugging Face `tokenizer.json`; the model's vocabulary is its size. Default: the prepared one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokenizer: Option<String>,
    /// What to do with a record that cannot be read: "fail" (default) or "skip" (logged and counted).
    #[serde(default, skip_serializing_if = "is_default")]
    pub on_bad_record: OnBadRecord,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<TextConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub images: Option<ImagesConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instruct: Option<InstructConfig>,
    /// Eval sets added to the prepared tasks of `[eval]`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub eval: Vec<EvalSetConfig>,
}

fn is_default<T: Default + PartialEq>(value: &T) -> bool {
    *value == T::default()
}

/// Pre-training text: JSONL / JSONL.zst / JSONL.gz documents, or vlmix `.tokens` shards.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TextConfig {
    pub files: Vec<String>,
    /// Held-out text for bits-per-byte; default: one document in 100 of `files`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub validation_files: Vec<String>,
    /// JSON field holding a document's text (`a.b` for nested fields).
    #[serde(default = "text_field")]
    pub text_field: String,
}

fn text_field() -> String {
    "text".into()
}

/// Image-caption WebDataset shards (DataComp's layout: `NNNNN.tar` of `key.jpg` + `key.txt` + `key.json`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImagesConfig {
    pub shards: Vec<String>,
    /// `txt` (or any member extension), `json:FIELD`, or `auto` (.txt, else "caption" in .json).
    #[serde(default = "auto")]
    pub caption: String,
    /// Samples held for shuffling while streaming; shards are also read in a seeded order.
    #[serde(default = "shuffle_buffer")]
    pub shuffle_buffer: usize,
}

fn auto() -> String {
    "auto".into()
}

fn shuffle_buffer() -> usize {
    1000
}

/// LLaVA instruction data: a JSON array (or JSON Lines) of conversations and its image folder.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstructConfig {
    pub file: String,
    /// LLaVA's `--image_folder`; default: the file's folder.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_root: Option<String>,
}

/// One eval set in the file layout it ships in, or a vlmix task JSONL.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvalSetConfig {
    /// Task name in reports (a vlmix JSONL names its own tasks and ignores this).
    pub name: String,
    /// vqav2, gqa, textvqa, pope or vlmix.
    pub format: String,
    /// Questions file (VQAv2 questions JSON, GQA / TextVQA JSON, POPE JSONL, or a vlmix task JSONL).
    pub questions: String,
    /// VQAv2's annotations JSON.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<String>,
    /// Folder of the set's images (not used by vlmix JSONL, whose image paths are relative to it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub images: Option<String>,
}

impl DataConfig {
    /// True for a config without `[data]` (nothing serialised, so pinned run directories still match).
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    /// Checks every named file exists and every value parses, so a typo fails before training.
    pub fn validate(&self) -> Result<()> {
        if let Some(tokenizer) = &self.tokenizer {
            if !Path::new(tokenizer).is_file() {
                bail!("data.tokenizer: {tokenizer} does not exist");
            }
        }
        if let Some(text) = &self.text {
            expand_paths(&text.files, "data.text.files")?;
            expand_paths(&text.validation_files, "data.text.validation_files")?;
        }
        if let Some(images) = &self.images {
            expand_paths(&images.shards, "data.images.shards")?;
            CaptionKey::parse(&images.caption).context("data.images.caption")?;
            if images.shuffle_buffer == 0 {
                bail!("data.images.shuffle_buffer must be at least 1");
            }
        }
        if let Some(instruct) = &self.instruct {
            if !Path::new(&instruct.file).is_file() {
                bail!("data.instruct.file: {} does not exist", instruct.file);
            }
            if let Some(root) = &instruct.image_root {
                if !Path::new(root).is_dir() {
                    bail!("data.instruct.image_root: {root} is not a folder");
                }
            }
        }
        for (i, set) in self.eval.iter().enumerate() {
            set.format().with_context(|| format!("data.eval[{i}] ({})", set.name))?;
            if !Path::new(&set.questions).is_file() {
                bail!("data.eval[{i}] ({}): questions file {} does not exist", set.name, set.questions);
            }
        }
        Ok(())
    }

    /// The tokenizer file: the configured one or the prepared one.
    pub fn tokenizer_path(&self, layout: &DataLayout) -> PathBuf {
        self.tokenizer.as_ref().map_or_else(|| layout.tokenizer_json(), PathBuf::from)
    }

    /// The user's text, when `[data.text]` names some.
    pub fn text_spec(&self) -> Result<Option<TextSpec>> {
        let Some(text) = &self.text else { return Ok(None) };
        Ok(Some(TextSpec {
            files: expand_paths(&text.files, "data.text.files")?,
            validation_files: expand_paths(&text.validation_files, "data.text.validation_files")?,
            text_field: text.text_field.clone(),
            on_bad_record: self.on_bad_record,
        }))
    }

    /// The caption shards: the user's, streamed in a seeded shuffled order, or the prepared ones in
    /// file order (as studies have always read them).
    pub fn caption_source(&self, layout: &DataLayout, seed: u64) -> Result<CaptionSource> {
        Ok(match &self.images {
            Some(images) => CaptionSource {
                shards: expand_paths(&images.shards, "data.images.shards")?,
                stream: StreamConfig {
                    seed: Some(seed),
                    shuffle_buffer: images.shuffle_buffer,
                    caption: CaptionKey::parse(&images.caption).context("data.images.caption")?,
                    on_bad_record: self.on_bad_record,
                },
            },
            None => {
                let dir = layout.images_dir().join("train");
                let shards = list_shards(&dir).with_context(|| {
                    format!("no prepared image-caption shards in {}; run `vlmix data prepare`", dir.display())
                })?;
                CaptionSource {
                    shards,
                    stream: StreamConfig {
                        seed: None,
                        shuffle_buffer: 1,
                        caption: CaptionKey::Auto,
                        on_bad_record: self.on_bad_record,
                    },
                }
            }
        })
    }

    /// The instruction data: the user's LLaVA file or the prepared one.
    pub fn instruct_source(&self, layout: &DataLayout) -> InstructSource {
        match &self.instruct {
            Some(instruct) => InstructSource {
                file: PathBuf::from(&instruct.file),
                image_root: instruct.image_root.as_ref().map(PathBuf::from),
                on_bad_record: self.on_bad_record,
            },
            None => InstructSource {
                file: layout.instruct_dir().join("llava_instruct.json"),
                image_root: None,
                on_bad_record: self.on_bad_record,
            },
        }
    }

    /// The configured eval sets as tasks, and the questions left out (missing images, missing fields).
    pub fn eval_tasks(&self) -> Result<(Vec<Task>, Skipped)> {
        let mut tasks = Vec::new();
        let mut skipped = Skipped::default();
        for (i, set) in self.eval.iter().enumerate() {
            let at = || format!("data.eval[{i}] ({})", set.name);
            let Some(format) = set.format().with_context(at)? else {
                tasks.extend(load_task_file(Path::new(&set.questions)).with_context(at)?);
                continue;
            };
            let images = set
                .images
                .as_ref()
                .with_context(|| format!("{}: needs `images`, the folder of the set's images", at()))?;
            let source = EvalSource {
                name: set.name.clone(),
                format,
                questions: PathBuf::from(&set.questions),
                annotations: set.annotations.as_ref().map(PathBuf::from),
                images: PathBuf::from(images),
            };
            let read = source.read().with_context(at)?;
            for problem in &read.problems {
                skipped.record(self.on_bad_record, "eval sets", problem)?;
            }
            if read.items.is_empty() {
                bail!("{}: no question could be read ({} problems)", at(), read.problems.len());
            }
            tasks.push(vl_task(&set.name, &source.questions, &source.images, &read.items).with_context(at)?);
        }
        Ok((tasks, skipped))
    }
}

impl EvalSetConfig {
    /// The set's layout; `None` for a vlmix task JSONL.
    fn format(&self) -> Result<Option<EvalFormat>> {
        Ok(Some(match self.format.as_str() {
            "vqav2" => EvalFormat::Vqav2,
            "gqa" => EvalFormat::Gqa,
            "textvqa" => EvalFormat::Textvqa,
            "pope" => EvalFormat::Pope,
            "vlmix" => return Ok(None),
            other => bail!("format {other:?}: expected vqav2, gqa, textvqa, pope or vlmix"),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::StudyConfig;

    #[test]
    fn the_byod_example_parses_and_configs_without_data_serialise_as_before() {
        let byod: StudyConfig = toml::from_str(include_str!("../../../configs/study/byod.toml")).unwrap();
        let data = &byod.data;
        assert_eq!(data.on_bad_record, OnBadRecord::Skip);
        assert_eq!(data.images.as_ref().unwrap().caption, "txt");
        assert_eq!(data.eval.iter().map(|e| e.format.as_str()).collect::<Vec<_>>(), ["vqav2", "pope"]);
        let smoke: StudyConfig = toml::from_str(include_str!("../../../configs/study/smoke.toml")).unwrap();
        assert!(smoke.data.is_empty());
        assert!(
            !serde_json::to_string(&smoke).unwrap().contains("\"data\""),
            "run directories pinned before [data] still match"
        );
    }

    #[test]
    fn missing_files_and_bad_values_are_refused_naming_the_field() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().display();
        let mut data = DataConfig {
            images: Some(ImagesConfig {
                shards: vec![format!("{root}/{{00000..00001}}.tar")],
                caption: "txt".into(),
                shuffle_buffer: 10,
            }),
            ..Default::default()
        };
        let err = format!("{:#}", data.validate().unwrap_err());
        assert!(err.contains("data.images.shards") && err.contains("00000.tar does not exist"), "{err}");
        for name in ["00000.tar", "00001.tar"] {
            std::fs::write(dir.path().join(name), b"").unwrap();
        }
        data.validate().unwrap();
        data.images.as_mut().unwrap().caption = "json:".into();
        assert!(format!("{:#}", data.validate().unwrap_err()).contains("data.images.caption"));
        let data = DataConfig {
            eval: vec![EvalSetConfig {
                name: "v".into(),
                format: "vqa".into(),
                questions: "q.json".into(),
                annotations: None,
                images: None,
            }],
            ..Default::default()
        };
        let err = format!("{:#}", data.validate().unwrap_err());
        assert!(err.contains("data.eval[0] (v)") && err.contains("expected vqav2"), "{err}");
    }
}
