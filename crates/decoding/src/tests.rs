//! Tests on a tiny Llama built in code and closed-form scorers.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rm_core::chat::ChatTemplate;
use rm_core::device::test_device;
use rm_core::models::llama::CausalLm;
use rm_core::sampling::{SamplingConfig, generate};
use rm_core::types::Prompt;

use super::*;

pub(crate) fn temp_dir(tag: &str) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let d = std::env::temp_dir().join(format!("decoding-{tag}-{}-{n}", std::process::id()));
    std::fs::remove_dir_all(&d).ok();
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// The tiny Llama of `rm_core::fixtures` (vocabulary `w0 … w47`, eos `w1`), plain template.
pub(crate) fn tiny_model() -> DecodeModel {
    let dir = temp_dir("model");
    rm_core::fixtures::write_tiny_llama(&dir, 5).unwrap();
    let lm = CausalLm::load(&dir, &test_device()).unwrap();
    DecodeModel::new(lm, ChatTemplate::Plain, 64)
}

fn text(s: &str) -> Prompt {
    Prompt::Text(s.into())
}

/// Words `w7` in the response: rewards one token id.
fn sevens(response: &str) -> f32 {
    response.split_whitespace().filter(|w| *w == "w7").count() as f32
}

/// Σ (id mod 7) over the response's words: a reward that varies across samples.
fn id_sum(response: &str) -> f32 {
    response
        .split_whitespace()
        .map(|w| (w[1..].parse::<u32>().unwrap() % 7) as f32)
        .sum()
}

fn config(strategy: Strategy, max_new_tokens: usize) -> DecodeConfig {
    DecodeConfig {
        max_new_tokens,
        strategy,
    }
}

fn run(
    model: &DecodeModel,
    prompts: &[Prompt],
    c: &DecodeConfig,
    seed: u64,
    f: fn(&str) -> f32,
) -> DecodeRun {
    decode(
        model,
        prompts,
        c,
        seed,
        &mut FnScorer(|_: &Prompt, r: &str| f(r)),
        &mut |_| {},
    )
    .unwrap()
}

/// The generate() rows a strategy must reproduce: one prompt, seed `seed`, the model's stops.
fn plain(model: &DecodeModel, prompt: &str, c: SamplingConfig) -> Vec<u32> {
    let ids = model.prompt_ids(&text(prompt), c.max_new_tokens).unwrap();
    let c = SamplingConfig {
        stop_tokens: model.stop_tokens(),
        ..c
    };
    generate(&model.lm, &model.lm.tokenizer, &[ids], &c, &model.lm.device).unwrap()[0]
        .tokens
        .clone()
}

#[test]
fn kl_bound_matches_its_closed_form() {
    assert_eq!(kl_bound(1).unwrap(), 0.0);
    assert!((kl_bound(2).unwrap() - (2f64.ln() - 0.5)).abs() < 1e-12);
    // log 16 − 15/16 = 2.7725887 − 0.9375
    assert!((kl_bound(16).unwrap() - 1.835_088_722_239_781).abs() < 1e-12);
    assert!((kl_bound(4).unwrap() - 0.636_294_361_119_890_6).abs() < 1e-12);
    let e = kl_bound(0).unwrap_err().to_string();
    assert!(e.contains("n") && e.contains("≥ 1"), "{e}");
}

#[test]
fn the_curve_takes_the_best_of_the_first_n() {
    let rewards = vec![vec![1.0, 3.0, 2.0, 5.0], vec![4.0, 0.0, 0.0, 6.0]];
    let curve = best_of_n_curve(&rewards, &[1, 2, 4]).unwrap();
    let means: Vec<f64> = curve.iter().map(|p| p.mean_reward).collect();
    assert_eq!(means, [2.5, 3.5, 5.5]);
    assert_eq!(curve[0].kl_bound, 0.0);
    assert!(
        best_of_n_curve(&rewards, &[8])
            .unwrap_err()
            .to_string()
            .contains("4 samples")
    );
    assert!(best_of_n_curve(&rewards, &[0]).is_err());
    assert!(best_of_n_curve(&[], &[1]).is_err());
}

#[test]
fn best_of_n_keeps_the_highest_reward_and_its_curve_is_monotone() {
    let model = tiny_model();
    let prompts = [text("w3 w4 w5"), text("w9 w10"), text("w20")];
    let bon = |n| {
        config(
            Strategy::BestOfN {
                n,
                temperature: 1.0,
                top_p: 1.0,
            },
            8,
        )
    };
    let big = run(&model, &prompts, &bon(16), 3, id_sum);
    for row in &big.rows {
        let Detail::BestOfN {
            rewards,
            chosen,
            kl_bound: kl,
        } = &row.detail
        else {
            panic!()
        };
        assert_eq!(rewards.len(), 16);
        let max = rewards.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        assert_eq!(row.reward, max);
        assert_eq!(rewards[*chosen], max);
        // The reward is the closed form of the returned text.
        assert_eq!(id_sum(&row.text), row.reward);
        assert!((kl - 1.835_088_722).abs() < 1e-6);
        assert!(
            rewards.iter().any(|&r| r != max),
            "samples should differ: {rewards:?}"
        );
        assert_eq!(row.stats.scorer_calls, 1);
        assert_eq!(row.stats.texts_scored, 16);
        assert!(row.stats.tokens_generated >= 16 && row.stats.tokens_per_second > 0.0);
    }
    let curve = big.curve(&[1, 2, 4, 8, 16]).unwrap();
    for w in curve.windows(2) {
        assert!(w[1].mean_reward >= w[0].mean_reward, "{curve:?}");
    }
    assert!(curve[4].mean_reward > curve[0].mean_reward, "{curve:?}");
    assert!((curve[4].mean_reward - big.summary.mean_reward).abs() < 1e-6);
    // The first n samples of the 16 are exactly an n-sample run: the curve is best-of-n.
    let small = run(&model, &prompts, &bon(4), 3, id_sum);
    for (s, b) in small.rows.iter().zip(&big.rows) {
        let (Detail::BestOfN { rewards: rs, .. }, Detail::BestOfN { rewards: rb, .. }) =
            (&s.detail, &b.detail)
        else {
            panic!()
        };
        assert_eq!(rs[..], rb[..4]);
    }
    assert!((small.summary.mean_reward - curve[2].mean_reward).abs() < 1e-6);
    assert_eq!(big.summary.kl_bound, Some(kl_bound(16).unwrap()));
}

#[test]
fn soft_best_of_n_is_best_of_n_as_lambda_vanishes() {
    let model = tiny_model();
    let prompts = [text("w3 w4 w5"), text("w9 w10")];
    let hard = run(
        &model,
        &prompts,
        &config(
            Strategy::BestOfN {
                n: 8,
                temperature: 1.0,
                top_p: 1.0,
            },
            6,
        ),
        1,
        id_sum,
    );
    for lambda in [0.0, 1e-6] {
        let soft = config(
            Strategy::SoftBestOfN {
                n: 8,
                lambda,
                temperature: 1.0,
                top_p: 1.0,
            },
            6,
        );
        let soft = run(&model, &prompts, &soft, 1, id_sum);
        for (s, h) in soft.rows.iter().zip(&hard.rows) {
            assert_eq!((&s.text, s.reward), (&h.text, h.reward), "λ {lambda}");
        }
    }
    // Hand-worked: rewards [0, 5], λ = 1e-6 → argmax for every u; ties go to the first.
    for u in [0.0, 0.5, 0.999_999] {
        assert_eq!(soft_best_index(&[0.0, 5.0], 1e-6, u), 1);
        assert_eq!(soft_best_index(&[2.0, 2.0, 1.0], 0.0, u), 0);
    }
}

/// Counts of `soft_best_index` over `draws` uniform numbers of seed 7, against
/// `expected` probabilities: each count within 4.5 binomial standard deviations
/// √(M p (1 − p)) of M p (a false alarm about once in 10⁵ per count).
fn check_frequencies(rewards: &[f32], lambda: f64, expected: &[f64]) {
    let draws = 8000;
    let mut rng = StdRng::seed_from_u64(7);
    let mut counts = vec![0usize; rewards.len()];
    for _ in 0..draws {
        counts[soft_best_index(rewards, lambda, rng.random())] += 1;
    }
    for (i, (&c, &p)) in counts.iter().zip(expected).enumerate() {
        let mean = draws as f64 * p;
        let sd = (draws as f64 * p * (1.0 - p)).sqrt();
        assert!(
            (c as f64 - mean).abs() <= 4.5 * sd,
            "λ {lambda} index {i}: {c} vs {mean:.1} ± {sd:.1} ({counts:?})"
        );
    }
}

