//! The training loop: steps, held-out evaluations, checkpoints and progress.

use std::time::Instant;

use indicatif::{ProgressBar, ProgressStyle};

use crate::backend::Backend;
use crate::draft::init::write_head;
use crate::draft::vocab::{DraftLmHead, DraftVocab};
use crate::error::{Error, Result};
use crate::model::Llama;
use crate::rng::Rng;
use crate::train::align::{truncate, Aligned};
use crate::train::batches::Batcher;
use crate::train::checkpoint::{self, CheckpointFiles, CheckpointState, RunConfig, TrainState, EXP_AVG, EXP_AVG_SQ};
use crate::train::head::{Mode, TrainHead};
use crate::train::label_mask::plausible_positions;
use crate::train::losses::HeadSums;
use crate::train::metrics::{percents, MetricsLine, MetricsLog, HELDOUT, TRAIN};
use crate::train::optim::Optimizer;
use crate::train::params::ParamSet;
use crate::train::rollout::Rollout;
use crate::train::shards::{Record, ShardReader};
use crate::train::timers::{Phase, Timers};

use super::{DistillOptions, DistillSummary};

/// A run in progress.
pub(super) struct Run<'a, B: Backend> {
    pub(super) opts: &'a DistillOptions,
    pub(super) run: RunConfig,
    pub(super) reader: &'a ShardReader,
    /// Where `eval_set`'s records are: `reader` (its held-out tails) or the `--eval-data` folders.
    pub(super) eval_reader: &'a ShardReader,
    pub(super) base: &'a Llama<B>,
    pub(super) params: ParamSet<B>,
    pub(super) config: serde_json::Value,
    pub(super) trainee: Box<dyn TrainHead<B>>,
    /// The lm_head the losses project through (full, or the draft vocabulary's rows).
    pub(super) lm: DraftLmHead<B>,
    pub(super) draft_vocab: Option<DraftVocab>,
    pub(super) optimizer: Optimizer<B>,
    /// Each parameter's learning-rate factor (`--lr-scale`).
    pub(super) lr_factors: Vec<f32>,
    /// EAGLE-1's input noise.
    pub(super) rng: Rng,
    pub(super) batcher: Batcher,
    pub(super) step: u64,
    pub(super) tokens: u64,
    pub(super) eval_set: Vec<usize>,
    pub(super) metrics: MetricsLog,
    pub(super) timers: Timers,
    /// Under `--label-mask`: per head, training rows counted and rows the loss mask alone counts.
    pub(super) label_masked: Option<Vec<(u64, u64)>>,
    /// The trainee's weights are those of the parameters (no optimiser step since they were built).
    pub(super) weights_current: bool,
}

