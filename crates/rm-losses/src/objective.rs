//! The pairwise reward-model objectives a trainer selects from a TOML recipe.

use burn::tensor::Tensor;
use serde::{Deserialize, Serialize};

use crate::LossError;
use crate::checks::{pair_len, same_len};
use crate::pairwise::{
    centering_term, check_centering, check_label_smoothing, smoothed_nll, soft_nll,
};

/// One batch of scalar rewards of preference pairs, `[N]` each.
#[derive(Clone, Debug)]
pub struct PairwiseRewards {
    /// Rewards of the preferred responses.
    pub chosen: Tensor<1>,
    /// Rewards of the dispreferred responses.
    pub rejected: Tensor<1>,
    /// Per-pair margins `m` (preference strength); used by `bradley-terry` with `margin = true`.
    pub margin: Option<Tensor<1>>,
    /// Per-pair soft labels `p = P(chosen ≻ rejected) ∈ [0, 1]`; used by `distillation`.
    pub soft_label: Option<Tensor<1>>,
}

impl PairwiseRewards {
    /// A batch of plain pairs, with no margins and no soft labels.
    pub fn new(chosen: Tensor<1>, rejected: Tensor<1>) -> Self {
        Self {
            chosen,
            rejected,
            margin: None,
            soft_label: None,
        }
    }

    /// The same batch with per-pair margins.
    pub fn with_margin(mut self, margin: Tensor<1>) -> Self {
        self.margin = Some(margin);
        self
    }

    /// The same batch with per-pair soft labels.
    pub fn with_soft_label(mut self, soft_label: Tensor<1>) -> Self {
        self.soft_label = Some(soft_label);
        self
    }
}

/// A pairwise objective on scalar rewards, as written in a recipe's `[objective]` table:
///
/// ```toml
/// [objective]
/// kind = "bradley-terry"   # or "distillation"
/// margin = true            # bradley-terry: −log σ(r_c − r_r − m)  (Llama 2)
/// centering = 0.01         # both: + λ·mean((r_c + r_r)²)         (Eisenstein et al. 2023)
/// label_smoothing = 0.05   # bradley-terry: −(1−ε) log σ(Δ) − ε log σ(−Δ)
/// ```
///
/// Every field is optional; `kind = "bradley-terry"` alone (the [`Default`]) is plain
/// Bradley–Terry. Unknown fields are rejected.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum PairwiseObjective {
    /// `mean[ −(1−ε) log σ(Δ) − ε log σ(−Δ) ] + λ·mean((r_c + r_r)²)` with
    /// `Δ = r_c − r_r (− m when margin)`: Bradley–Terry ([`crate::bradley_terry_loss`]) with
    /// the optional margin ([`crate::bradley_terry_margin_loss`]), label smoothing
    /// ([`crate::label_smoothed_bradley_terry_loss`]) and centering
    /// ([`crate::reward_centering_penalty`]).
    BradleyTerry {
        /// Subtract the batch's per-pair `margin` from `Δ` (the batch must carry margins).
        #[serde(default)]
        margin: bool,
        /// Coefficient `λ ≥ 0` of the centering penalty (0 = off).
        #[serde(default)]
        centering: f32,
        /// Label-flip probability `ε ∈ [0, 0.5)` (0 = off).
        #[serde(default)]
        label_smoothing: f32,
    },
    /// `mean −[p log σ(Δ) + (1−p) log σ(−Δ)] + λ·mean((r_c + r_r)²)`: distillation of the batch's
    /// soft labels `p` ([`crate::preference_distillation_loss`]; the batch must carry them).
    Distillation {
        /// Coefficient `λ ≥ 0` of the centering penalty (0 = off).
        #[serde(default)]
        centering: f32,
    },
}

impl Default for PairwiseObjective {
    /// Plain Bradley–Terry.
    fn default() -> Self {
        PairwiseObjective::BradleyTerry {
            margin: false,
            centering: 0.0,
            label_smoothing: 0.0,
        }
    }
}

