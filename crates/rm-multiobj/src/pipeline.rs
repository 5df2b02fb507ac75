//! The runs behind `plumb multiobj train` and `plumb multiobj population-test`: recipe → data →
//! cached features → closed-form heads / gating / personalized models → report.
//!
//! Attributes of `train` (all on one backbone's frozen features):
//! - `harmless`: Bradley–Terry head on HH-RLHF harmless-base pairs (chosen ≻ rejected);
//! - `verbosity`: ridge regression on HH responses with the rating `ln(1 + words)`;
//! - `correctness`: Bradley–Terry head on GSM8K pairs: the gold solution ending in
//!   "The answer is N." vs the same solution ending in a wrong N (N + d, d a seeded non-zero
//!   integer in [−10, 10]); train pairs from GSM8K train, dev pairs from GSM8K test;
//! - any attributes of rated JSONL files (`[[rated]]`, [`crate::rated`]): ridge regression.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use burn::tensor::Device;
use rand::SeedableRng;
use rand::rngs::StdRng;
use rm_core::data::gsm8k::{self, Gsm8kOptions};
use rm_core::data::hh_rlhf::{self, Split};
use rm_core::types::PreferencePair;
use serde::{Deserialize, Serialize};

use crate::combine::Combination;
use crate::features::{CacheStatus, Embedder, EmbedderConfig, FeatureCache};
use crate::gating::{
    ARMORM_PENALTIES, GatingConfig, GatingTrace, find_verbosity_penalties, train_gating,
};
use crate::heads::{
    LambdaTrial, LinearHead, regression_metrics, select_bradley_terry, select_ridge,
};
use crate::linalg::{pair_accuracy, spearman};
use crate::model::{FORMAT_VERSION, MultiObjectiveModel, MultiObjectiveSpec};
use crate::personal::{
    PairFeatures, PersonalConfig, PersonalRun, PopulationAccuracy, pal, shared_bt, vpl,
};
use crate::population::{PairInfo, PopulationConfig, agreement, build_users};
use crate::rated::load_rated;

/// Where a run happens (what the command line adds to a recipe).
#[derive(Clone, Debug)]
pub struct RunRequest {
    pub data_dir: PathBuf,
    pub models_dir: PathBuf,
    pub device: Device,
    /// Progress lines on stderr.
    pub verbose: bool,
}

impl RunRequest {
    pub(crate) fn log(&self, msg: impl AsRef<str>) {
        if self.verbose {
            eprintln!("{}", msg.as_ref());
        }
    }
}

/// The `[run]` section.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunConfig {
    pub out_dir: PathBuf,
    #[serde(default = "default_cache")]
    pub cache_dir: PathBuf,
    /// Texts per backbone batch.
    #[serde(default = "default_batch")]
    pub batch_size: usize,
}

fn default_cache() -> PathBuf {
    PathBuf::from("runs/feature-cache")
}
fn default_batch() -> usize {
    32
}

/// The `[data]` section of `train`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MultiObjData {
    /// The first N HH train / dev pairs (all when absent).
    #[serde(default)]
    pub hh_train_limit: Option<usize>,
    #[serde(default)]
    pub hh_dev_limit: Option<usize>,
    #[serde(default = "default_gsm_train")]
    pub gsm8k_train_limit: usize,
    #[serde(default = "default_gsm_dev")]
    pub gsm8k_dev_limit: usize,
    #[serde(default)]
    pub corruption_seed: u64,
}

fn default_gsm_train() -> usize {
    1000
}
fn default_gsm_dev() -> usize {
    300
}

impl Default for MultiObjData {
    fn default() -> Self {
        toml::from_str("").expect("defaults")
    }
}

/// `[heads]`: the λ grids searched on dev.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeadsConfig {
    #[serde(default = "default_lambdas")]
    pub lambdas: Vec<f64>,
}

fn default_lambdas() -> Vec<f64> {
    vec![0.01, 0.1, 1.0, 10.0, 100.0]
}

impl Default for HeadsConfig {
    fn default() -> Self {
        Self {
            lambdas: default_lambdas(),
        }
    }
}

/// `[debias]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DebiasConfig {
    /// The verbosity attribute; `enabled = false` turns debiasing off.
    #[serde(default = "default_verbosity")]
    pub attribute: String,
    #[serde(default = "default_threshold")]
    pub threshold: f64,
    #[serde(default = "yes")]
    pub enabled: bool,
}

