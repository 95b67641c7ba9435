//! `distill`: teacher-forced training of a draft head on gen-data shards (clover2.md §8–§9,
//! eagle.md §3–§5). Each step takes a batch of conversations by token budget from a seeded
//! permutation, runs every record through the head (forward, losses, backward) with the batch's
//! loss denominators, clips the gradients by value and takes an AdamW step. The last 5% of the
//! conversations are held out; every `eval_every` steps the held-out loss and each head's top-1
//! agreement with the base model are measured and a checkpoint is written, from which `--resume`
//! continues exactly (same batches, noise, moments: the same losses as an uninterrupted run).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

use crate::backend::Backend;
use crate::draft::config::{check_compatible, declared_kind, read_json, CloverConfig};
use crate::draft::init::{fresh_head, write_head};
use crate::draft::vocab::{DraftLmHead, DraftVocab};
use crate::draft::DraftKind;
use crate::error::{Error, Result};
use crate::model::{Llama, ModelConfig};
use crate::rng::Rng;
use crate::train::align::{mask_sums, truncate};
use crate::train::batches::{Batcher, DataPosition};
use crate::train::checkpoint::{
    self, CheckpointFiles, CheckpointState, DataId, RunConfig, TrainState, EXP_AVG, EXP_AVG_SQ, OPTIMIZER_FILE,
};
use crate::train::clover_train::{clover_specs, CloverTrainee};
use crate::train::draft_vocab::build_draft_vocab;
use crate::train::eagle_train::{eagle_specs, EagleTrainee};
use crate::train::head::{Mode, TrainHead};
use crate::train::layout::{DataIndex, INDEX_FILE};
use crate::train::losses::HeadSums;
use crate::train::metrics::{MetricsLine, MetricsLog, HELDOUT, TRAIN};
use crate::train::optim::schedule::Schedule;
use crate::train::optim::Optimizer;
use crate::train::params::{from_files, from_list, ParamSet, ParamSpec};
use crate::train::shards::{Record, ShardReader};
use crate::train::tensor_scale::{per_parameter, scaled, TensorScale};
use crate::train::timers::{Phase, Timers};
use crate::weights::safetensors::SafetensorsFiles;

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
    /// Train until this many optimiser steps in all (a resumed run counts the earlier ones).
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
}

impl DistillSummary {
    /// Training tokens per second, counting only the training phases (not evaluation or
    /// checkpoints).
    pub fn train_tokens_per_s(&self) -> f64 {
        let t = &self.timers;
        let train: Duration = [Phase::Data, Phase::Forward, Phase::LmHead, Phase::Backward, Phase::Optimiser]
            .iter()
            .map(|&p| t.get(p))
            .sum();
        self.tokens as f64 / train.as_secs_f64().max(1e-9)
    }
}

pub fn distill<B: Backend + 'static>(opts: &DistillOptions, backend: B) -> Result<DistillSummary> {
    let started = Instant::now();
    if opts.steps == 0 || opts.eval_every == 0 || opts.eval_tokens == 0 {
        return Err(Error::input("--steps, --eval-every and --eval-tokens must be at least 1"));
    }
    if opts.resume && opts.init.is_some() {
        return Err(Error::input("--init starts a new run; --resume continues the one in --out: give one of them"));
    }
    let reader = open_data(&opts.data_dirs)?;
    let first_index = opts.data_dirs[0].join(INDEX_FILE);
    let base = Llama::load(&opts.model_dir, backend)?;
    if reader.hidden_size() != base.config.hidden_size {
        return Err(Error::format(
            first_index.clone(),
            "hidden_size",
            format!(
                "the data has features of size {} but the model in {} has hidden_size {}: the data was made with \
                 another base model (index.json names `{}`)",
                reader.hidden_size(),
                opts.model_dir.display(),
                base.config.hidden_size,
                reader.index.model
            ),
        ));
    }
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
    std::fs::create_dir_all(&opts.out).map_err(|e| Error::io(&opts.out, e))?;
    let (optimizer, state, metrics) = optimizer_and_state(b, opts, &head.params, &run, resumed.as_ref())?;
    write_head(&opts.out, &head.params.tensors(b, &head.params.values, ""), &head.config)?;
    // Recounted from the data on resume too: same data (checked above), same split, same list.
    let draft_vocab = match run.draft_vocab {
        Some(n) => Some(build_draft_vocab(&opts.data_dirs, base.config.vocab_size, n)?),
        None => None,
    };
    let lm = match &draft_vocab {
        Some(v) => {
            v.save(&opts.out)?;
            DraftLmHead::from_ids(&base, v.ids.clone())?
        }
        None => DraftLmHead::full(),
    };

    let eval_set = eval_set(&reader, &split.heldout, run.max_len, opts.eval_tokens);
    let batcher = Batcher::new(split.train, run.seed, run.batch_tokens, state.data);
    let r = Run {
        opts,
        run,
        reader: &reader,
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
        weights_current: true,
    };
    r.train(started)
}

