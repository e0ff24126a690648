//! Benchmarks in the files they ship as (VQAv2, GQA, TextVQA, POPE) are read into tasks and graded by
//! the existing scorers, with numbers worked out by hand.

use std::collections::HashMap;
use std::path::Path;

use serde_json::json;
use vlmix_data::byod::eval_sets::{EvalFormat, EvalSource};
use vlmix_eval::task::vl_task;
use vlmix_eval::{evaluate, EvalOptions, ImageRef, LogLikelihood, Scorer};

/// Answers by image file name: a generation for open questions, and whether " yes" outranks " no".
struct ByImage(HashMap<&'static str, &'static str>);

fn name(image: Option<&ImageRef>) -> &str {
    image.and_then(|i| i.path.file_name()).and_then(|n| n.to_str()).unwrap_or_default()
}

impl Scorer for ByImage {
    fn loglikelihood(
        &mut self,
        image: Option<&ImageRef>,
        _context: &str,
        continuation: &str,
    ) -> anyhow::Result<LogLikelihood> {
        let says = self.0.get(name(image)).copied().unwrap_or_default();
        let sum_logprob = if continuation.trim() == says { -1.0 } else { -5.0 };
        Ok(LogLikelihood { sum_logprob, n_tokens: 1, is_greedy: false })
    }

    fn generate(&mut self, image: Option<&ImageRef>, _prompt: &str, _max_tokens: usize) -> anyhow::Result<String> {
        Ok(self.0.get(name(image)).copied().unwrap_or_default().to_string())
    }
}

fn write(dir: &Path, name: &str, value: &serde_json::Value) {
    std::fs::write(dir.join(name), value.to_string()).unwrap();
}

#[test]
fn real_benchmark_layouts_are_scored_by_the_existing_scorers() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let images = root.join("images");
    std::fs::create_dir(&images).unwrap();
    for file in
        ["COCO_val2014_000000000042.jpg", "COCO_val2014_000000000043.jpg", "n161313.jpg", "003a8ae2ef43b901.jpg"]
    {
        std::fs::write(images.join(file), b"jpeg bytes").unwrap();
    }
    // VQAv2: ten annotators; "black" given by 3 of them scores 0.9, "white" by none scores 0.
    let annotators = |answers: &[(&str, usize)]| -> Vec<serde_json::Value> {
        answers
            .iter()
            .flat_map(|(a, n)| std::iter::repeat_n(*a, *n))
            .enumerate()
            .map(|(i, a)| json!({"answer": a, "answer_confidence": "yes", "answer_id": i + 1}))
            .collect()
    };
    write(
        root,
        "v2_OpenEnded_mscoco_val2014_questions.json",
        &json!({"data_subtype": "val2014", "task_type": "Open-Ended", "questions": [
            {"image_id": 42, "question": "What color is the cat?", "question_id": 420},
            {"image_id": 43, "question": "What color is the dog?", "question_id": 430}
        ]}),
    );
    write(
        root,
        "v2_mscoco_val2014_annotations.json",
        &json!({"annotations": [
            {"question_id": 420, "image_id": 42, "answers": annotators(&[("black", 3), ("dark", 7)]), "multiple_choice_answer": "dark"},
            {"question_id": 430, "image_id": 43, "answers": annotators(&[("brown", 10)]), "multiple_choice_answer": "brown"}
        ]}),
    );
    write(
        root,
        "testdev_balanced_questions.json",
        &json!({"1": {"imageId": "n161313", "question": "Is it overcast?", "answer": "no"}}),
    );
    let ten = ["dakota", "dakota", "dakota", "dakota digital", "nous", "dakota", "clos", "dakota", "dakota", "dakota"];
    write(
        root,
        "TextVQA_0.5.1_val.json",
        &json!({"data": [{"question_id": 34602, "image_id": "003a8ae2ef43b901", "question": "what is the brand?", "answers": ten}]}),
    );
    std::fs::write(
        root.join("coco_pope_random.json"),
        [
            json!({"question_id": 1, "image": "COCO_val2014_000000000042.jpg", "text": "Is there a cat in the image?", "label": "yes"}),
            json!({"question_id": 2, "image": "COCO_val2014_000000000043.jpg", "text": "Is there a cat in the image?", "label": "no"}),
        ]
        .map(|l| l.to_string())
        .join("\n"),
    )
    .unwrap();

    let source = |format, questions: &str, annotations: Option<&str>| EvalSource {
        name: format!("{format:?}").to_lowercase(),
        format,
        questions: root.join(questions),
        annotations: annotations.map(|a| root.join(a)),
        images: images.clone(),
    };
    let sources = [
        source(
            EvalFormat::Vqav2,
            "v2_OpenEnded_mscoco_val2014_questions.json",
            Some("v2_mscoco_val2014_annotations.json"),
        ),
        source(EvalFormat::Gqa, "testdev_balanced_questions.json", None),
        source(EvalFormat::Textvqa, "TextVQA_0.5.1_val.json", None),
        source(EvalFormat::Pope, "coco_pope_random.json", None),
    ];
    let tasks: Vec<_> = sources
        .iter()
        .map(|s| {
            let read = s.read().unwrap();
            assert!(read.problems.is_empty(), "{:?}", read.problems);
            vl_task(&s.name, &s.questions, &s.images, &read.items).unwrap()
        })
        .collect();
    // Image 42: "black" (and yes); image 43: "white" (and yes, wrongly); GQA "no"; TextVQA "dakota".
    let mut scorer = ByImage(HashMap::from([
        ("COCO_val2014_000000000042.jpg", "yes"),
        ("COCO_val2014_000000000043.jpg", "yes"),
        ("n161313.jpg", "no"),
        ("003a8ae2ef43b901.jpg", "dakota"),
    ]));
    let report = evaluate(&mut scorer, &tasks, None, &EvalOptions::default()).unwrap();
    let accuracy: HashMap<&str, f64> = report.tasks.iter().map(|t| (t.task.as_str(), t.accuracy)).collect();
    assert_eq!(accuracy["gqa"], 1.0);
    assert_eq!(accuracy["textvqa"], 1.0, "7 of 10 annotators said dakota");
    assert_eq!(accuracy["pope"], 0.5, "yes on both: one right");
    assert_eq!(accuracy["vqav2"], 0.0, "the scorer said yes to open questions");
    let mut colours = ByImage(HashMap::from([
        ("COCO_val2014_000000000042.jpg", "black"),
        ("COCO_val2014_000000000043.jpg", "white"),
    ]));
    let vqa = evaluate(&mut colours, &tasks[..1], None, &EvalOptions::default()).unwrap();
    assert!((vqa.tasks[0].accuracy - 0.45).abs() < 1e-9, "(0.9 + 0) / 2, got {}", vqa.tasks[0].accuracy);
}
