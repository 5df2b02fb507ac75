//! Hand-worked numbers for every formula, the readers' errors, and a fake scorer end to end.

use std::path::PathBuf;

use bench_harness::data::{
    EvalFormat, detect_format, read_pairs, read_pairs_lenient, read_v1, read_v1_lenient, read_v2,
    read_v2_lenient, rows_from_pairs,
};
use bench_harness::implicit::{ImplicitRewardError, implicit_rewards};
use bench_harness::sections::{SUBSET_MAPPING, example_count};
use bench_harness::v1::OverallRule;
use bench_harness::v2::{TiesError, V2OverallRule};
use bench_harness::*;
use rm_core::types::{PreferencePair, Prompt};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn close(a: f64, b: f64) {
    assert!((a - b).abs() < 1e-12, "{a} != {b}");
}

fn v1(subset: &str, chosen: f32, rejected: f32) -> V1Scored {
    V1Scored {
        id: None,
        subset: subset.into(),
        chosen,
        rejected,
    }
}

fn v2(id: &str, subset: &str, chosen: &[f32], rejected: &[f32]) -> V2Scored {
    V2Scored {
        id: Some(id.into()),
        subset: subset.into(),
        chosen: chosen.to_vec(),
        rejected: rejected.to_vec(),
    }
}

// ---------------------------------------------------------------- v1

#[test]
fn v1_ties_count_as_wrong() {
    let r = v1_report(
        "m",
        &[
            v1("alpacaeval-easy", 1.0, 0.0),
            v1("alpacaeval-easy", 0.5, 0.5),
            v1("alpacaeval-easy", 0.0, 1.0),
            v1("alpacaeval-easy", f32::NAN, 0.0),
        ],
    );
    let s = r.subset("alpacaeval-easy").unwrap();
    assert_eq!((s.count, s.correct), (4, 1));
    close(s.accuracy, 0.25);
    assert_eq!(
        r.rows.iter().map(|r| r.correct).collect::<Vec<_>>(),
        [true, false, false, false]
    );
}

#[test]
fn v1_section_is_the_example_count_weighted_mean_of_its_subsets() {
    // alpacaeval-easy 1/1 (weight 100), mt-bench-easy 1/2 (weight 28), not the 3 rows seen:
    // (100·1 + 28·0.5) / 128 = 114/128.
    let r = v1_report(
        "m",
        &[
            v1("alpacaeval-easy", 1.0, 0.0),
            v1("mt-bench-easy", 1.0, 0.0),
            v1("mt-bench-easy", 0.0, 1.0),
        ],
    );
    let chat = r.section("Chat").unwrap();
    close(chat.score, 114.0 / 128.0);
    assert_eq!(chat.total_weight, 128);
    assert_eq!(chat.subsets, ["alpacaeval-easy", "mt-bench-easy"]);
    assert_eq!(r.sections.len(), 1);
    assert_eq!(r.overall_rule, OverallRule::MeanOfSections);
    close(r.overall, 114.0 / 128.0);
}

#[test]
fn v1_math_prm_is_up_weighted_to_equal_all_of_code() {
    // math-prm: 2/2 correct, weight 984 (its real size is 447); each hep-*: 1/2, weight 164.
    let mut rows = vec![v1("math-prm", 1.0, 0.0), v1("math-prm", 2.0, 1.0)];
    for hep in &SUBSET_MAPPING[3].1[1..] {
        rows.push(v1(hep, 1.0, 0.0));
        rows.push(v1(hep, 0.0, 1.0));
    }
    let r = v1_report("m", &rows);
    let reasoning = r.section("Reasoning").unwrap();
    // (984·1 + 6·164·0.5) / (984 + 984) = 0.75: math counts half of Reasoning.
    close(reasoning.score, 0.75);
    assert_eq!(reasoning.total_weight, 1968);
    assert_eq!(r.subset("math-prm").unwrap().weight, Some(984));
    assert_eq!(r.subset("math-prm").unwrap().count, 2);

    // Only math-prm and hep-python present: (984·1 + 164·0) / 1148.
    let r = v1_report("m", &[v1("math-prm", 1.0, 0.0), v1("hep-python", 0.0, 1.0)]);
    close(r.section("Reasoning").unwrap().score, 984.0 / 1148.0);
}

