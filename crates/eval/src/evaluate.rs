//! Runs tasks against a [`Scorer`] and turns item outcomes into task accuracies and stable scores.

use crate::bits_per_byte::BitsPerByte;
use crate::multiple_choice::predict_choice;
use crate::prompt::{continuation, VlTemplate};
use crate::scorer::{Answer, ImageRef, LogLikelihood, Request, Scorer};
use crate::stats::{accuracy_ci, paired_diff_ci, Interval};
use crate::task::{load_tasks, ChoiceMetric, Modality, Task, TaskItems, TextChoiceItem, VlItem, VlQuestion};
use crate::vqa_answer::{normalize_answer, vqa_accuracy};
use crate::yes_no::{parse_yes_no, YesNoCounts, YesNoMetrics};
use anyhow::{bail, ensure, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use vlmix_data::image_texts::answer_form;

/// How yes/no questions get their answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum YesNoMode {
    /// Compare the log-likelihoods of " yes" and " no" (robust for small models; ties say yes).
    Rank,
    /// Generate and parse the text as POPE's script does (what Prismatic's suite does).
    Generate,
}

/// How many items of each task are scored: the first N in file order, so every model of a study
/// is scored on the same items.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ItemLimit {
    /// Vision-language tasks (None = all).
    pub vision: Option<usize>,
    /// Text tasks (None = all).
    pub text: Option<usize>,
}

impl ItemLimit {
    /// The same limit for both modalities.
    pub fn all(limit: Option<usize>) -> Self {
        Self { vision: limit, text: limit }
    }

    pub fn of(&self, modality: Modality) -> usize {
        match modality {
            Modality::Vision => self.vision,
            Modality::Text => self.text,
        }
        .unwrap_or(usize::MAX)
    }
}

/// Knobs of an evaluation run.
#[derive(Debug, Clone)]
pub struct EvalOptions {
    pub vl_template: VlTemplate,
    /// Generation budget for open questions (answers are a word or phrase).
    pub max_new_tokens: usize,
    pub yes_no: YesNoMode,
    pub limit: ItemLimit,
    /// Score every vision-language item twice more: with [`ImageRef::blank`] in place of its image,
    /// and with no image at all (the [`Control`]s).
    pub blind_control: bool,
}

impl Default for EvalOptions {
    fn default() -> Self {
        Self {
            vl_template: VlTemplate::default(),
            max_new_tokens: 16,
            yes_no: YesNoMode::Rank,
            limit: ItemLimit::default(),
            blind_control: true,
        }
    }
}

impl EvalOptions {
    /// Items to score for `task`, control passes included (for progress bars).
    pub fn work(&self, task: &Task) -> usize {
        let items = task.len().min(self.limit.of(task.modality()));
        if self.blind_control && task.modality() == Modality::Vision {
            (1 + Control::ALL.len()) * items
        } else {
            items
        }
    }
}

/// A control pass of a vision-language task: the same model and items without the item's image.
/// The blank image is the classic blind control but is itself an input (a mid-grey picture answers
/// "gray"); no image at all carries no answer, so a gain over both is the image's own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Control {
    /// [`ImageRef::blank`] in place of the item's image.
    Blank,
    /// The prompt alone, no image slots.
    NoImage,
}

impl Control {
    pub const ALL: [Control; 2] = [Control::Blank, Control::NoImage];
}

/// What the model answered on one item and the credit it got (0..=1).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ItemOutcome {
    pub id: String,
    pub prediction: String,
    pub score: f64,
    /// The item's own image (its key; the blind pass too): items about one image are resampled
    /// together ([`crate::stats::Design`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
}

/// One scored item as `samples.jsonl` logs it (lm-eval's `--log_samples`): enough to recompute
/// every score and to compare two models item by item.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    pub task: String,
    pub id: String,
    /// Scored in a control pass instead of with the item's image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub control: Option<Control>,
    /// The key of the item's own image (vision-language items).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// The prompt or context the model was given (the image, if any, comes first).
    pub prompt: String,
    /// Per-choice contexts, when the task varies them (Winogrande).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contexts: Option<Vec<String>>,
    pub gold: String,
    pub prediction: String,
    /// Ranked items: the scored continuations and their summed log-likelihoods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub continuations: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loglikelihoods: Option<Vec<f64>>,
    /// Multiple choice: whether lm-eval's acc / acc_norm pick is the gold one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acc: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acc_norm: Option<bool>,
    /// Credit (0..=1) under the task's metric: the task's accuracy is the mean of it.
    pub score: f64,
}

