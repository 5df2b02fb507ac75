//! What a task reports, and the JSONL log it goes to.
//!
//! A task's [`LossOutput`] carries the micro-batch's mean loss, the weight that mean is over
//! (examples, sequences or tokens) and any number of named [`Metric`]s, each itself a weighted
//! mean held on the device. The trainer combines micro-batches as weighted means and reads the
//! whole step — loss, metrics, gradient norm — from the device in **one** transfer
//! ([`StepMetrics::read`]).
//!
//! `metrics.jsonl` is the contract of a run: one object per line, `"kind"` (`train`, `eval`,
//! `collect`, `note`), `"step"` (optimizer steps done), then named numbers. Plots and reports
//! are views of it.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use burn::tensor::Tensor;

use crate::checkpoint::write_bytes_atomically;

/// A named value of a micro-batch: the mean of `value` over `weight` units (a `[1]` tensor on
/// the model's device, or a host number).
#[derive(Clone, Debug)]
pub struct Metric {
    pub name: String,
    pub value: MetricValue,
    /// The units the mean is over (examples, tokens, …); micro-batches combine by it.
    pub weight: f64,
}

/// Where a metric's value lives. (A step holds a handful, so the variants' size difference
/// costs nothing.)
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug)]
pub enum MetricValue {
    /// A `[1]` tensor, read with the step's other values in one transfer.
    Device(Tensor<1>),
    /// A number the task already has on the host.
    Host(f64),
}

impl Metric {
    /// A device metric (any shape with one element; detached from the graph).
    pub fn device(name: impl Into<String>, value: Tensor<1>, weight: f64) -> Self {
        Self {
            name: name.into(),
            value: MetricValue::Device(value.detach()),
            weight,
        }
    }

    /// A host metric.
    pub fn host(name: impl Into<String>, value: f64, weight: f64) -> Self {
        Self {
            name: name.into(),
            value: MetricValue::Host(value),
            weight,
        }
    }
}

/// The keys of a train record that measure wall time (they differ between two runs of the same
/// computation: a resumed run matches an uninterrupted one in everything else).
pub const WALL_TIME_KEYS: [&str; 5] = [
    "elapsed_s",
    "step_s",
    "examples_per_s",
    "tokens_per_s",
    "rollout_tokens_per_s",
];

/// `record` without its [`WALL_TIME_KEYS`].
pub fn without_wall_time(mut record: serde_json::Value) -> serde_json::Value {
    if let Some(map) = record.as_object_mut() {
        for key in WALL_TIME_KEYS {
            map.remove(key);
        }
    }
    record
}

/// What a task's loss returns for one micro-batch.
#[derive(Debug)]
pub struct LossOutput {
    /// The mean loss over the micro-batch's units (`[1]`, differentiable).
    pub loss: Tensor<1>,
    /// How many units that mean is over (examples for a per-example mean, tokens for a
    /// token mean); the step's gradient is `Σ weightᵢ·∇lossᵢ / Σ weightᵢ`.
    pub weight: f64,
    /// Named values to log (weighted means over the step).
    pub metrics: Vec<Metric>,
    /// Tokens the micro-batch ran through the model (padding excluded; 0 when the task does not
    /// count them): summed over the step and logged as `tokens` and `tokens_per_s`.
    pub tokens: usize,
}

impl LossOutput {
    /// A loss with its weight and no metrics.
    pub fn new(loss: Tensor<1>, weight: f64) -> Self {
        Self {
            loss,
            weight,
            metrics: Vec::new(),
            tokens: 0,
        }
    }

    /// Sets the number of tokens the micro-batch processed.
    pub fn with_tokens(mut self, tokens: usize) -> Self {
        self.tokens = tokens;
        self
    }

    /// Adds a metric.
    pub fn with(mut self, metric: Metric) -> Self {
        self.metrics.push(metric);
        self
    }
}

