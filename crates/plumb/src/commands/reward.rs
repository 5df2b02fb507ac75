//! `plumb train-rm`, `plumb eval-rm`, `plumb score` and `plumb quickstart`: reward models end to
//! end. Training is [`rm_core::train::Trainer`] running a [`RewardTask`]: the recipe's pairwise
//! objective ([`rm_losses::PairwiseObjective`]) over pre-tokenized preference pairs.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use bench_harness::data::{HH_RLHF_SUBSET, rows_from_pairs};
use bench_harness::{RewardModelScorer, ScoreTransform, V1Report, V1Row, evaluate_v1, evaluate_v2};
use clap::{Args, ValueEnum};
use rm_core::burn::tensor::{Device, Tensor, TensorData};
use rm_core::data::{generic, hh_rlhf};
use rm_core::models::reward::{RewardModel, RewardModelBundle, SPEC_FILE};
use rm_core::tokenize::{PaddingSide, Sequence, TokenBatch};
use rm_core::train::{BatchStats, Evaluation, TrainTask, Trainer};
use rm_core::types::PreferencePair;
use rm_losses::{PairwiseObjective, PairwiseRewards};
use serde_json::json;

use crate::GlobalArgs;
use crate::recipe::{self, DataConfig, RewardRecipe};

/// The recipe `plumb quickstart` and `cargo xtask demo` run (also `recipes/rm-minilm-hh.toml`).
pub const QUICKSTART_RECIPE: &str = include_str!("../../../../recipes/rm-minilm-hh.toml");

fn device(global: &GlobalArgs) -> Result<Device> {
    rm_core::device::parse_device(&global.device)
}

#[derive(Args, Debug)]
pub struct TrainRmArgs {
    /// A TOML recipe (see recipes/).
    #[arg(long)]
    pub recipe: PathBuf,
    /// Override a recipe field: --set train.lr=5e-5 --set model.max_len=256 (repeatable).
    #[arg(long = "set", value_name = "FIELD=VALUE")]
    pub overrides: Vec<String>,
    /// Continue the run in train.out_dir from its last checkpoint.
    #[arg(long)]
    pub resume: bool,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
}

/// `plumb train-rm`.
pub fn train_rm(global: &GlobalArgs, args: TrainRmArgs) -> Result<()> {
    let mut recipe: RewardRecipe = recipe::load(&args.recipe, &args.overrides)?;
    if let Some(out) = &global.out {
        recipe.train.out_dir = out.clone();
    }
    run_recipe(global, recipe, args.resume, !args.quiet).map(|_| ())
}

#[derive(Args, Debug)]
pub struct QuickstartArgs {
    /// Override a field of the built-in recipe (as `train-rm --set`).
    #[arg(long = "set", value_name = "FIELD=VALUE")]
    pub overrides: Vec<String>,
}

/// `plumb quickstart`: the main job on the built-in MiniLM × HH-RLHF recipe.
pub fn quickstart(global: &GlobalArgs, args: QuickstartArgs) -> Result<()> {
    let start = Instant::now();
    let mut recipe: RewardRecipe = recipe::parse(
        QUICKSTART_RECIPE,
        "recipes/rm-minilm-hh.toml",
        &args.overrides,
    )?;
    if let Some(out) = &global.out {
        recipe.train.out_dir = out.clone();
    }
    if let Some(models) = &global.models_dir {
        recipe.model.backbone = models.join("minilm");
    }
    let out = run_recipe(global, recipe, false, true)?;
    println!(
        "\nquickstart finished in {:.1} min. Next: `plumb score --rm {} --input FILE.jsonl`, `plumb eval-rm --rm {} --input FILE.jsonl`.",
        start.elapsed().as_secs_f64() / 60.0,
        out.display(),
        out.display()
    );
    Ok(())
}