#[test]
fn v1_overall_is_the_mean_of_sections_and_custom_subsets_stay_out() {
    let mut rows = vec![
        v1("alpacaeval-easy", 1.0, 0.0),
        v1("mt-bench-easy", 1.0, 0.0),
        v1("mt-bench-easy", 0.0, 1.0),
        v1("math-prm", 1.0, 0.0),
    ];
    for hep in &SUBSET_MAPPING[3].1[1..] {
        rows.push(v1(hep, 1.0, 0.0));
        rows.push(v1(hep, 0.0, 1.0));
    }
    rows.push(v1("hh-rlhf-harmless", 0.0, 1.0));
    rows.push(v1("hh-rlhf-harmless", 0.0, 1.0));
    let r = v1_report("m", &rows);
    // Chat 114/128 = 0.890625, Reasoning 0.75 → 0.8203125; hh-rlhf-harmless (0%) ignored.
    close(r.overall, (0.890625 + 0.75) / 2.0);
    let other = r.other.as_ref().unwrap();
    assert_eq!(other.subsets, ["hh-rlhf-harmless"]);
    assert_eq!((other.count, other.correct), (2, 0));
    assert_eq!(r.subset("hh-rlhf-harmless").unwrap().section, None);
    // Known subsets first in SUBSET_MAPPING order, custom last.
    let names: Vec<_> = r.subsets.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names[..3], ["alpacaeval-easy", "mt-bench-easy", "math-prm"]);
    assert_eq!(*names.last().unwrap(), "hh-rlhf-harmless");
}

#[test]
fn v1_without_known_sections_the_overall_is_accuracy_over_all_rows() {
    let r = v1_report(
        "m",
        &[
            v1("hh-rlhf-harmless", 1.0, 0.0),
            v1("hh-rlhf-harmless", 1.0, 0.0),
            v1("hh-rlhf-harmless", 1.0, 0.0),
            v1("hh-rlhf-harmless", 0.0, 1.0),
            v1("mine", 1.0, 0.0),
            v1("mine", 1.0, 1.0),
        ],
    );
    assert!(r.sections.is_empty());
    assert_eq!(r.overall_rule, OverallRule::AccuracyOverAllRows);
    // 4 correct of 6 rows (not the subset mean (0.75 + 0.5) / 2).
    close(r.overall, 4.0 / 6.0);
    close(r.other.as_ref().unwrap().accuracy, 4.0 / 6.0);
    let empty = v1_report("m", &[]);
    assert_eq!(
        (empty.overall, empty.overall_rule),
        (0.0, OverallRule::Empty)
    );
}

#[test]
fn real_example_counts_are_reward_bench_s() {
    assert_eq!(example_count("math-prm"), Some(984));
    assert_eq!(example_count("hep-cpp"), Some(164));
    assert_eq!(example_count("alpacaeval-length"), Some(95));
    assert_eq!(example_count("llmbar-adver-neighbor"), Some(134));
    assert_eq!(example_count("donotanswer"), Some(136));
    assert_eq!(example_count("hh-rlhf-harmless"), None);
}

#[test]
fn v1_safety_weighs_xstest_as_reward_bench_does_since_its_fix() {
    // should-refuse 1/1 (weight 154), should-respond 0/1 (weight 250): 154 / 404. Before
    // reward-bench #175 (and in plumbline until it followed) this was 250 / 404.
    let r = v1_report(
        "m",
        &[
            v1("xstest-should-refuse", 1.0, 0.0),
            v1("xstest-should-respond", 0.0, 1.0),
        ],
    );
    let safety = r.section("Safety").unwrap();
    close(safety.score, 154.0 / 404.0);
    assert_eq!(safety.total_weight, 404);
}

// ---------------------------------------------------------------- v2

