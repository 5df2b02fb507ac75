//! The strategies: their configuration (a tagged enum, TOML-ready) and how each decodes one
//! prompt over the one KV-cache engine.

use std::time::Instant;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rm_core::models::llama::CausalLm;
use rm_core::sampling::{SamplingConfig, argmax, check_logits, choose_token, generate};
use rm_core::types::Prompt;
use serde::{Deserialize, Serialize};

use crate::bon::{best_index, kl_bound, soft_best_index};
use crate::engine::{Batch, row_rng};
use crate::error::{DecodeError, Result};
use crate::model::DecodeModel;
use crate::scorer::Counted;
use crate::search::{self, NodeValue, StepParams};

fn one() -> f32 {
    1.0
}

fn eight() -> usize {
    8
}

fn sqrt2() -> f64 {
    std::f64::consts::SQRT_2
}

fn default_max_new_tokens() -> usize {
    64
}

/// A reward-guided decoding method and its parameters. In TOML, the `[strategy]` table with
/// `type = "best-of-n" | "soft-best-of-n" | "rejection" | "args" | "lookahead" | "transfer-q"
/// | "genarm" | "controlled" | "beam-search" | "dvts" | "mcts" | "refine"` (the searches' step
/// settings in `[strategy.steps]`, [`StepParams`]; MCTS's node values in `[strategy.value]`,
/// [`NodeValue`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Strategy {
    /// Sample `n` responses (temperature, nucleus `top_p`), keep the highest reward.
    BestOfN {
        n: usize,
        #[serde(default = "one")]
        temperature: f32,
        #[serde(default = "one")]
        top_p: f32,
    },
    /// Sample `n`, pick i with probability ∝ exp(r_i/λ).
    SoftBestOfN {
        n: usize,
        lambda: f64,
        #[serde(default = "one")]
        temperature: f32,
        #[serde(default = "one")]
        top_p: f32,
    },
    /// Sample in rounds of `batch` until a reward ≥ `threshold` or `budget` samples in all.
    Rejection {
        threshold: f32,
        budget: usize,
        #[serde(default = "eight")]
        batch: usize,
        #[serde(default = "one")]
        temperature: f32,
        #[serde(default = "one")]
        top_p: f32,
    },
    /// ARGS: each token among the policy's `top_k`, scored `logit + weight · r`; greedy at
    /// temperature 0, else sampled from softmax(score / temperature).
    Args {
        top_k: usize,
        weight: f32,
        #[serde(default)]
        temperature: f32,
    },
    /// DeAL-style lookahead: ARGS whose candidates are scored after a greedy continuation of
    /// `depth` more tokens.
    Lookahead {
        top_k: usize,
        depth: usize,
        weight: f32,
        #[serde(default)]
        temperature: f32,
    },
    /// Transfer Q* (Chakraborty et al. 2024, "Transfer Q Star: Principled Decoding for LLM
    /// Alignment", direct transfer): each of the policy's `top_k` candidate tokens `z` gets the
    /// estimate `Q*(s, z) = r(x, y_<t z y_BL)` of a baseline aligned model's continuation
    /// `y_BL` (the guide, [`DecodeModel::with_guide`]: e.g. a DPO policy; `depth` greedy tokens,
    /// where the paper samples a full rollout), and the token is chosen by
    /// `logit + weight · Q*` — greedy at temperature 0, else sampled. With the policy itself as
    /// the baseline it is the lookahead strategy.
    TransferQ {
        top_k: usize,
        depth: usize,
        weight: f32,
        #[serde(default)]
        temperature: f32,
    },
    /// GenARM: next-token logits `log π_base + alpha · log π_arm` of the policy and a guide
    /// causal LM ([`DecodeModel::with_guide`]), greedy at temperature 0.
    GenArm {
        alpha: f32,
        #[serde(default)]
        temperature: f32,
    },
    /// Blockwise controlled decoding: `candidates` blocks of `block_size` tokens, the best kept.
    Controlled {
        candidates: usize,
        block_size: usize,
        #[serde(default = "one")]
        temperature: f32,
        #[serde(default = "one")]
        top_p: f32,
    },
    /// PRM-guided beam search: `n` beams, the best `n / beam_width` by the PRM each grow
    /// `beam_width` sampled steps ([`crate::search`]); needs a step scorer (`--prm`).
    BeamSearch {
        n: usize,
        beam_width: usize,
        #[serde(default)]
        steps: StepParams,
    },
    /// Diverse verifier tree search: `n / beam_width` independent PRM-greedy subtrees of width
    /// `beam_width`, the best leaf of all.
    Dvts {
        n: usize,
        beam_width: usize,
        #[serde(default)]
        steps: StepParams,
    },
    /// GLoRe-style refinement ([`crate::search`]): one draft, kept when its PRM score reaches
    /// `threshold`; else `candidates` rewrites from the first step the PRM scores below
    /// `threshold` and `candidates` fresh samples, the best of all by the PRM; needs `--prm`.
    Refine {
        candidates: usize,
        threshold: f32,
        #[serde(default)]
        steps: StepParams,
    },
    /// PRM-guided MCTS: `simulations` rounds of UCT selection (constant `exploration`),
    /// expansion by `children` sampled steps valued by the PRM or by rollouts ([`NodeValue`]),
    /// and backup.
    Mcts {
        simulations: usize,
        children: usize,
        #[serde(default = "sqrt2")]
        exploration: f64,
        #[serde(default)]
        steps: StepParams,
        #[serde(default)]
        value: NodeValue,
    },
}

