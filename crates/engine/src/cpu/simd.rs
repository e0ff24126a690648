//! Runtime selection of vector instructions for the fused kernels.
//!
//! The crates build for baseline x86-64 (SSE2), which leaves most of an AVX2 / AVX-512 core idle in
//! the hand-written loops. `multiversion!` compiles one kernel body three times (AVX-512, AVX2+FMA,
//! baseline) and picks the best the CPU supports, or the level [`ENV`] asks for (so an AVX-512 machine
//! can stand in for an AVX2 one), once per call.

use anyhow::{bail, Result};

/// Environment variable forcing the level: `baseline`, `avx2` or `avx512`.
pub const ENV: &str = "VLMIX_SIMD";

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Baseline,
    Avx2,
    Avx512,
}

impl Level {
    pub const ALL: [Level; 3] = [Level::Baseline, Level::Avx2, Level::Avx512];

    pub fn name(self) -> &'static str {
        match self {
            Level::Baseline => "baseline",
            Level::Avx2 => "avx2",
            Level::Avx512 => "avx512",
        }
    }
}

/// The best level this CPU supports.
pub fn detected() -> Level {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512bw")
            && std::arch::is_x86_feature_detected!("avx512dq")
            && std::arch::is_x86_feature_detected!("avx512vl")
            && std::arch::is_x86_feature_detected!("fma")
        {
            return Level::Avx512;
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
            return Level::Avx2;
        }
    }
    Level::Baseline
}

/// The level to run at: `requested` (the value of [`ENV`], if set) or else `detected`.
fn resolve(requested: Option<&str>, detected: Level) -> Result<Level> {
    let Some(requested) = requested else { return Ok(detected) };
    let names: Vec<&str> = Level::ALL.iter().map(|l| l.name()).collect();
    let Some(level) = Level::ALL.into_iter().find(|l| l.name() == requested.trim()) else {
        bail!("{ENV}={requested:?} is not a SIMD level (one of {})", names.join(", "));
    };
    if level > detected {
        bail!("{ENV}={requested}: this CPU supports at most {}", detected.name());
    }
    Ok(level)
}

/// The level the kernels run at, or why [`ENV`] cannot be honoured (checked by `Cpu::new`).
pub fn try_level() -> Result<Level> {
    static LEVEL: std::sync::OnceLock<Result<Level, String>> = std::sync::OnceLock::new();
    let level = LEVEL.get_or_init(|| {
        let requested = std::env::var(ENV).ok();
        resolve(requested.as_deref(), detected()).map_err(|e| e.to_string())
    });
    level.clone().map_err(anyhow::Error::msg)
}

/// The level the kernels run at. Panics with [`try_level`]'s error, which `Cpu::new` reports first.
pub fn level() -> Level {
    try_level().unwrap_or_else(|e| panic!("{e:#}"))
}

/// Defines `fn $name(args) -> ret` whose body is compiled for AVX-512, AVX2+FMA and baseline, and
/// dispatches on [`level`]. Everything the body calls must be `#[inline(always)]` to benefit.
#[macro_export]
macro_rules! multiversion {
    ($(#[$meta:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block) => {
        $(#[$meta])*
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            fn body($($arg: $ty),*) $(-> $ret)? $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma")]
                unsafe fn avx512($($arg: $ty),*) $(-> $ret)? { body($($arg),*) }
                #[target_feature(enable = "avx2,fma")]
                unsafe fn avx2($($arg: $ty),*) $(-> $ret)? { body($($arg),*) }
                match $crate::cpu::simd::level() {
                    // SAFETY: the CPU supports the features these variants were compiled for
                    // (`level` never returns more than `detected`).
                    $crate::cpu::simd::Level::Avx512 => return unsafe { avx512($($arg),*) },
                    $crate::cpu::simd::Level::Avx2 => return unsafe { avx2($($arg),*) },
                    $crate::cpu::simd::Level::Baseline => {}
                }
            }
            body($($arg),*)
        }
    };
}
pub use crate::multiversion;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_forced_level_is_honoured_up_to_what_the_cpu_has() {
        assert_eq!(resolve(None, Level::Avx2).unwrap(), Level::Avx2);
        assert_eq!(resolve(Some("avx2"), Level::Avx512).unwrap(), Level::Avx2);
        assert_eq!(resolve(Some("baseline"), Level::Avx2).unwrap(), Level::Baseline);
        assert_eq!(resolve(Some("avx512"), Level::Avx512).unwrap(), Level::Avx512);
        let lacking = resolve(Some("avx512"), Level::Avx2).unwrap_err().to_string();
        assert_eq!(lacking, "VLMIX_SIMD=avx512: this CPU supports at most avx2");
        let unknown = resolve(Some("sse4"), Level::Avx2).unwrap_err().to_string();
        assert_eq!(unknown, "VLMIX_SIMD=\"sse4\" is not a SIMD level (one of baseline, avx2, avx512)");
    }
}
