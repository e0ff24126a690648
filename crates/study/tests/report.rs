//! Report from a synthetic study: files exist, PNGs decode, the page shows every figure and the
//! table numbers are the input's.

use std::collections::BTreeMap;
use std::path::Path;
use vlmix_eval::Modality;
use vlmix_study::config::VerdictConfig;
use vlmix_study::report::{
    figures::knob_figure,
    findings::{findings, Verdict},
    grid::Knob,
    write_report, MetricPoint, NodeRecord, Protocol, ReportInput, ResultRow, ResultsTable, TaskScore, TrainingCurve,
};

/// Vision score built from per-knob effects so the best settings are known: introduction 80 %,
/// 20 % image tokens, no instruction data, 2 epochs.
fn vision_score(intro: f64, img: f64, instr: f64, epochs: u32, seed: u64) -> f64 {
    let by_intro = match (intro * 100.0).round() as u32 {
        0 => 0.05,
        20 => 0.20,
        40 => 0.25,
        60 => 0.30,
        80 => 0.40,
        _ => 0.35,
    };
    let by_img = match (img * 100.0).round() as u32 {
        10 => -0.02,
        20 => 0.0,
        _ => -0.05,
    };
    let by_epochs = match epochs {
        1 => -0.04,
        2 => 0.0,
        _ => -0.01,
    };
    by_intro + by_img - 0.3 * instr + by_epochs + 0.006 * seed as f64
}

fn row(intro: Option<f64>, img: f64, instr: f64, epochs: u32, seed: u64) -> ResultRow {
    let fresh = matches!(intro, Some(x) if x == 0.0 || x == 1.0);
    let id = match intro {
        Some(x) => format!("i{x}-r{img}-s{instr}-e{epochs}-seed{seed}"),
        None => "text-only".to_string(),
    };
    let vision = intro.map(|x| vision_score(x, img, instr, epochs, seed));
    let text = 0.2 + 0.01 * epochs as f64 - img * 0.1;
    let salt =
        (intro.unwrap_or(2.0) * 10.0 + img * 100.0 + instr * 1000.0 + epochs as f64 * 7.0 + seed as f64 * 3.0) as u64;
    let mut tasks = vec![task("arc_easy", Modality::Text, text + 0.25, 0.25, 0)];
    if let Some(v) = vision {
        tasks.insert(0, task("shapes", Modality::Vision, v + 0.2, 0.2, salt));
    }
    let stable = |m: Modality| tasks.iter().find(|t| t.modality == m).map(|t| t.stable_score);
    let (vision, text) = (stable(Modality::Vision), stable(Modality::Text));
    let mut row = ResultRow {
        run_id: id,
        stage: if intro.is_some() { "finetune" } else { "pretrain" }.to_string(),
        introduction: intro,
        fresh_schedule: fresh,
        image_token_fraction: img,
        instruction_share: instr,
        finetune_epochs: epochs,
        seed,
        tasks,
        vision_stable_score: vision,
        text_stable_score: text,
        vision_ci: None,
        text_ci: None,
        bits_per_byte: Some(1.5 - 0.1 * intro.unwrap_or(0.0)),
        validation_nats: Vec::new(),
        wall_time_s: 75.0 + seed as f64,
        machine: "2-core test box".to_string(),
        versions: BTreeMap::from([("vlmix".to_string(), "0.1.0".to_string())]),
        config: serde_json::json!({"seed": seed, "note": "<b>escaped</b>"}),
    };
    row.set_intervals().unwrap();
    row
}

/// A task of `ITEMS` items whose credit has mean ~`accuracy`; `salt` shifts which items are right, so
/// rows with different salts disagree item by item as real models do.
fn task(name: &str, modality: Modality, accuracy: f64, chance: f64, salt: u64) -> TaskScore {
    const ITEMS: usize = 1000;
    let item_scores: Vec<f64> = (0..ITEMS)
        .map(|i| f64::from(u8::from((i as f64 * 0.618_033_988_7 + salt as f64 * 0.137) % 1.0 < accuracy)))
        .collect();
    let accuracy = item_scores.iter().sum::<f64>() / ITEMS as f64;
    TaskScore {
        task: name.into(),
        modality,
        accuracy,
        chance,
        stable_score: accuracy - chance,
        metric: "acc".into(),
        ci: None,
        majority: None,
        blind_accuracy: None,
        vision_gain: None,
        gain_ci: None,
        no_image_accuracy: None,
        // The blind control is right on every fifth item: the answer prior, the same for every model.
        blind_item_scores: if modality == Modality::Vision {
            (0..ITEMS).map(|i| f64::from(u8::from(i % 5 == 0))).collect()
        } else {
            Vec::new()
        },
        item_scores,
        item_images: Vec::new(),
        items_digest: "same items".into(),
    }
}

