//! Wall time per phase of a training run, summed over the run and printed at its end, so users see
//! where the time goes. The CPU backend runs every op to completion before returning, so a timer
//! around a phase measures that phase; a device backend would have to synchronise first.

use std::time::{Duration, Instant};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Reading and widening records from the shards.
    Data,
    /// The base model's plausibility of each next token, for the label mask (`--label-mask`).
    LabelMask,
    /// The head's teacher-forced forward, up to its outputs f.
    Forward,
    /// lm_head projections of teacher and student rows, the losses and their input gradient.
    LmHead,
    /// The head's backward from dL/df to every parameter gradient.
    Backward,
    /// Clipping, AdamW and rebuilding the forward's weights.
    Optimiser,
    /// Held-out evaluation.
    Eval,
    /// Checkpoints, curves and metrics files.
    Checkpoint,
}

impl Phase {
    pub const ALL: [Phase; 8] = [
        Phase::Data,
        Phase::LabelMask,
        Phase::Forward,
        Phase::LmHead,
        Phase::Backward,
        Phase::Optimiser,
        Phase::Eval,
        Phase::Checkpoint,
    ];

    /// Whether the phase is part of training proper (not held-out evaluation or checkpoints): the
    /// phases training tokens/s counts.
    pub fn is_training(self) -> bool {
        !matches!(self, Phase::Eval | Phase::Checkpoint)
    }

    pub fn name(self) -> &'static str {
        match self {
            Phase::Data => "data",
            Phase::LabelMask => "label mask",
            Phase::Forward => "forward",
            Phase::LmHead => "lm_head + losses",
            Phase::Backward => "backward",
            Phase::Optimiser => "optimiser",
            Phase::Eval => "held-out eval",
            Phase::Checkpoint => "checkpoints",
        }
    }
}

#[derive(Clone, Debug, Default)]
pub struct Timers {
    totals: [Duration; Phase::ALL.len()],
}

impl Timers {
    pub fn time<T>(&mut self, phase: Phase, f: impl FnOnce() -> T) -> T {
        let start = Instant::now();
        let out = f();
        self.totals[phase as usize] += start.elapsed();
        out
    }

    pub fn add(&mut self, phase: Phase, time: Duration) {
        self.totals[phase as usize] += time;
    }

    pub fn get(&self, phase: Phase) -> Duration {
        self.totals[phase as usize]
    }

    pub fn total(&self) -> Duration {
        self.totals.iter().sum()
    }
}
