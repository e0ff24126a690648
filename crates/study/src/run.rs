//! `vlmix study`: validate the config, plan, (dry-run or) execute, tabulate, report.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use vlmix_data::DataLayout;
use vlmix_engine::atomic_file::write_atomic;

use crate::config::StudyConfig;
use crate::estimate::print_estimate;
use crate::evaluation::task_files;
use crate::executor::{execute, StudyDir};
use crate::plan::Plan;
use crate::results::write_all;
use crate::runner::StudyRunner;

pub struct RunOptions {
    /// Run directory (created; an existing one resumes).
    pub out: PathBuf,
    /// Prepared data directory (default `$VLMIX_HOME/prepared`).
    pub data: Option<PathBuf>,
    pub dry_run: bool,
    pub quiet: bool,
}

/// Runs (or resumes) a study and returns the report's path; `None` for a dry run.
pub fn run(config_path: &Path, options: &RunOptions) -> Result<Option<PathBuf>> {
    let config = StudyConfig::load(config_path)?;
    let layout = DataLayout::from_env(options.data.as_deref())?;
    task_files(&config, &layout, true).with_context(|| format!("invalid study config {}", config_path.display()))?;
    let plan = Plan::build(&config).with_context(|| format!("invalid study config {}", config_path.display()))?;
    if options.dry_run {
        print_estimate(&config, &plan, &layout)?;
        return Ok(None);
    }
    let study = StudyDir::open(&options.out)?;
    pin_config(&study, &config)?;
    let mut runner = StudyRunner::new(&config, layout, options.quiet)?;
    execute(&plan, &study, &mut runner)?;
    write_all(&config, &plan, &study).map(Some)
}

/// Records the config in the run directory; resuming with a different config is refused, since the
/// finished nodes would silently belong to another study.
fn pin_config(study: &StudyDir, config: &StudyConfig) -> Result<()> {
    let path = study.root.join("study.json");
    let text = serde_json::to_string_pretty(config)?;
    // Compared as configs, not as text, so fields added to the format later (with defaults) still match.
    let same = |old: &str| serde_json::from_str::<StudyConfig>(old).is_ok_and(|old| serde_json::to_string_pretty(&old).is_ok_and(|t| t == text));
    match std::fs::read_to_string(&path) {
        Ok(old) if same(&old) => Ok(()),
        Ok(_) => bail!(
            "{} holds a study with a different config ({}); use another --out directory",
            study.root.display(),
            path.display()
        ),
        Err(_) => write_atomic(&path, text.as_bytes()),
    }
}

/// Redraws the report of an existing run directory from its finished nodes.
pub fn report(run_dir: &Path) -> Result<PathBuf> {
    let path = run_dir.join("study.json");
    let text = std::fs::read_to_string(&path).with_context(|| format!("{} is not a study run directory (no study.json)", run_dir.display()))?;
    let config: StudyConfig = serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    let study = StudyDir::open(run_dir)?;
    write_all(&config, &Plan::build(&config)?, &study)
}
