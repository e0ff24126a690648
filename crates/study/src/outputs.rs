//! What each node leaves in its `done.json` under `outputs`, typed. Paths are relative to the run
//! directory (so a run directory can move), except an imported model's absolute checkpoint.
//!
//! Each record names its stage (`"stage": "cooldown"`, ...). A `done.json` written before the tag,
//! or by no known stage, does not read: the executor sets it aside as `done.json.damaged` and runs
//! the node again ([`crate::executor::StudyDir::done`]), resuming from its last checkpoint.

use std::collections::BTreeMap;

use anyhow::{bail, Result};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use vlmix_data::byod::Skipped;

/// The outputs of one finished node.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "stage", rename_all = "snake_case")]
pub enum NodeOutputs {
    ImageCorpus(CorpusOutputs),
    Pretrain(PretrainOutputs),
    Cooldown(CooldownOutputs),
    Finetune(FinetuneOutputs),
    Eval(EvalOutputs),
    TextBaseline(TextBaselineOutputs),
}

/// `image-corpus`: the corpus file and what went into it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CorpusOutputs {
    pub corpus: String,
    pub captions: usize,
    pub conversations: usize,
    pub cache_hits: usize,
    pub cache_misses: usize,
    pub skipped_records: CorpusSkipped,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CorpusSkipped {
    pub captions: Skipped,
    pub conversations: Skipped,
}

/// `pretrain`: the kept checkpoints by fraction of the run, and the text-learning curve.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PretrainOutputs {
    pub checkpoints: FractionCheckpoints,
    /// Held-out bits-per-byte at init (fraction 0) and at every kept fraction.
    pub validation_bpb: Vec<BpbPoint>,
    pub tokens: u64,
    pub steps: u64,
    pub skipped_records: TextSkipped,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TextSkipped {
    pub text: Skipped,
}

/// Held-out bits-per-byte of the text model at `fraction` of pre-training.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct BpbPoint {
    pub fraction: f64,
    pub bits_per_byte: f64,
}

/// (fraction of the text run, checkpoint) pairs, stored as a JSON object keyed by the fraction.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FractionCheckpoints(pub Vec<(f64, String)>);

impl FractionCheckpoints {
    /// The checkpoint kept at `fraction` (equal within 1e-9).
    pub fn at(&self, fraction: f64) -> Option<&str> {
        self.0.iter().find(|(f, _)| (f - fraction).abs() < 1e-9).map(|(_, c)| c.as_str())
    }

    /// The checkpoint of the largest kept fraction.
    pub fn last(&self) -> Option<(f64, &str)> {
        self.0.iter().max_by(|a, b| a.0.total_cmp(&b.0)).map(|(f, c)| (*f, c.as_str()))
    }
}

impl Serialize for FractionCheckpoints {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.0.iter().map(|(f, c)| (format!("{f}"), c)))
    }
}

impl<'de> Deserialize<'de> for FractionCheckpoints {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let map = BTreeMap::<String, String>::deserialize(d)?;
        let mut pairs = Vec::with_capacity(map.len());
        for (key, checkpoint) in map {
            let fraction = key.parse::<f64>().map_err(|_| {
                serde::de::Error::custom(format!("`checkpoints`: key {key:?} is not a fraction of the run"))
            })?;
            pairs.push((fraction, checkpoint));
        }
        pairs.sort_by(|a, b| a.0.total_cmp(&b.0));
        Ok(Self(pairs))
    }
}

/// A cooldown: its last checkpoint and the tokens it trained on (the achieved image-token fraction
/// is `image_tokens / tokens`, `vlmix_data::mixing::achieved_image_fraction`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CooldownOutputs {
    pub checkpoint: String,
    pub fresh_schedule: bool,
    pub tokens: u64,
    pub image_tokens: u64,
}

/// A fine-tune: the checkpoint at the end of every epoch it trained.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FinetuneOutputs {
    #[serde(deserialize_with = "epochs_by_key")]
    pub epochs: BTreeMap<u32, String>,
    pub tokens: u64,
}

/// Reads the epochs' JSON object keys as numbers itself: serde's tagged-enum buffer hands a map key
/// on as the string it was, which a `u32` key refuses.
fn epochs_by_key<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<u32, String>, D::Error> {
    BTreeMap::<String, String>::deserialize(d)?
        .into_iter()
        .map(|(key, checkpoint)| {
            let epoch =
                key.parse().map_err(|_| serde::de::Error::custom(format!("`epochs`: key {key:?} is not an epoch")));
            Ok((epoch?, checkpoint))
        })
        .collect()
}

