use std::path::PathBuf;

use anyhow::{Context, Result};
use vlmix_study::config::ExecutorKind;

#[derive(clap::Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct Args {
    #[command(subcommand)]
    pub command: Option<StudyCommand>,
    /// Study config (TOML); presets live in configs/study/ (smoke, mini, openlm-79m, openlm-1b).
    #[arg(required = true)]
    pub config: Option<PathBuf>,
    /// Run directory (default: runs/<the config's name>); rerunning with the same directory resumes,
    /// skipping finished nodes.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Prepared data directory (default: $VLMIX_HOME/prepared).
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Print the plan with estimated times, measured on this machine, and stop.
    #[arg(long)]
    pub dry_run: bool,
    /// No progress bars (batch use).
    #[arg(long)]
    pub quiet: bool,
    /// Leave out the config's eval tasks whose source package could not be had on this machine
    /// (`vlmix data stats` lists them) instead of stopping; the report names each one and why.
    #[arg(long)]
    pub without_missing_tasks: bool,
    /// `local` runs every node in this process; `slurm` submits one sbatch job per node and returns
    /// (rerun to retry failed nodes). Default: the config's `[executor] type`, else local.
    #[arg(long)]
    pub executor: Option<ExecutorKind>,
}

#[derive(clap::Subcommand)]
pub enum StudyCommand {
    /// Run one node of a run directory (what each Slurm job does); NODE `results` writes the results
    /// and the report once every node is finished.
    RunNode {
        run_dir: PathBuf,
        node: String,
        /// Prepared data directory (default: $VLMIX_HOME/prepared).
        #[arg(long)]
        data: Option<PathBuf>,
    },
    /// Node, state, Slurm job and wall time of every node of a run directory.
    Status { run_dir: PathBuf },
    /// Cancel the queued and running Slurm jobs of a run directory.
    Cancel { run_dir: PathBuf },
}

pub fn run(args: Args) -> Result<()> {
    match args.command {
        Some(StudyCommand::RunNode { run_dir, node, data }) => {
            return vlmix_study::run::run_node(&run_dir, &node, data.as_deref())
        }
        Some(StudyCommand::Status { run_dir }) => return status(&run_dir),
        Some(StudyCommand::Cancel { run_dir }) => {
            let jobs = vlmix_study::slurm::cancel(&run_dir)?;
            println!("cancelled {} job(s){}{}", jobs.len(), if jobs.is_empty() { "" } else { ": " }, jobs.join(" "));
            return Ok(());
        }
        None => {}
    }
    let config_path = args.config.context("a study config is required")?;
    let config = vlmix_study::config::StudyConfig::load(&config_path)?;
    let out = args.out.unwrap_or_else(|| default_run_dir(&config.name));
    let options = vlmix_study::run::RunOptions {
        out,
        data: args.data,
        dry_run: args.dry_run,
        quiet: args.quiet,
        without_missing_tasks: args.without_missing_tasks,
    };
    if args.executor.unwrap_or(config.executor.kind) == ExecutorKind::Slurm && !args.dry_run {
        let s = vlmix_study::run::submit(&config_path, &options, &config.executor)?;
        for (node, job) in &s.submitted {
            println!("submitted {node}: job {job}");
        }
        for (node, job) in &s.active {
            println!("still queued or running {node}: job {job}");
        }
        match &s.results_job {
            Some(job) => println!("results and report: job {job}"),
            None => println!("every node is finished and the results are current"),
        }
        println!("{} node(s) already finished; follow with `vlmix study status {}`", s.done, options.out.display());
        return Ok(());
    }
    if let Some(index) = vlmix_study::run::run(&config_path, &options)? {
        println!("report: {}", index.display());
    }
    Ok(())
}

fn status(run_dir: &std::path::Path) -> Result<()> {
    let rows = vlmix_study::run::status(run_dir)?;
    let width = rows.iter().map(|r| r.node.len()).max().unwrap_or(4).max(4);
    println!("{:width$}  {:13}  {:10}  wall", "node", "state", "job");
    for r in rows {
        println!("{:width$}  {:13}  {:10}  {}", r.node, r.state, r.job.as_deref().unwrap_or("-"), r.wall);
    }
    Ok(())
}

/// `runs/<name>`, with characters that do not belong in a folder name replaced by `-`.
fn default_run_dir(name: &str) -> PathBuf {
    let safe: String =
        name.trim().chars().map(|c| if c.is_ascii_alphanumeric() || "-_.".contains(c) { c } else { '-' }).collect();
    PathBuf::from("runs").join(safe.trim_start_matches('.'))
}

#[derive(clap::Args)]
pub struct ReportArgs {
    /// A study run directory.
    pub run_dir: PathBuf,
}

pub fn report(args: ReportArgs) -> Result<()> {
    let index = vlmix_study::run::report(&args.run_dir)?;
    println!("report: {}", index.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_run_dir_is_named_after_the_study() {
        assert_eq!(default_run_dir("mini"), PathBuf::from("runs/mini"));
        assert_eq!(default_run_dir("my study/v2"), PathBuf::from("runs/my-study-v2"));
        assert_eq!(default_run_dir("../escape"), PathBuf::from("runs/-escape"));
    }
}
