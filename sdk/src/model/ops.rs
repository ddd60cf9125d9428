//! The small set of operations a backend provides so that every architecture in
//! [`crate::model`] runs on it. Activations are 2-D f32 tensors `[rows × cols]`, row-major.

use crate::backend::Result;
use crate::gguf::TensorInfo;

/// Activation function of a gated feed-forward block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    /// `x * sigmoid(x)` (llama, qwen2).
    Silu,
    /// GELU, tanh approximation (gemma).
    GeluTanh,
}

/// Rotary embedding style.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RopeStyle {
    /// Rotate adjacent pairs `(2i, 2i+1)` (llama as stored in GGUF).
    Normal,
    /// Rotate `(i, i + n_rot/2)` (GPT-NeoX style: qwen2, gemma).
    Neox,
}

/// Rotary embedding parameters.
#[derive(Clone, Copy, Debug)]
pub struct Rope {
    /// Pairing style.
    pub style: RopeStyle,
    /// Dimensions rotated at the start of each head (≤ head_dim).
    pub n_rot: usize,
    /// θ base.
    pub base: f32,
    /// Linear position scale (1 / scaling factor).
    pub freq_scale: f32,
}

/// Shape of one attention layer's KV cache entries.
#[derive(Clone, Copy, Debug)]
pub struct KvShape {
    /// KV heads.
    pub n_head_kv: usize,
    /// Key head size.
    pub head_dim_k: usize,
    /// Value head size.
    pub head_dim_v: usize,
}

/// Parameters of one attention call.
#[derive(Clone, Copy, Debug)]
pub struct Attention {
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
}

/// Where each batch row goes: its sequence and position.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RowPos {
    /// Sequence id.
    pub seq: usize,
    /// Position in the sequence.
    pub pos: usize,
}

