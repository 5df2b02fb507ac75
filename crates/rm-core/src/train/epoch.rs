//! The epoch driver: a fixed dataset, a seeded shuffle per epoch (`StdRng(seed + epoch)`),
//! optimizer steps of `batch_size` examples in micro-batches of `micro_batch_size`, evaluation
//! every `eval_every` steps and at the end, checkpoints every `save_every` steps and at the
//! end. Reward models, DPO and PRMs train through it.

use anyhow::{Result, bail};
use burn::module::Module;
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;

use super::config::full_epoch_steps;
use super::run_dir::RunDir;
use super::session::Session;
use super::task::EpochTask;
use super::{TrainConfig, TrainOutcome, Trainer};

/// The order of the examples of epoch `epoch`: a seeded shuffle.
pub fn epoch_order(n: usize, seed: u64, epoch: u64) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    order.shuffle(&mut StdRng::seed_from_u64(seed.wrapping_add(epoch)));
    order
}

/// The examples of optimizer step `step` (0-based) under `config`.
pub fn step_examples(n: usize, config: &TrainConfig, step: u64) -> Vec<usize> {
    let per_epoch = n.div_ceil(config.batch_size) as u64;
    let epoch = step / per_epoch;
    let within = (step % per_epoch) as usize;
    let order = epoch_order(n, config.seed, epoch);
    let start = within * config.batch_size;
    order[start..(start + config.batch_size).min(n)].to_vec()
}

impl Trainer {
    /// Trains `model` on a fixed dataset in the run folder `run`. When `run` resumes, the model
    /// passed must be built as at the start: its trainable weights are replaced by the saved ones.
    pub fn run_epochs<M: Module>(
        &self,
        run: &RunDir,
        model: M,
        task: &mut dyn EpochTask<M>,
    ) -> Result<(M, TrainOutcome)> {
        let config = &self.config;
        config.validate()?;
        let n = task.num_examples();
        if n == 0 {
            bail!("the training set is empty");
        }
        let total = config.epoch_steps(n)?;
        let schedule_steps = full_epoch_steps(n, config)?;
        let (mut session, mut model) =
            Session::start(self, run, model, task, total, schedule_steps)?;
        while session.state.step < total {
            let step = session.state.step;
            let examples = step_examples(n, config, step);
            let mut extra = serde_json::Map::new();
            extra.insert(
                "epoch".into(),
                serde_json::json!(step as f64 * config.batch_size as f64 / n as f64),
            );
            model = session.step(model, task, &examples, extra)?;
            let done = session.state.step;
            session.after_unit(done, done == total, &model, task)?;
        }
        let outcome = session.finish(&model, task)?;
        Ok((model, outcome))
    }
}
