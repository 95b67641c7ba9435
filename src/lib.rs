//! clover-engine: speculative decoding with Clover-2 and EAGLE-1 draft heads.
//!
//! The data path, one module each: `weights` (files) → `backend` (ops) → `model` (base model)
//! → `draft` (draft heads) → `spec` (trees, verification, the decoding loop) → `train` / `eval`.

pub mod backend;
pub mod draft;
pub mod error;
pub mod eval;
pub mod fsutil;
pub mod model;
pub mod nvtx;
pub mod paths;
pub mod rng;
pub mod sampling;
pub mod spec;
pub mod train;
pub mod vexp;
pub mod weights;

pub use error::{Error, Result};
