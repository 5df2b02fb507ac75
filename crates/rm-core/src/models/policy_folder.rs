//! Policy folders: a causal LM being aligned (DPO, PPO/GRPO), how its prompts and completions
//! become tokens, and the folder a trained policy is written to and read back from.
//!
//! A policy folder holds
//! - `policy.json` ([`PolicySpec`]): the base model's absolute path, the chat template, the
//!   length limit and the LoRA config, if any;
//! - LoRA policies: PEFT's `adapter_config.json` + `adapter_model.safetensors` (HF module names
//!   under `base_model.model.`, as PEFT's `PeftModel.from_pretrained` reads them); the base
//!   weights stay in the base model;
//! - fully fine-tuned policies: `model.safetensors` with HF tensor names (`model.layers.0…`);
//! - `tokenizer.json`.
//!
//! A prompt and a completion are rendered by the chat template (`render_prompt`, then
//! `render_response`, which closes the assistant turn) and tokenized separately (the prompt with
//! the tokenizer's special tokens, the completion without), as TRL's trainers do, so the completion's tokens are exactly those of the response. Too-long
//! sequences lose prompt tokens from the left first (the completion is what is trained), then
//! completion tokens from the right; one prompt token always stays, so the first completion
//! token is predicted from something.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use burn::tensor::Device;
use serde::{Deserialize, Serialize};

use crate::chat::ChatTemplate;
use crate::checkpoint::{self, ParamSlot, TensorName, write_bytes_atomically};
use crate::lora::{self, LoraConfig, PEFT_PREFIX};
use crate::models::action_heads;
use crate::models::llama::{self, CausalLm, LlamaModel};
use crate::tokenize::Sequence;
use crate::types::Prompt;

/// The spec file of a policy folder.
pub const POLICY_SPEC_FILE: &str = "policy.json";
/// Version of [`PolicySpec`] written by this build.
pub const POLICY_SPEC_VERSION: u32 = 1;
/// The weights of a fully fine-tuned policy.
pub const POLICY_WEIGHTS: &str = "model.safetensors";

/// The `[model]` section of a policy recipe.
///
/// ```toml
/// [model]
/// policy = "models/smollm2"       # HF folder, .gguf file or a folder holding one
/// max_len = 384                   # prompt + completion tokens
/// template = "chat-ml"            # default
/// lora = { rank = 16, alpha = 32.0, target_modules = ["q_proj", "v_proj"] }   # absent: full FT
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyModelConfig {
    /// The model to start from: an HF folder (config.json, *.safetensors, tokenizer.json), a
    /// `.gguf` file, or a folder holding one; or a policy folder, whose training continues (see
    /// [`Policy::build`]).
    pub policy: PathBuf,
    /// Tokens per prompt + completion.
    #[serde(default = "default_max_len")]
    pub max_len: usize,
    /// How a prompt and a completion become text (default ChatML, SmolLM2's own).
    #[serde(default)]
    pub template: Option<ChatTemplate>,
    /// LoRA adapters (the base frozen, the reference = the adapters switched off); absent:
    /// every weight is trained and the reference is a frozen copy.
    #[serde(default)]
    pub lora: Option<LoraConfig>,
}

fn default_max_len() -> usize {
    512
}

/// `policy.json`: what rebuilds a trained policy.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicySpec {
    pub format_version: u32,
    /// The base model (absolute path): the architecture, the tokenizer and, for LoRA policies,
    /// the frozen weights.
    pub base: PathBuf,
    pub template: ChatTemplate,
    pub max_len: usize,
    #[serde(default)]
    pub lora: Option<LoraConfig>,
}

impl PolicySpec {
    /// Parses and validates `policy.json`: this build's format version, `max_len` ≥ 4, an
    /// absolute base path, a valid LoRA config.
    pub fn from_json(text: &str) -> Result<Self> {
        let spec: PolicySpec = serde_json::from_str(text)?;
        if spec.format_version != POLICY_SPEC_VERSION {
            bail!(
                "format_version {} is not {POLICY_SPEC_VERSION}, the one this build reads",
                spec.format_version
            );
        }
        if spec.max_len < 4 {
            bail!("max_len {} is too small (at least 4)", spec.max_len);
        }
        if !spec.base.is_absolute() {
            bail!(
                "base {} is not an absolute path (policy folders name their base absolutely)",
                spec.base.display()
            );
        }
        if let Some(lora) = &spec.lora {
            lora.validate().context("lora")?;
        }
        Ok(spec)
    }
}