#[test]
fn soft_best_of_n_is_uniform_as_lambda_grows_and_softmax_between() {
    let rewards = [0.0f32, 1.0, 2.0, 3.0];
    check_frequencies(&rewards, 1e9, &[0.25; 4]);
    let z: f64 = (0..4).map(|i| (i as f64).exp()).sum();
    let softmax: Vec<f64> = (0..4).map(|i| (i as f64).exp() / z).collect();
    check_frequencies(&rewards, 1.0, &softmax);
    // λ = 2 halves the exponents: p ∝ e^{r/2}.
    let z2: f64 = (0..4).map(|i| (i as f64 / 2.0).exp()).sum();
    let half: Vec<f64> = (0..4).map(|i| (i as f64 / 2.0).exp() / z2).collect();
    check_frequencies(&rewards, 2.0, &half);
}

/// A scorer whose k-th scored text gets reward k (0, 1, 2, …).
struct Counter(f32);

impl Scorer for Counter {
    fn score(&mut self, pairs: &[(&Prompt, &str)]) -> Result<Vec<f32>> {
        Ok(pairs
            .iter()
            .map(|_| {
                self.0 += 1.0;
                self.0 - 1.0
            })
            .collect())
    }
}

#[test]
fn rejection_sampling_stops_at_the_threshold() {
    let model = tiny_model();
    let prompts = [text("w3 w4")];
    let go = |threshold, budget, batch| {
        let c = config(
            Strategy::Rejection {
                threshold,
                budget,
                batch,
                temperature: 1.0,
                top_p: 1.0,
            },
            4,
        );
        let run = decode(&model, &prompts, &c, 0, &mut Counter(0.0), &mut |_| {}).unwrap();
        let Detail::Rejection {
            accepted,
            samples,
            accepted_samples,
        } = run.rows[0].detail
        else {
            panic!()
        };
        (
            run.rows[0].reward,
            accepted,
            samples,
            accepted_samples,
            run.rows[0].stats.scorer_calls,
            run.summary,
        )
    };
    // One sample per round: rewards 0, 1, 2, 3 → the 4th is accepted after 4 calls.
    let (r, acc, samples, passed, calls, summary) = go(3.0, 10, 1);
    assert_eq!((r, acc, samples, passed, calls), (3.0, true, 4, 1, 4));
    assert_eq!(summary.acceptance_rate, Some(1.0));
    assert_eq!(summary.sample_acceptance_rate, Some(0.25));
    // Rounds of 3: [0 1 2], [3 4 5] → reward 4 is the 5th sample; 4 and 5 passed.
    let (r, acc, samples, passed, calls, _) = go(4.0, 10, 3);
    assert_eq!((r, acc, samples, passed, calls), (4.0, true, 5, 2, 2));
    // Unreachable: rounds 2, 2, 1 spend the budget of 5; the best (4) is returned.
    let (r, acc, samples, passed, calls, summary) = go(100.0, 5, 2);
    assert_eq!((r, acc, samples, passed, calls), (4.0, false, 5, 0, 3));
    assert_eq!(summary.acceptance_rate, Some(0.0));
}

#[test]
fn args_with_zero_weight_is_greedy_decoding_token_for_token() {
    let model = tiny_model();
    for (p, k) in [("w3 w4 w5", 5), ("w9 w10", 1), ("w20 w21 w22 w23", 48)] {
        let expected = plain(&model, p, SamplingConfig::greedy(12));
        let c = config(
            Strategy::Args {
                top_k: k,
                weight: 0.0,
                temperature: 0.0,
            },
            12,
        );
        let got = run(&model, &[text(p)], &c, 9, sevens);
        assert_eq!(got.rows[0].tokens, expected, "prompt {p} k {k}");
        // w = 0 never asks the scorer about candidates: one call, for the final reward.
        assert_eq!(got.rows[0].stats.scorer_calls, 1);
        assert_eq!(got.rows[0].detail, Detail::Args { steered_tokens: 0 });
    }
}

#[test]
fn args_with_zero_weight_samples_as_top_k_sampling_of_the_same_seed() {
    let model = tiny_model();
    for seed in [0u64, 1, 2, 3] {
        let expected = plain(
            &model,
            "w3 w4 w5",
            SamplingConfig {
                max_new_tokens: 10,
                temperature: 1.0,
                top_k: 5,
                seed,
                ..SamplingConfig::default()
            },
        );
        let c = config(
            Strategy::Args {
                top_k: 5,
                weight: 0.0,
                temperature: 1.0,
            },
            10,
        );
        let got = run(&model, &[text("w3 w4 w5")], &c, seed, sevens);
        assert_eq!(got.rows[0].tokens, expected, "seed {seed}");
    }
}

#[test]
fn args_follows_a_reward_on_one_token() {
    let model = tiny_model();
    let prompt = [text("w3 w4 w5")];
    let greedy = plain(&model, "w3 w4 w5", SamplingConfig::greedy(6));
    // A token greedy decoding never picks: w13 (checked), rewarded once per occurrence.
    assert!(
        !greedy.contains(&13),
        "pick another rewarded token: {greedy:?}"
    );
    let thirteens =
        |_: &Prompt, r: &str| r.split_whitespace().filter(|w| *w == "w13").count() as f32;
    let go = |temperature| {
        let c = config(
            Strategy::Args {
                top_k: 48,
                weight: 100.0,
                temperature,
            },
            6,
        );
        decode(
            &model,
            &prompt,
            &c,
            0,
            &mut FnScorer(thirteens),
            &mut |_| {},
        )
        .unwrap()
    };
    let got = go(0.0);
    assert_eq!(got.rows[0].tokens, [13; 6]);
    assert_eq!(got.rows[0].reward, 6.0);
    assert_eq!(got.rows[0].detail, Detail::Args { steered_tokens: 6 });
    // 6 steps × one call of 48 candidates, plus the final score.
    let stats = &got.rows[0].stats;
    assert_eq!((stats.scorer_calls, stats.texts_scored), (7, 6 * 48 + 1));
    // Sampling at T = 1: the reward gap of 100 swamps the logits.
    assert_eq!(go(1.0).rows[0].tokens, [13; 6]);
    // With k = 1 the reward has nothing to choose between.
    let c = config(
        Strategy::Args {
            top_k: 1,
            weight: 100.0,
            temperature: 0.0,
        },
        6,
    );
    let top1 = decode(
        &model,
        &prompt,
        &c,
        0,
        &mut FnScorer(thirteens),
        &mut |_| {},
    )
    .unwrap();
    assert_eq!(
        top1.rows[0].tokens, greedy,
        "k = 1 leaves no choice: greedy"
    );
}

#[test]
fn controlled_decoding_with_one_candidate_is_plain_sampling() {
    let model = tiny_model();
    for (seed, block) in [(0u64, 5), (4, 1), (11, 3), (12, 12)] {
        let expected = plain(
            &model,
            "w3 w4 w5",
            SamplingConfig {
                max_new_tokens: 12,
                seed,
                ..SamplingConfig::default()
            },
        );
        let c = config(
            Strategy::Controlled {
                candidates: 1,
                block_size: block,
                temperature: 1.0,
                top_p: 1.0,
            },
            12,
        );
        let got = run(&model, &[text("w3 w4 w5")], &c, seed, sevens);
        assert_eq!(got.rows[0].tokens, expected, "seed {seed} block {block}");
        let Detail::Controlled { blocks } = got.rows[0].detail else {
            panic!()
        };
        assert_eq!(blocks, expected.len().div_ceil(block), "seed {seed}");
    }
}

#[test]
fn controlled_decoding_keeps_the_best_block() {
    let model = tiny_model();
    let prompts = [text("w3 w4 w5"), text("w30 w31")];
    let one = config(
        Strategy::Controlled {
            candidates: 1,
            block_size: 4,
            temperature: 1.0,
            top_p: 1.0,
        },
        12,
    );
    let many = config(
        Strategy::Controlled {
            candidates: 8,
            block_size: 4,
            temperature: 1.0,
            top_p: 1.0,
        },
        12,
    );
    let base = run(&model, &prompts, &one, 5, id_sum);
    let steered = run(&model, &prompts, &many, 5, id_sum);
    for (b, s) in base.rows.iter().zip(&steered.rows) {
        assert_eq!(id_sum(&s.text), s.reward);
        // Candidate 0 of each block is the K = 1 path's block while the prefixes agree, so the
        // first block's best is at least the K = 1 run's first block.
        let first = |r: &Decoded| id_sum(&model.text(&r.tokens[..4.min(r.tokens.len())]).unwrap());
        assert!(first(s) >= first(b), "{} vs {}", s.text, b.text);
        assert_eq!(s.stats.scorer_calls, s.tokens.len().div_ceil(4));
    }
    assert!(steered.summary.mean_reward > base.summary.mean_reward);
}

