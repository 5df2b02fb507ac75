//! The engine's tests: exact accumulation for sequence- and token-mean losses, AdamW's closed
//! form and parameter groups, exact resume of both drivers after a crash, NaN handling.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Result, bail};
use burn::module::{Module, Param};
use burn::nn::{Linear, LinearConfig};
use burn::tensor::activation::{log_sigmoid, log_softmax};
use burn::tensor::{Device, Int, Tensor, TensorData};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::metrics::read_records;
use super::optimizer::{AdamW, AdamWSettings, GradAccumulator, ParamGroup};
use super::schedule::DecayKind;
use super::session::accumulate;
use super::*;
use crate::device::test_device;
use crate::models::bert::BertModel;
use crate::models::bert::tests::{tiny_config, tiny_weights};
use crate::models::pooling::Pooling;
use crate::models::reward::{Backbone, RewardModel, seeded_head};

/// A tiny BERT reward model (dropout as given) on an autodiff device.
fn tiny_rm(dropout: f64, device: &Device) -> RewardModel {
    let mut c = tiny_config();
    c.hidden_dropout_prob = dropout;
    c.attention_probs_dropout_prob = dropout;
    let bert = BertModel::from_source(&tiny_weights(&c), &c, device).unwrap();
    RewardModel {
        backbone: Backbone::Bert(bert),
        head: seeded_head(c.hidden_size, 1, 0.5, 7, device),
    }
}

/// A constant-rate config with no clipping and no decay, to be adjusted by struct update.
fn plain_config(seed: u64, batch_size: usize, out_dir: PathBuf) -> TrainConfig {
    TrainConfig {
        weight_decay: 0.0,
        schedule: DecayKind::Constant,
        max_grad_norm: None,
        seed,
        ..TrainConfig::new(batch_size, 0.1, out_dir)
    }
}

