//! Checkpoints: any burn [`Module`]'s parameters as safetensors with caller-chosen (e.g. Hugging
//! Face) tensor names, written atomically, and loaded back onto a module by path.
//!
//! # Names and layouts
//!
//! burn names a parameter by its dotted field path (`layers.0.self_attn.q_proj.weight`; a `Vec`
//! element is its index). A [`NameMap`] turns each parameter's [`ParamSlot`] (path + the type of
//! the struct holding it) into a [`TensorName`]: the name in the file, and whether the tensor is
//! transposed on the way. burn's `Linear` stores its weight `[d_in, d_out]`, PyTorch's
//! `nn.Linear` `[d_out, d_in]`, so an HF-compatible map transposes exactly the `Linear` weights
//! ([`HfNames`] does). Loading applies the same map in reverse, so one map per backbone serves
//! both directions.
//!
//! # Atomic writes
//!
//! [`write_atomically`] writes to `<path>.tmp` in the target's folder, fsyncs it, renames it over
//! the target and fsyncs the folder: a crash or a failed write leaves the previous file intact
//! (at worst a stale `<path>.tmp` next to it after a crash, overwritten by the next save). One
//! writer per target path at a time.
//!
//! # Files
//!
//! - [`save_safetensors`] / [`load_safetensors`]: one module ↔ one `.safetensors` file (F32,
//!   metadata `format = pt`), streamed tensor by tensor so saving never holds a second full copy
//!   of the model in host memory;
//! - [`apply_weights`]: the loading half over any [`WeightSource`] (safetensors, GGUF, memory);
//! - [`save_checkpoint`] / [`load_checkpoint`]: a folder with `model.safetensors` and a
//!   `checkpoint.json` sidecar ([`CheckpointMeta`]: format version, model kind, config).
//!
//! Modules carrying LoRA adapters are not saved whole (the file would hold only the frozen bases):
//! merge them first ([`crate::lora::merge`]) or save the adapters alone
//! ([`crate::lora::save_adapters`]).

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::tensor::{Tensor, TensorData};
use safetensors::tensor::View;
use serde::{Deserialize, Serialize};

use crate::models::safetensors::SafetensorsWeights;
use crate::models::transpose;
use crate::models::weights::{HostTensor, WeightSource};

/// The container type burn reports when a traversal enters a parameter's reparameterization
/// (e.g. a LoRA adapter, entered as `lora`).
pub(crate) const REPARAMETERIZATION: &str = "Reparameterization";

/// Where a float parameter sits in a module.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ParamSlot<'a> {
    /// burn's dotted path, e.g. `layers.0.self_attn.q_proj.weight`.
    pub path: &'a str,
    /// The type of the struct holding the parameter as burn's traversal reports it, e.g.
    /// `Struct:Linear`, `Struct:Embedding`, `Struct:LayerNorm`.
    pub container: &'a str,
}

impl ParamSlot<'_> {
    /// Whether this is the `weight` of a burn `Linear` (stored `[d_in, d_out]`).
    pub fn is_linear_weight(&self) -> bool {
        self.container == "Struct:Linear" && self.path.rsplit('.').next() == Some("weight")
    }
}

/// What a checkpoint file calls one parameter.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorName {
    /// The tensor's name in the file.
    pub name: String,
    /// Whether the file holds the transpose of burn's (2-D) value: true for a `Linear` weight in
    /// PyTorch layout.
    pub transpose: bool,
}

/// Names a module's parameters in a checkpoint file; `None` leaves a parameter out (not saved,
/// not loaded). Implemented by closures `Fn(&ParamSlot) -> Option<TensorName>`.
pub trait NameMap {
    /// The file name and layout of the parameter at `slot`.
    fn tensor_name(&self, slot: &ParamSlot<'_>) -> Option<TensorName>;
}

impl<F: Fn(&ParamSlot<'_>) -> Option<TensorName>> NameMap for F {
    fn tensor_name(&self, slot: &ParamSlot<'_>) -> Option<TensorName> {
        self(slot)
    }
}

/// burn's own names and layouts: every parameter under its path, nothing transposed.
#[derive(Clone, Copy, Debug, Default)]
pub struct BurnNames;

impl NameMap for BurnNames {
    fn tensor_name(&self, slot: &ParamSlot<'_>) -> Option<TensorName> {
        Some(TensorName {
            name: slot.path.to_string(),
            transpose: false,
        })
    }
}

/// Hugging Face / PyTorch names and layouts: names from a function of burn's path (`None` skips
/// the parameter), `Linear` weights transposed to `[d_out, d_in]`. Backbones provide the function
/// (`layers.0.self_attn.q_proj.weight` → `model.layers.0.self_attn.q_proj.weight`).
#[derive(Clone, Copy, Debug)]
pub struct HfNames<F = fn(&str) -> Option<String>> {
    name_of: F,
}

fn same_name(path: &str) -> Option<String> {
    Some(path.to_string())
}

impl HfNames {
    /// burn's paths as the names, PyTorch layout for `Linear` weights.
    pub fn identity() -> Self {
        Self { name_of: same_name }
    }
}

impl Default for HfNames {
    fn default() -> Self {
        Self::identity()
    }
}

impl<F: Fn(&str) -> Option<String>> HfNames<F> {
    /// Names from `name_of` (burn path → file name, `None` = skip).
    pub fn new(name_of: F) -> Self {
        Self { name_of }
    }
}

impl<F: Fn(&str) -> Option<String>> NameMap for HfNames<F> {
    fn tensor_name(&self, slot: &ParamSlot<'_>) -> Option<TensorName> {
        (self.name_of)(slot.path).map(|name| TensorName {
            name,
            transpose: slot.is_linear_weight(),
        })
    }
}

/// The module path a traversal is at: names and container types of the entered modules.
#[derive(Default)]
pub(crate) struct PathStack {
    entries: Vec<(String, String)>,
    reparam_depth: usize,
}

impl PathStack {
    pub(crate) fn enter(&mut self, name: &str, container: &str) {
        if container == REPARAMETERIZATION {
            self.reparam_depth += 1;
        }
        self.entries.push((name.to_string(), container.to_string()));
    }