/// AdamW's moments, the training state and the metrics log: the checkpoint's when resuming, else
/// fresh ones.
fn optimizer_and_state<B: Backend>(
    b: &B,
    opts: &DistillOptions,
    params: &ParamSet<B>,
    run: &RunConfig,
    resumed: Option<&(PathBuf, CheckpointState)>,
) -> Result<(Optimizer<B>, TrainState, MetricsLog)> {
    let Some((dir, ckpt)) = resumed else {
        let optimizer = Optimizer { m: params.zeros_like(b), v: params.zeros_like(b), steps: 0 };
        let rng = Rng::new(run.seed ^ NOISE_STREAM).state();
        let state = TrainState { step: 0, rng, data: DataPosition::default(), tokens: 0 };
        return Ok((optimizer, state, MetricsLog::create(&opts.out)?));
    };
    let files = SafetensorsFiles::open(&[dir.join(OPTIMIZER_FILE)])?;
    let moment = |prefix: &str| -> Result<Vec<B::Buf>> {
        let mut read = from_files(&files);
        let set = ParamSet::load(b, params.specs.clone(), |name, shape| read(&format!("{prefix}{name}"), shape))?;
        Ok(set.values)
    };
    let optimizer = Optimizer { m: moment(EXP_AVG)?, v: moment(EXP_AVG_SQ)?, steps: ckpt.state.step };
    Ok((optimizer, ckpt.state.clone(), MetricsLog::resume(&opts.out, ckpt.state.step)?))
}

/// The noise generator's seed is the run's seed with this mixed in, so it does not replay the
/// stream that initialised the head.
const NOISE_STREAM: u64 = 0x6e6f_6973_6520_7374;

fn open_data(dirs: &[PathBuf]) -> Result<ShardReader> {
    for dir in dirs {
        if !dir.join(INDEX_FILE).exists() {
            return Err(Error::format(
                dir.join(INDEX_FILE),
                "(file)",
                "missing: --data must be a folder written by `clover-engine gen-data` (index.json and its shards)",
            ));
        }
    }
    let reader = ShardReader::open_all(dirs)?;
    if reader.is_empty() {
        let names: Vec<String> = dirs.iter().map(|d| d.join(INDEX_FILE).display().to_string()).collect();
        return Err(Error::input(format!("{}: the data holds no conversation", names.join(", "))));
    }
    Ok(reader)
}

/// The first held-out records up to `budget` tokens (at least one), skipping those with nothing
/// to learn within `max_len` (a long first user turn): they would count tokens and no rows.
fn eval_set(reader: &ShardReader, heldout: &[usize], max_len: usize, budget: usize) -> Vec<usize> {
    let mut set = Vec::new();
    let mut tokens = 0;
    for &i in heldout {
        let t = reader.tokens(i).min(max_len);
        if !set.is_empty() && tokens + t > budget {
            break;
        }
        if reader.record(i).loss_mask[..t.saturating_sub(1)].iter().any(|&m| m != 0) {
            tokens += t;
            set.push(i);
        }
    }
    set
}

