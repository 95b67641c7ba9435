//! `distill`: teacher-forced training of a draft head on gen-data shards (clover2.md §8–§9,
//! eagle.md §3–§5). Each step takes a batch of conversations by token budget from a seeded
//! permutation, runs every record through the head (forward, losses, backward) with the batch's
//! loss denominators, clips the gradients by value and takes an AdamW step. The last 5% of the
//! conversations are held out; every `eval_every` steps the held-out loss and each head's top-1
//! agreement with the base model are measured and a checkpoint is written, from which `--resume`
//! continues exactly (same batches, noise, moments: the same losses as an uninterrupted run).
//!
//! `setup` turns the options (or a checkpoint) into a run's data, settings, head and optimiser
//! state; `run` is the loop itself.

mod run;
mod setup;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::backend::Backend;
use crate::draft::config::check_head_out;
use crate::draft::init::write_head;
use crate::draft::vocab::{DraftLmHead, DraftVocab};
use crate::draft::DraftKind;
use crate::error::{Error, Result};
use crate::model::Llama;
use crate::rng::Rng;
use crate::train::batches::Batcher;
use crate::train::draft_vocab::build_draft_vocab;
use crate::train::layout::INDEX_FILE;
use crate::train::metrics::MetricsLine;
use crate::train::tensor_scale::{per_parameter, TensorScale};
use crate::train::timers::{Phase, Timers};

use run::Run;
use setup::{find_checkpoint, load_head, open_data, open_eval_data, optimizer_and_state, resolve_run, HeadSource};

/// The held-out tail of the conversations (both references: 95 % / 5 %).
pub const HELDOUT_FRACTION: f64 = 0.05;
/// Tokens per optimiser step unless told: a few ShareGPT conversations (the references' batch is
/// 4 to 16 conversations of up to 2048 tokens), sized so a Clover-2 step takes seconds on a CPU.
pub const DEFAULT_BATCH_TOKENS: usize = 1024;
/// Warm-up steps unless told: the references' 8000 (Clover-2) and 2000 (EAGLE-1) steps are longer
/// than a whole CPU run.
pub const DEFAULT_WARMUP: u64 = 10;
pub const DEFAULT_MAX_LEN: usize = 2048;

#[derive(Clone, Debug)]
pub struct DistillOptions {
    pub model_dir: PathBuf,
    /// gen-data folders, read as one data set (`ShardReader::open_all`).
    pub data_dirs: Vec<PathBuf>,
    pub head: DraftKind,
    pub out: PathBuf,
    /// Start from this head instead of a fresh one (not with `resume`).
    pub init: Option<PathBuf>,
    /// Continue the run in `out` from its newest checkpoint.
    pub resume: bool,
    /// Train until this many optimiser steps in all (a resumed run counts the earlier ones). 0:
    /// only the held-out evaluation of the starting head.
    pub steps: u64,
    /// Settings a new run takes (defaults when None) and a resumed run must not change.
    pub batch_tokens: Option<usize>,
    pub lr: Option<f32>,
    pub warmup: Option<u64>,
    pub total_steps: Option<u64>,
    pub max_len: Option<usize>,
    pub seed: Option<u64>,
    /// Train over a reduced draft vocabulary of this many tokens (the most frequent assistant
    /// tokens of the training split), saved beside the head as draft_vocab.json.
    pub draft_vocab: Option<usize>,
    /// Train over the `init` head's own draft vocabulary (its draft_vocab.json, kept as it is)
    /// instead of counting one on the data: fine-tuning a head on new data without changing
    /// which tokens it drafts.
    pub keep_draft_vocab: bool,
    /// Count a training row only where every token it consumed is among the base model's top 8
    /// and inside its top-p 0.8 nucleus (clover2.md §8's label mask; `train/label_mask.rs`).
    pub label_mask: bool,
    /// Learning-rate factors by tensor-name prefix (empty: every parameter at the schedule's rate).
    pub lr_scales: Vec<TensorScale>,
    /// Factors the starting head's tensors are multiplied by, by tensor-name prefix (new runs).
    pub init_scales: Vec<TensorScale>,
    /// Weights of vloss and ploss before the per-head decay, instead of the spec's.
    pub loss_weights: Option<(f32, f32)>,
    /// Held-out evaluation and checkpoint every this many steps (and at the end).
    pub eval_every: u64,
    /// Held-out tokens evaluated (the first conversations of the held-out tail).
    pub eval_tokens: usize,
    /// Evaluate on these gen-data folders instead of the training folders' held-out tails (which
    /// stay out of training either way): e.g. the base model's own answers to benchmark
    /// questions, the references' evaluation data (clover2.md §7). Empty: the held-out tails.
    pub eval_data: Vec<PathBuf>,
    /// Show a progress bar and print the held-out evaluations.
    pub progress: bool,
}

