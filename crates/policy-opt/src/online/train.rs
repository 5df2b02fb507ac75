//! `plumb train-rl` end to end: recipe → policy (LoRA or full) and its reference → prompts and
//! reward functions → [`RlTask`] → [`Trainer::run_rollouts`] → `final/` (and `best/`) policy
//! folders, `metrics.jsonl` (collect, train and eval records), `summary.json`, `recipe.toml`
//! and `curves.png` in the run folder.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use rm_core::burn::module::Module;
use rm_core::burn::tensor::Device;
use rm_core::models::heads::ValueHeadConfig;
use rm_core::models::llama::CausalLm;
use rm_core::models::policy_folder::Policy;
use rm_core::policy::{PolicyWithCritic, PolicyWithValue};
use rm_core::train::{
    Evaluation, RESUMABLE_TRAIN_FIELDS, RunDir, TrainOutcome, TrainTask, Trainer,
};
use rm_pipeline::train::TrainRequest;
use serde_json::json;

use super::implicit_prm::ImplicitPrm;
use super::recipe::{CriticConfig, RlRecipe};
use super::rewards::RewardSet;
use super::task::{RlModel, RlTask};

/// What an online-RL run produced.
#[derive(Clone, Debug)]
pub struct RlReport {
    pub out_dir: PathBuf,
    pub final_dir: PathBuf,
    pub best_dir: PathBuf,
    /// The evaluation before training.
    pub initial_eval: Evaluation,
    pub final_eval: Evaluation,
    pub outcome: TrainOutcome,
    pub threads: usize,
    pub plot: Option<PathBuf>,
    pub plot_error: Option<String>,
}

/// The initial evaluation, the rollout driver, the final evaluation.
fn run_task<M: RlModel>(
    trainer: &Trainer,
    run: &RunDir,
    model: M,
    task: &mut RlTask,
    rollout: &rm_core::train::RolloutConfig,
) -> Result<(Evaluation, TrainOutcome, Evaluation)> {
    eprintln!("evaluating the initial policy");
    let initial_eval = TrainTask::<M>::evaluate(task, &model.valid())?;
    let (model, outcome) = trainer.run_rollouts(run, model, task, rollout)?;
    eprintln!(
        "trained {} steps in {:.1}s",
        outcome.steps, outcome.train_seconds
    );
    let final_eval = match &outcome.final_eval {
        Some(e) => e.clone(),
        None => TrainTask::<M>::evaluate(task, &model.valid())?,
    };
    Ok((initial_eval, outcome, final_eval))
}

/// The folder of the run folder the final implicit PRM (`[algorithm.implicit_prm]`) is
/// written to, as a policy folder.
pub const IMPLICIT_PRM_DIR: &str = "implicit_prm";

/// PPO's separate value model from `path` (resolved like `model.policy`): a causal LM whose
/// vocabulary is the policy's (the critic reads the policy's token ids).
fn load_critic(
    path: &Path,
    models_dir: &Path,
    vocabulary: usize,
    device: &Device,
) -> Result<CausalLm> {
    let path = rm_core::paths::resolve_model_path(path, models_dir);
    let critic = CausalLm::load(&path, device)
        .with_context(|| format!("algorithm.critic.model {}", path.display()))?;
    if critic.config.vocab_size != vocabulary {
        bail!(
            "algorithm.critic.model {}: its vocabulary has {} tokens, the policy's {vocabulary}; the critic reads the policy's token ids, so it needs the policy's tokenizer",
            path.display(),
            critic.config.vocab_size
        );
    }
    Ok(critic)
}

