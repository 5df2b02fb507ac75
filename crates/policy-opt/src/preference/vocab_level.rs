//! The objectives that read the full-vocabulary logits of the completions, not only the
//! log-probs of their tokens: RRPO (a token-wise KL to the reference over the vocabulary) and
//! AlignDistil (token-level distillation into a teacher distribution composed from a DPO model
//! and a reference). The task asks the policy (and the reference, and AlignDistil's teacher)
//! for [`CompletionLogits`] of the rows [`logits_rows`] names; this module turns them into the
//! inputs of `rm_losses::preference::{rrpo_loss, aligndistil_loss}`.
//!
//! RRPO's sub-sequences ("refined" spans in which the chosen and rejected responses differ)
//! come from a token diff of the two completions ([`diff_segments`]): the longest common
//! subsequence of their tokens is shared, and the `k`-th run of differing tokens between two
//! shared anchors is sub-sequence `k` on both sides (one side's run may be empty). On pairs
//! whose responses are minimal edits of each other (RRPO's own data) the runs are the edits;
//! on unrelated responses (HH-RLHF) nearly everything differs. Only the shared tokens leave
//! the margin, so the loss does not depend on how the differing tokens are cut into runs;
//! `segments = "whole"` makes each completion one sub-sequence (RRPO is then DPO plus the
//! token-wise KL).

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use rm_core::burn::module::Module;
use rm_core::burn::tensor::{Device, Tensor, TensorData};
use rm_core::completion_logits::CompletionLogits;
use rm_core::models::llama::{CausalLm, LlamaModel};
use rm_core::tokenize::Sequence;
use rm_losses::preference::{
    AlignDistilParams, RrpoBatch, TokenLogps, aligndistil_loss, rrpo_loss,
};
use serde::{Deserialize, Serialize};

use super::objective::ObjectiveOutput;

/// How RRPO cuts the completions into paired sub-sequences.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Segmentation {
    /// The runs of a token diff of the two completions (see the module docs).
    #[default]
    Diff,
    /// Each completion is one sub-sequence.
    Whole,
}

/// RRPO's settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RrpoConfig {
    /// `β > 0` of the sub-sequence margin.
    pub beta: f32,
    /// `α ≥ 0`, the weight of the token-wise KL to the reference on the chosen completion
    /// (summed over its tokens).
    pub alpha: f32,
    /// How the paired sub-sequences are found.
    pub segments: Segmentation,
}

impl Default for RrpoConfig {
    fn default() -> Self {
        Self {
            beta: 0.1,
            alpha: 0.01,
            segments: Segmentation::Diff,
        }
    }
}

/// AlignDistil's settings (`rm_losses::preference::AlignDistilParams` and the models of the
/// teacher distribution).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AlignDistilConfig {
    /// The DPO model of the teacher: a trained policy folder (`plumb train-po` output, merged
    /// or with its adapter) of the same tokenizer. Relative paths are read from the working
    /// folder.
    pub teacher: PathBuf,
    /// The model the teacher extrapolates away from: the policy's reference when absent, or a
    /// policy folder (the paper's contrastive form: a reverse-DPO model, trained on the swapped
    /// pairs).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub contrast: Option<PathBuf>,
    /// `β > 0`, the scale of DPO's token rewards.
    pub beta: f32,
    /// `γ ≥ 0` of the adaptive coefficient `w_t = γ·TV_t + 10⁻³`.
    pub extrapolation: f32,
    /// `τ > 0`, the teacher's temperature.
    pub temperature: f32,
    /// Divide each sequence's loss by its token count.
    pub length_normalize: bool,
}

impl Default for AlignDistilConfig {
    fn default() -> Self {
        let p = AlignDistilParams::default();
        Self {
            teacher: PathBuf::new(),
            contrast: None,
            beta: p.beta,
            extrapolation: p.extrapolation,
            temperature: p.temperature,
            length_normalize: p.length_normalize,
        }
    }
}