fn synthetic_table() -> ResultsTable {
    let mut rows: Vec<ResultRow> =
        [0.0, 0.2, 0.4, 0.6, 0.8, 1.0].iter().map(|&x| row(Some(x), 0.2, 0.0, 2, 0)).collect();
    rows.push(row(Some(0.8), 0.1, 0.0, 2, 0));
    rows.push(row(Some(0.8), 0.5, 0.0, 2, 0));
    rows.push(row(Some(0.8), 0.2, 0.1, 2, 0));
    rows.push(row(Some(0.8), 0.2, 0.0, 1, 0));
    rows.push(row(Some(0.8), 0.2, 0.0, 4, 0));
    rows.push(row(Some(0.8), 0.2, 0.0, 2, 1));
    rows.push(row(None, 0.0, 0.0, 0, 0));
    let nodes = vec![
        NodeRecord {
            node_id: "pretrain".into(),
            stage: "pretrain".into(),
            wall_time_s: 3725.0,
            machine: "2-core test box".into(),
            versions: BTreeMap::new(),
        },
        NodeRecord {
            node_id: "cooldown-i0.8".into(),
            stage: "cooldown".into(),
            wall_time_s: 125.0,
            machine: "gpu box".into(),
            versions: BTreeMap::from([("rustc".into(), "1.85".into())]),
        },
    ];
    ResultsTable { rows, nodes, data: Default::default() }
}

fn curve(run_id: &str, steps: u64, achieved_image_fraction: f64) -> TrainingCurve {
    let points = (0..steps)
        .map(|s| MetricPoint {
            step: s,
            tokens: s * 4096,
            loss: 9.0 * (-(s as f64) / 300.0).exp() + 3.0,
            lr: 3e-3 * (1.0 - s as f64 / steps as f64),
            achieved_image_fraction,
            tokens_per_s: 5000.0,
        })
        .collect();
    TrainingCurve { run_id: run_id.to_string(), points }
}

#[test]
fn report_has_every_figure_and_the_input_numbers() {
    let dir = tempfile::tempdir().unwrap();
    let table = synthetic_table();
    let curves = vec![curve("pretrain", 1000, 0.0), curve("cooldown-i0.8", 300, 0.2)];
    let files = write_report(
        dir.path(),
        &ReportInput { title: "Synthetic <study>", protocol: &protocol(), table: &table, curves: &curves },
    )
    .unwrap();

    assert_eq!(files.index, dir.path().join("index.html"));
    assert_eq!(files.figures.len(), 10, "four knob figures and the curves, PNG + SVG each");
    let html = std::fs::read_to_string(&files.index).unwrap();
    assert_eq!(html.matches("<svg").count(), 5, "every figure is drawn inside the page, so it stands alone");
    for path in &files.figures {
        let name = path.file_name().unwrap().to_str().unwrap();
        assert!(html.contains(&format!("\"{name}\"")), "page links {name}");
        if name.ends_with(".png") {
            let img = image::open(path).unwrap();
            assert!(img.width() >= 1000 && img.height() >= 400, "{name}: {}x{}", img.width(), img.height());
            let rgb = img.to_rgb8();
            let non_white = rgb.pixels().filter(|p| p.0 != [255, 255, 255]).count();
            assert!(non_white > 5000, "{name} has drawing on it ({non_white} non-white pixels)");
        } else {
            let svg = std::fs::read_to_string(path).unwrap();
            assert!(svg.starts_with("<svg") && svg.contains("stable score") | svg.contains("loss"), "{name}");
        }
    }

    // Every row's headline numbers appear, formatted as the tables format them.
    for r in &table.rows {
        assert!(html.contains(&format!("<td>{}</td>", r.run_id)), "{}", r.run_id);
        for v in [r.vision_stable_score, r.text_stable_score, r.bits_per_byte].into_iter().flatten() {
            assert!(html.contains(&format!("<td class=\"num\">{v:.3}</td>")), "{} value {v:.3}", r.run_id);
        }
        for t in &r.tasks {
            assert!(
                html.contains(&format!("<td class=\"num\">{:.3}</td>", t.accuracy)),
                "{} {} accuracy",
                r.run_id,
                t.task
            );
        }
    }
    assert!(html.contains("scratch (0 %)") && html.contains("full (100 %)"));
    assert!(html.contains("1h 02m 05s"), "pretrain node wall time");
    assert!(html.contains("gpu box") && html.contains("rustc 1.85"));
    assert!(html.contains("Synthetic &lt;study&gt;") && html.contains("&lt;b&gt;escaped&lt;/b&gt;"));
    assert!(!html.contains("<b>escaped</b>"));
}

fn protocol() -> Protocol {
    Protocol {
        verdicts: VerdictConfig { vision_tasks: vec![], image_token_optimum: Some([0.1, 0.2]), ..Default::default() },
        departures: vec!["a synthetic <grid>".to_string()],
    }
}

