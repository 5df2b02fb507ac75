//! The searches on hand-worked trees (a fake expander) and on a tiny Llama with step scorers
//! written in the tests.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};

use rm_core::chat::ChatTemplate;
use rm_core::device::test_device;
use rm_core::models::reward::RewardModelConfig;
use rm_core::sampling::{SamplingConfig, generate};
use rm_core::tokenize::TruncationSide;
use rm_core::types::Prompt;
use rm_process::{Aggregation, PrmShape, ProcessRewardModel};

use super::beam::grouped_beam_search;
use super::mcts::mcts;
use super::*;
use crate::tests::{temp_dir, tiny_model};
use crate::{DecodeConfig, DecodeRun, Detail, FnScorer, FnStepScorer, Strategy, decode};

/// A tree given by tables: the j-th copy of a parent in one call gets child `parent ⊕ [j]`;
/// scores and finished leaves are looked up; every call is recorded.
#[derive(Default)]
struct Fake {
    scores: HashMap<Vec<u32>, f64>,
    finished: HashSet<Vec<u32>>,
    /// Solutions whose final answer is the gold one ([`Expander::check`]).
    correct: HashSet<Vec<u32>>,
    expand_calls: Vec<Vec<Vec<u32>>>,
    /// Each expand call's `last`.
    expand_last: Vec<bool>,
    score_calls: usize,
    check_calls: usize,
}

impl Fake {
    fn new(scores: &[(&[u32], f64)], finished: &[&[u32]]) -> Self {
        Self {
            scores: scores.iter().map(|(k, v)| (k.to_vec(), *v)).collect(),
            finished: finished.iter().map(|k| k.to_vec()).collect(),
            ..Self::default()
        }
    }
}

impl Expander for Fake {
    fn expand(&mut self, parents: &[&Partial], last: bool) -> Result<Vec<Partial>> {
        self.expand_calls
            .push(parents.iter().map(|p| p.tokens.clone()).collect());
        self.expand_last.push(last);
        let mut copies: HashMap<Vec<u32>, u32> = HashMap::new();
        Ok(parents
            .iter()
            .map(|p| {
                let j = copies.entry(p.tokens.clone()).or_insert(0);
                let tokens = [p.tokens.as_slice(), &[*j]].concat();
                *j += 1;
                let finished = last || self.finished.contains(&tokens);
                Partial { tokens, finished }
            })
            .collect())
    }

    fn score(&mut self, solutions: &[&Partial]) -> Result<Vec<f64>> {
        self.score_calls += 1;
        Ok(solutions.iter().map(|s| self.scores[&s.tokens]).collect())
    }

    fn check(&mut self, solutions: &[&Partial]) -> Result<Vec<f64>> {
        self.check_calls += 1;
        assert!(
            solutions.iter().all(|s| s.finished),
            "only ends are checked"
        );
        Ok(solutions
            .iter()
            .map(|s| f64::from(u8::from(self.correct.contains(&s.tokens))))
            .collect())
    }
}

fn tree() -> Fake {
    Fake::new(
        &[
            (&[0], 0.5),
            (&[1], 0.9),
            (&[2], 0.7),
            (&[3], 0.1),
            (&[1, 0], 0.2),
            (&[1, 1], 0.6),
            (&[2, 0], 0.8),
            (&[2, 1], 0.9),
            (&[2, 0, 0], 0.4),
            (&[2, 0, 1], 0.85),
            (&[1, 1, 0], 0.95),
            (&[1, 1, 1], 0.5),
        ],
        &[&[2, 1]],
    )
}

#[test]
fn beam_search_follows_the_hand_worked_search() {
    // N = 4, M = 2: keep 2. t0: the root ×4 → [0] .5 [1] .9 [2] .7 [3] .1, keep [1], [2].
    // t1: rows [1] [2] [1] [2] → [1,0] .2 [2,0] .8 [1,1] .6 [2,1] .9 (finished, set aside),
    // keep [2,0], [1,1]. t2 (last): rows [2,0] [1,1] [2,0] [1,1] → all finished; the best
    // of every finished solution is [1,1,0] (.95), which a greedy-by-PRM walk from [1] (.9)
    // through [1,1] also reaches, but not from [2,1].
    let mut ex = tree();
    let out = grouped_beam_search(&mut ex, 1, 2, 2, 3).unwrap();
    assert_eq!(
        ex.expand_calls,
        vec![
            vec![vec![]; 4],
            vec![vec![1], vec![2], vec![1], vec![2]],
            vec![vec![2, 0], vec![1, 1], vec![2, 0], vec![1, 1]],
        ]
    );
    assert_eq!(ex.score_calls, 3);
    assert_eq!(out.iterations, 3);
    assert_eq!(out.finished_scores, [0.9, 0.4, 0.95, 0.85, 0.5]);
    assert_eq!((out.chosen, out.score, out.group), (2, 0.95, 0));
    assert_eq!(out.best.tokens, [1, 1, 0]);
    assert!(out.best.finished);
}

