//! The OpenLM decoder language model (see ARCHITECTURE.md for parameter names).

pub mod bench;
pub mod config;
pub mod init;
pub mod input;
mod layers;
pub mod model;
pub mod weights;
mod workspace;

pub use config::{LmConfig, NormKind, ParamCount};
pub use input::{InjectedEmbeddings, LmInput};
pub use model::Lm;
