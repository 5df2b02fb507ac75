//! LoRA adapters on the `Linear` layers of any burn [`Module`], on burn's built-in
//! reparameterization ([`burn::module::Lora`]): an adapted weight `W` (`[d_in, d_out]`) computes
//! as `W + (α/r)·A·B` with `A` `[d_in, r]` (Gaussian init) and `B` `[r, d_out]` (zero init), so a
//! freshly adapted model computes exactly what the base model does. Every base parameter is
//! frozen; only the factors train, and the optimizer never writes a base weight.
//!
//! - [`apply`]: adapters on the `Linear` weights whose module path contains a target of
//!   [`LoraConfig::target_modules`] as a path segment (`q_proj`, `value`, `self_attn.q_proj`, …),
//!   translated into a burn [`ParamGroup`] of exact weight paths;
//! - [`disabled`]: the adapters switched off — the reference policy of DPO/PPO. It shares every
//!   base tensor with the adapted model (burn parameters and tensors are reference-counted, and
//!   only the factors are replaced, by zeros), so it costs `r·(d_in + d_out)` floats per adapted
//!   layer, not a second copy of the weights;
//! - [`merge`]: adapters folded into the weights (`W ← W + (α/r)·A·B`) for inference.
//!
//! # Unmerging
//!
//! [`merge`] takes the adapted module by reference and folds a clone: *unmerging is keeping the
//! adapted module*. There is deliberately no "subtract the update" unmerge: in floating point
//! `(W + ΔW) − ΔW ≠ W`, and plumbline promises that base weights stay bit-identical. Save the
//! adapters ([`save_adapters`]) and re-attach them to the base ([`load_adapters`]) to get the
//! adapted module back after dropping it.
//!
//! # Forward, memory and dropout
//!
//! burn's adapters act on the weight: `Linear::forward` sees `W₀ + s·A·B`, so every adapted layer
//! materializes a full-size effective weight, keeps it for the backward pass and gets a gradient
//! of that shape before it reaches the factors. [`linear`] runs the factored forward instead,
//! `y = x·W₀ + s·(dropout(x)·A)·B` (+ bias), with the frozen base an untracked constant: the
//! backward pass builds no tensor of `W₀`'s shape. It also carries PEFT's adapter dropout, which
//! drops the *input* of the adapter path. plumbline's BERT and Llama backbones route every layer
//! projection through it, with a dropout module they hold (`Backbone::set_adapter_dropout`; the
//! reward-model builder sets it from the recipe). Any other module runs burn's merged forward,
//! so [`apply`] rejects `dropout > 0` for it rather than ignore it. Adapters trained elsewhere
//! with `lora_dropout > 0` load fine ([`load_adapters`]): dropout does not exist at inference.
//!
//! # Files
//!
//! [`save_adapters`] / [`load_adapters`] read and write PEFT's layout: `adapter_model.safetensors`
//! with `{prefix}{module}.lora_A.weight` `[r, d_in]` and `{prefix}{module}.lora_B.weight`
//! `[d_out, r]` (the transposes of burn's factors), and `adapter_config.json` (`r`,
//! `lora_alpha`, `lora_dropout`, `target_modules`, …). `{module}` is the HF module name: the name
//! the caller's [`NameMap`] gives the layer's weight, without `.weight` — the same map that names
//! a full checkpoint ([`crate::checkpoint`]);
//! [`crate::checkpoint::HfNames::identity`] keeps burn's paths. PEFT's
//! prefix for a model is [`PEFT_PREFIX`].

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use anyhow::{Context, Result, anyhow, bail};
use burn::module::{Lora, Module, ModuleMapper, ModuleVisitor, Param, ParamGroup};
use burn::tensor::{Tensor, TensorData};
use serde::{Deserialize, Serialize};

use crate::checkpoint::{
    NameMap, ParamSlot, PathStack, REPARAMETERIZATION, param_host, save_host_tensors,
    write_bytes_atomically,
};
use crate::models::safetensors::SafetensorsWeights;
use crate::models::transpose;
use crate::models::weights::{HostTensor, WeightSource};

/// The name burn gives a LoRA adapter in module paths (`….weight.lora.a`).
const ADAPTER: &str = "lora";
/// PEFT's prefix of adapter tensor names: `base_model.model.` + the model's module name.
pub const PEFT_PREFIX: &str = "base_model.model.";
/// The adapter weights file of an adapter folder.
pub const ADAPTER_WEIGHTS: &str = "adapter_model.safetensors";
/// The adapter config file of an adapter folder.
pub const ADAPTER_CONFIG: &str = "adapter_config.json";

/// Which `Linear` layers get adapters, and how big. Deserializes from training configs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoraConfig {
    /// Rank `r` of the update (≥ 1).
    pub rank: usize,
    /// Scale numerator: the update is `(alpha / rank)·A·B`.
    pub alpha: f64,
    /// Adapter input dropout probability in `[0, 1)` (see the module docs).
    #[serde(default)]
    pub dropout: f64,
    /// Module names to adapt: a `Linear` layer is adapted when its burn module path contains the
    /// target as whole segments (`q_proj` matches `layers.3.self_attn.q_proj`).
    pub target_modules: Vec<String>,
}

impl LoraConfig {
    /// A config with no dropout.
    pub fn new(rank: usize, alpha: f64, target_modules: &[&str]) -> Self {
        Self {
            rank,
            alpha,
            dropout: 0.0,
            target_modules: target_modules.iter().map(|s| s.to_string()).collect(),
        }
    }

    /// The factor `alpha / rank` the update is scaled by.
    pub fn scale(&self) -> f64 {
        self.alpha / self.rank as f64
    }

    /// Rejects rank 0, a non-finite alpha, a dropout outside `[0, 1)` and empty targets.
    pub fn validate(&self) -> Result<()> {
        if self.rank == 0 {
            bail!("LoRA rank must be at least 1");
        }
        if !self.alpha.is_finite() {
            bail!("LoRA alpha must be finite, got {}", self.alpha);
        }
        if !(0.0..1.0).contains(&self.dropout) {
            bail!("LoRA dropout must be in [0, 1), got {}", self.dropout);
        }
        if self.target_modules.is_empty() {
            bail!("LoRA target_modules is empty");
        }
        Ok(())
    }
}

/// Path and container of every float parameter outside adapters, in traversal order.
fn param_slots<M: Module>(module: &M) -> Vec<(String, String)> {
    struct Slots {
        stack: PathStack,
        out: Vec<(String, String)>,
    }
    impl ModuleVisitor for Slots {
        fn enter_module(&mut self, name: &str, container_type: &str) {
            self.stack.enter(name, container_type);
        }
        fn exit_module(&mut self, _name: &str, _container_type: &str) {
            self.stack.exit();
        }
        fn visit_float<const D: usize>(&mut self, _param: &Param<Tensor<D>>) {
            if !self.stack.in_reparameterization() {
                self.out
                    .push((self.stack.path(), self.stack.container().to_string()));
            }
        }
    }
    let mut slots = Slots {
        stack: PathStack::default(),
        out: Vec::new(),
    };
    module.visit(&mut slots);
    slots.out
}

fn is_linear_weight(path: &str, container: &str) -> bool {
    ParamSlot { path, container }.is_linear_weight()
}

