//! Policy → Hugging Face.
//!
//! - Fully fine-tuned policies, and LoRA policies with `merge_lora`: one `LlamaForCausalLM`
//!   folder (`config.json`, `model.safetensors` f32 with HF names, `generation_config.json`,
//!   tokenizer). A GGUF base is written dequantized; tied embeddings stay tied
//!   (`tie_word_embeddings`, no `lm_head.weight`).
//! - LoRA policies without `merge_lora`: the folder is a PEFT adapter (`adapter_config.json`
//!   naming its base, `adapter_model.safetensors`, tokenizer) with the base written as
//!   `LlamaForCausalLM` into its `base/` subfolder; `PeftModel.from_pretrained(base, OUT)` loads
//!   it, and so does plumbline through the `policy.json` written beside it.

use std::path::Path;

use burn::tensor::Device;
use serde_json::{Value, json};

use super::{
    ExportError, ExportOptions, llama_config_json, model_card, run_facts, tokenizer_config_json,
    write_json, write_text, write_tokenizer,
};
use crate::checkpoint::{self, ParamSlot, TensorName};
use crate::lora::{self, ADAPTER_CONFIG, PEFT_PREFIX};
use crate::models::llama::{self, CausalLm, LlamaModel};
use crate::models::policy_folder::{POLICY_SPEC_FILE, Policy};
use crate::tokenize::TruncationSide;

/// The subfolder of an adapter export that holds the base model.
pub const BASE_SUBFOLDER: &str = "base";

fn llama_names(slot: &ParamSlot<'_>) -> Option<TensorName> {
    Some(TensorName {
        name: llama::hf_name(slot.path),
        transpose: slot.is_linear_weight(),
    })
}

/// Writes `model` (no adapters) with `lm`'s config and tokenizer as a `LlamaForCausalLM` folder.
fn write_causal_lm(
    model: &LlamaModel,
    lm: &CausalLm,
    template: crate::chat::ChatTemplate,
    max_len: Option<usize>,
    dir: &Path,
) -> Result<(), ExportError> {
    checkpoint::save_safetensors(model, &dir.join("model.safetensors"), &llama_names)?;
    let pad = lm.tokenizer.pad_id();
    write_json(
        &dir.join("config.json"),
        &llama_config_json(
            &lm.config,
            "LlamaForCausalLM",
            lm.bos_id,
            lm.eos_id,
            Some(pad),
        ),
    )?;
    write_json(
        &dir.join("generation_config.json"),
        &json!({"bos_token_id": lm.bos_id, "eos_token_id": lm.eos_id, "pad_token_id": pad}),
    )?;
    write_tokenizer(&lm.tokenizer, pad, &dir.join("tokenizer.json"))?;
    write_json(
        &dir.join("tokenizer_config.json"),
        &tokenizer_config_json(
            &lm.tokenizer,
            template,
            max_len,
            TruncationSide::Left,
            lm.bos_id,
            lm.eos_id,
            pad,
        ),
    )
}

fn card_body(policy: &Policy, dir: &Path, how: &str) -> String {
    format!(
        "A plumbline policy (Llama-family decoder){}.\n\n{how}\n\n## Prompts\n\n- template: `{:?}` (the tokenizer's `chat_template`; `add_generation_prompt=True` gives the prompt plumbline continues)\n- trained on at most {} prompt + completion tokens\n- base model: `{}`\n- source folder: `{}`\n\n{}",
        match &policy.spec.lora {
            Some(l) => format!(
                ", LoRA rank {} alpha {} on {:?}",
                l.rank, l.alpha, l.target_modules
            ),
            None => ", fully fine-tuned".into(),
        },
        policy.spec.template,
        policy.spec.max_len,
        policy.spec.base.display(),
        dir.display(),
        run_facts(dir)
    )
}

