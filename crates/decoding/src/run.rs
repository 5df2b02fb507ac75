//! A whole decoding run: prompts in, one JSON line per prompt out, a summary.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use rm_core::burn::tensor::Device;
use rm_core::data::{gsm8k, hh_rlhf};
use rm_core::models::reward::RewardModelBundle;
use rm_core::types::Prompt;
use rm_ensembles::{Aggregation, Ensemble, EnsembleScorer};
use serde::Serialize;

use crate::answers::{AnswerAccuracy, answer_accuracy};
use crate::bon::{CurvePoint, best_of_n_curve, kl_bound};
use crate::error::{DecodeError, Result};
use crate::model::DecodeModel;
use crate::scorer::{Counted, Scorer};
use crate::strategy::{DecodeConfig, Decoded, Detail, Strategy, decode_one};

/// Where prompts come from.
#[derive(Clone, Debug, PartialEq)]
pub enum PromptSource {
    /// HH-RLHF harmless-base in the data dir (`hh-rlhf:dev`, `hh-rlhf:train`).
    HhRlhf(hh_rlhf::Split),
    /// GSM8K in the data dir (`gsm8k:test`, `gsm8k:train`): each question as it is, with its
    /// gold answer.
    Gsm8k(Gsm8kSplit),
    /// A JSONL file, one `{"prompt": "…"}` (or a conversation `{"turns": […]}`) per line, with
    /// an optional gold `"answer"` (a number, or a GSM8K answer field with its `#### N` line);
    /// other fields are ignored.
    File(PathBuf),
}

/// A GSM8K split.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Gsm8kSplit {
    Train,
    Test,
}

impl std::str::FromStr for PromptSource {
    type Err = DecodeError;
    /// `hh-rlhf:dev`, `hh-rlhf:train`, `gsm8k:test`, `gsm8k:train`, or a path.
    fn from_str(s: &str) -> Result<Self> {
        if let Some(split) = s.strip_prefix("gsm8k:") {
            return match split {
                "test" => Ok(Self::Gsm8k(Gsm8kSplit::Test)),
                "train" => Ok(Self::Gsm8k(Gsm8kSplit::Train)),
                other => Err(DecodeError::config(
                    "input",
                    format!("gsm8k:{other}: the splits are train and test"),
                )),
            };
        }
        match s.strip_prefix("hh-rlhf:") {
            Some("dev") => Ok(Self::HhRlhf(hh_rlhf::Split::Dev)),
            Some("train") => Ok(Self::HhRlhf(hh_rlhf::Split::Train)),
            Some(other) => Err(DecodeError::config(
                "input",
                format!("hh-rlhf:{other}: the splits are train and dev"),
            )),
            None if s.is_empty() => Err(DecodeError::config(
                "input",
                "empty: give a JSONL file or hh-rlhf:dev",
            )),
            None => Ok(Self::File(PathBuf::from(s))),
        }
    }
}

/// The first `n` distinct prompts of `source` (`data_dir` holds the datasets).
pub fn load_prompts(source: &PromptSource, data_dir: &Path, n: usize) -> Result<Vec<Prompt>> {
    Ok(load_prompts_with_gold(source, data_dir, n)?
        .into_iter()
        .map(|(prompt, _)| prompt)
        .collect())
}

/// The first `n` distinct prompts of `source`, each with its gold answer when the source has
/// one (GSM8K; a file's `"answer"` field).
pub fn load_prompts_with_gold(
    source: &PromptSource,
    data_dir: &Path,
    n: usize,
) -> Result<Vec<(Prompt, Option<f64>)>> {
    if n == 0 {
        return Err(DecodeError::config("prompts", "must be at least 1, got 0"));
    }
    let dataset_error = |e: rm_core::data::DataError| DecodeError::File {
        path: data_dir.to_path_buf(),
        reason: e.to_string(),
    };
    let all: Vec<(Prompt, Option<f64>)> = match source {
        PromptSource::HhRlhf(split) => hh_rlhf::load(data_dir, *split)
            .map_err(dataset_error)?
            .0
            .into_iter()
            .map(|p| (p.prompt, None))
            .collect(),
        PromptSource::Gsm8k(split) => {
            let split = match split {
                Gsm8kSplit::Train => "train",
                Gsm8kSplit::Test => "test",
            };
            gsm8k::load(data_dir, split, Default::default())
                .map_err(dataset_error)?
                .into_iter()
                .map(|p| (Prompt::Text(p.question), Some(p.answer_value)))
                .collect()
        }
        PromptSource::File(path) => read_prompt_file(path)?,
    };
    let mut out: Vec<(Prompt, Option<f64>)> = Vec::new();
    for p in all {
        if out.len() == n {
            break;
        }
        if !out.iter().any(|(q, _)| *q == p.0) {
            out.push(p);
        }
    }
    if out.is_empty() {
        let from = match source {
            PromptSource::HhRlhf(_) | PromptSource::Gsm8k(_) => "the dataset".to_string(),
            PromptSource::File(p) => p.display().to_string(),
        };
        return Err(DecodeError::EmptyInput(format!("{from} holds no prompt")));
    }
    Ok(out)
}

