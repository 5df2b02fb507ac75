//! The process reward model: a reward-model backbone (BERT or Llama, optional LoRA) with a
//! one-output head, read per step in one of two [`PrmShape`]s, saved as a reward-model folder
//! plus `prm.json`.

use std::path::Path;

use anyhow::{Context, Result, bail};
use rm_core::burn::module::Module;
use rm_core::burn::tensor::activation::sigmoid;
use rm_core::burn::tensor::{Device, Int, Tensor, TensorData};
use rm_core::export::RewardScale;
use rm_core::export::reward::{HfHead, hf_head, with_head};
use rm_core::models::heads::gather_positions;
use rm_core::models::pooling::Pooling;
use rm_core::models::reward::{BackboneKind, RewardModel, RewardModelBundle, RewardModelConfig};
use rm_core::tokenize::{
    PaddingSide, Sequence, TextTokenizer, TokenBatch, TruncationSide, truncate,
};
use rm_core::types::Prompt;
use serde::{Deserialize, Serialize};

/// The file that marks a PRM folder (next to the reward-model files).
pub const PRM_SPEC_FILE: &str = "prm.json";
/// Version of [`PrmSpec`] written by this build.
pub const PRM_SPEC_VERSION: u32 = 1;

/// How a PRM reads a solution.
///
/// ```toml
/// [prm]
/// shape = { kind = "one-pass", separator = "\n\n" }
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum PrmShape {
    /// A decoder reads the whole solution once, `prompt · step₁ sep · step₂ sep · …`, and the
    /// head scores the hidden state at each step's last token (its separator's last token when
    /// the separator tokenizes to anything): `p_i = σ(w·h_{end(i)} + b)`. Causal attention means
    /// step `i`'s score sees only the prompt and steps `≤ i` (Lightman et al. 2023 read their
    /// PRM at the step ends the same way; Math-Shepherd marks them with "ки").
    OnePass {
        #[serde(default = "default_separator")]
        separator: String,
    },
    /// An encoder scores each step in its own window `prompt [SEP] step₁ sep … sep step_i`
    /// (pooled, `p_i = σ(w·pool(h) + b)`), one sequence per step; the window keeps the start
    /// of the prompt (at most half of max_len) and the end of the steps.
    Window {
        #[serde(default = "default_separator")]
        separator: String,
    },
}

fn default_separator() -> String {
    "\n\n".into()
}

impl PrmShape {
    pub fn separator(&self) -> &str {
        match self {
            PrmShape::OnePass { separator } | PrmShape::Window { separator } => separator,
        }
    }
}

/// How the head's outputs give a step's probability of being correct.
///
/// ```json
/// "head": { "kind": "two-label", "attribute": "step_correct" }
/// ```
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum PrmHead {
    /// One logit `z` per step: `p = σ(z)` (what `plumb train-prm` writes).
    #[default]
    OneLogit,
    /// Two logits per step, `z₀` (wrong) and `z₁` (correct), as TRL's `PRMTrainer` trains a
    /// `*ForTokenClassification` model: `p = softmax(z)₁ = σ(z₁ − z₀)`. A `plumb export` folder
    /// (TRL's layout) has this head; it is loaded as the one logit `z₁ − z₀` (row 1 minus row 0
    /// of the weight, and of the bias), the reward-model spec listing the two labels and
    /// `attribute` the PRM's own output name.
    TwoLabel { attribute: String },
}

impl PrmHead {
    pub fn is_one_logit(&self) -> bool {
        matches!(self, PrmHead::OneLogit)
    }
}

/// `prm.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrmSpec {
    pub format_version: u32,
    pub shape: PrmShape,
    /// Absent: [`PrmHead::OneLogit`].
    #[serde(default, skip_serializing_if = "PrmHead::is_one_logit")]
    pub head: PrmHead,
}

/// One sequence the PRM reads and where its step scores come from.
#[derive(Clone, Debug, PartialEq)]
pub struct Unit {
    pub seq: Sequence,
    /// One-pass: the position of each scored step's last token; window: `None` (the pooled
    /// sequence is one score).
    pub ends: Option<Vec<usize>>,
    /// The step index (in the solution) of each score column.
    pub steps: Vec<usize>,
}

