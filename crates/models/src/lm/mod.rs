//! The OpenLM decoder language model (see ARCHITECTURE.md for parameter names).

pub mod bench;
pub mod config;
pub mod init;
pub mod input;
mod layers;
pub mod model;
pub mod openlm_io;
pub mod weights;
mod workspace;

pub use config::{LmConfig, NormKind, ParamCount, WeightDecayRule, ZLossRule};
pub use input::{InjectedEmbeddings, LmInput};
pub use model::{Lm, PrefixCache};
pub use workspace::activation_lens;
