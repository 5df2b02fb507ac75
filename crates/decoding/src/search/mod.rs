//! PRM-guided search over reasoning steps: beam search and DVTS ([`beam`]), MCTS ([`mcts`]),
//! GLoRe-style refinement ([`refine`]).
//!
//! A *step* is the text the policy writes up to the step delimiter (`"\n\n"` by default, as
//! search-and-learn). The searches grow partial solutions one step at a time with the one
//! KV-cache engine ([`rm_core::sampling::generate`], the delimiter a stop string, one batched
//! call per expansion) and rank them by a process reward model: the response so far is split
//! at every delimiter into its non-empty steps ([`split_steps`], the same split
//! [`PrmScorer`] applies to a whole response), the PRM gives each step's probability of being
//! correct and an [`Aggregation`] (default `last`, as search-and-learn) turns them into the
//! partial solution's score.
//!
//! The tree logic only sees an [`Expander`] (make one child per parent row, score partial
//! solutions), so it is tested on hand-worked trees without a model.

pub(crate) mod beam;
pub(crate) mod mcts;

pub use mcts::{NodeValue, RolloutJudge};
pub(crate) mod refine;

use rm_core::sampling::{FinishReason, SamplingConfig, generate};
use rm_core::types::{Prompt, Role};
use rm_process::final_answer::{AnswerExtraction, answer_is_correct};
use rm_process::{Aggregation, ProcessRewardModel};
use serde::{Deserialize, Serialize};

use crate::error::{DecodeError, Result};
use crate::model::DecodeModel;
use crate::scorer::{Counted, Scorer, StepScorer};
use crate::strategy::{Detail, Outcome};

fn default_delimiter() -> String {
    "\n\n".into()
}

/// How the searches cut and grow steps. In TOML, the `[strategy.steps]` table; every field
/// has a default.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StepParams {
    /// The text that ends a step (a stop string of the generation).
    pub delimiter: String,
    /// Most steps of a solution; the step at depth `max_steps` is generated to the end (a stop
    /// token or `max_new_tokens`), as search-and-learn's last iteration.
    pub max_steps: usize,
    /// Most tokens of one step (the last step excepted); a step cut here is continued by the
    /// next one.
    pub step_tokens: usize,
    /// Step probabilities → the score partial solutions are ranked by.
    pub aggregation: Aggregation,
    pub temperature: f32,
    pub top_p: f32,
}

impl Default for StepParams {
    fn default() -> Self {
        Self {
            delimiter: default_delimiter(),
            max_steps: 40,
            step_tokens: 64,
            aggregation: Aggregation::Last,
            temperature: 0.8,
            top_p: 1.0,
        }
    }
}

impl StepParams {
    /// Checks every field's range; the error names the field.
    pub fn validate(&self) -> Result<()> {
        if self.delimiter.is_empty() {
            return Err(DecodeError::config(
                "steps.delimiter",
                "must not be empty (it ends every step)",
            ));
        }
        if self.max_steps == 0 {
            return Err(DecodeError::config(
                "steps.max_steps",
                "must be at least 1, got 0",
            ));
        }
        if self.step_tokens == 0 {
            return Err(DecodeError::config(
                "steps.step_tokens",
                "must be at least 1, got 0",
            ));
        }
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            return Err(DecodeError::config(
                "steps.temperature",
                format!("must be finite and ≥ 0, got {}", self.temperature),
            ));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(DecodeError::config(
                "steps.top_p",
                format!("must be in (0, 1], got {}", self.top_p),
            ));
        }
        Ok(())
    }
}

/// The non-empty steps of `text`: split at every `delimiter`, each piece trimmed.
pub fn split_steps<'t>(text: &'t str, delimiter: &str) -> Vec<&'t str> {
    text.split(delimiter)
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect()
}

/// The score of a solution with no step at all (an empty response): the bottom of the
/// aggregation's range, 0 for the probability aggregations and `f32::MIN` (finite, since
/// rewards must be) for `sum-log-prob`.
pub fn empty_score(aggregation: Aggregation) -> f64 {
    match aggregation {
        Aggregation::SumLogProb => f64::from(f32::MIN),
        _ => 0.0,
    }
}

