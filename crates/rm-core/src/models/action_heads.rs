//! Action heads: several LM heads over one backbone, one per objective, as Multi-Action-Head
//! DPO trains them (Shen, Xia, Chang & Ammanabrolu 2025, "Simultaneous Multi-objective Alignment
//! Across Verifiable and Non-verifiable Rewards", MAHALO, arXiv 2510.01167).
//!
//! A policy folder may carry
//! - `action_heads.safetensors`: head `k`'s weight `W_k` `[V, D]` (PyTorch's `lm_head.weight`
//!   layout) under `action_heads.<k>.weight`; or, for low-rank heads
//!   ([`ActionHeadsSpec::low_rank`]), its factors in PEFT's layout, `action_heads.<k>.lora_A.weight`
//!   `[r, D]` and `action_heads.<k>.lora_B.weight` `[V, r]`, with
//!   `W_k = W_0 + (α/r)·B_k A_k` over the base model's own head `W_0` — `r·(V + D)` floats
//!   a head instead of `V·D` (SmolLM2-135M at r = 16: 3.2 MB instead of 113 MB);
//! - `action_heads.json` ([`ActionHeadsSpec`]): the objectives' names, in head order, and the
//!   default mixing weights.
//!
//! At inference the heads are mixed: logits `= Σ_k w_k · (h W_kᵀ) = h (Σ_k w_k W_k)ᵀ` with
//! `w` normalised to sum to 1 — the paper's weighted ensemble of head logits. The logits are
//! linear in the head, so the mixture is one head `Σ_k w_k W_k` installed as the model's
//! `lm_head` ([`install_mixture`]): sampling, the KV cache and every consumer of the model run
//! unchanged, at the cost of one head. Low-rank heads mix the same way:
//! `Σ_k w_k W_k = W_0 + (α/r)·Σ_k w_k B_k A_k`.

use std::path::Path;

use anyhow::{Context, Result, bail};
use burn::module::Param;
use burn::nn::Linear;
use burn::tensor::{Device, Tensor, TensorData};
use serde::{Deserialize, Serialize};

use crate::checkpoint::{save_host_tensors, write_bytes_atomically};
use crate::models::llama::LlamaModel;
use crate::models::safetensors::SafetensorsWeights;
use crate::models::weights::{HostTensor, WeightSource};

/// The heads' weights in a policy folder.
pub const ACTION_HEADS_FILE: &str = "action_heads.safetensors";
/// The heads' names and default mixing weights in a policy folder.
pub const ACTION_HEADS_SPEC: &str = "action_heads.json";

/// `action_heads.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActionHeadsSpec {
    /// The objective of each head, in head order.
    pub names: Vec<String>,
    /// The mixing weights used when none are given (one per head, non-negative, not all 0).
    pub default_weights: Vec<f64>,
    /// Heads stored as low-rank updates of the base model's head (absent: full heads).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub low_rank: Option<LowRankHeads>,
}

/// Heads as low-rank updates `W_k = W_0 + (alpha/rank)·A_k B_k` (burn's layout) of the base
/// model's head `W_0`, trained as LoRA factors (A Gaussian, B zero: every head starts at `W_0`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LowRankHeads {
    pub rank: usize,
    pub alpha: f64,
}

impl LowRankHeads {
    /// Rank ≥ 1, alpha finite and positive.
    pub fn validate(&self) -> Result<()> {
        if self.rank == 0 {
            bail!("low_rank_heads.rank must be at least 1");
        }
        if !(self.alpha.is_finite() && self.alpha > 0.0) {
            bail!(
                "low_rank_heads.alpha must be finite and > 0, got {}",
                self.alpha
            );
        }
        Ok(())
    }

    /// `alpha / rank`.
    pub fn scale(&self) -> f64 {
        self.alpha / self.rank as f64
    }
}

impl ActionHeadsSpec {
    /// Checks: at least one head, distinct non-empty names, one valid weight per head.
    pub fn validate(&self) -> Result<()> {
        if self.names.is_empty() {
            bail!("no action heads");
        }
        for (i, name) in self.names.iter().enumerate() {
            if name.trim().is_empty() {
                bail!("action head {i} has an empty name");
            }
            if self.names[..i].contains(name) {
                bail!("two action heads are named {name:?}");
            }
        }
        normalised(&self.names, &self.default_weights).context("default_weights")?;
        if let Some(low_rank) = &self.low_rank {
            low_rank.validate()?;
        }
        Ok(())
    }

