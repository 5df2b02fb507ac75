//! `plumb decode`: reward-guided decoding of a policy with a reward model — parses the flags
//! (or a `--config` TOML), makes one `decoding::run_decode` call, prints the summary.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::{Args, ValueEnum};
use decoding::{
    DecodeConfig, DecodeRequest, NodeValue, PromptSource, RolloutJudge, ScorerSpec, StepPairsOut,
    StepParams, Strategy, run_decode,
};
use rm_process::Aggregation;

use crate::GlobalArgs;

/// `--strategy`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum StrategyArg {
    /// Sample --n, keep the highest reward.
    BestOfN,
    /// Sample --n, pick one with probability ∝ exp(r / --lambda).
    SoftBestOfN,
    /// Sample until reward ≥ --threshold or --budget samples.
    Rejection,
    /// ARGS: --top-k tokens rescored logit + --weight · r at every step.
    Args,
    /// DeAL-style lookahead: ARGS with each candidate scored after --depth greedy tokens.
    Lookahead,
    /// Transfer Q*: ARGS with each candidate scored after --depth greedy tokens of the --arm
    /// baseline model (e.g. a DPO policy).
    TransferQ,
    /// GenARM: logits log π + --alpha · log π_arm of the policy and the --arm model.
    Genarm,
    /// Best of --candidates blocks of --block-size tokens, block after block.
    Controlled,
    /// PRM-guided beam search: --n beams, the best --n / --beam-width each grow --beam-width
    /// steps (needs --prm).
    BeamSearch,
    /// Diverse verifier tree search: --n / --beam-width PRM-greedy subtrees of width
    /// --beam-width (needs --prm).
    Dvts,
    /// PRM-guided MCTS: --simulations rounds, --children steps per expansion (needs --prm).
    Mcts,
    /// GLoRe-style refinement: a draft, kept when its PRM score reaches --threshold, else
    /// --candidates rewrites from its first doubted step and --candidates fresh samples, the
    /// best by the PRM (needs --prm).
    Refine,
}

/// `--rollout-judge`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum JudgeArg {
    Prm,
    Answer,
}

