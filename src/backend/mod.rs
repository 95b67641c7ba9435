//! The op set every device implements. Model, draft and training code are generic over
//! `B: Backend` and never branch on the device; the CPU backend is the reference.
//!
//! Conventions: activations are row-major f32 buffers (`rows × width`); weights keep the dtype
//! they were stored in (f32, bf16, f16) and are used as `[out, in]` matrices (y = x · Wᵀ), like
//! PyTorch's `nn.Linear`; every reduction accumulates in f32.

pub mod cpu;
pub mod cuda;

use crate::error::Result;
use crate::weights::HostTensor;

/// AdamW hyper-parameters with PyTorch's semantics (`torch.optim.AdamW`): decoupled weight decay
/// p ← p − lr·wd·p, then the bias-corrected Adam step. The training ops are in the trait's
/// "Training" block.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamW {
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
}

impl AdamW {
    /// The step's two bias-corrected scalars, lr / (1 − β₁ᵗ) and √(1 − β₂ᵗ), formed in f64 and
    /// rounded once: every backend takes them from here, so their updates agree to the bit.
    pub fn bias_corrections(&self, step: u64) -> (f32, f32) {
        assert!(step >= 1, "adamw: steps count from 1");
        let t = step as f64;
        let step_size = (self.lr as f64 / (1.0 - (self.beta1 as f64).powf(t))) as f32;
        let bc2_sqrt = (1.0 - (self.beta2 as f64).powf(t)).sqrt() as f32;
        (step_size, bc2_sqrt)
    }
}

/// Which cached keys a block of `rows` new query rows (written at slots `past..past + rows`) may
/// attend to.
#[derive(Clone, Copy, Debug)]
pub enum AttnMask<'a> {
    /// Every slot before the row's own, and the row itself (prefill, decode, chains).
    Causal,
    /// Slots before `first_key` are all visible (the committed prefix); slot `first_key + j` is
    /// visible to row i when `bits[i * width + j] != 0`, `width = past + rows - first_key`
    /// (tree verification: `first_key = past`; tree drafting also masks earlier tree levels).
    Tree { bits: &'a [u8], first_key: usize },
}

/// Head layout shared by the attention ops.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttnShape {
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
}

/// A per-layer key or value cache is `[n_kv_heads, capacity, head_dim]`: one contiguous run of
/// positions per head, so appending and compacting touch contiguous rows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KvLayout {
    pub n_kv_heads: usize,
    pub capacity: usize,
    pub head_dim: usize,
}

/// The parameters of one Clover attention-decoder cell (clover2.md §3), generic over what holds
/// them: `W = Backend::Weight` for the weights, `W = Backend::Buf` for their f32 gradients, laid
/// out exactly like the weights. `gain`, biases `[H]`; `wq`, `wk`, `wv` `[H, H]` (`[out, in]`).
#[derive(Clone, Debug)]
pub struct CloverCellParams<W> {
    /// RMSNorm gain applied to the state before the query projection.
    pub gain: W,
    pub wq: W,
    pub bq: W,
    pub wk: W,
    pub bk: W,
    pub wv: W,
    pub bv: W,
}

impl<W> CloverCellParams<W> {
    /// The cell with its three matrices replaced by `f` of them (gain and biases kept).
    pub fn map_matrices(self, f: impl Fn(&W) -> Result<W>) -> Result<Self> {
        Ok(CloverCellParams { wq: f(&self.wq)?, wk: f(&self.wk)?, wv: f(&self.wv)?, ..self })
    }
}

pub trait Backend: Send + Sync {
    /// An f32 activation buffer on the device.
    type Buf: Send + Sync;
    /// A weight tensor on the device, in its stored dtype.
    type Weight: Send + Sync;

    fn name(&self) -> String;

    /// The most rows a `matmul` may have and still give every row the bits it gets alone (`None`:
    /// any number). Tree verification stays within it, so that speculative greedy output equals
    /// plain greedy output.
    fn row_exact_matmul_rows(&self) -> Option<usize> {
        None
    }

    /// The largest attention head size this backend's kernels take (`None`: any). A model with
    /// larger heads is refused when it loads rather than at its first attention call.
    fn max_head_dim(&self) -> Option<usize> {
        None
    }

