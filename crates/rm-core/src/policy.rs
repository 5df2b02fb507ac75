//! Policy models: what sampling, log-probs, DPO, PPO/GRPO and decoding-time methods run on.
//!
//! - [`CausalPolicy`]: a causal LM as the *module being trained* — hidden states, logits,
//!   completion log-probs, and prefill + one-token steps with a KV cache (its
//!   [`IncrementalDecoder`] supertrait, so [`crate::sampling::generate`] samples from it).
//!   [`LlamaModel`](crate::models::llama::LlamaModel) implements it (LoRA-adapted or not), and
//!   so does the loaded bundle [`CausalLm`](crate::models::llama::CausalLm) by delegating to its
//!   model: a trainer never reloads a model to score or sample.
//! - [`reference_policy`]: the frozen reference of DPO (Rafailov et al., "Direct Preference
//!   Optimization", 2023) and of PPO's KL penalty (Ouyang et al., "Training language models to
//!   follow instructions with human feedback", 2022) as the LoRA-disabled policy, sharing the
//!   base weights instead of copying them.
//! - [`PolicyWithValue`]: a policy and a [`ValueHead`] on the same hidden states (PPO's actor
//!   and critic in one forward pass).

use anyhow::{Result, bail};
use burn::module::Module;
use burn::tensor::{Int, Tensor};

use crate::logprobs::{SequenceLogprobs, head_logprobs, model_sequence_logprobs};
use crate::lora;
use crate::models::heads::ValueHead;
use crate::sampling::IncrementalDecoder;

/// A causal language model on the module being trained. Inputs are padded batches: `input_ids`
/// and `attention_mask` `[B, T]` (1 real, 0 pad; left or right padding). Shapes that disagree
/// are errors, never panics.
pub trait CausalPolicy: IncrementalDecoder {
    /// Last hidden states (after the final norm) `[B, T, D]`: the input of the LM head and of
    /// token-level heads ([`crate::models::heads`]). `T = 0` is an error.
    fn hidden_states(
        &self,
        input_ids: Tensor<2, Int>,
        attention_mask: Tensor<2, Int>,
    ) -> Result<Tensor<3>>;

    /// Logits `[B, T, V]` of hidden states `[B, T, D]` (the LM head).
    fn logits(&self, hidden: Tensor<3>) -> Tensor<3>;

    /// Log-probs of the tokens where `completion_mask` `[B, T]` is 1, each given the tokens
    /// before it: `log softmax(logits[t−1])[ids[t]]`, with masked sums, counts, means and
    /// optionally `logsumexp(2·logits)` (see [`crate::logprobs`]). Differentiable on autodiff
    /// devices. `T < 2` predicts nothing and gives [`SequenceLogprobs::empty`].
    fn completion_logprobs(
        &self,
        input_ids: Tensor<2, Int>,
        attention_mask: Tensor<2, Int>,
        completion_mask: Tensor<2, Int>,
        with_logsumexp_2x: bool,
    ) -> Result<SequenceLogprobs> {
        model_sequence_logprobs(
            self,
            input_ids,
            attention_mask,
            completion_mask,
            with_logsumexp_2x,
        )
    }
}

/// The reference policy of a LoRA-adapted `policy`: the same module with every adapter switched
/// off ([`lora::disabled`]: both factors zero, so each adapted weight computes as exactly its
/// base), frozen (its forward records no graph), on the policy's device so the same input
/// tensors serve both.
///
/// No second copy of the weights: burn parameters and tensors are reference-counted, so the
/// clone shares every base tensor with `policy` (the optimizer only ever replaces the factors,
/// the bases being frozen); only the zeroed factors, `r·(d_in + d_out)` floats per adapted layer,
/// are new. Parameters trained outside the adapters (an unfrozen head) keep their current
/// values. Take it once, before or during training: it does not follow later adapter updates.
///
/// A policy without adapters (full fine-tuning) is an error: its reference has to be a frozen
/// snapshot taken before training (`policy.clone().no_grad()`), which does hold its own copy
/// once the optimizer replaces the policy's weights.
pub fn reference_policy<M: Module>(policy: &M) -> Result<M> {
    if lora::adapter_paths(policy).is_empty() {
        bail!(
            "the policy carries no LoRA adapters, so it has no disabled-adapter reference: \
             keep a frozen snapshot of it taken before training (`policy.clone().no_grad()`)"
        );
    }
    Ok(lora::disabled(policy))
}

