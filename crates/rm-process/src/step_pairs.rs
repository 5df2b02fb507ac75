//! Step-level reward models trained on step preferences (`[prm] objective = "step-preference"`),
//! as the SRMs of Ma et al. 2024 ("What Are Step-Level Reward Models Rewarding?
//! Counterintuitive Findings from MCTS-Boosted Mathematical Reasoning"): two candidate next steps
//! after the same prefix, the better one preferred, and the Bradley–Terry loss on the PRM's
//! logit at each candidate's last token,
//! `L = −log σ(z(prefix, s⁺) − z(prefix, s⁻))`.
//!
//! The paper labels siblings by their MCTS values; here the pairs come from rated siblings:
//! PRM800K's alternatives at a step (a +1 against a −1, rating 0 as `data.neutral` says), or a
//! step-pairs JSONL — `{"prompt", "prefix": [steps…], "chosen": step, "rejected": step}` rows,
//! the format an MCTS labeller writes. Each position contributes at most `max_pairs_per_step`
//! pairs (each wrong sibling against the right ones in turn). Dev pairs come from the dev
//! problems in the same way; the evaluation reports the pair accuracy.

use std::path::Path;

use anyhow::{Context, Result, bail};
use rm_core::burn::tensor::activation::log_sigmoid;
use rm_core::burn::tensor::{Device, Int, Tensor, TensorData};
use rm_core::data::{JsonlReader, Row};
use rm_core::models::reward::RewardModel;
use rm_core::train::{EpochTask, Evaluation, LossOutput, Metric, TrainTask};
use rm_core::types::{LabelledStep, StepAlternative, StepLabel, StepLabelledSolution};
use serde::{Deserialize, Serialize};

use crate::data::LabelPolicy;
use crate::model::{ProcessRewardModel, Unit, unit_logits};

/// Two sibling steps after one prefix, `chosen` the better.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StepPair {
    pub prompt: String,
    pub prefix: Vec<String>,
    pub chosen: String,
    pub rejected: String,
}

/// The step pairs of a solution's rated alternatives (see the module docs).
pub fn step_pairs_of(
    solution: &StepLabelledSolution,
    policy: LabelPolicy,
    max_pairs_per_step: usize,
) -> Vec<StepPair> {
    let path: Vec<String> = solution.steps.iter().map(|s| s.text.clone()).collect();
    let mut out = Vec::new();
    for (i, alts) in solution.alternatives.iter().enumerate() {
        let rated = |want: bool| -> Vec<&StepAlternative> {
            alts.iter()
                .filter(|a| policy.target(a.label) == Some(want))
                .collect()
        };
        let (good, bad) = (rated(true), rated(false));
        if good.is_empty() {
            continue;
        }
        for (j, b) in bad.iter().take(max_pairs_per_step).enumerate() {
            out.push(StepPair {
                prompt: solution.prompt.clone(),
                prefix: path[..i.min(path.len())].to_vec(),
                chosen: good[j % good.len()].text.clone(),
                rejected: b.text.clone(),
            });
        }
    }
    out
}

/// A step-pairs JSONL file as solutions: each row one solution whose last step is `chosen`
/// (rated +1), with `chosen` and `rejected` (−1) its rated alternatives there. Errors name the
/// line and field.
pub fn load_step_pairs(path: &Path) -> Result<Vec<StepLabelledSolution>> {
    let mut out = Vec::new();
    for item in JsonlReader::open(path)? {
        let (loc, value) = item?;
        let row = Row::new(&loc, &value);
        let prompt = row.str("prompt")?.to_string();
        let prefix = match row.get("prefix") {
            None => Vec::new(),
            Some(_) => row.str_array("prefix")?,
        };
        let chosen = row.str("chosen")?.to_string();
        let rejected = row.str("rejected")?.to_string();
        for (field, text) in [("chosen", &chosen), ("rejected", &rejected)] {
            if text.trim().is_empty() {
                return Err(loc.field(field, "is an empty step").into());
            }
        }
        let step = |text: &str, label| LabelledStep {
            text: text.to_string(),
            label: Some(label),
            soft: None,
        };
        // The prefix steps carry no label: only the siblings at the end are compared.
        let mut steps: Vec<LabelledStep> = prefix
            .iter()
            .map(|t| LabelledStep {
                text: t.clone(),
                label: None,
                soft: None,
            })
            .collect();
        steps.push(step(&chosen, StepLabel::Good));
        let mut alternatives = vec![Vec::new(); steps.len()];
        let alt = |text: &str, label, preferred| StepAlternative {
            text: text.to_string(),
            label: Some(label),
            preferred,
            human: false,
        };
        alternatives[steps.len() - 1] = vec![
            alt(&chosen, StepLabel::Good, true),
            alt(&rejected, StepLabel::Bad, false),
        ];
        out.push(StepLabelledSolution {
            prompt,
            answer: None,
            steps,
            alternatives,
        });
    }
    if out.is_empty() {
        bail!("{}: no step pairs", path.display());
    }
    Ok(out)
}