/// One control pass of a vision-language task ([`Control`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BlindControl {
    pub accuracy: f64,
    /// `accuracy - control accuracy`, paired over the same items.
    pub vision_gain: f64,
    /// 95 % paired-bootstrap interval of the gain (see [`crate::stats`]).
    pub gain_ci: Interval,
    /// The model sees on this task: the gain's interval lies above 0.
    pub sees: bool,
    pub items: Vec<ItemOutcome>,
}

/// One task's result.
///
/// `accuracy` is the mean item credit under `metric`: VQAv2 accuracy for open questions,
/// correctness for yes/no, and for multiple choice lm-eval's acc (vision-language choices, and text
/// tasks whose source suite says so) or acc_norm. `stable_score = accuracy - chance`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskResult {
    pub task: String,
    pub modality: Modality,
    pub source: String,
    /// What `accuracy` measures: "acc", "acc_norm", "vqa_accuracy" or "yes_no_accuracy".
    pub metric: String,
    pub n_items: usize,
    pub accuracy: f64,
    /// 95 % bootstrap interval of `accuracy` over items.
    pub ci: Interval,
    /// Mean chance level of the items evaluated.
    pub chance: f64,
    /// Accuracy of always giving the most frequent gold answer (text: the most frequent gold index).
    pub majority: f64,
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
    /// Vision-language tasks: the blank-image control ([`Control::Blank`]).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub blind: Option<BlindControl>,
    /// Vision-language tasks: the control without an image ([`Control::NoImage`]).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub no_image: Option<BlindControl>,
    pub items: Vec<ItemOutcome>,
    /// Every scored item in full (control passes included), for `samples.jsonl`; not in the JSON report.
    #[serde(skip)]
    pub samples: Vec<Sample>,
}

impl TaskResult {
    /// Per-item image keys in item order (empty strings for items without an image).
    pub fn item_images(&self) -> Vec<String> {
        self.items.iter().map(|o| o.image.clone().unwrap_or_default()).collect()
    }

    /// Per-item credit in item order.
    pub fn item_scores(&self) -> Vec<f64> {
        self.items.iter().map(|o| o.score).collect()
    }
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
        vlmix_atomic_file::write_atomic(path, &json)
    }

    pub fn read_json(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        serde_json::from_slice(&bytes).with_context(|| format!("parsing eval report {}", path.display()))
    }

    /// Writes every task's samples as JSON lines, atomically.
    pub fn write_samples(&self, path: &Path) -> Result<()> {
        let mut bytes = Vec::new();
        for sample in self.tasks.iter().flat_map(|t| &t.samples) {
            serde_json::to_writer(&mut bytes, sample).context("serialising sample")?;
            bytes.push(b'\n');
        }
        vlmix_atomic_file::write_atomic(path, &bytes)
    }
}

/// Reads a `samples.jsonl` written by [`EvalReport::write_samples`].
pub fn read_samples(path: &Path) -> Result<Vec<Sample>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| serde_json::from_str(l).with_context(|| format!("{}:{}: not a sample", path.display(), i + 1)))
        .collect()
}

/// Evaluates every task, then groups them (and the optional validation loss) into a report.
pub fn evaluate(
    scorer: &mut dyn Scorer,
    tasks: &[Task],
    validation: Option<BitsPerByte>,
    options: &EvalOptions,
) -> Result<EvalReport> {
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
    let total: usize = tasks.iter().map(|t| options.work(t)).sum();
    let mut done = 0;
    let mut results = Vec::with_capacity(tasks.len());
    for task in tasks {
        let mut tick = || {
            done += 1;
            on_item(done, total);
        };
        let started = std::time::Instant::now();
        let result = score_task(scorer, task, options, &mut tick)
            .with_context(|| format!("evaluating task {:?} ({})", task.name, task.source.display()))?;
        tracing::info!(task = task.name, seconds = started.elapsed().as_secs_f64(), "task scored");
        results.push(result);
    }
    Ok(EvalReport::new(results, validation))
}

