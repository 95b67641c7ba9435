//! Reads distillation data written by gen-data: memory-maps the shards listed in index.json and
//! serves records (features widened to f32) in seeded, shuffled batches. An epoch is one
//! permutation of the chosen conversations; the held-out split is by conversation position, so the
//! same conversations are held out whatever the seed.

use std::fs::File;
use std::ops::Range;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use safetensors::tensor::{Dtype, SafeTensors};

use crate::error::{Error, Result};
use crate::model::ModelConfig;
use crate::rng::Rng;
use crate::train::layout::{
    tensor_name, DataIndex, HIDDEN_STATE, HIDDEN_STATE_PRENORM, INDEX_FILE, INPUT_IDS, LOSS_MASK,
};
use crate::weights::safetensors::header_problem;

#[derive(Clone, Debug, PartialEq)]
pub struct Record {
    /// The conversation's index in the data file (see `layout.rs`).
    pub index: usize,
    pub input_ids: Vec<u32>,
    /// `[T, H]` post-norm features.
    pub hidden_state: Vec<f32>,
    /// `[T, H]` pre-norm features.
    pub hidden_state_prenorm: Vec<f32>,
    pub loss_mask: Vec<u8>,
}

impl Record {
    pub fn len(&self) -> usize {
        self.input_ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.input_ids.is_empty()
    }
}

/// Where one conversation's tensors lie in its shard's map.
struct Location {
    index: usize,
    tokens: usize,
    shard: usize,
    input_ids: Range<usize>,
    hidden_state: Range<usize>,
    hidden_state_prenorm: Range<usize>,
    loss_mask: Range<usize>,
}

pub struct ShardReader {
    /// The folder's index; for several folders, the first one's with the counts (conversations,
    /// tokens, …) summed and the shard lists concatenated.
    pub index: DataIndex,
    maps: Vec<Mmap>,
    records: Vec<Location>,
    /// Record positions of each folder, in the order given.
    folders: Vec<Range<usize>>,
    /// The folders, in the order given.
    dirs: Vec<PathBuf>,
}

/// Record positions (0..len) used for training and held out for evaluation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Split {
    pub train: Vec<usize>,
    pub heldout: Vec<usize>,
}

impl ShardReader {
    /// Opens `dir/index.json` and every shard it lists, checking each tensor's dtype and shape.
    pub fn open(dir: &Path) -> Result<Self> {
        Self::open_all(&[dir])
    }

    /// Opens several gen-data folders as one data set (records in folder order). They must come
    /// from the same base model; each keeps its own held-out tail (`split`).
    pub fn open_all<P: AsRef<Path>>(dirs: &[P]) -> Result<Self> {
        let mut maps = Vec::new();
        let mut records = Vec::new();
        let mut folders = Vec::new();
        let mut merged: Option<DataIndex> = None;
        for dir in dirs {
            let dir = dir.as_ref();
            let start = records.len();
            let index = open_folder(dir, &mut maps, &mut records)?;
            folders.push(start..records.len());
            merged = Some(match merged {
                None => index,
                Some(m) => merge(m, index, dir)?,
            });
        }
        let index = merged.ok_or_else(|| Error::input("no data folder given"))?;
        let dirs = dirs.iter().map(|d| d.as_ref().to_path_buf()).collect();
        Ok(ShardReader { index, maps, records, folders, dirs })
    }

    /// The data was made with the model in `model_dir` (of `config`): features of its hidden size
    /// (checked here) and token ids in its vocabulary (`check_token_ids`).
    pub fn check_model(&self, model_dir: &Path, config: &ModelConfig) -> Result<()> {
        if self.hidden_size() != config.hidden_size {
            return Err(Error::format(
                self.dirs[0].join(INDEX_FILE),
                "hidden_size",
                format!(
                    "the data has features of size {} but the model in {} has hidden_size {}: the data was made \
                     with another base model (index.json names `{}`)",
                    self.hidden_size(),
                    model_dir.display(),
                    config.hidden_size,
                    self.index.model
                ),
            ));
        }
        self.check_token_ids(config.vocab_size)
    }