/// Pairs of a split: HH-RLHF by split name, or a JSONL file of pairs.
fn load_pairs(data: &DataConfig, data_dir: &Path, eval: bool) -> Result<Vec<PreferencePair>> {
    let split = if eval {
        &data.eval_split
    } else {
        &data.train_split
    };
    let mut pairs = if data.dataset == "hh-rlhf" {
        let split = match split.as_str() {
            "train" => hh_rlhf::Split::Train,
            "dev" | "test" | "eval" => hh_rlhf::Split::Dev,
            other => bail!(
                "data.{}_split = {other:?}: hh-rlhf has train and dev",
                if eval { "eval" } else { "train" }
            ),
        };
        hh_rlhf::load(data_dir, split)?.0
    } else {
        let path = if eval {
            data.eval_file
                .clone()
                .context("data.eval_file is needed when data.dataset is a file")?
        } else {
            PathBuf::from(&data.dataset)
        };
        generic::load_pairs(&path)?
    };
    let limit = if eval { data.eval_limit } else { data.limit };
    if limit > 0 {
        pairs.truncate(limit);
    }
    if pairs.is_empty() {
        bail!(
            "the {} set is empty",
            if eval { "evaluation" } else { "training" }
        );
    }
    Ok(pairs)
}

/// A preference pair, tokenized.
struct EncodedPair {
    chosen: Sequence,
    rejected: Sequence,
    margin: Option<f32>,
}

fn encode_pairs(bundle: &RewardModelBundle, pairs: &[PreferencePair]) -> Result<Vec<EncodedPair>> {
    let options = bundle.encode_options();
    pairs
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let enc = |response: &str| -> Result<Sequence> {
                let text = bundle.text(&p.prompt, response)?;
                bundle.tokenizer.encode_text(&text, &options)
            };
            Ok(EncodedPair {
                chosen: enc(&p.chosen).with_context(|| format!("pair {i}: chosen"))?,
                rejected: enc(&p.rejected).with_context(|| format!("pair {i}: rejected"))?,
                margin: p.margin,
            })
        })
        .collect()
}

/// Pairwise reward-model training: the recipe's objective over (chosen, rejected) rewards.
pub struct RewardTask {
    train: Vec<EncodedPair>,
    eval: Vec<EncodedPair>,
    objective: PairwiseObjective,
    bundle_template: RewardModelBundle,
    eval_batch: usize,
}

impl RewardTask {
    /// Rewards of the chosen and rejected responses of `pairs` in one forward pass.
    fn rewards(
        &self,
        model: &RewardModel,
        pairs: &[&EncodedPair],
        device: &Device,
    ) -> Result<(Tensor<1>, Tensor<1>)> {
        let b = pairs.len();
        let seqs: Vec<Sequence> = pairs
            .iter()
            .map(|p| p.chosen.clone())
            .chain(pairs.iter().map(|p| p.rejected.clone()))
            .collect();
        let batch = TokenBatch::pad(&seqs, self.bundle_template.spec.pad_id, PaddingSide::Right)?;
        let r = model
            .forward(
                batch.ids_tensor(device),
                batch.attention_tensor(device),
                self.bundle_template.spec.pooling,
            )
            .narrow(1, 0, 1)
            .reshape([2 * b]);
        Ok((r.clone().narrow(0, 0, b), r.narrow(0, b, b)))
    }
}

fn count_wins(chosen: &Tensor<1>, rejected: &Tensor<1>) -> usize {
    (chosen.clone() - rejected.clone())
        .greater_elem(0.0)
        .int()
        .sum()
        .into_scalar::<i64>() as usize
}

impl TrainTask<RewardModel> for RewardTask {
    fn num_examples(&self) -> usize {
        self.train.len()
    }

    fn loss(&mut self, model: &RewardModel, examples: &[usize]) -> Result<(Tensor<1>, BatchStats)> {
        let device = model.head.weight.val().device();
        let pairs: Vec<&EncodedPair> = examples.iter().map(|&i| &self.train[i]).collect();
        let (chosen, rejected) = self.rewards(model, &pairs, &device)?;
        let correct = count_wins(&chosen, &rejected);
        let mut batch = PairwiseRewards::new(chosen, rejected);
        if pairs.iter().all(|p| p.margin.is_some()) {
            let m: Vec<f32> = pairs.iter().map(|p| p.margin.unwrap_or(0.0)).collect();
            let n = m.len();
            batch = batch.with_margin(Tensor::from_data(TensorData::new(m, [n]), &device));
        }
        let loss = self.objective.loss(batch)?;
        Ok((
            loss,
            BatchStats {
                examples: examples.len(),
                correct: Some(correct),
            },
        ))
    }

