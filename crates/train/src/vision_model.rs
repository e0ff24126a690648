//! The VLM as a [`Trainable`] over image-text batches (cooldown and fine-tuning).

use std::ops::Range;

use anyhow::Result;
use vlmix_data::vlm_batch::VlmBatch;
use vlmix_engine::params::ParamStore;
use vlmix_engine::{Cpu, Device};
use vlmix_models::vlm::Vlm;

use crate::micro_batch::{accumulate, mask_sum};
use crate::trainer::Trainable;

pub struct VisionModel<D: Device = Cpu> {
    pub vlm: Vlm<D>,
    pub params: ParamStore<D>,
    /// Sequences per forward/backward pass; a batch is accumulated over passes of this size.
    pub micro_batch: usize,
}

impl<D: Device> Trainable for VisionModel<D> {
    type Batch = VlmBatch;
    type Dev = D;

    fn params(&self) -> &ParamStore<D> {
        &self.params
    }

    fn params_mut(&mut self) -> &mut ParamStore<D> {
        &mut self.params
    }

    fn sequences(batch: &VlmBatch) -> usize {
        batch.batch
    }

    fn forward_backward(&mut self, batch: &VlmBatch, rows: Range<usize>) -> Result<f32> {
        let (vlm, params) = (&mut self.vlm, &mut self.params);
        accumulate(
            batch.batch,
            rows,
            self.micro_batch,
            |r| mask_sum(&batch.loss_mask, batch.seq, r),
            |r, scale| {
                if r.len() == batch.batch {
                    return vlm.forward_backward_scaled(params, batch, scale);
                }
                vlm.forward_backward_scaled(params, &batch.sequences(r)?, scale)
            },
        )
    }
}
