//! The VLM as a [`Trainable`] over image-text batches (cooldown and fine-tuning).

use anyhow::Result;
use vlmix_engine::params::ParamStore;
use vlmix_models::vlm::{Vlm, VlmBatch};

use crate::trainer::Trainable;

pub struct VisionModel {
    pub vlm: Vlm,
    pub params: ParamStore,
}

impl Trainable for VisionModel {
    type Batch = VlmBatch;

    fn params(&self) -> &ParamStore {
        &self.params
    }

    fn params_mut(&mut self) -> &mut ParamStore {
        &mut self.params
    }

    fn forward_backward(&mut self, batch: &VlmBatch) -> Result<f32> {
        Ok(self.vlm.forward_backward(&mut self.params, batch)?.loss)
    }
}