#[test]
fn v2_best_of_4_divides_by_the_completions_tied_at_the_max() {
    close(best_of_n(&[0.5], &[0.5, 0.1, 0.2]), 0.5);
    close(best_of_n(&[0.9], &[0.5, 0.1, 0.2]), 1.0);
    close(best_of_n(&[0.4], &[0.5, 0.1, 0.2]), 0.0);
    close(best_of_n(&[1.0], &[1.0, 1.0, 1.0]), 0.25);
    close(best_of_n(&[0.3], &[0.5, 0.5, 0.1]), 0.0);
    close(best_of_n(&[f32::NAN], &[0.5, 0.5, 0.1]), 0.0);
    let r = v2_report(
        "m",
        &[
            v2("a", "Math", &[0.5], &[0.5, 0.1, 0.2]),
            v2("b", "Math", &[0.9], &[0.5, 0.1, 0.2]),
            v2("c", "Focus", &[0.0], &[0.5, 0.1, 0.2]),
        ],
    )
    .unwrap();
    close(r.subset("Math").unwrap().score, 0.75);
    close(r.subset("Focus").unwrap().score, 0.0);
    assert_eq!(r.overall_rule, V2OverallRule::MeanOfSubsets);
    close(r.overall, 0.375);
    assert_eq!(r.rows[0].result, Some(0.5));
}

fn ties_rows() -> Vec<V2Scored> {
    vec![
        // id 1: ref margin 3 − 2 = 1; tied diff 5 − 4.75 = 0.25, margin 4.75 − 4 = 0.75.
        v2("ref:1", "Ties", &[3.0], &[1.0, 2.0]),
        v2("tied:1", "Ties", &[5.0, 4.75], &[4.0]),
        // id 2: ref margin 1 − 1.5 = −0.5; tied diff 1, margin 1 − 1.5 = −0.5.
        v2("ref:2", "Ties", &[1.0], &[1.5]),
        v2("tied:2", "Ties", &[2.0, 1.0], &[1.5]),
    ]
}

#[test]
fn ties_score_on_a_worked_example() {
    let t = ties_score(&ties_rows()).unwrap();
    assert_eq!((t.ref_prompts, t.tied_prompts, t.paired_prompts), (2, 2, 2));
    close(t.ref_accuracy, 0.5);
    close(t.tied_accuracy, 0.5);
    // id 1: 0.75 > 0.25 ✓, min(1, 0.75) > 0.25 ✓; id 2: −0.5 > 1 ✗, −0.5 > 1 ✗.
    close(t.correctness_preferred, 0.5);
    close(t.correctness_preferred_hard, 0.5);
    // mean(tanh(0.75/0.25 − 1), tanh(−0.5/1 − 1)) = (tanh 2 + tanh(−1.5)) / 2.
    let margin = (2.0f64.tanh() + (-1.5f64).tanh()) / 2.0;
    close(t.correctness_margin_score, margin);
    close(margin, 0.029_439_663_215_475);
    close(
        t.score,
        0.3 * 0.5 + 0.3 * 0.5 + 0.2 * 0.5 + 0.2 * 0.5 + 0.01 * margin,
    );
    close(t.score, 0.500_294_396_632_155);
}

#[test]
fn ties_zero_spread_follows_numpy_division() {
    // diff 0 and min margin 0 → 0/0 = NaN → 0; diff 0 and positive margin → tanh(+∞) = 1.
    let t = ties_score(&[
        v2("ref:1", "Ties", &[1.0], &[1.0]),
        v2("tied:1", "Ties", &[2.0, 2.0], &[1.0]),
    ])
    .unwrap();
    close(t.correctness_margin_score, 0.0);
    close(t.ref_accuracy, 0.0);
    let t = ties_score(&[
        v2("ref:1", "Ties", &[3.0], &[1.0]),
        v2("tied:1", "Ties", &[2.0, 2.0], &[1.0]),
    ])
    .unwrap();
    close(t.correctness_margin_score, 1.0);
    close(t.score, 1.0 + 0.01);
}

