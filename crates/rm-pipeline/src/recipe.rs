//! The reward-model recipe (`recipes/rm-*.toml`): `[model]`, `[data]` (typed sources),
//! `[objective]`, `[train]`, `[eval]`. Read with [`rm_core::recipe::load`] and `--set`
//! overrides.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use rand::SeedableRng;
use rand::rngs::StdRng;
use rm_core::data::{generic, gsm8k, hh_rlhf};
use rm_core::models::reward::RewardModelConfig;
use rm_core::train::TrainConfig;
use rm_core::types::{PreferencePair, UnpairedExample};
use rm_ensembles::{CollaborativeConfig, EnsembleConfig, LabelNoise, PreferenceStrengthConfig};
use rm_losses::PairwiseObjective;
use serde::{Deserialize, Serialize};

/// Where preference pairs come from.
///
/// ```toml
/// [data]
/// train = { source = "hh-rlhf", split = "train" }          # from the data dir
/// eval = { source = "jsonl", path = "dev.jsonl", shape = "pairs", limit = 100 }
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "source", rename_all = "kebab-case", deny_unknown_fields)]
pub enum PairSource {
    /// Anthropic HH-RLHF harmless-base from the data dir.
    HhRlhf {
        split: HhSplit,
        /// Only the first N pairs (0 = all).
        #[serde(default)]
        limit: usize,
        /// Drop the first N pairs before `limit` applies (0 = none): disjoint slices of one
        /// split, e.g. the data an aggregator learns from beside the data its experts saw.
        #[serde(default, skip_serializing_if = "is_zero")]
        skip: usize,
    },
    /// Rule-labelled conciseness pairs from HH-RLHF harmless-base: of each pair's two
    /// responses the one with fewer words is chosen (pairs of equal word count are dropped),
    /// whatever the human label said. A capability-point source (DMoERM's "conciseness").
    HhConcise {
        split: HhSplit,
        /// Only the first N pairs, counted after dropping ties (0 = all).
        #[serde(default)]
        limit: usize,
        /// Drop the first N pairs (after dropping ties) before `limit` applies (0 = none): disjoint slices of one
        /// split, e.g. the data an aggregator learns from beside the data its experts saw.
        #[serde(default, skip_serializing_if = "is_zero")]
        skip: usize,
    },
    /// Rule-labelled pairs from GSM8K's gold solutions ([`Gsm8kPairs`]).
    Gsm8k {
        split: Gsm8kSplit,
        pairs: Gsm8kPairs,
        /// Only the first N problems (0 = all).
        #[serde(default)]
        limit: usize,
        /// Seeds the wrong answers of `pairs = "answer"`.
        #[serde(default)]
        seed: u64,
        /// Drop the first N problems before `limit` applies (0 = none): disjoint slices of one
        /// split, e.g. the data an aggregator learns from beside the data its experts saw.
        #[serde(default, skip_serializing_if = "is_zero")]
        skip: usize,
    },
    /// A JSONL file.
    Jsonl {
        path: PathBuf,
        #[serde(default)]
        shape: PairShape,
        /// Only the first N pairs (0 = all).
        #[serde(default)]
        limit: usize,
    },
}

/// The HH-RLHF splits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum HhSplit {
    Train,
    Dev,
}

/// The GSM8K splits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Gsm8kSplit {
    Train,
    Test,
}

/// Which rule turns a GSM8K problem into a pair.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Gsm8kPairs {
    /// Correctness: the gold solution with its answer vs the same solution with a wrong answer
    /// N + d, d a seeded non-zero integer in [−10, 10] ([`gsm8k::answer_pair`]).
    Answer,
    /// Shown reasoning: the gold solution with its answer vs the bare answer line
    /// ([`gsm8k::reasoning_pair`]).
    Reasoning,
}

/// The row layout of a JSONL pair source.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PairShape {
    /// `{prompt, chosen, rejected[, margin, scores]}`.
    #[default]
    Pairs,
    /// `{prompt, responses, scores | ranks}`: every (better, worse) pair of a row, with the
    /// score difference as margin and the two scores as `scores` when the row has scores.
    Rankings,
    /// `{prompt, completion, label}` (label `true` = desirable): unpaired feedback, for the
    /// objectives that take it (KTO, BCO); [`PairSource::load_unpaired`] reads it.
    Unpaired,
}