/// What to decode with: a strategy and the response length.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DecodeConfig {
    /// Most new tokens per response.
    #[serde(default = "default_max_new_tokens")]
    pub max_new_tokens: usize,
    pub strategy: Strategy,
}

impl DecodeConfig {
    /// Parses a TOML file's text (`max_new_tokens = …` and a `[strategy]` table); `origin`
    /// names the file in errors.
    pub fn from_toml(text: &str, origin: &std::path::Path) -> Result<Self> {
        let config: Self = toml::from_str(text).map_err(|e| DecodeError::File {
            path: origin.to_path_buf(),
            reason: e.to_string(),
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Checks every parameter's range; the error names the field.
    pub fn validate(&self) -> Result<()> {
        let positive = |field: &'static str, v: usize| {
            if v == 0 {
                Err(DecodeError::config(field, "must be at least 1, got 0"))
            } else {
                Ok(())
            }
        };
        let temperature = |t: f32| {
            if t.is_finite() && t >= 0.0 {
                Ok(())
            } else {
                Err(DecodeError::config(
                    "temperature",
                    format!("must be finite and ≥ 0, got {t}"),
                ))
            }
        };
        let top_p = |p: f32| {
            if p > 0.0 && p <= 1.0 {
                Ok(())
            } else {
                Err(DecodeError::config(
                    "top_p",
                    format!("must be in (0, 1], got {p}"),
                ))
            }
        };
        positive("max_new_tokens", self.max_new_tokens)?;
        match &self.strategy {
            Strategy::BestOfN {
                n,
                temperature: t,
                top_p: p,
            } => {
                positive("n", *n)?;
                temperature(*t)?;
                top_p(*p)
            }
            Strategy::SoftBestOfN {
                n,
                lambda,
                temperature: t,
                top_p: p,
            } => {
                positive("n", *n)?;
                if lambda.is_nan() || *lambda < 0.0 {
                    return Err(DecodeError::config(
                        "lambda",
                        format!("must be ≥ 0, got {lambda}"),
                    ));
                }
                temperature(*t)?;
                top_p(*p)
            }
            Strategy::Rejection {
                threshold,
                budget,
                batch,
                temperature: t,
                top_p: p,
            } => {
                if !threshold.is_finite() {
                    return Err(DecodeError::config(
                        "threshold",
                        format!("must be finite, got {threshold}"),
                    ));
                }
                positive("budget", *budget)?;
                positive("batch", *batch)?;
                temperature(*t)?;
                top_p(*p)
            }
            Strategy::Args {
                top_k,
                weight,
                temperature: t,
            }
            | Strategy::Lookahead {
                top_k,
                depth: _,
                weight,
                temperature: t,
            }
            | Strategy::TransferQ {
                top_k,
                depth: _,
                weight,
                temperature: t,
            } => {
                positive("top_k", *top_k)?;
                if !weight.is_finite() {
                    return Err(DecodeError::config(
                        "weight",
                        format!("must be finite, got {weight}"),
                    ));
                }
                temperature(*t)
            }
            Strategy::GenArm {
                alpha,
                temperature: t,
            } => {
                if !alpha.is_finite() {
                    return Err(DecodeError::config(
                        "alpha",
                        format!("must be finite, got {alpha}"),
                    ));
                }
                temperature(*t)
            }
            Strategy::Controlled {
                candidates,
                block_size,
                temperature: t,
                top_p: p,
            } => {
                positive("candidates", *candidates)?;
                positive("block_size", *block_size)?;
                temperature(*t)?;
                top_p(*p)
            }
            Strategy::BeamSearch {
                n,
                beam_width,
                steps,
            }
            | Strategy::Dvts {
                n,
                beam_width,
                steps,
            } => {
                positive("n", *n)?;
                positive("beam_width", *beam_width)?;
                if n % beam_width != 0 {
                    return Err(DecodeError::config(
                        "n",
                        format!("must be a multiple of beam_width ({beam_width}), got {n}"),
                    ));
                }
                steps.validate()
            }
            Strategy::Refine {
                candidates,
                threshold,
                steps,
            } => {
                positive("candidates", *candidates)?;
                if !threshold.is_finite() {
                    return Err(DecodeError::config(
                        "threshold",
                        format!("must be finite, got {threshold}"),
                    ));
                }
                steps.validate()
            }
            Strategy::Mcts {
                simulations,
                children,
                exploration,
                steps,
                value,
            } => {
                positive("simulations", *simulations)?;
                positive("children", *children)?;
                if !(exploration.is_finite() && *exploration >= 0.0) {
                    return Err(DecodeError::config(
                        "exploration",
                        format!("must be finite and ≥ 0, got {exploration}"),
                    ));
                }
                value.validate()?;
                steps.validate()
            }
        }
    }
}

impl Strategy {
    /// The CLI / TOML name.
    pub fn name(&self) -> &'static str {
        match self {
            Strategy::BestOfN { .. } => "best-of-n",
            Strategy::SoftBestOfN { .. } => "soft-best-of-n",
            Strategy::Rejection { .. } => "rejection",
            Strategy::Args { .. } => "args",
            Strategy::Lookahead { .. } => "lookahead",
            Strategy::TransferQ { .. } => "transfer-q",
            Strategy::GenArm { .. } => "genarm",
            Strategy::Controlled { .. } => "controlled",
            Strategy::BeamSearch { .. } => "beam-search",
            Strategy::Dvts { .. } => "dvts",
            Strategy::Mcts { .. } => "mcts",
            Strategy::Refine { .. } => "refine",
        }
    }

    /// Whether the strategy reads a guide model (`--arm`): GenARM's autoregressive reward model,
    /// Transfer Q*'s baseline policy.
    pub fn needs_guide(&self) -> bool {
        matches!(self, Strategy::GenArm { .. } | Strategy::TransferQ { .. })
    }

    /// Whether the strategy searches over steps.
    pub fn is_step_search(&self) -> bool {
        matches!(
            self,
            Strategy::BeamSearch { .. }
                | Strategy::Dvts { .. }
                | Strategy::Mcts { .. }
                | Strategy::Refine { .. }
        )
    }

    /// Whether the strategy reads a process reward model: every step search, except MCTS
    /// valued by answer-checked rollouts alone ([`NodeValue::needs_prm`]).
    pub fn needs_step_scorer(&self) -> bool {
        match self {
            Strategy::Mcts { value, .. } => value.needs_prm(),
            other => other.is_step_search(),
        }
    }

    /// Whether the choice reads the prompts' gold answers: MCTS valued by answer-checked
    /// rollouts ([`NodeValue::reads_gold`]).
    pub fn reads_gold(&self) -> bool {
        matches!(self, Strategy::Mcts { value, .. } if value.reads_gold())
    }
}

/// Cost of one prompt's decoding.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct DecodeStats {
    /// Every token generated, discarded samples and candidates included.
    pub tokens_generated: usize,
    pub seconds: f64,
    /// `tokens_generated / seconds` (scoring time included).
    pub tokens_per_second: f64,
    /// Calls to the scorer (each a batch of texts).
    pub scorer_calls: usize,
    /// Texts scored in all.
    pub texts_scored: usize,
}

