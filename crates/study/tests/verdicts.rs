//! The report's verdicts on hand-made result sets whose right answer is worked out here: seed noise
//! in every contrast, the blind control in the primary contrast, non-inferiority for text between
//! VLMs, the predicted optimum of finding 2, Holm, and the page saying how it was done.

use std::collections::BTreeMap;
use vlmix_eval::stats::{Contrast, Interval};
use vlmix_eval::Modality;
use vlmix_study::config::{VerdictConfig, VisionMeasure};
use vlmix_study::report::findings::{findings, Finding, Verdict};
use vlmix_study::report::{write_report, Protocol, ReportInput, ResultRow, ResultsTable, TaskScore};

const ITEMS: usize = 400;
const SEQUENCES: usize = 60;

fn binary(right: impl Fn(usize) -> bool) -> Vec<f64> {
    (0..ITEMS).map(|i| f64::from(u8::from(right(i)))).collect()
}

/// A vision task right on the first `right` items, its blind control on the first `blind`.
fn vision_task(name: &str, right: usize, blind: usize) -> TaskScore {
    let item_scores = binary(|i| i < right);
    let accuracy = right as f64 / ITEMS as f64;
    TaskScore {
        task: name.into(),
        modality: Modality::Vision,
        accuracy,
        chance: 0.1,
        stable_score: accuracy - 0.1,
        metric: "vqa_accuracy".into(),
        ci: None,
        majority: Some(0.1),
        blind_accuracy: Some(blind as f64 / ITEMS as f64),
        vision_gain: Some((right as f64 - blind as f64) / ITEMS as f64),
        gain_ci: Some(Interval { lo: 0.0, hi: 0.1 }),
        no_image_accuracy: None,
        item_scores,
        blind_item_scores: binary(|i| i < blind),
        item_images: Vec::new(),
        items_digest: format!("{name} items"),
    }
}

/// A text MC task at chance (so held-out bits-per-byte decides text).
fn text_task() -> TaskScore {
    let item_scores = binary(|i| i % 4 == 0);
    TaskScore {
        task: "arc_easy".into(),
        modality: Modality::Text,
        accuracy: 0.25,
        chance: 0.25,
        stable_score: 0.0,
        metric: "acc".into(),
        ci: None,
        majority: None,
        blind_accuracy: None,
        vision_gain: None,
        gain_ci: None,
        no_image_accuracy: None,
        item_scores,
        blind_item_scores: Vec::new(),
        item_images: Vec::new(),
        items_digest: "arc items".into(),
    }
}

/// Held-out nats per sequence, times `factor` (a model's bits-per-byte relative to the base's).
fn nats(factor: f64, wobble: f64) -> Vec<f64> {
    (0..SEQUENCES).map(|i| (200.0 + (i * 53 % 90) as f64) * factor * (1.0 + wobble * ((i % 3) as f64 - 1.0))).collect()
}

struct Model {
    intro: f64,
    img: f64,
    instr: f64,
    epochs: u32,
    seed: u64,
    tasks: Vec<TaskScore>,
    bpb_factor: f64,
}

fn model(intro: f64, img: f64, epochs: u32, seed: u64, right: usize, blind: usize) -> Model {
    Model {
        intro,
        img,
        instr: 0.0,
        epochs,
        seed,
        tasks: vec![vision_task("fashion_what", right, blind), text_task()],
        bpb_factor: 1.3,
    }
}

