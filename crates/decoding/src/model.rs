//! The policy being decoded: a causal LM with the template its prompts are rendered with.

use std::path::Path;

use rm_core::burn::tensor::Device;
use rm_core::chat::ChatTemplate;
use rm_core::models::llama::CausalLm;
use rm_core::models::policy_folder::{POLICY_SPEC_FILE, Policy};
use rm_core::types::Prompt;

use crate::error::{DecodeError, Result};

/// A causal LM to decode from, with its chat template and its length limit (prompt + response
/// tokens).
pub struct DecodeModel {
    pub lm: CausalLm,
    pub template: ChatTemplate,
    pub max_len: usize,
    /// GenARM's guide: an autoregressive reward model with the same vocabulary.
    pub guide: Option<CausalLm>,
}

impl DecodeModel {
    /// A model from its parts.
    pub fn new(lm: CausalLm, template: ChatTemplate, max_len: usize) -> Self {
        Self {
            lm,
            template,
            max_len,
            guide: None,
        }
    }

    /// The model with GenARM's guide (a causal LM over the same vocabulary).
    pub fn with_guide(mut self, guide: CausalLm) -> Self {
        self.guide = Some(guide);
        self
    }

    /// Loads a policy folder written by `plumb train-po` (its template and `max_len`, LoRA
    /// adapters merged) or a plain model folder / `.gguf` (ChatML, up to
    /// `min(max_position_embeddings, 512)` tokens), as `plumb generate` and `eval-po` do.
    pub fn load(dir: &Path, device: &Device) -> Result<Self> {
        Self::load_steered(dir, device, None)
    }

    /// [`DecodeModel::load`] with a MAH-DPO policy's action heads mixed by `weights`
    /// ([`rm_core::models::action_heads`]).
    pub fn load_steered(
        dir: &Path,
        device: &Device,
        weights: Option<&rm_core::models::action_heads::HeadWeights>,
    ) -> Result<Self> {
        if !dir.exists() {
            return Err(DecodeError::File {
                path: dir.to_path_buf(),
                reason: "no such policy or model folder".into(),
            });
        }
        let spec = if dir.join(POLICY_SPEC_FILE).is_file() {
            Some(Policy::read_spec(dir).map_err(DecodeError::model)?)
        } else {
            None
        };
        let lm = CausalLm::load_steered(dir, device, weights).map_err(DecodeError::model)?;
        Ok(match spec {
            Some(spec) => Self::new(lm, spec.template, spec.max_len),
            None => {
                let max_len = lm.config.max_position_embeddings.min(512);
                Self::new(lm, ChatTemplate::ChatMl, max_len)
            }
        })
    }

    /// The prompt rendered with the template and tokenized, cut from the left to its last
    /// `max(max_len − max_new_tokens, 1)` tokens so that the response fits.
    pub fn prompt_ids(&self, prompt: &Prompt, max_new_tokens: usize) -> Result<Vec<u32>> {
        let text = self
            .template
            .render_prompt(prompt)
            .map_err(DecodeError::model)?;
        let mut ids = self
            .lm
            .tokenizer
            .encode(&text, true)
            .map_err(DecodeError::model)?;
        let budget = self.max_len.saturating_sub(max_new_tokens).max(1);
        if ids.len() > budget {
            ids.drain(..ids.len() - budget);
        }
        if ids.is_empty() {
            return Err(DecodeError::EmptyInput(
                "a prompt renders to zero tokens".into(),
            ));
        }
        Ok(ids)
    }

    /// The ids that end a response: the tokenizer's end-of-sequence and ChatML's `<|im_end|>`.
    pub fn stop_tokens(&self) -> Vec<u32> {
        self.lm.stop_tokens()
    }

    /// Decoded response text (special tokens skipped, whitespace trimmed): what is scored.
    pub fn text(&self, tokens: &[u32]) -> Result<String> {
        Ok(self
            .lm
            .tokenizer
            .decode(tokens, true)
            .map_err(DecodeError::model)?
            .trim()
            .to_string())
    }
}
