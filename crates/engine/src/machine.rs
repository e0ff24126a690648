//! What machine this is: in words, for benchmark records and reports, and how much memory it has
//! left, for the CPU device's memory plans.

use std::path::Path;

use anyhow::{Context, Result};

/// The CPU's model name from `/proc/cpuinfo` (the architecture where there is none).
pub fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_else(|| std::env::consts::ARCH.to_string())
}

/// Bytes this process may still allocate: `MemAvailable` from /proc/meminfo, or the cgroup's
/// remaining limit when that is lower (containers often see the host's MemAvailable).
pub fn available_memory() -> Result<u64> {
    let text = std::fs::read_to_string("/proc/meminfo")
        .context("reading /proc/meminfo for MemAvailable (memory planning needs Linux)")?;
    let mut available = meminfo_available(&text).context("/proc/meminfo has no MemAvailable line")?;
    let cgroup = |name: &str| {
        std::fs::read_to_string(Path::new("/sys/fs/cgroup").join(name)).ok().and_then(|t| t.trim().parse::<u64>().ok())
    };
    if let (Some(max), Some(current)) = (cgroup("memory.max"), cgroup("memory.current")) {
        available = available.min(max.saturating_sub(current));
    }
    Ok(available)
}

fn meminfo_available(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    #[test]
    fn mem_available_is_read_in_bytes() {
        let text = "MemTotal:       24000000 kB\nMemFree:         1000 kB\nMemAvailable:   23537392 kB\n";
        assert_eq!(super::meminfo_available(text), Some(23537392 * 1024));
        assert_eq!(super::meminfo_available("MemTotal: 1 kB\n"), None);
        assert!(super::available_memory().unwrap() > 0);
    }

    #[test]
    fn names_the_cpu() {
        let name = super::cpu_model();
        assert!(!name.is_empty() && !name.contains("model name") && !name.starts_with(':'), "{name:?}");
    }
}
