//! The trainable parameters of a draft head: f32 buffers in a fixed order, each tied to a tensor
//! of the head's safetensors under its reference name, so a trained head loads like any other.
//!
//! A `[H, 2H]` FC over a concatenated input (EAGLE's `fc` over `[e ; f]`, Clover-2's
//! `clover_head_mlp2` over `[s ; e]`) is trained as its two column halves: the forward multiplies
//! each input half by its own half and never builds the concatenation, AdamW and clipping act
//! element by element so the split changes nothing, and the halves are joined whenever the tensor
//! is written.

use crate::backend::Backend;
use crate::draft::init::Tensors;
use crate::error::{Error, Result};
use crate::weights::safetensors::SafetensorsFiles;

#[derive(Clone, Debug, PartialEq)]
pub struct ParamSpec {
    /// The tensor in the head's files and its stored shape (`[n]` or `[rows, cols]`).
    pub tensor: String,
    pub stored_shape: Vec<usize>,
    /// `Some((block, blocks))`: the parameter is column block `block` of `blocks` equal blocks.
    pub columns: Option<(usize, usize)>,
}

impl ParamSpec {
    pub fn whole(tensor: impl Into<String>, shape: Vec<usize>) -> Self {
        ParamSpec { tensor: tensor.into(), stored_shape: shape, columns: None }
    }

    /// Column block `block` of `blocks` of a `[rows, cols]` tensor.
    pub fn column_block(tensor: impl Into<String>, shape: Vec<usize>, block: usize, blocks: usize) -> Self {
        ParamSpec { tensor: tensor.into(), stored_shape: shape, columns: Some((block, blocks)) }
    }

    /// The parameter's own shape.
    pub fn shape(&self) -> Vec<usize> {
        match self.columns {
            None => self.stored_shape.clone(),
            Some((_, blocks)) => vec![self.stored_shape[0], self.stored_shape[1] / blocks],
        }
    }

    pub fn numel(&self) -> usize {
        self.shape().iter().product()
    }

    /// The tensor's name, with the column range when the parameter is a block of it.
    pub fn label(&self) -> String {
        match self.columns {
            None => self.tensor.clone(),
            Some((block, blocks)) => {
                let w = self.stored_shape[1] / blocks;
                format!("{}[:, {}:{}]", self.tensor, block * w, (block + 1) * w)
            }
        }
    }
}

pub struct ParamSet<B: Backend> {
    pub specs: Vec<ParamSpec>,
    pub values: Vec<B::Buf>,
}

impl<B: Backend> ParamSet<B> {
    /// Reads every parameter through `tensor(name, stored_shape)`, which returns the stored
    /// tensor's values as f32 (each tensor is asked for once per block).
    pub fn load(
        b: &B,
        specs: Vec<ParamSpec>,
        mut tensor: impl FnMut(&str, &[usize]) -> Result<Vec<f32>>,
    ) -> Result<Self> {
        let mut values = Vec::with_capacity(specs.len());
        for spec in &specs {
            let stored = tensor(&spec.tensor, &spec.stored_shape)?;
            let own = match spec.columns {
                None => stored,
                Some((block, blocks)) => {
                    let cols = spec.stored_shape[1];
                    let w = cols / blocks;
                    stored.chunks_exact(cols).flat_map(|row| row[block * w..(block + 1) * w].iter().copied()).collect()
                }
            };
            values.push(b.upload(&own));
        }
        Ok(ParamSet { specs, values })
    }

    /// One zeroed buffer per parameter (gradients, optimiser moments).
    pub fn zeros_like(&self, b: &B) -> Vec<B::Buf> {
        self.specs.iter().map(|s| b.zeros(s.numel())).collect()
    }

    /// The parameters as weights for the forward, in order.
    pub fn weights(&self, b: &B) -> Result<Vec<B::Weight>> {
        self.specs.iter().zip(&self.values).map(|(s, v)| b.weight_from_buf(&s.label(), &s.shape(), v)).collect()
    }

    /// Parameters in all.
    pub fn numel(&self) -> usize {
        self.specs.iter().map(ParamSpec::numel).sum()
    }

    /// `bufs`, laid out like the parameters (their values, a gradient, an optimiser moment), as
    /// the head's tensors with column blocks joined, each name prefixed by `prefix`.
    pub fn tensors(&self, b: &B, bufs: &[B::Buf], prefix: &str) -> Tensors {
        let mut out: Tensors = Vec::new();
        for (spec, buf) in self.specs.iter().zip(bufs) {
            let values = b.download(buf);
            let name = format!("{prefix}{}", spec.tensor);
            match spec.columns {
                None => out.push((name, spec.stored_shape.clone(), values)),
                Some((block, blocks)) => {
                    let (rows, cols) = (spec.stored_shape[0], spec.stored_shape[1]);
                    if block == 0 {
                        out.push((name.clone(), spec.stored_shape.clone(), vec![0.0; rows * cols]));
                    }
                    let Some((_, _, joined)) = out.iter_mut().rev().find(|(n, _, _)| *n == name) else {
                        unreachable!("column block {block} of {name} comes after block 0 in every spec list");
                    };
                    let w = cols / blocks;
                    for (dst, src) in joined.chunks_exact_mut(cols).zip(values.chunks_exact(w)) {
                        dst[block * w..(block + 1) * w].copy_from_slice(src);
                    }
                }
            }
        }
        out
    }
}

/// Tensor values from a head's safetensors files.
pub fn from_files(files: &SafetensorsFiles) -> impl FnMut(&str, &[usize]) -> Result<Vec<f32>> + '_ {
    move |name, shape| Ok(files.get(name, shape)?.to_f32())
}

/// Tensor values from an in-memory list (a freshly initialised head); `origin` names it in errors.
pub fn from_list<'a>(list: &'a Tensors, origin: &'a str) -> impl FnMut(&str, &[usize]) -> Result<Vec<f32>> + 'a {
    move |name, shape| match list.iter().find(|(n, _, _)| n == name) {
        Some((_, s, v)) if s == shape => Ok(v.clone()),
        Some((_, s, _)) => Err(Error::input(format!("{origin}: tensor {name} has shape {s:?}, expected {shape:?}"))),
        None => Err(Error::input(format!("{origin}: no tensor {name}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::CpuBackend;

    #[test]
    fn column_blocks_split_on_load_and_join_on_write() {
        let b = CpuBackend;
        let specs = vec![
            ParamSpec::column_block("fc.weight", vec![2, 4], 0, 2),
            ParamSpec::whole("fc.bias", vec![2]),
            ParamSpec::column_block("fc.weight", vec![2, 4], 1, 2),
        ];
        let list: Tensors = vec![
            ("fc.weight".into(), vec![2, 4], vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0]),
            ("fc.bias".into(), vec![2], vec![9.0, 10.0]),
        ];
        let set = ParamSet::load(&b, specs, from_list(&list, "test")).unwrap();
        assert_eq!(set.values, [vec![1.0, 2.0, 5.0, 6.0], vec![9.0, 10.0], vec![3.0, 4.0, 7.0, 8.0]]);
        assert_eq!(set.specs[2].label(), "fc.weight[:, 2:4]");
        assert_eq!(set.numel(), 10);
        let mut written = set.tensors(&b, &set.values, "");
        written.sort_by(|a, b| a.0.cmp(&b.0));
        let mut want = list.clone();
        want.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(written, want);
        let err =
            ParamSet::<CpuBackend>::load(&b, vec![ParamSpec::whole("fc.bias", vec![3])], from_list(&list, "init"))
                .err()
                .expect("wrong shape");
        assert!(err.to_string().contains("fc.bias"), "{err}");
    }
}