    pub(crate) fn exit(&mut self) {
        if let Some((_, container)) = self.entries.pop()
            && container == REPARAMETERIZATION
        {
            self.reparam_depth -= 1;
        }
    }

    /// The dotted path of the current position.
    pub(crate) fn path(&self) -> String {
        let mut path = String::new();
        for (i, (name, _)) in self.entries.iter().enumerate() {
            if i > 0 {
                path.push('.');
            }
            path.push_str(name);
        }
        path
    }

    /// The container type of the innermost entry.
    pub(crate) fn container(&self) -> &str {
        self.entries.last().map_or("", |(_, c)| c.as_str())
    }

    /// Whether the position is inside a reparameterization (a LoRA factor, not a base).
    pub(crate) fn in_reparameterization(&self) -> bool {
        self.reparam_depth > 0
    }

    /// The names of the last `n` entries (fewer near the root).
    pub(crate) fn last_names(&self, n: usize) -> Vec<&str> {
        let start = self.entries.len().saturating_sub(n);
        self.entries[start..]
            .iter()
            .map(|(n, _)| n.as_str())
            .collect()
    }

    /// The path and container type of the entry `n` levels up (0 = innermost).
    pub(crate) fn ancestor(&self, n: usize) -> Option<(String, &str)> {
        let end = self.entries.len().checked_sub(n)?;
        if end == 0 {
            return None;
        }
        let path = self.entries[..end]
            .iter()
            .map(|(n, _)| n.as_str())
            .collect::<Vec<_>>()
            .join(".");
        Some((path, self.entries[end - 1].1.as_str()))
    }
}

/// Reads a tensor as row-major f32 values (any float dtype is converted).
pub(crate) fn tensor_values<const D: usize>(tensor: Tensor<D>) -> Result<Vec<f32>> {
    let dtype = tensor.dtype();
    tensor
        .into_data()
        .try_into_vec_as::<f32>()
        .map_err(|e| anyhow!("reading a {dtype:?} tensor as f32: {e:?}"))
}

/// A parameter as host data in burn's layout.
pub(crate) fn param_host<const D: usize>(param: &Param<Tensor<D>>) -> Result<HostTensor> {
    let value = param.val();
    let shape = value.dims().to_vec();
    Ok(HostTensor {
        shape,
        values: tensor_values(value)?,
    })
}

/// A parameter value written to the file when the serializer asks for it.
struct PendingTensor {
    /// Shape in the file.
    shape: Vec<usize>,
    /// burn's value, flattened, and whether to transpose it (then `shape` is `[cols, rows]`).
    value: Tensor<1>,
    transpose: bool,
    /// Where it comes from, for error messages.
    path: String,
    /// The first failed device read of any tensor of the file (`View::data` cannot return an
    /// error; the writer checks this after serializing and discards the file).
    failure: ReadFailure,
}

/// Shared by the tensors of one file being written.
type ReadFailure = std::rc::Rc<std::cell::RefCell<Option<String>>>;

impl View for PendingTensor {
    fn dtype(&self) -> safetensors::Dtype {
        safetensors::Dtype::F32
    }

    fn shape(&self) -> &[usize] {
        &self.shape
    }

    fn data(&self) -> Cow<'_, [u8]> {
        // `View::data` cannot fail: a failed read is recorded (the writer then fails and removes
        // the temporary file) and zeros of the right length keep the serializer consistent.
        let values = match tensor_values(self.value.clone()) {
            Ok(v) => v,
            Err(e) => {
                self.failure
                    .borrow_mut()
                    .get_or_insert_with(|| format!("reading parameter {}: {e}", self.path));
                return Cow::Owned(vec![0u8; self.data_len()]);
            }
        };
        let values = if self.transpose {
            transpose(&values, self.shape[1], self.shape[0])
        } else {
            values
        };
        Cow::Owned(values.iter().flat_map(|v| v.to_le_bytes()).collect())
    }