#[test]
fn dvts_grows_independent_greedy_subtrees() {
    // N = 4, M = 2: subtrees {rows 0, 1} and {rows 2, 3} of the root. g0: [0] .5 [1] .9 →
    // [1]; g1: [2] .7 [3] .1 → [2]. t1: g0 [1,0] .2 [1,1] .6 → [1,1]; g1 [2,0] .8 [2,1] .9
    // finished → [2,0]. t2: [1,1,0] .95 [1,1,1] .5 | [2,0,0] .4 [2,0,1] .85.
    let mut ex = tree();
    let out = grouped_beam_search(&mut ex, 2, 1, 2, 3).unwrap();
    assert_eq!(
        ex.expand_calls,
        vec![
            vec![vec![]; 4],
            vec![vec![1], vec![1], vec![2], vec![2]],
            vec![vec![1, 1], vec![1, 1], vec![2, 0], vec![2, 0]],
        ]
    );
    assert_eq!(out.finished_scores, [0.9, 0.95, 0.5, 0.4, 0.85]);
    assert_eq!((out.chosen, out.group), (1, 0));
    assert_eq!(out.best.tokens, [1, 1, 0]);
}

#[test]
fn beam_search_stops_when_every_beam_is_finished() {
    // N = M = 2: [0] .5 [1] .9 → keep [1]; its children [1,0] [1,1] both finish, so nothing
    // is left after 2 of the 10 allowed steps.
    let mut ex = Fake::new(
        &[(&[0], 0.5), (&[1], 0.9), (&[1, 0], 0.3), (&[1, 1], 0.4)],
        &[&[1, 0], &[1, 1]],
    );
    let out = grouped_beam_search(&mut ex, 1, 1, 2, 10).unwrap();
    assert_eq!(out.iterations, 2);
    assert_eq!(ex.expand_calls.len(), 2);
    assert_eq!((out.best.tokens.clone(), out.score), (vec![1, 1], 0.4));
}

fn mcts_tree() -> Fake {
    Fake::new(
        &[
            (&[0], 0.6),
            (&[1], 0.4),
            (&[0, 0], 0.2),
            (&[0, 1], 0.3),
            (&[1, 0], 0.9),
            (&[1, 1], 0.7),
            (&[1, 0, 0], 0.5),
            (&[1, 0, 1], 0.8),
            (&[1, 1, 0], 0.95),
            (&[1, 1, 1], 0.1),
            (&[0, 1, 0], 0.05),
            (&[0, 1, 1], 0.15),
        ],
        &[],
    )
}

fn node<'n>(out: &'n super::mcts::MctsOutcome, tokens: &[u32]) -> &'n super::mcts::Node {
    out.nodes
        .iter()
        .find(|n| n.partial.tokens == tokens)
        .unwrap_or_else(|| panic!("no node {tokens:?}"))
}

fn close(a: f64, b: f64) {
    assert!((a - b).abs() < 1e-9, "{a} vs {b}");
}

#[test]
fn mcts_visits_and_values_match_the_hand_worked_tree() {
    // k = 2, 3 steps. s1: expand the root → [0] .6, [1] .4 (root N 2, W 1.0). s2: UCT picks
    // [0] (higher Q, same N) → [0,0] .2 [0,1] .3 ([0] N 3 W 1.1; root N 4 W 1.5). s3: [1]
    // (Q .4 > .367 and fewer visits) → [1,0] .9 [1,1] .7 ([1] N 3 W 2.0; root N 6 W 3.1).
    // s4: [1] (Q .667 vs .367, N 3 each), then [1,0] → [1,0,0] .5 [1,0,1] .8, finished
    // (depth 3) ([1,0] N 3 W 2.2; [1] N 5 W 3.3; root N 8 W 4.4).
    let mut ex = mcts_tree();
    let out = mcts(&mut ex, (4, 2, 1.0), 3, &NodeValue::default()).unwrap();
    assert_eq!(out.expansions, 4);
    assert_eq!(out.nodes.len(), 9);
    let expected: [(&[u32], u64, f64); 6] = [
        (&[], 8, 4.4),
        (&[0], 3, 1.1),
        (&[1], 5, 3.3),
        (&[1, 0], 3, 2.2),
        (&[1, 1], 1, 0.7),
        (&[0, 1], 1, 0.3),
    ];
    for (t, n, w) in expected {
        assert_eq!(node(&out, t).visits, n, "{t:?}");
        close(node(&out, t).value_sum, w);
    }
    assert!(out.finished);
    assert_eq!(out.nodes[out.best].partial.tokens, [1, 0, 1]);
    close(out.nodes[out.best].value, 0.8);

    // s5 with C = 1: root N 8: [0] .367 + sqrt(ln 8/3) = 1.199 < [1] .66 + sqrt(ln 8/5) =
    // 1.305; at [1] (N 5): [1,0] .733 + sqrt(ln 5/3) = 1.466 < [1,1] .7 + sqrt(ln 5) = 1.969
    // → expand [1,1]: [1,1,0] .95 [1,1,1] .1.
    let mut ex = mcts_tree();
    let out = mcts(&mut ex, (5, 2, 1.0), 3, &NodeValue::default()).unwrap();
    assert_eq!(
        (node(&out, &[1, 1]).visits, node(&out, &[1]).visits),
        (3, 7)
    );
    close(node(&out, &[1, 1]).value_sum, 1.75);
    close(out.nodes[0].value_sum, 5.45);
    assert_eq!(out.nodes[out.best].partial.tokens, [1, 1, 0]);

    // s5 with C = 2 explores instead: [0] .367 + 2·.833 = 2.032 > [1] .66 + 2·.645 = 1.950;
    // at [0] (N 3): [0,1] .3 + 2·sqrt(ln 3) beats [0,0] .2 + the same → expand [0,1].
    let mut ex = mcts_tree();
    let out = mcts(&mut ex, (5, 2, 2.0), 3, &NodeValue::default()).unwrap();
    assert_eq!(
        (node(&out, &[0, 1]).visits, node(&out, &[0]).visits),
        (3, 5)
    );
    close(node(&out, &[0, 1]).value_sum, 0.5);
    close(out.nodes[0].value_sum, 4.6);
    assert_eq!(out.nodes[out.best].partial.tokens, [1, 0, 1]);
}

