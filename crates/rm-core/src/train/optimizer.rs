//! AdamW with exact gradient accumulation, global-norm clipping, and state keyed by parameter
//! path (so a run can be saved and resumed onto a freshly built model).
//!
//! Update (Loshchilov & Hutter 2019, "Decoupled Weight Decay Regularization"), for each trainable
//! parameter `θ` with accumulated gradient `g` at step `t` (1-based):
//! ```text
//! m ← β₁·m + (1 − β₁)·g          v ← β₂·v + (1 − β₂)·g²
//! θ ← θ − lr·λ·θ − lr · (m / (1 − β₁ᵗ)) / (√(v / (1 − β₂ᵗ)) + ε)
//! ```
//! (PyTorch's `torch.optim.AdamW` order: decay first, then the Adam step.) Before the update the
//! gradients are scaled by `min(1, c / (‖g‖₂ + 1e-6))` with `‖g‖₂` the norm over *all*
//! parameters together (`torch.nn.utils.clip_grad_norm_`).
//!
//! Gradients are accumulated by [`GradAccumulator::add`] after each micro-batch's `backward()`.
//! The trainer back-propagates each micro-batch's mean loss times its weight (examples,
//! sequences or tokens) and divides the sum by the step's total weight
//! ([`GradAccumulator::scale`]), so the result is the gradient of the whole step's mean for
//! sequence-mean and token-mean losses alike.
//!
//! Parameter groups ([`ParamGroups`]) give a parameter its own learning-rate multiplier and
//! weight decay by path pattern; by default biases and normalization weights get no decay (the
//! `no_decay = ["bias", "LayerNorm.weight"]` convention of the peers' trainers).

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result, bail};
use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::tensor::{Gradients, Tensor, TensorData};
use serde::{Deserialize, Serialize};

use crate::checkpoint::{PathStack, save_host_tensors, write_bytes_atomically};
use crate::models::safetensors::SafetensorsWeights;
use crate::models::weights::{HostTensor, WeightSource};

/// AdamW hyper-parameters (the learning rate comes from the schedule at each step).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct AdamWSettings {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
    /// Clip the global gradient norm to this value (`None`: no clipping).
    pub max_grad_norm: Option<f64>,
}

impl Default for AdamWSettings {
    fn default() -> Self {
        Self {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.01,
            max_grad_norm: Some(1.0),
        }
    }
}

/// A parameter group: the parameters whose burn path matches one of `paths` (glob patterns
/// where `*` matches any run of characters, e.g. `head.*`, `*.bias`,
/// `backbone.layers.0.*`) train with `lr_scale` × the scheduled learning rate and their own
/// weight decay.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ParamGroup {
    pub paths: Vec<String>,
    /// Multiplier of the scheduled learning rate (default 1).
    #[serde(default = "unit")]
    pub lr_scale: f64,
    /// Weight decay of the group (default: the run's, with the bias/norm rule).
    #[serde(default)]
    pub weight_decay: Option<f64>,
}

fn unit() -> f64 {
    1.0
}

impl ParamGroup {
    /// Checks the numbers and patterns.
    pub fn validate(&self) -> Result<()> {
        if self.paths.is_empty() || self.paths.iter().any(|p| p.is_empty()) {
            bail!("paths must name at least one non-empty pattern");
        }
        if !(self.lr_scale.is_finite() && self.lr_scale >= 0.0) {
            bail!(
                "lr_scale must be a finite number ≥ 0, got {}",
                self.lr_scale
            );
        }
        if self
            .weight_decay
            .is_some_and(|w| !(w.is_finite() && w >= 0.0))
        {
            bail!("weight_decay must be a finite number ≥ 0");
        }
        Ok(())
    }

    fn matches(&self, path: &str) -> bool {
        self.paths.iter().any(|p| glob_match(p, path))
    }
}

/// `*`-only glob matching (`*` = any run of characters, possibly empty).
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == text;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !text.starts_with(first) || text.len() < first.len() + last.len() || !text.ends_with(last) {
        return false;
    }
    let mut rest = &text[first.len()..text.len() - last.len()];
    for middle in &parts[1..parts.len() - 1] {
        match rest.find(middle) {
            Some(i) => rest = &rest[i + middle.len()..],
            None => return false,
        }
    }
    true
}