/// A prompt file's prompts and their gold answers (`"answer"`: a number or a GSM8K answer
/// field; a bad one is an error naming the line).
fn read_prompt_file(path: &Path) -> Result<Vec<(Prompt, Option<f64>)>> {
    read_prompt_rows(path)?
        .into_iter()
        .map(|(line, prompt, row)| {
            let gold = match row.get("answer") {
                None | Some(serde_json::Value::Null) => None,
                Some(serde_json::Value::Number(n)) => n.as_f64(),
                Some(serde_json::Value::String(s)) => {
                    Some(rm_process::final_answer::parse_gold(s).map_err(|reason| {
                        DecodeError::BadRow {
                            path: path.to_path_buf(),
                            line,
                            reason: format!("field `answer`: {reason}"),
                        }
                    })?)
                }
                Some(other) => {
                    return Err(DecodeError::BadRow {
                        path: path.to_path_buf(),
                        line,
                        reason: format!("field `answer` is neither a number nor text: {other}"),
                    });
                }
            };
            Ok((prompt, gold))
        })
        .collect()
}

/// The rows of a JSONL file with a non-empty `prompt` (text or a conversation) each: (line
/// number, prompt, the whole row); blank lines are skipped, other bad rows are errors naming
/// the file and line.
pub(crate) fn read_prompt_rows(path: &Path) -> Result<Vec<(usize, Prompt, serde_json::Value)>> {
    let text = std::fs::read_to_string(path).map_err(|e| DecodeError::File {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    let bad = |line: usize, reason: String| DecodeError::BadRow {
        path: path.to_path_buf(),
        line,
        reason,
    };
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let value: serde_json::Value =
            serde_json::from_str(line).map_err(|e| bad(i + 1, format!("not JSON: {e}")))?;
        let field = value
            .get("prompt")
            .ok_or_else(|| bad(i + 1, "no field `prompt`".into()))?;
        let prompt: Prompt = serde_json::from_value(field.clone()).map_err(|e| {
            bad(
                i + 1,
                format!("field `prompt` is neither text nor a conversation: {e}"),
            )
        })?;
        if matches!(&prompt, Prompt::Text(t) if t.trim().is_empty()) {
            return Err(bad(i + 1, "field `prompt` is empty".into()));
        }
        out.push((i + 1, prompt, value));
    }
    Ok(out)
}

/// Progress of a run, reported after each prompt.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Progress {
    pub done: usize,
    pub total: usize,
    /// Mean reward of the prompts done so far.
    pub mean_reward: f64,
}

/// Totals of a run.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Summary {
    pub strategy: String,
    pub prompts: usize,
    pub mean_reward: f64,
    pub tokens_generated: usize,
    pub seconds: f64,
    /// All tokens generated / wall time (scoring included).
    pub tokens_per_second: f64,
    pub scorer_calls: usize,
    pub texts_scored: usize,
    /// Best-of-n: `log n − (n − 1)/n`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kl_bound: Option<f64>,
    /// Rejection: prompts with an accepted sample / prompts.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub acceptance_rate: Option<f64>,
    /// Rejection: samples ≥ threshold / samples drawn.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sample_acceptance_rate: Option<f64>,
    /// With gold answers: the chosen responses' answer accuracy.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub answers: Option<AnswerAccuracy>,
}

/// Every prompt's outcome and the totals.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DecodeRun {
    pub rows: Vec<Decoded>,
    pub summary: Summary,
}

