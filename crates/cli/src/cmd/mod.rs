//! One module per subcommand; each parses its arguments and calls into the library crates.
pub mod bench;
pub mod chat;
pub mod data;
pub mod device;
pub mod encode;
pub mod eval;
pub mod export;
pub mod import;
pub mod stage;
pub mod study;