/// An eval of a fine-tuned model.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EvalOutputs {
    /// The full `eval.json`.
    pub report: String,
    pub checkpoint: String,
    pub bits_per_byte: f64,
    /// Summed loss (nats) of each validation sequence ([`vlmix_eval::BitsPerByte::sequence_nats`]):
    /// what a paired interval of two models' bits-per-byte resamples.
    pub validation_nats: Vec<f64>,
    pub vision_stable_score: Option<f64>,
    pub text_stable_score: Option<f64>,
    pub skipped_records: EvalSkipped,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct EvalSkipped {
    pub eval: Skipped,
}

/// The text-only baseline's eval: the last pre-training checkpoint, or the imported model (then
/// with its bits-per-byte, since no pre-training node records them).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TextBaselineOutputs {
    pub report: String,
    pub checkpoint: String,
    pub fraction: f64,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub imported: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub validation_bpb: Vec<BpbPoint>,
    /// The evaluated checkpoint's per-sequence validation loss (see [`EvalOutputs::validation_nats`]).
    pub validation_nats: Vec<f64>,
    pub text_stable_score: Option<f64>,
}

impl NodeOutputs {
    fn stage(&self) -> &'static str {
        match self {
            Self::ImageCorpus(_) => "an image corpus's",
            Self::Pretrain(_) => "a pre-training's",
            Self::Cooldown(_) => "a cooldown's",
            Self::Finetune(_) => "a fine-tune's",
            Self::Eval(_) => "an eval's",
            Self::TextBaseline(_) => "a text baseline's",
        }
    }

    fn wrong(&self, id: &str, expected: &str) -> anyhow::Error {
        anyhow::anyhow!("node {id} recorded {} outputs where {expected} were expected", self.stage())
    }

    pub fn pretrain(&self, id: &str) -> Result<&PretrainOutputs> {
        match self {
            Self::Pretrain(o) => Ok(o),
            _ => Err(self.wrong(id, "pre-training outputs")),
        }
    }

    pub fn cooldown(&self, id: &str) -> Result<&CooldownOutputs> {
        match self {
            Self::Cooldown(o) => Ok(o),
            _ => Err(self.wrong(id, "cooldown outputs")),
        }
    }

    pub fn finetune(&self, id: &str) -> Result<&FinetuneOutputs> {
        match self {
            Self::Finetune(o) => Ok(o),
            _ => Err(self.wrong(id, "fine-tune outputs")),
        }
    }

    pub fn eval(&self, id: &str) -> Result<&EvalOutputs> {
        match self {
            Self::Eval(o) => Ok(o),
            _ => Err(self.wrong(id, "eval outputs")),
        }
    }

    pub fn text_baseline(&self, id: &str) -> Result<&TextBaselineOutputs> {
        match self {
            Self::TextBaseline(o) => Ok(o),
            _ => Err(self.wrong(id, "text baseline outputs")),
        }
    }
}

