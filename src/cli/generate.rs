use std::path::{Path, PathBuf};

use clap::{Args, ValueEnum};

use clover_engine::backend::Backend;
use clover_engine::draft::vocab::DraftVocabChoice;
use clover_engine::draft::DraftHead;
use clover_engine::draft::{load_head_opts, DraftKind, DraftOptions, DraftWeights};
use clover_engine::error::{Error, Result};
use clover_engine::model::{ChatMessage, Llama, TextTokenizer};
use clover_engine::sampling::SamplingParams;
use clover_engine::spec::auto_budget::{eagle2_tree, BudgetPlan, MAX_AUTO_BUDGET};
use clover_engine::spec::auto_plan;
use clover_engine::spec::drafting::TreeSpec;
use clover_engine::spec::engine::{generate_plain, generate_speculative, GenerationConfig, GenerationStats};
use clover_engine::spec::saved_plan::{self, PlanKey};
use clover_engine::spec::tree::{CloverTreeParams, StaticTree};

use super::checks;
use super::stream::TextStream;

#[derive(Clone, Copy, ValueEnum)]
pub enum DraftArg {
    Eagle,
    Clover2,
}

impl From<DraftArg> for DraftKind {
    fn from(d: DraftArg) -> Self {
        match d {
            DraftArg::Eagle => DraftKind::Eagle,
            DraftArg::Clover2 => DraftKind::Clover2,
        }
    }
}

/// Options shared by every command that decodes speculatively.
#[derive(Args, Clone)]
pub struct SpecArgs {
    /// Draft head kind; without it, plain decoding.
    #[arg(long, value_enum, requires = "draft_model")]
    pub draft: Option<DraftArg>,
    /// The draft head's folder (config.json + model.safetensors).
    #[arg(long, requires = "draft")]
    pub draft_model: Option<PathBuf>,
    /// The vocabulary the head drafts over: `head` (its draft_vocab.json if it has one, else
    /// the full vocabulary), `full`, or N (the N most frequent tokens of its draft_vocab.json).
    #[arg(long, default_value = "head")]
    pub draft_vocab: DraftVocabChoice,
    /// How the head keeps its matrices: `stored` (as its files have them) or `q8_0` (8-bit, about
    /// half of bf16's bytes to read per draft step on the CPU; drafts may change near ties,
    /// output stays exact). Not on the CUDA backend.
    #[arg(long, default_value = "stored")]
    pub draft_weights: DraftWeights,
    #[command(flatten)]
    pub tree: TreeArgs,
}

impl SpecArgs {
    /// With a draft head, the tree settings checked before the model loads (a bad --tree fails
    /// before seconds of loading).
    pub fn check_tree(&self) -> Result<()> {
        match self.draft {
            Some(_) => self.tree.tree_spec().map(drop),
            None => Ok(()),
        }
    }

    pub fn draft_options(&self) -> DraftOptions {
        DraftOptions { vocab: self.draft_vocab, weights: self.draft_weights }
    }

    /// What a saved `--tree-budget auto` choice for this head depends on besides the machine
    /// and the files (`PlanKey`): the head's settings, the sampling, the calibration itself.
    /// `tokenizer`'s chat template renders the calibration prompts, so it is part of the key.
    pub fn plan_key(
        &self,
        backend: &str,
        model_dir: &Path,
        head_dir: &Path,
        cfg: &GenerationConfig,
        tokenizer: &TextTokenizer,
    ) -> PlanKey {
        let template = tokenizer.chat_template().map_or("none".to_string(), |t| t.identity());
        let settings = [
            ("draft", self.draft.map_or("none", |d| DraftKind::from(d).name()).to_string()),
            ("draft options", format!("{:?}", self.draft_options())),
            ("sampling", format!("{:?}", cfg.sampling)),
            ("calibration", auto_plan::calibration_summary(cfg)),
            ("chat template", template),
        ];
        PlanKey::new(backend, model_dir, head_dir, &settings)
    }
}

