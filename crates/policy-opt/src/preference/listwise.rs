//! Listwise preference optimisation: PRO ([`rm_losses::preference::pro_loss`], Song et al.
//! 2023, "Preference Ranking Optimization for Human Alignment") over rankings of a prompt's
//! responses, for the epoch driver.
//!
//! A ranking's responses are encoded on one prompt cut (`Policy::encode_shared`), best first;
//! each micro-batch runs every response of its rankings through the policy, each prompt once
//! ([`rm_core::shared_prompt::shared_prompt_logprobs`]), and lays the summed log-probs out as
//! `[B, K]` (rankings shorter than the batch's longest are masked). PRO needs no reference.
//! Rewards set PRO's temperatures: a ranking's scores when its source has them, else `−rank`
//! (so adjacent ranks are one unit apart and ties tie).

use std::path::Path;

use anyhow::{Context, Result, anyhow, bail};
use rm_core::burn::tensor::{Bool, Device, Int, Tensor, TensorData};
use rm_core::models::llama::LlamaModel;
use rm_core::models::policy_folder::Policy;
use rm_core::shared_prompt::shared_prompt_logprobs;
use rm_core::tokenize::Sequence;
use rm_core::train::{EpochTask, Evaluation, LossOutput, Metric, TrainTask};
use rm_core::types::Ranking;
use rm_losses::preference::pro_loss;
use serde::{Deserialize, Serialize};

use super::task::evaluation_from_sums;

/// PRO's settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProConfig {
    /// `λ ≥ 0`, the weight of the best response's NLL (the authors' code uses
    /// `sft_weight·(K−1)²`: give that product here to match it).
    pub sft_weight: f32,
}

impl Default for ProConfig {
    fn default() -> Self {
        Self { sft_weight: 0.05 }
    }
}

/// One ranking, tokenized: its responses best first, with their rewards (non-increasing).
#[derive(Clone, Debug, PartialEq)]
pub struct EncodedRanking {
    pub sequences: Vec<Sequence>,
    pub rewards: Vec<f32>,
}

/// Encodes `rankings` from `source` (named in errors with the row's 1-based number): responses
/// ordered by rank (then by score, higher first), rewards the scores or `−rank`.
///
/// Errors: fewer than 2 responses; scores that disagree with the ranks (a better-ranked
/// response scored lower); a non-finite score; an empty response.
pub fn encode_rankings(
    policy: &Policy,
    rankings: &[Ranking],
    source: &str,
) -> Result<Vec<EncodedRanking>> {
    rankings
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let row = || format!("{source}: ranking {}", i + 1);
            if r.responses.len() < 2 {
                bail!("{}: PRO needs at least 2 responses", row());
            }
            let scores: Vec<f32> = match &r.scores {
                Some(s) => s.clone(),
                None => r.ranks.iter().map(|&k| -(k as f32)).collect(),
            };
            if scores.iter().any(|s| !s.is_finite()) {
                bail!("{}: a non-finite score", row());
            }
            let mut order: Vec<usize> = (0..r.responses.len()).collect();
            order.sort_by(|&a, &b| {
                r.ranks[a]
                    .cmp(&r.ranks[b])
                    .then(scores[b].total_cmp(&scores[a]))
            });
            let rewards: Vec<f32> = order.iter().map(|&k| scores[k]).collect();
            if let Some(w) = rewards.windows(2).position(|w| w[1] > w[0]) {
                bail!(
                    "{}: its scores disagree with its ranks (the response ranked {} scores {} > {})",
                    row(),
                    w + 2,
                    rewards[w + 1],
                    rewards[w]
                );
            }
            let responses: Vec<&str> = order.iter().map(|&k| r.responses[k].as_str()).collect();
            let sequences = policy
                .encode_shared(&r.prompt, &responses)
                .with_context(row)?;
            Ok(EncodedRanking { sequences, rewards })
        })
        .collect()
}

/// PRO training of a policy (no reference model).
pub struct ListwiseTask {
    train: Vec<EncodedRanking>,
    eval: Vec<EncodedRanking>,
    config: ProConfig,
    template: Policy,
    eval_batch: usize,
}

const METRICS: [&str; 2] = ["top1_accuracy", "logps_best"];

fn device_of(model: &LlamaModel) -> Device {
    model.embed_tokens.weight.val().device()
}