impl PairSource {
    /// The RewardBench subset name the report files these pairs under.
    pub fn subset(&self) -> String {
        match self {
            PairSource::HhRlhf { .. } => bench_harness::data::HH_RLHF_SUBSET.to_string(),
            PairSource::HhConcise { .. } => "hh-concise".to_string(),
            PairSource::Gsm8k { pairs, .. } => format!("gsm8k-{pairs:?}").to_lowercase(),
            PairSource::Jsonl { path, .. } => path
                .file_stem()
                .map_or("eval".into(), |s| s.to_string_lossy().into_owned()),
        }
    }

    /// Reads the pairs (HH-RLHF from `data_dir`); an empty result is an error.
    pub fn load(&self, data_dir: &Path) -> Result<Vec<PreferencePair>> {
        let (mut pairs, limit) = match self {
            PairSource::HhRlhf { split, limit, skip } => {
                let split = match split {
                    HhSplit::Train => hh_rlhf::Split::Train,
                    HhSplit::Dev => hh_rlhf::Split::Dev,
                };
                let mut pairs = hh_rlhf::load(data_dir, split)?.0;
                pairs.drain(..(*skip).min(pairs.len()));
                (pairs, *limit)
            }
            PairSource::HhConcise { split, limit, skip } => {
                let split = match split {
                    HhSplit::Train => hh_rlhf::Split::Train,
                    HhSplit::Dev => hh_rlhf::Split::Dev,
                };
                let pairs = hh_rlhf::load(data_dir, split)?
                    .0
                    .into_iter()
                    .filter_map(concise_pair)
                    .skip(*skip)
                    .collect();
                (pairs, *limit)
            }
            PairSource::Gsm8k {
                split,
                pairs,
                limit,
                seed,
                skip,
            } => {
                let split = match split {
                    Gsm8kSplit::Train => "train",
                    Gsm8kSplit::Test => "test",
                };
                let mut problems = gsm8k::load(data_dir, split, gsm8k::Gsm8kOptions::default())?;
                problems.drain(..(*skip).min(problems.len()));
                if *limit > 0 {
                    problems.truncate(*limit);
                }
                let mut rng = StdRng::seed_from_u64(*seed);
                let pairs = problems
                    .iter()
                    .map(|p| match pairs {
                        Gsm8kPairs::Answer => gsm8k::answer_pair(p, &mut rng),
                        Gsm8kPairs::Reasoning => gsm8k::reasoning_pair(p),
                    })
                    .collect();
                (pairs, 0)
            }
            PairSource::Jsonl { path, shape, limit } => {
                let pairs = match shape {
                    PairShape::Pairs => generic::load_pairs(path)?,
                    PairShape::Rankings => generic::load_rankings(path)?
                        .into_iter()
                        .flat_map(|r| ranking_pairs(&r))
                        .collect(),
                    PairShape::Unpaired => bail!(
                        "{}: shape \"unpaired\" rows are not preference pairs; only the unpaired objectives (kind = \"kto\", \"apo_zero_unpaired\", \"bco\") read them",
                        path.display()
                    ),
                };
                (pairs, *limit)
            }
        };
        if limit > 0 {
            pairs.truncate(limit);
        }
        if pairs.is_empty() {
            bail!("{}: no preference pairs", self.describe());
        }
        Ok(pairs)
    }

    /// Reads unpaired examples: rows of shape `unpaired` as they are; pairs (HH-RLHF, shape
    /// `pairs` or `rankings`) split into a desirable example (the chosen response) and an
    /// undesirable one (the rejected response) with the same prompt, as TRL's
    /// `unpair_preference_dataset` does. `limit` counts rows read (pairs, before splitting).
    /// An empty result is an error.
    pub fn load_unpaired(&self, data_dir: &Path) -> Result<Vec<UnpairedExample>> {
        let examples = match self {
            PairSource::Jsonl {
                path,
                shape: PairShape::Unpaired,
                limit,
            } => {
                let mut rows = generic::load_unpaired(path)?;
                if *limit > 0 {
                    rows.truncate(*limit);
                }
                rows
            }
            _ => self
                .load(data_dir)?
                .into_iter()
                .flat_map(|p| {
                    [(p.chosen, true), (p.rejected, false)].map(|(completion, desirable)| {
                        UnpairedExample {
                            prompt: p.prompt.clone(),
                            completion,
                            desirable,
                        }
                    })
                })
                .collect(),
        };
        if examples.is_empty() {
            bail!("{}: no examples", self.describe());
        }
        Ok(examples)
    }

