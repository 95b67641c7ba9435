use std::path::PathBuf;

use clap::Args;

use clover_engine::backend::Backend;
use clover_engine::draft::load_head_opts;
use clover_engine::error::Result;
use clover_engine::eval::answers::{AcceptLengths, Answer};
use clover_engine::eval::decoder::Decoder;
use clover_engine::eval::harness::EvalRun;
use clover_engine::eval::questions::{first_per_category, read_questions, select};
use clover_engine::model::{Llama, TextTokenizer};
use clover_engine::sampling::SamplingParams;
use clover_engine::spec::engine::GenerationConfig;

use super::checks;
use super::generate::{stop_ids, SpecArgs};

#[derive(Args)]
pub struct EvalArgs {
    /// HF model folder (default: the model fetched by tools/fetch-default-model.sh).
    #[arg(long)]
    model: Option<PathBuf>,
    #[command(flatten)]
    spec: SpecArgs,
    /// Questions, one JSON object a line: question_id, category, turns.
    #[arg(long)]
    bench: PathBuf,
    /// Answers, one JSON line per question; questions already in it are skipped (resume).
    #[arg(long)]
    out: PathBuf,
    /// 0 = greedy.
    #[arg(long, default_value_t = 0.0)]
    temperature: f32,
    #[arg(long, default_value_t = 1024)]
    max_new_tokens: usize,
    /// A turn also stops once prompt and answer hold this many tokens (the reference protocol's
    /// 1960, clover2.md §16 P7), and always at the model's context.
    #[arg(long, default_value_t = 1960)]
    max_length: usize,
    /// Answer only the first N turns of each question (1 = first turn only, as the τ figures of
    /// the EAGLE and Clover papers on MT-bench are often quoted); default: every turn.
    #[arg(long)]
    max_turns: Option<usize>,
    /// First question (0-based index into the file).
    #[arg(long)]
    question_begin: Option<usize>,
    /// One past the last question (default: the end of the file).
    #[arg(long)]
    question_end: Option<usize>,
    /// Only the first N questions of each category (of the range): a sample of every category.
    #[arg(long)]
    per_category: Option<usize>,
    /// Turn t of question q is sampled with seed S + 1000·q + t.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Untimed runs of the first question before recording.
    #[arg(long, default_value_t = 3)]
    warmup: usize,
    #[command(flatten)]
    template: super::ChatTemplateArg,
    /// A system message opening every question's conversation (default: the template's own).
    #[arg(long)]
    system: Option<String>,
    /// The answers' model_id (default: the model folder's name and the method, e.g. SmolLM2-135M-Instruct-eagle).
    #[arg(long)]
    model_id: Option<String>,
}

pub fn run<B: Backend + 'static>(a: EvalArgs, backend: B) -> Result<()> {
    checks::temperature(a.temperature)?;
    checks::at_least_one("--max-new-tokens", a.max_new_tokens)?;
    checks::at_least_one("--max-length", a.max_length)?;
    a.max_turns.map_or(Ok(()), |n| checks::at_least_one("--max-turns", n))?;
    a.per_category.map_or(Ok(()), |n| checks::at_least_one("--per-category", n))?;
    a.spec.check_tree()?;
    let mut questions = select(read_questions(&a.bench)?, a.question_begin, a.question_end, &a.bench)?;
    if let Some(n) = a.per_category {
        questions = first_per_category(questions, n);
    }
    if let Some(n) = a.max_turns {
        questions.iter_mut().for_each(|q| q.turns.truncate(n));
    }
    let dir = super::model_dir(a.model)?;
    let model = Llama::load(&dir, backend)?;
    let tokenizer = TextTokenizer::for_model(&dir, a.template.chat_template.as_deref(), &model.config)?;
    let cfg = GenerationConfig {
        max_new_tokens: a.max_new_tokens,
        sampling: SamplingParams::with_temperature(a.temperature),
        seed: a.seed,
        stop_ids: stop_ids(&model, &tokenizer),
    };
    let decoder = match (a.spec.draft, &a.spec.draft_model) {
        (Some(kind), Some(head_dir)) => {
            let mut head = load_head_opts(kind.into(), head_dir, &model, a.spec.draft_options())?;
            let key = || a.spec.plan_key(&model.backend.name(), &dir, head_dir, &cfg, &tokenizer);
            let (tree, report) = a.spec.tree.resolve_saved(&model, head.as_mut(), &tokenizer, &cfg, key)?;
            if let Some(report) = report {
                eprint!("{report}");
            }
            Decoder::Speculative { head, tree }
        }
        _ => Decoder::Plain,
    };
    let model_name = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let model_id = a.model_id.unwrap_or_else(|| format!("{model_name}-{}", decoder.name()));
    let mut settings = format!(
        "temperature {}, max_new_tokens {}, max_length {}, seed {}, max_turns {}, {}",
        a.temperature,
        a.max_new_tokens,
        a.max_length,
        a.seed,
        a.max_turns.map_or("all".to_string(), |n| n.to_string()),
        decoder.describe()
    );
    // Said only when given, so that answers made before these options existed still resume.
    if let (Some(_), Some(template)) = (&a.template.chat_template, tokenizer.chat_template()) {
        settings.push_str(&format!(", chat template {}", template.identity()));
    }
    if let Some(system) = &a.system {
        settings.push_str(&format!(", system {system:?}"));
    }
    let mut run = EvalRun {
        model: &model,
        tokenizer: &tokenizer,
        decoder,
        cfg,
        max_length: a.max_length,
        model_id,
        settings,
        warmup: a.warmup,
        system: a.system,
    };
    let total = questions.len();
    let mut written = 0;
    run.run(&questions, &a.out, |answer| {
        written += 1;
        eprintln!("[{written}/{total}] {}", progress_line(answer));
    })?;
    eprintln!(
        "{}: {written} new answers; {} questions of the range were already answered",
        a.out.display(),
        total - written
    );
    Ok(())
}

fn progress_line(a: &Answer) -> String {
    let c = &a.choices[0];
    let tokens: usize = c.new_tokens.iter().sum();
    let secs: f64 = c.wall_time.iter().sum();
    let lengths: Vec<usize> = c.accept_lengths.as_ref().map(AcceptLengths::steps).unwrap_or_default();
    let tau = lengths.iter().sum::<usize>() as f64 / lengths.len().max(1) as f64;
    format!(
        "question {} ({}): {} turn{}, {tokens} tokens in {secs:.1} s ({:.1} tok/s), τ {tau:.2}",
        a.question_id,
        a.category,
        c.turns.len(),
        if c.turns.len() == 1 { "" } else { "s" },
        tokens as f64 / secs.max(1e-9)
    )
}
