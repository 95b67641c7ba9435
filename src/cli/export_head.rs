use std::path::PathBuf;

use clap::{Args, ValueEnum};

use clover_engine::draft::export::export_head;
use clover_engine::error::Result;
use clover_engine::weights::DType;

#[derive(Args)]
pub struct ExportHeadArgs {
    /// A head folder: a distill output, one of its checkpoints/step-N folders, or init-head's.
    #[arg(long)]
    from: PathBuf,
    /// Folder to write config.json and model.safetensors to.
    #[arg(long)]
    out: PathBuf,
    #[arg(long, value_enum, default_value_t = HeadDType::Bf16)]
    dtype: HeadDType,
}

#[derive(Clone, Copy, ValueEnum)]
enum HeadDType {
    Bf16,
    F16,
    F32,
}

pub fn run(a: ExportHeadArgs) -> Result<()> {
    let dtype = match a.dtype {
        HeadDType::Bf16 => DType::BF16,
        HeadDType::F16 => DType::F16,
        HeadDType::F32 => DType::F32,
    };
    let n = export_head(&a.from, &a.out, dtype)?;
    let vocab = a.out.join(clover_engine::draft::vocab::DRAFT_VOCAB_FILE).exists();
    println!(
        "wrote {n} tensors ({dtype:?}), config.json{} to {}",
        if vocab { " and draft_vocab.json" } else { "" },
        a.out.display()
    );
    Ok(())
}
