//! vlmix-data: registry-package ingestion, tokenizer, standard-format readers and writers, packing and
//! token-ratio mixing. Paths live in [`layout::DataLayout`].
pub mod attribution;
pub mod byod;
pub mod image_texts;
pub mod jsonl;
pub mod layout;
pub mod mixing;
pub mod packing;
pub mod prepare;
pub mod stats;
pub mod text;
pub mod text_eval;
pub mod tokenizer;

pub use layout::DataLayout;

pub mod image_io;
pub mod images;
pub mod inspect;
pub mod llava;
pub mod vl_eval;
pub mod webdataset;