#[test]
fn findings_give_a_verdict_with_its_interval_for_each_of_the_papers_findings() {
    let table = synthetic_table();
    let verdicts = protocol().verdicts;
    let f = findings(&table.rows, &verdicts);
    assert_eq!(f.len(), 6, "PAPER.md findings 1-6");
    assert_eq!(f, findings(&table.rows, &verdicts), "seeded bootstrap: the same intervals every time");
    let by = |n: &str| f.iter().find(|f| f.question.starts_with(n)).unwrap().clone();
    // 1: 80 % (seed 0, matched) vs. full: +0.05 on the vision gain (the blind prior cancels).
    let intro = by("1.");
    assert!(intro.primary.starts_with("80 % vs. full (100 %): vision gain +0.05"), "{}", intro.primary);
    assert!(intro.evidence.contains("scratch (0 %): vision 0.05"), "{}", intro.evidence);
    assert!(by("4.").primary.starts_with("0 % vs. 10 %: vision gain +0.029"), "{}", by("4.").primary);
    assert!(by("5.").primary.starts_with("2 ep vs. 1 ep: vision gain +0.04"), "{}", by("5.").primary);
    // 2: the predicted 10-20 % holds both the best (20 %) and 10 %; 50 % is outside.
    assert!(by("2.").primary.starts_with("predicted best 10-20 %"), "{}", by("2.").primary);
    for finding in &f {
        if finding.verdict == Verdict::NotTested {
            continue;
        }
        assert!(finding.primary.contains('['), "an interval behind every verdict: {finding:?}");
        // The vision verdict is the Holm-adjusted test: never decided by an adjusted p >= 0.05.
        if let Some((raw, holm)) = finding.p {
            assert!(holm >= raw, "{finding:?}");
            if holm >= 0.05 && !finding.question.starts_with("6.") {
                assert_eq!(finding.vision, Verdict::CannotTell, "{finding:?}");
            }
        }
    }

    // The text panels carry the text-only model's score as their reference line; vision panels none.
    let figure = knob_figure(&table.rows, Knob::Introduction);
    assert_eq!(figure.panels[0].baseline, None);
    assert!(figure.panels[1]
        .baseline
        .as_ref()
        .is_some_and(|(name, v)| name == "text-only model" && (v - 0.2).abs() < 0.01));
}

#[test]
fn results_table_round_trips_and_refuses_bad_values() {
    let dir = tempfile::tempdir().unwrap();
    let table = synthetic_table();
    let json = dir.path().join("results.json");
    table.write_json(&json).unwrap();
    assert_eq!(ResultsTable::read_json(&json).unwrap(), table);

    let csv_path = dir.path().join("results.csv");
    table.write_csv(&csv_path).unwrap();
    let csv = std::fs::read_to_string(&csv_path).unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines.len(), table.rows.len() + 1);
    assert!(lines[0].ends_with("stable:shapes,stable:arc_easy"), "{}", lines[0]);
    assert!(lines[1].starts_with("i0-r0.2-s0-e2-seed0,finetune,0,true,0.2,0,2,0,"), "{}", lines[1]);

    let mut bad = table.clone();
    bad.rows[3].image_token_fraction = 1.5;
    bad.write_json(&json).unwrap();
    let err = format!("{:#}", ResultsTable::read_json(&json).unwrap_err());
    assert!(err.contains("image_token_fraction") && err.contains("results.json"), "{err}");
    let report_err =
        write_report(dir.path(), &ReportInput { title: "t", protocol: &protocol(), table: &bad, curves: &[] })
            .unwrap_err();
    assert!(format!("{report_err:#}").contains("image_token_fraction"));
}

#[test]
fn empty_grid_still_draws_every_figure() {
    let dir = tempfile::tempdir().unwrap();
    let table = ResultsTable::default();
    let files =
        write_report(dir.path(), &ReportInput { title: "empty", protocol: &protocol(), table: &table, curves: &[] })
            .unwrap();
    for path in &files.figures {
        assert!(Path::new(path).is_file());
    }
    let html = std::fs::read_to_string(files.index).unwrap();
    assert!(html.contains("no image-trained models with scores yet"));
}

#[test]
fn metrics_jsonl_loads_and_bad_lines_name_the_place() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("metrics.jsonl");
    std::fs::write(
        &path,
        "{\"step\":1,\"tokens\":4096,\"loss\":7.5,\"lr\":0.001,\"achieved_image_fraction\":0.2,\"tokens_per_s\":900.0,\"extra\":1}\n\n{\"step\":2,\"tokens\":8192,\"lr\":0.001,\"achieved_image_fraction\":0.2,\"tokens_per_s\":900.0}\n",
    )
    .unwrap();
    let err = format!("{:#}", TrainingCurve::load_jsonl("r", &path).unwrap_err());
    assert!(err.contains("metrics.jsonl:3") && err.contains("loss"), "{err}");
    std::fs::write(
        &path,
        "{\"step\":1,\"tokens\":4096,\"loss\":7.5,\"lr\":0.001,\"achieved_image_fraction\":0.2,\"tokens_per_s\":900.0}\n",
    )
    .unwrap();
    let c = TrainingCurve::load_jsonl("r", &path).unwrap();
    assert_eq!(c.points[0].tokens, 4096);
    assert_eq!(c.points[0].loss, 7.5);
}