    fn data_len(&self) -> usize {
        self.shape.iter().product::<usize>() * 4
    }
}

/// Collects the named parameters of a module for saving.
struct SaveCollector<'a> {
    stack: PathStack,
    names: &'a dyn NameMap,
    out: Vec<(String, PendingTensor)>,
    adapted: Vec<String>,
    error: Option<anyhow::Error>,
    failure: ReadFailure,
}

impl ModuleVisitor for SaveCollector<'_> {
    fn enter_module(&mut self, name: &str, container_type: &str) {
        if container_type == REPARAMETERIZATION {
            self.adapted.push(self.stack.path());
        }
        self.stack.enter(name, container_type);
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.stack.exit();
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if self.error.is_some() || self.stack.in_reparameterization() {
            return;
        }
        let path = self.stack.path();
        let slot = ParamSlot {
            path: &path,
            container: self.stack.container(),
        };
        let Some(TensorName { name, transpose }) = self.names.tensor_name(&slot) else {
            return;
        };
        let value = param.val();
        let dims = value.dims();
        if !value.dtype().is_float() {
            self.error = Some(anyhow!(
                "parameter {path} is stored as {:?}; only float parameters can be saved \
                 (dequantize the module first)",
                value.dtype()
            ));
            return;
        }
        if transpose && D != 2 {
            self.error = Some(anyhow!(
                "the name map transposes {path}, a {D}-D parameter (only matrices can be)"
            ));
            return;
        }
        let shape = if transpose {
            vec![dims[1], dims[0]]
        } else {
            dims.to_vec()
        };
        let n = dims.iter().product::<usize>();
        self.out.push((
            name,
            PendingTensor {
                shape,
                value: value.reshape([n]),
                transpose,
                path,
                failure: self.failure.clone(),
            },
        ));
    }
}

/// A name no other writer (thread or process) uses at the same time: `.<name>.tmp-<pid>-<n>`.
pub fn unique_temp_name(name: &std::ffi::OsStr) -> std::ffi::OsString {
    let mut tmp = std::ffi::OsString::from(".");
    tmp.push(name);
    tmp.push(format!(".tmp-{}", unique_suffix()));
    tmp
}

/// `<pid>-<n>`: unique among this process's writers, and across processes.
pub fn unique_suffix() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    format!(
        "{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// Gives a file the usual permissions (`rw-r--r--`); some writers (safetensors' serializer)
/// create private files.
pub fn set_usual_permissions(path: &Path) -> Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(path, fs::Permissions::from_mode(0o644))
            .with_context(|| format!("setting the permissions of {}", path.display()))?;
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}

/// Writes through a temporary file: `write` gets a temporary path in the target's folder with
/// a name unique to this writer ([`unique_temp_name`], so two writers never clobber each other's
/// half-written file) to create and fill; on success the file gets the usual permissions, is
/// fsynced and renamed over `path`, and the folder is fsynced. On failure the temporary file is
/// removed and `path` is untouched.
pub fn write_atomically(path: &Path, write: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let file_name = path
        .file_name()
        .with_context(|| format!("{} has no file name", path.display()))?;
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let tmp = dir.join(unique_temp_name(file_name));
    let result = write(&tmp).and_then(|()| {
        set_usual_permissions(&tmp)?;
        File::open(&tmp)
            .and_then(|f| f.sync_all())
            .with_context(|| format!("syncing {}", tmp.display()))?;
        fs::rename(&tmp, path)
            .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))?;
        // Make the rename itself durable; not every platform can open a folder, hence no error.
        if let Ok(d) = File::open(&dir) {
            d.sync_all().ok();
        }
        Ok(())
    });
    if result.is_err() && tmp.is_file() {
        fs::remove_file(&tmp).ok();
    }
    result.with_context(|| format!("writing {}", path.display()))
}

/// [`write_atomically`] for a byte buffer.
pub fn write_bytes_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomically(path, |tmp| {
        let mut f = File::create(tmp).with_context(|| format!("creating {}", tmp.display()))?;
        f.write_all(bytes)
            .with_context(|| format!("writing {}", tmp.display()))
    })
}

/// Fails when two entries share a name.
fn check_unique<'a>(names: impl Iterator<Item = (&'a str, &'a str)>) -> Result<()> {
    let mut seen: BTreeMap<&str, &str> = BTreeMap::new();
    for (name, origin) in names {
        if let Some(first) = seen.insert(name, origin) {
            bail!("parameters {first} and {origin} are both named {name} in the file");
        }
    }
    Ok(())
}

/// The `__metadata__` of the files plumbline writes (`format = pt`, which `transformers` and
/// `peft` expect).
fn file_metadata() -> HashMap<String, String> {
    HashMap::from([
        ("format".to_string(), "pt".to_string()),
        ("producer".to_string(), "plumbline".to_string()),
    ])
}

