//! Draft heads. Both kinds turn committed base features into a first row of draft logits, then
//! expand a tree level by level, each node fed by the state of its parent.

pub mod clover2;
pub mod config;
pub mod eagle;
pub mod export;
pub mod init;
pub mod vocab;

use crate::backend::Backend;
use crate::error::Result;
use crate::model::{ForwardOutput, Llama, Logits};
use crate::weights::{Bytes, HostTensor};
use vocab::{DraftLmHead, DraftVocabChoice};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DraftKind {
    Eagle,
    Clover2,
}

impl DraftKind {
    pub fn name(self) -> &'static str {
        match self {
            DraftKind::Eagle => "eagle",
            DraftKind::Clover2 => "clover2",
        }
    }
}

pub trait DraftHead<B: Backend> {
    fn kind(&self) -> DraftKind;

    /// The deepest tree level this head can draft (levels below the root).
    fn max_depth(&self) -> usize;

    /// The token id of each logit column this head returns, when it drafts over a reduced
    /// vocabulary (`draft_vocab.json`); `None`: columns are the full vocabulary's token ids.
    fn draft_vocab(&self) -> Option<&[u32]>;

    /// Forgets the sequence (a new prompt).
    fn reset(&mut self);

    /// Consumes newly committed positions: rows `rows` of a base forward's features, each paired
    /// with the token that follows it (for the newest, the next root). Returns the draft logits
    /// of the root's children (one row), one per draft-vocabulary column (see `draft_vocab`),
    /// left on the backend.
    fn begin(
        &mut self,
        model: &Llama<B>,
        base: &ForwardOutput<B>,
        rows: &[usize],
        next_tokens: &[u32],
    ) -> Result<Logits<B>>;

    /// Drafts one more tree level: node i has token `tokens[i]` and its parent is node
    /// `parents[i]` of the previous level (level 1: the root, index 0). `tokens` are token ids of
    /// the full vocabulary. Returns `[n, columns]` logits, one row per node, for their children.
    fn expand(&mut self, model: &Llama<B>, parents: &[usize], tokens: &[u32]) -> Result<Logits<B>>;
}

/// Loads a head of the given kind from `dir` for `base`, drafting over its own draft vocabulary
/// if it has one.
pub fn load_head<B: Backend + 'static>(
    kind: DraftKind,
    dir: &std::path::Path,
    base: &Llama<B>,
) -> Result<Box<dyn DraftHead<B>>> {
    load_head_with(kind, dir, base, DraftVocabChoice::FromHead)
}

/// Loads a head, choosing the vocabulary it drafts over.
pub fn load_head_with<B: Backend + 'static>(
    kind: DraftKind,
    dir: &std::path::Path,
    base: &Llama<B>,
    vocab: DraftVocabChoice,
) -> Result<Box<dyn DraftHead<B>>> {
    load_head_opts(kind, dir, base, DraftOptions { vocab, ..Default::default() })
}

/// How a head's matrices are kept for drafting.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DraftWeights {
    /// As the head's files store them; the draft lm_head in the base model's type.
    #[default]
    Stored,
    /// Q8_0 (8-bit values, an f16 scale per 32): about half of bf16's bytes to read per draft
    /// step, where the CPU's draft step is bound by reading weights. Drafts may differ from the
    /// stored weights' near ties; verification is untouched, so output stays exact.
    Q8_0,
}

impl std::str::FromStr for DraftWeights {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "stored" => Ok(DraftWeights::Stored),
            "q8_0" => Ok(DraftWeights::Q8_0),
            _ => Err(format!("expected `stored` or `q8_0`, got `{s}`")),
        }
    }
}

/// What `load_head_opts` may change about a head as it loads it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DraftOptions {
    pub vocab: DraftVocabChoice,
    pub weights: DraftWeights,
}

/// Loads a head with the vocabulary it drafts over and the type its matrices are kept in.
pub fn load_head_opts<B: Backend + 'static>(
    kind: DraftKind,
    dir: &std::path::Path,
    base: &Llama<B>,
    opts: DraftOptions,
) -> Result<Box<dyn DraftHead<B>>> {
    let lm_head = DraftLmHead::load(dir, base, opts.vocab)?;
    let q8 = opts.weights == DraftWeights::Q8_0;
    match kind {
        DraftKind::Eagle => {
            let head = eagle::EagleHead::load(dir, base)?.with_lm_head(lm_head);
            Ok(Box::new(if q8 { head.quantize_q8_0(base)? } else { head }))
        }
        DraftKind::Clover2 => {
            let head = clover2::Clover2Head::load(dir, base)?.with_lm_head(lm_head);
            Ok(Box::new(if q8 { head.quantize_q8_0(base)? } else { head }))
        }
    }
}

/// `[rows, 2h]` → its first and second column halves as `[rows, h]` tensors, in the stored type
/// (f32 values for a quantized one, whose blocks may straddle the halves).
pub(crate) fn split_columns(t: &HostTensor, h: usize) -> (HostTensor, HostTensor) {
    let rows = t.shape[0];
    let half = |side: usize| format!("{}[:, {}]", t.name, [":H", "H:"][side]);
    if t.dtype.is_quantized() {
        let values = t.to_f32();
        let pick = |side: usize| -> Vec<f32> {
            values.chunks_exact(2 * h).flat_map(|r| r[side * h..(side + 1) * h].iter().copied()).collect()
        };
        return (
            HostTensor::from_f32(&half(0), vec![rows, h], &pick(0)),
            HostTensor::from_f32(&half(1), vec![rows, h], &pick(1)),
        );
    }
    let width = t.dtype.bytes_for(h).expect("an unquantized type has a size per value");
    let bytes = t.bytes.as_slice();
    let pick = |side: usize| -> Vec<u8> {
        bytes.chunks_exact(2 * width).flat_map(|r| r[side * width..(side + 1) * width].iter().copied()).collect()
    };
    let tensor = |side: usize| HostTensor {
        name: half(side),
        dtype: t.dtype,
        shape: vec![rows, h],
        bytes: Bytes::Owned(std::sync::Arc::new(pick(side))),
    };
    (tensor(0), tensor(1))
}
