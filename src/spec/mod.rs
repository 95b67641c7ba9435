//! Speculative decoding: candidate trees, verification, and the decoding loops.

pub mod engine;