fn default_verbosity() -> String {
    "verbosity".into()
}
fn default_threshold() -> f64 {
    0.03
}
fn yes() -> bool {
    true
}

impl Default for DebiasConfig {
    fn default() -> Self {
        toml::from_str("").expect("defaults")
    }
}

/// `[[rated]]`: extra attributes from rated JSONL files ([`crate::rated`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RatedSource {
    pub train: PathBuf,
    pub dev: PathBuf,
    pub attributes: Vec<String>,
}

/// `recipes/multiobj-*.toml`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MultiObjRecipe {
    pub embedder: EmbedderConfig,
    #[serde(default)]
    pub data: MultiObjData,
    #[serde(default)]
    pub heads: HeadsConfig,
    #[serde(default)]
    pub debias: DebiasConfig,
    #[serde(default)]
    pub gating: GatingConfig,
    #[serde(default)]
    pub rated: Vec<RatedSource>,
    pub run: RunConfig,
}

/// One attribute's dev figures.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AttributeReport {
    pub name: String,
    /// `bradley-terry` or `ridge`.
    pub fit: String,
    pub lambda: f64,
    pub trials: Vec<LambdaTrial>,
    /// Pair accuracy on its own dev pairs (Bradley–Terry heads).
    pub dev_accuracy: Option<f64>,
    /// R² and Pearson r on its own dev rows (ridge heads).
    pub dev_r2: Option<f64>,
    pub dev_pearson: Option<f64>,
    pub dev_count: usize,
    /// The head alone as a reward on HH dev pairs.
    pub hh_dev_accuracy: f64,
}

/// What `train` measured.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MultiObjReport {
    pub attributes: Vec<AttributeReport>,
    pub penalties: Vec<f64>,
    /// Spearman ρ(rₖ, r_verbosity) on the reference set (HH train responses), before / after
    /// debiasing, and the same on HH dev responses.
    pub spearman_before: Vec<f64>,
    pub spearman_after: Vec<f64>,
    pub dev_spearman_before: Vec<f64>,
    pub dev_spearman_after: Vec<f64>,
    pub gating: GatingTrace,
    /// Mean gating weights over HH dev prompts.
    pub mean_gating_weights: Vec<f64>,
    /// Accuracy on HH dev pairs of: the gated model, the equal-weight sum of the standardized
    /// and of the debiased rewards, the log-sigmoid conjunction (reference: the mean reward per
    /// attribute over HH train responses).
    pub hh_dev_gated: f64,
    pub hh_dev_equal_sum: f64,
    pub hh_dev_equal_sum_debiased: f64,
    pub hh_dev_conjunction: f64,
    pub conjunction_reference: Vec<f64>,
    pub hh_train_pairs: usize,
    pub hh_dev_pairs: usize,
    pub cache: Vec<(String, CacheStatus)>,
    pub seconds: f64,
    pub model_dir: PathBuf,
}

fn limited<T>(mut v: Vec<T>, limit: Option<usize>) -> Vec<T> {
    if let Some(n) = limit {
        v.truncate(n);
    }
    v
}

fn rows(v: &[Vec<f32>]) -> Vec<&[f32]> {
    v.iter().map(Vec::as_slice).collect()
}

/// Feature vectors, one per text.
type Features = Vec<Vec<f32>>;

/// The features of `texts` under `embedder`, read from the cache or computed and stored;
/// logged with `name`, the count, the cache status and the time.
pub(crate) fn cached_features(
    cache: &FeatureCache,
    embedder: &Embedder,
    batch_size: usize,
    name: &str,
    texts: &[String],
    request: &RunRequest,
) -> Result<(Features, CacheStatus)> {
    let start = Instant::now();
    let (f, status) = cache
        .get_or_compute(embedder.id(), texts, |t| embedder.embed(t, batch_size))
        .with_context(|| format!("features of {name}"))?;
    request.log(format!(
        "features {name}: {} texts, {status:?} in {:.1}s",
        texts.len(),
        start.elapsed().as_secs_f64()
    ));
    Ok((f, status))
}

/// Features of named text groups through the cache.
struct Featurizer<'a> {
    embedder: &'a Embedder,
    cache: FeatureCache,
    batch_size: usize,
    statuses: Vec<(String, CacheStatus)>,
    request: &'a RunRequest,
}

