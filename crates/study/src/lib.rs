//! The study: a grid config becomes a DAG of resumable runs, executed, tabulated and reported.
pub mod config;
pub mod executor;
pub mod plan;
pub mod report;
