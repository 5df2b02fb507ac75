//! # policy-opt
//!
//! Policy optimisation against preferences and reward models: the DPO family (DPO, IPO, KTO,
//! SimPO, …) on preference pairs, and on-policy PPO and GRPO with rollouts sampled from the
//! policy, rewards from plumbline reward models and advantage estimators from `rm-losses`.
//!
//! Nothing is implemented here yet.
