//! Models out to the Hugging Face ecosystem: `plumb export --model DIR --out HF_DIR`.
//!
//! One file per target:
//! - [`reward`]: reward-model folders (`reward_model.json`) → decoder RMs (last-token pooling) as
//!   `LlamaForSequenceClassification`, encoder RMs as a sentence-transformers folder
//!   (Transformer → Pooling(mean | cls | lasttoken) → Dense(K, identity)) whose `encode` returns
//!   the rewards;
//! - [`policy`]: policy folders (`policy.json`) → `LlamaForCausalLM` (LoRA merged, or a fully
//!   fine-tuned policy), or a PEFT adapter folder with its base written next to it as
//!   `LlamaForCausalLM`.
//!
//! Tensor names come from the model families' own maps ([`crate::models::reward::hf_names`],
//! [`crate::models::llama::hf_name`], [`crate::models::bert::hf_name`]); the HF config fields
//! are written here ([`llama_config_json`]), in one place.
//!
//! Every exported folder also loads back into plumbline (`plumb score --rm`, `plumb generate
//! --model`, `plumb logprobs --model`) with the same outputs: reward-model exports carry a
//! `reward_model.json` whose base is the folder itself
//! ([`crate::models::reward::BASE_IS_THIS_FOLDER`]), adapter exports
//! a `policy.json` naming the base written beside them.
//!
//! The folder is written under a temporary name next to `--out` and renamed into place when
//! complete; a non-empty `--out` is refused unless `force` is set.

pub mod policy;
pub mod reward;

use std::path::{Path, PathBuf};

use burn::tensor::Device;
use serde_json::{Value, json};

use crate::chat::ChatTemplate;
use crate::checkpoint::unique_suffix;
use crate::models::llama::{LlamaConfig, RopeScaling};
use crate::models::policy_folder::POLICY_SPEC_FILE;
use crate::models::pooling::Pooling;
use crate::models::reward::{BackboneKind, SPEC_FILE};
use crate::tokenize::{TextTokenizer, TruncationSide};

/// Why an export failed. Each message names the file or folder involved.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error(
        "{}: holds neither {SPEC_FILE} nor {POLICY_SPEC_FILE}, so it is not a reward-model folder (`plumb train-rm`) or a policy folder (`plumb train-po`)",
        .0.display()
    )]
    NotAModelFolder(PathBuf),
    #[error(
        "{}: the output folder exists and is not empty (pass --force to replace it)",
        .0.display()
    )]
    OutputNotEmpty(PathBuf),
    #[error(
        "{}: the output folder would replace or contain the model folder {}",
        .out.display(), .model.display()
    )]
    OutputOverInput { out: PathBuf, model: PathBuf },
    #[error(
        "{}: a {kind:?} reward model pooled by {pooling:?} has no Hugging Face equivalent ({reason}); it is not exported, since it would score differently there",
        .dir.display()
    )]
    UnsupportedPooling {
        dir: PathBuf,
        kind: BackboneKind,
        pooling: Pooling,
        reason: &'static str,
    },
    #[error(
        "{}: LlamaForSequenceClassification's score layer has no bias, but this head's bias is {bias:?} ({what}), so its rewards would differ from plumbline's by that constant; {hint}",
        .dir.display()
    )]
    BiasNotRepresentable {
        dir: PathBuf,
        bias: Vec<f32>,
        what: &'static str,
        hint: &'static str,
    },
    #[error(
        "{}: --normalized asks for normalized rewards, but {SPEC_FILE} stores no normalization",
        .0.display()
    )]
    NoNormalization(PathBuf),
    #[error(
        "{}: every text the {template:?} template renders ends with token {id} ({token:?}), which is the pad token, and no other pad-like token exists; LlamaForSequenceClassification finds the last token by `input_ids != pad_token_id` and would pool the token before it",
        .dir.display()
    )]
    PadEndsTexts {
        dir: PathBuf,
        template: ChatTemplate,
        id: u32,
        token: String,
    },
    #[error(
        "{}: holds a prm.json, so it is a process reward model; export it with `rm_process::export::export` (what `plumb export` calls), which writes TRL's PRM layout (LlamaForTokenClassification); exported here it would score only the last step",
        .0.display()
    )]
    ProcessRewardModel(PathBuf),
    #[error("{}: {source}", .path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Loading the model or writing its weights (the message names the file).
    #[error(transparent)]
    Model(#[from] anyhow::Error),
}