    /// Waits until every op issued so far has run. Ops on a device run after the call that
    /// issues them returns, so a phase timed on the host ends with this (the CPU runs ops in the
    /// call: nothing to wait for).
    fn synchronize(&self) {}

    /// Makes a weight usable by the device. The CPU backend keeps memory-mapped bytes in place.
    fn weight(&self, tensor: HostTensor) -> Result<Self::Weight>;
    fn zeros(&self, len: usize) -> Self::Buf;
    fn upload(&self, data: &[f32]) -> Self::Buf;
    fn download(&self, buf: &Self::Buf) -> Vec<f32>;
    /// Copies rows `[start, start + rows)` of a `? × width` buffer into a new buffer.
    fn slice_rows(&self, buf: &Self::Buf, width: usize, start: usize, rows: usize) -> Self::Buf;
    /// `out[i] = buf[rows[i]]` for a `? × width` buffer.
    fn gather_rows(&self, buf: &Self::Buf, width: usize, rows: &[usize]) -> Self::Buf;

    /// `out[r] = table[ids[r]]` as f32.
    fn embedding(&self, table: &Self::Weight, ids: &[u32], out: &mut Self::Buf);
    /// A new weight of rows `ids` of `w` (`[n, k]` → `[ids.len(), k]`) in w's own dtype: the
    /// lm_head restricted to a reduced draft vocabulary.
    fn gather_weight_rows(&self, w: &Self::Weight, ids: &[u32], name: &str) -> Result<Self::Weight>;
    /// A copy of the matrix `w` stored as Q8_0 (`HostTensor::to_q8_0`): a draft head's matrices
    /// under `--draft-weights q8_0`. A backend without a Q8_0 matmul refuses.
    fn quantize_q8_0(&self, w: &Self::Weight) -> Result<Self::Weight>;
    /// out[rows, n] = x[rows, k] · wᵀ with w `[n, k]`.
    fn matmul(&self, x: &Self::Buf, rows: usize, w: &Self::Weight, out: &mut Self::Buf);
    /// `matmul` of the same `x` by each weight into its output (a layer's q, k and v): one
    /// launch of the work where the backend can, the same values as one `matmul` each.
    fn matmul_group(&self, x: &Self::Buf, rows: usize, parts: &mut [(&Self::Weight, &mut Self::Buf)]) {
        for (w, out) in parts.iter_mut() {
            self.matmul(x, rows, w, out);
        }
    }
    /// `x[r] += bias` for every row.
    fn add_bias(&self, x: &mut Self::Buf, rows: usize, bias: &Self::Weight);
    /// x += y element-wise.
    fn add(&self, x: &mut Self::Buf, y: &Self::Buf);
    /// `out[r] = x[r] / rms(x[r]) · gain`.
    fn rmsnorm(&self, x: &Self::Buf, rows: usize, gain: &Self::Weight, eps: f32, out: &mut Self::Buf);
    /// Rotate-half RoPE in place on `rows × n_heads × head_dim`; `cos_sin` is `rows × head_dim`
    /// (cos of the head_dim/2 frequencies, then their sin), built by the caller per position.
    fn rope(&self, x: &mut Self::Buf, rows: usize, n_heads: usize, head_dim: usize, cos_sin: &Self::Buf);
    /// out = silu(gate) ⊙ up.
    fn swiglu(&self, gate: &Self::Buf, up: &Self::Buf, out: &mut Self::Buf);

    // ---- Training: backward ops, losses, optimiser (distillation of the draft heads) ----------
    //
    // Each backward sits beside its forward and ADDS its gradients into the buffers it is given
    // (zero them before the first use), so an activation that feeds several consumers, or a
    // weight shared by several heads, sums its gradients without temporaries. The losses WRITE
    // their gradient. Trainable parameters are f32; their gradients and Adam moments are f32
    // buffers laid out like the weight (`[out, in]` for matrices).