impl AlignDistilConfig {
    pub(crate) fn params(&self) -> AlignDistilParams {
        AlignDistilParams {
            beta: self.beta,
            extrapolation: self.extrapolation,
            temperature: self.temperature,
            length_normalize: self.length_normalize,
        }
    }

    pub(crate) fn validate(&self) -> Result<()> {
        if self.teacher.as_os_str().is_empty() {
            bail!(
                "objective.teacher must name the DPO model of AlignDistil's teacher (a trained policy folder, e.g. the `final` folder of a `plumb train-po` DPO run)"
            );
        }
        for (name, v, strict) in [
            ("beta", self.beta, true),
            ("extrapolation", self.extrapolation, false),
            ("temperature", self.temperature, true),
        ] {
            if !v.is_finite() || v < 0.0 || (strict && v == 0.0) {
                bail!(
                    "objective.{name} must be finite and {} 0, got {v}",
                    if strict { ">" } else { "≥" }
                );
            }
        }
        Ok(())
    }
}

/// What the logit-level objectives get beside [`super::objective::ObjectiveInputs`]' per-token
/// log-probs: logits on the compact completion grid of the rows [`logits_rows`] names.
pub struct VocabInputs {
    /// The policy's logits (with a graph).
    pub policy: CompletionLogits,
    /// The logits of the model the KL (RRPO) or the teacher (AlignDistil) compares with: the
    /// reference, or AlignDistil's `contrast` model; `[N, L, V]`, detached.
    pub reference: Tensor<3>,
    /// AlignDistil's DPO model's logits, `[N, L, V]`, detached.
    pub teacher: Option<Tensor<3>>,
    /// RRPO's sub-sequence index of each token on the `[2B, T−1]` grid
    /// ([`segment_grid`]), with the number of sub-sequences.
    pub segments: Option<(Tensor<2>, usize)>,
}

/// Loads AlignDistil's teacher models frozen on `device` (any folder `plumb generate --model`
/// reads: a trained policy folder, adapters merged, an HF folder or a GGUF file; paths under
/// `models/` follow `models_dir`). Errors name the folder, and a model whose vocabulary is not
/// the policy's `vocab` is refused.
pub fn load_teachers(
    teacher: &std::path::Path,
    contrast: Option<&std::path::Path>,
    vocab: usize,
    models_dir: &std::path::Path,
    device: &Device,
) -> Result<super::task::Teachers> {
    let load = |path: &std::path::Path, role: &str| -> Result<LlamaModel> {
        let path = rm_core::paths::resolve_model_path(path, models_dir);
        let lm = CausalLm::load(&path, device)
            .with_context(|| format!("loading AlignDistil's {role} {}", path.display()))?;
        let theirs = lm.model.embed_tokens.weight.val().dims()[0];
        if theirs != vocab {
            bail!(
                "AlignDistil's {role} {} has a vocabulary of {theirs} tokens, the policy {vocab}: the teacher must share the policy's tokenizer",
                path.display()
            );
        }
        Ok(lm.model.no_grad())
    };
    Ok(super::task::Teachers {
        dpo: load(teacher, "teacher (objective.teacher)")?,
        contrast: contrast
            .map(|c| load(c, "contrast model (objective.contrast)"))
            .transpose()?,
    })
}

/// How many of a batch's first rows (`[chosen…, rejected…]` of `pairs` pairs) need logits:
/// RRPO's chosen ones, AlignDistil's every row.
pub fn logits_rows(objective: &super::objective::PreferenceObjective, pairs: usize) -> usize {
    use super::objective::PreferenceObjective as O;
    match objective {
        O::Rrpo(_) => pairs,
        O::AlignDistil(_) => 2 * pairs,
        _ => 0,
    }
}