#[derive(Args, Debug)]
#[command(group(clap::ArgGroup::new("scorer").args(["rm", "prm", "keywords", "target_words"])))]
pub struct DecodeArgs {
    /// The decoding method (or --config).
    #[arg(long, value_enum, required_unless_present = "config")]
    pub strategy: Option<StrategyArg>,
    /// A TOML file: `max_new_tokens = 32` and a `[strategy]` table with `type = "best-of-n"`
    /// and its parameters (instead of --strategy and its flags).
    #[arg(long, conflicts_with_all = ["strategy", "n", "temperature", "top_p", "lambda", "threshold", "budget", "batch", "top_k", "weight", "block_size", "candidates", "alpha", "depth", "max_new_tokens", "beam_width", "simulations", "children", "exploration", "max_steps", "step_tokens", "rollouts", "rollout_judge", "value_mix"])]
    pub config: Option<PathBuf>,
    /// A policy folder (`plumb train-po`) or a model folder / .gguf (then ChatML).
    #[arg(long)]
    pub policy: PathBuf,
    /// A reward-model folder (`plumb train-rm`) or an ensemble folder (one with
    /// ensemble.json): the scorer.
    #[arg(long)]
    pub rm: Option<PathBuf>,
    /// With an ensemble --rm: the aggregation, e.g. mean, median, min, mean-minus-std:0.5,
    /// brme:0.5 [default: the one ensemble.json names].
    #[arg(long, requires = "rm")]
    pub aggregation: Option<rm_pipeline::ensemble::Aggregation>,
    /// A process-reward-model folder (`plumb train-prm`): the scorer of the searches
    /// (beam-search, dvts, mcts); with the other strategies a response's reward is its steps'
    /// (split at --delimiter) probabilities aggregated by --aggregation.
    #[arg(long)]
    pub prm: Option<PathBuf>,
    /// With --prm: the text that ends a reasoning step [default: "\n\n"; write a newline as
    /// \n].
    #[arg(long)]
    pub delimiter: Option<String>,
    /// With --prm: step probabilities → solution score (min, product, last, mean,
    /// sum-log-prob) [default: last].
    #[arg(long, value_parser = parse_aggregation)]
    pub step_aggregation: Option<Aggregation>,
    /// beam-search, dvts: children per kept beam M (--n must be a multiple) [default: 2].
    #[arg(long)]
    pub beam_width: Option<usize>,
    /// mcts: simulations per prompt [default: 16].
    #[arg(long)]
    pub simulations: Option<usize>,
    /// mcts: steps sampled per expansion [default: 3].
    #[arg(long)]
    pub children: Option<usize>,
    /// mcts: UCT exploration constant C [default: √2].
    #[arg(long)]
    pub exploration: Option<f64>,
    /// mcts: completions rolled out to the end from each new node to value it [default: 0 =
    /// the PRM's value of the partial solution].
    #[arg(long)]
    pub rollouts: Option<usize>,
    /// mcts with --rollouts: how a finished rollout is judged: prm (its PRM score) or answer
    /// (1 when its final answer is the prompt's gold answer: --input gsm8k:test or rows with
    /// "answer"; no --prm needed with --value-mix 1) [default: prm].
    #[arg(long, value_enum)]
    pub rollout_judge: Option<JudgeArg>,
    /// mcts with --rollouts: λ in v = (1 − λ)·PRM value + λ·mean rollout outcome [default: 1].
    #[arg(long)]
    pub value_mix: Option<f64>,
    /// mcts: also write the trees' sibling-step preferences (steps after the same prefix whose
    /// MCTS values differ by at least --pair-margin) as step-pair JSONL for `train-prm`'s
    /// `source = "step-pairs"`.
    #[arg(long, value_name = "FILE")]
    pub step_pairs: Option<PathBuf>,
    /// mcts with --step-pairs: the least value difference of a pair [default: 0.1].
    #[arg(long, requires = "step_pairs")]
    pub pair_margin: Option<f64>,
    /// beam-search, dvts, mcts: most steps per solution; the last is generated to the end
    /// [default: 40].
    #[arg(long)]
    pub max_steps: Option<usize>,
    /// beam-search, dvts, mcts: most tokens per step [default: 64].
    #[arg(long)]
    pub step_tokens: Option<usize>,
    /// Instead of --rm: reward = the fraction of these keywords (comma-separated) in the
    /// response, case-insensitive.
    #[arg(long, value_delimiter = ',')]
    pub keywords: Vec<String>,
    /// Instead of --rm: reward = −|words in the response − this target|.
    #[arg(long)]
    pub target_words: Option<usize>,
    /// A JSONL file of {"prompt": …} rows (with an optional gold "answer"), hh-rlhf:dev /
    /// hh-rlhf:train, or gsm8k:test / gsm8k:train (questions with their gold answers).
    #[arg(long)]
    pub input: PromptSource,
    /// How many distinct prompts of --input (the first ones).
    #[arg(long, default_value_t = 20)]
    pub prompts: usize,
    /// best-of-n, soft-best-of-n: samples per prompt [default: 8].
    #[arg(long)]
    pub n: Option<usize>,
    /// Sampling temperature [default: 1; args: 0 = greedy].
    #[arg(long)]
    pub temperature: Option<f32>,
    /// Nucleus threshold of the sampling strategies [default: 1 = off].
    #[arg(long)]
    pub top_p: Option<f32>,
    /// soft-best-of-n: λ of exp(r/λ) [default: 1].
    #[arg(long)]
    pub lambda: Option<f64>,
    /// rejection: accept a sample with reward ≥ this (required); refine: keep the draft at or
    /// above it, rewrite from the first step below it [default: 0.5].
    #[arg(long)]
    pub threshold: Option<f32>,
    /// rejection: most samples per prompt [default: 16].
    #[arg(long)]
    pub budget: Option<usize>,
    /// rejection: samples per round [default: 4].
    #[arg(long)]
    pub batch: Option<usize>,
    /// args, lookahead, transfer-q: candidate tokens per step [default: 5].
    #[arg(long)]
    pub top_k: Option<usize>,
    /// args, lookahead, transfer-q: weight w of the reward [default: 1].
    #[arg(long)]
    pub weight: Option<f32>,
    /// controlled: tokens per block [default: 8].
    #[arg(long)]
    pub block_size: Option<usize>,
    /// controlled: candidate blocks per step [default: 4]; refine: rewrites of each kind
    /// [default: 2].
    #[arg(long)]
    pub candidates: Option<usize>,
    /// lookahead, transfer-q: greedy tokens after each candidate before it is scored
    /// [default: 4; transfer-q: 16].
    #[arg(long)]
    pub depth: Option<usize>,
    /// genarm: weight α of the guide's log-probs [default: 1].
    #[arg(long)]
    pub alpha: Option<f32>,
    /// genarm: the guide, a causal-LM folder with the policy's vocabulary (an autoregressive
    /// reward model); transfer-q: the baseline model that rolls candidates out (a causal-LM or
    /// policy folder, e.g. a DPO policy).
    #[arg(long)]
    pub arm: Option<PathBuf>,
    /// Most new tokens per response [default: 64].
    #[arg(long)]
    pub max_new_tokens: Option<usize>,
    /// best-of-n: mean reward for each of these n (comma-separated) from one pass of max(n)
    /// samples, e.g. --curve 1,2,4,8,16.
    #[arg(long, value_delimiter = ',')]
    pub curve: Vec<usize>,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
    /// A MAH-DPO policy's head mixture, `NAME=WEIGHT,…` (normalised; heads not named get 0;
    /// absent: the weights it was trained with).
    #[arg(long)]
    pub head_weights: Option<rm_core::models::action_heads::HeadWeights>,
}