/// The paths of every `Linear` weight of `module` (`layers.0.self_attn.q_proj.weight`), in
/// traversal order. Reads no tensor data.
pub fn linear_weight_paths<M: Module>(module: &M) -> Vec<String> {
    param_slots(module)
        .into_iter()
        .filter(|(p, c)| is_linear_weight(p, c))
        .map(|(p, _)| p)
        .collect()
}

/// The paths of the weights that carry an adapter.
pub fn adapter_paths<M: Module>(module: &M) -> Vec<String> {
    struct Adapted {
        stack: PathStack,
        out: Vec<String>,
    }
    impl ModuleVisitor for Adapted {
        fn enter_module(&mut self, name: &str, container_type: &str) {
            if container_type == REPARAMETERIZATION && name == ADAPTER {
                self.out.push(self.stack.path());
            }
            self.stack.enter(name, container_type);
        }
        fn exit_module(&mut self, _name: &str, _container_type: &str) {
            self.stack.exit();
        }
    }
    let mut v = Adapted {
        stack: PathStack::default(),
        out: Vec::new(),
    };
    module.visit(&mut v);
    v.out
}

/// Whether `target` appears in `path` as whole dot-separated segments.
fn has_segments(path: &str, target: &str) -> bool {
    format!(".{path}.").contains(&format!(".{target}."))
}

/// The `Linear` weight paths `config` targets. A target that matches no `Linear` layer is an
/// error listing the `Linear` layer names (and saying so when it names another kind of
/// parameter, e.g. an embedding or a norm).
pub fn target_paths<M: Module>(module: &M, config: &LoraConfig) -> Result<Vec<String>> {
    let slots = param_slots(module);
    let module_path = |p: &str| p.strip_suffix(".weight").unwrap_or(p).to_string();
    let linear: Vec<String> = slots
        .iter()
        .filter(|(p, c)| is_linear_weight(p, c))
        .map(|(p, _)| p.clone())
        .collect();
    for target in &config.target_modules {
        if target.is_empty() || target.starts_with('.') || target.ends_with('.') {
            bail!("LoRA target {target:?} is not a module name");
        }
        if linear.iter().any(|p| has_segments(&module_path(p), target)) {
            continue;
        }
        let names: BTreeSet<&str> = linear.iter().filter_map(|p| p.rsplit('.').nth(1)).collect();
        let other: Vec<&str> = slots
            .iter()
            .filter(|(p, _)| has_segments(p, target))
            .map(|(p, _)| p.as_str())
            .take(3)
            .collect();
        let hint = if other.is_empty() {
            String::new()
        } else {
            format!(
                " ({target:?} names {}, not a Linear weight)",
                other.join(", ")
            )
        };
        bail!(
            "LoRA target {target:?} matches no Linear layer{hint}; LoRA adapts Linear weights \
             only, and the Linear layers are named: {}",
            names.into_iter().collect::<Vec<_>>().join(", ")
        );
    }
    Ok(linear
        .into_iter()
        .filter(|p| {
            config
                .target_modules
                .iter()
                .any(|t| has_segments(&module_path(p), t))
        })
        .collect())
}

/// The burn [`ParamGroup`] of the weights `config` targets.
pub fn target_group<M: Module>(module: &M, config: &LoraConfig) -> Result<ParamGroup> {
    Ok(ParamGroup::from_paths(target_paths(module, config)?))
}

fn attach<M: Module>(module: M, rank: usize, alpha: f64, paths: Vec<String>) -> M {
    module.apply_lora(Lora::new(rank, alpha).set_param_group(ParamGroup::from_paths(paths)))
}

/// Attaches adapters to the targeted `Linear` weights and freezes every base parameter (all of
/// them, not only the adapted ones: the canonical LoRA contract). Fails on an invalid config, an
/// unknown target, or a module that already carries adapters; and on `dropout > 0`, which a
/// generic module cannot honor (plumbline's backbones can: see the module docs).
pub fn apply<M: Module>(module: M, config: &LoraConfig) -> Result<M> {
    if config.dropout != 0.0 {
        bail!(
            "LoRA dropout {} needs the module's layers to run the adapter path themselves \
             (rm_core::lora::linear), which a generic module does not; plumbline's BERT and \
             Llama backbones do (build a reward model or policy from a recipe), otherwise set \
             dropout = 0",
            config.dropout
        );
    }
    apply_routed(module, config)
}

/// [`apply`] for modules whose adapted layers go through [`linear`] with a dropout they hold,
/// which the caller sets to `config.dropout` (as `Backbone::set_adapter_dropout` does).
pub(crate) fn apply_routed<M: Module>(module: M, config: &LoraConfig) -> Result<M> {
    config.validate()?;
    let existing = adapter_paths(&module);
    if !existing.is_empty() {
        bail!(
            "the module already carries LoRA adapters (on {}); burn does not nest them",
            existing.join(", ")
        );
    }
    let paths = target_paths(&module, config)?;
    Ok(attach(module, config.rank, config.alpha, paths))
}

/// `layer` on the rows `x` `[N, d_in]`. A layer without an adapter is `x·W + b`
/// (`layer.forward`). An adapted layer always runs the factored LoRA forward (Hu et al., "LoRA:
/// Low-Rank Adaptation of Large Language Models", 2021, with PEFT's adapter input dropout):
/// `y = x·W₀ + b + s·(dropout(x)·A)·B`, where `dropout` acts only while training on an autodiff
/// device with `p > 0`. It never forms `W₀ + s·A·B`, so a training step keeps no weight-sized
/// effective weight per layer and, the frozen base `W₀` being an untracked constant of the
/// autodiff graph, computes no gradient of `W₀`'s shape: the backward pass only builds
/// `∂L/∂x`, `∂L/∂A` `[d_in, r]` and `∂L/∂B` `[r, d_out]`. In value it equals burn's merged
/// `layer.forward(x)` up to float rounding.
pub fn linear(layer: &burn::nn::Linear, x: Tensor<2>, dropout: &burn::nn::Dropout) -> Tensor<2> {
    let Some(adapter) = layer.weight.adapter() else {
        return layer.forward(x);
    };
    // The mask is drawn before the bias is read: a lazily initialized bias draws from the same
    // generator, and this order keeps a seed's masks what they were.
    let dropped = crate::models::host_ops::dropout(dropout, x.clone());
    let bias = layer.bias.as_ref().map(|b| b.val());
    let base = burn::tensor::module::linear(x, layer.weight.base(), bias);
    // The scale is applied to the [N, r] product, the smallest intermediate.
    let update = dropped
        .matmul(adapter.a.val())
        .mul_scalar(adapter.scale)
        .matmul(adapter.b.val());
    base + update
}

/// Which LoRA factor a mapper is at, if any.
fn factor_at(stack: &PathStack) -> Option<(String, char)> {
    if !stack.in_reparameterization() {
        return None;
    }
    match stack.last_names(2).as_slice() {
        [ADAPTER, f @ ("a" | "b")] => {
            let (weight_path, _) = stack.ancestor(2)?;
            Some((weight_path, if *f == "a" { 'a' } else { 'b' }))
        }
        _ => None,
    }
}

/// Sets every element of every LoRA factor to `value`, trainable or frozen.
struct FillFactors {
    stack: PathStack,
    value: f32,
    trainable: bool,
}

