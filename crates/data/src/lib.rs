//! vlmix-data: what training and eval read: the tokenizer, standard-format readers and writers, token
//! shards, the VLM sequence and batch (`sequence`, `vlm_batch`), packing and token-ratio mixing, and
//! the bring-your-own-data readers. Paths live in
//! [`layout::DataLayout`]. The one-off ingestion of registry packages is vlmix-ingest.
pub mod byod;
pub mod image_texts;
pub mod jsonl;
pub mod layout;
pub mod mixing;
pub mod packing;
pub mod provenance;
pub mod sequence;
pub mod text;
pub mod text_eval;
pub mod tokenizer;

pub use layout::DataLayout;

pub mod image_io;
pub mod inspect;
pub mod llava;
pub mod vl_eval;
pub mod vlm_batch;
pub mod webdataset;