#[test]
fn mcts_revisits_finished_nodes_without_expanding() {
    // One step: the root's children are finished at once; later simulations back up the value
    // of the greedy (C = 0) choice [0] again and call neither the policy nor the PRM.
    let mut ex = mcts_tree();
    let out = mcts(&mut ex, (3, 2, 0.0), 1, &NodeValue::default()).unwrap();
    assert_eq!(
        (out.expansions, ex.expand_calls.len(), ex.score_calls),
        (1, 1, 1)
    );
    assert_eq!(node(&out, &[0]).visits, 3);
    close(node(&out, &[0]).value_sum, 1.8);
    assert_eq!(out.nodes[0].visits, 4);
    close(out.nodes[0].value_sum, 2.2);
    assert_eq!(out.nodes[out.best].partial.tokens, [0]);
}

fn rollout_value(rollouts: usize, judge: RolloutJudge, lambda: f64) -> NodeValue {
    NodeValue {
        rollouts,
        judge,
        lambda,
        ..NodeValue::default()
    }
}

#[test]
fn mcts_values_nodes_by_the_share_of_rollouts_that_reach_the_gold_answer() {
    // Children 2, rollouts 2, judge = answer, λ = 1; the rollouts from node x are x ⊕ [0] and
    // x ⊕ [1] (finished). Correct: [0,1], [1,0], [1,1], [1,0,1], [1,1,0].
    // Sim 1: root → [0], [1]; rollouts [0,0] ✗ [0,1] ✓ → v[0] = .5; [1,0] ✓ [1,1] ✓ → v[1] = 1.
    //   Backup: root N = 2, W = 1.5.
    // Sim 2 (C = 1): [0] .5 + √(ln 2) < [1] 1 + √(ln 2) → expand [1] → [1,0], [1,1];
    //   rollouts [1,0,0] ✗ [1,0,1] ✓ → .5; [1,1,0] ✓ [1,1,1] ✗ → .5.
    //   Backup root, [1]: N += 2, W += 1 → root N = 4, W = 2.5; [1] N = 3, W = 2.
    let mut ex = mcts_tree();
    ex.correct = [&[0, 1][..], &[1, 0], &[1, 1], &[1, 0, 1], &[1, 1, 0]]
        .iter()
        .map(|t| t.to_vec())
        .collect();
    let value = rollout_value(2, RolloutJudge::Answer, 1.0);
    let out = mcts(&mut ex, (2, 2, 1.0), 3, &value).unwrap();
    assert_eq!(
        ex.expand_calls,
        vec![
            vec![vec![], vec![]],
            vec![vec![0], vec![0], vec![1], vec![1]],
            vec![vec![1], vec![1]],
            vec![vec![1, 0], vec![1, 0], vec![1, 1], vec![1, 1]],
        ]
    );
    assert_eq!(ex.expand_last, [false, true, false, true]);
    assert_eq!((ex.score_calls, ex.check_calls), (0, 2), "no PRM is read");
    assert_eq!((out.expansions, out.rollouts), (2, 8));
    close(node(&out, &[0]).value, 0.5);
    close(node(&out, &[1]).value, 1.0);
    close(node(&out, &[1, 0]).value, 0.5);
    close(node(&out, &[1, 1]).value, 0.5);
    assert_eq!((out.nodes[0].visits, node(&out, &[1]).visits), (4, 3));
    close(out.nodes[0].value_sum, 2.5);
    close(node(&out, &[1]).q(), 2.0 / 3.0);
    // Rollouts value nodes; they are not nodes, so nothing finished: the best node is [1].
    assert!(!out.finished);
    assert_eq!(out.nodes[out.best].partial.tokens, [1]);
}

#[test]
fn mcts_mixes_the_prm_value_with_prm_judged_rollouts_by_lambda() {
    // λ = .5, judge = prm: [0] PRM .6, rollouts [0,0] .2 [0,1] .3 → .5·.6 + .5·.25 = .425;
    // [1] PRM .4, rollouts [1,0] .9 [1,1] .7 → .5·.4 + .5·.8 = .6. Two PRM calls.
    let mut ex = mcts_tree();
    let value = rollout_value(2, RolloutJudge::Prm, 0.5);
    let out = mcts(&mut ex, (1, 2, 1.0), 3, &value).unwrap();
    assert_eq!((ex.score_calls, ex.check_calls), (2, 0));
    close(node(&out, &[0]).value, 0.425);
    close(node(&out, &[1]).value, 0.6);
    close(out.nodes[0].value_sum, 1.025);
}

