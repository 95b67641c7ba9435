use std::path::PathBuf;

use clap::Args;

use clover_engine::backend::Backend;
use clover_engine::error::{Error, Result};
use clover_engine::train::distill::{
    distill, reference_schedule, DistillOptions, DistillSummary, DEFAULT_BATCH_TOKENS, DEFAULT_MAX_LEN,
};
use clover_engine::train::metrics::percents;
use clover_engine::train::tensor_scale::TensorScale;
use clover_engine::train::timers::Phase;

use super::generate::DraftArg;

#[derive(Args)]
pub struct DistillArgs {
    /// Base model folder (default: the model fetched by tools/fetch-default-model.sh).
    #[arg(long)]
    model: Option<PathBuf>,
    /// Folder written by gen-data (index.json and its shards); several (repeated, or separated by
    /// commas) train on all of them, each keeping its own held-out tail.
    #[arg(long, required = true, value_delimiter = ',')]
    data: Vec<PathBuf>,
    /// The head kind to train.
    #[arg(long, value_enum)]
    head: DraftArg,
    /// Output folder: the trained head (config.json, model.safetensors), checkpoints, metrics.jsonl,
    /// loss.svg and accuracy.svg.
    #[arg(long)]
    out: PathBuf,
    /// Start from this head folder instead of a freshly initialised head.
    #[arg(long)]
    init: Option<PathBuf>,
    /// Continue the run in --out from its newest checkpoint.
    #[arg(long)]
    resume: bool,
    /// Train until this many optimiser steps in all (a resumed run counts the earlier ones). 0
    /// trains nothing: the starting head's held-out evaluation only (e.g. a shipped head's
    /// rollout on --eval-data).
    #[arg(long, default_value_t = 100)]
    steps: u64,
    /// Tokens per optimiser step (whole conversations, at least one) [default: 1024].
    #[arg(long)]
    batch_tokens: Option<usize>,
    /// Peak learning rate [default: the reference's: clover2 1e-3, eagle 3e-5].
    #[arg(long)]
    lr: Option<f32>,
    /// Linear warm-up steps [default: 10].
    #[arg(long)]
    warmup: Option<u64>,
    /// Step at which the linear decay reaches 0 [default: the reference's: clover2 1600000, eagle 800000].
    #[arg(long)]
    total_steps: Option<u64>,
    /// Conversations are cut to this many tokens [default: 2048].
    #[arg(long)]
    max_len: Option<usize>,
    /// Held-out evaluation and checkpoint every this many steps (and at the end).
    #[arg(long, default_value_t = 25)]
    eval_every: u64,
    /// Held-out tokens evaluated each time.
    #[arg(long, default_value_t = 1024)]
    eval_tokens: usize,
    /// Evaluate on these gen-data folders (repeated, or separated by commas) instead of the
    /// training folders' held-out tails: e.g. the base model's own answers to benchmark questions
    /// (tools/answers-to-sharegpt.py, then gen-data).
    #[arg(long, value_delimiter = ',')]
    eval_data: Vec<PathBuf>,
    /// Seed of the data order, the fresh head's initialisation and EAGLE's input noise [default: 0].
    #[arg(long)]
    seed: Option<u64>,
    /// Train over a reduced draft vocabulary: the N most frequent assistant tokens of the
    /// training split, saved with the head as draft_vocab.json (the head then drafts over them).
    /// The lm_head losses, most of a step, shrink by N / vocabulary size.
    #[arg(long)]
    draft_vocab: Option<usize>,
    /// Train over the --init head's own draft vocabulary (its draft_vocab.json, kept as it is)
    /// instead of counting one on this data: fine-tuning a head on new data without changing the
    /// tokens it drafts. A resumed run keeps it.
    #[arg(long, conflicts_with = "draft_vocab")]
    keep_draft_vocab: bool,
    /// Count a training row only where every token it consumed (teacher-forced from the data) is
    /// among the base model's 8 most likely and inside its top-p 0.8 nucleus: clover2.md §8's
    /// label mask, off by default as in the reference. Costs one lm_head projection per position
    /// a row reads. Held-out metrics still count every row. A resumed run keeps it.
    #[arg(long)]
    label_mask: bool,
    /// Train the parameters whose tensor names start with PREFIX at FACTOR times the learning
    /// rate (repeated, or separated by commas; the last match wins), e.g.
    /// `clover_head_mlp_rnn.v=30` for Clover-2's token injection in AD₀. A resumed run keeps them.
    #[arg(long, value_name = "PREFIX=FACTOR", value_delimiter = ',')]
    lr_scale: Vec<TensorScale>,
    /// Multiply the starting head's tensors whose names start with PREFIX by FACTOR (new runs
    /// only: from --init or a fresh head), e.g. `clover_head_mlp_rnn.v=5`.
    #[arg(long, value_name = "PREFIX=FACTOR", value_delimiter = ',')]
    init_scale: Vec<TensorScale>,
    /// Weigh the regression (SmoothL1) and distribution (soft cross-entropy) losses VLOSS and
    /// PLOSS before each head's decay, instead of the spec's (Clover-2 10,1; EAGLE-1 1,0.1).
    /// A resumed run keeps them.
    #[arg(long, value_name = "VLOSS,PLOSS", value_delimiter = ',', allow_hyphen_values = true)]
    loss_weights: Option<Vec<f32>>,
}