/// Backend operations used by the model code. Implement these and every architecture of the SDK
/// runs on your backend (see `backends/cpu` for the reference implementation).
pub trait Ops: Send + Sync + Sized + 'static {
    /// A weight tensor as the backend stores it (a view into the mapped file, or device memory).
    type Weight: Send + Sync;
    /// A 2-D f32 activation tensor.
    type Act: Send;
    /// The KV cache of one context: every layer, every sequence.
    type Kv: Send;

    /// Prepares a weight tensor (zero-copy views are fine: tensor data outlives the model).
    fn weight(&self, t: &TensorInfo<'static>) -> Result<Self::Weight>;
    /// Bytes the weight takes.
    fn weight_bytes(&self, w: &Self::Weight) -> u64;
    /// A new activation tensor of `rows × cols` (contents unspecified).
    fn act(&self, rows: usize, cols: usize) -> Self::Act;
    /// Rows and columns of an activation.
    fn act_shape(&self, x: &Self::Act) -> (usize, usize);

    /// `out[i] = table[ids[i]]` (embedding lookup from a possibly quantized table).
    fn embed(&self, table: &Self::Weight, ids: &[i32], out: &mut Self::Act) -> Result<()>;
    /// Row-wise RMS norm over groups of `w.len()` columns (a full row, or per head for QK-norm),
    /// times `w`: `out = x / sqrt(mean(x²) + eps) * w`.
    fn rms_norm(
        &self,
        x: &Self::Act,
        w: &Self::Weight,
        eps: f32,
        out: &mut Self::Act,
    ) -> Result<()>;
    /// `out[i] = W · x[i]` for a weight of shape `[out_features, in_features]`.
    fn matmul(&self, x: &Self::Act, w: &Self::Weight, out: &mut Self::Act) -> Result<()>;
    /// Adds a bias vector to every row.
    fn add_bias(&self, x: &mut Self::Act, b: &Self::Weight) -> Result<()>;
    /// `x += y`.
    fn add(&self, x: &mut Self::Act, y: &Self::Act) -> Result<()>;
    /// `x *= s`.
    fn scale(&self, x: &mut Self::Act, s: f32) -> Result<()>;
    /// Applies rotary embeddings to every head (`head_dim` columns) of every row at `positions`.
    fn rope(
        &self,
        x: &mut Self::Act,
        positions: &[i32],
        head_dim: usize,
        rope: &Rope,
    ) -> Result<()>;
    /// `gate = act(gate) * up`.
    fn glu(&self, gate: &mut Self::Act, up: &Self::Act, act: Activation) -> Result<()>;
    /// Copies rows `rows` of `x` into `out` (in order).
    fn gather_rows(&self, x: &Self::Act, rows: &[usize], out: &mut Self::Act) -> Result<()>;

    /// Allocates a KV cache for `layers` layers, `n_seq` sequences of `n_ctx` positions.
    fn kv_alloc(&self, layers: &[KvShape], n_ctx: usize, n_seq: usize) -> Result<Self::Kv>;
    /// Bytes of the cache.
    fn kv_bytes(&self, kv: &Self::Kv) -> u64;
    /// Copies positions `0..n` of sequence `src` to `dst` in every layer.
    fn kv_copy(&self, kv: &mut Self::Kv, src: usize, dst: usize, n: usize) -> Result<()>;
    /// Stores `k`, `v` (one row per batch row) into layer `layer` at `rows`, then computes causal
    /// attention of `q` over each row's sequence positions `0..=pos` (within the window).
    #[allow(clippy::too_many_arguments)]
    fn attention(
        &self,
        kv: &mut Self::Kv,
        layer: usize,
        q: &Self::Act,
        k: &Self::Act,
        v: &Self::Act,
        rows: &[RowPos],
        p: &Attention,
        out: &mut Self::Act,
    ) -> Result<()>;

    /// Copies logits rows to host memory (`rows × cols` floats).
    fn read(&self, x: &Self::Act, out: &mut [f32]) -> Result<()>;
    /// For each row: the top `n` (ids, values), best first, and the row's log-sum-exp.
    /// The default reads rows to the host and selects there; GPU backends override it.
    fn top_n(
        &self,
        x: &Self::Act,
        n: usize,
        ids: &mut [i32],
        vals: &mut [f32],
        lse: &mut [f32],
    ) -> Result<()> {
        let (rows, cols) = self.act_shape(x);
        let mut host = vec![0f32; rows * cols];
        self.read(x, &mut host)?;
        for r in 0..rows {
            let row = &host[r * cols..(r + 1) * cols];
            top_n_row(
                row,
                n,
                &mut ids[r * n..(r + 1) * n],
                &mut vals[r * n..(r + 1) * n],
            );
            lse[r] = log_sum_exp(row);
        }
        Ok(())
    }
}

/// The `n` largest values of `row` (ties: lower id first), best first.
pub fn top_n_row(row: &[f32], n: usize, ids: &mut [i32], vals: &mut [f32]) {
    let key = |v: f32| if v.is_nan() { f32::NEG_INFINITY } else { v };
    let mut idx: Vec<u32> = (0..row.len() as u32).collect();
    let n = n.min(row.len());
    let cmp = |a: &u32, b: &u32| {
        key(row[*b as usize])
            .total_cmp(&key(row[*a as usize]))
            .then(a.cmp(b))
    };
    if n < idx.len() {
        idx.select_nth_unstable_by(n, cmp);
        idx.truncate(n);
    }
    idx.sort_unstable_by(cmp);
    for (i, &id) in idx.iter().enumerate() {
        ids[i] = id as i32;
        vals[i] = row[id as usize];
    }
}

/// `log(sum(exp(row)))`, computed stably.
pub fn log_sum_exp(row: &[f32]) -> f32 {
    let m = row
        .iter()
        .copied()
        .filter(|v| !v.is_nan())
        .fold(f32::NEG_INFINITY, f32::max);
    if !m.is_finite() {
        return m;
    }
    let s: f64 = row
        .iter()
        .filter(|v| !v.is_nan())
        .map(|&v| ((v - m) as f64).exp())
        .sum();
    m + s.ln() as f32
}