impl ListwiseTask {
    pub fn new(
        train: Vec<EncodedRanking>,
        eval: Vec<EncodedRanking>,
        config: ProConfig,
        template: Policy,
        eval_batch: usize,
    ) -> Result<Self> {
        if !(config.sft_weight.is_finite() && config.sft_weight >= 0.0) {
            bail!(
                "objective.sft_weight must be finite and ≥ 0, got {}",
                config.sft_weight
            );
        }
        Ok(Self {
            train,
            eval,
            config,
            template,
            eval_batch: eval_batch.max(1),
        })
    }

    /// PRO's loss on `rankings` under `model`, and the [`METRICS`] (`[1]` each): whether the
    /// best response has the highest length-normalised log-prob of its ranking, and its summed
    /// log-prob.
    fn forward(
        &self,
        model: &LlamaModel,
        rankings: &[&EncodedRanking],
    ) -> Result<(Tensor<1>, Vec<Tensor<1>>)> {
        let device = device_of(model);
        let b = rankings.len();
        let k = rankings
            .iter()
            .map(|r| r.sequences.len())
            .max()
            .context("an empty batch of rankings")?;
        let sequences: Vec<Sequence> = rankings
            .iter()
            .flat_map(|r| r.sequences.iter().cloned())
            .collect();
        let rows = sequences.len();
        let pad_id = self.template.lm.tokenizer.pad_id();
        let sums = shared_prompt_logprobs(model, &sequences, pad_id, false)?.sum;
        // [B, K] layout: entry (i, j) reads row `index`, or the appended 0 when masked.
        let mut index = Vec::with_capacity(b * k);
        let mut lengths = Vec::with_capacity(b * k);
        let mut rewards = Vec::with_capacity(b * k);
        let mut real = Vec::with_capacity(b * k);
        let mut row = 0;
        for r in rankings {
            for j in 0..k {
                match r.sequences.get(j) {
                    Some(s) => {
                        index.push(row as i64);
                        lengths.push(s.completion.iter().filter(|c| **c).count() as f32);
                        rewards.push(r.rewards[j]);
                        real.push(true);
                        row += 1;
                    }
                    None => {
                        index.push(rows as i64);
                        lengths.push(1.0);
                        rewards.push(*r.rewards.last().unwrap_or(&0.0));
                        real.push(false);
                    }
                }
            }
        }
        let padded = Tensor::cat(vec![sums, Tensor::zeros([1], &device)], 0);
        let index = Tensor::<1, Int>::from_data(TensorData::new(index, [b * k]), &device);
        let logps = padded.select(0, index).reshape([b, k]);
        let t2 = |v: Vec<f32>| Tensor::<2>::from_data(TensorData::new(v, [b, k]), &device);
        let lengths = t2(lengths);
        let mask = Tensor::<2, Bool>::from_data(TensorData::new(real, [b, k]), &device);
        let loss = pro_loss(
            logps.clone(),
            lengths.clone(),
            t2(rewards),
            Some(mask.clone()),
            self.config.sft_weight,
        )
        .map_err(|e| anyhow!("PRO: {e}"))?;
        let scores = (logps.clone() / lengths).detach();
        let best = scores.clone().narrow(1, 0, 1).reshape([b]);
        let others = scores
            .narrow(1, 1, k - 1)
            .mask_fill(mask.narrow(1, 1, k - 1).bool_not(), f32::NEG_INFINITY)
            .max_dim(1)
            .reshape([b]);
        let top1 = best.greater(others).float().mean();
        let logps_best = logps.narrow(1, 0, 1).reshape([b]).mean().detach();
        Ok((loss, vec![top1, logps_best]))
    }
}

impl TrainTask<LlamaModel> for ListwiseTask {
    fn loss(&mut self, model: &LlamaModel, items: &[usize]) -> Result<LossOutput> {
        let rankings: Vec<&EncodedRanking> = items.iter().map(|&i| &self.train[i]).collect();
        let (loss, metrics) = self.forward(model, &rankings)?;
        let n = rankings.len() as f64;
        let tokens = rankings
            .iter()
            .flat_map(|r| r.sequences.iter().map(Sequence::len))
            .sum();
        let mut out = LossOutput::new(loss, n).with_tokens(tokens);
        for (name, value) in METRICS.iter().zip(metrics) {
            out = out.with(Metric::device(*name, value, n));
        }
        Ok(out)
    }

