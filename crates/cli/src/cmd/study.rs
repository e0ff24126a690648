use std::path::PathBuf;

use anyhow::Result;

#[derive(clap::Args)]
pub struct Args {
    /// Study config (TOML); presets live in configs/study/ (smoke, mini, openlm-79m, openlm-1b).
    pub config: PathBuf,
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
}

pub fn run(args: Args) -> Result<()> {
    let out = match args.out {
        Some(out) => out,
        None => default_run_dir(&vlmix_study::config::StudyConfig::load(&args.config)?.name),
    };
    let options = vlmix_study::run::RunOptions { out, data: args.data, dry_run: args.dry_run, quiet: args.quiet };
    if let Some(index) = vlmix_study::run::run(&args.config, &options)? {
        println!("report: {}", index.display());
    }
    Ok(())
}

/// `runs/<name>`, with characters that do not belong in a folder name replaced by `-`.
fn default_run_dir(name: &str) -> PathBuf {
    let safe: String = name.trim().chars().map(|c| if c.is_ascii_alphanumeric() || "-_.".contains(c) { c } else { '-' }).collect();
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
