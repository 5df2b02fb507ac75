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
        if !value.is_require_grad() || self.error.is_some() {
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
    let mut c = TrainableCollector {
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
        if self.error.is_some() || !param.val().is_require_grad() {
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
        let mut value = Tensor::<D>::from_data(
            TensorData::new(host.values, tensor.shape()),
            &device.clone(),
        )
        .inner();
        if was_autodiff {
            value = Tensor::from_inner(value).require_grad();
        }
        self.loaded += 1;
        Param::from_mapped_value(id, value, mapper)
    }
}

/// Loads what [`save_trainable`] wrote onto the trainable parameters of `model`.
pub fn load_trainable<M: Module>(model: M, path: &Path) -> Result<M> {
    let source = SafetensorsWeights::open(path)?;
    let mut loader = TrainableLoader {
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