fn row(m: Model) -> ResultRow {
    let vision = m.tasks.iter().find(|t| t.modality == Modality::Vision).map(|t| t.stable_score);
    let mut row = ResultRow {
        run_id: format!("i{}-r{}-s{}-e{}-seed{}", m.intro, m.img, m.instr, m.epochs, m.seed),
        stage: "finetune".into(),
        introduction: Some(m.intro),
        fresh_schedule: m.intro == 0.0 || m.intro == 1.0,
        image_token_fraction: m.img,
        instruction_share: m.instr,
        finetune_epochs: m.epochs,
        seed: m.seed,
        tasks: m.tasks,
        vision_stable_score: vision,
        text_stable_score: Some(0.0),
        vision_ci: None,
        text_ci: None,
        bits_per_byte: Some(1.5 * m.bpb_factor),
        validation_nats: nats(m.bpb_factor, 0.002 * m.seed as f64),
        wall_time_s: 1.0,
        machine: "test".into(),
        versions: BTreeMap::new(),
        config: serde_json::json!({}),
    };
    row.set_intervals().unwrap();
    row
}

fn text_only() -> ResultRow {
    let mut row = row(model(0.0, 0.0, 0, 0, 0, 0));
    row.run_id = "text-only".into();
    row.introduction = None;
    row.fresh_schedule = false;
    row.stage = "pretrain".into();
    row.tasks = vec![text_task()];
    row.vision_stable_score = None;
    row.bits_per_byte = Some(1.5);
    row.validation_nats = nats(1.0, 0.0);
    row.set_intervals().unwrap();
    row
}

fn plan() -> VerdictConfig {
    VerdictConfig { vision_tasks: vec![], image_token_optimum: None, ..Default::default() }
}

fn finding(rows: &[ResultRow], verdicts: &VerdictConfig, n: &str) -> Finding {
    findings(rows, verdicts).into_iter().find(|f| f.question.starts_with(n)).unwrap()
}

/// The introduction line: the base 75 % at three seeds (`base` right answers each), 100 % at seed 0.
fn introduction_rows(base: [usize; 3], full: usize) -> Vec<ResultRow> {
    let mut rows: Vec<ResultRow> =
        base.iter().enumerate().map(|(seed, &right)| row(model(0.75, 0.3, 2, seed as u64, right, 40))).collect();
    rows.push(row(model(1.0, 0.3, 2, 0, full, 40)));
    rows.push(text_only());
    rows
}

#[test]
fn seed_noise_makes_a_clear_item_difference_cannot_tell() {
    // Seed 0 vs. seed 0: 240 vs. 200 of 400 right, +0.10 on the vision gain; items alone give a
    // standard error of sqrt(0.1 * 0.9 / 400) = 0.015. The base point's seeds spread by sd 0.03
    // (240 / 252 / 228): seed variance 2 * 0.0009, df = 0.002025^2 / (0.0018^2 / 2) = 2.5, t = 3.6:
    // the interval is +0.10 +- 0.16 and holds 0.
    let rows = introduction_rows([240, 252, 228], 200);
    let f = finding(&rows, &plan(), "1.");
    assert!(f.primary.starts_with("75 % vs. full (100 %): vision gain +0.100 [-0.0"), "{}", f.primary);
    assert_eq!(f.vision, Verdict::CannotTell, "{f:?}");
    // The same contrast with seeds that agree exactly: seed noise 0, the item interval decides.
    let rows = introduction_rows([240, 240, 240], 200);
    let f = finding(&rows, &plan(), "1.");
    assert_eq!(f.vision, Verdict::Agrees, "{f:?}");
    assert!(f.p.is_some_and(|(raw, holm)| raw < 1e-6 && holm >= raw), "{f:?}");
}

#[test]
fn without_replicates_no_verdict_is_given() {
    let mut rows = introduction_rows([240, 240, 240], 200);
    rows.retain(|r| r.seed == 0);
    let f = finding(&rows, &plan(), "1.");
    assert!(f.primary.contains("seed noise not measured"), "{}", f.primary);
    assert_eq!(f.vision, Verdict::CannotTell);
    assert!(f.p.is_none());
    assert_eq!(finding(&rows, &plan(), "6.").verdict, Verdict::NotTested);
}