/// The tree each speculative step drafts.
#[derive(Args, Clone)]
pub struct TreeArgs {
    /// mc_sim_7b_63 (static, 26 tokens), a JSON file of rank paths, clover (dynamic top-p tree)
    /// or eagle2 (dynamic, cumulative confidence) [default: mc_sim_7b_63; with --tree-budget auto,
    /// eagle2]
    #[arg(long)]
    pub tree: Option<String>,
    /// Draft nodes per step for the dynamic trees (root excluded), or `auto` (eagle2 tree): time
    /// verification on this machine, calibrate the head on a few built-in chat prompts, and take
    /// the budget with the highest expected tokens/s, or plain decoding when that is expected to
    /// be fastest (the table of that choice is printed). When sampling (T > 0) it chooses among
    /// static trees drawn by sampling instead, whose drafts are accepted more often at T > 0.
    /// [default: 25]
    // Options without clap defaults, so that one given with a tree it does not shape is noticed.
    #[arg(long)]
    pub tree_budget: Option<String>,
    /// Per-parent cumulative probability of the clover tree [default: 0.95]
    #[arg(long)]
    pub tree_top_p: Option<f32>,
    /// The clover tree drops a child whose probability is below this fraction of its best
    /// sibling's (clover2.md §11: 1/4; 0 keeps every child within top-p) [default: 0.25]
    #[arg(long)]
    pub tree_ratio: Option<f32>,
    /// With `--tree-budget auto` in generate and eval: calibrate again instead of reusing the
    /// choice saved for this machine, model, head and settings (bench always calibrates).
    #[arg(long)]
    pub recalibrate: bool,
}

const DEFAULT_TREE_BUDGET: &str = "25";
const DEFAULT_TREE_TOP_P: f32 = 0.95;
const DEFAULT_TREE_RATIO: f32 = 0.25;

impl TreeArgs {
    /// The tree named, or the default: `--tree-budget auto` plans with eagle2.
    pub fn tree_name(&self) -> &str {
        self.tree.as_deref().unwrap_or(if self.budget_text() == "auto" { "eagle2" } else { "mc_sim_7b_63" })
    }

    fn budget_text(&self) -> &str {
        self.tree_budget.as_deref().unwrap_or(DEFAULT_TREE_BUDGET)
    }

    fn top_p(&self) -> f32 {
        self.tree_top_p.unwrap_or(DEFAULT_TREE_TOP_P)
    }

    fn ratio(&self) -> f32 {
        self.tree_ratio.unwrap_or(DEFAULT_TREE_RATIO)
    }

    /// The budget given, or None for `auto`.
    fn budget(&self) -> Result<Option<usize>> {
        let text = self.budget_text();
        if text == "auto" {
            return Ok(None);
        }
        match text.parse::<usize>() {
            Ok(n) if n > 0 => Ok(Some(n)),
            _ => Err(Error::input(format!("--tree-budget {text}: expected a positive number or auto"))),
        }
    }

    /// Tree options given that the chosen tree does not read: a static tree has its own size,
    /// and only the clover tree has a top-p and a ratio. Said once, before decoding, rather than
    /// silently ignored.
    fn note_ignored_options(&self) {
        let name = self.tree_name();
        let is_static = name == "mc_sim_7b_63" || name.ends_with(".json");
        let budget_ignored = is_static && self.tree_budget.as_deref().is_some_and(|b| b != "auto");
        let mut ignored = Vec::new();
        if budget_ignored {
            ignored.push("--tree-budget");
        }
        if name != "clover" {
            ignored.extend(self.tree_top_p.map(|_| "--tree-top-p"));
            ignored.extend(self.tree_ratio.map(|_| "--tree-ratio"));
        }
        if !ignored.is_empty() {
            eprintln!(
                "note: {} ignored: --tree {name} does not use {} (--tree-budget sizes the clover and eagle2 \
                 trees; --tree-top-p and --tree-ratio shape the clover tree)",
                ignored.join(", "),
                if ignored.len() == 1 { "it" } else { "them" }
            );
        }
    }

    /// The tree; with `--tree-budget auto`, the EAGLE-2 tree at the largest budget auto considers
    /// (`resolve` then picks the budget).
    pub fn tree_spec(&self) -> Result<TreeSpec> {
        let budget = self.budget()?;
        // Checked here, before anything is generated (the clover tree itself checks them only when
        // it first grows); the other trees do not use them, but a value out of range is a mistake
        // whichever tree it comes with.
        checks::top_p("--tree-top-p", self.top_p())?;
        checks::require((0.0..=1.0).contains(&self.ratio()), "--tree-ratio", self.ratio(), "a value in [0, 1]")?;
        if budget.is_none() && self.tree_name() != "eagle2" {
            return Err(Error::input(format!(
                "--tree-budget auto plans with --tree eagle2 (greedy: the EAGLE-2 tree's budget; when \
                 sampling: a static tree drawn by sampling); --tree {} is not eagle2",
                self.tree_name()
            )));
        }
        let budget = budget.unwrap_or(MAX_AUTO_BUDGET);
        match self.tree_name() {
            "mc_sim_7b_63" => Ok(TreeSpec::Static(StaticTree::mc_sim_7b_63())),
            "clover" => Ok(TreeSpec::Clover(CloverTreeParams {
                budget,
                top_p: self.top_p(),
                ratio: self.ratio(),
                ..CloverTreeParams::default()
            })),
            "eagle2" => Ok(TreeSpec::Eagle2(eagle2_tree(budget))),
            file if file.ends_with(".json") => StaticTree::from_json_file(file, 10)
                .map(TreeSpec::Static)
                .map_err(|e| Error::input(format!("--tree {file}: {e}"))),
            other => {
                Err(Error::input(format!("--tree {other}: expected mc_sim_7b_63, clover, eagle2 or a .json file")))
            }
        }
    }