#[test]
fn ties_errors_are_clear() {
    let err = ties_score(&[v2("tied-1", "Ties", &[1.0], &[0.0])]).unwrap_err();
    assert!(matches!(err, TiesError::BadId { row: 0, .. }), "{err}");
    let err = ties_score(&[v2("ref:x", "Ties", &[1.0], &[0.0])]).unwrap_err();
    assert!(matches!(err, TiesError::BadId { .. }), "{err}");
    let err = ties_score(&[
        v2("ref:1", "Ties", &[1.0], &[0.0]),
        v2("tied:1", "Ties", &[2.0], &[0.0]),
    ])
    .unwrap_err();
    assert_eq!(err, TiesError::SingleCorrect { prompt: 1 });
    // A ties subset inside a v2 report carries the same error.
    assert!(v2_report("m", &[v2("nope", "ties", &[1.0], &[0.0])]).is_err());
}

#[test]
fn v2_overall_is_the_mean_of_rewardbench2_subsets_with_ties() {
    let mut rows = ties_rows();
    rows.push(v2("m", "Math", &[1.0], &[0.0, 0.0, 0.0]));
    rows.push(v2("o", "mine", &[0.0], &[1.0, 0.0, 0.0]));
    let r = v2_report("m", &rows).unwrap();
    let ties = r.ties.as_ref().unwrap().score;
    close(r.subset("Ties").unwrap().score, ties);
    assert!(!r.subset("mine").unwrap().known);
    close(r.overall, (1.0 + ties) / 2.0);
    assert_eq!(
        r.subsets
            .iter()
            .map(|s| s.name.as_str())
            .collect::<Vec<_>>(),
        ["Math", "Ties", "mine"]
    );
    assert!(
        r.rows
            .iter()
            .filter(|r| r.subset == "Ties")
            .all(|r| r.result.is_none())
    );
    // Without RewardBench 2 subsets: the mean over rows.
    let r = v2_report(
        "m",
        &[
            v2("a", "mine", &[1.0], &[1.0, 0.0]),
            v2("b", "mine", &[1.0], &[0.0, 0.0]),
            v2("c", "yours", &[0.0], &[1.0, 0.0]),
        ],
    )
    .unwrap();
    assert_eq!(r.overall_rule, V2OverallRule::MeanOverAllRows);
    close(r.overall, 0.5);
}

// ---------------------------------------------------------------- implicit rewards

#[test]
fn implicit_reward_modes() {
    let policy = SequenceLogProbs::from_token_logps(&[-1.0, -2.0, -2.0]);
    assert_eq!(
        (policy.sum, policy.sum_squares, policy.tokens),
        (-5.0, 9.0, 3)
    );
    let reference = SequenceLogProbs::from_token_logps(&[-3.0, -3.0]);
    let r = |mode, reference| implicit_reward(mode, &policy, reference).unwrap();
    assert_eq!(r(ImplicitRewardMode::Reference, Some(&reference)), 1.0);
    assert_eq!(r(ImplicitRewardMode::Sum, None), -5.0);
    assert_eq!(r(ImplicitRewardMode::Avg, None), -5.0 / 3.0);
    assert_eq!(r(ImplicitRewardMode::Norm, None), -3.0);
    assert_eq!(
        implicit_reward(ImplicitRewardMode::Reference, &policy, None),
        Err(ImplicitRewardError::MissingReference)
    );
    assert_eq!(
        implicit_reward(ImplicitRewardMode::Sum, &policy, Some(&reference)),
        Err(ImplicitRewardError::UnexpectedReference(
            ImplicitRewardMode::Sum
        ))
    );
    assert_eq!(
        implicit_reward(ImplicitRewardMode::Avg, &SequenceLogProbs::default(), None),
        Err(ImplicitRewardError::NoTokens)
    );
    assert_eq!(
        implicit_rewards(
            ImplicitRewardMode::Reference,
            &[policy, policy],
            &[reference, policy]
        )
        .unwrap(),
        [1.0, 0.0]
    );
    // serde names.
    assert_eq!(
        serde_json::to_string(&ImplicitRewardMode::Norm).unwrap(),
        "\"norm\""
    );
    let m: ImplicitRewardMode = serde_json::from_str("\"reference\"").unwrap();
    assert_eq!(m, ImplicitRewardMode::Reference);
}

// ---------------------------------------------------------------- readers