#[test]
fn text_is_judged_between_vlms_and_the_text_only_gap_is_described() {
    // Both VLMs are 30 % behind the text-only model in bits-per-byte, and equal to each other: text
    // holds between them (the claim is about introduction points), the gap is a descriptive line.
    let rows = introduction_rows([240, 240, 240], 200);
    let f = finding(&rows, &plan(), "1.");
    let text = f.text.clone().expect("a text side");
    assert_eq!(text.verdict, Verdict::Agrees, "{}", text.text);
    assert!(text.text.contains("bits-per-byte +0.0 %"), "{}", text.text);
    assert!(f.answer.contains("against the text-only model: bits-per-byte +30.0 %"), "{}", f.answer);
    assert_eq!(f.verdict, Verdict::Agrees);
    // The interior VLM 6 % behind the full one in bits-per-byte, beyond the 2 % margin: disagrees.
    let mut rows = rows;
    for r in rows.iter_mut().filter(|r| r.introduction == Some(0.75)) {
        r.validation_nats = nats(1.3 * 1.06, 0.002 * r.seed as f64);
    }
    let f = finding(&rows, &plan(), "1.");
    assert_eq!(f.text.unwrap().verdict, Verdict::Disagrees);
    assert_eq!(f.verdict, Verdict::Disagrees);
}

#[test]
fn the_blind_control_cancels_an_answer_prior() {
    // The interior model is right 40 more times, but its blind control also rises by 40: it learned
    // the answer prior, not to see. The vision gain is equal: cannot tell; the accuracy alone would
    // have said "agrees".
    let mut rows = introduction_rows([240, 240, 240], 200);
    for r in rows.iter_mut().filter(|r| r.introduction == Some(0.75)) {
        r.tasks[0] = vision_task("fashion_what", 240, 80);
    }
    let f = finding(&rows, &plan(), "1.");
    assert!(f.primary.contains("vision gain +0.000"), "{}", f.primary);
    assert!(f.primary.contains("(beside it: vision accuracy +0.100"), "the other measure co-reported: {}", f.primary);
    assert_eq!(f.vision, Verdict::CannotTell);
    // A config that chose accuracy (less seed noise where the blind answer swings) reads the rise.
    let accuracy = VerdictConfig { vision_measure: VisionMeasure::Accuracy, ..plan() };
    let f = finding(&rows, &accuracy, "1.");
    assert!(
        f.primary.contains(": vision accuracy +0.100") && f.primary.contains("(beside it: vision gain +0.000"),
        "{}",
        f.primary
    );
    assert_eq!(f.vision, Verdict::Agrees);
}

#[test]
fn verdict_tasks_are_chosen_in_the_config() {
    // A second task at chance swings by seed; leaving it out of `[verdicts] vision_tasks` (chosen
    // before the results) keeps the verdict on the task that can move.
    let mut rows = introduction_rows([240, 240, 240], 200);
    for (i, r) in rows.iter_mut().filter(|r| r.introduction.is_some()).enumerate() {
        r.tasks.push(vision_task("shape_name", [60, 140, 20, 100][i], 57));
        r.set_intervals().unwrap();
    }
    assert_eq!(finding(&rows, &plan(), "1.").vision, Verdict::CannotTell, "the noisy task drowns the effect");
    let chosen =
        VerdictConfig { vision_tasks: vec!["fashion_what".into()], image_token_optimum: None, ..Default::default() };
    assert_eq!(finding(&rows, &chosen, "1.").vision, Verdict::Agrees);
}

/// Image-token shares 10 / 30 / 60 % at 75 %: the base (10 %) at three close seeds.
fn share_rows(rights: [usize; 3]) -> Vec<ResultRow> {
    let mut rows: Vec<ResultRow> =
        (0..3).map(|seed| row(model(0.75, 0.1, 2, seed, rights[0] + seed as usize, 40))).collect();
    rows.push(row(model(0.75, 0.3, 2, 0, rights[1], 40)));
    rows.push(row(model(0.75, 0.6, 2, 0, rights[2], 40)));
    rows.push(text_only());
    rows
}