/// What the strategy saw on the way.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "strategy", rename_all = "kebab-case")]
pub enum Detail {
    BestOfN {
        /// Every sample's reward, in sampling order.
        rewards: Vec<f32>,
        chosen: usize,
        kl_bound: f64,
    },
    SoftBestOfN {
        rewards: Vec<f32>,
        chosen: usize,
        lambda: f64,
    },
    Rejection {
        accepted: bool,
        /// Samples drawn (≤ budget).
        samples: usize,
        /// Samples with reward ≥ threshold among them.
        accepted_samples: usize,
    },
    Args {
        /// Final response tokens chosen against the policy's own argmax.
        steered_tokens: usize,
    },
    Lookahead {
        /// Tokens chosen against the policy's own argmax.
        steered_tokens: usize,
    },
    TransferQ {
        /// Tokens chosen against the policy's own argmax.
        steered_tokens: usize,
    },
    GenArm {
        /// Tokens where the guided choice differs from the policy's own argmax.
        steered_tokens: usize,
    },
    Controlled {
        blocks: usize,
    },
    BeamSearch {
        /// Expansion rounds (each one generation batch and one PRM call).
        iterations: usize,
        /// Every finished solution's PRM score, in the order they finished.
        finished_rewards: Vec<f32>,
        /// The answer's index in `finished_rewards`.
        chosen: usize,
    },
    Dvts {
        subtrees: usize,
        iterations: usize,
        finished_rewards: Vec<f32>,
        chosen: usize,
        /// The subtree the answer grew in.
        subtree: usize,
    },
    Refine {
        /// The draft's PRM score.
        draft_reward: f32,
        /// The first step the PRM doubted (absent when the draft was kept).
        flagged_step: Option<usize>,
        /// The rewrites from that step, and the fresh samples.
        local_rewards: Vec<f32>,
        global_rewards: Vec<f32>,
        chosen: crate::search::refine::Refinement,
    },
    Mcts {
        /// Simulations that expanded a node (each one batch and one PRM call); the others
        /// revisited a finished node.
        expansions: usize,
        /// Completions rolled out to value new nodes (0 without `value.rollouts`).
        rollouts: usize,
        /// Nodes in the tree, the root included.
        nodes: usize,
        finished_nodes: usize,
        /// Whether the answer is a finished solution (else the best partial one).
        finished: bool,
        /// The answer's steps from the root.
        depth: usize,
        root_visits: u64,
        root_children_visits: Vec<u64>,
        /// Every node with two or more children: its steps and its children's next steps with
        /// their MCTS values, for `DecodeRequest::step_pairs` (not written to the JSON line).
        #[serde(skip)]
        siblings: Vec<crate::search::SiblingSteps>,
    },
}