/// A pair encoded: each side's unit and the column of its candidate step.
pub struct PairUnits {
    pub chosen: (Unit, usize),
    pub rejected: (Unit, usize),
}

/// The unit scoring the last step of `prefix + step`, and its column; `None` when the step does
/// not fit `max_len`.
fn encode_candidate(
    prm: &ProcessRewardModel,
    prompt: &str,
    prefix: &[String],
    step: &str,
    max_len: usize,
) -> Result<Option<(Unit, usize)>> {
    let mut steps: Vec<&str> = prefix.iter().map(String::as_str).collect();
    steps.push(step);
    let last = steps.len() - 1;
    let units = prm.encode(prompt, &steps, Some(max_len))?;
    Ok(units.into_iter().find_map(|u| {
        let col = u.steps.iter().position(|&s| s == last)?;
        Some((u, col))
    }))
}

/// The pairs encoded (a pair whose candidate does not fit `max_len` is left out and counted).
pub fn encode_pairs(
    prm: &ProcessRewardModel,
    pairs: &[StepPair],
    max_len: usize,
) -> Result<(Vec<PairUnits>, usize)> {
    let mut out = Vec::new();
    let mut skipped = 0;
    for (i, p) in pairs.iter().enumerate() {
        let side = |step: &str| {
            encode_candidate(prm, &p.prompt, &p.prefix, step, max_len)
                .with_context(|| format!("step pair {i}"))
        };
        match (side(&p.chosen)?, side(&p.rejected)?) {
            (Some(chosen), Some(rejected)) => out.push(PairUnits { chosen, rejected }),
            _ => skipped += 1,
        }
    }
    Ok((out, skipped))
}

/// The Bradley–Terry loss `−mean log σ(z⁺ − z⁻)` over pairs, the pair accuracy
/// `mean [z⁺ > z⁻]`, and the number of pairs.
pub fn pair_loss(
    model: &RewardModel,
    prm: &ProcessRewardModel,
    pairs: &[&PairUnits],
    device: &Device,
) -> Result<(Tensor<1>, Tensor<1>, f64)> {
    let b = pairs.len();
    if b == 0 {
        bail!("a batch without step pairs");
    }
    let units: Vec<&Unit> = pairs
        .iter()
        .map(|p| &p.chosen.0)
        .chain(pairs.iter().map(|p| &p.rejected.0))
        .collect();
    let z = unit_logits(
        model,
        prm.bundle.spec.pooling,
        prm.bundle.spec.pad_id,
        &units,
        device,
    )?;
    let cols: Vec<i64> = pairs
        .iter()
        .map(|p| p.chosen.1 as i64)
        .chain(pairs.iter().map(|p| p.rejected.1 as i64))
        .collect();
    let index = Tensor::<2, Int>::from_data(TensorData::new(cols, [2 * b, 1]), device);
    let picked = z.gather(1, index).reshape([2 * b]);
    let margin = picked.clone().narrow(0, 0, b) - picked.narrow(0, b, b);
    let loss = log_sigmoid(margin.clone()).mean().neg();
    let accuracy = margin.greater_elem(0.0).float().mean();
    Ok((loss, accuracy, b as f64))
}

/// Step-preference training: [`pair_loss`] on the training pairs, pair accuracy on the dev
/// pairs.
pub struct StepPreferenceTask {
    pub train: Vec<PairUnits>,
    pub dev: Vec<PairUnits>,
    pub template: ProcessRewardModel,
    pub batch_size: usize,
}

impl TrainTask<RewardModel> for StepPreferenceTask {
    fn loss(&mut self, model: &RewardModel, items: &[usize]) -> Result<LossOutput> {
        let device = model.head.weight.val().device();
        let pairs: Vec<&PairUnits> = items.iter().map(|&i| &self.train[i]).collect();
        let (loss, accuracy, count) = pair_loss(model, &self.template, &pairs, &device)?;
        let tokens = pairs
            .iter()
            .map(|p| p.chosen.0.seq.len() + p.rejected.0.seq.len())
            .sum();
        Ok(LossOutput::new(loss, count)
            .with(Metric::device("pair_accuracy", accuracy, count))
            .with_tokens(tokens))
    }