/// The groups of a run, resolved per parameter by [`ParamGroups::resolve`].
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ParamGroups {
    /// Explicit groups, first match wins.
    pub groups: Vec<ParamGroup>,
    /// Decay biases and normalization weights too.
    pub decay_biases_and_norms: bool,
}

/// What a parameter trains with.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ParamSettings {
    pub lr_scale: f64,
    pub weight_decay: f64,
}

impl ParamGroups {
    /// The settings of the parameter at `path`, held by a module of type `container` (burn's
    /// container type, e.g. `Struct:LayerNorm`), with `weight_decay` the run's default.
    pub fn resolve(&self, path: &str, container: &str, weight_decay: f64) -> ParamSettings {
        let name = path.rsplit('.').next().unwrap_or(path);
        let exempt = !self.decay_biases_and_norms
            && (matches!(name, "bias" | "beta") || container.contains("Norm"));
        let default_decay = if exempt { 0.0 } else { weight_decay };
        match self.groups.iter().find(|g| g.matches(path)) {
            Some(g) => ParamSettings {
                lr_scale: g.lr_scale,
                weight_decay: g.weight_decay.unwrap_or(default_decay),
            },
            None => ParamSettings {
                lr_scale: 1.0,
                weight_decay: default_decay,
            },
        }
    }
}

/// Sum of gradients over a step's micro-batches, flattened, by parameter path.
#[derive(Default)]
pub struct GradAccumulator {
    grads: BTreeMap<String, Tensor<1>>,
}

struct CollectGrads<'a> {
    stack: PathStack,
    grads: &'a mut Gradients,
    into: &'a mut BTreeMap<String, Tensor<1>>,
}

impl ModuleVisitor for CollectGrads<'_> {
    fn enter_module(&mut self, name: &str, container_type: &str) {
        self.stack.enter(name, container_type);
    }
    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.stack.exit();
    }
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let value = param.val();
        if !value.is_require_grad() {
            return;
        }
        if let Some(grad) = value.grad_remove(self.grads) {
            let n = grad.shape().num_elements();
            let flat = grad.reshape([n]);
            let path = self.stack.path();
            let sum = match self.into.remove(&path) {
                Some(previous) => previous + flat,
                None => flat,
            };
            self.into.insert(path, sum);
        }
    }
}

impl GradAccumulator {
    /// Adds the gradients of `model`'s trainable parameters from one `backward()`.
    pub fn add<M: Module>(&mut self, model: &M, mut grads: Gradients) {
        model.visit(&mut CollectGrads {
            stack: PathStack::default(),
            grads: &mut grads,
            into: &mut self.grads,
        });
    }

    /// Number of parameters with a gradient.
    pub fn len(&self) -> usize {
        self.grads.len()
    }

    pub fn is_empty(&self) -> bool {
        self.grads.is_empty()
    }

    /// The accumulated gradient of `path`, flattened.
    pub fn get(&self, path: &str) -> Option<&Tensor<1>> {
        self.grads.get(path)
    }

    /// Every accumulated gradient (flattened) by parameter path.
    pub fn iter(&self) -> impl Iterator<Item = (&String, &Tensor<1>)> {
        self.grads.iter()
    }

    /// Multiplies every accumulated gradient by `factor` (the trainer's 1 / total weight).
    pub fn scale(&mut self, factor: f64) {
        if factor == 1.0 {
            return;
        }
        for g in self.grads.values_mut() {
            *g = g.clone().mul_scalar(factor);
        }
    }

    /// `‖g‖₂²` over every accumulated gradient, on the device (`[1]`; `None` without
    /// gradients), so a trainer can read it together with its metrics in one transfer.
    pub fn squared_norm(&self) -> Option<Tensor<1>> {
        let mut total: Option<Tensor<1>> = None;
        for g in self.grads.values() {
            let s = g.clone().powi_scalar(2).sum();
            total = Some(match total {
                Some(t) => t + s,
                None => s,
            });
        }
        total
    }

