//! Monte-Carlo step labels (Math-Shepherd, Wang et al. 2024, "Math-Shepherd: Verify and
//! Reinforce LLMs Step-by-step without Human Annotations"): a PRM's training labels from the
//! policy itself, with no human annotation.
//!
//! For each problem `q` with gold answer `a*`, the policy writes a solution, cut into steps
//! `s_1 … s_n` at a delimiter. For each step `i < n`, `k` completions `c_{i,1} … c_{i,k}` are
//! sampled from the prefix `q, s_1 … s_i`; with `reach_{i,j} = 1` when the answer of
//! `s_1 … s_i c_{i,j}` equals `a*`:
//! - hard estimation: `y_i^HE = 1` if `∃ j: reach_{i,j} = 1`, else 0;
//! - soft estimation: `y_i^SE = (1/k)·Σ_j reach_{i,j}`.
//!
//! The last step's prefix is the whole solution, so its label is the solution's own correctness
//! (hard = soft = 1 or 0), with no completion sampled. Answers are checked as the `gsm8k`
//! reward checks them ([`super::rewards::Gsm8kReward`]).
//!
//! Progress labels (PAV, Setlur et al. 2024, "Rewarding Progress: Scaling Automated Process
//! Verifiers for LLM Reasoning"): step `i`'s advantage under the labelling policy as the prover,
//! `A_i = Q(s_1 … s_i) − Q(s_1 … s_{i−1})`, estimated as `y_i^SE − y_{i−1}^SE` with
//! `y_0^SE = V(q)`, the share of the problem's sampled solutions that are correct (themselves
//! samples from the empty prefix: `solutions_per_problem` of them, so ask for several). A step
//! that makes the answer more reachable gets a positive label, one that loses it a negative one.
//!
//! Rows are written in the generic step-labelled JSONL `plumb train-prm` reads
//! (`{"prompt", "steps", "labels"}`, labels the hard estimates as booleans), plus
//! `"soft_labels"`, `"progress"`, `"start_value"`, `"k"` and `"solution_correct"`.
//!
//! Completions come through the [`Continuer`] seam: [`PolicyContinuer`] samples them from a
//! policy with the KV-cache generator; tests use canned ones.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use rm_core::burn::tensor::Device;
use rm_core::models::policy_folder::{POLICY_SPEC_FILE, Policy, PolicyModelConfig};
use rm_core::sampling::{SamplingConfig, generate};
use rm_core::train::rollout::collect_seed;
use serde::{Deserialize, Serialize};

use super::prompts::{PromptSource, RlPrompt};
use super::rewards::process::{prompt_text, split_steps};
use super::rewards::{AnswerExtraction, Gsm8kReward, Gsm8kSpec, RewardFunction, RewardSample};
use super::rollout::{device_of, prompt_ids, with_stop_tokens};

/// A source of completions: `k` continuations of each `(prompt, prefix)`, the text generated
/// after the prefix (the prefix itself not repeated).
pub trait Continuer {
    fn continue_prefixes(
        &mut self,
        requests: &[(&RlPrompt, &str)],
        k: usize,
    ) -> Result<Vec<Vec<String>>>;
}

/// The settings of [`monte_carlo_step_labels`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct McLabelConfig {
    /// Completions per step prefix (`k ≥ 1`).
    pub k: usize,
    /// Where a solution is cut into steps (as the `process_model` reward cuts them).
    pub delimiter: String,
    /// Solutions sampled per problem (each labelled on its own).
    pub solutions_per_problem: usize,
    /// How final answers are read.
    pub extraction: AnswerExtraction,
}

/// One labelled solution (a row of the output file).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct McLabelled {
    pub prompt: String,
    pub steps: Vec<String>,
    /// Hard estimates `y^HE`.
    pub labels: Vec<bool>,
    /// Soft estimates `y^SE`.
    pub soft_labels: Vec<f64>,
    /// PAV's progress labels `y_i^SE − y_{i−1}^SE` (see the module docs).
    pub progress: Vec<f64>,
    /// `V(q)`: the share of the problem's sampled solutions that are correct.
    pub start_value: f64,
    pub k: usize,
    pub solution_correct: bool,
}