#[test]
fn finding_two_tests_the_configured_optimum() {
    // 1B-style: 10 % is best (240 vs. 180 and 160 right), and the config predicts 10-20 %.
    let rows = share_rows([240, 180, 160]);
    let one_b = VerdictConfig { vision_tasks: vec![], image_token_optimum: Some([0.1, 0.2]), ..Default::default() };
    let f = finding(&rows, &one_b, "2.");
    assert_eq!(f.vision, Verdict::Agrees, "{f:?}");
    assert!(f.primary.starts_with("predicted best 10-20 %: 10 % vs. 30 %: vision gain +0.150"), "{}", f.primary);
    assert!(
        f.answer.contains("how often each share has the best vision gain") && f.answer.contains("10 % 1.00"),
        "{}",
        f.answer
    );
    // A small model's prediction (more than 20 %) on the same results: 10 % beats both: disagrees.
    let small = VerdictConfig { vision_tasks: vec![], image_token_optimum: Some([0.25, 1.0]), ..Default::default() };
    assert_eq!(finding(&rows, &small, "2.").vision, Verdict::Disagrees);
    // No prediction in the config: not tested, and the page says how to give one.
    let f = finding(&rows, &plan(), "2.");
    assert_eq!(f.verdict, Verdict::NotTested);
    assert!(f.primary.contains("image_token_optimum"), "{}", f.primary);
}

#[test]
fn non_inferiority_reads_the_margin_not_the_sign() {
    let contrast = |lo: f64, hi: f64| Contrast {
        estimate: (lo + hi) / 2.0,
        item_variance: 0.0,
        seed_variance: Some(0.0),
        df: f64::INFINITY,
        ci: Interval { lo, hi },
        runs: (1, 1),
        seed_matched: true,
    };
    // A significant 0.5-point MC drop, well inside the 2-point margin: text holds.
    assert_eq!(Verdict::non_inferior(&contrast(-0.008, -0.002), 0.02), Verdict::Agrees);
    // A significant gain: holds too (it was "cannot tell" under the old two-sided rule).
    assert_eq!(Verdict::non_inferior(&contrast(0.01, 0.03), 0.02), Verdict::Agrees);
    assert_eq!(Verdict::non_inferior(&contrast(-0.05, -0.03), 0.02), Verdict::Disagrees);
    assert_eq!(Verdict::non_inferior(&contrast(-0.03, 0.01), 0.02), Verdict::CannotTell);
}

#[test]
fn seed_replicates_are_compared_paired_and_sigma_has_a_chi_square_interval() {
    // Seeds 240 / 252 / 228 right of 400 on the same items: each pair differs on 12-24 items, far
    // beyond what redrawing items explains (paired): seeds matter, finding 6 disagrees.
    let rows = introduction_rows([240, 252, 228], 200);
    let f = finding(&rows, &plan(), "6.");
    assert_eq!(f.verdict, Verdict::Disagrees, "{f:?}");
    assert!(f.answer.contains("seed standard deviation of the vision gain 0.0300 [0.01"), "{}", f.answer);
    assert!(f.answer.contains("(chi-square, 2 df)"), "{}", f.answer);
    // Identical seeds: the spread's upper end (0) is within the paper's 0.0063: agrees.
    let rows = introduction_rows([240, 240, 240], 200);
    assert_eq!(finding(&rows, &plan(), "6.").verdict, Verdict::Agrees);
}