/// A policy: the causal LM (with adapters when LoRA) and its spec. Clones share the weights.
#[derive(Clone, Debug)]
pub struct Policy {
    pub lm: CausalLm,
    pub spec: PolicySpec,
}

/// HF names of a [`LlamaModel`]'s parameters (linear weights stored transposed, PyTorch's
/// `[out, in]`).
fn llama_names(slot: &ParamSlot<'_>) -> Option<TensorName> {
    Some(TensorName {
        name: llama::hf_name(slot.path),
        transpose: slot.is_linear_weight(),
    })
}

fn absolute(path: &Path) -> Result<PathBuf> {
    std::path::absolute(path).with_context(|| format!("resolving {}", path.display()))
}

impl Policy {
    /// A fresh policy from `config`: the model loaded on `device`, LoRA adapters attached (base
    /// frozen) when configured. When `config.policy` is a policy folder (a trained policy, e.g.
    /// the last round of iterative DPO), training continues it: a LoRA folder's adapters are
    /// loaded and stay trainable over its frozen base (so the reference, the adapters switched
    /// off, is that base), `config.lora` must then be absent or the folder's own; a fully
    /// fine-tuned folder's weights are loaded whole.
    pub fn build(config: &PolicyModelConfig, device: &Device) -> Result<Self> {
        if config.max_len < 4 {
            bail!("model.max_len {} is too small (at least 4)", config.max_len);
        }
        let base = absolute(&config.policy)?;
        if base.join(POLICY_SPEC_FILE).is_file() {
            if action_heads::read_spec(&base)?.is_some() {
                bail!(
                    "model.policy {} has action heads (MAH-DPO, {}): training cannot continue a multi-head policy folder; sample from it (plumb generate --head-weights) or start from its base {}",
                    config.policy.display(),
                    action_heads::ACTION_HEADS_SPEC,
                    Self::read_spec(&base)?.base.display()
                );
            }
            let mut policy = Self::load(&base, device)
                .with_context(|| format!("model.policy {}", config.policy.display()))?;
            if config.lora.is_some() && config.lora != policy.spec.lora {
                bail!(
                    "model.lora differs from the adapters of the policy folder {} ({:?}); leave model.lora out to continue training them",
                    config.policy.display(),
                    policy.spec.lora
                );
            }
            if let Some(lora) = &policy.spec.lora {
                policy.lm.model.set_adapter_dropout(lora.dropout);
            }
            policy.spec.max_len = config.max_len;
            if let Some(template) = config.template {
                policy.spec.template = template;
            }
            return Ok(policy);
        }
        let mut lm = CausalLm::load(&base, device)
            .with_context(|| format!("model.policy {}", config.policy.display()))?;
        let positions = lm.config.max_position_embeddings;
        if config.max_len > positions {
            bail!(
                "model.max_len {} exceeds the model's {positions} positions (max_position_embeddings)",
                config.max_len
            );
        }
        if let Some(lora_config) = &config.lora {
            lm.model = lora::apply_routed(lm.model, lora_config).context("model.lora")?;
            lm.model.set_adapter_dropout(lora_config.dropout);
        }
        Ok(Self {
            lm,
            spec: PolicySpec {
                format_version: POLICY_SPEC_VERSION,
                base,
                template: config.template.unwrap_or(ChatTemplate::ChatMl),
                max_len: config.max_len,
                lora: config.lora.clone(),
            },
        })
    }

    /// `prompt` and `response` as one sequence, the response's tokens flagged as the
    /// completion (see the module docs for rendering and truncation). An empty response is an
    /// error: nothing would be predicted.
    pub fn encode(&self, prompt: &Prompt, response: &str) -> Result<Sequence> {
        let mut rows = self.encode_shared(prompt, &[response])?;
        Ok(rows.remove(0))
    }