/// With `--resume`, the newest checkpoint in `--out` (which must exist); without, `--out` must
/// not hold a run already.
fn find_checkpoint(opts: &DistillOptions) -> Result<Option<(PathBuf, CheckpointState)>> {
    let latest = checkpoint::latest(&opts.out)?;
    match (opts.resume, latest) {
        (true, Some(dir)) => {
            let state = checkpoint::load_state(&dir)?;
            Ok(Some((dir, state)))
        }
        (true, None) => Err(Error::input(format!(
            "--resume: {} holds no checkpoint (checkpoints/step-*) to continue from",
            opts.out.display()
        ))),
        (false, Some(dir)) => Err(Error::input(format!(
            "{} already holds a training run ({}); pass --resume to continue it, or choose another --out",
            opts.out.display(),
            dir.display()
        ))),
        (false, None) => Ok(None),
    }
}

/// The run's settings: the options with their defaults, or, when resuming, the checkpoint's (an
/// option given again must agree with it).
fn resolve_run(
    opts: &DistillOptions,
    index: &DataIndex,
    resumed: Option<&(PathBuf, CheckpointState)>,
) -> Result<RunConfig> {
    let data = DataId {
        model: index.model.clone(),
        hidden_size: index.hidden_size,
        conversations: index.conversations,
        tokens: index.tokens,
    };
    let Some((dir, ckpt)) = resumed else {
        let (lr, total) = reference_schedule(opts.head);
        let run = RunConfig {
            head: opts.head.name().to_string(),
            schedule: Schedule {
                lr: opts.lr.unwrap_or(lr),
                warmup: opts.warmup.unwrap_or(DEFAULT_WARMUP),
                total: opts.total_steps.unwrap_or(total),
            },
            batch_tokens: opts.batch_tokens.unwrap_or(DEFAULT_BATCH_TOKENS),
            max_len: opts.max_len.unwrap_or(DEFAULT_MAX_LEN),
            seed: opts.seed.unwrap_or(0),
            data,
            draft_vocab: opts.draft_vocab,
            lr_scales: opts.lr_scales.clone(),
            init_scales: opts.init_scales.clone(),
            loss_weights: opts.loss_weights,
        };
        if let Some((v, p)) = run.loss_weights {
            if !(v > 0.0 && p > 0.0 && v.is_finite() && p.is_finite()) {
                return Err(Error::input(format!("--loss-weights must be two positive numbers, not {v},{p}")));
            }
        }
        if run.draft_vocab == Some(0) {
            return Err(Error::input("--draft-vocab must be at least 1"));
        }
        if run.batch_tokens == 0 || run.max_len < 2 || run.schedule.lr.is_nan() || run.schedule.lr <= 0.0 {
            return Err(Error::input("--batch-tokens must be at least 1, --max-len at least 2 and --lr positive"));
        }
        return Ok(run);
    };
    let stored = &ckpt.run;
    let path = dir.join(checkpoint::STATE_FILE);
    let differs = |field: &str, given: String, kept: String| {
        Error::format(
            &path,
            format!("run.{field}"),
            format!("the run was started with {kept}; --resume cannot change it to {given}"),
        )
    };
    let check = |field: &str, given: Option<String>, kept: String| -> Result<()> {
        match given {
            Some(g) if g != kept => Err(differs(field, g, kept)),
            _ => Ok(()),
        }
    };
    check("head", Some(opts.head.name().to_string()), stored.head.clone())?;
    check("schedule.lr", opts.lr.map(|v| v.to_string()), stored.schedule.lr.to_string())?;
    check("schedule.warmup", opts.warmup.map(|v| v.to_string()), stored.schedule.warmup.to_string())?;
    check("schedule.total", opts.total_steps.map(|v| v.to_string()), stored.schedule.total.to_string())?;
    check("batch_tokens", opts.batch_tokens.map(|v| v.to_string()), stored.batch_tokens.to_string())?;
    check("max_len", opts.max_len.map(|v| v.to_string()), stored.max_len.to_string())?;
    check("seed", opts.seed.map(|v| v.to_string()), stored.seed.to_string())?;
    let vocab_name = |v: Option<usize>| v.map_or("the full vocabulary".to_string(), |n| format!("{n} tokens"));
    check("draft_vocab", opts.draft_vocab.map(|v| vocab_name(Some(v))), vocab_name(stored.draft_vocab))?;
    let scales_name = |s: &[TensorScale]| s.iter().map(|s| s.to_string()).collect::<Vec<_>>().join(",");
    let given_scales = (!opts.lr_scales.is_empty()).then(|| scales_name(&opts.lr_scales));
    check("lr_scales", given_scales, scales_name(&stored.lr_scales))?;
    let weights_name = |w: Option<(f32, f32)>| w.map_or("the spec's".to_string(), |(v, p)| format!("{v},{p}"));
    check("loss_weights", opts.loss_weights.map(|w| weights_name(Some(w))), weights_name(stored.loss_weights))?;
    if !opts.init_scales.is_empty() {
        return Err(Error::input(
            "--init-scale sets the starting head of a new run; --resume continues from a checkpoint",
        ));
    }
    if stored.data != data {
        let dirs: Vec<String> = opts.data_dirs.iter().map(|d| d.display().to_string()).collect();
        return Err(differs("data", format!("{data:?} ({})", dirs.join(", ")), format!("{:?}", stored.data)));
    }
    Ok(stored.clone())
}

