//! vlmix-eval: vision-language and text tasks, stable score, bits-per-byte, and one checkpoint's
//! whole evaluation ([`evaluate_checkpoint`]).
//!
//! Models plug in through [`Scorer`]; tasks load from JSONL ([`task`]); [`evaluate`] returns an
//! [`EvalReport`] whose stable scores (accuracy minus chance, averaged per modality) are the
//! paper's headline numbers.
pub mod bits_per_byte;
pub mod checkpoint;
pub mod evaluate;
pub mod model_scorer;
pub mod multiple_choice;
pub mod prompt;
pub mod scorer;
pub mod stats;
pub mod task;
pub mod vqa_answer;
pub mod yes_no;

pub use bits_per_byte::{load_text_documents, BitsPerByte, ValidationSet, VALIDATION_SEQUENCES};
pub use checkpoint::{evaluate_checkpoint, CheckpointEval};
pub use evaluate::{
    evaluate, evaluate_files, evaluate_task, evaluate_with_progress, majority_baseline, read_samples, BlindControl,
    Control, EvalOptions, EvalReport, ItemLimit, ItemOutcome, Sample, TaskResult, YesNoMode,
};
pub use model_scorer::{Decoding, ImageFeatures, ModelScorer, ScoredModel};
pub use scorer::{Answer, ImageRef, LogLikelihood, Request, Scorer};
pub use stats::Interval;
pub use task::{load_task_file, load_tasks, Modality, Task};
