//! `plumb eval-po --judge RM_DIR`: the reward-model-judged win rate of a policy against its
//! reference — both sample a response to the same prompts (same sampling settings and seeds), a
//! plumbline reward model scores each, and the policy wins a prompt when its response scores
//! higher (a tie counts one half). The win rate TRL's `WinRateCallback` reports, with an RM as
//! the judge.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use rm_core::burn::tensor::Device;
use rm_core::lora;
use rm_core::models::llama::{CausalLm, LlamaModel};
use rm_core::models::policy_folder::Policy;
use rm_core::models::reward::RewardModelBundle;
use rm_core::sampling::{SamplingConfig, generate};
use rm_core::types::Prompt;
use rm_pipeline::eval::EvalInput;
use serde::Serialize;

/// A judged comparison.
pub struct JudgeRequest {
    /// A policy folder (`plumb train-po`).
    pub policy: PathBuf,
    /// The reference model [default: the base the policy folder names].
    pub reference: Option<PathBuf>,
    /// A reward-model folder (`plumb train-rm`).
    pub judge: PathBuf,
    /// Where the prompts come from (the first `prompts` distinct ones).
    pub input: EvalInput,
    pub prompts: usize,
    pub data_dir: PathBuf,
    /// How both models sample (the seed included; stop tokens are added from the tokenizer).
    pub sampling: SamplingConfig,
    /// Prompts per generation batch and texts per scoring batch.
    pub batch_size: usize,
    /// Where the JSON report goes.
    pub out: PathBuf,
    pub device: Device,
}

/// One prompt's two responses and their rewards.
#[derive(Clone, Debug, Serialize)]
pub struct JudgedSample {
    pub prompt: Prompt,
    pub policy: String,
    pub reference: String,
    pub policy_reward: f32,
    pub reference_reward: f32,
}

/// What a judged comparison found.
#[derive(Clone, Debug, Serialize)]
pub struct JudgeOutcome {
    pub prompts: usize,
    pub policy_wins: usize,
    pub ties: usize,
    /// `(wins + ties / 2) / prompts`.
    pub win_rate: f64,
    pub mean_policy_reward: f64,
    pub mean_reference_reward: f64,
    pub seconds: f64,
    pub json_path: PathBuf,
    pub samples: Vec<JudgedSample>,
}

/// The first `n` distinct prompts of `input`.
fn prompts(input: &EvalInput, data_dir: &std::path::Path, n: usize) -> Result<Vec<Prompt>> {
    let rows = match input {
        EvalInput::HhRlhf(split) => bench_harness::data::load_hh_rlhf(data_dir, *split)?,
        EvalInput::File(path) => {
            let loaded = bench_harness::data::read_pairs_lenient(path)?;
            if let Some(e) = loaded.errors.first() {
                bail!("{e}");
            }
            loaded.rows
        }
    };
    let mut out: Vec<Prompt> = Vec::new();
    for row in rows {
        if out.len() == n {
            break;
        }
        if !out.contains(&row.prompt) {
            out.push(row.prompt);
        }
    }
    if out.is_empty() {
        bail!("no prompts in the input");
    }
    Ok(out)
}

/// Samples one response per prompt from `model`.
fn sample(
    model: &LlamaModel,
    policy: &Policy,
    prompts: &[Prompt],
    request: &JudgeRequest,
    config: &SamplingConfig,
) -> Result<Vec<String>> {
    let tokenizer = &policy.lm.tokenizer;
    let budget = policy
        .spec
        .max_len
        .saturating_sub(config.max_new_tokens)
        .max(1);
    let mut out = Vec::with_capacity(prompts.len());
    for (b, chunk) in prompts.chunks(request.batch_size).enumerate() {
        let ids = chunk
            .iter()
            .map(|p| {
                let mut ids = tokenizer.encode(&policy.spec.template.render_prompt(p)?, true)?;
                if ids.len() > budget {
                    ids.drain(..ids.len() - budget);
                }
                Ok(ids)
            })
            .collect::<Result<Vec<_>>>()?;
        let config = SamplingConfig {
            // Distinct rows across batches, the same ones for both models.
            seed: config.seed.wrapping_add(b as u64),
            ..config.clone()
        };
        let rows = generate(model, tokenizer, &ids, &config, &request.device)?;
        out.extend(rows.into_iter().map(|r| r.text.trim().to_string()));
    }
    Ok(out)
}