/// Which rewards an exported reward model gives.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum RewardScale {
    /// The head's output: `plumb score` (its default `--transform raw`) on the source folder.
    #[default]
    Raw,
    /// `(r − μ) / σ` with the stored normalization folded into the head's weight and bias:
    /// `plumb score --transform normalized` on the source folder.
    Normalized,
}

/// What to export and how.
#[derive(Clone, Debug, Default)]
pub struct ExportOptions {
    /// Policies with LoRA adapters: one `LlamaForCausalLM` with the adapters merged, instead of
    /// a PEFT adapter folder plus its base. (Reward models are always merged: the HF heads have
    /// no adapter slot.)
    pub merge_lora: bool,
    /// Replace a non-empty output folder.
    pub force: bool,
    /// Reward models: raw or normalized rewards.
    pub rewards: RewardScale,
}

/// What an export wrote.
#[derive(Clone, Debug, PartialEq)]
pub struct ExportReport {
    /// The output folder.
    pub out: PathBuf,
    /// What transformers loads it as (`LlamaForSequenceClassification`, `SentenceTransformer`,
    /// `LlamaForCausalLM`, `PeftModel over LlamaForCausalLM`).
    pub architecture: String,
    /// Every file written, relative to `out`.
    pub files: Vec<PathBuf>,
    /// How to load it (one line per way).
    pub load_hints: Vec<String>,
}

/// Exports the reward-model or policy folder `model` into the HF folder `out` (see the module
/// docs).
pub fn export(
    model: &Path,
    out: &Path,
    options: &ExportOptions,
    device: &Device,
) -> Result<ExportReport, ExportError> {
    let is_rm = model.join(SPEC_FILE).is_file();
    let is_policy = model.join(POLICY_SPEC_FILE).is_file();
    if !is_rm && !is_policy {
        return Err(ExportError::NotAModelFolder(model.to_path_buf()));
    }
    if model.join(PRM_SPEC_FILE).is_file() {
        return Err(ExportError::ProcessRewardModel(model.to_path_buf()));
    }
    export_folder(model, out, options.force, |staging, out_abs| {
        if is_rm {
            reward::write(model, staging, options, device)
        } else {
            policy::write(model, staging, out_abs, options, device)
        }
    })
}

/// The file that marks a process-reward-model folder (`rm_process`'s `prm.json`); such folders
/// are exported by `rm_process::export`, not here.
const PRM_SPEC_FILE: &str = "prm.json";

/// The frame every export shares: refuses an output over the input or a non-empty one (unless
/// `force`), lets `write(staging, out)` fill a temporary folder beside `out` (it returns the
/// architecture and the load hints) and renames it into place, then lists what was written.
/// `out` is made absolute first.
pub fn export_folder(
    model: &Path,
    out: &Path,
    force: bool,
    write: impl FnOnce(&Path, &Path) -> Result<(String, Vec<String>), ExportError>,
) -> Result<ExportReport, ExportError> {
    let out_abs = absolute(out)?;
    check_output(model, &out_abs, force)?;
    let (architecture, load_hints) = write_folder(&out_abs, |staging| write(staging, &out_abs))?;
    Ok(ExportReport {
        files: list_files(&out_abs)?,
        out: out_abs,
        architecture,
        load_hints,
    })
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ExportError + '_ {
    move |source| ExportError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn absolute(path: &Path) -> Result<PathBuf, ExportError> {
    std::path::absolute(path).map_err(io(path))
}

/// Refuses an output that is the model folder, holds it, or is a non-empty folder (unless
/// `force`).
fn check_output(model: &Path, out: &Path, force: bool) -> Result<(), ExportError> {
    let model_abs = std::fs::canonicalize(model).map_err(io(model))?;
    let out_resolved = match std::fs::canonicalize(out) {
        Ok(p) => p,
        Err(_) => out.to_path_buf(),
    };
    if model_abs.starts_with(&out_resolved) {
        return Err(ExportError::OutputOverInput {
            out: out.to_path_buf(),
            model: model.to_path_buf(),
        });
    }
    if out.exists() {
        if !out.is_dir() {
            return Err(ExportError::OutputNotEmpty(out.to_path_buf()));
        }
        let mut entries = std::fs::read_dir(out).map_err(io(out))?;
        if entries.next().is_some() && !force {
            return Err(ExportError::OutputNotEmpty(out.to_path_buf()));
        }
    }
    Ok(())
}

/// Writes the folder under a temporary name beside `out` and renames it into place (an old
/// `out` is moved aside first and removed after); on failure the temporary folder is removed
/// and `out` is untouched.
fn write_folder<T>(
    out: &Path,
    write: impl FnOnce(&Path) -> Result<T, ExportError>,
) -> Result<T, ExportError> {
    let parent = out.parent().unwrap_or(Path::new("."));
    let name = out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "export".into());
    std::fs::create_dir_all(parent).map_err(io(parent))?;
    let staging = parent.join(format!(".{name}.export-{}", unique_suffix()));
    std::fs::create_dir(&staging).map_err(io(&staging))?;
    let result = write(&staging).and_then(|value| {
        if out.exists() {
            let old = parent.join(format!(".{name}.replaced-{}", unique_suffix()));
            std::fs::rename(out, &old).map_err(io(out))?;
            std::fs::rename(&staging, out).map_err(io(out))?;
            std::fs::remove_dir_all(&old).map_err(io(&old))?;
        } else {
            std::fs::rename(&staging, out).map_err(io(out))?;
        }
        Ok(value)
    });
    if result.is_err() && staging.exists() {
        std::fs::remove_dir_all(&staging).ok();
    }
    result
}

