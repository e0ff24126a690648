//! Tokenized text: the token shards training reads (written by `vlmix data prepare` and by the
//! bring-your-own-data tokenizer).
pub mod shard;
