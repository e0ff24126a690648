//! Training checkpoints: weights and AdamW moments as safetensors, the rest of the run's state
//! (step, LR schedule, token counters, data cursor) as JSON.
//!
//! Layout under a run's checkpoint root:
//! ```text
//! step-00000500/model.safetensors      parameters by name
//! step-00000500/optimizer.safetensors  exp_avg.<name>, exp_avg_sq.<name>, step in metadata
//! step-00000500/state.json             TrainState
//! latest                               "step-00000500"
//! ```
//! A checkpoint is assembled in a temporary directory, fsynced, renamed into place, and only then
//! does `latest` (replaced atomically) point at it, so a kill at any moment leaves `latest` naming
//! a complete checkpoint.

use crate::adamw::{self, AdamW};
use crate::params::ParamStore;
use crate::safetensors_io::SafetensorsFile;
use crate::Device;
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::path::{Path, PathBuf};
use vlmix_atomic_file::{sync_dir, write_atomic, TEMP_PREFIX};

pub const MODEL_FILE: &str = "model.safetensors";
pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";
pub const STATE_FILE: &str = "state.json";
pub const LATEST_FILE: &str = "latest";

/// Non-tensor state of a run; the caller owns the meaning of the opaque parts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainState {
    /// Optimizer steps completed.
    pub step: u64,
    /// LR schedule position and parameters.
    pub schedule: Value,
    /// What the run has consumed so far (e.g. tokens and image tokens); restored on resume, so a
    /// resumed run reports the same totals as an uninterrupted one.
    pub counters: Value,
    /// Where the data loader resumes.
    pub data_cursor: Value,
}

fn step_dir_name(step: u64) -> String {
    format!("step-{step:08}")
}

/// Writes a complete checkpoint for `state.step` under `root` and makes it the latest.
pub fn save_checkpoint<D: Device>(
    root: &Path,
    state: &TrainState,
    params: &ParamStore<D>,
    optimizer: &AdamW<D>,
) -> Result<PathBuf> {
    std::fs::create_dir_all(root).with_context(|| format!("creating checkpoint root {}", root.display()))?;
    // A step saved again (e.g. after a resume) gets a fresh directory: the one `latest` names is
    // never moved or modified, so there is no moment at which `latest` dangles.
    let base = step_dir_name(state.step);
    let name = (0..)
        .map(|k| if k == 0 { base.clone() } else { format!("{base}-r{k}") })
        .find(|n| !root.join(n).exists())
        .expect("unbounded search");
    let final_dir = root.join(&name);
    let temp_dir = root.join(format!("{TEMP_PREFIX}{name}-{}", std::process::id()));
    if temp_dir.exists() {
        std::fs::remove_dir_all(&temp_dir).with_context(|| format!("removing stale {}", temp_dir.display()))?;
    }
    std::fs::create_dir(&temp_dir).with_context(|| format!("creating {}", temp_dir.display()))?;
    params.save_safetensors(&temp_dir.join(MODEL_FILE))?;
    optimizer.save(&temp_dir.join(OPTIMIZER_FILE), params)?;
    let json = serde_json::to_vec_pretty(state).context("serialising train state")?;
    write_atomic(&temp_dir.join(STATE_FILE), &json)?;
    sync_dir(&temp_dir)?;
    std::fs::rename(&temp_dir, &final_dir).with_context(|| format!("renaming into {}", final_dir.display()))?;
    sync_dir(root)?;
    write_atomic(&root.join(LATEST_FILE), name.as_bytes())?;
    let superseded = |n: &str| n != name && (n == base || n.strip_prefix(&base).is_some_and(|r| r.starts_with("-r")));
    for entry in std::fs::read_dir(root).with_context(|| format!("listing {}", root.display()))? {
        let entry = entry?;
        if superseded(&entry.file_name().to_string_lossy()) {
            let dir = entry.path();
            std::fs::remove_dir_all(&dir).with_context(|| format!("removing superseded {}", dir.display()))?;
        }
    }
    Ok(final_dir)
}

/// The directory `latest` points at, or `None` when no checkpoint was ever completed.
pub fn latest_checkpoint(root: &Path) -> Result<Option<PathBuf>> {
    let latest = root.join(LATEST_FILE);
    let name = match std::fs::read_to_string(&latest) {
        Ok(name) => name,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("reading {}", latest.display())),
    };
    let name = name.trim();
    if name.is_empty() || name.contains('/') || name.starts_with('.') {
        bail!("{}: {name:?} is not a checkpoint directory name", latest.display());
    }
    let dir = root.join(name);
    if !dir.is_dir() {
        bail!("{} points at {}, which does not exist", latest.display(), dir.display());
    }
    Ok(Some(dir))
}

