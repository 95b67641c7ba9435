use std::path::PathBuf;

use clap::Args;

use clover_engine::backend::Backend;
use clover_engine::error::{Error, Result};
use clover_engine::paths;
use clover_engine::train::data::{gen_data, GenDataOptions};

#[derive(Args)]
pub struct GenDataArgs {
    /// Base model folder (default: the model fetched by tools/fetch-default-model.sh).
    #[arg(long)]
    model: Option<PathBuf>,
    /// ShareGPT JSON file (default: the file fetched by tools/fetch-sharegpt.sh).
    #[arg(long)]
    data: Option<PathBuf>,
    /// Output folder: index.json and shard-NNNNN.safetensors. Rerunning into it resumes.
    #[arg(long)]
    out: PathBuf,
    /// First usable conversation (in file order).
    #[arg(long, default_value_t = 0)]
    start: usize,
    /// One past the last usable conversation (default: all).
    #[arg(long)]
    end: Option<usize>,
    /// Conversations are cut to this many tokens.
    #[arg(long, default_value_t = 2048)]
    max_len: usize,
    /// Token budget of one shard (32768 tokens ≈ 76 MB for a hidden size of 576).
    #[arg(long, default_value_t = 32768)]
    shard_tokens: usize,
    #[command(flatten)]
    template: super::ChatTemplateArg,
    /// A system message opening every conversation, in place of its own (the reference's
    /// LLaMA-3 data uses a fixed one, clover2.md §7).
    #[arg(long)]
    system: Option<String>,
}

pub fn run<B: Backend + 'static>(a: GenDataArgs, backend: B) -> Result<()> {
    let model_dir = super::model_dir(a.model)?;
    let data = match a.data {
        Some(path) => path,
        None => {
            let path = paths::sharegpt_file();
            if !path.exists() {
                return Err(Error::input(format!(
                    "no --data given and {} is missing; run tools/fetch-sharegpt.sh to get it",
                    path.display()
                )));
            }
            path
        }
    };
    let opts = GenDataOptions {
        model_dir,
        data,
        out: a.out,
        start: a.start,
        end: a.end,
        max_len: a.max_len,
        shard_tokens: a.shard_tokens,
        chat_template: a.template.chat_template,
        system: a.system,
    };
    let s = gen_data(&opts, backend)?;
    let i = &s.index;
    println!("{}: {}", opts.data.display(), s.report);
    println!(
        "conversations [{}, {}): {} tokens ({} masked in, {} conversations cut at {}) in {} shards",
        i.start,
        i.end,
        i.tokens,
        i.masked_tokens,
        i.truncated,
        i.max_len,
        i.shards.len()
    );
    if s.shards_present > 0 {
        println!("{} shards were already there and kept", s.shards_present);
    }
    if s.shards_written > 0 {
        println!(
            "wrote {} shards: {} tokens in {:.1} s ({:.1} tokens/s)",
            s.shards_written,
            s.tokens_run,
            s.seconds,
            s.tokens_run as f64 / s.seconds.max(1e-9)
        );
    }
    println!("data in {}", opts.out.display());
    if i.masked_tokens == 0 {
        eprintln!(
            "warning: no assistant token within --max-len {} (every reply was cut off): distill has nothing to learn \
             from this data; give a larger --max-len",
            i.max_len
        );
    }
    Ok(())
}
