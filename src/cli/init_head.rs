use std::path::PathBuf;

use clap::Args;

use clover_engine::draft::init::init_head_from;
use clover_engine::error::Result;

use super::generate::DraftArg;

#[derive(Args)]
pub struct InitHeadArgs {
    #[arg(long, value_enum)]
    kind: DraftArg,
    /// The base model the head drafts for.
    #[arg(long)]
    model: Option<PathBuf>,
    /// Folder to write the head to (new or empty: a head's folder holds more than the two files
    /// written here, e.g. a draft_vocab.json the new head would pick up).
    #[arg(long)]
    out: PathBuf,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Clover-2: copy the Augmenting Block's layers from this base decoder layer (0-based)
    /// instead of the last one (clover2.md §16 P4: the reference's HEAD copies layer 0).
    #[arg(long)]
    block_from_layer: Option<usize>,
}

pub fn run(a: InitHeadArgs) -> Result<()> {
    let base = super::model_dir(a.model)?;
    super::checks::new_or_empty_out(&a.out, " (an old head's draft_vocab.json would stay with the new head)")?;
    init_head_from(a.kind.into(), &base, &a.out, a.seed, a.block_from_layer)?;
    println!("wrote an untrained head to {}", a.out.display());
    Ok(())
}
