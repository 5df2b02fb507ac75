//! # bench-harness
//!
//! Evaluation of reward models: RewardBench-style accuracy reports (v1 sections and v2 best-of-4
//! scoring) over reward-bench JSONL layouts and plumbline's datasets, with a `Scorer` trait so
//! that any model — including a DPO policy scored by its implicit reward — plugs in.
//!
//! Nothing is implemented here yet.