    /// Reads rankings, for listwise objectives (PRO): rows of shape `rankings` as they are;
    /// pairs (HH-RLHF, shape `pairs`) as rankings of two (chosen rank 0, rejected rank 1, with
    /// the pair's scores when it has them). `limit` counts rows. An empty result is an error.
    pub fn load_rankings(&self, data_dir: &Path) -> Result<Vec<rm_core::types::Ranking>> {
        let rankings: Vec<rm_core::types::Ranking> = match self {
            PairSource::Jsonl {
                path,
                shape: PairShape::Rankings,
                limit,
            } => {
                let mut rows = generic::load_rankings(path)?;
                if *limit > 0 {
                    rows.truncate(*limit);
                }
                rows
            }
            _ => self
                .load(data_dir)?
                .into_iter()
                .map(|p| rm_core::types::Ranking {
                    prompt: p.prompt,
                    responses: vec![p.chosen, p.rejected],
                    ranks: vec![0, 1],
                    scores: p.scores.map(|s| s.to_vec()),
                })
                .collect(),
        };
        if rankings.is_empty() {
            bail!("{}: no rankings", self.describe());
        }
        Ok(rankings)
    }

    /// A one-line description for messages.
    pub fn describe(&self) -> String {
        match self {
            PairSource::HhRlhf { split, .. } => format!("hh-rlhf {split:?}").to_lowercase(),
            PairSource::HhConcise { split, .. } => format!("hh-concise {split:?}").to_lowercase(),
            PairSource::Gsm8k { split, pairs, .. } => {
                format!("gsm8k {split:?} {pairs:?} pairs").to_lowercase()
            }
            PairSource::Jsonl { path, .. } => path.display().to_string(),
        }
    }
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

/// The conciseness pair of an HH pair: the response with fewer words chosen; `None` on a tie.
fn concise_pair(p: PreferencePair) -> Option<PreferencePair> {
    let words = |t: &str| t.split_whitespace().count();
    let (a, b) = (words(&p.chosen), words(&p.rejected));
    let (chosen, rejected) = match a.cmp(&b) {
        std::cmp::Ordering::Less => (p.chosen, p.rejected),
        std::cmp::Ordering::Greater => (p.rejected, p.chosen),
        std::cmp::Ordering::Equal => return None,
    };
    Some(PreferencePair {
        prompt: p.prompt,
        chosen,
        rejected,
        margin: None,
        subset: None,
        scores: None,
    })
}

/// Every (better, worse) pair of a ranking (rank 0 = best; ties give no pair).
fn ranking_pairs(r: &rm_core::types::Ranking) -> Vec<PreferencePair> {
    let mut out = Vec::new();
    for i in 0..r.responses.len() {
        for j in 0..r.responses.len() {
            if r.ranks[i] < r.ranks[j] {
                let scores = r.scores.as_ref().map(|s| [s[i], s[j]]);
                out.push(PreferencePair {
                    prompt: r.prompt.clone(),
                    chosen: r.responses[i].clone(),
                    rejected: r.responses[j].clone(),
                    margin: scores.map(|[a, b]| a - b),
                    subset: None,
                    scores,
                });
            }
        }
    }
    out
}

/// The `[data]` section.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataConfig {
    pub train: PairSource,
    pub eval: PairSource,
    /// Train on a bootstrap resample of the training pairs (as many pairs, drawn with
    /// replacement from `StdRng(seed)`; see [`rm_ensembles::bootstrap_indices`]). Set per
    /// member by `[ensemble] bootstrap = true`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bootstrap_seed: Option<u64>,
    /// Flip the labels of a seeded share of the training pairs (robustness studies; see
    /// [`rm_ensembles::LabelNoise`]). Applied before any bootstrap resample; evaluation pairs
    /// are never touched.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label_noise: Option<LabelNoise>,
}

