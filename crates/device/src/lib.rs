//! Which device a command or a study computes on: the one definition behind the CLI's `--device` /
//! `--precision` flags and a study config's `device` / `precision` keys, and the one place a choice
//! is opened.
//!
//! The one crate that sees both the engine's CPU and the CUDA backend (`vlmix-cuda`). Everything
//! above them is generic over [`Device`](vlmix_engine::Device); [`on_device!`] hands the
//! opened device to such generic code, so each caller instantiates it for `Cpu` and `Cuda` in one
//! expression instead of writing the two paths out.

use std::fmt;
use std::str::FromStr;

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

use vlmix_cuda::Cuda;
/// The precision of a choice's matrix products (defined by the CUDA backend, the only device with
/// more than f32), re-exported so callers of [`DeviceChoice`] need only this crate.
pub use vlmix_cuda::Precision;
use vlmix_engine::Cpu;

/// Where to compute. Spelled `cpu` / `cuda` in flags and study configs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceKind {
    /// OpenBLAS and rayon on this machine's cores.
    #[default]
    Cpu,
    /// NVIDIA GPU 0 (driver, NVRTC, cuBLAS and cuBLASLt are loaded at run time).
    Cuda,
}

impl FromStr for DeviceKind {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<DeviceKind> {
        match s {
            "cpu" => Ok(DeviceKind::Cpu),
            "cuda" => Ok(DeviceKind::Cuda),
            other => bail!("device '{other}': expected \"cpu\" or \"cuda\""),
        }
    }
}

impl fmt::Display for DeviceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DeviceKind::Cpu => "cpu",
            DeviceKind::Cuda => "cuda",
        })
    }
}

/// A device and the precision of its matrix products; the default (CPU, f32) is what every
/// command and config without the keys gets.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DeviceChoice {
    pub device: DeviceKind,
    pub precision: Precision,
}

/// The chosen device, opened.
pub enum Opened {
    Cpu(Cpu),
    Cuda(Cuda),
}

impl DeviceChoice {
    /// Refuses what cannot run, before anything is opened: the CPU computes in f32 only.
    pub fn check(&self) -> Result<()> {
        if self.device == DeviceKind::Cpu && self.precision != Precision::F32 {
            bail!("precision {} needs device cuda (the CPU computes in f32)", self.precision);
        }
        Ok(())
    }

    /// Opens the device. `cuda` on a machine without a GPU or without the CUDA libraries fails
    /// here, naming what is missing and the fix (`cuda::probe`), before any work starts.
    pub fn open(&self) -> Result<Opened> {
        self.check()?;
        Ok(match self.device {
            DeviceKind::Cpu => Opened::Cpu(Cpu::new()?),
            DeviceKind::Cuda => Opened::Cuda(Cuda::with(0, self.precision)?),
        })
    }
}

/// Runs an expression generic over the device with the opened one bound to `$dev`:
/// `on_device!(choice.open()?, dev => train(dev, &spec))` compiles `train` for the CPU and for CUDA
/// and calls the one that was opened.
#[macro_export]
macro_rules! on_device {
    ($opened:expr, $dev:ident => $body:expr) => {
        match $opened {
            $crate::Opened::Cpu($dev) => $body,
            $crate::Opened::Cuda($dev) => $body,
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_bad_ones_are_refused() {
        for kind in [DeviceKind::Cpu, DeviceKind::Cuda] {
            assert_eq!(kind.to_string().parse::<DeviceKind>().unwrap(), kind);
        }
        let err = "tpu".parse::<DeviceKind>().unwrap_err().to_string();
        assert!(err.contains("'tpu'") && err.contains("\"cuda\""), "{err}");
    }

    #[test]
    fn bf16_on_the_cpu_is_refused_before_opening() {
        let choice = DeviceChoice { device: DeviceKind::Cpu, precision: Precision::Bf16 };
        let err = choice.check().unwrap_err().to_string();
        assert!(err.contains("precision bf16 needs device cuda"), "{err}");
        assert!(DeviceChoice::default().check().is_ok());
        assert!(matches!(DeviceChoice::default().open().unwrap(), Opened::Cpu(_)));
    }
}
