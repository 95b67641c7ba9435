use std::path::PathBuf;

use clap::Args;

use clover_engine::backend::Backend;
use clover_engine::error::{Error, Result};
use clover_engine::eval::score::{log_softmax_at, write_logits};
use clover_engine::model::{ChatMessage, Llama, LogitRows, TextTokenizer};

#[derive(Args)]
pub struct ScoreArgs {
    /// HF model folder (default: the model fetched by tools/fetch-default-model.sh).
    #[arg(long)]
    model: Option<PathBuf>,
    /// The text to score (UTF-8).
    #[arg(long)]
    text_file: PathBuf,
    /// Score the text as one user turn in the model's chat template.
    #[arg(long)]
    chat: bool,
    #[command(flatten)]
    template: super::ChatTemplateArg,
    /// Write `logits` (f32 [T, V]; row t = distribution of token t+1) and `token_ids` ([T]).
    #[arg(long)]
    logits_out: Option<PathBuf>,
}

pub fn run<B: Backend + 'static>(a: ScoreArgs, backend: B) -> Result<()> {
    let dir = super::model_dir(a.model)?;
    let text = std::fs::read_to_string(&a.text_file).map_err(|e| Error::io(&a.text_file, e))?;
    let model = Llama::load(&dir, backend)?;
    let tokenizer = TextTokenizer::for_model(&dir, a.template.chat_template.as_deref(), &model.config)?;
    if !a.chat && a.template.chat_template.is_some() {
        eprintln!("note: --chat-template ignored: without --chat the text is scored as it is");
    }
    let ids = if a.chat {
        tokenizer.encode(&tokenizer.render_chat(&[ChatMessage::new("user", &text)], false)?, false)?
    } else {
        tokenizer.encode(&text, true)?
    };
    if ids.len() < 2 {
        return Err(Error::input(format!("{}: the text has fewer than 2 tokens", a.text_file.display())));
    }
    if ids.len() > model.config.max_position_embeddings {
        return Err(Error::input(format!(
            "{}: {} tokens exceed the model's context of {}",
            a.text_file.display(),
            ids.len(),
            model.config.max_position_embeddings
        )));
    }
    let mut cache = model.new_cache(ids.len());
    let out = model.prefill(&mut cache, &ids, LogitRows::All)?;
    let vocab = model.config.vocab_size;
    let nll: f64 =
        (0..ids.len() - 1).map(|t| -log_softmax_at(&out.logits[t * vocab..(t + 1) * vocab], ids[t + 1] as usize)).sum();
    let mean = nll / (ids.len() - 1) as f64;
    println!(
        "tokens: {}  mean NLL: {:.4} nats  perplexity: {:.3}  ({})",
        ids.len(),
        mean,
        mean.exp(),
        model.backend.name()
    );
    if let Some(path) = a.logits_out {
        write_logits(&path, &out.logits, vocab, &ids)?;
        println!("wrote {}", path.display());
    }
    Ok(())
}
