//! What the training loop needs from a head kind: its parameters in a fixed order, its loss
//! weights, and one teacher-forced pass over a record (forward, losses, and when training the
//! backward, which adds to the head's gradient buffers).

use crate::backend::Backend;
use crate::draft::vocab::DraftLmHead;
use crate::draft::DraftKind;
use crate::model::Llama;
use crate::rng::Rng;
use crate::train::align::Aligned;
use crate::train::losses::{HeadScale, HeadSums, LossSpec};
use crate::train::shards::Record;
use crate::train::timers::Timers;

pub enum Mode<'a> {
    /// Forward, losses and backward; EAGLE draws its input-feature noise from `noise`.
    Train { noise: &'a mut Rng },
    /// Forward and losses with top-1 agreement, no noise (the reference's test set has none).
    Eval,
}

pub trait TrainHead<B: Backend> {
    fn kind(&self) -> DraftKind;

    fn loss_spec(&self) -> &LossSpec;

    /// Replaces the loss weighting (`distill --loss-weights`).
    fn set_loss_spec(&mut self, spec: LossSpec);

    /// Replaces the forward's weights (built from the parameters, in their order).
    fn set_weights(&mut self, weights: Vec<B::Weight>);

    /// The gradient buffers, in parameter order.
    fn grads(&mut self) -> Vec<&mut B::Buf>;

    /// One record, truncated already, and its alignment (`Aligned::new(rec, ..)`, with or
    /// without a label mask): returns the loss sums per head under `scales`, the lm_head losses
    /// over `lm`'s vocabulary. In `Mode::Train` the gradients of those sums are added to the
    /// gradient buffers.
    #[allow(clippy::too_many_arguments)]
    fn pass(
        &mut self,
        b: &B,
        base: &Llama<B>,
        lm: &DraftLmHead<B>,
        rec: &Record,
        a: &Aligned,
        scales: &[HeadScale],
        mode: Mode,
        timers: &mut Timers,
    ) -> Vec<HeadSums>;
}