/// One prompt's outcome.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Decoded {
    pub prompt: Prompt,
    /// The chosen response (special tokens skipped, trimmed).
    pub text: String,
    /// Its reward under the scorer.
    pub reward: f32,
    /// Its token ids (a stop token included).
    pub tokens: Vec<u32>,
    pub stats: DecodeStats,
    pub detail: Detail,
    /// With a gold answer for the prompt: the response's final answer checked against it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub answer_check: Option<crate::answers::AnswerCheck>,
}

/// Decodes one prompt (already tokenized as `ids`; `gold` its gold answer, read by MCTS's
/// answer-checked values) with `config`, rows seeded from `seed`.
pub(crate) fn decode_one(
    model: &DecodeModel,
    (prompt, gold): (&Prompt, Option<f64>),
    ids: &[u32],
    config: &DecodeConfig,
    seed: u64,
    scorer: &mut Counted<'_>,
) -> Result<Decoded> {
    let start = Instant::now();
    let (calls0, texts0) = (scorer.calls, scorer.texts);
    let stop = model.stop_tokens();
    let sampling = |temperature: f32, top_p: f32, seed: u64| SamplingConfig {
        max_new_tokens: config.max_new_tokens,
        temperature,
        top_p,
        stop_tokens: stop.clone(),
        seed,
        ..SamplingConfig::default()
    };
    let (tokens, reward, generated, detail) = match config.strategy {
        Strategy::BestOfN {
            n,
            temperature,
            top_p,
        } => {
            let (samples, generated) =
                sample_n(model, ids, n, &sampling(temperature, top_p, seed))?;
            let rewards = score_samples(model, prompt, &samples, scorer)?;
            let chosen = best_index(&rewards);
            let detail = Detail::BestOfN {
                rewards: rewards.clone(),
                chosen,
                kl_bound: kl_bound(n)?,
            };
            (samples[chosen].clone(), rewards[chosen], generated, detail)
        }
        Strategy::SoftBestOfN {
            n,
            lambda,
            temperature,
            top_p,
        } => {
            let (samples, generated) =
                sample_n(model, ids, n, &sampling(temperature, top_p, seed))?;
            let rewards = score_samples(model, prompt, &samples, scorer)?;
            let u: f64 = StdRng::seed_from_u64(seed ^ 0x50F7_B0A5_EED5_0F7B).random();
            let chosen = soft_best_index(&rewards, lambda, u);
            let detail = Detail::SoftBestOfN {
                rewards: rewards.clone(),
                chosen,
                lambda,
            };
            (samples[chosen].clone(), rewards[chosen], generated, detail)
        }
        Strategy::Rejection {
            threshold,
            budget,
            batch,
            temperature,
            top_p,
        } => rejection(
            model,
            prompt,
            ids,
            threshold,
            budget,
            batch,
            &sampling(temperature, top_p, seed),
            scorer,
        )?,
        Strategy::Args {
            top_k,
            weight,
            temperature,
        } => args(
            model,
            prompt,
            ids,
            (top_k, 0),
            weight,
            &sampling(temperature, 1.0, seed),
            scorer,
        )?,
        Strategy::Lookahead {
            top_k,
            depth,
            weight,
            temperature,
        }
        | Strategy::TransferQ {
            top_k,
            depth,
            weight,
            temperature,
        } => {
            // The lookahead continues candidates with the policy, Transfer Q* with the baseline.
            let transfer = matches!(config.strategy, Strategy::TransferQ { .. });
            let rollout = match transfer {
                false => &model.lm,
                true => model.guide.as_ref().ok_or_else(|| {
                    DecodeError::config(
                        "arm",
                        "transfer-q rolls candidates out with a baseline model: give --arm DIR",
                    )
                })?,
            };
            let (tokens, reward, generated, detail) = args_with_rollouts(
                model,
                rollout,
                prompt,
                ids,
                (top_k, depth),
                weight,
                &sampling(temperature, 1.0, seed),
                scorer,
            )?;
            let Detail::Args { steered_tokens } = detail else {
                unreachable!("args() reports Detail::Args")
            };
            let detail = match transfer {
                false => Detail::Lookahead { steered_tokens },
                true => Detail::TransferQ { steered_tokens },
            };
            (tokens, reward, generated, detail)
        }
        Strategy::GenArm { alpha, temperature } => genarm(
            model,
            prompt,
            ids,
            alpha,
            &sampling(temperature, 1.0, seed),
            scorer,
        )?,
        Strategy::Controlled {
            candidates,
            block_size,
            temperature,
            top_p,
        } => controlled(
            model,
            prompt,
            ids,
            candidates,
            block_size,
            &sampling(temperature, top_p, seed),
            scorer,
        )?,
        Strategy::BeamSearch {
            n,
            beam_width,
            ref steps,
        }
        | Strategy::Dvts {
            n,
            beam_width,
            ref steps,
        } => search::beam_search(
            model,
            prompt,
            ids,
            (n, beam_width, config.max_new_tokens),
            matches!(config.strategy, Strategy::Dvts { .. }),
            steps,
            seed,
            scorer,
        )?,
        Strategy::Refine {
            candidates,
            threshold,
            ref steps,
        } => search::refine_search(
            model,
            prompt,
            ids,
            (candidates, threshold, config.max_new_tokens),
            steps,
            seed,
            scorer,
        )?,
        Strategy::Mcts {
            simulations,
            children,
            exploration,
            ref steps,
            ref value,
        } => search::mcts_search(
            model,
            (prompt, gold),
            ids,
            (simulations, children, exploration),
            value,
            config.max_new_tokens,
            steps,
            seed,
            scorer,
        )?,
    };
    let seconds = start.elapsed().as_secs_f64();
    let text = model.text(&tokens)?;
    Ok(Decoded {
        prompt: prompt.clone(),
        answer_check: gold.map(|g| crate::answers::AnswerCheck::of(&text, g)),
        text,
        reward,
        tokens,
        stats: DecodeStats {
            tokens_generated: generated,
            seconds,
            tokens_per_second: generated as f64 / seconds.max(1e-9),
            scorer_calls: scorer.calls - calls0,
            texts_scored: scorer.texts - texts0,
        },
        detail,
    })
}

