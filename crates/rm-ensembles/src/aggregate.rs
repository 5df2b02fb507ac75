//! Ensemble aggregation rules as pure functions over a `[members × samples]` reward matrix
//! `R[k][i]` (member `k`'s reward of sample `i`, members already on a common scale; see
//! [`crate::ensemble`]). Each rule gives one reward per sample.

use anyhow::{Result, bail};
use serde::{Deserialize, Serialize};

/// Rewards of `K` members on `N` samples, `rows[k][i]`: checked rectangular, non-empty and
/// finite on construction.
#[derive(Clone, Debug, PartialEq)]
pub struct RewardMatrix {
    rows: Vec<Vec<f32>>,
}

impl RewardMatrix {
    /// One row per member, one column per sample. An empty matrix, rows of different lengths
    /// and non-finite rewards are errors naming the member and sample.
    pub fn new(rows: Vec<Vec<f32>>) -> Result<Self> {
        let Some(first) = rows.first() else {
            bail!("an ensemble reward matrix needs at least one member (it has none)");
        };
        let n = first.len();
        if n == 0 {
            bail!("an ensemble reward matrix needs at least one sample (member 0 scored none)");
        }
        for (k, row) in rows.iter().enumerate() {
            if row.len() != n {
                bail!(
                    "member {k} has {} rewards, member 0 has {n}: every member must score every sample",
                    row.len()
                );
            }
            if let Some(i) = row.iter().position(|r| !r.is_finite()) {
                bail!("member {k}: the reward of sample {i} is {}", row[i]);
            }
        }
        Ok(Self { rows })
    }

    pub fn members(&self) -> usize {
        self.rows.len()
    }

    pub fn samples(&self) -> usize {
        self.rows[0].len()
    }

    /// Member `k`'s rewards.
    pub fn row(&self, k: usize) -> &[f32] {
        &self.rows[k]
    }

    /// The `K` members' rewards of sample `i`.
    pub fn column(&self, i: usize) -> Vec<f32> {
        self.rows.iter().map(|r| r[i]).collect()
    }
}

/// Which spread the uncertainty-weighted rule subtracts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Spread {
    /// The population standard deviation `sqrt(1/K Σ_k (r_k − r̄)²)`.
    #[default]
    Std,
    /// The population variance `1/K Σ_k (r_k − r̄)²` (Coste et al.'s UWO as written).
    Variance,
}

/// How an ensemble's members' rewards `r_1..r_K` of one sample become one reward.
///
/// In a recipe or `ensemble.json`: `aggregation = { kind = "mean-minus-std", lambda = 0.5 }`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Aggregation {
    /// `r = 1/K Σ_k r_k` — mean optimization (Coste et al., "Reward Model Ensembles Help
    /// Mitigate Overoptimization", ICLR 2024).
    #[default]
    Mean,
    /// `r = median_k r_k` (for even K the mean of the two middle values) — robust to one
    /// outlying member.
    Median,
    /// `r = min_k r_k` — worst-case optimization, WCO (Coste et al., ICLR 2024).
    #[serde(alias = "wco")]
    Min,
    /// `r = r̄ − λ·s` with `r̄ = 1/K Σ_k r_k` and `s` the members' spread (population std by
    /// default, or the variance with `spread = "variance"`, which is the UWO of Coste et al.,
    /// ICLR 2024, as written) — uncertainty-weighted optimization: the members' disagreement
    /// is the uncertainty penalized.
    #[serde(alias = "uwo")]
    MeanMinusStd {
        /// λ ≥ 0: the weight of the penalty.
        lambda: f32,
        #[serde(default)]
        spread: Spread,
    },
    /// BRME (Yan et al. 2024, "Reward-Robust RLHF in LLMs", arXiv:2409.15360):
    /// `r = λ·r_nominal + (1 − λ)·min_k r_k`, the nominal reward `r_nominal = r_{k*}` coming
    /// from the member (head) with the lowest uncertainty, `k* = argmin_k σ_k`. In the paper
    /// each head of a multi-head Bayesian RM outputs a Gaussian (μ_k, σ_k) and σ_k, the head's
    /// predicted standard deviation, is the uncertainty. Plumbline members are scalar
    /// Bradley–Terry models with no σ head, so [`Aggregation::apply`] takes as σ_k of a sample
    /// the member's distance from the ensemble mean, `σ_k = |r_k − r̄|` (the member most in
    /// agreement with the rest is trusted); [`brme`] takes any σ matrix.
    Brme {
        /// λ ∈ [0, 1]: 1 = the nominal reward alone, 0 = the worst case alone.
        lambda: f32,
    },
}