    /// `‖g‖₂` over every accumulated gradient (one host read).
    pub fn global_norm(&self) -> f64 {
        self.squared_norm()
            .map_or(0.0, |t| (t.into_scalar::<f32>() as f64).sqrt())
    }
}

/// Adam moments of one parameter, flattened.
struct Moments {
    m: Tensor<1>,
    v: Tensor<1>,
}

/// AdamW state: the step count and moments by parameter path.
pub struct AdamW {
    pub settings: AdamWSettings,
    /// Per-parameter learning-rate multipliers and weight decay.
    pub groups: ParamGroups,
    /// Updates done so far.
    pub step: u64,
    moments: BTreeMap<String, Moments>,
}

/// What one update did.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct UpdateStats {
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    /// Parameters updated.
    pub params: usize,
}

struct ApplyUpdate<'a> {
    stack: PathStack,
    grads: &'a mut BTreeMap<String, Tensor<1>>,
    moments: &'a mut BTreeMap<String, Moments>,
    lr: f64,
    clip_scale: f64,
    settings: AdamWSettings,
    groups: &'a ParamGroups,
    step: u64,
    updated: usize,
}

impl ModuleMapper for ApplyUpdate<'_> {
    fn enter_module(&mut self, name: &str, container_type: &str) {
        self.stack.enter(name, container_type);
    }
    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.stack.exit();
    }
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let path = self.stack.path();
        let Some(grad) = self.grads.remove(&path) else {
            return param;
        };
        let (id, tensor, mapper) = param.consume();
        let require_grad = tensor.is_require_grad();
        let was_autodiff = tensor.is_autodiff();
        let shape = tensor.shape();
        let n = shape.num_elements();
        let s = self.settings;
        let theta = tensor.inner().reshape([n]);
        let g = if self.clip_scale < 1.0 {
            grad.mul_scalar(self.clip_scale)
        } else {
            grad
        };
        let (m, v) = match self.moments.remove(&path) {
            Some(Moments { m, v }) => (m, v),
            None => (g.zeros_like(), g.zeros_like()),
        };
        let m = m.mul_scalar(s.beta1) + g.clone().mul_scalar(1.0 - s.beta1);
        let v = v.mul_scalar(s.beta2) + g.powi_scalar(2).mul_scalar(1.0 - s.beta2);
        let t = self.step as i32;
        let bias1 = 1.0 - s.beta1.powi(t);
        let bias2 = 1.0 - s.beta2.powi(t);
        let own = self
            .groups
            .resolve(&path, self.stack.container(), s.weight_decay);
        let lr = self.lr * own.lr_scale;
        let decayed = if own.weight_decay == 0.0 {
            theta
        } else {
            theta.mul_scalar(1.0 - lr * own.weight_decay)
        };
        let denom = v.clone().div_scalar(bias2).sqrt().add_scalar(s.eps);
        let update = m.clone().div_scalar(bias1).div(denom).mul_scalar(lr);
        let updated = (decayed - update).reshape(shape);
        self.moments.insert(path, Moments { m, v });
        self.updated += 1;
        let mut out = updated;
        if was_autodiff {
            out = Tensor::from_inner(out);
            if require_grad {
                out = out.require_grad();
            }
        }
        Param::from_mapped_value(id, out, mapper)
    }
}

/// `optimizer.json` beside `optimizer.safetensors` in a run checkpoint.
#[derive(Serialize, Deserialize)]
struct OptimizerMeta {
    step: u64,
    settings: AdamWSettings,
    params: Vec<String>,
}

impl AdamW {
    /// AdamW with every parameter in the default group.
    pub fn new(settings: AdamWSettings) -> Self {
        Self {
            settings,
            groups: ParamGroups::default(),
            step: 0,
            moments: BTreeMap::new(),
        }
    }

    /// Sets the parameter groups.
    pub fn with_groups(mut self, groups: ParamGroups) -> Self {
        self.groups = groups;
        self
    }

