//! Rock–paper–scissors: a preference cycle that no scalar reward can fit, and the General
//! Preference Model can.
//!
//! Three items with learned parameters, preferences R ≻ S, S ≻ P, P ≻ R, each pair presented in
//! both orders (six presentations; the chosen item is the winner whichever came first). A
//! Bradley–Terry reward (one scalar per item) is stuck at equal rewards: on a cycle the
//! differences sum to zero, so by convexity its loss is ≥ ln 2 and every P(winner) → ½. A GPM with
//! a 2-d preference embedding per item fits the cycle outright.

use rm_core::burn;
use rm_core::burn::module::{Module, Param};
use rm_core::burn::optim::{AdamConfig, GradientsParams};
use rm_core::burn::tensor::{Device, Int, Tensor, TensorData};
use rm_core::device::test_device;
use rm_losses::{
    PairwiseObjective, PairwiseRewards, general_preference_loss, general_preference_probability,
    pairwise_accuracy,
};

const ROCK: i64 = 0;
const PAPER: i64 = 1;
const SCISSORS: i64 = 2;

/// (first shown, second shown, whether the first wins): every cycle pair in both orders.
const PRESENTATIONS: [(i64, i64, bool); 6] = [
    (ROCK, SCISSORS, true),
    (SCISSORS, ROCK, false),
    (SCISSORS, PAPER, true),
    (PAPER, SCISSORS, false),
    (PAPER, ROCK, true),
    (ROCK, PAPER, false),
];

const STEPS: usize = 300;
const LR: f64 = 0.05;

/// Winner and loser item indices of every presentation.
fn winners_losers(device: &Device) -> (Tensor<1, Int>, Tensor<1, Int>) {
    let (winners, losers): (Vec<i64>, Vec<i64>) = PRESENTATIONS
        .iter()
        .map(|&(a, b, a_wins)| if a_wins { (a, b) } else { (b, a) })
        .unzip();
    let n = PRESENTATIONS.len();
    (
        Tensor::from_data(TensorData::new(winners, [n]), device),
        Tensor::from_data(TensorData::new(losers, [n]), device),
    )
}

/// One scalar reward per item.
#[derive(Module, Debug)]
struct ScalarRewards {
    reward: Param<Tensor<1>>,
}

/// One 2-d preference embedding per item.
#[derive(Module, Debug)]
struct PreferenceEmbeddings {
    embedding: Param<Tensor<2>>,
}

#[test]
fn scalar_bradley_terry_cannot_fit_a_cycle() {
    let device = test_device().autodiff();
    let (winners, losers) = winners_losers(&device);
    let mut model = ScalarRewards {
        reward: Param::from_data(TensorData::new(vec![0.8f32, -0.5, 0.3], [3]), &device),
    };
    let objective = PairwiseObjective::default();
    let mut optim = AdamConfig::new().init();
    let batch = |m: &ScalarRewards| {
        let r = m.reward.val();
        PairwiseRewards::new(
            r.clone().select(0, winners.clone()),
            r.select(0, losers.clone()),
        )
    };
    for _ in 0..STEPS {
        let loss = objective.loss(batch(&model)).unwrap();
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        model = optim.step(LR, model, grads);
    }

    let b = batch(&model);
    let loss = objective.loss(b.clone()).unwrap().into_scalar::<f32>();
    let accuracy = pairwise_accuracy(b.chosen.clone(), b.rejected.clone()).unwrap();
    let p_winner: Vec<f32> = rm_core::burn::tensor::activation::sigmoid(b.chosen - b.rejected)
        .into_data()
        .try_to_vec()
        .unwrap();
    let rewards: Vec<f32> = model.reward.val().into_data().try_to_vec().unwrap();
    eprintln!("BT rewards {rewards:?}, loss {loss}, accuracy {accuracy}, P(winner) {p_winner:?}");

    let ln2 = std::f32::consts::LN_2;
    assert!(loss >= ln2 - 1e-5, "no scalar reward beats ln 2: {loss}");
    assert!(
        loss <= ln2 + 1e-3,
        "BT converges to its optimum ln 2: {loss}"
    );
    assert!(
        accuracy <= 2.0 / 3.0,
        "at most two of a cycle's three pairs: {accuracy}"
    );
    for p in p_winner {
        assert!((p - 0.5).abs() < 0.02, "P(winner) = {p}, expected ≈ 0.5");
    }
    let spread = rewards.iter().cloned().fold(f32::MIN, f32::max)
        - rewards.iter().cloned().fold(f32::MAX, f32::min);
    assert!(spread < 0.05, "the optimum is equal rewards: {rewards:?}");
}

#[test]
fn general_preference_model_fits_the_cycle() {
    let device = test_device().autodiff();
    let (winners, losers) = winners_losers(&device);
    let mut model = PreferenceEmbeddings {
        embedding: Param::from_data(
            TensorData::new(vec![0.3f32, 0.1, -0.2, 0.25, 0.05, -0.3], [3, 2]),
            &device,
        ),
    };
    let mut optim = AdamConfig::new().init();
    let pairs = |m: &PreferenceEmbeddings| {
        let v = m.embedding.val();
        (
            v.clone().select(0, winners.clone()),
            v.select(0, losers.clone()),
        )
    };
    for _ in 0..STEPS {
        let (chosen, rejected) = pairs(&model);
        let loss = general_preference_loss(chosen, rejected, 1.0).unwrap();
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        model = optim.step(LR, model, grads);
    }

    let (chosen, rejected) = pairs(&model);
    let loss = general_preference_loss(chosen.clone(), rejected.clone(), 1.0)
        .unwrap()
        .into_scalar::<f32>();
    let p_winner: Vec<f32> = general_preference_probability(chosen, rejected, 1.0)
        .unwrap()
        .into_data()
        .try_to_vec()
        .unwrap();
    // As a presentation-order classifier: P(first ≻ second) on the correct side of ½ for all six.
    let v = model.embedding.val();
    let index = |i: Vec<i64>| Tensor::<1, Int>::from_data(TensorData::new(i, [6]), &device);
    let first = v
        .clone()
        .select(0, index(PRESENTATIONS.iter().map(|p| p.0).collect()));
    let second = v.select(0, index(PRESENTATIONS.iter().map(|p| p.1).collect()));
    let p_first: Vec<f32> = general_preference_probability(first, second, 1.0)
        .unwrap()
        .into_data()
        .try_to_vec()
        .unwrap();
    let correct = PRESENTATIONS
        .iter()
        .zip(&p_first)
        .filter(|((_, _, first_wins), p)| (**p > 0.5) == *first_wins)
        .count();
    eprintln!("GPM loss {loss}, P(winner) {p_winner:?}, P(first) {p_first:?}");

    assert_eq!(correct, PRESENTATIONS.len(), "100% pairwise accuracy");
    for p in &p_winner {
        assert!(*p > 0.9, "P(winner) = {p}, expected > 0.9");
    }
    assert!(loss < 0.105, "−log 0.9 bounds the mean loss: {loss}");
}
