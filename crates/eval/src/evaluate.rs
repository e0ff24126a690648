//! Runs tasks against a [`Scorer`] and turns item outcomes into task accuracies and stable scores.

use crate::bits_per_byte::{bits_per_byte, load_text_documents, BitsPerByte};
use crate::multiple_choice::predict_choice;
use crate::prompt::{continuation, VlTemplate};
use crate::scorer::Scorer;
use crate::task::{load_tasks, Modality, Task, TaskItems, TextChoiceItem, VlItem, VlQuestion};
use crate::vqa_answer::vqa_accuracy;
use crate::yes_no::{parse_yes_no, YesNoCounts, YesNoMetrics};
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// How yes/no questions get their answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum YesNoMode {
    /// Compare the log-likelihoods of " yes" and " no" (robust for small models; ties say yes).
    Rank,
    /// Generate and parse the text as POPE's script does (what Prismatic's suite does).
    Generate,
}

/// Knobs of an evaluation run.
#[derive(Debug, Clone)]
pub struct EvalOptions {
    pub vl_template: VlTemplate,
    /// Generation budget for open questions (answers are a word or phrase).
    pub max_new_tokens: usize,
    pub yes_no: YesNoMode,
    /// Evaluate only the first N items of each task (quick looks; None = all).
    pub limit: Option<usize>,
}

impl Default for EvalOptions {
    fn default() -> Self {
        Self { vl_template: VlTemplate::default(), max_new_tokens: 16, yes_no: YesNoMode::Rank, limit: None }
    }
}

/// What the model answered on one item and the credit it got (0..=1).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ItemOutcome {
    pub id: String,
    pub prediction: String,
    pub score: f64,
}

/// One task's result.
///
/// `accuracy` is the mean item credit: VQAv2 accuracy for open questions, correctness for yes/no,
/// length-normalised correctness (acc_norm) for multiple choice. `stable_score = accuracy - chance`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskResult {
    pub task: String,
    pub modality: Modality,
    pub source: String,
    pub n_items: usize,
    pub accuracy: f64,
    /// Mean chance level of the items evaluated.
    pub chance: f64,
    pub stable_score: f64,
    /// lm-eval's acc over the multiple-choice items, when there are any.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub acc: Option<f64>,
    /// lm-eval's acc_norm over the multiple-choice items, when there are any.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub acc_norm: Option<f64>,
    /// POPE metrics over the yes/no items, when there are any.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub yes_no: Option<YesNoMetrics>,
    pub items: Vec<ItemOutcome>,
}

/// A model's whole evaluation: tasks, group stable scores and validation bits-per-byte.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalReport {
    pub tasks: Vec<TaskResult>,
    /// Mean stable score of the vision-language tasks (None when there are none).
    pub vision_stable_score: Option<f64>,
    /// Mean stable score of the text tasks (None when there are none).
    pub text_stable_score: Option<f64>,
    pub validation: Option<BitsPerByte>,
}

impl EvalReport {
    /// Groups task results into the vision and text stable scores.
    pub fn new(tasks: Vec<TaskResult>, validation: Option<BitsPerByte>) -> Self {
        let group_mean = |modality| {
            let scores: Vec<f64> = tasks.iter().filter(|t| t.modality == modality).map(|t| t.stable_score).collect();
            (!scores.is_empty()).then(|| scores.iter().sum::<f64>() / scores.len() as f64)
        };
        Self {
            vision_stable_score: group_mean(Modality::Vision),
            text_stable_score: group_mean(Modality::Text),
            tasks,
            validation,
        }
    }

    /// Writes the report as pretty JSON, atomically.
    pub fn write_json(&self, path: &Path) -> Result<()> {
        let json = serde_json::to_vec_pretty(self).context("serialising eval report")?;
        vlmix_engine::atomic_file::write_atomic(path, &json)
    }

    pub fn read_json(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        serde_json::from_slice(&bytes).with_context(|| format!("parsing eval report {}", path.display()))
    }
}

/// Evaluates every task, then groups them (and the optional validation loss) into a report.
pub fn evaluate(scorer: &mut dyn Scorer, tasks: &[Task], validation: Option<BitsPerByte>, options: &EvalOptions) -> Result<EvalReport> {
    evaluate_with_progress(scorer, tasks, validation, options, &mut |_, _| {})
}

/// [`evaluate`], calling `on_item(done, total)` after every item so callers can draw progress.
pub fn evaluate_with_progress(
    scorer: &mut dyn Scorer,
    tasks: &[Task],
    validation: Option<BitsPerByte>,
    options: &EvalOptions,
    on_item: &mut dyn FnMut(usize, usize),
) -> Result<EvalReport> {
    let limit = options.limit.unwrap_or(usize::MAX);
    let total: usize = tasks.iter().map(|t| t.len().min(limit)).sum();
    let mut done = 0;
    let mut results = Vec::with_capacity(tasks.len());
    for task in tasks {
        let mut tick = || {
            done += 1;
            on_item(done, total);
        };
        let result = score_task(scorer, task, options, &mut tick).with_context(|| format!("evaluating task {:?}", task.name))?;
        results.push(result);
    }
    Ok(EvalReport::new(results, validation))
}

/// Loads task files (and optionally a validation JSONL of `{"text": ...}` documents), evaluates,
/// and returns the report: the whole `eval` stage in one call.
pub fn evaluate_files(
    scorer: &mut dyn Scorer,
    task_files: &[PathBuf],
    validation_file: Option<&Path>,
    options: &EvalOptions,
) -> Result<EvalReport> {
    let tasks = load_tasks(task_files)?;
    let validation = match validation_file {
        Some(path) => {
            let docs = load_text_documents(path)?;
            Some(bits_per_byte(scorer, &docs).with_context(|| format!("bits-per-byte on {}", path.display()))?)
        }
        None => None,
    };
    evaluate(scorer, &tasks, validation, options)
}