/// What a labelling pass produced.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct McLabelStats {
    pub solutions: usize,
    /// Solutions with no step (empty text): not labelled.
    pub skipped_empty: usize,
    pub steps: usize,
    pub correct_solutions: usize,
    /// Steps whose hard label is 1.
    pub positive_steps: usize,
    /// The mean soft label over all steps.
    pub mean_soft: f64,
    /// Completions sampled from step prefixes.
    pub completions: usize,
}

impl McLabelStats {
    /// The statistics of `rows`.
    pub fn of(rows: &[McLabelled], skipped_empty: usize, completions: usize) -> Self {
        let steps: usize = rows.iter().map(|r| r.steps.len()).sum();
        let soft: f64 = rows.iter().flat_map(|r| &r.soft_labels).sum();
        Self {
            solutions: rows.len(),
            skipped_empty,
            steps,
            correct_solutions: rows.iter().filter(|r| r.solution_correct).count(),
            positive_steps: rows.iter().flat_map(|r| &r.labels).filter(|&&l| l).count(),
            mean_soft: if steps > 0 { soft / steps as f64 } else { 0.0 },
            completions,
        }
    }
}

/// Labels the solutions the continuer writes for `problems` (see the module docs). Each
/// problem's `references[0]` is its gold answer. Returns the rows (problems in order, their
/// solutions in order) and the statistics. Errors: `k` or `solutions_per_problem` 0, a problem
/// without a usable gold answer (naming it), the continuer's errors or a wrong number of
/// completions.
pub fn monte_carlo_step_labels(
    problems: &[RlPrompt],
    continuer: &mut dyn Continuer,
    config: &McLabelConfig,
) -> Result<(Vec<McLabelled>, McLabelStats)> {
    if config.k == 0 {
        bail!("k must be at least 1");
    }
    if config.solutions_per_problem == 0 {
        bail!("solutions_per_problem must be at least 1");
    }
    let checker = Gsm8kReward::new(
        "gsm8k",
        Gsm8kSpec {
            extraction: config.extraction,
            ..Gsm8kSpec::default()
        },
    )?;
    let correct = |problem: &RlPrompt, text: &str| -> Result<bool> {
        let sample = RewardSample {
            prompt: &problem.prompt,
            completion: text,
            references: &problem.references,
            truncated: false,
        };
        match checker.score_batch(&[sample]).pop() {
            Some(Ok(v)) => Ok(v > 0.5),
            Some(Err(e)) => bail!("{}: {e}", describe(problem)),
            None => bail!("{}: the answer check returned nothing", describe(problem)),
        }
    };
    let requests: Vec<(&RlPrompt, &str)> = problems.iter().map(|p| (p, "")).collect();
    let solutions = continuer.continue_prefixes(&requests, config.solutions_per_problem)?;
    check_count(
        "solutions",
        &solutions,
        problems.len(),
        config.solutions_per_problem,
    )?;
    // Every step prefix but the last of every solution, in one continuer call.
    struct Pending<'a> {
        problem: &'a RlPrompt,
        text: &'a str,
        ends: Vec<usize>,
        steps: Vec<String>,
        start_value: f64,
    }
    let mut pending = Vec::new();
    let mut skipped = 0;
    for (problem, texts) in problems.iter().zip(&solutions) {
        let mut solved = 0usize;
        for text in texts {
            if correct(problem, text)? {
                solved += 1;
            }
        }
        let start_value = solved as f64 / texts.len() as f64;
        for text in texts {
            let ranges = split_steps(text, &config.delimiter);
            if ranges.is_empty() {
                skipped += 1;
                continue;
            }
            pending.push(Pending {
                problem,
                text,
                ends: ranges.iter().map(|r| r.end).collect(),
                steps: ranges.iter().map(|r| text[r.clone()].to_string()).collect(),
                start_value,
            });
        }
    }
    let prefixes: Vec<String> = pending
        .iter()
        .flat_map(|p| {
            let n = p.ends.len();
            p.ends[..n - 1]
                .iter()
                .map(|&e| format!("{}{}", &p.text[..e], config.delimiter))
        })
        .collect();
    let mut owners = Vec::new();
    for (i, p) in pending.iter().enumerate() {
        owners.extend(std::iter::repeat_n(i, p.ends.len() - 1));
    }
    let requests: Vec<(&RlPrompt, &str)> = owners
        .iter()
        .zip(&prefixes)
        .map(|(&i, prefix)| (pending[i].problem, prefix.as_str()))
        .collect();
    let completions = if requests.is_empty() {
        Vec::new()
    } else {
        continuer.continue_prefixes(&requests, config.k)?
    };
    check_count("step completions", &completions, requests.len(), config.k)?;
    let mut rows: Vec<McLabelled> = Vec::with_capacity(pending.len());
    let mut next = completions.iter().zip(&prefixes);
    for p in &pending {
        let solution_correct = correct(p.problem, p.text)?;
        let mut soft = Vec::with_capacity(p.steps.len());
        for _ in 0..p.steps.len() - 1 {
            let (texts, prefix) = next
                .next()
                .context("fewer completions than step prefixes")?;
            let mut reached = 0usize;
            for c in texts {
                if correct(p.problem, &format!("{prefix}{c}"))? {
                    reached += 1;
                }
            }
            soft.push(reached as f64 / config.k as f64);
        }
        soft.push(if solution_correct { 1.0 } else { 0.0 });
        let progress = std::iter::once(p.start_value)
            .chain(soft.iter().copied())
            .collect::<Vec<f64>>()
            .windows(2)
            .map(|w| w[1] - w[0])
            .collect();
        rows.push(McLabelled {
            prompt: prompt_text(&p.problem.prompt).to_string(),
            steps: p.steps.clone(),
            labels: soft.iter().map(|&s| s > 0.0).collect(),
            soft_labels: soft,
            progress,
            start_value: p.start_value,
            k: config.k,
            solution_correct,
        });
    }
    let stats = McLabelStats::of(&rows, skipped, requests.len() * config.k);
    Ok((rows, stats))
}