    fn evaluate(&mut self, model: &RewardModel) -> Result<Evaluation> {
        let device = model.head.weight.val().device();
        let mut correct = 0usize;
        let mut loss_sum = 0.0f64;
        let pairs_per_batch = (self.eval_batch / 2).max(1);
        for chunk in self.eval.chunks(pairs_per_batch) {
            let refs: Vec<&EncodedPair> = chunk.iter().collect();
            let (chosen, rejected) = self.rewards(model, &refs, &device)?;
            correct += count_wins(&chosen, &rejected);
            let loss = rm_losses::bradley_terry_loss(chosen, rejected)?;
            loss_sum += loss.into_scalar::<f32>() as f64 * chunk.len() as f64;
        }
        let n = self.eval.len() as f64;
        let accuracy = correct as f64 / n;
        Ok(Evaluation {
            metrics: [
                ("accuracy".to_string(), accuracy),
                ("loss".to_string(), loss_sum / n),
            ]
            .into_iter()
            .collect(),
            score: accuracy,
        })
    }

    fn save_model(&self, model: &RewardModel, dir: &Path) -> Result<()> {
        RewardModelBundle {
            model: model.clone(),
            tokenizer: self.bundle_template.tokenizer.clone(),
            spec: self.bundle_template.spec.clone(),
            device: self.bundle_template.device.clone(),
        }
        .save(dir)
    }
}

/// Trains, evaluates with the v1 report, stores normalization; returns the final model folder.
fn run_recipe(
    global: &GlobalArgs,
    recipe: RewardRecipe,
    resume: bool,
    progress: bool,
) -> Result<PathBuf> {
    recipe.objective.validate()?;
    recipe.train.validate()?;
    let data_dir = rm_core::paths::data_dir(global.data_dir.as_deref());
    let device = device(global)?.autodiff();
    let out = recipe.train.out_dir.clone();

    eprintln!(
        "loading {} and the data ({})",
        recipe.model.backbone.display(),
        data_dir.display()
    );
    let bundle = RewardModelBundle::build(&recipe.model, recipe.train.seed, &device)?;
    if bundle.spec.attributes.len() != 1 {
        bail!(
            "pairwise training needs one attribute, the recipe names {:?} (multi-attribute training arrives with rm-multiobj)",
            bundle.spec.attributes
        );
    }
    let train_pairs = load_pairs(&recipe.data, &data_dir, false)?;
    let eval_pairs = load_pairs(&recipe.data, &data_dir, true)?;
    let mut eval = encode_pairs(&bundle, &eval_pairs)?;
    // Length-sorted evaluation batches pad less.
    eval.sort_by_key(|p| std::cmp::Reverse(p.chosen.len().max(p.rejected.len())));
    let task_train = encode_pairs(&bundle, &train_pairs)?;
    let truncated = task_train
        .iter()
        .filter(|p| {
            p.chosen.len() >= recipe.model.max_len || p.rejected.len() >= recipe.model.max_len
        })
        .count();
    eprintln!(
        "{} training pairs ({} reach max_len {} and are truncated on the {:?}), {} evaluation pairs; {} step(s) of {} pairs",
        task_train.len(),
        truncated,
        recipe.model.max_len,
        recipe.model.truncation,
        eval.len(),
        rm_core::train::total_steps(task_train.len(), &recipe.train),
        recipe.train.batch_size
    );
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    std::fs::write(out.join("recipe.toml"), toml::to_string_pretty(&recipe)?)?;

    let RewardModelBundle {
        model,
        tokenizer,
        spec,
        device: bundle_device,
    } = bundle;
    let mut task = RewardTask {
        train: task_train,
        eval,
        objective: recipe.objective.clone(),
        bundle_template: RewardModelBundle {
            model: model.clone(),
            tokenizer: tokenizer.clone(),
            spec: spec.clone(),
            device: bundle_device.clone(),
        },
        eval_batch: recipe.eval.batch_size,
    };
    let trainer = Trainer {
        config: recipe.train.clone(),
        device: device.clone(),
        progress,
    };
    let (model, outcome) = trainer.run(model, &mut task, resume)?;
    eprintln!(
        "trained {} steps in {:.1}s: {:.2} pairs/s (train, evaluation excluded)",
        outcome.steps, outcome.train_seconds, outcome.examples_per_second
    );

    // The v1 report of the final model on the evaluation pairs.
    let final_dir = out.join("final");
    let bundle = RewardModelBundle {
        model,
        tokenizer,
        spec,
        device: bundle_device,
    };
    let subset = if recipe.data.dataset == "hh-rlhf" {
        HH_RLHF_SUBSET.to_string()
    } else {
        "eval".to_string()
    };
    let rows = rows_from_pairs(eval_pairs, &subset);
    let mut scorer = RewardModelScorer::new(
        bundle,
        recipe.eval.batch_size,
        final_dir.display().to_string(),
    );
    let start = Instant::now();
    let report = evaluate_v1(&rows, &mut scorer, usize::MAX, &mut |_| {})?;
    let score_seconds = start.elapsed().as_secs_f64();
    let score_pairs_per_s = rows.len() as f64 / score_seconds;

    // Normalization from the evaluation responses' rewards, stored with the final model.
    let mut bundle = scorer.bundle;
    let texts: Vec<String> = rows
        .iter()
        .flat_map(|r| {
            [
                bundle.text(&r.prompt, &r.chosen),
                bundle.text(&r.prompt, &r.rejected),
            ]
        })
        .collect::<Result<_>>()?;
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    bundle.fit_normalization(&refs, recipe.eval.batch_size)?;
    rm_core::checkpoint::write_bytes_atomically(
        &final_dir.join(SPEC_FILE),
        serde_json::to_string_pretty(&bundle.spec)?.as_bytes(),
    )?;

    write_report(&out, &report)?;
    let summary = json!({
        "recipe": recipe,
        "steps": outcome.steps,
        "train_seconds": outcome.train_seconds,
        "train_pairs_per_s": outcome.examples_per_second,
        "score_pairs_per_s": score_pairs_per_s,
        "dev_accuracy": report.overall,
        "best_step": outcome.best_step,
        "best_dev_accuracy": outcome.best_score,
        "threads": rayon::current_num_threads(),
        "device": global.device,
    });
    std::fs::write(
        out.join("summary.json"),
        serde_json::to_string_pretty(&summary)?,
    )?;
    println!("\n{}", report.to_markdown());
    println!(
        "train {:.2} pairs/s, score {:.2} pairs/s ({} threads); best dev accuracy {:.4} at step {}",
        outcome.examples_per_second,
        score_pairs_per_s,
        rayon::current_num_threads(),
        outcome.best_score.unwrap_or(f64::NAN),
        outcome.best_step.unwrap_or(0)
    );
    println!(
        "model: {}  (best: {})",
        final_dir.display(),
        out.join("best").display()
    );
    println!(
        "report: {}  metrics: {}",
        out.join("report.json").display(),
        out.join("metrics.jsonl").display()
    );
    match &outcome.plot {
        Some(p) => println!("plot: {}", p.display()),
        None => println!("plot: not written"),
    }
    Ok(final_dir)
}