#[test]
fn bad_parameters_and_inputs_are_errors_not_panics() {
    let model = tiny_model();
    let scorer = &mut FnScorer(|_: &Prompt, r: &str| sevens(r));
    let e = decode(
        &model,
        &[text("w3")],
        &config(
            Strategy::BestOfN {
                n: 0,
                temperature: 1.0,
                top_p: 1.0,
            },
            4,
        ),
        0,
        scorer,
        &mut |_| {},
    )
    .unwrap_err();
    assert!(
        matches!(e, DecodeError::InvalidConfig { field: "n", .. }),
        "{e}"
    );
    for (strategy, field) in [
        (
            Strategy::Args {
                top_k: 0,
                weight: 1.0,
                temperature: 0.0,
            },
            "top_k",
        ),
        (
            Strategy::Controlled {
                candidates: 0,
                block_size: 4,
                temperature: 1.0,
                top_p: 1.0,
            },
            "candidates",
        ),
        (
            Strategy::Controlled {
                candidates: 2,
                block_size: 0,
                temperature: 1.0,
                top_p: 1.0,
            },
            "block_size",
        ),
        (
            Strategy::SoftBestOfN {
                n: 2,
                lambda: -1.0,
                temperature: 1.0,
                top_p: 1.0,
            },
            "lambda",
        ),
        (
            Strategy::Rejection {
                threshold: 0.0,
                budget: 0,
                batch: 1,
                temperature: 1.0,
                top_p: 1.0,
            },
            "budget",
        ),
    ] {
        let e = config(strategy, 4).validate().unwrap_err();
        assert!(
            matches!(e, DecodeError::InvalidConfig { field: f, .. } if f == field),
            "{e}"
        );
    }
    let e = decode(
        &model,
        &[],
        &config(
            Strategy::BestOfN {
                n: 2,
                temperature: 1.0,
                top_p: 1.0,
            },
            4,
        ),
        0,
        scorer,
        &mut |_| {},
    )
    .unwrap_err();
    assert!(matches!(e, DecodeError::EmptyInput(_)), "{e}");
    // A scorer that answers with the wrong count or NaN.
    let e = decode(
        &model,
        &[text("w3")],
        &config(
            Strategy::BestOfN {
                n: 2,
                temperature: 1.0,
                top_p: 1.0,
            },
            4,
        ),
        0,
        &mut FnScorer(|_: &Prompt, _: &str| f32::NAN),
        &mut |_| {},
    )
    .unwrap_err();
    assert!(e.to_string().contains("not finite"), "{e}");
}

#[test]
fn prompt_files_and_folders_are_checked() {
    let dir = temp_dir("inputs");
    let Err(e) = DecodeModel::load(&dir.join("missing"), &test_device()) else {
        panic!("a missing folder loaded")
    };
    let e = e.to_string();
    assert!(e.contains("missing") && e.contains("no such"), "{e}");
    let e = load_prompts(&PromptSource::File(dir.join("none.jsonl")), &dir, 3)
        .unwrap_err()
        .to_string();
    assert!(e.contains("none.jsonl"), "{e}");
    let file = dir.join("p.jsonl");
    std::fs::write(
        &file,
        "{\"prompt\": \"w3 w4\"}\n\n{\"prompt\": \"w3 w4\"}\n{\"prompt\": \"w5\", \"x\": 1}\n",
    )
    .unwrap();
    let p = load_prompts(&PromptSource::File(file.clone()), &dir, 10).unwrap();
    assert_eq!(p, [text("w3 w4"), text("w5")]);
    assert_eq!(
        load_prompts(&PromptSource::File(file.clone()), &dir, 1).unwrap(),
        [text("w3 w4")]
    );
    assert!(matches!(
        load_prompts(&PromptSource::File(file.clone()), &dir, 0),
        Err(DecodeError::InvalidConfig {
            field: "prompts",
            ..
        })
    ));
    std::fs::write(&file, "{\"prompt\": \"w3\"}\n{\"text\": \"w4\"}\n").unwrap();
    let e = load_prompts(&PromptSource::File(file.clone()), &dir, 3)
        .unwrap_err()
        .to_string();
    assert!(e.contains("p.jsonl:2:") && e.contains("prompt"), "{e}");
    std::fs::write(&file, "not json\n").unwrap();
    assert!(
        load_prompts(&PromptSource::File(file.clone()), &dir, 3)
            .unwrap_err()
            .to_string()
            .contains("p.jsonl:1:")
    );
    std::fs::write(&file, "\n\n").unwrap();
    assert!(matches!(
        load_prompts(&PromptSource::File(file.clone()), &dir, 3),
        Err(DecodeError::EmptyInput(_))
    ));
    assert!("hh-rlhf:test".parse::<PromptSource>().is_err());
    assert_eq!(
        "hh-rlhf:dev".parse::<PromptSource>().unwrap(),
        PromptSource::HhRlhf(rm_core::data::hh_rlhf::Split::Dev)
    );
}

#[test]
fn prompt_files_carry_gold_answers_and_gsm8k_names_its_splits() {
    let dir = temp_dir("gold");
    let file = dir.join("g.jsonl");
    std::fs::write(
        &file,
        "{\"prompt\": \"q1\", \"answer\": 42}\n\
         {\"prompt\": \"q2\", \"answer\": \"3 + 4 = 7\\n#### 1,207\"}\n\
         {\"prompt\": \"q3\"}\n{\"prompt\": \"q4\", \"answer\": \"-0.5\"}\n",
    )
    .unwrap();
    let rows = load_prompts_with_gold(&PromptSource::File(file.clone()), &dir, 10).unwrap();
    assert_eq!(
        rows,
        [
            (text("q1"), Some(42.0)),
            (text("q2"), Some(1207.0)),
            (text("q3"), None),
            (text("q4"), Some(-0.5)),
        ]
    );
    std::fs::write(
        &file,
        "{\"prompt\": \"q1\", \"answer\": 1}\n{\"prompt\": \"q2\", \"answer\": \"seven\"}\n",
    )
    .unwrap();
    let e = load_prompts_with_gold(&PromptSource::File(file.clone()), &dir, 10)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("g.jsonl:2:") && e.contains("`answer`") && e.contains("not a number"),
        "{e}"
    );
    std::fs::write(&file, "{\"prompt\": \"q1\", \"answer\": [1]}\n").unwrap();
    let e = load_prompts_with_gold(&PromptSource::File(file.clone()), &dir, 10)
        .unwrap_err()
        .to_string();
    assert!(e.contains("g.jsonl:1:") && e.contains("neither"), "{e}");
    assert_eq!(
        "gsm8k:test".parse::<PromptSource>().unwrap(),
        PromptSource::Gsm8k(Gsm8kSplit::Test)
    );
    let e = "gsm8k:dev".parse::<PromptSource>().unwrap_err().to_string();
    assert!(e.contains("train and test"), "{e}");
    // A missing data dir is named.
    let e = load_prompts_with_gold(&PromptSource::Gsm8k(Gsm8kSplit::Test), &dir, 2)
        .unwrap_err()
        .to_string();
    assert!(e.contains(dir.to_str().unwrap()), "{e}");
}

#[test]
fn gsm8k_test_prompts_come_with_their_gold_answers() {
    let data = rm_core::paths::for_tests::data_dir();
    let rows = load_prompts_with_gold(&PromptSource::Gsm8k(Gsm8kSplit::Test), &data, 2).unwrap();
    // The first GSM8K test problem (Janet's ducks): 18.
    let Prompt::Text(q) = &rows[0].0 else {
        panic!("{:?}", rows[0].0)
    };
    assert!(q.starts_with("Janet"), "{q}");
    assert_eq!(rows[0].1, Some(18.0));
    assert_eq!(rows.len(), 2);
    assert!(rows[1].1.is_some());
}

#[test]
fn strategies_read_from_toml_tables() {
    let path = PathBuf::from("strategy.toml");
    let c = DecodeConfig::from_toml(
        "max_new_tokens = 16\n[strategy]\ntype = \"controlled\"\ncandidates = 4\nblock_size = 8\n",
        &path,
    )
    .unwrap();
    assert_eq!(
        c,
        config(
            Strategy::Controlled {
                candidates: 4,
                block_size: 8,
                temperature: 1.0,
                top_p: 1.0
            },
            16
        )
    );
    let c = DecodeConfig::from_toml(
        "[strategy]\ntype = \"soft-best-of-n\"\nn = 8\nlambda = 0.5\n",
        &path,
    )
    .unwrap();
    assert_eq!(c.max_new_tokens, 64);
    assert_eq!(
        c.strategy,
        Strategy::SoftBestOfN {
            n: 8,
            lambda: 0.5,
            temperature: 1.0,
            top_p: 1.0
        }
    );
    let e = DecodeConfig::from_toml("[strategy]\ntype = \"best-of-n\"\nn = 4\nbeam = 2\n", &path)
        .unwrap_err()
        .to_string();
    assert!(e.contains("strategy.toml") && e.contains("beam"), "{e}");
    let e =
        DecodeConfig::from_toml("[strategy]\ntype = \"best-of-n\"\nn = 0\n", &path).unwrap_err();
    assert!(matches!(e, DecodeError::InvalidConfig { field: "n", .. }));
}

