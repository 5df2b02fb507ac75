//! Action heads: several LM heads over one backbone, one per objective, as Multi-Action-Head
//! DPO trains them (Shen, Xia, Chang & Ammanabrolu 2025, "Simultaneous Multi-objective Alignment
//! Across Verifiable and Non-verifiable Rewards", MAHALO, arXiv 2510.01167).
//!
//! A policy folder may carry
//! - `action_heads.safetensors`: head `k`'s weight `W_k` `[V, D]` (PyTorch's `lm_head.weight`
//!   layout) under `action_heads.<k>.weight`;
//! - `action_heads.json` ([`ActionHeadsSpec`]): the objectives' names, in head order, and the
//!   default mixing weights.
//!
//! At inference the heads are mixed: logits `= Σ_k w_k · (h W_kᵀ) = h (Σ_k w_k W_k)ᵀ` with
//! `w` normalised to sum to 1 — the paper's weighted ensemble of head logits. The logits are
//! linear in the head, so the mixture is one head `Σ_k w_k W_k` installed as the model's
//! `lm_head` ([`install_mixture`]): sampling, the KV cache and every consumer of the model run
//! unchanged, at the cost of one head.

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

/// Writes the heads (burn layout `[D, V]` each, as `Linear` holds them) and their spec into the
/// policy folder `dir`, each file atomically.
pub fn save(dir: &Path, spec: &ActionHeadsSpec, heads: &[Tensor<2>]) -> Result<()> {
    spec.validate()?;
    if heads.len() != spec.names.len() {
        bail!(
            "{} head tensors for {} named heads",
            heads.len(),
            spec.names.len()
        );
    }
    let tensors = heads
        .iter()
        .enumerate()
        .map(|(k, w)| {
            let [d, v] = w.dims();
            // PyTorch's [V, D] layout: the transpose of burn's [D, V].
            let values = w
                .clone()
                .detach()
                .transpose()
                .into_data()
                .convert::<f32>()
                .try_to_vec::<f32>()
                .map_err(|e| anyhow::anyhow!("reading action head {k}: {e:?}"))?;
            Ok((
                tensor_name(k),
                HostTensor {
                    shape: vec![v, d],
                    values,
                },
            ))
        })
        .collect::<Result<Vec<_>>>()?;
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
/// the spec's defaults or `weights`. Errors name the file and the tensor (missing, wrong shape).
pub fn mixed_head(
    dir: &Path,
    spec: &ActionHeadsSpec,
    weights: Option<&HeadWeights>,
    vocab: usize,
    hidden: usize,
) -> Result<HostTensor> {
    let w = spec.mixing_weights(weights)?;
    let path = dir.join(ACTION_HEADS_FILE);
    let source = SafetensorsWeights::open(&path)?;
    let mut mixed = vec![0f32; vocab * hidden];
    for (k, &wk) in w.iter().enumerate() {
        if wk == 0.0 {
            continue;
        }
        let name = tensor_name(k);
        let t = source
            .tensor(&name)
            .with_context(|| format!("{}: head {} ({name})", path.display(), spec.names[k]))?;
        if t.shape != [vocab, hidden] {
            bail!(
                "{}: {name} has shape {:?}; the base model's head is [{vocab}, {hidden}]",
                path.display(),
                t.shape
            );
        }
        let wk = wk as f32;
        for (m, v) in mixed.iter_mut().zip(&t.values) {
            *m += wk * v;
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
    let [vocab, hidden] = model.embed_tokens.weight.val().dims();
    let head = mixed_head(dir, &spec, weights, vocab, hidden)?;
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
        let heads: Vec<Tensor<2>> = (0..3)
            .map(|k| base.clone() + Tensor::<2>::ones([d, v], &device).mul_scalar(0.1 * k as f32))
            .map(|t| {
                t + Tensor::<2>::random(
                    [d, v],
                    burn::tensor::Distribution::Uniform(-0.2, 0.2),
                    &device,
                )
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
                    .matmul(w.clone())
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
        let bad = vec![Tensor::<2>::zeros([d + 1, v], &device); 3];
        save(&dir, &s, &bad).unwrap();
        let err = install_mixture(&mut wide, &dir, None, &device)
            .unwrap_err()
            .to_string();
        assert!(err.contains("action_heads.0.weight"), "{err}");
        std::fs::remove_dir_all(&dir).ok();
        std::fs::remove_dir_all(&plain).ok();
    }
}
