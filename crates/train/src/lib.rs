//! vlmix-train