impl DecodeArgs {
    /// The strategy the flags (or the --config file) describe.
    fn decode_config(&self) -> Result<DecodeConfig> {
        if let Some(path) = &self.config {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            return Ok(DecodeConfig::from_toml(&text, path)?);
        }
        let strategy = self.strategy.context("give --strategy or --config")?;
        let temperature = self.temperature.unwrap_or(1.0);
        let top_p = self.top_p.unwrap_or(1.0);
        let n = self.n.unwrap_or(8);
        let unused = |flags: &[(&str, bool)]| -> Result<()> {
            if let Some((flag, _)) = flags.iter().find(|(_, set)| *set) {
                bail!("--{flag} does not apply to --strategy {strategy:?}");
            }
            Ok(())
        };
        if strategy != StrategyArg::Mcts {
            unused(&[
                ("rollouts", self.rollouts.is_some()),
                ("rollout-judge", self.rollout_judge.is_some()),
                ("value-mix", self.value_mix.is_some()),
            ])?;
        }
        let strategy = match strategy {
            StrategyArg::BestOfN => {
                unused(&[
                    ("lambda", self.lambda.is_some()),
                    ("threshold", self.threshold.is_some()),
                    ("weight", self.weight.is_some()),
                ])?;
                Strategy::BestOfN {
                    n,
                    temperature,
                    top_p,
                }
            }
            StrategyArg::SoftBestOfN => Strategy::SoftBestOfN {
                n,
                lambda: self.lambda.unwrap_or(1.0),
                temperature,
                top_p,
            },
            StrategyArg::Rejection => Strategy::Rejection {
                threshold: self
                    .threshold
                    .context("--strategy rejection needs --threshold")?,
                budget: self.budget.unwrap_or(16),
                batch: self.batch.unwrap_or(4),
                temperature,
                top_p,
            },
            StrategyArg::Args => {
                unused(&[("n", self.n.is_some()), ("top-p", self.top_p.is_some())])?;
                Strategy::Args {
                    top_k: self.top_k.unwrap_or(5),
                    weight: self.weight.unwrap_or(1.0),
                    temperature: self.temperature.unwrap_or(0.0),
                }
            }
            StrategyArg::Lookahead => {
                unused(&[("n", self.n.is_some()), ("top-p", self.top_p.is_some())])?;
                Strategy::Lookahead {
                    top_k: self.top_k.unwrap_or(5),
                    depth: self.depth.unwrap_or(4),
                    weight: self.weight.unwrap_or(1.0),
                    temperature: self.temperature.unwrap_or(0.0),
                }
            }
            StrategyArg::TransferQ => {
                unused(&[("n", self.n.is_some()), ("top-p", self.top_p.is_some())])?;
                if self.arm.is_none() {
                    bail!("--strategy transfer-q needs --arm DIR (the baseline model)");
                }
                Strategy::TransferQ {
                    top_k: self.top_k.unwrap_or(5),
                    depth: self.depth.unwrap_or(16),
                    weight: self.weight.unwrap_or(1.0),
                    temperature: self.temperature.unwrap_or(0.0),
                }
            }
            StrategyArg::Genarm => {
                if self.arm.is_none() {
                    bail!("--strategy genarm needs --arm DIR (the guide model)");
                }
                Strategy::GenArm {
                    alpha: self.alpha.unwrap_or(1.0),
                    temperature: self.temperature.unwrap_or(0.0),
                }
            }
            StrategyArg::Controlled => Strategy::Controlled {
                candidates: self.candidates.unwrap_or(4),
                block_size: self.block_size.unwrap_or(8),
                temperature,
                top_p,
            },
            StrategyArg::BeamSearch
            | StrategyArg::Dvts
            | StrategyArg::Mcts
            | StrategyArg::Refine => {
                let value = NodeValue {
                    rollouts: self.rollouts.unwrap_or(0),
                    judge: match self.rollout_judge {
                        Some(JudgeArg::Answer) => RolloutJudge::Answer,
                        Some(JudgeArg::Prm) | None => RolloutJudge::Prm,
                    },
                    lambda: self.value_mix.unwrap_or(1.0),
                    ..NodeValue::default()
                };
                let prm_read = strategy != StrategyArg::Mcts || value.needs_prm();
                if self.prm.is_none() && prm_read {
                    bail!("--strategy {strategy:?} needs --prm DIR (a process reward model)");
                }
                let defaults = StepParams::default();
                let steps = StepParams {
                    delimiter: self.delimiter()?.unwrap_or(defaults.delimiter),
                    max_steps: self.max_steps.unwrap_or(defaults.max_steps),
                    step_tokens: self.step_tokens.unwrap_or(defaults.step_tokens),
                    aggregation: self.step_aggregation.unwrap_or(defaults.aggregation),
                    temperature: self.temperature.unwrap_or(defaults.temperature),
                    top_p,
                };
                if strategy == StrategyArg::Refine {
                    unused(&[
                        ("n", self.n.is_some()),
                        ("beam-width", self.beam_width.is_some()),
                        ("simulations", self.simulations.is_some()),
                        ("children", self.children.is_some()),
                        ("exploration", self.exploration.is_some()),
                    ])?;
                    Strategy::Refine {
                        candidates: self.candidates.unwrap_or(2),
                        threshold: self.threshold.unwrap_or(0.5),
                        steps,
                    }
                } else if strategy == StrategyArg::Mcts {
                    unused(&[
                        ("n", self.n.is_some()),
                        ("beam-width", self.beam_width.is_some()),
                    ])?;
                    Strategy::Mcts {
                        simulations: self.simulations.unwrap_or(16),
                        children: self.children.unwrap_or(3),
                        exploration: self.exploration.unwrap_or(std::f64::consts::SQRT_2),
                        steps,
                        value,
                    }
                } else {
                    unused(&[
                        ("simulations", self.simulations.is_some()),
                        ("children", self.children.is_some()),
                        ("exploration", self.exploration.is_some()),
                    ])?;
                    let (n, beam_width) = (self.n.unwrap_or(4), self.beam_width.unwrap_or(2));
                    if strategy == StrategyArg::BeamSearch {
                        Strategy::BeamSearch {
                            n,
                            beam_width,
                            steps,
                        }
                    } else {
                        Strategy::Dvts {
                            n,
                            beam_width,
                            steps,
                        }
                    }
                }
            }
        };
        let config = DecodeConfig {
            max_new_tokens: self.max_new_tokens.unwrap_or(64),
            strategy,
        };
        config.validate()?;
        Ok(config)
    }

