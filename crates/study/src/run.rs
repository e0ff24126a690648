//! `vlmix study`: validate the config, plan, (dry-run or) execute, tabulate, report.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use vlmix_atomic_file::write_atomic;
use vlmix_data::DataLayout;
use vlmix_device::on_device;
use vlmix_engine::Device;

use crate::config::{ExecutorConfig, StudyConfig};
use crate::estimate::print_estimate;
use crate::evaluation::{leave_out_missing_tasks, task_files};
use crate::executor::{execute, execute_node, StudyDir};
use crate::plan::Plan;
use crate::results::write_all;
use crate::runner::StudyRunner;
use crate::slurm::{self, Launch, StatusRow, Submission, RESULTS};
use vlmix_data::provenance::DataProvenance;

pub struct RunOptions {
    /// Run directory (created; an existing one resumes).
    pub out: PathBuf,
    /// Prepared data directory (default `$VLMIX_HOME/prepared`).
    pub data: Option<PathBuf>,
    pub dry_run: bool,
    pub quiet: bool,
    /// Leave out config tasks whose source package this machine could not get (named in the
    /// report) instead of stopping before training.
    pub without_missing_tasks: bool,
}

/// The loaded config, with the tasks this machine lacks left out when asked, checked against the
/// prepared data and planned: everything that can fail before a node runs.
fn checked(
    mut config: StudyConfig,
    config_path: &Path,
    options: &RunOptions,
    layout: &DataLayout,
) -> Result<(StudyConfig, Plan)> {
    let invalid = || format!("invalid study config {}", config_path.display());
    if options.without_missing_tasks {
        leave_out_missing_tasks(&mut config, layout).with_context(invalid)?;
    }
    task_files(&config, layout, true).with_context(invalid)?;
    let plan = Plan::build(&config).with_context(invalid)?;
    Ok((config, plan))
}

/// Runs (or resumes) a study and returns the report's path; `None` for a dry run.
pub fn run(config_path: &Path, options: &RunOptions) -> Result<Option<PathBuf>> {
    // The device is opened first (the dry run plans and probes on it too), so a missing GPU or CUDA
    // library stops the study before anything else is read or run.
    let config = StudyConfig::load(config_path)?;
    let opened = open_device(&config, config_path)?;
    let layout = DataLayout::from_env(options.data.as_deref())?;
    let (config, plan) = checked(config, config_path, options, &layout)?;
    on_device!(opened, dev => run_on(dev, &config, &plan, layout, options))
}

/// The config's device, opened; an error names the config and its `device` key.
fn open_device(config: &StudyConfig, config_path: &Path) -> Result<vlmix_device::Opened> {
    config
        .device_choice()
        .open()
        .with_context(|| format!("study config {}: device = \"{}\"", config_path.display(), config.device))
}

fn run_on<D: Device>(
    dev: D,
    config: &StudyConfig,
    plan: &Plan,
    layout: DataLayout,
    options: &RunOptions,
) -> Result<Option<PathBuf>> {
    if options.dry_run {
        print_estimate(&dev, config, plan, &layout)?;
        return Ok(None);
    }
    let study = StudyDir::open(&options.out)?;
    pin_config(&study, config)?;
    pin_provenance(&study, &layout)?;
    let mut runner = StudyRunner::new(config, layout, options.quiet, dev)?;
    execute(plan, &study, &mut runner)?;
    write_all(config, plan, &study).map(Some)
}

