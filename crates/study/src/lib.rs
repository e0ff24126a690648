//! The study: a grid config becomes a DAG of resumable runs, executed, tabulated and reported.
pub mod config;
pub mod data_config;
pub mod estimate;
pub mod evaluation;
pub mod executor;
pub mod outputs;
pub mod plan;
pub mod progress;
pub mod report;
pub mod results;
pub mod run;
pub mod runner;
pub mod slurm;
