//! # rm-ensembles
//!
//! Reward-model ensembles: several reward models (or heads on one backbone) scored together,
//! combined by mean, worst case or uncertainty-weighted rules, with the spread reported as an
//! uncertainty estimate to guard policies against reward hacking.
//!
//! Nothing is implemented here yet.
