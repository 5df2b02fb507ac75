//! `plumb train-po` end to end: recipe → policy (LoRA or full) and its reference → pairs →
//! [`DpoTask`] → [`Trainer::run_epochs`] → `final/` (and `best/`) policy folders, metrics,
//! `summary.json`, `recipe.toml` and `curves.png` in the run folder.

use std::path::PathBuf;

use anyhow::{Context, Result};
use rm_core::burn::module::Module;
use rm_core::models::llama::LlamaModel;
use rm_core::models::policy_folder::Policy;
use rm_core::train::{
    EpochTask, Evaluation, RESUMABLE_TRAIN_FIELDS, RunDir, TrainOutcome, Trainer,
};
use rm_core::types::PreferencePair;
use rm_pipeline::train::TrainRequest;
use serde_json::json;

use super::augment::augment_pairs;
use super::data::{EncodedPair, encode_pairs};
use super::listwise::{ListwiseTask, encode_rankings};
use super::objective::PreferenceObjective;
use super::recipe::PreferenceRecipe;
use super::reference_cache::{CacheStatus, load_or_compute};
use super::reference_samples::{attach_samples, sample_responses};
use super::scored::fill_scores;
use super::task::DpoTask;
use super::token_rewards::fill_token_rewards;
use super::unpaired::{UnpairedTask, encode_unpaired};
use super::vocab_level::load_teachers;
use crate::online::rewards::RewardSet;

/// What a preference-optimisation run produced.
#[derive(Clone, Debug)]
pub struct PreferenceReport {
    pub out_dir: PathBuf,
    /// The trained policy folder.
    pub final_dir: PathBuf,
    /// The policy with the lowest evaluation loss, when evaluation ran during training.
    pub best_dir: PathBuf,
    /// The evaluation before training (for DPO the policy is its reference: margin 0, sigmoid
    /// loss ln 2).
    pub initial_eval: Evaluation,
    /// The trained policy's evaluation.
    pub final_eval: Evaluation,
    pub outcome: TrainOutcome,
    pub threads: usize,
    /// `curves.png`, when it could be drawn.
    pub plot: Option<PathBuf>,
    /// Why the plot is missing, when it is.
    pub plot_error: Option<String>,
    /// Where the precomputed reference log-probs came from (`[reference] precompute`).
    pub reference_cache: Option<CacheStatus>,
    /// What one training example is: "pairs", "rankings" (PRO) or "examples" (unpaired).
    pub example_unit: &'static str,
}

/// The reference's own evaluation (where DPO starts; it also fills the evaluation reference
/// cache), the epochs, and the trained policy's evaluation.
pub(crate) fn run_task<M: Module>(
    trainer: &Trainer,
    run: &RunDir,
    model: M,
    task: &mut dyn EpochTask<M>,
) -> Result<(Evaluation, TrainOutcome, Evaluation)> {
    let initial_eval = task.evaluate(&model.valid())?;
    let (model, outcome) = trainer.run_epochs(run, model, task)?;
    eprintln!(
        "trained {} steps in {:.1}s: {:.2} examples/s (train, evaluation excluded)",
        outcome.steps, outcome.train_seconds, outcome.examples_per_second
    );
    let final_eval = match &outcome.final_eval {
        Some(e) => e.clone(),
        None => task.evaluate(&model.valid())?,
    };
    Ok((initial_eval, outcome, final_eval))
}

/// Mixed into `train.seed` for the evaluation pairs' SELM samples (a stream of their own).
const EVAL_SAMPLE_SEED: u64 = 0x5E1A_E7A1;

/// What some objectives add to the encoded pairs before training: SELM's reference samples,
/// T-REG's contrastive token rewards (both from the reference, once).
fn prepare_pairs(
    recipe: &PreferenceRecipe,
    policy: &Policy,
    reference: Option<&LlamaModel>,
    encoded: &mut [EncodedPair],
    pairs: &[PreferencePair],
    source: &str,
    seed: u64,
) -> Result<()> {
    match &recipe.objective {
        PreferenceObjective::Selm(c) => {
            let reference = reference.context("SELM samples from the reference")?;
            let samples = sample_responses(policy, reference, pairs, &c.sample, seed, source)?;
            attach_samples(encoded, samples, recipe.model.max_len, source)
        }
        PreferenceObjective::Treg(c) => {
            let reference = reference.context("T-REG scores tokens with the reference")?;
            fill_token_rewards(
                policy,
                reference,
                encoded,
                c,
                recipe.eval.batch_size,
                source,
            )
        }
        _ => Ok(()),
    }
}

/// Trains what `plumb train-po` was given: [`train_preference_policy`] or, for a `[[heads]]`
/// recipe, [`super::multi_head::train_mah_dpo`].
pub fn train_po(
    recipe: super::recipe::PoRecipe,
    request: &TrainRequest,
) -> Result<PreferenceReport> {
    match recipe {
        super::recipe::PoRecipe::Single(r) => train_preference_policy(r, request),
        super::recipe::PoRecipe::MultiHead(r) => super::multi_head::train_mah_dpo(r, request),
    }
}

