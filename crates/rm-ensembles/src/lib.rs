//! # rm-ensembles
//!
//! Reward-model ensembles: several plumbline reward models (separately trained with different
//! seeds, data orders or bootstrap resamples, or taken from other folders and backbones) scored
//! together and combined by one [`Aggregation`] rule.
//!
//! - [`aggregate`]: the rules as pure functions over a `[members × samples]` reward matrix
//!   (mean, median, min, mean − λ·std, BRME);
//! - [`bootstrap`]: seeded resampling with replacement of a training set, one per member;
//! - [`collaborative`]: collaborative reward modeling (two models reviewing each other's
//!   batches, with a curriculum), its config and the peer-review selection;
//! - [`label_noise`]: seeded synthetic label flips for noisy-preference studies;
//! - [`more`]: MORE's weighting of several preference sets by the min-norm point of their
//!   reward-head gradients;
//! - [`preference_strength`]: an ensemble's vote on each training pair (mean and spread of the
//!   members' reward differences), the label flips and adaptive margins it gives;
//! - [`spec`]: `ensemble.json` (members' paths and the aggregation) and the recipes'
//!   `[ensemble]` section;
//! - [`ensemble`]: an ensemble folder loaded, scoring texts on a common scale (each member's
//!   stored normalization), and as a RewardBench [`bench_harness::Scorer`].

pub mod aggregate;
pub mod bootstrap;
pub mod collaborative;
pub mod ensemble;
pub mod label_noise;
pub mod more;
pub mod preference_strength;
pub mod spec;

pub use aggregate::{Aggregation, RewardMatrix, Spread};
pub use bootstrap::bootstrap_indices;
pub use collaborative::{CollaborativeConfig, kept_count, peer_selection};
pub use ensemble::{Ensemble, EnsembleScorer, Member, is_ensemble_dir};
pub use label_noise::LabelNoise;
pub use more::{GradientNormalization, MoreWeighting};
pub use preference_strength::{
    FlipRule, PairStrength, PreferenceStrengthConfig, adaptive_margins, preference_strength,
};
pub use spec::{ENSEMBLE_FILE, EnsembleConfig, EnsembleSpec};