/// Submits a study to Slurm (or re-submits what is neither finished nor queued) with `executor`'s
/// resources; `vlmix study status` follows it.
pub fn submit(config_path: &Path, options: &RunOptions, executor: &ExecutorConfig) -> Result<Submission> {
    let layout = DataLayout::from_env(options.data.as_deref())?;
    let (config, plan) = checked(StudyConfig::load(config_path)?, config_path, options, &layout)?;
    std::fs::create_dir_all(&options.out)
        .with_context(|| format!("creating run directory {}", options.out.display()))?;
    let root = std::fs::canonicalize(&options.out).with_context(|| format!("resolving {}", options.out.display()))?;
    let study = StudyDir::open_shared(&root)?;
    std::fs::create_dir_all(root.join("nodes"))
        .with_context(|| format!("creating {}", root.join("nodes").display()))?;
    pin_config(&study, &config)?;
    pin_provenance(&study, &layout)?;
    let absolute = |p: &Path| std::fs::canonicalize(p).with_context(|| format!("resolving {}", p.display()));
    let launch = Launch {
        exe: std::env::current_exe().context("locating the vlmix binary for the job scripts")?,
        data: options.data.as_deref().map(absolute).transpose()?,
        workdir: std::env::current_dir().context("reading the working directory")?,
        root,
    };
    slurm::submit(&plan, &study, executor, &launch, &config.name)
}

/// The config and plan pinned in a run directory. Not validated again: that would ask for the
/// study's data files, which a report or a finished run no longer needs.
pub fn pinned(run_dir: &Path) -> Result<(StudyConfig, Plan)> {
    let path = run_dir.join("study.json");
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("{} is not a study run directory (no study.json)", run_dir.display()))?;
    let config: StudyConfig = serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    let plan = Plan::build(&config).with_context(|| format!("planning the study of {}", path.display()))?;
    Ok((config, plan))
}

/// Runs one node of a run directory (a Slurm job's work), or with `results` the results and report.
pub fn run_node(run_dir: &Path, node_id: &str, data: Option<&Path>) -> Result<()> {
    let (config, plan) = pinned(run_dir)?;
    let study = StudyDir::open_shared(run_dir)?;
    if node_id == RESULTS {
        if let Some(node) = plan.nodes.iter().find(|n| study.done(&n.id).map_or(true, |d| d.is_none())) {
            bail!("node {} is not finished; the results need every node", node.id);
        }
        let start = std::time::Instant::now();
        write_all(&config, &plan, &study)?;
        let done = serde_json::json!({ "wall_s": start.elapsed().as_secs_f64() });
        return write_atomic(&slurm::results_done_path(run_dir), done.to_string().as_bytes());
    }
    let node = plan
        .nodes
        .iter()
        .find(|n| n.id == node_id)
        .with_context(|| format!("{} has no node {node_id}", run_dir.display()))?;
    let layout = DataLayout::from_env(data)?;
    let opened = open_device(&config, &run_dir.join("study.json"))?;
    on_device!(opened, dev => execute_node(node, &study, &mut StudyRunner::new(&config, layout, true, dev)?))?;
    Ok(())
}

/// Node, state, job and wall time of every node of a Slurm-run directory.
pub fn status(run_dir: &Path) -> Result<Vec<StatusRow>> {
    let (_, plan) = pinned(run_dir)?;
    slurm::status(&plan, run_dir)
}

/// Records the prepared data's provenance (which package versions, what is missing) in the run
/// directory when the study starts; the report shows it. A resumed run keeps the first record.
fn pin_provenance(study: &StudyDir, layout: &DataLayout) -> Result<()> {
    let path = study.root.join(PROVENANCE_FILE);
    if path.is_file() {
        return Ok(());
    }
    let provenance = DataProvenance::read(layout).unwrap_or_default();
    write_atomic(&path, serde_json::to_string_pretty(&provenance)?.as_bytes())
}

/// The run directory's record of the data it was trained and evaluated on.
pub const PROVENANCE_FILE: &str = "data-provenance.json";

/// Records the config in the run directory; resuming with a different config is refused, since the
/// finished nodes would silently belong to another study.
fn pin_config(study: &StudyDir, config: &StudyConfig) -> Result<()> {
    let path = study.root.join("study.json");
    let text = serde_json::to_string_pretty(config)?;
    // Compared as configs, not as text, so fields added to the format later (with defaults) still match.
    let same = |old: &str| {
        serde_json::from_str::<StudyConfig>(old)
            .is_ok_and(|old| serde_json::to_string_pretty(&old).is_ok_and(|t| t == text))
    };
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
    let (config, plan) = pinned(run_dir)?;
    let study = StudyDir::open(run_dir)?;
    write_all(&config, &plan, &study)
}