#[test]
fn a_finished_child_is_its_own_rollout() {
    // [1] finishes at once: judged itself (1), only [0] rolls out ([0,0] ✗, [0,1] ✓ → .5).
    let mut ex = mcts_tree();
    ex.finished.insert(vec![1]);
    ex.correct = [vec![1], vec![0, 1]].into_iter().collect();
    let value = rollout_value(2, RolloutJudge::Answer, 1.0);
    let out = mcts(&mut ex, (1, 2, 1.0), 3, &value).unwrap();
    assert_eq!(ex.expand_calls[1], vec![vec![0], vec![0]]);
    assert_eq!(out.rollouts, 2);
    close(node(&out, &[0]).value, 0.5);
    close(node(&out, &[1]).value, 1.0);
    assert!(out.finished);
    assert_eq!(out.nodes[out.best].partial.tokens, [1]);
}

#[test]
fn a_finished_child_is_not_scored_twice_when_the_prm_judges() {
    // λ = .5, judge = prm, [1] finished: its value is its PRM score (.4) in both parts, from
    // the one partial call; [0] rolls out ([0,0] .2, [0,1] .3 → .5·.6 + .5·.25 = .425).
    let mut ex = mcts_tree();
    ex.finished.insert(vec![1]);
    let value = rollout_value(2, RolloutJudge::Prm, 0.5);
    let out = mcts(&mut ex, (1, 2, 1.0), 3, &value).unwrap();
    assert_eq!(ex.score_calls, 2);
    close(node(&out, &[0]).value, 0.425);
    close(node(&out, &[1]).value, 0.4);
    // Every child finished: no rollout, no second call.
    let mut ex = mcts_tree();
    let out = mcts(&mut ex, (1, 2, 1.0), 1, &value).unwrap();
    assert_eq!((ex.score_calls, out.rollouts), (1, 0));
    close(node(&out, &[0]).value, 0.6);
}

#[test]
fn node_values_are_checked_and_say_whether_they_read_a_prm() {
    assert!(NodeValue::default().needs_prm());
    assert!(!rollout_value(4, RolloutJudge::Answer, 1.0).needs_prm());
    assert!(rollout_value(4, RolloutJudge::Answer, 0.5).needs_prm());
    assert!(rollout_value(4, RolloutJudge::Prm, 1.0).needs_prm());
    let e = rollout_value(0, RolloutJudge::Answer, 1.0)
        .validate()
        .unwrap_err()
        .to_string();
    assert!(e.starts_with("value.rollouts:"), "{e}");
    let e = rollout_value(2, RolloutJudge::Prm, 1.5)
        .validate()
        .unwrap_err()
        .to_string();
    assert!(e.starts_with("value.lambda:"), "{e}");
    let c = DecodeConfig::from_toml(
        "[strategy]\ntype = \"mcts\"\nsimulations = 4\nchildren = 2\n\
         [strategy.value]\nrollouts = 3\njudge = \"answer\"\nextraction = \"strict\"\n",
        std::path::Path::new("v.toml"),
    )
    .unwrap();
    let Strategy::Mcts { value, .. } = &c.strategy else {
        panic!("{:?}", c.strategy)
    };
    assert_eq!(
        *value,
        NodeValue {
            rollouts: 3,
            judge: RolloutJudge::Answer,
            lambda: 1.0,
            extraction: rm_process::final_answer::AnswerExtraction::Strict,
        }
    );
    assert!(!c.strategy.needs_step_scorer() && c.strategy.is_step_search());
}

// ---- On the tiny Llama (vocabulary w0 … w47, eos w1), steps ended by "w6".

fn steps(max_steps: usize, step_tokens: usize, temperature: f32) -> StepParams {
    StepParams {
        delimiter: "w6".into(),
        max_steps,
        step_tokens,
        aggregation: Aggregation::Last,
        temperature,
        top_p: 1.0,
    }
}

/// A step probability that depends on the step's words: (Σ ids mod 10 + 1) / 11.
fn step_prob(step: &str) -> f32 {
    let s: u32 = step
        .split_whitespace()
        .map(|w| w[1..].parse::<u32>().unwrap())
        .sum();
    ((s % 10) + 1) as f32 / 11.0
}

fn run_steps(
    model: &DecodeModel,
    prompts: &[Prompt],
    strategy: Strategy,
    max_new_tokens: usize,
    seen: &RefCell<Vec<Vec<String>>>,
) -> DecodeRun {
    let mut step_scorer = FnStepScorer(|_: &Prompt, s: &[&str]| {
        seen.borrow_mut()
            .push(s.iter().map(|x| x.to_string()).collect());
        s.iter().map(|x| step_prob(x)).collect()
    });
    struct WithSteps<'s, S>(&'s mut S);
    impl<S: StepScorer> Scorer for WithSteps<'_, S> {
        fn score(&mut self, _: &[(&Prompt, &str)]) -> Result<Vec<f32>> {
            panic!("the searches only call the step scorer")
        }
        fn steps(&mut self) -> Option<&mut dyn StepScorer> {
            Some(self.0)
        }
    }
    decode(
        model,
        prompts,
        &DecodeConfig {
            max_new_tokens,
            strategy,
        },
        11,
        &mut WithSteps(&mut step_scorer),
        &mut |_| {},
    )
    .unwrap()
}

fn prompts() -> Vec<Prompt> {
    vec![
        Prompt::Text("w3 w4 w5".into()),
        Prompt::Text("w9 w10".into()),
    ]
}

