//! Measuring: scoring texts, and later the benchmark harness and metrics.

pub mod score;
