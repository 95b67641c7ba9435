use std::path::PathBuf;

use clap::Args;

use clover_engine::backend::cpu::CpuBackend;
use clover_engine::error::{Error, Result};
use clover_engine::model::{ChatMessage, Llama, TextTokenizer};
use clover_engine::sampling::SamplingParams;
use clover_engine::spec::engine::{generate_plain, GenerationConfig};

use super::stream::TextStream;

#[derive(Args)]
pub struct GenerateArgs {
    /// HF model folder (default: the model fetched by tools/fetch-default-model.sh).
    #[arg(long)]
    model: Option<PathBuf>,
    /// Raw prompt text, continued as is.
    #[arg(long, conflicts_with = "chat", required_unless_present = "chat")]
    prompt: Option<String>,
    /// A user message, wrapped in the model's chat template.
    #[arg(long)]
    chat: Option<String>,
    /// System message for --chat (default: the template's own).
    #[arg(long, requires = "chat")]
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
}

pub fn run(a: GenerateArgs) -> Result<()> {
    if a.temperature < 0.0 || !(a.top_p > 0.0 && a.top_p <= 1.0) {
        return Err(Error::input("--temperature must be ≥ 0 and --top-p in (0, 1]"));
    }
    let dir = super::model_dir(a.model)?;
    let model = Llama::load(&dir, CpuBackend)?;
    let tokenizer = TextTokenizer::load(&dir)?;
    let prompt = prompt_ids(&tokenizer, a.prompt.as_deref(), a.chat.as_deref(), a.system.as_deref())?;
    let mut stop_ids = model.config.eos_token_ids.clone();
    stop_ids.extend(tokenizer.eos_id());
    let cfg = GenerationConfig {
        max_new_tokens: a.max_new_tokens,
        sampling: SamplingParams { temperature: a.temperature, top_k: a.top_k, top_p: a.top_p },
        seed: a.seed,
        stop_ids,
    };
    let mut stream = TextStream::new(&tokenizer);
    let (_, stats) = generate_plain(&model, &prompt, &cfg, |ids| stream.push(ids))?;
    println!();
    eprintln!(
        "prompt tokens: {}  new tokens: {}  prefill: {:.1} tok/s  decode: {:.1} tok/s",
        stats.prompt_tokens,
        stats.new_tokens,
        stats.prefill_tokens_per_sec(),
        stats.decode_tokens_per_sec()
    );
    Ok(())
}

pub fn prompt_ids(tok: &TextTokenizer, prompt: Option<&str>, chat: Option<&str>, system: Option<&str>) -> Result<Vec<u32>> {
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