impl DecodeRun {
    /// The best-of-n curve of a best-of-n or soft best-of-n run (see [`best_of_n_curve`]).
    pub fn curve(&self, ns: &[usize]) -> Result<Vec<CurvePoint>> {
        let rewards: Vec<Vec<f32>> = self
            .rows
            .iter()
            .map(|r| match &r.detail {
                Detail::BestOfN { rewards, .. } | Detail::SoftBestOfN { rewards, .. } => {
                    Ok(rewards.clone())
                }
                _ => Err(DecodeError::config(
                    "curve",
                    "only best-of-n runs have a curve",
                )),
            })
            .collect::<Result<_>>()?;
        best_of_n_curve(&rewards, ns)
    }
}

/// Decodes every prompt with `config` and `scorer`; prompt p's rows are seeded `seed + p`.
pub fn decode(
    model: &DecodeModel,
    prompts: &[Prompt],
    config: &DecodeConfig,
    seed: u64,
    scorer: &mut dyn Scorer,
    progress: &mut dyn FnMut(Progress),
) -> Result<DecodeRun> {
    decode_with_gold(model, prompts, &[], config, seed, scorer, progress)
}

/// [`decode`] with each prompt's gold answer (`gold[p]`, or none for any when `gold` is
/// empty), which MCTS's answer-checked values read ([`crate::NodeValue`]).
pub fn decode_with_gold(
    model: &DecodeModel,
    prompts: &[Prompt],
    gold: &[Option<f64>],
    config: &DecodeConfig,
    seed: u64,
    scorer: &mut dyn Scorer,
    progress: &mut dyn FnMut(Progress),
) -> Result<DecodeRun> {
    config.validate()?;
    if prompts.is_empty() {
        return Err(DecodeError::EmptyInput("the prompt list is empty".into()));
    }
    if !gold.is_empty() && gold.len() != prompts.len() {
        return Err(DecodeError::config(
            "gold",
            format!("{} gold answers for {} prompts", gold.len(), prompts.len()),
        ));
    }
    let start = Instant::now();
    let mut scorer = Counted::new(scorer);
    let mut rows = Vec::with_capacity(prompts.len());
    let mut reward_sum = 0.0;
    for (i, prompt) in prompts.iter().enumerate() {
        let ids = model.prompt_ids(prompt, config.max_new_tokens)?;
        let row = decode_one(
            model,
            (prompt, gold.get(i).copied().flatten()),
            &ids,
            config,
            seed.wrapping_add(i as u64),
            &mut scorer,
        )?;
        reward_sum += f64::from(row.reward);
        rows.push(row);
        progress(Progress {
            done: i + 1,
            total: prompts.len(),
            mean_reward: reward_sum / (i + 1) as f64,
        });
    }
    let seconds = start.elapsed().as_secs_f64();
    let tokens: usize = rows.iter().map(|r| r.stats.tokens_generated).sum();
    let (mut accepted, mut samples, mut passed) = (0, 0, 0);
    for r in &rows {
        if let Detail::Rejection {
            accepted: a,
            samples: s,
            accepted_samples: p,
        } = r.detail
        {
            accepted += usize::from(a);
            samples += s;
            passed += p;
        }
    }
    let rejection = matches!(config.strategy, Strategy::Rejection { .. });
    let summary = Summary {
        strategy: config.strategy.name().into(),
        prompts: rows.len(),
        mean_reward: reward_sum / rows.len() as f64,
        tokens_generated: tokens,
        seconds,
        tokens_per_second: tokens as f64 / seconds.max(1e-9),
        scorer_calls: scorer.calls,
        texts_scored: scorer.texts,
        kl_bound: match config.strategy {
            Strategy::BestOfN { n, .. } => Some(kl_bound(n)?),
            _ => None,
        },
        acceptance_rate: rejection.then(|| accepted as f64 / rows.len() as f64),
        sample_acceptance_rate: rejection.then(|| passed as f64 / samples.max(1) as f64),
        answers: answer_accuracy(&rows, &config.strategy),
    };
    Ok(DecodeRun { rows, summary })
}