/// Saves the float parameters of `module` that `names` names to a safetensors file at `path`
/// (F32), atomically; returns the number of tensors written. Parameters are read one at a time
/// while the file is written. Fails on a module carrying LoRA adapters (see the module docs), on
/// two parameters given one name, and on non-float (quantized) parameters.
pub fn save_safetensors<M: Module>(module: &M, path: &Path, names: &dyn NameMap) -> Result<usize> {
    let mut collector = SaveCollector {
        stack: PathStack::default(),
        names,
        out: Vec::new(),
        adapted: Vec::new(),
        error: None,
        failure: ReadFailure::default(),
    };
    module.visit(&mut collector);
    let failure = collector.failure.clone();
    let context = || format!("saving {}", path.display());
    if let Some(e) = collector.error {
        return Err(e).with_context(context);
    }
    if !collector.adapted.is_empty() {
        bail!(
            "saving {}: the module carries LoRA adapters (on {}); merge them first \
             (lora::merge) or save the adapters alone (lora::save_adapters)",
            path.display(),
            collector.adapted.join(", ")
        );
    }
    if collector.out.is_empty() {
        bail!("saving {}: the name map names no parameter", path.display());
    }
    check_unique(
        collector
            .out
            .iter()
            .map(|(n, t)| (n.as_str(), t.path.as_str())),
    )
    .with_context(context)?;
    let count = collector.out.len();
    write_atomically(path, |tmp| {
        safetensors::serialize_to_file(collector.out, Some(file_metadata()), tmp)
            .map_err(|e| anyhow!("serializing safetensors to {}: {e}", tmp.display()))?;
        match failure.borrow_mut().take() {
            Some(e) => bail!("{e}"),
            None => Ok(()),
        }
    })?;
    Ok(count)
}

/// Writes named host tensors (already in file layout) as a safetensors file, atomically.
pub fn save_host_tensors(path: &Path, tensors: &[(String, HostTensor)]) -> Result<()> {
    check_unique(tensors.iter().map(|(n, _)| (n.as_str(), n.as_str())))
        .with_context(|| format!("saving {}", path.display()))?;
    let bytes: Vec<Vec<u8>> = tensors
        .iter()
        .map(|(_, t)| t.values.iter().flat_map(|v| v.to_le_bytes()).collect())
        .collect();
    let views = tensors
        .iter()
        .zip(&bytes)
        .map(|((name, t), b)| {
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, t.shape.clone(), b)
                .map(|v| (name.clone(), v))
                .map_err(|e| anyhow!("tensor {name}: {e}"))
        })
        .collect::<Result<Vec<_>>>()?;
    write_atomically(path, |tmp| {
        safetensors::serialize_to_file(views, Some(file_metadata()), tmp)
            .map_err(|e| anyhow!("serializing safetensors to {}: {e}", tmp.display()))
    })
}

/// Replaces the parameters a [`NameMap`] names with tensors of a [`WeightSource`].
struct WeightLoader<'a> {
    stack: PathStack,
    source: &'a dyn WeightSource,
    names: &'a dyn NameMap,
    origin: &'a str,
    loaded: usize,
    error: Option<anyhow::Error>,
}

impl WeightLoader<'_> {
    fn load<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Result<Param<Tensor<D>>> {
        let path = self.stack.path();
        let slot = ParamSlot {
            path: &path,
            container: self.stack.container(),
        };
        let Some(TensorName { name, transpose }) = self.names.tensor_name(&slot) else {
            return Ok(param);
        };
        let origin = self.origin;
        if !self.source.contains(&name) {
            bail!("{origin}: tensor {name} (for the module's {path}) is missing");
        }
        let dims = param.lazy_shape().to_vec();
        if transpose && D != 2 {
            bail!("the name map transposes {path}, a {D}-D parameter (only matrices can be)");
        }
        let expected = if transpose {
            vec![dims[1], dims[0]]
        } else {
            dims.clone()
        };
        let host = self
            .source
            .tensor(&name)
            .with_context(|| format!("{origin}: reading tensor {name}"))?;
        if host.shape != expected {
            bail!(
                "{origin}: tensor {name} has shape {:?}, the module's {path} needs {expected:?}{}",
                host.shape,
                if transpose {
                    " (PyTorch layout of a Linear weight)"
                } else {
                    ""
                }
            );
        }
        let values = if transpose {
            crate::models::transpose(&host.values, expected[0], expected[1])
        } else {
            host.values
        };
        let device = param.lazy_device();
        let data = TensorData::new(values, dims);
        let tensor = if param.is_initialized() {
            let dtype = param.base().dtype();
            if !dtype.is_float() {
                bail!("the module's {path} is stored as {dtype:?}; only float parameters load");
            }
            Tensor::<D>::from_data(data, (&device, dtype))
        } else {
            Tensor::<D>::from_data(data, &device)
        };
        let id = param.id;
        self.loaded += 1;
        Ok(param.transform_for_load(tensor, id))
    }
}