/// Trains a policy with the recipe's objective (pairs or unpaired examples by its kind); see
/// the module docs.
pub fn train_preference_policy(
    mut recipe: PreferenceRecipe,
    request: &TrainRequest,
) -> Result<PreferenceReport> {
    recipe.model.policy =
        rm_core::paths::resolve_model_path(&recipe.model.policy, &request.models_dir);
    recipe.validate()?;
    let out = recipe.train.out_dir.clone();
    let run = RunDir::open(
        &out,
        request.mode,
        &recipe.identity()?,
        &[RESUMABLE_TRAIN_FIELDS, &["eval", "reference"]].concat(),
    )?;
    let device = request.device.clone().autodiff();
    device.seed(recipe.train.seed);
    eprintln!(
        "loading {} and the data ({})",
        recipe.model.policy.display(),
        request.data_dir.display()
    );
    let policy = Policy::build(&recipe.model, &device)?;
    let model = policy.lm.model.clone();
    // A LoRA policy (configured, or a LoRA policy folder continued) has its base, adapters
    // off, as the reference.
    let reference = match (recipe.objective.needs_reference(), &policy.spec.lora) {
        (false, _) => None,
        (true, Some(_)) => Some(rm_core::policy::reference_policy(&model)?),
        (true, None) => Some(model.clone().no_grad()),
    };
    let max_len = recipe.model.max_len;
    let write_recipe = || {
        rm_core::checkpoint::write_bytes_atomically(
            &out.join("recipe.toml"),
            toml::to_string_pretty(&recipe)?.as_bytes(),
        )
    };
    let trainer = Trainer {
        config: recipe.train.clone(),
        device: device.clone(),
        progress: request.progress,
    };
    let mut reference_cache = None;
    let (initial_eval, outcome, final_eval) = if let PreferenceObjective::Pro(config) =
        &recipe.objective
    {
        let train_rows = recipe.data.train.load_rankings(&request.data_dir)?;
        let eval_rows = recipe.data.eval.load_rankings(&request.data_dir)?;
        let train = encode_rankings(&policy, &train_rows, &recipe.data.train.describe())?;
        let eval = encode_rankings(&policy, &eval_rows, &recipe.data.eval.describe())?;
        let responses: usize = train.iter().map(|r| r.sequences.len()).sum();
        eprintln!(
            "{} training rankings ({responses} responses), {} evaluation rankings; {} step(s) of {} rankings; objective {}",
            train.len(),
            eval.len(),
            recipe.train.epoch_steps(train.len())?,
            recipe.train.batch_size,
            recipe.objective.describe(),
        );
        write_recipe()?;
        let mut task =
            ListwiseTask::new(train, eval, config.clone(), policy, recipe.eval.batch_size)?;
        run_task(&trainer, &run, model, &mut task)?
    } else if recipe.objective.is_unpaired() {
        let reference = reference.context("unpaired objectives need a reference")?;
        let train_rows = recipe.data.train.load_unpaired(&request.data_dir)?;
        let eval_rows = recipe.data.eval.load_unpaired(&request.data_dir)?;
        let train = encode_unpaired(&policy, &train_rows, &recipe.data.train.describe())?;
        let eval = encode_unpaired(&policy, &eval_rows, &recipe.data.eval.describe())?;
        let desirable = train.iter().filter(|e| e.desirable).count();
        eprintln!(
            "{} training examples ({desirable} desirable, {} undesirable), {} evaluation examples; {} step(s) of {} examples; objective {}",
            train.len(),
            train.len() - desirable,
            eval.len(),
            recipe.train.epoch_steps(train.len())?,
            recipe.train.batch_size,
            recipe.objective.describe(),
        );
        write_recipe()?;
        let mut task = UnpairedTask::new(
            train,
            eval,
            recipe.objective.clone(),
            policy,
            reference,
            recipe.eval.batch_size,
        )?;
        run_task(&trainer, &run, model, &mut task)?
    } else {
        let mut train_pairs = recipe.data.train.load(&request.data_dir)?;
        let mut eval_pairs = recipe.data.eval.load(&request.data_dir)?;
        if recipe.needs_train_scores() {
            let rewards = match recipe.reward.is_empty() {
                true => None,
                false => Some(RewardSet::build(&recipe.reward, &request.device)?),
            };
            fill_scores(
                &mut train_pairs,
                rewards.as_ref(),
                &recipe.data.train.describe(),
            )?;
            if recipe.objective.needs_scores() {
                fill_scores(
                    &mut eval_pairs,
                    rewards.as_ref(),
                    &recipe.data.eval.describe(),
                )?;
            }
        }
        if let Some(augment) = &recipe.reward_augment {
            let before = train_pairs.len();
            train_pairs = augment_pairs(&train_pairs, augment, &recipe.data.train.describe())?;
            eprintln!(
                "reward-augmented: {before} scored training pairs → {} conditioned pairs",
                train_pairs.len()
            );
        }
        let mut train = encode_pairs(&policy, &train_pairs, &recipe.data.train.describe())?;
        let mut eval = encode_pairs(&policy, &eval_pairs, &recipe.data.eval.describe())?;
        for (encoded, pairs, source, seed) in [
            (
                &mut train,
                &train_pairs,
                recipe.data.train.describe(),
                recipe.train.seed,
            ),
            (
                &mut eval,
                &eval_pairs,
                recipe.data.eval.describe(),
                recipe.train.seed ^ EVAL_SAMPLE_SEED,
            ),
        ] {
            prepare_pairs(
                &recipe,
                &policy,
                reference.as_ref(),
                encoded,
                pairs,
                &source,
                seed,
            )?;
        }
        let truncated = train.iter().filter(|p| p.reaches(max_len)).count();
        eprintln!(
            "{} training pairs ({truncated} reach max_len {max_len} and lose prompt tokens on the left), {} evaluation pairs; {} step(s) of {} pairs; objective {}",
            train.len(),
            eval.len(),
            recipe.train.epoch_steps(train.len())?,
            recipe.train.batch_size,
            recipe.objective.describe(),
        );
        write_recipe()?;
        let precomputed = match (&reference, recipe.reference.precompute) {
            (Some(module), true) => {
                let (rows, status) = load_or_compute(
                    &recipe.reference,
                    &recipe.model.policy,
                    module,
                    &train,
                    policy.lm.tokenizer.pad_id(),
                    recipe.eval.batch_size,
                )?;
                match &status {
                    CacheStatus::Hit(p) => {
                        eprintln!("reference log-probs read from the cache {}", p.display())
                    }
                    CacheStatus::Written(p) => {
                        eprintln!("reference log-probs computed and cached in {}", p.display())
                    }
                }
                reference_cache = Some(status);
                Some(rows)
            }
            _ => None,
        };
        let mut task = DpoTask::new(
            train,
            eval,
            recipe.objective.clone(),
            policy,
            reference,
            recipe.eval.batch_size,
        )?;
        if let Some(rows) = precomputed {
            task = task.with_train_reference(rows)?;
        }
        if let Some((teacher, contrast)) = recipe.objective.teacher_models() {
            let vocab = model.embed_tokens.weight.val().dims()[0];
            task = task.with_teachers(load_teachers(
                teacher,
                contrast,
                vocab,
                &request.models_dir,
                &device,
            )?)?;
        }
        run_task(&trainer, &run, model, &mut task)?
    };
    let example_unit = if recipe.objective.is_listwise() {
        "rankings"
    } else if recipe.objective.is_unpaired() {
        "examples"
    } else {
        "pairs"
    };
    finish_run(
        &recipe,
        out,
        &run,
        (initial_eval, outcome, final_eval),
        reference_cache,
        example_unit,
    )
}

