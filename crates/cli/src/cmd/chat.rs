#[derive(clap::Args)]
pub struct DescribeArgs {}
#[derive(clap::Args)]
pub struct ChatArgs {}

pub fn describe(_args: DescribeArgs) -> anyhow::Result<()> {
    anyhow::bail!("describe: not built yet")
}
pub fn chat(_args: ChatArgs) -> anyhow::Result<()> {
    anyhow::bail!("chat: not built yet")
}
