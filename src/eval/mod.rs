//! Measuring: scoring texts, answering benchmark questions (`harness`), the metrics over the
//! answers, and per-step latency (`bench`).

pub mod answers;
pub mod bench;
pub mod decoder;
pub mod harness;
pub mod jsonl;
pub mod metrics;
pub mod questions;
pub mod score;
pub mod svg;