/// A policy and a scalar value head on its hidden states: PPO's actor-critic with a shared
/// backbone (as TRL's `AutoModelForCausalLMWithValueHead` and verl's critic-in-actor setups).
#[derive(Module, Debug)]
pub struct PolicyWithValue<P: Module> {
    /// The causal LM.
    pub policy: P,
    /// `D → 1` on the policy's hidden states.
    pub value_head: ValueHead,
}

/// A policy and a separate critic: PPO's actor-critic with its own value model (a causal LM of
/// the same tokenizer, its hidden states read by a scalar head), as OpenRLHF and verl run PPO by
/// default. The critic's weights are all trained (no adapters); the policy's as configured.
#[derive(Module, Debug)]
pub struct PolicyWithCritic<P: Module> {
    /// The causal LM being aligned.
    pub policy: P,
    /// The value model's backbone.
    pub critic: P,
    /// `D_critic → 1` on the critic's hidden states.
    pub value_head: ValueHead,
}

/// The log-probs and values of one [`PolicyWithValue::forward`].
#[derive(Clone, Debug)]
pub struct PolicyValueOutput {
    /// As [`CausalPolicy::completion_logprobs`].
    pub logprobs: SequenceLogprobs,
    /// `[B, T−1]`, aligned with `logprobs.token_logprobs`: `values[:, j]` is the value of the
    /// state after tokens `0..=j`, the one in which token `j + 1` is chosen (TRL's and verl's
    /// alignment). Not masked: multiply by `logprobs.mask`.
    pub values: Tensor<2>,
}

impl<P: Module + CausalPolicy> PolicyWithValue<P> {
    /// Log-probs of the completion tokens and the values of the states that choose them, from
    /// one pass through the backbone. `T < 2` gives empty log-probs and values `[B, 0]`.
    pub fn forward(
        &self,
        input_ids: Tensor<2, Int>,
        attention_mask: Tensor<2, Int>,
        completion_mask: Tensor<2, Int>,
        with_logsumexp_2x: bool,
    ) -> Result<PolicyValueOutput> {
        let [b, t] = input_ids.dims();
        for (what, m) in [
            ("attention", &attention_mask),
            ("completion", &completion_mask),
        ] {
            if m.dims() != [b, t] {
                bail!(
                    "{what} mask is {:?}, expected [{b}, {t}] (the input ids' [B, T])",
                    m.dims()
                );
            }
        }
        if t < 2 {
            let device = input_ids.device();
            return Ok(PolicyValueOutput {
                logprobs: SequenceLogprobs::empty(b, with_logsumexp_2x, &device),
                values: Tensor::zeros([b, 0], &device),
            });
        }
        let hidden = self
            .policy
            .hidden_states(input_ids.clone(), attention_mask)?;
        let values = self
            .value_head
            .forward(hidden.clone().narrow(1, 0, t - 1))?;
        let logprobs = head_logprobs(
            &self.policy,
            hidden,
            input_ids,
            completion_mask,
            with_logsumexp_2x,
        )?;
        Ok(PolicyValueOutput { logprobs, values })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::test_device;
    use crate::lora::LoraConfig;
    use crate::models::heads::ValueHeadConfig;
    use crate::models::llama::tests::{int2, tiny_config, tiny_model, tiny_tokenizer};
    use crate::models::llama::{CausalLm, KvCache, LlamaModel};
    use crate::sampling::{SamplingConfig, argmax, generate};
    use burn::optim::{AdamWConfig, GradientsParams};
    use burn::tensor::Device;

    fn vec<const D: usize>(t: Tensor<D>) -> Vec<f32> {
        t.into_data().try_to_vec::<f32>().unwrap()
    }

    fn max_diff(a: &[f32], b: &[f32]) -> f32 {
        assert_eq!(a.len(), b.len());
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max)
    }

