//! Speculative decoding: candidate trees, verification, and the decoding loops.

pub mod auto_budget;
pub mod auto_plan;
pub mod drafting;
pub mod engine;
pub mod node_logits;
pub mod saved_plan;
pub mod tree;
pub mod verify;
