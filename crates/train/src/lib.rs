//! Training stages of vlmix: text pre-training, image-text cooldown, instruction fine-tuning.
pub mod metrics;
pub mod schedule;
pub mod text_model;
pub mod trainer;