fn write_report<T: serde::Serialize + Markdown>(out: &Path, report: &T) -> Result<()> {
    rm_core::checkpoint::write_bytes_atomically(
        &out.join("report.json"),
        serde_json::to_string_pretty(report)?.as_bytes(),
    )?;
    rm_core::checkpoint::write_bytes_atomically(
        &out.join("report.md"),
        report.markdown().as_bytes(),
    )
}

/// Reports that render as Markdown.
trait Markdown {
    fn markdown(&self) -> String;
}

impl Markdown for V1Report {
    fn markdown(&self) -> String {
        self.to_markdown()
    }
}

impl Markdown for bench_harness::V2Report {
    fn markdown(&self) -> String {
        self.to_markdown()
    }
}

/// Input layouts `eval-rm` reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum EvalFormat {
    /// reward-bench v1: {prompt, chosen, rejected, subset}.
    Rewardbench,
    /// reward-bench 2: {prompt, chosen: [..], rejected: [..], subset}.
    Rewardbench2,
    /// Preference pairs {prompt, chosen, rejected}; the subset is the file name.
    Pairs,
}

#[derive(Args, Debug)]
pub struct EvalRmArgs {
    /// A reward-model folder written by `plumb train-rm` (e.g. runs/rm-minilm-hh/final).
    #[arg(long)]
    pub rm: PathBuf,
    /// A JSONL file, or `hh-rlhf:dev` / `hh-rlhf:train` for the dataset in the data dir.
    #[arg(long)]
    pub input: String,
    /// Input layout [default: from the first row: lists → rewardbench2, a subset → rewardbench,
    /// else pairs].
    #[arg(long, value_enum)]
    pub format: Option<EvalFormat>,
    /// Texts per forward pass.
    #[arg(long, default_value_t = 32)]
    pub batch_size: usize,
    /// Score with the stored normalization (no change to accuracies; the report's rows show it).
    #[arg(long)]
    pub normalized: bool,
}

