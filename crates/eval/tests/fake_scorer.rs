//! End-to-end scoring through a deterministic fake model whose numbers are worked out by hand.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use vlmix_eval::{
    evaluate, evaluate_files, evaluate_with_progress, load_task_file, load_tasks, load_text_documents, read_samples,
    Control, EvalOptions, EvalReport, ImageRef, ItemLimit, LogLikelihood, Modality, Scorer, YesNoMode,
};

/// Log-likelihoods and generations looked up from tables; -10 for anything unlisted.
#[derive(Default)]
struct FakeScorer {
    /// (image key or "", continuation) -> sum log-prob.
    lls: HashMap<(String, String), f64>,
    /// image key -> generated text.
    generations: HashMap<String, String>,
    /// Every context seen, to check prompts.
    contexts: Vec<String>,
}

impl FakeScorer {
    fn ll(mut self, image: &str, continuation: &str, value: f64) -> Self {
        self.lls.insert((image.to_string(), continuation.to_string()), value);
        self
    }

    fn says(mut self, image: &str, text: &str) -> Self {
        self.generations.insert(image.to_string(), text.to_string());
        self
    }
}

fn key(image: Option<&ImageRef>) -> String {
    image.map(|i| i.key.clone()).unwrap_or_default()
}

impl Scorer for FakeScorer {
    fn loglikelihood(
        &mut self,
        image: Option<&ImageRef>,
        context: &str,
        continuation: &str,
    ) -> anyhow::Result<LogLikelihood> {
        self.contexts.push(context.to_string());
        let sum_logprob = *self.lls.get(&(key(image), continuation.to_string())).unwrap_or(&-10.0);
        Ok(LogLikelihood { sum_logprob, n_tokens: continuation.split_whitespace().count(), is_greedy: false })
    }

    fn generate(&mut self, image: Option<&ImageRef>, prompt: &str, _max_tokens: usize) -> anyhow::Result<String> {
        self.contexts.push(prompt.to_string());
        Ok(self.generations.get(&key(image)).cloned().unwrap_or_default())
    }
}

fn write(dir: &Path, name: &str, lines: &[serde_json::Value]) -> PathBuf {
    let path = dir.join(name);
    let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
    std::fs::write(&path, text).unwrap();
    path
}

fn touch_images(dir: &Path, names: &[&str]) {
    for n in names {
        std::fs::write(dir.join(n), b"not decoded by the fake scorer").unwrap();
    }
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-12
}