#[test]
fn one_beam_of_width_one_is_greedy_decoding() {
    let model = tiny_model();
    let seen = RefCell::new(Vec::new());
    for max_steps in [2, 20] {
        let run = run_steps(
            &model,
            &prompts(),
            Strategy::BeamSearch {
                n: 1,
                beam_width: 1,
                steps: steps(max_steps, 3, 0.0),
            },
            12,
            &seen,
        );
        for (row, p) in run.rows.iter().zip(prompts()) {
            let ids = model.prompt_ids(&p, 12).unwrap();
            let greedy = SamplingConfig {
                stop_tokens: model.stop_tokens(),
                ..SamplingConfig::greedy(12)
            };
            let plain = generate(
                &model.lm,
                &model.lm.tokenizer,
                &[ids],
                &greedy,
                &model.lm.device,
            )
            .unwrap();
            assert_eq!(row.tokens, plain[0].tokens, "max_steps {max_steps}");
            assert_eq!(row.stats.tokens_generated, row.tokens.len());
        }
    }
}

#[test]
fn dvts_with_one_subtree_is_beam_search() {
    let model = tiny_model();
    let seen = RefCell::new(Vec::new());
    let beam = run_steps(
        &model,
        &prompts(),
        Strategy::BeamSearch {
            n: 3,
            beam_width: 3,
            steps: steps(4, 3, 1.0),
        },
        14,
        &seen,
    );
    let dvts = run_steps(
        &model,
        &prompts(),
        Strategy::Dvts {
            n: 3,
            beam_width: 3,
            steps: steps(4, 3, 1.0),
        },
        14,
        &seen,
    );
    for (b, d) in beam.rows.iter().zip(&dvts.rows) {
        assert_eq!((&b.tokens, b.reward), (&d.tokens, d.reward));
        assert_eq!(b.stats.tokens_generated, d.stats.tokens_generated);
        assert_eq!(b.stats.scorer_calls, d.stats.scorer_calls);
        let (
            Detail::BeamSearch {
                finished_rewards: fb,
                chosen: cb,
                ..
            },
            Detail::Dvts {
                finished_rewards: fd,
                chosen: cd,
                subtrees: 1,
                subtree: 0,
                ..
            },
        ) = (&b.detail, &d.detail)
        else {
            panic!("{:?} {:?}", b.detail, d.detail)
        };
        assert_eq!((fb, cb), (fd, cd));
    }
}

#[test]
fn beam_search_keeps_its_budgets_and_reports_the_prm_score_of_its_answer() {
    let model = tiny_model();
    let seen = RefCell::new(Vec::new());
    let run = run_steps(
        &model,
        &prompts(),
        Strategy::BeamSearch {
            n: 4,
            beam_width: 2,
            steps: StepParams {
                aggregation: Aggregation::Min,
                ..steps(3, 3, 1.0)
            },
        },
        10,
        &seen,
    );
    let calls: usize = run.rows.iter().map(|r| r.stats.scorer_calls).sum();
    assert_eq!(
        seen.borrow().len(),
        run.rows.iter().map(|r| r.stats.texts_scored).sum::<usize>()
    );
    assert!(calls > 0 && calls == run.summary.scorer_calls);
    for row in &run.rows {
        let Detail::BeamSearch {
            iterations,
            finished_rewards,
            chosen,
        } = &row.detail
        else {
            panic!()
        };
        assert!(*iterations <= 3 && row.stats.scorer_calls == *iterations);
        assert!(row.tokens.len() <= 10, "{}", row.tokens.len());
        assert!(row.stats.tokens_generated >= row.tokens.len());
        // The reward is the min of the step scorer over the answer's own steps …
        let probs: Vec<f32> = split_steps(&row.text, "w6")
            .iter()
            .map(|s| step_prob(s))
            .collect();
        let expected = if probs.is_empty() {
            0.0
        } else {
            Aggregation::Min.apply(&probs).unwrap() as f32
        };
        assert_eq!(row.reward, expected, "{}", row.text);
        // … and the best of every finished solution's.
        let max = finished_rewards.iter().copied().fold(f32::MIN, f32::max);
        assert_eq!((row.reward, finished_rewards[*chosen]), (max, max));
    }
    // The first PRM call of a prompt sees first steps only: at most 3 tokens each.
    let first = &seen.borrow()[0];
    assert!(
        first.iter().all(|s| s.split_whitespace().count() <= 3),
        "{first:?}"
    );
}

#[test]
fn sibling_preferences_keep_pairs_at_least_the_margin_apart() {
    let q = [0.5, 0.2, 0.45, 0.5];
    assert_eq!(
        super::mcts::sibling_preferences(&q, 0.1),
        vec![(0, 1), (2, 1), (3, 1)]
    );
    // Ties are never pairs, whatever the margin.
    assert_eq!(super::mcts::sibling_preferences(&q, 0.0).len(), 5);
    assert!(super::mcts::sibling_preferences(&q, 0.6).is_empty());
}

