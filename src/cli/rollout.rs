use std::path::PathBuf;

use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};

use clover_engine::backend::Backend;
use clover_engine::draft::vocab::DraftVocabChoice;
use clover_engine::draft::{load_head_opts, DraftKind, DraftOptions};
use clover_engine::error::{Error, Result};
use clover_engine::eval::rollout::{rollout_record, RolloutCounts, ROLLOUT_DEPTH};
use clover_engine::fsutil::write_atomically;
use clover_engine::model::Llama;
use clover_engine::train::align::truncate;
use clover_engine::train::metrics::percents;
use clover_engine::train::shards::ShardReader;

use super::checks::at_least_one;
use super::generate::DraftArg;

#[derive(Args)]
pub struct RolloutArgs {
    /// Base model folder (default: the model fetched by tools/fetch-default-model.sh).
    #[arg(long)]
    model: Option<PathBuf>,
    /// Draft head kind.
    #[arg(long, value_enum)]
    draft: DraftArg,
    /// The draft head's folder.
    #[arg(long)]
    draft_model: PathBuf,
    /// The vocabulary the head drafts over: `head` (its draft_vocab.json if it has one), `full`,
    /// or N (the N most frequent tokens of its draft_vocab.json).
    #[arg(long, default_value = "head")]
    draft_vocab: DraftVocabChoice,
    /// gen-data folders of evaluation conversations (repeated, or separated by commas), e.g. the
    /// base model's own answers to benchmark questions (tools/answers-to-sharegpt.py, gen-data).
    /// Their stored features feed the head, as in distill's held-out evaluation.
    #[arg(long, required = true, value_delimiter = ',')]
    data: Vec<PathBuf>,
    /// Conversations are taken in order until this many tokens (at least one; as distill's
    /// --eval-tokens, those without an assistant token within --max-len are skipped).
    #[arg(long, default_value_t = 20000)]
    tokens: usize,
    /// Conversations are cut to this many tokens (as distill's --max-len).
    #[arg(long, default_value_t = 2048)]
    max_len: usize,
    /// Also write the figures to this JSON file.
    #[arg(long)]
    json: Option<PathBuf>,
}

pub fn run<B: Backend + 'static>(a: RolloutArgs, backend: B) -> Result<()> {
    at_least_one("--tokens", a.tokens)?;
    at_least_one("--max-len", a.max_len)?;
    let model_dir = super::model_dir(a.model)?;
    let reader = ShardReader::open_all(&a.data)?;
    let model = Llama::load(&model_dir, backend)?;
    reader.check_model(&model_dir, &model.config)?;
    let kind: DraftKind = a.draft.into();
    let options = DraftOptions { vocab: a.draft_vocab, ..Default::default() };
    let mut head = load_head_opts(kind, &a.draft_model, &model, options)?;

    let chosen = reader.evaluation_set(&(0..reader.len()).collect::<Vec<_>>(), a.max_len, a.tokens);
    let tokens: usize = chosen.iter().map(|&i| reader.tokens(i).min(a.max_len)).sum();
    let bar = ProgressBar::new(tokens as u64);
    bar.set_style(
        ProgressStyle::with_template("{wide_bar} {pos}/{len} tokens  eta {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let mut totals = RolloutCounts::default();
    for &i in &chosen {
        let mut rec = reader.record(i);
        truncate(&mut rec, a.max_len, reader.hidden_size());
        rollout_record(&model, head.as_mut(), &rec, ROLLOUT_DEPTH, &mut totals)
            .map_err(|e| Error::input(format!("conversation {i} of --data: {e}")))?;
        bar.inc(rec.len() as u64);
    }
    bar.finish_and_clear();
    if totals.positions == 0 {
        return Err(Error::input(format!(
            "--data: the {} conversations taken have no assistant token within --max-len {}: nothing to roll out",
            totals.conversations, a.max_len
        )));
    }

    let rollouts = totals.rollouts();
    println!(
        "rollout of the {} head in {}: {} conversations, {} tokens, {} positions; top-k chains accepted through \
         depth 1..{}",
        kind.name(),
        a.draft_model.display(),
        totals.conversations,
        totals.tokens,
        totals.positions,
        totals.accepted.len()
    );
    for r in &rollouts {
        println!("  top-{:<2} {} (τ {:.3})", r.top, percents(&r.accepted), r.tau());
    }
    if let Some(path) = &a.json {
        let json = serde_json::json!({
            "head": kind.name(),
            "draft_model": a.draft_model,
            "data": a.data,
            "conversations": totals.conversations,
            "tokens": totals.tokens,
            "positions": totals.positions,
            "rollout": rollouts,
        });
        let text = serde_json::to_string_pretty(&json).map_err(|e| Error::input(format!("--json: {e}")))? + "\n";
        write_atomically(path, text.as_bytes())?;
        println!("wrote {}", path.display());
    }
    Ok(())
}
