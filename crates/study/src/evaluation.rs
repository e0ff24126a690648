//! Evaluation nodes: score one fine-tuned model on the study's tasks, plus held-out bits-per-byte.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use vlmix_data::tokenizer::TextTokenizer;
use vlmix_engine::Device;
use vlmix_eval::model_scorer::ImageFeatures;
use vlmix_eval::scorer::ImageRef;
use vlmix_eval::task::{load_tasks, Modality, Task, TaskItems};
use vlmix_eval::{evaluate_checkpoint, BitsPerByte, CheckpointEval, EvalOptions, EvalReport};
use vlmix_models::vision::encoder::open_encoder;
use vlmix_models::vision::feature_cache::CACHE_SUBDIR;

use crate::config::{LeftOutTask, StudyConfig};
use crate::executor::StudyDir;
use crate::outputs::{BpbPoint, EvalOutputs, EvalSkipped, TextBaselineOutputs};
use crate::plan::PRETRAIN;
use crate::runner::StudyRunner;
use vlmix_data::provenance::DataProvenance;

/// Per-item log of an eval node, beside its `eval.json` (see [`vlmix_eval::Sample`]).
pub const SAMPLES_FILE: &str = "samples.jsonl";

/// File of each configured task (vision ones only with `vision`), in the prepared data; a missing
/// file is an error naming the field, and the source package and what to do when the prepared
/// data lacks it because that package could not be had.
pub fn task_files(config: &StudyConfig, layout: &vlmix_data::DataLayout, vision: bool) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    let no_tasks = Vec::new();
    let vision_tasks = if vision { &config.eval.vision_tasks } else { &no_tasks };
    for (field, tasks, dir) in [
        ("eval.vision_tasks", vision_tasks, layout.eval_vl_dir()),
        ("eval.text_tasks", &config.eval.text_tasks, layout.eval_text_dir()),
    ] {
        for (i, task) in tasks.iter().enumerate() {
            let file = dir.join(format!("{task}.jsonl"));
            if !file.is_file() {
                if let Some(lost) = DataProvenance::read(layout).ok().as_ref().and_then(|p| p.lost_task(task)) {
                    anyhow::bail!(
                        "{field}[{i}] = {task:?} cannot be scored on this machine: it is built from source package \
                         {} ({}), which could not be had: {}. Fetch it (scripts/fetch-data.sh {}, then \
                         `vlmix data prepare --if-outdated`), or remove the task from {field}, or run with \
                         `vlmix study --without-missing-tasks` to leave out every such task (the report says so)",
                        lost.package,
                        lost.corpus_parts.join(", "),
                        lost.reason,
                        lost.package
                    );
                }
                let known: Vec<String> = std::fs::read_dir(&dir)
                    .map(|rd| {
                        rd.filter_map(|e| e.ok()?.file_name().to_str()?.strip_suffix(".jsonl").map(str::to_owned))
                            .collect()
                    })
                    .unwrap_or_default();
                anyhow::bail!(
                    "{field}[{i}] = {task:?} is not a prepared task (no {}); known: {}",
                    file.display(),
                    known.join(", ")
                );
            }
            files.push(file);
        }
    }
    Ok(files)
}

/// Drops from the config every task the prepared data lacks because its source package could not be
/// had, recording each in `eval.left_out` (what `--without-missing-tasks` does before planning).
pub fn leave_out_missing_tasks(config: &mut StudyConfig, layout: &vlmix_data::DataLayout) -> Result<()> {
    let provenance = DataProvenance::read(layout)?;
    let eval = &mut config.eval;
    let mut left_out = Vec::new();
    for (tasks, dir) in [(&mut eval.vision_tasks, layout.eval_vl_dir()), (&mut eval.text_tasks, layout.eval_text_dir())]
    {
        tasks.retain(|task| {
            let lost = provenance.lost_task(task).filter(|_| !dir.join(format!("{task}.jsonl")).is_file());
            if let Some(lost) = lost {
                left_out.push(LeftOutTask {
                    task: task.clone(),
                    package: lost.package.clone(),
                    reason: lost.reason.clone(),
                });
            }
            lost.is_none()
        });
    }
    for task in &left_out {
        tracing::warn!(
            "leaving out eval task {}: source package {} is missing ({})",
            task.task,
            task.package,
            task.reason
        );
    }
    let verdict_tasks = &mut config.verdicts.vision_tasks;
    verdict_tasks.retain(|task| !left_out.iter().any(|l| l.task == *task));
    config.eval.left_out.extend(left_out);
    Ok(())
}

/// The study's tasks: the prepared ones and the `[data]` eval sets (the vision ones only with `vision`).
fn study_tasks<D: Device>(runner: &StudyRunner<D>, vision: bool) -> Result<Vec<Task>> {
    let mut tasks = load_tasks(&task_files(runner.config, &runner.layout, vision)?)?;
    for task in runner.extra_tasks.iter().filter(|t| vision || t.modality() == Modality::Text) {
        if let Some(other) = tasks.iter().find(|t| t.name == task.name) {
            anyhow::bail!(
                "eval task {:?} comes from both {} and {}; rename the data.eval set",
                task.name,
                other.source.display(),
                task.source.display()
            );
        }
        tasks.push(task.clone());
    }
    Ok(tasks)
}

