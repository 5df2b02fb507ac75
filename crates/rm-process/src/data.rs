//! Step-labelled solutions → binary step targets, and the dev split by problem.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use anyhow::{Result, bail};
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rm_core::data::{generic, prm800k};
use rm_core::types::{StepLabel, StepLabelledSolution};
use serde::{Deserialize, Serialize};

/// What a PRM800K rating of 0 ("neutral": reasonable but not progress) trains as.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NeutralAs {
    /// Correct (Lightman et al. 2023 count a solution without negative steps as correct).
    #[default]
    Positive,
    Negative,
    /// Not trained on (no loss at that step; the step stays in the context).
    Drop,
}

/// How ratings become binary targets: 1 → correct, −1 → wrong, 0 → `neutral`, unrated → no
/// target.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LabelPolicy {
    pub neutral: NeutralAs,
}

impl LabelPolicy {
    /// The target of a label: `Some(true)` correct, `Some(false)` wrong, `None` no target.
    pub fn target(self, label: Option<StepLabel>) -> Option<bool> {
        match label? {
            StepLabel::Good => Some(true),
            StepLabel::Bad => Some(false),
            StepLabel::Neutral => match self.neutral {
                NeutralAs::Positive => Some(true),
                NeutralAs::Negative => Some(false),
                NeutralAs::Drop => None,
            },
        }
    }
}

/// A solution with binary step targets: what the PRM trains and is evaluated on.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StepExample {
    pub prompt: String,
    pub steps: Vec<String>,
    /// Per step: `Some(correct)` or `None` (no target).
    pub targets: Vec<Option<bool>>,
    /// Per step: the soft label (probability of reaching the right answer), when the source
    /// has one; empty when it has none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub soft: Vec<Option<f32>>,
}

impl StepExample {
    /// Labelled steps.
    pub fn num_targets(&self) -> usize {
        self.targets.iter().flatten().count()
    }
}

/// The examples of a solution: the preferred path (every step with its target) and, with
/// `alternatives`, one example per rated non-preferred alternative at each step — the path's
/// earlier steps then that alternative, with a target only on the alternative. Examples
/// without any target are left out.
pub fn examples_of(
    solution: &StepLabelledSolution,
    policy: LabelPolicy,
    alternatives: bool,
) -> Vec<StepExample> {
    let steps: Vec<String> = solution.steps.iter().map(|s| s.text.clone()).collect();
    let mut out = vec![StepExample {
        prompt: solution.prompt.clone(),
        steps: steps.clone(),
        targets: solution
            .steps
            .iter()
            .map(|s| policy.target(s.label))
            .collect(),
        soft: match solution.steps.iter().any(|s| s.soft.is_some()) {
            true => solution.steps.iter().map(|s| s.soft).collect(),
            false => Vec::new(),
        },
    }];
    if alternatives {
        for (i, alts) in solution.alternatives.iter().enumerate() {
            for alt in alts.iter().filter(|a| !a.preferred) {
                if let Some(t) = policy.target(alt.label) {
                    let mut s = steps[..i].to_vec();
                    s.push(alt.text.clone());
                    let mut targets = vec![None; i];
                    targets.push(Some(t));
                    out.push(StepExample {
                        prompt: solution.prompt.clone(),
                        steps: s,
                        targets,
                        soft: Vec::new(),
                    });
                }
            }
        }
    }
    out.retain(|e| e.num_targets() > 0 && !e.steps.is_empty());
    out
}

/// HRM's coarse-grained examples (`[data.hierarchical]`): Wang et al. 2025, "Towards
/// Hierarchical Multi-Step Reward Models for Enhanced Reasoning in Large Language Models".
///
/// A hierarchical reward model is trained on single steps *and* on two consecutive steps read as
/// one unit, labelled by the later step: `(s_1 … s_{i−2}, s_{i−1} ⊕ s_i) → y_i`. A wrong step
/// followed by its correction is then a correct unit, so the model learns to credit
/// self-correction instead of reading every step alone. Hierarchical node compression (HNC) is
/// the paper's cheap augmentation of search trees: a node merged into its parent keeps its
/// label; on a solution path it merges each step into its predecessor with probability `p`.
///
/// ```toml
/// [data.hierarchical]
/// consecutive = true          # every (s_{i−1} ⊕ s_i) → y_i unit, in two merged paths
/// compress_probability = 0.5  # HNC: one more path per example with random merges (0 = off)
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HierarchicalConfig {
    #[serde(default = "default_true")]
    pub consecutive: bool,
    #[serde(default)]
    pub compress_probability: f64,
}