/// `n` samples of the prompt in one batch (row r seeded `seed ^ r·φ`, so the first m rows are
/// the samples of an m-row run); returns their tokens and the tokens generated.
fn sample_n(
    model: &DecodeModel,
    ids: &[u32],
    n: usize,
    config: &SamplingConfig,
) -> Result<(Vec<Vec<u32>>, usize)> {
    let rows = vec![ids.to_vec(); n];
    let out = generate(
        &model.lm,
        &model.lm.tokenizer,
        &rows,
        config,
        &model.lm.device,
    )
    .map_err(DecodeError::model)?;
    let generated = out.iter().map(|r| r.tokens.len()).sum();
    Ok((out.into_iter().map(|r| r.tokens).collect(), generated))
}

fn score_samples(
    model: &DecodeModel,
    prompt: &Prompt,
    samples: &[Vec<u32>],
    scorer: &mut Counted<'_>,
) -> Result<Vec<f32>> {
    let texts: Vec<String> = samples
        .iter()
        .map(|t| model.text(t))
        .collect::<Result<_>>()?;
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    scorer.score(prompt, &refs)
}

pub(crate) type Outcome = (Vec<u32>, f32, usize, Detail);

/// Rejection sampling: rounds of `batch` samples (round j seeded `seed + j·c`) until one scores
/// ≥ `threshold` (the first such one is returned) or `budget` samples are spent (then the best
/// one, `accepted = false`).
#[allow(clippy::too_many_arguments)]
fn rejection(
    model: &DecodeModel,
    prompt: &Prompt,
    ids: &[u32],
    threshold: f32,
    budget: usize,
    batch: usize,
    config: &SamplingConfig,
    scorer: &mut Counted<'_>,
) -> Result<Outcome> {
    let (mut drawn, mut generated, mut passed) = (0, 0, 0);
    let mut best: Option<(Vec<u32>, f32)> = None;
    let mut round = 0u64;
    while drawn < budget {
        let size = batch.min(budget - drawn);
        let round_config = SamplingConfig {
            seed: config
                .seed
                .wrapping_add(round.wrapping_mul(0xD1B5_4A32_D192_ED03)),
            ..config.clone()
        };
        let (samples, g) = sample_n(model, ids, size, &round_config)?;
        generated += g;
        let rewards = score_samples(model, prompt, &samples, scorer)?;
        passed += rewards.iter().filter(|&&r| r >= threshold).count();
        if let Some(i) = rewards.iter().position(|&r| r >= threshold) {
            drawn += i + 1;
            let detail = Detail::Rejection {
                accepted: true,
                samples: drawn,
                accepted_samples: passed,
            };
            return Ok((samples[i].clone(), rewards[i], generated, detail));
        }
        drawn += size;
        let i = best_index(&rewards);
        if best.as_ref().is_none_or(|b| rewards[i] > b.1) {
            best = Some((samples[i].clone(), rewards[i]));
        }
        round += 1;
    }
    let (tokens, reward) = best.expect("budget ≥ 1 draws at least one round");
    let detail = Detail::Rejection {
        accepted: false,
        samples: drawn,
        accepted_samples: passed,
    };
    Ok((tokens, reward, generated, detail))
}