#[test]
fn vision_tasks_score_open_yes_no_and_choice_items() {
    let dir = tempfile::tempdir().unwrap();
    touch_images(dir.path(), &["a.png", "b.png", "c.png", "d.png", "e.png"]);
    let ten = |hits: usize| -> Vec<String> {
        (0..10).map(|i| if i < hits { "two".into() } else { format!("x{i}") }).collect()
    };
    let file = write(
        dir.path(),
        "vl.jsonl",
        &[
            serde_json::json!({"id": "q1", "task": "count", "image": "a.png", "question": "How many?", "answers": ten(3), "type": "open"}),
            serde_json::json!({"id": "q2", "task": "count", "image": "b.png", "question": "How many?", "answers": ["Red"], "type": "open"}),
            serde_json::json!({"id": 1, "task": "pope", "image": "c.png", "question": "Is there a cat?", "answers": ["yes"], "type": "yes_no"}),
            serde_json::json!({"id": 2, "task": "pope", "image": "d.png", "question": "Is there a dog?", "answers": ["no"], "type": "yes_no"}),
            serde_json::json!({"id": "s1", "task": "shape", "image": "e.png", "question": "Which shape?", "answers": ["circle"],
                               "type": "choice", "choices": ["circle", "hexagon", "star"], "chance": 0.25}),
        ],
    );
    let tasks = load_task_file(&file).unwrap();
    assert_eq!(tasks.iter().map(|t| t.name.as_str()).collect::<Vec<_>>(), ["count", "pope", "shape"]);

    let mut scorer = FakeScorer::default()
        .says("a.png", " 2 \nQuestion: next")
        .says("b.png", "red.")
        // Answers are ranked in the instruction data's form (" Yes.", " Circle.").
        // c: yes wins (correct); d: yes wins (wrong: gold no).
        .ll("c.png", " Yes.", -1.0)
        .ll("c.png", " No.", -2.0)
        .ll("d.png", " Yes.", -1.0)
        .ll("d.png", " No.", -1.5)
        // circle -6/7, hexagon -6.3/8, star -3/5: acc and acc_norm both pick star.
        .ll("e.png", " Circle.", -6.0)
        .ll("e.png", " Hexagon.", -6.3)
        .ll("e.png", " Star.", -3.0);
    let report = evaluate(&mut scorer, &tasks, None, &EvalOptions::default()).unwrap();

    let count = &report.tasks[0];
    // q1: "2" matches 3 of 10 annotators -> 0.9; q2: "red." == "Red" -> 1.
    assert!(close(count.accuracy, (0.9 + 1.0) / 2.0), "{}", count.accuracy);
    assert_eq!(count.items[0].prediction, "2");
    assert!(close(count.chance, 0.0));
    assert!(close(count.stable_score, 0.95));

    let pope = &report.tasks[1];
    let m = pope.yes_no.unwrap();
    assert!(close(pope.accuracy, 0.5));
    assert!(close(m.precision, 0.5) && close(m.recall, 1.0) && close(m.yes_ratio, 1.0));
    assert!(close(m.f1, 2.0 * 0.5 / 1.5));
    assert!(close(pope.stable_score, 0.0), "chance 0.5 by default");

    let shape = &report.tasks[2];
    assert_eq!((shape.acc, shape.acc_norm), (Some(0.0), Some(0.0)));
    assert!(close(shape.stable_score, -0.25), "chance taken from the file");

    assert_eq!(shape.metric, "acc", "vision choices: raw acc, no length prior");
    assert!(close(report.vision_stable_score.unwrap(), (0.95 + 0.0 - 0.25) / 3.0));
    assert_eq!(report.text_stable_score, None);

    // Blind control: the blank image's key scores -10 everywhere (ties: first choice, and "yes").
    let blind = |t: &vlmix_eval::TaskResult| t.blind.clone().unwrap();
    assert!(close(blind(count).accuracy, 0.0) && close(blind(count).vision_gain, 0.95));
    assert!(close(blind(pope).accuracy, 0.5) && close(blind(pope).vision_gain, 0.0) && !blind(pope).sees);
    assert!(close(blind(shape).accuracy, 1.0) && close(blind(shape).vision_gain, -1.0));
    assert_eq!(pope.yes_no.unwrap().yes_ratio, 1.0, "POPE metrics count the real-image pass only");
    // Majority class: count ties "2" (VQA-normalised "two") and "red" -> "2" (0.9 + 0); pope ties ->
    // "no"; shape: all "circle".
    assert_eq!((count.majority, pope.majority, shape.majority), (0.45, 0.5, 1.0));
    assert!(scorer.contexts.contains(&"<image>\nQuestion: Is there a cat?\nAnswer:".to_string()));
    // Every vision item, blind pass too, names its own image: the bootstrap draws items by image.
    assert_eq!(count.item_images(), ["a.png", "b.png"]);
    assert_eq!(shape.item_images(), ["e.png"]);
    assert!(blind(pope).items.iter().map(|o| o.image.as_deref()).eq([Some("c.png"), Some("d.png")]));
}

/// The blank image is itself an input: a model may have learned that mid-grey means "gray". The
/// control without an image carries no answer, so the gain over the best control is the image's own.
#[test]
fn a_blank_image_that_answers_is_caught_by_the_control_without_an_image() {
    let dir = tempfile::tempdir().unwrap();
    touch_images(dir.path(), &["g.png", "r.png"]);
    let item = |id: &str, image: &str, gold: &str| {
        serde_json::json!({"id": id, "task": "colour", "image": image, "question": "Which colour?", "answers": [gold],
                           "type": "choice", "choices": ["blue", "gray", "red"]})
    };
    let file = write(dir.path(), "colour.jsonl", &[item("1", "g.png", "gray"), item("2", "r.png", "red")]);
    let tasks = load_task_file(&file).unwrap();
    let blank = ImageRef::blank().key;
    let mut scorer =
        FakeScorer::default().ll("g.png", " Gray.", -1.0).ll("r.png", " Red.", -1.0).ll(&blank, " Gray.", -1.0); // the grey picture answers "gray"; no image: -10 for all, the first choice
    let report = evaluate(&mut scorer, &tasks, None, &EvalOptions::default()).unwrap();
    let t = &report.tasks[0];
    let (blind, no_image) = (t.blind.as_ref().unwrap(), t.no_image.as_ref().unwrap());
    assert_eq!((t.accuracy, blind.accuracy, no_image.accuracy), (1.0, 0.5, 0.0));
    assert_eq!((blind.vision_gain, no_image.vision_gain), (0.5, 1.0));
    assert!(scorer.contexts.contains(&"<image>\nQuestion: Which colour?\nAnswer:".to_string()));
    let best_control = [blind.accuracy, no_image.accuracy, t.majority].into_iter().fold(0.0, f64::max);
    assert_eq!(t.accuracy - best_control, 0.5, "the gain over the best control");
}

