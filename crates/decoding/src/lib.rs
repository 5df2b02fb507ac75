//! # decoding
//!
//! Reward-guided decoding: each method is a [`Strategy`] over the one KV-cache generation
//! engine of [`rm_core::sampling`] and any [`Scorer`] (a reward model, a closed form):
//! - best-of-n, with its KL bound `log n − (n − 1)/n` and the reward curve over n from one
//!   sampling pass ([`best_of_n_curve`]);
//! - soft best-of-n (choice ∝ exp(r/λ)) and rejection sampling against a threshold;
//! - ARGS (token-level: top-k tokens rescored `logit + w·r`);
//! - DeAL-style lookahead (ARGS with each candidate scored after a greedy continuation), with
//!   keyword and length scorers;
//! - GenARM (logits `log π + α · log π_arm` of the policy and a guide causal LM);
//! - blockwise controlled decoding (best of K blocks of B tokens);
//! - PRM-guided search over reasoning steps: beam search, DVTS and MCTS, scored by a process
//!   reward model through [`StepScorer`] ([`PrmScorer`] wraps a trained PRM).
//!
//! Every strategy returns, per prompt, the chosen text, its reward and its cost
//! ([`DecodeStats`]: tokens generated, tokens/s, scorer calls). [`decode`] runs a list of
//! prompts; [`run_decode`] is `plumb decode` (load, decode, write JSONL). The scorer may be a
//! reward model or an ensemble folder (rm-ensembles, with any aggregation).
//!
//! [`run_overopt`] is `plumb overopt`: the best-of-n overoptimization study (proxy and gold
//! reward of the proxy's best-of-n choice against √KL, single models and ensembles as proxies);
//! [`run_overopt_rl`] is `plumb overopt-rl`, the same curves from `train-rl` runs' evaluations.

mod answers;
mod bon;
mod engine;
mod error;
mod model;
mod overopt;
mod overopt_rl;
mod run;
mod sample;
mod scorer;
mod search;
mod strategy;

pub use answers::{AnswerAccuracy, AnswerCheck, answer_accuracy};
pub use bon::{
    CurvePoint, best_index, best_of_n_curve, best_of_n_weights, expected_best_of_n, kl_bound,
    soft_best_index,
};
pub use error::{DecodeError, Result};
pub use model::DecodeModel;
pub use overopt::{
    OveroptPoint, OveroptReport, OveroptRequest, ProxyCurve, RewardInfo, StudySamples, markdown,
    overopt_curve, run_overopt,
};
pub use overopt_rl::{
    RlOveroptCurve, RlOveroptPoint, RlOveroptReport, RlOveroptRequest, markdown_rl, run_curve,
    run_overopt_rl,
};
pub use run::{
    DecodeOutcome, DecodeRequest, DecodeRun, Gsm8kSplit, Progress, PromptSource, ScorerSpec,
    StepPairsOut, Summary, decode, decode_with_gold, load_prompts, load_prompts_with_gold,
    mcts_step_pairs, run_decode,
};
pub use sample::{SampleOutcome, SampleRequest, sample_prompts};
pub use scorer::{FnScorer, FnStepScorer, KeywordScorer, LengthScorer, Scorer, StepScorer};
pub use search::refine::Refinement;
pub use search::{
    NodeValue, PrmScorer, RolloutJudge, SiblingSteps, StepParams, empty_score, prompt_text,
    split_steps,
};
pub use strategy::{DecodeConfig, DecodeStats, Decoded, Detail, Strategy};

#[cfg(test)]
mod tests;