/// Writes a finished run's `summary.json` and `curves.png` into `out`; the report.
pub(crate) fn finish_run(
    recipe: &impl serde::Serialize,
    out: PathBuf,
    run: &RunDir,
    (initial_eval, outcome, final_eval): (Evaluation, TrainOutcome, Evaluation),
    reference_cache: Option<CacheStatus>,
    example_unit: &'static str,
) -> Result<PreferenceReport> {
    let threads = rayon::current_num_threads();
    let summary = json!({
        "recipe": recipe,
        "steps": outcome.steps,
        "train_seconds": outcome.train_seconds,
        "train_pairs_per_s": outcome.examples_per_second,
        "initial_eval": initial_eval.metrics,
        "final_eval": final_eval.metrics,
        "best_step": outcome.best_step,
        "best_eval_loss": outcome.best_score.map(|s| -s),
        "threads": threads,
    });
    rm_pipeline::reports::write_summary(&out, &summary)?;
    let (plot, plot_error) = rm_pipeline::reports::draw_curves(&run.metrics_path(), &out);
    Ok(PreferenceReport {
        final_dir: out.join("final"),
        best_dir: out.join("best"),
        out_dir: out,
        initial_eval,
        final_eval,
        outcome,
        threads,
        plot,
        plot_error,
        reference_cache,
        example_unit,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rm_core::device::test_device;
    use rm_core::train::RunMode;

    fn temp(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("plumb-po-{tag}-{}", std::process::id()));
        std::fs::remove_dir_all(&d).ok();
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    /// Pairs whose chosen responses continue the prompt with one set of words and whose
    /// rejected ones with another: a preference a policy can learn.
    fn write_pairs(path: &std::path::Path) {
        let rows: Vec<String> = (0..8)
            .map(|i| {
                json!({
                    "prompt": format!("w{} w{}", 2 + i, 3 + i),
                    "chosen": format!("w20 w21 w{}", 22 + i % 3),
                    "rejected": format!("w30 w{} w31", 32 + i % 4),
                })
                .to_string()
            })
            .collect();
        std::fs::write(path, rows.join("\n")).unwrap();
    }

    /// The pairs of [`write_pairs`] as unpaired rows: chosen responses desirable, rejected ones
    /// not, in an order where labels alternate unevenly.
    fn write_unpaired(path: &std::path::Path) {
        let rows: Vec<String> = (0..8)
            .flat_map(|i| {
                let prompt = format!("w{} w{}", 2 + i, 3 + i);
                let good = json!({"prompt": prompt, "completion": format!("w20 w21 w{}", 22 + i % 3), "label": true});
                let bad = json!({"prompt": prompt, "completion": format!("w30 w{} w31", 32 + i % 4), "label": false});
                if i % 3 == 0 { vec![bad, good] } else { vec![good, bad] }
            })
            .map(|v| v.to_string())
            .collect();
        std::fs::write(path, rows.join("\n")).unwrap();
    }

    fn recipe(root: &std::path::Path, lora: bool, extra: &str) -> PreferenceRecipe {
        let lora = if lora {
            "lora = { rank = 4, alpha = 8.0, target_modules = [\"q_proj\", \"v_proj\", \"o_proj\", \"up_proj\"] }"
        } else {
            ""
        };
        let text = format!(
            r#"
[model]
policy = "{model}"
max_len = 16
template = "plain"
{lora}

[data]
train = {{ source = "jsonl", path = "{pairs}" }}
eval = {{ source = "jsonl", path = "{pairs}" }}

[objective]
beta = 0.5
{extra}

[train]
epochs = 12
batch_size = 4
micro_batch_size = 2
lr = 0.02
weight_decay = 0.0
warmup_ratio = 0.0
schedule = "constant"
seed = 3
eval_every = 8
save_every = 8
out_dir = "{out}"
"#,
            model = root.join("model").display(),
            pairs = root.join("pairs.jsonl").display(),
            out = root.join("run").display(),
        );
        rm_core::recipe::parse(&text, "test", &[]).unwrap()
    }

    fn request(root: &std::path::Path) -> TrainRequest {
        TrainRequest {
            data_dir: root.to_path_buf(),
            models_dir: root.to_path_buf(),
            device: test_device(),
            mode: RunMode::Fresh,
            progress: false,
        }
    }

    /// DPO on a learnable preference: the evaluation loss falls from ln 2 (the policy is its
    /// reference) well below it, every pair is won, and the saved policy folder loads back with
    /// the same log-probs — with LoRA and with full fine-tuning, and with WPO weighting plus an
    /// SFT term.
    #[test]
    fn dpo_learns_a_preference_and_the_saved_policy_loads_back() {
        let _seeded = rm_core::device::seeded_test_lock();
        for (lora, extra) in [
            (true, ""),
            (false, ""),
            (
                true,
                "loss_type = [\"sigmoid\", \"sft\"]\nloss_weights = [1.0, 0.1]\nuse_weighting = true",
            ),
            (true, "kind = \"simpo\""),
            (false, "kind = \"orpo\""),
        ] {
            let dpo = !extra.starts_with("kind");
            let root = temp(&format!("learn-{lora}-{}", extra.len()));
            rm_core::fixtures::write_tiny_llama(&root.join("model"), 9).unwrap();
            write_pairs(&root.join("pairs.jsonl"));
            let report =
                train_preference_policy(recipe(&root, lora, extra), &request(&root)).unwrap();
            let before = report.initial_eval.metrics["loss"];
            let after = report.final_eval.metrics["loss"];
            assert_eq!(report.final_eval.metrics["reward_accuracy"], 1.0);
            if dpo {
                // Before training the policy is its reference: no margin; plain DPO's loss is
                // ln 2.
                assert_eq!(report.initial_eval.metrics["reward_margin"], 0.0);
                if extra.is_empty() {
                    assert!((before - std::f64::consts::LN_2).abs() < 1e-6, "{before}");
                }
                assert!(after < 0.3, "lora {lora} {extra}: loss {before} → {after}");
                assert!(report.final_eval.metrics["reward_margin"] > 1.0);
                // The policy moved away from its reference on the chosen completions.
                assert!(report.final_eval.metrics["kl_estimate"].abs() > 0.1);
            } else {
                assert!(after < 0.5 * before, "{extra}: loss {before} → {after}");
                let margin = |e: &Evaluation| e.metrics["reward_margin"];
                assert!(margin(&report.final_eval) > margin(&report.initial_eval) + 0.5);
            }
            assert_eq!(report.outcome.steps, 24);

            // The final folder is the trained policy.
            let device = test_device();
            let loaded = Policy::load(&report.final_dir, &device).unwrap();
            assert_eq!(loaded.spec.lora.is_some(), lora);
            let pairs = recipe(&root, lora, extra).data.train.load(&root).unwrap();
            let summary: serde_json::Value = serde_json::from_str(
                &std::fs::read_to_string(report.out_dir.join("summary.json")).unwrap(),
            )
            .unwrap();
            let logged = summary["final_eval"]["loss"].as_f64().unwrap();
            assert!((logged - after).abs() < 1e-9);
            // Reloaded, the policy scores the evaluation pairs as the trained module did.
            let reference = match lora {
                true => rm_core::policy::reference_policy(&loaded.lm.model).unwrap(),
                false => {
                    Policy::build(&recipe(&root, lora, extra).model, &device)
                        .unwrap()
                        .lm
                        .model
                }
            };
            let reference = dpo.then_some(reference);
            let eval = encode_pairs(&loaded, &pairs, "pairs").unwrap();
            let model = loaded.lm.model.clone();
            let mut task = DpoTask::new(
                eval.clone(),
                eval,
                recipe(&root, lora, extra).objective,
                loaded,
                reference,
                8,
            )
            .unwrap();
            use rm_core::train::TrainTask;
            let again = task.evaluate(&model).unwrap().metrics["loss"];
            assert!((again - after).abs() < 1e-5, "{again} vs {after}");
        }
    }

    /// SELM (with the reference's samples) and T-REG (with contrastive token rewards) on the
    /// learnable preference: both start where their formulas say the policy-equals-reference
    /// point is (SELM: ln 2, the optimism term is 0; T-REG: (1 + 2α)·ln 2, every weighted
    /// log-ratio is 0), win every pair after training, and lower their loss.
    #[test]
    fn selm_and_treg_learn_with_what_the_reference_adds_to_each_pair() {
        let _seeded = rm_core::device::seeded_test_lock();
        for (extra, start) in [
            (
                "kind = \"selm\"\nalpha = 0.05\nsample = { max_new_tokens = 4, temperature = 1.0 }",
                std::f64::consts::LN_2,
            ),
            (
                "kind = \"treg\"\nalpha = 0.5\nbetter_prompt = \"w40 w41\"\nworse_prompt = \"w42 w43\"",
                2.0 * std::f64::consts::LN_2,
            ),
        ] {
            let root = temp(&format!("token-level-{}", extra.len()));
            rm_core::fixtures::write_tiny_llama(&root.join("model"), 9).unwrap();
            write_pairs(&root.join("pairs.jsonl"));
            let report =
                train_preference_policy(recipe(&root, true, extra), &request(&root)).unwrap();
            let m = |e: &Evaluation, k: &str| e.metrics[k];
            let before = m(&report.initial_eval, "loss");
            assert!(
                (before - start).abs() < 1e-5,
                "{extra}: {before} vs {start}"
            );
            assert_eq!(m(&report.initial_eval, "reward_margin"), 0.0);
            let after = m(&report.final_eval, "loss");
            assert!(after < 0.5 * before, "{extra}: loss {before} → {after}");
            assert_eq!(m(&report.final_eval, "reward_accuracy"), 1.0, "{extra}");
            assert!(m(&report.final_eval, "reward_margin") > 1.0, "{extra}");
        }
    }

    /// RRPO and AlignDistil read the completions' full-vocabulary logits. RRPO starts at ln 2
    /// (no margin, no KL) and learns the preference. AlignDistil distils into a teacher built
    /// from a DPO policy trained here first (and the reference): its loss (a KL to the
    /// teacher) falls, and the student's implicit rewards come to prefer the chosen responses
    /// as its teacher's do. A teacher folder that does not exist is an error naming it.
    #[test]
    fn rrpo_and_aligndistil_learn_from_the_completions_logits() {
        let _seeded = rm_core::device::seeded_test_lock();
        let root = temp("vocab-level");
        rm_core::fixtures::write_tiny_llama(&root.join("model"), 9).unwrap();
        write_pairs(&root.join("pairs.jsonl"));
        let m = |e: &Evaluation, k: &str| e.metrics[k];

        let rrpo = train_preference_policy(
            recipe(&root, true, "kind = \"rrpo\"\nalpha = 0.01"),
            &request(&root),
        )
        .unwrap();
        assert_eq!(rrpo.example_unit, "pairs");
        let before = m(&rrpo.initial_eval, "loss");
        assert!((before - std::f64::consts::LN_2).abs() < 1e-5, "{before}");
        let after = m(&rrpo.final_eval, "loss");
        assert!(after < 0.5 * before, "rrpo: loss {before} → {after}");
        assert_eq!(m(&rrpo.final_eval, "reward_accuracy"), 1.0);

        // The DPO teacher is the RRPO run's policy (a preference-trained LoRA policy).
        let teacher = rrpo.final_dir.clone();
        let with_teacher = |teacher: &std::path::Path, out: &str| {
            let mut r = recipe(
                &root,
                true,
                &format!(
                    "kind = \"aligndistil\"\nteacher = {:?}\nextrapolation = 1.0",
                    teacher.display().to_string()
                ),
            );
            r.train.out_dir = root.join(out);
            r
        };
        let distil =
            train_preference_policy(with_teacher(&teacher, "distil"), &request(&root)).unwrap();
        let before = m(&distil.initial_eval, "loss");
        let after = m(&distil.final_eval, "loss");
        assert!(before > 0.0, "{before}");
        assert!(after < 0.5 * before, "aligndistil: loss {before} → {after}");
        assert_eq!(m(&distil.initial_eval, "reward_margin"), 0.0);
        assert_eq!(m(&distil.final_eval, "reward_accuracy"), 1.0);
        assert!(m(&distil.final_eval, "reward_margin") > 0.0);

        let missing = root.join("no-such-policy");
        let err = train_preference_policy(with_teacher(&missing, "missing"), &request(&root))
            .unwrap_err();
        let msg = format!("{err:#}");
        assert!(
            msg.contains("no-such-policy") && msg.contains("teacher"),
            "{msg}"
        );
    }

    /// PRO on rankings of three responses (JSONL `shape = "rankings"`, ranks only, so rewards
    /// `−rank`): the best response ends up the most likely of its ranking (length-normalised)
    /// for every evaluation prompt, and the loss falls. `[reward_augment]` is refused with it.
    #[test]
    fn pro_learns_rankings_of_three() {
        let _seeded = rm_core::device::seeded_test_lock();
        let root = temp("pro");
        rm_core::fixtures::write_tiny_llama(&root.join("model"), 9).unwrap();
        let rows: Vec<String> = (0..8)
            .map(|i| {
                json!({
                    "prompt": format!("w{} w{}", 2 + i, 3 + i),
                    "responses": ["w30 w31", format!("w20 w21 w{}", 22 + i % 3), "w25 w26"],
                    "ranks": [2, 0, 1],
                })
                .to_string()
            })
            .collect();
        let path = root.join("rankings.jsonl");
        std::fs::write(&path, rows.join("\n")).unwrap();
        let mut r = recipe(&root, true, "");
        r.objective = PreferenceObjective::Pro(Default::default());
        let source = rm_pipeline::recipe::PairSource::Jsonl {
            path,
            shape: rm_pipeline::recipe::PairShape::Rankings,
            limit: 0,
        };
        r.data.train = source.clone();
        r.data.eval = source;
        let report = train_preference_policy(r.clone(), &request(&root)).unwrap();
        assert_eq!(report.example_unit, "rankings");
        let m = |e: &Evaluation, k: &str| e.metrics[k];
        let (before, after) = (
            m(&report.initial_eval, "loss"),
            m(&report.final_eval, "loss"),
        );
        assert!(after < 0.5 * before, "loss {before} → {after}");
        assert_eq!(m(&report.final_eval, "top1_accuracy"), 1.0);
        assert_eq!(report.outcome.steps, 24);
        r.reward_augment = Some(Default::default());
        let err = format!("{:#}", r.validate().unwrap_err());
        assert!(err.contains("trains on rankings"), "{err}");
    }

    /// One `[[reward]]` function: 1 for a response holding `w20` (every chosen one), else 0.
    fn w20_reward() -> Vec<crate::online::rewards::RewardComponentConfig> {
        #[derive(serde::Deserialize)]
        struct Rewards {
            reward: Vec<crate::online::rewards::RewardComponentConfig>,
        }
        toml::from_str::<Rewards>("[[reward]]\nkind = \"keywords\"\nrequired = [\"w20\"]")
            .unwrap()
            .reward
    }

    /// `[reward_augment]` with a `[[reward]]` function: the 8 pairs become 24 training pairs
    /// (each original and its two conditioned orderings; the scores 1 and 0 differ), so 2
    /// epochs of 4-pair steps are 12 steps; DPO still wins every evaluation pair. Unpaired
    /// objectives refuse the section.
    #[test]
    fn reward_augmented_pairs_feed_the_trainer() {
        let _seeded = rm_core::device::seeded_test_lock();
        let rewards = w20_reward();
        let root = temp("augmented");
        rm_core::fixtures::write_tiny_llama(&root.join("model"), 9).unwrap();
        write_pairs(&root.join("pairs.jsonl"));
        let mut r = recipe(&root, true, "");
        r.reward = rewards;
        r.reward_augment = Some(crate::preference::augment::RewardAugmentConfig::default());
        r.train.epochs = 2;
        let report = train_preference_policy(r.clone(), &request(&root)).unwrap();
        assert_eq!(report.outcome.steps, 12);
        let m = |e: &Evaluation, k: &str| e.metrics[k];
        assert!(m(&report.final_eval, "loss") < m(&report.initial_eval, "loss"));
        assert_eq!(m(&report.final_eval, "reward_accuracy"), 1.0);
        let mut kto = r;
        kto.objective = PreferenceObjective::Kto(Default::default());
        let err = format!("{:#}", kto.validate().unwrap_err());
        assert!(err.contains("unpaired"), "{err}");
    }

    /// CoPG and A-LoL on pairs scored by a `[[reward]]` function (1 for a response holding
    /// `w20` — every chosen one — else 0): both raise the chosen responses' log-probs relative
    /// to the reference above the rejected ones'; CoPG, which also pushes the rejected ones
    /// down, wins every pair. Pairs with no scores and no `[[reward]]`, or `[[reward]]` with an
    /// objective that reads no scores, are refused.
    #[test]
    fn scored_objectives_learn_from_pairs_scored_by_reward_functions() {
        let _seeded = rm_core::device::seeded_test_lock();
        let rewards = w20_reward();
        for extra in ["kind = \"copg\"", "kind = \"alol\"\nclip = 0.5"] {
            let root = temp(&format!("scored-{}", extra.len()));
            rm_core::fixtures::write_tiny_llama(&root.join("model"), 9).unwrap();
            write_pairs(&root.join("pairs.jsonl"));
            let unscored = recipe(&root, true, extra);
            let err = format!(
                "{:#}",
                train_preference_policy(unscored.clone(), &request(&root)).unwrap_err()
            );
            assert!(err.contains("pair 1 (and 7 more) has no scores"), "{err}");
            let mut scored = unscored;
            scored.reward = rewards.clone();
            scored.train.out_dir = root.join("scored-run");
            let report = train_preference_policy(scored, &request(&root)).unwrap();
            let m = |e: &Evaluation, k: &str| e.metrics[k];
            assert_eq!(m(&report.initial_eval, "reward_margin"), 0.0);
            assert!(
                m(&report.final_eval, "reward_margin") > 0.5,
                "{extra}: {:?}",
                report.final_eval.metrics
            );
            assert!(m(&report.final_eval, "reward_chosen") > 0.0, "{extra}");
            if extra.contains("copg") {
                assert_eq!(m(&report.final_eval, "reward_accuracy"), 1.0);
                assert!(m(&report.final_eval, "reward_rejected") < 0.0);
            }
            let before = m(&report.initial_eval, "loss");
            let after = m(&report.final_eval, "loss");
            assert!(after < before, "{extra}: loss {before} → {after}");
        }
        let root = temp("scored-dpo");
        let mut dpo = recipe(&root, true, "");
        dpo.reward = rewards;
        let err = format!("{:#}", dpo.validate().unwrap_err());
        assert!(err.contains("does not: remove them"), "{err}");
    }

    /// KTO, APO-zero unpaired and BCO learn the same preference from unpaired examples — pairs
    /// split in two, or rows of shape `unpaired` — with LoRA: the evaluation loss falls, every
    /// example's implicit reward gets its label's sign; BCO's reward shift moves and is the
    /// task's checkpointed state; steps log their token throughput.
    #[test]
    fn unpaired_objectives_learn_from_split_pairs_and_unpaired_rows() {
        let _seeded = rm_core::device::seeded_test_lock();
        for extra in [
            "kind = \"kto\"",
            "kind = \"apo_zero_unpaired\"",
            "kind = \"bco\"",
        ] {
            let root = temp(&format!("unpaired-{}", extra.len()));
            rm_core::fixtures::write_tiny_llama(&root.join("model"), 9).unwrap();
            write_pairs(&root.join("pairs.jsonl"));
            write_unpaired(&root.join("unpaired.jsonl"));
            let mut recipe = recipe(&root, true, extra);
            if extra.contains("bco") {
                recipe.data.train = rm_pipeline::recipe::PairSource::Jsonl {
                    path: root.join("unpaired.jsonl"),
                    shape: rm_pipeline::recipe::PairShape::Unpaired,
                    limit: 0,
                };
            }
            let report = train_preference_policy(recipe, &request(&root)).unwrap();
            assert_eq!(report.example_unit, "examples");
            let before = report.initial_eval.metrics["loss"];
            let after = report.final_eval.metrics["loss"];
            // At the start the policy is its reference: every reward is 0, KTO's and APO's
            // losses are (1 − σ(0)) = 0.5 per example, BCO's −log σ(±(0 − δ)) = ln 2 at δ = 0.
            let start = if extra.contains("bco") {
                std::f64::consts::LN_2
            } else {
                0.5
            };
            assert!((before - start).abs() < 1e-6, "{extra}: {before}");
            assert!(after < 0.5 * before, "{extra}: loss {before} → {after}");
            assert_eq!(report.final_eval.metrics["reward_accuracy"], 1.0, "{extra}");
            assert!(
                report.final_eval.metrics["reward_desirable"]
                    > report.final_eval.metrics["reward_undesirable"] + 0.5,
                "{extra}: {:?}",
                report.final_eval.metrics
            );
            // 16 examples, batches of 4, 12 epochs.
            assert_eq!(report.outcome.steps, 48);
            let records = rm_core::train::metrics::read_records(
                &report.out_dir.join("metrics.jsonl"),
                "train",
            )
            .unwrap();
            assert!(
                records.iter().all(|r| r["tokens"].as_u64().unwrap() > 0
                    && r["tokens_per_s"].as_f64().unwrap() > 0.0)
            );
            if extra.contains("bco") {
                let deltas: Vec<f64> = records
                    .iter()
                    .map(|r| r["delta"].as_f64().unwrap())
                    .collect();
                assert!(
                    deltas[0].abs() < 1e-6,
                    "the first batch's δ is its own mean reward, 0 at the start"
                );
                assert!(deltas.iter().any(|d| d.abs() > 1e-3), "{deltas:?}");
                // The checkpoint holds the running mean as the task state.
                // The checkpoint holds the running mean as the task state: every training
                // example of every step so far counted once.
                let state: serde_json::Value = serde_json::from_str(
                    &std::fs::read_to_string(report.out_dir.join("last/train_state.json")).unwrap(),
                )
                .unwrap();
                let step = state["step"].as_u64().unwrap();
                assert!(step > 0);
                assert_eq!(state["task_state"]["count"].as_u64(), Some(4 * step));
                assert!(state["task_state"]["mean"].as_f64().unwrap().abs() > 1e-3);
            } else if extra.contains("\"kto\"") {
                assert!(report.final_eval.metrics["kl"] >= 0.0);
            }
            std::fs::remove_dir_all(&root).ok();
        }
    }

    /// `[reference] precompute`: the first run computes and caches the reference log-probs, a
    /// second run on the same data reads them back, and both train exactly as the run that
    /// computes the reference every step; a damaged cache file is an error naming it.
    #[test]
    fn precomputed_reference_logps_are_cached_and_train_as_the_live_reference() {
        let _seeded = rm_core::device::seeded_test_lock();
        let root = temp("refcache");
        rm_core::fixtures::write_tiny_llama(&root.join("model"), 9).unwrap();
        write_pairs(&root.join("pairs.jsonl"));
        let cache = root.join("cache");
        let run = |precompute: bool, out: &str| {
            let mut r = recipe(&root, true, "");
            r.train.epochs = 2;
            r.train.out_dir = root.join(out);
            r.reference.precompute = precompute;
            r.reference.cache_dir = Some(cache.clone());
            train_preference_policy(r, &request(&root))
        };
        let live = run(false, "live").unwrap();
        assert!(live.reference_cache.is_none());
        let first = run(true, "first").unwrap();
        let Some(CacheStatus::Written(path)) = &first.reference_cache else {
            panic!("{:?}", first.reference_cache);
        };
        assert!(path.starts_with(cache.join("reference-logps")) && path.is_file());
        let second = run(true, "second").unwrap();
        assert_eq!(second.reference_cache, Some(CacheStatus::Hit(path.clone())));
        let loss = |r: &PreferenceReport| r.final_eval.metrics["loss"];
        assert!(loss(&live) < 0.6, "{}", loss(&live));
        for r in [&first, &second] {
            assert!(
                (loss(r) - loss(&live)).abs() < 1e-5,
                "{} vs {}",
                loss(r),
                loss(&live)
            );
        }
        std::fs::write(path, b"not safetensors").unwrap();
        let err = format!("{:#}", run(true, "third").unwrap_err());
        assert!(
            err.contains("reference cache") && err.contains(&path.display().to_string()),
            "{err}"
        );
        // Reference-free objectives take no precomputed reference.
        let mut r = recipe(&root, true, "kind = \"simpo\"");
        r.reference.precompute = true;
        assert!(format!("{:#}", r.validate().unwrap_err()).contains("reference.precompute"));
        std::fs::remove_dir_all(&root).ok();
    }

    /// TR-DPO with full fine-tuning. A hard refresh (α = 1) every 8 steps makes the reference
    /// the policy itself at each evaluation (after step 8, 16, 24): margin and KL exactly 0,
    /// the sigmoid loss ln 2. A soft refresh (α = 0.5 every 3 steps) run stopped after 10 steps
    /// and resumed ends exactly as the uninterrupted run: the refreshed reference is in the
    /// checkpoint.
    #[test]
    fn tr_dpo_refreshes_the_reference_and_resumes_exactly() {
        let _seeded = rm_core::device::seeded_test_lock();
        let root = temp("trdpo");
        rm_core::fixtures::write_tiny_llama(&root.join("model"), 9).unwrap();
        write_pairs(&root.join("pairs.jsonl"));
        let hard = "sync_ref_model = true\nref_model_mixup_alpha = 1.0\nref_model_sync_steps = 8";
        let report = train_preference_policy(recipe(&root, false, hard), &request(&root)).unwrap();
        let evals =
            rm_core::train::metrics::read_records(&report.out_dir.join("metrics.jsonl"), "eval")
                .unwrap();
        assert_eq!(evals.len(), 3, "{evals:?}");
        for e in &evals {
            assert_eq!(e["reward_margin"].as_f64(), Some(0.0), "{e}");
            assert_eq!(e["kl_estimate"].as_f64(), Some(0.0), "{e}");
            assert!((e["loss"].as_f64().unwrap() - std::f64::consts::LN_2).abs() < 1e-6);
        }
        // Between refreshes the policy does move away from its reference.
        let train =
            rm_core::train::metrics::read_records(&report.out_dir.join("metrics.jsonl"), "train")
                .unwrap();
        assert!(
            train
                .iter()
                .any(|r| r["reward_margin"].as_f64().unwrap() > 0.05)
        );

        let soft = "sync_ref_model = true\nref_model_mixup_alpha = 0.5\nref_model_sync_steps = 3";
        let with_out = |out: &str, max_steps: Option<u64>| {
            let mut r = recipe(&root, false, soft);
            r.train.out_dir = root.join(out);
            r.train.max_steps = max_steps;
            r.train.save_every = Some(2);
            r
        };
        let whole = train_preference_policy(with_out("whole", None), &request(&root)).unwrap();
        train_preference_policy(with_out("split", Some(10)), &request(&root)).unwrap();
        assert!(
            root.join("split/last")
                .join("reference.safetensors")
                .is_file()
        );
        let mut resume = request(&root);
        resume.mode = RunMode::Resume {
            allow_changes: false,
        };
        let resumed = train_preference_policy(with_out("split", None), &resume).unwrap();
        assert_eq!(resumed.outcome.steps, whole.outcome.steps);
        assert_eq!(
            resumed.final_eval.metrics, whole.final_eval.metrics,
            "a resumed TR-DPO run ends where the uninterrupted one does"
        );
        std::fs::remove_dir_all(&root).ok();
    }
}