/// Where the head's config and first parameters come from.
enum HeadSource {
    /// A head folder: a checkpoint being resumed, or `--init`.
    Folder(PathBuf),
    /// A freshly initialised head (`init-head`'s initialisation).
    Fresh,
}

impl HeadSource {
    fn new(opts: &DistillOptions, checkpoint: Option<&Path>) -> Result<Self> {
        match (checkpoint, &opts.init) {
            (Some(dir), _) => Ok(HeadSource::Folder(dir.to_path_buf())),
            (None, Some(dir)) => {
                if !dir.join("config.json").exists() {
                    return Err(Error::format(
                        dir.join("config.json"),
                        "(file)",
                        "missing: --init must be a head folder",
                    ));
                }
                Ok(HeadSource::Folder(dir.clone()))
            }
            (None, None) => Ok(HeadSource::Fresh),
        }
    }
}

struct Head<B: Backend> {
    config: serde_json::Value,
    params: ParamSet<B>,
    trainee: Box<dyn TrainHead<B>>,
}

/// The head's config, its parameters and its trainer, from `source`.
fn load_head<B: Backend + 'static>(
    b: &B,
    opts: &DistillOptions,
    base: &Llama<B>,
    source: &HeadSource,
    seed: u64,
    init_scales: &[TensorScale],
) -> Result<Head<B>> {
    let kind = opts.head;
    let (json, config_path, fresh) = match source {
        HeadSource::Folder(dir) => {
            let path = dir.join("config.json");
            (read_json(&path)?, path, None)
        }
        HeadSource::Fresh => {
            let (tensors, json) = fresh_head(kind, &opts.model_dir, seed)?;
            (json, opts.model_dir.join("config.json"), Some(tensors))
        }
    };
    if let Some(declared) = declared_kind(&json).filter(|k| *k != kind.name()) {
        return Err(Error::format(
            &config_path,
            "draft.kind",
            format!("this is a `{declared}` head, but --head {} was asked for", kind.name()),
        ));
    }
    let config = ModelConfig::from_json(&json, &config_path)?;
    check_compatible(&config, &base.config, &config_path)?;
    let clover = CloverConfig::from_json(&json, &config_path)?;
    let specs: Vec<ParamSpec> = match kind {
        DraftKind::Eagle => eagle_specs(&config),
        DraftKind::Clover2 => clover_specs(&config, &clover),
    };
    per_parameter("--init-scale", init_scales, &specs)?;
    let params = match fresh {
        Some(tensors) => ParamSet::load(b, specs, scaled(from_list(&tensors, "fresh head"), init_scales))?,
        None => {
            // A head folder: the config's own folder.
            let dir = config_path.parent().unwrap_or(Path::new("."));
            ParamSet::load(b, specs, scaled(from_files(&SafetensorsFiles::open_dir(dir)?), init_scales))?
        }
    };
    let weights = params.weights(b)?;
    let trainee: Box<dyn TrainHead<B>> = match kind {
        DraftKind::Eagle => Box::new(EagleTrainee::new(b, config, weights)),
        DraftKind::Clover2 => Box::new(CloverTrainee::new(b, config, clover, weights)),
    };
    Ok(Head { config: json, params, trainee })
}

