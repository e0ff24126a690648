//! `--device cpu|cuda` and `--precision f32|bf16`: which engine device a command computes on.

use anyhow::Result;
use clap::{Args, ValueEnum};
use vlmix_engine::cuda::Precision;
use vlmix_engine::{Cpu, Cuda};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum DeviceKind {
    /// OpenBLAS and rayon on this machine's cores.
    Cpu,
    /// NVIDIA GPU 0 (driver, NVRTC, cuBLAS and cuBLASLt are loaded at run time).
    Cuda,
}

/// Inputs of the matrix products on CUDA.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum PrecisionArg {
    /// As the CPU: exact parity.
    F32,
    /// bf16 inputs, fp32 accumulation; weights, optimizer state and loss stay f32.
    Bf16,
}

#[derive(Args, Clone, Copy, Debug)]
pub struct DeviceArgs {
    /// Where to compute.
    #[arg(long, value_enum, default_value = "cpu")]
    pub device: DeviceKind,
    /// Inputs of the matrix products (CUDA only).
    #[arg(long, value_enum, default_value = "f32")]
    pub precision: PrecisionArg,
}

/// The device a command runs on, opened.
pub enum Opened {
    Cpu(Cpu),
    Cuda(Cuda),
}

impl DeviceArgs {
    /// Opens the device; on a machine without a GPU or without the CUDA libraries, `--device cuda`
    /// fails here naming what is missing and the fix.
    pub fn open(&self) -> Result<Opened> {
        let precision = match self.precision {
            PrecisionArg::F32 => Precision::F32,
            PrecisionArg::Bf16 => Precision::Bf16,
        };
        Ok(match self.device {
            DeviceKind::Cpu if precision != Precision::F32 => {
                anyhow::bail!("--precision bf16 needs --device cuda (the CPU computes in f32)")
            }
            DeviceKind::Cpu => Opened::Cpu(Cpu::new()?),
            DeviceKind::Cuda => Opened::Cuda(Cuda::with(0, precision)?),
        })
    }
}