fn default_true() -> bool {
    true
}

impl HierarchicalConfig {
    pub fn validate(&self) -> Result<()> {
        if !(0.0..=1.0).contains(&self.compress_probability) {
            bail!(
                "data.hierarchical.compress_probability {} must be in [0, 1]",
                self.compress_probability
            );
        }
        if !self.consecutive && self.compress_probability == 0.0 {
            bail!(
                "data.hierarchical adds nothing: set consecutive = true or compress_probability > 0"
            );
        }
        Ok(())
    }
}

/// What joins two merged steps inside one unit (a single newline: the PRM's step separator is
/// usually a blank line, so the unit reads as one step).
pub const MERGED_STEP_JOIN: &str = "\n";

/// A path whose unit `k` is the steps `groups[k]` (one or two consecutive steps), a merged unit
/// labelled by its last step; a single step keeps its target only with `keep_singles`.
fn merged_path(
    example: &StepExample,
    groups: &[(usize, usize)],
    keep_singles: bool,
) -> StepExample {
    let mut out = StepExample {
        prompt: example.prompt.clone(),
        steps: Vec::with_capacity(groups.len()),
        targets: Vec::with_capacity(groups.len()),
        soft: Vec::new(),
    };
    let has_soft = !example.soft.is_empty();
    let mut soft = Vec::with_capacity(groups.len());
    for &(first, last) in groups {
        let merged = last > first;
        out.steps
            .push(example.steps[first..=last].join(MERGED_STEP_JOIN));
        let targeted = merged || keep_singles;
        out.targets.push(if targeted {
            example.targets[last]
        } else {
            None
        });
        if has_soft {
            soft.push(if targeted { example.soft[last] } else { None });
        }
    }
    if has_soft {
        out.soft = soft;
    }
    out
}

/// HRM's coarse-grained examples of one (fine-grained) example; see [`HierarchicalConfig`].
///
/// - `consecutive`: two paths, merging the step pairs (0,1),(2,3),… and then (1,2),(3,4),…, so
///   every consecutive pair is one unit exactly once; only merged units carry targets.
/// - `compress_probability = p`: one path where each step, in order, is merged with the next
///   with probability `p` (a step merges at most once); every unit keeps its last step's
///   target. Left out when no merge happened.
///
/// Examples without any target are left out.
pub fn hierarchical_examples(
    example: &StepExample,
    config: &HierarchicalConfig,
    rng: &mut impl rand::Rng,
) -> Vec<StepExample> {
    let mut out = Vec::new();
    if config.consecutive {
        out.extend(consecutive_examples(example));
    }
    let n = example.steps.len();
    if config.compress_probability > 0.0 && n >= 2 {
        let mut groups = Vec::with_capacity(n);
        let mut i = 0;
        while i < n {
            if i + 1 < n && rng.random_bool(config.compress_probability) {
                groups.push((i, i + 1));
                i += 2;
            } else {
                groups.push((i, i));
                i += 1;
            }
        }
        if groups.len() < n {
            out.push(merged_path(example, &groups, true));
        }
    }
    out.retain(|e| e.num_targets() > 0);
    out
}

/// HRM's consecutive units alone: the two merged paths of [`hierarchical_examples`] with
/// `consecutive = true` (those with a target).
pub fn consecutive_examples(example: &StepExample) -> Vec<StepExample> {
    let n = example.steps.len();
    if n < 2 {
        return Vec::new();
    }
    (0..2)
        .map(|offset| {
            let mut groups: Vec<(usize, usize)> = (0..offset).map(|i| (i, i)).collect();
            groups.extend((offset..n).step_by(2).map(|i| (i, (i + 1).min(n - 1))));
            merged_path(example, &groups, false)
        })
        .filter(|e| e.num_targets() > 0)
        .collect()
}

/// What the PRM regresses on (`[data] targets`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StepTargets {
    /// The binary labels: a classifier of step correctness (Lightman et al. 2023).
    #[default]
    Hard,
    /// The soft labels (`soft_labels` of the generic JSONL, as `plumb label-steps` writes
    /// them): cross-entropy against the estimated probability of reaching the right answer,
    /// so the PRM estimates the prover's value `Q^μ(prefix)` — the verifier of PAV (Setlur et
    /// al. 2024, "Rewarding Progress"), whose step progress `Q(s_1…s_i) − Q(s_1…s_{i−1})`
    /// `step_reward = "progress"` turns into RL rewards. Steps without a soft label get no
    /// target; the hard labels still score the evaluation.
    Soft,
}

