//! # rm-process
//!
//! Process reward models: step-level scoring of reasoning chains (PRM800K-style step labels),
//! their training objectives and aggregation of step scores into solution scores, for
//! best-of-n verification on GSM8K-style problems.
//!
//! Nothing is implemented here yet.
