//! DPO on the real SmolLM2 policy (LoRA): ChatML encoding of HH-RLHF pairs, the reference equal
//! to the policy before training (sigmoid loss ln 2), learning over a few steps, and the policy
//! folder (PEFT adapters, no copy of the base) loading back to the same evaluation.

use policy_opt::preference::data::encode_pairs;
use policy_opt::preference::task::DpoTask;
use policy_opt::{PreferenceRecipe, train_preference_policy};
use rm_core::burn::module::Module;
use rm_core::device::test_device;
use rm_core::models::policy_folder::Policy;
use rm_core::paths::for_tests::{data_dir, models_dir};
use rm_core::train::{RunMode, TrainTask};
use rm_pipeline::TrainRequest;

fn recipe(out: &std::path::Path) -> PreferenceRecipe {
    let text = format!(
        r#"
[model]
policy = "{policy}"
max_len = 96
lora = {{ rank = 8, alpha = 16.0, target_modules = ["q_proj", "v_proj"] }}

[data]
train = {{ source = "hh-rlhf", split = "dev", limit = 2 }}
eval = {{ source = "hh-rlhf", split = "dev", limit = 2 }}

[objective]
beta = 0.1

[train]
epochs = 4
batch_size = 2
micro_batch_size = 2
lr = 2e-3
weight_decay = 0.0
warmup_ratio = 0.0
schedule = "constant"
seed = 1
out_dir = "{out}"
"#,
        policy = models_dir().join("smollm2").display(),
        out = out.display()
    );
    rm_core::recipe::parse(&text, "test", &[]).unwrap()
}

#[test]
fn dpo_on_smollm2_lora_learns_and_its_policy_folder_loads_back() {
    let out = std::env::temp_dir().join(format!("plumbline-dpo-{}", std::process::id()));
    std::fs::remove_dir_all(&out).ok();
    let recipe = recipe(&out);
    let request = TrainRequest {
        data_dir: data_dir(),
        models_dir: models_dir(),
        device: test_device(),
        mode: RunMode::Fresh,
        progress: false,
    };

    // Prompts in ChatML, each completion closed by <|im_end|>.
    let policy = Policy::build(&recipe.model, &test_device()).unwrap();
    let pairs = recipe.data.eval.load(&data_dir()).unwrap();
    let encoded = encode_pairs(&policy, &pairs, "dev").unwrap();
    let tokenizer = &policy.lm.tokenizer;
    for p in &encoded {
        let text = tokenizer.decode(&p.chosen.ids, false).unwrap();
        assert!(text.ends_with("<|im_end|>"), "{text}");
        let first = p.chosen.completion.iter().position(|&c| c).unwrap();
        let prompt = tokenizer.decode(&p.chosen.ids[..first], false).unwrap();
        assert!(
            prompt.ends_with("<|im_start|>assistant\n"),
            "the completion starts after the assistant opener: {prompt:?}"
        );
    }

    let report = train_preference_policy(recipe.clone(), &request).unwrap();
    let before = report.initial_eval.metrics["loss"];
    let after = report.final_eval.metrics["loss"];
    assert!((before - std::f64::consts::LN_2).abs() < 1e-6, "{before}");
    assert!(
        after < 0.5,
        "DPO loss on its training pairs {before} → {after}"
    );
    assert!(report.final_eval.metrics["reward_margin"] > 0.0);

    // The folder: adapters and spec, not the base.
    let dir = &report.final_dir;
    for f in [
        "adapter_model.safetensors",
        "adapter_config.json",
        "policy.json",
    ] {
        assert!(dir.join(f).is_file(), "{f}");
    }
    assert!(!dir.join("model.safetensors").exists());
    let loaded = Policy::load(dir, &test_device()).unwrap();
    let reference = rm_core::policy::reference_policy(&loaded.lm.model).unwrap();
    let model = loaded.lm.model.clone();
    let mut task = DpoTask::new(
        encoded.clone(),
        encoded,
        recipe.objective.clone(),
        loaded,
        Some(reference),
        8,
    )
    .unwrap();
    let again = task.evaluate(&model.valid()).unwrap().metrics["loss"];
    assert!((again - after).abs() < 1e-4, "reloaded {again} vs {after}");
    std::fs::remove_dir_all(&out).ok();
}