    /// Every token id is below `vocab_size`, the model's: data made with another tokenizer is
    /// named here, not found by an out-of-range read in the middle of training.
    pub fn check_token_ids(&self, vocab_size: usize) -> Result<()> {
        for (folder, range) in self.dirs.iter().zip(&self.folders) {
            for i in range.clone() {
                let loc = &self.records[i];
                let raw = &self.maps[loc.shard][loc.input_ids.clone()];
                let ids = raw.chunks_exact(8).map(|b| i64::from_le_bytes(b.try_into().expect("8 bytes")));
                if let Some(id) = ids.into_iter().find(|&id| id < 0 || id as u64 >= vocab_size as u64) {
                    return Err(Error::format(
                        folder.join(INDEX_FILE),
                        "input_ids",
                        format!(
                            "conversation {} has token {id}, outside the model's vocabulary of {vocab_size}: the data \
                             was made with another tokenizer",
                            loc.index
                        ),
                    ));
                }
            }
        }
        Ok(())
    }

    /// Number of records (conversations).
    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    pub fn hidden_size(&self) -> usize {
        self.index.hidden_size
    }

    /// Tokens of record `i` (to size buffers or bucket by length without reading the record).
    pub fn tokens(&self, i: usize) -> usize {
        self.records[i].tokens
    }

    /// Token ids and loss mask of record `i`, without reading its features.
    pub fn ids_and_mask(&self, i: usize) -> (Vec<u32>, Vec<u8>) {
        let loc = &self.records[i];
        let map = &self.maps[loc.shard];
        // Ids were written from u32 values, so the narrowing is exact.
        let ids = map[loc.input_ids.clone()]
            .chunks_exact(8)
            .map(|b| i64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]) as u32)
            .collect();
        (ids, map[loc.loss_mask.clone()].to_vec())
    }

    /// The first records of `subset` up to `budget` tokens (at least one), each counted cut to
    /// `max_len`, skipping those with nothing to learn within the cut (a long first user turn):
    /// they would count tokens and no rows. distill's held-out set and `rollout`'s conversations.
    pub fn evaluation_set(&self, subset: &[usize], max_len: usize, budget: usize) -> Vec<usize> {
        let mut set = Vec::new();
        let mut tokens = 0;
        for &i in subset {
            let t = self.tokens(i).min(max_len);
            if !set.is_empty() && tokens + t > budget {
                break;
            }
            if self.ids_and_mask(i).1[..t.saturating_sub(1)].iter().any(|&m| m != 0) {
                tokens += t;
                set.push(i);
            }
        }
        set
    }

    /// Record `i` (0..len, index.json order), features widened to f32.
    pub fn record(&self, i: usize) -> Record {
        let loc = &self.records[i];
        let map = &self.maps[loc.shard];
        let bf16 = |r: &Range<usize>| -> Vec<f32> {
            map[r.clone()]
                .chunks_exact(2)
                .map(|b| half::bf16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32())
                .collect()
        };
        let (input_ids, loss_mask) = self.ids_and_mask(i);
        Record {
            index: loc.index,
            input_ids,
            hidden_state: bf16(&loc.hidden_state),
            hidden_state_prenorm: bf16(&loc.hidden_state_prenorm),
            loss_mask,
        }
    }

    /// Holds out the last `fraction` of each folder's records (rounded to a whole record), by
    /// position: a folder's held-out conversations stay held out whatever it is combined with.
    pub fn split(&self, fraction: f64) -> Split {
        let mut split = Split { train: Vec::new(), heldout: Vec::new() };
        for folder in &self.folders {
            let n = folder.len();
            let held = ((n as f64 * fraction.clamp(0.0, 1.0)).round() as usize).min(n);
            split.train.extend(folder.start..folder.end - held);
            split.heldout.extend(folder.end - held..folder.end);
        }
        split
    }

    /// Batches of one epoch over `subset` (record positions): a seeded permutation, cut into
    /// batches of `batch_size` (the last one may be smaller).
    pub fn batches<'a>(&'a self, subset: &[usize], batch_size: usize, seed: u64, epoch: u64) -> Batches<'a> {
        Batches { reader: self, order: epoch_order(subset, seed, epoch), batch_size: batch_size.max(1), next: 0 }
    }
}

