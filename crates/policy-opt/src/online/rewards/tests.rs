//! The set: weighting, clipping, masking, configuration errors, recipes; the reward-model
//! component on a tiny in-code reward model; a hybrid model + rule + length set.

use std::path::{Path, PathBuf};

use rm_core::device::test_device;
use rm_core::models::reward::{RewardModelBundle, RewardModelConfig, log_sigmoid_transform};
use rm_core::types::{Conversation, Prompt, Role, Turn};

use super::*;

/// Test-only: returns `values[i]` for sample `i`, failing where the completion contains "FAIL".
struct Scripted {
    name: String,
    values: Vec<f32>,
}

impl RewardFunction for Scripted {
    fn name(&self) -> &str {
        &self.name
    }
    fn score_batch(&self, samples: &[RewardSample<'_>]) -> Vec<Result<f32, RewardError>> {
        samples
            .iter()
            .zip(&self.values)
            .map(|(s, &v)| {
                if s.completion.contains("FAIL") {
                    Err(RewardError::Model("scripted failure".into()))
                } else {
                    Ok(v)
                }
            })
            .collect()
    }
}

fn component(name: &str, weight: f64, clip: Option<[f64; 2]>, values: &[f32]) -> RewardComponent {
    RewardComponent {
        name: name.into(),
        weight,
        clip,
        function: Box::new(Scripted {
            name: name.into(),
            values: values.to_vec(),
        }),
    }
}

fn samples<'a>(
    prompt: &'a Prompt,
    completions: &[&'a str],
    refs: &'a [String],
) -> Vec<RewardSample<'a>> {
    completions
        .iter()
        .map(|&completion| RewardSample {
            prompt,
            completion,
            references: refs,
            truncated: false,
        })
        .collect()
}

fn close(a: Option<f32>, b: f32) {
    let a = a.expect("a total");
    assert!((a - b).abs() < 1e-5, "{a} vs {b}");
}

#[test]
fn the_total_is_the_weighted_sum_of_clipped_components() {
    let set = RewardSet::from_components(vec![
        component("a", 2.0, None, &[1.0, 0.5, -1.0]),
        component("b", -0.5, Some([-1.0, 1.0]), &[3.0, -4.0, 0.25]),
    ])
    .unwrap();
    assert_eq!(set.component_names(), ["a", "b"]);
    let prompt = Prompt::Text("q".into());
    let out = set.score(&samples(&prompt, &["x", "y", "z"], &[]));
    // 2·1 − 0.5·clip(3) = 2 − 0.5 = 1.5; 2·0.5 − 0.5·(−1) = 1.5; 2·(−1) − 0.5·0.25 = −2.125.
    close(out[0].total, 1.5);
    close(out[1].total, 1.5);
    close(out[2].total, -2.125);
    assert_eq!(out[0].components, [Some(1.0), Some(1.0)]);
    assert_eq!(out[1].components, [Some(0.5), Some(-1.0)]);
    assert!(out.iter().all(|s| s.errors.is_empty()));
}

