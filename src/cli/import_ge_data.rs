use std::path::PathBuf;

use clap::Args;

use clover_engine::backend::Backend;
use clover_engine::error::Result;
use clover_engine::train::ge_data::{import_ge_data, GeDataOptions};

use super::checks::at_least_one;

#[derive(Args)]
pub struct ImportGeDataArgs {
    /// Folder of the reference's ge_data dumps (`data_N.ckpt`, in it or in folders below it).
    #[arg(long)]
    from: PathBuf,
    /// The base model the dumps were made with (default: the model fetched by
    /// tools/fetch-default-model.sh); checked against the first dump's features.
    #[arg(long)]
    model: Option<PathBuf>,
    /// Output folder, new or empty: index.json and shards, as gen-data writes them.
    #[arg(long)]
    out: PathBuf,
    /// Conversations are cut to this many tokens [default: 2048, the references' training cut,
    /// or the model's context if shorter].
    #[arg(long)]
    max_len: Option<usize>,
    /// Tokens per shard file (whole conversations).
    #[arg(long, default_value_t = 32768)]
    shard_tokens: usize,
}

pub fn run<B: Backend + 'static>(a: ImportGeDataArgs, backend: B) -> Result<()> {
    if let Some(n) = a.max_len {
        at_least_one("--max-len", n)?;
    }
    at_least_one("--shard-tokens", a.shard_tokens)?;
    super::checks::new_or_empty_out(&a.out, "")?;
    let opts = GeDataOptions {
        from: a.from,
        model_dir: super::model_dir(a.model)?,
        out: a.out,
        max_len: a.max_len,
        shard_tokens: a.shard_tokens,
    };
    let s = import_ge_data(&opts, backend)?;
    println!(
        "{} conversations, {} tokens ({} in the loss mask, {} conversations cut at {}) into {}",
        s.conversations,
        s.tokens,
        s.masked_tokens,
        s.truncated,
        s.max_len,
        opts.out.display()
    );
    println!(
        "features checked against the base model: largest relative difference {:.2e}; pre-norm features \
         computed by it for {} conversations (the dumps without hidden_state_onnorm)",
        s.worst_feature_error, s.computed_prenorm
    );
    Ok(())
}