    /// `prompt` followed by each of `responses`, as [`Policy::encode`] gives them, except that
    /// the prompt is cut once, to fit beside the longest response: every row carries the same
    /// prompt tokens. This is what a preference pair needs (both responses answer the same
    /// context; TRL's concatenated chosen/rejected batch cuts a pair's prompt columns once),
    /// and what lets [`crate::shared_prompt`] run the prompt once for all of them. An empty
    /// response is an error naming it (1-based).
    pub fn encode_shared(&self, prompt: &Prompt, responses: &[&str]) -> Result<Vec<Sequence>> {
        let template = self.spec.template;
        let tokenizer = &self.lm.tokenizer;
        // The prompt with the tokenizer's special tokens (BOS where its post-processor adds
        // one), the completion without: a continuation of the same text.
        let prompt_ids = tokenizer.encode(&template.render_prompt(prompt)?, true)?;
        if prompt_ids.is_empty() {
            bail!("the prompt renders to no tokens");
        }
        let max_len = self.spec.max_len;
        let completions = responses
            .iter()
            .enumerate()
            .map(|(i, response)| {
                let mut completion =
                    tokenizer.encode(&template.render_response(response), false)?;
                if completion.is_empty() {
                    match responses.len() {
                        1 => bail!("the response is empty: a completion needs at least one token"),
                        _ => bail!(
                            "response {} is empty: a completion needs at least one token",
                            i + 1
                        ),
                    }
                }
                completion.truncate(max_len - 1);
                Ok(completion)
            })
            .collect::<Result<Vec<_>>>()?;
        let longest = completions.iter().map(Vec::len).max().unwrap_or(0);
        let keep_prompt = (max_len - longest).min(prompt_ids.len());
        let prompt_ids = &prompt_ids[prompt_ids.len() - keep_prompt..];
        Ok(completions
            .into_iter()
            .map(|completion| {
                let mut ids = prompt_ids.to_vec();
                ids.extend_from_slice(&completion);
                let mut flags = vec![false; prompt_ids.len()];
                flags.resize(ids.len(), true);
                Sequence {
                    ids,
                    completion: flags,
                }
            })
            .collect())
    }

    /// Writes `model` (this policy's module after training) with this policy's spec and
    /// tokenizer into folder `dir`, file by file atomically (the trainer swaps whole folders in).
    pub fn save(&self, model: &LlamaModel, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        match &self.spec.lora {
            Some(config) => {
                lora::save_adapters(model, config, dir, &llama_names, PEFT_PREFIX)?;
            }
            None => {
                checkpoint::save_safetensors(model, &dir.join(POLICY_WEIGHTS), &llama_names)?;
            }
        }
        let tokenizer_json = self
            .lm
            .tokenizer
            .inner()
            .to_string(false)
            .map_err(|e| anyhow::anyhow!("serializing the tokenizer: {e}"))?;
        write_bytes_atomically(&dir.join("tokenizer.json"), tokenizer_json.as_bytes())?;
        write_bytes_atomically(
            &dir.join(POLICY_SPEC_FILE),
            serde_json::to_string_pretty(&self.spec)?.as_bytes(),
        )
    }

    /// Reads `dir/policy.json`.
    pub fn read_spec(dir: &Path) -> Result<PolicySpec> {
        crate::paths::require_folder(dir, "a policy folder written by `plumb train-po`")?;
        let path = dir.join(POLICY_SPEC_FILE);
        let text = std::fs::read_to_string(&path).with_context(|| {
            format!(
                "reading {} (is {} a policy folder written by `plumb train-po`?)",
                path.display(),
                dir.display()
            )
        })?;
        PolicySpec::from_json(&text).with_context(|| format!("{}", path.display()))
    }

    /// Loads a folder written by [`Policy::save`] onto `device`. A folder with action heads
    /// (MAH-DPO, [`action_heads`]) loads with its heads mixed by their default weights.
    pub fn load(dir: &Path, device: &Device) -> Result<Self> {
        Self::load_steered(dir, device, None)
    }

