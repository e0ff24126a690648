//! Stops training at the first NaN/inf loss or gradient norm, before it can reach a checkpoint.

use anyhow::{bail, Result};

/// Errors when `value` (a loss or gradient norm, described by `what`) is NaN or infinite.
///
/// The training loop calls this after the forward/backward and before the optimizer step and any
/// checkpoint write, so the last good checkpoint stays the latest one.
pub fn ensure_finite(what: &str, value: f32, step: u64) -> Result<()> {
    if !value.is_finite() {
        bail!(
            "{what} is {value} at step {step}: stopping the run; the last checkpoint written before this step is kept \
             (lower the learning rate or check the data)"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_what_and_step() {
        assert!(ensure_finite("loss", 2.5, 1).is_ok());
        let err = ensure_finite("loss", f32::NAN, 17).unwrap_err().to_string();
        assert!(err.contains("loss is NaN at step 17"), "{err}");
        let err = ensure_finite("grad norm", f32::INFINITY, 3).unwrap_err().to_string();
        assert!(err.contains("grad norm is inf"), "{err}");
    }
}
