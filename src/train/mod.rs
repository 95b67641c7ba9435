//! Offline training: conversations → gen-data (features from one base forward each) → shards
//! served in shuffled batches → `distill`, which trains a draft head on them.
//!
//! distill: `params` (trainable tensors) and `blocks` (their order per building block) →
//! `align` (teacher forcing, with `label_mask` optionally) → `eagle_train` / `clover_train` (forward and backward of a head,
//! behind `head::TrainHead`) → `losses` (lm_head losses in chunks) → `optim` (clipping, AdamW,
//! schedule) → `distill` (the loop, with `batches`, `checkpoint`, `metrics` / `curves`, `timers`).

pub mod align;
pub mod batches;
pub mod blocks;
pub mod checkpoint;
pub mod clover_train;
pub mod conversations;
pub mod curves;
pub mod data;
pub mod distill;
pub mod draft_vocab;
pub mod eagle_train;
pub mod ge_data;
pub mod head;
#[cfg(test)]
mod head_gradcheck;
pub mod label_mask;
pub mod layout;
pub mod loss_mask;
pub mod losses;
pub mod metrics;
pub mod optim;
pub mod params;
pub mod rollout;
pub mod shards;
pub mod tensor_scale;
pub mod timers;