fn list_files(dir: &Path) -> Result<Vec<PathBuf>, ExportError> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).map_err(io(&d))? {
            let path = entry.map_err(io(&d))?.path();
            if path.is_dir() {
                stack.push(path);
            } else if let Ok(rel) = path.strip_prefix(dir) {
                out.push(rel.to_path_buf());
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Writes `value` as pretty JSON to `path`.
pub fn write_json(path: &Path, value: &Value) -> Result<(), ExportError> {
    let text = serde_json::to_string_pretty(value).map_err(anyhow::Error::from)?;
    write_text(path, &text)
}

pub fn write_text(path: &Path, text: &str) -> Result<(), ExportError> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
    }
    std::fs::write(path, text).map_err(io(path))
}

/// The HF `config.json` of a Llama-family model: `architectures`, the shape fields, RoPE, the
/// special ids, f32 weights.
pub fn llama_config_json(
    config: &LlamaConfig,
    architecture: &str,
    bos: Option<u32>,
    eos: Option<u32>,
    pad: Option<u32>,
) -> Value {
    let rope_scaling = match &config.rope_scaling {
        None => Value::Null,
        Some(RopeScaling::Linear { factor }) => json!({"rope_type": "linear", "factor": factor}),
        Some(RopeScaling::Llama3 {
            factor,
            low_freq_factor,
            high_freq_factor,
            original_max_position_embeddings,
        }) => json!({
            "rope_type": "llama3",
            "factor": factor,
            "low_freq_factor": low_freq_factor,
            "high_freq_factor": high_freq_factor,
            "original_max_position_embeddings": original_max_position_embeddings,
        }),
    };
    json!({
        "architectures": [architecture],
        "model_type": "llama",
        "vocab_size": config.vocab_size,
        "hidden_size": config.hidden_size,
        "intermediate_size": config.intermediate_size,
        "num_hidden_layers": config.num_hidden_layers,
        "num_attention_heads": config.num_attention_heads,
        "num_key_value_heads": config.num_key_value_heads,
        "head_dim": config.head_dim,
        "hidden_act": "silu",
        "rms_norm_eps": config.rms_norm_eps,
        "rope_theta": config.rope_theta,
        "rope_scaling": rope_scaling,
        "max_position_embeddings": config.max_position_embeddings,
        "tie_word_embeddings": config.tie_word_embeddings,
        "attention_bias": config.attention_bias,
        "attention_dropout": 0.0,
        "mlp_bias": false,
        "bos_token_id": bos,
        "eos_token_id": eos,
        "pad_token_id": pad,
        "torch_dtype": "float32",
        "dtype": "float32",
        "use_cache": true,
    })
}

/// A Jinja chat template that renders exactly what plumbline's [`ChatTemplate`] renders: a
/// conversation ending in an assistant turn gives the text a reward model scores (prompt then
/// [`ChatTemplate::render_response`]), `add_generation_prompt` the prompt a policy continues.
pub fn chat_template_jinja(template: ChatTemplate) -> &'static str {
    match template {
        ChatTemplate::ChatMl => {
            "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' }}{% if not loop.last or add_generation_prompt %}{{ '\\n' }}{% endif %}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
        }
        ChatTemplate::HhTranscript => {
            "{% for message in messages %}{% if message['role'] == 'user' %}{{ '\\n\\nHuman: ' + message['content'] }}{% elif message['role'] == 'assistant' %}{{ '\\n\\nAssistant: ' + message['content'] }}{% else %}{{ raise_exception('HH transcripts have no ' + message['role'] + ' turns') }}{% endif %}{% endfor %}{% if add_generation_prompt %}{{ '\\n\\nAssistant:' }}{% endif %}"
        }
        ChatTemplate::Plain => {
            "{% for message in messages %}{% if not loop.first %}{{ '\\n\\n' }}{% endif %}{{ message['content'] }}{% endfor %}{% if add_generation_prompt and messages %}{{ '\\n\\n' }}{% endif %}"
        }
    }
}

