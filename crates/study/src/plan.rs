//! The study grid as a DAG of runs that share prefixes.
//!
//! One text pre-training run serves every branch; each grid point x seed (plus the base point x each
//! extra base seed, and with `grid.replicate_primary_arms` the other arms of the findings' primary
//! contrasts x each extra seed) is one cooldown. Each epoch count a branch is compared at is its own
//! fine-tuning run, with warmup and decay over exactly those epochs (the paper's reading of "N
//! epochs"), and is evaluated once. The base point sweeps epochs 1..=N for its first seeds and
//! 1..=compare_epoch for the extra ones (finding 5 compares 2 with 1 epochs on every seed); the
//! other points are fine-tuned for the comparison epoch only. Node ids are stable strings, so a
//! rerun finds the nodes it already finished.

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

use crate::config::{GridPoint, StudyConfig};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "stage", rename_all = "snake_case")]
pub enum NodeKind {
    /// Every training image encoded once into the feature cache, texts tokenized.
    ImageCorpus,
    Pretrain,
    Cooldown {
        point: GridPoint,
        seed: u64,
    },
    /// Fine-tunes the cooldown of the same point and seed for `epochs` epochs, its LR schedule
    /// spanning exactly those.
    Finetune {
        point: GridPoint,
        seed: u64,
        epochs: u32,
    },
    /// Scores the `epoch`-epoch fine-tune of the same point and seed.
    Eval {
        point: GridPoint,
        seed: u64,
        epoch: u32,
    },
    /// The text tasks on the last pre-training checkpoint: the text-only model that image-trained
    /// models' text scores are held against (the paper: text performance holds).
    EvalTextBaseline,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Node {
    pub id: String,
    pub kind: NodeKind,
    /// Ids of nodes that must finish first.
    pub after: Vec<String>,
}

/// Nodes in an order where every node comes after the nodes it depends on.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Plan {
    pub nodes: Vec<Node>,
}

// Node ids and result-row ids: made here only.

/// Id of the node that encodes the training images and tokenizes their texts.
/// Most nodes a plan may hold: far beyond any study that could finish, far below what a typo (or a
/// damaged `study.json`) such as four billion fine-tuning epochs would try to list in memory.
const MAX_NODES: usize = 100_000;

pub const IMAGE_CORPUS: &str = "image-corpus";
/// Id of the text pre-training node.
pub const PRETRAIN: &str = "pretrain";
/// Id of the text-only baseline's evaluation.
pub const EVAL_TEXT_BASELINE: &str = "eval-text-baseline";

/// The branch of one grid point and seed, shared by its cooldown, fine-tune and eval ids.
fn branch_label(point: &GridPoint, seed: u64) -> String {
    format!(
        "at{}-img{}-inst{}-seed{seed}",
        percent_label(point.fraction),
        percent_label(point.image_token_fraction),
        percent_label(point.instruction_share)
    )
}

pub fn cooldown_id(point: &GridPoint, seed: u64) -> String {
    format!("cooldown-{}", branch_label(point, seed))
}

pub fn finetune_id(point: &GridPoint, seed: u64, epochs: u32) -> String {
    format!("finetune-{}", finetuned_run_id(point, seed, epochs))
}

pub fn eval_id(point: &GridPoint, seed: u64, epoch: u32) -> String {
    format!("eval-{}", finetuned_run_id(point, seed, epoch))
}

/// The results row of the model fine-tuned for `epoch` epochs at `point` and `seed`.
pub fn finetuned_run_id(point: &GridPoint, seed: u64, epoch: u32) -> String {
    format!("{}-ep{epoch}", branch_label(point, seed))
}

/// The results row of the text model at `fraction` of pre-training.
pub fn pretrain_run_id(fraction: f64) -> String {
    format!("pretrain-at{}", percent_label(fraction))
}

/// A fraction as the percent label of node and run ids: three integer digits, plus decimals only when
/// the value is not a whole percent (`0.75` -> `075`, `0.301` -> `030.1`), so ids of whole-percent
/// grids stay as they were and distinct values get distinct ids down to 1e-6 percent.
pub fn percent_label(fraction: f64) -> String {
    let fixed = format!("{:010.6}", fraction * 100.0);
    fixed.trim_end_matches('0').trim_end_matches('.').to_string()
}