/// What scores the responses of a `plumb decode` run.
#[derive(Clone, Debug, PartialEq)]
pub enum ScorerSpec {
    /// A reward-model folder (`plumb train-rm`).
    RewardModel(PathBuf),
    /// An ensemble folder (one holding `ensemble.json`), scored by `aggregation` or, when
    /// `None`, by the aggregation `ensemble.json` names.
    Ensemble {
        dir: PathBuf,
        aggregation: Option<Aggregation>,
    },
    /// A DMoERM folder (one holding `dmoerm.json`, `plumb multiobj dmoerm`).
    Dmoerm(PathBuf),
    /// [`KeywordScorer`](crate::KeywordScorer) over these keywords.
    Keywords(Vec<String>),
    /// [`LengthScorer`](crate::LengthScorer) with this target word count.
    Length(usize),
    /// No scorer: only MCTS valued by answer-checked rollouts alone (`value.judge = "answer"`,
    /// `lambda = 1`) decodes without one.
    None,
    /// A PRM folder (`plumb train-prm`) as a [`PrmScorer`](crate::PrmScorer): responses split
    /// into steps at `delimiter`, step probabilities aggregated by `aggregation`. The searches
    /// (beam search, DVTS, MCTS) use their own `steps.delimiter` and `steps.aggregation`.
    Prm {
        dir: PathBuf,
        delimiter: String,
        aggregation: rm_process::Aggregation,
    },
}

impl ScorerSpec {
    /// `dir` as a scorer: an ensemble folder when it holds `ensemble.json` (scored by
    /// `aggregation`, else its own), a DMoERM folder when it holds `dmoerm.json`, otherwise a
    /// reward-model folder; `aggregation` with anything but an ensemble is an error naming the
    /// folder.
    pub fn reward_model(dir: PathBuf, aggregation: Option<Aggregation>) -> Result<Self> {
        if rm_ensembles::is_ensemble_dir(&dir) {
            return Ok(Self::Ensemble { dir, aggregation });
        }
        if rm_multiobj::dmoerm::is_dmoerm_dir(&dir) && aggregation.is_none() {
            return Ok(Self::Dmoerm(dir));
        }
        if let Some(a) = aggregation {
            return Err(DecodeError::config(
                "aggregation",
                format!(
                    "{} is a single reward model (no {}): aggregation {} applies to ensemble folders only",
                    dir.display(),
                    rm_ensembles::ENSEMBLE_FILE,
                    a.label()
                ),
            ));
        }
        Ok(Self::RewardModel(dir))
    }

    /// Fails fast, before anything is loaded, on a reward-model or ensemble folder that does
    /// not exist.
    pub fn check(&self) -> Result<()> {
        match self {
            Self::RewardModel(dir) | Self::Ensemble { dir, .. } | Self::Dmoerm(dir)
                if !dir.exists() =>
            {
                Err(DecodeError::File {
                    path: dir.clone(),
                    reason: "no such reward model folder".into(),
                })
            }
            Self::Prm { dir, .. } if !dir.exists() => Err(DecodeError::File {
                path: dir.clone(),
                reason: "no such PRM folder".into(),
            }),
            _ => Ok(()),
        }
    }

    /// Loads the scorer onto `device` (an ensemble with all its members).
    pub fn load(&self, device: &Device) -> Result<Box<dyn Scorer>> {
        self.check()?;
        Ok(match self {
            Self::RewardModel(dir) => {
                Box::new(RewardModelBundle::load(dir, device).map_err(DecodeError::model)?)
            }
            Self::Ensemble { dir, aggregation } => {
                let ensemble = Ensemble::load(dir, device).map_err(DecodeError::model)?;
                if let Some(a) = aggregation {
                    a.validate()
                        .map_err(|e| DecodeError::config("aggregation", format!("{e:#}")))?;
                }
                Box::new(EnsembleScorer::new(ensemble, aggregation.clone(), 16))
            }
            Self::Dmoerm(dir) => Box::new(
                rm_multiobj::dmoerm::DmoermModel::load(dir, device).map_err(DecodeError::model)?,
            ),
            Self::Keywords(k) => Box::new(crate::KeywordScorer {
                keywords: k.clone(),
            }),
            Self::Length(n) => Box::new(crate::LengthScorer { target_words: *n }),
            Self::None => Box::new(crate::scorer::NoScorer),
            Self::Prm {
                dir,
                delimiter,
                aggregation,
            } => Box::new(crate::PrmScorer {
                prm: rm_process::ProcessRewardModel::load(dir, device)
                    .map_err(DecodeError::model)?,
                delimiter: delimiter.clone(),
                aggregation: *aggregation,
            }),
        })
    }
}