#[test]
fn mcts_on_the_tiny_model_counts_its_tree() {
    let model = tiny_model();
    let seen = RefCell::new(Vec::new());
    let run = run_steps(
        &model,
        &prompts(),
        Strategy::Mcts {
            simulations: 5,
            children: 2,
            exploration: 1.0,
            steps: steps(3, 3, 1.0),
            value: NodeValue::default(),
        },
        12,
        &seen,
    );
    for row in &run.rows {
        let Detail::Mcts {
            expansions,
            nodes,
            root_visits,
            root_children_visits,
            finished,
            depth,
            ..
        } = &row.detail
        else {
            panic!()
        };
        assert!((1..=5).contains(expansions));
        assert_eq!(*nodes, 1 + 2 * expansions);
        assert_eq!(row.stats.scorer_calls, *expansions);
        assert_eq!(*root_visits, root_children_visits.iter().sum::<u64>());
        assert!(*depth >= 1 && *depth <= 3 && row.tokens.len() <= 12);
        // Sibling groups: the root's children first (all with text); every value a mean PRM
        // probability in [0, 1].
        let Detail::Mcts { siblings, .. } = &row.detail else {
            panic!()
        };
        assert!(!siblings.is_empty());
        assert!(siblings[0].prefix.is_empty(), "{:?}", siblings[0]);
        for g in siblings {
            assert!(g.steps.len() >= 2 && g.steps.len() == g.q.len());
            assert!(
                g.steps
                    .iter()
                    .all(|s| !s.trim().is_empty() && !s.contains("w6"))
            );
            assert!(g.q.iter().all(|q| (0.0..=1.0).contains(q)));
        }
        if *finished {
            let probs: Vec<f32> = split_steps(&row.text, "w6")
                .iter()
                .map(|s| step_prob(s))
                .collect();
            let last = probs.last().copied().unwrap_or(0.0);
            assert_eq!(row.reward, last, "{}", row.text);
        }
    }
    // Step pairs of every tree: siblings at least the margin apart, the better one chosen; the
    // file reads back as train-prm's step-pairs source.
    let rows = crate::mcts_step_pairs(&run.rows, 0.0);
    assert!(!rows.is_empty());
    for r in &rows {
        assert!(
            r["q_chosen"].as_f64().unwrap() > r["q_rejected"].as_f64().unwrap(),
            "{r}"
        );
    }
    let wide = crate::mcts_step_pairs(&run.rows, 0.05);
    assert!(wide.len() <= rows.len());
    for r in &wide {
        assert!(r["q_chosen"].as_f64().unwrap() - r["q_rejected"].as_f64().unwrap() >= 0.05);
    }
    let path = std::env::temp_dir().join(format!("mcts-pairs-{}.jsonl", std::process::id()));
    let text: String = rows.iter().map(|r| format!("{r}\n")).collect();
    std::fs::write(&path, text).unwrap();
    let loaded = rm_process::step_pairs::load_step_pairs(&path).unwrap();
    assert_eq!(loaded.len(), rows.len());
    std::fs::remove_file(&path).ok();
}

/// Refinement on the tiny model: the reward is the best of the draft and its rewrites by the
/// step scorer; a threshold of 0 keeps every draft (one generation, one scorer call), a
/// threshold above every probability refines every draft, rewriting from its first step
/// (every step is doubted), and the local rewrites start with the draft's kept prefix.
#[test]
fn refinement_on_the_tiny_model_keeps_or_rewrites_the_draft() {
    let model = tiny_model();
    let seen = RefCell::new(Vec::new());
    let keep = run_steps(
        &model,
        &prompts(),
        Strategy::Refine {
            candidates: 2,
            threshold: 0.0,
            steps: steps(4, 3, 1.0),
        },
        12,
        &seen,
    );
    for row in &keep.rows {
        let Detail::Refine {
            chosen,
            flagged_step,
            draft_reward,
            ..
        } = &row.detail
        else {
            panic!()
        };
        assert_eq!((*chosen, *flagged_step), (crate::Refinement::Draft, None));
        assert_eq!((row.reward, row.stats.scorer_calls), (*draft_reward, 1));
    }
    let refine = run_steps(
        &model,
        &prompts(),
        Strategy::Refine {
            candidates: 2,
            threshold: 2.0,
            steps: steps(4, 3, 1.0),
        },
        12,
        &seen,
    );
    for row in &refine.rows {
        let Detail::Refine {
            chosen,
            flagged_step,
            draft_reward,
            local_rewards,
            global_rewards,
        } = &row.detail
        else {
            panic!()
        };
        assert_eq!(*flagged_step, Some(0), "every probability is below 2");
        assert_eq!((local_rewards.len(), global_rewards.len()), (2, 2));
        let best = local_rewards
            .iter()
            .chain(global_rewards)
            .copied()
            .fold(*draft_reward, f32::max);
        assert_eq!(row.reward, best, "{chosen:?}");
        // Draft score, step probabilities, rewrites' scores: three scorer calls.
        assert_eq!(row.stats.scorer_calls, 3);
    }
}

#[test]
fn a_trained_prm_scores_the_search_as_it_scores_a_response() {
    let device = test_device();
    let dir = temp_dir("prm");
    rm_core::fixtures::write_tiny_llama(&dir.join("base"), 7).unwrap();
    let prm = ProcessRewardModel::build(
        &RewardModelConfig {
            backbone: dir.join("base"),
            pooling: None,
            max_len: 64,
            truncation: TruncationSide::Left,
            attributes: vec!["step_correct".into()],
            template: Some(ChatTemplate::Plain),
            lora: None,
            head_init_std: 0.5,
        },
        PrmShape::OnePass {
            separator: " w6".into(),
        },
        3,
        &device,
    )
    .unwrap();
    let mut scorer = PrmScorer {
        prm,
        delimiter: "w6".into(),
        aggregation: Aggregation::Last,
    };
    let model = tiny_model();
    let run = decode(
        &model,
        &prompts(),
        &DecodeConfig {
            max_new_tokens: 10,
            strategy: Strategy::Dvts {
                n: 4,
                beam_width: 2,
                steps: steps(3, 3, 1.0),
            },
        },
        5,
        &mut scorer,
        &mut |_| {},
    )
    .unwrap();
    for row in &run.rows {
        let again = scorer.score(&[(&row.prompt, row.text.as_str())]).unwrap()[0];
        assert!(
            (row.reward - again).abs() < 1e-5,
            "{} vs {again}",
            row.reward
        );
        assert!(row.reward > 0.0 && row.reward < 1.0);
    }
}

