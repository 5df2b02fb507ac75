//! Personalized rewards on frozen features, and the test that motivates them: one shared
//! Bradley–Terry model against two personalized ones on users from different populations
//! ([`crate::population`]).
//!
//! - Shared BT: `r(x) = w·φ(x)` for everyone ([`crate::heads::fit_bradley_terry`] on all training
//!   users' pairs).
//! - PAL-A (Chen et al. 2024, "PAL: Pluralistic Alignment Framework for Learning from
//!   Heterogeneous Preferences"): an ideal-point model. Features are mapped to `f(x) = Wφ(x) + c`
//!   in an m-dimensional space holding K prototypes `p_1..p_K`; user u's ideal point is the
//!   mixture `a_u = Σₖ softmax(θ_u)ₖ pₖ` and its reward `s_u(x) = −‖f(x) − a_u‖²`, trained with
//!   the BT loss `−log σ(s_u(y_w) − s_u(y_l))`. A new user's θ is fitted on its few context pairs
//!   with `W`, `c` and the prototypes frozen.
//! - VPL (Poddar et al. 2024, "Personalizing Reinforcement Learning from Human Feedback with
//!   Variational Preference Learning"): an encoder reads a user's context pairs,
//!   `h = mean_j ReLU(E(φ(y_w,j) − φ(y_l,j)))`, and gives `q(z) = N(μ(h), diag σ²(h))`; the
//!   reward is conditioned on a reparameterized sample `z = μ + σ ⊙ ε`:
//!   `r(x, z) = v·ReLU(Aφ(x) + Bz + b) + c`; the loss is the BT loss on the user's query pairs plus
//!   `β · KL(q(z) ‖ N(0, I))`, with `KL = ½ Σ (μ² + σ² − 1 − log σ²)`. At test time `z = μ`.

use anyhow::{Result, bail};
use burn::module::{Module, Param};
use burn::nn::Linear;
use burn::optim::{AdamWConfig, GradientsParams};
use burn::tensor::activation::{log_sigmoid, relu, softmax};
use burn::tensor::{Device, Distribution, Tensor, TensorData};
use rand::SeedableRng;
use rand::rngs::StdRng;
use serde::{Deserialize, Serialize};

use crate::heads::fit_bradley_terry;
use crate::population::{LabelledPair, SyntheticUser};
use crate::{seeded_linear, tensor_vec};

/// The features of a pair's (dataset) chosen and rejected responses.
pub struct PairFeatures<'a> {
    pub chosen: &'a [f32],
    pub rejected: &'a [f32],
}

impl PairFeatures<'_> {
    /// (preferred, dispreferred) under a user's label.
    fn oriented(&self, l: &LabelledPair) -> (&[f32], &[f32]) {
        if l.chosen_preferred {
            (self.chosen, self.rejected)
        } else {
            (self.rejected, self.chosen)
        }
    }
}

/// The `[personal]` recipe section.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PersonalConfig {
    /// L2 strength of the shared BT model.
    #[serde(default = "one")]
    pub bt_lambda: f64,
    #[serde(default)]
    pub pal: PalConfig,
    #[serde(default)]
    pub vpl: VplConfig,
}

fn one() -> f64 {
    1.0
}