/// Where step-labelled solutions come from.
///
/// ```toml
/// source = { source = "prm800k" }                      # phase1.train.jsonl from the data dir
/// source = { source = "jsonl", path = "steps.jsonl" }  # {"prompt", "steps", "labels"} rows
/// source = { source = "step-pairs", path = "pairs.jsonl" }  # {"prompt", "prefix", "chosen", "rejected"}
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "source", rename_all = "kebab-case", deny_unknown_fields)]
pub enum StepSource {
    /// PRM800K phase 1 (checksummed) from the data dir, or `path` in its layout.
    Prm800k {
        #[serde(default)]
        path: Option<PathBuf>,
    },
    /// The generic step-labelled JSONL: `labels` 1/true = correct, 0/false/−1 = wrong, null =
    /// unlabelled. (A 0 here is binary "wrong", not PRM800K's neutral.)
    Jsonl { path: PathBuf },
    /// Sibling-step preferences, `{"prompt", "prefix": [steps], "chosen", "rejected"}` rows
    /// (for `prm.objective = "step-preference"`; see [`crate::step_pairs`]).
    StepPairs { path: PathBuf },
}

impl StepSource {
    /// Reads the solutions (an empty file is an error).
    pub fn load(&self, data_dir: &Path) -> Result<Vec<StepLabelledSolution>> {
        let (solutions, what) = match self {
            StepSource::Prm800k { path: None } => {
                (prm800k::load(data_dir)?.0, "prm800k".to_string())
            }
            StepSource::Prm800k { path: Some(p) } => {
                (prm800k::load_file(p)?.0, p.display().to_string())
            }
            StepSource::Jsonl { path } => {
                let mut s = generic::load_step_labelled(path)?;
                for sol in &mut s {
                    for step in &mut sol.steps {
                        if step.label == Some(StepLabel::Neutral) {
                            step.label = Some(StepLabel::Bad);
                        }
                    }
                }
                (s, path.display().to_string())
            }
            StepSource::StepPairs { path } => (
                crate::step_pairs::load_step_pairs(path)?,
                path.display().to_string(),
            ),
        };
        if solutions.is_empty() {
            bail!("{what}: no solutions");
        }
        Ok(solutions)
    }
}