fn detect_format(path: &Path) -> Result<EvalFormat> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let first = text
        .lines()
        .find(|l| !l.trim().is_empty())
        .with_context(|| format!("{} is empty", path.display()))?;
    let row: serde_json::Value = serde_json::from_str(first)
        .with_context(|| format!("{}:1: invalid JSON", path.display()))?;
    Ok(if row["chosen"].is_array() {
        EvalFormat::Rewardbench2
    } else if row.get("subset").is_some() {
        EvalFormat::Rewardbench
    } else {
        EvalFormat::Pairs
    })
}

/// `plumb eval-rm`: a RewardBench-style report of a reward model on a file.
pub fn eval_rm(global: &GlobalArgs, args: EvalRmArgs) -> Result<()> {
    let device = device(global)?;
    let bundle = RewardModelBundle::load(&args.rm, &device)?;
    let mut scorer = RewardModelScorer::new(bundle, args.batch_size, args.rm.display().to_string());
    if args.normalized {
        scorer.transform = ScoreTransform::Normalized;
    }
    let out = global
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from("report.json"));
    let start = Instant::now();
    let bar = indicatif::ProgressBar::new(0);
    let mut progress = |p: bench_harness::Progress| {
        bar.set_length(p.total as u64);
        bar.set_position(p.done as u64);
    };
    let (markdown, json, pairs) = if let Some(split) = args.input.strip_prefix("hh-rlhf:") {
        let data_dir = rm_core::paths::data_dir(global.data_dir.as_deref());
        let split = match split {
            "train" => hh_rlhf::Split::Train,
            "dev" => hh_rlhf::Split::Dev,
            other => bail!("--input hh-rlhf:{other}: the splits are train and dev"),
        };
        let rows = bench_harness::data::load_hh_rlhf(&data_dir, split)?;
        let report = evaluate_v1(&rows, &mut scorer, 256, &mut progress)?;
        (
            report.to_markdown(),
            serde_json::to_string_pretty(&report)?,
            rows.len(),
        )
    } else {
        let path = PathBuf::from(&args.input);
        let format = match args.format {
            Some(f) => f,
            None => detect_format(&path)?,
        };
        let report_errors = |errors: &[rm_core::data::DataError]| {
            for e in errors {
                eprintln!("skipped: {e}");
            }
        };
        match format {
            EvalFormat::Rewardbench | EvalFormat::Pairs => {
                let loaded = if format == EvalFormat::Pairs {
                    bench_harness::data::read_pairs_lenient(&path)?
                } else {
                    bench_harness::data::read_v1_lenient(&path)?
                };
                report_errors(&loaded.errors);
                let rows: Vec<V1Row> = loaded.rows;
                if rows.is_empty() {
                    bail!("{}: no valid rows", path.display());
                }
                let report = evaluate_v1(&rows, &mut scorer, 256, &mut progress)?;
                (
                    report.to_markdown(),
                    serde_json::to_string_pretty(&report)?,
                    rows.len(),
                )
            }
            EvalFormat::Rewardbench2 => {
                let loaded = bench_harness::data::read_v2_lenient(&path)?;
                report_errors(&loaded.errors);
                if loaded.rows.is_empty() {
                    bail!("{}: no valid rows", path.display());
                }
                let report = evaluate_v2(&loaded.rows, &mut scorer, 256, &mut progress)?;
                (
                    report.to_markdown(),
                    serde_json::to_string_pretty(&report)?,
                    loaded.rows.len(),
                )
            }
        }
    };
    bar.finish_and_clear();
    let seconds = start.elapsed().as_secs_f64();
    rm_core::checkpoint::write_bytes_atomically(&out, json.as_bytes())?;
    rm_core::checkpoint::write_bytes_atomically(&out.with_extension("md"), markdown.as_bytes())?;
    println!("{markdown}");
    println!(
        "{pairs} rows scored in {seconds:.1}s ({:.2} rows/s); report: {} and {}",
        pairs as f64 / seconds,
        out.display(),
        out.with_extension("md").display()
    );
    Ok(())
}