impl ModuleMapper for WeightLoader<'_> {
    fn enter_module(&mut self, name: &str, container_type: &str) {
        self.stack.enter(name, container_type);
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.stack.exit();
    }

    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        if self.error.is_some() || self.stack.in_reparameterization() {
            return param;
        }
        let keep = param.clone();
        match self.load(param) {
            Ok(p) => p,
            Err(e) => {
                self.error = Some(e);
                keep
            }
        }
    }
}

/// Loads every parameter `names` names from `source` into `module` (values converted to the
/// parameter's dtype, put on its device, its trainability kept). A named tensor that is missing
/// or has the wrong shape is an error naming `origin` (e.g. the file), the tensor and the
/// parameter; tensors of the source no parameter asks for are ignored. LoRA factors are left as
/// they are (bases load).
pub fn apply_weights<M: Module>(
    module: M,
    source: &dyn WeightSource,
    names: &dyn NameMap,
    origin: &str,
) -> Result<M> {
    let mut loader = WeightLoader {
        stack: PathStack::default(),
        source,
        names,
        origin,
        loaded: 0,
        error: None,
    };
    let module = module.map(&mut loader);
    if let Some(e) = loader.error {
        return Err(e);
    }
    if loader.loaded == 0 {
        bail!("{origin}: the name map names no parameter of the module");
    }
    Ok(module)
}

/// Loads a safetensors file (or a folder of shards) written by [`save_safetensors`] or by
/// PyTorch, through the same [`NameMap`]; see [`apply_weights`]. A truncated or corrupt file is
/// an error naming it.
pub fn load_safetensors<M: Module>(module: M, path: &Path, names: &dyn NameMap) -> Result<M> {
    let source = SafetensorsWeights::open(path)?;
    apply_weights(module, &source, names, &path.display().to_string())
}

/// Version of the [`CheckpointMeta`] layout written by this build.
pub const CHECKPOINT_FORMAT_VERSION: u32 = 1;
/// The weights file of a checkpoint folder.
pub const CHECKPOINT_WEIGHTS: &str = "model.safetensors";
/// The sidecar of a checkpoint folder.
pub const CHECKPOINT_META: &str = "checkpoint.json";

/// `checkpoint.json`: what a checkpoint folder holds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CheckpointMeta {
    /// [`CHECKPOINT_FORMAT_VERSION`] at writing.
    pub format_version: u32,
    /// The model family, e.g. `llama`, `bert` (free text; callers check it).
    pub model_kind: String,
    /// The model's config (e.g. the HF `config.json` fields).
    pub config: serde_json::Value,
    /// Number of tensors in the weights file.
    pub tensors: usize,
    /// Size in bytes of the weights file, to detect a sidecar that does not describe it.
    pub weights_bytes: u64,
}

/// Saves `module` into folder `dir`: [`CHECKPOINT_WEIGHTS`] (via [`save_safetensors`]), then
/// [`CHECKPOINT_META`], each atomically.
pub fn save_checkpoint<M: Module>(
    dir: &Path,
    module: &M,
    names: &dyn NameMap,
    model_kind: &str,
    config: &impl Serialize,
) -> Result<CheckpointMeta> {
    let weights = dir.join(CHECKPOINT_WEIGHTS);
    let tensors = save_safetensors(module, &weights, names)?;
    let meta = CheckpointMeta {
        format_version: CHECKPOINT_FORMAT_VERSION,
        model_kind: model_kind.to_string(),
        config: serde_json::to_value(config).context("serializing the model config")?,
        tensors,
        weights_bytes: fs::metadata(&weights)
            .with_context(|| format!("reading {}", weights.display()))?
            .len(),
    };
    write_bytes_atomically(
        &dir.join(CHECKPOINT_META),
        serde_json::to_string_pretty(&meta)?.as_bytes(),
    )?;
    Ok(meta)
}

/// Reads and checks `dir/checkpoint.json` (version, and that it describes the weights file).
pub fn read_checkpoint_meta(dir: &Path) -> Result<CheckpointMeta> {
    let path = dir.join(CHECKPOINT_META);
    let text = fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let meta: CheckpointMeta = serde_json::from_str(&text)
        .with_context(|| format!("{}: not a plumbline checkpoint sidecar", path.display()))?;
    if meta.format_version != CHECKPOINT_FORMAT_VERSION {
        bail!(
            "{}: checkpoint format version {} (this build reads {CHECKPOINT_FORMAT_VERSION})",
            path.display(),
            meta.format_version
        );
    }
    let weights = dir.join(CHECKPOINT_WEIGHTS);
    let size = fs::metadata(&weights)
        .with_context(|| format!("reading {}", weights.display()))?
        .len();
    if size != meta.weights_bytes {
        bail!(
            "{}: {} is {size} bytes, the sidecar says {} (an interrupted save?)",
            path.display(),
            weights.display(),
            meta.weights_bytes
        );
    }
    Ok(meta)
}

