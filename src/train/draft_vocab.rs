//! Builds a head's reduced draft vocabulary from gen-data output: the N most frequent assistant
//! tokens (the ones the head learns to draft) of the training split, so the held-out split that
//! distill evaluates on does not choose the list.

use std::path::Path;

use serde_json::json;

use crate::draft::vocab::DraftVocab;
use crate::error::{Error, Result};
use crate::train::distill::HELDOUT_FRACTION;
use crate::train::shards::ShardReader;

/// Counts of each token id at loss-masked positions over `records`.
pub fn count_assistant_tokens(reader: &ShardReader, records: &[usize], vocab_size: usize) -> Vec<u64> {
    let mut counts = vec![0u64; vocab_size];
    for &i in records {
        let (ids, mask) = reader.ids_and_mask(i);
        for (&t, &m) in ids.iter().zip(&mask) {
            if m != 0 && (t as usize) < vocab_size {
                counts[t as usize] += 1;
            }
        }
    }
    counts
}

/// The `size` most frequent assistant tokens of the training split of the gen-data folders `data`,
/// with the share of training and held-out assistant tokens they cover recorded in the list's
/// metadata.
pub fn build_draft_vocab<P: AsRef<Path>>(data: &[P], vocab_size: usize, size: usize) -> Result<DraftVocab> {
    if size > vocab_size {
        return Err(Error::input(format!(
            "a draft vocabulary of {size} tokens: the model's vocabulary has {vocab_size} (give at most that)"
        )));
    }
    let reader = ShardReader::open_all(data)?;
    reader.check_token_ids(vocab_size)?;
    if reader.index.masked_tokens == 0 {
        return Err(Error::input("the data holds no assistant token to count (gen-data's --max-len cut every reply)"));
    }
    let split = reader.split(HELDOUT_FRACTION);
    let counts = count_assistant_tokens(&reader, &split.train, vocab_size);
    let (ids, train_coverage) = DraftVocab::most_frequent(&counts, size);
    let heldout = count_assistant_tokens(&reader, &split.heldout, vocab_size);
    let heldout_total: u64 = heldout.iter().sum();
    let heldout_covered: u64 = ids.iter().map(|&t| heldout[t as usize]).sum();
    let heldout_coverage = if heldout_total == 0 { 0.0 } else { heldout_covered as f64 / heldout_total as f64 };
    let meta = json!({
        "source": "the most frequent assistant tokens of the gen-data training split",
        "data": data
            .iter()
            .map(|d| d.as_ref().file_name().map_or(String::new(), |n| n.to_string_lossy().into_owned()))
            .collect::<Vec<_>>()
            .join("+"),
        "train_assistant_tokens": counts.iter().sum::<u64>(),
        // Past this many, the list goes on with tokens the data never used (lowest ids first).
        "train_distinct_tokens": counts.iter().filter(|&&c| c > 0).count(),
        "train_coverage": train_coverage,
        "heldout_assistant_tokens": heldout_total,
        "heldout_coverage": heldout_coverage,
    });
    Ok(DraftVocab { ids, meta })
}