    /// The normalised mixing weights: `weights` (by head name) when given, else the defaults.
    pub fn mixing_weights(&self, weights: Option<&HeadWeights>) -> Result<Vec<f64>> {
        match weights {
            None => normalised(&self.names, &self.default_weights),
            Some(w) => normalised(&self.names, &w.resolve(&self.names)?),
        }
    }
}

/// `weights` divided by their sum. Errors: not one per head, negative or non-finite, all 0.
fn normalised(names: &[String], weights: &[f64]) -> Result<Vec<f64>> {
    if weights.len() != names.len() {
        bail!(
            "{} weights for {} action heads ({})",
            weights.len(),
            names.len(),
            names.join(", ")
        );
    }
    if let Some((i, w)) = weights
        .iter()
        .enumerate()
        .find(|(_, w)| !w.is_finite() || **w < 0.0)
    {
        bail!(
            "the weight of head {} is {w}: weights are finite and ≥ 0",
            names[i]
        );
    }
    let total: f64 = weights.iter().sum();
    if total <= 0.0 {
        bail!("every head weight is 0: at least one must be positive");
    }
    Ok(weights.iter().map(|w| w / total).collect())
}

/// Mixing weights by head name, as a user writes them: `harmless=0.7,concise=0.3`. Heads not
/// named get weight 0.
#[derive(Clone, Debug, PartialEq)]
pub struct HeadWeights(pub Vec<(String, f64)>);

impl std::str::FromStr for HeadWeights {
    type Err = anyhow::Error;

    fn from_str(text: &str) -> Result<Self> {
        let mut out = Vec::new();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (name, value) = part
                .split_once('=')
                .with_context(|| format!("{part:?} is not NAME=WEIGHT (e.g. harmless=0.7)"))?;
            let value: f64 = value
                .trim()
                .parse()
                .with_context(|| format!("the weight of {:?} is not a number", name.trim()))?;
            out.push((name.trim().to_string(), value));
        }
        if out.is_empty() {
            bail!("no head weights in {text:?} (expected NAME=WEIGHT,…)");
        }
        Ok(Self(out))
    }
}

impl HeadWeights {
    /// One weight per head of `names` (0 for heads not named). Errors: a name that is no head,
    /// a head named twice.
    pub fn resolve(&self, names: &[String]) -> Result<Vec<f64>> {
        let mut weights = vec![0.0; names.len()];
        let mut seen = vec![false; names.len()];
        for (name, w) in &self.0 {
            let k = names.iter().position(|n| n == name).with_context(|| {
                format!(
                    "no action head {name:?}; the policy's heads are {}",
                    names.join(", ")
                )
            })?;
            if seen[k] {
                bail!("head {name:?} is weighted twice");
            }
            seen[k] = true;
            weights[k] = *w;
        }
        Ok(weights)
    }
}

/// The name of head `k` in [`ACTION_HEADS_FILE`].
pub fn tensor_name(k: usize) -> String {
    format!("action_heads.{k}.weight")
}

/// The names of low-rank head `k`'s factors in [`ACTION_HEADS_FILE`] (PEFT's `lora_A`,
/// `lora_B`).
pub fn factor_names(k: usize) -> (String, String) {
    (
        format!("action_heads.{k}.lora_A.weight"),
        format!("action_heads.{k}.lora_B.weight"),
    )
}

/// `t` (burn `[rows, cols]`) as a host tensor in the transposed, PyTorch layout `[cols, rows]`.
fn transposed_host(t: Tensor<2>, what: &str) -> Result<HostTensor> {
    let [rows, cols] = t.dims();
    let values = t
        .detach()
        .transpose()
        .into_data()
        .convert::<f32>()
        .try_to_vec::<f32>()
        .map_err(|e| anyhow::anyhow!("reading {what}: {e:?}"))?;
    Ok(HostTensor {
        shape: vec![cols, rows],
        values,
    })
}