/// `run_decode` end to end on folders: a tiny policy folder (`plumb train-po` layout) and a
/// tiny reward model (`plumb train-rm` layout); one JSON line per prompt whose reward is the
/// reward model's score of its text.
#[test]
fn run_decode_writes_one_scored_line_per_prompt() {
    use rm_core::models::reward::RewardModelBundle;
    let root = temp_dir("run");
    let device = test_device();
    tiny_policy(&root);
    tiny_reward_model(&root, "rm", 6, 3);
    let rows = ["w3 w4", "w5 w6 w7", "w3 w4", "w9"]
        .map(|p| format!("{{\"prompt\": \"{p}\", \"chosen\": \"w1\"}}"));
    std::fs::write(root.join("prompts.jsonl"), rows.join("\n")).unwrap();
    let request = |strategy, curve: Vec<usize>, rm: PathBuf| DecodeRequest {
        policy: root.join("policy"),
        scorer: ScorerSpec::RewardModel(rm),
        arm: None,
        input: PromptSource::File(root.join("prompts.jsonl")),
        prompts: 10,
        data_dir: root.clone(),
        config: DecodeConfig {
            max_new_tokens: 6,
            strategy,
        },
        seed: 3,
        curve,
        out: root.join("out/decoded.jsonl"),
        step_pairs: None,
        device: device.clone(),
        head_weights: None,
    };
    let mut seen = Vec::new();
    let bon = Strategy::BestOfN {
        n: 2,
        temperature: 1.0,
        top_p: 1.0,
    };
    let outcome = run_decode(
        &request(bon.clone(), vec![1, 2, 4], root.join("rm")),
        &mut |p| seen.push(p.done),
    )
    .unwrap();
    assert_eq!(
        seen,
        [1, 2, 3],
        "progress after each of the 3 distinct prompts"
    );
    assert_eq!(outcome.summary.prompts, 3);
    // --curve raises n to max(curve) = 4.
    assert_eq!(outcome.summary.kl_bound, Some(kl_bound(4).unwrap()));
    assert_eq!(
        outcome.curve.iter().map(|p| p.n).collect::<Vec<_>>(),
        [1, 2, 4]
    );
    assert!((outcome.curve[2].mean_reward - outcome.summary.mean_reward).abs() < 1e-6);
    let text = std::fs::read_to_string(&outcome.out).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3);
    let mut scorer = RewardModelBundle::load(&root.join("rm"), &device).unwrap();
    for line in &lines {
        let prompt: Prompt = serde_json::from_value(line["prompt"].clone()).unwrap();
        let response = line["text"].as_str().unwrap();
        let expected = scorer.score(&[(&prompt, response)]).unwrap()[0];
        assert!(
            (line["reward"].as_f64().unwrap() as f32 - expected).abs() < 1e-4,
            "{line}"
        );
        assert_eq!(line["detail"]["strategy"], "best-of-n");
        assert_eq!(line["stats"]["texts_scored"], 4);
    }
    // A curve needs best-of-n; a missing reward model is named.
    let args = Strategy::Args {
        top_k: 2,
        weight: 1.0,
        temperature: 0.0,
    };
    let e = run_decode(
        &request(args.clone(), vec![2], root.join("rm")),
        &mut |_| {},
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("--curve needs"), "{e}");
    let e = run_decode(&request(args, vec![], root.join("nope")), &mut |_| {})
        .unwrap_err()
        .to_string();
    assert!(e.contains("nope") && e.contains("reward model"), "{e}");
    // A keyword scorer instead of the reward model: rewards are the closed form.
    let keywords = DecodeRequest {
        scorer: ScorerSpec::Keywords(vec!["w7".into(), "w9".into()]),
        ..request(bon, vec![], root.join("rm"))
    };
    run_decode(&keywords, &mut |_| {}).unwrap();
    for line in std::fs::read_to_string(&keywords.out).unwrap().lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let t = v["text"].as_str().unwrap();
        // No word of w0 … w47 holds "w7" or "w9" but itself.
        let expected = ["w7", "w9"].iter().filter(|k| t.contains(*k)).count() as f64 / 2.0;
        assert_eq!(v["reward"].as_f64().unwrap(), expected, "{t}");
    }
}

#[test]
fn genarm_with_zero_alpha_is_the_policy_and_with_a_large_alpha_the_guide() {
    let dir = temp_dir("guide");
    rm_core::fixtures::write_tiny_llama(&dir, 9).unwrap();
    let guide = || CausalLm::load(&dir, &test_device()).unwrap();
    let model = tiny_model().with_guide(guide());
    let guide_alone = DecodeModel::new(guide(), ChatTemplate::Plain, 64);
    let genarm = |alpha, temperature| config(Strategy::GenArm { alpha, temperature }, 10);
    for p in ["w3 w4 w5", "w9 w10"] {
        let policy_greedy = plain(&model, p, SamplingConfig::greedy(10));
        let guide_greedy = plain(&guide_alone, p, SamplingConfig::greedy(10));
        assert_ne!(
            policy_greedy, guide_greedy,
            "the two tiny models should disagree"
        );
        assert_eq!(
            run(&model, &[text(p)], &genarm(0.0, 0.0), 0, sevens).rows[0].tokens,
            policy_greedy
        );
        // log π_base + 1000 · log π_arm: the guide's argmax wins unless the base gives it ~0.
        assert_eq!(
            run(&model, &[text(p)], &genarm(1000.0, 0.0), 0, sevens).rows[0].tokens,
            guide_greedy
        );
        // α = 0 at T = 1 is plain sampling of the policy with the same seed.
        let sampled = plain(
            &model,
            p,
            SamplingConfig {
                max_new_tokens: 10,
                seed: 4,
                ..SamplingConfig::default()
            },
        );
        assert_eq!(
            run(&model, &[text(p)], &genarm(0.0, 1.0), 4, sevens).rows[0].tokens,
            sampled
        );
    }
    let e = decode(
        &tiny_model(),
        &[text("w3")],
        &genarm(1.0, 0.0),
        0,
        &mut FnScorer(|_: &Prompt, r: &str| sevens(r)),
        &mut |_| {},
    )
    .unwrap_err();
    assert!(
        matches!(
            e,
            DecodeError::InvalidConfig {
                field: "genarm",
                ..
            }
        ),
        "{e}"
    );
}

#[test]
fn keyword_and_length_scorers_match_their_closed_forms() {
    let p = text("w3");
    let mut k = KeywordScorer {
        keywords: vec!["Safe".into(), "help".into(), "w9".into(), "zz".into()],
    };
    let r = k
        .score(&[
            (&p, "I am SAFE to help"),
            (&p, "nothing"),
            (&p, "w9 help safe zz"),
        ])
        .unwrap();
    assert_eq!(r, [0.5, 0.0, 1.0]);
    let mut l = LengthScorer { target_words: 3 };
    let r = l
        .score(&[(&p, "a b c"), (&p, "a"), (&p, "a b c d e f"), (&p, "")])
        .unwrap();
    assert_eq!(r, [0.0, -2.0, -3.0, -3.0]);
}