/// A `plumb decode` run.
pub struct DecodeRequest {
    /// A policy folder (`plumb train-po`) or a model folder.
    pub policy: PathBuf,
    pub scorer: ScorerSpec,
    /// The guide: GenARM's autoregressive reward model, Transfer Q*'s baseline policy (a
    /// causal-LM folder or a policy folder).
    pub arm: Option<PathBuf>,
    pub input: PromptSource,
    pub prompts: usize,
    pub data_dir: PathBuf,
    pub config: DecodeConfig,
    pub seed: u64,
    /// Best-of-n: the values of n of the curve (from one pass of `max(curve)` samples).
    pub curve: Vec<usize>,
    /// One JSON line per prompt.
    pub out: PathBuf,
    /// MCTS only: also write the trees' sibling-step preferences as step-pair JSONL.
    pub step_pairs: Option<StepPairsOut>,
    pub device: Device,
    /// A MAH-DPO policy's head mixture (`None`: its default weights;
    /// [`rm_core::models::action_heads`]).
    pub head_weights: Option<rm_core::models::action_heads::HeadWeights>,
}

/// Where MCTS's step preferences go (`plumb decode --strategy mcts --step-pairs FILE
/// --pair-margin M`): every pair of sibling steps whose values differ by at least `margin`
/// ([`crate::search::SiblingSteps::pair_rows`]), one `{"prompt", "prefix", "chosen",
/// "rejected", "q_chosen", "q_rejected"}` row each — `train-prm`'s `source = "step-pairs"`.
#[derive(Clone, Debug, PartialEq)]
pub struct StepPairsOut {
    pub path: PathBuf,
    pub margin: f64,
}

/// One JSON line per row, in `path` (its folder created).
fn write_json_lines<T: Serialize>(path: &Path, rows: &[T]) -> Result<()> {
    let io = |e: std::io::Error| DecodeError::File {
        path: path.to_path_buf(),
        reason: e.to_string(),
    };
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(io)?;
    }
    let mut file = std::io::BufWriter::new(std::fs::File::create(path).map_err(io)?);
    for row in rows {
        let line = serde_json::to_string(row).map_err(|e| DecodeError::Model(e.to_string()))?;
        writeln!(file, "{line}").map_err(io)?;
    }
    file.flush().map_err(io)
}

/// The step-pair rows of decoded MCTS rows (other strategies have none).
pub fn mcts_step_pairs(rows: &[Decoded], margin: f64) -> Vec<serde_json::Value> {
    rows.iter()
        .flat_map(|row| match &row.detail {
            Detail::Mcts { siblings, .. } => {
                let prompt = crate::search::prompt_text(&row.prompt);
                siblings
                    .iter()
                    .flat_map(|g| g.pair_rows(&prompt, margin))
                    .collect()
            }
            _ => Vec::new(),
        })
        .collect()
}

/// What a `plumb decode` run produced.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DecodeOutcome {
    pub summary: Summary,
    pub curve: Vec<CurvePoint>,
    pub out: PathBuf,
    /// The step-pair file and its row count (`DecodeRequest::step_pairs`).
    pub step_pairs: Option<(PathBuf, usize)>,
}

