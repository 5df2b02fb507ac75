//! SELM's exploration responses: one response per pair, sampled from the reference (the policy
//! before training) for the pair's prompt when the data is loaded, and attached to the encoded
//! pair as a third row on the pair's own prompt cut.
//!
//! SELM (Zhang et al. 2024) samples `y_s ∼ π_ref(·|x)` from the previous iterate; offline, the
//! reference is that iterate, so one draw per pair before training is the paper's setting for a
//! single iteration. The draws are seeded from `train.seed` (batch `b` from `(seed, b)`), so a
//! resumed run samples the same responses again. The sampled *tokens* are kept as generated
//! (stop token included), not re-tokenized from text, and they follow the pair's prompt tokens
//! exactly as the chosen and rejected responses do: the three rows share one prompt pass.

use anyhow::{Context, Result, bail};
use rm_core::burn::module::Module;
use rm_core::models::llama::LlamaModel;
use rm_core::models::policy_folder::Policy;
use rm_core::tokenize::Sequence;
use rm_core::types::PreferencePair;

use super::data::EncodedPair;
use super::objective::ReferenceSampling;
use crate::online::prompts::RlPrompt;
use crate::online::rollout::{sample, with_stop_tokens};

/// Samples one response per pair of `pairs` from `reference` (token ids, the stop token
/// included), `sampling.batch` prompts per generation batch.
pub fn sample_responses(
    policy: &Policy,
    reference: &LlamaModel,
    pairs: &[PreferencePair],
    sampling: &ReferenceSampling,
    seed: u64,
    source: &str,
) -> Result<Vec<Vec<u32>>> {
    if sampling.max_new_tokens >= policy.spec.max_len {
        bail!(
            "objective.sample.max_new_tokens ({}) leaves no room for the prompt within model.max_len ({})",
            sampling.max_new_tokens,
            policy.spec.max_len
        );
    }
    let prompts: Vec<RlPrompt> = pairs
        .iter()
        .map(|p| RlPrompt {
            prompt: p.prompt.clone(),
            references: Vec::new(),
        })
        .collect();
    let refs: Vec<&RlPrompt> = prompts.iter().collect();
    let config = with_stop_tokens(sampling.sampling_config(seed), policy);
    let reference = reference.valid();
    let mut out = Vec::with_capacity(pairs.len());
    let chunk = 4 * sampling.batch.max(1);
    for (k, part) in refs.chunks(chunk).enumerate() {
        let sampled = sample(
            &reference,
            policy,
            part,
            1,
            &config,
            rm_core::train::rollout::collect_seed(seed, k as u64),
            sampling.batch,
        )
        .with_context(|| format!("{source}: sampling the reference's responses (SELM)"))?;
        out.extend(sampled.completions.into_iter().map(|c| c.tokens));
        eprintln!(
            "{source}: the reference sampled {} of {} responses ({:.1} tokens/s)",
            out.len(),
            pairs.len(),
            sampled.tokens as f64 / sampled.seconds.max(1e-9)
        );
    }
    Ok(out)
}

/// Attaches `samples[i]` to pair `i` as its third row: the pair's prompt tokens (as its chosen
/// row carries them) followed by the sampled tokens, cut to `max_len`.
///
/// Errors: not one sample per pair; an empty sample (the named pair).
pub fn attach_samples(
    pairs: &mut [EncodedPair],
    samples: Vec<Vec<u32>>,
    max_len: usize,
    source: &str,
) -> Result<()> {
    if samples.len() != pairs.len() {
        bail!(
            "{source}: {} sampled responses for {} pairs",
            samples.len(),
            pairs.len()
        );
    }
    for (i, (pair, tokens)) in pairs.iter_mut().zip(samples).enumerate() {
        if tokens.is_empty() {
            bail!("{source}: pair {}: the reference sampled no tokens", i + 1);
        }
        let prompt: Vec<u32> = pair
            .chosen
            .ids
            .iter()
            .zip(&pair.chosen.completion)
            .take_while(|(_, completion)| !**completion)
            .map(|(id, _)| *id)
            .collect();
        let room = max_len.saturating_sub(prompt.len()).max(1);
        let mut ids = prompt.clone();
        ids.extend(tokens.into_iter().take(room));
        let mut completion = vec![false; prompt.len()];
        completion.resize(ids.len(), true);
        pair.sampled = Some(Sequence { ids, completion });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::preference::data::encode_pairs;
    use crate::preference::task::tests::{pair, tiny_policy};
    use rm_core::device::test_device;

    /// Samples follow the pair's own prompt cut, are reproducible from the seed, and differ
    /// between seeds; a sample longer than the room left is cut to `max_len`.
    #[test]
    fn samples_sit_on_the_pairs_prompt_cut_and_repeat_with_the_seed() {
        let device = test_device();
        let dir = std::env::temp_dir().join(format!("plumb-selm-{}", std::process::id()));
        std::fs::remove_dir_all(&dir).ok();
        let policy = tiny_policy(&dir, false, &device);
        let pairs = vec![
            pair("w3 w4 w5", "w6 w7", "w8"),
            pair("w9", "w10 w11 w12", "w13 w14"),
        ];
        let sampling = ReferenceSampling {
            max_new_tokens: 6,
            ..ReferenceSampling::default()
        };
        let model = policy.lm.model.clone();
        let draw =
            |seed| sample_responses(&policy, &model, &pairs, &sampling, seed, "test").unwrap();
        let (a, b, c) = (draw(5), draw(5), draw(6));
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert!(a.iter().all(|t| !t.is_empty() && t.len() <= 6));
        let mut encoded = encode_pairs(&policy, &pairs, "test").unwrap();
        attach_samples(&mut encoded, a.clone(), 32, "test").unwrap();
        for (p, tokens) in encoded.iter().zip(&a) {
            let s = p.sampled.as_ref().unwrap();
            let prompt_len = p.chosen.completion.iter().filter(|c| !**c).count();
            assert_eq!(s.ids[..prompt_len], p.chosen.ids[..prompt_len]);
            assert_eq!(&s.ids[prompt_len..], &tokens[..]);
            assert_eq!(s.completion.iter().filter(|c| **c).count(), tokens.len());
        }
        // Cut to max_len: the prompt stays, the sample loses its tail.
        let mut short = encode_pairs(&policy, &pairs, "test").unwrap();
        let prompt_len = short[0].chosen.completion.iter().filter(|c| !**c).count();
        attach_samples(
            &mut short,
            vec![vec![7; 40], vec![8]],
            prompt_len + 2,
            "test",
        )
        .unwrap();
        assert_eq!(short[0].sampled.as_ref().unwrap().len(), prompt_len + 2);
        let err = attach_samples(&mut short, vec![vec![7]], 32, "test").unwrap_err();
        assert!(
            err.to_string().contains("1 sampled responses for 2 pairs"),
            "{err}"
        );
        let err = attach_samples(&mut short, vec![vec![7], vec![]], 32, "test").unwrap_err();
        assert!(err.to_string().contains("pair 2"), "{err}");
    }
}
