//! vlmix-models: the OpenLM decoder LM and, on top of it, the vision-language model.
#[cfg(test)]
mod heap_count;
pub mod lm;
pub mod memory;
pub mod stage_record;
pub mod vision;
pub mod vlm;