impl Aggregation {
    /// Checks the parameters (λ finite, ≥ 0; BRME's λ in [0, 1]).
    pub fn validate(&self) -> Result<()> {
        match *self {
            Aggregation::MeanMinusStd { lambda, .. } if !(lambda.is_finite() && lambda >= 0.0) => {
                bail!("aggregation mean-minus-std: lambda = {lambda} must be finite and ≥ 0")
            }
            Aggregation::Brme { lambda } if !(0.0..=1.0).contains(&lambda) => {
                bail!("aggregation brme: lambda = {lambda} must be in [0, 1]")
            }
            _ => Ok(()),
        }
    }

    /// A short name for reports, e.g. `mean-minus-std(λ=0.5)`.
    pub fn label(&self) -> String {
        match self {
            Aggregation::Mean => "mean".into(),
            Aggregation::Median => "median".into(),
            Aggregation::Min => "min".into(),
            Aggregation::MeanMinusStd {
                lambda,
                spread: Spread::Std,
            } => format!("mean-minus-std(λ={lambda})"),
            Aggregation::MeanMinusStd {
                lambda,
                spread: Spread::Variance,
            } => format!("mean-minus-var(λ={lambda})"),
            Aggregation::Brme { lambda } => format!("brme(λ={lambda})"),
        }
    }

    /// The rules `eval` reports side by side: mean, median, min, mean − 1·std, BRME λ = 0.5,
    /// and `extra` (a recipe's own) when it is not among them.
    pub fn report_set(extra: &Aggregation) -> Vec<Aggregation> {
        let mut all = vec![
            Aggregation::Mean,
            Aggregation::Median,
            Aggregation::Min,
            Aggregation::MeanMinusStd {
                lambda: 1.0,
                spread: Spread::Std,
            },
            Aggregation::Brme { lambda: 0.5 },
        ];
        if !all.contains(extra) {
            all.push(extra.clone());
        }
        all
    }

    /// One reward per sample.
    pub fn apply(&self, rewards: &RewardMatrix) -> Result<Vec<f32>> {
        self.validate()?;
        let n = rewards.samples();
        Ok(match *self {
            Aggregation::Mean => (0..n).map(|i| mean(&rewards.column(i))).collect(),
            Aggregation::Median => (0..n).map(|i| median(&rewards.column(i))).collect(),
            Aggregation::Min => (0..n).map(|i| min(&rewards.column(i))).collect(),
            Aggregation::MeanMinusStd { lambda, spread } => (0..n)
                .map(|i| {
                    let c = rewards.column(i);
                    let var = variance(&c);
                    let s = match spread {
                        Spread::Std => var.sqrt(),
                        Spread::Variance => var,
                    };
                    mean(&c) - lambda * s
                })
                .collect(),
            Aggregation::Brme { lambda } => {
                let sigma = deviation_from_mean(rewards);
                brme(rewards, &sigma, lambda)?
            }
        })
    }
}

impl std::str::FromStr for Aggregation {
    type Err = anyhow::Error;
    /// The command-line form: `mean`, `median`, `min` (or `wco`), `mean-minus-std:λ` (or
    /// `uwo:λ`), `mean-minus-var:λ`, `brme:λ`.
    fn from_str(s: &str) -> Result<Self> {
        let (name, lambda) = match s.split_once(':') {
            Some((n, l)) => {
                let v: f32 = l
                    .trim()
                    .parse()
                    .map_err(|_| anyhow::anyhow!("aggregation {s:?}: λ {l:?} is not a number"))?;
                (n.trim(), Some(v))
            }
            None => (s.trim(), None),
        };
        let need = |name: &str| {
            lambda.ok_or_else(|| {
                anyhow::anyhow!("aggregation {name} needs a weight: {name}:λ (e.g. {name}:0.5)")
            })
        };
        let a = match name {
            "mean" | "median" | "min" | "wco" if lambda.is_some() => {
                bail!("aggregation {name} takes no weight (got {s:?})")
            }
            "mean" => Aggregation::Mean,
            "median" => Aggregation::Median,
            "min" | "wco" => Aggregation::Min,
            "mean-minus-std" | "uwo" => Aggregation::MeanMinusStd {
                lambda: need(name)?,
                spread: Spread::Std,
            },
            "mean-minus-var" => Aggregation::MeanMinusStd {
                lambda: need(name)?,
                spread: Spread::Variance,
            },
            "brme" => Aggregation::Brme {
                lambda: need(name)?,
            },
            other => bail!(
                "unknown aggregation {other:?}: mean, median, min, mean-minus-std:λ, mean-minus-var:λ, brme:λ"
            ),
        };
        a.validate()?;
        Ok(a)
    }
}

