//! Combining K attribute rewards `r = (r_1, …, r_K)` into one scalar, and choosing among
//! candidates' attribute vectors. Pure functions on host numbers.

use anyhow::{Result, bail};
use serde::{Deserialize, Serialize};

use crate::linalg::log_sigmoid;

/// A floor on one attribute in [`Combination::Constrained`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Constraint {
    /// Index of the constrained attribute.
    pub attribute: usize,
    /// The floor `θ_j`.
    pub floor: f64,
    /// `μ_j`: the penalty per unit below the floor; absent = a hard constraint (−∞ below).
    #[serde(default)]
    pub penalty: Option<f64>,
}

/// How attribute rewards become one reward.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Combination {
    /// `R = Σᵢ wᵢ rᵢ` — the linear scalarization of multi-objective RLHF (e.g. Rame et al. 2023,
    /// "Rewarded soups"; the fixed-weight baseline of ArmoRM, Wang et al. 2024).
    WeightedSum { weights: Vec<f64> },
    /// `R = Σᵢ log σ(rᵢ − refᵢ)` — the log-sigmoid conjunction of Wang et al. 2024,
    /// "Transforming and Combining Rewards for Aligning Large Language Models": each reward is
    /// centred on a reference (`refᵢ`: e.g. a reference policy's mean reward on attribute i)
    /// and squashed, so the sum behaves like a logical AND — it rewards being good on every
    /// attribute and gains little from over-shooting one.
    LogSigmoidConjunction { reference: Vec<f64> },
    /// `R = r_obj − Σⱼ μⱼ · max(0, θⱼ − r_j)`, and `R = −∞` when a hard constraint (no `μⱼ`)
    /// is violated (`r_j < θⱼ`). The penalty form is the Lagrangian of constrained RLHF with
    /// fixed multipliers (Moskovitz et al. 2024, "Confronting Reward Model Overoptimization
    /// with Constrained RLHF"; Dai et al. 2024, "Safe RLHF"), restricted to violations.
    Constrained {
        objective: usize,
        constraints: Vec<Constraint>,
    },
    /// `R = −maxᵢ wᵢ (zᵢ − rᵢ)` — the (negated) weighted Tchebycheff distance to an ideal point
    /// `z` (Miettinen 1999, "Nonlinear Multiobjective Optimization"; Lin et al. 2024, "Smooth
    /// Tchebycheff Scalarization for Multi-Objective Optimization"). Unlike a weighted sum, its
    /// maximizers reach every Pareto-optimal point, the non-convex parts of the front included.
    Tchebycheff { weights: Vec<f64>, ideal: Vec<f64> },
}

impl Combination {
    /// Checks the parameters against `k` attributes: lengths, indices, finite values, weights
    /// and penalties ≥ 0.
    pub fn validate(&self, k: usize) -> Result<()> {
        let finite = |name: &str, v: &[f64]| -> Result<()> {
            if v.len() != k {
                bail!("{name} has {} entries for {k} attributes", v.len());
            }
            if let Some(i) = v.iter().position(|x| !x.is_finite()) {
                bail!("{name}[{i}] is {}, not a finite number", v[i]);
            }
            Ok(())
        };
        match self {
            Combination::WeightedSum { weights } => finite("weights", weights)?,
            Combination::LogSigmoidConjunction { reference } => finite("reference", reference)?,
            Combination::Constrained {
                objective,
                constraints,
            } => {
                if *objective >= k {
                    bail!("objective {objective} is out of range for {k} attributes");
                }
                for (j, c) in constraints.iter().enumerate() {
                    if c.attribute >= k {
                        bail!(
                            "constraints[{j}].attribute {} is out of range for {k} attributes",
                            c.attribute
                        );
                    }
                    if !c.floor.is_finite() {
                        bail!("constraints[{j}].floor is {}", c.floor);
                    }
                    if let Some(mu) = c.penalty
                        && !(mu >= 0.0 && mu.is_finite())
                    {
                        bail!("constraints[{j}].penalty {mu} must be a finite number ≥ 0");
                    }
                }
            }
            Combination::Tchebycheff { weights, ideal } => {
                finite("weights", weights)?;
                finite("ideal", ideal)?;
            }
        }
        if let Combination::WeightedSum { weights } | Combination::Tchebycheff { weights, .. } =
            self
            && let Some(i) = weights.iter().position(|&w| w < 0.0)
        {
            bail!("weights[{i}] = {} must be ≥ 0", weights[i]);
        }
        Ok(())
    }