impl Featurizer<'_> {
    fn features(&mut self, name: &str, texts: Vec<String>) -> Result<Vec<Vec<f32>>> {
        let (f, status) = cached_features(
            &self.cache,
            self.embedder,
            self.batch_size,
            name,
            &texts,
            self.request,
        )?;
        self.statuses.push((name.to_string(), status));
        Ok(f)
    }

    /// HH pairs → response features `[2N]` (chosen, rejected interleaved) and prompt features.
    fn hh(&mut self, name: &str, pairs: &[PreferencePair]) -> Result<(Features, Features)> {
        let mut texts = Vec::with_capacity(2 * pairs.len());
        for p in pairs {
            texts.push(self.embedder.pair_text(&p.prompt, &p.chosen)?);
            texts.push(self.embedder.pair_text(&p.prompt, &p.rejected)?);
        }
        let prompts = pairs
            .iter()
            .map(|p| self.embedder.prompt_text(&p.prompt))
            .collect::<Result<Vec<_>>>()?;
        Ok((
            self.features(&format!("{name} responses"), texts)?,
            self.features(&format!("{name} prompts"), prompts)?,
        ))
    }
}

fn open<'a>(embedder: &'a Embedder, run: &RunConfig, request: &'a RunRequest) -> Featurizer<'a> {
    Featurizer {
        embedder,
        cache: FeatureCache::new(&run.cache_dir),
        batch_size: run.batch_size,
        statuses: Vec::new(),
        request,
    }
}

fn load_hh(
    request: &RunRequest,
    split: Split,
    limit: Option<usize>,
) -> Result<Vec<PreferencePair>> {
    let (pairs, _) = hh_rlhf::load(&request.data_dir, split)?;
    let pairs = limited(pairs, limit);
    if pairs.is_empty() {
        bail!("HH-RLHF {}: no pairs", split.name());
    }
    Ok(pairs)
}

/// The verbosity rating of a response: `ln(1 + number of whitespace-separated words)`.
pub fn verbosity_rating(response: &str) -> f64 {
    (response.split_whitespace().count() as f64).ln_1p()
}

fn gsm8k_pairs(
    request: &RunRequest,
    split: &str,
    limit: usize,
    seed: u64,
) -> Result<Vec<PreferencePair>> {
    let problems = limited(
        gsm8k::load(&request.data_dir, split, Gsm8kOptions::default())?,
        Some(limit),
    );
    if problems.is_empty() {
        bail!("GSM8K {split}: no problems");
    }
    let mut rng = StdRng::seed_from_u64(seed ^ 0x65_3d);
    Ok(problems
        .iter()
        .map(|p| gsm8k::answer_pair(p, &mut rng))
        .collect())
}

fn split_pairs(f: &[Vec<f32>]) -> (Vec<&[f32]>, Vec<&[f32]>) {
    (
        f.iter().step_by(2).map(Vec::as_slice).collect(),
        f.iter().skip(1).step_by(2).map(Vec::as_slice).collect(),
    )
}

fn hh_accuracy(score: impl Fn(usize, &[f32]) -> f64, dev: &[Vec<f32>]) -> f64 {
    let (c, r) = split_pairs(dev);
    let sc: Vec<f64> = c.iter().enumerate().map(|(i, x)| score(i, x)).collect();
    let sr: Vec<f64> = r.iter().enumerate().map(|(i, x)| score(i, x)).collect();
    pair_accuracy(&sc, &sr)
}

