//! vlmix-models
