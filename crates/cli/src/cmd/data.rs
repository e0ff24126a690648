use clap::Subcommand;

#[derive(Subcommand)]
pub enum DataCommand {
    /// Convert the fetched raw sources into standard formats (owned by the data work).
    Prepare,
}

pub fn run(_cmd: DataCommand) -> anyhow::Result<()> {
    anyhow::bail!("data: not built yet")
}