/// `plumb multiobj train`: features → heads → debiasing → gating → report and model folder.
pub fn train(recipe: &MultiObjRecipe, request: &RunRequest) -> Result<MultiObjReport> {
    let start = Instant::now();
    let embedder_config = recipe.embedder.resolved(&request.models_dir);
    let embedder = Embedder::load(&embedder_config, &request.device)?;
    let mut fz = open(&embedder, &recipe.run, request);
    let lambdas = &recipe.heads.lambdas;

    let hh_train = load_hh(request, Split::Train, recipe.data.hh_train_limit)?;
    let hh_dev = load_hh(request, Split::Dev, recipe.data.hh_dev_limit)?;
    let (train_resp, train_prompts) = fz.hh("hh train", &hh_train)?;
    let (dev_resp, dev_prompts) = fz.hh("hh dev", &hh_dev)?;

    let mut names = Vec::new();
    let mut heads: Vec<LinearHead> = Vec::new();
    let mut reports: Vec<AttributeReport> = Vec::new();

    // harmless: Bradley–Terry on HH pairs.
    let (tc, tr) = split_pairs(&train_resp);
    let (dc, dr) = split_pairs(&dev_resp);
    let (head, lambda, trials) = select_bradley_terry((&tc, &tr), (&dc, &dr), lambdas)?;
    let acc = trials.iter().find(|t| t.lambda == lambda).map(|t| t.dev);
    reports.push(AttributeReport {
        name: "harmless".into(),
        fit: "bradley-terry".into(),
        lambda,
        trials,
        dev_accuracy: acc,
        dev_r2: None,
        dev_pearson: None,
        dev_count: dc.len(),
        hh_dev_accuracy: 0.0,
    });
    names.push("harmless".to_string());
    heads.push(head);

    // verbosity: ridge on ln(1 + words) of every HH response.
    let ratings = |pairs: &[PreferencePair]| -> Vec<f64> {
        pairs
            .iter()
            .flat_map(|p| [verbosity_rating(&p.chosen), verbosity_rating(&p.rejected)])
            .collect()
    };
    let (ty, dy) = (ratings(&hh_train), ratings(&hh_dev));
    let (head, lambda, trials) =
        select_ridge((&rows(&train_resp), &ty), (&rows(&dev_resp), &dy), lambdas)?;
    let m = regression_metrics(&head, &rows(&dev_resp), &dy);
    reports.push(AttributeReport {
        name: "verbosity".into(),
        fit: "ridge".into(),
        lambda,
        trials,
        dev_accuracy: None,
        dev_r2: Some(m.r2),
        dev_pearson: Some(m.pearson),
        dev_count: m.count,
        hh_dev_accuracy: 0.0,
    });
    names.push("verbosity".to_string());
    heads.push(head);

    // correctness: Bradley–Terry on GSM8K gold vs wrong-answer pairs.
    let seed = recipe.data.corruption_seed;
    let g_train = gsm8k_pairs(request, "train", recipe.data.gsm8k_train_limit, seed)?;
    let g_dev = gsm8k_pairs(request, "test", recipe.data.gsm8k_dev_limit, seed + 1)?;
    let texts = |pairs: &[PreferencePair]| -> Result<Vec<String>> {
        let mut t = Vec::new();
        for p in pairs {
            t.push(embedder.pair_text(&p.prompt, &p.chosen)?);
            t.push(embedder.pair_text(&p.prompt, &p.rejected)?);
        }
        Ok(t)
    };
    let gt = fz.features("gsm8k train", texts(&g_train)?)?;
    let gd = fz.features("gsm8k test", texts(&g_dev)?)?;
    let (gtc, gtr) = split_pairs(&gt);
    let (gdc, gdr) = split_pairs(&gd);
    let (head, lambda, trials) = select_bradley_terry((&gtc, &gtr), (&gdc, &gdr), lambdas)?;
    let acc = trials.iter().find(|t| t.lambda == lambda).map(|t| t.dev);
    reports.push(AttributeReport {
        name: "correctness".into(),
        fit: "bradley-terry".into(),
        lambda,
        trials,
        dev_accuracy: acc,
        dev_r2: None,
        dev_pearson: None,
        dev_count: gdc.len(),
        hh_dev_accuracy: 0.0,
    });
    names.push("correctness".to_string());
    heads.push(head);

    // Rated files: ridge per attribute.
    for source in &recipe.rated {
        let train_rows = load_rated(&source.train, &source.attributes)?;
        let dev_rows = load_rated(&source.dev, &source.attributes)?;
        let feats = |rs: &[crate::rated::RatedExample]| -> Result<Vec<String>> {
            rs.iter()
                .map(|r| embedder.pair_text(&r.prompt, &r.response))
                .collect()
        };
        let tf = fz.features(&source.train.display().to_string(), feats(&train_rows)?)?;
        let df = fz.features(&source.dev.display().to_string(), feats(&dev_rows)?)?;
        for (j, a) in source.attributes.iter().enumerate() {
            if names.contains(a) {
                bail!("[[rated]] attribute {a:?} is already defined");
            }
            let ty: Vec<f64> = train_rows.iter().map(|r| r.scores[j] as f64).collect();
            let dy: Vec<f64> = dev_rows.iter().map(|r| r.scores[j] as f64).collect();
            let (head, lambda, trials) =
                select_ridge((&rows(&tf), &ty), (&rows(&df), &dy), lambdas)?;
            let m = regression_metrics(&head, &rows(&df), &dy);
            reports.push(AttributeReport {
                name: a.clone(),
                fit: "ridge".into(),
                lambda,
                trials,
                dev_accuracy: None,
                dev_r2: Some(m.r2),
                dev_pearson: Some(m.pearson),
                dev_count: m.count,
                hh_dev_accuracy: 0.0,
            });
            names.push(a.clone());
            heads.push(head);
        }
    }
    let k = heads.len();
    for (r, h) in reports.iter_mut().zip(&heads) {
        r.hh_dev_accuracy = hh_accuracy(|_, x| h.score(x), &dev_resp);
    }
    request.log(format!("heads fitted ({k} attributes)"));

    // Debiasing on the reference set: HH train responses.
    let attr = |f: &[Vec<f32>]| -> Vec<Vec<f64>> {
        f.iter()
            .map(|x| heads.iter().map(|h| h.score(x)).collect())
            .collect()
    };
    let reference = attr(&train_resp);
    let dev_attr = attr(&dev_resp);
    let debias = if recipe.debias.enabled {
        let Some(v) = names.iter().position(|n| *n == recipe.debias.attribute) else {
            bail!(
                "debias.attribute {:?} is not one of the attributes {names:?}",
                recipe.debias.attribute
            );
        };
        find_verbosity_penalties(&reference, v, recipe.debias.threshold, &ARMORM_PENALTIES)?
    } else {
        crate::gating::VerbosityDebias::none(k)
    };
    let v = names.iter().position(|n| *n == recipe.debias.attribute);
    let dev_spearman = |rs: &[Vec<f64>]| -> Vec<f64> {
        let Some(v) = v else { return vec![] };
        let rv: Vec<f64> = dev_attr.iter().map(|r| r[v]).collect();
        (0..k)
            .map(|i| spearman(&rs.iter().map(|r| r[i]).collect::<Vec<_>>(), &rv))
            .collect()
    };
    let dev_debiased: Vec<Vec<f64>> = dev_attr.iter().map(|r| debias.apply(r)).collect();

    // Gating on HH train pairs, heads frozen.
    let debiased_train: Vec<Vec<f64>> = reference.iter().map(|r| debias.apply(r)).collect();
    let chosen: Vec<Vec<f64>> = debiased_train.iter().step_by(2).cloned().collect();
    let rejected: Vec<Vec<f64>> = debiased_train.iter().skip(1).step_by(2).cloned().collect();
    let (gating, trace) = train_gating(
        &recipe.gating,
        &rows(&train_prompts),
        &chosen,
        &rejected,
        &request.device,
    )?;
    request.log(format!(
        "gating trained: loss {:.4} → {:.4}",
        trace.first_loss, trace.last_loss
    ));

    // HH dev comparisons.
    let n_dev = dev_prompts.len();
    let mut mean_w = vec![0f64; k];
    let gated = |i: usize, r: &[f64]| -> f64 {
        gating
            .weights(&dev_prompts[i])
            .iter()
            .zip(r)
            .map(|(w, x)| w * x)
            .sum()
    };
    let (mut gc, mut gr) = (Vec::new(), Vec::new());
    for i in 0..n_dev {
        for (m, w) in mean_w.iter_mut().zip(gating.weights(&dev_prompts[i])) {
            *m += w / n_dev as f64;
        }
        gc.push(gated(i, &dev_debiased[2 * i]));
        gr.push(gated(i, &dev_debiased[2 * i + 1]));
    }
    let equal = Combination::WeightedSum {
        weights: vec![1.0 / k as f64; k],
    };
    let conj_ref: Vec<f64> = (0..k)
        .map(|j| reference.iter().map(|r| r[j]).sum::<f64>() / reference.len() as f64)
        .collect();
    let conjunction = Combination::LogSigmoidConjunction {
        reference: conj_ref.clone(),
    };
    let comb_acc = |c: &Combination, rs: &[Vec<f64>]| -> Result<f64> {
        let s: Vec<f64> = rs.iter().map(|r| c.combine(r)).collect::<Result<_>>()?;
        let (a, b): (Vec<f64>, Vec<f64>) = (
            s.iter().step_by(2).copied().collect(),
            s.iter().skip(1).step_by(2).copied().collect(),
        );
        Ok(pair_accuracy(&a, &b))
    };

    let model_dir = recipe.run.out_dir.join("model");
    let spec = MultiObjectiveSpec {
        format_version: FORMAT_VERSION,
        embedder: embedder_config.absolute()?,
        attributes: names,
        heads,
        debias: debias.clone(),
        gating: Some(gating),
        combination: equal.clone(),
    };
    MultiObjectiveModel::save_spec(&spec, &model_dir)?;
    let report = MultiObjReport {
        attributes: reports,
        penalties: debias.penalties.clone(),
        spearman_before: debias.spearman_before.clone(),
        spearman_after: debias.spearman_after.clone(),
        dev_spearman_before: dev_spearman(&dev_attr),
        dev_spearman_after: dev_spearman(&dev_debiased),
        gating: trace,
        mean_gating_weights: mean_w,
        hh_dev_gated: pair_accuracy(&gc, &gr),
        hh_dev_equal_sum: comb_acc(&equal, &dev_attr)?,
        hh_dev_equal_sum_debiased: comb_acc(&equal, &dev_debiased)?,
        hh_dev_conjunction: comb_acc(&conjunction, &dev_attr)?,
        conjunction_reference: conj_ref,
        hh_train_pairs: hh_train.len(),
        hh_dev_pairs: hh_dev.len(),
        cache: fz.statuses,
        seconds: start.elapsed().as_secs_f64(),
        model_dir,
    };
    write_report(&recipe.run.out_dir, &report)?;
    Ok(report)
}

