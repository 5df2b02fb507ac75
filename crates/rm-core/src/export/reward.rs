//! Reward model → Hugging Face.
//!
//! - Decoder RMs (last-token pooling) → `LlamaForSequenceClassification`: the backbone under
//!   `model.*`, the head as `score.weight` `[K, D]`; `num_labels` = K, `id2label` = the attribute
//!   names, `pad_token_id` a token no rendered text ends with (transformers pools the last token
//!   that is not `pad_token_id`, plumbline the last token of the attention mask). Its score layer
//!   has no bias, so a head whose bias is not 0 (after folding a normalization) is refused.
//! - Encoder RMs → a sentence-transformers folder: the BERT backbone at the root (`BertModel`),
//!   `1_Pooling` (mean, cls or lasttoken, as the spec pools), `2_Dense` (K outputs, identity
//!   activation, the head's weight and bias). `BertForSequenceClassification` is not used: it
//!   pools `[CLS]` through BERT's pooler (dense + tanh), which plumbline's heads do not have, so
//!   its math never matches.
//!
//! With [`RewardScale::Normalized`], `(r − μ) / σ` is folded into the head: `W' = W / σ`,
//! `b' = (b − μ) / σ`.

use std::path::Path;

use burn::module::Param;
use burn::nn::Linear;
use burn::tensor::{Device, Tensor, TensorData};
use serde_json::{Value, json};

use super::{
    ExportError, ExportOptions, RewardScale, llama_config_json, model_card, run_facts,
    tokenizer_config_json, write_json, write_text, write_tokenizer,
};
use crate::chat::{ChatTemplate, IM_END};
use crate::checkpoint::{self, ParamSlot, param_host};
use crate::lora;
use crate::models::llama::CausalLm;
use crate::models::pooling::Pooling;
use crate::models::reward::{
    BASE_IS_THIS_FOLDER, Backbone, BackboneKind, RewardModel, RewardModelBundle, SPEC_FILE,
    ST_DENSE_WEIGHTS, hf_names,
};
use crate::models::safetensors::SafetensorsWeights;
use crate::models::weights::{HostTensor, WeightSource};

/// The head as HF stores it: `weight` `[K, D]` row-major, `bias` `[K]`.
#[derive(Clone, Debug, PartialEq)]
pub struct HfHead {
    pub weight: Vec<f32>,
    pub bias: Vec<f32>,
    pub k: usize,
    pub d: usize,
}

/// The head of `model` in HF layout, with the normalization folded in when `scale` asks.
pub fn hf_head(
    bundle: &RewardModelBundle,
    scale: RewardScale,
    dir: &Path,
) -> Result<HfHead, ExportError> {
    let w: HostTensor = param_host(&bundle.model.head.weight)?; // burn [D, K]
    let (d, k) = (w.shape[0], w.shape[1]);
    let mut weight = crate::models::transpose(&w.values, d, k); // [K, D]
    let mut bias = match &bundle.model.head.bias {
        Some(b) => param_host(b)?.values,
        None => vec![0.0; k],
    };
    if scale == RewardScale::Normalized {
        let Some(norm) = &bundle.spec.normalization else {
            return Err(ExportError::NoNormalization(dir.to_path_buf()));
        };
        for j in 0..k {
            let (mu, sigma) = (norm.mean[j] as f64, norm.std[j] as f64);
            for x in &mut weight[j * d..(j + 1) * d] {
                *x = (*x as f64 / sigma) as f32;
            }
            bias[j] = ((bias[j] as f64 - mu) / sigma) as f32;
        }
    }
    Ok(HfHead { weight, bias, k, d })
}

/// `model` with its head replaced by `head` (HF layout).
pub fn with_head(model: RewardModel, head: &HfHead, device: &Device) -> RewardModel {
    let burn_weight = crate::models::transpose(&head.weight, head.k, head.d); // [D, K]
    RewardModel {
        backbone: model.backbone,
        head: Linear {
            weight: Param::from_tensor(Tensor::from_data(
                TensorData::new(burn_weight, [head.d, head.k]),
                device,
            )),
            bias: Some(Param::from_tensor(Tensor::from_data(
                TensorData::new(head.bias.clone(), [head.k]),
                device,
            ))),
        },
    }
}