impl FinetuneOutputs {
    /// The checkpoint at the end of `epoch`.
    pub fn epoch(&self, id: &str, epoch: u32) -> Result<&str> {
        match self.epochs.get(&epoch) {
            Some(c) => Ok(c),
            None => bail!("{id} kept no epoch {epoch}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `outputs` of every node kind as a study writes them (smoke, and the imported model's baseline).
    const RECORDS: [&str; 7] = [
        r#"{"stage": "image_corpus", "cache_hits": 1200, "cache_misses": 0, "captions": 600, "conversations": 600, "corpus": "image_corpus.json",
            "skipped_records": {"captions": {"count": 0, "first": []}, "conversations": {"count": 2, "first": ["a", "b"]}}}"#,
        r#"{"stage": "pretrain", "checkpoints": {"0.5": "nodes/pretrain/checkpoints/step-00000098", "1": "nodes/pretrain/checkpoints/step-00000195"},
            "skipped_records": {"text": {"count": 0, "first": []}}, "steps": 195, "tokens": 199680,
            "validation_bpb": [{"bits_per_byte": 8.1, "fraction": 0.0}, {"bits_per_byte": 3.2, "fraction": 0.5}, {"bits_per_byte": 3.0, "fraction": 1.0}]}"#,
        r#"{"stage": "cooldown", "checkpoint": "nodes/cooldown-at050-img030-inst000-seed0/checkpoints/step-00000052",
            "fresh_schedule": false, "image_tokens": 10486, "tokens": 34900}"#,
        r#"{"stage": "finetune", "epochs": {"1": "nodes/finetune-x/checkpoints/step-00000008", "2": "nodes/finetune-x/checkpoints/step-00000016"}, "tokens": 12288}"#,
        r#"{"stage": "eval", "bits_per_byte": 3.111280582508189, "checkpoint": "nodes/finetune-x/checkpoints/step-00000008", "report": "nodes/eval-x/eval.json",
            "skipped_records": {"eval": {"count": 0, "first": []}}, "text_stable_score": 0.05249999999999999, "validation_nats": [1.5, 2.5],
            "vision_stable_score": null}"#,
        r#"{"stage": "text_baseline", "checkpoint": "nodes/pretrain/checkpoints/step-00000195", "fraction": 1.0, "report": "nodes/eval-text-baseline/eval.json",
            "text_stable_score": 0.05249999999999999, "validation_nats": [1.5, 2.5]}"#,
        r#"{"stage": "text_baseline", "checkpoint": "/models/imported/checkpoints/step-00000000", "fraction": 1.0, "imported": true,
            "report": "nodes/eval-text-baseline/eval.json", "text_stable_score": null, "validation_bpb": [{"bits_per_byte": 2.5, "fraction": 1.0}],
            "validation_nats": [1.5, 2.5]}"#,
    ];

    #[test]
    fn records_read_as_their_stage_and_write_back_the_same_json() {
        for (text, stage) in RECORDS.iter().zip([0, 1, 2, 3, 4, 5, 5]) {
            let value: serde_json::Value = serde_json::from_str(text).unwrap();
            let outputs: NodeOutputs = serde_json::from_value(value.clone()).unwrap();
            let got = match &outputs {
                NodeOutputs::ImageCorpus(_) => 0,
                NodeOutputs::Pretrain(_) => 1,
                NodeOutputs::Cooldown(_) => 2,
                NodeOutputs::Finetune(_) => 3,
                NodeOutputs::Eval(_) => 4,
                NodeOutputs::TextBaseline(_) => 5,
            };
            assert_eq!(got, stage, "{text}");
            assert_eq!(serde_json::to_value(&outputs).unwrap(), value, "the on-disk shape is kept");
        }
    }

    #[test]
    fn pretrain_checkpoints_are_found_by_fraction_and_the_last_is_the_largest() {
        let outputs: NodeOutputs = serde_json::from_str(RECORDS[1]).unwrap();
        let pretrain = outputs.pretrain("pretrain").unwrap();
        assert_eq!(pretrain.checkpoints.at(0.5), Some("nodes/pretrain/checkpoints/step-00000098"));
        assert_eq!(pretrain.checkpoints.at(0.25), None);
        assert_eq!(pretrain.checkpoints.last(), Some((1.0, "nodes/pretrain/checkpoints/step-00000195")));
        let err = outputs.cooldown("pretrain").unwrap_err().to_string();
        assert!(err.contains("node pretrain recorded a pre-training's outputs"), "{err}");
        let finetune: NodeOutputs = serde_json::from_str(RECORDS[3]).unwrap();
        let err = finetune.finetune("f").unwrap().epoch("f", 3).unwrap_err().to_string();
        assert!(err.contains("f kept no epoch 3"), "{err}");
    }

    #[test]
    fn broken_or_untagged_outputs_do_not_read() {
        let err = serde_json::from_str::<NodeOutputs>(r#"{"stage": "cooldown", "image_tokens": 1, "tokens": 2}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("missing field `checkpoint`"), "{err}");
        let err = serde_json::from_str::<NodeOutputs>(r#"{"stage": "pretrain", "checkpoints": {"half": "c"}}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("\"half\" is not a fraction"), "{err}");
        // A record from before the stage tag: the executor reruns its node.
        let err = serde_json::from_str::<NodeOutputs>(r#"{"epochs": {}, "tokens": 1}"#).unwrap_err().to_string();
        assert!(err.contains("missing field `stage`"), "{err}");
    }
}
