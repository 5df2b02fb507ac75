//! The preference-optimisation recipe (`recipes/dpo-*.toml`): `[model]` (the policy, its
//! length limit, LoRA), `[data]` (typed pair sources, as reward models take them),
//! `[objective]` ([`PreferenceObjective`]: `kind` and TRL's config names), `[train]`, `[eval]`.

use std::path::Path;

use anyhow::{Context, Result, bail};
use rm_core::models::policy_folder::PolicyModelConfig;
use rm_core::train::TrainConfig;
use rm_pipeline::recipe::DataConfig;
use serde::{Deserialize, Serialize};

use super::augment::RewardAugmentConfig;
use super::objective::PreferenceObjective;
use super::reference_cache::ReferenceConfig;
use crate::online::rewards::RewardComponentConfig;

/// The `[eval]` section.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PreferenceEvalConfig {
    /// Pairs per evaluation forward pass (each pass runs 2 × this many sequences through the
    /// policy and again through the reference).
    #[serde(default = "eval_pairs")]
    pub batch_size: usize,
}

fn eval_pairs() -> usize {
    8
}

impl Default for PreferenceEvalConfig {
    fn default() -> Self {
        Self {
            batch_size: eval_pairs(),
        }
    }
}

/// A DPO-family training recipe.
///
/// ```toml
/// [model]
/// policy = "models/smollm2"
/// max_len = 256
/// lora = { rank = 16, alpha = 32.0, target_modules = ["q_proj", "k_proj", "v_proj", "o_proj"] }
///
/// [data]
/// train = { source = "hh-rlhf", split = "train", limit = 256 }
/// eval = { source = "hh-rlhf", split = "dev", limit = 64 }
///
/// [objective]              # TRL's DPOConfig names
/// loss_type = "sigmoid"
/// beta = 0.1
///
/// [train]
/// batch_size = 8
/// micro_batch_size = 2
/// lr = 5e-5
/// out_dir = "runs/dpo-smollm2-hh"
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PreferenceRecipe {
    pub model: PolicyModelConfig,
    pub data: DataConfig,
    #[serde(default)]
    pub objective: PreferenceObjective,
    pub train: TrainConfig,
    #[serde(default)]
    pub eval: PreferenceEvalConfig,
    #[serde(default)]
    pub reference: ReferenceConfig,
    /// `[[reward]]` tables (as `train-rl`'s) scoring the pairs that carry no `scores`, for the
    /// objectives that read them (`copg`, `alol`; [`super::scored`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reward: Vec<RewardComponentConfig>,
    /// Reward-augmented training pairs ([`super::augment`]), when the section is present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reward_augment: Option<RewardAugmentConfig>,
}

impl PreferenceRecipe {
    /// Reads a recipe file with `--set` overrides.
    pub fn load(path: &Path, overrides: &[String]) -> Result<Self> {
        rm_core::recipe::load(path, overrides)
    }

    /// Checks every section, and the combinations `train-po` cannot run.
    pub fn validate(&self) -> Result<()> {
        self.objective.validate()?;
        self.train.validate()?;
        if self.eval.batch_size == 0 {
            bail!("eval.batch_size must be at least 1");
        }
        if let PreferenceObjective::Dpo(c) = &self.objective
            && c.sync_ref_model
        {
            if self.model.lora.is_some() {
                bail!(
                    "objective.sync_ref_model (TR-DPO) needs full fine-tuning: with [model] lora the reference is the base with its adapters switched off, which a refresh cannot change (TRL refuses the same combination); remove lora or set sync_ref_model = false"
                );
            }
            if self.reference.precompute {
                bail!(
                    "objective.sync_ref_model (TR-DPO) refreshes the reference during training, so its log-probs cannot be precomputed; set reference.precompute = false"
                );
            }
        }
        if let Some(augment) = &self.reward_augment {
            augment.validate()?;
            if self.objective.is_unpaired() || self.objective.is_listwise() {
                bail!(
                    "[reward_augment] conditions preference pairs; objective {} trains on {}",
                    self.objective.describe(),
                    if self.objective.is_listwise() {
                        "rankings"
                    } else {
                        "unpaired examples"
                    }
                );
            }
        }
        if !self.reward.is_empty() && !self.needs_train_scores() {
            bail!(
                "[[reward]] tables score the pairs for the objectives that read scores (kind = \"copg\" or \"alol\") and for [reward_augment]; objective {} without [reward_augment] does not: remove them",
                self.objective.describe()
            );
        }
        if self.reference.precompute && !matches!(self.objective, PreferenceObjective::Dpo(_)) {
            bail!(
                "reference.precompute applies to DPO objectives (kind = \"dpo\"); objective {} computes its reference log-probs per batch or needs none",
                self.objective.describe()
            );
        }
        Ok(())
    }

