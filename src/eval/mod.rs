//! Measuring: scoring texts, answering benchmark questions (`harness`), the metrics over the
//! answers, per-step latency (`bench`), and a head's free-running rollout on evaluation data.

pub mod answers;
pub mod bench;
pub mod decoder;
pub mod harness;
pub mod jsonl;
pub mod metrics;
pub mod questions;
pub mod rollout;
pub mod score;
pub mod svg;