pub(crate) fn write_report<T: Serialize>(dir: &Path, report: &T) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    rm_core::checkpoint::write_bytes_atomically(
        &dir.join("report.json"),
        serde_json::to_string_pretty(report)?.as_bytes(),
    )
}

/// `[data]` of the population test.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PopulationData {
    #[serde(default)]
    pub hh_train_limit: Option<usize>,
    #[serde(default)]
    pub hh_dev_limit: Option<usize>,
}

/// `recipes/pal-*.toml`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PopulationRecipe {
    pub embedder: EmbedderConfig,
    #[serde(default)]
    pub data: PopulationData,
    #[serde(default = "default_population")]
    pub population: PopulationConfig,
    #[serde(default)]
    pub personal: PersonalConfig,
    pub run: RunConfig,
}

fn default_population() -> PopulationConfig {
    toml::from_str("").expect("defaults")
}

/// What the population test measured (accuracies on test users' query pairs, per population).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PopulationReport {
    pub rules: Vec<String>,
    /// Fraction of decided pairs on which the rules agree (HH train, HH dev).
    pub agreement_train: f64,
    pub agreement_dev: f64,
    pub train_users: usize,
    pub test_users: usize,
    pub bt: PopulationAccuracy,
    pub pal: PersonalRun,
    pub vpl: PersonalRun,
    pub cache: Vec<(String, CacheStatus)>,
    pub seconds: f64,
}

