//! Training stages of vlmix: text pre-training, image-text cooldown, instruction fine-tuning.
pub mod corpus;
pub mod distributed;
pub mod metrics;
pub mod micro_batch;
pub mod schedule;
pub mod sources;
pub mod stages;
pub mod tensorboard;
pub mod text_model;
pub mod trainer;
pub mod vision_model;