/// RRPO on a batch: `policy` and `reference` are the per-token log-probs `[2B, T−1]`, `mask`
/// the completion mask shifted onto that grid.
pub(crate) fn rrpo(
    config: &RrpoConfig,
    policy: Tensor<2>,
    reference: Tensor<2>,
    mask: Tensor<2>,
    vocab: VocabInputs,
) -> Result<ObjectiveOutput> {
    let [rows, _] = policy.dims();
    let b = rows / 2;
    let (segments, count) = vocab
        .segments
        .context("RRPO needs the sub-sequences of each pair")?;
    let chosen_logits = &vocab.policy;
    let half = |t: &Tensor<2>, start| t.clone().narrow(0, start, b);
    let out = rrpo_loss(
        RrpoBatch {
            chosen: TokenLogps::new(
                chosen_logits.gather(half(&policy, 0)),
                chosen_logits.gather(half(&reference, 0)),
                chosen_logits.mask.clone(),
            ),
            rejected: TokenLogps::new(half(&policy, b), half(&reference, b), half(&mask, b)),
            chosen_segments: chosen_logits.gather(half(&segments, 0)),
            rejected_segments: half(&segments, b),
            policy_chosen_logits: chosen_logits.logits(),
            reference_chosen_logits: vocab.reference,
        },
        count.max(1),
        config.beta,
        config.alpha,
    )?;
    Ok(ObjectiveOutput {
        loss: out.loss,
        chosen_rewards: out.chosen_rewards.sum_dim(1).reshape([b]),
        rejected_rewards: out.rejected_rewards.sum_dim(1).reshape([b]),
    })
}

/// AlignDistil on a batch (every row's completion is distilled); the logged rewards are the
/// student's implicit DPO rewards `β·Σ_t (log π_θ − log π_ref)` of the chosen and rejected
/// completions.
pub(crate) fn aligndistil(
    config: &AlignDistilConfig,
    policy: Tensor<2>,
    reference: Tensor<2>,
    mask: Tensor<2>,
    vocab: VocabInputs,
) -> Result<ObjectiveOutput> {
    let [rows, _] = policy.dims();
    let b = rows / 2;
    let teacher = vocab
        .teacher
        .context("AlignDistil needs its teacher's logits")?;
    let loss = aligndistil_loss(
        vocab.policy.logits(),
        teacher,
        vocab.reference,
        vocab.policy.mask,
        config.params(),
    )?;
    let rewards = ((policy - reference) * mask)
        .sum_dim(1)
        .reshape([rows])
        .detach()
        .mul_scalar(config.beta);
    Ok(ObjectiveOutput {
        loss,
        chosen_rewards: rewards.clone().narrow(0, 0, b),
        rejected_rewards: rewards.narrow(0, b, b),
    })
}

/// Sub-sequence indices of a chosen and a rejected completion's tokens (`1..=N`, 0 for a
/// shared token), and `N`: the runs of differing tokens between the anchors of their longest
/// common subsequence, the `k`-th run of each side forming sub-sequence `k`.
pub fn diff_segments(chosen: &[u32], rejected: &[u32]) -> (Vec<u32>, Vec<u32>, usize) {
    let (n, m) = (chosen.len(), rejected.len());
    // lcs[i][j]: the LCS length of chosen[i..] and rejected[j..].
    let mut lcs = vec![0u32; (n + 1) * (m + 1)];
    let at = |i: usize, j: usize| i * (m + 1) + j;
    for i in (0..n).rev() {
        for j in (0..m).rev() {
            lcs[at(i, j)] = if chosen[i] == rejected[j] {
                lcs[at(i + 1, j + 1)] + 1
            } else {
                lcs[at(i + 1, j)].max(lcs[at(i, j + 1)])
            };
        }
    }
    let (mut c, mut r) = (vec![0u32; n], vec![0u32; m]);
    let (mut i, mut j, mut k) = (0, 0, 0u32);
    let mut open = false;
    while i < n || j < m {
        if i < n && j < m && chosen[i] == rejected[j] && lcs[at(i, j)] == lcs[at(i + 1, j + 1)] + 1
        {
            open = false;
            i += 1;
            j += 1;
            continue;
        }
        if !open {
            k += 1;
            open = true;
        }
        if j == m || (i < n && lcs[at(i + 1, j)] >= lcs[at(i, j + 1)]) {
            c[i] = k;
            i += 1;
        } else {
            r[j] = k;
            j += 1;
        }
    }
    (c, r, k as usize)
}