    /// x ← 0.
    fn zero(&self, x: &mut Self::Buf);
    /// A weight holding the values of an f32 buffer laid out as `shape` (`[n]` or `[out, in]`):
    /// how trained parameters, kept as f32 buffers that the optimiser updates in place, reach the
    /// forward ops, which read weights. Called once per parameter and optimiser step. The CPU
    /// backend copies the values into an owned f32 tensor (a copy of the head's parameters per
    /// step, negligible beside the step's GEMMs); a device backend may wrap the buffer instead.
    fn weight_from_buf(&self, name: &str, shape: &[usize], buf: &Self::Buf) -> Result<Self::Weight>;
    /// Backward of `gather_rows`: `dst[rows[i]] += src[i]` for a `? × width` dst (a row listed
    /// twice receives both).
    fn scatter_add_rows(&self, dst: &mut Self::Buf, width: usize, rows: &[usize], src: &Self::Buf);
    /// Backward of `rmsnorm` for `rows` rows: dx += dL/dx, d_gain += dL/dgain (summed over rows),
    /// for d_out = dL/dout. The row statistics are recomputed from x.
    #[allow(clippy::too_many_arguments)]
    fn rmsnorm_backward(
        &self,
        x: &Self::Buf,
        rows: usize,
        gain: &Self::Weight,
        eps: f32,
        d_out: &Self::Buf,
        dx: &mut Self::Buf,
        d_gain: &mut Self::Buf,
    );
    /// Backward of `rope`, in place: turns dL/d(rotated x) into dL/dx (the inverse rotation).
    fn rope_backward(&self, dx: &mut Self::Buf, rows: usize, n_heads: usize, head_dim: usize, cos_sin: &Self::Buf);
    /// Backward of `swiglu`: d_gate += dL/dgate, d_up += dL/dup.
    fn swiglu_backward(
        &self,
        gate: &Self::Buf,
        up: &Self::Buf,
        d_out: &Self::Buf,
        d_gate: &mut Self::Buf,
        d_up: &mut Self::Buf,
    );
    /// Backward of `matmul` (y[rows, n] = x[rows, k]·wᵀ, w `[n, k]`) for dy = dL/dy: when given,
    /// dx += dy·w (any weight dtype: the frozen bf16 lm_head needs only this) and
    /// dw += dyᵀ·x (an f32 `[n, k]` buffer; `x` is read only for this).
    fn matmul_backward(
        &self,
        x: &Self::Buf,
        dy: &Self::Buf,
        rows: usize,
        w: &Self::Weight,
        dx: Option<&mut Self::Buf>,
        dw: Option<&mut Self::Buf>,
    );
    /// Backward of `add_bias`: d_bias += Σ over `rows` rows of dy.
    fn bias_backward(&self, dy: &Self::Buf, rows: usize, d_bias: &mut Self::Buf);
    /// Backward of causal self-attention over a whole sequence with no cache (teacher-forced
    /// training: the `rows` queries and keys are the same positions, row i sees rows 0..=i).
    /// q `[rows, n_heads·d]`, k and v `[rows, n_kv_heads·d]` row-major, q and k after RoPE, as the
    /// forward used them; dq, dk, dv += the gradients for d_out = dL/d(attention output).
    #[allow(clippy::too_many_arguments)]
    fn attention_backward(
        &self,
        q: &Self::Buf,
        k: &Self::Buf,
        v: &Self::Buf,
        shape: AttnShape,
        rows: usize,
        d_out: &Self::Buf,
        dq: &mut Self::Buf,
        dk: &mut Self::Buf,
        dv: &mut Self::Buf,
    );
    /// Soft cross-entropy against the teacher p = softmax(teacher_logits), one row per entry of
    /// `row_weight` (mask × denominator × head factor): returns Σ_r w_r·(−Σ_v p_v·log_softmax(z)_v)
    /// and writes d_logits = w_r·(softmax(z) − p). f32 with the row max subtracted.
    fn soft_cross_entropy(
        &self,
        logits: &Self::Buf,
        teacher_logits: &Self::Buf,
        row_weight: &[f32],
        d_logits: &mut Self::Buf,
    ) -> f32;
    /// SmoothL1 (β = 1) of pred − target averaged over each row, one row per entry of
    /// `row_weight`: returns Σ_r w_r·mean(SmoothL1) and writes d_pred = w_r·clip(d, −1, 1)/H.
    fn smooth_l1(&self, pred: &Self::Buf, target: &Self::Buf, row_weight: &[f32], d_pred: &mut Self::Buf) -> f32;
    /// Clamps every element of x to [−limit, limit] (gradient clipping by value).
    fn clip_by_value(&self, x: &mut Self::Buf, limit: f32);
    /// One AdamW step (PyTorch semantics, `step` counts from 1) of an f32 parameter from its
    /// gradient, updating the first and second moments m and v.
    fn adamw(
        &self,
        param: &mut Self::Buf,
        grad: &Self::Buf,
        m: &mut Self::Buf,
        v: &mut Self::Buf,
        hp: &AdamW,
        step: u64,
    );
    // ---- end of the training block ------------------------------------------------------------