    fn evaluate(&mut self, model: &RewardModel) -> Result<Evaluation> {
        let device = model.head.weight.val().device();
        let (mut loss, mut acc, mut total) = (0.0, 0.0, 0.0);
        for chunk in self.dev.chunks(self.batch_size.max(1)) {
            let refs: Vec<&PairUnits> = chunk.iter().collect();
            let (l, a, n) = pair_loss(model, &self.template, &refs, &device)?;
            loss += crate::train::scalar(l)? * n;
            acc += crate::train::scalar(a)? * n;
            total += n;
        }
        if total == 0.0 {
            bail!("the dev set has no step pairs");
        }
        Ok(Evaluation {
            metrics: [
                ("pair_accuracy".to_string(), acc / total),
                ("loss".to_string(), loss / total),
            ]
            .into_iter()
            .collect(),
            score: acc / total,
        })
    }

    fn save_model(&self, model: &RewardModel, dir: &Path) -> Result<()> {
        crate::train::save_prm(model, &self.template, dir)
    }
}

impl EpochTask<RewardModel> for StepPreferenceTask {
    fn num_examples(&self) -> usize {
        self.train.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::NeutralAs;
    use rm_core::device::test_device;
    use rm_core::train::{RunDir, RunMode, TrainConfig, Trainer};

    fn temp_dir(name: &str) -> std::path::PathBuf {
        let d =
            std::env::temp_dir().join(format!("rm-process-pairs-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn alt(text: &str, label: Option<StepLabel>, preferred: bool) -> StepAlternative {
        StepAlternative {
            text: text.into(),
            label,
            preferred,
            human: false,
        }
    }

    fn step(text: &str, label: Option<StepLabel>) -> LabelledStep {
        LabelledStep {
            text: text.into(),
            label,
            soft: None,
        }
    }

    #[test]
    fn rated_siblings_become_pairs_after_their_prefix() {
        use StepLabel::*;
        let solution = StepLabelledSolution {
            prompt: "q".into(),
            answer: None,
            steps: vec![step("a", Some(Good)), step("b", Some(Good))],
            alternatives: vec![
                // Position 0: one right (the path), two wrong, one neutral.
                vec![
                    alt("a", Some(Good), true),
                    alt("x", Some(Bad), false),
                    alt("y", Some(Bad), false),
                    alt("n", Some(Neutral), false),
                ],
                // Position 1: no wrong sibling → no pair.
                vec![alt("b", Some(Good), true), alt("c", Some(Good), false)],
            ],
        };
        let triples = |pairs: Vec<StepPair>| -> Vec<(Vec<String>, String, String)> {
            pairs
                .into_iter()
                .map(|p| (p.prefix, p.chosen, p.rejected))
                .collect()
        };
        let t = |c: &str, r: &str| (Vec::<String>::new(), c.to_string(), r.to_string());
        let drop = LabelPolicy {
            neutral: NeutralAs::Drop,
        };
        assert_eq!(
            triples(step_pairs_of(&solution, drop, 4)),
            vec![t("a", "x"), t("a", "y")]
        );
        // Neutral as right (the default) takes turns as the chosen side.
        assert_eq!(
            triples(step_pairs_of(&solution, LabelPolicy::default(), 4)),
            vec![t("a", "x"), t("n", "y")]
        );
        // Neutral as wrong adds a pair; the cap keeps the first ones.
        let negative = LabelPolicy {
            neutral: NeutralAs::Negative,
        };
        assert_eq!(step_pairs_of(&solution, negative, 4).len(), 3);
        assert_eq!(step_pairs_of(&solution, negative, 1).len(), 1);
        // At position 1 with a wrong sibling the prefix is the path's first step.
        let mut s2 = solution.clone();
        s2.alternatives[1].push(alt("z", Some(Bad), false));
        let p = step_pairs_of(&s2, drop, 4);
        assert_eq!(p[2].prefix, vec!["a".to_string()]);
        assert_eq!((p[2].chosen.as_str(), p[2].rejected.as_str()), ("b", "z"));
    }

    #[test]
    fn the_pairs_jsonl_reads_as_solutions_and_errors_name_the_line() {
        let dir = temp_dir("jsonl");
        let path = dir.join("pairs.jsonl");
        std::fs::write(
            &path,
            r#"{"prompt": "q", "prefix": ["a"], "chosen": "b", "rejected": "c"}
{"prompt": "r", "chosen": "d", "rejected": "e"}"#,
        )
        .unwrap();
        let solutions = load_step_pairs(&path).unwrap();
        let pairs: Vec<StepPair> = solutions
            .iter()
            .flat_map(|s| step_pairs_of(s, LabelPolicy::default(), 4))
            .collect();
        assert_eq!(
            pairs,
            vec![
                StepPair {
                    prompt: "q".into(),
                    prefix: vec!["a".into()],
                    chosen: "b".into(),
                    rejected: "c".into()
                },
                StepPair {
                    prompt: "r".into(),
                    prefix: vec![],
                    chosen: "d".into(),
                    rejected: "e".into()
                }
            ]
        );
        for (row, says) in [
            (r#"{"prompt": "q", "chosen": "b"}"#, "rejected"),
            (
                r#"{"prompt": "q", "chosen": " ", "rejected": "c"}"#,
                "chosen",
            ),
            (
                r#"{"prompt": "q", "prefix": "a", "chosen": "b", "rejected": "c"}"#,
                "prefix",
            ),
        ] {
            std::fs::write(&path, row).unwrap();
            let err = format!("{:#}", load_step_pairs(&path).unwrap_err());
            assert!(
                err.contains(says) && err.contains("pairs.jsonl:1"),
                "{row}: {err}"
            );
        }
        std::fs::remove_dir_all(&dir).ok();
    }

    /// The loss is −log σ(z⁺ − z⁻) of the logits the PRM gives each candidate on its own; a
    /// tiny PRM learns that the sibling without `w7` is the better one (dev pair accuracy 1).
    #[test]
    fn the_pair_loss_is_bradley_terry_on_the_candidates_logits_and_learns() {
        let _lock = rm_core::device::seeded_test_lock();
        let dir = temp_dir("learn");
        let device = test_device().autodiff();
        rm_core::fixtures::write_tiny_llama(&dir.join("base"), 5).unwrap();
        let prm = ProcessRewardModel::build(
            &rm_core::models::reward::RewardModelConfig {
                backbone: dir.join("base"),
                pooling: None,
                max_len: 48,
                truncation: rm_core::tokenize::TruncationSide::Left,
                attributes: vec!["step_correct".into()],
                template: Some(rm_core::chat::ChatTemplate::Plain),
                lora: None,
                head_init_std: 0.1,
            },
            crate::model::PrmShape::OnePass {
                separator: " w6".into(),
            },
            3,
            &device,
        )
        .unwrap();
        let pairs: Vec<StepPair> = (0..24usize)
            .map(|i| StepPair {
                prompt: format!("w{}", 30 + i % 4),
                prefix: vec![format!("w{} w{}", 10 + i % 7, 20 + i % 5)],
                chosen: format!("w{} w13", 12 + i % 3),
                rejected: format!("w7 w{}", 11 + i % 3),
            })
            .collect();
        let (units, skipped) = encode_pairs(&prm, &pairs, 48).unwrap();
        assert_eq!((units.len(), skipped), (24, 0));
        // By hand for pair 0: the candidates' probabilities scored one by one.
        let logit = |p: f32| (p / (1.0 - p)).ln();
        let side = |step: &str| {
            let steps = [pairs[0].prefix[0].as_str(), step];
            logit(prm.score_steps(&pairs[0].prompt, &steps).unwrap()[1])
        };
        let margin = side(&pairs[0].chosen) - side(&pairs[0].rejected);
        let (loss, _, n) = pair_loss(&prm.bundle.model, &prm, &[&units[0]], &device).unwrap();
        let loss = loss.into_data().try_to_vec::<f32>().unwrap()[0];
        let want = -(1.0 / (1.0 + (-margin).exp())).ln();
        assert!((loss - want).abs() < 1e-4, "{loss} vs {want}");
        assert_eq!(n, 1.0);

        let (dev, _) = encode_pairs(&prm, &pairs[..8], 48).unwrap();
        let model = prm.bundle.model.clone();
        let mut task = StepPreferenceTask {
            train: units,
            dev,
            template: prm,
            batch_size: 8,
        };
        let mut config = TrainConfig::new(8, 3e-2, dir.join("run"));
        config.epochs = 6;
        let run =
            RunDir::open(&config.out_dir, RunMode::Fresh, &serde_json::json!({}), &[]).unwrap();
        let trainer = Trainer {
            config,
            device: device.clone(),
            progress: false,
        };
        let (model, _) = trainer.run_epochs(&run, model, &mut task).unwrap();
        let after = task.evaluate(&model).unwrap();
        assert_eq!(after.metrics["pair_accuracy"], 1.0, "{:?}", after.metrics);
        assert!(
            dir.join("run/final")
                .join(crate::model::PRM_SPEC_FILE)
                .exists()
        );
        std::fs::remove_dir_all(&dir).ok();
    }
}