    /// Loss and [`METRICS`] over the evaluation rankings; the score is `−loss`.
    fn evaluate(&mut self, model: &LlamaModel) -> Result<Evaluation> {
        let mut sums: Option<Tensor<1>> = None;
        for chunk in self.eval.chunks(self.eval_batch) {
            let rankings: Vec<&EncodedRanking> = chunk.iter().collect();
            let (loss, metrics) = self.forward(model, &rankings)?;
            let mut parts = vec![loss];
            parts.extend(metrics);
            let weighted = Tensor::cat(parts, 0).mul_scalar(chunk.len() as f32);
            sums = Some(match sums {
                Some(s) => s + weighted,
                None => weighted,
            });
        }
        evaluation_from_sums(sums, &METRICS, self.eval.len())
    }

    fn save_model(&self, model: &LlamaModel, dir: &Path) -> Result<()> {
        self.template.save(model, dir)
    }
}

impl EpochTask<LlamaModel> for ListwiseTask {
    fn num_examples(&self) -> usize {
        self.train.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::preference::task::tests::tiny_policy;
    use rm_core::device::test_device;
    use rm_core::types::Prompt;

    fn ranking(
        prompt: &str,
        responses: &[&str],
        ranks: &[u32],
        scores: Option<Vec<f32>>,
    ) -> Ranking {
        Ranking {
            prompt: Prompt::Text(prompt.into()),
            responses: responses.iter().map(|r| r.to_string()).collect(),
            ranks: ranks.to_vec(),
            scores,
        }
    }

    /// Responses come best first with their rewards; a batch of rankings of 3 and of 2
    /// responses gives the mean of PRO's loss on each ranking alone (the padding is masked
    /// out); bad rankings are named.
    #[test]
    fn rankings_are_ordered_and_a_padded_batch_equals_each_ranking_alone() {
        let device = test_device();
        let dir = std::env::temp_dir().join(format!("plumb-pro-{}", std::process::id()));
        std::fs::remove_dir_all(&dir).ok();
        let policy = tiny_policy(&dir, false, &device);
        let rankings = vec![
            ranking("w3 w4", &["w7", "w5 w6", "w8 w9 w10"], &[2, 0, 1], None),
            ranking("w11", &["w12 w13", "w14"], &[1, 0], Some(vec![0.5, 2.0])),
        ];
        let encoded = encode_rankings(&policy, &rankings, "test").unwrap();
        assert_eq!(encoded[0].rewards, vec![0.0, -1.0, -2.0]);
        assert_eq!(encoded[1].rewards, vec![2.0, 0.5]);
        let completion =
            |s: &Sequence| s.ids.iter().zip(&s.completion).filter(|(_, c)| **c).count();
        assert_eq!(completion(&encoded[0].sequences[0]), 2);
        assert_eq!(completion(&encoded[0].sequences[2]), 1);
        let model = policy.lm.model.clone();
        let task = ListwiseTask::new(
            encoded.clone(),
            encoded.clone(),
            ProConfig { sft_weight: 0.3 },
            policy,
            4,
        )
        .unwrap();
        let value = |t: Tensor<1>| t.into_scalar::<f32>();
        let (both, _) = task.forward(&model, &[&encoded[0], &encoded[1]]).unwrap();
        let (first, _) = task.forward(&model, &[&encoded[0]]).unwrap();
        let (second, m) = task.forward(&model, &[&encoded[1]]).unwrap();
        let (both, first, second) = (value(both), value(first), value(second));
        assert!(
            (both - (first + second) / 2.0).abs() < 1e-5,
            "{both} vs {first}, {second}"
        );
        let top1 = value(m[0].clone());
        assert!(top1 == 0.0 || top1 == 1.0);
        for (bad, says) in [
            (ranking("w3", &["w4"], &[0], None), "at least 2 responses"),
            (
                ranking("w3", &["w4", "w5"], &[0, 1], Some(vec![1.0, 2.0])),
                "disagree with its ranks",
            ),
            (ranking("w3", &["w4", ""], &[0, 1], None), "ranking 1"),
        ] {
            let err = format!(
                "{:#}",
                encode_rankings(&task.template, &[bad], "test").unwrap_err()
            );
            assert!(err.contains(says), "{err}");
        }
    }
}
