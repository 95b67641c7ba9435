use std::path::PathBuf;

use clap::Args;
use serde::Serialize;

use clover_engine::backend::Backend;
use clover_engine::draft::init::init_head;
use clover_engine::draft::vocab::DraftVocabChoice;
use clover_engine::draft::{load_head_opts, DraftKind, DraftOptions, DraftWeights};
use clover_engine::error::{Error, Result};
use clover_engine::eval::bench::{self, Method, MethodReport};
use clover_engine::eval::decoder::Decoder;
use clover_engine::eval::questions::{read_questions, spec_bench_questions, SPEC_BENCH_NAME};
use clover_engine::fsutil::write_atomically;
use clover_engine::model::random::write_random_model_bf16_sharded;
use clover_engine::model::{ChatMessage, Llama, ModelConfig, TextTokenizer};
use clover_engine::rng::Rng;
use clover_engine::sampling::SamplingParams;
use clover_engine::spec::auto_budget::{verify_latency_ms, BudgetPlan, TreeFamily};
use clover_engine::spec::engine::GenerationConfig;

use super::checks;
use super::generate::{stop_ids, TreeArgs};

#[derive(Args)]
pub struct BenchArgs {
    /// HF model folder (default: the model fetched by tools/fetch-default-model.sh); its
    /// tokenizer makes the prompts also with --random-weights.
    #[arg(long)]
    model: Option<PathBuf>,
    /// Draft heads as KIND:DIR, comma-separated (clover2:DIR,eagle:DIR); KIND:init is an
    /// untrained head made for the model. Empty: plain decoding only. Each may add its own
    /// settings as `:key=value` (tree, budget, top_p, ratio, vocab, weights), to compare them in one
    /// run: `eagle:DIR:tree=eagle2:budget=4:vocab=4096:weights=q8_0`.
    #[arg(long, default_value = "")]
    drafts: String,
    /// The vocabulary heads draft over: head, full or N (see `generate --help`).
    #[arg(long, default_value = "head")]
    draft_vocab: DraftVocabChoice,
    /// How heads keep their matrices: stored or q8_0 (see `generate --help`).
    #[arg(long, default_value = "stored")]
    draft_weights: DraftWeights,
    /// Questions (JSONL, first turn used) [default: the Spec-Bench questions built into the
    /// binary, data/spec_bench/question.jsonl].
    #[arg(long)]
    prompts: Option<PathBuf>,
    /// How many questions, from the start of the file.
    #[arg(long, default_value_t = 8)]
    num_prompts: usize,
    /// Tokens generated per prompt and method (the steps plain decoding takes).
    #[arg(long, default_value_t = 128)]
    steps: usize,
    #[command(flatten)]
    tree: TreeArgs,
    #[command(flatten)]
    template: super::ChatTemplateArg,
    /// 0 = greedy (then every head's output is checked against plain decoding).
    #[arg(long, default_value_t = 0.0)]
    temperature: f32,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Also write the report as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Measure a model with random weights of this config.json (written to a temporary folder as
    /// bf16, one shard per layer: 2 bytes a parameter) instead of --model's weights.
    #[arg(long)]
    random_weights: Option<PathBuf>,
    /// Also time tree verification alone for 1..=N nodes (a chain after the first prompt, median
    /// of 3 interleaved runs), against one node: how verify cost grows with the tree on this machine.
    #[arg(long)]
    verify_latency: Option<usize>,
}

/// The report as written by --json: the run's settings, then one entry per method.
#[derive(Serialize)]
struct BenchJson<'a> {
    model: &'a str,
    /// The questions file, or a note that the prompts were random token ids.
    prompts_file: &'a str,
    /// The backend the model ran on (`cpu (N threads, matmul avx512, 1–3 rows on the tiles)`,
    /// `cuda:N`).
    device: String,
    prompts: usize,
    max_new_tokens: usize,
    tree: &'a str,
    temperature: f32,
    methods: &'a [MethodReport],
    /// `--tree-budget auto`: each such method's plan (verify latencies, τ by budget, the choice).
    budget_plans: Vec<(String, BudgetPlan)>,
    /// `--verify-latency N`: verify time in ms of 1..=N nodes.
    verify_ms_by_nodes: Vec<f64>,
}