/// Loads the policy folder `dir` and writes its HF export into `staging` (`out` is where it
/// will live: an adapter export's `adapter_config.json` and `policy.json` name `out/base`).
pub(crate) fn write(
    dir: &Path,
    staging: &Path,
    out: &Path,
    options: &ExportOptions,
    device: &Device,
) -> Result<(String, Vec<String>), ExportError> {
    let policy = Policy::load(dir, device)?;
    let spec = &policy.spec;
    match (&spec.lora, options.merge_lora) {
        (None, _) | (Some(_), true) => {
            let model = match &spec.lora {
                Some(_) => lora::merge(&policy.lm.model),
                None => policy.lm.model.clone(),
            };
            write_causal_lm(
                &model,
                &policy.lm,
                spec.template,
                Some(spec.max_len),
                staging,
            )?;
            let how = format!(
                "{}\n\n## Loading\n\n```python\nfrom transformers import AutoModelForCausalLM, AutoTokenizer\ntok = AutoTokenizer.from_pretrained(PATH)\nmodel = AutoModelForCausalLM.from_pretrained(PATH)\n```\n\nIn plumbline: `plumb generate --model PATH --prompt ...`, `plumb logprobs --model PATH --text ...`.",
                if spec.lora.is_some() {
                    "The LoRA adapters are merged into the weights (`W + (alpha/r)·B·A`)."
                } else {
                    ""
                }
            );
            write_text(
                &staging.join("README.md"),
                &model_card(
                    "Policy (LlamaForCausalLM)",
                    "transformers",
                    &["text-generation"],
                    &card_body(&policy, dir, &how),
                ),
            )?;
            Ok((
                "LlamaForCausalLM".into(),
                vec![
                    "transformers: AutoModelForCausalLM.from_pretrained(OUT)".into(),
                    "plumbline: plumb generate --model OUT --prompt ...".into(),
                ],
            ))
        }
        (Some(lora_config), false) => {
            // The adapters, in PEFT's layout, naming the base written beside them.
            lora::save_adapters(
                &policy.lm.model,
                lora_config,
                staging,
                &llama_names,
                PEFT_PREFIX,
            )?;
            let base_out = out.join(BASE_SUBFOLDER);
            let config_path = staging.join(ADAPTER_CONFIG);
            let text = std::fs::read_to_string(&config_path).map_err(super::io(&config_path))?;
            let mut adapter: Value = serde_json::from_str(&text).map_err(anyhow::Error::from)?;
            adapter["base_model_name_or_path"] = json!(base_out.display().to_string());
            adapter["task_type"] = json!("CAUSAL_LM");
            write_json(&config_path, &adapter)?;
            // The base, dequantized when it is a GGUF file.
            let base = CausalLm::load(&spec.base, device).map_err(|e| {
                e.context(format!(
                    "loading the base model {} named by {}",
                    spec.base.display(),
                    dir.join(POLICY_SPEC_FILE).display()
                ))
            })?;
            let base_dir = staging.join(BASE_SUBFOLDER);
            std::fs::create_dir_all(&base_dir).map_err(super::io(&base_dir))?;
            write_causal_lm(&base.model, &base, spec.template, None, &base_dir)?;
            write_text(
                &base_dir.join("README.md"),
                &model_card(
                    "Base model (LlamaForCausalLM)",
                    "transformers",
                    &["text-generation"],
                    &format!(
                        "The base of the adapter in the parent folder: `{}`, written in f32 with HF names.",
                        spec.base.display()
                    ),
                ),
            )?;
            // The tokenizer beside the adapter (as PEFT folders carry it) and a policy.json, so
            // that plumbline reads the folder as the policy it was.
            let pad = policy.lm.tokenizer.pad_id();
            write_tokenizer(&policy.lm.tokenizer, pad, &staging.join("tokenizer.json"))?;
            write_json(
                &staging.join("tokenizer_config.json"),
                &tokenizer_config_json(
                    &policy.lm.tokenizer,
                    spec.template,
                    None,
                    TruncationSide::Left,
                    policy.lm.bos_id,
                    policy.lm.eos_id,
                    pad,
                ),
            )?;
            let mut exported = spec.clone();
            exported.base = base_out.clone();
            write_json(
                &staging.join(POLICY_SPEC_FILE),
                &serde_json::to_value(&exported).map_err(anyhow::Error::from)?,
            )?;
            let how = format!(
                "A PEFT LoRA adapter; its base is written in `{BASE_SUBFOLDER}/` (`adapter_config.json` names it by the absolute path `{}`: edit `base_model_name_or_path` and `policy.json`'s `base` after moving the folder).\n\n## Loading\n\n```python\nfrom transformers import AutoModelForCausalLM, AutoTokenizer\nfrom peft import PeftModel\nbase = AutoModelForCausalLM.from_pretrained(PATH + \"/{BASE_SUBFOLDER}\")\nmodel = PeftModel.from_pretrained(base, PATH)\ntok = AutoTokenizer.from_pretrained(PATH)\n```\n\nIn plumbline: `plumb generate --model PATH --prompt ...` (reads `policy.json`).",
                base_out.display()
            );
            write_text(
                &staging.join("README.md"),
                &model_card(
                    "Policy (PEFT LoRA adapter over LlamaForCausalLM)",
                    "peft",
                    &["text-generation", "lora"],
                    &card_body(&policy, dir, &how),
                ),
            )?;
            Ok((
                "PeftModel over LlamaForCausalLM".into(),
                vec![
                    format!(
                        "peft: PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(\"{}\"), OUT)",
                        base_out.display()
                    ),
                    "plumbline: plumb generate --model OUT --prompt ...".into(),
                ],
            ))
        }
    }
}
