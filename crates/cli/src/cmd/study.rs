use std::path::PathBuf;

use anyhow::Result;

#[derive(clap::Args)]
pub struct Args {
    /// Study config (TOML); presets live in configs/study/ (smoke, mini, openlm-79m, openlm-1b).
    pub config: PathBuf,
    /// Run directory; rerunning with the same directory resumes, skipping finished nodes.
    #[arg(long, default_value = "runs/study")]
    pub out: PathBuf,
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
    let options = vlmix_study::run::RunOptions { out: args.out, data: args.data, dry_run: args.dry_run, quiet: args.quiet };
    if let Some(index) = vlmix_study::run::run(&args.config, &options)? {
        println!("report: {}", index.display());
    }
    Ok(())
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