    /// Whether the training pairs need a score per response (the objective reads them, or
    /// `[reward_augment]` conditions on them).
    pub fn needs_train_scores(&self) -> bool {
        self.objective.needs_scores() || self.reward_augment.is_some()
    }

    /// What defines the run (compared on `--resume`).
    pub fn identity(&self) -> Result<serde_json::Value> {
        serde_json::to_value(self).context("serializing the recipe")
    }
}

/// What `plumb train-po` runs: a recipe with `[data]` (pairs, rankings or unpaired examples),
/// or MAH-DPO's with `[[heads]]` ([`super::multi_head`]).
#[derive(Clone, Debug, PartialEq)]
pub enum PoRecipe {
    Single(PreferenceRecipe),
    MultiHead(super::multi_head::MahDpoRecipe),
}

impl PoRecipe {
    /// Reads a recipe file with `--set` overrides; `[[heads]]` makes it MAH-DPO's.
    pub fn load(path: &Path, overrides: &[String]) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading recipe {}", path.display()))?;
        let origin = path.display().to_string();
        let table: toml::Table =
            toml::from_str(&text).with_context(|| format!("{origin}: invalid TOML"))?;
        Ok(match table.contains_key("heads") {
            true => Self::MultiHead(rm_core::recipe::parse(&text, &origin, overrides)?),
            false => Self::Single(rm_core::recipe::parse(&text, &origin, overrides)?),
        })
    }

    /// Points the run at another folder (`plumb --out`).
    pub fn set_out_dir(&mut self, out: std::path::PathBuf) {
        match self {
            Self::Single(r) => r.train.out_dir = out,
            Self::MultiHead(r) => r.train.out_dir = out,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rm_losses::preference::DpoLossType;
    use rm_pipeline::recipe::{HhSplit, PairSource};

    const SHIPPED: &str = include_str!("../../../../recipes/dpo-smollm2-hh.toml");

    #[test]
    fn the_shipped_recipe_parses_and_trl_names_reach_the_objective() {
        let r: PreferenceRecipe = rm_core::recipe::parse(SHIPPED, "dpo", &[]).unwrap();
        r.validate().unwrap();
        assert!(r.model.lora.is_some());
        assert_eq!(
            r.data.eval,
            PairSource::HhRlhf {
                split: HhSplit::Dev,
                limit: 64,
                skip: 0
            }
        );
        let r: PreferenceRecipe = rm_core::recipe::parse(
            SHIPPED,
            "dpo",
            &[
                "objective.loss_type=[\"sigmoid\", \"sft\"]".into(),
                "objective.loss_weights=[1.0, 0.2]".into(),
                "objective.beta=0.5".into(),
            ],
        )
        .unwrap();
        let PreferenceObjective::Dpo(dpo) = &r.objective else {
            panic!("dpo expected");
        };
        assert_eq!(dpo.loss_type, vec![DpoLossType::Sigmoid, DpoLossType::Sft]);
        assert_eq!(dpo.beta, 0.5);
        for (bad, says) in [
            ("objective.beta=0", "beta"),
            ("objective.sync_ref_model=true", "needs full fine-tuning"),
            ("objective.loss_weights=[1.0, 2.0]", "loss_weights"),
            ("objective={ kind = \"simpo\", beta = -1.0 }", "beta"),
            (
                "objective={ kind = \"selm\", alpha = -0.1 }",
                "objective.alpha",
            ),
            (
                "objective={ kind = \"selm\", sample = { temperature = 0.0 } }",
                "objective.sample.temperature",
            ),
            (
                "objective={ kind = \"treg\", better_prompt = \"x\", worse_prompt = \"x\" }",
                "the same text",
            ),
            (
                "objective={ kind = \"treg\", clip = 0.0 }",
                "objective.clip",
            ),
            ("eval.batch_size=0", "eval.batch_size"),
        ] {
            let r: PreferenceRecipe =
                rm_core::recipe::parse(SHIPPED, "dpo", &[bad.into()]).unwrap();
            let err = format!("{:#}", r.validate().unwrap_err());
            assert!(err.contains(says), "{bad}: {err}");
        }
        let err = rm_core::recipe::parse::<PreferenceRecipe>(
            SHIPPED,
            "dpo",
            &["objective.loss_type=\"dpo\"".into()],
        )
        .unwrap_err();
        assert!(format!("{err:#}").contains("loss_type"), "{err:#}");
    }

    #[test]
    fn the_shipped_selm_treg_pro_and_reward_augmented_recipes_parse_and_validate() {
        use super::super::objective::{SelmConfig, TregConfig};
        for (text, name) in [
            (
                include_str!("../../../../recipes/selm-smollm2-hh.toml"),
                "selm",
            ),
            (
                include_str!("../../../../recipes/treg-smollm2-hh.toml"),
                "treg",
            ),
            (
                include_str!("../../../../recipes/rdpo-smollm2-hh.toml"),
                "rdpo",
            ),
        ] {
            let r: PreferenceRecipe = rm_core::recipe::parse(text, name, &[]).unwrap();
            r.validate().unwrap();
            match (name, &r.objective) {
                ("selm", PreferenceObjective::Selm(c)) => {
                    assert_eq!((c.alpha, c.sample.max_new_tokens), (0.001, 64));
                    assert_eq!(c.sample, SelmConfig::default().sample);
                }
                ("treg", PreferenceObjective::Treg(c)) => {
                    assert_eq!(c, &TregConfig::default());
                }
                ("pro", PreferenceObjective::Pro(c)) => assert_eq!(c.sft_weight, 0.05),
                ("rdpo", PreferenceObjective::Dpo(_)) => {
                    assert!(r.reward_augment.is_some() && r.needs_train_scores());
                    assert_eq!(r.reward.len(), 1);
                }
                (name, other) => panic!("{name}: {other:?}"),
            }
        }
    }

    #[test]
    fn the_shipped_rrpo_and_aligndistil_recipes_parse_and_validate() {
        use super::super::objective::{RrpoConfig, Segmentation};
        const RRPO: &str = include_str!("../../../../recipes/rrpo-smollm2-hh.toml");
        const DISTIL: &str = include_str!("../../../../recipes/aligndistil-smollm2-hh.toml");
        let r: PreferenceRecipe = rm_core::recipe::parse(RRPO, "rrpo", &[]).unwrap();
        r.validate().unwrap();
        assert_eq!(
            r.objective,
            PreferenceObjective::Rrpo(RrpoConfig::default())
        );
        assert_eq!(r.objective.logits_rows(4), 4);
        let r: PreferenceRecipe = rm_core::recipe::parse(DISTIL, "aligndistil", &[]).unwrap();
        r.validate().unwrap();
        let PreferenceObjective::AlignDistil(c) = &r.objective else {
            panic!("aligndistil expected: {:?}", r.objective);
        };
        assert_eq!(c.teacher, std::path::Path::new("runs/dpo-smollm2-hh/final"));
        assert!(c.length_normalize && c.contrast.is_none());
        assert_eq!(r.objective.logits_rows(4), 8);
        // Round trip through the run folder's recipe.toml.
        let text = toml::to_string_pretty(&r).unwrap();
        let back: PreferenceRecipe = rm_core::recipe::parse(&text, "again", &[]).unwrap();
        assert_eq!(back.objective, r.objective);
        for (text, bad, says) in [
            (RRPO, "objective.alpha=-1.0", "objective.alpha"),
            (
                RRPO,
                "objective.segments=\"words\"",
                "unknown variant `words`",
            ),
            (DISTIL, "objective.teacher=\"\"", "objective.teacher"),
            (DISTIL, "objective.temperature=0.0", "objective.temperature"),
            (DISTIL, "reference.precompute=true", "reference.precompute"),
        ] {
            let err = match rm_core::recipe::parse::<PreferenceRecipe>(text, "bad", &[bad.into()]) {
                Ok(r) => format!("{:#}", r.validate().unwrap_err()),
                Err(e) => format!("{e:#}"),
            };
            assert!(err.contains(says), "{bad}: {err}");
        }
        let whole: PreferenceRecipe =
            rm_core::recipe::parse(RRPO, "rrpo", &["objective.segments=\"whole\"".into()]).unwrap();
        assert!(
            matches!(whole.objective, PreferenceObjective::Rrpo(c) if c.segments == Segmentation::Whole)
        );
    }

    #[test]
    fn the_shipped_copg_recipe_parses_and_switches_to_alol() {
        use super::super::objective::{AlolKind, CopgConfig};
        const COPG: &str = include_str!("../../../../recipes/copg-smollm2-hh.toml");
        let r: PreferenceRecipe = rm_core::recipe::parse(COPG, "copg", &[]).unwrap();
        r.validate().unwrap();
        assert_eq!(
            r.objective,
            PreferenceObjective::Copg(CopgConfig { beta: 0.1 })
        );
        assert!(r.objective.needs_scores() && r.objective.needs_reference());
        assert_eq!(r.reward.len(), 1);
        let with = |set: &str| -> PreferenceRecipe {
            rm_core::recipe::parse(COPG, "copg", &[set.into()]).unwrap()
        };
        let r = with("objective={ kind = \"alol\", variant = \"ref_free\" }");
        let PreferenceObjective::Alol(a) = &r.objective else {
            panic!("alol expected");
        };
        assert_eq!((a.variant, a.clip), (AlolKind::RefFree, 0.9));
        assert!(!r.objective.needs_reference() && r.objective.needs_scores());
        for (bad, says) in [
            (
                "objective={ kind = \"alol\", clip = 1.5 }",
                "objective.clip",
            ),
            (
                "objective={ kind = \"alol\", variant = \"kl\", beta = -1.0 }",
                "objective.beta",
            ),
            (
                "objective={ kind = \"copg\", beta = 0.0 }",
                "objective.beta",
            ),
        ] {
            let err = format!("{:#}", with(bad).validate().unwrap_err());
            assert!(err.contains(says), "{bad}: {err}");
        }
    }

    #[test]
    fn the_shipped_kto_recipe_parses_and_switches_to_bco() {
        const KTO: &str = include_str!("../../../../recipes/kto-smollm2-hh.toml");
        let r: PreferenceRecipe = rm_core::recipe::parse(KTO, "kto", &[]).unwrap();
        r.validate().unwrap();
        assert!(r.objective.is_unpaired() && r.objective.needs_reference());
        assert!(matches!(r.objective, PreferenceObjective::Kto(p) if p.beta == 0.1));
        let r: PreferenceRecipe = rm_core::recipe::parse(
            KTO,
            "kto",
            &["objective={ kind = \"bco\", beta = 0.2 }".into()],
        )
        .unwrap();
        assert!(matches!(&r.objective, PreferenceObjective::Bco(c) if c.beta == 0.2));
        let r: PreferenceRecipe =
            rm_core::recipe::parse(KTO, "kto", &["objective.undesirable_weight=-1.0".into()])
                .unwrap();
        let err = format!("{:#}", r.validate().unwrap_err());
        assert!(err.contains("undesirable_weight"), "{err}");
    }
}