/// The aggregated score of step probabilities, as a finite reward (`−∞` of `sum-log-prob`
/// on a step of probability 0 becomes `f32::MIN`).
fn aggregate(aggregation: Aggregation, probs: &[f32]) -> Result<f64> {
    let s = aggregation
        .apply(probs)
        .map_err(|e| DecodeError::Scorer(format!("{e:#}")))?;
    Ok(s.max(f64::from(f32::MIN)))
}

/// The text a PRM reads as the problem: a text prompt as it is, a conversation's last user
/// turn (its last turn when none is the user's).
pub fn prompt_text(prompt: &Prompt) -> String {
    match prompt {
        Prompt::Text(t) => t.clone(),
        Prompt::Conversation(c) => c
            .turns
            .iter()
            .rev()
            .find(|t| t.role == Role::User)
            .or(c.turns.last())
            .map(|t| t.content.clone())
            .unwrap_or_default(),
    }
}

/// A trained PRM (`plumb train-prm`) as a step scorer: `score_batch` of the problem text and
/// the steps, 16 sequences per forward pass.
impl StepScorer for ProcessRewardModel {
    fn score_steps(&mut self, solutions: &[(&Prompt, Vec<&str>)]) -> Result<Vec<Vec<f32>>> {
        let texts: Vec<String> = solutions.iter().map(|(p, _)| prompt_text(p)).collect();
        let batch: Vec<(&str, Vec<&str>)> = texts
            .iter()
            .zip(solutions)
            .map(|(t, (_, s))| (t.as_str(), s.clone()))
            .collect();
        self.score_batch(&batch, 16)
            .map_err(|e| DecodeError::Scorer(format!("{e:#}")))
    }
}

/// A PRM as a whole-response [`Scorer`] (best-of-n and the other strategies by a PRM): the
/// response split into steps at `delimiter` ([`split_steps`]), scored step by step, the
/// probabilities aggregated; an empty response scores [`empty_score`]. Its
/// [`Scorer::steps`] is the PRM itself, for the searches.
pub struct PrmScorer {
    pub prm: ProcessRewardModel,
    pub delimiter: String,
    pub aggregation: Aggregation,
}

impl Scorer for PrmScorer {
    fn score(&mut self, pairs: &[(&Prompt, &str)]) -> Result<Vec<f32>> {
        let mut out = Vec::with_capacity(pairs.len());
        // One PRM call per prompt (the pairs of a strategy's call share one).
        for (prompt, responses) in group_by_prompt(pairs) {
            let steps: Vec<Vec<&str>> = responses
                .iter()
                .map(|r| split_steps(r, &self.delimiter))
                .collect();
            let prm = &mut self.prm;
            let scores = score_solutions(&steps, self.aggregation, |asked| {
                let batch: Vec<(&Prompt, Vec<&str>)> =
                    asked.iter().map(|s| (prompt, s.clone())).collect();
                prm.score_steps(&batch)
            })?;
            out.extend(scores.into_iter().map(|s| s as f32));
        }
        Ok(out)
    }

    fn steps(&mut self) -> Option<&mut dyn StepScorer> {
        Some(&mut self.prm)
    }
}

/// Consecutive pairs with the same prompt, grouped, in order.
fn group_by_prompt<'p>(pairs: &[(&'p Prompt, &'p str)]) -> Vec<(&'p Prompt, Vec<&'p str>)> {
    let mut out: Vec<(&Prompt, Vec<&str>)> = Vec::new();
    for &(p, r) in pairs {
        match out.last_mut() {
            Some((q, rs)) if *q == p => rs.push(r),
            _ => out.push((p, vec![r])),
        }
    }
    out
}

/// Step probabilities of solutions given as step lists: the non-empty ones go to `prm` in one
/// call (`prm` returns one probability per step), the empty ones get none.
fn solution_probs(
    steps: &[Vec<&str>],
    prm: impl FnOnce(&[Vec<&str>]) -> Result<Vec<Vec<f32>>>,
) -> Result<Vec<Vec<f32>>> {
    let asked: Vec<Vec<&str>> = steps.iter().filter(|s| !s.is_empty()).cloned().collect();
    let mut probs = if asked.is_empty() {
        Vec::new()
    } else {
        prm(&asked)?
    }
    .into_iter();
    steps
        .iter()
        .map(|s| match s.is_empty() {
            true => Ok(Vec::new()),
            false => probs
                .next()
                .ok_or_else(|| DecodeError::Scorer("too few step scores".into())),
        })
        .collect()
}