#[test]
fn bad_search_parameters_are_named() {
    let check = |strategy: Strategy, field: &str| {
        let e = DecodeConfig {
            max_new_tokens: 8,
            strategy,
        }
        .validate()
        .unwrap_err()
        .to_string();
        assert!(e.starts_with(field), "{e}");
        e
    };
    let e = check(
        Strategy::BeamSearch {
            n: 6,
            beam_width: 4,
            steps: StepParams::default(),
        },
        "n:",
    );
    assert!(e.contains("multiple of beam_width (4)"), "{e}");
    check(
        Strategy::Dvts {
            n: 4,
            beam_width: 0,
            steps: StepParams::default(),
        },
        "beam_width:",
    );
    check(
        Strategy::BeamSearch {
            n: 4,
            beam_width: 2,
            steps: StepParams {
                max_steps: 0,
                ..StepParams::default()
            },
        },
        "steps.max_steps:",
    );
    check(
        Strategy::Dvts {
            n: 4,
            beam_width: 2,
            steps: StepParams {
                step_tokens: 0,
                ..StepParams::default()
            },
        },
        "steps.step_tokens:",
    );
    check(
        Strategy::BeamSearch {
            n: 4,
            beam_width: 2,
            steps: StepParams {
                delimiter: String::new(),
                ..StepParams::default()
            },
        },
        "steps.delimiter:",
    );
    check(
        Strategy::Mcts {
            simulations: 0,
            children: 2,
            exploration: 1.0,
            steps: StepParams::default(),
            value: NodeValue::default(),
        },
        "simulations:",
    );
    check(
        Strategy::Mcts {
            simulations: 4,
            children: 2,
            exploration: f64::NAN,
            steps: StepParams::default(),
            value: NodeValue::default(),
        },
        "exploration:",
    );
    // A scorer without a step scorer is refused at the first PRM call, by name.
    let model = tiny_model();
    let e = decode(
        &model,
        &prompts(),
        &DecodeConfig {
            max_new_tokens: 6,
            strategy: Strategy::BeamSearch {
                n: 2,
                beam_width: 1,
                steps: steps(2, 3, 1.0),
            },
        },
        1,
        &mut FnScorer(|_: &Prompt, _: &str| 0.0),
        &mut |_| {},
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("--prm"), "{e}");
}

#[test]
fn search_configs_read_from_toml() {
    let text = "max_new_tokens = 256\n[strategy]\ntype = \"dvts\"\nn = 8\nbeam_width = 2\n\
                [strategy.steps]\ndelimiter = \"\\n\"\nmax_steps = 6\naggregation = \"min\"\n";
    let c = DecodeConfig::from_toml(text, std::path::Path::new("s.toml")).unwrap();
    assert_eq!(
        c.strategy,
        Strategy::Dvts {
            n: 8,
            beam_width: 2,
            steps: StepParams {
                delimiter: "\n".into(),
                max_steps: 6,
                aggregation: Aggregation::Min,
                ..StepParams::default()
            }
        }
    );
    let c = DecodeConfig::from_toml(
        "[strategy]\ntype = \"mcts\"\nsimulations = 8\nchildren = 3\n",
        std::path::Path::new("m.toml"),
    )
    .unwrap();
    assert_eq!(
        c.strategy,
        Strategy::Mcts {
            simulations: 8,
            children: 3,
            exploration: std::f64::consts::SQRT_2,
            steps: StepParams::default(),
            value: NodeValue::default(),
        }
    );
    let e = DecodeConfig::from_toml(
        "[strategy]\ntype = \"beam-search\"\nn = 4\nbeam_width = 2\n[strategy.steps]\nwidth = 3\n",
        std::path::Path::new("b.toml"),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("b.toml") && e.contains("width"), "{e}");
}

#[test]
fn split_steps_and_prompt_text() {
    assert_eq!(
        split_steps(" a \n\n\n\nb\n\n c\n\n", "\n\n"),
        ["a", "b", "c"]
    );
    assert!(split_steps("  \n\n ", "\n\n").is_empty());
    use rm_core::types::{Conversation, Role, Turn};
    let c = Prompt::Conversation(Conversation::new(vec![
        Turn::new(Role::System, "be brief"),
        Turn::new(Role::User, "2+2?"),
        Turn::new(Role::Assistant, "4"),
    ]));
    assert_eq!(prompt_text(&c), "2+2?");
    assert_eq!(empty_score(Aggregation::Last), 0.0);
    assert_eq!(empty_score(Aggregation::SumLogProb), f64::from(f32::MIN));
}

