//! Setting a run up: its data, its settings (the options' or a checkpoint's), the head and the
//! optimiser state.

use std::path::{Path, PathBuf};

use crate::backend::Backend;
use crate::draft::config::{check_compatible, declared_kind, read_json, refuse_base_model, CloverConfig};
use crate::draft::eagle::fc_has_bias;
use crate::draft::init::fresh_head;
use crate::draft::DraftKind;
use crate::error::{Error, Result};
use crate::model::{Llama, ModelConfig};
use crate::rng::Rng;
use crate::train::batches::DataPosition;
use crate::train::checkpoint::{
    self, CheckpointState, DataId, RunConfig, TrainState, EXP_AVG, EXP_AVG_SQ, OPTIMIZER_FILE,
};
use crate::train::clover_train::{clover_specs, CloverTrainee};
use crate::train::eagle_train::{eagle_specs, EagleTrainee};
use crate::train::head::TrainHead;
use crate::train::layout::{DataIndex, INDEX_FILE};
use crate::train::metrics::MetricsLog;
use crate::train::optim::schedule::Schedule;
use crate::train::optim::Optimizer;
use crate::train::params::{from_files, from_list, ParamSet, ParamSpec};
use crate::train::shards::ShardReader;
use crate::train::tensor_scale::{per_parameter, scaled, TensorScale};
use crate::weights::safetensors::SafetensorsFiles;

use super::{reference_schedule, DistillOptions, DEFAULT_BATCH_TOKENS, DEFAULT_MAX_LEN, DEFAULT_WARMUP};

/// AdamW's moments, the training state and the metrics log: the checkpoint's when resuming, else
/// fresh ones.
pub(super) fn optimizer_and_state<B: Backend>(
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

/// The gen-data folders of `option` (`--data` or `--eval-data`) as one data set.
pub(super) fn open_data(option: &str, dirs: &[PathBuf]) -> Result<ShardReader> {
    for (i, dir) in dirs.iter().enumerate() {
        let resolved = |d: &PathBuf| d.canonicalize().unwrap_or_else(|_| d.clone());
        if dirs[..i].iter().any(|d| resolved(d) == resolved(dir)) {
            return Err(Error::input(format!(
                "{option} names {} twice: its conversations would count twice",
                dir.display()
            )));
        }
        if !dir.join(INDEX_FILE).exists() {
            return Err(Error::format(
                dir.join(INDEX_FILE),
                "(file)",
                format!("missing: {option} must be a folder written by `clover-engine gen-data` (index.json and its shards)"),
            ));
        }
    }
    let reader = ShardReader::open_all(dirs)?;
    let names = || dirs.iter().map(|d| d.join(INDEX_FILE).display().to_string()).collect::<Vec<_>>().join(", ");
    if reader.is_empty() {
        return Err(Error::input(format!("{}: the data holds no conversation", names())));
    }
    if reader.index.masked_tokens == 0 {
        return Err(Error::input(format!(
            "{}: the data holds no assistant token to learn from (gen-data's --max-len cut every reply)",
            names()
        )));
    }
    Ok(reader)
}

/// `--eval-data`: folders evaluated instead of the training folders' held-out tails, which must
/// come from the training data's base model.
pub(super) fn open_eval_data(dirs: &[PathBuf], train: &ShardReader, vocab_size: usize) -> Result<ShardReader> {
    let reader = open_data("--eval-data", dirs)?;
    if !reader.index.same_base_model(&train.index) {
        return Err(Error::format(
            dirs[0].join(INDEX_FILE),
            "model",
            format!(
                "{} (hidden_size {}) differs from the training data's {} (hidden_size {}): --eval-data must come \
                 from the same base model as --data",
                reader.index.model,
                reader.hidden_size(),
                train.index.model,
                train.hidden_size()
            ),
        ));
    }
    reader.check_token_ids(vocab_size)?;
    Ok(reader)
}

/// With `--resume`, the newest checkpoint in `--out` (which must exist); without, `--out` must
/// not hold a run already.
pub(super) fn find_checkpoint(opts: &DistillOptions) -> Result<Option<(PathBuf, CheckpointState)>> {
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
pub(super) fn resolve_run(
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
            draft_vocab_kept: opts.keep_draft_vocab,
            label_mask: opts.label_mask,
            lr_scales: opts.lr_scales.clone(),
            init_scales: opts.init_scales.clone(),
            loss_weights: opts.loss_weights,
        };
        check_settings(&run, |flag, msg| Error::input(format!("--{flag} {msg}")))?;
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
    let kept_name =
        |kept: bool| if kept { "the --init head's draft vocabulary kept" } else { "no kept draft vocabulary" };
    check(
        "draft_vocab_kept",
        opts.keep_draft_vocab.then(|| kept_name(true).to_string()),
        kept_name(stored.draft_vocab_kept).to_string(),
    )?;
    let mask_name = |on: bool| if on { "the label mask" } else { "no label mask" };
    check(
        "label_mask",
        opts.label_mask.then(|| mask_name(true).to_string()),
        mask_name(stored.label_mask).to_string(),
    )?;
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
        return Err(differs("data", format!("{data} ({})", dirs.join(", ")), stored.data.to_string()));
    }
    // A checkpoint's settings get the checks a new run's options get: an edited or corrupt
    // state.json must not train on zero tokens, or fail after writing half a head.
    let field = |flag: &str| if flag == "lr" { "schedule.lr".to_string() } else { flag.replace('-', "_") };
    check_settings(stored, |flag, msg| Error::format(&path, format!("run.{}", field(flag)), msg))?;
    Ok(stored.clone())
}