impl Unit {
    /// Score columns.
    pub fn columns(&self) -> usize {
        self.steps.len()
    }
}

/// The prompt as the backbone's template renders it (decoders: ChatML user turn, then the
/// assistant's turn opened; encoders: the prompt text).
fn prompt_prefix(bundle: &RewardModelBundle, prompt: &str) -> Result<String> {
    bundle
        .spec
        .template
        .render_prompt(&Prompt::Text(prompt.to_string()))
}

/// One-pass encoding: the prefix's ids (special tokens added) then each step's ids with the
/// separator (tokenized piece by piece, so every step end is an exact token position). With
/// `max_len`, the steps that do not fit are left out, and the prefix loses tokens from its
/// start when even the first step does not fit; `None` when no step fits at all.
pub fn encode_one_pass(
    tokenizer: &TextTokenizer,
    prefix: &str,
    steps: &[&str],
    separator: &str,
    max_len: Option<usize>,
) -> Result<Option<Unit>> {
    let mut ids = tokenizer.encode(prefix, true)?;
    let mut pieces = Vec::with_capacity(steps.len());
    for (i, step) in steps.iter().enumerate() {
        let piece = tokenizer.encode(&format!("{step}{separator}"), false)?;
        if piece.is_empty() {
            bail!("step {i} ({step:?}) tokenizes to zero tokens");
        }
        pieces.push(piece);
    }
    if let Some(max) = max_len {
        let first = pieces.first().map_or(0, Vec::len);
        if first > max {
            return Ok(None);
        }
        if ids.len() + first > max {
            truncate(&mut ids, max - first, TruncationSide::Left);
        }
    }
    let mut ends = Vec::new();
    for piece in pieces {
        if max_len.is_some_and(|m| ids.len() + piece.len() > m) {
            break;
        }
        ids.extend(piece);
        ends.push(ids.len() - 1);
    }
    if ends.is_empty() {
        return Ok(None);
    }
    Ok(Some(Unit {
        seq: Sequence::from_ids(ids),
        steps: (0..ends.len()).collect(),
        ends: Some(ends),
    }))
}

/// Window encoding of step `i`: the prompt's ids (special tokens added, cut to ⌊max_len/2⌋
/// from its end), then the last tokens of `step₁ sep … sep step_i` that fit.
pub fn encode_window(
    tokenizer: &TextTokenizer,
    prompt: &str,
    steps: &[&str],
    i: usize,
    separator: &str,
    max_len: usize,
) -> Result<Unit> {
    let mut ids = tokenizer.encode(prompt, true)?;
    truncate(&mut ids, max_len / 2, TruncationSide::Right);
    let text = steps[..=i].join(separator);
    let mut rest = tokenizer.encode(&text, false)?;
    if rest.is_empty() {
        bail!("step {i} ({:?}) tokenizes to zero tokens", steps[i]);
    }
    truncate(&mut rest, max_len - ids.len(), TruncationSide::Left);
    ids.extend(rest);
    Ok(Unit {
        seq: Sequence::from_ids(ids),
        ends: None,
        steps: vec![i],
    })
}

/// Step logits `[B, N]` of a batch of units (one shape; `N` = the most columns, shorter rows
/// padded with position 0, whose columns the caller masks). Differentiable on autodiff devices.
pub fn unit_logits(
    model: &RewardModel,
    pooling: Pooling,
    pad_id: u32,
    units: &[&Unit],
    device: &Device,
) -> Result<Tensor<2>> {
    let b = units.len();
    if b == 0 {
        bail!("no units to score");
    }
    let seqs: Vec<Sequence> = units.iter().map(|u| u.seq.clone()).collect();
    let batch = TokenBatch::pad(&seqs, pad_id, PaddingSide::Right)?;
    let ids = batch.ids_tensor(device);
    let mask = batch.attention_tensor(device);
    if units.iter().all(|u| u.ends.is_none()) {
        return Ok(model.forward(ids, mask, pooling).narrow(1, 0, 1));
    }
    let n = units.iter().map(|u| u.columns()).max().unwrap_or(0);
    let mut positions = vec![0i64; b * n];
    for (r, u) in units.iter().enumerate() {
        let ends = u
            .ends
            .as_ref()
            .context("a batch mixes one-pass and window units")?;
        for (c, &e) in ends.iter().enumerate() {
            positions[r * n + c] = e as i64;
        }
    }
    let positions = Tensor::<2, Int>::from_data(TensorData::new(positions, [b, n]), device);
    let hidden = model.backbone.hidden(ids, mask);
    let at = gather_positions(hidden, positions)?;
    Ok(model.head.forward(at).reshape([b, n]))
}

