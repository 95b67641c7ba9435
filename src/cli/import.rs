use std::path::PathBuf;

use clap::{Args, ValueEnum};

use clover_engine::backend::cpu::CpuBackend;
use clover_engine::error::Result;
use clover_engine::model::Llama;
use clover_engine::weights::gguf_import::{import_gguf, ImportDType};

#[derive(Clone, Copy, ValueEnum)]
enum DTypeArg {
    Bf16,
    F32,
    /// Each tensor as the GGUF stores it: Q8_0/Q4_0/Q4_1 stay quantized (CPU backend).
    Keep,
}

#[derive(Args)]
pub struct ImportArgs {
    /// The .gguf file.
    gguf: PathBuf,
    /// The HF folder to create.
    out_dir: PathBuf,
    /// Dtype of the written weights: bf16 or f32 expand quantized blocks; keep leaves them as
    /// they are, for the CPU backend's quantized kernels.
    #[arg(long, value_enum, default_value = "bf16")]
    dtype: DTypeArg,
}

pub fn run(a: ImportArgs) -> Result<()> {
    let dtype = match a.dtype {
        DTypeArg::Bf16 => ImportDType::Bf16,
        DTypeArg::F32 => ImportDType::F32,
        DTypeArg::Keep => ImportDType::Keep,
    };
    let loads = |dir: &std::path::Path| Llama::load(dir, CpuBackend).map(|_| ());
    let summary = import_gguf(&a.gguf, &a.out_dir, dtype, &loads)?;
    println!(
        "imported {} → {}: {}, {} tensors{}, {:.1} MB written",
        a.gguf.display(),
        a.out_dir.display(),
        summary.model_type,
        summary.tensors,
        if summary.tied_embeddings { " (lm_head tied to the embeddings)" } else { "" },
        summary.bytes_written as f64 / 1e6
    );
    Ok(())
}
