//! vlmix-eval