    /// [`Policy::load`] with the action heads mixed by `weights` (by head name) instead of
    /// their defaults. Weights for a folder without action heads are an error.
    pub fn load_steered(
        dir: &Path,
        device: &Device,
        weights: Option<&action_heads::HeadWeights>,
    ) -> Result<Self> {
        let spec = Self::read_spec(dir)?;
        let mut lm = CausalLm::load(&spec.base, device).with_context(|| {
            format!(
                "loading the base model {} named by {}",
                spec.base.display(),
                dir.join(POLICY_SPEC_FILE).display()
            )
        })?;
        lm.model = match &spec.lora {
            Some(_) => lora::load_adapters(lm.model, dir, &llama_names, PEFT_PREFIX)?.0,
            None => {
                checkpoint::load_safetensors(lm.model, &dir.join(POLICY_WEIGHTS), &llama_names)?
            }
        };
        action_heads::install_mixture(&mut lm.model, dir, weights, device)?;
        Ok(Self { lm, spec })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::test_device;
    use crate::models::llama::tests::{
        tiny_config, tiny_model, tiny_tokenizer, tiny_weights, write_tiny_hf_folder,
    };
    use crate::policy::CausalPolicy;
    use crate::tokenize::{PaddingSide, TokenBatch};

    /// A tiny policy as [`Policy::build`] would make it, without a model folder.
    pub(crate) fn tiny_policy(lora: Option<LoraConfig>, max_len: usize) -> Policy {
        let device = test_device();
        let mut model = tiny_model(&device);
        if let Some(c) = &lora {
            model = lora::apply_routed(model, c).unwrap();
        }
        Policy {
            lm: CausalLm {
                model,
                config: tiny_config(),
                tokenizer: tiny_tokenizer(),
                bos_id: None,
                eos_id: None,
                device,
            },
            spec: PolicySpec {
                format_version: POLICY_SPEC_VERSION,
                base: PathBuf::from("/nonexistent"),
                template: ChatTemplate::Plain,
                max_len,
                lora,
            },
        }
    }

    #[test]
    fn encoding_flags_the_response_and_truncates_the_prompt_first() {
        let policy = tiny_policy(None, 64);
        let prompt = Prompt::Text("t3 t4 t5 t6".into());
        let full = policy.encode(&prompt, "t7 t8").unwrap();
        let p = policy.lm.tokenizer.encode("t3 t4 t5 t6", true).unwrap();
        let c = policy.lm.tokenizer.encode("t7 t8", false).unwrap();
        assert_eq!(full.ids, [p.clone(), c.clone()].concat());
        assert_eq!(full.completion.iter().filter(|&&f| f).count(), c.len());
        assert!(full.completion[p.len()..].iter().all(|&f| f));

        // Room for one prompt token: the prompt loses its left end.
        let short = Policy {
            spec: PolicySpec {
                max_len: c.len() + 1,
                ..policy.spec.clone()
            },
            ..tiny_policy(None, 0)
        };
        let s = short.encode(&prompt, "t7 t8").unwrap();
        assert_eq!(s.ids, [&p[p.len() - 1..], &c[..]].concat());
        // No room at all: the completion is cut on the right, one prompt token stays.
        let tiny = Policy {
            spec: PolicySpec {
                max_len: 2,
                ..policy.spec.clone()
            },
            ..tiny_policy(None, 0)
        };
        let t = tiny.encode(&prompt, "t7 t8").unwrap();
        assert_eq!(t.ids, vec![p[p.len() - 1], c[0]]);
        assert_eq!(
            c.len(),
            2,
            "the test needs a completion longer than one token"
        );
        assert_eq!(t.completion, [false, true]);
        let err = policy.encode(&prompt, "").unwrap_err().to_string();
        assert!(err.contains("empty"), "{err}");

        // Responses encoded together share one prompt cut: room for the longest one.
        let long = policy.lm.tokenizer.encode("t7 t8 t9", false).unwrap();
        let pair = Policy {
            spec: PolicySpec {
                max_len: long.len() + 2,
                ..policy.spec.clone()
            },
            ..tiny_policy(None, 0)
        };
        let both = pair.encode_shared(&prompt, &["t7 t8", "t7 t8 t9"]).unwrap();
        let kept = &p[p.len() - 2..];
        assert_eq!(both[0].ids, [kept, &c[..]].concat());
        assert_eq!(both[1].ids, [kept, &long[..]].concat());
        assert_eq!(
            both[0].completion,
            [vec![false; 2], vec![true; c.len()]].concat()
        );
        // Alone, the shorter response would keep one more prompt token.
        assert_eq!(
            pair.encode(&prompt, "t7 t8").unwrap().ids.len(),
            kept.len() + c.len() + 1
        );
        let err = pair
            .encode_shared(&prompt, &["t7", ""])
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("response 2 is empty"), "{err}");
    }