/// The checkpoint directory a user means by `path`: a step directory (holds `model.safetensors`), the
/// `latest` pointer file, a checkpoint root holding `latest`, or a stage directory (its
/// `checkpoints/`'s latest). Every command that takes a checkpoint resolves it here.
pub fn resolve_checkpoint(path: &Path) -> Result<PathBuf> {
    if path.join(MODEL_FILE).is_file() {
        return Ok(path.to_path_buf());
    }
    if path.is_file() && path.file_name().is_some_and(|n| n == LATEST_FILE) {
        let root = path.parent().context("`latest` has a parent directory")?;
        return latest_checkpoint(root)?.with_context(|| format!("{}: no completed checkpoint", path.display()));
    }
    for root in [path.to_path_buf(), path.join("checkpoints")] {
        if root.join(LATEST_FILE).is_file() {
            return latest_checkpoint(&root)?
                .with_context(|| format!("{}: no completed checkpoint yet", root.display()));
        }
    }
    if path.join("checkpoints").is_dir() {
        bail!("{}: no completed checkpoint yet", path.join("checkpoints").display());
    }
    if !path.exists() {
        bail!("{}: no such checkpoint, stage directory or `latest` file", path.display());
    }
    bail!(
        "{}: not a checkpoint (no {MODEL_FILE}), a `latest` pointer, nor a stage directory (no checkpoints/)",
        path.display()
    )
}