/// A run in progress.
struct Run<'a, B: Backend> {
    opts: &'a DistillOptions,
    run: RunConfig,
    reader: &'a ShardReader,
    base: &'a Llama<B>,
    params: ParamSet<B>,
    config: serde_json::Value,
    trainee: Box<dyn TrainHead<B>>,
    /// The lm_head the losses project through (full, or the draft vocabulary's rows).
    lm: DraftLmHead<B>,
    draft_vocab: Option<DraftVocab>,
    optimizer: Optimizer<B>,
    /// Each parameter's learning-rate factor (`--lr-scale`).
    lr_factors: Vec<f32>,
    /// EAGLE-1's input noise.
    rng: Rng,
    batcher: Batcher,
    step: u64,
    tokens: u64,
    eval_set: Vec<usize>,
    metrics: MetricsLog,
    timers: Timers,
    /// The trainee's weights are those of the parameters (no optimiser step since they were built).
    weights_current: bool,
}

impl<B: Backend> Run<'_, B> {
    fn train(mut self, started: Instant) -> Result<DistillSummary> {
        let (start_step, start_tokens) = (self.step, self.tokens);
        let bar = self.progress_bar();
        if self.step == 0 {
            if let Some(line) = self.evaluate()? {
                self.report(&bar, &line);
            }
        }
        let mut last_eval = None;
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
        let top1: Vec<String> = line.top1.iter().map(|a| format!("{:.1}%", 100.0 * a)).collect();
        bar.suspend(|| {
            println!(
                "step {:>6}  held-out loss {:.4}  top-1 vs base per head: {}",
                line.step,
                line.loss,
                top1.join(" ")
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

    fn train_step(&mut self) -> Result<MetricsLine> {
        let started = Instant::now();
        let (reader, max_len) = (self.reader, self.run.max_len);
        let batch = self.batcher.next_batch(|i| reader.tokens(i).min(max_len));
        let records = self.records(&batch);
        let heads = self.trainee.loss_spec().heads();
        let mut masked = vec![0; heads];
        for rec in &records {
            for (m, n) in masked.iter_mut().zip(mask_sums(&rec.loss_mask, heads)) {
                *m += n;
            }
        }
        let scales = self.trainee.loss_spec().batch_scales(&masked);
        self.refresh_weights()?;
        let b = &self.base.backend;
        for g in self.trainee.grads() {
            b.zero(g);
        }
        let mut sums = vec![HeadSums::default(); heads];
        for rec in &records {
            let mode = Mode::Train { noise: &mut self.rng };
            let rec_sums = self.trainee.pass(b, self.base, &self.lm, rec, &scales, mode, &mut self.timers);
            sums.iter_mut().zip(&rec_sums).for_each(|(s, r)| s.add(r));
        }
        let lr = self.run.schedule.lr_at(self.step + 1);
        self.timers.time(Phase::Optimiser, || {
            self.optimizer.step(b, &mut self.params.values, self.trainee.grads(), lr, &self.lr_factors)
        });
        self.weights_current = false;
        self.step += 1;
        let tokens: u64 = records.iter().map(|r| r.len() as u64).sum();
        self.tokens += tokens;
        let spec = self.trainee.loss_spec();
        let per_head = spec.per_head(&sums, false);
        let line = MetricsLine {
            split: TRAIN.into(),
            step: self.step,
            loss: spec.total(&per_head),
            vloss: per_head.iter().map(|p| p.0).collect(),
            ploss: per_head.iter().map(|p| p.1).collect(),
            top1: Vec::new(),
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
            let mut rec = self.reader.record(i);
            truncate(&mut rec, self.run.max_len, self.reader.hidden_size());
            tokens += rec.len() as u64;
            let rec_sums = self.trainee.pass(b, self.base, &self.lm, &rec, &scales, Mode::Eval, &mut scratch);
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