    /// The `k` largest entries of each of `rows` rows of width `width`, as column indices, best
    /// first, ties to the lower column and NaN ranked as −inf (`sampling::top_k_indices`):
    /// `rows × min(k, width)` indices. k = 1 is each row's argmax. Greedy decoding, greedy
    /// verification and static-tree drafting need nothing else, so only the indices leave the device.
    fn top_k_rows(&self, x: &Self::Buf, rows: usize, width: usize, k: usize) -> Vec<u32>;

    /// One draw from each row of softmax(logits / temperature), temperature > 0, without top-k or
    /// top-p (`sampling::process`, then `sampling::sample_at` with `uniforms[r]` ∈ [0, 1) for
    /// row r): plain decoding at T > 0 brings one index per step to the host, not the row.
    fn sample_rows(
        &self,
        logits: &Self::Buf,
        rows: usize,
        width: usize,
        temperature: f32,
        uniforms: &[f64],
    ) -> Vec<u32>;

    /// Writes `rows` new key (or value) rows `[rows, n_kv_heads·head_dim]` at slots `start..`.
    fn kv_write(&self, cache: &mut Self::Buf, layout: KvLayout, new: &Self::Buf, rows: usize, start: usize);
    /// Moves cache slot `from` to slot `to` for every head, in order (KV compaction).
    fn kv_move(&self, cache: &mut Self::Buf, layout: KvLayout, moves: &[(usize, usize)]);
    /// Scaled-dot-product attention of `rows` new queries `[rows, n_heads·head_dim]` over the
    /// cache, whose slots `0..past + rows` are filled (the new rows last). GQA maps query head h
    /// to KV head h / (n_heads / n_kv_heads).
    #[allow(clippy::too_many_arguments)]
    fn attention(
        &self,
        q: &Self::Buf,
        k_cache: &Self::Buf,
        v_cache: &Self::Buf,
        layout: KvLayout,
        shape: AttnShape,
        rows: usize,
        past: usize,
        mask: AttnMask,
        out: &mut Self::Buf,
    );

    /// The Clover attention-decoder cell for `rows` independent rows of width H (clover2.md §3):
    /// `out = x + concat_h(cos(q_h, k_h) · v_h)` with `q = Wq·RMSNorm_gain(x) + bq`,
    /// `k = Wk·y + bk`, `v = Wv·y + bv`, split into `n_heads` heads of H / n_heads, and
    /// `cos(q, k) = <q, k> / (max(|q|, eps) · max(|k|, eps))`; `eps` also serves the RMSNorm.
    #[allow(clippy::too_many_arguments)]
    fn clover_cell(
        &self,
        cell: &CloverCellParams<Self::Weight>,
        n_heads: usize,
        eps: f32,
        x: &Self::Buf,
        y: &Self::Buf,
        rows: usize,
        out: &mut Self::Buf,
    );

    /// The cell's backward: given `d_out` = dL/dout, **adds** dL/dx to `dx`, dL/dy to `dy` and
    /// the parameter gradients to `grads` (accumulating, so a cell shared by several depths, or a
    /// state that feeds several consumers, sums its gradients without extra buffers; zero them
    /// before the first use). `dy` is optional because training never needs it: y is a row of the
    /// frozen embedding, and skipping it saves two of the backward's GEMMs. The forward's
    /// intermediates (q, k, v, norms) are recomputed from `x` and `y`, not saved by the forward.
    #[allow(clippy::too_many_arguments)]
    fn clover_cell_backward(
        &self,
        cell: &CloverCellParams<Self::Weight>,
        n_heads: usize,
        eps: f32,
        x: &Self::Buf,
        y: &Self::Buf,
        rows: usize,
        d_out: &Self::Buf,
        dx: &mut Self::Buf,
        dy: Option<&mut Self::Buf>,
        grads: &mut CloverCellParams<Self::Buf>,
    );
}