/// BRME's combination (Yan et al. 2024): per sample `i`, `k* = argmin_k σ[k][i]` (the first on
/// ties) and `r_i = λ·R[k*][i] + (1 − λ)·min_k R[k][i]`. `sigma` has the shape of `rewards`.
pub fn brme(rewards: &RewardMatrix, sigma: &RewardMatrix, lambda: f32) -> Result<Vec<f32>> {
    if sigma.members() != rewards.members() || sigma.samples() != rewards.samples() {
        bail!(
            "brme: the uncertainty matrix is {}×{}, the rewards {}×{}",
            sigma.members(),
            sigma.samples(),
            rewards.members(),
            rewards.samples()
        );
    }
    Aggregation::Brme { lambda }.validate()?;
    Ok((0..rewards.samples())
        .map(|i| {
            let s = sigma.column(i);
            let nominal = (0..s.len()).fold(0, |best, k| if s[k] < s[best] { k } else { best });
            let r = rewards.column(i);
            lambda * r[nominal] + (1.0 - lambda) * min(&r)
        })
        .collect())
}

/// `σ[k][i] = |R[k][i] − mean_j R[j][i]|`: the stand-in uncertainty of scalar members for
/// [`brme`] (see [`Aggregation::Brme`]).
pub fn deviation_from_mean(rewards: &RewardMatrix) -> RewardMatrix {
    let means: Vec<f32> = (0..rewards.samples())
        .map(|i| mean(&rewards.column(i)))
        .collect();
    RewardMatrix {
        rows: (0..rewards.members())
            .map(|k| {
                rewards
                    .row(k)
                    .iter()
                    .zip(&means)
                    .map(|(r, m)| (r - m).abs())
                    .collect()
            })
            .collect(),
    }
}

fn mean(v: &[f32]) -> f32 {
    (v.iter().map(|&x| x as f64).sum::<f64>() / v.len() as f64) as f32
}

fn variance(v: &[f32]) -> f32 {
    let m = v.iter().map(|&x| x as f64).sum::<f64>() / v.len() as f64;
    (v.iter().map(|&x| (x as f64 - m).powi(2)).sum::<f64>() / v.len() as f64) as f32
}

fn min(v: &[f32]) -> f32 {
    v.iter().copied().fold(f32::INFINITY, f32::min)
}

