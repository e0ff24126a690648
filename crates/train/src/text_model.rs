//! The LM as a [`Trainable`] over plain token batches (text pre-training).

use std::ops::Range;

use anyhow::Result;
use vlmix_engine::params::ParamStore;
use vlmix_engine::{Cpu, Device};
use vlmix_models::lm::{Lm, LmInput};

use crate::micro_batch::{accumulate, mask_sum};
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

pub struct TextModel<D: Device = Cpu> {
    pub lm: Lm<D>,
    pub params: ParamStore<D>,
    /// Sequences per forward/backward pass; a batch is accumulated over passes of this size.
    pub micro_batch: usize,
}

impl<D: Device> Trainable for TextModel<D> {
    type Batch = TokenBatch;
    type Dev = D;

    fn params(&self) -> &ParamStore<D> {
        &self.params
    }

    fn params_mut(&mut self) -> &mut ParamStore<D> {
        &mut self.params
    }

    fn sequences(b: &TokenBatch) -> usize {
        b.batch
    }

    fn forward_backward(&mut self, b: &TokenBatch, rows: Range<usize>) -> Result<f32> {
        let (lm, params, seq) = (&mut self.lm, &mut self.params, b.seq);
        accumulate(
            b.batch,
            rows,
            self.micro_batch,
            |r| mask_sum(&b.loss_mask, seq, r),
            |r, scale| {
                let rows = r.start * seq..r.end * seq;
                let input = LmInput::tokens(r.len(), seq, &b.inputs[rows.clone()]);
                lm.forward_backward(params, &input, &b.targets[rows.clone()], &b.loss_mask[rows], scale, None)
            },
        )
    }
}