/// Samples from the policy and its reference, judges both with the reward model, writes the
/// JSON report (summary and every sample).
pub fn judged_win_rate(request: &JudgeRequest) -> Result<JudgeOutcome> {
    if request.batch_size == 0 || request.prompts == 0 {
        bail!("--batch-size and --prompts must be at least 1");
    }
    let start = Instant::now();
    let policy = Policy::load(&request.policy, &request.device)?;
    let policy_model = match lora::adapter_paths(&policy.lm.model).is_empty() {
        true => policy.lm.model.clone(),
        false => lora::merge(&policy.lm.model),
    };
    let reference_path = request
        .reference
        .clone()
        .unwrap_or(policy.spec.base.clone());
    let reference = CausalLm::load(&reference_path, &request.device)
        .with_context(|| format!("loading the reference {}", reference_path.display()))?;
    if reference.tokenizer.vocab_size() != policy.lm.tokenizer.vocab_size() {
        bail!("the reference's vocabulary is not the policy's");
    }
    let judge = RewardModelBundle::load(&request.judge, &request.device)?;
    let prompts = prompts(&request.input, &request.data_dir, request.prompts)?;
    let mut config = request.sampling.clone();
    config.stop_tokens.extend(policy.lm.stop_tokens());
    config.stop_tokens.sort_unstable();
    config.stop_tokens.dedup();
    eprintln!(
        "sampling {} prompts from the policy and from the reference {} ({} new tokens at most)",
        prompts.len(),
        reference_path.display(),
        config.max_new_tokens
    );
    let from_policy = sample(&policy_model, &policy, &prompts, request, &config)?;
    let from_reference = sample(&reference.model, &policy, &prompts, request, &config)?;
    let texts: Vec<String> = prompts
        .iter()
        .zip(&from_policy)
        .chain(prompts.iter().zip(&from_reference))
        .map(|(p, r)| judge.text(p, r))
        .collect::<Result<_>>()?;
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let rewards: Vec<f32> = judge
        .score_texts(&refs, request.batch_size)?
        .into_iter()
        .map(|r| r[0])
        .collect();
    let n = prompts.len();
    let samples: Vec<JudgedSample> = prompts
        .into_iter()
        .enumerate()
        .map(|(i, prompt)| JudgedSample {
            prompt,
            policy: from_policy[i].clone(),
            reference: from_reference[i].clone(),
            policy_reward: rewards[i],
            reference_reward: rewards[n + i],
        })
        .collect();
    let policy_wins = samples
        .iter()
        .filter(|s| s.policy_reward > s.reference_reward)
        .count();
    let ties = samples
        .iter()
        .filter(|s| s.policy_reward == s.reference_reward)
        .count();
    let mean = |f: fn(&JudgedSample) -> f32| {
        samples.iter().map(|s| f64::from(f(s))).sum::<f64>() / n as f64
    };
    let outcome = JudgeOutcome {
        prompts: n,
        policy_wins,
        ties,
        win_rate: (policy_wins as f64 + ties as f64 / 2.0) / n as f64,
        mean_policy_reward: mean(|s| s.policy_reward),
        mean_reference_reward: mean(|s| s.reference_reward),
        seconds: start.elapsed().as_secs_f64(),
        json_path: request.out.clone(),
        samples,
    };
    rm_core::checkpoint::write_bytes_atomically(
        &request.out,
        serde_json::to_string_pretty(&outcome)?.as_bytes(),
    )?;
    Ok(outcome)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rm_core::chat::ChatTemplate;
    use rm_core::device::test_device;
    use rm_core::models::policy_folder::PolicyModelConfig;
    use rm_core::models::reward::RewardModelConfig;
    use rm_core::tokenize::TruncationSide;

    /// A policy judged against its own base samples the same responses (same seeds), so every
    /// prompt ties and the win rate is exactly one half; against another model it is a real
    /// comparison with every sample scored.
    #[test]
    fn a_policy_against_itself_ties_everywhere() {
        let root = std::env::temp_dir().join(format!("plumb-judge-{}", std::process::id()));
        std::fs::remove_dir_all(&root).ok();
        let device = test_device();
        rm_core::fixtures::write_tiny_llama(&root.join("base"), 5).unwrap();
        rm_core::fixtures::write_tiny_llama(&root.join("other"), 6).unwrap();
        let policy = Policy::build(
            &PolicyModelConfig {
                policy: root.join("base"),
                max_len: 32,
                template: Some(ChatTemplate::Plain),
                lora: None,
            },
            &device,
        )
        .unwrap();
        policy.save(&policy.lm.model, &root.join("policy")).unwrap();
        let rm = RewardModelBundle::build(
            &RewardModelConfig {
                backbone: root.join("other"),
                pooling: None,
                max_len: 32,
                truncation: TruncationSide::Left,
                attributes: vec!["reward".into()],
                template: Some(ChatTemplate::Plain),
                lora: None,
                head_init_std: 0.5,
            },
            3,
            &device,
        )
        .unwrap();
        rm.save(&root.join("rm")).unwrap();
        let rows: Vec<String> = (0..5)
            .map(|i| {
                serde_json::json!({"prompt": format!("w{} w{}", 3 + i, 4 + i), "chosen": "w7", "rejected": "w8"})
                    .to_string()
            })
            .collect();
        std::fs::write(root.join("prompts.jsonl"), rows.join("\n")).unwrap();
        let request = |reference: Option<PathBuf>| JudgeRequest {
            policy: root.join("policy"),
            reference,
            judge: root.join("rm"),
            input: EvalInput::File(root.join("prompts.jsonl")),
            prompts: 4,
            data_dir: root.clone(),
            sampling: SamplingConfig {
                max_new_tokens: 6,
                seed: 11,
                ..SamplingConfig::default()
            },
            batch_size: 3,
            out: root.join("judge.json"),
            device: device.clone(),
        };
        let same = judged_win_rate(&request(None)).unwrap();
        assert_eq!((same.prompts, same.ties, same.win_rate), (4, 4, 0.5));
        assert!(same.samples.iter().all(|s| s.policy == s.reference));
        assert!(root.join("judge.json").is_file());
        let other = judged_win_rate(&request(Some(root.join("other")))).unwrap();
        assert!(other.samples.iter().any(|s| s.policy != s.reference));
        let wins = other
            .samples
            .iter()
            .filter(|s| s.policy_reward > s.reference_reward)
            .count();
        assert_eq!(wins, other.policy_wins);
        assert!((0.0..=1.0).contains(&other.win_rate));
    }
}
