//! The study grid as a DAG of runs that share prefixes.
//!
//! One text pre-training run serves every branch; each grid point x seed is one cooldown; each
//! cooldown gets one fine-tuning run of the largest epoch count whose epoch-end checkpoints give the
//! 1..=N-epoch models; each of those is evaluated. Only the base point sweeps epochs, so the other
//! fine-tunes stop at the comparison epoch. Node ids are stable strings, so a rerun finds the
//! nodes it already finished.

use serde::{Deserialize, Serialize};

use crate::config::{GridPoint, StudyConfig};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "stage", rename_all = "snake_case")]
pub enum NodeKind {
    /// Every training image encoded once into the feature cache, texts tokenized.
    ImageCorpus,
    Pretrain,
    Cooldown { point: GridPoint, seed: u64 },
    /// `epochs` is how many of the configured epochs to train: all of them at the base point, only up
    /// to the comparison epoch elsewhere (the LR schedule always spans the configured count).
    Finetune { cooldown: String, seed: u64, epochs: u32 },
    Eval { finetune: String, epoch: u32 },
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

/// Id of the node that encodes the training images and tokenizes their texts.
pub const IMAGE_CORPUS: &str = "image-corpus";
/// Id of the text-only baseline's evaluation.
pub const EVAL_TEXT_BASELINE: &str = "eval-text-baseline";

pub fn cooldown_id(point: &GridPoint, seed: u64) -> String {
    format!(
        "cooldown-at{:03}-img{:03}-inst{:03}-seed{seed}",
        percent(point.fraction),
        percent(point.image_fraction),
        percent(point.instruction_share)
    )
}

fn percent(x: f64) -> u32 {
    (x * 100.0).round() as u32
}

impl Plan {
    pub fn build(config: &StudyConfig) -> Plan {
        let mut nodes = vec![
            Node { id: IMAGE_CORPUS.into(), kind: NodeKind::ImageCorpus, after: vec![] },
            Node { id: "pretrain".into(), kind: NodeKind::Pretrain, after: vec![] },
        ];
        if !config.eval.text_tasks.is_empty() {
            nodes.push(Node { id: EVAL_TEXT_BASELINE.into(), kind: NodeKind::EvalTextBaseline, after: vec!["pretrain".into()] });
        }
        for &seed in &config.grid.seeds {
            for point in config.points() {
                let cooldown = cooldown_id(&point, seed);
                let finetune = format!("finetune-{}", cooldown.trim_start_matches("cooldown-"));
                nodes.push(Node { id: cooldown.clone(), kind: NodeKind::Cooldown { point, seed }, after: vec![IMAGE_CORPUS.into(), "pretrain".into()] });
                let epochs: Vec<u32> = if point == config.grid.base {
                    (1..=config.finetune.epochs).collect()
                } else {
                    vec![config.finetune.compare_epoch]
                };
                let trained_epochs = *epochs.last().expect("at least one epoch");
                nodes.push(Node {
                    id: finetune.clone(),
                    kind: NodeKind::Finetune { cooldown: cooldown.clone(), seed, epochs: trained_epochs },
                    after: vec![cooldown],
                });
                for epoch in epochs {
                    nodes.push(Node {
                        id: format!("eval-{}-ep{epoch}", finetune.trim_start_matches("finetune-")),
                        kind: NodeKind::Eval { finetune: finetune.clone(), epoch },
                        after: vec![finetune.clone()],
                    });
                }
            }
        }
        Plan { nodes }
    }

    pub fn count(&self, pred: impl Fn(&NodeKind) -> bool) -> usize {
        self.nodes.iter().filter(|n| pred(&n.kind)).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_text_run_one_cooldown_per_point_and_seed_one_eval_per_epoch() {
        let mut config: StudyConfig = toml::from_str(include_str!("../../../configs/study/smoke.toml")).unwrap();
        config.grid.seeds = vec![0, 1];
        (config.finetune.epochs, config.finetune.compare_epoch) = (3, 2);
        let plan = Plan::build(&config);
        let points = config.points().len();
        assert_eq!(plan.count(|k| matches!(k, NodeKind::Pretrain)), 1);
        assert_eq!(plan.count(|k| matches!(k, NodeKind::ImageCorpus)), 1);
        assert_eq!(plan.count(|k| matches!(k, NodeKind::EvalTextBaseline)), 1, "one text-only baseline, shared by every seed");
        assert_eq!(plan.count(|k| matches!(k, NodeKind::Cooldown { .. })), points * 2);
        assert_eq!(plan.count(|k| matches!(k, NodeKind::Finetune { .. })), points * 2);
        let evals_per_seed = config.finetune.epochs as usize + (points - 1);
        let trained: Vec<u32> = plan.nodes.iter().filter_map(|n| if let NodeKind::Finetune { epochs, .. } = n.kind { Some(epochs) } else { None }).collect();
        assert_eq!(trained.iter().filter(|&&e| e == config.finetune.epochs).count(), 2, "only the base point trains every epoch");
        assert!(trained.iter().all(|&e| e == config.finetune.epochs || e == config.finetune.compare_epoch));
        assert_eq!(plan.count(|k| matches!(k, NodeKind::Eval { .. })), 2 * evals_per_seed);
        // Every dependency appears before the node that needs it.
        for (i, node) in plan.nodes.iter().enumerate() {
            for dep in &node.after {
                let j = plan.nodes.iter().position(|n| &n.id == dep).expect("dependency exists");
                assert!(j < i, "{} depends on later node {dep}", node.id);
            }
        }
        let ids: std::collections::BTreeSet<_> = plan.nodes.iter().map(|n| &n.id).collect();
        assert_eq!(ids.len(), plan.nodes.len(), "node ids are unique");
    }
}
