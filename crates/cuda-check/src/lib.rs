//! The CUDA check kit's library: the parity harness (`parity`, generic over `Device`) that the
//! `vlmix-cuda-check` binary runs on a GPU against the CPU's reference outputs, and that
//! `tests/cuda_parity.rs` runs CPU against CPU here. Kept out of the engine and the CUDA backend:
//! nothing that trains or evaluates needs it.

pub mod parity;