#[test]
fn yes_no_by_generation_parses_like_pope() {
    let dir = tempfile::tempdir().unwrap();
    touch_images(dir.path(), &["c.png", "d.png"]);
    let file = write(
        dir.path(),
        "pope.jsonl",
        &[
            serde_json::json!({"id": 1, "task": "pope", "image": "c.png", "question": "Cat?", "answers": ["Yes"], "type": "yes_no"}),
            serde_json::json!({"id": 2, "task": "pope", "image": "d.png", "question": "Dog?", "answers": ["No"], "type": "yes_no"}),
        ],
    );
    let tasks = load_task_file(&file).unwrap();
    let mut scorer = FakeScorer::default().says("c.png", "Yes, a cat.").says("d.png", "There is not a dog.");
    let options = EvalOptions { yes_no: YesNoMode::Generate, ..EvalOptions::default() };
    let report = evaluate(&mut scorer, &tasks, None, &options).unwrap();
    assert!(close(report.tasks[0].accuracy, 1.0));
    assert!(close(report.tasks[0].yes_no.unwrap().yes_ratio, 0.5));
}

#[test]
fn text_multiple_choice_reports_acc_and_acc_norm_like_lm_eval() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(
        dir.path(),
        "arc.jsonl",
        &[
            // acc: " cat" (-6) > " elephant" (-8) -> 0 (gold 1: wrong); acc_norm: -6/3=-2 < -8/8=-1 -> 1 (right).
            serde_json::json!({"id": "a", "task": "arc_easy", "context": "Question: Big?\nAnswer:", "choices": ["cat", "elephant"], "gold": 1}),
            // Both pick "b" (gold): acc 1, acc_norm 1.
            serde_json::json!({"id": "b", "task": "arc_easy", "context": "Question: Letter?\nAnswer:", "choices": ["a", "b", "c", "d"], "gold": 1}),
        ],
    );
    let tasks = load_task_file(&file).unwrap();
    assert_eq!(tasks[0].modality(), Modality::Text);
    let mut scorer = FakeScorer::default().ll("", " cat", -6.0).ll("", " elephant", -8.0).ll("", " b", -1.0);
    let report = evaluate(&mut scorer, &tasks, None, &EvalOptions::default()).unwrap();
    let arc = &report.tasks[0];
    assert_eq!(arc.metric, "acc_norm", "the default without a source metric");
    assert_eq!(arc.acc, Some(0.5));
    assert_eq!(arc.acc_norm, Some(1.0));
    assert!(close(arc.accuracy, 1.0), "headline is acc_norm");
    // chance 1/2 and 1/4 -> mean 0.375.
    assert!(close(arc.chance, 0.375));
    assert!(close(report.text_stable_score.unwrap(), 0.625));
    assert!(scorer.contexts.iter().all(|c| c.starts_with("Question:")));

    let from_files = evaluate_files(&mut scorer, std::slice::from_ref(&file), &EvalOptions::default()).unwrap();
    assert_eq!(from_files, report, "the one-call stage gives the same report");

    let out = dir.path().join("eval.json");
    report.write_json(&out).unwrap();
    let mut without_samples = report.clone();
    without_samples.tasks.iter_mut().for_each(|t| t.samples.clear());
    assert_eq!(EvalReport::read_json(&out).unwrap(), without_samples, "samples live in samples.jsonl only");

    // The source suite's metric (OLMES: acc for arc_easy) makes acc the headline.
    let raw = std::fs::read_to_string(&file).unwrap().replace("\"gold\":1", "\"gold\":1,\"metric\":\"acc\"");
    std::fs::write(&file, raw).unwrap();
    let report = evaluate(&mut scorer, &load_task_file(&file).unwrap(), None, &EvalOptions::default()).unwrap();
    assert_eq!((report.tasks[0].metric.as_str(), report.tasks[0].accuracy), ("acc", 0.5));
}

