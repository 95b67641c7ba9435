//! The decoding method under measurement: plain decoding or a draft head with a tree. `eval` and
//! `bench` time every method through this one call, so their numbers are comparable.

use std::time::Instant;

use crate::backend::Backend;
use crate::draft::DraftHead;
use crate::error::Result;
use crate::model::Llama;
use crate::spec::drafting::TreeSpec;
use crate::spec::engine::{generate_plain, generate_speculative, GenerationConfig, StepRecord};

// A handful exist per run, so the size of the speculative variant does not matter.
#[allow(clippy::large_enum_variant)]
pub enum Decoder<B: Backend> {
    Plain,
    Speculative { head: Box<dyn DraftHead<B>>, tree: TreeSpec },
}

/// One generation as measured.
pub struct Decoded {
    pub ids: Vec<u32>,
    /// Around the whole generate call, prefill included.
    pub wall_secs: f64,
    pub steps: Vec<StepRecord>,
}

impl<B: Backend> Decoder<B> {
    pub fn name(&self) -> &'static str {
        match self {
            Decoder::Plain => "plain",
            Decoder::Speculative { head, .. } => head.kind().name(),
        }
    }

    /// The method with the settings that shape its output and τ: head, draft vocabulary, tree.
    pub fn describe(&self) -> String {
        let Decoder::Speculative { head, tree } = self else { return "plain decoding".into() };
        let vocab = head.draft_vocab().map_or("full".to_string(), |ids| ids.len().to_string());
        let tree = match tree {
            TreeSpec::Static(_) => format!("static tree of {} nodes, depth {}", tree.max_nodes(), tree.max_depth()),
            TreeSpec::Clover(p) => format!("clover tree, budget {}, top-p {}, ratio {}", p.budget, p.top_p, p.ratio),
            TreeSpec::Eagle2(p) => format!("eagle2 tree, budget {}", p.total_tokens.saturating_sub(1)),
        };
        format!("{} head, draft vocabulary {vocab}, {tree}", head.kind().name())
    }

    pub fn decode(&mut self, model: &Llama<B>, prompt: &[u32], cfg: &GenerationConfig) -> Result<Decoded> {
        let t = Instant::now();
        let (ids, stats) = match self {
            Decoder::Plain => generate_plain(model, prompt, cfg, |_| {})?,
            Decoder::Speculative { head, tree } => {
                let (ids, stats) = generate_speculative(model, head.as_mut(), tree, prompt, cfg, |_| {})?;
                (ids, stats.base)
            }
        };
        Ok(Decoded { ids, wall_secs: t.elapsed().as_secs_f64(), steps: stats.step_log })
    }
}
