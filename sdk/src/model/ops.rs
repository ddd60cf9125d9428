//! The operations a backend provides so that every architecture in [`crate::model`] runs on
//! it, and the contract they keep.
//!
//! # The contract
//! - **Resources are allocated up front.** Weights when the model loads; activations, the KV
//!   cache and the per-context execution state ([`Ops::Exec`]: a stream, a workspace, captured
//!   graphs...) when a context is created, sized from its parameters ([`ExecSpec`]). A step
//!   then only changes the rows in use of each activation ([`Ops::set_rows`]): buffers keep
//!   their addresses from step to step, so a GPU backend can capture a decode step once and
//!   replay it. Allocation is fallible: out of memory is an error, never a panic.
//! - **Steps are bracketed.** The model code calls [`Ops::begin`] before the first operation
//!   of a `forward` (with everything the step will read from the host) and [`Ops::end`] after
//!   the last one; a GPU backend synchronizes its stream or captures/replays a graph there.
//! - **Rows are independent.** Activations are 2-D f32 tensors `[rows × cols]`, row-major. The
//!   result for a row depends only on that row's inputs (and, for attention, its sequence's
//!   cache): not on the other rows, their number or their order, bit for bit. A kernel that
//!   takes another path for one row than for many must compute the same bits either way; the
//!   scheduler relies on it to give a request the same tokens whatever else is in the batch.
//! - **Accuracy** is checked against the plain f32 reference ([`crate::model::reference`]) by
//!   the per-op conformance check ([`crate::conformance::ops`]), whose tolerances are stated
//!   there.

use crate::backend::{BackendError, Result, RowOutput};
use crate::gguf::TensorInfo;

fn unsupported(op: &str) -> BackendError {
    BackendError::unsupported(format!("this backend does not implement {op}"))
}

/// Activation function of a gated feed-forward block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    /// `x * sigmoid(x)` (llama, qwen2).
    Silu,
    /// GELU, tanh approximation (gemma).
    GeluTanh,
    /// gpt-oss's clamped SwiGLU (llama.cpp's `swiglu_oai`, alpha 1.702, limit 7):
    /// `g = min(gate, 7)`, `u = clamp(up, -7, 7)`, `gate = g * sigmoid(1.702 * g) * (u + 1)`.
    SwigluOai,
}

/// `alpha` of [`Activation::SwigluOai`].
pub const SWIGLU_OAI_ALPHA: f32 = 1.702;
/// `limit` of [`Activation::SwigluOai`].
pub const SWIGLU_OAI_LIMIT: f32 = 7.0;

/// Rotary embedding style.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RopeStyle {
    /// Rotate adjacent pairs `(2i, 2i+1)` (llama as stored in GGUF).
    Normal,
    /// Rotate `(i, i + n_rot/2)` (GPT-NeoX style: qwen2, gemma).
    Neox,
}

/// Rotary embedding parameters.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Rope {
    /// Pairing style.
    pub style: RopeStyle,
    /// Dimensions rotated at the start of each head (≤ head_dim).
    pub n_rot: usize,
    /// θ base.
    pub base: f32,
    /// Linear position scale (1 / scaling factor).
    pub freq_scale: f32,
    /// YaRN scaling, as ggml's `rope_yarn` applies it (`None`: plain rotation, the
    /// position times `freq_scale`).
    pub yarn: Option<Yarn>,
}

/// YaRN parameters of a [`Rope`], with ggml's semantics. Pair `i` (of `n_rot / 2`) rotates by
/// `theta = interp * (1 - mix) + extrap * mix`, where `extrap = pos * base^(-2i / n_rot)`,
/// `interp = freq_scale * extrap` and `mix = ext_factor * (1 - clamp((i - low) / max(0.001,
/// high - low), 0, 1))`; `[low, high]` are [`Yarn::corr_dims`]. Cosine and sine are multiplied
/// by `attn_factor * (1 + 0.1 * ln(1 / freq_scale))` (only `attn_factor` when `ext_factor` is
/// 0).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Yarn {
    /// Weight of the extrapolated angle in the ramp (1 for YaRN models).
    pub ext_factor: f32,
    /// Multiplier of the rotated values' magnitude (before YaRN's own `mscale`).
    pub attn_factor: f32,
    /// Rotations at which the ramp starts (32).
    pub beta_fast: f32,
    /// Rotations at which the ramp ends (1).
    pub beta_slow: f32,
    /// The context the model was trained at before extension.
    pub n_ctx_orig: usize,
}