    /// Applies one update with learning rate `lr` from the accumulated gradients (which it
    /// consumes) and returns the model. Non-finite gradients are an error (nothing is updated).
    pub fn step<M: Module>(
        &mut self,
        model: M,
        lr: f64,
        grads: GradAccumulator,
    ) -> Result<(M, UpdateStats)> {
        let grad_norm = grads.global_norm();
        self.apply(model, lr, grads, grad_norm)
    }

    /// [`AdamW::step`] with the global gradient norm already read (e.g. with the step's metrics,
    /// in the same host transfer).
    pub fn apply<M: Module>(
        &mut self,
        model: M,
        lr: f64,
        grads: GradAccumulator,
        grad_norm: f64,
    ) -> Result<(M, UpdateStats)> {
        if grads.is_empty() {
            bail!("no gradients to apply (is any parameter trainable?)");
        }
        if !grad_norm.is_finite() {
            bail!("the gradient norm is {grad_norm}: a NaN or infinite loss or gradient");
        }
        let clip_scale = match self.settings.max_grad_norm {
            Some(c) => (c / (grad_norm + 1e-6)).min(1.0),
            None => 1.0,
        };
        self.step += 1;
        let mut grads = grads.grads;
        let mut mapper = ApplyUpdate {
            stack: PathStack::default(),
            grads: &mut grads,
            moments: &mut self.moments,
            lr,
            clip_scale,
            settings: self.settings,
            groups: &self.groups,
            step: self.step,
            updated: 0,
        };
        let model = model.map(&mut mapper);
        let params = mapper.updated;
        if let Some(path) = grads.keys().next() {
            bail!("a gradient for {path} matched no parameter");
        }
        Ok((model, UpdateStats { grad_norm, params }))
    }

    /// Writes `optimizer.safetensors` (moments, `<path>.exp_avg` / `<path>.exp_avg_sq`) and
    /// `optimizer.json` into `dir`, atomically.
    pub fn save(&self, dir: &Path) -> Result<()> {
        let mut tensors = Vec::with_capacity(self.moments.len() * 2);
        for (path, Moments { m, v }) in &self.moments {
            for (suffix, t) in [("exp_avg", m), ("exp_avg_sq", v)] {
                let values = t
                    .clone()
                    .into_data()
                    .convert::<f32>()
                    .try_to_vec::<f32>()
                    .map_err(|e| anyhow::anyhow!("reading optimizer state {path}: {e:?}"))?;
                tensors.push((
                    format!("{path}.{suffix}"),
                    HostTensor {
                        shape: vec![values.len()],
                        values,
                    },
                ));
            }
        }
        if !tensors.is_empty() {
            save_host_tensors(&dir.join("optimizer.safetensors"), &tensors)?;
        }
        let meta = OptimizerMeta {
            step: self.step,
            settings: self.settings,
            params: self.moments.keys().cloned().collect(),
        };
        write_bytes_atomically(
            &dir.join("optimizer.json"),
            serde_json::to_string_pretty(&meta)?.as_bytes(),
        )
    }

    /// Reads what [`AdamW::save`] wrote; moments go to `device`.
    pub fn load(dir: &Path, device: &burn::tensor::Device) -> Result<Self> {
        let meta_path = dir.join("optimizer.json");
        let meta: OptimizerMeta = serde_json::from_str(
            &std::fs::read_to_string(&meta_path)
                .with_context(|| format!("reading {}", meta_path.display()))?,
        )
        .with_context(|| format!("{}: not an optimizer state", meta_path.display()))?;
        let mut moments = BTreeMap::new();
        if !meta.params.is_empty() {
            let file = dir.join("optimizer.safetensors");
            let source = SafetensorsWeights::open(&file)?;
            let device = device.clone();
            let read = |name: String| -> Result<Tensor<1>> {
                let t = source.tensor(&name)?;
                let n = t.values.len();
                Ok(Tensor::from_data(TensorData::new(t.values, [n]), &device).inner())
            };
            for path in meta.params {
                let m = read(format!("{path}.exp_avg"))?;
                let v = read(format!("{path}.exp_avg_sq"))?;
                moments.insert(path, Moments { m, v });
            }
        }
        Ok(Self {
            settings: meta.settings,
            groups: ParamGroups::default(),
            step: meta.step,
            moments,
        })
    }
}
