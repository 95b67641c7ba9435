//! Offline training: conversations → gen-data (features from one base forward each) → shards
//! served in shuffled batches to the draft-head trainer.

pub mod conversations;
pub mod data;
pub mod layout;
pub mod loss_mask;
pub mod shards;
