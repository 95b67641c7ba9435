//! Offline training: conversations → gen-data (features from one base forward each) → shards
//! served in shuffled batches → the draft-head trainers.
//!
//! Training a head: `params` (trainable tensors) and `blocks` (their order per building block) →
//! `align` (teacher forcing) → `eagle_train` / `clover_train` (forward and backward of a head,
//! behind `head::TrainHead`) → `losses` (lm_head losses in chunks).

pub mod align;
pub mod blocks;
pub mod clover_train;
pub mod conversations;
pub mod data;
pub mod eagle_train;
pub mod head;
#[cfg(test)]
mod head_gradcheck;
pub mod layout;
pub mod loss_mask;
pub mod losses;
pub mod params;
pub mod shards;
pub mod timers;