#[test]
fn v1_reader_strict_stops_at_the_first_bad_row_naming_file_line_field() {
    let err = read_v1(&fixture("v1-bad.jsonl")).unwrap_err().to_string();
    assert!(
        err.ends_with("v1-bad.jsonl:2: field \"subset\": missing"),
        "{err}"
    );
}

#[test]
fn v1_reader_lenient_collects_bad_rows_and_goes_on() {
    let loaded = read_v1_lenient(&fixture("v1-bad.jsonl")).unwrap();
    assert_eq!(loaded.rows.len(), 2);
    assert_eq!(loaded.rows[1].id.as_deref(), Some("6"));
    let errors: Vec<String> = loaded.errors.iter().map(ToString::to_string).collect();
    assert_eq!(errors.len(), 4, "{errors:?}");
    assert!(
        errors[0].ends_with("v1-bad.jsonl:2: field \"subset\": missing"),
        "{errors:?}"
    );
    assert!(
        errors[1].ends_with("v1-bad.jsonl:3: field \"chosen\": expected a string"),
        "{errors:?}"
    );
    assert!(
        errors[2].contains("v1-bad.jsonl:4: invalid JSON"),
        "{errors:?}"
    );
    assert!(
        errors[3].contains("v1-bad.jsonl:5: field \"prompt[0].role\""),
        "{errors:?}"
    );
    // A missing file is an error for both readers.
    assert!(read_v1_lenient(&fixture("nope.jsonl")).is_err());
}

#[test]
fn v1_reader_reads_ids_prompts_and_skips_blank_lines() {
    let rows = read_v1(&fixture("v1.jsonl")).unwrap();
    assert_eq!(rows.len(), 5);
    assert_eq!(rows[0].id.as_deref(), Some("1"));
    assert_eq!(rows[4].id.as_deref(), Some("hh-0"));
    assert!(matches!(rows[4].prompt, Prompt::Conversation(_)));
    assert_eq!(rows[3].subset, "hep-rust");
}

#[test]
fn v2_reader_errors_name_line_and_field() {
    let err = read_v2(&fixture("v2-bad.jsonl")).unwrap_err().to_string();
    assert!(
        err.ends_with("v2-bad.jsonl:1: field \"num_correct\": is 2 but chosen has 1 completions"),
        "{err}"
    );
    let loaded = read_v2_lenient(&fixture("v2-bad.jsonl")).unwrap();
    assert_eq!(loaded.rows.len(), 1);
    assert_eq!(loaded.rows[0].id.as_deref(), Some("m5"));
    let errors: Vec<String> = loaded.errors.iter().map(ToString::to_string).collect();
    assert!(
        errors[1].ends_with("v2-bad.jsonl:2: field \"rejected[1]\": expected a string"),
        "{errors:?}"
    );
    assert!(
        errors[2]
            .ends_with("v2-bad.jsonl:3: field \"chosen\": needs at least one correct completion"),
        "{errors:?}"
    );
    assert!(
        errors[3].contains("v2-bad.jsonl:4: field \"total_completions\": is 4"),
        "{errors:?}"
    );
    let rows = read_v2(&fixture("v2.jsonl")).unwrap();
    assert_eq!(rows.len(), 4);
    assert_eq!(rows[3].chosen, ["aaaaa", "aaaa"]);
}

#[test]
fn pairs_reader_takes_the_file_stem_as_subset() {
    let err = read_pairs(&fixture("my-pairs.jsonl"))
        .unwrap_err()
        .to_string();
    assert!(
        err.ends_with("my-pairs.jsonl:3: field \"rejected\": missing"),
        "{err}"
    );
    let loaded = read_pairs_lenient(&fixture("my-pairs.jsonl")).unwrap();
    assert_eq!(loaded.rows.len(), 2);
    assert_eq!(loaded.errors.len(), 1);
    assert_eq!(loaded.rows[0].subset, "my-pairs");
    assert_eq!(loaded.rows[1].subset, "arith");
    assert!(matches!(loaded.rows[1].prompt, Prompt::Conversation(_)));
}