impl DataConfig {
    /// The training pairs as the trainer sees them: read, with `label_noise` flips (chosen ↔
    /// rejected; `scores` swapped, `margin` negated), then the bootstrap resample; beside each
    /// pair, whether its label was flipped.
    pub fn load_train(&self, data_dir: &Path) -> Result<(Vec<PreferencePair>, Vec<bool>)> {
        let mut pairs = self.train.load(data_dir)?;
        let mut flipped = vec![false; pairs.len()];
        if let Some(noise) = &self.label_noise {
            flipped = noise.flips(pairs.len());
            for (p, &f) in pairs.iter_mut().zip(&flipped) {
                if f {
                    std::mem::swap(&mut p.chosen, &mut p.rejected);
                    p.scores = p.scores.map(|[c, r]| [r, c]);
                    p.margin = p.margin.map(|m| -m);
                }
            }
            eprintln!(
                "label noise: flipped {} of {} training pairs (rate {}, seed {})",
                flipped.iter().filter(|&&f| f).count(),
                pairs.len(),
                noise.rate,
                noise.seed
            );
        }
        if let Some(seed) = self.bootstrap_seed {
            let picks = rm_ensembles::bootstrap_indices(pairs.len(), seed);
            pairs = picks.iter().map(|&i| pairs[i].clone()).collect();
            flipped = picks.iter().map(|&i| flipped[i]).collect();
            eprintln!("bootstrap resample of the training pairs (seed {seed})");
        }
        Ok((pairs, flipped))
    }
}

/// The `[eval]` section.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvalConfig {
    /// Texts per scoring forward pass.
    #[serde(default = "eval_batch")]
    pub batch_size: usize,
}

fn eval_batch() -> usize {
    32
}

impl Default for EvalConfig {
    fn default() -> Self {
        Self {
            batch_size: eval_batch(),
        }
    }
}

/// A reward-model training recipe.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RewardRecipe {
    pub model: RewardModelConfig,
    pub data: DataConfig,
    #[serde(default)]
    pub objective: PairwiseObjective,
    pub train: TrainConfig,
    #[serde(default)]
    pub eval: EvalConfig,
    /// Train an ensemble of reward models instead of one (see [`rm_ensembles::EnsembleConfig`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ensemble: Option<EnsembleConfig>,
    /// Train two reward models that review each other's batches (see
    /// [`rm_ensembles::collaborative`]); the result is a two-member ensemble folder.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub collaborative: Option<CollaborativeConfig>,
    /// Score the training pairs with an ensemble first, then flip the ones it votes against
    /// and/or give each an adaptive margin (see [`rm_ensembles::preference_strength`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preference_strength: Option<PreferenceStrengthConfig>,
    /// Train on several preference sets weighted by MORE (see [`crate::more`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub more: Option<crate::more::MoreConfig>,
    /// A goal-conditioned contrastive term on the hidden states beside the pairwise objective
    /// (see [`crate::goal_conditioned`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub goal_conditioned: Option<crate::goal_conditioned::GoalConditionedConfig>,
}

/// The built-in recipe of `plumb quickstart` / `cargo xtask demo` (`recipes/rm-minilm-hh.toml`).
pub const QUICKSTART_RECIPE: &str = include_str!("../../../recipes/rm-minilm-hh.toml");

impl RewardRecipe {
    /// Reads a recipe file with `--set` overrides.
    pub fn load(path: &Path, overrides: &[String]) -> Result<Self> {
        rm_core::recipe::load(path, overrides)
    }

    /// The quickstart recipe with overrides.
    pub fn quickstart(overrides: &[String]) -> Result<Self> {
        rm_core::recipe::parse(QUICKSTART_RECIPE, "recipes/rm-minilm-hh.toml", overrides)
    }

