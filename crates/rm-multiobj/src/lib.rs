//! # rm-multiobj
//!
//! Multi-objective reward models: K named attribute heads on one backbone and the rules that
//! combine them into one reward (fixed weights, prompt-conditioned gating).
//!
//! Nothing is implemented here yet.