    /// The combined reward of one attribute vector (see each variant's formula).
    pub fn combine(&self, r: &[f64]) -> Result<f64> {
        self.validate(r.len())?;
        if let Some(i) = r.iter().position(|x| !x.is_finite()) {
            bail!("attribute reward {i} is {}, not a finite number", r[i]);
        }
        Ok(match self {
            Combination::WeightedSum { weights } => weights.iter().zip(r).map(|(w, x)| w * x).sum(),
            Combination::LogSigmoidConjunction { reference } => reference
                .iter()
                .zip(r)
                .map(|(c, x)| log_sigmoid(x - c))
                .sum(),
            Combination::Constrained {
                objective,
                constraints,
            } => {
                let mut total = r[*objective];
                for c in constraints {
                    let shortfall = (c.floor - r[c.attribute]).max(0.0);
                    if shortfall > 0.0 {
                        match c.penalty {
                            None => return Ok(f64::NEG_INFINITY),
                            Some(mu) => total -= mu * shortfall,
                        }
                    }
                }
                total
            }
            Combination::Tchebycheff { weights, ideal } => -weights
                .iter()
                .zip(ideal)
                .zip(r)
                .map(|((w, z), x)| w * (z - x))
                .fold(f64::NEG_INFINITY, f64::max),
        })
    }
}

/// `a` Pareto-dominates `b`: at least as good on every attribute, strictly better on one.
pub fn dominates(a: &[f64], b: &[f64]) -> bool {
    a.iter().zip(b).all(|(x, y)| x >= y) && a.iter().zip(b).any(|(x, y)| x > y)
}

/// Indices (ascending) of the non-dominated candidates: the Pareto front of `candidates`.
pub fn non_dominated(candidates: &[Vec<f64>]) -> Vec<usize> {
    (0..candidates.len())
        .filter(|&i| {
            !candidates
                .iter()
                .enumerate()
                .any(|(j, c)| j != i && dominates(c, &candidates[i]))
        })
        .collect()
}

/// The 2-D hypervolume: the area dominated by `points` and bounded below by `reference`
/// (points not above the reference on both attributes add nothing).
pub fn hypervolume_2d(points: &[[f64; 2]], reference: [f64; 2]) -> f64 {
    let mut p: Vec<[f64; 2]> = points
        .iter()
        .copied()
        .filter(|q| q[0] > reference[0] && q[1] > reference[1])
        .collect();
    // Sweep by the first attribute, descending; each point adds the strip above the best
    // second attribute seen so far.
    p.sort_by(|a, b| b[0].total_cmp(&a[0]));
    let mut area = 0.0;
    let mut best_y = reference[1];
    for q in p {
        if q[1] > best_y {
            area += (q[0] - reference[0]) * (q[1] - best_y);
            best_y = q[1];
        }
    }
    area
}

/// Candidate indices ordered by combined reward, best first (ties keep input order).
pub fn rank(candidates: &[Vec<f64>], combination: &Combination) -> Result<Vec<usize>> {
    let scores = candidates
        .iter()
        .enumerate()
        .map(|(i, c)| {
            combination
                .combine(c)
                .map_err(|e| anyhow::anyhow!("candidate {i}: {e}"))
        })
        .collect::<Result<Vec<f64>>>()?;
    let mut order: Vec<usize> = (0..candidates.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    Ok(order)
}

/// Best-of-N: the index of the candidate with the highest combined reward.
pub fn best_of_n(candidates: &[Vec<f64>], combination: &Combination) -> Result<usize> {
    if candidates.is_empty() {
        bail!("best-of-n over no candidates");
    }
    Ok(rank(candidates, combination)?[0])
}

/// One direction of DPA steering and what it selected.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SteeringPoint {
    /// θ in degrees: `v = (cos θ, sin θ)`.
    pub angle_deg: f64,
    /// Mean of every attribute over the selected responses (one per prompt).
    pub mean_selected: Vec<f64>,
}