fn median(v: &[f32]) -> f32 {
    let mut s = v.to_vec();
    s.sort_by(f32::total_cmp);
    let n = s.len();
    if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Three members, two samples:
    /// sample 0: rewards (1, 2, 6)  → mean 3, median 2, min 1, var (4+1+9)/3 = 14/3
    /// sample 1: rewards (0, -2, 2) → mean 0, median 0, min -2, var 8/3
    fn matrix() -> RewardMatrix {
        RewardMatrix::new(vec![vec![1.0, 0.0], vec![2.0, -2.0], vec![6.0, 2.0]]).unwrap()
    }

    fn close(a: &[f32], b: &[f32]) {
        assert_eq!(a.len(), b.len());
        for (x, y) in a.iter().zip(b) {
            assert!((x - y).abs() < 1e-5, "{a:?} vs {b:?}");
        }
    }

    #[test]
    fn mean_median_and_min_on_hand_worked_numbers() {
        let m = matrix();
        close(&Aggregation::Mean.apply(&m).unwrap(), &[3.0, 0.0]);
        close(&Aggregation::Median.apply(&m).unwrap(), &[2.0, 0.0]);
        close(&Aggregation::Min.apply(&m).unwrap(), &[1.0, -2.0]);
        // Even K: the mean of the middle two, (2 + 4) / 2.
        let even = RewardMatrix::new(vec![vec![9.0], vec![2.0], vec![4.0], vec![-1.0]]).unwrap();
        close(&Aggregation::Median.apply(&even).unwrap(), &[3.0]);
    }

    #[test]
    fn mean_minus_lambda_std_and_variance() {
        let m = matrix();
        let std = Aggregation::MeanMinusStd {
            lambda: 0.5,
            spread: Spread::Std,
        };
        let s0 = (14.0f32 / 3.0).sqrt();
        let s1 = (8.0f32 / 3.0).sqrt();
        close(&std.apply(&m).unwrap(), &[3.0 - 0.5 * s0, -0.5 * s1]);
        let var = Aggregation::MeanMinusStd {
            lambda: 0.5,
            spread: Spread::Variance,
        };
        close(&var.apply(&m).unwrap(), &[3.0 - 7.0 / 3.0, -4.0 / 3.0]);
        // λ = 0 is the mean.
        let zero = Aggregation::MeanMinusStd {
            lambda: 0.0,
            spread: Spread::Std,
        };
        close(&zero.apply(&m).unwrap(), &[3.0, 0.0]);
    }

    #[test]
    fn brme_mixes_the_least_uncertain_members_reward_with_the_minimum() {
        let m = matrix();
        // An explicit σ: sample 0 trusts member 2 (σ 0.1), sample 1 member 0 (σ 0.2).
        let sigma =
            RewardMatrix::new(vec![vec![0.5, 0.2], vec![0.3, 0.9], vec![0.1, 0.4]]).unwrap();
        // sample 0: 0.25·6 + 0.75·1 = 2.25; sample 1: 0.25·0 + 0.75·(−2) = −1.5
        close(&brme(&m, &sigma, 0.25).unwrap(), &[2.25, -1.5]);
        // Through `apply`, σ_k = |r_k − r̄|: sample 0 deviations (2, 1, 3) → member 1 (r = 2):
        // 0.5·2 + 0.5·1 = 1.5; sample 1 deviations (0, 2, 2) → member 0 (r = 0): 0.5·0 + 0.5·(−2) = −1.
        close(
            &Aggregation::Brme { lambda: 0.5 }.apply(&m).unwrap(),
            &[1.5, -1.0],
        );
        // λ = 0 is the minimum; λ = 1 the nominal reward alone.
        close(&brme(&m, &sigma, 0.0).unwrap(), &[1.0, -2.0]);
        close(&brme(&m, &sigma, 1.0).unwrap(), &[6.0, 0.0]);
        let wrong = RewardMatrix::new(vec![vec![0.1, 0.2]]).unwrap();
        assert!(brme(&m, &wrong, 0.5).is_err());
    }

    #[test]
    fn bad_matrices_and_parameters_are_named() {
        let err = RewardMatrix::new(vec![]).unwrap_err().to_string();
        assert!(err.contains("at least one member"), "{err}");
        let err = RewardMatrix::new(vec![vec![1.0, 2.0], vec![1.0]])
            .unwrap_err()
            .to_string();
        assert!(err.contains("member 1 has 1 rewards"), "{err}");
        let err = RewardMatrix::new(vec![vec![1.0, f32::NAN]])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("member 0: the reward of sample 1 is NaN"),
            "{err}"
        );
        assert!(Aggregation::Brme { lambda: 1.5 }.apply(&matrix()).is_err());
        assert!(
            Aggregation::MeanMinusStd {
                lambda: -1.0,
                spread: Spread::Std
            }
            .apply(&matrix())
            .is_err()
        );
    }

    #[test]
    fn aggregations_parse_from_the_command_line_form() {
        assert_eq!("min".parse::<Aggregation>().unwrap(), Aggregation::Min);
        assert_eq!(
            "brme:0.25".parse::<Aggregation>().unwrap(),
            Aggregation::Brme { lambda: 0.25 }
        );
        assert_eq!(
            "uwo:1".parse::<Aggregation>().unwrap(),
            Aggregation::MeanMinusStd {
                lambda: 1.0,
                spread: Spread::Std
            }
        );
        for bad in ["brme", "brme:x", "brme:2", "mean:1", "max"] {
            assert!(bad.parse::<Aggregation>().is_err(), "{bad}");
        }
    }

    #[test]
    fn aggregations_read_from_toml_by_kind() {
        #[derive(Deserialize)]
        struct W {
            a: Aggregation,
        }
        let parse = |s: &str| toml::from_str::<W>(s).map(|w| w.a);
        assert_eq!(parse("a = { kind = \"min\" }").unwrap(), Aggregation::Min);
        assert_eq!(parse("a = { kind = \"wco\" }").unwrap(), Aggregation::Min);
        assert_eq!(
            parse("a = { kind = \"uwo\", lambda = 0.5, spread = \"variance\" }").unwrap(),
            Aggregation::MeanMinusStd {
                lambda: 0.5,
                spread: Spread::Variance
            }
        );
        assert_eq!(
            parse("a = { kind = \"brme\", lambda = 0.4 }").unwrap(),
            Aggregation::Brme { lambda: 0.4 }
        );
        assert!(
            parse("a = { kind = \"brme\" }").is_err(),
            "lambda is required"
        );
        assert!(parse("a = { kind = \"max\" }").is_err());
    }
}