fn describe(problem: &RlPrompt) -> String {
    let text = prompt_text(&problem.prompt);
    let short: String = text.chars().take(60).collect();
    format!("problem {short:?}")
}

fn check_count(what: &str, got: &[Vec<String>], requests: usize, k: usize) -> Result<()> {
    if got.len() != requests {
        bail!("{what}: {} results for {requests} requests", got.len());
    }
    if let Some((i, row)) = got.iter().enumerate().find(|(_, r)| r.len() != k) {
        bail!(
            "{what}: request {i} got {} completions, expected {k}",
            row.len()
        );
    }
    Ok(())
}

/// Completions sampled from a policy (KV cache, batched): the prompt rendered with the policy's
/// chat template for generation, the prefix's tokens appended, cut on the left to leave
/// `max_new_tokens` within `max_len`. Batch `b` of call `c` is seeded from
/// `(seed, c·2³² + b)`.
pub struct PolicyContinuer {
    pub policy: Policy,
    pub sampling: SamplingConfig,
    pub batch_size: usize,
    calls: u64,
}

impl PolicyContinuer {
    /// `sampling` gets the policy's stop tokens added.
    pub fn new(policy: Policy, sampling: SamplingConfig, batch_size: usize) -> Result<Self> {
        if sampling.max_new_tokens == 0 || sampling.max_new_tokens >= policy.spec.max_len {
            bail!(
                "max_new_tokens {} must be at least 1 and below the policy's max_len {}",
                sampling.max_new_tokens,
                policy.spec.max_len
            );
        }
        let sampling = with_stop_tokens(sampling, &policy);
        Ok(Self {
            policy,
            sampling,
            batch_size: batch_size.max(1),
            calls: 0,
        })
    }

