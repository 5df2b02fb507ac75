//! # rm-ensembles
//!
//! Reward-model ensembles: several plumbline reward models (separately trained with different
//! seeds, data orders or bootstrap resamples, or taken from other folders and backbones) scored
//! together and combined by one [`Aggregation`] rule.
//!
//! - [`aggregate`]: the rules as pure functions over a `[members × samples]` reward matrix
//!   (mean, median, min, mean − λ·std, BRME);
//! - [`bootstrap`]: seeded resampling with replacement of a training set, one per member;
//! - [`spec`]: `ensemble.json` (members' paths and the aggregation) and the recipes'
//!   `[ensemble]` section;
//! - [`ensemble`]: an ensemble folder loaded, scoring texts on a common scale (each member's
//!   stored normalization), and as a RewardBench [`bench_harness::Scorer`].

pub mod aggregate;
pub mod bootstrap;
pub mod ensemble;
pub mod spec;

pub use aggregate::{Aggregation, RewardMatrix, Spread};
pub use bootstrap::bootstrap_indices;
pub use ensemble::{Ensemble, EnsembleScorer, Member, is_ensemble_dir};
pub use spec::{ENSEMBLE_FILE, EnsembleConfig, EnsembleSpec};
