//! `vlmix import openlm`: an open_lm checkpoint (torch training checkpoint or Hugging Face
//! directory) becomes a vlmix checkpoint directory that stages, `eval`, `chat` and studies
//! (`[pretrain] from`) read like a finished text pre-training.
use anyhow::{bail, Context, Result};
use std::path::PathBuf;
use vlmix_atomic_file::write_atomic;
use vlmix_engine::checkpoint::{LATEST_FILE, MODEL_FILE};
use vlmix_models::lm::openlm_io::{import_openlm, ImportOptions, InvFreqPolicy};
use vlmix_models::stage_record::StageRecord;

#[derive(clap::Subcommand)]
pub enum ImportCommand {
    /// An open_lm checkpoint: `epoch_N.pt` (torch, keys with or without `module.`) or a Hugging Face
    /// directory (`model.safetensors` with `model.` keys + `config.json`, as DCLM-1B ships).
    Openlm(Args),
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum InvFreq {
    /// Exact frequencies; warn up to 1e-3 difference from the stored ones, refuse beyond.
    Check,
    /// The stored frequencies, as open_lm uses them (recorded in model.toml).
    Keep,
    /// Exact frequencies whatever the stored ones are (warns).
    Exact,
}

#[derive(clap::Args)]
pub struct Args {
    /// The checkpoint file or Hugging Face directory.
    src: PathBuf,
    /// Output directory: model.toml, checkpoints/step-00000000/model.safetensors, import.json.
    #[arg(long)]
    out: PathBuf,
    /// open_lm model config (`model_configs/*.json` or an HF config.json); default: config.json
    /// beside the weights. Without one, shapes are read from the tensors.
    #[arg(long)]
    config: Option<PathBuf>,
    /// What to do with stored rotary `inv_freq` buffers that differ from the exact frequencies.
    #[arg(long, value_enum, default_value = "check")]
    inv_freq: InvFreq,
}

pub fn run(command: ImportCommand) -> Result<()> {
    let ImportCommand::Openlm(args) = command;
    let checkpoints = args.out.join("checkpoints");
    if checkpoints.exists() {
        bail!("{} already holds checkpoints; import into a new directory", args.out.display());
    }
    let inv_freq = match args.inv_freq {
        InvFreq::Check => InvFreqPolicy::Check,
        InvFreq::Keep => InvFreqPolicy::Keep,
        InvFreq::Exact => InvFreqPolicy::Exact,
    };
    let imported = import_openlm(&args.src, &ImportOptions { config: args.config.clone(), inv_freq })?;
    for note in &imported.notes {
        eprintln!("{note}");
    }
    // The layout of a stage directory with one checkpoint, so every checkpoint reader accepts it.
    let step = checkpoints.join("step-00000000");
    std::fs::create_dir_all(&step).with_context(|| format!("creating {}", step.display()))?;
    imported.params.save_safetensors(&step.join(MODEL_FILE))?;
    write_atomic(&checkpoints.join(LATEST_FILE), b"step-00000000")?;
    StageRecord { model: imported.config.clone(), encoder: None }.write(&args.out)?;
    let record = serde_json::json!({
        "source": std::fs::canonicalize(&args.src).unwrap_or(args.src.clone()),
        "layout": imported.layout,
        "config": args.config,
        "notes": imported.notes,
    });
    write_atomic(&args.out.join("import.json"), &serde_json::to_vec_pretty(&record)?)?;
    let c = &imported.config;
    println!(
        "imported {} ({}): {} parameters, {} layers, d {}, {} heads, vocab {}, norm {:?}{}{} -> {}",
        args.src.display(),
        imported.layout,
        imported.params.numel(false),
        c.n_layers,
        c.d_model,
        c.n_heads,
        c.vocab,
        c.norm,
        if c.tied_embeddings { ", tied" } else { "" },
        if c.post_embed_norm { ", post_embed_norm" } else { "" },
        args.out.display()
    );
    Ok(())
}