    /// A policy folder (`policy.json`) or a plain model folder / `.gguf` (ChatML, `max_len`).
    pub fn load_policy(path: &Path, max_len: usize, device: &Device) -> Result<Policy> {
        if path.join(POLICY_SPEC_FILE).is_file() {
            Policy::load(path, device)
        } else {
            Policy::build(
                &PolicyModelConfig {
                    policy: path.to_path_buf(),
                    max_len,
                    template: None,
                    lora: None,
                },
                device,
            )
        }
        .with_context(|| format!("policy {}", path.display()))
    }
}

impl Continuer for PolicyContinuer {
    fn continue_prefixes(
        &mut self,
        requests: &[(&RlPrompt, &str)],
        k: usize,
    ) -> Result<Vec<Vec<String>>> {
        let call = self.calls;
        self.calls += 1;
        let budget = self.policy.spec.max_len - self.sampling.max_new_tokens;
        let tokenizer = &self.policy.lm.tokenizer;
        let encoded = requests
            .iter()
            .map(|(prompt, prefix)| {
                let mut ids = prompt_ids(&self.policy, prompt, budget)?;
                ids.extend(tokenizer.encode(prefix, false)?);
                if ids.len() > budget {
                    ids.drain(..ids.len() - budget);
                }
                Ok(ids)
            })
            .collect::<Result<Vec<_>>>()
            .context("encoding the prefixes")?;
        let rows: Vec<usize> = (0..requests.len() * k).map(|r| r / k).collect();
        let model = &self.policy.lm.model;
        let device = device_of(model);
        let mut out: Vec<Vec<String>> = vec![Vec::with_capacity(k); requests.len()];
        for (b, chunk) in rows.chunks(self.batch_size).enumerate() {
            let ids: Vec<Vec<u32>> = chunk.iter().map(|&r| encoded[r].clone()).collect();
            let config = SamplingConfig {
                seed: collect_seed(self.sampling.seed, (call << 32) + b as u64),
                ..self.sampling.clone()
            };
            let generated = generate(model, tokenizer, &ids, &config, &device)?;
            for (&r, g) in chunk.iter().zip(generated) {
                out[r].push(g.text);
            }
        }
        Ok(out)
    }
}

/// `plumb label-steps`: a policy, problems, where to write.
#[derive(Clone, Debug)]
pub struct McLabelRequest {
    pub policy: PathBuf,
    /// Tokens per prompt + completion for a plain model folder.
    pub max_len: usize,
    pub problems: PromptSource,
    /// Appended to every GSM8K question (after a blank line).
    pub instruction: Option<String>,
    pub data_dir: PathBuf,
    pub config: McLabelConfig,
    pub sampling: SamplingConfig,
    pub batch_size: usize,
    pub out: PathBuf,
    pub device: Device,
}

/// What [`label_steps`] did.
#[derive(Clone, Debug)]
pub struct McLabelOutcome {
    pub problems: usize,
    pub stats: McLabelStats,
    pub seconds: f64,
    pub out: PathBuf,
}

/// Loads the policy and the problems, labels the policy's solutions by Monte-Carlo rollouts
/// ([`monte_carlo_step_labels`]) and writes the step-labelled JSONL to `request.out`.
pub fn label_steps(request: &McLabelRequest) -> Result<McLabelOutcome> {
    let started = Instant::now();
    let problems = request
        .problems
        .load(&request.data_dir, request.instruction.as_deref())
        .with_context(|| format!("problems {}", request.problems.describe()))?;
    let policy = PolicyContinuer::load_policy(&request.policy, request.max_len, &request.device)?;
    let mut continuer = PolicyContinuer::new(policy, request.sampling.clone(), request.batch_size)?;
    let (rows, stats) = monte_carlo_step_labels(&problems, &mut continuer, &request.config)?;
    write_rows(&request.out, &rows)?;
    Ok(McLabelOutcome {
        problems: problems.len(),
        stats,
        seconds: started.elapsed().as_secs_f64(),
        out: request.out.clone(),
    })
}

