//! The vlmix training engine: buffers, kernels and layers with explicit forward and backward.
//!
//! [`device::Device`] is the memory + kernel interface; [`cpu::Cpu`] implements it with OpenBLAS and
//! rayon. [`layers`] hold each layer's forward and backward, written against `Device` only.
pub mod blas;
pub mod cpu;
pub mod device;
pub mod layers;

pub use cpu::Cpu;
pub use device::{
    AdamWStep, AttnShape, Device, DeviceMemory, FlashHeadDims, GeluKind, Gemm, LossStats, OnDevice, SavedAttention,
    ZLossTerm,
};
pub mod adamw;
pub mod checkpoint;
pub mod grad_clip;
pub mod machine;
pub mod nonfinite;
pub mod params;
pub mod safetensors_io;
pub mod torch_file;

/// A fresh empty directory under the system temp dir, for unit tests.
#[cfg(test)]
pub(crate) fn scratch_dir(tag: &str) -> std::path::PathBuf {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let dir = std::env::temp_dir().join(format!(
        "vlmix-{tag}-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