#[test]
fn the_page_states_its_protocol_and_method() {
    let rows = introduction_rows([240, 252, 228], 200);
    let table = ResultsTable { rows, nodes: vec![], data: Default::default() };
    let protocol = Protocol {
        verdicts: VerdictConfig {
            vision_tasks: vec!["fashion_what".into()],
            image_token_optimum: Some([0.1, 0.2]),
            ..Default::default()
        },
        departures: vec!["up to 4 image-caption examples per cooldown row".into()],
    };
    let dir = tempfile::tempdir().unwrap();
    let files =
        write_report(dir.path(), &ReportInput { title: "verdicts", protocol: &protocol, table: &table, curves: &[] })
            .unwrap();
    let page = std::fs::read_to_string(files.index).unwrap();
    for needle in [
        "Departures from the paper",
        "up to 4 image-caption examples per cooldown row",
        "vision verdicts read the vision gain (per item, credit minus the blind control's, so a task's answer prior cancels) on fashion_what; predicted best image-token share 10-20 %",
        "on the vision measure named above: the vision gain (per item",
        "Holm",
        "Welch-Satterthwaite",
        "Seed noise behind every contrast: seed standard deviation of the vision gain 0.0300",
        "p raw / Holm",
        "over the best control",
        "max(blind, no image, majority)",
    ] {
        assert!(page.contains(needle), "the page lacks {needle:?}");
    }
}

#[test]
fn holm_keeps_a_lone_raw_success_from_becoming_a_finding() {
    // 75 % (three identical seeds: seed noise 0) is right on 5 more of 400 items than 100 %: z = 2.25,
    // raw p = 0.025. Findings 1, 3 and 6 are tested, so Holm multiplies the smallest p by 3: 0.075.
    let mut rows = introduction_rows([205, 205, 205], 200);
    rows.push(row(model(0.0, 0.3, 2, 0, 205, 40)));
    let f = finding(&rows, &plan(), "1.");
    let (raw, holm) = f.p.expect("tested");
    assert!(raw < 0.05 && holm >= 0.05, "raw {raw}, Holm {holm}");
    assert_eq!(f.vision, Verdict::CannotTell, "a per-comparison success, not a finding after Holm");
}

#[test]
fn each_epoch_count_is_compared_with_its_text_side() {
    // 1, 2 and 3 epochs at the base point (seeds 0-2 at 1 and 2): 2 beats 1 clearly; text (bits-per-
    // byte) is equal, so "2 is the sweet spot for text" holds against both.
    let mut rows = Vec::new();
    for seed in 0..3 {
        rows.push(row(model(0.75, 0.3, 1, seed, 150 + seed as usize, 40)));
        rows.push(row(model(0.75, 0.3, 2, seed, 240 + seed as usize, 40)));
    }
    rows.push(row(model(0.75, 0.3, 3, 0, 250, 40)));
    rows.push(text_only());
    let f = finding(&rows, &plan(), "5.");
    assert_eq!(f.vision, Verdict::Agrees, "{f:?}");
    assert!(f.primary.starts_with("2 ep vs. 1 ep: vision gain +0.225"), "{}", f.primary);
    let text = f.text.expect("a text side");
    assert!(
        text.text.contains("2 ep vs. 1 ep: bits-per-byte") && text.text.contains("2 ep vs. 3 ep: bits-per-byte"),
        "{}",
        text.text
    );
    assert!(f.answer.starts_with("3 ep vs. 2 ep: vision gain +0.025"), "{}", f.answer);
}

#[test]
fn a_contrast_carries_the_seed_noise_of_its_own_arms() {
    // One-epoch fine-tunes spread seeds far wider (100 / 200 / 300 right) than two-epoch ones
    // (240 / 241 / 242). 75 % vs. 100 % at two epochs reads the two-epoch replicates' noise: agrees.
    // Pooled with the one-epoch spread it would be lost in it.
    let mut rows = introduction_rows([240, 241, 242], 200);
    for (seed, right) in [100, 200, 300].into_iter().enumerate() {
        rows.push(row(model(0.75, 0.3, 1, seed as u64, right, 40)));
    }
    let f = finding(&rows, &plan(), "1.");
    assert_eq!(f.vision, Verdict::Agrees, "{f:?}");
    let header = vlmix_study::report::findings::seed_noise_summary(&rows, &plan()).unwrap();
    assert!(header.contains("(chi-square, 4 df)"), "the header pools every replicate: {header}");
}