impl PairwiseObjective {
    /// The recipe name of this objective (`kind`).
    pub fn name(&self) -> &'static str {
        match self {
            PairwiseObjective::BradleyTerry { .. } => "bradley-terry",
            PairwiseObjective::Distillation { .. } => "distillation",
        }
    }

    /// Whether the loss pins the rewards' common offset. Both objectives see only the
    /// differences `r_c − r_r`, so a constant added to every reward (a reward head's bias)
    /// changes nothing — its gradient is 0 but for float rounding, which Adam would blow up to
    /// full-size steps — unless the centering penalty `λ·mean((r_c + r_r)²)` is on.
    pub fn identifies_offset(&self) -> bool {
        match *self {
            PairwiseObjective::BradleyTerry { centering, .. }
            | PairwiseObjective::Distillation { centering } => centering > 0.0,
        }
    }

    /// Checks the hyper-parameters without a batch (for validating a recipe up front).
    pub fn validate(&self) -> Result<(), LossError> {
        match *self {
            PairwiseObjective::BradleyTerry {
                centering,
                label_smoothing,
                ..
            } => {
                check_centering(self.name(), centering)?;
                check_label_smoothing(self.name(), label_smoothing)
            }
            PairwiseObjective::Distillation { centering } => {
                check_centering(self.name(), centering)
            }
        }
    }

    /// The mean loss of `batch`, a `[1]` tensor. Inputs the objective does not use (a margin
    /// when `margin = false`, soft labels for Bradley–Terry) are ignored.
    ///
    /// Errors: invalid hyper-parameters; an empty batch; inputs of different lengths; a margin or
    /// soft label the objective needs but the batch lacks.
    pub fn loss(&self, batch: PairwiseRewards) -> Result<Tensor<1>, LossError> {
        self.validate()?;
        let objective = self.name();
        let n = pair_len(objective, &batch.chosen, &batch.rejected)?;
        let delta = batch.chosen.clone() - batch.rejected.clone();
        let (fit, centering) = match *self {
            PairwiseObjective::BradleyTerry {
                margin,
                centering,
                label_smoothing,
            } => {
                let delta = if margin {
                    let m = batch.margin.ok_or(LossError::MissingInput {
                        objective,
                        input: "margin",
                    })?;
                    same_len(objective, "margin", n, &m)?;
                    delta - m
                } else {
                    delta
                };
                (smoothed_nll(delta, label_smoothing).mean(), centering)
            }
            PairwiseObjective::Distillation { centering } => {
                let p = batch.soft_label.ok_or(LossError::MissingInput {
                    objective,
                    input: "soft_label",
                })?;
                same_len(objective, "soft_label", n, &p)?;
                (soft_nll(delta, p).mean(), centering)
            }
        };
        if centering == 0.0 {
            Ok(fit)
        } else {
            let penalty = centering_term(batch.chosen, batch.rejected).mul_scalar(centering);
            Ok(fit + penalty)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{assert_close, check_gradients, scalar, vector};
    use crate::{
        bradley_terry_loss, bradley_terry_margin_loss, label_smoothed_bradley_terry_loss,
        preference_distillation_loss, reward_centering_penalty,
    };
    use rm_core::device::test_device;

    /// The recipe's `[objective]` table.
    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Recipe {
        objective: PairwiseObjective,
    }

    #[test]
    fn toml_round_trips_and_defaults_are_plain_bradley_terry() {
        let plain: Recipe = toml::from_str("[objective]\nkind = \"bradley-terry\"\n").unwrap();
        assert_eq!(plain.objective, PairwiseObjective::default());

        for objective in [
            PairwiseObjective::default(),
            PairwiseObjective::BradleyTerry {
                margin: true,
                centering: 0.01,
                label_smoothing: 0.05,
            },
            PairwiseObjective::Distillation { centering: 0.5 },
        ] {
            let recipe = Recipe { objective };
            let text = toml::to_string(&recipe).unwrap();
            assert_eq!(toml::from_str::<Recipe>(&text).unwrap(), recipe, "{text}");
        }

        let full: Recipe = toml::from_str(
            "[objective]\nkind = \"bradley-terry\"\nmargin = true\ncentering = 0.01\n\
             label_smoothing = 0.1\n",
        )
        .unwrap();
        assert_eq!(
            full.objective,
            PairwiseObjective::BradleyTerry {
                margin: true,
                centering: 0.01,
                label_smoothing: 0.1
            }
        );
        let distill: Recipe = toml::from_str("[objective]\nkind = \"distillation\"\n").unwrap();
        assert_eq!(
            distill.objective,
            PairwiseObjective::Distillation { centering: 0.0 }
        );
        // Unknown kinds and misspelt fields are errors, not silently plain BT.
        assert!(toml::from_str::<Recipe>("[objective]\nkind = \"hinge\"\n").is_err());
        assert!(
            toml::from_str::<Recipe>("[objective]\nkind = \"bradley-terry\"\nmargins = true\n")
                .is_err()
        );
    }

    #[test]
    fn each_variant_equals_its_free_functions() {
        let d = test_device();
        let c = [0.5, -1.2, 2.0];
        let r = [0.2, 0.3, -1.0];
        let m = [0.0, 1.0, 0.5];
        let p = [0.9, 0.2, 0.6];
        let batch = || {
            PairwiseRewards::new(vector(&c, &d), vector(&r, &d))
                .with_margin(vector(&m, &d))
                .with_soft_label(vector(&p, &d))
        };
        let plain = PairwiseObjective::default().loss(batch()).unwrap();
        let expected = bradley_terry_loss(vector(&c, &d), vector(&r, &d)).unwrap();
        assert_close(scalar(plain), scalar(expected), 1e-6);

        let margin = PairwiseObjective::BradleyTerry {
            margin: true,
            centering: 0.0,
            label_smoothing: 0.0,
        };
        let expected =
            bradley_terry_margin_loss(vector(&c, &d), vector(&r, &d), vector(&m, &d)).unwrap();
        assert_close(
            scalar(margin.loss(batch()).unwrap()),
            scalar(expected),
            1e-6,
        );

        let smoothed_centered = PairwiseObjective::BradleyTerry {
            margin: false,
            centering: 0.1,
            label_smoothing: 0.2,
        };
        let expected =
            scalar(label_smoothed_bradley_terry_loss(vector(&c, &d), vector(&r, &d), 0.2).unwrap())
                + scalar(reward_centering_penalty(vector(&c, &d), vector(&r, &d), 0.1).unwrap());
        assert_close(
            scalar(smoothed_centered.loss(batch()).unwrap()),
            expected,
            1e-6,
        );

        let distill = PairwiseObjective::Distillation { centering: 0.0 };
        let expected =
            preference_distillation_loss(vector(&c, &d), vector(&r, &d), vector(&p, &d)).unwrap();
        assert_close(
            scalar(distill.loss(batch()).unwrap()),
            scalar(expected),
            1e-6,
        );
    }

    #[test]
    fn missing_inputs_bad_parameters_and_bad_batches_are_errors() {
        let d = test_device();
        let plain = || PairwiseRewards::new(vector(&[1.0], &d), vector(&[0.0], &d));
        let margin = PairwiseObjective::BradleyTerry {
            margin: true,
            centering: 0.0,
            label_smoothing: 0.0,
        };
        assert_eq!(
            margin.loss(plain()).unwrap_err(),
            LossError::MissingInput {
                objective: "bradley-terry",
                input: "margin"
            }
        );
        assert_eq!(
            PairwiseObjective::Distillation { centering: 0.0 }
                .loss(plain())
                .unwrap_err()
                .to_string(),
            "distillation: the batch carries no `soft_label`, which this objective needs"
        );
        let bad = PairwiseObjective::BradleyTerry {
            margin: false,
            centering: 0.0,
            label_smoothing: 0.7,
        };
        assert!(matches!(
            bad.validate(),
            Err(LossError::InvalidParameter {
                parameter: "label_smoothing",
                ..
            })
        ));
        assert!(bad.loss(plain()).is_err());
        assert_eq!(
            PairwiseObjective::default()
                .loss(PairwiseRewards::new(vector(&[], &d), vector(&[], &d)))
                .unwrap_err(),
            LossError::EmptyBatch {
                objective: "bradley-terry"
            }
        );
        assert!(matches!(
            PairwiseObjective::default().loss(PairwiseRewards::new(
                vector(&[1.0, 2.0], &d),
                vector(&[0.0], &d)
            )),
            Err(LossError::ShapeMismatch { .. })
        ));
        let short_margin = plain().with_margin(vector(&[1.0, 1.0], &d));
        assert!(matches!(
            margin.loss(short_margin),
            Err(LossError::ShapeMismatch {
                input: "margin",
                ..
            })
        ));
    }

    #[test]
    fn combined_objective_gradients_match_finite_differences() {
        let c = [0.5, -1.2, 2.0, 0.1];
        let r = [0.2, 0.3, -1.0, 0.1];
        let m = [0.0, 1.0, 0.5, -0.3];
        let objective = PairwiseObjective::BradleyTerry {
            margin: true,
            centering: 0.2,
            label_smoothing: 0.1,
        };
        check_gradients(&[(&c, [4]), (&r, [4]), (&m, [4])], |t| {
            let batch = PairwiseRewards::new(t[0].clone(), t[1].clone()).with_margin(t[2].clone());
            objective.loss(batch).unwrap()
        });
        let distill = PairwiseObjective::Distillation { centering: 0.3 };
        let p = [0.9, 0.2, 0.6, 1.0];
        check_gradients(&[(&c, [4]), (&r, [4]), (&p, [4])], |t| {
            let batch =
                PairwiseRewards::new(t[0].clone(), t[1].clone()).with_soft_label(t[2].clone());
            distill.loss(batch).unwrap()
        });
    }
}
