//! The LM as a [`Trainable`] over plain token batches (text pre-training).

use anyhow::Result;
use vlmix_engine::params::ParamStore;
use vlmix_models::lm::{Lm, LmInput};

use crate::trainer::Trainable;

/// `batch` sequences of `seq` tokens; position `t` predicts `targets[t]` where `loss_mask[t] > 0`.
#[derive(Clone, Debug, PartialEq)]
pub struct TokenBatch {
    pub batch: usize,
    pub seq: usize,
    pub inputs: Vec<u32>,
    pub targets: Vec<u32>,
    pub loss_mask: Vec<f32>,
}

pub struct TextModel {
    pub lm: Lm,
    pub params: ParamStore,
}

impl Trainable for TextModel {
    type Batch = TokenBatch;

    fn params(&self) -> &ParamStore {
        &self.params
    }

    fn params_mut(&mut self) -> &mut ParamStore {
        &mut self.params
    }

    fn forward_backward(&mut self, b: &TokenBatch) -> Result<f32> {
        let input = LmInput::tokens(b.batch, b.seq, &b.inputs);
        Ok(self.lm.forward_backward(&mut self.params, &input, &b.targets, &b.loss_mask, 1.0, None)?.loss)
    }
}