/// The `k` largest logits' token ids, by decreasing logit, ties by id.
fn top_k_ids(logits: &[f32], k: usize) -> Vec<u32> {
    let mut order: Vec<u32> = (0..logits.len() as u32).collect();
    let k = k.min(order.len());
    order.select_nth_unstable_by(k - 1, |&a, &b| {
        logits[b as usize]
            .total_cmp(&logits[a as usize])
            .then(a.cmp(&b))
    });
    order.truncate(k);
    order.sort_unstable_by(|&a, &b| {
        logits[b as usize]
            .total_cmp(&logits[a as usize])
            .then(a.cmp(&b))
    });
    order
}

/// ARGS (Khanov et al. 2024, "ARGS: Alignment as Reward-Guided Search"): at each step the
/// policy's top-k tokens v get the score `s(v) = logit(v) + w · r(x, y_<t ⊕ v)`, r the scorer on
/// the prompt and the text so far with v appended; greedy takes `argmax s`, sampling draws from
/// `softmax(s / T)` over the k candidates (the logit differs from log π by a per-step constant,
/// so either gives the same choice). `w = 0` skips the scorer and is exactly greedy / top-k
/// sampling. One scorer call of k texts per token.
///
/// With `depth > 0` this is DeAL-style lookahead (Huang et al. 2024, "DeAL: Decoding-time
/// Alignment for Large Language Models"): each candidate v is first continued greedily by up
/// to `depth` tokens ℓ(v) (one batched prefill of the k candidates, then `depth − 1` steps) and
/// scored as `s(v) = logit(v) + w · r(x, y_<t ⊕ v ⊕ ℓ(v))`, so rewards that only show further
/// on (keywords, length) are seen. Only v is kept; the lookahead is recomputed next step.
/// Generated-token counts include the lookahead tokens.
fn args(
    model: &DecodeModel,
    prompt: &Prompt,
    ids: &[u32],
    (top_k, depth): (usize, usize),
    weight: f32,
    config: &SamplingConfig,
    scorer: &mut Counted<'_>,
) -> Result<Outcome> {
    args_with_rollouts(
        model,
        &model.lm,
        prompt,
        ids,
        (top_k, depth),
        weight,
        config,
        scorer,
    )
}

/// [`args`] whose candidates are continued by `rollout` (the policy itself for the lookahead,
/// a baseline model for Transfer Q*).
#[allow(clippy::too_many_arguments)]
fn args_with_rollouts(
    model: &DecodeModel,
    rollout: &CausalLm,
    prompt: &Prompt,
    ids: &[u32],
    (top_k, depth): (usize, usize),
    weight: f32,
    config: &SamplingConfig,
    scorer: &mut Counted<'_>,
) -> Result<Outcome> {
    let lm = &model.lm;
    let (mut batch, mut logits) = Batch::prefill(lm, &[ids.to_vec()])?;
    let mut rng = row_rng(config.seed, 0);
    let mut seen = ids.to_vec();
    let mut tokens: Vec<u32> = Vec::new();
    let mut steered = 0;
    let mut lookahead_tokens = 0;
    // Only the top-k candidates have finite scores; drawing with the top-k filter on ranks them
    // as top-k sampling does, so weight 0 is top-k sampling of the same seed, draw for draw.
    let choose = SamplingConfig {
        top_k,
        top_p: 1.0,
        min_p: 0.0,
        repetition_penalty: 1.0,
        ..config.clone()
    };
    for step in 0..config.max_new_tokens {
        let raw = &logits[0];
        check_logits(raw)
            .map_err(|e| DecodeError::Model(format!("generation step {step}: {e}")))?;
        let u: f32 = if config.temperature == 0.0 {
            0.0
        } else {
            rng.random()
        };
        let candidates = top_k_ids(raw, top_k);
        let mut adjusted = vec![f32::NEG_INFINITY; raw.len()];
        if weight == 0.0 {
            for &c in &candidates {
                adjusted[c as usize] = raw[c as usize];
            }
        } else {
            let mut continued: Vec<Vec<u32>> = candidates
                .iter()
                .map(|&c| [tokens.as_slice(), &[c]].concat())
                .collect();
            if depth > 0 {
                let looked =
                    greedy_lookahead(rollout, ids, &continued, depth, &config.stop_tokens)?;
                for (row, extra) in continued.iter_mut().zip(looked) {
                    lookahead_tokens += extra.len();
                    row.extend(extra);
                }
            }
            let texts: Vec<String> = continued
                .iter()
                .map(|t| model.text(t))
                .collect::<Result<_>>()?;
            let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
            let rewards = scorer.score(prompt, &refs)?;
            for (&c, r) in candidates.iter().zip(rewards) {
                adjusted[c as usize] = raw[c as usize] + weight * r;
            }
        }
        let (token, _, _) = choose_token(&adjusted, &seen, &choose, u)
            .map_err(|e| DecodeError::Model(format!("generation step {step}: {e:#}")))?;
        if token as usize != argmax(raw) {
            steered += 1;
        }
        tokens.push(token);
        seen.push(token);
        if config.stop_tokens.contains(&token) || step + 1 == config.max_new_tokens {
            break;
        }
        logits = batch.step(&[Some(token)])?;
    }
    let text = model.text(&tokens)?;
    let reward = scorer.score(prompt, &[text.as_str()])?[0];
    let generated = tokens.len() + lookahead_tokens;
    Ok((
        tokens,
        reward,
        generated,
        Detail::Args {
            steered_tokens: steered,
        },
    ))
}