/// Tokens tried, in order, as the HF pad token when the spec's pad token ends every text.
const PAD_CANDIDATES: [&str; 6] = [
    "<|endoftext|>",
    "<pad>",
    "<|pad|>",
    "<|end_of_text|>",
    "</s>",
    "<unk>",
];

/// The token every text of `template` ends with, if the template closes responses with one.
fn closing_token(bundle: &RewardModelBundle) -> Result<Option<u32>, ExportError> {
    Ok(match bundle.spec.template {
        ChatTemplate::ChatMl => bundle.tokenizer.encode(IM_END, false)?.last().copied(),
        ChatTemplate::HhTranscript | ChatTemplate::Plain => None,
    })
}

/// The pad id transformers can use: the spec's, unless the template ends every text with it.
pub fn hf_pad_id(bundle: &RewardModelBundle, dir: &Path) -> Result<u32, ExportError> {
    let pad = bundle.spec.pad_id;
    let Some(closing) = closing_token(bundle)? else {
        return Ok(pad);
    };
    if closing != pad {
        return Ok(pad);
    }
    PAD_CANDIDATES
        .iter()
        .filter_map(|t| bundle.tokenizer.token_to_id(t))
        .find(|&id| id != closing)
        .ok_or_else(|| ExportError::PadEndsTexts {
            dir: dir.to_path_buf(),
            template: bundle.spec.template,
            id: pad,
            token: bundle
                .tokenizer
                .inner()
                .id_to_token(pad)
                .unwrap_or_default(),
        })
}

/// Loads the reward-model folder `dir` and writes its HF export into `staging`; returns the
/// architecture and the load hints.
pub(crate) fn write(
    dir: &Path,
    staging: &Path,
    options: &ExportOptions,
    device: &Device,
) -> Result<(String, Vec<String>), ExportError> {
    let bundle = RewardModelBundle::load(dir, device)?;
    write_bundle(&bundle, dir, staging, options.rewards)
}

/// Writes `bundle` (loaded from `dir`) as an HF folder into `staging`.
pub fn write_bundle(
    bundle: &RewardModelBundle,
    dir: &Path,
    staging: &Path,
    scale: RewardScale,
) -> Result<(String, Vec<String>), ExportError> {
    let spec = &bundle.spec;
    match (spec.kind, spec.pooling) {
        (BackboneKind::Llama, Pooling::LastToken) => write_llama(bundle, dir, staging, scale),
        (BackboneKind::Bert, pooling) => {
            write_sentence_transformers(bundle, dir, staging, scale, pooling)
        }
        (BackboneKind::Llama, pooling) => Err(ExportError::UnsupportedPooling {
            dir: dir.to_path_buf(),
            kind: BackboneKind::Llama,
            pooling,
            reason: "transformers' decoder heads (LlamaForSequenceClassification) pool the last non-pad token only",
        }),
    }
}

/// The decoder the spec names as base (for its config and special ids).
pub fn base_lm(bundle: &RewardModelBundle) -> Result<CausalLm, ExportError> {
    CausalLm::load(&bundle.spec.base, &bundle.device).map_err(|e| {
        ExportError::Model(e.context(format!(
            "reading the backbone config of {}",
            bundle.spec.base.display()
        )))
    })
}

/// The model with LoRA adapters merged into the backbone.
pub fn merged(bundle: &RewardModelBundle) -> RewardModel {
    match &bundle.spec.lora {
        Some(_) => lora::merge(&bundle.model),
        None => bundle.model.clone(),
    }
}

/// The exported `reward_model.json`: the folder is its own base, LoRA merged, the
/// normalization kept only when the rewards stay raw.
fn exported_spec(
    bundle: &RewardModelBundle,
    scale: RewardScale,
    pad_id: u32,
    staging: &Path,
) -> Result<(), ExportError> {
    let mut spec = bundle.spec.clone();
    spec.base = BASE_IS_THIS_FOLDER.into();
    spec.lora = None;
    spec.pad_id = pad_id;
    if scale == RewardScale::Normalized {
        spec.normalization = None;
    }
    let value = serde_json::to_value(&spec).map_err(anyhow::Error::from)?;
    write_json(&staging.join(SPEC_FILE), &value)
}