/// Loads task files, evaluates, and returns the report.
pub fn evaluate_files(scorer: &mut dyn Scorer, task_files: &[PathBuf], options: &EvalOptions) -> Result<EvalReport> {
    evaluate(scorer, &load_tasks(task_files)?, None, options)
}

/// Running sums while a task's items are scored.
#[derive(Default)]
struct Tally {
    outcomes: Vec<ItemOutcome>,
    samples: Vec<Sample>,
    chance_sum: f64,
    choice_items: usize,
    acc_hits: usize,
    acc_norm_hits: usize,
    yes_no: YesNoCounts,
    yes_no_items: usize,
}

/// One ranked multiple-choice item, as scored.
struct Ranked<'a> {
    id: &'a str,
    image: Option<&'a str>,
    prompt: &'a str,
    contexts: Option<&'a Vec<String>>,
    /// The answers as scored (surface forms), without the target delimiter.
    choices: &'a [String],
    gold: usize,
    lls: &'a [f64],
    metric: ChoiceMetric,
    chance: f64,
}

impl Tally {
    fn add_choice(&mut self, task: &str, control: Option<Control>, item: Ranked) -> Result<()> {
        let p = predict_choice(item.choices, item.lls).with_context(|| format!("item {:?}", item.id))?;
        self.choice_items += 1;
        self.acc_hits += usize::from(p.raw == item.gold);
        self.acc_norm_hits += usize::from(p.length_normalized == item.gold);
        let picked = match item.metric {
            ChoiceMetric::Acc => p.raw,
            ChoiceMetric::AccNorm => p.length_normalized,
        };
        let score = if picked == item.gold { 1.0 } else { 0.0 };
        self.push(
            Sample {
                task: task.to_string(),
                id: item.id.to_string(),
                control,
                image: item.image.map(str::to_string),
                prompt: item.prompt.to_string(),
                contexts: item.contexts.cloned(),
                gold: item.choices[item.gold].clone(),
                prediction: item.choices[picked].clone(),
                continuations: Some(item.choices.iter().map(|c| continuation(c)).collect()),
                loglikelihoods: Some(item.lls.to_vec()),
                acc: Some(p.raw == item.gold),
                acc_norm: Some(p.length_normalized == item.gold),
                score,
            },
            item.chance,
        );
        Ok(())
    }

    fn push(&mut self, sample: Sample, chance: f64) {
        self.chance_sum += chance;
        self.outcomes.push(ItemOutcome {
            id: sample.id.clone(),
            prediction: sample.prediction.clone(),
            score: sample.score,
            image: sample.image.clone(),
        });
        self.samples.push(sample);
    }

    fn accuracy(&self) -> f64 {
        mean(&self.outcomes.iter().map(|o| o.score).collect::<Vec<_>>())
    }

    /// The task's result; `controls` are the control passes' tallies, in [`Control::ALL`]'s order.
    fn finish(self, task: &Task, metric: &str, majority: f64, controls: Vec<Tally>) -> Result<TaskResult> {
        let n = self.outcomes.len();
        let accuracy = self.accuracy();
        let chance = if n == 0 { 0.0 } else { self.chance_sum / n as f64 };
        let per_choice = |hits: usize| (self.choice_items > 0).then(|| hits as f64 / self.choice_items as f64);
        let scores: Vec<f64> = self.outcomes.iter().map(|o| o.score).collect();
        let ci = if n == 0 { Interval { lo: 0.0, hi: 0.0 } } else { accuracy_ci(&scores)? };
        let mut samples = self.samples;
        let mut results = Vec::with_capacity(controls.len());
        for control in controls {
            let control_scores: Vec<f64> = control.outcomes.iter().map(|o| o.score).collect();
            let gain_ci = paired_diff_ci(&scores, &control_scores)?;
            let control_accuracy = control.accuracy();
            samples.extend(control.samples);
            results.push(BlindControl {
                accuracy: control_accuracy,
                vision_gain: accuracy - control_accuracy,
                sees: gain_ci.lo > 0.0,
                gain_ci,
                items: control.outcomes,
            });
        }
        let mut results = results.into_iter();
        let (blind, no_image) = (results.next(), results.next());
        Ok(TaskResult {
            task: task.name.clone(),
            modality: task.modality(),
            source: task.source.display().to_string(),
            metric: metric.to_string(),
            n_items: n,
            accuracy,
            ci,
            chance,
            majority,
            stable_score: accuracy - chance,
            acc: per_choice(self.acc_hits),
            acc_norm: per_choice(self.acc_norm_hits),
            yes_no: (self.yes_no_items > 0).then(|| self.yes_no.metrics()),
            blind,
            no_image,
            items: self.outcomes,
            samples,
        })
    }
}

