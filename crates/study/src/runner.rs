//! Turns plan nodes into stage calls: the glue between the study config, the data, the stages and
//! evaluation. Node outputs store paths relative to the run directory, so a run directory can move.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use vlmix_data::byod::text::{open_text, DocSplit};
use vlmix_data::byod::Skipped;
use vlmix_data::sequence::VlmSequence;
use vlmix_data::text::shard::TokenShards;
use vlmix_data::tokenizer::TextTokenizer;
use vlmix_data::DataLayout;
use vlmix_engine::params::ParamStore;
use vlmix_engine::{Cpu, Device};
use vlmix_eval::task::Task;
use vlmix_eval::{ValidationSet, VALIDATION_SEQUENCES};
use vlmix_models::lm::{Lm, LmConfig};
use vlmix_models::stage_record::weights_of;
use vlmix_models::vision::encoder::{open_encoder, ImageEncoder};
use vlmix_models::vision::feature_cache::{FeatureCache, CACHE_SUBDIR};
use vlmix_train::corpus::ImageCorpus;
use vlmix_train::stages::{self, CooldownSpec, FinetuneSpec, PretrainSpec, Start, TextStream};

use crate::config::{Carry, GridPoint, StudyConfig};
use crate::executor::{NodeRunner, StudyDir};
use crate::outputs::{
    BpbPoint, CooldownOutputs, CorpusOutputs, CorpusSkipped, FinetuneOutputs, FractionCheckpoints, NodeOutputs,
    PretrainOutputs, TextSkipped,
};
use crate::plan::{cooldown_id, finetune_id, Node, NodeKind, PRETRAIN};
use crate::progress::StudyProgress;

/// Everything the nodes of one study share, loaded once, and the device every node computes on.
pub struct StudyRunner<'a, D: Device = Cpu> {
    pub config: &'a StudyConfig,
    pub dev: D,
    pub layout: DataLayout,
    pub tokenizer: TextTokenizer,
    /// The `tokenizer.json` the study uses (`data.tokenizer` or the prepared one).
    pub tokenizer_path: PathBuf,
    pub model: LmConfig,
    train_docs: DocSplit,
    /// Text documents left out as bad records (`data.on_bad_record = "skip"`).
    text_skipped: Skipped,
    /// The `[data]` eval sets, read once, and the questions left out of them.
    pub extra_tasks: Vec<Task>,
    pub eval_skipped: Skipped,
    /// Held-out text every kept pre-training checkpoint and every evaluated model is scored on.
    pub validation: ValidationSet,
    encoder: Box<dyn ImageEncoder>,
    cache: FeatureCache,
    corpus: Option<ImageCorpus>,
    pub progress: StudyProgress,
}

fn rel(root: &Path, path: &Path) -> String {
    path.strip_prefix(root).unwrap_or(path).to_string_lossy().into_owned()
}

impl<'a, D: Device> StudyRunner<'a, D> {
    /// Loads what the nodes share; `dev` is the config's device, opened (`DeviceChoice::open`).
    pub fn new(config: &'a StudyConfig, layout: DataLayout, quiet: bool, dev: D) -> Result<Self> {
        let data = &config.data;
        let tokenizer_path = data.tokenizer_path(&layout);
        let tokenizer = TextTokenizer::load(&tokenizer_path)
            .context("loading the tokenizer (data.tokenizer, or the prepared one: run `vlmix data prepare`)")?;
        let model = config.model_config(tokenizer.vocab_size())?;
        let (train_docs, validation_docs, text_skipped) = match data.text_spec()? {
            Some(spec) => {
                let text = open_text(&spec, &tokenizer, &tokenizer_path, &layout.home.join("tokenized"))?;
                (text.train, text.validation, text.skipped)
            }
            None => {
                let open = |split: &str| {
                    TokenShards::open(&[layout.text_tokens(split)], tokenizer.vocab_size()).map(DocSplit::all)
                };
                (open("train")?, open("validation")?, Skipped::default())
            }
        };
        let validation = ValidationSet::new(validation_docs, model.seq_len, VALIDATION_SEQUENCES, &tokenizer)?;
        let (extra_tasks, eval_skipped) = data.eval_tasks()?;
        let encoder = open_encoder(&config.encoder_spec(), &layout.home)
            .context("study fields `encoder`, `encoder_trainable_blocks`")?;
        let cache = FeatureCache::open(&layout.home.join(CACHE_SUBDIR), encoder.as_ref())?;
        VlmSequence::new(model.seq_len, encoder.tokens(), tokenizer.special)
            .context("study fields `model.seq_len` and `encoder`")?;
        Ok(Self {
            config,
            dev,
            layout,
            tokenizer,
            tokenizer_path,
            model,
            train_docs,
            text_skipped,
            extra_tasks,
            eval_skipped,
            validation,
            encoder,
            cache,
            corpus: None,
            progress: StudyProgress::new(quiet),
        })
    }

    fn corpus_path(root: &Path) -> PathBuf {
        root.join("image_corpus.json")
    }