fn scale_sentence(scale: RewardScale, spec_has_norm: bool) -> String {
    match scale {
        RewardScale::Raw => format!(
            "**Rewards are raw**: the head's output, what `plumb score --rm <source>` prints (its default `--transform raw`).{}",
            if spec_has_norm {
                " The normalization measured at training time is in `reward_model.json` (`normalization`); `(r − mean) / std` gives `plumb score --transform normalized`."
            } else {
                ""
            }
        ),
        RewardScale::Normalized => "**Rewards are normalized**: `(r − mean) / std` with the statistics measured at training time folded into the head's weight and bias, what `plumb score --rm <source> --transform normalized` prints.".to_string(),
    }
}

pub fn common_card_facts(bundle: &RewardModelBundle, dir: &Path) -> String {
    let spec = &bundle.spec;
    let mut out = format!(
        "## How texts are scored\n\n- attributes (outputs, in order): {:?}\n- template: `{:?}` (the tokenizer's `chat_template` renders the same text from `[{{user}}, {{assistant}}]` messages)\n- at most {} tokens, truncated on the {:?} (`truncation_side`), special tokens added\n- source folder: `{}`\n",
        spec.attributes,
        spec.template,
        spec.max_len,
        spec.truncation,
        dir.display()
    );
    if let Some(norm) = &spec.normalization {
        out.push_str(&format!(
            "- normalization measured on {} texts: mean {:?}, std {:?}\n",
            norm.count, norm.mean, norm.std
        ));
    }
    out.push('\n');
    out.push_str(&run_facts(dir));
    out
}

fn write_llama(
    bundle: &RewardModelBundle,
    dir: &Path,
    staging: &Path,
    scale: RewardScale,
) -> Result<(String, Vec<String>), ExportError> {
    let head = hf_head(bundle, scale, dir)?;
    if head.bias.iter().any(|&b| b != 0.0) {
        return Err(ExportError::BiasNotRepresentable {
            dir: dir.to_path_buf(),
            bias: head.bias.clone(),
            what: match scale {
                RewardScale::Raw => "the trained head's",
                RewardScale::Normalized => "(b − mean) / std, the normalization folded in",
            },
            hint: match scale {
                RewardScale::Normalized => {
                    "export the raw rewards instead (no --normalized; a Bradley–Terry head's bias stays 0) and normalize after scoring with the mean and std the export's reward_model.json keeps"
                }
                RewardScale::Raw => {
                    "a head trained with a bias cannot be exported to this architecture"
                }
            },
        });
    }
    let pad = hf_pad_id(bundle, dir)?;
    let lm = base_lm(bundle)?;
    let model = with_head(merged(bundle), &head, &bundle.device);
    // HF's score layer has no bias (it is 0 here).
    let names = |slot: &ParamSlot<'_>| {
        if slot.path == "head.bias" {
            None
        } else {
            hf_names(slot)
        }
    };
    checkpoint::save_safetensors(&model, &staging.join("model.safetensors"), &names)?;
    let mut config = llama_config_json(
        &lm.config,
        "LlamaForSequenceClassification",
        lm.bos_id,
        lm.eos_id,
        Some(pad),
    );
    let attributes = &bundle.spec.attributes;
    config["num_labels"] = json!(attributes.len());
    config["id2label"] = attributes
        .iter()
        .enumerate()
        .map(|(i, a)| (i.to_string(), json!(a)))
        .collect::<serde_json::Map<_, _>>()
        .into();
    config["label2id"] = attributes
        .iter()
        .enumerate()
        .map(|(i, a)| (a.clone(), json!(i)))
        .collect::<serde_json::Map<_, _>>()
        .into();
    write_json(&staging.join("config.json"), &config)?;
    write_tokenizer(&bundle.tokenizer, pad, &staging.join("tokenizer.json"))?;
    write_json(
        &staging.join("tokenizer_config.json"),
        &tokenizer_config_json(
            &bundle.tokenizer,
            bundle.spec.template,
            Some(bundle.spec.max_len),
            bundle.spec.truncation,
            lm.bos_id,
            lm.eos_id,
            pad,
        ),
    )?;
    exported_spec(bundle, scale, pad, staging)?;
    let pad_note = if pad != bundle.spec.pad_id {
        format!(
            " (the source's pad token, id {}, closes every rendered text, so the export pads with id {pad}; padding never changes plumbline's rewards)",
            bundle.spec.pad_id
        )
    } else {
        String::new()
    };
    let body = format!(
        "A plumbline reward model: a Llama-family decoder pooled at the last real token, with a linear head of {} output(s).\n\n{}\n\n## Loading\n\n```python\nfrom transformers import AutoModelForSequenceClassification, AutoTokenizer\ntok = AutoTokenizer.from_pretrained(PATH)\nmodel = AutoModelForSequenceClassification.from_pretrained(PATH)\ntext = tok.apply_chat_template([{{\"role\": \"user\", \"content\": prompt}}, {{\"role\": \"assistant\", \"content\": response}}], tokenize=False)\nbatch = tok([text], return_tensors=\"pt\", padding=True, truncation=True)\nrewards = model(**batch).logits  # [batch, {}]\n```\n\n`pad_token_id` = {pad}{pad_note}: transformers pools the last token that is not the pad token.\nIn plumbline: `plumb score --rm PATH --input rows.jsonl`.\n\n{}",
        head.k,
        scale_sentence(scale, bundle.spec.normalization.is_some()),
        head.k,
        common_card_facts(bundle, dir),
    );
    write_text(
        &staging.join("README.md"),
        &model_card(
            "Reward model (LlamaForSequenceClassification)",
            "transformers",
            &["reward-model", "text-classification"],
            &body,
        ),
    )?;
    Ok((
        "LlamaForSequenceClassification".into(),
        vec![
            "transformers: AutoModelForSequenceClassification.from_pretrained(OUT)".into(),
            "plumbline: plumb score --rm OUT --input ROWS.jsonl".into(),
        ],
    ))
}

