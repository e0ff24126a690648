//! vlmix-data: registry-package ingestion, tokenizer, standard-format readers and writers, packing and
//! token-ratio mixing. Paths live in [`layout::DataLayout`].
pub mod layout;

pub use layout::DataLayout;