/// The reference learning rate and schedule length of a head kind (clover2.md §9, eagle.md §5).
pub fn reference_schedule(kind: DraftKind) -> (f32, u64) {
    match kind {
        DraftKind::Clover2 => (1e-3, 1_600_000),
        DraftKind::Eagle => (3e-5, 800_000),
    }
}

#[derive(Debug)]
pub struct DistillSummary {
    pub start_step: u64,
    pub step: u64,
    /// Tokens (positions) trained on by this invocation.
    pub tokens: u64,
    /// Wall time of this invocation and its split by phase.
    pub seconds: f64,
    pub timers: Timers,
    pub last_eval: Option<MetricsLine>,
    pub parameters: usize,
    /// Under `--label-mask`: per head, the training rows this invocation counted and those its
    /// loss mask alone would have counted.
    pub label_masked: Option<Vec<(u64, u64)>>,
}

impl DistillSummary {
    /// Training tokens per second, counting only the training phases (not evaluation or
    /// checkpoints).
    pub fn train_tokens_per_s(&self) -> f64 {
        let t = &self.timers;
        let train: Duration = Phase::ALL.iter().filter(|p| p.is_training()).map(|&p| t.get(p)).sum();
        self.tokens as f64 / train.as_secs_f64().max(1e-9)
    }
}