    /// Checks every section.
    pub fn validate(&self) -> Result<()> {
        self.objective.validate()?;
        self.train.validate()?;
        if self.eval.batch_size == 0 {
            bail!("eval.batch_size must be at least 1");
        }
        if let Some(ensemble) = &self.ensemble {
            ensemble.validate()?;
        }
        if let Some(noise) = &self.data.label_noise {
            noise.validate()?;
        }
        if let Some(strength) = &self.preference_strength {
            strength.validate()?;
            let margin = matches!(
                self.objective,
                PairwiseObjective::BradleyTerry { margin: true, .. }
            );
            if strength.adaptive_margin.is_some() && !margin {
                bail!(
                    "preference_strength.adaptive_margin sets a margin per pair, which only kind = \"bradley-terry\" with margin = true reads: set objective.margin = true"
                );
            }
        }
        if let Some(more) = &self.more {
            more.validate(&self.objective)?;
            if self.collaborative.is_some() {
                bail!(
                    "the recipe has both [more] and [collaborative]: collaborative training reads one preference set; use one of the two"
                );
            }
        }
        if let Some(goal) = &self.goal_conditioned {
            goal.validate()?;
            if self.more.is_some() || self.collaborative.is_some() {
                bail!(
                    "[goal_conditioned] adds its term to the plain pairwise training; it does not combine with [more] or [collaborative]"
                );
            }
        }
        if let Some(collaborative) = &self.collaborative {
            collaborative.validate()?;
            if self.ensemble.is_some() {
                bail!(
                    "the recipe has both [ensemble] and [collaborative]: a collaborative run trains its own pair of models (a two-member ensemble); use one of the two"
                );
            }
        }
        Ok(())
    }