/// RRPO's sub-sequence index of every token of `B` pairs' rows (`sequences`: the `B` chosen
/// rows, then the `B` rejected ones) on the `[2B, width]` grid of their per-token log-probs
/// (column `j` predicts token `j + 1`), and the largest number of sub-sequences of a pair.
pub fn segment_grid(
    sequences: &[Sequence],
    segmentation: Segmentation,
    width: usize,
    device: &Device,
) -> Result<(Tensor<2>, usize)> {
    let rows = sequences.len();
    if rows == 0 || !rows.is_multiple_of(2) {
        bail!("RRPO's rows come in chosen/rejected pairs, got {rows}");
    }
    let b = rows / 2;
    let completion = |s: &Sequence| -> Result<(usize, Vec<u32>)> {
        let start = s
            .completion
            .iter()
            .position(|&c| c)
            .context("a pair's completion is empty")?;
        Ok((start, s.ids[start..].to_vec()))
    };
    let mut grid = vec![0f32; rows * width];
    let mut most = 0;
    for p in 0..b {
        let (cs, ct) = completion(&sequences[p])?;
        let (rs, rt) = completion(&sequences[b + p])?;
        let (c, r, n) = match segmentation {
            Segmentation::Diff => diff_segments(&ct, &rt),
            Segmentation::Whole => (vec![1; ct.len()], vec![1; rt.len()], 1),
        };
        most = most.max(n);
        for (row, start, labels) in [(p, cs, c), (b + p, rs, r)] {
            for (m, label) in labels.into_iter().enumerate() {
                // Token start + m is predicted at column start + m − 1 (start ≥ 1: a prompt).
                if let Some(column) = (start + m).checked_sub(1).filter(|&c| c < width) {
                    grid[row * width + column] = label as f32;
                }
            }
        }
    }
    Ok((
        Tensor::from_data(TensorData::new(grid, [rows, width]), device),
        most,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_diff_pairs_the_runs_between_shared_tokens() {
        // chosen  a b X c d Y Z e
        // rejected a b c d W e
        let (c, r, n) = diff_segments(&[1, 2, 10, 3, 4, 11, 12, 5], &[1, 2, 3, 4, 20, 5]);
        assert_eq!(c, vec![0, 0, 1, 0, 0, 2, 2, 0]);
        assert_eq!(r, vec![0, 0, 0, 0, 2, 0]);
        assert_eq!(n, 2);
        // Identical completions share everything; disjoint ones are one run each.
        assert_eq!(diff_segments(&[1, 2], &[1, 2]), (vec![0, 0], vec![0, 0], 0));
        assert_eq!(diff_segments(&[1, 2], &[3]), (vec![1, 1], vec![1], 1));
        // A trailing insertion on the rejected side is its own run.
        assert_eq!(diff_segments(&[1], &[1, 7, 8]), (vec![0], vec![0, 1, 1], 1));
        assert_eq!(diff_segments(&[], &[]), (vec![], vec![], 0));
    }

    #[test]
    fn the_segment_grid_labels_the_predicting_columns() {
        let device = rm_core::device::test_device();
        let seq = Sequence::prompt_completion;
        let rows = [seq(&[7, 8], &[1, 10, 2]), seq(&[7, 8], &[1, 2])];
        let (grid, n) = segment_grid(&rows, Segmentation::Diff, 4, &device).unwrap();
        assert_eq!(n, 1);
        let v: Vec<f32> = grid.into_data().try_to_vec().unwrap();
        // chosen: tokens at 2, 3, 4 (columns 1, 2, 3); token 10 (column 2) differs.
        assert_eq!(v, vec![0., 0., 1., 0., 0., 0., 0., 0.]);
        let (grid, n) = segment_grid(&rows, Segmentation::Whole, 4, &device).unwrap();
        assert_eq!(n, 1);
        let v: Vec<f32> = grid.into_data().try_to_vec().unwrap();
        assert_eq!(v, vec![0., 1., 1., 1., 0., 1., 1., 0.]);
        assert!(segment_grid(&rows[..1], Segmentation::Diff, 4, &device).is_err());
    }
}
