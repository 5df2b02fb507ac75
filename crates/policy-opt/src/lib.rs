//! # policy-opt
//!
//! Policy optimisation against preferences and reward models. Today: the DPO family on
//! preference pairs ([`preference`]: TRL's `DPOTrainer` losses from `rm-losses`, on a
//! LoRA-adapted or fully trained causal LM, `plumb train-po`). On-policy PPO and GRPO with
//! rollouts sampled from the policy arrive with the online-RL work.

pub mod online;
pub mod preference;

pub use preference::{
    PoRecipe, PreferenceRecipe, PreferenceReport, train_po, train_preference_policy,
};