    /// What defines the run (compared on `--resume`).
    pub fn identity(&self) -> Result<serde_json::Value> {
        serde_json::to_value(self).context("serializing the recipe")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_recipes_parse_and_overrides_reach_typed_sources() {
        let r = RewardRecipe::quickstart(&[]).unwrap();
        assert_eq!(r.model.backbone, PathBuf::from("models/minilm"));
        assert_eq!(
            r.data.train,
            PairSource::HhRlhf {
                split: HhSplit::Train,
                limit: 0,
                skip: 0
            }
        );
        let r = RewardRecipe::quickstart(&[
            "data.train.limit=10".into(),
            "data.eval={ source = \"jsonl\", path = \"dev.jsonl\", shape = \"rankings\" }".into(),
            "objective.kind=bradley-terry".into(),
            "objective.label_smoothing=0.1".into(),
        ])
        .unwrap();
        assert_eq!(
            r.data.train,
            PairSource::HhRlhf {
                split: HhSplit::Train,
                limit: 10,
                skip: 0
            }
        );
        assert_eq!(
            r.data.eval,
            PairSource::Jsonl {
                path: "dev.jsonl".into(),
                shape: PairShape::Rankings,
                limit: 0
            }
        );
        let lora: RewardRecipe = rm_core::recipe::parse(
            include_str!("../../../recipes/rm-smollm2-lora-hh.toml"),
            "lora",
            &[],
        )
        .unwrap();
        lora.validate().unwrap();
        for bad in [
            "data.train.source=hh",
            "data.train.split=test",
            "data.train.path=x.jsonl",
        ] {
            let err = RewardRecipe::quickstart(&[bad.into()]).unwrap_err();
            assert!(format!("{err:#}").contains("data"), "{bad}: {err:#}");
        }
    }

    /// The rule-labelled capability sources read the real data and follow their rules.
    #[test]
    fn capability_sources_follow_their_rules() {
        let data = rm_core::paths::for_tests::data_dir();
        let source: PairSource =
            toml::from_str("source = \"hh-concise\"\nsplit = \"dev\"\nlimit = 40").unwrap();
        let pairs = source.load(&data).unwrap();
        assert_eq!(pairs.len(), 40);
        let words = |t: &str| t.split_whitespace().count();
        for p in &pairs {
            assert!(words(&p.chosen) < words(&p.rejected), "{p:?}");
        }
        let (hh, _) = hh_rlhf::load(&data, hh_rlhf::Split::Dev).unwrap();
        let ties = hh
            .iter()
            .filter(|p| words(&p.chosen) == words(&p.rejected))
            .count();
        let all = PairSource::HhConcise {
            split: HhSplit::Dev,
            limit: 0,
            skip: 0,
        };
        let later = PairSource::HhConcise {
            split: HhSplit::Dev,
            limit: 5,
            skip: 35,
        };
        assert_eq!(
            later.load(&data).unwrap()[..],
            all.load(&data).unwrap()[35..40]
        );
        let hh_later: PairSource =
            toml::from_str("source = \"hh-rlhf\"\nsplit = \"dev\"\nskip = 190").unwrap();
        assert_eq!(hh_later.load(&data).unwrap()[..], hh[190..]);
        assert_eq!(all.load(&data).unwrap().len(), hh.len() - ties);

        let answer = PairSource::Gsm8k {
            split: Gsm8kSplit::Test,
            pairs: Gsm8kPairs::Answer,
            limit: 25,
            seed: 7,
            skip: 0,
        };
        let a = answer.load(&data).unwrap();
        assert_eq!(a.len(), 25);
        assert_eq!(a, answer.load(&data).unwrap(), "seeded");
        let problems = gsm8k::load(&data, "test", gsm8k::Gsm8kOptions::default()).unwrap();
        for (p, problem) in a.iter().zip(&problems) {
            assert_eq!(
                p.chosen,
                format!("{}\nThe answer is {}.", problem.solution, problem.answer)
            );
            assert_ne!(p.chosen, p.rejected);
            assert!(p.rejected.starts_with(&problem.solution));
        }
        let reasoning: PairSource = toml::from_str(
            "source = \"gsm8k\"\nsplit = \"train\"\npairs = \"reasoning\"\nlimit = 5",
        )
        .unwrap();
        for p in reasoning.load(&data).unwrap() {
            assert!(p.chosen.ends_with(&p.rejected) && p.chosen.len() > p.rejected.len());
        }
        assert_eq!(reasoning.subset(), "gsm8k-reasoning");
        let skipped: PairSource = toml::from_str(
            "source = \"gsm8k\"\nsplit = \"test\"\npairs = \"reasoning\"\nlimit = 2\nskip = 3",
        )
        .unwrap();
        assert_eq!(
            skipped.load(&data).unwrap()[0],
            gsm8k::reasoning_pair(&problems[3])
        );
        assert!(
            toml::from_str::<PairSource>("source = \"gsm8k\"\nsplit = \"dev\"\npairs = \"answer\"")
                .is_err()
        );
    }

    /// Every shipped `train-rm` recipe parses and validates, and the sections that pick a
    /// trainer land where the trainer looks for them.
    #[test]
    fn every_shipped_reward_recipe_validates() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../recipes");
        let mut seen = Vec::new();
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            if !(name.starts_with("rm-") && name.ends_with(".toml")) {
                continue;
            }
            let r = RewardRecipe::load(&path, &[]).unwrap_or_else(|e| panic!("{name}: {e:#}"));
            r.validate().unwrap_or_else(|e| panic!("{name}: {e:#}"));
            seen.push(name);
        }
        seen.sort();
        assert_eq!(
            seen,
            [
                "rm-collaborative-minilm-hh.toml",
                "rm-ensemble-minilm-hh.toml",
                "rm-goal-minilm-hh.toml",
                "rm-minilm-hh.toml",
                "rm-more-minilm-hh.toml",
                "rm-smollm2-lora-hh.toml",
                "rm-strength-minilm-hh.toml"
            ]
        );
        let crm = RewardRecipe::load(&dir.join("rm-collaborative-minilm-hh.toml"), &[]).unwrap();
        assert_eq!(crm.collaborative.unwrap().drop_rate, 0.2);
        let strength = RewardRecipe::load(&dir.join("rm-strength-minilm-hh.toml"), &[])
            .unwrap()
            .preference_strength
            .unwrap();
        assert_eq!(
            strength.flip,
            Some(rm_ensembles::FlipRule::Lowest { fraction: 0.1 })
        );
        assert_eq!(strength.adaptive_margin, Some(1.0));
        let more = RewardRecipe::load(&dir.join("rm-more-minilm-hh.toml"), &[])
            .unwrap()
            .more
            .unwrap();
        assert_eq!(more.sources.len(), 1);
        let goal = RewardRecipe::load(&dir.join("rm-goal-minilm-hh.toml"), &[])
            .unwrap()
            .goal_conditioned
            .unwrap();
        assert_eq!((goal.weight, goal.temperature), (0.5, 0.1));
    }

    #[test]
    fn rankings_expand_into_every_ordered_pair_with_score_margins() {
        let r = rm_core::types::Ranking {
            prompt: rm_core::types::Prompt::Text("q".into()),
            responses: vec!["a".into(), "b".into(), "c".into()],
            ranks: vec![1, 0, 1],
            scores: Some(vec![0.5, 2.0, 0.5]),
        };
        let pairs = ranking_pairs(&r);
        assert_eq!(pairs.len(), 2, "b beats a and c; a and c tie");
        assert!(pairs.iter().all(|p| p.chosen == "b"));
        assert_eq!(pairs[0].margin, Some(1.5));
        assert_eq!(pairs[0].scores, Some([2.0, 0.5]));
    }

    /// `label_noise` flips exactly its share of the training pairs (responses and scores
    /// swapped, margins negated) and says which; a bootstrap resample carries the flags along.
    #[test]
    fn label_noise_flips_pairs_and_reports_which() {
        let dir = std::env::temp_dir().join(format!("plumb-noise-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("pairs.jsonl");
        let rows: String = (0..10)
            .map(|i| {
                format!(
                    "{{\"prompt\": \"q{i}\", \"chosen\": \"good{i}\", \"rejected\": \"bad{i}\", \"margin\": 2.0, \"scores\": [3.0, 1.0]}}\n"
                )
            })
            .collect();
        std::fs::write(&path, rows).unwrap();
        let source = PairSource::Jsonl {
            path,
            shape: PairShape::Pairs,
            limit: 0,
        };
        let mut data = DataConfig {
            train: source.clone(),
            eval: source,
            bootstrap_seed: None,
            label_noise: Some(LabelNoise {
                rate: 0.3,
                seed: 11,
            }),
        };
        let (pairs, flipped) = data.load_train(&dir).unwrap();
        assert_eq!(flipped.iter().filter(|&&f| f).count(), 3);
        for (p, &f) in pairs.iter().zip(&flipped) {
            assert_eq!(p.chosen.starts_with("bad"), f);
            assert_eq!(p.margin, Some(if f { -2.0 } else { 2.0 }));
            assert_eq!(p.scores, Some(if f { [1.0, 3.0] } else { [3.0, 1.0] }));
        }
        data.bootstrap_seed = Some(4);
        let (resampled, flags) = data.load_train(&dir).unwrap();
        assert_eq!(resampled.len(), 10);
        for (p, &f) in resampled.iter().zip(&flags) {
            assert_eq!(p.chosen.starts_with("bad"), f);
        }
        std::fs::remove_dir_all(&dir).ok();
    }

    /// Pairs split into a desirable and an undesirable example each; unpaired rows are read as
    /// they are, and are refused where pairs are expected.
    #[test]
    fn unpaired_examples_come_from_pairs_or_unpaired_rows() {
        let dir = std::env::temp_dir().join(format!("plumb-unpaired-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let pairs = dir.join("pairs.jsonl");
        std::fs::write(
            &pairs,
            "{\"prompt\": \"q1\", \"chosen\": \"good\", \"rejected\": \"bad\"}\n\
             {\"prompt\": \"q2\", \"chosen\": \"fine\", \"rejected\": \"poor\"}\n",
        )
        .unwrap();
        let source = PairSource::Jsonl {
            path: pairs,
            shape: PairShape::Pairs,
            limit: 1,
        };
        let examples = source.load_unpaired(&dir).unwrap();
        let seen: Vec<(&str, bool)> = examples
            .iter()
            .map(|e| (e.completion.as_str(), e.desirable))
            .collect();
        assert_eq!(seen, [("good", true), ("bad", false)]);
        assert_eq!(
            examples[1].prompt,
            rm_core::types::Prompt::Text("q1".into())
        );

        let rows = dir.join("unpaired.jsonl");
        std::fs::write(
            &rows,
            "{\"prompt\": \"q\", \"completion\": \"a\", \"label\": false}\n\
             {\"prompt\": \"q\", \"completion\": \"b\", \"label\": true}\n\
             {\"prompt\": \"q\", \"completion\": \"c\", \"label\": \"yes\"}\n",
        )
        .unwrap();
        let source = |limit| PairSource::Jsonl {
            path: rows.clone(),
            shape: PairShape::Unpaired,
            limit,
        };
        let err = format!("{:#}", source(0).load_unpaired(&dir).unwrap_err());
        assert!(err.contains("unpaired.jsonl:3: field \"label\""), "{err}");
        let err = format!("{:#}", source(2).load(&dir).unwrap_err());
        assert!(err.contains("not preference pairs"), "{err}");
        std::fs::remove_dir_all(&dir).ok();
    }
}