    /// Encodes every training image (and every eval image, [`crate::evaluation::cache_eval_images`])
    /// into the feature cache and tokenizes captions and conversations.
    pub fn build_corpus(&mut self, root: &Path) -> Result<CorpusOutputs> {
        std::fs::create_dir_all(root).with_context(|| format!("creating {}", root.display()))?;
        let captions = self.config.data.caption_source(&self.layout, self.config.grid.seeds[0])?;
        let instruct = self.config.data.instruct_source(&self.layout);
        let mut seen = 0u64;
        let progress = &self.progress;
        let built = ImageCorpus::build(
            &captions,
            Some(&instruct),
            self.config.max_images,
            &self.tokenizer,
            self.encoder.as_ref(),
            &mut self.cache,
            &mut |n| {
                seen += n as u64;
                progress.advance(seen, seen);
            },
        )?;
        let clock = std::time::Instant::now();
        let eval_images = crate::evaluation::cache_eval_images(self)?;
        tracing::info!(
            encoded = eval_images,
            seconds = format!("{:.1}", clock.elapsed().as_secs_f64()),
            "eval images cached"
        );
        let path = Self::corpus_path(root);
        built.corpus.save(&path)?;
        let corpus = &built.corpus;
        Ok(CorpusOutputs {
            corpus: rel(root, &path),
            captions: corpus.captions.len(),
            conversations: corpus.instruct.len(),
            cache_hits: self.cache.stats().hits,
            cache_misses: self.cache.stats().misses,
            skipped_records: CorpusSkipped {
                captions: built.skipped_captions,
                conversations: built.skipped_conversations,
            },
        })
    }

    /// The image corpus under `root` (written by the `image-corpus` node, or built now), loaded once.
    fn corpus(&mut self, root: &Path) -> Result<&ImageCorpus> {
        if self.corpus.is_none() {
            if !Self::corpus_path(root).is_file() {
                self.build_corpus(root)?;
            }
            self.corpus = Some(ImageCorpus::load(&Self::corpus_path(root))?);
        }
        Ok(self.corpus.as_ref().expect("set above"))
    }

    /// Text pre-training in `dir`, with validation bits-per-byte at init and every kept fraction.
    pub fn pretrain(&mut self, dir: &Path, root: &Path) -> Result<PretrainOutputs> {
        let p = &self.config.pretrain;
        let spec = PretrainSpec {
            model: self.model.clone(),
            schedule: self.config.text_schedule(self.model.seq_len),
            batching: p.batching(),
            weight_decay: p.weight_decay,
            keep_fractions: p.checkpoint_fractions.clone(),
            seed: self.config.grid.seeds[0],
        };
        let progress = &self.progress;
        let outcome = stages::pretrain(
            self.dev.clone(),
            &spec,
            self.train_docs.clone(),
            self.tokenizer.special,
            dir,
            &mut |s, t, m| progress.step(s, t, m),
        )?;
        // Validation bits-per-byte at init and at every kept fraction: the text-learning curve.
        let mut curve = Vec::new();
        let mut params = ParamStore::new(self.dev.clone());
        let mut lm = Lm::new(self.model.clone(), &mut params, spec.seed)?;
        curve.push(BpbPoint { fraction: 0.0, bits_per_byte: self.validation.score(&mut lm, &params)?.bits_per_byte });
        let mut checkpoints = FractionCheckpoints::default();
        for &(fraction, ref ckpt) in &outcome.checkpoints {
            params.load_safetensors(&weights_of(ckpt))?;
            curve.push(BpbPoint { fraction, bits_per_byte: self.validation.score(&mut lm, &params)?.bits_per_byte });
            checkpoints.0.push((fraction, rel(root, ckpt)));
        }
        Ok(PretrainOutputs {
            checkpoints,
            validation_bpb: curve,
            tokens: outcome.run.tokens,
            steps: outcome.run.steps,
            skipped_records: TextSkipped { text: self.text_skipped.clone() },
        })
    }

    fn cooldown_node(&mut self, point: &GridPoint, seed: u64, dir: &Path, study: &StudyDir) -> Result<CooldownOutputs> {
        let start = if point.fraction <= 0.0 {
            Start::Scratch
        } else if let Some(from) = self.config.imported_checkpoint()? {
            Start::TextCheckpoint(from)
        } else {
            let pretrain = study.finished(PRETRAIN)?;
            let checkpoint = pretrain.outputs.pretrain(PRETRAIN)?.checkpoints.at(point.fraction);
            let checkpoint =
                checkpoint.with_context(|| format!("no pre-training checkpoint at fraction {}", point.fraction))?;
            Start::TextCheckpoint(study.root.join(checkpoint))
        };
        self.cooldown(point, start, seed, dir, &study.root)
    }