#[test]
fn lookahead_of_depth_zero_is_args_and_its_continuations_are_greedy() {
    let model = tiny_model();
    let prompt = [text("w3 w4 w5")];
    let args = config(
        Strategy::Args {
            top_k: 4,
            weight: 5.0,
            temperature: 0.0,
        },
        8,
    );
    let look0 = config(
        Strategy::Lookahead {
            top_k: 4,
            depth: 0,
            weight: 5.0,
            temperature: 0.0,
        },
        8,
    );
    let a = run(&model, &prompt, &args, 0, id_sum);
    let l = run(&model, &prompt, &look0, 0, id_sum);
    assert_eq!(a.rows[0].tokens, l.rows[0].tokens);
    assert_eq!(a.rows[0].stats.texts_scored, l.rows[0].stats.texts_scored);
    // w = 0 is greedy whatever the depth.
    let look = config(
        Strategy::Lookahead {
            top_k: 4,
            depth: 3,
            weight: 0.0,
            temperature: 0.0,
        },
        8,
    );
    assert_eq!(
        run(&model, &prompt, &look, 0, id_sum).rows[0].tokens,
        plain(&model, "w3 w4 w5", SamplingConfig::greedy(8))
    );
    // Each lookahead is the greedy continuation generate() gives the candidate's prefix.
    let ids = model.prompt_ids(&prompt[0], 8).unwrap();
    let rows = vec![vec![9u32], vec![20, 21], vec![30]];
    let looked = crate::strategy::greedy_lookahead_for_tests(&model, &ids, &rows, 4).unwrap();
    for (row, got) in rows.iter().zip(&looked) {
        let prefix = [ids.as_slice(), row].concat();
        let c = SamplingConfig {
            stop_tokens: model.stop_tokens(),
            ..SamplingConfig::greedy(4)
        };
        let expected = generate(
            &model.lm,
            &model.lm.tokenizer,
            &[prefix],
            &c,
            &model.lm.device,
        )
        .unwrap();
        assert_eq!(got, &expected[0].tokens, "row {row:?}");
    }
    // With lookahead the scorer sees 8 steps × 4 candidates, each continued by ≤ 3 tokens.
    let look = config(
        Strategy::Lookahead {
            top_k: 4,
            depth: 3,
            weight: 5.0,
            temperature: 0.0,
        },
        8,
    );
    let mut lengths = Vec::new();
    let mut scorer = FnScorer(|_: &Prompt, r: &str| {
        lengths.push(r.split_whitespace().count());
        id_sum(r)
    });
    let out = decode(&model, &prompt, &look, 0, &mut scorer, &mut |_| {}).unwrap();
    let steps = out.rows[0].tokens.len();
    assert_eq!(out.rows[0].stats.scorer_calls, steps + 1);
    // At step t a candidate text has t + 1 tokens plus its lookahead (3 unless it stopped).
    for (i, &n) in lengths[..steps * 4].iter().enumerate() {
        let t = i / 4;
        assert!(n > t && n <= t + 4, "step {t}: {n} words");
    }
    assert!(out.rows[0].stats.tokens_generated > steps);
}

/// Transfer Q* rolls candidates out with the baseline model: with the policy's own weights as
/// the baseline it is the lookahead, token for token and score for score; with another model the
/// scorer sees that model's continuations (and the choices follow them); without a baseline it is
/// a configuration error.
#[test]
fn transfer_q_with_the_policy_as_baseline_is_the_lookahead() {
    let same = tiny_model().with_guide(tiny_model().lm);
    let transfer = |top_k, depth, weight| {
        config(
            Strategy::TransferQ {
                top_k,
                depth,
                weight,
                temperature: 0.0,
            },
            8,
        )
    };
    let look = config(
        Strategy::Lookahead {
            top_k: 4,
            depth: 3,
            weight: 5.0,
            temperature: 0.0,
        },
        8,
    );
    for p in ["w3 w4 w5", "w9 w10"] {
        let t = run(&same, &[text(p)], &transfer(4, 3, 5.0), 0, id_sum);
        let l = run(&same, &[text(p)], &look, 0, id_sum);
        assert_eq!(t.rows[0].tokens, l.rows[0].tokens, "{p}");
        assert_eq!(t.rows[0].reward, l.rows[0].reward);
        assert_eq!(t.rows[0].stats.texts_scored, l.rows[0].stats.texts_scored);
    }
    // Another baseline: the continuations the scorer sees are that model's greedy ones.
    let dir = temp_dir("baseline");
    rm_core::fixtures::write_tiny_llama(&dir, 9).unwrap();
    let other = tiny_model().with_guide(CausalLm::load(&dir, &test_device()).unwrap());
    let baseline = DecodeModel::new(
        CausalLm::load(&dir, &test_device()).unwrap(),
        ChatTemplate::Plain,
        64,
    );
    let prompt = text("w3 w4 w5");
    let ids = other.prompt_ids(&prompt, 8).unwrap();
    let mut seen = Vec::new();
    let mut scorer = FnScorer(|_: &Prompt, r: &str| {
        seen.push(r.to_string());
        id_sum(r)
    });
    decode(
        &other,
        std::slice::from_ref(&prompt),
        &transfer(2, 3, 1.0),
        0,
        &mut scorer,
        &mut |_| {},
    )
    .unwrap();
    // The first step's two candidates, each continued by the baseline's greedy tokens.
    let candidates: Vec<Vec<u32>> = {
        let (_, logits) =
            crate::engine::Batch::prefill(&other.lm, std::slice::from_ref(&ids)).unwrap();
        crate::strategy::top_k_ids_for_tests(&logits[0], 2)
            .into_iter()
            .map(|c| vec![c])
            .collect()
    };
    let rolled =
        crate::strategy::greedy_lookahead_for_tests(&baseline, &ids, &candidates, 3).unwrap();
    for (k, (c, r)) in candidates.iter().zip(&rolled).enumerate() {
        let expected = other.text(&[c.as_slice(), r].concat()).unwrap();
        assert_eq!(seen[k], expected, "candidate {k}");
    }
    let err = decode(
        &tiny_model(),
        &[prompt],
        &transfer(2, 3, 1.0),
        0,
        &mut FnScorer(|_: &Prompt, r: &str| id_sum(r)),
        &mut |_| {},
    )
    .unwrap_err();
    assert!(format!("{err}").contains("--arm"), "{err}");
}