#[test]
fn samples_jsonl_recomputes_every_accuracy() {
    let dir = tempfile::tempdir().unwrap();
    touch_images(dir.path(), &["c.png", "d.png", "e.png"]);
    let file = write(
        dir.path(),
        "mixed.jsonl",
        &[
            serde_json::json!({"id": 1, "task": "pope", "image": "c.png", "question": "Is there a cat?", "answers": ["yes"], "type": "yes_no"}),
            serde_json::json!({"id": 2, "task": "pope", "image": "d.png", "question": "Is there a dog?", "answers": ["no"], "type": "yes_no"}),
            serde_json::json!({"id": "s1", "task": "shape", "image": "e.png", "question": "Which shape?", "answers": ["star"],
                               "type": "choice", "choices": ["circle", "star"]}),
            serde_json::json!({"id": "t1", "task": "arc_easy", "context": "Q", "choices": ["cat", "elephant"], "gold": 1, "metric": "acc"}),
            serde_json::json!({"id": "t2", "task": "arc_easy", "context": "Q", "choices": ["a", "b"], "gold": 0, "metric": "acc"}),
        ],
    );
    let tasks = load_task_file(&file).unwrap();
    let mut scorer = FakeScorer::default()
        .ll("d.png", " No.", -0.5)
        .ll("e.png", " Star.", -1.0)
        .ll("", " elephant", -3.0)
        .ll("", " a", -1.0);
    let report = evaluate(&mut scorer, &tasks, None, &EvalOptions::default()).unwrap();
    let path = dir.path().join("samples.jsonl");
    report.write_samples(&path).unwrap();
    let samples = read_samples(&path).unwrap();
    let mean = |task: &str, control: Option<Control>| {
        let scores: Vec<f64> =
            samples.iter().filter(|s| s.task == task && s.control == control).map(|s| s.score).collect();
        scores.iter().sum::<f64>() / scores.len() as f64
    };
    for t in &report.tasks {
        assert_eq!(mean(&t.task, None), t.accuracy, "{}", t.task);
        if let (Some(blind), Some(no_image)) = (&t.blind, &t.no_image) {
            assert_eq!(mean(&t.task, Some(Control::Blank)), blind.accuracy, "{} blind", t.task);
            assert_eq!(mean(&t.task, Some(Control::NoImage)), no_image.accuracy, "{} without an image", t.task);
        }
    }
    assert_eq!(samples.len(), 3 * 3 + 2, "vision items three times (image, blank, none), text once");
    let s1 = samples.iter().find(|s| s.id == "s1" && s.control.is_none()).unwrap();
    assert_eq!((s1.gold.as_str(), s1.prediction.as_str(), s1.acc), ("Star.", "Star.", Some(true)));
    assert_eq!(s1.continuations.as_deref(), Some(&[" Circle.".to_string(), " Star.".to_string()][..]));
    assert_eq!(s1.loglikelihoods.as_deref(), Some(&[-10.0, -1.0][..]));
    assert_eq!(s1.prompt, "<image>\nQuestion: Which shape?\nAnswer:");
    // The text items' acc column recomputes the acc headline.
    let acc: Vec<bool> = samples.iter().filter(|s| s.task == "arc_easy").map(|s| s.acc.unwrap()).collect();
    assert_eq!(acc, [true, true]);
}

#[test]
fn per_choice_contexts_score_each_choice_after_its_own_context() {
    let dir = tempfile::tempdir().unwrap();
    let item = |contexts: serde_json::Value| serde_json::json!({"id": "w", "task": "winogrande", "context": "", "contexts": contexts, "choices": ["got the cases.", "got the cases."], "gold": 1});
    let file = write(
        dir.path(),
        "wino.jsonl",
        &[item(serde_json::json!(["Sarah was better so Sarah", "Sarah was better so Maria"]))],
    );
    let tasks = load_task_file(&file).unwrap();
    let mut scorer = FakeScorer::default();
    evaluate(&mut scorer, &tasks, None, &EvalOptions::default()).unwrap();
    assert_eq!(scorer.contexts, ["Sarah was better so Sarah", "Sarah was better so Maria"]);

    let bad = write(dir.path(), "bad.jsonl", &[item(serde_json::json!(["only one"]))]);
    let err = format!("{:#}", load_task_file(&bad).unwrap_err());
    assert!(err.contains("bad.jsonl:1") && err.contains("contexts"), "{err}");
}

