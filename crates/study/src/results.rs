//! Collects finished evaluation nodes into the results table and draws the report.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use vlmix_eval::EvalReport;

use crate::config::StudyConfig;
use crate::executor::StudyDir;
use crate::outputs::{BpbPoint, NodeOutputs};
use crate::plan::{cooldown_id, finetuned_run_id, pretrain_run_id, NodeKind, Plan};
use crate::report::{
    write_report, DataRecord, NodeRecord, Protocol, ReportInput, ResultRow, ResultsTable, TrainingCurve,
};

/// The machine in words, for the report: CPU model and core count.
pub fn machine() -> String {
    let cpu = vlmix_engine::machine::cpu_model();
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    format!("{cpu}, {cores} cores")
}

pub fn versions() -> BTreeMap<String, String> {
    let mut v = BTreeMap::new();
    v.insert("vlmix".into(), env!("CARGO_PKG_VERSION").into());
    v.insert("openblas_core".into(), vlmix_engine::blas::corename());
    v
}

fn stage_of(kind: &NodeKind) -> &'static str {
    match kind {
        NodeKind::ImageCorpus => "image-corpus",
        NodeKind::Pretrain => "pretrain",
        NodeKind::Cooldown { .. } => "cooldown",
        NodeKind::Finetune { .. } => "finetune",
        NodeKind::Eval { .. } | NodeKind::EvalTextBaseline => "eval",
    }
}

/// The table of every finished eval node (unfinished ones are left out, so a partial study reports too).
pub fn collect(config: &StudyConfig, plan: &Plan, study: &StudyDir) -> Result<ResultsTable> {
    let (machine, versions) = (machine(), versions());
    let provenance_file = study.root.join(crate::run::PROVENANCE_FILE);
    let provenance = match std::fs::read(&provenance_file) {
        Ok(bytes) => {
            serde_json::from_slice(&bytes).with_context(|| format!("parsing {}", provenance_file.display()))?
        }
        Err(_) => Default::default(),
    };
    let data = DataRecord { provenance, left_out: config.eval.left_out.clone() };
    let mut table = ResultsTable { rows: Vec::new(), nodes: Vec::new(), data };
    for node in &plan.nodes {
        let Some(done) = study.done(&node.id)? else { continue };
        table.nodes.push(NodeRecord {
            node_id: node.id.clone(),
            stage: stage_of(&node.kind).into(),
            wall_time_s: done.wall_s,
            machine: machine.clone(),
            versions: versions.clone(),
        });
        // The text model's rows: from pre-training, or from the baseline of an imported model.
        match &done.outputs {
            NodeOutputs::Pretrain(p) => table.rows.extend(pretrain_rows(&p.validation_bpb, &machine, &versions)),
            NodeOutputs::TextBaseline(b) if b.imported => {
                table.rows.extend(pretrain_rows(&b.validation_bpb, &machine, &versions))
            }
            _ => {}
        }
        if matches!(node.kind, NodeKind::EvalTextBaseline) {
            let baseline = done.outputs.text_baseline(&node.id)?;
            let report = EvalReport::read_json(&study.root.join(&baseline.report))?;
            let run_id = pretrain_run_id(baseline.fraction);
            let row = table
                .rows
                .iter_mut()
                .find(|r| r.run_id == run_id)
                .with_context(|| format!("the text baseline's pre-training row {run_id} is missing"))?;
            let bits_per_byte = row.bits_per_byte;
            row.set_scores(&report)?;
            row.bits_per_byte = bits_per_byte;
            row.validation_nats = baseline.validation_nats.clone();
            continue;
        }
        let NodeKind::Eval { point, seed, epoch } = &node.kind else { continue };
        let eval = done.outputs.eval(&node.id)?;
        let cooldown = cooldown_id(point, *seed);
        let cooldown_done = study.finished(&cooldown).context("the evaluated model's cooldown")?;
        let report = EvalReport::read_json(&study.root.join(&eval.report))?;
        let mut row = ResultRow {
            run_id: finetuned_run_id(point, *seed, *epoch),
            stage: "finetune".into(),
            introduction: Some(point.fraction),
            fresh_schedule: cooldown_done.outputs.cooldown(&cooldown)?.fresh_schedule,
            image_token_fraction: point.image_token_fraction,
            instruction_share: point.instruction_share,
            finetune_epochs: *epoch,
            seed: *seed,
            tasks: Vec::new(),
            vision_stable_score: None,
            text_stable_score: None,
            vision_ci: None,
            text_ci: None,
            bits_per_byte: None,
            validation_nats: Vec::new(),
            wall_time_s: done.wall_s,
            machine: machine.clone(),
            versions: versions.clone(),
            config: serde_json::json!({ "study": config, "point": point, "seed": seed, "epoch": epoch }),
        };
        row.set_scores(&report)?;
        row.bits_per_byte = Some(eval.bits_per_byte);
        row.validation_nats = eval.validation_nats.clone();
        table.rows.push(row);
    }
    Ok(table)
}

/// The text-only model's held-out bits-per-byte at init and at each kept fraction of pre-training.
fn pretrain_rows(curve: &[BpbPoint], machine: &str, versions: &BTreeMap<String, String>) -> Vec<ResultRow> {
    curve
        .iter()
        .map(|&BpbPoint { fraction, bits_per_byte: bpb }| ResultRow {
            run_id: pretrain_run_id(fraction),
            stage: "pretrain".into(),
            introduction: None,
            fresh_schedule: false,
            image_token_fraction: 0.0,
            instruction_share: 0.0,
            finetune_epochs: 0,
            seed: 0,
            tasks: Vec::new(),
            vision_stable_score: None,
            text_stable_score: None,
            vision_ci: None,
            text_ci: None,
            bits_per_byte: Some(bpb),
            validation_nats: Vec::new(),
            wall_time_s: 0.0,
            machine: machine.to_string(),
            versions: versions.clone(),
            config: serde_json::json!({ "pretrain_fraction": fraction }),
        })
        .collect()
}

/// Training curves of every finished training node.
pub fn curves(plan: &Plan, study: &StudyDir) -> Result<Vec<TrainingCurve>> {
    let mut curves = Vec::new();
    for node in &plan.nodes {
        let metrics = study.node_dir(&node.id).join("metrics.jsonl");
        if matches!(node.kind, NodeKind::Eval { .. } | NodeKind::EvalTextBaseline) || !metrics.is_file() {
            continue;
        }
        curves.push(TrainingCurve::load_jsonl(&node.id, &metrics)?);
    }
    Ok(curves)
}

/// Writes `results.json`, `results.csv` and `report/index.html` under the run directory.
pub fn write_all(config: &StudyConfig, plan: &Plan, study: &StudyDir) -> Result<PathBuf> {
    let table = collect(config, plan, study)?;
    table.write_json(&study.root.join("results.json"))?;
    table.write_csv(&study.root.join("results.csv"))?;
    let curves = curves(plan, study)?;
    let title = match &config.pretrain.from {
        Some(from) => {
            format!("vlmix study: {} (text model imported from {}, no text pre-training)", config.name, from.display())
        }
        None => format!("vlmix study: {}", config.name),
    };
    let protocol = Protocol { verdicts: config.verdicts.clone(), departures: config.protocol_departures() };
    let input = ReportInput { title: &title, protocol: &protocol, table: &table, curves: &curves };
    let files = write_report(&report_dir(&study.root), &input)?;
    Ok(files.index)
}

pub fn report_dir(root: &Path) -> PathBuf {
    root.join("report")
}