/// The `TrainState` of a checkpoint directory.
pub fn read_state(dir: &Path) -> Result<TrainState> {
    let state_path = dir.join(STATE_FILE);
    let text = std::fs::read_to_string(&state_path).with_context(|| format!("reading {}", state_path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("parsing {}", state_path.display()))
}

/// Restores parameters and optimizer from a checkpoint directory and returns its `TrainState`.
///
/// Shapes and names are checked against the live model first; nothing is half-loaded on error.
pub fn load_checkpoint<D: Device>(
    dir: &Path,
    params: &mut ParamStore<D>,
    optimizer: &mut AdamW<D>,
) -> Result<TrainState> {
    let state = read_state(dir)?;
    let model = SafetensorsFile::open(&dir.join(MODEL_FILE))?;
    params.check_file(&model, true)?;
    let optimizer_path = dir.join(OPTIMIZER_FILE);
    let optimizer_steps = adamw::saved_steps(&optimizer_path)?;
    if optimizer_steps != state.step {
        bail!("{}: optimizer has taken {optimizer_steps} steps but state.json says step {}", dir.display(), state.step);
    }
    // The optimizer load validates before changing anything; after it the model file is known good.
    optimizer.load(&optimizer_path, params)?;
    params.load_from(&model, true)?;
    Ok(state)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::adamw::AdamWConfig;
    use crate::params::{ParamFlags, ParamId};
    use crate::scratch_dir;
    use serde_json::json;

    fn model(fill: f32) -> ParamStore {
        let mut s = ParamStore::new(crate::Cpu::new().unwrap());
        s.add("w", &[512, 512], vec![fill; 512 * 512], ParamFlags::MATRIX).unwrap();
        s.add("n", &[512], vec![fill; 512], ParamFlags::NO_DECAY).unwrap();
        s
    }

    fn state(step: u64) -> TrainState {
        TrainState {
            step,
            schedule: json!({"lr": 1e-3}),
            counters: json!({"tokens": step * 64}),
            data_cursor: json!(step * 8),
        }
    }

    #[test]
    fn save_load_round_trip_and_latest() {
        let root = scratch_dir("ckpt");
        assert!(latest_checkpoint(&root).unwrap().is_none());
        let mut params = model(0.0);
        let mut opt = AdamW::new(AdamWConfig::default(), &params);
        for step in 1..=2u64 {
            params.grad_mut(ParamId(0)).fill(0.1 * step as f32);
            opt.step(&mut params, 1e-3);
            save_checkpoint(&root, &state(step), &params, &opt).unwrap();
        }
        let again = save_checkpoint(&root, &state(2), &params, &opt).unwrap();
        let dir = latest_checkpoint(&root).unwrap().unwrap();
        assert_eq!(dir, again);
        assert!(dir.ends_with("step-00000002-r1") && !root.join("step-00000002").exists());
        let mut back = model(9.0);
        let mut back_opt = AdamW::new(AdamWConfig::default(), &back);
        assert_eq!(load_checkpoint(&dir, &mut back, &mut back_opt).unwrap(), state(2));
        assert_eq!(back.value(ParamId(0)), params.value(ParamId(0)));
        assert_eq!(back_opt.exp_avg_sq(ParamId(0)), opt.exp_avg_sq(ParamId(0)));
        let leftovers: Vec<_> = std::fs::read_dir(&root)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(TEMP_PREFIX))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
        std::fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn a_checkpoint_resolves_from_its_step_dir_latest_file_root_and_stage_dir() {
        let stage = scratch_dir("ckpt-resolve");
        let root = stage.join("checkpoints");
        let params = model(1.0);
        let opt = AdamW::new(AdamWConfig::default(), &params);
        let err = resolve_checkpoint(&stage).unwrap_err().to_string();
        assert!(err.contains("not a checkpoint"), "{err}");
        std::fs::create_dir_all(&root).unwrap();
        assert!(resolve_checkpoint(&stage).unwrap_err().to_string().contains("no completed checkpoint yet"));
        save_checkpoint(&root, &state(1), &params, &opt).unwrap();
        let step = save_checkpoint(&root, &state(2), &params, &opt).unwrap();
        for path in [step.clone(), root.join(LATEST_FILE), root.clone(), stage.clone()] {
            assert_eq!(resolve_checkpoint(&path).unwrap(), step, "{}", path.display());
        }
        let missing = resolve_checkpoint(&stage.join("nope")).unwrap_err().to_string();
        assert!(missing.contains("nope: no such checkpoint"), "{missing}");
        std::fs::remove_dir_all(stage).unwrap();
    }

    #[test]
    fn shape_mismatch_leaves_model_untouched() {
        let root = scratch_dir("ckpt-shape");
        let params = model(1.0);
        let opt = AdamW::new(AdamWConfig::default(), &params);
        let dir = save_checkpoint(&root, &state(0), &params, &opt).unwrap();
        let mut other = ParamStore::new(crate::Cpu::new().unwrap());
        other.add("w", &[512, 256], vec![3.0; 512 * 256], ParamFlags::MATRIX).unwrap();
        other.add("n", &[512], vec![3.0; 512], ParamFlags::NO_DECAY).unwrap();
        let mut other_opt = AdamW::new(AdamWConfig::default(), &other);
        let err = load_checkpoint(&dir, &mut other, &mut other_opt).unwrap_err().to_string();
        assert!(err.contains("tensor w") && err.contains("[512, 512]") && err.contains("[512, 256]"), "{err}");
        assert!(other.value(ParamId(1)).iter().all(|&x| x == 3.0));
        std::fs::remove_dir_all(root).unwrap();
    }

    const KILL_CHILD_ENV: &str = "VLMIX_CHECKPOINT_KILL_CHILD_ROOT";

    /// Child side of `kill_mid_write_keeps_latest_loadable`: saves forever until killed.
    #[test]
    fn checkpoint_writer_child() {
        let Some(root) = std::env::var_os(KILL_CHILD_ENV) else { return };
        let root = PathBuf::from(root);
        let mut params = model(0.0);
        let mut opt = AdamW::new(AdamWConfig::default(), &params);
        loop {
            opt.step(&mut params, 1e-3);
            let fill = opt.steps() as f32;
            for id in params.ids().collect::<Vec<_>>() {
                params.value_mut(id).fill(fill);
            }
            save_checkpoint(&root, &state(opt.steps()), &params, &opt).unwrap();
        }
    }

    #[test]
    fn kill_mid_write_keeps_latest_loadable() {
        let root = scratch_dir("ckpt-kill");
        let exe = std::env::current_exe().unwrap();
        for delay_ms in [5u64, 23, 41, 67] {
            let mut child = std::process::Command::new(&exe)
                .args(["--exact", "checkpoint::tests::checkpoint_writer_child", "--nocapture", "--test-threads=1"])
                .env(KILL_CHILD_ENV, &root)
                .stdout(std::process::Stdio::null())
                .spawn()
                .unwrap();
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
            while latest_checkpoint(&root).map(|l| l.is_none()).unwrap_or(true) {
                assert!(std::time::Instant::now() < deadline, "child never wrote a checkpoint");
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            std::thread::sleep(std::time::Duration::from_millis(delay_ms));
            child.kill().unwrap();
            child.wait().unwrap();
            let dir = latest_checkpoint(&root).unwrap().unwrap();
            let mut params = model(-1.0);
            let mut opt = AdamW::new(AdamWConfig::default(), &params);
            let s = load_checkpoint(&dir, &mut params, &mut opt).unwrap();
            let fill = s.step as f32;
            assert!(params.value(ParamId(0)).iter().chain(params.value(ParamId(1))).all(|&x| x == fill));
        }
        std::fs::remove_dir_all(root).unwrap();
    }
}