/// Aggregated scores of step probabilities; a solution without steps gets [`empty_score`].
fn aggregate_all(aggregation: Aggregation, probs: &[Vec<f32>]) -> Result<Vec<f64>> {
    probs
        .iter()
        .map(|p| match p.is_empty() {
            true => Ok(empty_score(aggregation)),
            false => aggregate(aggregation, p),
        })
        .collect()
}

/// Aggregated scores of solutions given as step lists ([`solution_probs`], [`aggregate_all`]).
fn score_solutions(
    steps: &[Vec<&str>],
    aggregation: Aggregation,
    prm: impl FnOnce(&[Vec<&str>]) -> Result<Vec<Vec<f32>>>,
) -> Result<Vec<f64>> {
    aggregate_all(aggregation, &solution_probs(steps, prm)?)
}

/// A partial solution: the response tokens so far (after the prompt) and whether it is done.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct Partial {
    pub tokens: Vec<u32>,
    /// Ended by a stop token, the response token limit, or its last allowed step.
    pub finished: bool,
}

/// What a search needs from the policy and the PRM.
pub(crate) trait Expander {
    /// One child per entry of `parents` (a parent may repeat): the parent's tokens and one more
    /// step. `last`: the step is generated to the end (the child is finished).
    fn expand(&mut self, parents: &[&Partial], last: bool) -> Result<Vec<Partial>>;
    /// Each solution's aggregated PRM score (one PRM call).
    fn score(&mut self, solutions: &[&Partial]) -> Result<Vec<f64>>;
    /// Each solution's per-step probabilities (one PRM call; an empty solution has none).
    fn step_probs(&mut self, _solutions: &[&Partial]) -> Result<Vec<Vec<f32>>> {
        Err(DecodeError::config(
            "strategy",
            "this search cannot read step probabilities",
        ))
    }
    /// Each finished solution's final answer against the prompt's gold answer: 1 when equal,
    /// else 0 (MCTS's `judge = "answer"` values).
    fn check(&mut self, _solutions: &[&Partial]) -> Result<Vec<f64>> {
        Err(DecodeError::config(
            "value.judge",
            "this search has no gold answer to check against",
        ))
    }
    /// `solution` cut before its step `step` (its steps `0..step` kept).
    fn prefix_before_step(&mut self, _solution: &Partial, _step: usize) -> Result<Partial> {
        Err(DecodeError::config(
            "strategy",
            "this search cannot cut a solution at a step",
        ))
    }
}

/// The [`Expander`] of a policy and a PRM: each call to [`Expander::expand`] is one
/// [`generate`] batch (row r = prompt ⊕ parent r's tokens, call c seeded
/// `seed + c·0xD1B54A32D192ED03`), the delimiter a stop string; each
/// [`Expander::score`] one step-scorer call over the non-empty solutions.
pub(crate) struct LmExpander<'a, 'b> {
    pub model: &'a DecodeModel,
    pub prompt: &'a Prompt,
    pub ids: &'a [u32],
    pub params: &'a StepParams,
    pub max_new_tokens: usize,
    pub seed: u64,
    pub scorer: &'a mut Counted<'b>,
    /// Every token generated so far (cut-off tokens of a row past its budget included).
    pub tokens_generated: usize,
    /// The prompt's gold answer and how answers are found, for [`Expander::check`].
    pub gold: Option<(f64, AnswerExtraction)>,
    calls: u64,
}

impl<'a, 'b> LmExpander<'a, 'b> {
    pub fn new(
        model: &'a DecodeModel,
        prompt: &'a Prompt,
        ids: &'a [u32],
        params: &'a StepParams,
        max_new_tokens: usize,
        seed: u64,
        scorer: &'a mut Counted<'b>,
    ) -> Self {
        Self {
            model,
            prompt,
            ids,
            params,
            max_new_tokens,
            seed,
            scorer,
            tokens_generated: 0,
            gold: None,
            calls: 0,
        }
    }
}