/// BERT's pooler (`pooler.dense.*`), which plumbline does not use, copied from the base folder
/// when it has one, so that transformers' `BertModel` loads a complete checkpoint.
fn add_base_pooler(base: &Path, weights: &Path) -> Result<(), ExportError> {
    const POOLER: [&str; 2] = ["pooler.dense.weight", "pooler.dense.bias"];
    let Ok(base_source) = SafetensorsWeights::open(base) else {
        return Ok(());
    };
    if !POOLER.iter().all(|n| base_source.contains(n)) {
        return Ok(());
    }
    let written = SafetensorsWeights::open(weights)?;
    let mut tensors = Vec::new();
    for name in written.names() {
        let t = written.tensor(&name)?;
        tensors.push((name, t));
    }
    for name in POOLER {
        tensors.push((name.to_string(), base_source.tensor(name)?));
    }
    drop(written);
    checkpoint::save_host_tensors(weights, &tensors)?;
    Ok(())
}

fn write_sentence_transformers(
    bundle: &RewardModelBundle,
    dir: &Path,
    staging: &Path,
    scale: RewardScale,
    pooling: Pooling,
) -> Result<(String, Vec<String>), ExportError> {
    let head = hf_head(bundle, scale, dir)?;
    let model = merged(bundle);
    let Backbone::Bert(_) = &model.backbone else {
        unreachable!("write_sentence_transformers takes BERT reward models");
    };
    // The backbone at the root, as transformers' BertModel names it; the head goes to 2_Dense.
    let names = |slot: &ParamSlot<'_>| {
        if slot.path.starts_with("head.") {
            None
        } else {
            hf_names(slot)
        }
    };
    let root_weights = staging.join("model.safetensors");
    checkpoint::save_safetensors(&model, &root_weights, &names)?;
    add_base_pooler(&bundle.spec.base, &root_weights)?;
    checkpoint::save_host_tensors(
        &staging.join(ST_DENSE_WEIGHTS),
        &[
            (
                "linear.weight".into(),
                HostTensor {
                    shape: vec![head.k, head.d],
                    values: head.weight.clone(),
                },
            ),
            (
                "linear.bias".into(),
                HostTensor {
                    shape: vec![head.k],
                    values: head.bias.clone(),
                },
            ),
        ],
    )?;
    // The backbone's config.json, as its base folder has it.
    let base_config = bundle.spec.base.join("config.json");
    let text = std::fs::read_to_string(&base_config).map_err(super::io(&base_config))?;
    let mut config: Value = serde_json::from_str(&text)
        .map_err(|e| anyhow::anyhow!("{}: invalid JSON: {e}", base_config.display()))?;
    config["architectures"] = json!(["BertModel"]);
    write_json(&staging.join("config.json"), &config)?;
    let pad = bundle.spec.pad_id;
    write_tokenizer(&bundle.tokenizer, pad, &staging.join("tokenizer.json"))?;
    let mut tok_config = tokenizer_config_json(
        &bundle.tokenizer,
        bundle.spec.template,
        Some(bundle.spec.max_len),
        bundle.spec.truncation,
        None,
        None,
        pad,
    );
    tok_config["model_max_length"] = json!(bundle.spec.max_len);
    write_json(&staging.join("tokenizer_config.json"), &tok_config)?;
    write_json(
        &staging.join("modules.json"),
        &json!([
            {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.base.modules.transformer.Transformer"},
            {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.sentence_transformer.modules.pooling.Pooling"},
            {"idx": 2, "name": "2", "path": "2_Dense", "type": "sentence_transformers.base.modules.dense.Dense"},
        ]),
    )?;
    write_json(
        &staging.join("sentence_bert_config.json"),
        &json!({
            "transformer_task": "feature-extraction",
            "modality_config": {"text": {"method": "forward", "method_output_name": "last_hidden_state"}},
            "module_output_name": "token_embeddings",
        }),
    )?;
    write_json(
        &staging.join("config_sentence_transformers.json"),
        &json!({
            "model_type": "SentenceTransformer",
            "prompts": {},
            "default_prompt_name": null,
            "similarity_fn_name": null,
        }),
    )?;
    let mode = match pooling {
        Pooling::Mean => "mean",
        Pooling::Cls => "cls",
        Pooling::LastToken => "lasttoken",
    };
    write_json(
        &staging.join("1_Pooling/config.json"),
        &json!({"embedding_dimension": head.d, "pooling_mode": mode, "include_prompt": true}),
    )?;
    write_json(
        &staging.join("2_Dense/config.json"),
        &json!({
            "in_features": head.d,
            "out_features": head.k,
            "bias": true,
            "activation_function": "torch.nn.modules.linear.Identity",
            "module_input_name": "sentence_embedding",
            "module_output_name": "sentence_embedding",
        }),
    )?;
    exported_spec(bundle, scale, pad, staging)?;
    let body = format!(
        "A plumbline reward model: a BERT encoder, {mode} pooling, a linear head of {} output(s), as a sentence-transformers model (Transformer → Pooling({mode}) → Dense({}, identity)) whose `encode` returns the rewards.\n\n{}\n\n## Loading\n\n```python\nfrom sentence_transformers import SentenceTransformer\nmodel = SentenceTransformer(PATH)\nrewards = model.encode([text])  # [batch, {}]; text = the rendered prompt + response\n```\n\nThe text is the tokenizer's `chat_template` applied to `[{{user}}, {{assistant}}]` messages. The backbone alone loads as `transformers.AutoModel.from_pretrained(PATH)` (BERT's pooler is not part of it: plumbline's heads read the pooled hidden states, so `BertForSequenceClassification`, which adds the pooler's dense + tanh, would score differently).\nIn plumbline: `plumb score --rm PATH --input rows.jsonl`.\n\n{}",
        head.k,
        head.k,
        scale_sentence(scale, bundle.spec.normalization.is_some()),
        head.k,
        common_card_facts(bundle, dir),
    );
    write_text(
        &staging.join("README.md"),
        &model_card(
            "Reward model (sentence-transformers)",
            "sentence-transformers",
            &["reward-model", "sentence-transformers"],
            &body,
        ),
    )?;
    Ok((
        "SentenceTransformer".into(),
        vec![
            "sentence-transformers: SentenceTransformer(OUT).encode(texts)".into(),
            "plumbline: plumb score --rm OUT --input ROWS.jsonl".into(),
        ],
    ))
}
