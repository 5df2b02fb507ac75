//! # plumbline
//!
//! Reward modeling and reward-based alignment of language models in Rust, on burn. This facade
//! re-exports the workspace's microcrates so that one dependency brings them all; each crate can
//! also be used alone.

pub use bench_harness;
pub use decoding;
pub use policy_opt;
pub use rm_core;
pub use rm_ensembles;
pub use rm_losses;
pub use rm_multiobj;
pub use rm_process;