fn tmp(name: &str) -> PathBuf {
    let p = std::env::temp_dir().join(format!("plumbline-train-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&p);
    p
}

/// Sixteen synthetic preference pairs of token ids (lengths 3..6, ids 1..19).
fn pairs() -> Vec<(Vec<i64>, Vec<i64>)> {
    (0..16)
        .map(|i: i64| {
            let len = 3 + (i % 4) as usize;
            let chosen = (0..len as i64).map(|j| 1 + (i * 7 + j * 3) % 19).collect();
            let rejected = (0..len as i64)
                .map(|j| 1 + (i * 5 + j * 11 + 2) % 19)
                .collect();
            (chosen, rejected)
        })
        .collect()
}

fn padded(rows: &[&Vec<i64>], device: &Device) -> (Tensor<2, Int>, Tensor<2, Int>) {
    let t = rows.iter().map(|r| r.len()).max().unwrap();
    let mut ids = Vec::new();
    let mut mask = Vec::new();
    for r in rows {
        for j in 0..t {
            ids.push(r.get(j).copied().unwrap_or(0));
            mask.push(i64::from(j < r.len()));
        }
    }
    (
        Tensor::from_data(TensorData::new(ids, [rows.len(), t]), device),
        Tensor::from_data(TensorData::new(mask, [rows.len(), t]), device),
    )
}

/// A reward-model task over the synthetic pairs (Bradley–Terry), evaluated on the first eight.
struct PairsTask {
    data: Vec<(Vec<i64>, Vec<i64>)>,
    device: Device,
}

impl PairsTask {
    fn margins(&self, model: &RewardModel, examples: &[usize], device: &Device) -> Tensor<1> {
        let rows: Vec<&Vec<i64>> = examples
            .iter()
            .map(|&i| &self.data[i].0)
            .chain(examples.iter().map(|&i| &self.data[i].1))
            .collect();
        let (ids, mask) = padded(&rows, device);
        let b = examples.len();
        let r = model.forward(ids, mask, Pooling::Mean).reshape([2 * b]);
        r.clone().narrow(0, 0, b) - r.narrow(0, b, b)
    }
}

impl TrainTask<RewardModel> for PairsTask {
    fn loss(&mut self, model: &RewardModel, examples: &[usize]) -> Result<LossOutput> {
        let margin = self.margins(model, examples, &self.device.clone());
        let n = examples.len() as f64;
        let accuracy = margin.clone().greater_elem(0.0).float().mean();
        Ok(LossOutput::new(log_sigmoid(margin).mean().neg(), n)
            .with(Metric::device("accuracy", accuracy, n)))
    }
    fn evaluate(&mut self, model: &RewardModel) -> Result<Evaluation> {
        let device = self.device.clone().inner();
        let examples: Vec<usize> = (0..8).collect();
        let margin = self.margins(model, &examples, &device);
        let accuracy = margin
            .clone()
            .greater_elem(0.0)
            .float()
            .mean()
            .into_scalar::<f32>() as f64;
        let loss = log_sigmoid(margin).mean().neg().into_scalar::<f32>() as f64;
        Ok(Evaluation {
            metrics: BTreeMap::from([("loss".into(), loss), ("accuracy".into(), accuracy)]),
            score: accuracy,
        })
    }
    fn save_model(&self, model: &RewardModel, dir: &Path) -> Result<()> {
        save_trainable(model, &dir.join("weights.safetensors"))
    }
}

impl EpochTask<RewardModel> for PairsTask {
    fn num_examples(&self) -> usize {
        self.data.len()
    }
}

fn max_grad_difference(a: &GradAccumulator, b: &GradAccumulator) -> f32 {
    assert_eq!(a.len(), b.len());
    let mut worst = 0f32;
    for (path, g) in a.iter() {
        let x: Vec<f32> = b
            .get(path)
            .unwrap()
            .clone()
            .into_data()
            .try_to_vec()
            .unwrap();
        let y: Vec<f32> = g.clone().into_data().try_to_vec().unwrap();
        for (x, y) in x.iter().zip(&y) {
            worst = worst.max((x - y).abs());
        }
    }
    worst
}

#[test]
fn accumulating_two_times_four_micro_batches_equals_one_batch_of_eight() {
    let device = test_device().autodiff();
    let model = tiny_rm(0.0, &device);
    let mut task = PairsTask {
        data: pairs(),
        device: device.clone(),
    };
    let examples: Vec<usize> = (0..8).collect();
    let (whole, _) = accumulate(&model, &mut task, &examples, 8, &device, |_| 0).unwrap();
    let (split, metrics) = accumulate(&model, &mut task, &examples, 4, &device, |_| 0).unwrap();
    assert!(
        whole.len() > 10,
        "{} parameters with gradients",
        whole.len()
    );
    let worst = max_grad_difference(&whole, &split);
    assert!(worst < 1e-5, "max gradient difference {worst}");
    let values = metrics.read(None).unwrap();
    assert_eq!(values.weight, 8.0);
    assert!((0.0..=1.0).contains(&values.metrics["accuracy"]));
}

/// Sequences of unequal lengths whose tokens carry fixed features; a linear "model" scores
/// every token, the per-token loss is softplus(score).
struct TokenTask {
    /// Per sequence, per token, a feature vector of width 3.
    sequences: Vec<Vec<[f32; 3]>>,
    token_mean: bool,
    device: Device,
}

impl TokenTask {
    fn new(token_mean: bool, device: &Device) -> Self {
        let mut rng = StdRng::seed_from_u64(5);
        // Unequal lengths: micro-batches of two hold 3+9, 1+7, 2+2, 11+4 tokens.
        let lengths = [3, 9, 1, 7, 2, 2, 11, 4];
        let sequences = lengths
            .iter()
            .map(|&l| {
                (0..l)
                    .map(|_| {
                        [
                            rng.random::<f32>() - 0.5,
                            rng.random(),
                            rng.random::<f32>() * 2.0,
                        ]
                    })
                    .collect()
            })
            .collect();
        Self {
            sequences,
            token_mean,
            device: device.clone(),
        }
    }
}

impl TrainTask<Linear> for TokenTask {
    fn loss(&mut self, model: &Linear, items: &[usize]) -> Result<LossOutput> {
        let mut per_sequence = Vec::new();
        let mut tokens = 0usize;
        let mut all = Vec::new();
        for &i in items {
            let seq = &self.sequences[i];
            let flat: Vec<f32> = seq.iter().flatten().copied().collect();
            let x = Tensor::<2>::from_data(TensorData::new(flat, [seq.len(), 3]), &self.device);
            let token_loss =
                burn::tensor::activation::softplus(model.forward(x), 1.0).reshape([seq.len()]);
            tokens += seq.len();
            per_sequence.push(token_loss.clone().mean());
            all.push(token_loss);
        }
        Ok(if self.token_mean {
            LossOutput::new(Tensor::cat(all, 0).mean(), tokens as f64)
        } else {
            LossOutput::new(Tensor::cat(per_sequence, 0).mean(), items.len() as f64)
        }
        .with_tokens(tokens))
    }
    fn evaluate(&mut self, _: &Linear) -> Result<Evaluation> {
        Ok(Evaluation::default())
    }
    fn save_model(&self, _: &Linear, _: &Path) -> Result<()> {
        Ok(())
    }
}

#[test]
fn accumulation_is_exact_for_sequence_mean_and_token_mean_losses_with_unequal_token_counts() {
    let device = test_device().autodiff();
    let model = LinearConfig::new(3, 1).init(&device);
    let items: Vec<usize> = (0..8).collect();
    for token_mean in [false, true] {
        let mut task = TokenTask::new(token_mean, &device);
        let (whole, whole_metrics) =
            accumulate(&model, &mut task, &items, 8, &device, |_| 0).unwrap();
        let (split, split_metrics) =
            accumulate(&model, &mut task, &items, 2, &device, |_| 0).unwrap();
        // The step's token count is the sum over its micro-batches, however they are cut.
        let all_tokens: usize = task.sequences.iter().map(Vec::len).sum();
        assert_eq!(whole_metrics.read(None).unwrap().tokens, all_tokens);
        assert_eq!(split_metrics.read(None).unwrap().tokens, all_tokens);
        let worst = max_grad_difference(&whole, &split);
        assert!(worst < 1e-5, "token_mean {token_mean}: {worst}");
        if token_mean {
            // Weighting the micro-batches by examples instead (the old rule) is measurably wrong.
            let mut naive = GradAccumulator::default();
            for chunk in items.chunks(2) {
                let out = task.loss(&model, chunk).unwrap();
                naive.add(
                    &model,
                    out.loss.mul_scalar(chunk.len() as f64 / 8.0).backward(),
                );
            }
            assert!(max_grad_difference(&whole, &naive) > 1e-3);
        }
    }
}

#[test]
fn adamw_first_step_matches_the_closed_form_and_clipping_scales_gradients() {
    let device = test_device().autodiff();
    // θ = [1, 1]; loss = 3θ₀ + 4θ₁ → g = (3, 4), ‖g‖ = 5.
    let make = || {
        let mut head = seeded_head(2, 1, 0.0, 0, &device);
        head.weight = Param::from_tensor(Tensor::from_data(
            TensorData::new(vec![1.0f32, 1.0], [2, 1]),
            &device,
        ));
        head.bias = None;
        head
    };
    let x = Tensor::<2>::from_data(TensorData::new(vec![3.0f32, 4.0], [1, 2]), &device);
    let run = |clip: Option<f64>, eps: f64| {
        let head = make();
        let mut grads = GradAccumulator::default();
        grads.add(&head, head.forward(x.clone()).sum().backward());
        assert!((grads.global_norm() - 5.0).abs() < 1e-6);
        let mut adamw = AdamW::new(AdamWSettings {
            beta1: 0.9,
            beta2: 0.999,
            eps,
            weight_decay: 0.01,
            max_grad_norm: clip,
        });
        let (head, stats) = adamw.step(head, 0.1, grads).unwrap();
        assert!((stats.grad_norm - 5.0).abs() < 1e-6);
        let w: Vec<f32> = head.weight.val().into_data().try_to_vec::<f32>().unwrap();
        w
    };
    // Step 1: m̂ = g, v̂ = g², θ ← θ(1 − lr·λ) − lr·g/(|g| + ε).
    let w = run(None, 1e-8);
    for v in &w {
        assert!((v - (0.999 - 0.1)).abs() < 1e-6, "{w:?}");
    }
    // With ε = 1 the step depends on the gradient's size: clipped to norm 1, g = (0.6, 0.8).
    let unclipped = run(None, 1.0);
    let clipped = run(Some(1.0), 1.0);
    let expect = |g: f32| 0.999 - 0.1 * g / (g + 1.0);
    assert!((unclipped[0] - expect(3.0)).abs() < 1e-6, "{unclipped:?}");
    assert!((unclipped[1] - expect(4.0)).abs() < 1e-6);
    assert!((clipped[0] - expect(0.6)).abs() < 1e-6, "{clipped:?}");
    assert!((clipped[1] - expect(0.8)).abs() < 1e-6);
}

#[test]
fn parameter_groups_exempt_biases_and_norms_from_decay_and_scale_learning_rates() {
    let device = test_device().autodiff();
    let model = tiny_rm(0.0, &device);
    let before: BTreeMap<String, Vec<f32>> = collect_params(&model);
    // A zero loss gives zero gradients: the update is pure decay, θ(1 − lr·λ).
    let mut grads = GradAccumulator::default();
    let r = model.forward(
        Tensor::from_data(TensorData::new(vec![1i64, 2, 3], [1, 3]), &device),
        Tensor::from_data(TensorData::new(vec![1i64, 1, 1], [1, 3]), &device),
        Pooling::Mean,
    );
    grads.add(&model, r.sum().mul_scalar(0.0).backward());
    let config = TrainConfig {
        weight_decay: 0.5,
        param_groups: vec![ParamGroup {
            paths: vec!["head.*".into()],
            lr_scale: 2.0,
            weight_decay: Some(0.25),
        }],
        ..plain_config(1, 1, PathBuf::from("unused"))
    };
    let mut adamw = AdamW::new(config.adamw()).with_groups(config.param_group_rules());
    let (model, _) = adamw.step(model, 0.1, grads).unwrap();
    let after = collect_params(&model);
    // Every element must be θ·factor exactly (up to f32 rounding).
    let scaled_by = |path: &str, factor: f32| {
        before[path]
            .iter()
            .zip(&after[path])
            .all(|(b, a)| (a - b * factor).abs() <= 1e-6 * b.abs().max(1e-3))
    };
    let mut seen = (0, 0, 0);
    for path in before.keys() {
        if path.starts_with("head.") {
            // lr 0.2 × λ 0.25 = 0.05
            assert!(scaled_by(path, 0.95), "{path}");
            seen.0 += 1;
        } else if path.ends_with(".bias") || path.ends_with(".beta") || path.contains("norm") {
            assert!(scaled_by(path, 1.0), "{path}");
            seen.1 += 1;
        } else {
            assert!(scaled_by(path, 0.95), "{path}");
            seen.2 += 1;
        }
    }
    assert!(seen.0 >= 1 && seen.1 >= 4 && seen.2 >= 4, "{seen:?}");
}

fn collect_params<M: Module>(model: &M) -> BTreeMap<String, Vec<f32>> {
    let dir = tmp(&format!("params-{}", rand::random::<u32>()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("p.safetensors");
    save_trainable(model, &file).unwrap();
    let out = file_values(&file);
    std::fs::remove_dir_all(&dir).unwrap();
    out
}

/// The tensors of a safetensors file by name (its header's byte order is not stable).
fn file_values(file: &Path) -> BTreeMap<String, Vec<f32>> {
    use crate::models::weights::WeightSource;
    let source = crate::models::safetensors::SafetensorsWeights::open(file).unwrap();
    source
        .names()
        .into_iter()
        .map(|n| {
            let t = source.tensor(&n).unwrap();
            (n, t.values)
        })
        .collect()
}

fn train_losses(out: &Path) -> Vec<(u64, f64)> {
    read_records(&out.join("metrics.jsonl"), "train")
        .unwrap()
        .into_iter()
        .map(|v| (v["step"].as_u64().unwrap(), v["loss"].as_f64().unwrap()))
        .collect()
}

#[test]
fn a_run_that_crashes_at_step_k_resumes_to_the_uninterrupted_loss_curve() {
    let device = test_device().autodiff();
    let root = tmp("resume");
    let config = |out: &str| TrainConfig {
        epochs: 2,
        micro_batch_size: Some(2),
        lr: 0.05,
        weight_decay: 0.01,
        warmup_ratio: 0.25,
        schedule: DecayKind::Cosine,
        max_grad_norm: Some(1.0),
        eval_every: 3,
        save_every: Some(1),
        ..plain_config(3, 4, root.join(out))
    };
    let trainer = |config: TrainConfig| Trainer {
        config,
        device: device.clone(),
        progress: false,
    };
    let identity = serde_json::json!({"test": 1});
    let open = |out: &str, mode| RunDir::open(&root.join(out), mode, &identity, &[]).unwrap();

    // Dropout on: resuming must also restore the dropout streams.
    let mut task = PairsTask {
        data: pairs(),
        device: device.clone(),
    };
    let (_, whole) = trainer(config("whole"))
        .run_epochs(
            &open("whole", RunMode::Fresh),
            tiny_rm(0.1, &device),
            &mut task,
        )
        .unwrap();
    assert_eq!(whole.steps, 8);

    /// Fails inside step 6's loss, after 5 checkpointed steps.
    struct Crashing(PairsTask, usize);
    impl TrainTask<RewardModel> for Crashing {
        fn loss(&mut self, m: &RewardModel, e: &[usize]) -> Result<LossOutput> {
            self.1 += 1;
            if self.1 == 11 {
                bail!("simulated crash");
            }
            self.0.loss(m, e)
        }
        fn evaluate(&mut self, m: &RewardModel) -> Result<Evaluation> {
            self.0.evaluate(m)
        }
        fn save_model(&self, m: &RewardModel, d: &Path) -> Result<()> {
            self.0.save_model(m, d)
        }
    }
    impl EpochTask<RewardModel> for Crashing {
        fn num_examples(&self) -> usize {
            self.0.num_examples()
        }
    }
    let mut crashing = Crashing(
        PairsTask {
            data: pairs(),
            device: device.clone(),
        },
        0,
    );
    let err = trainer(config("split"))
        .run_epochs(
            &open("split", RunMode::Fresh),
            tiny_rm(0.1, &device),
            &mut crashing,
        )
        .unwrap_err();
    assert!(
        format!("{err:#}").contains("step 6: simulated crash"),
        "{err:#}"
    );
    assert_eq!(train_losses(&root.join("split")).len(), 5);
    let (_, second) = trainer(config("split"))
        .run_epochs(
            &open(
                "split",
                RunMode::Resume {
                    allow_changes: false,
                },
            ),
            tiny_rm(0.1, &device),
            &mut task,
        )
        .unwrap();
    assert_eq!(second.steps, 8);
    let a = train_losses(&root.join("whole"));
    let b = train_losses(&root.join("split"));
    assert_eq!(a.len(), 8);
    assert_eq!(a, b, "losses must be bit-identical");
    assert!(root.join("whole/best/weights.safetensors").is_file());
    assert_eq!(
        file_values(&root.join("whole/final/weights.safetensors")),
        file_values(&root.join("split/final/weights.safetensors"))
    );
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
fn a_nan_loss_stops_the_run_with_the_step_named() {
    struct NanTask;
    impl TrainTask<RewardModel> for NanTask {
        fn loss(&mut self, model: &RewardModel, _: &[usize]) -> Result<LossOutput> {
            let w = model.head.weight.val().sum();
            Ok(LossOutput::new(w.mul_scalar(f32::NAN), 1.0))
        }
        fn evaluate(&mut self, _: &RewardModel) -> Result<Evaluation> {
            Ok(Evaluation::default())
        }
        fn save_model(&self, _: &RewardModel, _: &Path) -> Result<()> {
            Ok(())
        }
    }
    impl EpochTask<RewardModel> for NanTask {
        fn num_examples(&self) -> usize {
            4
        }
    }
    let device = test_device().autodiff();
    let root = tmp("nan");
    let run = RunDir::open(&root, RunMode::Fresh, &serde_json::json!({}), &[]).unwrap();
    let err = Trainer {
        config: plain_config(1, 2, root.clone()),
        device: device.clone(),
        progress: false,
    }
    .run_epochs(&run, tiny_rm(0.0, &device), &mut NanTask)
    .unwrap_err()
    .to_string();
    assert!(err.contains("step 1: the loss is NaN"), "{err}");
    drop(run);
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn epoch_orders_are_seeded_permutations_and_steps_cover_each_epoch() {
    let config = TrainConfig {
        epochs: 2,
        ..plain_config(9, 3, PathBuf::from("unused"))
    };
    assert_eq!(config.epoch_steps(7).unwrap(), 6);
    let mut seen: Vec<usize> = (0..3).flat_map(|s| step_examples(7, &config, s)).collect();
    assert_eq!(step_examples(7, &config, 2).len(), 1);
    seen.sort();
    assert_eq!(seen, (0..7).collect::<Vec<_>>());
    assert_eq!(epoch_order(7, 9, 0), epoch_order(7, 9, 0));
    assert_ne!(epoch_order(7, 9, 0), epoch_order(7, 9, 1));
}

/// A toy online task: a softmax policy over 4 actions (the logits are a Linear layer's bias),
/// rewards `[0, 0.2, 1, 0.4]`, REINFORCE with a running-mean baseline that is task state.
struct BanditTask {
    device: Device,
    /// The buffer: (action, reward).
    buffer: Vec<(usize, f64)>,
    /// Running mean of rewards (the baseline), updated after each step: resumable state.
    baseline: f64,
    /// Fail inside this loss call (counting from 1), to simulate a kill.
    crash_at: Option<usize>,
    calls: usize,
}

const REWARDS: [f64; 4] = [0.0, 0.2, 1.0, 0.4];

impl BanditTask {
    fn new(device: &Device, crash_at: Option<usize>) -> Self {
        Self {
            device: device.clone(),
            buffer: Vec::new(),
            baseline: 0.0,
            crash_at,
            calls: 0,
        }
    }
    fn logits(model: &Linear, device: &Device) -> Tensor<2> {
        model.forward(Tensor::zeros([1, 1], device))
    }
}

impl TrainTask<Linear> for BanditTask {
    fn loss(&mut self, model: &Linear, items: &[usize]) -> Result<LossOutput> {
        self.calls += 1;
        if Some(self.calls) == self.crash_at {
            bail!("simulated kill");
        }
        let logp = log_softmax(Self::logits(model, &self.device), 1).reshape([4]);
        let actions: Vec<i64> = items.iter().map(|&i| self.buffer[i].0 as i64).collect();
        let advantages: Vec<f32> = items
            .iter()
            .map(|&i| (self.buffer[i].1 - self.baseline) as f32)
            .collect();
        let n = items.len();
        let chosen = logp.select(
            0,
            Tensor::<1, Int>::from_data(TensorData::new(actions, [n]), &self.device),
        );
        let adv = Tensor::<1>::from_data(TensorData::new(advantages, [n]), &self.device);
        let loss = (chosen * adv).mean().neg();
        let reward: f64 = items.iter().map(|&i| self.buffer[i].1).sum::<f64>() / n as f64;
        Ok(LossOutput::new(loss, n as f64).with(Metric::host("reward", reward, n as f64)))
    }
    fn evaluate(&mut self, model: &Linear) -> Result<Evaluation> {
        let p: Vec<f32> =
            burn::tensor::activation::softmax(Self::logits(model, &self.device.clone().inner()), 1)
                .into_data()
                .try_to_vec()
                .unwrap();
        let expected: f64 = p.iter().zip(REWARDS).map(|(&p, r)| p as f64 * r).sum();
        Ok(Evaluation {
            metrics: BTreeMap::from([("expected_reward".into(), expected)]),
            score: expected,
        })
    }
    fn save_model(&self, model: &Linear, dir: &Path) -> Result<()> {
        save_trainable(model, &dir.join("policy.safetensors"))
    }
    fn state(&self) -> Result<serde_json::Value> {
        Ok(serde_json::json!({"baseline": self.baseline}))
    }
    fn restore_state(&mut self, state: serde_json::Value) -> Result<()> {
        self.baseline = state["baseline"]
            .as_f64()
            .ok_or_else(|| anyhow::anyhow!("no baseline in {state}"))?;
        Ok(())
    }
    fn after_step(&mut self, _: &Linear, values: &StepValues) -> Result<()> {
        self.baseline = 0.8 * self.baseline + 0.2 * values.metrics["reward"];
        Ok(())
    }
}

impl RolloutTask<Linear> for BanditTask {
    fn buffer_size(&self) -> usize {
        12
    }
    fn collect(&mut self, policy: &Linear, _iteration: u64, seed: u64) -> Result<Collected> {
        let p: Vec<f32> = burn::tensor::activation::softmax(
            Self::logits(policy, &self.device.clone().inner()),
            1,
        )
        .into_data()
        .try_to_vec()
        .unwrap();
        let mut rng = StdRng::seed_from_u64(seed);
        self.buffer = (0..12)
            .map(|_| {
                let u: f32 = rng.random();
                let mut acc = 0.0;
                let a = p
                    .iter()
                    .position(|&q| {
                        acc += q;
                        u < acc
                    })
                    .unwrap_or(3);
                (a, REWARDS[a])
            })
            .collect();
        let mean = self.buffer.iter().map(|b| b.1).sum::<f64>() / 12.0;
        Ok(Collected {
            items: 12,
            metrics: BTreeMap::from([("reward_mean".into(), mean)]),
        })
    }
}

fn bandit_policy(device: &Device) -> Linear {
    let mut layer = LinearConfig::new(1, 4).init(device);
    layer.weight = Param::from_tensor(Tensor::zeros([1, 4], device));
    layer.bias = Some(Param::from_tensor(Tensor::zeros([4], device)));
    layer
}

#[test]
fn a_rollout_run_killed_at_step_k_and_resumed_reproduces_the_uninterrupted_metrics() {
    let device = test_device().autodiff();
    let root = tmp("rollout");
    let config = |out: &str| TrainConfig {
        micro_batch_size: Some(3),
        lr: 0.3,
        save_every: Some(1),
        eval_every: 2,
        ..plain_config(11, 6, root.join(out))
    };
    let rollout = RolloutConfig {
        iterations: 6,
        ppo_epochs: 2,
    };
    let trainer = |c| Trainer {
        config: c,
        device: device.clone(),
        progress: false,
    };
    let id = serde_json::json!({"bandit": true});
    let open = |out: &str, mode| RunDir::open(&root.join(out), mode, &id, &[]).unwrap();
    let (_, whole) = trainer(config("whole"))
        .run_rollouts(
            &open("whole", RunMode::Fresh),
            bandit_policy(&device),
            &mut BanditTask::new(&device, None),
            &rollout,
        )
        .unwrap();
    // 6 iterations × 2 passes × 12/6 steps.
    assert_eq!(whole.steps, 24);
    // Kill inside step 11's second micro-batch (loss call 22): iteration 3 is lost and redone.
    let err = trainer(config("split"))
        .run_rollouts(
            &open("split", RunMode::Fresh),
            bandit_policy(&device),
            &mut BanditTask::new(&device, Some(22)),
            &rollout,
        )
        .unwrap_err();
    assert!(format!("{err:#}").contains("simulated kill"), "{err:#}");
    let (_, resumed) = trainer(config("split"))
        .run_rollouts(
            &open(
                "split",
                RunMode::Resume {
                    allow_changes: false,
                },
            ),
            bandit_policy(&device),
            &mut BanditTask::new(&device, None),
            &rollout,
        )
        .unwrap();
    assert_eq!(resumed.steps, 24);
    let strip = |out: &str| -> Vec<String> {
        std::fs::read_to_string(root.join(out).join("metrics.jsonl"))
            .unwrap()
            .lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                super::metrics::without_wall_time(v).to_string()
            })
            .collect()
    };
    assert_eq!(strip("whole"), strip("split"));
    // Learning happened: the policy's expected reward rose from 0.4 (uniform).
    let evals = read_records(&root.join("whole/metrics.jsonl"), "eval").unwrap();
    let last = evals.last().unwrap()["expected_reward"].as_f64().unwrap();
    assert!(last > 0.6, "expected reward {last}");
    std::fs::remove_dir_all(&root).unwrap();
}

/// A step whose micro-batches all carry zero weight: skipped (logged, no update) for a task
/// that allows it — the run keeps its planned steps — and an error naming the step otherwise.
#[test]
fn a_step_with_nothing_to_learn_is_skipped_only_where_the_task_allows_it() {
    struct Silent {
        inner: BanditTask,
        allow: bool,
    }
    impl TrainTask<Linear> for Silent {
        fn loss(&mut self, model: &Linear, items: &[usize]) -> Result<LossOutput> {
            let out = self.inner.loss(model, items)?;
            // The first step (loss calls 1 and 2) has nothing to learn from.
            Ok(match self.inner.calls <= 2 {
                true => LossOutput::new(out.loss.mul_scalar(0.0), 0.0),
                false => out,
            })
        }
        fn evaluate(&mut self, model: &Linear) -> Result<Evaluation> {
            self.inner.evaluate(model)
        }
        fn save_model(&self, model: &Linear, dir: &Path) -> Result<()> {
            self.inner.save_model(model, dir)
        }
        fn allows_empty_steps(&self) -> bool {
            self.allow
        }
    }
    impl RolloutTask<Linear> for Silent {
        fn buffer_size(&self) -> usize {
            self.inner.buffer_size()
        }
        fn collect(&mut self, policy: &Linear, iteration: u64, seed: u64) -> Result<Collected> {
            self.inner.collect(policy, iteration, seed)
        }
    }
    let device = test_device().autodiff();
    let root = tmp("empty-step");
    let rollout = RolloutConfig {
        iterations: 2,
        ppo_epochs: 1,
    };
    let id = serde_json::json!({"bandit": "silent"});
    for allow in [true, false] {
        let out = root.join(format!("{allow}"));
        let trainer = Trainer {
            config: TrainConfig {
                micro_batch_size: Some(3),
                lr: 0.3,
                ..plain_config(11, 6, out.clone())
            },
            device: device.clone(),
            progress: false,
        };
        let run = RunDir::open(&out, RunMode::Fresh, &id, &[]).unwrap();
        let mut task = Silent {
            inner: BanditTask::new(&device, None),
            allow,
        };
        let result = trainer.run_rollouts(&run, bandit_policy(&device), &mut task, &rollout);
        if allow {
            let (model, outcome) = result.unwrap();
            assert_eq!(outcome.steps, 4);
            let train = read_records(&out.join("metrics.jsonl"), "train").unwrap();
            assert_eq!(train.len(), 4);
            assert_eq!(train[0]["skipped"], serde_json::json!(true));
            assert!(train[1..].iter().all(|r| r.get("skipped").is_none()));
            // The skipped step changed nothing; the others trained.
            let bias: Vec<f32> = model.bias.unwrap().val().into_data().try_to_vec().unwrap();
            assert!(bias.iter().any(|&b| b != 0.0));
        } else {
            let err = format!("{:#}", result.unwrap_err());
            assert!(err.contains("step 1") && err.contains("no weight"), "{err}");
        }
    }
    std::fs::remove_dir_all(&root).ok();
}