/// Running sums while a task's items are scored.
#[derive(Default)]
struct Tally {
    outcomes: Vec<ItemOutcome>,
    chance_sum: f64,
    choice_items: usize,
    acc_hits: usize,
    acc_norm_hits: usize,
    yes_no: YesNoCounts,
    yes_no_items: usize,
}

impl Tally {
    fn add_choice(&mut self, id: &str, choices: &[String], gold: usize, lls: &[f64], chance: f64) -> Result<()> {
        let p = predict_choice(choices, lls).with_context(|| format!("item {id:?}"))?;
        self.choice_items += 1;
        self.acc_hits += usize::from(p.raw == gold);
        self.acc_norm_hits += usize::from(p.length_normalized == gold);
        let score = if p.length_normalized == gold { 1.0 } else { 0.0 };
        self.push(id, choices[p.length_normalized].clone(), score, chance);
        Ok(())
    }

    fn push(&mut self, id: &str, prediction: String, score: f64, chance: f64) {
        self.chance_sum += chance;
        self.outcomes.push(ItemOutcome { id: id.to_string(), prediction, score });
    }

    fn finish(self, task: &Task) -> TaskResult {
        let n = self.outcomes.len();
        let mean = |x: f64| if n == 0 { 0.0 } else { x / n as f64 };
        let accuracy = mean(self.outcomes.iter().map(|o| o.score).sum());
        let chance = mean(self.chance_sum);
        let per_choice = |hits: usize| (self.choice_items > 0).then(|| hits as f64 / self.choice_items as f64);
        TaskResult {
            task: task.name.clone(),
            modality: task.modality(),
            source: task.source.display().to_string(),
            n_items: n,
            accuracy,
            chance,
            stable_score: accuracy - chance,
            acc: per_choice(self.acc_hits),
            acc_norm: per_choice(self.acc_norm_hits),
            yes_no: (self.yes_no_items > 0).then(|| self.yes_no.metrics()),
            items: self.outcomes,
        }
    }
}

/// Evaluates one task.
pub fn evaluate_task(scorer: &mut dyn Scorer, task: &Task, options: &EvalOptions) -> Result<TaskResult> {
    score_task(scorer, task, options, &mut || {})
}

fn score_task(scorer: &mut dyn Scorer, task: &Task, options: &EvalOptions, tick: &mut dyn FnMut()) -> Result<TaskResult> {
    let limit = options.limit.unwrap_or(usize::MAX);
    let mut tally = Tally::default();
    match &task.items {
        TaskItems::Vision(items) => {
            for item in items.iter().take(limit) {
                score_vl_item(scorer, item, options, &mut tally).with_context(|| format!("item {:?}", item.id))?;
                tick();
            }
        }
        TaskItems::Text(items) => {
            for item in items.iter().take(limit) {
                score_text_item(scorer, item, &mut tally).with_context(|| format!("item {:?}", item.id))?;
                tick();
            }
        }
    }
    Ok(tally.finish(task))
}

fn score_text_item(scorer: &mut dyn Scorer, item: &TextChoiceItem, tally: &mut Tally) -> Result<()> {
    let continuations: Vec<String> = item.choices.iter().map(|c| continuation(c)).collect();
    let sums: Vec<f64> = match &item.contexts {
        None => scorer.loglikelihoods(None, &item.context, &continuations)?.iter().map(|l| l.sum_logprob).collect(),
        Some(contexts) => contexts
            .iter()
            .zip(&continuations)
            .map(|(context, cont)| scorer.loglikelihood(None, context, cont).map(|l| l.sum_logprob))
            .collect::<Result<_>>()?,
    };
    tally.add_choice(&item.id, &item.choices, item.gold, &sums, item.chance)
}

fn score_vl_item(scorer: &mut dyn Scorer, item: &VlItem, options: &EvalOptions, tally: &mut Tally) -> Result<()> {
    let prompt = options.vl_template.render(&item.question);
    let image = Some(&item.image);
    match &item.kind {
        VlQuestion::Open { answers } => {
            let generated = scorer.generate(image, &prompt, options.max_new_tokens)?;
            let answer = first_line(&generated);
            let score = vqa_accuracy(&answer, answers);
            tally.push(&item.id, answer, score, item.chance);
        }
        VlQuestion::YesNo { gold_yes } => {
            let said_yes = match options.yes_no {
                YesNoMode::Rank => {
                    let lls = scorer.loglikelihoods(image, &prompt, &[continuation("yes"), continuation("no")])?;
                    lls[0].sum_logprob >= lls[1].sum_logprob
                }
                YesNoMode::Generate => parse_yes_no(&first_line(&scorer.generate(image, &prompt, options.max_new_tokens)?)),
            };
            tally.yes_no.add(said_yes, *gold_yes);
            tally.yes_no_items += 1;
            let score = if said_yes == *gold_yes { 1.0 } else { 0.0 };
            tally.push(&item.id, if said_yes { "yes" } else { "no" }.to_string(), score, item.chance);
        }
        VlQuestion::Choice { choices, gold } => {
            let continuations: Vec<String> = choices.iter().map(|c| continuation(c)).collect();
            let lls = scorer.loglikelihoods(image, &prompt, &continuations)?;
            let sums: Vec<f64> = lls.iter().map(|l| l.sum_logprob).collect();
            tally.add_choice(&item.id, choices, *gold, &sums, item.chance)?;
        }
    }
    Ok(())
}

/// A generated answer ends at the first newline (the model moving on to a new turn).
fn first_line(generated: &str) -> String {
    generated.trim_start().lines().next().unwrap_or_default().trim().to_string()
}