pub fn distill<B: Backend + 'static>(opts: &DistillOptions, backend: B) -> Result<DistillSummary> {
    let started = Instant::now();
    for (option, n) in [("--eval-every", opts.eval_every), ("--eval-tokens", opts.eval_tokens as u64)] {
        if n == 0 {
            return Err(Error::input(format!("{option} 0: expected at least 1")));
        }
    }
    if opts.resume && opts.init.is_some() {
        return Err(Error::input("--init starts a new run; --resume continues the one in --out: give one of them"));
    }
    let reader = open_data("--data", &opts.data_dirs)?;
    let first_index = opts.data_dirs[0].join(INDEX_FILE);
    let base = Llama::load(&opts.model_dir, backend)?;
    reader.check_model(&opts.model_dir, &base.config)?;
    let split = reader.split(HELDOUT_FRACTION);
    if split.train.is_empty() {
        return Err(Error::format(
            first_index,
            "conversations",
            "no conversation is left for training after the held-out tail",
        ));
    }
    let resumed = find_checkpoint(opts)?;
    let run = resolve_run(opts, &reader.index, resumed.as_ref())?;
    if run.schedule.total < opts.steps {
        // The rate decays to 0 at the schedule's end: steps past it would change nothing.
        return Err(Error::input(format!(
            "--steps {}: the learning-rate schedule ends at step {} (--total-steps), where the rate reaches 0",
            opts.steps, run.schedule.total
        )));
    }
    if let Some(n) = run.draft_vocab.filter(|&n| n > base.config.vocab_size) {
        // Checked before anything is written to --out (the vocabulary itself is built later).
        return Err(Error::input(format!(
            "--draft-vocab {n}: more than the model's vocabulary of {} (leave it out for the full vocabulary)",
            base.config.vocab_size
        )));
    }
    // Made before anything is written to --out, so that a list that cannot be made leaves no head
    // there. Recounted from the data on resume too: same data (checked above), same split, same list.
    let draft_vocab = match (run.draft_vocab, run.draft_vocab_kept) {
        (Some(n), _) => Some(build_draft_vocab(&opts.data_dirs, base.config.vocab_size, n)?),
        (None, true) => Some(kept_draft_vocab(opts, resumed.as_ref().map(|(dir, _)| dir.as_path()), &base)?),
        (None, false) => None,
    };
    let b = &base.backend;
    let source = HeadSource::new(opts, resumed.as_ref().map(|(dir, _)| dir.as_path()))?;
    // The checkpoint of a resumed run already holds the scaled start, trained on.
    let init_scales = if resumed.is_some() { &[][..] } else { &run.init_scales[..] };
    let mut head = load_head(b, opts, &base, &source, run.seed, init_scales)?;
    if let Some((v, p)) = run.loss_weights {
        let spec = head.trainee.loss_spec().clone().with_terms(v, p);
        head.trainee.set_loss_spec(spec);
    }
    let lr_factors = per_parameter("--lr-scale", &run.lr_scales, &head.params.specs)?;
    check_head_out(&opts.out)?;
    std::fs::create_dir_all(&opts.out).map_err(|e| Error::io(&opts.out, e))?;
    let (optimizer, state, metrics) = optimizer_and_state(b, opts, &head.params, &run, resumed.as_ref())?;
    if opts.resume && state.step >= opts.steps {
        eprintln!(
            "note: the checkpoint is at step {} and --steps is {}: nothing to train (--steps counts the resumed \
             run's earlier steps too; give a larger one to go on)",
            state.step, opts.steps
        );
    }
    write_head(&opts.out, &head.params.tensors(b, &head.params.values, ""), &head.config)?;
    let lm = match &draft_vocab {
        Some(v) => {
            v.save(&opts.out)?;
            DraftLmHead::from_ids(&base, v.ids.clone())?
        }
        None => {
            // A list left in --out by an earlier head would make this one draft over it.
            DraftVocab::remove(&opts.out)?;
            DraftLmHead::full()
        }
    };

    let eval_data = (!opts.eval_data.is_empty())
        .then(|| open_eval_data(&opts.eval_data, &reader, base.config.vocab_size))
        .transpose()?;
    let (eval_reader, eval_set) = match &eval_data {
        Some(r) => (r, r.evaluation_set(&(0..r.len()).collect::<Vec<_>>(), run.max_len, opts.eval_tokens)),
        None => (&reader, reader.evaluation_set(&split.heldout, run.max_len, opts.eval_tokens)),
    };
    let batcher = Batcher::new(split.train, run.seed, run.batch_tokens, state.data);
    let r = Run {
        opts,
        run,
        reader: &reader,
        eval_reader,
        base: &base,
        params: head.params,
        config: head.config,
        trainee: head.trainee,
        lm,
        draft_vocab,
        optimizer,
        lr_factors,
        rng: Rng::from_state(state.rng),
        batcher,
        step: state.step,
        tokens: state.tokens,
        eval_set,
        metrics,
        timers: Timers::default(),
        label_masked: None,
        weights_current: true,
    };
    r.train(started)
}

/// `--keep-draft-vocab`: the starting head's list, read from `--init` in a new run and from the
/// checkpoint (which holds the list it trained over) in a resumed one.
fn kept_draft_vocab<B: Backend>(
    opts: &DistillOptions,
    checkpoint: Option<&std::path::Path>,
    base: &Llama<B>,
) -> Result<DraftVocab> {
    let Some(dir) = checkpoint.or(opts.init.as_deref()) else {
        return Err(Error::input("--keep-draft-vocab keeps the --init head's draft vocabulary: give --init"));
    };
    DraftVocab::load(dir, base.config.vocab_size)?.ok_or_else(|| {
        Error::input(format!(
            "--keep-draft-vocab: {} has no draft_vocab.json (the head drafts over the full vocabulary; \
             leave the option out, or give --draft-vocab N to count one on the data)",
            dir.display()
        ))
    })
}