impl<B: Backend> Run<'_, B> {
    pub(super) fn train(mut self, started: Instant) -> Result<DistillSummary> {
        let (start_step, start_tokens) = (self.step, self.tokens);
        let bar = self.progress_bar();
        let mut last_eval = None;
        if self.step == 0 {
            if let Some(line) = self.evaluate()? {
                self.report(&bar, &line);
                last_eval = Some(line);
            }
        }
        while self.step < self.opts.steps {
            let line = self.train_step()?;
            bar.set_position(self.step);
            bar.set_message(format!("loss {:.4}  {:.0} tok/s", line.loss, line.tokens_per_s.unwrap_or(0.0)));
            if self.step.is_multiple_of(self.opts.eval_every) || self.step == self.opts.steps {
                if let Some(line) = self.evaluate()? {
                    self.report(&bar, &line);
                    last_eval = Some(line);
                }
                self.checkpoint()?;
            }
        }
        bar.finish_and_clear();
        Ok(DistillSummary {
            start_step,
            step: self.step,
            tokens: self.tokens - start_tokens,
            seconds: started.elapsed().as_secs_f64(),
            timers: self.timers,
            last_eval,
            parameters: self.params.numel(),
            label_masked: self.label_masked,
        })
    }

    fn progress_bar(&self) -> ProgressBar {
        if !self.opts.progress {
            return ProgressBar::hidden();
        }
        let bar = ProgressBar::new(self.opts.steps);
        let style = ProgressStyle::with_template("{wide_bar} step {pos}/{len}  eta {eta}  {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar());
        bar.set_style(style);
        bar.set_position(self.step);
        bar
    }

    /// Prints a held-out evaluation above the bar.
    fn report(&self, bar: &ProgressBar, line: &MetricsLine) {
        if !self.opts.progress {
            return;
        }
        bar.suspend(|| {
            println!(
                "step {:>6}  held-out loss {:.4}  top-1 vs base per head: {}  (top-3: {})",
                line.step,
                line.loss,
                percents(&line.top1),
                percents(&line.top3)
            )
        });
    }

    fn refresh_weights(&mut self) -> Result<()> {
        if !self.weights_current {
            let weights = self.timers.time(Phase::Optimiser, || self.params.weights(&self.base.backend))?;
            self.trainee.set_weights(weights);
            self.weights_current = true;
        }
        Ok(())
    }

    /// The records of positions `batch`, truncated to `max_len`.
    fn records(&mut self, batch: &[usize]) -> Vec<Record> {
        let (reader, max_len) = (self.reader, self.run.max_len);
        self.timers.time(Phase::Data, || {
            batch
                .iter()
                .map(|&i| {
                    let mut rec = reader.record(i);
                    truncate(&mut rec, max_len, reader.hidden_size());
                    rec
                })
                .collect()
        })
    }

    /// A training record's alignment, under the label mask when the run has one.
    fn align(&mut self, rec: &Record, heads: usize) -> Aligned {
        let a = Aligned::new(rec, self.reader.hidden_size());
        if !self.run.label_mask {
            return a;
        }
        let base = self.base;
        a.with_label_mask(self.timers.time(Phase::LabelMask, || plausible_positions(base, rec, heads)))
    }

    fn train_step(&mut self) -> Result<MetricsLine> {
        let started = Instant::now();
        let (reader, max_len) = (self.reader, self.run.max_len);
        let batch = self.batcher.next_batch(|i| reader.tokens(i).min(max_len));
        let records = self.records(&batch);
        let heads = self.trainee.loss_spec().heads();
        let aligned: Vec<Aligned> = records.iter().map(|rec| self.align(rec, heads)).collect();
        let masked: Vec<usize> = (0..heads).map(|i| aligned.iter().map(|a| a.mask_sum(i)).sum()).collect();
        if self.run.label_mask {
            let counts = self.label_masked.get_or_insert_with(|| vec![(0, 0); heads]);
            for (i, (kept, all)) in counts.iter_mut().enumerate() {
                *kept += masked[i] as u64;
                *all += aligned.iter().map(|a| a.loss_mask_sum(i)).sum::<usize>() as u64;
            }
        }
        let scales = self.trainee.loss_spec().batch_scales(&masked);
        self.refresh_weights()?;
        let b = &self.base.backend;
        for g in self.trainee.grads() {
            b.zero(g);
        }
        let mut sums = vec![HeadSums::default(); heads];
        for (rec, a) in records.iter().zip(&aligned) {
            let mode = Mode::Train { noise: &mut self.rng };
            let rec_sums = self.trainee.pass(b, self.base, &self.lm, rec, a, &scales, mode, &mut self.timers);
            sums.iter_mut().zip(&rec_sums).for_each(|(s, r)| s.add(r));
        }
        let spec = self.trainee.loss_spec();
        let per_head = spec.per_head(&sums, false);
        let loss = spec.total(&per_head);
        // Past this point AdamW would write NaN into every weight and moment, and the next
        // checkpoint would keep them: stop while the last checkpoint still holds a usable head.
        if !loss.is_finite() {
            return Err(Error::input(format!(
                "step {}: the training loss is {loss}: training diverged, and the step was not taken, so the head \
                 and checkpoints in {} are those last written (the last checkpoint, or the starting head): lower \
                 --lr (or --lr-scale) and start again",
                self.step + 1,
                self.opts.out.display()
            )));
        }
        let lr = self.run.schedule.lr_at(self.step + 1);
        self.timers.time(Phase::Optimiser, || {
            self.optimizer.step(b, &mut self.params.values, self.trainee.grads(), lr, &self.lr_factors)
        });
        self.weights_current = false;
        self.step += 1;
        let tokens: u64 = records.iter().map(|r| r.len() as u64).sum();
        self.tokens += tokens;
        let line = MetricsLine {
            split: TRAIN.into(),
            step: self.step,
            loss,
            vloss: per_head.iter().map(|p| p.0).collect(),
            ploss: per_head.iter().map(|p| p.1).collect(),
            top1: Vec::new(),
            top2: Vec::new(),
            top3: Vec::new(),
            rollout: Vec::new(),
            tokens,
            lr: Some(lr as f64),
            tokens_per_s: Some(tokens as f64 / started.elapsed().as_secs_f64().max(1e-9)),
        };
        self.metrics.push(line.clone())?;
        Ok(line)
    }

    /// The held-out loss and per-head top-1 agreement, as one batch over the evaluation set (none
    /// when the data is too small to hold any conversation out).
    fn evaluate(&mut self) -> Result<Option<MetricsLine>> {
        if self.eval_set.is_empty() {
            return Ok(None);
        }
        self.refresh_weights()?;
        let started = Instant::now();
        let heads = self.trainee.loss_spec().heads();
        let scales = self.trainee.loss_spec().unit_scales();
        let mut sums = vec![HeadSums::default(); heads];
        let mut tokens = 0;
        // The passes' own phase timers would count evaluation as training time.
        let mut scratch = Timers::default();
        let b = &self.base.backend;
        for &i in &self.eval_set {
            let mut rec = self.eval_reader.record(i);
            truncate(&mut rec, self.run.max_len, self.eval_reader.hidden_size());
            tokens += rec.len() as u64;
            // Held-out rows are all counted, label mask or not: agreement on the data as it is.
            let a = Aligned::new(&rec, self.eval_reader.hidden_size());
            let rec_sums = self.trainee.pass(b, self.base, &self.lm, &rec, &a, &scales, Mode::Eval, &mut scratch);
            sums.iter_mut().zip(&rec_sums).for_each(|(s, r)| s.add(r));
        }
        let spec = self.trainee.loss_spec();
        let per_head = spec.per_head(&sums, true);
        let line = MetricsLine {
            split: HELDOUT.into(),
            step: self.step,
            loss: spec.total(&per_head),
            vloss: per_head.iter().map(|p| p.0).collect(),
            ploss: per_head.iter().map(|p| p.1).collect(),
            top1: sums.iter().map(|s| s.top1 as f64 / s.rows.max(1) as f64).collect(),
            top2: sums.iter().map(|s| s.top2 as f64 / s.rows.max(1) as f64).collect(),
            top3: sums.iter().map(|s| s.top3 as f64 / s.rows.max(1) as f64).collect(),
            // Fractions of head 0's rows: the positions a chain can start from.
            rollout: Rollout::fractions(sums.iter().map(|s| &s.rollout), sums[0].rows),
            tokens,
            lr: None,
            tokens_per_s: None,
        };
        self.add_time(Phase::Eval, started);
        self.metrics.push(line.clone())?;
        Ok(Some(line))
    }

    fn add_time(&mut self, phase: Phase, since: Instant) {
        self.timers.add(phase, since.elapsed());
    }

    /// The checkpoint of this step, the head beside it and the curves.
    fn checkpoint(&mut self) -> Result<()> {
        let started = Instant::now();
        let b = &self.base.backend;
        let params = self.params.tensors(b, &self.params.values, "");
        let mut moments = self.params.tensors(b, &self.optimizer.m, EXP_AVG);
        moments.extend(self.params.tensors(b, &self.optimizer.v, EXP_AVG_SQ));
        let state = CheckpointState {
            format: checkpoint::FORMAT.into(),
            run: self.run.clone(),
            state: TrainState { step: self.step, rng: self.rng.state(), data: self.batcher.pos, tokens: self.tokens },
        };
        let files = CheckpointFiles {
            config: &self.config,
            params: &params,
            moments: &moments,
            draft_vocab: self.draft_vocab.as_ref(),
        };
        checkpoint::save(&self.opts.out, &state, &files)?;
        write_head(&self.opts.out, &params, &self.config)?;
        self.metrics.write_curves(&self.opts.out)?;
        self.add_time(Phase::Checkpoint, started);
        Ok(())
    }
}
