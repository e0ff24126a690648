//! vlmix-study