/// A trained process reward model.
pub struct ProcessRewardModel {
    pub bundle: RewardModelBundle,
    pub spec: PrmSpec,
}

impl ProcessRewardModel {
    /// A fresh PRM (a one-output reward model of `config`); the one-pass shape needs a decoder
    /// (an encoder's step-end states would see the later steps).
    pub fn build(
        config: &RewardModelConfig,
        shape: PrmShape,
        seed: u64,
        device: &Device,
    ) -> Result<Self> {
        if config.attributes.len() != 1 {
            bail!(
                "a PRM has one output (the step-correct logit); model.attributes is {:?}",
                config.attributes
            );
        }
        let bundle = RewardModelBundle::build(config, seed, device)?;
        check_shape(bundle.spec.kind, &shape)?;
        Ok(Self {
            bundle,
            spec: PrmSpec {
                format_version: PRM_SPEC_VERSION,
                shape,
                head: PrmHead::OneLogit,
            },
        })
    }

    /// Writes the reward-model folder and `prm.json` into `dir`.
    pub fn save(&self, dir: &Path) -> Result<()> {
        self.bundle.save(dir)?;
        rm_core::checkpoint::write_bytes_atomically(
            &dir.join(PRM_SPEC_FILE),
            serde_json::to_string_pretty(&self.spec)?.as_bytes(),
        )
    }

    /// Loads a folder written by [`ProcessRewardModel::save`] (`plumb train-prm`'s `final/`).
    pub fn load(dir: &Path, device: &Device) -> Result<Self> {
        let path = dir.join(PRM_SPEC_FILE);
        let text = std::fs::read_to_string(&path).with_context(|| {
            format!(
                "reading {} (is {} a PRM folder written by `plumb train-prm`?)",
                path.display(),
                dir.display()
            )
        })?;
        let mut spec: PrmSpec =
            serde_json::from_str(&text).with_context(|| format!("{}", path.display()))?;
        if spec.format_version != PRM_SPEC_VERSION {
            bail!(
                "{}: format_version {} (this build reads {PRM_SPEC_VERSION})",
                path.display(),
                spec.format_version
            );
        }
        let mut bundle = RewardModelBundle::load(dir, device)?;
        check_shape(bundle.spec.kind, &spec.shape)?;
        if let PrmHead::TwoLabel { attribute } = &spec.head {
            bundle = collapse_two_labels(bundle, attribute, dir)?;
            spec.head = PrmHead::OneLogit;
        }
        Ok(Self { bundle, spec })
    }

    /// The units of one solution. `max_len`: for training (steps past it are left out of a
    /// one-pass unit); scoring passes `None` (one-pass reads everything; windows always fit
    /// the model's max_len).
    pub fn encode(
        &self,
        prompt: &str,
        steps: &[&str],
        max_len: Option<usize>,
    ) -> Result<Vec<Unit>> {
        if steps.is_empty() {
            bail!("a solution needs at least one step");
        }
        match &self.spec.shape {
            PrmShape::OnePass { separator } => {
                let prefix = prompt_prefix(&self.bundle, prompt)?;
                Ok(
                    encode_one_pass(&self.bundle.tokenizer, &prefix, steps, separator, max_len)?
                        .into_iter()
                        .collect(),
                )
            }
            PrmShape::Window { separator } => (0..steps.len())
                .map(|i| {
                    encode_window(
                        &self.bundle.tokenizer,
                        prompt,
                        steps,
                        i,
                        separator,
                        self.bundle.spec.max_len,
                    )
                })
                .collect(),
        }
    }