/// Directional Preference Alignment steering at inference (Wang et al. 2024, "Arithmetic
/// Control of LLMs for Diverse User Preferences: Directional Preference Alignment with
/// Multi-Objective Rewards"): a unit vector `v = (cos θ, sin θ)` in the plane of attributes
/// `axes = (a, b)`; for each prompt, best-of-N picks the candidate maximizing
/// `v·r = cos θ · r_a + sin θ · r_b`; reported per θ: the mean of every attribute over the
/// picked candidates. `groups[p][n]` is candidate n of prompt p's attribute vector.
pub fn dpa_steering(
    groups: &[Vec<Vec<f64>>],
    axes: (usize, usize),
    angles_deg: &[f64],
) -> Result<Vec<SteeringPoint>> {
    let Some(k) = groups.iter().flatten().next().map(Vec::len) else {
        bail!("DPA steering: no candidates");
    };
    if axes.0 >= k || axes.1 >= k {
        bail!("DPA steering: axes {axes:?} out of range for {k} attributes");
    }
    if let Some(p) = groups.iter().position(Vec::is_empty) {
        bail!("DPA steering: prompt {p} has no candidates");
    }
    angles_deg
        .iter()
        .map(|&angle| {
            let t = angle.to_radians();
            let mut w = vec![0.0; k];
            w[axes.0] += t.cos();
            w[axes.1] += t.sin();
            // A direction may point against an attribute: a plain dot product, negative weights allowed.
            let mut mean = vec![0.0; k];
            for (p, cands) in groups.iter().enumerate() {
                let score = |c: &Vec<f64>| -> Result<f64> {
                    if c.len() != k {
                        bail!("DPA steering: prompt {p} has a candidate of {} attributes, expected {k}", c.len());
                    }
                    Ok(c.iter().zip(&w).map(|(x, y)| x * y).sum())
                };
                let mut best = 0;
                let mut best_score = score(&cands[0])?;
                for (i, c) in cands.iter().enumerate().skip(1) {
                    let s = score(c)?;
                    if s > best_score {
                        best = i;
                        best_score = s;
                    }
                }
                for (m, x) in mean.iter_mut().zip(&cands[best]) {
                    *m += x / groups.len() as f64;
                }
            }
            Ok(SteeringPoint {
                angle_deg: angle,
                mean_selected: mean,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weighted_sum_and_conjunction_on_hand_worked_numbers() {
        let sum = Combination::WeightedSum {
            weights: vec![0.5, 2.0],
        };
        assert_eq!(sum.combine(&[2.0, -1.0]).unwrap(), -1.0);
        let and = Combination::LogSigmoidConjunction {
            reference: vec![1.0, 0.0],
        };
        // log σ(1) + log σ(0) = −ln(1 + e⁻¹) − ln 2.
        let want = -(1.0 + (-1.0f64).exp()).ln() - 2f64.ln();
        assert!((and.combine(&[2.0, 0.0]).unwrap() - want).abs() < 1e-12);
        // A conjunction prefers balanced vectors: (1, 1) over (3, −1), which have the same sum.
        let zero = Combination::LogSigmoidConjunction {
            reference: vec![0.0, 0.0],
        };
        assert!(zero.combine(&[1.0, 1.0]).unwrap() > zero.combine(&[3.0, -1.0]).unwrap());
        assert!(sum.combine(&[1.0]).is_err());
        assert!(sum.combine(&[1.0, f64::NAN]).is_err());
    }

    #[test]
    fn constraints_penalize_or_forbid_below_the_floor() {
        let soft = Combination::Constrained {
            objective: 0,
            constraints: vec![Constraint {
                attribute: 1,
                floor: 0.5,
                penalty: Some(4.0),
            }],
        };
        assert_eq!(soft.combine(&[2.0, 1.0]).unwrap(), 2.0); // above the floor: no penalty
        assert_eq!(soft.combine(&[2.0, 0.0]).unwrap(), 0.0); // 2 − 4·0.5
        let hard = Combination::Constrained {
            objective: 0,
            constraints: vec![Constraint {
                attribute: 1,
                floor: 0.5,
                penalty: None,
            }],
        };
        assert_eq!(hard.combine(&[2.0, 0.49]).unwrap(), f64::NEG_INFINITY);
        assert_eq!(hard.combine(&[2.0, 0.5]).unwrap(), 2.0);
        let bad = Combination::Constrained {
            objective: 2,
            constraints: vec![],
        };
        assert!(
            bad.combine(&[0.0, 0.0])
                .unwrap_err()
                .to_string()
                .contains("out of range")
        );
    }

    #[test]
    fn pareto_front_tchebycheff_and_hypervolume() {
        let c = vec![
            vec![1.0, 5.0], // front
            vec![3.0, 3.0], // front
            vec![2.0, 2.0], // dominated by (3, 3)
            vec![5.0, 1.0], // front
            vec![3.0, 3.0], // a duplicate is not dominated by its twin
            vec![0.0, 5.0], // dominated by (1, 5)
        ];
        assert_eq!(non_dominated(&c), vec![0, 1, 3, 4]);
        let t = Combination::Tchebycheff {
            weights: vec![1.0, 1.0],
            ideal: vec![5.0, 5.0],
        };
        // −max(5 − 3, 5 − 3) = −2 beats −max(4, 0) = −4.
        assert_eq!(t.combine(&[3.0, 3.0]).unwrap(), -2.0);
        assert_eq!(best_of_n(&c, &t).unwrap(), 1);
        let s = Combination::WeightedSum {
            weights: vec![1.0, 0.0],
        };
        assert_eq!(rank(&c, &s).unwrap(), vec![3, 1, 4, 2, 0, 5]);
        // Front (1,5), (3,3), (5,1) over reference (0,0): 5·1 + 3·2 + 1·2 = 13.
        let hv = hypervolume_2d(
            &[[1.0, 5.0], [3.0, 3.0], [2.0, 2.0], [5.0, 1.0]],
            [0.0, 0.0],
        );
        assert!((hv - 13.0).abs() < 1e-12, "{hv}");
        assert!(best_of_n(&[], &t).is_err());
    }

    #[test]
    fn dpa_steering_selects_along_the_direction() {
        // Two prompts, three candidates each: (harmless, verbose).
        let groups = vec![
            vec![vec![1.0, 0.0], vec![0.0, 1.0], vec![0.6, 0.6]],
            vec![vec![2.0, -1.0], vec![-1.0, 2.0], vec![0.5, 0.5]],
        ];
        let pts = dpa_steering(&groups, (0, 1), &[0.0, 45.0, 90.0]).unwrap();
        assert_eq!(pts[0].mean_selected, vec![1.5, -0.5]); // θ = 0: the most harmless
        assert_eq!(pts[2].mean_selected, vec![-0.5, 1.5]); // θ = 90°: the most verbose
        // θ = 45°: v·r ∝ r_a + r_b → (0.6, 0.6) [1.2 > 1] and a tie (1, 1 vs 1) broken by order.
        let m = &pts[1].mean_selected;
        assert!(
            (m[0] - 1.3).abs() < 1e-12 && (m[1] + 0.2).abs() < 1e-12,
            "{m:?}"
        );
        assert!(dpa_steering(&groups, (0, 2), &[0.0]).is_err());
    }
}