    /// A left-padded batch of three rows, the completion being the last two tokens of each.
    fn batch(device: &Device) -> (Tensor<2, Int>, Tensor<2, Int>, Tensor<2, Int>) {
        (
            int2(
                vec![
                    vec![0, 0, 5, 6, 7, 8],
                    vec![3, 4, 5, 6, 7, 8],
                    vec![0, 9, 10, 11, 12, 13],
                ],
                device,
            ),
            int2(
                vec![vec![0, 0, 1, 1, 1, 1], vec![1; 6], vec![0, 1, 1, 1, 1, 1]],
                device,
            ),
            int2(
                vec![
                    vec![0, 0, 0, 0, 1, 1],
                    vec![0, 0, 0, 0, 1, 1],
                    vec![0, 0, 0, 0, 1, 1],
                ],
                device,
            ),
        )
    }

    fn bundle(model: LlamaModel, device: &Device) -> CausalLm {
        CausalLm {
            model,
            config: tiny_config(),
            tokenizer: tiny_tokenizer(),
            bos_id: None,
            eos_id: None,
            device: device.clone(),
        }
    }

    #[test]
    fn completion_logprobs_on_the_module_equal_the_bundle_and_the_logits_path() {
        let device = test_device();
        let model = tiny_model(&device);
        let (ids, attn, comp) = batch(&device);
        let on_module = model
            .completion_logprobs(ids.clone(), attn.clone(), comp.clone(), true)
            .unwrap();
        let lm = bundle(model.clone(), &device);
        let on_bundle = lm
            .completion_logprobs(ids.clone(), attn.clone(), comp.clone(), true)
            .unwrap();
        let logits = model.forward(ids.clone(), attn);
        let on_logits = crate::logprobs::sequence_logprobs(logits, ids, comp, true).unwrap();
        let tokens = vec(on_module.token_logprobs.clone());
        assert_eq!(tokens, vec(on_bundle.token_logprobs));
        assert!(max_diff(&tokens, &vec(on_logits.token_logprobs)) < 1e-5);
        assert_eq!(vec(on_module.count), [2.0, 2.0, 2.0]);
        // Every sum is a real log-prob sum of two tokens: negative and finite.
        assert!(vec(on_module.sum).iter().all(|s| s.is_finite() && *s < 0.0));
        // A mask of the wrong shape is an error.
        let err = model
            .hidden_states(
                int2(vec![vec![3, 4, 5]], &device),
                int2(vec![vec![1, 1]], &device),
            )
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "attention mask is [1, 2], expected [1, 3] (batch, 0 cached + 3 new positions)"
        );
    }

    #[test]
    fn prefill_and_steps_equal_the_full_forward() {
        let device = test_device();
        let model = tiny_model(&device);
        let (ids, attn, _) = batch(&device);
        let full = vec(model.forward(ids.clone(), attn.clone()));
        let (b, t, v) = (3, 6, 32);
        let prompt = 3;
        let (mut logits, mut cache) = model
            .prefill(
                ids.clone().narrow(1, 0, prompt),
                attn.clone().narrow(1, 0, prompt),
            )
            .unwrap();
        for pos in prompt - 1..t {
            let got = vec(logits.clone());
            let want: Vec<f32> = (0..b)
                .flat_map(|r| full[(r * t + pos) * v..(r * t + pos + 1) * v].to_vec())
                .collect();
            let diff = max_diff(&got, &want);
            assert!(diff < 1e-5, "position {pos}: incremental vs full {diff}");
            if pos + 1 < t {
                logits = model
                    .step(
                        ids.clone().narrow(1, pos + 1, 1),
                        attn.clone().narrow(1, 0, pos + 2),
                        &mut cache,
                    )
                    .unwrap();
            }
        }
        assert_eq!(cache.len(), t);
    }

    #[test]
    fn decoder_misuse_is_an_error_not_a_panic() {
        let device = test_device();
        let model = tiny_model(&device);
        let (ids, attn, _) = batch(&device);
        let (_, mut cache) = model
            .prefill(ids.clone().narrow(1, 0, 3), attn.clone().narrow(1, 0, 3))
            .unwrap();
        let next = ids.clone().narrow(1, 3, 1);
        let err = |r: Result<Tensor<2>>| r.unwrap_err().to_string();
        // The mask must cover the cached positions and the new one.
        assert_eq!(
            err(model.step(next.clone(), attn.clone().narrow(1, 0, 3), &mut cache)),
            "attention mask is [3, 3], expected [3, 4] (batch, 3 cached + 1 new positions)"
        );
        // One token per step.
        assert_eq!(
            err(model.step(
                ids.clone().narrow(1, 3, 2),
                attn.clone().narrow(1, 0, 5),
                &mut cache
            )),
            "a decoding step feeds one token per row, got ids [3, 2]"
        );
        // A cache of another batch size.
        let e = err(model.step(
            next.clone().narrow(0, 0, 2),
            attn.clone().narrow(0, 0, 2).narrow(1, 0, 4),
            &mut cache,
        ));
        assert!(
            e.starts_with("KV cache of layer 0: keys [3, 2, 3, 4]"),
            "{e}"
        );
        // A cache of another model (one layer fewer).
        let mut short = KvCache {
            keys: cache.keys[..1].to_vec(),
            values: cache.values[..1].to_vec(),
        };
        let e = err(model.step(next.clone(), attn.clone().narrow(1, 0, 4), &mut short));
        assert!(e.contains("this model has 2 layers"), "{e}");
        // The failed calls left the cache as it was: a correct step still matches the full pass.
        assert_eq!(cache.len(), 3);
        let logits = vec(model
            .step(next, attn.clone().narrow(1, 0, 4), &mut cache)
            .unwrap());
        let full = vec(model.forward(ids, attn));
        let want: Vec<f32> = (0..3)
            .flat_map(|r| full[(r * 6 + 3) * 32..(r * 6 + 4) * 32].to_vec())
            .collect();
        assert!(max_diff(&logits, &want) < 1e-5);
        // An empty prompt.
        let empty = Tensor::<2, Int>::zeros([1, 0], &device);
        let e = model.prefill(empty.clone(), empty).unwrap_err().to_string();
        assert_eq!(
            e,
            "the Llama decoder needs at least one new token per row, got input ids [1, 0]"
        );
    }

    /// A LoRA policy trained for a few AdamW steps to raise the completion log-probs of
    /// `batch`, with the base's log-probs before LoRA was applied.
    fn trained_lora_policy(device: &Device) -> (LlamaModel, LlamaModel, Vec<f32>) {
        let base = tiny_model(device);
        let (ids, attn, comp) = batch(device);
        let before = vec(base
            .completion_logprobs(ids.clone(), attn.clone(), comp.clone(), false)
            .unwrap()
            .token_logprobs);
        let config = LoraConfig::new(4, 8.0, &["q_proj", "v_proj", "up_proj"]);
        let mut policy = lora::apply(base.clone(), &config).unwrap();
        let mut optim = AdamWConfig::new().init();
        for _ in 0..3 {
            let loss = policy
                .completion_logprobs(ids.clone(), attn.clone(), comp.clone(), false)
                .unwrap()
                .mean
                .sum()
                .neg();
            let grads = GradientsParams::from_grads(loss.backward(), &policy);
            policy = optim.step(5e-2, policy, grads);
        }
        (base, policy, before)
    }

    #[test]
    fn the_reference_policy_is_the_base_without_a_copy() {
        let device = test_device().autodiff();
        let (base, policy, before) = trained_lora_policy(&device);
        let (ids, attn, comp) = batch(&device);
        let lp = |m: &LlamaModel| {
            vec(m
                .completion_logprobs(ids.clone(), attn.clone(), comp.clone(), false)
                .unwrap()
                .token_logprobs)
        };
        let reference = reference_policy(&policy).unwrap();
        let diff = max_diff(&lp(&reference), &before);
        assert!(diff < 1e-6, "reference vs base before LoRA: {diff}");
        let moved = max_diff(&lp(&policy), &before);
        assert!(moved > 1e-3, "the trained policy moved by only {moved}");
        // The reference shares the base parameters (same ids) and records no graph.
        assert_eq!(
            reference.embed_tokens.weight.id,
            base.embed_tokens.weight.id
        );
        assert_eq!(
            reference.layers[1].self_attn.q_proj.weight.id,
            policy.layers[1].self_attn.q_proj.weight.id
        );
        let out = reference
            .completion_logprobs(ids.clone(), attn.clone(), comp.clone(), false)
            .unwrap();
        assert!(!out.sum.is_tracked());
        // Without adapters there is no disabled-adapter reference.
        let err = reference_policy(&base).unwrap_err().to_string();
        assert!(err.contains("carries no LoRA adapters"), "{err}");
    }

    #[test]
    fn generate_samples_from_the_trained_module() {
        let device = test_device().autodiff();
        let (_, policy, _) = trained_lora_policy(&device);
        let tokenizer = tiny_tokenizer();
        let prompts = vec![vec![3u32, 4, 5], vec![6, 7]];
        let rows = generate(
            &policy,
            &tokenizer,
            &prompts,
            &SamplingConfig::greedy(4),
            &device,
        )
        .unwrap();
        // Greedy tokens are the argmax of the adapted module's full forward.
        for (prompt, row) in prompts.iter().zip(&rows) {
            let mut seq: Vec<i64> = prompt.iter().map(|&x| x as i64).collect();
            for &tok in &row.tokens {
                let n = seq.len();
                let logits = vec(policy.forward(
                    int2(vec![seq.clone()], &device),
                    int2(vec![vec![1; n]], &device),
                ));
                assert_eq!(tok as usize, argmax(&logits[(n - 1) * 32..]));
                seq.push(tok as i64);
            }
            assert_eq!(row.tokens.len(), 4);
        }
        // The bundle around the same module samples the same (seeded sampling too).
        let lm = bundle(policy.clone(), &device);
        let config = SamplingConfig {
            max_new_tokens: 5,
            temperature: 0.9,
            seed: 3,
            ..Default::default()
        };
        assert_eq!(
            generate(&policy, &tokenizer, &prompts, &config, &device).unwrap(),
            generate(&lm, &tokenizer, &prompts, &config, &device).unwrap()
        );
    }

    #[test]
    fn policy_with_value_shares_one_pass_and_trains_both() {
        let device = test_device().autodiff();
        let config = LoraConfig::new(2, 4.0, &["q_proj"]);
        let model = PolicyWithValue {
            policy: lora::apply(tiny_model(&device), &config).unwrap(),
            value_head: ValueHeadConfig::new(16).init(&device),
        };
        let (ids, attn, comp) = batch(&device);
        let out = model
            .forward(ids.clone(), attn.clone(), comp.clone(), false)
            .unwrap();
        assert_eq!(out.values.dims(), [3, 5]);
        let alone = model
            .policy
            .completion_logprobs(ids.clone(), attn.clone(), comp.clone(), false)
            .unwrap();
        assert!(max_diff(&vec(out.logprobs.sum.clone()), &vec(alone.sum)) < 1e-6);
        let hidden = model
            .policy
            .hidden_states(ids.clone(), attn.clone())
            .unwrap();
        let values = vec(model.value_head.forward(hidden).unwrap());
        let got = vec(out.values.clone());
        for r in 0..3 {
            assert!(max_diff(&got[r * 5..(r + 1) * 5], &values[r * 6..r * 6 + 5]) < 1e-6);
        }
        let loss = out.logprobs.sum.sum() + (out.values * out.logprobs.mask).powf_scalar(2.0).sum();
        let grads = loss.backward();
        let head = model.value_head.linear.weight.val().grad(&grads).unwrap();
        assert!(vec(head).iter().any(|&g| g != 0.0));
        let factor = model.policy.layers[0]
            .self_attn
            .q_proj
            .weight
            .adapter()
            .unwrap();
        assert!(
            vec(factor.a.val().grad(&grads).unwrap())
                .iter()
                .any(|&g| g != 0.0)
                || vec(factor.b.val().grad(&grads).unwrap())
                    .iter()
                    .any(|&g| g != 0.0)
        );
        // Shape errors and the short-sequence case.
        assert!(
            model
                .forward(ids.clone(), attn.clone().narrow(1, 0, 5), comp, false)
                .is_err()
        );
        let one = int2(vec![vec![4], vec![5], vec![6]], &device);
        let short = model
            .forward(one.clone(), one.ones_like(), one.ones_like(), false)
            .unwrap();
        assert_eq!(short.values.dims(), [3, 0]);
        assert_eq!(vec(short.logprobs.count), [0.0; 3]);
    }
}