/// Loads a folder written by [`save_checkpoint`] into `module`; returns the sidecar too, for the
/// caller to check the model kind and config.
pub fn load_checkpoint<M: Module>(
    dir: &Path,
    module: M,
    names: &dyn NameMap,
) -> Result<(M, CheckpointMeta)> {
    let meta = read_checkpoint_meta(dir)?;
    let module = load_safetensors(module, &dir.join(CHECKPOINT_WEIGHTS), names)?;
    Ok((module, meta))
}

/// Raw bits of every float parameter value, by path (LoRA factors under `….lora.a` / `.b`); for
/// exactness tests.
#[cfg(test)]
pub(crate) fn param_bits<M: Module>(module: &M) -> Vec<(String, Vec<u32>)> {
    struct Bits {
        stack: PathStack,
        out: Vec<(String, Vec<u32>)>,
    }
    impl ModuleVisitor for Bits {
        fn enter_module(&mut self, name: &str, container_type: &str) {
            self.stack.enter(name, container_type);
        }
        fn exit_module(&mut self, _name: &str, _container_type: &str) {
            self.stack.exit();
        }
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            let values = tensor_values(param.val()).unwrap();
            self.out.push((
                self.stack.path(),
                values.iter().map(|v| v.to_bits()).collect(),
            ));
        }
    }
    let mut bits = Bits {
        stack: PathStack::default(),
        out: Vec::new(),
    };
    module.visit(&mut bits);
    bits.out
}

/// Raw bits of a tensor's values.
#[cfg(test)]
pub(crate) fn bits<const D: usize>(tensor: Tensor<D>) -> Vec<u32> {
    tensor_values(tensor)
        .unwrap()
        .iter()
        .map(|v| v.to_bits())
        .collect()
}

/// A small module with every kind of parameter the backbones have, for tests generic over
/// modules: an embedding, a `Vec` of blocks with attention projections (query/key/value/out),
/// a LayerNorm, an MLP (one Linear without bias), a bare 1-D parameter, and a head.
#[cfg(test)]
pub(crate) mod test_net {
    use burn::module::{Module, Param};
    use burn::nn::{Embedding, EmbeddingConfig, LayerNorm, LayerNormConfig, Linear, LinearConfig};
    use burn::tensor::activation::{gelu, softmax};
    use burn::tensor::{Device, Distribution, Int, Tensor, TensorData};

    /// Single-head self-attention.
    #[derive(Module, Debug)]
    pub struct Attention {
        pub query: Linear,
        pub key: Linear,
        pub value: Linear,
        pub out: Linear,
    }

    /// Two-layer feed-forward.
    #[derive(Module, Debug)]
    pub struct Mlp {
        pub up: Linear,
        pub down: Linear,
    }

    /// Attention, norm, MLP with a learned gate.
    #[derive(Module, Debug)]
    pub struct Block {
        pub attn: Attention,
        pub norm: LayerNorm,
        pub mlp: Mlp,
        pub gate: Param<Tensor<1>>,
    }

    /// Token ids → logits.
    #[derive(Module, Debug)]
    pub struct TinyNet {
        pub embed: Embedding,
        pub blocks: Vec<Block>,
        pub head: Linear,
    }

    pub const VOCAB: usize = 11;

    impl TinyNet {
        /// Freshly initialised (random) with width `d`.
        pub fn new(d: usize, device: &Device) -> Self {
            let linear = |i, o| LinearConfig::new(i, o).init(device);
            let blocks = (0..2)
                .map(|_| Block {
                    attn: Attention {
                        query: linear(d, d),
                        key: linear(d, d),
                        value: linear(d, d),
                        out: linear(d, d),
                    },
                    norm: LayerNormConfig::new(d).init(device),
                    mlp: Mlp {
                        up: linear(d, 2 * d),
                        down: LinearConfig::new(2 * d, d).with_bias(false).init(device),
                    },
                    gate: Param::from_tensor(Tensor::random(
                        [d],
                        Distribution::Uniform(0.5, 1.5),
                        device,
                    )),
                })
                .collect();
            Self {
                embed: EmbeddingConfig::new(VOCAB, d).init(device),
                blocks,
                head: linear(d, VOCAB),
            }
        }

        /// Logits `[B, T, VOCAB]`.
        pub fn forward(&self, ids: Tensor<2, Int>) -> Tensor<3> {
            let mut x = self.embed.forward(ids);
            let d = x.dims()[2];
            for b in &self.blocks {
                let q = b.attn.query.forward(x.clone());
                let k = b.attn.key.forward(x.clone());
                let v = b.attn.value.forward(x.clone());
                let scores = q.matmul(k.swap_dims(1, 2)).div_scalar((d as f64).sqrt());
                let h = softmax(scores, 2).matmul(v);
                x = b.norm.forward(x + b.attn.out.forward(h));
                let m = b.mlp.down.forward(gelu(b.mlp.up.forward(x.clone())));
                x = x + m * b.gate.val().reshape([1, 1, d]);
            }
            self.head.forward(x)
        }
    }

