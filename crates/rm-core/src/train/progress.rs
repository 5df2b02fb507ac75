//! The trainer's progress display: a bar with ETA and live loss/accuracy on a terminal, plain
//! lines every few steps on stderr otherwise.

use std::io::IsTerminal;
use std::time::Instant;

/// A progress bar with ETA and live loss/accuracy; plain lines when stderr is not a terminal.
pub(crate) struct Progress {
    bar: Option<indicatif::ProgressBar>,
    plain: bool,
    total: u64,
    started: Instant,
    first_step: u64,
    loss_ema: Option<f64>,
    acc_ema: Option<f64>,
}

impl Progress {
    pub(crate) fn new(total: u64, done: u64, enabled: bool) -> Self {
        let terminal = std::io::stderr().is_terminal();
        let bar = (enabled && terminal).then(|| {
            let bar = indicatif::ProgressBar::new(total);
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{bar:30} {pos}/{len} steps [{elapsed_precise} < {eta_precise}] {msg}",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            bar.set_position(done);
            bar
        });
        Self {
            bar,
            plain: enabled && !terminal,
            total,
            started: Instant::now(),
            first_step: done,
            loss_ema: None,
            acc_ema: None,
        }
    }

    pub(crate) fn step(&mut self, step: u64, loss: f64, accuracy: Option<f64>) {
        let ema = |old: Option<f64>, new: f64| Some(old.map_or(new, |o| 0.9 * o + 0.1 * new));
        self.loss_ema = ema(self.loss_ema, loss);
        if let Some(a) = accuracy {
            self.acc_ema = ema(self.acc_ema, a);
        }
        let msg = format!(
            "loss {:.4}{}",
            self.loss_ema.unwrap_or(f64::NAN),
            self.acc_ema
                .map_or(String::new(), |a| format!(" acc {:.3}", a))
        );
        if let Some(bar) = &self.bar {
            bar.set_position(step);
            bar.set_message(msg);
        } else if self.plain && (step.is_multiple_of(10) || step == self.total) {
            let done = (step - self.first_step) as f64;
            let elapsed = self.started.elapsed().as_secs_f64();
            let eta = elapsed / done.max(1.0) * (self.total - step) as f64;
            eprintln!(
                "step {step}/{} {msg} [{elapsed:.0}s elapsed, eta {eta:.0}s]",
                self.total
            );
        }
    }

    pub(crate) fn message(&self, msg: &str) {
        if let Some(bar) = &self.bar {
            bar.set_message(msg.to_string());
        }
    }

    pub(crate) fn println(&self, line: &str) {
        match &self.bar {
            Some(bar) => bar.println(line),
            None => {
                if self.plain {
                    eprintln!("{line}");
                }
            }
        }
    }

    pub(crate) fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
