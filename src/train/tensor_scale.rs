//! Factors by tensor-name prefix, `PREFIX=FACTOR`: distill's `--lr-scale` (the parameters whose
//! tensor names start with PREFIX train at the schedule's rate times FACTOR: PyTorch's parameter
//! groups in their simplest form) and `--init-scale` (their starting values are multiplied by
//! FACTOR once, when a run starts).
//!
//! Why a head needs them: AdamW moves each element by about the learning rate per step whatever the
//! gradient's size, so a weight that must grow far from its initialisation needs many steps. In
//! Clover-2, AD₀ injects the token embedding (rows of lm_head, norm ≈ 3 on the default model) into
//! the pre-norm base feature (norm ≈ 700) through `v = Wv·E[x]` with Wv initialised in [0, 0.01);
//! the reference's 21 epochs leave room for Wv to grow, a CPU run of a few thousand steps does not.

use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::train::params::ParamSpec;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TensorScale {
    /// Tensor-name prefix, e.g. `clover_head_mlp_rnn.v` (a whole module: `clover_head_mlp_rnn.`).
    pub prefix: String,
    pub factor: f32,
}

impl FromStr for TensorScale {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let (prefix, factor) = s.split_once('=').ok_or_else(|| format!("`{s}` is not PREFIX=FACTOR"))?;
        let factor: f32 = factor.trim().parse().map_err(|_| format!("`{factor}` in `{s}` is not a number"))?;
        if prefix.is_empty() || !factor.is_finite() || factor <= 0.0 {
            return Err(format!("`{s}`: the prefix must not be empty and the factor must be positive"));
        }
        Ok(TensorScale { prefix: prefix.to_string(), factor })
    }
}

impl std::fmt::Display for TensorScale {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}={}", self.prefix, self.factor)
    }
}

/// The factor of every parameter, in the order of `specs` (`option` names the flag in errors): 1 unless a scale's prefix matches its
/// tensor name (the last matching scale wins). A prefix that matches nothing is an error, so a
/// typo cannot silently train at the plain rate.
pub fn per_parameter(option: &str, scales: &[TensorScale], specs: &[ParamSpec]) -> Result<Vec<f32>> {
    if let Some(unused) = scales.iter().find(|s| !specs.iter().any(|p| p.tensor.starts_with(&s.prefix))) {
        let mut names: Vec<&str> = specs.iter().map(|p| p.tensor.as_str()).collect();
        names.dedup();
        return Err(Error::input(format!(
            "{option} {unused}: no parameter of this head starts with `{}` (its tensors: {})",
            unused.prefix,
            names.join(", ")
        )));
    }
    Ok(specs
        .iter()
        .map(|p| scales.iter().rev().find(|s| p.tensor.starts_with(&s.prefix)).map_or(1.0, |s| s.factor))
        .collect())
}

/// A tensor reader (`ParamSet::load`'s) whose values come out multiplied by the factor of the
/// last scale whose prefix matches the tensor's name.
pub fn scaled<'a>(
    mut read: impl FnMut(&str, &[usize]) -> Result<Vec<f32>> + 'a,
    scales: &'a [TensorScale],
) -> impl FnMut(&str, &[usize]) -> Result<Vec<f32>> + 'a {
    move |name, shape| {
        let mut values = read(name, shape)?;
        if let Some(s) = scales.iter().rev().find(|s| name.starts_with(&s.prefix)) {
            values.iter_mut().for_each(|v| *v *= s.factor);
        }
        Ok(values)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_pick_parameters_and_typos_are_refused() {
        let specs = vec![
            ParamSpec::whole("ad.v.weight", vec![2, 2]),
            ParamSpec::whole("ad.v.bias", vec![2]),
            ParamSpec::whole("ad.q.weight", vec![2, 2]),
            ParamSpec::whole("fc.weight", vec![2, 2]),
        ];
        let scales: Vec<TensorScale> = ["ad.=2", "ad.v=30"].iter().map(|s| s.parse().unwrap()).collect();
        assert_eq!(per_parameter("--lr-scale", &scales, &specs).unwrap(), vec![30.0, 30.0, 2.0, 1.0]);
        assert_eq!(per_parameter("--lr-scale", &[], &specs).unwrap(), vec![1.0; 4]);
        let typo: TensorScale = "ad.x=3".parse().unwrap();
        let err = per_parameter("--init-scale", &[typo], &specs).unwrap_err().to_string();
        assert!(err.contains("--init-scale ad.x=3") && err.contains("fc.weight"), "{err}");
        for bad in ["ad.v", "=3", "ad.v=0", "ad.v=-1", "ad.v=x", "ad.v=inf"] {
            assert!(bad.parse::<TensorScale>().is_err(), "{bad}");
        }
        assert_eq!("ad.v=30".parse::<TensorScale>().unwrap().to_string(), "ad.v=30");
    }
}