impl ModuleMapper for FillFactors {
    fn enter_module(&mut self, name: &str, container_type: &str) {
        self.stack.enter(name, container_type);
    }
    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.stack.exit();
    }
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        if factor_at(&self.stack).is_none() {
            return param;
        }
        let value = self.value;
        param
            .map(|factor| factor.full_like(value))
            .set_require_grad(self.trainable)
    }
}

/// The module with its adapters switched off: both factors of every adapter are zero (so each
/// adapted layer computes its base, `x·W₀ + 0`), and nothing in the view trains. Base
/// tensors are shared with `module`, not copied. This is the frozen reference policy of DPO/PPO;
/// parameters trained outside the adapters (an unfrozen head) keep their trained values.
pub fn disabled<M: Module>(module: &M) -> M {
    module
        .clone()
        .map(&mut FillFactors {
            stack: PathStack::default(),
            value: 0.0,
            trainable: false,
        })
        .no_grad()
}

/// The adapters folded into their weights (`W ← W + (α/r)·A·B`) and removed; the merged weights
/// are frozen like the bases. `module` keeps its adapters: keeping it is unmerging (see the
/// module docs).
pub fn merge<M: Module>(module: &M) -> M {
    module.clone().materialize()
}

/// One adapter as host data in burn's layout.
struct AdapterData {
    weight_path: String,
    container: String,
    a: Option<HostTensor>,
    b: Option<HostTensor>,
}

fn adapter_data<M: Module>(module: &M) -> Result<Vec<AdapterData>> {
    struct Collect {
        stack: PathStack,
        out: Vec<AdapterData>,
        error: Option<anyhow::Error>,
    }
    impl ModuleVisitor for Collect {
        fn enter_module(&mut self, name: &str, container_type: &str) {
            self.stack.enter(name, container_type);
        }
        fn exit_module(&mut self, _name: &str, _container_type: &str) {
            self.stack.exit();
        }
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            let Some((weight_path, factor)) = factor_at(&self.stack) else {
                return;
            };
            let host = match param_host(param) {
                Ok(h) => h,
                Err(e) => {
                    self.error.get_or_insert(e.context(weight_path));
                    return;
                }
            };
            if self.out.last().is_none_or(|a| a.weight_path != weight_path) {
                let container = self
                    .stack
                    .ancestor(2)
                    .map(|(_, c)| c.to_string())
                    .unwrap_or_default();
                self.out.push(AdapterData {
                    weight_path,
                    container,
                    a: None,
                    b: None,
                });
            }
            let last = self.out.last_mut().expect("pushed above");
            match factor {
                'a' => last.a = Some(host),
                _ => last.b = Some(host),
            }
        }
    }
    let mut c = Collect {
        stack: PathStack::default(),
        out: Vec::new(),
        error: None,
    };
    module.visit(&mut c);
    match c.error {
        Some(e) => Err(e),
        None => Ok(c.out),
    }
}

/// The HF module name of the layer whose weight is at `path` (its weight's name without
/// `.weight`).
fn hf_module_name(names: &dyn NameMap, path: &str, container: &str) -> Option<String> {
    let t = names.tensor_name(&ParamSlot { path, container })?;
    t.name.strip_suffix(".weight").map(str::to_string)
}

/// `{prefix}{module}.lora_A.weight` and `….lora_B.weight`.
fn factor_names(prefix: &str, module: &str) -> (String, String) {
    (
        format!("{prefix}{module}.lora_A.weight"),
        format!("{prefix}{module}.lora_B.weight"),
    )
}

/// The adapters of `module` as PEFT tensors: `{prefix}{module}.lora_A.weight` `[r, d_in]` and
/// `{prefix}{module}.lora_B.weight` `[d_out, r]`, with `{module}` from `names` (see the module
/// docs), in traversal order.
pub fn adapter_tensors<M: Module>(
    module: &M,
    names: &dyn NameMap,
    prefix: &str,
) -> Result<Vec<(String, HostTensor)>> {
    let mut out = Vec::new();
    for adapter in adapter_data(module)? {
        let module_name = hf_module_name(names, &adapter.weight_path, &adapter.container)
            .with_context(|| {
                format!(
                    "the name map gives the adapted weight {} no name ending in .weight",
                    adapter.weight_path
                )
            })?;
        let (a_name, b_name) = factor_names(prefix, &module_name);
        for (name, factor) in [(a_name, adapter.a), (b_name, adapter.b)] {
            let t = factor.with_context(|| format!("{} lacks a factor", adapter.weight_path))?;
            let (rows, cols) = (t.shape[0], t.shape[1]);
            out.push((
                name,
                HostTensor {
                    shape: vec![cols, rows],
                    values: transpose(&t.values, rows, cols),
                },
            ));
        }
    }
    Ok(out)
}

/// PEFT's `target_modules`: a list of module names (or name suffixes), or one regular
/// expression.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum PeftTargets {
    /// Module names; PEFT adapts a module whose name equals one or ends with `.` + one.
    Names(Vec<String>),
    /// A regular expression over full module names.
    Pattern(String),
}

fn lora_type() -> String {
    "LORA".into()
}

fn no_bias() -> String {
    "none".into()
}

/// `adapter_config.json`: PEFT's `LoraConfig` fields plumbline reads and writes (others are
/// ignored on reading).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PeftConfig {
    /// `LORA`.
    #[serde(default = "lora_type")]
    pub peft_type: String,
    /// Rank.
    pub r: usize,
    /// Scale numerator (`alpha / r`).
    pub lora_alpha: f64,
    /// Adapter dropout of the training run (unused at inference).
    #[serde(default)]
    pub lora_dropout: f64,
    /// Adapted modules, by HF module name.
    #[serde(default)]
    pub target_modules: Option<PeftTargets>,
    /// Trained biases: only `none` is supported.
    #[serde(default = "no_bias")]
    pub bias: String,
    /// GPT-2 `Conv1D` layout; unsupported.
    #[serde(default)]
    pub fan_in_fan_out: bool,
    /// Rank-stabilized scaling `alpha / sqrt(r)`; unsupported.
    #[serde(default)]
    pub use_rslora: bool,
    /// Weight-decomposed LoRA; unsupported.
    #[serde(default)]
    pub use_dora: bool,
    /// Per-module ranks; unsupported.
    #[serde(default)]
    pub rank_pattern: BTreeMap<String, serde_json::Value>,
    /// Per-module alphas; unsupported.
    #[serde(default)]
    pub alpha_pattern: BTreeMap<String, serde_json::Value>,
    /// Fully trained extra modules; unsupported.
    #[serde(default)]
    pub modules_to_save: Option<Vec<String>>,
    /// Whether the adapters were saved for inference.
    #[serde(default)]
    pub inference_mode: bool,
    /// PEFT task type (`CAUSAL_LM`, `SEQ_CLS`, …), if any.
    #[serde(default)]
    pub task_type: Option<String>,
    /// The base model the adapters were trained on, if recorded.
    #[serde(default)]
    pub base_model_name_or_path: Option<String>,
}