/// `plumb generate --input --out`: one line per (distinct prompt, sample) from a policy folder;
/// greedy samples are the model's greedy `generate` of the rendered prompt; bad settings are
/// errors.
#[test]
fn sample_prompts_writes_every_sample_of_every_prompt() {
    let root = temp_dir("sample");
    let device = test_device();
    tiny_policy(&root);
    let rows = ["w3 w4", "w5 w6 w7", "w3 w4", "w9"].map(|p| format!("{{\"prompt\": \"{p}\"}}"));
    std::fs::write(root.join("prompts.jsonl"), rows.join("\n")).unwrap();
    let request = |samples: usize, temperature: f32| crate::SampleRequest {
        model: root.join("policy"),
        input: PromptSource::File(root.join("prompts.jsonl")),
        prompts: 10,
        samples,
        data_dir: root.clone(),
        sampling: SamplingConfig {
            max_new_tokens: 5,
            temperature,
            ..SamplingConfig::default()
        },
        batch_size: 4,
        out: root.join("samples.jsonl"),
        device: device.clone(),
        head_weights: None,
    };
    let outcome = crate::sample_prompts(&request(2, 0.0)).unwrap();
    assert_eq!((outcome.prompts, outcome.samples), (3, 6));
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(root.join("samples.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 6);
    let model = crate::DecodeModel::load(&root.join("policy"), &device).unwrap();
    for (i, line) in lines.iter().enumerate() {
        let prompt = ["w3 w4", "w5 w6 w7", "w9"][i / 2];
        assert_eq!(line["prompt"], serde_json::json!(prompt));
        let ids = model.prompt_ids(&Prompt::Text(prompt.into()), 5).unwrap();
        let mut config = SamplingConfig::greedy(5);
        config.stop_tokens = model.stop_tokens();
        let greedy = generate(&model.lm, &model.lm.tokenizer, &[ids], &config, &device).unwrap();
        let tokens: Vec<u32> = serde_json::from_value(line["tokens"].clone()).unwrap();
        assert_eq!(tokens, greedy[0].tokens, "line {i}");
    }
    assert_eq!(
        outcome.tokens,
        lines
            .iter()
            .map(|l| l["tokens"].as_array().unwrap().len())
            .sum::<usize>()
    );
    let err = crate::sample_prompts(&request(0, 1.0))
        .unwrap_err()
        .to_string();
    assert!(err.contains("samples"), "{err}");
    let err = crate::sample_prompts(&request(1, -1.0))
        .unwrap_err()
        .to_string();
    assert!(err.contains("temperature"), "{err}");
}

/// The brute force the unbiased estimator must equal: the mean, over every n-subset of the
/// samples (indices in order), of the gold value of the subset's first proxy argmax.
fn brute_force_best_of_n(proxy: &[f32], gold: &[f32], n: usize) -> f64 {
    let m = proxy.len();
    let (mut sum, mut count) = (0.0, 0usize);
    for mask in 0u32..(1 << m) {
        if mask.count_ones() as usize != n {
            continue;
        }
        let subset: Vec<usize> = (0..m).filter(|i| mask & (1 << i) != 0).collect();
        let scores: Vec<f32> = subset.iter().map(|&i| proxy[i]).collect();
        sum += f64::from(gold[subset[best_index(&scores)]]);
        count += 1;
    }
    sum / count as f64
}

#[test]
fn unbiased_best_of_n_equals_the_mean_over_all_subsets() {
    // Ties in the proxy (samples 1 and 3 at 2.0, 0 and 6 at 0.5): the earlier one is chosen.
    let proxy = [0.5, 2.0, -1.0, 2.0, 0.0, 1.5, 0.5];
    let gold = [1.0, -2.0, 3.0, 0.5, 4.0, 0.25, -7.0];
    for n in 1..=proxy.len() {
        let fast = expected_best_of_n(&proxy, &gold, n).unwrap();
        let slow = brute_force_best_of_n(&proxy, &gold, n);
        assert!((fast - slow).abs() < 1e-12, "n = {n}: {fast} vs {slow}");
        let w = best_of_n_weights(proxy.len(), n).unwrap();
        assert!((w.iter().sum::<f64>() - 1.0).abs() < 1e-12, "n = {n}");
    }
    // n = 1: the plain mean; n = m: the first of the two 2.0s, sample 1.
    let mean = gold.iter().map(|&g| f64::from(g)).sum::<f64>() / 7.0;
    assert!((expected_best_of_n(&proxy, &gold, 1).unwrap() - mean).abs() < 1e-12);
    assert_eq!(expected_best_of_n(&proxy, &gold, 7).unwrap(), -2.0);
    // n = 2 by hand on 3 samples (proxy 3, 1, 2): subsets {0,1} and {0,2} choose sample 0
    // (gold 10), {1,2} chooses sample 2 (gold 40): (10 + 10 + 40)/3 = 20.
    let v = expected_best_of_n(&[3.0, 1.0, 2.0], &[10.0, 20.0, 40.0], 2).unwrap();
    assert!((v - 20.0).abs() < 1e-12, "{v}");
    // Weights by hand: m = 4, n = 2: C(j−1, 1)/C(4, 2) = 0, 1/6, 2/6, 3/6.
    let w = best_of_n_weights(4, 2).unwrap();
    for (a, b) in w.iter().zip([0.0, 1.0 / 6.0, 2.0 / 6.0, 3.0 / 6.0]) {
        assert!((a - b).abs() < 1e-12, "{w:?}");
    }
    // Large m does not overflow: C(600, 300) is about 1e179, the weights still sum to 1.
    let w = best_of_n_weights(600, 300).unwrap();
    assert!((w.iter().sum::<f64>() - 1.0).abs() < 1e-9);
    assert!(expected_best_of_n(&proxy, &gold, 0).is_err());
    let e = expected_best_of_n(&proxy, &gold, 8)
        .unwrap_err()
        .to_string();
    assert!(e.contains("best-of-8 needs at least 8 samples"), "{e}");
    assert!(expected_best_of_n(&proxy, &gold[..3], 1).is_err());
}

#[test]
fn the_overoptimization_curve_has_the_kl_bound_and_means_over_prompts() {
    let proxy = vec![vec![1.0, 3.0, 2.0, 0.0], vec![0.0, 0.0, 5.0, 1.0]];
    let gold = vec![vec![4.0, -1.0, 0.0, 2.0], vec![1.0, 3.0, -2.0, 0.0]];
    let points = overopt_curve(&proxy, &gold, &[1, 2, 4]).unwrap();
    // KL = log n − (n − 1)/n: 0, log 2 − 1/2, log 4 − 3/4.
    let kl = [0.0, std::f64::consts::LN_2 - 0.5, 4f64.ln() - 0.75];
    for (p, k) in points.iter().zip(kl) {
        assert!((p.kl - k).abs() < 1e-12 && (p.sqrt_kl - k.sqrt()).abs() < 1e-12);
    }
    assert!((points[1].sqrt_kl - 0.439_485_1).abs() < 1e-6);
    assert!((kl_bound(16).unwrap() - (16f64.ln() - 15.0 / 16.0)).abs() < 1e-12);
    // n = 1: the mean of every sample; gold (1.25 + 0.5)/2, proxy (1.5 + 1.5)/2.
    assert!((points[0].gold_reward - 0.875).abs() < 1e-12);
    assert!((points[0].proxy_reward - 1.5).abs() < 1e-12);
    // n = 4: the proxy's argmax of each prompt: samples 1 and 2; gold −1 and −2.
    assert!((points[2].gold_reward - (-1.5)).abs() < 1e-12);
    assert!((points[2].proxy_reward - 4.0).abs() < 1e-12);
    // Standard error over the 2 prompts: |a − b| / 2.
    assert!((points[2].gold_se - 0.5).abs() < 1e-12);
    let e = overopt_curve(&proxy, &gold, &[8]).unwrap_err().to_string();
    assert!(e.contains("prompt 0") && e.contains("best-of-8"), "{e}");
    assert!(overopt_curve(&proxy, &gold[..1], &[1]).is_err());
}

/// A tiny reward model (`plumb train-rm` layout) at `root/name`: a tiny Llama backbone of
/// `backbone_seed` (at `root/name-backbone`), its head initialized with `head_seed`.
fn tiny_reward_model(
    root: &std::path::Path,
    name: &str,
    backbone_seed: u64,
    head_seed: u64,
) -> PathBuf {
    use rm_core::models::reward::{RewardModelBundle, RewardModelConfig};
    use rm_core::tokenize::TruncationSide;
    let backbone = root.join(format!("{name}-backbone"));
    rm_core::fixtures::write_tiny_llama(&backbone, backbone_seed).unwrap();
    let rm = RewardModelBundle::build(
        &RewardModelConfig {
            backbone,
            pooling: None,
            max_len: 32,
            truncation: TruncationSide::Left,
            attributes: vec!["reward".into()],
            template: Some(ChatTemplate::Plain),
            lora: None,
            head_init_std: 0.5,
        },
        head_seed,
        &test_device(),
    )
    .unwrap();
    rm.save(&root.join(name)).unwrap();
    root.join(name)
}

/// Two tiny reward models (`plumb train-rm` layout, no stored normalization: used raw) and an
/// ensemble folder of both (aggregation `min` in ensemble.json) under `root`.
fn tiny_reward_models(root: &std::path::Path) -> (PathBuf, PathBuf, PathBuf) {
    let dirs = [("rm-a", 3u64), ("rm-b", 11)]
        .map(|(name, seed)| tiny_reward_model(root, name, seed, seed));
    let ensemble = root.join("ens");
    std::fs::create_dir_all(&ensemble).unwrap();
    rm_ensembles::EnsembleSpec::new(
        vec!["../rm-a".into(), "../rm-b".into()],
        rm_ensembles::Aggregation::Min,
    )
    .write(&ensemble)
    .unwrap();
    (dirs[0].clone(), dirs[1].clone(), ensemble)
}

/// A tiny policy folder (`plumb train-po` layout) at `root/policy`, its base at `root/base`.
fn tiny_policy(root: &std::path::Path) -> PathBuf {
    use rm_core::models::policy_folder::{Policy, PolicyModelConfig};
    rm_core::fixtures::write_tiny_llama(&root.join("base"), 5).unwrap();
    let policy = Policy::build(
        &PolicyModelConfig {
            policy: root.join("base"),
            max_len: 32,
            template: Some(ChatTemplate::Plain),
            lora: None,
        },
        &test_device(),
    )
    .unwrap();
    policy.save(&policy.lm.model, &root.join("policy")).unwrap();
    root.join("policy")
}

/// A tiny policy and a file of three prompts, `root/prompts.jsonl`.
fn tiny_policy_and_prompts(root: &std::path::Path) -> PathBuf {
    let policy = tiny_policy(root);
    let rows = ["w3 w4", "w5 w6 w7", "w9"].map(|p| format!("{{\"prompt\": \"{p}\"}}"));
    std::fs::write(root.join("prompts.jsonl"), rows.join("\n")).unwrap();
    policy
}

/// Best-of-3 over `root/prompts.jsonl` (5 new tokens, seed 7) scored by `scorer`, written to
/// `root/decoded.jsonl`.
fn best_of_3_request(
    root: &std::path::Path,
    policy: &std::path::Path,
    scorer: ScorerSpec,
) -> DecodeRequest {
    let (root, policy, device) = (root.to_path_buf(), policy.to_path_buf(), test_device());
    DecodeRequest {
        policy: policy.clone(),
        scorer,
        arm: None,
        input: PromptSource::File(root.join("prompts.jsonl")),
        prompts: 10,
        data_dir: root.clone(),
        config: config(
            Strategy::BestOfN {
                n: 3,
                temperature: 1.0,
                top_p: 1.0,
            },
            5,
        ),
        seed: 7,
        curve: vec![],
        out: root.join("decoded.jsonl"),
        step_pairs: None,
        device: device.clone(),
        head_weights: None,
    }
}

/// Two tiny reward models and, in `root/dmoerm`, the DMoERM whose reward is their sum.
fn dmoerm_of_two(root: &std::path::Path) -> (PathBuf, PathBuf, PathBuf) {
    let (a, b, _) = tiny_reward_models(root);
    let dmoerm = root.join("dmoerm");
    rm_multiobj::dmoerm::fixtures::write_sum_of_two(
        &dmoerm,
        &root.join("rm-a-backbone"),
        16,
        [&a, &b],
    )
    .unwrap();
    (a, b, dmoerm)
}

/// `plumb decode --rm DMOERM_DIR`: a DMoERM folder is recognised and every decoded line's
/// reward is its aggregate, here the sum of its two experts' own rewards.
#[test]
fn decode_scores_with_a_dmoerm_folder() {
    use rm_core::models::reward::RewardModelBundle;
    let root = temp_dir("dmoerm-decode");
    let device = test_device();
    let (a, b, dmoerm) = dmoerm_of_two(&root);
    let policy = tiny_policy_and_prompts(&root);
    let spec = ScorerSpec::reward_model(dmoerm.clone(), None).unwrap();
    assert!(matches!(spec, ScorerSpec::Dmoerm(_)), "{spec:?}");
    let req = best_of_3_request(&root, &policy, spec);
    run_decode(&req, &mut |_| {}).unwrap();
    let mut a = RewardModelBundle::load(&a, &device).unwrap();
    let mut b = RewardModelBundle::load(&b, &device).unwrap();
    let text = std::fs::read_to_string(&req.out).unwrap();
    assert_eq!(text.lines().count(), 3);
    for line in text.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let prompt: Prompt = serde_json::from_value(v["prompt"].clone()).unwrap();
        let response = v["text"].as_str().unwrap();
        let sum = a.score(&[(&prompt, response)]).unwrap()[0]
            + b.score(&[(&prompt, response)]).unwrap()[0];
        let got = v["reward"].as_f64().unwrap() as f32;
        assert!((got - sum).abs() < 1e-4, "{got} vs {sum}: {line}");
    }
    let e = ScorerSpec::reward_model(dmoerm, Some(rm_ensembles::Aggregation::Min))
        .unwrap_err()
        .to_string();
    assert!(e.contains("dmoerm"), "{e}");
    std::fs::remove_dir_all(&root).ok();
}

/// `plumb decode --rm ENSEMBLE_DIR [--aggregation A]`: every decoded line's reward is the
/// aggregation of the two members' own rewards of its text.
#[test]
fn decode_scores_with_an_ensemble_folder_and_its_aggregation() {
    use rm_core::models::reward::RewardModelBundle;
    let root = temp_dir("ens-decode");
    let device = test_device();
    let (a, b, ensemble) = tiny_reward_models(&root);
    let policy = tiny_policy_and_prompts(&root);
    let request = |scorer| best_of_3_request(&root, &policy, scorer);
    let mut a = RewardModelBundle::load(&a, &device).unwrap();
    let mut b = RewardModelBundle::load(&b, &device).unwrap();
    let mut saw_disagreement = false;
    for (aggregation, rule) in [
        (None, f32::min as fn(f32, f32) -> f32),
        (Some(rm_ensembles::Aggregation::Mean), |x, y| (x + y) / 2.0),
    ] {
        let spec = ScorerSpec::reward_model(ensemble.clone(), aggregation.clone()).unwrap();
        assert!(matches!(spec, ScorerSpec::Ensemble { .. }), "{spec:?}");
        let req = request(spec);
        run_decode(&req, &mut |_| {}).unwrap();
        let text = std::fs::read_to_string(&req.out).unwrap();
        for line in text.lines() {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            let prompt: Prompt = serde_json::from_value(v["prompt"].clone()).unwrap();
            let response = v["text"].as_str().unwrap();
            let (ra, rb) = (
                a.score(&[(&prompt, response)]).unwrap()[0],
                b.score(&[(&prompt, response)]).unwrap()[0],
            );
            saw_disagreement |= (ra - rb).abs() > 1e-3;
            let got = v["reward"].as_f64().unwrap() as f32;
            assert!((got - rule(ra, rb)).abs() < 1e-4, "{aggregation:?}: {line}");
            // Best-of-3 keeps the highest aggregated reward of its samples.
            let rewards: Vec<f64> = serde_json::from_value(v["detail"]["rewards"].clone()).unwrap();
            assert!(
                rewards.iter().all(|&r| r <= f64::from(got) + 1e-6),
                "{line}"
            );
        }
    }
    assert!(saw_disagreement, "the two tiny members should disagree");
    let e = ScorerSpec::reward_model(root.join("rm-a"), Some(rm_ensembles::Aggregation::Min))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("single reward model") && e.contains("rm-a"),
        "{e}"
    );
    let e = run_decode(
        &request(ScorerSpec::reward_model(root.join("missing"), None).unwrap()),
        &mut |_| {},
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("missing") && e.contains("reward model folder"),
        "{e}"
    );
}