/// A folder removed when the run ends, for the random model and untrained heads.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Prompt length when bench makes random prompts (random weights and no tokenizer).
const SYNTHETIC_PROMPT_TOKENS: usize = 64;

pub fn run<B: Backend + 'static>(a: BenchArgs, backend: B) -> Result<()> {
    checks::temperature(a.temperature)?;
    checks::at_least_one("--num-prompts", a.num_prompts)?;
    checks::at_least_one("--steps", a.steps)?;
    if let Some(n) = a.verify_latency {
        checks::at_least_one("--verify-latency", n)?;
    }
    if let Some(path) = a.json.as_ref().filter(|p| p.is_dir()) {
        return Err(Error::input(format!("--json {}: a folder; give the file to write", path.display())));
    }
    if a.tree.recalibrate {
        eprintln!("note: bench always calibrates --tree-budget auto afresh; --recalibrate is for generate and eval");
    }
    let drafts = parse_drafts(&a.drafts, &a.tree)?;
    // A bad --tree fails before the model loads.
    a.tree.tree_spec()?;
    // The tokenizer of --model (or the default model) makes the prompts. Random weights need no
    // model folder: without one, the prompts are random token ids (a GPU machine that has only
    // the binary can still measure per-step latency).
    let tokenizer_dir = match (&a.random_weights, super::model_dir(a.model.clone())) {
        (_, Ok(dir)) => Some(dir),
        (Some(_), Err(_)) if a.model.is_none() => None,
        (_, Err(e)) => return Err(e),
    };
    let template = a.template.chat_template.as_deref();
    let tokenizer = tokenizer_dir.as_deref().map(|dir| TextTokenizer::load_with_template(dir, template)).transpose()?;
    let tmp = TempDir(std::env::temp_dir().join(format!("clover-engine-bench-{}", std::process::id())));
    let base_dir = match (&a.random_weights, &tokenizer_dir) {
        (Some(config_path), _) => {
            let text = std::fs::read_to_string(config_path).map_err(|e| Error::io(config_path, e))?;
            let config: serde_json::Value =
                serde_json::from_str(&text).map_err(|e| Error::format(config_path, "(json)", e.to_string()))?;
            let shape = ModelConfig::from_json(&config, config_path)?;
            eprintln!(
                "writing a random-weight model of {} ({:.1} GB of bf16 weights) ...",
                config_path.display(),
                2.0 * parameter_count(&shape) as f64 / 1e9
            );
            write_random_model_bf16_sharded(&tmp.0.join("base"), &config, a.seed)?;
            tmp.0.join("base")
        }
        (None, Some(dir)) => dir.clone(),
        (None, None) => unreachable!("checked above"),
    };
    let model = Llama::load(&base_dir, backend)?;
    let vocab = model.config.vocab_size as u32;
    let (prompts, prompts_from) = match &tokenizer {
        Some(tokenizer) => {
            let (questions, prompts_path) = match &a.prompts {
                Some(path) => (read_questions(path)?, path.display().to_string()),
                None => (spec_bench_questions()?, SPEC_BENCH_NAME.to_string()),
            };
            let prompts = questions
                .iter()
                .take(a.num_prompts)
                .map(|q| {
                    let text = tokenizer.render_chat(&[ChatMessage::new("user", &q.turns[0])], true)?;
                    // A random model's vocabulary need not be the tokenizer's; only the lengths matter.
                    Ok(tokenizer.encode(&text, false)?.into_iter().map(|id| id % vocab).collect())
                })
                .collect::<Result<Vec<Vec<u32>>>>()?;
            (prompts, prompts_path)
        }
        None => {
            let mut rng = Rng::new(a.seed);
            let prompts = (0..a.num_prompts)
                .map(|_| (0..SYNTHETIC_PROMPT_TOKENS).map(|_| (rng.next_u64() % vocab as u64) as u32).collect())
                .collect();
            (prompts, format!("random token ids ({SYNTHETIC_PROMPT_TOKENS} each; no tokenizer)"))
        }
    };
    if let (Some(n), Some(first)) = (a.verify_latency, prompts.first()) {
        // Checked before the methods run: the verification timing comes after them.
        let context = model.config.max_position_embeddings;
        if first.len() + n > context {
            return Err(Error::input(format!(
                "--verify-latency {n}: the first prompt's {} tokens and {n} nodes exceed the model's context of {context}",
                first.len()
            )));
        }
    }

    let cfg = GenerationConfig {
        max_new_tokens: a.steps,
        sampling: SamplingParams::with_temperature(a.temperature),
        seed: a.seed,
        stop_ids: match (&a.random_weights, &tokenizer) {
            (None, Some(tokenizer)) => stop_ids(&model, tokenizer),
            _ => Vec::new(),
        },
    };
    let mut methods = vec![Method { label: "plain".to_string(), decoder: Decoder::Plain }];
    let mut plans = Vec::new();
    for (i, d) in drafts.iter().enumerate() {
        let head_dir = match &d.dir {
            Some(dir) => dir.clone(),
            None => {
                let dir = tmp.0.join(format!("head-{i}"));
                init_head(d.kind, &base_dir, &dir, a.seed)?;
                dir
            }
        };
        let same_kind = drafts.iter().filter(|o| o.kind == d.kind).count();
        // An untrained head (`KIND:init`) is named so, in the table and the JSON alike.
        let kind = if d.dir.is_some() { d.kind.name().to_string() } else { format!("{}(init)", d.kind.name()) };
        let label = match (&d.settings, same_kind) {
            (Some(settings), _) => format!("{kind}[{settings}]"),
            (None, 1) => kind,
            (None, _) => format!("{kind}-{}", i + 1),
        };
        let tree_args = d.tree.as_ref().unwrap_or(&a.tree);
        let opts =
            DraftOptions { vocab: d.vocab.unwrap_or(a.draft_vocab), weights: d.weights.unwrap_or(a.draft_weights) };
        let mut head = load_head_opts(d.kind, &head_dir, &model, opts)?;
        let (tree, plan) = tree_args.resolve(&model, head.as_mut(), tokenizer.as_ref(), &cfg)?;
        let label = match &plan {
            Some(plan) => {
                println!("{label}: {}", plan.table());
                match (plan.budget, &plan.calibration.family) {
                    (0, _) => format!("{label}→plain"),
                    (budget, TreeFamily::Eagle2) => format!("{label}→{budget}"),
                    (budget, TreeFamily::Sampled { .. }) => format!("{label}→{budget} sampled"),
                }
            }
            None => label,
        };
        plans.push((label.clone(), plan));
        methods.push(Method { label, decoder: Decoder::Speculative { head, tree } });
    }
    let n = prompts.len();
    let report = bench::run(&model, &mut methods, &prompts, &cfg, |i| eprintln!("[{}/{n}] prompt done", i + 1))?;
    let weights = match &a.random_weights {
        Some(c) => format!("random weights of {}", c.display()),
        None => base_dir.display().to_string(),
    };
    println!(
        "model: {weights}  on {}  prompts: {n} from {prompts_from}  tokens per prompt: ≤ {}  default tree: {}  temperature: {}",
        model.backend.name(),
        a.steps,
        a.tree.tree_name(),
        a.temperature
    );
    print!("{}", report.table());
    let verify_latency = match a.verify_latency {
        Some(max_nodes) => {
            let ms = verify_latency_ms(&model, &prompts[0], max_nodes, 3)?;
            println!("verify latency by tree size (median of 3, after a {}-token prompt):", prompts[0].len());
            println!("{:>6} {:>10} {:>8}", "nodes", "verify ms", "× 1 node");
            for (i, t) in ms.iter().enumerate() {
                println!("{:>6} {:>10.2} {:>8.2}", i + 1, t, t / ms[0]);
            }
            ms
        }
        None => Vec::new(),
    };
    if let Some(path) = &a.json {
        let json = BenchJson {
            model: &weights,
            prompts_file: &prompts_from,
            device: model.backend.name(),
            prompts: n,
            max_new_tokens: a.steps,
            tree: a.tree.tree_name(),
            temperature: a.temperature,
            methods: &report.methods,
            budget_plans: plans.into_iter().filter_map(|(label, plan)| Some((label, plan?))).collect(),
            verify_ms_by_nodes: verify_latency,
        };
        let text = serde_json::to_string_pretty(&json).map_err(|e| Error::input(format!("{}: {e}", path.display())))?;
        write_atomically(path, text.as_bytes())?;
    }
    Ok(())
}

