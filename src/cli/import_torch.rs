use std::path::PathBuf;

use clap::Args;

use clover_engine::error::{Error, Result};
use clover_engine::weights::torch::convert::{checkpoint_files, convert_to_safetensors};

#[derive(Args)]
pub struct ImportTorchArgs {
    /// A PyTorch checkpoint (`torch.save`'s zip format): a file, or a folder holding
    /// pytorch_model.bin or pytorch_model.bin.index.json and its shards (a released draft head or
    /// model), whose JSON files (config.json, tokenizer.json, …) are copied too.
    #[arg(long)]
    from: PathBuf,
    /// Folder to write model.safetensors (and the copied files) to: new or empty.
    #[arg(long)]
    out: PathBuf,
}

pub fn run(a: ImportTorchArgs) -> Result<()> {
    super::checks::new_or_empty_out(&a.out, "")?;
    let (files, folder) = if a.from.is_dir() {
        (checkpoint_files(&a.from)?, Some(a.from.clone()))
    } else if a.from.is_file() {
        (vec![a.from.clone()], None)
    } else {
        return Err(Error::input(format!("--from {}: no such file or folder", a.from.display())));
    };
    let created = !a.out.exists();
    std::fs::create_dir_all(&a.out).map_err(|e| Error::io(&a.out, e))?;
    let target = a.out.join("model.safetensors");
    let (tensors, bytes) = match convert_to_safetensors(&files, &target) {
        Ok(done) => done,
        Err(e) => {
            // Nothing half-made is left behind: the folder made for the output goes with it.
            if created {
                let _ = std::fs::remove_dir_all(&a.out);
            }
            return Err(e);
        }
    };
    let mut copied = Vec::new();
    if let Some(dir) = folder {
        let entries = std::fs::read_dir(&dir).map_err(|e| Error::io(&dir, e))?;
        for entry in entries {
            let path = entry.map_err(|e| Error::io(&dir, e))?.path();
            let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            // The index names the pickles just converted; every other JSON file travels along.
            if path.is_file() && name.ends_with(".json") && name != "pytorch_model.bin.index.json" {
                let bytes = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
                clover_engine::fsutil::write_atomically(&a.out.join(&name), &bytes)?;
                copied.push(name);
            }
        }
    }
    copied.sort();
    println!(
        "wrote {} ({tensors} tensors, {:.1} MB, element types as stored) from {} file(s){}",
        target.display(),
        bytes as f64 / 1e6,
        files.len(),
        if copied.is_empty() { String::new() } else { format!("; copied {}", copied.join(", ")) }
    );
    Ok(())
}