/// `plumb overopt` end to end on tiny models: the files, the n = 1 point (every sample's mean
/// gold reward, recomputed here from the samples file) and the n = m point (the gold reward
/// of each prompt's proxy argmax), and the errors named before anything is sampled.
#[test]
fn overopt_study_scores_every_sample_once_and_writes_its_report() {
    use rm_core::models::reward::RewardModelBundle;
    let root = temp_dir("overopt");
    let device = test_device();
    let (a, b, ensemble) = tiny_reward_models(&root);
    let policy = tiny_policy_and_prompts(&root);
    let request = |ns: Vec<usize>, gold: PathBuf, samples: StudySamples| OveroptRequest {
        samples,
        proxies: vec![a.clone(), ensemble.clone()],
        aggregations: vec![
            rm_ensembles::Aggregation::Mean,
            rm_ensembles::Aggregation::Min,
        ],
        gold,
        gold_aggregation: None,
        ns,
        data_dir: root.clone(),
        out_dir: root.join("study"),
        batch_size: 4,
        device: device.clone(),
    };
    let sample = |samples| StudySamples::Policy {
        policy: policy.clone(),
        input: PromptSource::File(root.join("prompts.jsonl")),
        prompts: 10,
        samples,
        sampling: SamplingConfig {
            max_new_tokens: 5,
            seed: 9,
            ..SamplingConfig::default()
        },
        batch_size: 4,
    };
    let mut stages = Vec::new();
    let report = run_overopt(&request(vec![1, 2, 4], b.clone(), sample(4)), &mut |s| {
        stages.push(s.to_string())
    })
    .unwrap();
    assert_eq!((report.prompts, report.samples_per_prompt), (3, 4));
    assert_eq!(stages.len(), 5, "{stages:?}");
    let labels: Vec<&str> = report
        .curves
        .iter()
        .map(|c| c.proxy.label.as_str())
        .collect();
    assert_eq!(labels, ["rm-a", "ens [mean]", "ens [min]"]);
    assert_eq!(report.gold.label, "rm-b");
    assert!(!report.gold.normalized);
    for path in [&report.json, &report.markdown, &report.scores] {
        assert!(path.is_file(), "{}", path.display());
    }
    assert_eq!(&std::fs::read(&report.png).unwrap()[..4], b"\x89PNG");
    // Recompute from the samples file: gold = rm-b, proxy rm-a, raw rewards.
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&report.samples_file)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 12);
    let mut rm_a = RewardModelBundle::load(&a, &device).unwrap();
    let mut rm_b = RewardModelBundle::load(&b, &device).unwrap();
    let (mut gold_sum, mut gold_at_best) = (0.0, 0.0);
    for chunk in lines.chunks(4) {
        let prompt: Prompt = serde_json::from_value(chunk[0]["prompt"].clone()).unwrap();
        let texts: Vec<&str> = chunk
            .iter()
            .map(|l| l["completion"].as_str().unwrap())
            .collect();
        let pairs: Vec<(&Prompt, &str)> = texts.iter().map(|t| (&prompt, *t)).collect();
        let (pa, gb) = (rm_a.score(&pairs).unwrap(), rm_b.score(&pairs).unwrap());
        gold_sum += gb.iter().map(|&g| f64::from(g)).sum::<f64>();
        gold_at_best += f64::from(gb[best_index(&pa)]);
    }
    let single = &report.curves[0].points;
    assert!(
        (single[0].gold_reward - gold_sum / 12.0).abs() < 1e-4,
        "{single:?}"
    );
    assert!(
        (single[2].gold_reward - gold_at_best / 3.0).abs() < 1e-4,
        "{single:?}"
    );
    // The proxy's own reward of its choice never falls as n grows.
    for c in &report.curves {
        for w in c.points.windows(2) {
            assert!(w[1].proxy_reward >= w[0].proxy_reward - 1e-9, "{c:?}");
        }
    }
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report.json).unwrap()).unwrap();
    assert_eq!(json["curves"].as_array().unwrap().len(), 3);
    assert!(
        std::fs::read_to_string(&report.markdown)
            .unwrap()
            .contains("| ens [min] |")
    );

    // The samples file again, without sampling: the same numbers.
    let again = run_overopt(
        &request(
            vec![1, 2, 4],
            b.clone(),
            StudySamples::File(report.samples_file.clone()),
        ),
        &mut |_| {},
    )
    .unwrap();
    assert_eq!(again.curves, report.curves);
    // Errors, before any sampling: the gold folder, n above the samples, no n.
    let e = run_overopt(
        &request(vec![1], root.join("no-gold"), sample(4)),
        &mut |_| {},
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("no-gold") && e.contains("gold reward model"),
        "{e}"
    );
    let e = run_overopt(&request(vec![1, 8], b.clone(), sample(4)), &mut |_| {})
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("best-of-8") && e.contains("--samples is 4"),
        "{e}"
    );
    assert!(run_overopt(&request(vec![], b.clone(), sample(4)), &mut |_| {}).is_err());
    let e = run_overopt(
        &request(
            vec![8],
            b.clone(),
            StudySamples::File(report.samples_file.clone()),
        ),
        &mut |_| {},
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("best-of-8") && e.contains("has 4"), "{e}");
    // A samples file whose prompts have different sample counts is named.
    let short = root.join("short.jsonl");
    std::fs::write(
        &short,
        lines[..7]
            .iter()
            .map(|l| l.to_string() + "\n")
            .collect::<String>(),
    )
    .unwrap();
    let e = run_overopt(&request(vec![1], b, StudySamples::File(short)), &mut |_| {})
        .unwrap_err()
        .to_string();
    assert!(e.contains("prompt 1 has 3 samples, prompt 0 has 4"), "{e}");
}