pub fn run<B: Backend + 'static>(a: DistillArgs, backend: B) -> Result<()> {
    let loss_weights = match a.loss_weights.as_deref() {
        None => None,
        Some(&[v, p]) => Some((v, p)),
        Some(other) => {
            return Err(Error::input(format!("--loss-weights takes two numbers, VLOSS,PLOSS, not {other:?}")))
        }
    };
    let opts = DistillOptions {
        model_dir: super::model_dir(a.model)?,
        data_dirs: a.data,
        head: a.head.into(),
        out: a.out,
        init: a.init,
        resume: a.resume,
        steps: a.steps,
        batch_tokens: a.batch_tokens,
        lr: a.lr,
        warmup: a.warmup,
        total_steps: a.total_steps,
        max_len: a.max_len,
        seed: a.seed,
        draft_vocab: a.draft_vocab,
        keep_draft_vocab: a.keep_draft_vocab,
        label_mask: a.label_mask,
        lr_scales: a.lr_scale,
        init_scales: a.init_scale,
        loss_weights,
        eval_every: a.eval_every,
        eval_tokens: a.eval_tokens,
        eval_data: a.eval_data,
        progress: true,
    };
    let (lr, _) = reference_schedule(opts.head);
    if opts.steps == 0 && !opts.resume {
        println!("--steps 0: evaluating the starting {} head on the held-out data, training nothing", opts.head.name());
    } else if !opts.resume {
        println!(
            "training a draft head of kind {}: lr {}, {} tokens per step, conversations cut at {}",
            opts.head.name(),
            opts.lr.unwrap_or(lr),
            opts.batch_tokens.unwrap_or(DEFAULT_BATCH_TOKENS),
            opts.max_len.unwrap_or(DEFAULT_MAX_LEN)
        );
    }
    let s = distill(&opts, backend)?;
    if s.step > s.start_step {
        print_training(&s);
    }
    if let Some(counts) = &s.label_masked {
        let kept: Vec<String> =
            counts.iter().map(|&(kept, all)| format!("{:.1}%", 100.0 * kept as f64 / all.max(1) as f64)).collect();
        println!("label mask: training rows kept per head {} (of the loss mask's)", kept.join(" "));
    }
    match &s.last_eval {
        Some(e) => {
            println!(
                "held-out loss {:.4}, agreement with the base model's argmax per head: top-1 {}, top-2 {}, top-3 {}",
                e.loss,
                percents(&e.top1),
                percents(&e.top2),
                percents(&e.top3)
            );
            if e.top1.len() > 1 {
                println!("held-out rollout (clover2.md §8): top-k chains accepted through depth 1..{}", e.top1.len());
                for r in &e.rollout {
                    println!("  top-{:<2} {} (τ {:.3})", r.top, percents(&r.accepted), r.tau());
                }
            }
        }
        None => println!(
            "no held-out evaluation: no held-out conversation (the last 5%) has assistant tokens within --max-len"
        ),
    }
    println!("head in {} (generate --draft {} --draft-model {0})", opts.out.display(), opts.head.name());
    Ok(())
}

/// Steps, tokens, throughput and where the time went.
fn print_training(s: &DistillSummary) {
    println!(
        "steps {} → {} ({} parameters): {} training tokens in {:.1} s, {:.1} training tokens/s",
        s.start_step,
        s.step,
        s.parameters,
        s.tokens,
        s.seconds,
        s.train_tokens_per_s()
    );
    let total = s.timers.total().as_secs_f64().max(1e-9);
    for phase in Phase::ALL {
        let t = s.timers.get(phase).as_secs_f64();
        println!("  {:<18} {:>9.2} s  {:>5.1}%", phase.name(), t, 100.0 * t / total);
    }
}