fn mean(xs: &[f64]) -> f64 {
    if xs.is_empty() {
        0.0
    } else {
        xs.iter().sum::<f64>() / xs.len() as f64
    }
}

/// Evaluates one task.
pub fn evaluate_task(scorer: &mut dyn Scorer, task: &Task, options: &EvalOptions) -> Result<TaskResult> {
    score_task(scorer, task, options, &mut || {})
}

/// The metric a task's accuracy is reported in (see [`TaskResult`]); an empty task says "acc".
fn task_metric(task: &Task) -> &'static str {
    match &task.items {
        TaskItems::Text(items) => items.first().map_or("acc", |i| i.metric.name()),
        TaskItems::Vision(items) => match items.first().map(|i| &i.kind) {
            Some(VlQuestion::Open { .. }) => "vqa_accuracy",
            Some(VlQuestion::YesNo { .. }) => "yes_no_accuracy",
            _ => ChoiceMetric::Acc.name(),
        },
    }
}

/// Accuracy of always giving the task's most frequent gold answer (ties: the first in sort order),
/// credited as the task's metric credits it: the score a model reaches with no image and no
/// understanding, only the answer prior. Text items have per-item answers, so their "class" is the
/// gold position.
pub fn majority_baseline(task: &Task, limit: usize) -> f64 {
    let mut counts: std::collections::BTreeMap<String, usize> = std::collections::BTreeMap::new();
    let key = |kind: &VlQuestion| match kind {
        VlQuestion::Open { answers } => normalize_answer(&answers[0]),
        VlQuestion::YesNo { gold_yes } => (if *gold_yes { "yes" } else { "no" }).to_string(),
        VlQuestion::Choice { choices, gold } => choices[*gold].clone(),
    };
    let n = match &task.items {
        TaskItems::Vision(items) => {
            items.iter().take(limit).for_each(|i| *counts.entry(key(&i.kind)).or_default() += 1);
            items.len().min(limit)
        }
        TaskItems::Text(items) => {
            items.iter().take(limit).for_each(|i| *counts.entry(i.gold.to_string()).or_default() += 1);
            items.len().min(limit)
        }
    };
    let Some((answer, count)) = counts.iter().max_by(|a, b| a.1.cmp(b.1).then(b.0.cmp(a.0))) else { return 0.0 };
    match &task.items {
        TaskItems::Vision(items) => {
            let credit = |i: &VlItem| match &i.kind {
                VlQuestion::Open { answers } => vqa_accuracy(answer, answers),
                kind => f64::from(u8::from(key(kind) == *answer)),
            };
            items.iter().take(limit).map(credit).sum::<f64>() / n as f64
        }
        TaskItems::Text(_) => *count as f64 / n as f64,
    }
}

/// Items whose requests go to the scorer in one [`Scorer::answer_all`] call (models batch their
/// rows across items; progress advances a chunk at a time).
const ITEMS_PER_CALL: usize = 64;

