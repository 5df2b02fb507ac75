//! Trainable parameters by burn path: what a run checkpoint stores of the model (bit-exact
//! f32), so that `--resume` can put them back onto a freshly built model.

use std::path::Path;

use anyhow::{Result, bail};
use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::tensor::{Tensor, TensorData};

use crate::checkpoint::{PathStack, save_host_tensors};
use crate::models::safetensors::SafetensorsWeights;
use crate::models::weights::{HostTensor, WeightSource};

struct TrainableCollector {
    /// Every float parameter, not only the trainable ones.
    all: bool,
    stack: PathStack,
    out: Vec<(String, HostTensor)>,
    error: Option<anyhow::Error>,
}

impl ModuleVisitor for TrainableCollector {
    fn enter_module(&mut self, name: &str, container_type: &str) {
        self.stack.enter(name, container_type);
    }
    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.stack.exit();
    }
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let value = param.val();
        if !(self.all || value.is_require_grad()) || self.error.is_some() {
            return;
        }
        let shape = value.dims().to_vec();
        match value.into_data().convert::<f32>().try_to_vec::<f32>() {
            Ok(values) => self
                .out
                .push((self.stack.path(), HostTensor { shape, values })),
            Err(e) => self.error = Some(anyhow::anyhow!("reading {}: {e:?}", self.stack.path())),
        }
    }
}

/// Saves every trainable parameter under its burn path (bit-exact f32).
pub fn save_trainable<M: Module>(model: &M, path: &Path) -> Result<()> {
    save_params(model, path, false)
}

/// Saves every float parameter, trainable or frozen, under its burn path (bit-exact f32): a
/// frozen module that changes during a run (TR-DPO's reference) in a checkpoint.
pub fn save_all_params<M: Module>(model: &M, path: &Path) -> Result<()> {
    save_params(model, path, true)
}

fn save_params<M: Module>(model: &M, path: &Path, all: bool) -> Result<()> {
    let mut c = TrainableCollector {
        all,
        stack: PathStack::default(),
        out: Vec::new(),
        error: None,
    };
    model.visit(&mut c);
    if let Some(e) = c.error {
        return Err(e);
    }
    if c.out.is_empty() {
        bail!("the model has no trainable parameters to save");
    }
    save_host_tensors(path, &c.out)
}

struct TrainableLoader<'a> {
    all: bool,
    stack: PathStack,
    source: &'a SafetensorsWeights,
    origin: String,
    loaded: usize,
    error: Option<anyhow::Error>,
}

impl ModuleMapper for TrainableLoader<'_> {
    fn enter_module(&mut self, name: &str, container_type: &str) {
        self.stack.enter(name, container_type);
    }
    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.stack.exit();
    }
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let path = self.stack.path();
        if self.error.is_some() || !(self.all || param.val().is_require_grad()) {
            return param;
        }
        let host = match self.source.tensor(&path) {
            Ok(h) => h,
            Err(e) => {
                self.error =
                    Some(e.context(format!("{}: trainable parameter {path}", self.origin)));
                return param;
            }
        };
        let (id, tensor, mapper) = param.consume();
        if host.shape != tensor.dims().to_vec() {
            self.error = Some(anyhow::anyhow!(
                "{}: {path} has shape {:?}, the model's is {:?}",
                self.origin,
                host.shape,
                tensor.dims()
            ));
            return Param::from_mapped_value(id, tensor, mapper);
        }
        let device = tensor.device();
        let was_autodiff = tensor.is_autodiff();
        let trainable = tensor.is_require_grad();
        let mut value = Tensor::<D>::from_data(
            TensorData::new(host.values, tensor.shape()),
            &device.clone(),
        )
        .inner();
        if was_autodiff {
            value = Tensor::from_inner(value);
            if trainable {
                value = value.require_grad();
            }
        }
        self.loaded += 1;
        Param::from_mapped_value(id, value, mapper)
    }
}

/// Loads what [`save_trainable`] wrote onto the trainable parameters of `model`.
pub fn load_trainable<M: Module>(model: M, path: &Path) -> Result<M> {
    load_params(model, path, false)
}

