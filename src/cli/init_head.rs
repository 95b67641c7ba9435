use std::path::PathBuf;

use clap::Args;

use clover_engine::draft::init::init_head;
use clover_engine::error::Result;

use super::generate::DraftArg;

#[derive(Args)]
pub struct InitHeadArgs {
    #[arg(long, value_enum)]
    kind: DraftArg,
    /// The base model the head drafts for.
    #[arg(long)]
    model: Option<PathBuf>,
    /// Folder to write the head to.
    #[arg(long)]
    out: PathBuf,
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

pub fn run(a: InitHeadArgs) -> Result<()> {
    let base = super::model_dir(a.model)?;
    init_head(a.kind.into(), &base, &a.out, a.seed)?;
    println!("wrote an untrained head to {}", a.out.display());
    Ok(())
}