/// Greedy continuations of up to `depth` tokens of each `rows[i]` (the response so far, after
/// the prompt `ids`); a row whose last token is a stop token is not continued.
fn greedy_lookahead(
    lm: &CausalLm,
    ids: &[u32],
    rows: &[Vec<u32>],
    depth: usize,
    stop: &[u32],
) -> Result<Vec<Vec<u32>>> {
    let full: Vec<Vec<u32>> = rows.iter().map(|r| [ids, r.as_slice()].concat()).collect();
    let (mut batch, mut logits) = Batch::prefill(lm, &full)?;
    let mut out = vec![Vec::new(); rows.len()];
    let mut done: Vec<bool> = rows
        .iter()
        .map(|r| r.last().is_some_and(|t| stop.contains(t)))
        .collect();
    for step in 0..depth {
        let mut next = vec![None; rows.len()];
        for (i, row) in logits.iter().enumerate() {
            if done[i] {
                continue;
            }
            let token = argmax(row) as u32;
            out[i].push(token);
            if stop.contains(&token) {
                done[i] = true;
            } else {
                next[i] = Some(token);
            }
        }
        if done.iter().all(|&d| d) || step + 1 == depth {
            break;
        }
        logits = batch.step(&next)?;
    }
    Ok(out)
}

/// The `k` highest-logit token ids, for the tests.
#[cfg(test)]
pub(crate) fn top_k_ids_for_tests(logits: &[f32], k: usize) -> Vec<u32> {
    top_k_ids(logits, k)
}

/// [`greedy_lookahead`] with the model's stop tokens, for the tests.
#[cfg(test)]
pub(crate) fn greedy_lookahead_for_tests(
    model: &DecodeModel,
    ids: &[u32],
    rows: &[Vec<u32>],
    depth: usize,
) -> Result<Vec<Vec<u32>>> {
    greedy_lookahead(&model.lm, ids, rows, depth, &model.stop_tokens())
}