/// Trains a policy online with the recipe's algorithm; see the module docs.
pub fn train_rl_policy(mut recipe: RlRecipe, request: &TrainRequest) -> Result<RlReport> {
    recipe.model.policy =
        rm_core::paths::resolve_model_path(&recipe.model.policy, &request.models_dir);
    recipe.validate()?;
    let out = recipe.train.out_dir.clone();
    let run = RunDir::open(
        &out,
        request.mode,
        &recipe.identity()?,
        &[RESUMABLE_TRAIN_FIELDS, &["eval"]].concat(),
    )?;
    let device = request.device.clone().autodiff();
    device.seed(recipe.train.seed);
    eprintln!(
        "loading {} and the prompts ({})",
        recipe.model.policy.display(),
        request.data_dir.display()
    );
    let policy = Policy::build(&recipe.model, &device)?;
    let model = policy.lm.model.clone();
    let needs_reference = recipe.needs_reference();
    // A LoRA policy (configured, or a LoRA policy folder continued) has its base, adapters
    // off, as the reference; a fully fine-tuned one a frozen copy of its start.
    // InfAlign samples from the reference (no log-probs needed).
    let needs_reference = needs_reference || recipe.algorithm.calibration.is_some();
    let snapshot = match (&policy.spec.lora, needs_reference) {
        (None, true) => Some(model.clone().no_grad()),
        _ => None,
    };
    let instruction = recipe.data.instruction.as_deref();
    let train_prompts = recipe.data.train.load(&request.data_dir, instruction)?;
    let eval_prompts = recipe.data.eval.load(&request.data_dir, instruction)?;
    let mut rewards = RewardSet::build(&recipe.rewards, &request.device)?;
    if let Some(dir) = &recipe.algorithm.orchestrator {
        let weighting = super::orchestrate::OrchestratorWeighting::load(
            dir,
            &request.models_dir,
            &request.device,
        )?;
        rewards
            .set_prompt_weighting(Box::new(weighting))
            .with_context(|| format!("algorithm.orchestrator {}", dir.display()))?;
    }
    eprintln!(
        "{} training prompts, {} evaluation prompts; {} iteration(s) of {} prompts × {} completions; rewards: {}",
        train_prompts.len(),
        eval_prompts.len(),
        recipe.rollout.iterations,
        recipe.rollout.prompts_per_iteration,
        recipe.rollout.group_size,
        rewards.component_names().join(", "),
    );
    rm_core::checkpoint::write_bytes_atomically(
        &out.join("recipe.toml"),
        toml::to_string_pretty(&recipe)?.as_bytes(),
    )?;
    let trainer = Trainer {
        config: recipe.train.clone(),
        device: device.clone(),
        progress: request.progress,
    };
    let rollout = recipe.rollout_config();
    let hidden_size = policy.lm.config.hidden_size;
    let vocabulary = policy.lm.config.vocab_size;
    let mut task = RlTask::new(
        recipe.clone(),
        policy,
        rewards,
        train_prompts,
        eval_prompts,
        snapshot,
    )?;
    if let Some(config) = &recipe.algorithm.implicit_prm {
        // φ starts from the policy's starting weights, every weight trainable.
        let mut model_config = recipe.model.clone();
        model_config.lora = None;
        let template = Policy::build(&model_config, &device)?;
        task = task.with_implicit_prm(ImplicitPrm::new(config.clone(), template))?;
    }
    let (initial_eval, outcome, final_eval) = match &recipe.algorithm.critic {
        None => run_task(&trainer, &run, model, &mut task, &rollout)?,
        Some(CriticConfig { model: None, .. }) => {
            // PPO: a value head on the policy's hidden states (one backbone pass for both).
            let value_head = ValueHeadConfig::new(hidden_size).init(&device);
            let model = PolicyWithValue {
                policy: model,
                value_head,
            };
            run_task(&trainer, &run, model, &mut task, &rollout)?
        }
        Some(CriticConfig {
            model: Some(path), ..
        }) => {
            // PPO with a separate value model: its own backbone (every weight trained) and head.
            let critic = load_critic(path, &request.models_dir, vocabulary, &device)?;
            let value_head = ValueHeadConfig::new(critic.config.hidden_size).init(&device);
            let model = PolicyWithCritic {
                policy: model,
                critic: critic.model,
                value_head,
            };
            run_task(&trainer, &run, model, &mut task, &rollout)?
        }
    };
    if let Some(prm) = task.implicit_prm() {
        let dir = out.join(IMPLICIT_PRM_DIR);
        prm.save_model(&dir)?;
        eprintln!("implicit PRM: {}", dir.display());
    }
    let threads = rayon::current_num_threads();
    let summary = json!({
        "recipe": recipe,
        "steps": outcome.steps,
        "train_seconds": outcome.train_seconds,
        "initial_eval": initial_eval.metrics,
        "final_eval": final_eval.metrics,
        "best_step": outcome.best_step,
        "best_eval_reward": outcome.best_score,
        "threads": threads,
    });
    rm_pipeline::reports::write_summary(&out, &summary)?;
    let (plot, plot_error) = rm_pipeline::reports::draw_curves(&run.metrics_path(), &out);
    Ok(RlReport {
        final_dir: out.join("final"),
        best_dir: out.join("best"),
        out_dir: out,
        initial_eval,
        final_eval,
        outcome,
        threads,
        plot,
        plot_error,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rm_core::device::test_device;
    use rm_core::train::RunMode;
    use rm_core::train::metrics::{read_records, without_wall_time};
    use std::path::Path;

    fn temp(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("plumb-rl-{tag}-{}", std::process::id()));
        std::fs::remove_dir_all(&d).ok();
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    /// Prompts of two words; the reward asks for the word `w7` anywhere in the completion.
    fn write_prompts(path: &Path) {
        let rows: Vec<String> = (0..8)
            .map(|i| json!({"prompt": format!("w{} w{}", 10 + i, 20 + i)}).to_string())
            .collect();
        std::fs::write(path, rows.join("\n")).unwrap();
    }

    fn recipe(root: &Path, estimator: &str, extra: &str) -> RlRecipe {
        let text = format!(
            r#"
[model]
policy = "{model}"
max_len = 16
template = "plain"
lora = {{ rank = 4, alpha = 8.0, target_modules = ["q_proj", "v_proj", "o_proj", "up_proj", "down_proj"] }}

[data]
train = {{ source = "jsonl", path = "{prompts}" }}
eval = {{ source = "jsonl", path = "{prompts}" }}

[rollout]
iterations = 12
prompts_per_iteration = 4
group_size = 4
generation_batch = 16
sampling = {{ max_new_tokens = 4, temperature = 1.0 }}

[algorithm]
estimator = {estimator}
policy_loss = {{ name = "vanilla", clip_ratio_low = 0.2, clip_ratio_high = 0.28 }}
{extra}

[[reward]]
kind = "keywords"
required = ["w7"]

[train]
batch_size = 8
micro_batch_size = 3
lr = 0.05
weight_decay = 0.0
warmup_ratio = 0.0
schedule = "constant"
seed = 3
eval_every = 4
save_every = 4
out_dir = "{out}"
"#,
            model = root.join("model").display(),
            prompts = root.join("prompts.jsonl").display(),
            out = root.join("run").display(),
        );
        rm_core::recipe::parse(&text, "test", &[]).unwrap()
    }

    fn request(root: &Path) -> TrainRequest {
        TrainRequest {
            data_dir: root.to_path_buf(),
            models_dir: root.to_path_buf(),
            device: test_device(),
            mode: RunMode::Fresh,
            progress: false,
        }
    }

    /// GRPO, RLOO, REINFORCE++, PPO (GAE with a value head on the policy or a separate value model), online RAFT, online DPO, P3O and GRPO on InfAlign's calibrated reward teach a tiny policy to say `w7`: the held-out (greedy)
    /// reward rises from below 0.5 to at least 0.75 within 24 steps (PPO and RAFT: 32, REINFORCE++: 48; GDPO's two-objective total rises by 0.4 of its 1.5); the run logs collect
    /// records with the reward and the rollout throughput, and train records with the clip
    /// fraction and entropy.
    #[test]
    fn every_estimator_family_learns_a_verifiable_toy_task() {
        let _seeded = rm_core::device::seeded_test_lock();
        for (i, (estimator, extra)) in [
            ("{ name = \"grpo\" }", ""),
            ("{ name = \"rloo\" }", ""),
            ("{ name = \"reinforce_plus_plus\", gamma = 1.0 }", ""),
            (
                "{ name = \"gae\", gamma = 1.0, lam = 0.95 }",
                "critic = { vf_coef = 0.5, cliprange_value = 0.5 }",
            ),
            // PPO with a separate value model (the tiny model again, every weight trained).
            (
                "{ name = \"gae\", gamma = 1.0, lam = 0.95 }",
                "critic = { vf_coef = 0.5, cliprange_value = 0.5, model = \"models/model\" }",
            ),
            ("{ name = \"raft\", top_k = 1 }", ""),
            // Online DPO: one (best, worst) pair per prompt, labelled by the reward.
            (
                "{ name = \"grpo\" }",
                "online_dpo = { dpo = { beta = 0.5 } }",
            ),
            // DNO-Prct: the pair by win-rate under the reward's Bradley–Terry oracle, the
            // loss against the previous iterate (no reference model).
            (
                "{ name = \"grpo\" }",
                "online_dpo = { label = \"win_rate\", reference = \"previous_iterate\", dpo = { beta = 0.5 } }",
            ),
            // P3O: every pair of a prompt's completions, jointly and separately clipped
            // sequence ratios.
            ("{ name = \"grpo\" }", "p3o = { clip = \"joint\" }"),
            ("{ name = \"grpo\" }", "p3o = { clip = \"separate\" }"),
            // InfAlign: the reward replaced by exp(2·C), C its quantile among 4 reference
            // samples of the prompt.
            (
                "{ name = \"grpo\" }",
                "calibration = { component = \"keywords\", reference_samples = 4, transform = { kind = \"exp\", t = 2.0 } }",
            ),
            // Multi-objective GRPO (GDPO): a second objective, each normalised in its group.
            (
                "{ name = \"grpo\" }",
                "reward_aggregation = \"normalize_then_sum\"",
            ),
        ]
        .into_iter()
        .enumerate()
        {
            let root = temp(&format!("learn-{i}"));
            rm_core::fixtures::write_tiny_llama(&root.join("model"), 9).unwrap();
            write_prompts(&root.join("prompts.jsonl"));
            let mut r = recipe(&root, estimator, extra);
            if extra.contains("normalize_then_sum") {
                r.rewards.push(
                    toml::from_str(
                        "name = \"w9\"\nkind = \"keywords\"\nrequired = [\"w9\"]\nweight = 0.5",
                    )
                    .unwrap(),
                );
            }
            let critic = extra.contains("critic");
            let online_dpo = extra.contains("online_dpo");
            // Online DPO and P3O batch prompts (their pairs), not rows.
            let p3o = extra.contains("p3o");
            if online_dpo {
                // Four prompts per collection, one step each: twice the collections for the
                // same 24 steps.
                r.train.batch_size = 4;
            }
            if p3o {
                // Two prompts (up to twelve pairs) per step, two steps per collection: the
                // second step is off the sampling policy, where the clipping acts.
                r.train.batch_size = 2;
                r.train.micro_batch_size = Some(1);
            }
            // The critic starts untrained and RAFT learns from one response in four: these get
            // a few more iterations. REINFORCE++'s batch-whitened advantages carry no
            // per-prompt baseline, so on this task its reward after 16 iterations swings
            // between 0.5 and 0.875 with float rounding alone (the LM head run on fewer rows
            // moved it): it gets more still.
            let reinforce = estimator.contains("reinforce_plus_plus");
            let slow = critic || reinforce || estimator.contains("raft");
            let iterations = match (reinforce, slow, online_dpo) {
                (true, _, _) => 24,
                (_, true, _) => 16,
                (_, _, true) => 24,
                _ => 12,
            };
            r.rollout.iterations = iterations;
            if reinforce {
                r.train.lr = 0.02;
            }
            let report = train_rl_policy(r, &request(&root)).unwrap();
            // With two objectives, both count: the total (w7 + 0.5·w9) out of 1.5.
            let key = if extra.contains("normalize_then_sum") {
                "reward"
            } else {
                "reward/keywords"
            };
            let before = report.initial_eval.metrics[key];
            let after = report.final_eval.metrics[key];
            eprintln!("{estimator} {extra}: held-out reward {before} → {after}");
            assert!(before < 0.5, "{estimator}: initial reward {before}");
            if key == "reward" {
                assert!(
                    after >= before + 0.4,
                    "{estimator} {extra}: reward {before} → {after}"
                );
            } else {
                assert!(after >= 0.75, "{estimator}: reward {before} → {after}");
            }
            let steps_per_iteration = if online_dpo { 1 } else { 2 };
            assert_eq!(report.outcome.steps, steps_per_iteration * iterations);
            let metrics = report.out_dir.join("metrics.jsonl");
            let collects = read_records(&metrics, "collect").unwrap();
            assert_eq!(collects.len(), iterations as usize);
            assert!(collects[0]["rollout_tokens_per_s"].as_f64().unwrap() > 0.0);
            // Steps with nothing to learn from (every pair tied) pass without an update.
            let train: Vec<serde_json::Value> = read_records(&metrics, "train")
                .unwrap()
                .into_iter()
                .filter(|r| r.get("skipped").is_none())
                .collect();
            assert!(!train.is_empty());
            if online_dpo {
                assert!(collects.iter().any(|c| c["pairs"].as_f64().unwrap() > 0.0));
                assert!(
                    train
                        .iter()
                        .any(|t| t["reward_margin"].as_f64().unwrap() > 0.0)
                );
            }
            if extra.contains("calibration") {
                // Four new prompts at the first collection (8 training prompts in all); the
                // quantiles are in [0, 1].
                assert_eq!(collects[0]["calibration/new_prompts"].as_f64(), Some(4.0));
                let seen: f64 = collects
                    .iter()
                    .map(|c| c["calibration/new_prompts"].as_f64().unwrap())
                    .sum();
                assert_eq!(seen, 8.0);
                assert!(
                    collects
                        .iter()
                        .all(|c| (0.0..=1.0)
                            .contains(&c["calibration/mean_quantile"].as_f64().unwrap()))
                );
            }
            if p3o {
                // Six pairs per prompt of four completions; the clip acts on second steps.
                assert!(collects.iter().all(|c| c["pairs"].as_f64().unwrap() == 24.0));
                assert!(train.iter().all(|r| r.get("p3o_log_ratio_abs").is_some()));
                assert!(
                    train
                        .iter()
                        .any(|r| r["pg_clipfrac"].as_f64().unwrap() > 0.0)
                );
            }
            if !online_dpo {
                assert!(train.iter().all(|r| r.get("pg_clipfrac").is_some()));
            }
            if !(online_dpo || p3o) {
                assert!(train.iter().all(|r| r["entropy"].as_f64().unwrap() > 0.0));
            }
            // The saved policy is the trained one: it loads and says w7 greedily.
            let loaded = Policy::load(&report.final_dir, &test_device()).unwrap();
            assert!(loaded.spec.lora.is_some());
            assert_eq!(
                report
                    .final_dir
                    .join(super::super::task::VALUE_HEAD_FILE)
                    .is_file(),
                critic
            );
            assert_eq!(
                report
                    .final_dir
                    .join(super::super::task::CRITIC_FILE)
                    .is_file(),
                extra.contains("model =")
            );
            if critic {
                assert!(train.iter().all(|r| r["vf_loss"].as_f64().unwrap() >= 0.0));
            }
            std::fs::remove_dir_all(&root).ok();
        }
    }

    /// Process rewards reach the trainer: a tiny PRM (`process_model`, each word a step, its
    /// PURE step rewards soft-min transformed (T = 0.1) and scaled by 0.1, no sequence value)
    /// beside the outcome reward, PURE's RLOO with sum-form returns (PURE's default credit
    /// assignment). Every collection places step rewards (≥ 1 step per row, step rewards in
    /// [−0.1, 0.1]) and the policy still learns the outcome task.
    #[test]
    fn process_rewards_from_a_prm_train_with_pure_credit() {
        let _seeded = rm_core::device::seeded_test_lock();
        let root = temp("process");
        rm_core::fixtures::write_tiny_llama(&root.join("model"), 9).unwrap();
        write_prompts(&root.join("prompts.jsonl"));
        let prm = crate::online::rewards::process::tiny_prm(&root.join("model"), 32);
        prm.save(&root.join("prm")).unwrap();
        let mut r = recipe(
            &root,
            "{ name = \"process_rloo\", credit = { form = \"sum\" } }",
            "",
        );
        r.rewards.push(
            toml::from_str(&format!(
                "kind = \"process_model\"\npath = \"{}\"\ndelimiter = \" \"\nweight = 0.0\nstep_weight = 0.1\nmin_form_temperature = 0.1",
                root.join("prm").display()
            ))
            .unwrap(),
        );
        let report = train_rl_policy(r, &request(&root)).unwrap();
        let before = report.initial_eval.metrics["reward/keywords"];
        let after = report.final_eval.metrics["reward/keywords"];
        eprintln!("process_rloo (soft-min PRM rewards, sum form): {before} → {after}");
        assert!(before < 0.5, "initial reward {before}");
        assert!(after >= 0.75, "reward {before} → {after}");
        let collects = read_records(&report.out_dir.join("metrics.jsonl"), "collect").unwrap();
        assert_eq!(collects.len(), 12);
        for c in &collects {
            assert!(c["process/steps_per_row"].as_f64().unwrap() >= 1.0, "{c}");
            let mean = c["process/step_reward_mean"].as_f64().unwrap();
            assert!((-0.1..=0.1).contains(&mean), "{c}");
        }
        std::fs::remove_dir_all(&root).ok();
    }

    /// PRIME: the implicit PRM φ (full fine-tuning of the starting weights) learns the
    /// outcome labels online — its cross-entropy on each collection falls and its sign
    /// agreement with the labels rises — while its dense token rewards and the outcome reward
    /// train the policy with PRIME's RLOO. The final φ is a policy folder whose implicit reward
    /// `β·Σ log π_φ/π_ref` ranks a completion with the keyword above one without it.
    #[test]
    fn prime_updates_its_implicit_prm_online_and_trains_the_policy() {
        let _seeded = rm_core::device::seeded_test_lock();
        let root = temp("prime");
        rm_core::fixtures::write_tiny_llama(&root.join("model"), 9).unwrap();
        write_prompts(&root.join("prompts.jsonl"));
        let r = recipe(
            &root,
            "{ name = \"process_rloo\", credit = { form = \"sum\" } }",
            "implicit_prm = { label = \"keywords\", beta = 0.5, lr = 0.01, coef = 0.2, epochs = 2, micro_batch = 8 }",
        );
        let report = train_rl_policy(r.clone(), &request(&root)).unwrap();
        let before = report.initial_eval.metrics["reward/keywords"];
        let after = report.final_eval.metrics["reward/keywords"];
        eprintln!("PRIME: reward {before} → {after}");
        assert!(after >= 0.75, "reward {before} → {after}");
        let collects = read_records(&report.out_dir.join("metrics.jsonl"), "collect").unwrap();
        let series = |k: &str| -> Vec<f64> {
            collects
                .iter()
                .filter_map(|c| c.get(k).and_then(|v| v.as_f64()))
                .collect()
        };
        let (loss, accuracy) = (series("prm/loss"), series("prm/accuracy"));
        eprintln!("PRIME: φ loss {loss:?}, accuracy {accuracy:?}");
        assert_eq!(loss.len(), collects.len());
        assert!(
            (loss[0] - std::f64::consts::LN_2).abs() < 1e-5,
            "φ = π_ref: {}",
            loss[0]
        );
        let late = |v: &[f64]| v[v.len() - 4..].iter().sum::<f64>() / 4.0;
        assert!(late(&loss) < 0.5 * loss[0], "{loss:?}");
        assert!(late(&accuracy) > 0.8, "{accuracy:?}");
        assert!(series("prm/token_reward_mean").len() == collects.len());

        let device = test_device();
        let phi = Policy::load(&report.out_dir.join(IMPLICIT_PRM_DIR), &device).unwrap();
        let base = Policy::build(&r.model, &device).unwrap();
        let prompt = rm_core::types::Prompt::Text("w12 w22".into());
        let implicit = |response: &str| {
            let seq = phi.encode(&prompt, response).unwrap();
            let lp = |m: &rm_core::models::llama::LlamaModel| {
                rm_core::shared_prompt::shared_prompt_logprobs(
                    m,
                    std::slice::from_ref(&seq),
                    0,
                    false,
                )
                .unwrap()
                .sum
                .into_scalar::<f32>()
            };
            lp(&phi.lm.model) - lp(&base.lm.model)
        };
        let (with, without) = (implicit("w7 w3 w4"), implicit("w5 w3 w4"));
        assert!(with > without + 0.5, "{with} vs {without}");
        std::fs::remove_dir_all(&root).ok();
    }

    /// Runs stopped after 6 steps and resumed end with the uninterrupted runs' metrics, record
    /// for record (wall time aside): GRPO with a k3 KL in the loss; PPO (the value head in the
    /// checkpoint) with an adaptive KL controller in the reward and a constraint multiplier
    /// (the task's state).
    #[test]
    fn stopped_runs_resume_exactly() {
        let _seeded = rm_core::device::seeded_test_lock();
        let root = temp("resume");
        rm_core::fixtures::write_tiny_llama(&root.join("model"), 9).unwrap();
        write_prompts(&root.join("prompts.jsonl"));
        let ppo = "kl = { estimator = \"k1\", placement = \"reward\", controller = { kind = \"adaptive\", init_coef = 0.05, target = 0.001, horizon = 10.0 } }\ncritic = { vf_coef = 0.5 }\nconstraints = [{ component = \"keywords\", bound = \"at_least\", threshold = 0.9 }]";
        for (tag, estimator, extra) in [
            (
                "grpo",
                "{ name = \"grpo\" }",
                "kl = { estimator = \"k3\", coef = 0.05 }",
            ),
            ("ppo", "{ name = \"gae\", gamma = 1.0, lam = 0.95 }", ppo),
            (
                "infalign",
                "{ name = \"grpo\" }",
                "calibration = { component = \"keywords\", reference_samples = 3 }",
            ),
            (
                "ppo-critic",
                "{ name = \"gae\", gamma = 1.0, lam = 0.95 }",
                "critic = { vf_coef = 0.5, model = \"models/model\" }",
            ),
            (
                "prime",
                "{ name = \"process_rloo\", credit = { form = \"sum\" } }",
                "implicit_prm = { label = \"keywords\", beta = 0.5, lr = 0.01 }",
            ),
        ] {
            let with_out = |out: &str, max_steps: Option<u64>| {
                let mut r = recipe(&root, estimator, extra);
                r.rollout.iterations = 5;
                r.train.out_dir = root.join(format!("{tag}-{out}"));
                r.train.max_steps = max_steps;
                r.train.save_every = Some(1);
                r
            };
            let whole = train_rl_policy(with_out("whole", None), &request(&root)).unwrap();
            train_rl_policy(with_out("split", Some(6)), &request(&root)).unwrap();
            let mut resume = request(&root);
            resume.mode = RunMode::Resume {
                allow_changes: false,
            };
            let resumed = train_rl_policy(with_out("split", None), &resume).unwrap();
            assert_eq!(resumed.outcome.steps, whole.outcome.steps);
            let eval = |r: &RlReport| without_wall_time(json!(r.final_eval.metrics));
            assert_eq!(eval(&resumed), eval(&whole), "{tag}");
            let records = |out: &str| -> Vec<serde_json::Value> {
                let path = root.join(format!("{tag}-{out}")).join("metrics.jsonl");
                ["collect", "train"]
                    .iter()
                    .flat_map(|k| read_records(&path, k).unwrap())
                    .map(without_wall_time)
                    .collect()
            };
            let (split, all) = (records("split"), records("whole"));
            assert_eq!(split, all, "{tag}");
            assert!(whole.final_eval.metrics["kl_ref"].abs() > 0.0);
            if tag == "prime" {
                // φ moved, so the checkpoint had an implicit PRM and its optimizer to restore.
                let losses: Vec<f64> = all
                    .iter()
                    .filter_map(|r| r.get("prm/loss").and_then(|v| v.as_f64()))
                    .collect();
                assert!(
                    losses.len() >= 3 && (losses[2] - losses[0]).abs() > 1e-4,
                    "{losses:?}"
                );
            }
            if tag == "ppo" {
                // The controller and the multiplier moved, so the resume had state to restore.
                let collects: Vec<&serde_json::Value> =
                    all.iter().filter(|r| r["kind"] == "collect").collect();
                assert!(
                    collects
                        .iter()
                        .any(|c| c["lambda/keywords"].as_f64().unwrap() > 0.0)
                );
                let train: Vec<&serde_json::Value> =
                    all.iter().filter(|r| r["kind"] == "train").collect();
                let coefs: Vec<f64> = train
                    .iter()
                    .map(|t| t["kl_coef"].as_f64().unwrap())
                    .collect();
                assert!(coefs.iter().any(|&c| (c - 0.05).abs() > 1e-6), "{coefs:?}");
                assert!(train.iter().all(|t| t.get("vf_loss").is_some()));
            }
        }
        std::fs::remove_dir_all(&root).ok();
    }

    /// A tiny model in `root/model`, prompts in `root/prompts.jsonl`, and a policy trained from
    /// it by online DPO (6 collections): the trained policy folder self-rewarding continues
    /// (from the model itself every implicit reward would be 0).
    fn started_policy(root: &Path) -> PathBuf {
        rm_core::fixtures::write_tiny_llama(&root.join("model"), 9).unwrap();
        write_prompts(&root.join("prompts.jsonl"));
        let mut start = recipe(
            root,
            "{ name = \"grpo\" }",
            "online_dpo = { dpo = { beta = 0.5 } }",
        );
        start.rollout.iterations = 6;
        start.train.batch_size = 4;
        start.train.out_dir = root.join("start");
        train_rl_policy(start, &request(root)).unwrap().final_dir
    }

    /// Self-rewarding with CREAM, continuing a policy folder: a tiny policy first learns a bit
    /// with reward-labelled online DPO; then its own implicit reward (against its base, the
    /// adapters off) labels the pairs and the previous iterate's ranking sets the consistency
    /// rate. The first collection has no previous iterate (rate 1), later ones a rate in
    /// [0, 1]; a run stopped after two iterations resumes (the previous iterate restored from
    /// the checkpoint) to the uninterrupted run's records. Starting from a fresh model (the
    /// policy still its reference) is refused, as are adapters unlike the folder's.
    #[test]
    fn cream_self_rewarding_continues_a_policy_folder_and_resumes_exactly() {
        let _seeded = rm_core::device::seeded_test_lock();
        let root = temp("cream");
        let started = started_policy(&root);
        let grpo = "{ name = \"grpo\" }";
        let cream = "online_dpo = { label = \"implicit\", cream = true, dpo = { beta = 0.5 } }";
        let mut fresh = recipe(&root, grpo, cream);
        fresh.train.batch_size = 4;
        let err = format!("{:#}", fresh.validate().unwrap_err());
        assert!(err.contains("trained policy folder"), "{err}");
        let with_out = |out: &str, max_steps: Option<u64>| {
            let mut r = recipe(&root, grpo, cream);
            r.model.policy = started.clone();
            r.model.lora = None;
            r.rollout.iterations = 4;
            r.train.batch_size = 4;
            r.train.out_dir = root.join(out);
            r.train.max_steps = max_steps;
            r.train.save_every = Some(1);
            r
        };
        let mut unlike = with_out("unlike", None);
        unlike.model.lora = Some(rm_core::lora::LoraConfig::new(2, 4.0, &["q_proj"]));
        let err = format!(
            "{:#}",
            train_rl_policy(unlike, &request(&root)).unwrap_err()
        );
        assert!(err.contains("differs from the adapters"), "{err}");
        let whole = train_rl_policy(with_out("whole", None), &request(&root)).unwrap();
        train_rl_policy(with_out("split", Some(2)), &request(&root)).unwrap();
        let mut resume = request(&root);
        resume.mode = RunMode::Resume {
            allow_changes: false,
        };
        train_rl_policy(with_out("split", None), &resume).unwrap();
        let records = |out: &str| -> Vec<serde_json::Value> {
            let path = root.join(out).join("metrics.jsonl");
            ["collect", "train"]
                .iter()
                .flat_map(|k| read_records(&path, k).unwrap())
                .map(without_wall_time)
                .collect()
        };
        assert_eq!(records("split"), records("whole"));
        let collects = read_records(&whole.out_dir.join("metrics.jsonl"), "collect").unwrap();
        let rates: Vec<f64> = collects
            .iter()
            .map(|c| c["cream_consistency"].as_f64().unwrap())
            .collect();
        assert_eq!(rates.len(), 4);
        assert_eq!(rates[0], 1.0, "no previous iterate at the first collection");
        assert!(rates.iter().all(|r| (0.0..=1.0).contains(r)), "{rates:?}");
        // Two iterations rank some group differently, so the regulariser acts.
        assert!(rates[1..].iter().any(|&r| r < 1.0), "{rates:?}");
        // The policy differs from its base from the start, so its own reward forms pairs.
        assert!(collects[0]["pairs"].as_f64().unwrap() > 0.0);
        // The continued policy is a LoRA folder over the same base.
        let loaded = Policy::load(&whole.final_dir, &test_device()).unwrap();
        assert_eq!(
            loaded.spec.base,
            std::path::absolute(root.join("model")).unwrap()
        );
        assert!(loaded.spec.lora.is_some());
        std::fs::remove_dir_all(&root).ok();
    }

    /// SCIR continues a trained policy folder: every step logs how many pairs the implicit
    /// reward and the generative judge agree on and their consistency loss, which the training
    /// drives down (λ = 4); a stopped run resumes to the uninterrupted records; recipes SCIR
    /// cannot run and answers that are not one token are refused.
    #[test]
    fn scir_makes_the_policys_two_judgments_agree_and_resumes_exactly() {
        let _seeded = rm_core::device::seeded_test_lock();
        let root = temp("scir");
        let started = started_policy(&root);
        let grpo = "{ name = \"grpo\" }";
        let scir = "online_dpo = { label = \"implicit\", dpo = { beta = 0.5 }, scir = { lambda = 4.0, template = \"{conversation} w1 {first} w2 {second}\", answers = [\"w5\", \"w6\"] } }";
        let with_out = |out: &str, max_steps: Option<u64>, extra: &str| {
            let mut r = recipe(&root, grpo, extra);
            r.model.policy = started.clone();
            r.model.lora = None;
            // Two collections, each trained 8 times over its 4 pairs: the consistency loss
            // is followed on fixed pairs.
            r.rollout.iterations = 2;
            r.rollout.ppo_epochs = 8;
            r.train.batch_size = 4;
            r.train.out_dir = root.join(out);
            r.train.max_steps = max_steps;
            r.train.save_every = Some(1);
            r
        };
        train_rl_policy(with_out("whole", None, scir), &request(&root)).unwrap();
        train_rl_policy(with_out("split", Some(3), scir), &request(&root)).unwrap();
        let mut resume = request(&root);
        resume.mode = RunMode::Resume {
            allow_changes: false,
        };
        train_rl_policy(with_out("split", None, scir), &resume).unwrap();
        let records = |out: &str, kind: &str| -> Vec<serde_json::Value> {
            read_records(&root.join(out).join("metrics.jsonl"), kind)
                .unwrap()
                .into_iter()
                .map(without_wall_time)
                .collect()
        };
        assert_eq!(records("split", "train"), records("whole", "train"));
        assert_eq!(records("split", "collect"), records("whole", "collect"));
        let train = records("whole", "train");
        let metric = |r: &serde_json::Value, k: &str| r[k].as_f64().unwrap();
        for r in &train {
            let agreement = metric(r, "scir_agreement");
            assert!((0.0..=1.0).contains(&agreement), "{r}");
            let judged = metric(r, "scir_judge_first");
            assert!(judged > 0.0 && judged < 1.0, "{r}");
            assert!(metric(r, "scir_consistency_loss") > 0.0, "{r}");
        }
        assert_eq!(train.len(), 16);
        for pass in train.chunks(8) {
            let first = metric(&pass[0], "scir_consistency_loss");
            let last = metric(&pass[7], "scir_consistency_loss");
            assert!(last < 0.5 * first, "consistency loss {first} → {last}");
            assert_eq!(metric(&pass[7], "scir_agreement"), 1.0);
        }

        for (extra, needle) in [
            (
                "online_dpo = { dpo = { beta = 0.5 }, scir = {} }",
                "set label = \"implicit\"",
            ),
            (
                "online_dpo = { label = \"implicit\", cream = true, dpo = { beta = 0.5 }, scir = {} }",
                "use one",
            ),
            (
                "online_dpo = { label = \"implicit\", dpo = { beta = 0.5 }, scir = { template = \"{first} {second}\" } }",
                "no {conversation}",
            ),
        ] {
            let err = format!("{:#}", with_out("bad", None, extra).validate().unwrap_err());
            assert!(err.contains(needle), "{needle}: {err}");
        }
        let two_tokens = "online_dpo = { label = \"implicit\", dpo = { beta = 0.5 }, scir = { answers = [\"w5 w6\", \"w7\"] } }";
        let err = format!(
            "{:#}",
            train_rl_policy(with_out("bad", None, two_tokens), &request(&root)).unwrap_err()
        );
        assert!(err.contains("exactly one"), "{err}");
        std::fs::remove_dir_all(&root).ok();
    }

    /// The bug class of TRL #3021/#5619 and verl #2776: one optimizer step cut into uneven
    /// micro-batches (rows of different lengths, so each pads to its own width) must combine —
    /// `Σ wᵢ·lossᵢ / Σ wᵢ` with the weights the task reports — to exactly the loss of the whole
    /// batch, for every aggregation mode, with the clip loss, a KL term and the entropy bonus
    /// all live (the buffer is collected by another model, which is also the reference, so
    /// ratios and KL differ from 1 and 0).
    #[test]
    fn uneven_micro_batches_combine_to_the_whole_batch_loss_in_every_aggregation() {
        let _seeded = rm_core::device::seeded_test_lock();
        use rm_core::train::{RolloutTask, TrainTask};
        let root = temp("accumulate");
        rm_core::fixtures::write_tiny_llama(&root.join("model"), 9).unwrap();
        rm_core::fixtures::write_tiny_llama(&root.join("other"), 10).unwrap();
        write_prompts(&root.join("prompts.jsonl"));
        let device = test_device().autodiff();
        let read = |t: rm_core::burn::tensor::Tensor<1>| -> f64 {
            t.into_data().convert::<f64>().try_to_vec::<f64>().unwrap()[0]
        };
        for agg in [
            "token-mean",
            "seq-mean-token-sum",
            "seq-mean-token-mean",
            "seq-mean-token-sum-norm",
        ] {
            let mut r = recipe(
                &root,
                "{ name = \"grpo\" }",
                &format!(
                    "loss_aggregation = \"{agg}\"\nkl = {{ estimator = \"k3\", coef = 0.1 }}\nentropy_coef = 0.01"
                ),
            );
            r.model.lora = None;
            r.rollout.sampling.max_new_tokens = 6;
            let policy = Policy::build(&r.model, &device).unwrap();
            let model = policy.lm.model.clone();
            let mut other_config = r.model.clone();
            other_config.policy = root.join("other");
            let other = Policy::build(&other_config, &device).unwrap().lm.model;
            let prompts = r.data.train.load(&root, None).unwrap();
            let rewards = RewardSet::build(&r.rewards, &test_device()).unwrap();
            let mut task = RlTask::new(
                r,
                policy,
                rewards,
                prompts.clone(),
                prompts,
                Some(other.clone().no_grad()),
            )
            .unwrap();
            let collected = task.collect(&other.valid(), 0, 11).unwrap();
            assert_eq!(collected.items, 16);
            let all: Vec<usize> = (0..16).collect();
            let whole = task.loss(&model, &all).unwrap();
            let expected = read(whole.loss);
            let (mut sum, mut weight) = (0.0, 0.0);
            for part in [&all[0..3], &all[3..4], &all[4..11], &all[11..16]] {
                let out = task.loss(&model, part).unwrap();
                sum += out.weight * read(out.loss);
                weight += out.weight;
            }
            assert!(expected.abs() > 1e-3, "{agg}: a trivial loss {expected}");
            let combined = sum / weight;
            assert!(
                (combined - expected).abs() < 1e-5 * expected.abs().max(1.0),
                "{agg}: micro-batches give {combined}, the whole batch {expected}"
            );
        }
        std::fs::remove_dir_all(&root).ok();
    }

    /// Constrained RLHF: a second keyword (`w9`) with weight 0 carries no reward by itself; held
    /// `at_least` 0.6 by a Lagrange multiplier it is learned too. The multiplier starts at 0,
    /// grows while the constraint is broken (logged per collection), and the held-out rate of
    /// `w9` ends well above the unconstrained run's.
    #[test]
    fn a_lagrange_multiplier_holds_a_constrained_component_to_its_threshold() {
        let _seeded = rm_core::device::seeded_test_lock();
        let root = temp("constrained");
        rm_core::fixtures::write_tiny_llama(&root.join("model"), 9).unwrap();
        write_prompts(&root.join("prompts.jsonl"));
        let run = |constrained: bool| {
            let extra = if constrained {
                "constraints = [{ component = \"w9\", bound = \"at_least\", threshold = 0.6, multiplier_lr = 2.0 }]"
            } else {
                ""
            };
            let mut r = recipe(&root, "{ name = \"grpo\" }", extra);
            r.rewards.push(
                toml::from_str(
                    "name = \"w9\"\nkind = \"keywords\"\nrequired = [\"w9\"]\nweight = 0.0",
                )
                .unwrap(),
            );
            r.rollout.iterations = 24;
            r.train.out_dir = root.join(if constrained { "with" } else { "without" });
            train_rl_policy(r, &request(&root)).unwrap()
        };
        let free = run(false);
        let held = run(true);
        let w9 = |r: &RlReport| r.final_eval.metrics["reward/w9"];
        eprintln!(
            "w9 held-out rate: unconstrained {} → constrained {}",
            w9(&free),
            w9(&held)
        );
        assert!(w9(&held) >= 0.5, "constrained: {}", w9(&held));
        assert!(
            w9(&held) >= w9(&free) + 0.25,
            "{} vs {}",
            w9(&held),
            w9(&free)
        );
        let collects = read_records(&held.out_dir.join("metrics.jsonl"), "collect").unwrap();
        let lambdas: Vec<f64> = collects
            .iter()
            .map(|c| c["lambda/w9"].as_f64().unwrap())
            .collect();
        assert_eq!(lambdas[0], 0.0);
        assert!(lambdas.iter().any(|&l| l > 0.5), "{lambdas:?}");
        // The multiplier follows the dual step: λ₁ = max(0, 0 + 2·(0.6 − mean c₀)).
        let c0 = collects[0]["constraint/w9"].as_f64().unwrap();
        assert!((lambdas[1] - (2.0 * (0.6 - c0)).max(0.0)).abs() < 1e-9);
        let err = {
            let mut r = recipe(
                &root,
                "{ name = \"grpo\" }",
                "constraints = [{ component = \"nope\", bound = \"at_most\", threshold = 0.1 }]",
            );
            r.train.out_dir = root.join("bad");
            format!("{:#}", train_rl_policy(r, &request(&root)).unwrap_err())
        };
        assert!(
            err.contains("no [[reward]] component") && err.contains("keywords"),
            "{err}"
        );
        std::fs::remove_dir_all(&root).ok();
    }
}