impl Plan {
    /// The plan of `config`; refuses grid values too close to tell apart in node ids (which would make
    /// a second node look finished when the first is).
    pub fn build(config: &StudyConfig) -> Result<Plan> {
        let mut nodes = vec![Node { id: IMAGE_CORPUS.into(), kind: NodeKind::ImageCorpus, after: vec![] }];
        // A study starting from an existing text model (`pretrain.from`) has no pre-training node.
        let text: Vec<String> = match config.pretrain.from {
            Some(_) => vec![],
            None => vec![PRETRAIN.into()],
        };
        if text.len() == 1 {
            nodes.push(Node { id: PRETRAIN.into(), kind: NodeKind::Pretrain, after: vec![] });
        }
        if !config.eval.text_tasks.is_empty() {
            nodes.push(Node { id: EVAL_TEXT_BASELINE.into(), kind: NodeKind::EvalTextBaseline, after: text.clone() });
        }
        let grid = &config.grid;
        let base = grid.base;
        let primary_arm = |p: &GridPoint| {
            *p != base
                && (p.fraction == 0.0
                    || p.fraction == 1.0
                    || p.image_token_fraction != base.image_token_fraction
                    || p.instruction_share != base.instruction_share)
        };
        let replicated = |p: &GridPoint| *p == base || (grid.replicate_primary_arms && primary_arm(p));
        let points = config.points();
        let branches = grid.seeds.iter().flat_map(|&seed| points.iter().map(move |&point| (point, seed)));
        let extra = grid
            .extra_base_seeds
            .iter()
            .flat_map(|&seed| points.iter().filter(|p| replicated(p)).map(move |&point| (point, seed)));
        let f = &config.finetune;
        let runs = (grid.seeds.len() + grid.extra_base_seeds.len()).saturating_mul(points.len());
        let per_run = 1 + 2 * f.epochs.max(f.compare_epoch) as usize;
        if runs.saturating_mul(per_run) > MAX_NODES {
            bail!(
                "{} seeds x {} grid points x finetune.epochs = {} would plan up to {} nodes, more than {MAX_NODES}",
                grid.seeds.len() + grid.extra_base_seeds.len(),
                points.len(),
                f.epochs,
                runs.saturating_mul(per_run)
            );
        }
        for (point, seed) in branches.chain(extra) {
            let cooldown = cooldown_id(&point, seed);
            nodes.push(Node {
                id: cooldown.clone(),
                kind: NodeKind::Cooldown { point, seed },
                after: [vec![IMAGE_CORPUS.into()], text.clone()].concat(),
            });
            let epochs: Vec<u32> = match (point == base, grid.seeds.contains(&seed)) {
                (true, true) => (1..=f.epochs).collect(),
                (true, false) => (1..=f.compare_epoch).collect(),
                (false, _) => vec![f.compare_epoch],
            };
            for epochs in epochs {
                let finetune = finetune_id(&point, seed, epochs);
                nodes.push(Node {
                    id: finetune.clone(),
                    kind: NodeKind::Finetune { point, seed, epochs },
                    after: vec![cooldown.clone()],
                });
                nodes.push(Node {
                    id: eval_id(&point, seed, epochs),
                    kind: NodeKind::Eval { point, seed, epoch: epochs },
                    after: vec![finetune],
                });
            }
        }
        let mut seen = std::collections::BTreeMap::new();
        for node in &nodes {
            if let Some(other) = seen.insert(node.id.as_str(), &node.kind) {
                bail!("two grid points share the node id {}: {other:?} and {:?}; grid values must differ by more than 1e-8", node.id, node.kind);
            }
        }
        Ok(Plan { nodes })
    }