/// Writes the heads (burn `Linear`s over `[D, V]` weights) and their spec into the policy
/// folder `dir`, each file atomically: full heads as their weights; with
/// [`ActionHeadsSpec::low_rank`], each head must carry a LoRA adapter of that rank and only
/// its factors are written.
pub fn save(dir: &Path, spec: &ActionHeadsSpec, heads: &[Linear]) -> Result<()> {
    spec.validate()?;
    if heads.len() != spec.names.len() {
        bail!(
            "{} head tensors for {} named heads",
            heads.len(),
            spec.names.len()
        );
    }
    let mut tensors = Vec::new();
    for (k, head) in heads.iter().enumerate() {
        match (&spec.low_rank, head.weight.adapter()) {
            (None, _) => tensors.push((
                tensor_name(k),
                transposed_host(head.weight.val(), &format!("action head {k}"))?,
            )),
            (Some(low_rank), Some(adapter)) => {
                let a = adapter.a.val();
                if a.dims()[1] != low_rank.rank {
                    bail!(
                        "action head {k} has rank {}; the spec says {}",
                        a.dims()[1],
                        low_rank.rank
                    );
                }
                let (a_name, b_name) = factor_names(k);
                tensors.push((a_name, transposed_host(a, "lora_A")?));
                tensors.push((b_name, transposed_host(adapter.b.val(), "lora_B")?));
            }
            (Some(_), None) => bail!("action head {k} is a full head; the spec says low-rank"),
        }
    }
    save_host_tensors(&dir.join(ACTION_HEADS_FILE), &tensors)?;
    write_bytes_atomically(
        &dir.join(ACTION_HEADS_SPEC),
        serde_json::to_string_pretty(spec)?.as_bytes(),
    )
}

/// Reads `dir/action_heads.json`, or `None` when the folder has no action heads.
pub fn read_spec(dir: &Path) -> Result<Option<ActionHeadsSpec>> {
    let path = dir.join(ACTION_HEADS_SPEC);
    if !path.is_file() {
        return Ok(None);
    }
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let spec: ActionHeadsSpec =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    spec.validate()
        .with_context(|| format!("{}", path.display()))?;
    Ok(Some(spec))
}

/// The mixed head `Σ_k w_k W_k` `[V, D]` of the folder `dir`'s heads (host f32), with `w`
/// the spec's defaults or `weights`; low-rank heads add `(α/r)·Σ_k w_k B_k A_k` to `base`, the
/// base model's head `[V, D]`. Errors name the file and the tensor (missing, wrong shape).
pub fn mixed_head(
    dir: &Path,
    spec: &ActionHeadsSpec,
    weights: Option<&HeadWeights>,
    base: &HostTensor,
) -> Result<HostTensor> {
    let [vocab, hidden] = base.shape[..] else {
        bail!("the base head has shape {:?}, not [V, D]", base.shape);
    };
    let w = spec.mixing_weights(weights)?;
    let path = dir.join(ACTION_HEADS_FILE);
    let source = SafetensorsWeights::open(&path)?;
    let read = |name: &str, k: usize, shape: [usize; 2]| -> Result<HostTensor> {
        let t = source
            .tensor(name)
            .with_context(|| format!("{}: head {} ({name})", path.display(), spec.names[k]))?;
        if t.shape != shape {
            bail!(
                "{}: {name} has shape {:?}, expected {shape:?} (the base model's head is [{vocab}, {hidden}])",
                path.display(),
                t.shape
            );
        }
        Ok(t)
    };
    let mut mixed = match &spec.low_rank {
        Some(_) => base.values.clone(),
        None => vec![0f32; vocab * hidden],
    };
    for (k, &wk) in w.iter().enumerate() {
        if wk == 0.0 {
            continue;
        }
        match &spec.low_rank {
            None => {
                let t = read(&tensor_name(k), k, [vocab, hidden])?;
                let wk = wk as f32;
                for (m, v) in mixed.iter_mut().zip(&t.values) {
                    *m += wk * v;
                }
            }
            Some(low_rank) => {
                let r = low_rank.rank;
                let (a_name, b_name) = factor_names(k);
                let a = read(&a_name, k, [r, hidden])?;
                let b = read(&b_name, k, [vocab, r])?;
                let scale = (wk * low_rank.scale()) as f32;
                // mixed[v, :] += scale · Σ_j B[v, j] · A[j, :]
                for (row, b_row) in mixed.chunks_exact_mut(hidden).zip(b.values.chunks_exact(r)) {
                    for (&bj, a_row) in b_row.iter().zip(a.values.chunks_exact(hidden)) {
                        let c = scale * bj;
                        for (m, &x) in row.iter_mut().zip(a_row) {
                            *m += c * x;
                        }
                    }
                }
            }
        }
    }
    Ok(HostTensor {
        shape: vec![vocab, hidden],
        values: mixed,
    })
}