/// Parameters of a model of this shape (embedding, layers, final norm, and an untied lm_head).
fn parameter_count(c: &ModelConfig) -> u64 {
    let (h, q, kv, i) = (c.hidden_size as u64, c.q_dim() as u64, c.kv_dim() as u64, c.intermediate_size as u64);
    let layer = h * q + 2 * h * kv + q * h + 3 * h * i + 2 * h;
    let lm_head = if c.tie_word_embeddings { 0 } else { c.vocab_size as u64 * h };
    c.vocab_size as u64 * h + c.num_layers as u64 * layer + h + lm_head
}

/// One `--drafts` item: a head, and the settings it overrides.
struct DraftMethod {
    kind: DraftKind,
    /// None: an untrained head made for the model.
    dir: Option<PathBuf>,
    tree: Option<TreeArgs>,
    vocab: Option<DraftVocabChoice>,
    weights: Option<DraftWeights>,
    /// The overrides as written, for the method's label.
    settings: Option<String>,
}

/// `KIND:DIR[:key=value…]` or `KIND:init[:key=value…]`, comma-separated.
fn parse_drafts(spec: &str, tree: &TreeArgs) -> Result<Vec<DraftMethod>> {
    spec.split(',')
        .filter(|s| !s.trim().is_empty())
        .map(|item| {
            let bad = |why: String| Error::input(format!("--drafts {item}: {why}"));
            let mut parts = item.trim().split(':');
            let kind = match parts.next().unwrap_or_default() {
                "eagle" => DraftKind::Eagle,
                "clover2" => DraftKind::Clover2,
                other => return Err(bad(format!("unknown kind `{other}` (clover2 or eagle)"))),
            };
            let dir = parts.next().ok_or_else(|| bad("expected KIND:DIR, e.g. eagle:heads/eagle".into()))?;
            let mut method = DraftMethod {
                kind,
                dir: (dir != "init").then(|| PathBuf::from(dir)),
                tree: None,
                vocab: None,
                weights: None,
                settings: None,
            };
            let settings: Vec<&str> = parts.collect();
            for setting in &settings {
                let (key, value) =
                    setting.split_once('=').ok_or_else(|| bad(format!("`{setting}` is not key=value")))?;
                let t = method.tree.get_or_insert_with(|| tree.clone());
                match key {
                    "tree" => t.tree = Some(value.to_string()),
                    "budget" => t.tree_budget = Some(value.to_string()),
                    "top_p" => t.tree_top_p = Some(value.parse().map_err(|_| bad(format!("top_p `{value}`")))?),
                    "ratio" => t.tree_ratio = Some(value.parse().map_err(|_| bad(format!("ratio `{value}`")))?),
                    "vocab" => method.vocab = Some(value.parse().map_err(bad)?),
                    "weights" => method.weights = Some(value.parse().map_err(bad)?),
                    other => {
                        return Err(bad(format!(
                            "unknown setting `{other}` (tree, budget, top_p, ratio, vocab, weights)"
                        )))
                    }
                }
            }
            if !settings.is_empty() {
                method.settings = Some(settings.join(","));
            }
            Ok(method)
        })
        .collect()
}