/// Loads the policy, the reward model and the prompts, decodes, writes `out` (one JSON line per
/// prompt: prompt, text, reward, stats, detail), returns the summary and the curve. With a
/// non-empty `curve` the strategy must be best-of-n; its n becomes `max(curve)`.
pub fn run_decode(
    request: &DecodeRequest,
    progress: &mut dyn FnMut(Progress),
) -> Result<DecodeOutcome> {
    let mut config = request.config.clone();
    if let Some(pairs) = &request.step_pairs {
        if !matches!(config.strategy, Strategy::Mcts { .. }) {
            return Err(DecodeError::config(
                "step_pairs",
                format!(
                    "sibling-step pairs come from an MCTS tree; the strategy is {}",
                    config.strategy.name()
                ),
            ));
        }
        if !(pairs.margin.is_finite() && pairs.margin >= 0.0) {
            return Err(DecodeError::config(
                "pair_margin",
                format!("must be finite and ≥ 0, got {}", pairs.margin),
            ));
        }
    }
    if !request.curve.is_empty() {
        match &mut config.strategy {
            Strategy::BestOfN { n, .. } => *n = *request.curve.iter().max().expect("non-empty"),
            _ => {
                return Err(DecodeError::config(
                    "curve",
                    "--curve needs --strategy best-of-n",
                ));
            }
        }
        if request.curve.contains(&0) {
            return Err(DecodeError::config("curve", "n = 0 in the curve"));
        }
    }
    config.validate()?;
    request.scorer.check()?;
    let reads_scorer = config.strategy.needs_step_scorer() || !config.strategy.is_step_search();
    if matches!(request.scorer, ScorerSpec::None) && reads_scorer {
        return Err(DecodeError::config(
            "scorer",
            format!(
                "{} needs a scorer; only MCTS valued by answer-checked rollouts alone \
                 (value.judge = \"answer\", lambda = 1) decodes without one",
                config.strategy.name()
            ),
        ));
    }
    if config.strategy.needs_step_scorer() && !matches!(request.scorer, ScorerSpec::Prm { .. }) {
        return Err(DecodeError::config(
            "scorer",
            format!(
                "{} needs a process reward model (--prm DIR)",
                config.strategy.name()
            ),
        ));
    }
    if !request.policy.exists() {
        return Err(DecodeError::File {
            path: request.policy.clone(),
            reason: "no such policy folder".into(),
        });
    }
    let (prompts, gold): (Vec<Prompt>, Vec<Option<f64>>) =
        load_prompts_with_gold(&request.input, &request.data_dir, request.prompts)?
            .into_iter()
            .unzip();
    let mut model = DecodeModel::load_steered(
        &request.policy,
        &request.device,
        request.head_weights.as_ref(),
    )?;
    if config.strategy.needs_guide() && request.arm.is_none() {
        return Err(DecodeError::config(
            "arm",
            format!("{} needs a guide model (--arm DIR)", config.strategy.name()),
        ));
    }
    if let Some(arm) = &request.arm {
        if !arm.exists() {
            return Err(DecodeError::File {
                path: arm.clone(),
                reason: "no such guide model folder".into(),
            });
        }
        // A causal-LM folder, or a policy folder (e.g. a DPO policy as Transfer Q*'s baseline).
        let guide = if arm
            .join(rm_core::models::policy_folder::POLICY_SPEC_FILE)
            .is_file()
        {
            rm_core::models::policy_folder::Policy::load(arm, &request.device)
                .map_err(DecodeError::model)?
                .lm
        } else {
            rm_core::models::llama::CausalLm::load(arm, &request.device)
                .map_err(DecodeError::model)?
        };
        model = model.with_guide(guide);
    }
    // The searches score steps with their own delimiter and aggregation.
    let scorer = match (&request.scorer, &config.strategy) {
        (
            ScorerSpec::Prm { dir, .. },
            Strategy::BeamSearch { steps, .. }
            | Strategy::Dvts { steps, .. }
            | Strategy::Mcts { steps, .. }
            | Strategy::Refine { steps, .. },
        ) => ScorerSpec::Prm {
            dir: dir.clone(),
            delimiter: steps.delimiter.clone(),
            aggregation: steps.aggregation,
        },
        (spec, _) => spec.clone(),
    };
    let mut scorer = scorer.load(&request.device)?;
    let run = decode_with_gold(
        &model,
        &prompts,
        &gold,
        &config,
        request.seed,
        scorer.as_mut(),
        progress,
    )?;
    let curve = if request.curve.is_empty() {
        Vec::new()
    } else {
        run.curve(&request.curve)?
    };
    write_json_lines(&request.out, &run.rows)?;
    let mut step_pairs = None;
    if let Some(pairs) = &request.step_pairs {
        let rows = mcts_step_pairs(&run.rows, pairs.margin);
        write_json_lines(&pairs.path, &rows)?;
        step_pairs = Some((pairs.path.clone(), rows.len()));
    }
    Ok(DecodeOutcome {
        summary: run.summary,
        curve,
        out: request.out.clone(),
        step_pairs,
    })
}