impl Expander for LmExpander<'_, '_> {
    fn expand(&mut self, parents: &[&Partial], last: bool) -> Result<Vec<Partial>> {
        // Each row's own budget: the step cap (none for the last step) within what is left of
        // max_new_tokens; the batch runs to the largest and longer rows are cut back.
        let limits: Vec<usize> = parents
            .iter()
            .map(|p| {
                let left = self.max_new_tokens.saturating_sub(p.tokens.len()).max(1);
                if last {
                    left
                } else {
                    left.min(self.params.step_tokens)
                }
            })
            .collect();
        let rows: Vec<Vec<u32>> = parents
            .iter()
            .map(|p| [self.ids, p.tokens.as_slice()].concat())
            .collect();
        let config = SamplingConfig {
            max_new_tokens: limits.iter().copied().max().unwrap_or(1),
            temperature: self.params.temperature,
            top_p: self.params.top_p,
            stop_tokens: self.model.stop_tokens(),
            stop_strings: if last {
                Vec::new()
            } else {
                vec![self.params.delimiter.clone()]
            },
            seed: self
                .seed
                .wrapping_add(self.calls.wrapping_mul(0xD1B5_4A32_D192_ED03)),
            ..SamplingConfig::default()
        };
        self.calls += 1;
        let lm = &self.model.lm;
        let out =
            generate(lm, &lm.tokenizer, &rows, &config, &lm.device).map_err(DecodeError::model)?;
        Ok(parents
            .iter()
            .zip(limits)
            .zip(out)
            .map(|((parent, limit), row)| {
                self.tokens_generated += row.tokens.len();
                let cut = row.tokens.len() > limit;
                let step = &row.tokens[..row.tokens.len().min(limit)];
                let tokens = [parent.tokens.as_slice(), step].concat();
                let finished = last
                    || (!cut && row.finish_reason == FinishReason::StopToken)
                    || tokens.len() >= self.max_new_tokens;
                Partial { tokens, finished }
            })
            .collect())
    }

    fn score(&mut self, solutions: &[&Partial]) -> Result<Vec<f64>> {
        let probs = self.step_probs(solutions)?;
        aggregate_all(self.params.aggregation, &probs)
    }

    fn step_probs(&mut self, solutions: &[&Partial]) -> Result<Vec<Vec<f32>>> {
        let texts: Vec<String> = solutions
            .iter()
            .map(|s| self.model.text(&s.tokens))
            .collect::<Result<_>>()?;
        let steps: Vec<Vec<&str>> = texts
            .iter()
            .map(|t| split_steps(t, &self.params.delimiter))
            .collect();
        let (scorer, prompt) = (&mut *self.scorer, self.prompt);
        solution_probs(&steps, |asked| scorer.step_scores(prompt, asked))
    }

    fn check(&mut self, solutions: &[&Partial]) -> Result<Vec<f64>> {
        let (gold, extraction) = self.gold.ok_or_else(|| {
            DecodeError::config(
                "value.judge",
                "judge = \"answer\" needs the prompt's gold answer: decode gsm8k:test / \
                 gsm8k:train, or rows with an \"answer\" field",
            )
        })?;
        solutions
            .iter()
            .map(|s| {
                let text = self.model.text(&s.tokens)?;
                Ok(f64::from(u8::from(answer_is_correct(
                    &text, gold, extraction,
                ))))
            })
            .collect()
    }

    /// The response text up to where its non-empty step `step` starts, re-tokenized.
    fn prefix_before_step(&mut self, solution: &Partial, step: usize) -> Result<Partial> {
        let text = self.model.text(&solution.tokens)?;
        let delimiter = &self.params.delimiter;
        let (mut offset, mut seen, mut cut) = (0usize, 0usize, text.len());
        for piece in text.split(delimiter.as_str()) {
            if !piece.trim().is_empty() {
                if seen == step {
                    cut = offset;
                    break;
                }
                seen += 1;
            }
            offset += piece.len() + delimiter.len();
        }
        let lm = &self.model.lm;
        let tokens = lm
            .tokenizer
            .encode(&text[..cut.min(text.len())], false)
            .map_err(DecodeError::model)?;
        Ok(Partial {
            tokens,
            finished: false,
        })
    }
}