#[derive(Args, Debug)]
pub struct ScoreArgs {
    /// A reward-model folder written by `plumb train-rm`.
    #[arg(long)]
    pub rm: PathBuf,
    /// JSONL rows: {prompt, response} or {prompt, responses: [..]} or {prompt, chosen, rejected};
    /// the prompt is a string or a list of {role, content} turns.
    #[arg(long)]
    pub input: PathBuf,
    /// Texts per forward pass (texts are batched by length).
    #[arg(long, default_value_t = 32)]
    pub batch_size: usize,
    /// raw, normalized (stored mean/std), or log-sigmoid (against --reference).
    #[arg(long, default_value = "raw")]
    pub transform: String,
    /// The reference response for `--transform log-sigmoid`: r' = log σ(r(x,y) − r(x,reference)).
    #[arg(long)]
    pub reference: Option<String>,
}

/// `plumb score`: rewards JSONL (to --out or stdout); bad rows reported by line, the rest scored.
pub fn score(global: &GlobalArgs, args: ScoreArgs) -> Result<()> {
    let reader = rm_core::data::JsonlReader::open(&args.input)?;
    let device = device(global)?;
    let bundle = RewardModelBundle::load(&args.rm, &device)?;
    let attributes = bundle.spec.attributes.clone();
    // (line, prompt, responses)
    let mut rows: Vec<(usize, rm_core::types::Prompt, Vec<String>)> = Vec::new();
    let mut bad = 0usize;
    for item in reader {
        let parsed = item.and_then(|(loc, value)| {
            let (prompt, responses) = parse_score_row(&rm_core::data::Row::new(&loc, &value))?;
            Ok((loc.line, prompt, responses))
        });
        match parsed {
            Ok(row) => rows.push(row),
            Err(e) => {
                bad += 1;
                eprintln!("skipped: {e}");
            }
        }
    }
    if rows.is_empty() {
        bail!("{}: no valid rows ({bad} bad)", args.input.display());
    }
    let mut texts = Vec::new();
    for (_, prompt, responses) in &rows {
        for r in responses {
            texts.push(bundle.text(prompt, r)?);
        }
    }
    let mut references = Vec::new();
    let transform = args.transform.as_str();
    match transform {
        "raw" => {}
        "normalized" => {
            bundle.normalize(&vec![0.0; attributes.len()])?;
        }
        "log-sigmoid" => {
            let reference = args
                .reference
                .as_deref()
                .context("--transform log-sigmoid needs --reference \"a reference response\"")?;
            for (_, prompt, _) in &rows {
                references.push(bundle.text(prompt, reference)?);
            }
        }
        other => bail!("--transform {other}: expected raw, normalized or log-sigmoid"),
    }
    let start = Instant::now();
    let all: Vec<&str> = texts
        .iter()
        .chain(&references)
        .map(String::as_str)
        .collect();
    let rewards = bundle.score_texts(&all, args.batch_size)?;
    let seconds = start.elapsed().as_secs_f64();
    let mut sink: Box<dyn Write> = match &global.out {
        Some(p) => Box::new(std::io::BufWriter::new(
            std::fs::File::create(p).with_context(|| format!("creating {}", p.display()))?,
        )),
        None => Box::new(std::io::stdout().lock()),
    };
    let mut k = 0usize;
    for (row_index, (line, _, responses)) in rows.iter().enumerate() {
        let mut out_rewards = Vec::new();
        for _ in responses {
            let raw = &rewards[k];
            k += 1;
            let values: Vec<f32> = match transform {
                "normalized" => bundle.normalize(raw)?,
                "log-sigmoid" => {
                    let r_ref = &rewards[texts.len() + row_index];
                    raw.iter()
                        .zip(r_ref)
                        .map(|(&r, &rr)| rm_core::models::reward::log_sigmoid_transform(r, rr))
                        .collect()
                }
                _ => raw.clone(),
            };
            out_rewards.push(values);
        }
        let scalar: Vec<f32> = out_rewards.iter().map(|v| v[0]).collect();
        let mut record = json!({"line": line, "rewards": scalar});
        if attributes.len() > 1 {
            record["attributes"] = json!(
                out_rewards
                    .iter()
                    .map(|v| attributes
                        .iter()
                        .cloned()
                        .zip(v.iter().map(|&x| json!(x)))
                        .collect::<serde_json::Map<_, _>>())
                    .collect::<Vec<_>>()
            );
        }
        writeln!(sink, "{record}")?;
    }
    sink.flush()?;
    eprintln!(
        "scored {} responses of {} rows in {seconds:.2}s: {:.2} responses/s, {:.2} pairs/s; {bad} bad row(s) skipped",
        texts.len(),
        rows.len(),
        texts.len() as f64 / seconds,
        texts.len() as f64 / 2.0 / seconds
    );
    Ok(())
}