    /// --delimiter with `\n` and `\t` read as a newline and a tab.
    fn delimiter(&self) -> Result<Option<String>> {
        let Some(d) = &self.delimiter else {
            return Ok(None);
        };
        let d = d.replace("\\n", "\n").replace("\\t", "\t");
        if d.is_empty() {
            bail!("--delimiter is empty: it must end every step");
        }
        Ok(Some(d))
    }

    /// The scorer the flags name.
    fn scorer(&self) -> Result<ScorerSpec> {
        Ok(match (&self.rm, &self.prm, self.target_words) {
            (Some(rm), _, _) => ScorerSpec::reward_model(rm.clone(), self.aggregation.clone())?,
            (None, Some(dir), _) => ScorerSpec::Prm {
                dir: dir.clone(),
                delimiter: self
                    .delimiter()?
                    .unwrap_or_else(|| StepParams::default().delimiter),
                aggregation: self.step_aggregation.unwrap_or(Aggregation::Last),
            },
            (None, None, Some(n)) => ScorerSpec::Length(n),
            (None, None, None) if self.keywords.is_empty() => ScorerSpec::None,
            (None, None, None) => ScorerSpec::Keywords(self.keywords.clone()),
        })
    }
}

fn parse_aggregation(s: &str) -> std::result::Result<Aggregation, String> {
    Aggregation::ALL
        .into_iter()
        .find(|a| a.name() == s)
        .ok_or_else(|| {
            let names: Vec<&str> = Aggregation::ALL.iter().map(|a| a.name()).collect();
            format!("{s:?} is not one of {}", names.join(", "))
        })
}