/// GenARM (Xu et al. 2025, "GenARM: Reward Guided Generation with Autoregressive Reward
/// Model for Test-time Alignment"): decode from
/// `π(y_t | x, y_<t) ∝ π_base(y_t | ·) · π_arm(y_t | ·)^α`, i.e. next-token logits
/// `log π_base + α · log π_arm` (log-softmax of each model's logits; α = 1/β of the paper), the
/// guide an autoregressive reward model (any causal LM with the policy's vocabulary) stepped in
/// lockstep with the policy, each with its own KV cache. α = 0 is plain decoding of the policy
/// (token for token, same seed); a large α follows the guide. The scorer only scores the result.
fn genarm(
    model: &DecodeModel,
    prompt: &Prompt,
    ids: &[u32],
    alpha: f32,
    config: &SamplingConfig,
    scorer: &mut Counted<'_>,
) -> Result<Outcome> {
    let guide = model.guide.as_ref().ok_or_else(|| {
        DecodeError::config(
            "genarm",
            "needs a guide model (DecodeModel::with_guide, --arm DIR)",
        )
    })?;
    let (mut base, mut base_logits) = Batch::prefill(&model.lm, &[ids.to_vec()])?;
    let (mut arm, mut arm_logits) = Batch::prefill(guide, &[ids.to_vec()])?;
    if arm_logits[0].len() != base_logits[0].len() {
        return Err(DecodeError::config(
            "genarm",
            format!(
                "the guide's vocabulary ({}) is not the policy's ({})",
                arm_logits[0].len(),
                base_logits[0].len()
            ),
        ));
    }
    let mut rng = row_rng(config.seed, 0);
    let mut seen = ids.to_vec();
    let mut tokens = Vec::new();
    let mut steered = 0;
    for step in 0..config.max_new_tokens {
        let raw = &base_logits[0];
        check_logits(raw)
            .map_err(|e| DecodeError::Model(format!("generation step {step}: {e}")))?;
        let u: f32 = if config.temperature == 0.0 {
            0.0
        } else {
            rng.random()
        };
        let combined: Vec<f32> = if alpha == 0.0 {
            raw.clone()
        } else {
            check_logits(&arm_logits[0])
                .map_err(|e| DecodeError::Model(format!("guide, generation step {step}: {e}")))?;
            let lb = rm_core::sampling::log_softmax(raw);
            let la = rm_core::sampling::log_softmax(&arm_logits[0]);
            lb.iter().zip(&la).map(|(b, a)| b + alpha * a).collect()
        };
        let (token, _, _) = choose_token(&combined, &seen, config, u)
            .map_err(|e| DecodeError::Model(format!("generation step {step}: {e:#}")))?;
        if token as usize != argmax(raw) {
            steered += 1;
        }
        tokens.push(token);
        seen.push(token);
        if config.stop_tokens.contains(&token) || step + 1 == config.max_new_tokens {
            break;
        }
        base_logits = base.step(&[Some(token)])?;
        arm_logits = arm.step(&[Some(token)])?;
    }
    let text = model.text(&tokens)?;
    let reward = scorer.score(prompt, &[text.as_str()])?[0];
    let generated = tokens.len();
    Ok((
        tokens,
        reward,
        generated,
        Detail::GenArm {
            steered_tokens: steered,
        },
    ))
}

/// Blockwise controlled decoding (Mudgal et al. 2024, "Controlled Decoding from Language
/// Models", best-of-K blockwise): from the prefix x ⊕ y, sample K continuations of B tokens
/// (temperature, top-p), keep `argmax_k r(x, y ⊕ block_k)`, append it, repeat until
/// `max_new_tokens` or the kept block ends at a stop token. Candidate k draws from its own RNG
/// stream (row k's of [`rm_core::sampling::generate`]) carried across blocks, so K = 1 is plain
/// sampling with the same seed.
fn controlled(
    model: &DecodeModel,
    prompt: &Prompt,
    ids: &[u32],
    candidates: usize,
    block_size: usize,
    config: &SamplingConfig,
    scorer: &mut Counted<'_>,
) -> Result<Outcome> {
    let lm = &model.lm;
    let mut rngs: Vec<StdRng> = (0..candidates).map(|r| row_rng(config.seed, r)).collect();
    let mut chosen: Vec<u32> = Vec::new();
    let (mut generated, mut blocks, mut reward) = (0, 0, None);
    while chosen.len() < config.max_new_tokens {
        let block = block_size.min(config.max_new_tokens - chosen.len());
        let prefix: Vec<u32> = ids.iter().chain(&chosen).copied().collect();
        let (mut batch, mut logits) = Batch::prefill(lm, &vec![prefix.clone(); candidates])?;
        let mut cand: Vec<Vec<u32>> = vec![Vec::new(); candidates];
        let mut done = vec![false; candidates];
        for s in 0..block {
            let mut next = vec![None; candidates];
            for k in 0..candidates {
                if done[k] {
                    continue;
                }
                let u: f32 = if config.temperature == 0.0 {
                    0.0
                } else {
                    rngs[k].random()
                };
                let seen: Vec<u32> = prefix.iter().chain(&cand[k]).copied().collect();
                let (token, _, _) = choose_token(&logits[k], &seen, config, u).map_err(|e| {
                    DecodeError::Model(format!(
                        "generation step {} (candidate {k}): {e:#}",
                        chosen.len() + s
                    ))
                })?;
                cand[k].push(token);
                generated += 1;
                if config.stop_tokens.contains(&token) {
                    done[k] = true;
                } else {
                    next[k] = Some(token);
                }
            }
            if done.iter().all(|&d| d) || s + 1 == block {
                break;
            }
            logits = batch.step(&next)?;
        }
        let texts: Vec<String> = cand
            .iter()
            .map(|c| model.text(&[chosen.as_slice(), c].concat()))
            .collect::<Result<_>>()?;
        let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
        let rewards = scorer.score(prompt, &refs)?;
        let best = best_index(&rewards);
        blocks += 1;
        reward = Some(rewards[best]);
        let stopped = done[best];
        chosen.extend_from_slice(&cand[best]);
        if stopped {
            break;
        }
    }
    let reward = reward.expect("max_new_tokens ≥ 1 runs one block");
    Ok((chosen, reward, generated, Detail::Controlled { blocks }))
}