    /// As `resolve`, but with `--tree-budget auto` a choice saved under `key()` is reused (unless
    /// `--recalibrate`) and a new one is saved: calibrating costs more than many generations.
    /// Returns the tree and what to tell the user about the choice.
    pub fn resolve_saved<B: Backend>(
        &self,
        model: &Llama<B>,
        head: &mut dyn DraftHead<B>,
        tokenizer: &TextTokenizer,
        cfg: &GenerationConfig,
        key: impl FnOnce() -> PlanKey,
    ) -> Result<(TreeSpec, Option<String>)> {
        self.note_ignored_options();
        if self.budget()?.is_some() {
            if self.recalibrate {
                eprintln!("note: --recalibrate applies to --tree-budget auto only; ignored");
            }
            return Ok((self.tree_spec()?, None));
        }
        self.tree_spec()?;
        let dir = saved_plan::default_dir();
        let (tree, report) =
            auto_plan::saved_or_planned(&dir, &key(), self.recalibrate, model, head, tokenizer, cfg, &mut |notice| {
                eprintln!("{notice}")
            })?;
        Ok((tree, Some(report)))
    }

    /// The tree to decode with: `tree_spec`, or with `--tree-budget auto` the tree planned for this
    /// head on this machine (greedy: the EAGLE-2 tree of the chosen budget; sampling: a static tree
    /// drawn by sampling), and that plan.
    pub fn resolve<B: Backend>(
        &self,
        model: &Llama<B>,
        head: &mut dyn DraftHead<B>,
        tokenizer: Option<&TextTokenizer>,
        cfg: &GenerationConfig,
    ) -> Result<(TreeSpec, Option<BudgetPlan>)> {
        let tree = self.tree_spec()?;
        self.note_ignored_options();
        if self.budget()?.is_some() {
            return Ok((tree, None));
        }
        let Some(tokenizer) = tokenizer else {
            return Err(Error::input("--tree-budget auto calibrates on chat prompts and needs a tokenizer (--model)"));
        };
        let plan = auto_plan::plan_on_chats(model, head, tokenizer, cfg, &mut |notice| eprintln!("{notice}"))?;
        Ok((plan.tree()?, Some(plan)))
    }
}

#[derive(Args)]
#[command(group(clap::ArgGroup::new("input").required(true).args(["prompt", "chat"])))]
pub struct GenerateArgs {
    /// HF model folder (default: the model fetched by tools/fetch-default-model.sh).
    #[arg(long)]
    model: Option<PathBuf>,
    /// Raw prompt text, continued as is.
    #[arg(long, conflicts_with = "chat")]
    prompt: Option<String>,
    /// A user message, wrapped in the model's chat template.
    #[arg(long)]
    chat: Option<String>,
    #[command(flatten)]
    template: super::ChatTemplateArg,
    /// System message for --chat (default: the template's own).
    // `requires = "chat"` is not enforced when --prompt satisfies the input group: a conflict is.
    #[arg(long, requires = "chat", conflicts_with = "prompt")]
    system: Option<String>,
    #[arg(long, default_value_t = 256)]
    max_new_tokens: usize,
    /// 0 = greedy.
    #[arg(long, default_value_t = 0.0)]
    temperature: f32,
    /// Nucleus sampling threshold (1 = off).
    #[arg(long, default_value_t = 1.0)]
    top_p: f32,
    /// Keep only the k most likely tokens (0 = off).
    #[arg(long, default_value_t = 0)]
    top_k: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[command(flatten)]
    spec: SpecArgs,
}

