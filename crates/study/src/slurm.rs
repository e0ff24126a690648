//! The Slurm executor: each plan node is one `sbatch` job running `vlmix study run-node RUN NODE`,
//! chained with `--dependency=afterok:` on its parents' jobs, then one job that writes the results and
//! the report.
//!
//! The run directory stays the source of truth: a node is finished exactly when its `done.json`
//! exists, as with the local executor. `slurm/jobs.json` records the job of every node (and the ones
//! before it), so a re-submission asks `squeue` which are still queued or running, skips those and
//! finished nodes, and submits the rest; a failed or cancelled node is retried that way. Jobs are
//! submitted with `--kill-on-invalid-dep=yes`, so the dependants of a failed node are cancelled by
//! Slurm rather than left pending forever.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use vlmix_atomic_file::write_atomic;

use crate::config::ExecutorConfig;
use crate::executor::StudyDir;
use crate::plan::{NodeKind, Plan};

/// The pseudo node id of the final job, which writes `results.json` and the report.
pub const RESULTS: &str = "results";

/// One submitted job.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct JobRecord {
    pub job_id: String,
    pub submitted_at: String,
    /// Jobs of earlier submissions of the same node, oldest first.
    #[serde(default)]
    pub previous: Vec<String>,
}

/// `slurm/jobs.json`: the latest job of each node and of the results job.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct JobBook {
    pub jobs: BTreeMap<String, JobRecord>,
}

pub fn slurm_dir(root: &Path) -> PathBuf {
    root.join("slurm")
}