    /// The probability that each step is correct, for each `(prompt, steps)` solution, in
    /// batches of `batch_size` sequences of similar length. Runs without gradients.
    pub fn score_batch(
        &self,
        solutions: &[(&str, Vec<&str>)],
        batch_size: usize,
    ) -> Result<Vec<Vec<f32>>> {
        let mut out: Vec<Vec<f32>> = Vec::with_capacity(solutions.len());
        let mut units: Vec<(usize, Unit)> = Vec::new();
        for (i, (prompt, steps)) in solutions.iter().enumerate() {
            for u in self
                .encode(prompt, steps, None)
                .with_context(|| format!("solution {i}"))?
            {
                units.push((i, u));
            }
            out.push(vec![f32::NAN; steps.len()]);
        }
        units.sort_by_key(|(_, u)| std::cmp::Reverse(u.seq.len()));
        let frozen = self.bundle.model.valid();
        let device = self.bundle.device.clone();
        for chunk in units.chunks(batch_size.max(1)) {
            let refs: Vec<&Unit> = chunk.iter().map(|(_, u)| u).collect();
            let logits = unit_logits(
                &frozen,
                self.bundle.spec.pooling,
                self.bundle.spec.pad_id,
                &refs,
                &device,
            )?;
            let n = logits.dims()[1];
            let p: Vec<f32> = sigmoid(logits)
                .into_data()
                .convert::<f32>()
                .try_to_vec::<f32>()
                .map_err(|e| anyhow::anyhow!("reading step scores: {e:?}"))?;
            for (r, (i, u)) in chunk.iter().enumerate() {
                for (c, &s) in u.steps.iter().enumerate() {
                    out[*i][s] = p[r * n + c];
                }
            }
        }
        for (i, probs) in out.iter().enumerate() {
            if let Some(s) = probs.iter().position(|p| !p.is_finite()) {
                bail!("solution {i}: step {s} got no finite score");
            }
        }
        Ok(out)
    }

    /// The probability that each step of one solution is correct.
    pub fn score_steps(&self, prompt: &str, steps: &[&str]) -> Result<Vec<f32>> {
        Ok(self
            .score_batch(&[(prompt, steps.to_vec())], 16)?
            .pop()
            .unwrap_or_default())
    }
}

/// A two-label head (`[2, D]`, TRL's layout) as the one logit `z₁ − z₀`: weight row 1 − row 0,
/// bias 1 − bias 0, the spec's attributes `[attribute]`.
fn collapse_two_labels(
    bundle: RewardModelBundle,
    attribute: &str,
    dir: &Path,
) -> Result<RewardModelBundle> {
    let head = hf_head(&bundle, RewardScale::Raw, dir)?;
    if head.k != 2 {
        bail!(
            "{}: head kind two-label needs a head of 2 outputs; {} has {} ({:?})",
            dir.join(PRM_SPEC_FILE).display(),
            dir.join(rm_core::models::reward::SPEC_FILE).display(),
            head.k,
            bundle.spec.attributes
        );
    }
    let d = head.d;
    let one = HfHead {
        weight: (0..d)
            .map(|j| head.weight[d + j] - head.weight[j])
            .collect(),
        bias: vec![head.bias[1] - head.bias[0]],
        k: 1,
        d,
    };
    let RewardModelBundle {
        model,
        tokenizer,
        mut spec,
        device,
    } = bundle;
    let model = with_head(model, &one, &device);
    spec.attributes = vec![attribute.to_string()];
    Ok(RewardModelBundle {
        model,
        tokenizer,
        spec,
        device,
    })
}

fn check_shape(kind: BackboneKind, shape: &PrmShape) -> Result<()> {
    if kind == BackboneKind::Bert && matches!(shape, PrmShape::OnePass { .. }) {
        bail!(
            "prm.shape one-pass needs a decoder backbone (an encoder's step ends see the later steps); use kind = \"window\" with an encoder"
        );
    }
    Ok(())
}