#[test]
fn limit_takes_the_first_items_of_each_task() {
    let dir = tempfile::tempdir().unwrap();
    let line = |id: &str, gold: usize| serde_json::json!({"id": id, "task": "t", "context": "c", "choices": ["x", "y"], "gold": gold});
    let file = write(dir.path(), "t.jsonl", &[line("1", 0), line("2", 1), line("3", 1)]);
    let tasks = load_task_file(&file).unwrap();
    // Unlisted continuations all score -10: ties pick choice 0.
    let options = EvalOptions { limit: ItemLimit { vision: Some(1), text: Some(2) }, ..EvalOptions::default() };
    let mut seen = Vec::new();
    let report = evaluate_with_progress(&mut FakeScorer::default(), &tasks, None, &options, &mut |done, total| {
        seen.push((done, total))
    })
    .unwrap();
    assert_eq!(seen, [(1, 2), (2, 2)]);
    assert_eq!(report.tasks[0].n_items, 2);
    assert!(close(report.tasks[0].accuracy, 0.5));
}

fn load_error(lines: &[&str]) -> String {
    let dir = tempfile::tempdir().unwrap();
    touch_images(dir.path(), &["a.png"]);
    let path = dir.path().join("bad.jsonl");
    std::fs::write(&path, lines.join("\n")).unwrap();
    format!("{:#}", load_task_file(&path).unwrap_err())
}

#[test]
fn bad_task_files_name_file_line_and_field() {
    let ok = r#"{"id":"1","task":"t","context":"c","choices":["x","y"],"gold":0}"#;
    let cases = [
        (vec![ok, r#"{"id":"2","task":"t","context":"c","choices":["x","y"],"gold":2}"#], "bad.jsonl:2", "`gold`"),
        (vec![ok, "{not json"], "bad.jsonl:2", "malformed JSON"),
        (vec![r#"{"id":"1","task":"t","context":"c","choices":["x"],"gold":0}"#], "bad.jsonl:1", "`choices`"),
        (
            vec![r#"{"id":"1","task":"t","image":"zz.png","question":"q","answers":["a"],"type":"open"}"#],
            ":1",
            "`image`",
        ),
        (
            vec![r#"{"id":"1","task":"t","image":"a.png","question":"q","answers":["a"],"type":"essay"}"#],
            ":1",
            "`type`",
        ),
        (
            vec![r#"{"id":"1","task":"t","image":"a.png","question":"q","answers":["maybe"],"type":"yes_no"}"#],
            ":1",
            "`answers`",
        ),
        (
            vec![
                r#"{"id":"1","task":"t","image":"a.png","question":"q","answers":["z"],"type":"choice","choices":["x","y"]}"#,
            ],
            ":1",
            "`answers`",
        ),
        (vec![r#"{"id":"1","task":"t","image":"a.png","question":"q","answers":[],"type":"open"}"#], ":1", "`answers`"),
        (vec![r#"{"id":"1","task":"t","context":"c","choices":["x","y"],"gold":0,"chance":1.5}"#], ":1", "`chance`"),
        (vec![ok, ok], "bad.jsonl:2", "`id`"),
        (vec![r#"{"id":"1","context":"c","choices":["x","y"],"gold":0}"#], ":1", "`task`"),
        (
            vec![ok, r#"{"id":"2","task":"t","image":"a.png","question":"q","answers":["a"],"type":"open"}"#],
            ":2",
            "mixes",
        ),
        (vec![""], "bad.jsonl", "no items"),
    ];
    for (lines, place, field) in cases {
        let err = load_error(&lines);
        assert!(err.contains(place) && err.contains(field), "expected {place} and {field} in: {err}");
    }
}

#[test]
fn same_task_in_two_files_is_refused_and_documents_need_text() {
    let dir = tempfile::tempdir().unwrap();
    let line = serde_json::json!({"id": "1", "task": "t", "context": "c", "choices": ["x", "y"], "gold": 0});
    let a = write(dir.path(), "a.jsonl", std::slice::from_ref(&line));
    let b = write(dir.path(), "b.jsonl", &[line]);
    let err = format!("{:#}", load_tasks(&[a, b]).unwrap_err());
    assert!(err.contains("a.jsonl") && err.contains("b.jsonl"), "{err}");

    let docs = write(dir.path(), "val.jsonl", &[serde_json::json!({"text": "ok"}), serde_json::json!({"body": "no"})]);
    let err = format!("{:#}", load_text_documents(&docs).unwrap_err());
    assert!(err.contains("val.jsonl:2") && err.contains("`text`"), "{err}");
}