#[test]
fn run_decode_refuses_a_search_without_a_prm() {
    let request = crate::DecodeRequest {
        policy: "no-such-policy".into(),
        scorer: crate::ScorerSpec::Keywords(vec!["x".into()]),
        arm: None,
        input: crate::PromptSource::File("no-such-prompts.jsonl".into()),
        prompts: 1,
        data_dir: ".".into(),
        config: DecodeConfig {
            max_new_tokens: 8,
            strategy: Strategy::Mcts {
                simulations: 2,
                children: 2,
                exploration: 1.0,
                steps: StepParams::default(),
                value: NodeValue::default(),
            },
        },
        seed: 1,
        curve: Vec::new(),
        out: "out.jsonl".into(),
        step_pairs: None,
        device: test_device(),
        head_weights: None,
    };
    let e = crate::run_decode(&request, &mut |_| {})
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("mcts needs a process reward model (--prm DIR)"),
        "{e}"
    );
    let request = crate::DecodeRequest {
        scorer: crate::ScorerSpec::Prm {
            dir: "no-such-prm".into(),
            delimiter: "\n\n".into(),
            aggregation: Aggregation::Last,
        },
        ..request
    };
    let e = crate::run_decode(&request, &mut |_| {})
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("no-such-prm") && e.contains("no such PRM folder"),
        "{e}"
    );
    // Step pairs come from MCTS trees only, at a margin ≥ 0.
    let mut request = crate::DecodeRequest {
        step_pairs: Some(crate::StepPairsOut {
            path: "pairs.jsonl".into(),
            margin: -1.0,
        }),
        ..request
    };
    let e = crate::run_decode(&request, &mut |_| {})
        .unwrap_err()
        .to_string();
    assert!(e.contains("pair_margin"), "{e}");
    request.config.strategy = Strategy::BestOfN {
        n: 2,
        temperature: 1.0,
        top_p: 1.0,
    };
    let e = crate::run_decode(&request, &mut |_| {})
        .unwrap_err()
        .to_string();
    assert!(e.contains("MCTS tree") && e.contains("best-of-n"), "{e}");
    // Without a scorer, only MCTS valued by answer-checked rollouts alone runs.
    request.step_pairs = None;
    request.scorer = crate::ScorerSpec::None;
    let e = crate::run_decode(&request, &mut |_| {})
        .unwrap_err()
        .to_string();
    assert!(e.contains("best-of-n needs a scorer"), "{e}");
    let answer_checked = |lambda| Strategy::Mcts {
        simulations: 2,
        children: 2,
        exploration: 1.0,
        steps: StepParams::default(),
        value: rollout_value(2, RolloutJudge::Answer, lambda),
    };
    request.config.strategy = answer_checked(0.5);
    let e = crate::run_decode(&request, &mut |_| {})
        .unwrap_err()
        .to_string();
    assert!(e.contains("mcts needs a scorer"), "{e}");
    request.config.strategy = answer_checked(1.0);
    let e = crate::run_decode(&request, &mut |_| {})
        .unwrap_err()
        .to_string();
    assert!(e.contains("no-such-policy"), "past the scorer check: {e}");
}

#[test]
fn answer_checked_mcts_on_the_tiny_llama_reads_the_gold_answer_and_no_prm() {
    // Steps end at "w6"; depth 2 is generated to the end, so two simulations finish nodes. A
    // finished node's value (λ = 1) is its own check: its last number ("w3" reads 3) against
    // the gold 3, recomputed here from the text.
    let model = tiny_model();
    let config = DecodeConfig {
        max_new_tokens: 10,
        strategy: Strategy::Mcts {
            simulations: 3,
            children: 2,
            exploration: 1.0,
            steps: steps(2, 3, 1.0),
            value: rollout_value(2, RolloutJudge::Answer, 1.0),
        },
    };
    let prompts = prompts();
    let gold = vec![Some(3.0); prompts.len()];
    let run = crate::decode_with_gold(
        &model,
        &prompts,
        &gold,
        &config,
        9,
        &mut crate::scorer::NoScorer,
        &mut |_| {},
    )
    .unwrap();
    for row in &run.rows {
        let Detail::Mcts {
            rollouts,
            finished,
            expansions,
            ..
        } = &row.detail
        else {
            panic!("{:?}", row.detail)
        };
        assert_eq!(row.stats.scorer_calls, 0);
        assert!(*rollouts > 0 && rollouts % 2 == 0, "{rollouts}");
        assert!(*rollouts <= 2 * 2 * expansions);
        assert!(*finished);
        let last_number: Option<f64> = row
            .text
            .split_whitespace()
            .rev()
            .find_map(|w| w.trim_start_matches('w').parse().ok());
        let correct = f32::from(u8::from(last_number == Some(3.0)));
        assert_eq!(row.reward, correct, "{:?}", row.text);
        assert_eq!(row.answer_check.map(|c| c.correct), Some(correct == 1.0));
    }
    // The values read the gold answers, so the summary marks its accuracy as an oracle's.
    let answers = run.summary.answers.as_ref().unwrap();
    let correct = run.rows.iter().filter(|r| r.reward == 1.0).count();
    assert_eq!((answers.prompts, answers.correct), (prompts.len(), correct));
    assert!(answers.oracle);
    // The same run without gold answers is refused by name.
    let e = decode(
        &model,
        &prompts,
        &config,
        9,
        &mut crate::scorer::NoScorer,
        &mut |_| {},
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("gold answer"), "{e}");
}
