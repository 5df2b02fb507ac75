//! The recipe's `[more]` section: reward-model training on several preference sets weighted by
//! MORE ([`rm_ensembles::more`]: Zeng et al. 2023, "On Diversified Preferences of Large
//! Language Model Alignment").
//!
//! ```toml
//! [more]
//! sources = [{ source = "jsonl", path = "longer-is-better.jsonl" }]  # [data] train is source 0
//! momentum = 0.0         # β of the head gradients' moving average (0: this batch only)
//! normalize = "none"      # none | l2 | loss
//! ```
//!
//! Each micro-batch runs the backbone once; the pooled features of its pairs go to the host,
//! where each source present in the batch gets its reward-head gradient, smoothed across steps
//! (the averages are part of every checkpoint, so a resumed run is exact); the min-norm weights
//! `λ` of those gradients then weight the sources' mean losses. Logged: `more/lambda_<k>` (the
//! weight of source `k`, over the micro-batches it was in) and `more/loss_<k>`.

use anyhow::{Context, Result, bail};
use burn::tensor::{Device, Tensor};
use rm_core::models::reward::{RewardModel, RewardModelBundle};
use rm_core::train::Metric;
use rm_ensembles::more::{head_gradient, min_norm_weights, normalize_gradients};
use rm_ensembles::{GradientNormalization, MoreWeighting};
use rm_losses::{PairwiseObjective, PairwiseRewards};
use serde::{Deserialize, Serialize};

use crate::recipe::PairSource;
use crate::train::{EncodedPair, select_pairs};

/// The `[more]` section.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MoreConfig {
    /// The further preference sets (sources 1, 2, …); `[data] train` is source 0.
    pub sources: Vec<PairSource>,
    #[serde(default = "default_momentum")]
    pub momentum: f64,
    #[serde(default)]
    pub normalize: GradientNormalization,
}

fn default_momentum() -> f64 {
    MoreWeighting::default().momentum
}

impl MoreConfig {
    pub fn weighting(&self) -> MoreWeighting {
        MoreWeighting {
            momentum: self.momentum,
            normalize: self.normalize,
        }
    }

    /// At least one further source, a momentum in range, a Bradley–Terry objective (the head
    /// gradient is Bradley–Terry's).
    pub fn validate(&self, objective: &PairwiseObjective) -> Result<()> {
        if self.sources.is_empty() {
            bail!(
                "more.sources is empty: MORE weights several preference sets ([data] train is the first; name at least one more)"
            );
        }
        self.weighting().validate()?;
        if !matches!(objective, PairwiseObjective::BradleyTerry { .. }) {
            bail!(
                "[more] weights sources by their Bradley–Terry head gradients: use objective kind = \"bradley-terry\""
            );
        }
        Ok(())
    }
}

/// MORE's state in a run: the sources' smoothed head gradients.
pub(crate) struct MoreState {
    weighting: MoreWeighting,
    /// `G_k`, `None` until source `k` has been in a batch.
    averages: Vec<Option<Vec<f64>>>,
}

/// What MORE computed for one micro-batch.
pub(crate) struct MoreLoss {
    pub loss: Tensor<1>,
    pub rewards: PairwiseRewards,
    pub metrics: Vec<Metric>,
}

impl MoreState {
    pub(crate) fn new(weighting: MoreWeighting, sources: usize) -> Self {
        Self {
            weighting,
            averages: vec![None; sources],
        }
    }

    pub(crate) fn state(&self) -> serde_json::Value {
        serde_json::json!({ "more_gradient_averages": self.averages })
    }

    pub(crate) fn restore(&mut self, state: &serde_json::Value) -> Result<()> {
        let averages: Vec<Option<Vec<f64>>> =
            serde_json::from_value(state["more_gradient_averages"].clone())
                .context("the checkpoint's MORE state")?;
        if averages.len() != self.averages.len() {
            bail!(
                "the checkpoint's MORE state has {} sources, the recipe {}",
                averages.len(),
                self.averages.len()
            );
        }
        self.averages = averages;
        Ok(())
    }