/// A `score` row: `{prompt, response}`, `{prompt, responses: [..]}` or `{prompt, chosen, rejected}`.
fn parse_score_row(
    row: &rm_core::data::Row,
) -> Result<(rm_core::types::Prompt, Vec<String>), rm_core::data::DataError> {
    let prompt = generic::parse_prompt(row)?;
    let responses = if row.get("responses").is_some() {
        let list = row.str_array("responses")?;
        if list.is_empty() {
            return Err(row.loc.field("responses", "empty"));
        }
        list
    } else if row.get("response").is_some() {
        vec![row.str("response")?.to_string()]
    } else if row.get("chosen").is_some() {
        vec![
            row.str("chosen")?.to_string(),
            row.str("rejected")?.to_string(),
        ]
    } else {
        return Err(row.loc.field(
            "response",
            "missing (expected \"response\", \"responses\" or \"chosen\"/\"rejected\")",
        ));
    };
    Ok((prompt, responses))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rm_core::paths::for_tests;

    fn global(out: Option<PathBuf>) -> GlobalArgs {
        GlobalArgs {
            device: "flex".into(),
            data_dir: Some(for_tests::data_dir()),
            models_dir: Some(for_tests::models_dir()),
            seed: 42,
            out,
        }
    }

    /// The quickstart recipe on a slice of HH-RLHF (16 train / 8 dev pairs, 48 tokens), then
    /// `eval-rm` and `score` on what it wrote.
    #[test]
    fn train_rm_then_eval_rm_and_score_on_a_slice_of_hh_rlhf() {
        let tmp = std::env::temp_dir().join(format!("plumbline-train-rm-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        let backbone = for_tests::models_dir().join("minilm");
        let overrides: Vec<String> = vec![
            format!("model.backbone={:?}", backbone.display().to_string()),
            "model.max_len=48".into(),
            "data.limit=16".into(),
            "data.eval_limit=8".into(),
            "train.batch_size=8".into(),
            "train.micro_batch_size=4".into(),
            "train.eval_every=1".into(),
            format!("train.out_dir={:?}", tmp.display().to_string()),
        ];
        let recipe: RewardRecipe =
            recipe::parse(QUICKSTART_RECIPE, "quickstart", &overrides).unwrap();
        let final_dir = run_recipe(&global(None), recipe, false, false).unwrap();
        for f in [
            "report.json",
            "report.md",
            "metrics.jsonl",
            "summary.json",
            "recipe.toml",
            "curves.png",
        ] {
            assert!(tmp.join(f).is_file(), "{f} missing");
        }
        let metrics = std::fs::read_to_string(tmp.join("metrics.jsonl")).unwrap();
        assert_eq!(
            metrics
                .lines()
                .filter(|l| l.contains("\"kind\":\"train\""))
                .count(),
            2
        );
        assert_eq!(
            metrics
                .lines()
                .filter(|l| l.contains("\"kind\":\"eval\""))
                .count(),
            2
        );
        let report: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(tmp.join("report.json")).unwrap())
                .unwrap();
        let accuracy = report["overall"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&accuracy));
        // The report's accuracy is a multiple of 1/8 (8 dev pairs).
        assert!(
            ((accuracy * 8.0) - (accuracy * 8.0).round()).abs() < 1e-9,
            "{accuracy}"
        );
        let spec = RewardModelBundle::read_spec(&final_dir).unwrap();
        assert_eq!(spec.normalization.as_ref().unwrap().count, 16);

        // eval-rm on reward-bench layout rows and score on mixed rows with one bad line.
        let rows = tmp.join("rows.jsonl");
        std::fs::write(
            &rows,
            "{\"prompt\": \"hi\", \"chosen\": \"Hello! How can I help?\", \"rejected\": \"go away\", \"subset\": \"alpacaeval-easy\"}\n\
             {\"prompt\": \"hi\", \"responses\": [\"a\", \"b\", \"c\"]}\n\
             {\"prompt\": 3, \"response\": \"x\"}\n",
        )
        .unwrap();
        let report_path = tmp.join("eval.json");
        let eval = |input: &Path| {
            eval_rm(
                &global(Some(report_path.clone())),
                EvalRmArgs {
                    rm: final_dir.clone(),
                    input: input.display().to_string(),
                    format: None,
                    batch_size: 4,
                    normalized: false,
                },
            )
        };
        let missing = format!("{:#}", eval(&tmp.join("missing.jsonl")).unwrap_err());
        assert!(missing.contains("missing.jsonl"), "{missing}");
        std::fs::write(
            tmp.join("v1.jsonl"),
            "{\"prompt\": \"hi\", \"chosen\": \"Hello! How can I help?\", \"rejected\": \"go away\", \"subset\": \"alpacaeval-easy\"}\n",
        )
        .unwrap();
        eval(&tmp.join("v1.jsonl")).unwrap();
        let report: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&report_path).unwrap()).unwrap();
        assert_eq!(report["subsets"][0]["name"], "alpacaeval-easy", "{report}");
        let scored = tmp.join("scores.jsonl");
        score(
            &global(Some(scored.clone())),
            ScoreArgs {
                rm: final_dir,
                input: rows,
                batch_size: 4,
                transform: "normalized".into(),
                reference: None,
            },
        )
        .unwrap();
        let lines: Vec<serde_json::Value> = std::fs::read_to_string(&scored)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2, "the bad row is skipped, the others scored");
        assert_eq!(lines[0]["line"], 1);
        assert_eq!(lines[0]["rewards"].as_array().unwrap().len(), 2);
        assert_eq!(lines[1]["line"], 2);
        assert_eq!(lines[1]["rewards"].as_array().unwrap().len(), 3);
        std::fs::remove_dir_all(&tmp).unwrap();
    }

    #[test]
    fn score_rows_take_three_shapes_and_bad_rows_name_the_line_and_field() {
        let tmp =
            std::env::temp_dir().join(format!("plumbline-score-rows-{}.jsonl", std::process::id()));
        std::fs::write(
            &tmp,
            "{\"prompt\": \"hi\", \"response\": \"hello\"}\n\
             {\"prompt\": \"hi\", \"responses\": [\"a\", \"b\", \"c\"]}\n\
             \n\
             {\"prompt\": [{\"role\": \"user\", \"content\": \"hi\"}], \"chosen\": \"a\", \"rejected\": \"b\"}\n\
             {\"prompt\": \"hi\", \"responses\": [\"a\", 3]}\n\
             {\"response\": \"x\"}\n\
             {nope\n",
        )
        .unwrap();
        let parsed: Vec<Result<(usize, Vec<String>), String>> =
            rm_core::data::JsonlReader::open(&tmp)
                .unwrap()
                .map(|item| {
                    item.and_then(|(loc, value)| {
                        let (_, r) = parse_score_row(&rm_core::data::Row::new(&loc, &value))?;
                        Ok((loc.line, r))
                    })
                    .map_err(|e| e.to_string())
                })
                .collect();
        let name = tmp.display().to_string();
        assert_eq!(parsed[0], Ok((1, vec!["hello".to_string()])));
        assert_eq!(parsed[1].as_ref().unwrap().1.len(), 3);
        assert_eq!(parsed[2], Ok((4, vec!["a".to_string(), "b".to_string()])));
        assert!(
            parsed[3]
                .as_ref()
                .unwrap_err()
                .starts_with(&format!("{name}:5: field \"responses")),
            "{parsed:?}"
        );
        assert!(
            parsed[4]
                .as_ref()
                .unwrap_err()
                .starts_with(&format!("{name}:6: field \"prompt\"")),
            "{parsed:?}"
        );
        assert!(
            parsed[5]
                .as_ref()
                .unwrap_err()
                .starts_with(&format!("{name}:7:")),
            "{parsed:?}"
        );
        std::fs::remove_file(&tmp).unwrap();
    }
}
