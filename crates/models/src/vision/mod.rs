//! Vision encoders (EfficientNet-Lite0, SigLIP, patch projection), image preprocessing, the on-disk
//! feature cache for frozen encoders, the trainable encoder tail, and the projector into the LM's width.
pub mod bench;
pub mod conv;
pub mod efficientnet;
pub mod encoder;
pub mod feature_cache;
pub mod patch_projection;
pub mod patches;
pub mod preprocess;
pub mod projector;
pub mod resample;
pub mod siglip;
mod siglip_tape;
pub mod tail;
pub mod weights;
