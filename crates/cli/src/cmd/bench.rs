use clap::Subcommand;

#[derive(Subcommand)]
pub enum BenchCommand {
    /// Full training step of the reference model (owned by the engine work).
    Train,
}

pub fn run(_cmd: BenchCommand) -> anyhow::Result<()> {
    anyhow::bail!("bench: not built yet")
}
