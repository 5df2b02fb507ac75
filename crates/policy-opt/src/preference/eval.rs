//! `plumb eval-po` as a library call: a RewardBench-style report of a policy's implicit rewards
//! (reward-bench's `DPOInference`: `Σ log π(y|x) − Σ log π_ref(y|x)` over the response tokens,
//! or the reference-free `sum`, `avg`, `norm` modes; see [`bench_harness::implicit`]) on any
//! pairs file, a reward-bench v1/v2 file or HH-RLHF, through the same report code as `eval-rm`.

use std::path::PathBuf;

use anyhow::{Context, Result, anyhow, bail};
use bench_harness::{ImplicitRewardMode, ScoreItem, Scorer, SequenceLogProbs, implicit_rewards};
use rm_core::burn::tensor::Device;
use rm_core::models::llama::{CausalLm, LlamaModel};
use rm_core::models::policy_folder::Policy;
use rm_core::policy::CausalPolicy;
use rm_core::tokenize::{PaddingSide, Sequence, TokenBatch};
use rm_pipeline::eval::{EvalOutcome, ReportTarget, evaluate_scorer};

/// Scores (prompt, response) by a policy's implicit reward. Responses are encoded as in
/// training ([`Policy::encode`]: the policy's chat template, prompt-first truncation).
pub struct ImplicitRewardScorer {
    policy: Policy,
    /// `None` for the reference-free modes.
    reference: Option<LlamaModel>,
    mode: ImplicitRewardMode,
    batch_size: usize,
    name: String,
}

impl ImplicitRewardScorer {
    /// A scorer; `reference` must be given exactly for [`ImplicitRewardMode::Reference`].
    pub fn new(
        policy: Policy,
        reference: Option<LlamaModel>,
        mode: ImplicitRewardMode,
        batch_size: usize,
        name: String,
    ) -> Result<Self> {
        if batch_size == 0 {
            bail!("--batch-size must be at least 1");
        }
        match (mode, reference.is_some()) {
            (ImplicitRewardMode::Reference, false) => {
                bail!("the reference mode needs a reference model")
            }
            (m, true) if m != ImplicitRewardMode::Reference => {
                bail!("the {m:?} mode is reference-free: give no reference")
            }
            _ => {}
        }
        Ok(Self {
            policy,
            reference,
            mode,
            batch_size,
            name,
        })
    }

    /// Per-response log-prob sums of `seqs` under `model` (right-padded batches).
    fn logprobs(&self, model: &LlamaModel, seqs: &[Sequence]) -> Result<Vec<SequenceLogProbs>> {
        let device = &self.policy.lm.device;
        let mut out = Vec::with_capacity(seqs.len());
        for chunk in seqs.chunks(self.batch_size) {
            let batch =
                TokenBatch::pad(chunk, self.policy.lm.tokenizer.pad_id(), PaddingSide::Right)?;
            let lp = model.completion_logprobs(
                batch.ids_tensor(device),
                batch.attention_tensor(device),
                batch.completion_tensor(device),
                false,
            )?;
            let width = batch.seq_len - 1;
            let values: Vec<f32> = lp
                .token_logprobs
                .into_data()
                .convert::<f32>()
                .try_to_vec()
                .map_err(|e| anyhow!("reading log-probs: {e:?}"))?;
            for (row, seq) in chunk.iter().enumerate() {
                // Position j predicts token j + 1; keep the completion's.
                let tokens: Vec<f32> = (0..width)
                    .filter(|&j| seq.completion.get(j + 1).copied().unwrap_or(false))
                    .map(|j| values[row * width + j])
                    .collect();
                out.push(SequenceLogProbs::from_token_logps(&tokens));
            }
        }
        Ok(out)
    }
}

impl Scorer for ImplicitRewardScorer {
    fn name(&self) -> String {
        self.name.clone()
    }