    /// A fixed `[2, 5]` batch of ids.
    pub fn ids(device: &Device) -> Tensor<2, Int> {
        Tensor::from_data(
            TensorData::new(vec![1i64, 4, 2, 9, 3, 0, 7, 7, 5, 10], [2, 5]),
            device,
        )
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::test_net::{TinyNet, ids};
    use super::*;
    use crate::device::test_device;
    use crate::models::llama::LlamaModel;
    use crate::models::llama::tests::{tiny_config, tiny_model, tiny_weights};
    use burn::tensor::Int;

    /// A fresh folder under the system temp dir.
    pub(crate) fn temp_dir(tag: &str) -> PathBuf {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let d = std::env::temp_dir().join(format!("plumb-{tag}-{}-{n}", std::process::id()));
        fs::remove_dir_all(&d).ok();
        fs::create_dir_all(&d).unwrap();
        d
    }

    fn files(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    fn out(net: &TinyNet) -> Vec<u32> {
        bits(net.forward(ids(&test_device())))
    }

    #[test]
    fn a_module_round_trips_bit_exactly_in_both_layouts() {
        let dir = temp_dir("ckpt");
        let device = test_device();
        let net = TinyNet::new(8, &device);
        for (file, names) in [
            ("hf.safetensors", &HfNames::identity() as &dyn NameMap),
            ("burn.safetensors", &BurnNames),
        ] {
            let path = dir.join(file);
            let n = save_safetensors(&net, &path, names).unwrap();
            assert_eq!(n, net_param_count(&net));
            let fresh = TinyNet::new(8, &device);
            assert_ne!(out(&fresh), out(&net));
            let loaded = load_safetensors(fresh, &path, names).unwrap();
            assert_eq!(param_bits(&loaded), param_bits(&net));
            assert_eq!(out(&loaded), out(&net), "outputs are bit-identical");
        }
        // PyTorch layout: a Linear weight is [d_out, d_in].
        let hf = SafetensorsWeights::open(dir.join("hf.safetensors")).unwrap();
        assert_eq!(hf.tensor("blocks.0.mlp.up.weight").unwrap().shape, [16, 8]);
        assert_eq!(hf.tensor("embed.weight").unwrap().shape, [11, 8]);
        let burn = SafetensorsWeights::open(dir.join("burn.safetensors")).unwrap();
        assert_eq!(
            burn.tensor("blocks.0.mlp.up.weight").unwrap().shape,
            [8, 16]
        );
        assert_eq!(
            files(&dir),
            ["burn.safetensors", "hf.safetensors"],
            "no temp file left"
        );
        fs::remove_dir_all(&dir).ok();
    }

    fn net_param_count(net: &TinyNet) -> usize {
        param_bits(net).len()
    }

    #[test]
    fn truncated_files_missing_tensors_and_shape_mismatches_are_clear_errors() {
        let dir = temp_dir("ckpt-bad");
        let path = dir.join("model.safetensors");
        let device = test_device();
        let net = TinyNet::new(8, &device);
        save_safetensors(&net, &path, &HfNames::identity()).unwrap();

        // Truncated: the error names the file.
        let bytes = fs::read(&path).unwrap();
        let cut = dir.join("cut.safetensors");
        fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
        let err = format!(
            "{:#}",
            load_safetensors(TinyNet::new(8, &device), &cut, &HfNames::identity()).unwrap_err()
        );
        assert!(err.contains("cut.safetensors"), "{err}");

        // Shape mismatch: the error names the file, the tensor and both shapes.
        let err = load_safetensors(TinyNet::new(6, &device), &path, &HfNames::identity())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("model.safetensors: tensor embed.weight has shape [11, 8]")
                && err.contains("[11, 6]"),
            "{err}"
        );

        // A transposed Linear weight read without transposition is a mismatch too.
        let err = load_safetensors(TinyNet::new(8, &device), &path, &BurnNames)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("tensor blocks.0.mlp.up.weight has shape [16, 8]"),
            "{err}"
        );

        // Missing tensor: saved without the head.
        let no_head = HfNames::new(|p: &str| (!p.starts_with("head")).then(|| p.to_string()));
        save_safetensors(&net, &path, &no_head).unwrap();
        let err = load_safetensors(TinyNet::new(8, &device), &path, &HfNames::identity())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(
                "model.safetensors: tensor head.weight (for the module's head.weight) is missing"
            ),
            "{err}"
        );
        // ...and loads with the same map.
        assert!(load_safetensors(TinyNet::new(8, &device), &path, &no_head).is_ok());
        fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn a_failed_write_keeps_the_previous_file_and_leaves_no_temp_file() {
        let dir = temp_dir("ckpt-atomic");
        let path = dir.join("model.safetensors");
        let device = test_device();
        let net = TinyNet::new(8, &device);
        save_safetensors(&net, &path, &HfNames::identity()).unwrap();
        let before = fs::read(&path).unwrap();

        // Serialization fails: two parameters mapped to one name.
        let clash = HfNames::new(|p: &str| Some(p.replace("key", "query")));
        let err = save_safetensors(&TinyNet::new(8, &device), &path, &clash).unwrap_err();
        assert!(format!("{err:#}").contains("are both named blocks.0.attn.query.weight"));
        assert_eq!(fs::read(&path).unwrap(), before);
        assert_eq!(files(&dir), ["model.safetensors"]);

        // The writer dies halfway through the temp file.
        let err = write_atomically(&path, |tmp| {
            fs::write(tmp, &before[..before.len() / 2])?;
            bail!("disk full")
        })
        .unwrap_err();
        assert!(format!("{err:#}").contains("disk full"));
        assert_eq!(fs::read(&path).unwrap(), before);
        assert_eq!(files(&dir), ["model.safetensors"]);

        // Two writers never share a temporary name (each gets `.<name>.tmp-<pid>-<n>`), so a
        // stale or concurrent temp file is never clobbered or renamed by the other.
        let a = unique_temp_name(std::ffi::OsStr::new("model.safetensors"));
        let b = unique_temp_name(std::ffi::OsStr::new("model.safetensors"));
        assert_ne!(a, b);
        assert!(a.to_string_lossy().starts_with(".model.safetensors.tmp-"));

        // A successful save replaces the file.
        save_safetensors(&TinyNet::new(8, &device), &path, &HfNames::identity()).unwrap();
        assert_ne!(fs::read(&path).unwrap(), before);
        assert_eq!(files(&dir), ["model.safetensors"]);
        // Written with the usual permissions, not the serializer's private 0600.
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(
                fs::metadata(&path).unwrap().permissions().mode() & 0o777,
                0o644
            );
        }
        fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn checkpoint_folders_carry_a_sidecar() {
        let dir = temp_dir("ckpt-folder");
        let device = test_device();
        let net = TinyNet::new(8, &device);
        let config = serde_json::json!({"d": 8});
        let meta = save_checkpoint(&dir, &net, &HfNames::identity(), "tiny", &config).unwrap();
        assert_eq!(meta.tensors, net_param_count(&net));
        let (loaded, read) =
            load_checkpoint(&dir, TinyNet::new(8, &device), &HfNames::identity()).unwrap();
        assert_eq!(read, meta);
        assert_eq!(read.config, config);
        assert_eq!(out(&loaded), out(&net));
        assert_eq!(files(&dir), [CHECKPOINT_META, CHECKPOINT_WEIGHTS]);

        // A weights file the sidecar does not describe.
        save_safetensors(
            &TinyNet::new(8, &device),
            &dir.join(CHECKPOINT_WEIGHTS),
            &BurnNames,
        )
        .unwrap();
        fs::write(
            dir.join(CHECKPOINT_WEIGHTS),
            [fs::read(dir.join(CHECKPOINT_WEIGHTS)).unwrap(), vec![0; 8]].concat(),
        )
        .unwrap();
        let err = read_checkpoint_meta(&dir).unwrap_err().to_string();
        assert!(err.contains("an interrupted save?"), "{err}");
        fs::remove_dir_all(&dir).ok();
    }