/// Loads what [`save_all_params`] wrote onto every float parameter of `model` (each keeps
/// whether it is trainable).
pub fn load_all_params<M: Module>(model: M, path: &Path) -> Result<M> {
    load_params(model, path, true)
}

fn load_params<M: Module>(model: M, path: &Path, all: bool) -> Result<M> {
    let source = SafetensorsWeights::open(path)?;
    let mut loader = TrainableLoader {
        all,
        stack: PathStack::default(),
        source: &source,
        origin: path.display().to_string(),
        loaded: 0,
        error: None,
    };
    let model = model.map(&mut loader);
    if let Some(e) = loader.error {
        return Err(e);
    }
    if loader.loaded != source.names().len() {
        bail!(
            "{}: holds {} tensors, the model has {} matching trainable parameters",
            path.display(),
            source.names().len(),
            loader.loaded
        );
    }
    Ok(model)
}

struct FlatCollector {
    stack: PathStack,
    out: std::collections::HashMap<String, Tensor<1>>,
}

impl ModuleVisitor for FlatCollector {
    fn enter_module(&mut self, name: &str, container_type: &str) {
        self.stack.enter(name, container_type);
    }
    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.stack.exit();
    }
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let value = param.val().detach();
        let n = value.shape().num_elements();
        self.out.insert(self.stack.path(), value.reshape([n]));
    }
}

struct PairedMapper<F> {
    stack: PathStack,
    source: std::collections::HashMap<String, Tensor<1>>,
    combine: F,
    error: Option<anyhow::Error>,
}

impl<F: FnMut(Tensor<1>, Tensor<1>) -> Result<Tensor<1>>> ModuleMapper for PairedMapper<F> {
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
        let path = self.stack.path();
        let Some(source) = self.source.remove(&path) else {
            self.error = Some(anyhow::anyhow!(
                "{path}: the source module has no such parameter"
            ));
            return param;
        };
        let (id, tensor, mapper) = param.consume();
        let trainable = tensor.is_require_grad();
        let shape = tensor.shape();
        let n = shape.num_elements();
        match (self.combine)(tensor.clone().detach().reshape([n]), source) {
            Ok(mixed) if mixed.dims() == [n] => {
                let mut value = mixed.detach().reshape(shape);
                if trainable {
                    value = value.require_grad();
                }
                Param::from_mapped_value(id, value, mapper)
            }
            Ok(mixed) => {
                self.error = Some(anyhow::anyhow!(
                    "{path}: combined into {:?} values, expected {n}",
                    mixed.dims()
                ));
                Param::from_mapped_value(id, tensor, mapper)
            }
            Err(e) => {
                self.error = Some(e.context(path));
                Param::from_mapped_value(id, tensor, mapper)
            }
        }
    }
}

/// `target` with every float parameter replaced by `combine(target's, source's)` (both
/// flattened and detached), parameters paired by burn path: e.g. TR-DPO's reference refresh
/// `θ_ref ← α·θ + (1 − α)·θ_ref` from the policy. Each parameter keeps whether it is trainable.
///
/// Errors: a parameter of `target` that `source` lacks, or one `combine` fails on (named by
/// its path); `source` holding parameters `target` lacks.
pub fn combine_params<M: Module>(
    target: M,
    source: &M,
    combine: impl FnMut(Tensor<1>, Tensor<1>) -> Result<Tensor<1>>,
) -> Result<M> {
    let mut collector = FlatCollector {
        stack: PathStack::default(),
        out: Default::default(),
    };
    source.visit(&mut collector);
    let mut mapper = PairedMapper {
        stack: PathStack::default(),
        source: collector.out,
        combine,
        error: None,
    };
    let target = target.map(&mut mapper);
    if let Some(e) = mapper.error {
        return Err(e);
    }
    if let Some(extra) = mapper.source.keys().next() {
        bail!("{extra}: the target module has no such parameter");
    }
    Ok(target)
}