pub fn run<B: Backend + 'static>(a: GenerateArgs, backend: B) -> Result<()> {
    checks::temperature(a.temperature)?;
    checks::top_p("--top-p", a.top_p)?;
    checks::at_least_one("--max-new-tokens", a.max_new_tokens)?;
    a.spec.check_tree()?;
    let dir = super::model_dir(a.model)?;
    let model = Llama::load(&dir, backend)?;
    let tokenizer = TextTokenizer::for_model(&dir, a.template.chat_template.as_deref(), &model.config)?;
    if a.prompt.is_some() && a.template.chat_template.is_some() {
        eprintln!("note: --chat-template ignored: --prompt is raw text, not a chat (use --chat)");
    }
    let prompt = prompt_ids(&tokenizer, a.prompt.as_deref(), a.chat.as_deref(), a.system.as_deref())?;
    let cfg = GenerationConfig {
        max_new_tokens: a.max_new_tokens,
        sampling: SamplingParams { temperature: a.temperature, top_k: a.top_k, top_p: a.top_p },
        seed: a.seed,
        stop_ids: stop_ids(&model, &tokenizer),
    };
    let mut stream = TextStream::new(&tokenizer, &cfg.stop_ids);
    match (a.spec.draft, &a.spec.draft_model) {
        (Some(kind), Some(head_dir)) => {
            let mut head = load_head_opts(kind.into(), head_dir, &model, a.spec.draft_options())?;
            let key = || a.spec.plan_key(&model.backend.name(), &dir, head_dir, &cfg, &tokenizer);
            let (tree, report) = a.spec.tree.resolve_saved(&model, head.as_mut(), &tokenizer, &cfg, key)?;
            if let Some(report) = report {
                eprint!("{report}");
            }
            if a.spec.tree.tree_name() == "mc_sim_7b_63" && model.backend.name().starts_with("cpu") {
                // The papers' default tree is sized for a GPU, where verifying 26 tokens costs
                // about one step; measured on this project's CPUs it runs at 0.4–0.6× plain decoding.
                eprintln!(
                    "note: on a CPU verifying the 26-token static tree costs several plain decoding steps; \
                     --tree eagle2 --tree-budget auto picks the tree that pays on this machine \
                     (README, \"Where speculation wins\")"
                );
            }
            let (out, stats) =
                generate_speculative(&model, head.as_mut(), &tree, &prompt, &cfg, |ids| stream.push(ids))?;
            println!();
            print_speed(&stats.base);
            note_context_end(&out, &cfg, &model, prompt.len());
            let per_depth: Vec<String> = stats.acceptance_per_depth().iter().map(|r| format!("{r:.2}")).collect();
            let steps = stats.base.steps.max(1) as f64;
            eprintln!(
                "steps: {}  tau: {:.2} tokens/step  acceptance per depth: [{}]  lm_head rows/step: {:.2} ({:.2} off the main chain)",
                stats.base.steps,
                stats.tau(),
                per_depth.join(", "),
                stats.logit_rows as f64 / steps,
                stats.off_chain_rows as f64 / steps,
            );
        }
        _ => {
            let (out, stats) = generate_plain(&model, &prompt, &cfg, |ids| stream.push(ids))?;
            println!();
            print_speed(&stats);
            note_context_end(&out, &cfg, &model, prompt.len());
        }
    }
    Ok(())
}

fn print_speed(stats: &GenerationStats) {
    eprintln!(
        "prompt tokens: {}  new tokens: {}  prefill: {:.1} tok/s  decode: {:.1} tok/s",
        stats.prompt_tokens,
        stats.new_tokens,
        stats.prefill_tokens_per_sec(),
        stats.decode_tokens_per_sec()
    );
}

/// Says so when the output stopped short of `--max-new-tokens` without a stop token: the model's
/// context (max_position_embeddings) was full.
fn note_context_end<B: clover_engine::backend::Backend>(
    out: &[u32],
    cfg: &GenerationConfig,
    model: &Llama<B>,
    prompt: usize,
) {
    let stopped = out.last().is_some_and(|t| cfg.stop_ids.contains(t));
    if out.len() < cfg.max_new_tokens && !stopped {
        eprintln!(
            "stopped after {} new tokens: the model's context of {} positions is full (the prompt has {prompt})",
            out.len(),
            model.config.max_position_embeddings
        );
    }
}

/// The config's EOS ids and the tokenizer's EOS token.
pub fn stop_ids<B: clover_engine::backend::Backend>(model: &Llama<B>, tok: &TextTokenizer) -> Vec<u32> {
    let mut ids = model.config.eos_token_ids.clone();
    ids.extend(tok.eos_id());
    ids.sort_unstable();
    ids.dedup();
    ids
}

pub fn prompt_ids(
    tok: &TextTokenizer,
    prompt: Option<&str>,
    chat: Option<&str>,
    system: Option<&str>,
) -> Result<Vec<u32>> {
    match (prompt, chat) {
        (Some(p), _) => tok.encode(p, true),
        (None, Some(c)) => {
            let mut messages = Vec::new();
            if let Some(s) = system {
                messages.push(ChatMessage::new("system", s));
            }
            messages.push(ChatMessage::new("user", c));
            tok.encode(&tok.render_chat(&messages, true)?, false)
        }
        (None, None) => Err(Error::input("give --prompt or --chat")),
    }
}