/// YaRN's per-call constants as ggml's `rope_yarn` uses them, in f32: the ramp's start and
/// width over pair indices, and the magnitude factor of cosine and sine.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct YarnRamp {
    /// Weight of the extrapolated angle ([`Yarn::ext_factor`]).
    pub ext_factor: f32,
    /// First pair of the ramp.
    pub low: f32,
    /// Ramp width in pairs (at least 0.001).
    pub span: f32,
    /// Multiplier of cosine and sine.
    pub mscale: f32,
}

impl Yarn {
    /// The ramp and magnitude of a rotation of `n_rot` dimensions with `base` and `freq_scale`.
    pub fn ramp(&self, n_rot: usize, base: f32, freq_scale: f32) -> YarnRamp {
        let [low, high] = self.corr_dims(n_rot, base);
        let mscale = if self.ext_factor != 0.0 {
            self.attn_factor * (1.0 + 0.1 * (1.0 / freq_scale).ln())
        } else {
            self.attn_factor
        };
        YarnRamp {
            ext_factor: self.ext_factor,
            low,
            span: (high - low).max(0.001),
            mscale,
        }
    }

    /// The ramp's first and last pair index, as ggml's `ggml_rope_yarn_corr_dims` computes
    /// them in f32 (floored and ceiled: HF's `truncate: false` of gpt-oss would skip that).
    pub fn corr_dims(&self, n_rot: usize, base: f32) -> [f32; 2] {
        let dim = |rot: f32| {
            n_rot as f32 * (self.n_ctx_orig as f32 / (rot * 2.0 * std::f32::consts::PI)).ln()
                / (2.0 * base.ln())
        };
        let start = dim(self.beta_fast).floor();
        let end = dim(self.beta_slow).ceil();
        [start.max(0.0), end.min(n_rot as f32 - 1.0)]
    }
}

/// Shape of one attention layer's KV cache entries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KvShape {
    /// KV heads.
    pub n_head_kv: usize,
    /// Key head size.
    pub head_dim_k: usize,
    /// Value head size.
    pub head_dim_v: usize,
    /// The layer's sliding window, if any: queries never look further back than this.
    pub window: Option<usize>,
    /// Positions of each sequence the layer's cache must hold: the context size for a global
    /// layer, `min(n_ctx, window + most rows of a step)` for a window layer. A backend may keep
    /// only these (a ring: position `p` in cell `p % cells`); the model code never rewinds a
    /// sequence further than the ring allows ([`kv_rewind_limit`]).
    pub cells: usize,
}

/// How far a sequence of a context whose layers have `shapes` can be rewound (truncated or
/// copied at a shorter length) and still continue: positions kept past the last window.
/// `None`: as far as wanted (no window layer keeps less than the context).
pub fn kv_rewind_limit(shapes: &[KvShape], n_ctx: usize) -> Option<usize> {
    shapes
        .iter()
        .filter_map(|s| match s.window {
            Some(w) if s.cells < n_ctx => Some(s.cells.saturating_sub(w)),
            _ => None,
        })
        .min()
}

/// Parameters of one attention call.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Attention<'a> {
    /// Query heads.
    pub n_head: usize,
    /// KV heads (query head `h` uses KV head `h / (n_head / n_head_kv)`).
    pub n_head_kv: usize,
    /// Key (and query) head size.
    pub head_dim_k: usize,
    /// Value head size.
    pub head_dim_v: usize,
    /// Multiplier of `q·k`.
    pub scale: f32,
    /// Sliding window: a query at position `p` sees keys at positions `> p - window`.
    pub window: Option<usize>,
    /// Soft-capping of the scores (`c * tanh(s / c)`).
    pub softcap: Option<f32>,
    /// Attention sinks: one learned logit per query head that joins the softmax denominator
    /// (`+ exp(sink - max)`) and contributes no value (gpt-oss). The slice belongs to the model
    /// and keeps its address for the model's lifetime, so a device backend may upload it once.
    pub sinks: Option<&'a [f32]>,
}

/// Where each batch row goes: its sequence and position.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RowPos {
    /// Sequence id.
    pub seq: usize,
    /// Position in the sequence.
    pub pos: usize,
}