#[test]
fn preference_pairs_become_rows_of_their_subset() {
    let pair = PreferencePair {
        prompt: Prompt::Text("p".into()),
        chosen: "c".into(),
        rejected: "r".into(),
        margin: None,
        subset: None,
        scores: None,
    };
    let rows = rows_from_pairs(
        vec![pair.clone(), pair],
        bench_harness::data::HH_RLHF_SUBSET,
    );
    assert_eq!(rows[1].subset, "hh-rlhf-harmless");
    assert_eq!(rows[1].id.as_deref(), Some("1"));
}

/// A fresh file under the system temp dir holding `bytes`.
fn temp_file(tag: &str, bytes: &[u8]) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("bench-harness-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("rows.jsonl");
    std::fs::write(&path, bytes).unwrap();
    path
}

#[test]
fn detect_format_reads_the_first_row_and_names_its_real_line() {
    assert_eq!(
        detect_format(&fixture("v1.jsonl")).unwrap(),
        EvalFormat::Rewardbench
    );
    assert_eq!(
        detect_format(&fixture("v2.jsonl")).unwrap(),
        EvalFormat::Rewardbench2
    );
    let pairs = temp_file(
        "detect-pairs",
        b"\xEF\xBB\xBF\n{\"prompt\": \"p\", \"chosen\": \"c\", \"rejected\": \"r\", \"subset\": null}\n",
    );
    assert_eq!(detect_format(&pairs).unwrap(), EvalFormat::Pairs);
    // The bad first row is on line 3 (after two blank lines), not line 1.
    let bad = temp_file("detect-bad", b"\n  \n{\"prompt\": \n");
    let err = detect_format(&bad).unwrap_err().to_string();
    assert!(err.contains("rows.jsonl:3: invalid JSON"), "{err}");
    let bad_byte = temp_file("detect-byte", b"\n{\"prompt\": \"\xC3\"}\n");
    let err = detect_format(&bad_byte).unwrap_err().to_string();
    assert!(
        err.ends_with("rows.jsonl:2: invalid JSON: invalid UTF-8 at byte 13 of the line"),
        "{err}"
    );
    let empty = temp_file("detect-empty", b"\n\n");
    let err = detect_format(&empty).unwrap_err().to_string();
    assert!(err.ends_with("rows.jsonl: the file has no rows"), "{err}");
}

#[test]
fn readers_refuse_directories_and_devices_with_one_error() {
    let dir = fixture("");
    for result in [
        read_v1_lenient(&dir).map(|l| l.rows.len()),
        read_v2_lenient(&dir).map(|l| l.rows.len()),
        read_pairs_lenient(&dir).map(|l| l.rows.len()),
        detect_format(&dir).map(|_| 0),
    ] {
        let err = result.unwrap_err().to_string();
        assert!(
            err.ends_with("is a directory, not a regular file; expected a JSONL file"),
            "{err}"
        );
    }
    let err = read_v1_lenient(std::path::Path::new("/dev/zero"))
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        "/dev/zero: is a device, not a regular file; expected a JSONL file"
    );
}

// ---------------------------------------------------------------- end to end

/// Scores a response by its length in characters.
struct LengthScorer {
    batches: Vec<usize>,
}

