//! vlmix-data