impl Default for PersonalConfig {
    fn default() -> Self {
        toml::from_str("").expect("defaults")
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PalConfig {
    #[serde(default = "two")]
    pub prototypes: usize,
    #[serde(default = "sixteen")]
    pub dim: usize,
    #[serde(default = "steps")]
    pub steps: usize,
    #[serde(default = "pal_lr")]
    pub lr: f64,
    /// Steps and learning rate of a new user's fit (prototypes frozen).
    #[serde(default = "steps")]
    pub adapt_steps: usize,
    #[serde(default = "adapt_lr")]
    pub adapt_lr: f64,
    #[serde(default)]
    pub seed: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VplConfig {
    #[serde(default = "four")]
    pub latent: usize,
    #[serde(default = "sixty_four")]
    pub hidden: usize,
    /// β of the KL term.
    #[serde(default = "vpl_beta")]
    pub beta: f64,
    #[serde(default = "steps")]
    pub steps: usize,
    #[serde(default = "pal_lr")]
    pub lr: f64,
    #[serde(default)]
    pub seed: u64,
}

fn two() -> usize {
    2
}
fn four() -> usize {
    4
}
fn sixteen() -> usize {
    16
}
fn sixty_four() -> usize {
    64
}
fn steps() -> usize {
    300
}
fn pal_lr() -> f64 {
    1e-2
}
fn adapt_lr() -> f64 {
    5e-2
}
fn vpl_beta() -> f64 {
    1e-2
}

impl Default for PalConfig {
    fn default() -> Self {
        toml::from_str("").expect("defaults")
    }
}
impl Default for VplConfig {
    fn default() -> Self {
        toml::from_str("").expect("defaults")
    }
}

/// Which labelled pairs of a user.
#[derive(Clone, Copy)]
enum Part {
    Context,
    Query,
    Both,
}

fn user_pairs(u: &SyntheticUser, part: Part) -> Vec<LabelledPair> {
    match part {
        Part::Context => u.context.clone(),
        Part::Query => u.query.clone(),
        Part::Both => u.context.iter().chain(&u.query).copied().collect(),
    }
}

/// Preferred and dispreferred features `[U, N, D]` of the users' pairs (every user the same N).
fn oriented_tensors(
    users: &[SyntheticUser],
    pairs: &[PairFeatures],
    part: Part,
    device: &Device,
) -> Result<(Tensor<3>, Tensor<3>)> {
    let n = user_pairs(&users[0], part).len();
    let d = pairs[0].chosen.len();
    let (mut w, mut l) = (Vec::new(), Vec::new());
    for (ui, u) in users.iter().enumerate() {
        let lp = user_pairs(u, part);
        if lp.len() != n {
            bail!("user {ui} has {} pairs, user 0 has {n}", lp.len());
        }
        for p in &lp {
            let Some(pf) = pairs.get(p.pair) else {
                bail!(
                    "user {ui}: pair {} is out of range ({} pairs)",
                    p.pair,
                    pairs.len()
                );
            };
            let (a, b) = pf.oriented(p);
            if a.len() != d || b.len() != d {
                bail!(
                    "pair {}: features of width {} / {}, expected {d}",
                    p.pair,
                    a.len(),
                    b.len()
                );
            }
            w.extend_from_slice(a);
            l.extend_from_slice(b);
        }
    }
    let shape = [users.len(), n, d];
    Ok((
        Tensor::from_data(TensorData::new(w, shape), device),
        Tensor::from_data(TensorData::new(l, shape), device),
    ))
}

/// Accuracy per population: all query pairs, and the conflicting ones only.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PopulationAccuracy {
    pub all: Vec<f64>,
    pub conflicting: Vec<f64>,
}

/// `margins[u][j] = s(preferred) − s(dispreferred)` on user u's query pair j → accuracies.
fn accuracy(
    users: &[SyntheticUser],
    margins: &[Vec<f64>],
    populations: usize,
) -> PopulationAccuracy {
    let mut all = vec![(0.0, 0usize); populations];
    let mut conf = vec![(0.0, 0usize); populations];
    for (u, m) in users.iter().zip(margins) {
        for (l, &x) in u.query.iter().zip(m) {
            let hit = if x > 0.0 {
                1.0
            } else if x == 0.0 {
                0.5
            } else {
                0.0
            };
            all[u.population].0 += hit;
            all[u.population].1 += 1;
            if l.conflicting {
                conf[u.population].0 += hit;
                conf[u.population].1 += 1;
            }
        }
    }
    let ratio = |v: Vec<(f64, usize)>| {
        v.into_iter()
            .map(|(s, n)| if n == 0 { f64::NAN } else { s / n as f64 })
            .collect()
    };
    PopulationAccuracy {
        all: ratio(all),
        conflicting: ratio(conf),
    }
}

fn populations(users: &[SyntheticUser]) -> usize {
    users.iter().map(|u| u.population + 1).max().unwrap_or(0)
}

fn check(train: &[SyntheticUser], test: &[SyntheticUser], pairs: &[PairFeatures]) -> Result<()> {
    if train.is_empty() || test.is_empty() {
        bail!(
            "personalized rewards: {} training and {} test users (need both)",
            train.len(),
            test.len()
        );
    }
    if pairs.is_empty() {
        bail!("personalized rewards: no pairs");
    }
    Ok(())
}

/// The shared Bradley–Terry baseline: fit on every training user's pairs, scored on the test
/// users' query pairs.
pub fn shared_bt(
    train: &[SyntheticUser],
    test: &[SyntheticUser],
    pairs: &[PairFeatures],
    lambda: f64,
) -> Result<PopulationAccuracy> {
    check(train, test, pairs)?;
    let (mut w, mut l) = (Vec::new(), Vec::new());
    for u in train {
        for p in user_pairs(u, Part::Both) {
            let (a, b) = pairs[p.pair].oriented(&p);
            w.push(a);
            l.push(b);
        }
    }
    let head = fit_bradley_terry(&w, &l, lambda)?;
    let margins: Vec<Vec<f64>> = test
        .iter()
        .map(|u| {
            u.query
                .iter()
                .map(|p| {
                    let (a, b) = pairs[p.pair].oriented(p);
                    head.raw(a) - head.raw(b)
                })
                .collect()
        })
        .collect();
    Ok(accuracy(test, &margins, populations(test)))
}

/// PAL-A's shared part: the map `f` and the prototypes.
#[derive(Module, Debug)]
pub struct PalShared {
    pub proj: Linear,
    /// `[K, m]`.
    pub prototypes: Param<Tensor<2>>,
}

/// PAL-A with per-user mixture logits θ `[U, K]`.
#[derive(Module, Debug)]
pub struct Pal {
    pub shared: PalShared,
    pub users: Param<Tensor<2>>,
}

/// New users' θ only (the shared part frozen outside).
#[derive(Module, Debug)]
pub struct PalUsers {
    pub users: Param<Tensor<2>>,
}

/// PAL-A scores `s_u(x) = −‖f(x) − a_u‖²` of `x` `[U, N, D]` → `[U, N]`.
pub fn pal_scores(
    proj: &Linear,
    prototypes: Tensor<2>,
    theta: Tensor<2>,
    x: Tensor<3>,
) -> Tensor<2> {
    let [u, n, _] = x.dims();
    let ideal = softmax(theta, 1).matmul(prototypes); // [U, m]
    let m = ideal.dims()[1];
    let f = proj.forward(x); // [U, N, m]
    let diff = f - ideal.reshape([u, 1, m]).expand([u, n, m]);
    diff.powf_scalar(2.0).sum_dim(2).reshape([u, n]).neg()
}

fn bt_loss_2d(winner: Tensor<2>, loser: Tensor<2>) -> Tensor<1> {
    log_sigmoid(winner - loser).mean().neg()
}

fn margins_of(t: Tensor<2>) -> Result<Vec<Vec<f64>>> {
    let [u, n] = t.dims();
    let v = tensor_vec(t)?;
    Ok((0..u)
        .map(|i| v[i * n..(i + 1) * n].iter().map(|&x| x as f64).collect())
        .collect())
}

fn uniform_tensor(shape: [usize; 2], bound: f64, rng: &mut StdRng, device: &Device) -> Tensor<2> {
    use rand::Rng;
    let v: Vec<f32> = (0..shape[0] * shape[1])
        .map(|_| rng.random_range(-bound..bound) as f32)
        .collect();
    Tensor::from_data(TensorData::new(v, shape), device)
}

/// What a PAL or VPL run reports.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PersonalRun {
    pub accuracy: PopulationAccuracy,
    pub first_loss: f64,
    pub last_loss: f64,
}

/// Trains PAL-A on the training users (all their pairs), fits each test user's θ on its context
/// pairs with the shared part frozen, and scores the test users' query pairs.
pub fn pal(
    config: &PalConfig,
    train: &[SyntheticUser],
    test: &[SyntheticUser],
    pairs: &[PairFeatures],
    device: &Device,
) -> Result<PersonalRun> {
    check(train, test, pairs)?;
    if config.prototypes == 0 || config.dim == 0 {
        bail!("pal.prototypes and pal.dim must be > 0");
    }
    let ad = device.clone().autodiff();
    let d = pairs[0].chosen.len();
    let mut rng = StdRng::seed_from_u64(config.seed ^ 0x9a1);
    let mut model = Pal {
        shared: PalShared {
            proj: seeded_linear(d, config.dim, &mut rng, &ad),
            prototypes: Param::from_tensor(uniform_tensor(
                [config.prototypes, config.dim],
                1.0,
                &mut rng,
                &ad,
            )),
        },
        users: Param::from_tensor(uniform_tensor(
            [train.len(), config.prototypes],
            0.1,
            &mut rng,
            &ad,
        )),
    };
    let (w, l) = oriented_tensors(train, pairs, Part::Both, &ad)?;
    let mut optim = AdamWConfig::new().with_weight_decay(0.0).init();
    let (mut first, mut last) = (f64::NAN, f64::NAN);
    for step in 0..config.steps {
        let s = &model.shared;
        let sw = pal_scores(&s.proj, s.prototypes.val(), model.users.val(), w.clone());
        let sl = pal_scores(&s.proj, s.prototypes.val(), model.users.val(), l.clone());
        let loss = bt_loss_2d(sw, sl);
        let v = tensor_vec(loss.clone())?[0] as f64;
        if !v.is_finite() {
            bail!("PAL: the loss became {v} at step {step}");
        }
        if step == 0 {
            first = v;
        }
        last = v;
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        model = optim.step(config.lr, model, grads);
    }
    // New users: θ only.
    let frozen_proj = Linear {
        weight: Param::from_tensor(model.shared.proj.weight.val().detach()),
        bias: model
            .shared
            .proj
            .bias
            .as_ref()
            .map(|b| Param::from_tensor(b.val().detach())),
    };
    let frozen_protos = model.shared.prototypes.val().detach();
    let mut fresh = PalUsers {
        users: Param::from_tensor(Tensor::zeros([test.len(), config.prototypes], &ad)),
    };
    let (cw, cl) = oriented_tensors(test, pairs, Part::Context, &ad)?;
    let mut optim = AdamWConfig::new().with_weight_decay(0.0).init();
    for _ in 0..config.adapt_steps {
        let sw = pal_scores(
            &frozen_proj,
            frozen_protos.clone(),
            fresh.users.val(),
            cw.clone(),
        );
        let sl = pal_scores(
            &frozen_proj,
            frozen_protos.clone(),
            fresh.users.val(),
            cl.clone(),
        );
        let loss = bt_loss_2d(sw, sl);
        let grads = GradientsParams::from_grads(loss.backward(), &fresh);
        fresh = optim.step(config.adapt_lr, fresh, grads);
    }
    let (qw, ql) = oriented_tensors(test, pairs, Part::Query, &ad)?;
    let theta = fresh.users.val().detach();
    let margin = pal_scores(&frozen_proj, frozen_protos.clone(), theta.clone(), qw)
        - pal_scores(&frozen_proj, frozen_protos, theta, ql);
    Ok(PersonalRun {
        accuracy: accuracy(test, &margins_of(margin)?, populations(test)),
        first_loss: first,
        last_loss: last,
    })
}

/// `KL(N(μ, diag σ²) ‖ N(0, I)) = ½ Σᵢ (μᵢ² + σᵢ² − 1 − log σᵢ²)` with `logvar = log σ²`.
pub fn kl_standard_normal(mu: &[f64], logvar: &[f64]) -> f64 {
    0.5 * mu
        .iter()
        .zip(logvar)
        .map(|(m, lv)| m * m + lv.exp() - 1.0 - lv)
        .sum::<f64>()
}

/// The same KL per row of `[U, Z]` tensors, averaged over rows.
pub fn kl_term(mu: Tensor<2>, logvar: Tensor<2>) -> Tensor<1> {
    (mu.powf_scalar(2.0) + logvar.clone().exp() - logvar.add_scalar(1.0))
        .sum_dim(1)
        .mean()
        .mul_scalar(0.5)
}

/// VPL's encoder and latent-conditioned reward (module docs).
#[derive(Module, Debug)]
pub struct Vpl {
    pub encoder: Linear,
    pub mu: Linear,
    pub logvar: Linear,
    pub reward_x: Linear,
    pub reward_z: Linear,
    pub reward_out: Linear,
}

impl Vpl {
    /// `(μ, log σ²)` `[U, Z]` from the oriented context pairs `[U, C, D]`.
    pub fn encode(&self, winners: Tensor<3>, losers: Tensor<3>) -> (Tensor<2>, Tensor<2>) {
        let [u, _, _] = winners.dims();
        let h = relu(self.encoder.forward(winners - losers)).mean_dim(1); // [U, 1, H]
        let hd = h.dims()[2];
        let h = h.reshape([u, hd]);
        (self.mu.forward(h.clone()), self.logvar.forward(h))
    }