/// Writes one JSON line per row (the parent folder created).
pub fn write_rows(path: &Path, rows: &[McLabelled]) -> Result<()> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    let mut file = std::io::BufWriter::new(
        std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?,
    );
    for row in rows {
        serde_json::to_writer(&mut file, row)?;
        file.write_all(b"\n")?;
    }
    file.flush()
        .with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rm_core::types::Prompt;

    /// Canned completions: for a prefix, the `k` texts stored for it, recorded as asked.
    struct Canned {
        answers: Vec<(String, Vec<String>)>,
        asked: Vec<(String, usize)>,
    }

    impl Continuer for Canned {
        fn continue_prefixes(
            &mut self,
            requests: &[(&RlPrompt, &str)],
            k: usize,
        ) -> Result<Vec<Vec<String>>> {
            requests
                .iter()
                .map(|(_, prefix)| {
                    self.asked.push((prefix.to_string(), k));
                    let (_, texts) = self
                        .answers
                        .iter()
                        .find(|(p, _)| p == prefix)
                        .with_context(|| format!("no canned completion for {prefix:?}"))?;
                    Ok(texts.iter().take(k).cloned().collect())
                })
                .collect()
        }
    }

    fn problem(q: &str, gold: &str) -> RlPrompt {
        RlPrompt {
            prompt: Prompt::Text(q.into()),
            references: vec![gold.into()],
        }
    }

    fn canned(pairs: &[(&str, &[&str])]) -> Canned {
        Canned {
            answers: pairs
                .iter()
                .map(|(p, t)| (p.to_string(), t.iter().map(|s| s.to_string()).collect()))
                .collect(),
            asked: Vec::new(),
        }
    }

    /// Hand-computable labels: solution "a\nb\n#### 3" of a problem whose answer is 5.
    /// From "a\n": 2 of 4 completions reach 5 (hard 1, soft 0.5); from "a\nb\n": none (0, 0);
    /// the last step is the solution's own answer, 3 (wrong: 0, 0).
    #[test]
    fn hard_and_soft_labels_count_the_completions_that_reach_the_gold_answer() {
        let mut c = canned(&[
            ("", &["a\nb\n#### 3"]),
            (
                "a\n",
                &["so #### 5", "#### 4", "answer is 5", "the answer is 6"],
            ),
            ("a\nb\n", &["#### 6", "#### 7", "#### 8", "none"]),
        ]);
        let config = McLabelConfig {
            k: 4,
            delimiter: "\n".into(),
            solutions_per_problem: 1,
            extraction: AnswerExtraction::Flexible,
        };
        let (rows, stats) =
            monte_carlo_step_labels(&[problem("q?", "5")], &mut c, &config).unwrap();
        assert_eq!(rows.len(), 1);
        let r = &rows[0];
        assert_eq!(r.prompt, "q?");
        assert_eq!(r.steps, ["a", "b", "#### 3"]);
        assert_eq!(r.soft_labels, [0.5, 0.0, 0.0]);
        assert_eq!(r.labels, [true, false, false]);
        // PAV progress: V(q) = 0 (the one sampled solution is wrong), then the soft labels'
        // differences: step 1 gains half, step 2 loses it, step 3 changes nothing.
        assert_eq!(r.start_value, 0.0);
        assert_eq!(r.progress, [0.5, -0.5, 0.0]);
        assert!(!r.solution_correct);
        assert_eq!(
            c.asked,
            [("".into(), 1), ("a\n".into(), 4), ("a\nb\n".into(), 4)]
        );
        assert_eq!(
            stats,
            McLabelStats {
                solutions: 1,
                skipped_empty: 0,
                steps: 3,
                correct_solutions: 0,
                positive_steps: 1,
                mean_soft: 0.5 / 3.0,
                completions: 8,
            }
        );
    }

    /// A correct solution labels its last step 1; a one-step solution needs no completion; an
    /// empty solution is skipped; the file reads back as `train-prm`'s generic layout.
    #[test]
    fn correct_single_step_and_empty_solutions_and_the_file_layout() {
        let mut c = canned(&[
            ("", &["x = 2\n\n#### 7", "  "]),
            ("x = 2\n\n", &["#### 7", "#### 1"]),
        ]);
        let config = McLabelConfig {
            k: 2,
            delimiter: "\n\n".into(),
            solutions_per_problem: 2,
            extraction: AnswerExtraction::Strict,
        };
        let (rows, stats) =
            monte_carlo_step_labels(&[problem("p", "#### 7")], &mut c, &config).unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].soft_labels, [0.5, 1.0]);
        assert_eq!(rows[0].labels, [true, true]);
        // V(q) = 1/2: one of the two sampled solutions (the empty one is wrong) is correct.
        assert_eq!(rows[0].start_value, 0.5);
        assert_eq!(rows[0].progress, [0.0, 0.5]);
        assert!(rows[0].solution_correct);
        assert_eq!((stats.skipped_empty, stats.completions), (1, 2));

        let mut one = canned(&[("", &["#### 7"])]);
        let (rows1, stats1) = monte_carlo_step_labels(
            &[problem("p", "7")],
            &mut one,
            &McLabelConfig {
                solutions_per_problem: 1,
                ..config.clone()
            },
        )
        .unwrap();
        assert_eq!(
            (rows1[0].soft_labels.clone(), stats1.completions),
            (vec![1.0], 0)
        );
        assert_eq!(
            one.asked.len(),
            1,
            "no completion asked for a one-step solution"
        );

        let dir = std::env::temp_dir().join(format!("po-mc-labels-{}", std::process::id()));
        let path = dir.join("labels.jsonl");
        write_rows(&path, &rows).unwrap();
        let read = rm_core::data::generic::load_step_labelled(&path).unwrap();
        assert_eq!(read.len(), 1);
        assert_eq!(read[0].prompt, "p");
        let labels: Vec<_> = read[0].steps.iter().map(|s| s.label).collect();
        use rm_core::types::StepLabel;
        assert_eq!(labels, [Some(StepLabel::Good), Some(StepLabel::Good)]);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn bad_settings_and_bad_gold_answers_are_errors() {
        let mut c = canned(&[("", &["#### 1"])]);
        let config = McLabelConfig {
            k: 0,
            delimiter: "\n".into(),
            solutions_per_problem: 1,
            extraction: AnswerExtraction::Flexible,
        };
        assert!(monte_carlo_step_labels(&[problem("p", "1")], &mut c, &config).is_err());
        let config = McLabelConfig { k: 1, ..config };
        let err = monte_carlo_step_labels(&[problem("the problem", "many")], &mut c, &config)
            .unwrap_err()
            .to_string();
        assert!(err.contains("the problem") && err.contains("many"), "{err}");
        // A continuer that returns too few completions.
        struct Short;
        impl Continuer for Short {
            fn continue_prefixes(
                &mut self,
                r: &[(&RlPrompt, &str)],
                _k: usize,
            ) -> Result<Vec<Vec<String>>> {
                Ok(vec![Vec::new(); r.len()])
            }
        }
        let err = monte_carlo_step_labels(&[problem("p", "1")], &mut Short, &config)
            .unwrap_err()
            .to_string();
        assert!(err.contains("got 0 completions, expected 1"), "{err}");
    }
}
