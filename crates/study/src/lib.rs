//! The study: a grid config becomes a DAG of resumable runs, executed, tabulated and reported.
pub mod config;
pub mod plan;