    pub fn count(&self, pred: impl Fn(&NodeKind) -> bool) -> usize {
        self.nodes.iter().filter(|n| pred(&n.kind)).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn smoke() -> StudyConfig {
        toml::from_str(include_str!("../../../configs/study/smoke.toml")).unwrap()
    }

    fn finetunes(plan: &Plan) -> Vec<(GridPoint, u64, u32)> {
        plan.nodes
            .iter()
            .filter_map(|n| match n.kind {
                NodeKind::Finetune { point, seed, epochs } => Some((point, seed, epochs)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn each_epoch_count_is_its_own_finetune_and_extra_seeds_sweep_to_the_comparison_epoch() {
        let mut config = smoke();
        (config.finetune.epochs, config.finetune.compare_epoch) = (3, 2);
        config.grid.fractions = vec![0.0, 1.0];
        config.grid.extra_base_seeds = vec![1, 2];
        let plan = Plan::build(&config).unwrap();
        let base = config.grid.base;
        let runs = finetunes(&plan);
        let at = |point: GridPoint, seed: u64| -> Vec<u32> {
            runs.iter().filter(|(p, s, _)| *p == point && *s == seed).map(|r| r.2).collect()
        };
        assert_eq!(at(base, 0), vec![1, 2, 3], "the base point's first seed sweeps every epoch count");
        assert_eq!(at(base, 1), vec![1, 2], "extra seeds: every epoch count finding 5 compares");
        assert_eq!(at(base, 2), vec![1, 2]);
        for fraction in [0.0, 1.0] {
            assert_eq!(at(GridPoint { fraction, ..base }, 0), vec![2], "other points: the comparison epoch");
            assert!(at(GridPoint { fraction, ..base }, 1).is_empty(), "not replicated unless asked");
        }
        // Every fine-tune has one eval of its own epoch count, after it.
        for (point, seed, epochs) in &runs {
            let eval = plan.nodes.iter().find(|n| n.id == eval_id(point, *seed, *epochs)).expect("eval");
            assert_eq!(eval.after, vec![finetune_id(point, *seed, *epochs)]);
        }
        assert_eq!(plan.count(|k| matches!(k, NodeKind::Eval { .. })), runs.len());
        config.grid.extra_base_seeds = vec![0];
        assert!(format!("{:#}", config.validate().unwrap_err()).contains("seed 0 is listed twice"));
    }

    #[test]
    fn replicating_primary_arms_gives_extra_seeds_to_the_other_side_of_each_contrast() {
        let mut config = smoke();
        (config.finetune.epochs, config.finetune.compare_epoch) = (3, 2);
        config.pretrain.checkpoint_fractions = vec![0.25, 0.5, 1.0];
        config.grid.fractions = vec![0.0, 0.25, 1.0];
        config.grid.image_token_fractions = vec![0.1];
        config.grid.instruction_shares = vec![0.2];
        config.grid.extra_base_seeds = vec![1];
        config.grid.replicate_primary_arms = true;
        config.validate().unwrap();
        let plan = Plan::build(&config).unwrap();
        let base = config.grid.base;
        let seeds_at = |point: GridPoint| -> Vec<u64> {
            plan.nodes
                .iter()
                .filter_map(|n| match n.kind {
                    NodeKind::Cooldown { point: p, seed } if p == point => Some(seed),
                    _ => None,
                })
                .collect()
        };
        for arm in [
            GridPoint { fraction: 0.0, ..base },
            GridPoint { fraction: 1.0, ..base },
            GridPoint { image_token_fraction: 0.1, ..base },
            GridPoint { instruction_share: 0.2, ..base },
        ] {
            assert_eq!(seeds_at(arm), vec![0, 1], "{arm:?}");
        }
        assert_eq!(seeds_at(GridPoint { fraction: 0.25, ..base }), vec![0], "an interior point is no primary arm");
        // Dependencies come first and ids are unique.
        for (i, node) in plan.nodes.iter().enumerate() {
            for dep in &node.after {
                let j = plan.nodes.iter().position(|n| &n.id == dep).expect("dependency exists");
                assert!(j < i, "{} depends on later node {dep}", node.id);
            }
        }
        let ids: std::collections::BTreeSet<_> = plan.nodes.iter().map(|n| &n.id).collect();
        assert_eq!(ids.len(), plan.nodes.len(), "node ids are unique");
        assert_eq!(plan.count(|k| matches!(k, NodeKind::Pretrain)), 1);
        assert_eq!(plan.count(|k| matches!(k, NodeKind::EvalTextBaseline)), 1);
    }

    #[test]
    fn ids_keep_whole_percents_and_tell_close_values_apart() {
        assert_eq!(percent_label(0.75), "075");
        assert_eq!(percent_label(1.0), "100");
        assert_eq!(percent_label(0.0), "000");
        assert_eq!(percent_label(0.301), "030.1");
        assert_eq!(percent_label(0.304), "030.4");
        let mut config: StudyConfig = toml::from_str(include_str!("../../../configs/study/smoke.toml")).unwrap();
        config.grid.image_token_fractions = vec![0.301, 0.304];
        let plan = Plan::build(&config).unwrap();
        let ids: Vec<&str> =
            plan.nodes.iter().map(|n| n.id.as_str()).filter(|id| id.starts_with("cooldown-")).collect();
        assert!(
            ids.contains(&"cooldown-at050-img030.1-inst000-seed0")
                && ids.contains(&"cooldown-at050-img030.4-inst000-seed0"),
            "{ids:?}"
        );
    }

    #[test]
    fn values_too_close_for_distinct_ids_are_refused_naming_both() {
        let mut config: StudyConfig = toml::from_str(include_str!("../../../configs/study/smoke.toml")).unwrap();
        config.grid.image_token_fractions = vec![0.3, 0.3 + 1e-12];
        let err = Plan::build(&config).unwrap_err().to_string();
        assert!(
            err.contains("img030")
                && err.contains("image_token_fraction: 0.3,")
                && err.contains("image_token_fraction: 0.3000000000009"),
            "{err}"
        );
    }

    #[test]
    fn a_study_from_an_imported_model_has_no_pretraining_and_only_whole_fractions() {
        let mut config: StudyConfig = toml::from_str(include_str!("../../../configs/study/smoke.toml")).unwrap();
        config.pretrain.from = Some("imported".into());
        let err = format!("{:#}", config.validate().unwrap_err());
        assert!(err.contains("introduction fraction 0.5") && err.contains("pretrain.from"), "{err}");
        (config.grid.base.fraction, config.grid.fractions) = (1.0, vec![0.0]);
        config.validate().unwrap();
        let plan = Plan::build(&config).unwrap();
        assert_eq!(plan.count(|k| matches!(k, NodeKind::Pretrain)), 0);
        assert!(
            plan.nodes.iter().all(|n| !n.after.contains(&PRETRAIN.to_string())),
            "nothing waits for a pre-training node"
        );
        assert_eq!(
            plan.count(|k| matches!(k, NodeKind::Cooldown { .. })),
            2,
            "100 % (the imported model) and 0 % (scratch)"
        );
    }
}