impl PeftConfig {
    /// Rejects the PEFT features plumbline's adapters cannot represent.
    pub fn validate(&self) -> Result<()> {
        if self.peft_type != "LORA" {
            bail!("peft_type {:?} is not LORA", self.peft_type);
        }
        if self.r == 0 {
            bail!("r must be at least 1");
        }
        let unsupported = [
            (self.bias != "none", "bias other than \"none\""),
            (self.fan_in_fan_out, "fan_in_fan_out"),
            (self.use_rslora, "use_rslora"),
            (self.use_dora, "use_dora"),
            (!self.rank_pattern.is_empty(), "rank_pattern"),
            (!self.alpha_pattern.is_empty(), "alpha_pattern"),
            (
                self.modules_to_save.as_ref().is_some_and(|m| !m.is_empty()),
                "modules_to_save",
            ),
        ];
        for (present, what) in unsupported {
            if present {
                bail!("{what} is not supported by plumbline's LoRA");
            }
        }
        Ok(())
    }

    /// The config as a plumbline [`LoraConfig`]. `target_modules` are HF module names here, and
    /// `dropout` is the file's (which [`apply`] rejects when > 0 on a generic module).
    pub fn to_lora_config(&self) -> LoraConfig {
        LoraConfig {
            rank: self.r,
            alpha: self.lora_alpha,
            dropout: self.lora_dropout,
            target_modules: match &self.target_modules {
                Some(PeftTargets::Names(n)) => n.clone(),
                Some(PeftTargets::Pattern(p)) => vec![p.clone()],
                None => Vec::new(),
            },
        }
    }
}

/// PEFT `target_modules` selecting exactly `adapted` among `all` HF module names: the distinct
/// last segments when they select nothing else, else the full names.
fn peft_targets(adapted: &BTreeSet<String>, all: &BTreeSet<String>) -> Vec<String> {
    let last = |m: &str| m.rsplit('.').next().unwrap_or(m).to_string();
    let segments: BTreeSet<String> = adapted.iter().map(|m| last(m)).collect();
    let selected: BTreeSet<String> = all
        .iter()
        .filter(|m| segments.contains(&last(m)))
        .cloned()
        .collect();
    if &selected == adapted {
        segments.into_iter().collect()
    } else {
        adapted.iter().cloned().collect()
    }
}

/// Writes the adapters of `module` into folder `dir`: [`ADAPTER_WEIGHTS`] (see
/// [`adapter_tensors`]) and [`ADAPTER_CONFIG`] (`r`, `lora_alpha` from `config`; its rank must be
/// the adapters'), each atomically; returns the config written. `target_modules` in the file are
/// HF module names that select exactly the adapted layers.
pub fn save_adapters<M: Module>(
    module: &M,
    config: &LoraConfig,
    dir: &Path,
    names: &dyn NameMap,
    prefix: &str,
) -> Result<PeftConfig> {
    let tensors = adapter_tensors(module, names, prefix)?;
    if tensors.is_empty() {
        bail!("the module carries no LoRA adapters to save");
    }
    // lora_A is [r, d_in], lora_B [d_out, r].
    if let Some((name, t)) = tensors.iter().find(|(name, t)| {
        let rank_dim = if name.ends_with(".lora_A.weight") {
            0
        } else {
            1
        };
        t.shape[rank_dim] != config.rank
    }) {
        bail!(
            "adapter tensor {name} has shape {:?}, the config's rank is {}",
            t.shape,
            config.rank
        );
    }
    let slots = param_slots(module);
    let all: BTreeSet<String> = slots
        .iter()
        .filter(|(p, c)| is_linear_weight(p, c))
        .filter_map(|(p, c)| hf_module_name(names, p, c))
        .collect();
    let adapted: BTreeSet<String> = adapter_data(module)?
        .iter()
        .filter_map(|a| hf_module_name(names, &a.weight_path, &a.container))
        .collect();
    let peft = PeftConfig {
        peft_type: lora_type(),
        r: config.rank,
        lora_alpha: config.alpha,
        lora_dropout: config.dropout,
        target_modules: Some(PeftTargets::Names(peft_targets(&adapted, &all))),
        bias: no_bias(),
        fan_in_fan_out: false,
        use_rslora: false,
        use_dora: false,
        rank_pattern: BTreeMap::new(),
        alpha_pattern: BTreeMap::new(),
        modules_to_save: None,
        inference_mode: true,
        task_type: None,
        base_model_name_or_path: None,
    };
    save_host_tensors(&dir.join(ADAPTER_WEIGHTS), &tensors)?;
    write_bytes_atomically(
        &dir.join(ADAPTER_CONFIG),
        serde_json::to_string_pretty(&peft)?.as_bytes(),
    )?;
    Ok(peft)
}

/// Reads and validates `dir/adapter_config.json`.
pub fn read_adapter_config(dir: &Path) -> Result<PeftConfig> {
    let path = dir.join(ADAPTER_CONFIG);
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let config: PeftConfig = serde_json::from_str(&text)
        .with_context(|| format!("{}: not a PEFT LoRA adapter config", path.display()))?;
    config
        .validate()
        .with_context(|| format!("{}", path.display()))?;
    Ok(config)
}

/// Fills LoRA factors from PEFT tensors.
struct FactorLoader<'a> {
    stack: PathStack,
    source: &'a dyn WeightSource,
    origin: &'a str,
    /// burn weight path → (`lora_A` name, `lora_B` name).
    wanted: &'a BTreeMap<String, (String, String)>,
    error: Option<anyhow::Error>,
}

impl FactorLoader<'_> {
    fn load<const D: usize>(
        &self,
        param: Param<Tensor<D>>,
        weight_path: &str,
        factor: char,
    ) -> Result<Param<Tensor<D>>> {
        let origin = self.origin;
        let (a, b) = self
            .wanted
            .get(weight_path)
            .ok_or_else(|| anyhow!("no adapter tensors for {weight_path}"))?;
        let name = if factor == 'a' { a } else { b };
        if !self.source.contains(name) {
            bail!("{origin}: tensor {name} (for the adapter on {weight_path}) is missing");
        }
        let t = self.source.tensor(name)?;
        let dims = param.lazy_shape().to_vec();
        let expected = vec![dims[1], dims[0]];
        if t.shape != expected {
            bail!(
                "{origin}: tensor {name} has shape {:?}, the adapter on {weight_path} needs \
                 {expected:?}",
                t.shape
            );
        }
        let values = transpose(&t.values, dims[1], dims[0]);
        let device = param.lazy_device();
        let dtype = param.base().dtype();
        let tensor = Tensor::<D>::from_data(TensorData::new(values, dims), (&device, dtype));
        let id = param.id;
        Ok(param.transform_for_load(tensor, id))
    }
}

impl ModuleMapper for FactorLoader<'_> {
    fn enter_module(&mut self, name: &str, container_type: &str) {
        self.stack.enter(name, container_type);
    }
    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.stack.exit();
    }
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        if self.error.is_some() {
            return param;
        }
        let Some((weight_path, factor)) = factor_at(&self.stack) else {
            return param;
        };
        let keep = param.clone();
        match self.load(param, &weight_path, factor) {
            Ok(p) => p,
            Err(e) => {
                self.error = Some(e);
                keep
            }
        }
    }
}