/// The weighted sums of one optimizer step, on the device until [`StepMetrics::read`].
#[derive(Default)]
pub struct StepMetrics {
    /// `Σ weightᵢ · lossᵢ` as a device scalar.
    loss: Option<Tensor<1>>,
    weight: f64,
    /// name → (device Σ w·v, host Σ w·v, Σ w)
    named: BTreeMap<String, (Option<Tensor<1>>, f64, f64)>,
    tokens: usize,
}

/// A step's values on the host.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StepValues {
    /// The step's mean loss.
    pub loss: f64,
    /// The total weight.
    pub weight: f64,
    /// Weighted means of the named metrics.
    pub metrics: BTreeMap<String, f64>,
    /// `‖g‖₂` when a gradient norm was read with the step.
    pub grad_norm: Option<f64>,
    /// Tokens processed by the step's micro-batches (0 when the task does not count them).
    pub tokens: usize,
}

fn add(a: Option<Tensor<1>>, b: Tensor<1>) -> Option<Tensor<1>> {
    Some(match a {
        Some(a) => a + b,
        None => b,
    })
}

impl StepMetrics {
    /// Adds a micro-batch (its loss detached).
    pub fn add(&mut self, loss: &Tensor<1>, weight: f64, metrics: Vec<Metric>) -> Result<()> {
        if !(weight.is_finite() && weight >= 0.0) {
            bail!("a micro-batch weight must be a finite number ≥ 0, got {weight}");
        }
        self.loss = add(
            self.loss.take(),
            loss.clone().detach().reshape([1]).mul_scalar(weight),
        );
        self.weight += weight;
        for m in metrics {
            let entry = self.named.entry(m.name).or_insert((None, 0.0, 0.0));
            match m.value {
                MetricValue::Device(t) => {
                    entry.0 = add(entry.0.take(), t.reshape([1]).mul_scalar(m.weight))
                }
                MetricValue::Host(v) => entry.1 += v * m.weight,
            }
            entry.2 += m.weight;
        }
        Ok(())
    }

    /// Counts tokens a micro-batch processed.
    pub fn add_tokens(&mut self, tokens: usize) {
        self.tokens += tokens;
    }

    /// The step's total weight so far.
    pub fn weight(&self) -> f64 {
        self.weight
    }

    /// Reads every value (and `‖g‖₂²`, when given) from the device in one transfer.
    pub fn read(self, grad_squared_norm: Option<Tensor<1>>) -> Result<StepValues> {
        let mut parts: Vec<Tensor<1>> = Vec::new();
        let loss_index = self.loss.map(|t| {
            parts.push(t);
            parts.len() - 1
        });
        let norm_index = grad_squared_norm.map(|t| {
            parts.push(t.reshape([1]));
            parts.len() - 1
        });
        let mut slots = Vec::new();
        for (name, (device, host, weight)) in self.named {
            let index = device.map(|t| {
                parts.push(t);
                parts.len() - 1
            });
            slots.push((name, index, host, weight));
        }
        let values: Vec<f32> = if parts.is_empty() {
            Vec::new()
        } else {
            Tensor::cat(parts, 0)
                .into_data()
                .convert::<f32>()
                .try_to_vec::<f32>()
                .map_err(|e| anyhow::anyhow!("reading the step's metrics: {e:?}"))?
        };
        let total = self.weight;
        let mean = |sum: f64, weight: f64| if weight > 0.0 { sum / weight } else { f64::NAN };
        let mut metrics = BTreeMap::new();
        for (name, index, host, weight) in slots {
            let sum = host + index.map_or(0.0, |i| values[i] as f64);
            metrics.insert(name, mean(sum, weight));
        }
        Ok(StepValues {
            loss: loss_index.map_or(f64::NAN, |i| mean(values[i] as f64, total)),
            weight: total,
            metrics,
            grad_norm: norm_index.map(|i| (values[i] as f64).max(0.0).sqrt()),
            tokens: self.tokens,
        })
    }
}

/// Append-only JSONL metrics, flushed per line.
pub struct MetricsLog {
    file: std::fs::File,
    path: PathBuf,
}

