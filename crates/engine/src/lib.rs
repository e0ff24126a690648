//! The vlmix training engine: buffers, kernels and layers with explicit forward and backward.
//!
//! [`device::Device`] is the memory + kernel interface; [`cpu::Cpu`] implements it with OpenBLAS and
//! rayon. [`layers`] hold each layer's forward and backward, written against `Device` only.
pub mod blas;
pub mod cpu;
pub mod cuda;
pub mod device;
pub mod device_choice;
pub mod layers;

pub use cpu::Cpu;
pub use cuda::Cuda;
pub use device::{
    AdamWStep, AttnShape, Device, DeviceMemory, FlashHeadDims, GeluKind, Gemm, LossStats, OnDevice, SavedAttention,
    ZLossTerm,
};
pub use device_choice::{DeviceChoice, DeviceKind};
pub mod adamw;
pub mod atomic_file;
pub mod checkpoint;
pub mod grad_clip;
pub mod machine;
pub mod mutation;
pub mod nonfinite;
pub mod params;
pub mod safetensors_io;
pub mod torch_file;