    /// Image-text cooldown at `point` from `start`, in `dir`.
    pub fn cooldown(
        &mut self,
        point: &GridPoint,
        start: Start,
        seed: u64,
        dir: &Path,
        root: &Path,
    ) -> Result<CooldownOutputs> {
        let config = self.config;
        let c = &config.cooldown;
        // Branched from this study's own text run: an imported text model carries no stream
        // position of this corpus and no vlmix optimizer state.
        let branched = matches!(start, Start::TextCheckpoint(_)) && config.pretrain.from.is_none();
        let text_stream = match c.text_stream {
            Carry::Continue if branched => TextStream::Continue { pretrain_seed: config.grid.seeds[0] },
            _ => TextStream::Restart,
        };
        let schedule = config.cooldown_schedule(point.fraction, self.model.seq_len);
        // Endpoints restart the schedule (a fresh warmup), so they restart the moments too.
        let continue_optimizer = branched && c.optimizer == Carry::Continue && !schedule.is_fresh();
        let spec = CooldownSpec {
            model: self.model.clone(),
            start,
            schedule,
            tokens: c.tokens,
            count_padding: c.count_padding,
            batching: c.batching(),
            weight_decay: c.weight_decay,
            image_token_fraction: point.image_token_fraction,
            instruction_share: point.instruction_share,
            images_per_row: c.images_per_row,
            fill_image_rows: c.fill_image_rows,
            encoder: config.encoder_spec(),
            train_lm: c.train_lm,
            seed,
            text_stream,
            continue_optimizer,
        };
        let docs = self.train_docs.clone();
        let special = self.tokenizer.special;
        self.corpus(root)?;
        let (corpus, cache, progress) = (self.corpus.as_ref().expect("built"), &self.cache, &self.progress);
        let outcome = stages::cooldown(self.dev.clone(), &spec, docs, corpus, cache, special, dir, &mut |s, t, m| {
            progress.step(s, t, m)
        })?;
        let final_ckpt = outcome.kept.last().map(|k| k.1.clone()).context("cooldown kept no checkpoint")?;
        Ok(CooldownOutputs {
            checkpoint: rel(root, &final_ckpt),
            fresh_schedule: spec.schedule.is_fresh(),
            tokens: outcome.tokens,
            image_tokens: outcome.image_tokens,
        })
    }

    fn finetune_node(
        &mut self,
        point: &GridPoint,
        seed: u64,
        epochs: u32,
        dir: &Path,
        study: &StudyDir,
    ) -> Result<FinetuneOutputs> {
        let cooldown = cooldown_id(point, seed);
        let start = study.root.join(&study.finished(&cooldown)?.outputs.cooldown(&cooldown)?.checkpoint);
        self.finetune(start, seed, epochs, dir, &study.root)
    }

    /// Instruction fine-tuning of the VLM checkpoint `start`, in `dir`: `epochs` epochs under a
    /// schedule of their own.
    pub fn finetune(
        &mut self,
        start: PathBuf,
        seed: u64,
        epochs: u32,
        dir: &Path,
        root: &Path,
    ) -> Result<FinetuneOutputs> {
        let f = &self.config.finetune;
        let spec = FinetuneSpec {
            model: self.model.clone(),
            start,
            epochs,
            max_examples: f.max_examples,
            batching: f.batching(),
            peak_lr: f.peak_lr,
            warmup_steps: f.warmup_steps,
            weight_decay: f.weight_decay,
            seed,
        };
        let special = self.tokenizer.special;
        self.corpus(root)?;
        let (corpus, cache, progress) = (self.corpus.as_ref().expect("built"), &self.cache, &self.progress);
        let outcome = stages::finetune(self.dev.clone(), &spec, corpus, cache, special, dir, &mut |s, t, m| {
            progress.step(s, t, m)
        })?;
        let epochs = outcome.epochs.iter().map(|(e, d)| (*e, rel(root, d))).collect();
        Ok(FinetuneOutputs { epochs, tokens: outcome.run.tokens })
    }
}

impl<D: Device> NodeRunner for StudyRunner<'_, D> {
    fn run(&mut self, node: &Node, dir: &Path, study: &StudyDir) -> Result<NodeOutputs> {
        self.progress.start_node(&node.id, 0);
        Ok(match &node.kind {
            NodeKind::ImageCorpus => NodeOutputs::ImageCorpus(self.build_corpus(&study.root)?),
            NodeKind::Pretrain => NodeOutputs::Pretrain(self.pretrain(dir, &study.root)?),
            NodeKind::Cooldown { point, seed } => NodeOutputs::Cooldown(self.cooldown_node(point, *seed, dir, study)?),
            NodeKind::Finetune { point, seed, epochs } => {
                NodeOutputs::Finetune(self.finetune_node(point, *seed, *epochs, dir, study)?)
            }
            NodeKind::Eval { point, seed, epoch } => NodeOutputs::Eval(crate::evaluation::evaluate_node(
                self,
                &finetune_id(point, *seed, *epoch),
                *epoch,
                dir,
                study,
            )?),
            NodeKind::EvalTextBaseline => {
                NodeOutputs::TextBaseline(crate::evaluation::evaluate_text_baseline(self, dir, study)?)
            }
        })
    }

    fn on_progress(&mut self, finished: usize, total: usize, current: Option<&Node>) {
        self.progress.study(finished, total, current.map(|n| n.id.as_str()));
    }
}
