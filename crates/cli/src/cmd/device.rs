//! `--device cpu|cuda` and `--precision f32|bf16`: which engine device a command computes on. The
//! values and their opening live in `vlmix_device`, shared with study configs.

use clap::Args;
use vlmix_device::{DeviceChoice, DeviceKind, Precision};

#[derive(Args, Clone, Copy, Debug)]
pub struct DeviceArgs {
    /// Where to compute: cpu (OpenBLAS and rayon on this machine's cores) or cuda (NVIDIA GPU 0; the
    /// driver, NVRTC, cuBLAS and cuBLASLt are loaded at run time). Default: cpu, or the study
    /// config's `device` for the stage commands.
    #[arg(long, value_name = "cpu|cuda")]
    pub device: Option<DeviceKind>,
    /// Inputs of the matrix products: f32 (exact parity with the CPU) or bf16 (CUDA only: bf16
    /// inputs, fp32 accumulation; weights, optimizer state and loss stay f32). Default: f32, or the
    /// study config's `precision` for the stage commands.
    #[arg(long, value_name = "f32|bf16")]
    pub precision: Option<Precision>,
}

impl DeviceArgs {
    /// The flags over `default` (a study config's choice, or CPU f32).
    pub fn choice_over(&self, default: DeviceChoice) -> DeviceChoice {
        DeviceChoice {
            device: self.device.unwrap_or(default.device),
            precision: self.precision.unwrap_or(default.precision),
        }
    }

    /// The flags over CPU f32.
    pub fn choice(&self) -> DeviceChoice {
        self.choice_over(DeviceChoice::default())
    }
}
