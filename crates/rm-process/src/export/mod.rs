//! PRMs out to the Hugging Face ecosystem in TRL's PRM layout; every other model folder goes to
//! [`rm_core::export::export`].
//!
//! TRL's `PRMTrainer` (Uesato et al. 2022, "Solving Math Word Problems With Process- and
//! Outcome-Based Feedback"; TRL `trl/trainer/prm_trainer.py`) trains an
//! `AutoModelForTokenClassification` with 2 labels (0 = the step is wrong, 1 = correct) on
//! `prompt_ids · (step₁ ids · sep ids) · (step₂ ids · sep ids) · …`, the label of each step on
//! the last token of its separator, every other position ignored (−100). A step's probability of
//! being correct is `softmax(z)₁` at that token.
//!
//! A one-pass plumbline PRM has one logit `z = w·h_{end(i)} + b` read at exactly that token
//! ([`crate::model::PrmShape::OnePass`]) and `p = σ(z)`. It is exported as
//! `LlamaForTokenClassification` with `num_labels = 2` and the score layer
//! `W = [0; w]`, `b = [0; b]`, so that `softmax(z)₁ = σ(z − 0) = σ(z)`: the same probability at
//! the same token (LoRA adapters merged into the backbone). The step separator is recorded as
//! `step_separator` in `config.json` and `tokenizer_config.json` (TRL keeps it only in its
//! `PRMConfig`; a TRL user passes it back as `PRMConfig(step_separator=...)`).
//!
//! The prompt is the backbone's chat template with the generation prompt opened (the
//! tokenizer's `chat_template` with `add_generation_prompt=True`), tokenized with special
//! tokens; each step is tokenized together with its separator (`tok(step + sep,
//! add_special_tokens=False)`), as plumbline reads it; the model card says so.
//!
//! The window shape ([`crate::model::PrmShape::Window`]: one pooled `problem [SEP] steps₁..ᵢ`
//! sequence per step) has no token-classification equivalent and is refused.
//!
//! The export loads back into plumbline ([`crate::ProcessRewardModel::load`]) with the same step
//! scores: its `reward_model.json` lists the two labels and is its own base, its `prm.json`
//! says [`PrmHead::TwoLabel`], which loads as the one logit `z₁ − z₀`.

use std::path::{Path, PathBuf};

use rm_core::burn::tensor::Device;
use rm_core::export::reward::{HfHead, base_lm, hf_head, merged, with_head};
use rm_core::export::{
    ExportError, ExportOptions, ExportReport, RewardScale, export_folder, llama_config_json,
    model_card, run_facts, tokenizer_config_json, write_json, write_text, write_tokenizer,
};
use rm_core::models::reward::{
    BASE_IS_THIS_FOLDER, BackboneKind, RewardModelBundle, SPEC_FILE, hf_names,
};
use serde_json::json;

use crate::model::{PRM_SPEC_FILE, PrmHead, PrmShape, PrmSpec, ProcessRewardModel};

/// The architecture of an exported PRM.
pub const PRM_ARCHITECTURE: &str = "LlamaForTokenClassification";
/// The exported labels, in TRL's order (label 1 = the step is correct).
pub const PRM_LABELS: [&str; 2] = ["wrong", "correct"];

/// Why an export failed. Each message names the folder involved.
#[derive(Debug, thiserror::Error)]
pub enum PrmExportError {
    #[error(
        "{}: a window PRM scores one pooled `problem [SEP] steps₁..ᵢ` sequence per step; TRL's PRM layout (a token-classification model read once at each step's separator) has no equivalent, so it is not exported (it would score differently there); train a one-pass PRM (`[prm] shape = {{ kind = \"one-pass\" }}`, a decoder backbone) to export",
        .0.display()
    )]
    WindowShape(PathBuf),
    #[error(
        "{}: a PRM on a {kind:?} backbone has no LlamaForTokenClassification equivalent",
        .dir.display()
    )]
    Backbone { dir: PathBuf, kind: BackboneKind },
    #[error(
        "{}: --normalized applies to reward models; a PRM's outputs are step probabilities and it stores no normalization",
        .0.display()
    )]
    Normalized(PathBuf),
    #[error(transparent)]
    Export(#[from] ExportError),
}

/// Exports `model` into the HF folder `out`: a PRM folder (`prm.json`) in TRL's PRM layout (see
/// the module docs), any other folder by [`rm_core::export::export`]. A PRM's LoRA adapters are
/// always merged (`options.merge_lora` is for policies).
pub fn export(
    model: &Path,
    out: &Path,
    options: &ExportOptions,
    device: &Device,
) -> Result<ExportReport, PrmExportError> {
    if !model.join(PRM_SPEC_FILE).is_file() {
        return Ok(rm_core::export::export(model, out, options, device)?);
    }
    if options.rewards == RewardScale::Normalized {
        return Err(PrmExportError::Normalized(model.to_path_buf()));
    }
    let prm = ProcessRewardModel::load(model, device).map_err(ExportError::Model)?;
    let separator = match &prm.spec.shape {
        PrmShape::OnePass { separator } => separator.clone(),
        PrmShape::Window { .. } => return Err(PrmExportError::WindowShape(model.to_path_buf())),
    };
    if prm.bundle.spec.kind != BackboneKind::Llama {
        return Err(PrmExportError::Backbone {
            dir: model.to_path_buf(),
            kind: prm.bundle.spec.kind,
        });
    }
    Ok(export_folder(model, out, options.force, |staging, _| {
        write_trl_prm(&prm.bundle, &separator, model, staging)
    })?)
}

