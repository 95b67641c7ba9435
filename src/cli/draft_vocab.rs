use std::path::PathBuf;

use clap::Args;

use clover_engine::draft::config::{declared_kind, read_json};
use clover_engine::draft::vocab::DRAFT_VOCAB_FILE;
use clover_engine::error::{Error, Result};
use clover_engine::model::config::ModelConfig;
use clover_engine::train::draft_vocab::build_draft_vocab;

#[derive(Args)]
pub struct DraftVocabArgs {
    /// gen-data output to count assistant tokens in (its training split); several (repeated, or
    /// separated by commas) are counted together, as distill reads them.
    #[arg(long, required = true, value_delimiter = ',')]
    data: Vec<PathBuf>,
    /// A head folder: its draft_vocab.json is written (or replaced) there.
    #[arg(long)]
    head: PathBuf,
    /// Tokens to keep, the most frequent first.
    #[arg(long, default_value_t = 8192)]
    size: usize,
}

pub fn run(a: DraftVocabArgs) -> Result<()> {
    let config_path = a.head.join("config.json");
    let config = read_json(&config_path)?;
    if declared_kind(&config).is_none() {
        return Err(Error::format(&config_path, "draft.kind", "not a draft head's config (no draft.kind)"));
    }
    // A head's config is its base model's with a draft block: read (and bound) it the same way.
    let vocab_size = ModelConfig::from_json(&config, &config_path)?.vocab_size;
    if a.size == 0 {
        return Err(Error::input("--size must be at least 1"));
    }
    let vocab = build_draft_vocab(&a.data, vocab_size, a.size)?;
    vocab.save(&a.head)?;
    let pct = |k: &str| 100.0 * vocab.meta[k].as_f64().unwrap_or(0.0);
    println!(
        "wrote {} ({} of {vocab_size} tokens): they cover {:.2}% of the {} training and {:.2}% of the {} held-out assistant tokens",
        a.head.join(DRAFT_VOCAB_FILE).display(),
        vocab.ids.len(),
        pct("train_coverage"),
        vocab.meta["train_assistant_tokens"],
        pct("heldout_coverage"),
        vocab.meta["heldout_assistant_tokens"],
    );
    let distinct = vocab.meta["train_distinct_tokens"].as_u64().unwrap_or(0) as usize;
    if distinct < vocab.ids.len() {
        println!(
            "note: only {distinct} distinct tokens occur in the training split; the other {} of the list are \
             tokens it never used, lowest ids first (more gen-data, or a smaller --size, makes a better list)",
            vocab.ids.len() - distinct
        );
    }
    Ok(())
}
