//! The loaders on the real datasets beside the repository (`../shared/datasets`, or
//! `$PLUMB_DATA_DIR`): counts, checksums and formats as their manifests describe.

use rm_core::data::{gsm8k, hh_rlhf, prm800k};
use rm_core::paths::for_tests::data_dir;
use rm_core::types::Prompt;

#[test]
fn hh_rlhf_harmless_base_has_1800_train_and_200_dev_pairs() {
    let dir = data_dir();
    let (train, report) = hh_rlhf::load(&dir, hh_rlhf::Split::Train).unwrap();
    println!("train: {report:?}");
    assert_eq!(report.rows, 1800);
    assert_eq!(train.len(), 1800);
    assert!(report.prompt_mismatches.is_empty());
    // Five train responses invent further turns; they keep the shared prompt.
    assert_eq!(
        report.responses_with_turn_markers,
        [150, 518, 1324, 1463, 1586]
    );
    let (dev, report) = hh_rlhf::load(&dir, hh_rlhf::Split::Dev).unwrap();
    println!("dev: {report:?}");
    assert_eq!((report.rows, dev.len()), (200, 200));
    assert!(report.prompt_mismatches.is_empty());
    // Every prompt is a conversation ending with a human turn.
    for pair in train.iter().chain(&dev) {
        let Prompt::Conversation(c) = &pair.prompt else {
            panic!("HH prompts are conversations")
        };
        assert_eq!(c.last().unwrap().role, rm_core::types::Role::User);
    }
    // The first train pair, checked by hand against the file.
    let Prompt::Conversation(c) = &train[0].prompt else {
        unreachable!()
    };
    assert_eq!(c.turns.len(), 5);
    assert_eq!(
        c.turns[0].content,
        "Male ballerinas are referred to as what?"
    );
    assert_eq!(train[0].chosen, "Right, right. I wonder what it means.");
    assert_eq!(
        train[0].rejected,
        "I think it’s an invalid assumption to make about a word"
    );
}

#[test]
fn every_gsm8k_row_yields_a_number() {
    let dir = data_dir();
    let train = gsm8k::load(&dir, "train", Default::default()).unwrap();
    assert_eq!(train.len(), 7473);
    assert!(train.iter().all(|p| p.answer_value.is_finite()));
    assert_eq!(train[0].answer, "72");
    assert_eq!(train[1].answer, "10");
    assert!(!train[0].solution.contains("<<"));
    assert_eq!(
        train[0].solution,
        "Natalia sold 48/2 = 24 clips in May.\nNatalia sold 48+24 = 72 clips altogether in April and May."
    );
    let kept = gsm8k::load(
        &dir,
        "train",
        gsm8k::Gsm8kOptions {
            keep_calculator_annotations: true,
        },
    )
    .unwrap();
    assert!(kept[0].solution.contains("<<48/2=24>>"));
    let test = gsm8k::load(&dir, "test", Default::default()).unwrap();
    assert_eq!(test.len(), 1319);
    assert!(test.iter().all(|p| p.answer_value.is_finite()));
    // Thousands separators are removed.
    assert!(train.iter().all(|p| !p.answer.contains(',')));
}

#[test]
fn prm800k_phase1_has_900_problems_and_the_rating_counts() {
    let (solutions, report) = prm800k::load(&data_dir()).unwrap();
    println!("{report:?}");
    assert_eq!(solutions.len(), 900);
    assert_eq!(report.problems, 900);
    assert_eq!(report.completions, 51_835);
    assert_eq!(report.ratings["1"], 18_782);
    assert_eq!(report.ratings["0"], 10_234);
    assert_eq!(report.ratings["-1"], 19_656);
    assert_eq!(report.ratings["null"], 3_163);
    assert_eq!(report.final_steps_without_preferred, 12);
    assert_eq!(report.steps_with_several_preferred, 882);
    let first = &solutions[0];
    assert_eq!(first.prompt, "How many seconds are in 7.8 minutes?");
    assert_eq!(first.answer.as_deref(), Some("468"));
    assert_eq!(
        first.steps[0].text,
        "7.8 minutes is the same as 7 minutes and 0.8 minutes."
    );
    assert_eq!(first.steps.len(), first.alternatives.len());
}
