//! The vlmix training engine: buffers, kernels and layers with explicit forward and backward.
pub mod blas;