#[test]
fn a_failing_or_non_finite_component_masks_only_its_samples() {
    struct Nan;
    impl RewardFunction for Nan {
        fn name(&self) -> &str {
            "nan"
        }
        fn score_batch(&self, samples: &[RewardSample<'_>]) -> Vec<Result<f32, RewardError>> {
            samples
                .iter()
                .map(|s| Ok(if s.completion == "nan" { f32::NAN } else { 0.0 }))
                .collect()
        }
    }
    let set = RewardSet::from_components(vec![
        component("flaky", 1.0, None, &[1.0, 2.0, 3.0, 4.0]),
        RewardComponent {
            name: "nan".into(),
            weight: 1.0,
            clip: Some([-1.0, 1.0]),
            function: Box::new(Nan),
        },
    ])
    .unwrap();
    let prompt = Prompt::Text("q".into());
    let out = set.score(&samples(&prompt, &["ok", "FAIL", "nan", "ok"], &[]));
    close(out[0].total, 1.0);
    assert_eq!(out[1].total, None);
    assert_eq!(out[1].components, [None, Some(0.0)]);
    assert_eq!(out[1].errors, ["flaky: reward model: scripted failure"]);
    // NaN is an error even with a clip range (clamping would hide it).
    assert_eq!(out[2].total, None);
    assert_eq!(out[2].components, [Some(3.0), None]);
    assert_eq!(out[2].errors, ["nan: non-finite reward NaN"]);
    close(out[3].total, 4.0);
}

#[test]
fn a_component_returning_the_wrong_count_fails_every_sample() {
    let set = RewardSet::from_components(vec![component("short", 1.0, None, &[1.0])]).unwrap();
    let prompt = Prompt::Text("q".into());
    let out = set.score(&samples(&prompt, &["a", "b"], &[]));
    assert!(out.iter().all(|s| s.total.is_none()));
    assert_eq!(out[0].errors, ["short: 1 results for 2 samples"]);
}

#[test]
fn bad_sets_are_errors_naming_the_problem() {
    let err = |r: anyhow::Result<RewardSet>| format!("{:#}", r.err().expect("an error"));
    assert!(err(RewardSet::from_components(vec![])).contains("at least one"));
    let e = err(RewardSet::from_components(vec![
        component("a", 1.0, None, &[]),
        component("a", 1.0, None, &[]),
    ]));
    assert!(e.contains("\"a\""), "{e}");
    for w in [f64::NAN, f64::INFINITY] {
        let e = err(RewardSet::from_components(vec![component(
            "a",
            w,
            None,
            &[],
        )]));
        assert!(e.contains("weight"), "{e}");
    }
    let e = err(RewardSet::from_components(vec![component(
        "a",
        1.0,
        Some([1.0, -1.0]),
        &[],
    )]));
    assert!(e.contains("clip"), "{e}");
    // Two components of one kind without names collide on the default name.
    let device = test_device();
    let gsm = RewardComponentConfig {
        name: None,
        weight: 1.0,
        spec: RewardSpec::Gsm8k(Gsm8kSpec::default()),
        clip: None,
    };
    let e = err(RewardSet::build(&[gsm.clone(), gsm.clone()], &device));
    assert!(e.contains("\"gsm8k\""), "{e}");
    let named = RewardComponentConfig {
        name: Some("gsm8k_strict".into()),
        ..gsm.clone()
    };
    let set = RewardSet::build(&[gsm.clone(), named], &device).unwrap();
    assert_eq!(set.component_names(), ["gsm8k", "gsm8k_strict"]);
    assert!(err(RewardSet::build(&[], &device)).contains("at least one"));
    // A component's own build error names the component.
    let bad = RewardComponentConfig {
        name: None,
        weight: 1.0,
        spec: RewardSpec::Format(FormatSpec::default()),
        clip: None,
    };
    let e = err(RewardSet::build(&[bad], &device));
    assert!(e.contains("\"format\"") && e.contains("pattern"), "{e}");
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct Recipe {
    reward: Vec<RewardComponentConfig>,
}

#[test]
fn reward_tables_round_trip_through_toml() {
    let text = r#####"
[[reward]]
kind = "gsm8k"
weight = 1.0

[[reward]]
kind = "format"
pattern = "####"
weight = 0.2

[[reward]]
name = "overlong"
kind = "length"
max_length = 512
cache = 128
weight = 1

[[reward]]
kind = "keywords"
forbidden = ["as an ai"]

[[reward]]
kind = "bleu"
smoothing = "add_one"
clip = [0.0, 0.5]

[[reward]]
kind = "rouge_l"

[[reward]]
kind = "reward_model"
path = "runs/rm/final"
transform = { log_sigmoid = { reference = "I can't help with that." } }
batch_size = 4
weight = 0.5

[[reward]]
name = "rm_norm"
kind = "reward_model"
path = "runs/rm/final"
transform = "normalized"
"#####;
    let recipe: Recipe = toml::from_str(text).unwrap();
    let r = &recipe.reward;
    assert_eq!(r.len(), 8);
    assert_eq!(r[0].spec, RewardSpec::Gsm8k(Gsm8kSpec::default()));
    assert_eq!(
        (r[0].weight, r[0].name.clone(), r[0].clip),
        (1.0, None, None)
    );
    assert_eq!(
        r[1].spec,
        RewardSpec::Format(FormatSpec {
            pattern: Some("####".into()),
            ..Default::default()
        })
    );
    assert_eq!(r[1].weight, 0.2);
    assert_eq!(r[2].name.as_deref(), Some("overlong"));
    assert_eq!(
        r[2].spec,
        RewardSpec::Length(LengthSpec {
            max_length: Some(512),
            cache: Some(128),
            ..Default::default()
        })
    );
    assert_eq!(r[3].weight, 1.0);
    assert_eq!(
        r[4].spec,
        RewardSpec::Bleu(BleuSpec {
            smoothing: BleuSmoothing::AddOne,
            ..Default::default()
        })
    );
    assert_eq!(r[4].clip, Some([0.0, 0.5]));
    assert_eq!(r[5].spec, RewardSpec::RougeL(RougeLSpec { beta: 1.0 }));
    assert_eq!(
        r[6].spec,
        RewardSpec::RewardModel {
            path: "runs/rm/final".into(),
            transform: RmTransform::LogSigmoid {
                reference: "I can't help with that.".into()
            },
            batch_size: Some(4),
            attribute: None,
        }
    );
    assert!(matches!(
        &r[7].spec,
        RewardSpec::RewardModel {
            transform: RmTransform::Normalized,
            batch_size: None,
            ..
        }
    ));
    let written = toml::to_string(&recipe).unwrap();
    let again: Recipe = toml::from_str(&written).unwrap();
    assert_eq!(again, recipe, "{written}");
}

#[test]
fn unknown_kinds_and_fields_are_rejected() {
    let bad = [
        "[[reward]]\nkind = \"gsm8k\"\nstrictness = 1\n",
        "[[reward]]\nkind = \"sentiment\"\n",
        "[[reward]]\nkind = \"format\"\npatern = \"x\"\n",
        "[[reward]]\nweight = 1.0\n",
        "[[reward]]\nkind = \"reward_model\"\npath = \"x\"\ntransform = \"sigmoid\"\n",
    ];
    let reasons = [
        "unknown field `strictness`",
        "unknown variant `sentiment`",
        "unknown field `patern`",
        "kind",
        "sigmoid",
    ];
    for (text, reason) in bad.iter().zip(reasons) {
        let e = toml::from_str::<Recipe>(text).unwrap_err().to_string();
        assert!(e.contains(reason), "{text}: {e}");
    }
}

#[test]
fn gsm8k_and_format_components_score_a_recipe() {
    let recipe: Recipe = toml::from_str(
        "[[reward]]\nkind = \"gsm8k\"\n[[reward]]\nkind = \"format\"\npattern = \"####\"\nweight = 0.2\n",
    )
    .unwrap();
    let set = RewardSet::build(&recipe.reward, &test_device()).unwrap();
    let prompt = Prompt::Text("What is 3 + 4?".into());
    let gold = vec!["7".to_string()];
    let out = set.score(&samples(
        &prompt,
        &["3 + 4 = 7\n#### 7", "3 + 4 = 7", "#### 8", "I am not sure."],
        &gold,
    ));
    // gsm8k + 0.2·format: 1 + 0.2, 1 + 0 (flexible: last number), 0 + 0.2, 0 + 0.
    close(out[0].total, 1.2);
    close(out[1].total, 1.0);
    close(out[2].total, 0.2);
    close(out[3].total, 0.0);
}

// --- the reward-model component on a tiny in-code reward model -------------------------------

fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("plumb-rewards-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A tiny decoder reward model (HH-transcript template, so a system turn cannot be rendered)
/// saved to `root/rm`; returns the folder and the saved-then-loaded bundle.
fn tiny_rm(root: &Path) -> (PathBuf, RewardModelBundle) {
    let device = test_device();
    let base = root.join("base");
    rm_core::fixtures::write_tiny_llama(&base, 3).unwrap();
    let config: RewardModelConfig = serde_json::from_value(serde_json::json!({
        "backbone": base,
        "max_len": 16,
        "template": "hh-transcript",
        "head_init_std": 0.5,
    }))
    .unwrap();
    let bundle = RewardModelBundle::build(&config, 11, &device).unwrap();
    let dir = root.join("rm");
    bundle.save(&dir).unwrap();
    let loaded = RewardModelBundle::load(&dir, &device).unwrap();
    (dir, loaded)
}

fn raw_reward(bundle: &RewardModelBundle, prompt: &Prompt, completion: &str) -> f32 {
    let text = bundle.text(prompt, completion).unwrap();
    bundle.score_texts(&[&text], 1).unwrap()[0][0]
}

#[test]
fn the_reward_model_component_scores_as_the_model_and_masks_unscorable_samples() {
    let root = temp_dir("rm");
    let (dir, bundle) = tiny_rm(&root);
    let device = test_device();
    let text_prompt = Prompt::Text("w3 w4".into());
    let system_prompt = Prompt::Conversation(Conversation::new(vec![
        Turn::new(Role::System, "w1"),
        Turn::new(Role::User, "w2"),
    ]));
    let config = |transform: RmTransform| RewardComponentConfig {
        name: Some("rm".into()),
        weight: 1.0,
        spec: RewardSpec::RewardModel {
            path: dir.clone(),
            transform,
            batch_size: Some(2),
            attribute: None,
        },
        clip: None,
    };
    let completions = ["w5 w6 w7", "w9", "w10 w11"];
    let mut batch: Vec<RewardSample<'_>> = completions
        .iter()
        .map(|&c| RewardSample {
            prompt: &text_prompt,
            completion: c,
            references: &[],
            truncated: false,
        })
        .collect();
    // The HH template has no system turns: this sample cannot be scored.
    batch.insert(
        1,
        RewardSample {
            prompt: &system_prompt,
            completion: "w9",
            references: &[],
            truncated: false,
        },
    );

    let set = RewardSet::build(&[config(RmTransform::Raw)], &device).unwrap();
    let out = set.score(&batch);
    let expected: Vec<f32> = completions
        .iter()
        .map(|c| raw_reward(&bundle, &text_prompt, c))
        .collect();
    assert!(
        expected[0] != expected[1],
        "the tiny RM gives distinct rewards"
    );
    close(out[0].total, expected[0]);
    assert_eq!(out[1].total, None);
    assert_eq!(out[1].errors.len(), 1);
    assert!(
        out[1].errors[0].starts_with("rm: reward model:"),
        "{:?}",
        out[1].errors
    );
    assert!(out[1].errors[0].contains("system"), "{:?}", out[1].errors);
    close(out[2].total, expected[1]);
    close(out[3].total, expected[2]);

    // log σ(r − r_ref) against a reference response to the same prompt.
    let reference = "w20 w21";
    let set = RewardSet::build(
        &[config(RmTransform::LogSigmoid {
            reference: reference.into(),
        })],
        &device,
    )
    .unwrap();
    let out = set.score(&batch[..1]);
    let r_ref = raw_reward(&bundle, &text_prompt, reference);
    close(out[0].total, log_sigmoid_transform(expected[0], r_ref));

    // Settings checked at build: no stored normalization, an empty reference, an unknown
    // attribute, a missing folder.
    let e = format!(
        "{:#}",
        RewardSet::build(&[config(RmTransform::Normalized)], &device)
            .err()
            .unwrap()
    );
    assert!(e.contains("normalization"), "{e}");
    assert!(
        RewardSet::build(
            &[config(RmTransform::LogSigmoid {
                reference: String::new()
            })],
            &device
        )
        .is_err()
    );
    let mut unknown = config(RmTransform::Raw);
    if let RewardSpec::RewardModel { attribute, .. } = &mut unknown.spec {
        *attribute = Some("harmless".into());
    }
    assert!(RewardSet::build(&[unknown], &device).is_err());
    let mut missing = config(RmTransform::Raw);
    if let RewardSpec::RewardModel { path, .. } = &mut missing.spec {
        *path = root.join("nope");
    }
    assert!(RewardSet::build(&[missing], &device).is_err());
    let _ = std::fs::remove_dir_all(&root);
}

/// A DMoERM folder as `kind = "reward_model"`: its aggregate (here twice the one expert's
/// reward, the expert read as both of its capabilities), scored per sample across prompts; a
/// transform or an attribute is refused.
#[test]
fn the_reward_model_component_reads_a_dmoerm_folder() {
    let root = temp_dir("dmoerm");
    let (dir, bundle) = tiny_rm(&root);
    let device = test_device();
    let dmoerm = root.join("dmoerm");
    rm_multiobj::dmoerm::fixtures::write_sum_of_two(&dmoerm, &root.join("base"), 16, [&dir, &dir])
        .unwrap();
    let config = |transform: RmTransform| RewardComponentConfig {
        name: Some("dmoerm".into()),
        weight: 1.0,
        spec: RewardSpec::RewardModel {
            path: dmoerm.clone(),
            transform,
            batch_size: Some(2),
            attribute: None,
        },
        clip: None,
    };
    let prompts = [Prompt::Text("w3 w4".into()), Prompt::Text("w8".into())];
    let items = [(0, "w5 w6 w7"), (1, "w9"), (0, "w10 w11")];
    let batch: Vec<RewardSample<'_>> = items
        .iter()
        .map(|&(p, c)| RewardSample {
            prompt: &prompts[p],
            completion: c,
            references: &[],
            truncated: false,
        })
        .collect();
    let set = RewardSet::build(&[config(RmTransform::Raw)], &device).unwrap();
    let out = set.score(&batch);
    for (o, &(p, c)) in out.iter().zip(&items) {
        close(o.total, 2.0 * raw_reward(&bundle, &prompts[p], c));
    }
    let e = format!(
        "{:#}",
        RewardSet::build(&[config(RmTransform::Normalized)], &device)
            .err()
            .unwrap()
    );
    assert!(e.contains("DMoERM folder gives one raw reward"), "{e}");
    let _ = std::fs::remove_dir_all(&root);
}

/// "Beyond Monolithic Rewards" (hybrid): a learned reward model, a verifiable rule and a length
/// penalty in one set.
#[test]
fn a_hybrid_set_combines_model_rule_and_length_rewards() {
    let root = temp_dir("hybrid");
    let (dir, bundle) = tiny_rm(&root);
    let recipe = format!(
        r#"
[[reward]]
kind = "reward_model"
path = "{}"
weight = 0.5
clip = [-0.1, 0.1]

[[reward]]
kind = "gsm8k"

[[reward]]
kind = "length"
target = 4
weight = 0.2
"#,
        dir.display()
    );
    let recipe: Recipe = toml::from_str(&recipe).unwrap();
    let set = RewardSet::build(&recipe.reward, &test_device()).unwrap();
    assert_eq!(set.component_names(), ["reward_model", "gsm8k", "length"]);
    let prompt = Prompt::Text("w1 w2".into());
    let gold = vec!["12".to_string()];
    let completions = ["so #### 12", "w3 w4 w5 w6 w7 w8 #### 13"];
    let out = set.score(&samples(&prompt, &completions, &gold));
    // The clip range matters: the tiny model's raw rewards lie outside it.
    assert!(
        completions
            .iter()
            .all(|c| raw_reward(&bundle, &prompt, c).abs() > 0.1)
    );
    for (i, c) in completions.iter().enumerate() {
        let rm = raw_reward(&bundle, &prompt, c).clamp(-0.1, 0.1);
        assert_eq!(out[i].components[0], Some(rm));
        // length: 3 words → −|3 − 4|/4; 8 words → −|8 − 4|/4.
        let (correct, len) = if i == 0 { (1.0, -0.25) } else { (0.0, -1.0) };
        assert_eq!(out[i].components[1], Some(correct));
        assert_eq!(out[i].components[2], Some(len));
        close(out[i].total, 0.5 * rm + correct + 0.2 * len);
    }
    let _ = std::fs::remove_dir_all(&root);
}

/// Test-only prompt weighting: prompt "p" → (b 0.25, a 0.75), any other → (b 1, a 0);
/// `z_b = (v − 1) / 2`, `z_a = v / 4`. Counts the prompts it was asked about.
struct ScriptedWeighting {
    objectives: Vec<String>,
    asked: std::sync::Mutex<Vec<usize>>,
    fail: bool,
}

impl PromptWeighting for ScriptedWeighting {
    fn objectives(&self) -> &[String] {
        &self.objectives
    }
    fn weights(&self, prompts: &[&Prompt]) -> anyhow::Result<Vec<Vec<f64>>> {
        self.asked.lock().unwrap().push(prompts.len());
        if self.fail {
            anyhow::bail!("backbone exploded");
        }
        Ok(prompts
            .iter()
            .map(|p| match p {
                Prompt::Text(t) if t == "p" => vec![0.25, 0.75],
                _ => vec![1.0, 0.0],
            })
            .collect())
    }
    fn standardize(&self, objective: usize, value: f64) -> f64 {
        match objective {
            0 => (value - 1.0) / 2.0,
            _ => value / 4.0,
        }
    }
}

fn weighting(objectives: &[&str], fail: bool) -> Box<ScriptedWeighting> {
    Box::new(ScriptedWeighting {
        objectives: objectives.iter().map(|s| s.to_string()).collect(),
        asked: Default::default(),
        fail,
    })
}

#[test]
fn a_prompt_weighting_weighs_standardized_components_per_prompt() {
    let mut set = RewardSet::from_components(vec![
        component("a", 2.0, None, &[4.0, 8.0, 4.0]),
        component("b", 1.0, None, &[3.0, 1.0, 5.0]),
    ])
    .unwrap();
    assert!(!set.is_prompt_weighted());
    // The objectives come in another order than the components: matched by name.
    set.set_prompt_weighting(weighting(&["b", "a"], false))
        .unwrap();
    assert!(set.is_prompt_weighted());
    let (p, q) = (Prompt::Text("p".into()), Prompt::Text("q".into()));
    let s = [
        RewardSample {
            prompt: &p,
            completion: "x",
            references: &[],
            truncated: false,
        },
        RewardSample {
            prompt: &p,
            completion: "y",
            references: &[],
            truncated: false,
        },
        RewardSample {
            prompt: &q,
            completion: "z",
            references: &[],
            truncated: false,
        },
    ];
    let out = set.score(&s);
    // Sample 0 (prompt p): 2·0.75·(4/4) + 1·0.25·((3−1)/2) = 1.5 + 0.25 = 1.75.
    close(out[0].total, 1.75);
    // Sample 1 (p): 2·0.75·2 + 0.25·0 = 3.
    close(out[1].total, 3.0);
    // Sample 2 (q): a weighs 0; 1·1·((5−1)/2) = 2.
    close(out[2].total, 2.0);
    // Components stay raw.
    assert_eq!(out[0].components, [Some(4.0), Some(3.0)]);
}

#[test]
fn prompt_weighting_errors_mask_or_refuse() {
    let mut set = RewardSet::from_components(vec![
        component("a", 1.0, None, &[1.0, 2.0]),
        component("b", 1.0, None, &[1.0, 2.0]),
    ])
    .unwrap();
    let err = set
        .set_prompt_weighting(weighting(&["a", "c"], false))
        .unwrap_err()
        .to_string();
    assert!(err.contains("[\"b\"]") && err.contains("[\"c\"]"), "{err}");
    assert!(!set.is_prompt_weighted());
    // A weighting that fails masks every sample of the call, naming itself.
    set.set_prompt_weighting(weighting(&["a", "b"], true))
        .unwrap();
    let prompt = Prompt::Text("p".into());
    let out = set.score(&samples(&prompt, &["x", "y"], &[]));
    for s in &out {
        assert_eq!(s.total, None);
        assert!(
            s.errors
                .iter()
                .any(|e| e.contains("prompt weighting: backbone exploded")),
            "{:?}",
            s.errors
        );
    }
}