/// Splits solutions into (train, dev) **by problem**: the distinct prompts are shuffled with
/// `seed` and the first `round(dev_fraction × problems)` (at least 1 when there are 2+ problems)
/// go to dev, so no problem has solutions on both sides.
pub fn split_by_problem(
    solutions: Vec<StepLabelledSolution>,
    dev_fraction: f64,
    seed: u64,
) -> Result<(Vec<StepLabelledSolution>, Vec<StepLabelledSolution>)> {
    if !(0.0..1.0).contains(&dev_fraction) {
        bail!("data.dev_fraction {dev_fraction} must be in [0, 1)");
    }
    let problems: BTreeSet<&str> = solutions.iter().map(|s| s.prompt.as_str()).collect();
    let mut problems: Vec<String> = problems.into_iter().map(str::to_string).collect();
    problems.shuffle(&mut StdRng::seed_from_u64(seed));
    let mut n_dev = (dev_fraction * problems.len() as f64).round() as usize;
    if dev_fraction > 0.0 && problems.len() >= 2 {
        n_dev = n_dev.clamp(1, problems.len() - 1);
    }
    let dev: BTreeMap<&str, ()> = problems[..n_dev].iter().map(|p| (p.as_str(), ())).collect();
    let (d, t): (Vec<_>, Vec<_>) = solutions
        .into_iter()
        .partition(|s| dev.contains_key(s.prompt.as_str()));
    Ok((t, d))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rm_core::types::{LabelledStep, StepAlternative};

    fn sol(prompt: &str, labels: &[Option<StepLabel>]) -> StepLabelledSolution {
        StepLabelledSolution {
            prompt: prompt.into(),
            answer: None,
            steps: labels
                .iter()
                .enumerate()
                .map(|(i, &label)| LabelledStep {
                    text: format!("s{i}"),
                    label,
                    soft: None,
                })
                .collect(),
            alternatives: Vec::new(),
        }
    }

    #[test]
    fn neutral_maps_as_configured_and_unrated_steps_have_no_target() {
        use StepLabel::*;
        let s = sol("p", &[Some(Good), Some(Neutral), Some(Bad), None]);
        let t = |neutral| {
            examples_of(&s, LabelPolicy { neutral }, false)[0]
                .targets
                .clone()
        };
        assert_eq!(
            t(NeutralAs::Positive),
            vec![Some(true), Some(true), Some(false), None]
        );
        assert_eq!(
            t(NeutralAs::Negative),
            vec![Some(true), Some(false), Some(false), None]
        );
        assert_eq!(
            t(NeutralAs::Drop),
            vec![Some(true), None, Some(false), None]
        );
        // A solution with nothing to learn is left out.
        assert!(examples_of(&sol("q", &[None, None]), LabelPolicy::default(), false).is_empty());
    }

    #[test]
    fn alternatives_become_one_target_examples() {
        use StepLabel::*;
        let mut s = sol("p", &[Some(Good), Some(Good)]);
        let alt = |text: &str, label, preferred| StepAlternative {
            text: text.into(),
            label,
            preferred,
            human: false,
        };
        s.alternatives = vec![
            vec![alt("s0", Some(Good), true)],
            vec![
                alt("s1", Some(Good), true),
                alt("bad", Some(Bad), false),
                alt("unrated", None, false),
            ],
        ];
        let e = examples_of(&s, LabelPolicy::default(), true);
        assert_eq!(e.len(), 2);
        assert_eq!(e[1].steps, vec!["s0".to_string(), "bad".to_string()]);
        assert_eq!(e[1].targets, vec![None, Some(false)]);
    }

    fn path(targets: &[Option<bool>]) -> StepExample {
        StepExample {
            prompt: "p".into(),
            steps: (0..targets.len()).map(|i| format!("s{i}")).collect(),
            targets: targets.to_vec(),
            soft: Vec::new(),
        }
    }

    fn hierarchical(consecutive: bool, compress_probability: f64) -> HierarchicalConfig {
        HierarchicalConfig {
            consecutive,
            compress_probability,
        }
    }

    #[test]
    fn hrm_merges_every_consecutive_pair_once_labelled_by_the_later_step() {
        // s1 wrong then s2 right: the unit (s1 ⊕ s2) is right — credit for the correction.
        let e = path(&[Some(true), Some(false), Some(true), Some(true), None]);
        let mut rng = StdRng::seed_from_u64(1);
        let out = hierarchical_examples(&e, &hierarchical(true, 0.0), &mut rng);
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].steps, vec!["s0\ns1", "s2\ns3", "s4"]);
        assert_eq!(out[0].targets, vec![Some(false), Some(true), None]);
        assert_eq!(out[1].steps, vec!["s0", "s1\ns2", "s3\ns4"]);
        // The single first step is not retrained; (s3 ⊕ s4) takes s4's missing target.
        assert_eq!(out[1].targets, vec![None, Some(true), None]);
        // Every consecutive pair appears exactly once as a unit.
        let units: Vec<&String> = out
            .iter()
            .flat_map(|e| &e.steps)
            .filter(|s| s.contains('\n'))
            .collect();
        assert_eq!(units, ["s0\ns1", "s2\ns3", "s1\ns2", "s3\ns4"]);
        // One step has nothing to merge; a path whose merged units have no target is dropped.
        assert!(
            hierarchical_examples(&path(&[Some(true)]), &hierarchical(true, 0.0), &mut rng)
                .is_empty()
        );
        assert!(
            hierarchical_examples(
                &path(&[Some(true), None]),
                &hierarchical(true, 0.0),
                &mut rng
            )
            .is_empty()
        );
    }

    #[test]
    fn hnc_merges_at_random_keeping_each_units_last_label_and_soft_label() {
        let mut e = path(&[Some(true), Some(false), Some(true), Some(false)]);
        e.soft = vec![Some(0.9), Some(0.2), Some(0.7), Some(0.1)];
        let mut rng = StdRng::seed_from_u64(3);
        // p = 1 merges (0,1) and (2,3), and every unit keeps its last step's targets.
        let out = hierarchical_examples(&e, &hierarchical(false, 1.0), &mut rng);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].steps, vec!["s0\ns1", "s2\ns3"]);
        assert_eq!(out[0].targets, vec![Some(false), Some(false)]);
        assert_eq!(out[0].soft, vec![Some(0.2), Some(0.1)]);
        // With p = ½ over many draws: about half the possible merges, singles keep their targets.
        let long = path(&vec![Some(true); 2001]);
        let mut merged_steps = 0;
        for _ in 0..10 {
            for ex in hierarchical_examples(&long, &hierarchical(false, 0.5), &mut rng) {
                assert!(ex.targets.iter().all(|t| *t == Some(true)));
                merged_steps += long.steps.len() - ex.steps.len();
            }
        }
        // Each position starts a merge w.p. ½ when free: the merge rate per step tends to 1/3.
        let rate = merged_steps as f64 / (10.0 * 2001.0);
        assert!((rate - 1.0 / 3.0).abs() < 0.02, "merge rate {rate}");
        // Seeded: the same draws give the same paths.
        let a = hierarchical_examples(
            &long,
            &hierarchical(false, 0.5),
            &mut StdRng::seed_from_u64(9),
        );
        let b = hierarchical_examples(
            &long,
            &hierarchical(false, 0.5),
            &mut StdRng::seed_from_u64(9),
        );
        assert_eq!(a, b);
    }

    #[test]
    fn hierarchical_settings_are_checked() {
        assert!(hierarchical(true, 0.0).validate().is_ok());
        assert!(
            hierarchical(false, 0.0)
                .validate()
                .unwrap_err()
                .to_string()
                .contains("adds nothing")
        );
        assert!(
            hierarchical(true, 1.5)
                .validate()
                .unwrap_err()
                .to_string()
                .contains("compress_probability 1.5")
        );
        let cfg: HierarchicalConfig = toml::from_str("compress_probability = 0.5").unwrap();
        assert_eq!(cfg, hierarchical(true, 0.5));
    }

    #[test]
    fn the_dev_split_is_by_problem_and_seeded() {
        let mut all = Vec::new();
        for p in 0..20 {
            for _ in 0..(1 + p % 3) {
                all.push(sol(&format!("problem {p}"), &[Some(StepLabel::Good)]));
            }
        }
        let (train, dev) = split_by_problem(all.clone(), 0.2, 7).unwrap();
        assert_eq!(train.len() + dev.len(), all.len());
        let tp: BTreeSet<_> = train.iter().map(|s| s.prompt.clone()).collect();
        let dp: BTreeSet<_> = dev.iter().map(|s| s.prompt.clone()).collect();
        assert_eq!(dp.len(), 4);
        assert!(tp.is_disjoint(&dp), "a problem is on both sides");
        let (_, dev2) = split_by_problem(all.clone(), 0.2, 7).unwrap();
        assert_eq!(dev, dev2);
        let (_, dev3) = split_by_problem(all, 0.2, 8).unwrap();
        assert_ne!(dev, dev3);
    }

    #[test]
    fn bad_step_rows_name_file_line_and_field() {
        let dir = std::env::temp_dir().join(format!("rm-process-rows-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let err = |rows: &str| {
            let path = dir.join("steps.jsonl");
            std::fs::write(&path, rows).unwrap();
            let e = StepSource::Jsonl { path: path.clone() }
                .load(&dir)
                .unwrap_err()
                .to_string();
            e.replace(&path.display().to_string(), "steps.jsonl")
        };
        let ok = r#"{"prompt": "p", "steps": ["a", "b"], "labels": [1, 0]}"#;
        assert_eq!(
            err(&format!(
                "{ok}\n{}\n",
                r#"{"prompt": "p", "steps": ["a", "b"], "labels": [1]}"#
            )),
            "steps.jsonl:2: field \"labels\": has 1 entries but steps has 2"
        );
        assert_eq!(
            err(&format!(
                "{ok}\n{ok}\n{}\n",
                r#"{"prompt": "p", "steps": [], "labels": []}"#
            )),
            "steps.jsonl:3: field \"steps\": is empty: a solution needs at least one step"
        );
        assert_eq!(
            err(r#"{"prompt": "p", "steps": ["a", " "], "labels": [1, 1]}"#),
            "steps.jsonl:1: field \"steps[1]\": is an empty step"
        );
        // A generic 0 is binary "wrong".
        let path = dir.join("ok.jsonl");
        std::fs::write(&path, ok).unwrap();
        let s = StepSource::Jsonl { path }.load(&dir).unwrap();
        let e = examples_of(&s[0], LabelPolicy::default(), false);
        assert_eq!(e[0].targets, vec![Some(true), Some(false)]);
        std::fs::remove_dir_all(&dir).ok();
    }
}