/// The sizes a context's execution state must serve, known when the context is created.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExecSpec {
    /// Most rows per step.
    pub n_batch_max: usize,
    /// Most rows of one logits activation (the output head runs in chunks of this many rows).
    pub n_logit_rows: usize,
    /// Columns of a logits row.
    pub n_vocab: usize,
    /// Widest activation (columns).
    pub max_cols: usize,
    /// Widest input or output row of one expert in [`Ops::matmul_experts`] (0: the model has
    /// no mixture-of-experts block); a backend sizes its expert scratch from it.
    pub expert_cols: usize,
}

/// What one step will read from the host, given to [`Ops::begin`]. The slices later passed to
/// `embed`, `rope` and `attention` within the step are these (or row subsets of them).
#[derive(Clone, Copy, Debug)]
pub struct Step<'a> {
    /// Token ids, one per row.
    pub tokens: &'a [i32],
    /// Positions, one per row.
    pub positions: &'a [i32],
    /// Sequence and position of each row.
    pub rows: &'a [RowPos],
    /// Output rows of the step.
    pub n_outputs: usize,
}

/// Backend operations used by the model code. Implement these and every architecture of the SDK
/// runs on your backend (see `backends/cpu` for an implementation, and [`crate::model::reference`]
/// for the plain f32 one). Read the module documentation for the contract.
pub trait Ops: Send + Sync + Sized + 'static {
    /// A weight tensor as the backend stores it (a view into the mapped file, or device memory).
    type Weight: Send + Sync;
    /// A 2-D f32 activation tensor with a fixed capacity of rows.
    type Act: Send;
    /// The KV cache of one context: every layer, every sequence.
    type Kv: Send;
    /// Per-context execution state: scratch, streams, captured graphs.
    type Exec: Send;

    /// Prepares a weight tensor (zero-copy views are fine: tensor data outlives the model).
    fn weight(&self, t: &TensorInfo<'static>) -> Result<Self::Weight>;
    /// Bytes the weight takes.
    fn weight_bytes(&self, w: &Self::Weight) -> u64;
    /// A new activation with room for `rows × cols` (rows in use: `rows`; contents
    /// unspecified).
    fn act(&self, rows: usize, cols: usize) -> Result<Self::Act>;
    /// Sets the rows in use (at most the capacity); the buffer does not move.
    fn set_rows(&self, x: &mut Self::Act, rows: usize) -> Result<()>;
    /// Rows in use and columns of an activation.
    fn act_shape(&self, x: &Self::Act) -> (usize, usize);
    /// Bytes the activation reserves.
    fn act_bytes(&self, x: &Self::Act) -> u64;
    /// Allocates a KV cache for `layers`, `n_seq` sequences of `n_ctx` positions.
    fn kv_alloc(&self, layers: &[KvShape], n_ctx: usize, n_seq: usize) -> Result<Self::Kv>;
    /// Bytes of the cache.
    fn kv_bytes(&self, kv: &Self::Kv) -> u64;
    /// The execution state of a new context.
    fn exec(&self, spec: &ExecSpec) -> Result<Self::Exec>;
    /// Bytes the execution state reserves.
    fn exec_bytes(&self, ex: &Self::Exec) -> u64;

    /// Called before the first operation of a step.
    fn begin(&self, ex: &mut Self::Exec, step: &Step<'_>) -> Result<()> {
        let _ = (ex, step);
        Ok(())
    }
    /// Called after the last operation of a step (also after a failed one).
    fn end(&self, ex: &mut Self::Exec) -> Result<()> {
        let _ = ex;
        Ok(())
    }
    /// Called when an operation of the step failed, before [`Ops::end`]: a backend that
    /// records steps (to replay them, as CUDA graphs) discards the partial recording.
    fn abort(&self, ex: &mut Self::Exec) {
        let _ = ex;
    }

    /// Copies `data` (`rows × cols` floats of the rows in use) into `x`.
    fn write(&self, ex: &mut Self::Exec, x: &mut Self::Act, data: &[f32]) -> Result<()>;
    /// Copies the rows in use of `x` to host memory.
    fn read(&self, ex: &mut Self::Exec, x: &Self::Act, out: &mut [f32]) -> Result<()>;
    /// `out[i] = table[ids[i]]` (embedding lookup from a possibly quantized table).
    fn embed(
        &self,
        ex: &mut Self::Exec,
        table: &Self::Weight,
        ids: &[i32],
        out: &mut Self::Act,
    ) -> Result<()>;
    /// Row-wise RMS norm over groups of `w.len()` columns (a full row, or per head for QK-norm),
    /// times `w`: `out = x / sqrt(mean(x²) + eps) * w`.
    fn rms_norm(
        &self,
        ex: &mut Self::Exec,
        x: &Self::Act,
        w: &Self::Weight,
        eps: f32,
        out: &mut Self::Act,
    ) -> Result<()>;
    /// `out[i] = W · x[i]` for a weight of shape `[out_features, in_features]`.
    fn matmul(
        &self,
        ex: &mut Self::Exec,
        x: &Self::Act,
        w: &Self::Weight,
        out: &mut Self::Act,
    ) -> Result<()>;
    /// Adds a bias vector to every row.
    fn add_bias(&self, ex: &mut Self::Exec, x: &mut Self::Act, b: &Self::Weight) -> Result<()>;
    /// `x += y`.
    fn add(&self, ex: &mut Self::Exec, x: &mut Self::Act, y: &Self::Act) -> Result<()>;
    /// `x *= s`.
    fn scale(&self, ex: &mut Self::Exec, x: &mut Self::Act, s: f32) -> Result<()>;
    /// Applies rotary embeddings to every head (`head_dim` columns) of every row at `positions`.
    fn rope(
        &self,
        ex: &mut Self::Exec,
        x: &mut Self::Act,
        positions: &[i32],
        head_dim: usize,
        rope: &Rope,
    ) -> Result<()>;
    /// `gate = act(gate) * up` ([`Activation::SwigluOai`] defines its own product with `up`).
    fn glu(
        &self,
        ex: &mut Self::Exec,
        gate: &mut Self::Act,
        up: &Self::Act,
        act: Activation,
    ) -> Result<()>;
    /// `out = W · x (+ b)`: a projection with an optional bias, in one step where the backend
    /// can (the default is [`Ops::matmul`] then [`Ops::add_bias`]).
    fn matmul_bias(
        &self,
        ex: &mut Self::Exec,
        x: &Self::Act,
        w: &Self::Weight,
        b: Option<&Self::Weight>,
        out: &mut Self::Act,
    ) -> Result<()> {
        self.matmul(ex, x, w, out)?;
        match b {
            Some(b) => self.add_bias(ex, out, b),
            None => Ok(()),
        }
    }
    /// `out[i] = W[i] · x (+ b[i])` for the three projections of one input (queries, keys,
    /// values) in one step where the backend can; each result must equal what
    /// [`Ops::matmul_bias`] gives (the default makes those three calls).
    fn matmul_qkv(
        &self,
        ex: &mut Self::Exec,
        x: &Self::Act,
        w: [&Self::Weight; 3],
        b: [Option<&Self::Weight>; 3],
        out: [&mut Self::Act; 3],
    ) -> Result<()> {
        for ((w, b), o) in w.into_iter().zip(b).zip(out) {
            self.matmul_bias(ex, x, w, b, o)?;
        }
        Ok(())
    }
    /// [`Ops::rms_norm`] of `x` (weight `norm`, full rows) followed by [`Ops::matmul_qkv`] of
    /// the result; a backend may fuse the norm into the projections. `h` (shaped like `x`) is
    /// scratch: its contents afterwards are unspecified.
    #[allow(clippy::too_many_arguments)]
    fn norm_matmul_qkv(
        &self,
        ex: &mut Self::Exec,
        x: &Self::Act,
        norm: &Self::Weight,
        eps: f32,
        h: &mut Self::Act,
        w: [&Self::Weight; 3],
        b: [Option<&Self::Weight>; 3],
        out: [&mut Self::Act; 3],
    ) -> Result<()> {
        self.rms_norm(ex, x, norm, eps, h)?;
        self.matmul_qkv(ex, h, w, b, out)
    }
    /// [`Ops::rms_norm`] of `x` (weight `norm`, full rows) followed by [`Ops::matmul_glu`] of
    /// the result; a backend may fuse the norm into the projections. `h` (shaped like `x`) is
    /// scratch: its contents afterwards are unspecified.
    #[allow(clippy::too_many_arguments)]
    fn norm_matmul_glu(
        &self,
        ex: &mut Self::Exec,
        x: &Self::Act,
        norm: &Self::Weight,
        eps: f32,
        h: &mut Self::Act,
        gate: &Self::Weight,
        up: &Self::Weight,
        act: Activation,
        out: &mut Self::Act,
        tmp: &mut Self::Act,
    ) -> Result<()> {
        self.rms_norm(ex, x, norm, eps, h)?;
        self.matmul_glu(ex, h, gate, up, act, out, tmp)
    }
    /// `acc += W · x (+ b)`: a projection added to the residual stream. `tmp` (shaped like
    /// `acc`) is scratch for the default, which is [`Ops::matmul_bias`] into `tmp` then
    /// [`Ops::add`]; a backend may fuse the sum into the matmul and leave `tmp` unused.
    #[allow(clippy::too_many_arguments)]
    fn matmul_add(
        &self,
        ex: &mut Self::Exec,
        x: &Self::Act,
        w: &Self::Weight,
        b: Option<&Self::Weight>,
        acc: &mut Self::Act,
        tmp: &mut Self::Act,
    ) -> Result<()> {
        self.matmul_bias(ex, x, w, b, tmp)?;
        self.add(ex, acc, tmp)
    }
    /// `out = act(W_gate · x) * (W_up · x)` (as [`Ops::glu`] defines it). `tmp` (shaped like
    /// `out`) is scratch for the default: the two matmuls, then [`Ops::glu`].
    #[allow(clippy::too_many_arguments)]
    fn matmul_glu(
        &self,
        ex: &mut Self::Exec,
        x: &Self::Act,
        gate: &Self::Weight,
        up: &Self::Weight,
        act: Activation,
        out: &mut Self::Act,
        tmp: &mut Self::Act,
    ) -> Result<()> {
        self.matmul(ex, x, gate, out)?;
        self.matmul(ex, x, up, tmp)?;
        self.glu(ex, out, tmp, act)
    }
    /// [`Ops::rope`] on the queries and the keys of a step (same positions and parameters).
    fn rope_qk(
        &self,
        ex: &mut Self::Exec,
        q: &mut Self::Act,
        k: &mut Self::Act,
        positions: &[i32],
        head_dim: usize,
        rope: &Rope,
    ) -> Result<()> {
        self.rope(ex, q, positions, head_dim, rope)?;
        self.rope(ex, k, positions, head_dim, rope)
    }
    /// Copies rows `rows` of `x` into `out` (in order).
    fn gather_rows(
        &self,
        ex: &mut Self::Exec,
        x: &Self::Act,
        rows: &[usize],
        out: &mut Self::Act,
    ) -> Result<()>;
    /// Copies positions `0..n` of sequence `src` to `dst` in every layer.
    fn kv_copy(
        &self,
        ex: &mut Self::Exec,
        kv: &mut Self::Kv,
        src: usize,
        dst: usize,
        n: usize,
    ) -> Result<()>;
    /// Stores `k`, `v` (one row per batch row) into layer `layer` at `rows`, then computes causal
    /// attention of `q` over each row's sequence positions `0..=pos` (within the window).
    #[allow(clippy::too_many_arguments)]
    fn attention(
        &self,
        ex: &mut Self::Exec,
        kv: &mut Self::Kv,
        layer: usize,
        q: &Self::Act,
        k: &Self::Act,
        v: &Self::Act,
        rows: &[RowPos],
        p: &Attention,
        out: &mut Self::Act,
    ) -> Result<()>;
    /// Mixture-of-experts routing: for each row of `logits` (`rows × n_expert` router logits),
    /// the `k` largest (ties to the lower index) in decreasing order, written to `ids` as exact
    /// integers (`rows × k`, f32), and their softmax over those `k` to `weights` (`rows × k`).
    fn moe_route(
        &self,
        ex: &mut Self::Exec,
        logits: &Self::Act,
        k: usize,
        ids: &mut Self::Act,
        weights: &mut Self::Act,
    ) -> Result<()> {
        let _ = (ex, logits, k, ids, weights);
        Err(unsupported("moe_route"))
    }
    /// Expert matmul: `w` is a 3-D weight `[in, out, n_expert]` (expert `e` is the
    /// `[out × in]` matrix at index `e`), `bias` an optional `[out, n_expert]`. For every row
    /// `i` and slot `j` of `ids` (`rows × k`, from [`Ops::moe_route`]),
    /// `out[i][j*out..(j+1)*out] = W[ids[i][j]] · x_j + b[ids[i][j]]`, where `x_j` is row `i` of
    /// `x` when `x` has `in` columns, or its slot `j` when it has `k * in`. Only the selected
    /// experts are computed; a row's result must not depend on the other rows. An id out of
    /// range is an error, returned by this call or, by a backend whose ids live on a device,
    /// by the next call that synchronizes (`read`, `outputs`, `end`); it never reads outside
    /// the weights.
    fn matmul_experts(
        &self,
        ex: &mut Self::Exec,
        x: &Self::Act,
        w: &Self::Weight,
        bias: Option<&Self::Weight>,
        ids: &Self::Act,
        out: &mut Self::Act,
    ) -> Result<()> {
        let _ = (ex, x, w, bias, ids, out);
        Err(unsupported("matmul_experts"))
    }
    /// `out[i] = Σ_j weights[i][j] * y[i][j*cols..(j+1)*cols]`, slots summed in order `j = 0..k`
    /// (`y`: `rows × k·cols`, `weights`: `rows × k`, `out`: `rows × cols`).
    fn moe_combine(
        &self,
        ex: &mut Self::Exec,
        y: &Self::Act,
        weights: &Self::Act,
        out: &mut Self::Act,
    ) -> Result<()> {
        let _ = (ex, y, weights, out);
        Err(unsupported("moe_combine"))
    }
    /// Writes what `outs[i]` asks for from row `i` of `logits` (rows in use = `outs.len()`):
    /// bans first, then the full row or its top N, the log-sum-exp and the target logit.
    /// The `row` field of each request is the batch row and is not used here. May modify
    /// `logits` (it is scratch).
    fn outputs(
        &self,
        ex: &mut Self::Exec,
        logits: &mut Self::Act,
        outs: &mut [RowOutput<'_>],
    ) -> Result<()>;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::reference::rope_angle_scale;

    /// gpt-oss-20b/120b: head size 64, base 150000, factor 32 over 4096 positions.
    fn gpt_oss_rope() -> Rope {
        Rope {
            style: RopeStyle::Neox,
            n_rot: 64,
            base: 150_000.0,
            freq_scale: 1.0 / 32.0,
            yarn: Some(Yarn {
                ext_factor: 1.0,
                attn_factor: (0.1 * 32f32.ln() + 1.0) * (1.0 / (1.0 + 0.1 * 32f32.ln())),
                beta_fast: 32.0,
                beta_slow: 1.0,
                n_ctx_orig: 4096,
            }),
        }
    }

    #[test]
    fn yarn_matches_ggml_for_gpt_oss() {
        let r = gpt_oss_rope();
        let y = r.yarn.unwrap();
        // ggml floors 8.09 and ceils 17.40 (HF with `truncate: false` keeps them).
        assert_eq!(y.corr_dims(64, 150_000.0), [8.0, 18.0]);
        let pos = 1000;
        for i in 0..32 {
            let extrap = pos as f64 * 150_000f64.powf(-2.0 * i as f64 / 64.0);
            let (theta, m) = rope_angle_scale(&r, pos, i);
            // Net magnitude: 1 + 0.1 ln 32, as HF's attention_factor.
            assert!((m - (1.0 + 0.1 * 32f64.ln())).abs() < 1e-6, "{m}");
            let want = if i <= 8 {
                extrap // high frequencies keep their angle
            } else if i >= 18 {
                extrap / 32.0 // low frequencies are interpolated
            } else {
                let mix = 1.0 - (i as f64 - 8.0) / 10.0;
                extrap / 32.0 * (1.0 - mix) + extrap * mix
            };
            assert!(
                (theta - want).abs() <= 1e-9 * want.abs().max(1.0),
                "pair {i}"
            );
        }
    }

    #[test]
    fn without_yarn_the_rotation_is_unchanged() {
        let r = Rope {
            yarn: None,
            freq_scale: 0.25,
            ..gpt_oss_rope()
        };
        let (theta, m) = rope_angle_scale(&r, 77, 5);
        assert_eq!(m, 1.0);
        assert_eq!(theta, crate::model::reference::rope_angle(&r, 77, 5));
    }
}