/// `plumb decode ... --out FILE.jsonl` (default decode.jsonl): one JSON line per prompt, a
/// summary on stdout.
pub fn run(global: &GlobalArgs, args: DecodeArgs) -> Result<()> {
    let config = args.decode_config()?;
    let config_is_search = config.strategy.is_step_search();
    let request = DecodeRequest {
        policy: args.policy.clone(),
        scorer: args.scorer()?,
        arm: args.arm.clone(),
        input: args.input.clone(),
        prompts: args.prompts,
        data_dir: rm_core::paths::data_dir(global.data_dir.as_deref()),
        config,
        seed: global.seed,
        curve: args.curve.clone(),
        out: global
            .out
            .clone()
            .unwrap_or_else(|| PathBuf::from("decode.jsonl")),
        step_pairs: args.step_pairs.clone().map(|path| StepPairsOut {
            path,
            margin: args.pair_margin.unwrap_or(0.1),
        }),
        device: global.device.device()?,
        head_weights: args.head_weights.clone(),
    };
    let bar = if args.quiet {
        indicatif::ProgressBar::hidden()
    } else {
        indicatif::ProgressBar::new(0)
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} prompts, {elapsed} {msg}")
            .expect("a valid template"),
    );
    let outcome = run_decode(&request, &mut |p| {
        bar.set_length(p.total as u64);
        bar.set_position(p.done as u64);
        bar.set_message(format!("mean reward {:.4}", p.mean_reward));
    });
    bar.finish_and_clear();
    let outcome = outcome?;
    let s = &outcome.summary;
    println!(
        "{}: {} prompts, mean reward {:.4}; {} tokens in {:.1}s ({:.1} tokens/s); {} scorer calls ({} texts)",
        s.strategy,
        s.prompts,
        s.mean_reward,
        s.tokens_generated,
        s.seconds,
        s.tokens_per_second,
        s.scorer_calls,
        s.texts_scored
    );
    if config_is_search {
        println!(
            "search: {} PRM calls ({} partial solutions scored), {} tokens generated",
            s.scorer_calls, s.texts_scored, s.tokens_generated
        );
    }
    if let Some(kl) = s.kl_bound {
        println!("KL(best-of-n ‖ policy) ≤ log n − (n−1)/n = {kl:.4}");
    }
    if let (Some(a), Some(sa)) = (s.acceptance_rate, s.sample_acceptance_rate) {
        println!(
            "acceptance: {:.1}% of prompts, {:.1}% of samples",
            100.0 * a,
            100.0 * sa
        );
    }
    if let Some(a) = &s.answers {
        println!(
            "answers: {}/{} correct, accuracy {:.3} ± {:.3} (strict, explicitly marked: {:.3}){}",
            a.correct,
            a.prompts,
            a.accuracy,
            a.standard_error,
            a.accuracy_strict,
            if a.oracle {
                "; an oracle's pick: the search's values read the gold answers"
            } else {
                ""
            }
        );
    }
    if !outcome.curve.is_empty() {
        println!("\n| n | mean reward | KL bound |\n|---|---|---|");
        for p in &outcome.curve {
            println!("| {} | {:.4} | {:.4} |", p.n, p.mean_reward, p.kl_bound);
        }
    }
    println!("responses: {}", outcome.out.display());
    if let Some((path, rows)) = &outcome.step_pairs {
        println!("MCTS step pairs: {rows} rows in {}", path.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: DecodeArgs,
    }

    fn parse(flags: &str) -> Result<DecodeConfig> {
        let base = "plumb --policy p --rm r --input hh-rlhf:dev";
        parse_with(base, flags)
    }

    fn parse_with(base: &str, flags: &str) -> Result<DecodeConfig> {
        let cli = Cli::try_parse_from(format!("{base} {flags}").split_whitespace())?;
        cli.args.decode_config()
    }

    #[test]
    fn flags_become_strategies() {
        let c = parse("--strategy best-of-n --n 16 --max-new-tokens 32").unwrap();
        assert_eq!(
            c,
            DecodeConfig {
                max_new_tokens: 32,
                strategy: Strategy::BestOfN {
                    n: 16,
                    temperature: 1.0,
                    top_p: 1.0
                }
            }
        );
        let c = parse("--strategy args --top-k 5 --weight 1.5").unwrap();
        assert_eq!(
            c.strategy,
            Strategy::Args {
                top_k: 5,
                weight: 1.5,
                temperature: 0.0
            }
        );
        let c =
            parse("--strategy controlled --candidates 4 --block-size 8 --temperature 0.7").unwrap();
        assert_eq!(
            c.strategy,
            Strategy::Controlled {
                candidates: 4,
                block_size: 8,
                temperature: 0.7,
                top_p: 1.0
            }
        );
        let c = parse("--strategy soft-best-of-n --n 4 --lambda 0.1").unwrap();
        assert_eq!(
            c.strategy,
            Strategy::SoftBestOfN {
                n: 4,
                lambda: 0.1,
                temperature: 1.0,
                top_p: 1.0
            }
        );
        let e = parse("--strategy rejection").unwrap_err().to_string();
        assert!(e.contains("--threshold"), "{e}");
        let e = parse("--strategy best-of-n --n 0").unwrap_err().to_string();
        assert!(e.starts_with("n:"), "{e}");
        let e = parse("--strategy args --n 3").unwrap_err().to_string();
        assert!(e.contains("--n does not apply"), "{e}");
        assert!(
            parse("--config s.toml --n 3").is_err(),
            "--config excludes the strategy flags"
        );
        assert!(parse("").is_err(), "a strategy is required");
        let e = parse("--strategy genarm --alpha 2")
            .unwrap_err()
            .to_string();
        assert!(e.contains("--arm"), "{e}");
        let prm = "plumb --policy p --prm d --input hh-rlhf:dev";
        let c = parse_with(
            prm,
            "--strategy beam-search --n 8 --beam-width 4 --delimiter \\n --max-steps 6 --step-tokens 48 --step-aggregation min",
        )
        .unwrap();
        assert_eq!(
            c.strategy,
            Strategy::BeamSearch {
                n: 8,
                beam_width: 4,
                steps: StepParams {
                    delimiter: "\n".into(),
                    max_steps: 6,
                    step_tokens: 48,
                    aggregation: Aggregation::Min,
                    ..StepParams::default()
                }
            }
        );
        let c = parse_with(prm, "--strategy mcts --simulations 8 --children 2").unwrap();
        assert_eq!(
            c.strategy,
            Strategy::Mcts {
                simulations: 8,
                children: 2,
                exploration: std::f64::consts::SQRT_2,
                steps: StepParams::default(),
                value: NodeValue::default(),
            }
        );
        // Answer-checked rollouts alone read no PRM; mixed with the PRM's value they do.
        let gold = "plumb --policy p --input gsm8k:test";
        let c = parse_with(gold, "--strategy mcts --rollouts 4 --rollout-judge answer").unwrap();
        let Strategy::Mcts { value, .. } = &c.strategy else {
            panic!("{:?}", c.strategy)
        };
        assert_eq!(
            (value.rollouts, value.judge, value.lambda),
            (4, RolloutJudge::Answer, 1.0)
        );
        let e = parse_with(
            gold,
            "--strategy mcts --rollouts 4 --rollout-judge answer --value-mix 0.5",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("--prm"), "{e}");
        let e = parse_with(prm, "--strategy mcts --rollout-judge answer")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("value.rollouts:"), "{e}");
        let e = parse_with(prm, "--strategy dvts --rollouts 2")
            .unwrap_err()
            .to_string();
        assert!(e.contains("--rollouts does not apply"), "{e}");
        let c = parse_with(prm, "--strategy refine --candidates 3 --threshold 0.6").unwrap();
        assert_eq!(
            c.strategy,
            Strategy::Refine {
                candidates: 3,
                threshold: 0.6,
                steps: StepParams::default()
            }
        );
        let e = parse_with(prm, "--strategy refine --n 3")
            .unwrap_err()
            .to_string();
        assert!(e.contains("n"), "{e}");
        let e = parse("--strategy dvts --n 4").unwrap_err().to_string();
        assert!(e.contains("--prm"), "{e}");
        let e = parse_with(prm, "--strategy dvts --n 6 --beam-width 4")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("n:") && e.contains("multiple"), "{e}");
        let e = parse_with(prm, "--strategy mcts --beam-width 2")
            .unwrap_err()
            .to_string();
        assert!(e.contains("--beam-width does not apply"), "{e}");
        assert!(parse_with(prm, "--strategy beam-search --step-aggregation max").is_err());
        let c = parse("--strategy genarm --alpha 2 --arm g").unwrap();
        assert_eq!(
            c.strategy,
            Strategy::GenArm {
                alpha: 2.0,
                temperature: 0.0
            }
        );
    }
}