    /// `r(x, z)` of `x` `[U, N, D]` with `z` `[U, Z]` → `[U, N]`.
    pub fn reward(&self, x: Tensor<3>, z: Tensor<2>) -> Tensor<2> {
        let [u, n, _] = x.dims();
        let hx = self.reward_x.forward(x); // [U, N, H]
        let hd = hx.dims()[2];
        let hz = self
            .reward_z
            .forward(z)
            .reshape([u, 1, hd])
            .expand([u, n, hd]);
        self.reward_out.forward(relu(hx + hz)).reshape([u, n])
    }
}

/// Trains VPL on the training users (encoder reads their context pairs, the loss scores their
/// query pairs), then scores the test users' query pairs with `z = μ(their context pairs)`.
pub fn vpl(
    config: &VplConfig,
    train: &[SyntheticUser],
    test: &[SyntheticUser],
    pairs: &[PairFeatures],
    device: &Device,
) -> Result<PersonalRun> {
    check(train, test, pairs)?;
    if config.latent == 0 || config.hidden == 0 {
        bail!("vpl.latent and vpl.hidden must be > 0");
    }
    let ad = device.clone().autodiff();
    let d = pairs[0].chosen.len();
    let mut rng = StdRng::seed_from_u64(config.seed ^ 0x7b1);
    let (h, z) = (config.hidden, config.latent);
    let mut model = Vpl {
        encoder: seeded_linear(d, h, &mut rng, &ad),
        mu: seeded_linear(h, z, &mut rng, &ad),
        logvar: seeded_linear(h, z, &mut rng, &ad),
        reward_x: seeded_linear(d, h, &mut rng, &ad),
        reward_z: seeded_linear(z, h, &mut rng, &ad),
        reward_out: seeded_linear(h, 1, &mut rng, &ad),
    };
    let (cw, cl) = oriented_tensors(train, pairs, Part::Context, &ad)?;
    let (qw, ql) = oriented_tensors(train, pairs, Part::Query, &ad)?;
    let mut optim = AdamWConfig::new().with_weight_decay(0.0).init();
    ad.seed(config.seed);
    let (mut first, mut last) = (f64::NAN, f64::NAN);
    for step in 0..config.steps {
        let (mu, logvar) = model.encode(cw.clone(), cl.clone());
        let eps = Tensor::<2>::random([train.len(), z], Distribution::Normal(0.0, 1.0), &ad);
        let sample = mu.clone() + logvar.clone().mul_scalar(0.5).exp() * eps;
        let bt = bt_loss_2d(
            model.reward(qw.clone(), sample.clone()),
            model.reward(ql.clone(), sample),
        );
        let loss = bt + kl_term(mu, logvar).mul_scalar(config.beta);
        let v = tensor_vec(loss.clone())?[0] as f64;
        if !v.is_finite() {
            bail!("VPL: the loss became {v} at step {step}");
        }
        if step == 0 {
            first = v;
        }
        last = v;
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        model = optim.step(config.lr, model, grads);
    }
    let (tcw, tcl) = oriented_tensors(test, pairs, Part::Context, &ad)?;
    let (tqw, tql) = oriented_tensors(test, pairs, Part::Query, &ad)?;
    let (mu, _) = model.encode(tcw, tcl);
    let mu = mu.detach();
    let margin = model.reward(tqw, mu.clone()) - model.reward(tql, mu);
    Ok(PersonalRun {
        accuracy: accuracy(test, &margins_of(margin)?, populations(test)),
        first_loss: first,
        last_loss: last,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::population::LabelledPair;
    use rand::Rng;
    use rm_core::device::test_device;

    /// Two populations on 4-D features: population 0 prefers a higher x₀, population 1 a higher
    /// x₁, and every pair is built so the two disagree (x₀ and x₁ move in opposite directions).
    type Pairs = Vec<(Vec<f32>, Vec<f32>)>;

    fn problem(seed: u64, users: usize) -> (Pairs, Vec<SyntheticUser>) {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut pairs = Vec::new();
        for _ in 0..60 {
            let base: Vec<f32> = (0..4).map(|_| rng.random_range(-1.0..1.0)).collect();
            let step: f32 = rng.random_range(0.3..1.0);
            let mut a = base.clone();
            let mut b = base;
            a[0] += step;
            b[1] += step;
            pairs.push((a, b)); // "chosen" a: higher x₀, lower x₁
        }
        let mut us = Vec::new();
        for population in 0..2 {
            for _ in 0..users {
                let mut idx: Vec<usize> = (0..pairs.len()).collect();
                for i in 0..12 {
                    let j = rng.random_range(i..idx.len());
                    idx.swap(i, j);
                }
                let lab = |&i: &usize| LabelledPair {
                    pair: i,
                    chosen_preferred: population == 0,
                    conflicting: true,
                };
                us.push(SyntheticUser {
                    population,
                    context: idx[..4].iter().map(lab).collect(),
                    query: idx[4..12].iter().map(lab).collect(),
                });
            }
        }
        (pairs, us)
    }

    fn features(p: &[(Vec<f32>, Vec<f32>)]) -> Vec<PairFeatures<'_>> {
        p.iter()
            .map(|(a, b)| PairFeatures {
                chosen: a,
                rejected: b,
            })
            .collect()
    }

    #[test]
    fn pal_fits_two_populations_that_one_bradley_terry_model_cannot() {
        let (pairs, train) = problem(1, 20);
        let (_, test) = problem(2, 10);
        let f = features(&pairs);
        let bt = shared_bt(&train, &test, &f, 1.0).unwrap();
        // One reward cannot prefer both a over b and b over a: its accuracies sum to about 1.
        assert!((bt.all[0] + bt.all[1] - 1.0).abs() < 0.15, "{bt:?}");
        assert!(bt.all[0].min(bt.all[1]) < 0.6, "{bt:?}");
        let config = PalConfig {
            steps: 200,
            adapt_steps: 150,
            ..PalConfig::default()
        };
        let run = pal(&config, &train, &test, &f, &test_device()).unwrap();
        assert!(run.last_loss < run.first_loss);
        assert!(
            run.accuracy.all.iter().all(|&a| a > 0.9),
            "PAL {:?} vs BT {bt:?}",
            run.accuracy
        );
    }

    #[test]
    fn vpl_reads_the_population_from_context_pairs() {
        let (pairs, train) = problem(3, 20);
        let (_, test) = problem(4, 10);
        let f = features(&pairs);
        let config = VplConfig {
            steps: 200,
            hidden: 16,
            ..VplConfig::default()
        };
        let run = vpl(&config, &train, &test, &f, &test_device()).unwrap();
        assert!(
            run.accuracy.all.iter().all(|&a| a > 0.9),
            "VPL {:?}",
            run.accuracy
        );
    }

    #[test]
    fn kl_matches_its_closed_form() {
        // μ = 1, σ² = 1: ½(1 + 1 − 1 − 0) = ½; μ = 0, log σ² = 1: ½(e − 2).
        assert!((kl_standard_normal(&[1.0], &[0.0]) - 0.5).abs() < 1e-12);
        assert!((kl_standard_normal(&[0.0], &[1.0]) - 0.5 * (1f64.exp() - 2.0)).abs() < 1e-12);
        assert_eq!(kl_standard_normal(&[0.0, 0.0], &[0.0, 0.0]), 0.0);
        let device = test_device();
        let mu = Tensor::<2>::from_data(
            TensorData::new(vec![1.0f32, 0.0, 0.0, 2.0], [2, 2]),
            &device,
        );
        let lv = Tensor::<2>::from_data(
            TensorData::new(vec![0.0f32, 1.0, 0.0, 0.0], [2, 2]),
            &device,
        );
        let got = tensor_vec(kl_term(mu, lv)).unwrap()[0] as f64;
        // Rows: ½(1 + (e − 2)) and ½(4) → mean.
        let want = (0.5 * (1.0 + 1f64.exp() - 2.0) + 2.0) / 2.0;
        assert!((got - want).abs() < 1e-5, "{got} vs {want}");
    }
}
