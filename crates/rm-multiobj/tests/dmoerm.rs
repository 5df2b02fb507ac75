//! `plumb multiobj dmoerm` end to end on tiny in-code Llama reward models: two tasks with their
//! own vocabularies, two capability experts each; the router learns the tasks, each task's MLP
//! learns its pairs from the frozen experts, and the saved folder scores exactly what the report
//! measured.

use std::path::{Path, PathBuf};

use rm_core::chat::ChatTemplate;
use rm_core::fixtures::write_tiny_llama;
use rm_core::models::reward::{RewardModelBundle, RewardModelConfig};
use rm_core::tokenize::TruncationSide;
use rm_core::types::Prompt;
use rm_multiobj::dmoerm::{DmoermModel, SPEC_FILE};
use rm_multiobj::dmoerm_run::{DmoermRecipe, train};
use rm_multiobj::pipeline::RunRequest;
use rm_pipeline::recipe::PairSource;

fn tmp(name: &str) -> PathBuf {
    let p = std::env::temp_dir().join(format!("plumbline-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&p);
    std::fs::create_dir_all(&p).unwrap();
    p
}

/// An untrained reward model over the tiny base: a seeded head on its pooled last token.
fn expert(root: &Path, name: &str, seed: u64) -> PathBuf {
    let config = RewardModelConfig {
        backbone: root.join("base"),
        pooling: None,
        max_len: 24,
        truncation: TruncationSide::Left,
        attributes: vec![name.into()],
        // Plain text: the word-level tokenizer sees each word (ChatML's markers would glue the
        // last word to `<|im_end|>`).
        template: Some(ChatTemplate::Plain),
        lora: None,
        head_init_std: 0.5,
    };
    let bundle = RewardModelBundle::build(&config, seed, &rm_core::device::test_device()).unwrap();
    let dir = root.join(name);
    bundle.save(&dir).unwrap();
    dir
}

/// Pairs of one task: prompts from the task's words; the chosen response ends in `good`, the
/// rejected one in `bad`.
fn write_task(
    path: &Path,
    n: usize,
    words: std::ops::Range<usize>,
    good: &str,
    bad: &str,
    offset: usize,
) {
    let span = words.len();
    let rows: String = (0..n)
        .map(|i| {
            let w = |k: usize| format!("w{}", words.start + (i * 7 + k + offset) % span);
            format!(
                "{{\"prompt\": \"{} {} {}\", \"chosen\": \"{} {good}\", \"rejected\": \"{} {bad}\"}}\n",
                w(0),
                w(3),
                w(5),
                w(1),
                w(1)
            )
        })
        .collect();
    std::fs::write(path, rows).unwrap();
}

fn recipe(root: &Path) -> DmoermRecipe {
    let text = format!(
        r#"
[router]
embedder = {{ kind = "backbone", path = {base:?}, max_len = 24 }}
steps = 300
lr = 0.05

[[task]]
name = "alpha"
train = {{ source = "jsonl", path = {at:?} }}
eval = {{ source = "jsonl", path = {ad:?} }}
experts = [{{ capability = "one", path = {e1:?} }}, {{ capability = "two", path = {e2:?} }}]

[[task]]
name = "beta"
train = {{ source = "jsonl", path = {bt:?} }}
eval = {{ source = "jsonl", path = {bd:?} }}
experts = [{{ capability = "three", path = {e3:?} }}, {{ capability = "four", path = {e4:?} }}]

[aggregator]
hidden = 16
steps = 300
lr = 0.01

[run]
out_dir = {out:?}
cache_dir = {cache:?}
batch_size = 8
"#,
        base = root.join("base").display().to_string(),
        at = root.join("alpha-train.jsonl").display().to_string(),
        ad = root.join("alpha-dev.jsonl").display().to_string(),
        bt = root.join("beta-train.jsonl").display().to_string(),
        bd = root.join("beta-dev.jsonl").display().to_string(),
        e1 = root.join("one").display().to_string(),
        e2 = root.join("two").display().to_string(),
        e3 = root.join("three").display().to_string(),
        e4 = root.join("four").display().to_string(),
        out = root.join("run").display().to_string(),
        cache = root.join("cache").display().to_string(),
    );
    rm_core::recipe::parse(&text, "dmoerm-test", &[]).unwrap()
}

#[test]
fn routes_tasks_aggregates_experts_and_the_folder_scores_what_the_report_measured() {
    let _lock = rm_core::device::seeded_test_lock();
    let root = tmp("dmoerm");
    write_tiny_llama(&root.join("base"), 5).unwrap();
    for (name, seed) in [("one", 1), ("two", 2), ("three", 3), ("four", 4)] {
        expert(&root, name, seed);
    }
    write_task(&root.join("alpha-train.jsonl"), 48, 1..16, "w40", "w41", 0);
    write_task(&root.join("alpha-dev.jsonl"), 16, 1..16, "w40", "w41", 3);
    write_task(&root.join("beta-train.jsonl"), 48, 20..36, "w43", "w42", 0);
    write_task(&root.join("beta-dev.jsonl"), 16, 20..36, "w43", "w42", 3);
    let recipe = recipe(&root);
    let request = RunRequest {
        data_dir: root.clone(),
        models_dir: root.clone(),
        device: rm_core::device::test_device(),
        verbose: false,
    };
    let report = train(&recipe, &request).unwrap();
    eprintln!("{}", rm_multiobj::dmoerm_run::markdown(&report));

    assert_eq!(report.router_confusion.len(), 2);
    assert_eq!(report.router_confusion.iter().flatten().sum::<usize>(), 32);
    assert!(
        report.router.last_loss < report.router.first_loss,
        "{:?}",
        report.router
    );
    assert!(
        report.router_dev_accuracy >= 0.9,
        "router {}",
        report.router_dev_accuracy
    );
    for t in &report.tasks {
        assert_eq!((t.train_pairs, t.dev_pairs, t.experts.len()), (48, 16, 2));
        assert!(
            t.aggregator.last_loss < 0.5 * t.aggregator.first_loss,
            "{t:?}"
        );
        assert!(t.aggregator_dev_accuracy >= 0.9, "{t:?}");
    }

    // The saved folder: route and score every dev pair again.
    let model = DmoermModel::load(&report.model_dir, &request.device).unwrap();
    let mut right = 0;
    let mut routed_right = 0;
    let mut all_pairs = Vec::new();
    let mut one_by_one = Vec::new();
    for (t, file) in ["alpha-dev.jsonl", "beta-dev.jsonl"].iter().enumerate() {
        let pairs = PairSource::Jsonl {
            path: root.join(file),
            shape: Default::default(),
            limit: 0,
        }
        .load(&root)
        .unwrap();
        for p in pairs {
            let s = model
                .score(&p.prompt, &[p.chosen.clone(), p.rejected.clone()], 4)
                .unwrap();
            right += usize::from(s[0].reward > s[1].reward);
            one_by_one.extend([s[0].reward, s[1].reward]);
            all_pairs.push(p.clone());
            routed_right += usize::from(s[0].task == report.tasks[t].name);
            assert!((0.0..=1.0).contains(&s[0].task_probability));
            // Each capability's reward is its expert folder's own reward.
            let expert = &model
                .spec
                .tasks
                .iter()
                .position(|m| m.name == s[0].task)
                .unwrap();
            let folder = &model.spec.tasks[*expert].experts[0];
            let bundle = RewardModelBundle::load(&folder.path, &request.device).unwrap();
            let text = bundle.text(&p.prompt, &p.chosen).unwrap();
            let own = bundle.score_texts(&[text.as_str()], 1).unwrap()[0][0] as f64;
            assert_eq!(s[0].capabilities[0].0, folder.capability);
            assert!(
                (s[0].capabilities[0].1 - own).abs() < 1e-4,
                "{} vs {own}",
                s[0].capabilities[0].1
            );
        }
    }
    // Both tasks' items in one call (prompts interleaved, batches across tasks) score the same.
    let items: Vec<(&Prompt, &str)> = all_pairs
        .iter()
        .flat_map(|p| {
            [
                (&p.prompt, p.chosen.as_str()),
                (&p.prompt, p.rejected.as_str()),
            ]
        })
        .collect();
    let together = model.score_items(&items, 3).unwrap();
    assert_eq!(together.len(), one_by_one.len());
    for (t, &o) in together.iter().zip(&one_by_one) {
        assert!((t.reward - o).abs() < 1e-4, "{} vs {o}", t.reward);
    }
    assert!(model.score_items(&[], 3).unwrap().is_empty());
    assert!(
        (right as f64 / 32.0 - report.routed_dev_accuracy).abs() < 1e-9,
        "{right}/32 vs {}",
        report.routed_dev_accuracy
    );
    assert!((routed_right as f64 / 32.0 - report.router_dev_accuracy).abs() < 1e-9);
    assert!(report.model_dir.join(SPEC_FILE).is_file());
    assert!(root.join("run/report.md").is_file());

    // A rerun reads every feature from the cache.
    let again = train(&recipe, &request).unwrap();
    assert!(
        again
            .cache
            .iter()
            .all(|(_, s)| matches!(s, rm_multiobj::features::CacheStatus::Hit)),
        "{:?}",
        again.cache
    );
    assert_eq!(again.tasks, report.tasks);
    std::fs::remove_dir_all(&root).ok();
}

#[test]
fn bad_recipes_and_missing_experts_are_named() {
    let root = tmp("dmoerm-bad");
    let mut r = recipe(&root);
    r.tasks[1].name = "alpha".into();
    assert!(
        r.validate()
            .unwrap_err()
            .to_string()
            .contains("\"alpha\" appears twice")
    );
    let mut r = recipe(&root);
    r.tasks[0].experts[1].capability = "one".into();
    assert!(
        r.validate()
            .unwrap_err()
            .to_string()
            .contains("capability \"one\" appears twice")
    );
    let mut r = recipe(&root);
    r.tasks[0].experts.clear();
    assert!(r.validate().unwrap_err().to_string().contains("no experts"));

    // Data present, expert folders absent: the error names the task and the capability.
    write_task(&root.join("alpha-train.jsonl"), 4, 1..16, "w40", "w41", 0);
    write_task(&root.join("alpha-dev.jsonl"), 4, 1..16, "w40", "w41", 3);
    write_task(&root.join("beta-train.jsonl"), 4, 20..36, "w43", "w42", 0);
    write_task(&root.join("beta-dev.jsonl"), 4, 20..36, "w43", "w42", 3);
    let request = RunRequest {
        data_dir: root.clone(),
        models_dir: root.clone(),
        device: rm_core::device::test_device(),
        verbose: false,
    };
    let err = format!("{:#}", train(&recipe(&root), &request).unwrap_err());
    assert!(err.contains("task \"alpha\", capability \"one\""), "{err}");
    std::fs::remove_dir_all(&root).ok();
}