    #[test]
    fn saved_folders_load_back_with_identical_log_probs() {
        let device = test_device();
        for lora in [None, Some(LoraConfig::new(2, 4.0, &["q_proj", "v_proj"]))] {
            let mut policy = tiny_policy(lora.clone(), 32);
            // Move the trained weights off their initial values so the check means something.
            if lora.is_some() {
                policy.lm.model = crate::lora::tests::random_b(policy.lm.model);
            }
            let dir = crate::checkpoint::tests::temp_dir("policy-folder");
            // The loader reads the base named by the spec: the tiny model (seed 11) as an HF
            // folder. A fully trained policy differs from it everywhere (seed 12).
            let base = dir.join("base");
            write_tiny_hf_folder(&base, 11);
            if lora.is_none() {
                let c = tiny_config();
                policy.lm.model =
                    LlamaModel::from_source(&tiny_weights(&c, 12), &c, &device).unwrap();
            }
            policy.spec.base = base;
            let out = dir.join("policy");
            policy.save(&policy.lm.model, &out).unwrap();
            let loaded = Policy::load(&out, &device).unwrap();
            assert_eq!(loaded.spec, policy.spec);
            let seq = policy
                .encode(&Prompt::Text("t3 t4".into()), "t5 t6 t7")
                .unwrap();
            let batch = TokenBatch::pad(&[seq], 0, PaddingSide::Right).unwrap();
            let lp = |m: &LlamaModel| {
                m.completion_logprobs(
                    batch.ids_tensor(&device),
                    batch.attention_tensor(&device),
                    batch.completion_tensor(&device),
                    false,
                )
                .unwrap()
                .token_logprobs
                .into_data()
                .try_to_vec::<f32>()
                .unwrap()
            };
            let trained = lp(&policy.lm.model);
            assert_eq!(trained, lp(&loaded.lm.model), "lora {lora:?}");
            // `CausalLm::load` (what `plumb generate --model DIR` calls) reads policy folders,
            // adapters merged.
            let merged = CausalLm::load(&out, &device).unwrap();
            assert!(lora::adapter_paths(&merged.model).is_empty());
            for (a, b) in trained.iter().zip(lp(&merged.model)) {
                assert!((a - b).abs() < 1e-5, "merged {b} vs {a}");
            }
        }
    }

    #[test]
    fn policy_specs_are_validated() {
        let good = serde_json::json!({
            "format_version": 1, "base": "/models/smollm2", "template": "chat-ml", "max_len": 64,
            "lora": {"rank": 4, "alpha": 8.0, "target_modules": ["q_proj"]}
        });
        let spec = PolicySpec::from_json(&good.to_string()).unwrap();
        assert_eq!(spec.max_len, 64);
        for (field, value, says) in [
            ("format_version", serde_json::json!(2), "format_version 2"),
            ("max_len", serde_json::json!(2), "too small"),
            ("base", serde_json::json!("models/x"), "absolute"),
            (
                "lora",
                serde_json::json!({"rank": 0, "alpha": 8.0, "target_modules": ["q_proj"]}),
                "rank",
            ),
            ("extra", serde_json::json!(1), "unknown field"),
        ] {
            let mut bad = good.clone();
            bad[field] = value;
            let err = format!("{:#}", PolicySpec::from_json(&bad.to_string()).unwrap_err());
            assert!(err.contains(says), "{field}: {err}");
        }
    }

    #[test]
    fn build_attaches_adapters_and_bounds_max_len_by_the_positions() {
        let device = test_device();
        let dir = crate::checkpoint::tests::temp_dir("policy-build");
        write_tiny_hf_folder(&dir.join("base"), 11);
        let config = |max_len, lora| PolicyModelConfig {
            policy: dir.join("base"),
            max_len,
            template: None,
            lora,
        };
        let lora = LoraConfig::new(2, 4.0, &["q_proj", "v_proj"]);
        let p = Policy::build(&config(64, Some(lora.clone())), &device).unwrap();
        assert_eq!(lora::adapter_paths(&p.lm.model).len(), 4, "2 layers × q, v");
        assert_eq!(p.spec.template, ChatTemplate::ChatMl);
        let full = Policy::build(&config(64, None), &device).unwrap();
        assert!(lora::adapter_paths(&full.lm.model).is_empty());
        let err = format!(
            "{:#}",
            Policy::build(&config(65, None), &device).unwrap_err()
        );
        assert!(err.contains("exceeds the model's 64 positions"), "{err}");
        let bad = LoraConfig::new(2, 4.0, &["nonexistent_proj"]);
        let err = format!(
            "{:#}",
            Policy::build(&config(64, Some(bad)), &device).unwrap_err()
        );
        assert!(err.contains("model.lora"), "{err}");
    }
}