/// Maps the shards of one gen-data folder, appending them to `maps` and their conversations to
/// `records`; returns the folder's index.
fn open_folder(dir: &Path, maps: &mut Vec<Mmap>, records: &mut Vec<Location>) -> Result<DataIndex> {
    let index = DataIndex::read(dir)?;
    let h = index.hidden_size;
    for shard in &index.shards {
        let k = maps.len();
        let path = dir.join(&shard.file);
        if !path.exists() {
            return Err(Error::format(
                dir.join(INDEX_FILE),
                "shards",
                format!("{} is missing: gen-data has not finished (run it again to complete)", shard.file),
            ));
        }
        let file = File::open(&path).map_err(|e| Error::io(&path, e))?;
        // SAFETY: shards are written once (temp name, then rename) and never modified in place.
        let map = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(&path, e))?;
        let st = SafeTensors::deserialize(&map).map_err(|e| Error::format(&path, "header", header_problem(&e)))?;
        let base = map.as_ptr() as usize;
        for c in &shard.conversations {
            let t = c.tokens;
            let locate = |field: &str, dtype: Dtype, shape: &[usize]| -> Result<Range<usize>> {
                let name = tensor_name(c.index, field);
                let view = st.tensor(&name).map_err(|_| Error::format(&path, &name, "tensor is missing"))?;
                if view.dtype() != dtype || view.shape() != shape {
                    return Err(Error::format(
                        &path,
                        &name,
                        format!("{:?} {:?}, expected {dtype:?} {shape:?}", view.dtype(), view.shape()),
                    ));
                }
                let start = view.data().as_ptr() as usize - base;
                Ok(start..start + view.data().len())
            };
            records.push(Location {
                index: c.index,
                tokens: t,
                shard: k,
                input_ids: locate(INPUT_IDS, Dtype::I64, &[t])?,
                hidden_state: locate(HIDDEN_STATE, Dtype::BF16, &[t, h])?,
                hidden_state_prenorm: locate(HIDDEN_STATE_PRENORM, Dtype::BF16, &[t, h])?,
                loss_mask: locate(LOSS_MASK, Dtype::U8, &[t])?,
            });
        }
        drop(st);
        maps.push(map);
    }
    Ok(index)
}

/// The index of several folders: the first one's, counts summed, shards concatenated. Folders of
/// another base model (name or feature size) are refused.
fn merge(mut into: DataIndex, next: DataIndex, dir: &Path) -> Result<DataIndex> {
    if !next.same_base_model(&into) {
        return Err(Error::format(
            dir.join(INDEX_FILE),
            "model",
            format!(
                "{} (hidden_size {}) differs from the first data folder's {} (hidden_size {}): all --data folders \
                 must come from the same base model",
                next.model, next.hidden_size, into.model, into.hidden_size
            ),
        ));
    }
    into.conversations += next.conversations;
    into.tokens += next.tokens;
    into.masked_tokens += next.masked_tokens;
    into.truncated += next.truncated;
    into.shards.extend(next.shards);
    Ok(into)
}

/// A Fisher–Yates permutation of `items`, different for every (seed, epoch) and reproducible.
pub fn epoch_order(items: &[usize], seed: u64, epoch: u64) -> Vec<usize> {
    let mut rng = Rng::new(seed ^ epoch.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let mut order = items.to_vec();
    for i in (1..order.len()).rev() {
        let j = (rng.next_u64() % (i as u64 + 1)) as usize;
        order.swap(i, j);
    }
    order
}

pub struct Batches<'a> {
    reader: &'a ShardReader,
    order: Vec<usize>,
    batch_size: usize,
    next: usize,
}