/// `plumb multiobj population-test`: train users from HH train pairs, test users (unseen) from HH
/// dev pairs; shared BT vs PAL vs VPL.
pub fn population_test(
    recipe: &PopulationRecipe,
    request: &RunRequest,
) -> Result<PopulationReport> {
    let start = Instant::now();
    let embedder = Embedder::load(
        &recipe.embedder.resolved(&request.models_dir),
        &request.device,
    )?;
    let mut fz = open(&embedder, &recipe.run, request);
    let hh_train = load_hh(request, Split::Train, recipe.data.hh_train_limit)?;
    let hh_dev = load_hh(request, Split::Dev, recipe.data.hh_dev_limit)?;
    let (train_resp, _) = fz.hh("hh train", &hh_train)?;
    let (dev_resp, _) = fz.hh("hh dev", &hh_dev)?;
    let info = |pairs: &[PreferencePair]| -> Vec<PairInfo> {
        pairs
            .iter()
            .map(|p| PairInfo::new(&p.chosen, &p.rejected))
            .collect()
    };
    let (train_info, dev_info) = (info(&hh_train), info(&hh_dev));
    let rules = &recipe.population.rules;
    let train_users =
        build_users(&train_info, &recipe.population, 0).context("train users (HH train)")?;
    let test_users =
        build_users(&dev_info, &recipe.population, 1).context("test users (HH dev)")?;
    let feats = |f: &[Vec<f32>]| -> Vec<(Vec<f32>, Vec<f32>)> {
        f.chunks(2).map(|c| (c[0].clone(), c[1].clone())).collect()
    };
    let (train_pairs, dev_pairs) = (feats(&train_resp), feats(&dev_resp));
    // Train users index HH train pairs, test users HH dev pairs: one list, dev offset.
    let offset = train_pairs.len();
    let all: Vec<PairFeatures> = train_pairs
        .iter()
        .chain(&dev_pairs)
        .map(|(c, r)| PairFeatures {
            chosen: c,
            rejected: r,
        })
        .collect();
    let test_users: Vec<_> = test_users
        .into_iter()
        .map(|mut u| {
            for l in u.context.iter_mut().chain(u.query.iter_mut()) {
                l.pair += offset;
            }
            u
        })
        .collect();
    let bt = shared_bt(&train_users, &test_users, &all, recipe.personal.bt_lambda)?;
    request.log(format!("shared BT: {:?}", bt.all));
    let pal_run = pal(
        &recipe.personal.pal,
        &train_users,
        &test_users,
        &all,
        &request.device,
    )?;
    request.log(format!("PAL: {:?}", pal_run.accuracy.all));
    let vpl_run = vpl(
        &recipe.personal.vpl,
        &train_users,
        &test_users,
        &all,
        &request.device,
    )?;
    request.log(format!("VPL: {:?}", vpl_run.accuracy.all));
    let report = PopulationReport {
        rules: rules
            .iter()
            .map(|r| serde_json::to_value(r).map(|v| v.as_str().unwrap_or("?").to_string()))
            .collect::<Result<_, _>>()?,
        agreement_train: agreement(&train_info, rules),
        agreement_dev: agreement(&dev_info, rules),
        train_users: train_users.len(),
        test_users: test_users.len(),
        bt,
        pal: pal_run,
        vpl: vpl_run,
        cache: fz.statuses,
        seconds: start.elapsed().as_secs_f64(),
    };
    write_report(&recipe.run.out_dir, &report)?;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recipes_parse_and_gsm8k_pairs_differ_only_in_the_answer() {
        for file in [
            "multiobj-minilm-hh.toml",
            "multiobj-rmminilm-hh.toml",
            "pal-minilm-hh.toml",
            "pal-rmminilm-hh.toml",
        ] {
            let path = Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../../recipes")
                .join(file);
            let embedder = if file.starts_with("multiobj") {
                rm_core::recipe::load::<MultiObjRecipe>(&path, &[])
                    .unwrap()
                    .embedder
            } else {
                rm_core::recipe::load::<PopulationRecipe>(&path, &[])
                    .unwrap()
                    .embedder
            };
            // The `*-rmminilm-*` variants read the trained MiniLM RM by a path relative to the
            // repository root, as every other recipe names `runs/…` and `models/…`.
            match (file.contains("rmminilm"), embedder) {
                (true, EmbedderConfig::RewardModel { path }) => {
                    assert_eq!(path, Path::new("runs/rm-minilm-hh/final"), "{file}")
                }
                (false, EmbedderConfig::Backbone { path, .. }) => {
                    assert_eq!(path, Path::new("models/minilm"), "{file}")
                }
                (_, other) => panic!("{file}: unexpected embedder {other:?}"),
            }
        }
        let problem = gsm8k::Gsm8kProblem {
            question: "q".into(),
            solution: "2 + 2 = 4".into(),
            answer: "4".into(),
            answer_value: 4.0,
        };
        let mut rng = StdRng::seed_from_u64(0);
        for _ in 0..20 {
            let p = gsm8k::answer_pair(&problem, &mut rng);
            assert_eq!(p.chosen, "2 + 2 = 4\nThe answer is 4.");
            let wrong: i64 = p
                .rejected
                .trim_start_matches("2 + 2 = 4\nThe answer is ")
                .trim_end_matches('.')
                .parse()
                .unwrap();
            assert!(wrong != 4 && (wrong - 4).abs() <= 10, "{}", p.rejected);
        }
        assert_eq!(verbosity_rating("a b c"), 4f64.ln());
    }
}
