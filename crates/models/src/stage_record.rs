//! What a training stage records beside its checkpoints, and how a checkpoint is read back.
//!
//! A stage directory holds `model.toml` (the LM config its checkpoints were trained with) and, for
//! image stages, `encoder.json` (the encoder its image features come from), with checkpoints under
//! `checkpoints/step-N/`. Training writes the record; eval, chat, export, studies and the next stage
//! read it back from a checkpoint path. It lives here, below both `train` and `eval`, so reading a
//! checkpoint needs no trainer.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use vlmix_engine::params::ParamStore;
use vlmix_engine::safetensors_io::SafetensorsFile;
use vlmix_engine::Device;

use crate::lm::{Lm, LmConfig};
use crate::vision::encoder::EncoderSpec;
use crate::vision::projector::FC1_WEIGHT;
use crate::vision::tail::EncoderTail;
use crate::vlm::Vlm;

/// The LM config file of a stage directory.
pub const MODEL_CONFIG_FILE: &str = "model.toml";
/// The encoder record of an image stage's directory.
pub const ENCODER_SPEC_FILE: &str = "encoder.json";

/// A stage's record: the LM config, and the encoder of an image stage.
#[derive(Clone, Debug, PartialEq)]
pub struct StageRecord {
    pub model: LmConfig,
    pub encoder: Option<EncoderSpec>,
}

impl StageRecord {
    /// Writes the record into the stage directory `dir` (created), each file atomically.
    pub fn write(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        vlmix_atomic_file::write_atomic(&dir.join(MODEL_CONFIG_FILE), self.model.to_toml().as_bytes())?;
        if let Some(encoder) = &self.encoder {
            vlmix_atomic_file::write_atomic(&dir.join(ENCODER_SPEC_FILE), &serde_json::to_vec_pretty(encoder)?)?;
        }
        Ok(())
    }

    /// The record of the stage a checkpoint directory (`<stage dir>/checkpoints/step-N`) belongs to.
    pub fn of_checkpoint(checkpoint: &Path) -> Result<Self> {
        let stage = stage_dir_of(checkpoint)?;
        let model = LmConfig::from_toml_file(&stage.join(MODEL_CONFIG_FILE))?;
        let encoder_path = stage.join(ENCODER_SPEC_FILE);
        let encoder = match encoder_path.is_file() {
            true => {
                let bytes =
                    std::fs::read(&encoder_path).with_context(|| format!("reading {}", encoder_path.display()))?;
                Some(serde_json::from_slice(&bytes).with_context(|| format!("parsing {}", encoder_path.display()))?)
            }
            false => None,
        };
        Ok(Self { model, encoder })
    }
}

fn stage_dir_of(checkpoint: &Path) -> Result<&Path> {
    checkpoint
        .parent()
        .and_then(Path::parent)
        .with_context(|| format!("{} is not inside a stage directory", checkpoint.display()))
}

/// The weights file of a checkpoint directory.
pub fn weights_of(checkpoint: &Path) -> PathBuf {
    checkpoint.join(vlmix_engine::checkpoint::MODEL_FILE)
}

/// Loads a VLM (LM of config `model`, projector, and any trainable encoder tail its stage recorded)
/// from a checkpoint directory onto `dev`; the projector's input width is read from the weights.
pub fn load_vlm<D: Device>(dev: D, model: &LmConfig, checkpoint: &Path) -> Result<(Vlm<D>, ParamStore<D>)> {
    let weights = weights_of(checkpoint);
    let file = SafetensorsFile::open(&weights).with_context(|| format!("opening VLM weights {}", weights.display()))?;
    let (_, shape) =
        file.dtype_and_shape(FC1_WEIGHT).with_context(|| format!("{}: not a VLM checkpoint", weights.display()))?;
    anyhow::ensure!(
        shape.len() == 2,
        "{}: tensor {FC1_WEIGHT} has shape {shape:?}, expected [d_model, encoder width]",
        weights.display()
    );
    let mut params = ParamStore::new(dev);
    let lm = Lm::new(model.clone(), &mut params, 0)?;
    let tail = match StageRecord::of_checkpoint(checkpoint)?.encoder {
        Some(encoder) => EncoderTail::open(&encoder, &mut params, 0)?,
        None => None,
    };
    let mut vlm = Vlm::with_new_projector(lm, shape[1], &mut params, 0)?;
    if let Some(tail) = tail {
        vlm.set_tail(tail)?;
    }
    params.load_from(&file, true).with_context(|| format!("loading VLM from {}", checkpoint.display()))?;
    Ok((vlm, params))
}
