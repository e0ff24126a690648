//! Live progress of a study: one bar for the whole grid (nodes, ETA) and one for the running node
//! (steps, tokens/s, loss, achieved image fraction). Quiet mode draws nothing; logs still go to
//! `tracing` (JSON with `--log-json`).

use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use vlmix_train::metrics::StepMetrics;

pub struct StudyProgress {
    multi: MultiProgress,
    study: ProgressBar,
    node: Option<ProgressBar>,
}

impl StudyProgress {
    pub fn new(quiet: bool) -> Self {
        let multi =
            if quiet { MultiProgress::with_draw_target(ProgressDrawTarget::hidden()) } else { MultiProgress::new() };
        let study = multi.add(ProgressBar::new(0));
        study.set_style(
            ProgressStyle::with_template(
                "study {bar:30.cyan/blue} {pos}/{len} nodes  elapsed {elapsed_precise}  eta {eta}  {msg}",
            )
            .expect("valid template"),
        );
        study.enable_steady_tick(Duration::from_millis(500));
        Self { multi, study, node: None }
    }

    pub fn study(&self, finished: usize, total: usize, current: Option<&str>) {
        self.study.set_length(total as u64);
        self.study.set_position(finished as u64);
        self.study.set_message(current.unwrap_or("done").to_string());
        if current.is_none() {
            self.study.finish();
        }
    }

    /// Starts a bar of `total` units for the node that is running now.
    pub fn start_node(&mut self, label: &str, total: u64) {
        if let Some(old) = self.node.take() {
            old.finish_and_clear();
        }
        let bar = self.multi.add(ProgressBar::new(total));
        bar.set_style(
            ProgressStyle::with_template("  {prefix:<34} {bar:24} {pos}/{len} eta {eta} {msg}")
                .expect("valid template"),
        );
        bar.set_prefix(label.to_string());
        self.node = Some(bar);
    }

    pub fn step(&self, step: u64, total: u64, m: &StepMetrics) {
        if let Some(bar) = &self.node {
            bar.set_length(total);
            bar.set_position(step);
            bar.set_message(format!(
                "loss {:.3}  {:.0} tok/s  img {:.1}%",
                m.loss,
                m.tokens_per_s,
                100.0 * m.achieved_image_fraction
            ));
        }
    }

    pub fn advance(&self, done: u64, total: u64) {
        if let Some(bar) = &self.node {
            bar.set_length(total);
            bar.set_position(done);
        }
    }

    pub fn println(&self, line: &str) {
        let _ = self.multi.println(line);
    }
}