impl JobBook {
    pub fn load(root: &Path) -> Result<Self> {
        let path = slurm_dir(root).join("jobs.json");
        match std::fs::read_to_string(&path) {
            Ok(text) => serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }

    fn save(&self, root: &Path) -> Result<()> {
        write_atomic(&slurm_dir(root).join("jobs.json"), serde_json::to_string_pretty(self)?.as_bytes())
    }

    fn record(&mut self, id: &str, job_id: String) {
        let previous = match self.jobs.remove(id) {
            Some(old) => [old.previous, vec![old.job_id]].concat(),
            None => vec![],
        };
        self.jobs.insert(id.to_string(), JobRecord { job_id, submitted_at: crate::executor::now_rfc3339(), previous });
    }
}

/// Slurm job states in which a job still holds or will take resources.
const ACTIVE: [&str; 12] = [
    "PENDING",
    "RUNNING",
    "CONFIGURING",
    "COMPLETING",
    "SUSPENDED",
    "REQUEUED",
    "REQUEUE_HOLD",
    "REQUEUE_FED",
    "RESIZING",
    "SIGNALING",
    "STAGE_OUT",
    "STOPPED",
];

/// What Slurm knows of a job.
#[derive(Clone, Debug, PartialEq)]
pub struct JobState {
    pub state: String,
    /// Elapsed wall time as Slurm prints it (`M:SS`, `H:MM:SS`, `D-HH:MM:SS`).
    pub elapsed: String,
}

impl JobState {
    pub fn is_active(&self) -> bool {
        ACTIVE.contains(&self.state.as_str())
    }
}

fn run_tool(cmd: &mut Command) -> Result<String> {
    let name = format!("{:?}", cmd.get_program());
    let out = cmd.output().with_context(|| format!("running {name} (is Slurm installed and on PATH?)"))?;
    if !out.status.success() {
        bail!("{name} failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// States of this user's jobs that Slurm still lists (`squeue` keeps finished jobs for `MinJobAge`).
fn queue() -> Result<BTreeMap<String, JobState>> {
    let text = run_tool(Command::new("squeue").args(["--me", "-h", "-t", "all", "-o", "%i|%T|%M"]))?;
    Ok(parse_states(&text))
}

/// Final states from the accounting database, where the cluster has one (`sacct`); empty otherwise.
fn accounting(ids: &[&str]) -> BTreeMap<String, JobState> {
    if ids.is_empty() {
        return BTreeMap::new();
    }
    run_tool(Command::new("sacct").args(["-n", "-P", "-X", "-o", "JobID,State,Elapsed", "-j", &ids.join(",")]))
        .map(|t| parse_states(&t))
        .unwrap_or_default()
}

/// `id|STATE|elapsed` lines; `CANCELLED by 0` keeps its first word.
fn parse_states(text: &str) -> BTreeMap<String, JobState> {
    text.lines()
        .filter_map(|line| {
            let mut parts = line.trim().split('|');
            let id = parts.next()?.trim().to_string();
            let state = parts.next()?.split_whitespace().next()?.to_string();
            let elapsed = parts.next().unwrap_or("").trim().to_string();
            (!id.is_empty()).then_some((id, JobState { state, elapsed }))
        })
        .collect()
}

/// A value for a POSIX shell, single-quoted.
fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// How a job runs its node: the binary, the run directory and the prepared data, all absolute.
pub struct Launch {
    pub exe: PathBuf,
    pub root: PathBuf,
    pub data: Option<PathBuf>,
    pub workdir: PathBuf,
}

/// The batch script of one job: resources from `[executor]`, its log in `log_dir`, then the command.
/// `ranks` is the data-parallel shape (machines, tasks per machine, GPUs per machine) of training nodes.
pub fn job_script(
    exec: &ExecutorConfig,
    launch: &Launch,
    study_name: &str,
    id: &str,
    log_dir: &Path,
    training: bool,
) -> String {
    let mut s = String::from("#!/bin/bash\n");
    let mut line = |l: String| {
        let _ = writeln!(s, "#SBATCH {l}");
    };
    line(format!("--job-name={}", quote(&format!("vlmix:{study_name}:{id}"))));
    line(format!("--output={}", quote(&log_dir.join("slurm-%j.log").display().to_string())));
    line(format!("--chdir={}", quote(&launch.workdir.display().to_string())));
    if let Some(p) = &exec.partition {
        line(format!("--partition={}", quote(p)));
    }
    if let Some(a) = &exec.account {
        line(format!("--account={}", quote(a)));
    }
    if let Some(t) = &exec.time {
        line(format!("--time={}", quote(t)));
    }
    if let Some(c) = exec.cpus_per_task {
        line(format!("--cpus-per-task={c}"));
    }
    if let Some(m) = &exec.mem {
        line(format!("--mem={}", quote(m)));
    }
    let ranks = if training { exec.train_nodes * exec.train_tasks_per_node } else { 1 };
    if training {
        line(format!("--nodes={}", exec.train_nodes));
        line(format!("--ntasks-per-node={}", exec.train_tasks_per_node));
        if let Some(g) = exec.train_gpus_per_node {
            line(format!("--gpus-per-node={g}"));
        }
    }
    for extra in &exec.sbatch_lines {
        line(extra.trim().to_string());
    }
    let mut cmd = format!(
        "{} study run-node {} {}",
        quote(&launch.exe.display().to_string()),
        quote(&launch.root.display().to_string()),
        quote(id)
    );
    if let Some(data) = &launch.data {
        let _ = write!(cmd, " --data {}", quote(&data.display().to_string()));
    }
    // More than one rank: srun starts them all, each reading its rank from SLURM_PROCID.
    let _ = writeln!(s, "set -euo pipefail\n{}{cmd}", if ranks > 1 { "srun --kill-on-bad-exit=1 " } else { "exec " });
    s
}

fn sbatch(script: &Path, deps: &[String]) -> Result<String> {
    let mut cmd = Command::new("sbatch");
    cmd.args(["--parsable", "--kill-on-invalid-dep=yes"]);
    if !deps.is_empty() {
        cmd.arg(format!("--dependency=afterok:{}", deps.join(":")));
    }
    let out = run_tool(cmd.arg(script)).with_context(|| format!("submitting {}", script.display()))?;
    // `--parsable` prints `id` or `id;cluster`.
    let id = out.trim().split(';').next().unwrap_or("").to_string();
    if id.is_empty() || !id.chars().all(|c| c.is_ascii_digit() || c == '_') {
        bail!("sbatch printed {out:?}, not a job id");
    }
    Ok(id)
}

/// What a submission did.
#[derive(Debug, Default)]
pub struct Submission {
    /// Nodes submitted now, with their jobs.
    pub submitted: Vec<(String, String)>,
    /// Nodes left alone because their job is still queued or running.
    pub active: Vec<(String, String)>,
    pub done: usize,
    /// The results job, when one was submitted now or is still queued.
    pub results_job: Option<String>,
}

/// Submits every node of `plan` that is neither finished nor queued/running, then the results job.
pub fn submit(
    plan: &Plan,
    study: &StudyDir,
    exec: &ExecutorConfig,
    launch: &Launch,
    study_name: &str,
) -> Result<Submission> {
    exec.validate()?;
    let dir = slurm_dir(&study.root);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    // Two submitters at once would submit the same nodes twice.
    let lock_path = dir.join(".submit.lock");
    let lock = crate::executor::open_lock_file(&lock_path)?;
    if lock.try_lock().is_err() {
        bail!("another `vlmix study --executor slurm` is submitting {} right now", study.root.display());
    }
    let mut book = JobBook::load(&study.root)?;
    let queue = queue()?;
    let active = |book: &JobBook, id: &str| {
        book.jobs.get(id).filter(|r| queue.get(&r.job_id).is_some_and(JobState::is_active)).map(|r| r.job_id.clone())
    };
    let mut out = Submission::default();
    // The job each unfinished node waits on: an active one, or the one submitted now.
    let mut pending: BTreeMap<String, String> = BTreeMap::new();
    let mut kept = std::collections::BTreeSet::new();
    for node in &plan.nodes {
        if study.done(&node.id)?.is_some() {
            out.done += 1;
            continue;
        }
        if let Some(job) = active(&book, &node.id) {
            // Kept only while every parent is finished or kept too: a job waiting on a dead parent's
            // job would be cancelled by Slurm, so it is replaced by one waiting on the parent's new job.
            if node.after.iter().all(|p| kept.contains(p) || study.done(p).is_ok_and(|d| d.is_some())) {
                out.active.push((node.id.clone(), job.clone()));
                kept.insert(node.id.clone());
                pending.insert(node.id.clone(), job);
                continue;
            }
            run_tool(Command::new("scancel").arg(&job))
                .with_context(|| format!("cancelling job {job} of {}, which waits on a failed job", node.id))?;
        }
        let deps: Vec<String> = node.after.iter().filter_map(|p| pending.get(p).cloned()).collect();
        let node_dir = study.node_dir(&node.id);
        std::fs::create_dir_all(&node_dir).with_context(|| format!("creating {}", node_dir.display()))?;
        let training = matches!(node.kind, NodeKind::Pretrain | NodeKind::Cooldown { .. } | NodeKind::Finetune { .. });
        let script = node_dir.join("slurm-job.sh");
        write_atomic(&script, job_script(exec, launch, study_name, &node.id, &node_dir, training).as_bytes())?;
        let job = sbatch(&script, &deps)?;
        book.record(&node.id, job.clone());
        // Saved after every job, so a failure half-way still knows what it submitted.
        book.save(&study.root)?;
        out.submitted.push((node.id.clone(), job.clone()));
        pending.insert(node.id.clone(), job);
    }
    let old_results = active(&book, RESULTS);
    let results_current = results_newer_than_nodes(plan, study);
    out.results_job = match old_results {
        // Still waiting on exactly the jobs that are still queued: nothing changed.
        Some(job) if out.submitted.is_empty() => Some(job),
        old => {
            if let Some(job) = old {
                run_tool(Command::new("scancel").arg(&job)).context("cancelling the previous results job")?;
            }
            if out.submitted.is_empty() && pending.is_empty() && results_current {
                None
            } else {
                let script = dir.join("results-job.sh");
                let exec = ExecutorConfig { cpus_per_task: Some(1), ..exec.clone() };
                write_atomic(&script, job_script(&exec, launch, study_name, RESULTS, &dir, false).as_bytes())?;
                let job = sbatch(&script, &pending.values().cloned().collect::<Vec<_>>())?;
                book.record(RESULTS, job.clone());
                book.save(&study.root)?;
                Some(job)
            }
        }
    };
    Ok(out)
}

/// Whether `results.json` was written after every node finished.
fn results_newer_than_nodes(plan: &Plan, study: &StudyDir) -> bool {
    let modified = |p: PathBuf| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    let Some(results) = modified(study.root.join("results.json")) else { return false };
    plan.nodes.iter().all(|n| modified(study.node_dir(&n.id).join("done.json")).is_some_and(|t| t <= results))
}

/// Written by the results job after the results and the report, with its wall time.
pub fn results_done_path(root: &Path) -> PathBuf {
    slurm_dir(root).join("results-done.json")
}

/// One line of `vlmix study status`.
#[derive(Clone, Debug, PartialEq)]
pub struct StatusRow {
    pub node: String,
    /// `done`, a Slurm state in lower case (`pending`, `running`, `failed`, `cancelled`, ...), or
    /// `not submitted`.
    pub state: String,
    pub job: Option<String>,
    /// Wall time: the node's own record when finished, Slurm's elapsed time otherwise.
    pub wall: String,
}

/// The state of every node of a run directory and of its results job.
pub fn status(plan: &Plan, root: &Path) -> Result<Vec<StatusRow>> {
    let book = JobBook::load(root)?;
    // A run never submitted to Slurm needs no Slurm to show.
    let queue = if book.jobs.is_empty() { BTreeMap::new() } else { queue()? };
    let unlisted: Vec<&str> =
        book.jobs.values().map(|r| r.job_id.as_str()).filter(|id| !queue.contains_key(*id)).collect();
    let finished = accounting(&unlisted);
    let mut rows = Vec::new();
    let ids = plan.nodes.iter().map(|n| n.id.as_str()).chain([RESULTS]);
    for id in ids {
        let log_dir = if id == RESULTS { slurm_dir(root) } else { root.join("nodes").join(id) };
        let done_path = if id == RESULTS { results_done_path(root) } else { log_dir.join("done.json") };
        let job = book.jobs.get(id).map(|r| r.job_id.clone());
        let known = job.as_ref().and_then(|j| queue.get(j).or_else(|| finished.get(j)));
        let done_wall = std::fs::read_to_string(&done_path).ok().map(|t| {
            serde_json::from_str::<serde_json::Value>(&t)
                .ok()
                .and_then(|v| v["wall_s"].as_f64())
                .map_or_else(String::new, |s| format!("{s:.0} s"))
        });
        // Results written by an earlier job are not those of a results job still queued.
        let done_wall = done_wall.filter(|_| id != RESULTS || !known.is_some_and(JobState::is_active));
        let (state, wall) = match (done_wall, known) {
            (Some(wall), _) => ("done".to_string(), wall),
            (None, Some(s)) => (s.state.to_lowercase(), s.elapsed.clone()),
            // Slurm forgot the job: it ran (its log exists) and did not finish, or never started.
            (None, None) => match &job {
                Some(j) if log_dir.join(format!("slurm-{j}.log")).exists() => ("failed".into(), String::new()),
                Some(_) => ("cancelled".into(), String::new()),
                None => ("not submitted".into(), String::new()),
            },
        };
        rows.push(StatusRow { node: id.to_string(), state, job, wall });
    }
    Ok(rows)
}

/// Cancels every queued or running job of the run; returns the jobs cancelled.
pub fn cancel(root: &Path) -> Result<Vec<String>> {
    let book = JobBook::load(root)?;
    if book.jobs.is_empty() {
        return Ok(vec![]);
    }
    let queue = queue()?;
    let jobs: Vec<String> = book
        .jobs
        .values()
        .map(|r| r.job_id.clone())
        .filter(|j| queue.get(j).is_some_and(JobState::is_active))
        .collect();
    if !jobs.is_empty() {
        run_tool(Command::new("scancel").args(&jobs))?;
    }
    Ok(jobs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ExecutorKind;

    fn launch() -> Launch {
        Launch {
            exe: "/opt/vlmix".into(),
            root: "/runs/it's".into(),
            data: Some("/data".into()),
            workdir: "/home".into(),
        }
    }

    #[test]
    fn job_scripts_carry_resources_logs_and_quoted_paths() {
        let exec: ExecutorConfig = toml::from_str(
            "type = \"slurm\"\npartition = \"gpu\"\ntime = \"1:00:00\"\ncpus_per_task = 8\ntrain_nodes = 2\ntrain_tasks_per_node = 4\ntrain_gpus_per_node = 4\nsbatch_lines = [\"--qos=high\"]",
        )
        .unwrap();
        assert_eq!(exec.kind, ExecutorKind::Slurm);
        let train = job_script(&exec, &launch(), "mini", "pretrain", Path::new("/runs/x/nodes/pretrain"), true);
        for want in [
            "#SBATCH --partition='gpu'",
            "#SBATCH --nodes=2",
            "#SBATCH --ntasks-per-node=4",
            "#SBATCH --gpus-per-node=4",
            "#SBATCH --qos=high",
            "--output='/runs/x/nodes/pretrain/slurm-%j.log'",
        ] {
            assert!(train.contains(want), "{want} missing from\n{train}");
        }
        assert!(
            train.contains(
                "srun --kill-on-bad-exit=1 '/opt/vlmix' study run-node '/runs/it'\\''s' 'pretrain' --data '/data'"
            ),
            "{train}"
        );
        let eval = job_script(&exec, &launch(), "mini", "eval-x", Path::new("/l"), false);
        assert!(eval.contains("exec '/opt/vlmix'") && !eval.contains("--nodes") && !eval.contains("srun"), "{eval}");
    }

    #[test]
    fn unknown_executor_fields_and_names_are_refused() {
        assert!(toml::from_str::<ExecutorConfig>("partitions = \"x\"").is_err());
        assert!("kubernetes".parse::<ExecutorKind>().is_err());
        assert_eq!("slurm".parse::<ExecutorKind>().unwrap(), ExecutorKind::Slurm);
    }

    #[test]
    fn queue_lines_parse_with_reasons_dropped() {
        let states = parse_states("12|RUNNING|0:42\n13|CANCELLED by 0|0:00\n\n");
        assert!(states["12"].is_active());
        assert_eq!(states["13"].state, "CANCELLED");
        assert!(!states["13"].is_active());
    }

    #[test]
    fn resubmitted_nodes_keep_their_earlier_jobs() {
        let mut book = JobBook::default();
        book.record("a", "1".into());
        book.record("a", "2".into());
        assert_eq!(book.jobs["a"].job_id, "2");
        assert_eq!(book.jobs["a"].previous, vec!["1"]);
    }
}
