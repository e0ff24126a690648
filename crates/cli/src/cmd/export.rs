//! `vlmix export openlm`: a vlmix checkpoint's LM as an open_lm Hugging Face directory.
use anyhow::{Context, Result};
use std::path::PathBuf;
use vlmix_engine::checkpoint::resolve_checkpoint;
use vlmix_engine::params::ParamStore;
use vlmix_engine::safetensors_io::SafetensorsFile;
use vlmix_models::lm::openlm_io::export_openlm;
use vlmix_models::lm::Lm;
use vlmix_models::stage_record::{weights_of, StageRecord};

#[derive(clap::Subcommand)]
pub enum ExportCommand {
    /// model.safetensors with `model.` keys and open_lm's config.json, loadable by open_lm's
    /// `OpenLMForCausalLM` (a VLM's projector and encoder tail are left out).
    Openlm(Args),
}

#[derive(clap::Args)]
pub struct Args {
    /// Checkpoint directory (`<stage>/checkpoints/step-N`), its `latest` file, or a stage directory.
    checkpoint: PathBuf,
    #[arg(long)]
    out: PathBuf,
}

pub fn run(command: ExportCommand) -> Result<()> {
    let ExportCommand::Openlm(args) = command;
    let checkpoint = resolve_checkpoint(&args.checkpoint)?;
    let config = StageRecord::of_checkpoint(&checkpoint)?.model;
    let mut params = ParamStore::new(vlmix_engine::Cpu::new()?);
    Lm::new(config.clone(), &mut params, 0)?;
    let weights = weights_of(&checkpoint);
    let file = SafetensorsFile::open(&weights)?;
    let in_file = file.names();
    let missing: Vec<String> =
        params.ids().map(|id| params.info(id).name.clone()).filter(|n| !in_file.contains(n)).collect();
    anyhow::ensure!(missing.is_empty(), "{}: missing LM tensors {missing:?}", weights.display());
    params.load_from(&file, false).with_context(|| format!("loading the LM from {}", weights.display()))?;
    export_openlm(&config, &params, &args.out)?;
    let left_out = in_file.len() - params.len();
    println!(
        "exported the LM of {} ({} parameters{}) -> {}",
        checkpoint.display(),
        params.numel(false),
        if left_out > 0 { format!("; {left_out} non-LM tensors left out") } else { String::new() },
        args.out.display()
    );
    Ok(())
}