/// Encodes the images of every vision item the study's evals score, and the blind control's blank,
/// into the feature cache (many per forward pass), so that the first eval node does not encode them
/// one at a time; returns how many were encoded. Part of the `image-corpus` node.
pub fn cache_eval_images<D: Device>(runner: &StudyRunner<D>) -> Result<usize> {
    let limit = runner.config.eval.item_limit().of(Modality::Vision);
    let mut seen = HashSet::new();
    let mut images = vec![ImageRef::blank()];
    for task in study_tasks(runner, true)? {
        if let TaskItems::Vision(items) = task.items {
            images.extend(items.into_iter().take(limit).map(|item| item.image).filter(|i| seen.insert(i.path.clone())));
        }
    }
    let encoder = open_encoder(&runner.config.encoder_spec(), &runner.layout.home)?;
    ImageFeatures::open(encoder, &runner.layout.home.join(CACHE_SUBDIR))?.cache_all(&images)
}

/// Scores `checkpoint` on the study's tasks (prepared ones and `[data]` eval sets; the vision ones
/// too with `vision`, each also blind) and the held-out text ([`evaluate_checkpoint`]); writes the
/// full report to `dir/eval.json` and every item to `dir/samples.jsonl`. Returns the report, that
/// file's path relative to the run, and the bits-per-byte.
fn score_checkpoint<D: Device>(
    runner: &StudyRunner<D>,
    checkpoint: &Path,
    vision: bool,
    dir: &Path,
    study: &StudyDir,
) -> Result<(EvalReport, String, BitsPerByte)> {
    let tasks = study_tasks(runner, vision)?;
    let tokenizer = TextTokenizer::load(&runner.tokenizer_path)?;
    let home = &runner.layout.home;
    let mut images =
        |_: &Path| ImageFeatures::open(open_encoder(&runner.config.encoder_spec(), home)?, &home.join(CACHE_SUBDIR));
    let what = CheckpointEval {
        tasks: &tasks,
        options: EvalOptions {
            limit: runner.config.eval.item_limit(),
            blind_control: vision,
            ..EvalOptions::default()
        },
        validation: Some(&runner.validation),
    };
    let report = evaluate_checkpoint(runner.dev.clone(), checkpoint, tokenizer, &mut images, &what, &mut |_, _| {})?;
    let path = dir.join("eval.json");
    report.write_json(&path)?;
    report.write_samples(&dir.join(SAMPLES_FILE))?;
    let held_out = report.validation.clone().context("a study scores held-out text")?;
    Ok((report, path.strip_prefix(&study.root).unwrap_or(&path).to_string_lossy().into_owned(), held_out))
}

pub fn evaluate_node<D: Device>(
    runner: &mut StudyRunner<D>,
    finetune: &str,
    epoch: u32,
    dir: &Path,
    study: &StudyDir,
) -> Result<EvalOutputs> {
    let done = study.finished(finetune)?;
    let rel = done.outputs.finetune(finetune)?.epoch(finetune, epoch)?;
    let checkpoint = study.root.join(rel);
    let (report, report_path, held_out) = score_checkpoint(runner, &checkpoint, true, dir, study)?;
    Ok(EvalOutputs {
        report: report_path,
        checkpoint: rel.to_string(),
        bits_per_byte: held_out.bits_per_byte,
        validation_nats: held_out.sequence_nats,
        vision_stable_score: report.vision_stable_score,
        text_stable_score: report.text_stable_score,
        skipped_records: EvalSkipped { eval: runner.eval_skipped.clone() },
    })
}

/// The text-only baseline: the study's text tasks on the last kept pre-training checkpoint.
pub fn evaluate_text_baseline<D: Device>(
    runner: &mut StudyRunner<D>,
    dir: &Path,
    study: &StudyDir,
) -> Result<TextBaselineOutputs> {
    if let Some(from) = runner.config.imported_checkpoint()? {
        let (report, report_path, held_out) = score_checkpoint(runner, &from, false, dir, study)?;
        return Ok(TextBaselineOutputs {
            report: report_path,
            checkpoint: from.display().to_string(),
            fraction: 1.0,
            imported: true,
            validation_bpb: vec![BpbPoint { fraction: 1.0, bits_per_byte: held_out.bits_per_byte }],
            validation_nats: held_out.sequence_nats,
            text_stable_score: report.text_stable_score,
        });
    }
    let done = study.finished(PRETRAIN)?;
    let Some((fraction, rel)) = done.outputs.pretrain(PRETRAIN)?.checkpoints.last() else {
        anyhow::bail!("pretrain kept no checkpoint")
    };
    let (report, report_path, held_out) = score_checkpoint(runner, &study.root.join(rel), false, dir, study)?;
    Ok(TextBaselineOutputs {
        report: report_path,
        checkpoint: rel.to_string(),
        fraction,
        imported: false,
        validation_bpb: Vec::new(),
        validation_nats: held_out.sequence_nats,
        text_stable_score: report.text_stable_score,
    })
}