/// PRM-guided beam search and DVTS, by `dvts`:
///
/// - beam search (Snell et al. 2024, "Scaling LLM Test-Time Compute Optimally can be More
///   Effective than Scaling Model Parameters"; HuggingFace search-and-learn's `beam_search`):
///   `n` samples of the first step; then, step after step, the `n / width` best unfinished
///   partial solutions by the PRM each grow `width` sampled next steps, until every beam is
///   finished or `max_steps` ([`beam::grouped_beam_search`] with one group, `K = n / width`,
///   `M = width`);
/// - diverse verifier tree search (Beeching, Tunstall & Rush 2024, search-and-learn's `dvts`):
///   the budget `n` split into `n / width` independent subtrees, each a PRM-greedy beam of
///   width `width` (keep the best child by the PRM, grow `width` next steps from it), all
///   subtrees stepped in one batch ([`beam::grouped_beam_search`] with `n / width` groups,
///   `K = 1`, `M = width`). A subtree whose best child finishes keeps searching from its best
///   unfinished child, as a beam search does (search-and-learn stops it), so DVTS with one
///   subtree is exactly beam search with `n = width`.
///
/// Either returns the best finished solution by the PRM (over all subtrees) and its score.
#[allow(clippy::too_many_arguments)]
pub(crate) fn beam_search(
    model: &DecodeModel,
    prompt: &Prompt,
    ids: &[u32],
    (n, width, max_new_tokens): (usize, usize, usize),
    dvts: bool,
    params: &StepParams,
    seed: u64,
    scorer: &mut Counted<'_>,
) -> Result<Outcome> {
    let mut ex = LmExpander::new(model, prompt, ids, params, max_new_tokens, seed, scorer);
    let (groups, keep) = if dvts { (n / width, 1) } else { (1, n / width) };
    let out = beam::grouped_beam_search(&mut ex, groups, keep, width, params.max_steps)?;
    let finished_rewards = out.finished_scores.iter().map(|&s| s as f32).collect();
    let detail = if dvts {
        Detail::Dvts {
            subtrees: groups,
            iterations: out.iterations,
            finished_rewards,
            chosen: out.chosen,
            subtree: out.group,
        }
    } else {
        Detail::BeamSearch {
            iterations: out.iterations,
            finished_rewards,
            chosen: out.chosen,
        }
    };
    Ok((
        out.best.tokens,
        out.score as f32,
        ex.tokens_generated,
        detail,
    ))
}

/// GLoRe-style refinement ([`refine::refine`]): a draft, kept when its PRM score reaches
/// `threshold`; else `candidates` rewrites from its first doubted step and `candidates` fresh
/// ones, the best of all by the PRM.
#[allow(clippy::too_many_arguments)]
pub(crate) fn refine_search(
    model: &DecodeModel,
    prompt: &Prompt,
    ids: &[u32],
    (candidates, threshold, max_new_tokens): (usize, f32, usize),
    params: &StepParams,
    seed: u64,
    scorer: &mut Counted<'_>,
) -> Result<Outcome> {
    let mut ex = LmExpander::new(model, prompt, ids, params, max_new_tokens, seed, scorer);
    let out = refine::refine(&mut ex, candidates, f64::from(threshold))?;
    let as_f32 = |v: &[f64]| v.iter().map(|&s| s as f32).collect();
    let detail = Detail::Refine {
        draft_reward: out.draft_score as f32,
        flagged_step: out.flagged_step,
        local_rewards: as_f32(&out.local_scores),
        global_rewards: as_f32(&out.global_scores),
        chosen: out.chosen,
    };
    Ok((
        out.best.tokens,
        out.score as f32,
        ex.tokens_generated,
        detail,
    ))
}

/// One MCTS node with two or more children: the steps so far and each child's next step with
/// its value `Q` (the mean PRM value of the evaluations below it) and visit count.
#[derive(Clone, Debug, PartialEq)]
pub struct SiblingSteps {
    pub prefix: Vec<String>,
    pub steps: Vec<String>,
    pub q: Vec<f64>,
    pub visits: Vec<u64>,
}