impl Iterator for Batches<'_> {
    type Item = Vec<Record>;

    fn next(&mut self) -> Option<Vec<Record>> {
        if self.next >= self.order.len() {
            return None;
        }
        let end = (self.next + self.batch_size).min(self.order.len());
        let batch = self.order[self.next..end].iter().map(|&i| self.reader.record(i)).collect();
        self.next = end;
        Some(batch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::layout::{shard_file, write_data_folder, write_shard, ShardRecord};

    const H: usize = 3;

    /// Record i has i + 1 tokens; every value encodes (i, position) so mix-ups show.
    fn record(i: usize) -> ShardRecord {
        let t = i + 1;
        let feat =
            |sign: f32| (0..t * H).map(|j| half::bf16::from_f32(sign * (i * 100 + j) as f32).to_bits()).collect();
        ShardRecord {
            index: i + 10,
            input_ids: (0..t as u32).map(|j| 1000 * i as u32 + j).collect(),
            hidden_state: feat(1.0),
            hidden_state_prenorm: feat(-1.0),
            loss_mask: (0..t).map(|j| (j % 2) as u8).collect(),
        }
    }

    /// Writes `n` records in shards of `per_shard`, like gen-data would.
    fn write_dataset(dir: &Path, n: usize, per_shard: usize) {
        let records: Vec<ShardRecord> = (0..n).map(record).collect();
        write_data_folder(dir, "tiny", H, &records, per_shard).unwrap();
    }

    fn temp_dir(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("clover-shards-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn records_round_trip_through_shards() {
        let dir = temp_dir("roundtrip");
        write_dataset(&dir, 7, 3);
        let reader = ShardReader::open(&dir).unwrap();
        assert_eq!((reader.len(), reader.hidden_size(), reader.index.shards.len()), (7, H, 3));
        for i in 0..7 {
            let want = record(i);
            let got = reader.record(i);
            assert_eq!(got.index, want.index);
            assert_eq!(got.input_ids, want.input_ids);
            assert_eq!(got.loss_mask, want.loss_mask);
            let widen = |bits: &[u16]| bits.iter().map(|&b| half::bf16::from_bits(b).to_f32()).collect::<Vec<_>>();
            assert_eq!(got.hidden_state, widen(&want.hidden_state));
            assert_eq!(got.hidden_state_prenorm, widen(&want.hidden_state_prenorm));
            assert_eq!(reader.tokens(i), i + 1);
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn every_record_once_per_epoch_reproducibly_and_heldout_kept_apart() {
        let dir = temp_dir("epochs");
        write_dataset(&dir, 20, 6);
        let reader = ShardReader::open(&dir).unwrap();
        let split = reader.split(0.05);
        assert_eq!(split.heldout, [19]);
        assert_eq!(split.train, (0..19).collect::<Vec<_>>());
        let epoch = |seed, e| -> Vec<usize> {
            reader.batches(&split.train, 4, seed, e).flat_map(|b| b.into_iter().map(|r| r.index - 10)).collect()
        };
        let first = epoch(1, 0);
        let mut sorted = first.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, split.train, "every training record exactly once");
        assert_eq!(first, epoch(1, 0), "same seed and epoch, same order");
        assert_ne!(first, epoch(1, 1), "a new permutation each epoch");
        assert_ne!(first, epoch(2, 0), "a new permutation for another seed");
        let sizes: Vec<usize> = reader.batches(&split.train, 4, 1, 0).map(|b| b.len()).collect();
        assert_eq!(sizes, [4, 4, 4, 4, 3]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn missing_shard_and_wrong_shape_are_named() {
        let dir = temp_dir("broken");
        write_dataset(&dir, 4, 2);
        std::fs::remove_file(dir.join(shard_file(1))).unwrap();
        let err = ShardReader::open(&dir).err().expect("missing shard").to_string();
        assert!(err.contains("shard-00001.safetensors") && err.contains("not finished"), "{err}");
        write_shard(&dir.join(shard_file(1)), H, &[record(2), record(3)]).unwrap();
        let mut index = DataIndex::read(&dir).unwrap();
        index.hidden_size = H + 1;
        std::fs::write(dir.join(INDEX_FILE), index.to_json().unwrap()).unwrap();
        let err = ShardReader::open(&dir).err().expect("wrong hidden size").to_string();
        assert!(err.contains("shard-00000.safetensors") && err.contains("c10.hidden_state"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