/// Settings no run can train with. `bad(option, message)` makes the error: named by the option
/// for a new run, by the checkpoint's field for a resumed one.
fn check_settings(run: &RunConfig, bad: impl Fn(&str, String) -> Error) -> Result<()> {
    if let Some((v, p)) = run.loss_weights {
        if !(v > 0.0 && p > 0.0 && v.is_finite() && p.is_finite()) {
            return Err(bad("loss-weights", format!("{v},{p}: expected two positive numbers")));
        }
    }
    if run.draft_vocab == Some(0) {
        return Err(bad("draft-vocab", "0: expected at least 1".into()));
    }
    if run.draft_vocab.is_some() && run.draft_vocab_kept {
        return Err(bad(
            "draft-vocab",
            "N counts a new draft vocabulary on the data; --keep-draft-vocab keeps the --init head's: give one of \
             them"
                .into(),
        ));
    }
    if run.batch_tokens == 0 {
        return Err(bad("batch-tokens", "0: expected at least 1".into()));
    }
    if run.max_len < 2 {
        return Err(bad("max-len", format!("{}: expected at least 2", run.max_len)));
    }
    if !(run.schedule.lr.is_finite() && run.schedule.lr > 0.0) {
        return Err(bad("lr", format!("{}: expected a positive number", run.schedule.lr)));
    }
    Ok(())
}

/// Where the head's config and first parameters come from.
pub(super) enum HeadSource {
    /// A head folder: a checkpoint being resumed, or `--init`.
    Folder(PathBuf),
    /// A freshly initialised head (`init-head`'s initialisation).
    Fresh,
}

impl HeadSource {
    pub(super) fn new(opts: &DistillOptions, checkpoint: Option<&Path>) -> Result<Self> {
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

pub(super) struct Head<B: Backend> {
    pub(super) config: serde_json::Value,
    pub(super) params: ParamSet<B>,
    pub(super) trainee: Box<dyn TrainHead<B>>,
}

/// The head's config, its parameters and its trainer, from `source`.
pub(super) fn load_head<B: Backend + 'static>(
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
            let json = read_json(&path)?;
            if declared_kind(&json).is_none() && dir.join("model.safetensors").exists() {
                // A base model's folder has a Llama config too; its tensors tell it apart.
                refuse_base_model(&SafetensorsFiles::open_dir(dir)?, dir)?;
            }
            (json, path, None)
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
    if kind == DraftKind::Eagle && !fc_has_bias(&json, &config_path)? {
        // The trainer's fc has a bias (eagle.md §2, the reference's default); a head without one
        // would come back from training with one its config denies.
        return Err(Error::format(
            &config_path,
            "bias",
            "false: distill trains EAGLE-1 heads with an fc bias (the reference's default); start from a head \
             that has one, or from a fresh head",
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