    fn score(&mut self, items: &[ScoreItem<'_>]) -> Result<Vec<f32>> {
        let seqs: Vec<Sequence> = items
            .iter()
            .enumerate()
            .map(|(i, item)| {
                self.policy
                    .encode(item.prompt, item.response)
                    .with_context(|| format!("item {i}"))
            })
            .collect::<Result<_>>()?;
        let policy = self.logprobs(&self.policy.lm.model, &seqs)?;
        let reference = match &self.reference {
            Some(r) => self.logprobs(r, &seqs)?,
            None => Vec::new(),
        };
        Ok(implicit_rewards(self.mode, &policy, &reference)?)
    }
}

/// An `eval-po` run.
pub struct PolicyEvalRequest {
    /// A policy folder (`plumb train-po`) or any model `CausalLm::load` reads (then its own
    /// encoding: ChatML, `max_len`).
    pub policy: PathBuf,
    /// The reference for the `reference` mode; `None`: the base named by the policy folder.
    pub reference: Option<PathBuf>,
    pub mode: ImplicitRewardMode,
    /// Sequences per forward pass.
    pub batch_size: usize,
    pub target: ReportTarget,
    pub device: Device,
}

/// Scores `request`'s input by the policy's implicit rewards and writes the report pair.
pub fn evaluate_policy(
    request: &PolicyEvalRequest,
    on_skip: &mut dyn FnMut(&rm_core::data::DataError),
    progress: &mut dyn FnMut(bench_harness::Progress),
) -> Result<EvalOutcome> {
    request.target.check_paths()?;
    let policy = if request
        .policy
        .join(rm_core::models::policy_folder::POLICY_SPEC_FILE)
        .is_file()
    {
        Policy::load(&request.policy, &request.device)?
    } else {
        // A plain model: ChatML, as long as its positions allow (at most 512 tokens).
        let lm = CausalLm::load(&request.policy, &request.device)?;
        let max_len = lm.config.max_position_embeddings.min(512);
        drop(lm);
        Policy::build(
            &rm_core::models::policy_folder::PolicyModelConfig {
                policy: request.policy.clone(),
                max_len,
                template: None,
                lora: None,
            },
            &request.device,
        )?
    };
    let reference = match (request.mode, &request.reference) {
        (ImplicitRewardMode::Reference, Some(dir)) => Some(CausalLm::load(dir, &request.device)?),
        (ImplicitRewardMode::Reference, None) => Some(
            CausalLm::load(&policy.spec.base, &request.device).with_context(|| {
                format!(
                    "loading the reference, the base {} of {}",
                    policy.spec.base.display(),
                    request.policy.display()
                )
            })?,
        ),
        (mode, Some(_)) => bail!("--reference is only used by --mode reference, not {mode:?}"),
        (_, None) => None,
    };
    if let Some(r) = &reference
        && r.tokenizer.vocab_size() != policy.lm.tokenizer.vocab_size()
    {
        bail!(
            "the reference's vocabulary ({}) is not the policy's ({}): implicit rewards need the same tokenizer",
            r.tokenizer.vocab_size(),
            policy.lm.tokenizer.vocab_size()
        );
    }
    let mut scorer = ImplicitRewardScorer::new(
        policy,
        reference.map(|r| r.model),
        request.mode,
        request.batch_size,
        request.policy.display().to_string(),
    )?;
    evaluate_scorer(&request.target, &mut scorer, on_skip, progress)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bench_harness::implicit_reward;
    use rm_core::chat::ChatTemplate;
    use rm_core::device::test_device;
    use rm_core::models::policy_folder::PolicyModelConfig;
    use rm_core::types::Prompt;
    use rm_pipeline::eval::{EvalFormat, EvalInput};

    fn temp(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("plumb-eval-po-{tag}-{}", std::process::id()));
        std::fs::remove_dir_all(&d).ok();
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn policy(dir: &std::path::Path, device: &Device) -> Policy {
        Policy::build(
            &PolicyModelConfig {
                policy: dir.to_path_buf(),
                max_len: 32,
                template: Some(ChatTemplate::Plain),
                lora: None,
            },
            device,
        )
        .unwrap()
    }

    /// Batched, padded scoring equals each response's log-prob sums computed alone, in every
    /// mode.
    #[test]
    fn implicit_rewards_equal_one_response_at_a_time() {
        let root = temp("alone");
        let device = test_device();
        rm_core::fixtures::write_tiny_llama(&root.join("p"), 5).unwrap();
        rm_core::fixtures::write_tiny_llama(&root.join("r"), 6).unwrap();
        let prompts = [Prompt::Text("w3 w4 w5".into()), Prompt::Text("w6".into())];
        let responses = ["w7 w8", "w9 w10 w11 w12"];
        let items: Vec<ScoreItem<'_>> = prompts
            .iter()
            .zip(responses)
            .map(|(prompt, response)| ScoreItem { prompt, response })
            .collect();
        let alone = |model: &LlamaModel, p: &Policy, i: usize| {
            let seq = p.encode(&prompts[i], responses[i]).unwrap();
            let batch = TokenBatch::pad(&[seq], 0, PaddingSide::Right).unwrap();
            let lp = model
                .completion_logprobs(
                    batch.ids_tensor(&device),
                    batch.attention_tensor(&device),
                    batch.completion_tensor(&device),
                    false,
                )
                .unwrap();
            let tokens: Vec<f32> = lp.token_logprobs.into_data().try_to_vec().unwrap();
            let mask: Vec<f32> = lp.mask.into_data().try_to_vec().unwrap();
            let kept: Vec<f32> = tokens
                .iter()
                .zip(&mask)
                .filter(|(_, m)| **m > 0.0)
                .map(|(t, _)| *t)
                .collect();
            SequenceLogProbs::from_token_logps(&kept)
        };
        let reference = CausalLm::load(root.join("r"), &device).unwrap().model;
        for mode in [
            ImplicitRewardMode::Reference,
            ImplicitRewardMode::Sum,
            ImplicitRewardMode::Avg,
            ImplicitRewardMode::Norm,
        ] {
            let p = policy(&root.join("p"), &device);
            let expected: Vec<f32> = (0..2)
                .map(|i| {
                    let pol = alone(&p.lm.model, &p, i);
                    let refr = alone(&reference, &p, i);
                    let r = (mode == ImplicitRewardMode::Reference).then_some(&refr);
                    implicit_reward(mode, &pol, r).unwrap()
                })
                .collect();
            let r = (mode == ImplicitRewardMode::Reference).then(|| reference.clone());
            let mut scorer = ImplicitRewardScorer::new(p, r, mode, 2, "p".into()).unwrap();
            let got = scorer.score(&items).unwrap();
            for (g, e) in got.iter().zip(&expected) {
                assert!((g - e).abs() < 1e-5, "{mode:?}: {got:?} vs {expected:?}");
            }
            assert!(expected.iter().all(|e| e.is_finite() && *e != 0.0));
        }
        // Wrong combinations are errors.
        let p = || policy(&root.join("p"), &device);
        let e = ImplicitRewardScorer::new(p(), None, ImplicitRewardMode::Reference, 2, "p".into());
        assert!(e.is_err());
        let e =
            ImplicitRewardScorer::new(p(), Some(reference), ImplicitRewardMode::Sum, 2, "p".into());
        assert!(e.is_err());
    }

    /// `eval-po` on a saved policy folder: the reference defaults to its base; a policy scored
    /// against itself gives every response reward 0.
    #[test]
    fn eval_po_writes_a_report_and_defaults_the_reference_to_the_base() {
        let root = temp("report");
        let device = test_device();
        rm_core::fixtures::write_tiny_llama(&root.join("base"), 5).unwrap();
        let p = policy(&root.join("base"), &device);
        p.save(&p.lm.model, &root.join("policy")).unwrap();
        let rows: Vec<String> = (0..4)
            .map(|i| {
                serde_json::json!({"prompt": format!("w{}", 3 + i), "chosen": "w7 w8", "rejected": format!("w{}", 20 + i)})
                    .to_string()
            })
            .collect();
        std::fs::write(root.join("pairs.jsonl"), rows.join("\n")).unwrap();
        let request = |mode| PolicyEvalRequest {
            policy: root.join("policy"),
            reference: None,
            mode,
            batch_size: 4,
            target: ReportTarget {
                input: EvalInput::File(root.join("pairs.jsonl")),
                format: Some(EvalFormat::Pairs),
                out: root.join("report.json"),
                data_dir: root.clone(),
            },
            device: device.clone(),
        };
        let outcome =
            evaluate_policy(&request(ImplicitRewardMode::Sum), &mut |_| {}, &mut |_| {}).unwrap();
        assert_eq!(outcome.rows, 4);
        assert!(outcome.json_path.is_file() && outcome.md_path.is_file());
        let report: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&outcome.json_path).unwrap()).unwrap();
        let overall = report["overall"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&overall), "{report}");
        // Reference mode against its own base (the same weights): all rewards 0, so no pair
        // is won outright.
        let mut scorer = ImplicitRewardScorer::new(
            Policy::load(&root.join("policy"), &device).unwrap(),
            Some(CausalLm::load(root.join("base"), &device).unwrap().model),
            ImplicitRewardMode::Reference,
            4,
            "self".into(),
        )
        .unwrap();
        let prompt = Prompt::Text("w3".into());
        let zero = scorer
            .score(&[ScoreItem {
                prompt: &prompt,
                response: "w7 w8",
            }])
            .unwrap();
        assert_eq!(zero, [0.0]);
        evaluate_policy(
            &request(ImplicitRewardMode::Reference),
            &mut |_| {},
            &mut |_| {},
        )
        .unwrap();
    }
}