    fn llama_logits(model: &LlamaModel) -> Vec<u32> {
        let device = test_device();
        let ids = Tensor::<2, Int>::from_data(
            TensorData::new(vec![1i64, 5, 2, 9, 3, 30], [1, 6]),
            &device,
        );
        bits(model.forward(ids, Tensor::ones([1, 6], &device)))
    }

    #[test]
    fn llama_saves_as_an_hf_checkpoint_its_own_loader_reads() {
        let dir = temp_dir("ckpt-llama");
        let path = dir.join("model.safetensors");
        let device = test_device();
        let model = tiny_model(&device);
        save_safetensors(
            &model,
            &path,
            &HfNames::new(|p: &str| Some(crate::models::llama::hf_name(p))),
        )
        .unwrap();

        // The file is what transformers would write: the backbone's own HF loader reads it.
        let st = SafetensorsWeights::open(&path).unwrap();
        assert_eq!(
            st.tensor("model.layers.0.self_attn.k_proj.weight")
                .unwrap()
                .shape,
            [8, 16]
        );
        let c = tiny_config();
        let reread = LlamaModel::from_source(&st, &c, &device).unwrap();
        assert_eq!(llama_logits(&reread), llama_logits(&model));

        // And the generic loader puts it back into a differently initialised model.
        let other = LlamaModel::from_source(&tiny_weights(&c, 99), &c, &device).unwrap();
        assert_ne!(llama_logits(&other), llama_logits(&model));
        let loaded = load_safetensors(
            other,
            &path,
            &HfNames::new(|p: &str| Some(crate::models::llama::hf_name(p))),
        )
        .unwrap();
        assert_eq!(llama_logits(&loaded), llama_logits(&model));
        fs::remove_dir_all(&dir).ok();
    }
}
