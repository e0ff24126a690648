//! vlmix-models: the OpenLM decoder LM and, on top of it, the vision-language model.
pub mod lm;
pub mod memory;
pub mod stage_record;
pub mod vision;
pub mod vlm;
