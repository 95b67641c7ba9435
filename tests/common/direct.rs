//! Small f64 building blocks for tests that compute a draft head's output directly from its
//! stored tensors, as the spec writes it, to compare with the engine's head.

use std::path::Path;

use clover_engine::backend::cpu::CpuBackend;
use clover_engine::draft::DraftHead;
use clover_engine::model::{ForwardOutput, Llama, LogitRows};
use clover_engine::weights::safetensors::SafetensorsFiles;
use clover_engine::weights::write_f32_safetensors;

/// Rewrites a head's weights through `edit` (name, shape, values).
pub fn rewrite_weights(dir: &Path, edit: impl FnOnce(&mut Vec<(String, Vec<usize>, Vec<f32>)>)) {
    let files = SafetensorsFiles::open_dir(dir).unwrap();
    let bytes = std::fs::read(dir.join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut tensors: Vec<(String, Vec<usize>, Vec<f32>)> = st
        .tensors()
        .into_iter()
        .map(|(name, view)| {
            let shape = view.shape().to_vec();
            let values = files.get(&name, &shape).unwrap().to_f32();
            (name, shape, values)
        })
        .collect();
    drop(files);
    edit(&mut tensors);
    write_f32_safetensors(&dir.join("model.safetensors"), &tensors).unwrap();
}

pub fn rmsnorm(x: &[f64], gain: &[f64], eps: f64) -> Vec<f64> {
    let r = 1.0 / (x.iter().map(|v| v * v).sum::<f64>() / x.len() as f64 + eps).sqrt();
    x.iter().zip(gain).map(|(v, g)| v * r * g).collect()
}

/// w `[out, cols]` applied to `x` = columns `first..first + x.len()` of it.
pub fn linear(w: &[f64], cols: usize, first: usize, x: &[f64]) -> Vec<f64> {
    w.chunks_exact(cols).map(|row| row[first..first + x.len()].iter().zip(x).map(|(a, b)| a * b).sum()).collect()
}

pub fn add(a: &[f64], b: &[f64]) -> Vec<f64> {
    a.iter().zip(b).map(|(x, y)| x + y).collect()
}

/// The tensors of one model or head folder as f64, by name.
pub struct Tensors(pub SafetensorsFiles);

impl Tensors {
    pub fn open(dir: &Path) -> Self {
        Tensors(SafetensorsFiles::open_dir(dir).unwrap())
    }

    pub fn get(&self, name: &str, shape: &[usize]) -> Vec<f64> {
        self.0.get(name, shape).unwrap().to_f32().into_iter().map(f64::from).collect()
    }
}

/// f32 results against f64 ones, within 1e-3 relative (the engine computes in f32).
pub fn assert_close(got: &[f32], want: &[f64], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}");
    for (i, (a, b)) in got.iter().zip(want).enumerate() {
        assert!((*a as f64 - b).abs() <= 1e-3 * (1.0 + b.abs()), "{what}[{i}]: {a} vs {b}");
    }
}

/// The prompt both direct tests draft after, and the root token that follows it.
pub const PROMPT: [u32; 6] = [5, 17, 42, 99, 3, 64];
pub const ROOT: u32 = 7;

/// The base forward over `PROMPT`, the tokens paired with its rows (`PROMPT[1..]` then `ROOT`),
/// and the root row of `head` after a fresh `begin` on them.
pub fn begin_on_prompt(
    model: &Llama<CpuBackend>,
    head: &mut dyn DraftHead<CpuBackend>,
) -> (ForwardOutput<CpuBackend>, Vec<u32>, Vec<f32>) {
    let mut cache = model.new_cache(64);
    let base = model.prefill(&mut cache, &PROMPT, LogitRows::Last).unwrap();
    let rows: Vec<usize> = (0..PROMPT.len()).collect();
    let next: Vec<u32> = PROMPT[1..].iter().copied().chain([ROOT]).collect();
    head.reset();
    let root_row = head.begin(model, &base, &rows, &next).unwrap().to_host(&CpuBackend);
    (base, next, root_row)
}