impl MetricsLog {
    /// Opens (creating) `path` for appending.
    pub fn open(path: &Path) -> Result<Self> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("opening {}", path.display()))?;
        Ok(Self {
            file,
            path: path.to_path_buf(),
        })
    }

    /// Appends one record.
    pub fn write(&mut self, value: &serde_json::Value) -> Result<()> {
        writeln!(self.file, "{value}")
            .and_then(|()| self.file.flush())
            .with_context(|| format!("writing {}", self.path.display()))
    }
}

/// Keeps the records of steps ≤ `step` (a resumed run rewrites the rest), less `collect`
/// records of rollout iterations after `iterations` (their buffer is collected again); a
/// partial last line left by a kill is dropped too.
pub fn truncate_metrics(path: &Path, step: u64, iterations: u64) -> Result<()> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let kept: Vec<&str> = text
        .lines()
        .filter(|l| {
            serde_json::from_str::<serde_json::Value>(l)
                .ok()
                .is_some_and(|v| {
                    v["step"].as_u64().is_some_and(|s| s <= step)
                        && !(v["kind"] == "collect"
                            && v["iteration"].as_u64().is_some_and(|i| i > iterations))
                })
        })
        .collect();
    let mut body = kept.join("\n");
    if !body.is_empty() {
        body.push('\n');
    }
    write_bytes_atomically(path, body.as_bytes())
}

/// Every record of `kind` in a metrics file, in order.
pub fn read_records(path: &Path, kind: &str) -> Result<Vec<serde_json::Value>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["kind"] == kind)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::test_device;
    use burn::tensor::TensorData;

    fn scalar(v: f32) -> Tensor<1> {
        Tensor::from_data(TensorData::new(vec![v], [1]), &test_device())
    }

    #[test]
    fn micro_batches_combine_as_weighted_means_in_one_read() {
        let mut step = StepMetrics::default();
        // 3 tokens with mean loss 2, then 1 token with mean loss 6 → (6 + 6) / 4 = 3.
        step.add(
            &scalar(2.0),
            3.0,
            vec![
                Metric::device("accuracy", scalar(1.0), 3.0),
                Metric::host("reward", 4.0, 1.0),
            ],
        )
        .unwrap();
        step.add(
            &scalar(6.0),
            1.0,
            vec![
                Metric::device("accuracy", scalar(0.0), 1.0),
                Metric::host("reward", 1.0, 2.0),
            ],
        )
        .unwrap();
        let values = step.read(Some(scalar(25.0))).unwrap();
        assert!((values.loss - 3.0).abs() < 1e-6);
        assert_eq!(values.weight, 4.0);
        assert!((values.metrics["accuracy"] - 0.75).abs() < 1e-6);
        assert!((values.metrics["reward"] - 2.0).abs() < 1e-6);
        assert!((values.grad_norm.unwrap() - 5.0).abs() < 1e-6);
        assert!(
            StepMetrics::default()
                .add(&scalar(1.0), f64::NAN, vec![])
                .is_err()
        );
    }

    #[test]
    fn truncation_keeps_earlier_steps_and_drops_a_partial_line() {
        let dir = std::env::temp_dir().join(format!("plumbline-metrics-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("metrics.jsonl");
        std::fs::write(
            &path,
            "{\"kind\":\"train\",\"step\":1}\n{\"kind\":\"train\",\"step\":2}\n{\"kind\":\"eval\",\"step\":2}\n{\"kind\":\"collect\",\"step\":2,\"iteration\":2}\n{\"kind\":\"train\",\"step\":3}\n{\"kind\":\"tr",
        )
        .unwrap();
        truncate_metrics(&path, 2, 1).unwrap();
        assert!(read_records(&path, "collect").unwrap().is_empty());
        let records = read_records(&path, "train").unwrap();
        assert_eq!(records.len(), 2);
        assert_eq!(read_records(&path, "eval").unwrap().len(), 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