/// The token text of `id`, when the tokenizer has one.
fn token_text(tokenizer: &TextTokenizer, id: Option<u32>) -> Value {
    match id.and_then(|i| tokenizer.inner().id_to_token(i)) {
        Some(t) => Value::String(t),
        None => Value::Null,
    }
}

/// `tokenizer_config.json`: the fast tokenizer over `tokenizer.json`, the special tokens, the
/// chat template, plumbline's length limit and truncation side, right padding.
pub fn tokenizer_config_json(
    tokenizer: &TextTokenizer,
    template: ChatTemplate,
    max_len: Option<usize>,
    truncation: TruncationSide,
    bos: Option<u32>,
    eos: Option<u32>,
    pad: u32,
) -> Value {
    let mut v = json!({
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": token_text(tokenizer, bos),
        "eos_token": token_text(tokenizer, eos),
        "pad_token": token_text(tokenizer, Some(pad)),
        "padding_side": "right",
        "truncation_side": match truncation {
            TruncationSide::Left => "left",
            TruncationSide::Right => "right",
        },
        "chat_template": chat_template_jinja(template),
        "clean_up_tokenization_spaces": false,
    });
    if let Some(n) = max_len {
        v["model_max_length"] = json!(n);
    }
    for (key, name) in [
        ("unk_token", "[UNK]"),
        ("cls_token", "[CLS]"),
        ("sep_token", "[SEP]"),
        ("mask_token", "[MASK]"),
    ] {
        if tokenizer.token_to_id(name).is_some() {
            v[key] = json!(name);
        }
    }
    v
}

/// `tokenizer.json` with its padding set to `pad` (so transformers and a plumbline reload both
/// read the same pad token), no built-in truncation.
pub fn write_tokenizer(
    tokenizer: &TextTokenizer,
    pad: u32,
    path: &Path,
) -> Result<(), ExportError> {
    let mut inner = tokenizer.inner().clone();
    let pad_token = inner.id_to_token(pad).unwrap_or_default();
    inner.with_padding(Some(tokenizers::PaddingParams {
        pad_id: pad,
        pad_token,
        ..Default::default()
    }));
    inner.with_truncation(None).map_err(|e| {
        ExportError::Model(anyhow::anyhow!(
            "switching off truncation in {}: {e}",
            path.display()
        ))
    })?;
    let text = inner
        .to_string(true)
        .map_err(|e| ExportError::Model(anyhow::anyhow!("serializing {}: {e}", path.display())))?;
    write_text(path, &text)
}

/// The model card's front matter and sections common to every export.
pub fn model_card(title: &str, library: &str, tags: &[&str], body: &str) -> String {
    let tags: String = tags.iter().map(|t| format!("- {t}\n")).collect();
    format!(
        "---\nlibrary_name: {library}\ntags:\n{tags}- plumbline\n---\n\n# {title}\n\n{body}\n\nExported by plumbline's `plumb export` (f32 weights).\n"
    )
}

/// `dir/summary.json` and `dir/recipe.toml` of a training run (the parent of `final/`), for the
/// model card: recipe, data and dev accuracy when they are there.
pub fn run_facts(model: &Path) -> String {
    let mut out = String::new();
    let Some(run) = model.parent() else {
        return out;
    };
    if let Ok(text) = std::fs::read_to_string(run.join("recipe.toml")) {
        out.push_str(&format!(
            "## Training recipe\n\n`{}`:\n\n```toml\n{}\n```\n\n",
            run.join("recipe.toml").display(),
            text.trim_end()
        ));
    }
    if let Ok(text) = std::fs::read_to_string(run.join("summary.json"))
        && let Ok(v) = serde_json::from_str::<Value>(&text)
    {
        out.push_str(&format!(
            "## Training summary\n\n`{}`:\n\n```json\n{}\n```\n\n",
            run.join("summary.json").display(),
            serde_json::to_string_pretty(&v).unwrap_or(text)
        ));
    }
    out
}

#[cfg(test)]
mod tests;
