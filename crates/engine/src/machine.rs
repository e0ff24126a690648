//! What machine this is, in words, for benchmark records and reports.

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

#[cfg(test)]
mod tests {
    #[test]
    fn names_the_cpu() {
        let name = super::cpu_model();
        assert!(!name.is_empty() && !name.contains("model name") && !name.starts_with(':'), "{name:?}");
    }
}