impl SiblingSteps {
    /// Step-pair rows (`{"prompt", "prefix", "chosen", "rejected", "q_chosen", "q_rejected"}`,
    /// what `train-prm`'s `source = "step-pairs"` reads) of the siblings whose values differ by
    /// at least `margin` ([`mcts::sibling_preferences`]).
    pub fn pair_rows(&self, prompt: &str, margin: f64) -> Vec<serde_json::Value> {
        mcts::sibling_preferences(&self.q, margin)
            .into_iter()
            .map(|(a, b)| {
                serde_json::json!({
                    "prompt": prompt,
                    "prefix": self.prefix,
                    "chosen": self.steps[a],
                    "rejected": self.steps[b],
                    "q_chosen": self.q[a],
                    "q_rejected": self.q[b],
                })
            })
            .collect()
    }
}

/// The [`SiblingSteps`] of a search tree. A child's step is its text past its parent's (the
/// last step of its own text when decoding does not keep the parent's text as a prefix);
/// children whose step is empty are left out, and groups left with fewer than two.
fn sibling_steps(
    model: &DecodeModel,
    nodes: &[mcts::Node],
    delimiter: &str,
) -> Result<Vec<SiblingSteps>> {
    let mut out = Vec::new();
    for node in nodes.iter().filter(|n| n.children.len() >= 2) {
        let parent = model.text(&node.partial.tokens)?;
        let mut group = SiblingSteps {
            prefix: split_steps(&parent, delimiter)
                .into_iter()
                .map(str::to_string)
                .collect(),
            steps: Vec::new(),
            q: Vec::new(),
            visits: Vec::new(),
        };
        for &c in &node.children {
            let text = model.text(&nodes[c].partial.tokens)?;
            let step = match text.strip_prefix(parent.as_str()) {
                Some(rest) => rest.replace(delimiter, " ").trim().to_string(),
                None => split_steps(&text, delimiter)
                    .last()
                    .map(|s| s.to_string())
                    .unwrap_or_default(),
            };
            if !step.is_empty() {
                group.steps.push(step);
                group.q.push(nodes[c].q());
                group.visits.push(nodes[c].visits);
            }
        }
        if group.steps.len() >= 2 {
            out.push(group);
        }
    }
    Ok(out)
}

/// PRM-guided MCTS ([`mcts::mcts`]): `simulations` select–expand–backup rounds with UCT
/// (`exploration` = C), `children` sampled steps per expansion, values (the PRM's, or by
/// rollouts checked by the PRM or against `gold`: [`mcts::NodeValue`]) backed up; the answer
/// is the best finished node by its value.
#[allow(clippy::too_many_arguments)]
pub(crate) fn mcts_search(
    model: &DecodeModel,
    (prompt, gold): (&Prompt, Option<f64>),
    ids: &[u32],
    search: (usize, usize, f64),
    value: &mcts::NodeValue,
    max_new_tokens: usize,
    params: &StepParams,
    seed: u64,
    scorer: &mut Counted<'_>,
) -> Result<Outcome> {
    let mut ex = LmExpander::new(model, prompt, ids, params, max_new_tokens, seed, scorer);
    ex.gold = gold.map(|g| (g, value.extraction));
    let out = mcts::mcts(&mut ex, search, params.max_steps, value)?;
    let siblings = sibling_steps(model, &out.nodes, &params.delimiter)?;
    let root = &out.nodes[0];
    let best = &out.nodes[out.best];
    let detail = Detail::Mcts {
        expansions: out.expansions,
        rollouts: out.rollouts,
        nodes: out.nodes.len(),
        finished_nodes: out.nodes.iter().filter(|n| n.partial.finished).count(),
        finished: out.finished,
        depth: best.depth,
        root_visits: root.visits,
        root_children_visits: root.children.iter().map(|&c| out.nodes[c].visits).collect(),
        siblings,
    };
    Ok((
        best.partial.tokens.clone(),
        best.value as f32,
        ex.tokens_generated,
        detail,
    ))
}

#[cfg(test)]
mod tests;