/// The one-logit head `[1, D]` as TRL's two labels: row 0 (wrong) and its bias 0, row 1
/// (correct) the trained head.
pub fn two_label_head(head: &HfHead) -> HfHead {
    let mut weight = vec![0.0; head.d];
    weight.extend_from_slice(&head.weight);
    HfHead {
        weight,
        bias: vec![0.0, head.bias[0]],
        k: 2,
        d: head.d,
    }
}

fn write_trl_prm(
    bundle: &RewardModelBundle,
    separator: &str,
    dir: &Path,
    staging: &Path,
) -> Result<(String, Vec<String>), ExportError> {
    let one = hf_head(bundle, RewardScale::Raw, dir)?;
    let head = two_label_head(&one);
    let lm = base_lm(bundle)?;
    let model = with_head(merged(bundle), &head, &bundle.device);
    rm_core::checkpoint::save_safetensors(&model, &staging.join("model.safetensors"), &hf_names)?;
    let pad = bundle.spec.pad_id;
    let mut config = llama_config_json(
        &lm.config,
        PRM_ARCHITECTURE,
        lm.bos_id,
        lm.eos_id,
        Some(pad),
    );
    config["num_labels"] = json!(2);
    config["id2label"] = json!({"0": PRM_LABELS[0], "1": PRM_LABELS[1]});
    config["label2id"] = json!({PRM_LABELS[0]: 0, PRM_LABELS[1]: 1});
    config["classifier_dropout"] = json!(0.0);
    config["step_separator"] = json!(separator);
    write_json(&staging.join("config.json"), &config)?;
    write_tokenizer(&bundle.tokenizer, pad, &staging.join("tokenizer.json"))?;
    let mut tok_config = tokenizer_config_json(
        &bundle.tokenizer,
        bundle.spec.template,
        None,
        bundle.spec.truncation,
        lm.bos_id,
        lm.eos_id,
        pad,
    );
    tok_config["step_separator"] = json!(separator);
    write_json(&staging.join("tokenizer_config.json"), &tok_config)?;
    // Loads back into plumbline: its own base, LoRA merged, the two labels, a two-label head.
    let attribute = bundle
        .spec
        .attributes
        .first()
        .cloned()
        .unwrap_or_else(|| "step_correct".into());
    let mut spec = bundle.spec.clone();
    spec.base = BASE_IS_THIS_FOLDER.into();
    spec.lora = None;
    spec.normalization = None;
    spec.attributes = PRM_LABELS.iter().map(|s| s.to_string()).collect();
    write_json(
        &staging.join(SPEC_FILE),
        &serde_json::to_value(&spec).map_err(anyhow::Error::from)?,
    )?;
    let prm_spec = PrmSpec {
        format_version: crate::model::PRM_SPEC_VERSION,
        shape: PrmShape::OnePass {
            separator: separator.to_string(),
        },
        head: PrmHead::TwoLabel { attribute },
    };
    write_json(
        &staging.join(PRM_SPEC_FILE),
        &serde_json::to_value(&prm_spec).map_err(anyhow::Error::from)?,
    )?;
    let body = format!(
        "A plumbline process reward model (PRM) in TRL's PRM layout: a Llama-family decoder with a token-classification head of 2 labels (0 = the step is wrong, 1 = correct), read at the last token of each step's separator. A step's probability of being correct is `softmax(logits)[1]` there.\n\n## Scoring a solution\n\n```python\nfrom transformers import AutoModelForTokenClassification, AutoTokenizer\ntok = AutoTokenizer.from_pretrained(PATH)\nmodel = AutoModelForTokenClassification.from_pretrained(PATH).eval()\nsep = model.config.step_separator  # {separator:?}\nprefix = tok.apply_chat_template([{{\"role\": \"user\", \"content\": problem}}], add_generation_prompt=True, tokenize=False)\nids = tok(prefix, add_special_tokens=True)[\"input_ids\"]\nends = []\nfor step in steps:\n    ids += tok(step + sep, add_special_tokens=False)[\"input_ids\"]\n    ends.append(len(ids) - 1)\nprobs = model(input_ids=torch.tensor([ids])).logits[0].softmax(-1)[ends, 1]\n```\n\nEach step is tokenized together with its separator, as plumbline reads it (TRL's `PRMTrainer` tokenizes the step and `step_separator` apart, which gives the same ids whenever no merge crosses the step's end). The whole solution is read in one pass: causal attention means a step's score sees only the problem and the steps up to it. In TRL: `PRMConfig(step_separator={separator:?})`. In plumbline: `plumb eval-prm --prm PATH ...` or `plumb score-prm --prm PATH --input steps.jsonl`.\n\n{}",
        card_facts(bundle, separator, dir),
    );
    write_text(
        &staging.join("README.md"),
        &model_card(
            "Process reward model (LlamaForTokenClassification, TRL PRM layout)",
            "transformers",
            &["process-reward-model", "token-classification", "trl", "prm"],
            &body,
        ),
    )?;
    Ok((
        PRM_ARCHITECTURE.into(),
        vec![
            "transformers: AutoModelForTokenClassification.from_pretrained(OUT); p(step correct) = logits.softmax(-1)[..., 1] at each step's last separator token".into(),
            "plumbline: plumb score-prm --prm OUT --input STEPS.jsonl".into(),
        ],
    ))
}

/// The model card's facts: how texts are read, the source, the training run.
fn card_facts(bundle: &RewardModelBundle, separator: &str, dir: &Path) -> String {
    format!(
        "## How solutions are read\n\n- step separator: {separator:?} (`step_separator` in config.json and tokenizer_config.json)\n- template: `{:?}` (the tokenizer's `chat_template`)\n- scoring reads the whole solution; training used at most {} tokens per sequence\n- source folder: `{}`\n\n{}",
        bundle.spec.template,
        bundle.spec.max_len,
        dir.display(),
        run_facts(dir),
    )
}

#[cfg(test)]
mod tests;