fn score_task(
    scorer: &mut dyn Scorer,
    task: &Task,
    options: &EvalOptions,
    tick: &mut dyn FnMut(),
) -> Result<TaskResult> {
    let limit = options.limit.of(task.modality());
    let majority = majority_baseline(task, limit);
    let mut tally = Tally::default();
    let mut controls = Vec::new();
    match &task.items {
        TaskItems::Vision(items) => {
            let items = &items[..items.len().min(limit)];
            score_vl_items(scorer, &task.name, items, None, options, &mut tally, tick)?;
            if options.blind_control {
                for control in Control::ALL {
                    let mut control_tally = Tally::default();
                    score_vl_items(scorer, &task.name, items, Some(control), options, &mut control_tally, tick)
                        .with_context(|| format!("in the {control:?} control"))?;
                    controls.push(control_tally);
                }
            }
        }
        TaskItems::Text(items) => {
            for chunk in items[..items.len().min(limit)].chunks(ITEMS_PER_CALL) {
                score_text_items(scorer, &task.name, chunk, &mut tally)?;
                chunk.iter().for_each(|_| tick());
            }
        }
    }
    tally.finish(task, task_metric(task), majority, controls)
}

/// Scores text items, all their requests in one call: one per item, or one per choice where the
/// choices have their own contexts (Winogrande).
fn score_text_items(scorer: &mut dyn Scorer, task: &str, items: &[TextChoiceItem], tally: &mut Tally) -> Result<()> {
    let continuations: Vec<Vec<String>> =
        items.iter().map(|item| item.choices.iter().map(|c| continuation(c)).collect()).collect();
    let mut requests = Vec::new();
    for (item, conts) in items.iter().zip(&continuations) {
        match &item.contexts {
            None => requests.push(Request::Rank { image: None, context: &item.context, continuations: conts }),
            Some(contexts) => requests.extend(contexts.iter().zip(conts).map(|(context, cont)| Request::Rank {
                image: None,
                context,
                continuations: std::slice::from_ref(cont),
            })),
        }
    }
    let mut answers = scorer.answer_all(&requests)?.into_iter();
    for item in items {
        let n_requests = item.contexts.as_ref().map_or(1, |_| item.choices.len());
        let mut sums = Vec::with_capacity(item.choices.len());
        for answer in answers.by_ref().take(n_requests) {
            match answer {
                Answer::Ranked(lls) => sums.extend(lls.iter().map(|l| l.sum_logprob)),
                Answer::Generated(_) => bail!("item {:?}: the scorer generated text for a ranking request", item.id),
            }
        }
        ensure!(
            sums.len() == item.choices.len(),
            "item {:?}: the scorer answered {} of {} choices",
            item.id,
            sums.len(),
            item.choices.len()
        );
        let ranked = Ranked {
            id: &item.id,
            image: None,
            prompt: &item.context,
            contexts: item.contexts.as_ref(),
            choices: &item.choices,
            gold: item.gold,
            lls: &sums,
            metric: item.metric,
            chance: item.chance,
        };
        tally.add_choice(task, None, ranked)?;
    }
    Ok(())
}

/// What a vision-language item asks the model: ranked answers in the instruction data's form
/// ([`answer_form`]: " Yes.", " Green."), or None where the answer is generated.
fn ranked_forms(item: &VlItem, options: &EvalOptions) -> Option<Vec<String>> {
    match &item.kind {
        VlQuestion::Open { .. } => None,
        VlQuestion::YesNo { .. } => {
            (options.yes_no == YesNoMode::Rank).then(|| vec![answer_form("yes"), answer_form("no")])
        }
        VlQuestion::Choice { choices, .. } => Some(choices.iter().map(|c| answer_form(c)).collect()),
    }
}