/// `plumb overopt --proxy DMOERM_DIR`: a DMoERM folder is a proxy like any reward model; its
/// n = 1 reward is the mean over every sample of its aggregate, here the sum of its two
/// experts' own rewards, recomputed from the samples file.
#[test]
fn overopt_takes_a_dmoerm_folder_as_a_proxy() {
    use rm_core::models::reward::RewardModelBundle;
    let root = temp_dir("overopt-dmoerm");
    let device = test_device();
    let (a, b, dmoerm) = dmoerm_of_two(&root);
    let policy = tiny_policy_and_prompts(&root);
    let request = OveroptRequest {
        samples: StudySamples::Policy {
            policy,
            input: PromptSource::File(root.join("prompts.jsonl")),
            prompts: 10,
            samples: 2,
            sampling: SamplingConfig {
                max_new_tokens: 5,
                seed: 4,
                ..SamplingConfig::default()
            },
            batch_size: 4,
        },
        proxies: vec![dmoerm],
        aggregations: Vec::new(),
        gold: b.clone(),
        gold_aggregation: None,
        ns: vec![1, 2],
        data_dir: root.clone(),
        out_dir: root.join("study"),
        batch_size: 4,
        device: device.clone(),
    };
    let report = run_overopt(&request, &mut |_| {}).unwrap();
    let proxy = &report.curves[0].proxy;
    assert_eq!(
        (proxy.label.as_str(), proxy.members, proxy.normalized),
        ("dmoerm", 2, false)
    );
    let mut rm_a = RewardModelBundle::load(&a, &device).unwrap();
    let mut rm_b = RewardModelBundle::load(&b, &device).unwrap();
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&report.samples_file)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let mut sum = 0.0;
    for l in &lines {
        let prompt: Prompt = serde_json::from_value(l["prompt"].clone()).unwrap();
        let pair = [(&prompt, l["completion"].as_str().unwrap())];
        sum += f64::from(rm_a.score(&pair).unwrap()[0] + rm_b.score(&pair).unwrap()[0]);
    }
    let n1 = report.curves[0].points[0].proxy_reward;
    let want = sum / lines.len() as f64;
    assert!((n1 - want).abs() < 1e-4, "{n1} vs {want}");
    std::fs::remove_dir_all(&root).ok();
}

/// `plumb decode --head-weights`: a policy folder with action heads (MAH-DPO) decodes with the
/// named head — head `a`, a copy of the model's own, decodes exactly as the folder did before it
/// had heads; head `b`, moved far from it, decodes otherwise — and an unknown head is an error.
#[test]
fn decode_steers_a_multi_head_policy_by_its_head_weights() {
    use rm_core::models::action_heads::{self, ActionHeadsSpec};
    use rm_core::models::policy_folder::Policy;
    let root = temp_dir("steer");
    let policy = tiny_policy_and_prompts(&root);
    let texts = |weights: Option<&str>| -> Vec<String> {
        let mut request =
            best_of_3_request(&root, &policy, ScorerSpec::Keywords(vec!["w7".into()]));
        request.head_weights = weights.map(|w| w.parse().unwrap());
        run_decode(&request, &mut |_| {}).unwrap();
        std::fs::read_to_string(&request.out)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["text"].to_string())
            .collect()
    };
    let plain = texts(None);
    let device = test_device();
    let base = action_heads::base_head(&Policy::load(&policy, &device).unwrap().lm.model);
    let far =
        base.clone() + base.random_like(rm_core::burn::tensor::Distribution::Uniform(-3.0, 3.0));
    let spec = ActionHeadsSpec {
        names: vec!["a".into(), "b".into()],
        default_weights: vec![1.0, 1.0],
        low_rank: None,
    };
    let linear = |w| rm_core::burn::nn::Linear {
        weight: rm_core::burn::module::Param::from_tensor(w),
        bias: None,
    };
    action_heads::save(&policy, &spec, &[linear(base), linear(far)]).unwrap();
    assert_eq!(texts(Some("a=1")), plain);
    assert_ne!(texts(Some("b=1")), plain);
    let mut request = best_of_3_request(&root, &policy, ScorerSpec::Keywords(vec!["w7".into()]));
    request.head_weights = Some("c=1".parse().unwrap());
    let e = run_decode(&request, &mut |_| {}).unwrap_err().to_string();
    assert!(e.contains("no action head \"c\""), "{e}");
}

#[test]
fn gold_answers_give_the_run_an_answer_accuracy() {
    // The tiny Llama writes words `wN`, each read as the number N; the last one is the answer.
    let model = tiny_model();
    let prompts = [text("w3 w4 w5"), text("w9 w10"), text("w20"), text("w8")];
    // Gold 5 for three prompts, none for the last.
    let gold = [Some(5.0), Some(5.0), Some(5.0), None];
    let last_number = |r: &str| -> Option<f64> {
        r.split_whitespace()
            .next_back()
            .and_then(|w| w[1..].parse().ok())
    };
    let bon = |n| {
        config(
            Strategy::BestOfN {
                n,
                temperature: 1.0,
                top_p: 1.0,
            },
            6,
        )
    };
    let mut accuracies = Vec::new();
    for n in [1, 16] {
        let run = decode_with_gold(
            &model,
            &prompts,
            &gold,
            &bon(n),
            11,
            &mut FnScorer(|_: &Prompt, r: &str| f32::from(u8::from(last_number(r) == Some(5.0)))),
            &mut |_| {},
        )
        .unwrap();
        let mut correct = 0;
        for (row, g) in run.rows.iter().zip(gold) {
            let Some(g) = g else {
                assert_eq!(row.answer_check, None);
                continue;
            };
            let check = row.answer_check.unwrap();
            assert_eq!(check.gold, g);
            assert_eq!(check.answer, last_number(&row.text), "{:?}", row.text);
            assert_eq!(check.correct, last_number(&row.text) == Some(5.0));
            // No `####` / "the answer is" / `\boxed{}` in these texts: never right when strict.
            assert!(!check.correct_strict);
            correct += usize::from(check.correct);
        }
        let a = run.summary.answers.clone().unwrap();
        assert_eq!((a.prompts, a.correct, a.correct_strict), (3, correct, 0));
        let p = correct as f64 / 3.0;
        assert!((a.accuracy - p).abs() < 1e-12);
        assert!((a.standard_error - (p * (1.0 - p) / 3.0).sqrt()).abs() < 1e-12);
        assert!(!a.oracle);
        accuracies.push(a.accuracy);
    }
    // Sixteen samples judged by whether they end in w5 find a right answer where one does.
    assert!(accuracies[1] >= accuracies[0], "{accuracies:?}");
    assert!(accuracies[1] > 0.0, "{accuracies:?}");
    // Without gold answers there is no accuracy, and no row carries a check.
    let run = run(&model, &prompts, &bon(2), 11, id_sum);
    assert_eq!(run.summary.answers, None);
    let line = serde_json::to_string(&run.rows[0]).unwrap();
    assert!(!line.contains("answer_check"), "{line}");
}