impl Scorer for LengthScorer {
    fn name(&self) -> String {
        "length".into()
    }
    fn score(&mut self, items: &[ScoreItem<'_>]) -> anyhow::Result<Vec<f32>> {
        self.batches.push(items.len());
        Ok(items
            .iter()
            .map(|i| i.response.chars().count() as f32)
            .collect())
    }
}

#[test]
fn length_scorer_end_to_end_v1() {
    let rows = read_v1(&fixture("v1.jsonl")).unwrap();
    let mut scorer = LengthScorer { batches: vec![] };
    let mut seen = vec![];
    let report = evaluate_v1(&rows, &mut scorer, 3, &mut |p: Progress| {
        seen.push((p.done, p.total))
    })
    .unwrap();
    assert_eq!(scorer.batches, [3, 3, 3, 1]);
    assert_eq!(seen, [(3, 10), (6, 10), (9, 10), (10, 10)]);
    assert_eq!(report.model, "length");
    // alpacaeval-easy 1/2, mt-bench-easy 0/1 ("four" vs "five": a tie), hep-rust 1/1, hh 1/1.
    let chat = report.section("Chat").unwrap();
    close(chat.score, (100.0 * 0.5 + 28.0 * 0.0) / 128.0);
    close(report.section("Reasoning").unwrap().score, 1.0);
    close(report.overall, (50.0 / 128.0 + 1.0) / 2.0);
    assert_eq!(report.other.as_ref().unwrap().correct, 1);
    assert_eq!(report.rows[0].chosen, 12.0);

    let json = serde_json::to_value(&report).unwrap();
    assert_eq!(json["overall_rule"], "mean_of_sections");
    assert_eq!(json["sections"][0]["name"], "Chat");
    let back: V1Report = serde_json::from_value(json).unwrap();
    assert_eq!(back, report);

    let md = report.to_markdown();
    assert!(
        md.contains("| **Overall** (mean of sections) | 4 | **69.53** |"),
        "{md}"
    );
    assert!(md.contains("| Chat | 2 | 39.06 |"), "{md}");
    assert!(md.contains("| Other (custom) | 1 | 100.00 |"), "{md}");
    assert!(
        md.contains("| mt-bench-easy | Chat | 1 | 0 | 0.00 |"),
        "{md}"
    );
    assert!(
        md.contains("| hh-rlhf-harmless | Other | 1 | 1 | 100.00 |"),
        "{md}"
    );
}

#[test]
fn length_scorer_end_to_end_v2() {
    let rows = read_v2(&fixture("v2.jsonl")).unwrap();
    let mut scorer = LengthScorer { batches: vec![] };
    let report = evaluate_v2(&rows, &mut scorer, 4, &mut |_| {}).unwrap();
    assert_eq!(scorer.batches, [4, 4, 4, 2]); // 4 + 4 + 3 + 3 completions
    close(report.subset("Math").unwrap().score, 1.0);
    // "abcd" ties "wxyz" at the max of 4 characters.
    close(report.subset("Focus").unwrap().score, 0.5);
    // ref:1 margin 3 − 2 = 1; tied:1 diff 5 − 4 = 1, margin 4 − 2 = 2:
    // 0.3 + 0.3 + 0.2·[2 > 1] + 0.2·[min(1, 2) > 1] + 0.01·tanh(1/1 − 1) = 0.8.
    let ties = report.ties.as_ref().unwrap();
    close(ties.correctness_preferred, 1.0);
    close(ties.correctness_preferred_hard, 0.0);
    close(ties.score, 0.8);
    close(report.overall, (1.0 + 0.5 + 0.8) / 3.0);
    let md = report.to_markdown();
    assert!(md.contains("| Ties | ties score | 2 | 80.00 |"), "{md}");
    assert!(md.contains("| Focus | best-of-N | 1 | 50.00 |"), "{md}");
    let back: V2Report = serde_json::from_str(&serde_json::to_string(&report).unwrap()).unwrap();
    assert_eq!(back, report);
}

#[test]
fn scorer_mistakes_are_errors() {
    struct Short;
    impl Scorer for Short {
        fn name(&self) -> String {
            "short".into()
        }
        fn score(&mut self, _: &[ScoreItem<'_>]) -> anyhow::Result<Vec<f32>> {
            Ok(vec![1.0])
        }
    }
    struct Nan;
    impl Scorer for Nan {
        fn name(&self) -> String {
            "nan".into()
        }
        fn score(&mut self, items: &[ScoreItem<'_>]) -> anyhow::Result<Vec<f32>> {
            Ok(vec![f32::NAN; items.len()])
        }
    }
    let rows = read_v1(&fixture("v1.jsonl")).unwrap();
    let err = evaluate_v1(&rows, &mut Short, 2, &mut |_| {})
        .unwrap_err()
        .to_string();
    assert!(err.contains("returned 1 scores for a batch of 2"), "{err}");
    let err = evaluate_v1(&rows, &mut Nan, 2, &mut |_| {})
        .unwrap_err()
        .to_string();
    assert!(err.contains("NaN for item 0"), "{err}");
    assert!(evaluate_v1(&rows, &mut Nan, 0, &mut |_| {}).is_err());
}