/// Scores vision-language items with their own images, or in the `control` pass,
/// [`ITEMS_PER_CALL`] at a time.
fn score_vl_items(
    scorer: &mut dyn Scorer,
    task: &str,
    items: &[VlItem],
    control: Option<Control>,
    options: &EvalOptions,
    tally: &mut Tally,
    tick: &mut dyn FnMut(),
) -> Result<()> {
    let blank = ImageRef::blank();
    for chunk in items.chunks(ITEMS_PER_CALL) {
        let prompts: Vec<String> = chunk.iter().map(|item| options.vl_template.render(&item.question)).collect();
        let forms: Vec<Option<Vec<String>>> = chunk.iter().map(|item| ranked_forms(item, options)).collect();
        let continuations: Vec<Option<Vec<String>>> =
            forms.iter().map(|f| f.as_ref().map(|f| f.iter().map(|c| continuation(c)).collect())).collect();
        let requests: Vec<Request> = chunk
            .iter()
            .zip(&prompts)
            .zip(&continuations)
            .map(|((item, prompt), conts)| {
                let image = match control {
                    None => Some(&item.image),
                    Some(Control::Blank) => Some(&blank),
                    Some(Control::NoImage) => None,
                };
                match conts {
                    Some(continuations) => Request::Rank { image, context: prompt, continuations },
                    None => Request::Generate { image, prompt, max_tokens: options.max_new_tokens },
                }
            })
            .collect();
        let answers = scorer.answer_all(&requests).with_context(|| {
            format!("items {:?} to {:?}", chunk[0].id, chunk.last().expect("chunks are not empty").id)
        })?;
        ensure!(answers.len() == chunk.len(), "the scorer answered {} of {} items", answers.len(), chunk.len());
        for (((item, prompt), forms), answer) in chunk.iter().zip(&prompts).zip(&forms).zip(answers) {
            record_vl_item(task, item, control, prompt, forms.as_deref(), answer, tally)
                .with_context(|| format!("item {:?}", item.id))?;
            tick();
        }
    }
    Ok(())
}

/// Credits one vision-language item's answer (`forms`: the ranked answers, when it was ranked).
fn record_vl_item(
    task: &str,
    item: &VlItem,
    control: Option<Control>,
    prompt: &str,
    forms: Option<&[String]>,
    answer: Answer,
    tally: &mut Tally,
) -> Result<()> {
    let sample = |gold: String, prediction: String, score: f64, ranked: Option<(Vec<String>, Vec<f64>)>| Sample {
        task: task.to_string(),
        id: item.id.clone(),
        control,
        image: Some(item.image.key.clone()),
        prompt: prompt.to_string(),
        contexts: None,
        gold,
        prediction,
        continuations: ranked.as_ref().map(|r| r.0.clone()),
        loglikelihoods: ranked.map(|r| r.1),
        acc: None,
        acc_norm: None,
        score,
    };
    let sums = |lls: &[LogLikelihood]| lls.iter().map(|l| l.sum_logprob).collect::<Vec<f64>>();
    match (&item.kind, answer, forms) {
        (VlQuestion::Open { answers }, Answer::Generated(generated), None) => {
            let answer = first_line(&generated);
            let score = vqa_accuracy(&answer, answers);
            tally.push(sample(answers.join(" | "), answer, score, None), item.chance);
        }
        (VlQuestion::YesNo { gold_yes }, answer, forms) => {
            let (said_yes, ranked) = match (answer, forms) {
                (Answer::Ranked(lls), Some(forms)) if lls.len() == 2 => {
                    let lls = sums(&lls);
                    (lls[0] >= lls[1], Some((forms.iter().map(|f| continuation(f)).collect(), lls)))
                }
                (Answer::Generated(text), None) => (parse_yes_no(&first_line(&text)), None),
                _ => bail!("the scorer's answer does not match the yes/no question"),
            };
            if control.is_none() {
                tally.yes_no.add(said_yes, *gold_yes);
                tally.yes_no_items += 1;
            }
            let score = if said_yes == *gold_yes { 1.0 } else { 0.0 };
            let word = |yes: bool| (if yes { "yes" } else { "no" }).to_string();
            tally.push(sample(word(*gold_yes), word(said_yes), score, ranked), item.chance);
        }
        (VlQuestion::Choice { gold, .. }, Answer::Ranked(lls), Some(forms)) => {
            let lls = sums(&lls);
            let ranked = Ranked {
                id: &item.id,
                image: Some(&item.image.key),
                prompt,
                contexts: None,
                choices: forms,
                gold: *gold,
                lls: &lls,
                metric: ChoiceMetric::Acc,
                chance: item.chance,
            };
            tally.add_choice(task, control, ranked)?;
        }
        _ => bail!("the scorer's answer is not of the kind the question asks for"),
    }
    Ok(())
}

/// A generated answer ends at the first newline (the model moving on to a new turn).
fn first_line(generated: &str) -> String {
    generated.trim_start().lines().next().unwrap_or_default().trim().to_string()
}