    /// The MORE-weighted loss of `pairs` (see the module docs).
    pub(crate) fn loss(
        &mut self,
        model: &RewardModel,
        template: &RewardModelBundle,
        objective: &PairwiseObjective,
        pairs: &[&EncodedPair],
        device: &Device,
    ) -> Result<MoreLoss> {
        let b = pairs.len();
        let batch = crate::train::pair_token_batch(template, pairs)?;
        let features = model.pooled(
            batch.ids_tensor(device),
            batch.attention_tensor(device),
            template.spec.pooling,
        );
        let r = model
            .head
            .forward(features.clone())
            .narrow(1, 0, 1)
            .reshape([2 * b]);
        let rewards = crate::train::with_pair_inputs(
            PairwiseRewards::new(r.clone().narrow(0, 0, b), r.narrow(0, b, b)),
            pairs,
            device,
        );
        // Δ and the features on the host, in one transfer.
        let dim = features.dims()[1];
        let delta = (rewards.chosen.clone() - rewards.rejected.clone()).detach();
        let host: Vec<f32> = Tensor::cat(vec![delta, features.detach().reshape([2 * b * dim])], 0)
            .into_data()
            .convert::<f32>()
            .try_to_vec()
            .map_err(|e| anyhow::anyhow!("reading the MORE features: {e:?}"))?;
        let (deltas, feats) = host.split_at(b);
        let row = |i: usize| feats[i * dim..(i + 1) * dim].to_vec();

        let mut present: Vec<usize> = pairs.iter().map(|p| p.source).collect();
        present.sort_unstable();
        present.dedup();
        let mut grads = Vec::new();
        let mut losses = Vec::new();
        let mut members: Vec<Vec<usize>> = Vec::new();
        for &k in &present {
            let idx: Vec<usize> = (0..b).filter(|&i| pairs[i].source == k).collect();
            let d: Vec<f32> = idx.iter().map(|&i| deltas[i]).collect();
            let chosen: Vec<Vec<f32>> = idx.iter().map(|&i| row(i)).collect();
            let rejected: Vec<Vec<f32>> = idx.iter().map(|&i| row(b + i)).collect();
            let g = head_gradient(&d, &chosen, &rejected);
            let beta = self.weighting.momentum;
            let avg = match self.averages[k].take() {
                Some(prev) => prev
                    .iter()
                    .zip(&g)
                    .map(|(p, x)| beta * p + (1.0 - beta) * x)
                    .collect(),
                None => g,
            };
            grads.push(avg.clone());
            self.averages[k] = Some(avg);
            losses.push(
                d.iter()
                    .map(|&x| (1.0 + (-(x as f64)).exp()).ln())
                    .sum::<f64>()
                    / d.len() as f64,
            );
            members.push(idx);
        }
        let lambda = min_norm_weights(&normalize_gradients(
            &grads,
            &losses,
            self.weighting.normalize,
        ))?;
        let k_present = present.len() as f32;
        let mut loss: Option<Tensor<1>> = None;
        let mut metrics = Vec::new();
        for ((&k, idx), (&l, &source_loss)) in
            present.iter().zip(&members).zip(lambda.iter().zip(&losses))
        {
            let share = idx.len() as f32 / b as f32;
            let part = objective
                .loss(select_pairs(rewards.clone(), idx, device))?
                .mul_scalar(l as f32 * k_present * share);
            loss = Some(match loss {
                Some(acc) => acc + part,
                None => part,
            });
            metrics.push(Metric::host(format!("more/lambda_{k}"), l, 1.0));
            metrics.push(Metric::host(
                format!("more/loss_{k}"),
                source_loss,
                idx.len() as f64,
            ));
        }
        Ok(MoreLoss {
            loss: loss.context("an empty micro-batch")?,
            rewards,
            metrics,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_section_is_checked() {
        let objective = PairwiseObjective::default();
        let config = MoreConfig {
            sources: Vec::new(),
            momentum: 0.9,
            normalize: GradientNormalization::L2,
        };
        let err = config.validate(&objective).unwrap_err().to_string();
        assert!(err.contains("more.sources"), "{err}");
        let config = MoreConfig {
            sources: vec![PairSource::HhRlhf {
                split: crate::recipe::HhSplit::Dev,
                limit: 0,
                skip: 0,
            }],
            ..config
        };
        config.validate(&objective).unwrap();
        let err = config
            .validate(&PairwiseObjective::Distillation { centering: 0.0 })
            .unwrap_err()
            .to_string();
        assert!(err.contains("bradley-terry"), "{err}");
    }
}
