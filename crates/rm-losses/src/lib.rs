//! # rm-losses
//!
//! Every plumbline objective as a documented pure function over burn tensors, each with its
//! formula in plain math and the paper it comes from: reward-model losses (Bradley–Terry with
//! margins, centering, label smoothing; Plackett–Luce listwise; pairwise preference models; the
//! General Preference Model; distillation of preference strength), the DPO family, and the policy
//! losses and advantage estimators of PPO and GRPO, as a named registry that trainers select from
//! TOML recipes.
//!
//! Nothing is implemented here yet: the objectives arrive with the reward-model and
//! policy-optimisation issues.