/// Makes `head` (`[V, D]`, PyTorch layout) `model`'s LM head (replacing a tied or separate one).
pub fn install_head(model: &mut LlamaModel, head: HostTensor, device: &Device) -> Result<()> {
    let [vocab, hidden] = model.embed_tokens.weight.val().dims();
    if head.shape != [vocab, hidden] {
        bail!(
            "a head of shape {:?} for a model whose head is [{vocab}, {hidden}]",
            head.shape
        );
    }
    let values = crate::models::transpose(&head.values, vocab, hidden);
    model.lm_head = Some(Linear {
        weight: Param::from_tensor(Tensor::from_data(
            TensorData::new(values, [hidden, vocab]),
            device,
        )),
        bias: None,
    });
    Ok(())
}

/// The LM head of `model` as burn's `[D, V]` (`lm_head`'s weight, or the tied embedding's
/// transpose), detached: what every action head starts from.
pub fn base_head(model: &LlamaModel) -> Tensor<2> {
    match &model.lm_head {
        Some(head) => head.weight.val().detach(),
        None => model.embed_tokens.weight.val().detach().transpose(),
    }
}

/// Mixes the action heads of the policy folder `dir`, if it has any, into `model`'s LM head
/// ([`mixed_head`] then [`install_head`]); returns the spec and the normalised weights used.
pub fn install_mixture(
    model: &mut LlamaModel,
    dir: &Path,
    weights: Option<&HeadWeights>,
    device: &Device,
) -> Result<Option<(ActionHeadsSpec, Vec<f64>)>> {
    let Some(spec) = read_spec(dir)? else {
        if weights.is_some() {
            bail!(
                "{} has no action heads ({ACTION_HEADS_SPEC}): head weights apply to policies trained with [multi_head] (MAH-DPO)",
                dir.display()
            );
        }
        return Ok(None);
    };
    let base = transposed_host(base_head(model), "the base model's head")?;
    let head = mixed_head(dir, &spec, weights, &base)?;
    install_head(model, head, device)?;
    let used = spec.mixing_weights(weights)?;
    Ok(Some((spec, used)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::test_device;
    use crate::models::llama::tests::{int2, tiny_model};

    fn spec(names: &[&str], weights: &[f64]) -> ActionHeadsSpec {
        ActionHeadsSpec {
            names: names.iter().map(|s| s.to_string()).collect(),
            default_weights: weights.to_vec(),
            low_rank: None,
        }
    }

    #[test]
    fn head_weights_parse_resolve_and_normalise() {
        let s = spec(&["harmless", "concise"], &[1.0, 1.0]);
        assert_eq!(s.mixing_weights(None).unwrap(), vec![0.5, 0.5]);
        let w: HeadWeights = "concise=3, harmless=1".parse().unwrap();
        assert_eq!(s.mixing_weights(Some(&w)).unwrap(), vec![0.25, 0.75]);
        let only: HeadWeights = "concise=2".parse().unwrap();
        assert_eq!(s.mixing_weights(Some(&only)).unwrap(), vec![0.0, 1.0]);
        for (text, needle) in [
            ("helpful=1", "no action head \"helpful\""),
            ("concise=1,concise=2", "weighted twice"),
            ("concise=-1", "≥ 0"),
            ("concise=0", "at least one must be positive"),
        ] {
            let err = s
                .mixing_weights(Some(&text.parse().unwrap()))
                .unwrap_err()
                .to_string();
            assert!(err.contains(needle), "{text}: {err}");
        }
        assert!("concise".parse::<HeadWeights>().is_err());
        assert!("concise=x".parse::<HeadWeights>().is_err());
        assert!(spec(&["a", "a"], &[1.0, 1.0]).validate().is_err());
        assert!(spec(&["a", "b"], &[1.0]).validate().is_err());
    }

    /// The mixed head gives exactly the weighted mean of the heads' logits (the paper's
    /// ensemble), after a save and a read back.
    #[test]
    fn the_installed_mixture_gives_the_weighted_mean_of_the_heads_logits() {
        let device = test_device();
        let model = tiny_model(&device);
        let base = base_head(&model);
        let [d, v] = base.dims();
        let heads: Vec<Linear> = (0..3)
            .map(|k| base.clone() + Tensor::<2>::ones([d, v], &device).mul_scalar(0.1 * k as f32))
            .map(|t| {
                t + Tensor::<2>::random(
                    [d, v],
                    burn::tensor::Distribution::Uniform(-0.2, 0.2),
                    &device,
                )
            })
            .map(|w| Linear {
                weight: Param::from_tensor(w),
                bias: None,
            })
            .collect();
        let dir = std::env::temp_dir().join(format!(
            "plumb-action-heads-{}",
            crate::checkpoint::unique_suffix()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let s = spec(&["a", "b", "c"], &[1.0, 1.0, 2.0]);
        save(&dir, &s, &heads).unwrap();
        assert_eq!(read_spec(&dir).unwrap(), Some(s.clone()));

        let ids = int2(vec![vec![1, 5, 9, 3], vec![2, 2, 7, 4]], &device);
        let mask = int2(vec![vec![1; 4], vec![1; 4]], &device);
        let hidden = model.forward_hidden(ids.clone(), mask.clone());
        let per_head: Vec<Tensor<3>> = heads
            .iter()
            .map(|w| {
                let [b, t, _] = hidden.dims();
                hidden
                    .clone()
                    .reshape([b * t, d])
                    .matmul(w.weight.val())
                    .reshape([b, t, v])
            })
            .collect();
        for (weights, expected) in [
            (None, [0.25, 0.25, 0.5]),
            (Some("b=1"), [0.0, 1.0, 0.0]),
            (Some("a=3,c=1"), [0.75, 0.0, 0.25]),
        ] {
            let weights = weights.map(|w| w.parse::<HeadWeights>().unwrap());
            let mut steered = tiny_model(&device);
            let (_, used) = install_mixture(&mut steered, &dir, weights.as_ref(), &device)
                .unwrap()
                .unwrap();
            assert_eq!(used, expected);
            let got = steered.forward(ids.clone(), mask.clone());
            let want = per_head
                .iter()
                .zip(expected)
                .map(|(l, w)| l.clone().mul_scalar(w as f32))
                .reduce(|a, b| a + b)
                .unwrap();
            let diff: f32 = (got - want).abs().max().into_scalar();
            assert!(diff < 1e-4, "{weights:?}: max |Δ| = {diff}");
        }
        // A folder without heads refuses weights, and loads unchanged without them.
        let plain = std::env::temp_dir().join(format!(
            "plumb-no-heads-{}",
            crate::checkpoint::unique_suffix()
        ));
        std::fs::create_dir_all(&plain).unwrap();
        let mut m = tiny_model(&device);
        assert!(
            install_mixture(&mut m, &plain, None, &device)
                .unwrap()
                .is_none()
        );
        let err = install_mixture(&mut m, &plain, Some(&"a=1".parse().unwrap()), &device)
            .unwrap_err()
            .to_string();
        assert!(err.contains("no action heads"), "{err}");
        // A head file of the wrong width is named.
        let mut wide = tiny_model(&device);
        let bad: Vec<Linear> = (0..3)
            .map(|_| Linear {
                weight: Param::from_tensor(Tensor::<2>::zeros([d + 1, v], &device)),
                bias: None,
            })
            .collect();
        save(&dir, &s, &bad).unwrap();
        let err = install_mixture(&mut wide, &dir, None, &device)
            .unwrap_err()
            .to_string();
        assert!(err.contains("action_heads.0.weight"), "{err}");
        std::fs::remove_dir_all(&dir).ok();
        std::fs::remove_dir_all(&plain).ok();
    }

    /// Low-rank heads mix as `W_0 + (α/r)·Σ_k w_k A_k B_k`: the installed head gives the
    /// logits of that weight, computed here in burn from the same factors; `save` writes a
    /// LoRA head's factors (PEFT layout) and refuses a full head under a low-rank spec.
    #[test]
    fn low_rank_heads_mix_as_the_base_plus_the_weighted_updates() {
        use burn::module::Module;
        let device = test_device();
        let model = tiny_model(&device);
        let base = base_head(&model);
        let [d, v] = base.dims();
        let low_rank = LowRankHeads {
            rank: 2,
            alpha: 6.0,
        };
        let uniform = burn::tensor::Distribution::Uniform(-0.5, 0.5);
        let factors: Vec<(Tensor<2>, Tensor<2>)> = (0..2)
            .map(|_| {
                (
                    Tensor::<2>::random([d, 2], uniform, &device),
                    Tensor::<2>::random([2, v], uniform, &device),
                )
            })
            .collect();
        let dir = std::env::temp_dir().join(format!(
            "plumb-low-rank-heads-{}",
            crate::checkpoint::unique_suffix()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let mut tensors = Vec::new();
        for (k, (a, b)) in factors.iter().enumerate() {
            let (a_name, b_name) = factor_names(k);
            tensors.push((a_name, transposed_host(a.clone(), "a").unwrap()));
            tensors.push((b_name, transposed_host(b.clone(), "b").unwrap()));
        }
        save_host_tensors(&dir.join(ACTION_HEADS_FILE), &tensors).unwrap();
        let s = ActionHeadsSpec {
            low_rank: Some(low_rank.clone()),
            ..spec(&["a", "b"], &[1.0, 3.0])
        };
        write_bytes_atomically(
            &dir.join(ACTION_HEADS_SPEC),
            serde_json::to_string(&s).unwrap().as_bytes(),
        )
        .unwrap();
        let ids = int2(vec![vec![1, 5, 9, 3]], &device);
        let mask = int2(vec![vec![1; 4]], &device);
        let hidden = model
            .forward_hidden(ids.clone(), mask.clone())
            .reshape([4, d]);
        let scale = low_rank.scale() as f32;
        for (weights, w) in [(None, [0.25, 0.75]), (Some("a=1"), [1.0, 0.0])] {
            let weights = weights.map(|w: &str| w.parse::<HeadWeights>().unwrap());
            let mut steered = tiny_model(&device);
            install_mixture(&mut steered, &dir, weights.as_ref(), &device)
                .unwrap()
                .unwrap();
            let got = steered.forward(ids.clone(), mask.clone()).reshape([4, v]);
            let head = factors
                .iter()
                .zip(w)
                .map(|((a, b), wk)| a.clone().matmul(b.clone()).mul_scalar(scale * wk))
                .fold(base.clone(), |acc, delta| acc + delta);
            let want = hidden.clone().matmul(head);
            let diff: f32 = (got - want).abs().max().into_scalar();
            assert!(diff < 1e-4, "{weights:?}: max |Δ| = {diff}");
        }
        // A LoRA head saves its factors; under a low-rank spec a full head is refused.
        let lora_head = |w: Tensor<2>| {
            Linear {
                weight: Param::from_tensor(w),
                bias: None,
            }
            .apply_lora(burn::module::Lora::new(2, 6.0))
        };
        let heads = vec![lora_head(base.clone()), lora_head(base.clone())];
        save(&dir, &s, &heads).unwrap();
        let file = SafetensorsWeights::open(dir.join(ACTION_HEADS_FILE)).unwrap();
        let a = file.tensor("action_heads.1.lora_A.weight").unwrap();
        assert_eq!(a.shape, [2, d]);
        let b = file.tensor("action_heads.1.lora_B.weight").unwrap();
        assert_eq!(b.shape, [v, 2]);
        assert!(b.values.iter().all(|&x| x == 0.0), "B starts at 0");
        assert!(file.tensor("action_heads.1.weight").is_err());
        let full = Linear {
            weight: Param::from_tensor(base.clone()),
            bias: None,
        };
        let err = save(&dir, &s, &[full.clone(), full])
            .unwrap_err()
            .to_string();
        assert!(err.contains("full head"), "{err}");
        assert!(
            ActionHeadsSpec {
                low_rank: Some(LowRankHeads {
                    rank: 0,
                    alpha: 1.0
                }),
                ..spec(&["a"], &[1.0])
            }
            .validate()
            .is_err()
        );
        std::fs::remove_dir_all(&dir).ok();
    }
}