/// Attaches the adapters saved in folder `dir` (PEFT layout, e.g. by [`save_adapters`] or by
/// PEFT itself) to a base `module` without adapters. Which layers are adapted comes from the
/// tensor names: a `Linear` layer whose HF module name (from `names`, see the module docs) has
/// `{prefix}{module}.lora_A.weight` in the file. Every tensor of the file must belong to such a
/// layer, and every factor must have its layer's shape; the adapters are trainable, the bases
/// frozen, as after [`apply`]. Returns the module and the file's config.
pub fn load_adapters<M: Module>(
    module: M,
    dir: &Path,
    names: &dyn NameMap,
    prefix: &str,
) -> Result<(M, PeftConfig)> {
    let config = read_adapter_config(dir)?;
    let file = dir.join(ADAPTER_WEIGHTS);
    let origin = file.display().to_string();
    let source = SafetensorsWeights::open(&file)?;
    let existing = adapter_paths(&module);
    if !existing.is_empty() {
        bail!(
            "the module already carries LoRA adapters (on {}); load adapters onto a base module",
            existing.join(", ")
        );
    }
    let mut wanted = BTreeMap::new();
    let mut examples = Vec::new();
    for (path, container) in param_slots(&module) {
        if !is_linear_weight(&path, &container) {
            continue;
        }
        let Some(module_name) = hf_module_name(names, &path, &container) else {
            continue;
        };
        let (a, b) = factor_names(prefix, &module_name);
        if source.contains(&a) {
            wanted.insert(path, (a, b));
        } else if examples.len() < 3 {
            examples.push(a);
        }
    }
    let used: BTreeSet<&String> = wanted.values().flat_map(|(a, b)| [a, b]).collect();
    let unused: Vec<String> = source
        .names()
        .into_iter()
        .filter(|n| !used.contains(n))
        .collect();
    if !unused.is_empty() {
        bail!(
            "{origin}: {} tensor(s) belong to no Linear layer of the module under the naming \
             given (prefix {prefix:?}), e.g. {}; the module's layers would read e.g. {}",
            unused.len(),
            unused
                .iter()
                .take(3)
                .cloned()
                .collect::<Vec<_>>()
                .join(", "),
            examples.join(", ")
        );
    }
    if wanted.is_empty() {
        bail!("{origin} holds no adapter tensors");
    }
    let paths: Vec<String> = wanted.keys().cloned().collect();
    let module = attach(module, config.r, config.lora_alpha, paths);
    let mut loader = FactorLoader {
        stack: PathStack::default(),
        source: &source,
        origin: &origin,
        wanted: &wanted,
        error: None,
    };
    let module = module.map(&mut loader);
    if let Some(e) = loader.error {
        return Err(e);
    }
    Ok((module, config))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::checkpoint::test_net::{TinyNet, ids};
    use crate::checkpoint::tests::temp_dir;
    use crate::checkpoint::{BurnNames, HfNames, bits, param_bits};
    use crate::device::test_device;
    use crate::models::bert::BertModel;
    use crate::models::llama::LlamaModel;
    use crate::models::llama::tests::tiny_model;
    use burn::optim::{AdamWConfig, GradientsParams};
    use burn::tensor::{Device, Distribution, Int};

    fn config() -> LoraConfig {
        LoraConfig::new(2, 4.0, &["query", "value", "up"])
    }

    /// Raw bits of parameters, by path.
    type Bits = Vec<(String, Vec<u32>)>;

    /// Base parameters only (factors left out).
    fn base_bits<M: Module>(m: &M) -> Bits {
        param_bits(m)
            .into_iter()
            .filter(|(p, _)| !p.contains(".lora."))
            .collect()
    }

    fn param_ids<M: Module>(m: &M) -> Vec<String> {
        struct Ids(Vec<String>);
        impl ModuleVisitor for Ids {
            fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
                self.0.push(param.id.to_string());
            }
        }
        let mut ids = Ids(Vec::new());
        m.visit(&mut ids);
        ids.0
    }

    fn out(net: &TinyNet, device: &Device) -> Vec<u32> {
        bits(net.forward(ids(device)))
    }

    /// Reference outputs and base bits of a fresh net, and the net adapted and trained for a few
    /// AdamW steps on an autodiff device.
    fn trained(device: &Device) -> (Vec<u32>, Bits, TinyNet) {
        let base = TinyNet::new(8, device);
        let reference = out(&base, device);
        let base_bits_before = base_bits(&base);
        let mut model = apply(base, &config()).unwrap();
        assert_eq!(
            out(&model, device),
            reference,
            "fresh adapters change nothing"
        );
        let mut optim = AdamWConfig::new().init();
        for _ in 0..3 {
            let loss = model.forward(ids(device)).powf_scalar(2.0).mean();
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            assert_eq!(grads.len(), 2 * 6, "gradients reach the factors only");
            model = optim.step(1e-2, model, grads);
        }
        (reference, base_bits_before, model)
    }

    #[test]
    fn targets_become_exact_linear_weight_paths() {
        let net = TinyNet::new(8, &test_device());
        assert_eq!(linear_weight_paths(&net).len(), 2 * 6 + 1);
        let paths = target_paths(&net, &config()).unwrap();
        assert_eq!(
            paths,
            [
                "blocks.0.attn.query.weight",
                "blocks.0.attn.value.weight",
                "blocks.0.mlp.up.weight",
                "blocks.1.attn.query.weight",
                "blocks.1.attn.value.weight",
                "blocks.1.mlp.up.weight",
            ]
        );
        let dotted = LoraConfig::new(2, 4.0, &["1.attn.query"]);
        assert_eq!(
            target_paths(&net, &dotted).unwrap(),
            ["blocks.1.attn.query.weight"]
        );
        let model = apply(net, &config()).unwrap();
        assert_eq!(adapter_paths(&model), paths);
        let err = apply(model, &config()).unwrap_err().to_string();
        assert!(err.contains("already carries LoRA adapters"), "{err}");
    }

    #[test]
    fn unknown_targets_dropout_and_non_linear_targets_are_errors() {
        let device = test_device();
        let err = apply(
            TinyNet::new(8, &device),
            &LoraConfig::new(2, 4.0, &["q_proj"]),
        )
        .unwrap_err()
        .to_string();
        assert_eq!(
            err,
            "LoRA target \"q_proj\" matches no Linear layer; LoRA adapts Linear weights only, \
             and the Linear layers are named: down, head, key, out, query, up, value"
        );
        // Embeddings and norms are not adapted.
        for target in ["embed", "norm"] {
            let err = apply(
                TinyNet::new(8, &device),
                &LoraConfig::new(2, 4.0, &[target]),
            )
            .unwrap_err()
            .to_string();
            assert!(err.contains("not a Linear weight"), "{err}");
        }
        let mut with_dropout = config();
        with_dropout.dropout = 0.1;
        let err = apply(TinyNet::new(8, &device), &with_dropout)
            .unwrap_err()
            .to_string();
        assert!(err.contains("dropout 0.1 needs the module"), "{err}");
        // Training configs reject unknown keys.
        assert!(
            serde_json::from_str::<LoraConfig>(
                r#"{"rank": 2, "alpha": 4, "target_modules": ["q"], "drop": 0.1}"#
            )
            .is_err()
        );
    }

    #[test]
    fn training_adapters_changes_outputs_but_no_base_bit() {
        let device = test_device().autodiff();
        let (reference, bits_before, model) = trained(&device);
        assert_ne!(
            out(&model, &device),
            reference,
            "training changed the output"
        );
        assert_eq!(
            base_bits(&model),
            bits_before,
            "every base weight is bit-identical"
        );
        // Only factors moved: B is no longer zero.
        assert!(
            param_bits(&model)
                .iter()
                .any(|(p, b)| p.ends_with(".lora.b") && b.iter().any(|&x| f32::from_bits(x) != 0.0))
        );
    }

    #[test]
    fn disabled_adapters_give_the_original_outputs_exactly() {
        let device = test_device().autodiff();
        let (reference, bits_before, model) = trained(&device);
        let reference_policy = disabled(&model);
        assert_eq!(out(&reference_policy, &device), reference);
        assert_eq!(base_bits(&reference_policy), bits_before);
        // A view of the same parameters (same ids, base tensors shared), factors zeroed.
        assert_eq!(param_ids(&reference_policy), param_ids(&model));
        assert_eq!(adapter_paths(&reference_policy), adapter_paths(&model));
        // The adapted model is unaffected.
        assert_ne!(out(&model, &device), reference);
        // Nothing in the view trains.
        let loss = reference_policy.forward(ids(&device)).sum();
        assert!(!loss.is_tracked());
    }

    #[test]
    fn merged_adapters_match_the_adapted_outputs() {
        let device = test_device().autodiff();
        let (_, bits_before, model) = trained(&device);
        let merged = merge(&model);
        assert!(adapter_paths(&merged).is_empty());
        let a = model.forward(ids(&device)).into_data();
        let m = merged.forward(ids(&device)).into_data();
        let (a, m) = (
            a.try_to_vec::<f32>().unwrap(),
            m.try_to_vec::<f32>().unwrap(),
        );
        let diff = a
            .iter()
            .zip(&m)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max);
        assert!(diff <= 1e-5, "merged vs adapted: {diff}");
        // Unmerging is keeping the adapted module: its bases are untouched.
        assert_eq!(base_bits(&model), bits_before);
    }

    #[test]
    fn adapters_round_trip_bit_exactly_in_peft_layout() {
        let device = test_device().autodiff();
        let dir = temp_dir("lora");
        let base = TinyNet::new(8, &device);
        let mut model = apply(base.clone(), &config()).unwrap();
        let mut optim = AdamWConfig::new().init();
        for _ in 0..2 {
            let loss = model.forward(ids(&device)).powf_scalar(2.0).mean();
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            model = optim.step(1e-2, model, grads);
        }
        let names = HfNames::identity();
        let peft = save_adapters(&model, &config(), &dir, &names, PEFT_PREFIX).unwrap();
        assert_eq!(
            peft.target_modules,
            Some(PeftTargets::Names(vec![
                "query".into(),
                "up".into(),
                "value".into()
            ]))
        );
        let st = SafetensorsWeights::open(dir.join(ADAPTER_WEIGHTS)).unwrap();
        assert_eq!(st.names().len(), 12);
        let a = st
            .tensor("base_model.model.blocks.0.mlp.up.lora_A.weight")
            .unwrap();
        let b = st
            .tensor("base_model.model.blocks.0.mlp.up.lora_B.weight")
            .unwrap();
        assert_eq!((a.shape, b.shape), (vec![2, 8], vec![16, 2]));
        let json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join(ADAPTER_CONFIG)).unwrap())
                .unwrap();
        assert_eq!(json["r"], 2);
        assert_eq!(json["lora_alpha"], 4.0);
        assert_eq!(json["lora_dropout"], 0.0);

        let (loaded, read) = load_adapters(base.clone(), &dir, &names, PEFT_PREFIX).unwrap();
        assert_eq!(read, peft);
        assert_eq!(param_bits(&loaded), param_bits(&model), "factors and bases");
        assert_eq!(out(&loaded, &device), out(&model, &device));
        // The loaded adapters train like fresh ones.
        let loss = loaded.forward(ids(&device)).sum();
        assert!(loss.is_tracked());

        // Another naming (no prefix, burn names) finds nothing: a clear error.
        let err = load_adapters(base, &dir, &BurnNames, "")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("12 tensor(s) belong to no Linear layer"),
            "{err}"
        );
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn peft_configs_with_unsupported_features_are_rejected() {
        let dir = temp_dir("lora-peft");
        let write = |extra: &str| {
            std::fs::write(
                dir.join(ADAPTER_CONFIG),
                format!(
                    r#"{{"peft_type": "LORA", "r": 8, "lora_alpha": 16, "lora_dropout": 0.05,
                        "target_modules": ["q_proj"], "task_type": "CAUSAL_LM",
                        "layers_to_transform": null{extra}}}"#
                ),
            )
            .unwrap()
        };
        write("");
        let c = read_adapter_config(&dir).unwrap();
        assert_eq!((c.r, c.lora_alpha, c.lora_dropout), (8, 16.0, 0.05));
        for (extra, what) in [
            (r#", "use_rslora": true"#, "use_rslora"),
            (r#", "use_dora": true"#, "use_dora"),
            (r#", "bias": "all""#, "bias"),
            (r#", "alpha_pattern": {"q_proj": 4}"#, "alpha_pattern"),
            (r#", "modules_to_save": ["score"]"#, "modules_to_save"),
        ] {
            write(extra);
            let err = format!("{:#}", read_adapter_config(&dir).unwrap_err());
            assert!(err.contains(what), "{err}");
        }
        std::fs::remove_dir_all(&dir).ok();
    }

    fn llama_logits(model: &LlamaModel, device: &Device) -> Vec<u32> {
        let ids = Tensor::<2, Int>::from_data(
            TensorData::new(vec![1i64, 5, 2, 9, 3, 30], [1, 6]),
            device,
        );
        bits(model.forward(ids, Tensor::ones([1, 6], device)))
    }

    #[test]
    fn llama_adapters_save_with_peft_names_and_reload() {
        let device = test_device().autodiff();
        let dir = temp_dir("lora-llama");
        let base = tiny_model(&device);
        let reference = llama_logits(&base, &device);
        let config = LoraConfig::new(4, 8.0, &["q_proj", "v_proj"]);
        let mut model = apply(base.clone(), &config).unwrap();
        assert_eq!(adapter_paths(&model).len(), 4);
        let mut optim = AdamWConfig::new().init();
        let ids = Tensor::<2, Int>::from_data(
            TensorData::new(vec![3i64, 1, 4, 1, 5, 9], [1, 6]),
            &device,
        );
        for _ in 0..2 {
            let loss = model
                .forward(ids.clone(), Tensor::ones([1, 6], &device))
                .powf_scalar(2.0)
                .mean();
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            model = optim.step(1e-2, model, grads);
        }
        let adapted = llama_logits(&model, &device);
        assert_ne!(adapted, reference);
        assert_eq!(llama_logits(&disabled(&model), &device), reference);

        let names = HfNames::new(|p: &str| Some(crate::models::llama::hf_name(p)));
        let peft = save_adapters(&model, &config, &dir, &names, PEFT_PREFIX).unwrap();
        assert_eq!(
            peft.target_modules,
            Some(PeftTargets::Names(vec!["q_proj".into(), "v_proj".into()]))
        );
        let st = SafetensorsWeights::open(dir.join(ADAPTER_WEIGHTS)).unwrap();
        // PEFT's names for LlamaForCausalLM: q_proj is [h·dh, d] = [16, 16], v_proj [8, 16].
        let t = |n: &str| st.tensor(n).unwrap().shape;
        assert_eq!(
            t("base_model.model.model.layers.1.self_attn.q_proj.lora_A.weight"),
            [4, 16]
        );
        assert_eq!(
            t("base_model.model.model.layers.1.self_attn.v_proj.lora_B.weight"),
            [8, 4]
        );
        let (loaded, _) = load_adapters(base, &dir, &names, PEFT_PREFIX).unwrap();
        assert_eq!(llama_logits(&loaded, &device), adapted);
        std::fs::remove_dir_all(&dir).ok();
    }

    fn bert_out(model: &BertModel, device: &Device) -> Vec<u32> {
        let ids = Tensor::<2, Int>::from_data(
            TensorData::new(vec![2i64, 7, 11, 3, 19, 0], [2, 3]),
            device,
        );
        let mask =
            Tensor::<2, Int>::from_data(TensorData::new(vec![1i64, 1, 1, 1, 1, 0], [2, 3]), device);
        bits(model.forward(ids, mask, None))
    }

    #[test]
    fn bert_adapters_and_checkpoints_use_hf_names() {
        let device = test_device();
        let dir = temp_dir("lora-bert");
        let (base, c) = crate::models::bert::tests::tiny_model(&device);
        let reference = bert_out(&base, &device);
        let names = HfNames::new(crate::models::bert::hf_name);

        // A full checkpoint with HF names is read back by BERT's own HF loader.
        let path = dir.join("model.safetensors");
        crate::checkpoint::save_safetensors(&base, &path, &names).unwrap();
        let reread =
            BertModel::from_source(&SafetensorsWeights::open(&path).unwrap(), &c, &device).unwrap();
        assert_eq!(bert_out(&reread, &device), reference);

        // Adapters on query/value: PEFT targets are the HF names, which here are the same.
        let config = LoraConfig::new(2, 2.0, &["query", "value"]);
        let model = apply(base.clone(), &config).unwrap();
        // Non-zero B so that the adapters matter.
        let model = random_b(model);
        let adapted = bert_out(&model, &device);
        assert_ne!(adapted, reference);
        assert_eq!(bert_out(&disabled(&model), &device), reference);
        let peft = save_adapters(&model, &config, &dir, &names, PEFT_PREFIX).unwrap();
        assert_eq!(
            peft.target_modules,
            Some(PeftTargets::Names(vec!["query".into(), "value".into()]))
        );
        let st = SafetensorsWeights::open(dir.join(ADAPTER_WEIGHTS)).unwrap();
        assert!(st.contains("base_model.model.encoder.layer.1.attention.self.value.lora_B.weight"));
        let (loaded, _) = load_adapters(base.clone(), &dir, &names, PEFT_PREFIX).unwrap();
        assert_eq!(bert_out(&loaded, &device), adapted);

        // burn's "output" is two HF modules ending in "dense"; "dense" alone would also pick
        // intermediate.dense, so the file lists the full module names.
        let config = LoraConfig::new(2, 2.0, &["output"]);
        let model = apply(base, &config).unwrap();
        assert_eq!(adapter_paths(&model).len(), 4);
        let peft = save_adapters(&model, &config, &dir, &names, PEFT_PREFIX).unwrap();
        let Some(PeftTargets::Names(targets)) = peft.target_modules else {
            panic!("names expected");
        };
        assert_eq!(targets.len(), 4);
        assert!(targets.contains(&"encoder.layer.0.attention.output.dense".to_string()));
        assert!(targets.contains(&"encoder.layer.1.output.dense".to_string()));
        std::fs::remove_dir_all(&dir).ok();
    }

    /// Draws every `B` factor from `N(0, 0.5²)` (on the device's seed), as training would make it
    /// non-zero; `A` keeps its Gaussian init.
    struct RandomB {
        stack: PathStack,
    }

    impl ModuleMapper for RandomB {
        fn enter_module(&mut self, name: &str, container_type: &str) {
            self.stack.enter(name, container_type);
        }
        fn exit_module(&mut self, _name: &str, _container_type: &str) {
            self.stack.exit();
        }
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
            match factor_at(&self.stack) {
                Some((_, 'b')) => param
                    .map(|b| b.random_like(Distribution::Normal(0.0, 0.5)))
                    .set_require_grad(true),
                _ => param,
            }
        }
    }

    pub(crate) fn random_b<M: Module>(module: M) -> M {
        module.map(&mut RandomB {
            stack: PathStack::default(),
        })
    }

    fn max_abs_diff<const D: usize>(a: Tensor<D>, b: Tensor<D>) -> f32 {
        (a - b).abs().max().into_scalar::<f32>()
    }

    #[test]
    fn factored_lora_forward_and_gradients_equal_the_merged_weights() {
        for bias in [true, false] {
            let device = Device::flex().autodiff();
            device.seed(7);
            let layer = burn::nn::LinearConfig::new(8, 6)
                .with_bias(bias)
                .init(&device);
            let layer = random_b(attach(layer, 2, 4.0, vec!["weight".into()]));
            let adapter = layer.weight.adapter().expect("the weight is adapted");
            let (a, b) = (adapter.a.val(), adapter.b.val());
            let base = layer.weight.base();
            // The base is a constant of the graph; only the factors are leaves that train.
            assert!(!base.is_require_grad() && a.is_require_grad() && b.is_require_grad());
            let x =
                Tensor::<2>::random([5, 8], Distribution::Normal(0.0, 1.0), &device).require_grad();
            // A fixed random cotangent, so that every gradient entry matters.
            let c = Tensor::<2>::random([5, 6], Distribution::Normal(0.0, 1.0), &device);
            let no_dropout = burn::nn::DropoutConfig::new(0.0).init();

            let factored = linear(&layer, x.clone(), &no_dropout);
            // The merged formulation by hand: y = x·(W₀ + s·A·B) + b.
            let merged_weight = base.clone() + a.clone().matmul(b.clone()).mul_scalar(2.0);
            let mut merged = x.clone().matmul(merged_weight);
            if let Some(bias) = &layer.bias {
                merged = merged + bias.val().unsqueeze();
            }
            let diff = max_abs_diff(factored.clone(), merged.clone());
            assert!(diff < 1e-5, "factored vs merged, bias {bias}: {diff}");
            // burn's own merged forward agrees too.
            let diff = max_abs_diff(factored.clone(), layer.forward(x.clone()));
            assert!(
                diff < 1e-5,
                "factored vs Linear::forward, bias {bias}: {diff}"
            );
            // The adapter is not a no-op.
            let bias_val = layer.bias.as_ref().map(|b| b.val());
            let plain = burn::tensor::module::linear(x.clone(), base.clone(), bias_val);
            assert!(max_abs_diff(factored.clone(), plain) > 1e-2);

            let factored_grads = (factored * c.clone()).sum().backward();
            let merged_grads = (merged * c).sum().backward();
            for (name, leaf) in [("A", a), ("B", b), ("x", x)] {
                let g = leaf.grad(&factored_grads).expect("a factored gradient");
                let reference = leaf.grad(&merged_grads).expect("a merged gradient");
                assert!(reference.clone().abs().max().into_scalar::<f32>() > 1e-2);
                let diff = max_abs_diff(g, reference);
                assert!(diff < 1e-5, "d/d{name}, bias {bias}: {diff}");
            }
            // No gradient of W₀'s shape (nor of the frozen bias) exists.
            assert!(base.grad(&factored_grads).is_none());
            if let Some(bias) = &layer.bias {
                assert!(bias.val().grad(&factored_grads).is_none());
            }
        }
    }

    #[test]
    fn llama_lora_step_trains_only_the_factors_and_matches_the_merged_model() {
        let device = Device::flex().autodiff();
        device.seed(5);
        let c = crate::models::llama::LlamaConfig {
            tie_word_embeddings: false,
            attention_bias: true,
            ..crate::models::llama::tests::tiny_config()
        };
        let base = LlamaModel::from_source(
            &crate::models::llama::tests::tiny_weights(&c, 11),
            &c,
            &device,
        )
        .unwrap();
        let targets = [
            "q_proj",
            "k_proj",
            "v_proj",
            "o_proj",
            "gate_proj",
            "up_proj",
            "down_proj",
            "lm_head",
        ];
        let model = random_b(apply(base, &LoraConfig::new(2, 4.0, &targets)).unwrap());
        let adapted = adapter_paths(&model);
        assert_eq!(adapted.len(), 2 * 7 + 1);
        let ids = Tensor::<2, Int>::from_data(
            TensorData::new(vec![3i64, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5, 8], [2, 6]),
            &device,
        );
        let ones = Tensor::<2, Int>::ones([2, 6], &device);

        // The routed backbone (factored everywhere, the head included) computes what the merged
        // weights compute.
        let logits = model.forward(ids.clone(), ones.clone());
        let merged = merge(&model).forward(ids.clone(), ones.clone());
        let diff = max_abs_diff(logits, merged);
        assert!(diff < 1e-4, "factored vs merged logits: {diff}");

        let lp = crate::logprobs::model_sequence_logprobs(&model, ids, ones.clone(), ones, false)
            .unwrap();
        let grads = lp.sum.sum().backward();
        // No base weight (nor any other base parameter) has a gradient.
        for layer in &model.layers {
            let a = &layer.self_attn;
            let m = &layer.mlp;
            for l in [
                &a.q_proj,
                &a.k_proj,
                &a.v_proj,
                &a.o_proj,
                &m.gate_proj,
                &m.up_proj,
                &m.down_proj,
            ] {
                assert!(l.weight.base().grad(&grads).is_none());
                assert!(l.weight.adapter().unwrap().a.val().grad(&grads).is_some());
            }
        }
        let head = model.lm_head.as_ref().unwrap();
        assert!(head.weight.base().grad(&grads).is_none());
        assert!(model.embed_tokens.weight.val().grad(&grads).is_none());
        // The optimizer's accumulator gets exactly the factors, each of its own shape.
        let mut acc = crate::train::optimizer::GradAccumulator::default();
        acc.add(&model, grads);
        let got: BTreeSet<&str> = acc.iter().map(|(p, _)| p.as_str()).collect();
        let want: BTreeSet<String> = adapted
            .iter()
            .flat_map(|p| [format!("{p}.lora.a"), format!("{p}.lora.b")])
            .collect();
        assert_eq!(got, want.iter().map(String::as_str).collect());
        let q = &model.layers[0].self_attn.q_proj.weight;
        let (d_in, d_out) = (q.dims()[0], q.dims()[1]);
        let q_path = "layers.0.self_attn.q_proj.weight";
        assert_eq!(
            acc.get(&format!("{q_path}.lora.a")).unwrap().dims(),
            [d_in * 2]
        );
        assert_eq!(
            acc.get(&format!("{q_path}.lora.b")).unwrap().dims(),
            [2 * d_out]
        );
    }

    #[test]
    fn adapter_dropout_drops_the_adapter_input_only() {
        let device = Device::flex().autodiff();
        let mut with_dropout = config();
        with_dropout.dropout = 0.5;
        let net = apply_routed(TinyNet::new(8, &device), &with_dropout)
            .unwrap()
            // B starts at zero, which would hide the update.
            .map(&mut FillFactors {
                stack: PathStack::default(),
                value: 0.3,
                trainable: true,
            });
        let layer = &net.blocks[0].attn.query;
        let adapter = layer.weight.adapter().expect("query is a target");
        let drop = burn::nn::DropoutConfig::new(0.5).init();
        let x = Tensor::<2>::random([6, 8], burn::tensor::Distribution::Default, &device)
            .add_scalar(0.5)
            .require_grad();

        device.seed(3);
        let y = linear(layer, x.clone(), &drop);
        // The same mask, drawn again from the same seed, through the formula by hand.
        device.seed(3);
        let mask_x = crate::models::host_ops::dropout(&drop, x.clone());
        let by_hand = x.clone().matmul(layer.weight.base())
            + mask_x
                .clone()
                .matmul(adapter.a.val())
                .matmul(adapter.b.val())
                .mul_scalar(with_dropout.scale())
            + layer.bias.as_ref().unwrap().val().unsqueeze();
        let diff = (y.clone() - by_hand).abs().max().into_scalar::<f32>();
        assert!(diff < 1e-5, "{diff}");
        // Something was dropped, so the result differs from the undropped layer.
        let kept = mask_x
            .clone()
            .equal_elem(0.0)
            .int()
            .sum()
            .into_scalar::<i64>();
        assert!(kept > 0 && kept < 48, "{kept} dropped of 48");
        let plain = layer.forward(x.clone());
        assert!((y.clone() - plain).abs().max().into_scalar::<f32>() > 1e-3);

        // Gradients reach the adapter factors, not the frozen base.
        let grads = y.sum().backward();
        assert!(adapter.a.val().grad(&grads).is_some());
        assert!(layer.weight.base().grad(&grads).is_none());

        // p = 0 drops nothing: the merged layer's forward, up to rounding.
        let off = burn::nn::DropoutConfig::new(0.0).init();
        let undropped = linear(layer, x.clone(), &off);
        assert!(max_abs_diff(undropped.clone(), layer.forward(x.clone())) < 1e-5);
        // A non-autodiff device drops nothing either: exactly the p = 0 result.
        let inference = net.valid();
        let layer = &inference.blocks[0].attn.query;
        let x = x.inner();
        let y = linear(layer, x, &drop);
        assert_eq!(bits(y), bits(undropped.inner()));
    }

    #[test]
    fn reward_models_route_recipe_dropout_to_their_backbones() {
        // The generic entry point refuses dropout (checked above); the backbones accept it.
        let device = Device::flex().autodiff();
        let mut with_dropout = LoraConfig::new(2, 4.0, &["q_proj", "v_proj"]);
        with_dropout.dropout = 0.1;
        let mut model = apply_routed(tiny_model(&device), &with_dropout).unwrap();
        model.set_adapter_dropout(0.1);
        assert!(
            model
                .layers
                .iter()
                .all(|l| l.self_attn.adapter_dropout.prob == 0.1
                    && l.mlp.adapter_dropout.prob == 0.1)
        );
    }
}
