//! [`CpuOps`]: the SDK's model operations on the CPU — f32 activations, weights viewed in
//! place in the mapped file, an f16 KV cache, threaded matmul and attention.
//!
//! Activations are allocated once per context with room for the largest step; a step uses
//! their first rows. Every operation computes a row from that row's inputs only (the matmul
//! kernels give the same bits for a row alone or inside any batch), as the `Ops` contract
//! requires.

use crate::attend;
use crate::kernels::{self, ThreadPool, WeightMatrix};
use kiln_sdk::backend::{BackendError, ErrorKind, Result, RowOutput};
use kiln_sdk::gguf::TensorInfo;
use kiln_sdk::model::ops::{SWIGLU_OAI_ALPHA, SWIGLU_OAI_LIMIT};
use kiln_sdk::model::select::{write_output_with, TopNScratch};
use kiln_sdk::model::{Activation, Attention, ExecSpec, KvShape, Ops, Rope, RopeStyle, RowPos};
use kiln_sdk::quant::{dequantize_row, GgmlType};

/// Rows of one sequence that share an attention pass (their keys and values read once).
const ATT_ROWS: usize = 4;
/// Most query heads in one attention pass (rows × heads per KV head).
const ATT_HEADS: usize = 256;

/// A weight: 2-D matrices and 3-D expert stacks stay in the mapped file; vectors (norms,
/// biases) are converted to f32.
pub struct CpuWeight {
    ty: GgmlType,
    rows: usize,
    cols: usize,
    /// Matrices stacked along the third dimension (1 for a 2-D weight).
    experts: usize,
    data: &'static [u8],
    vector: Option<Vec<f32>>,
}

/// A row-major f32 activation: room for `cap` rows, the first `rows` in use.
pub struct CpuAct {
    rows: usize,
    cap: usize,
    cols: usize,
    data: Vec<f32>,
}

impl CpuAct {
    /// The rows in use.
    fn live(&self) -> &[f32] {
        &self.data[..self.rows * self.cols]
    }
    /// The rows in use, mutably.
    fn live_mut(&mut self) -> &mut [f32] {
        &mut self.data[..self.rows * self.cols]
    }
}

/// Per-context scratch: top-N selection, attention buffers, RoPE rotation tables and the
/// expert matmul's gathered rows.
pub struct CpuExec {
    /// One selection scratch per pool thread (output rows are served in parallel).
    tops: Vec<std::sync::Mutex<TopNScratch>>,
    /// One attention scratch per pool share (sized by the first attention call, on the
    /// calling thread, so no worker allocates in a later step).
    attn: Vec<std::sync::Mutex<attend::Scratch>>,
    rope: Vec<(f32, f32)>,
    moe: MoeScratch,
}

/// Room for one expert's rows of a step: `n_batch_max` input and output rows of
/// `expert_cols`, one bias row, and where each gathered row came from.
struct MoeScratch {
    x: Vec<f32>,
    y: Vec<f32>,
    bias: Vec<f32>,
    /// (batch row, slot) of each gathered row.
    src: Vec<(usize, usize)>,
    rows: usize,
    cols: usize,
}

struct KvLayer {
    shape: KvShape,
    /// Positions held per sequence (a ring for a window layer: position `p` at `p % cells`).
    cells: usize,
    k: Vec<u16>,
    v: Vec<u16>,
}

/// The f16 KV cache: per layer, `[seq][cell][head * dim]` for keys and for values (a window
/// layer keeps a ring of `KvShape::cells` positions, a global layer every position).
pub struct CpuKv {
    layers: Vec<KvLayer>,
    n_ctx: usize,
    n_seq: usize,
}

/// CPU implementation of [`Ops`].
pub struct CpuOps {
    pool: ThreadPool,
}

/// A raw pointer that may be shared across the pool's threads (each writes disjoint ranges).
#[derive(Clone, Copy)]
struct SharedMut<T>(*mut T);
// SAFETY: used only to write disjoint, in-bounds ranges from pool threads within one `run`.
unsafe impl<T> Send for SharedMut<T> {}
unsafe impl<T> Sync for SharedMut<T> {}

impl<T> SharedMut<T> {
    fn get(self) -> *mut T {
        self.0
    }
}

#[inline]
fn f16_bits_to_f32(b: u16) -> f32 {
    half::f16::from_bits(b).to_f32()
}

/// GELU (tanh form) of every f16 value, stored as f16: llama.cpp evaluates GELU through such a
/// table, and matching it keeps Gemma's greedy output identical to llama.cpp's.
fn gelu_table() -> &'static [u16] {
    static TABLE: std::sync::OnceLock<Vec<u16>> = std::sync::OnceLock::new();
    TABLE.get_or_init(|| {
        const C: f32 = 0.797_884_6; // sqrt(2 / pi)
        (0..=u16::MAX)
            .map(|b| {
                let x = f16_bits_to_f32(b);
                let y = 0.5 * x * (1.0 + (C * x * (1.0 + 0.044_715 * x * x)).tanh());
                half::f16::from_f32(y).to_bits()
            })
            .collect()
    })
}

fn shape_err(what: &str) -> BackendError {
    BackendError::internal(format!("shape mismatch in {what}"))
}

/// A zeroed buffer of `n` values of `T` (a type for which all-zero bytes are zero). Allocated
/// zeroed (the OS maps pages lazily, so a large context costs memory only as it fills) and
/// fallibly: too much is an error, not an abort.
fn alloc_zeroed<T: bytemuck::Zeroable>(n: usize, what: &str) -> Result<Vec<T>> {
    let oom = || {
        BackendError::new(
            ErrorKind::OutOfMemory,
            format!(
                "cannot allocate {} MiB for {what}",
                n.saturating_mul(std::mem::size_of::<T>()) >> 20
            ),
        )
    };
    if n == 0 || std::mem::size_of::<T>() == 0 {
        return Ok(Vec::new());
    }
    let layout = std::alloc::Layout::array::<T>(n).map_err(|_| oom())?;
    // SAFETY: `layout` has non-zero size; on success the allocation holds `n` zeroed values,
    // valid for `T: Zeroable`, with the global allocator's layout, which is what
    // `Vec::from_raw_parts` requires.
    unsafe {
        let p = std::alloc::alloc_zeroed(layout) as *mut T;
        if p.is_null() {
            return Err(oom());
        }
        Ok(Vec::from_raw_parts(p, n, n))
    }
}

impl CpuOps {
    /// Ops running on `n_threads` threads (0 = all cores).
    pub fn new(n_threads: usize) -> Self {
        let n = if n_threads == 0 {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        } else {
            n_threads
        };
        CpuOps {
            pool: ThreadPool::new(n),
        }
    }

    /// Threads in use.
    pub fn n_threads(&self) -> usize {
        self.pool.n_threads()
    }

    fn vector<'a>(&self, w: &'a CpuWeight, len: usize, what: &str) -> Result<&'a [f32]> {
        match &w.vector {
            Some(v) if v.len() == len || (len == 0 && !v.is_empty()) => Ok(v),
            _ => Err(shape_err(what)),
        }
    }
}

impl Ops for CpuOps {
    type Weight = CpuWeight;
    type Act = CpuAct;
    type Kv = CpuKv;
    type Exec = CpuExec;

    fn weight(&self, t: &TensorInfo<'static>) -> Result<CpuWeight> {
        let cols = t.dims.first().copied().unwrap_or(1) as usize;
        let rows = t.dims.iter().skip(1).product::<u64>() as usize;
        if t.dims.len() == 1 {
            let mut v = vec![0f32; cols];
            dequantize_row(t.ty, t.data, &mut v)
                .map_err(|e| BackendError::invalid(e.to_string()))?;
            return Ok(CpuWeight {
                ty: GgmlType::F32,
                rows: 1,
                cols,
                experts: 1,
                data: &[],
                vector: Some(v),
            });
        }
        if t.dims.len() > 3 {
            return Err(BackendError::invalid(format!(
                "a weight of {} dimensions",
                t.dims.len()
            )));
        }
        if !kernels::supports(t.ty) {
            return Err(BackendError::unsupported(format!(
                "the CPU backend has no kernel for {}",
                t.ty
            )));
        }
        Ok(CpuWeight {
            ty: t.ty,
            rows,
            cols,
            experts: if t.dims.len() == 3 {
                t.dims[2] as usize
            } else {
                1
            },
            data: t.data,
            vector: None,
        })
    }

    fn weight_bytes(&self, w: &CpuWeight) -> u64 {
        w.data.len() as u64 + w.vector.as_ref().map_or(0, |v| v.len() as u64 * 4)
    }

    fn act(&self, rows: usize, cols: usize) -> Result<CpuAct> {
        let n = rows.checked_mul(cols).ok_or_else(|| {
            BackendError::new(ErrorKind::OutOfMemory, "activation size overflows")
        })?;
        Ok(CpuAct {
            rows,
            cap: rows,
            cols,
            data: alloc_zeroed(n, "an activation")?,
        })
    }

    fn set_rows(&self, x: &mut CpuAct, rows: usize) -> Result<()> {
        if rows > x.cap {
            return Err(BackendError::invalid(format!(
                "{rows} rows asked of an activation of {} rows",
                x.cap
            )));
        }
        x.rows = rows;
        Ok(())
    }

    fn act_shape(&self, x: &CpuAct) -> (usize, usize) {
        (x.rows, x.cols)
    }

    fn act_bytes(&self, x: &CpuAct) -> u64 {
        x.data.len() as u64 * 4
    }

    fn exec(&self, spec: &ExecSpec) -> Result<CpuExec> {
        let n = self.pool.n_threads().min(spec.n_logit_rows).max(1);
        Ok(CpuExec {
            tops: (0..n)
                .map(|_| std::sync::Mutex::new(TopNScratch::with_vocab(spec.n_vocab)))
                .collect(),
            attn: (0..self.pool.n_threads())
                .map(|_| std::sync::Mutex::new(attend::Scratch::default()))
                .collect(),
            rope: Vec::with_capacity(spec.max_cols / 2),
            moe: MoeScratch {
                x: alloc_zeroed(spec.n_batch_max * spec.expert_cols, "expert scratch")?,
                y: alloc_zeroed(spec.n_batch_max * spec.expert_cols, "expert scratch")?,
                bias: alloc_zeroed(spec.expert_cols, "expert scratch")?,
                src: Vec::with_capacity(if spec.expert_cols > 0 {
                    spec.n_batch_max
                } else {
                    0
                }),
                rows: spec.n_batch_max,
                cols: spec.expert_cols,
            },
        })
    }

    fn exec_bytes(&self, ex: &CpuExec) -> u64 {
        let tops: u64 = ex
            .tops
            .iter()
            .map(|t| t.lock().map_or(0, |t| t.bytes()))
            .sum();
        let attn: u64 = ex
            .attn
            .iter()
            .map(|a| a.lock().map_or(0, |a| a.bytes()))
            .sum();
        let m = &ex.moe;
        tops + attn
            + ex.rope.capacity() as u64 * 8
            + (m.x.len() + m.y.len() + m.bias.len()) as u64 * 4
            + m.src.capacity() as u64 * 16
    }

    fn write(&self, _: &mut CpuExec, x: &mut CpuAct, data: &[f32]) -> Result<()> {
        let live = x.live_mut();
        if live.len() != data.len() {
            return Err(shape_err("write"));
        }
        live.copy_from_slice(data);
        Ok(())
    }

    fn embed(
        &self,
        _: &mut CpuExec,
        table: &CpuWeight,
        ids: &[i32],
        out: &mut CpuAct,
    ) -> Result<()> {
        if out.rows != ids.len() || out.cols != table.cols || table.vector.is_some() {
            return Err(shape_err("embed"));
        }
        let row_bytes = table
            .ty
            .bytes_for(table.cols as u64)
            .ok_or_else(|| shape_err("embed"))? as usize;
        for (i, &id) in ids.iter().enumerate() {
            let id = id as usize;
            if id >= table.rows {
                return Err(BackendError::invalid(format!(
                    "token id {id} out of 0..{}",
                    table.rows
                )));
            }
            let src = &table.data[id * row_bytes..(id + 1) * row_bytes];
            dequantize_row(
                table.ty,
                src,
                &mut out.data[i * out.cols..(i + 1) * out.cols],
            )
            .map_err(|e| BackendError::internal(e.to_string()))?;
        }
        Ok(())
    }

    fn rms_norm(
        &self,
        _: &mut CpuExec,
        x: &CpuAct,
        w: &CpuWeight,
        eps: f32,
        out: &mut CpuAct,
    ) -> Result<()> {
        let w = self.vector(w, 0, "rms_norm")?;
        let g = w.len();
        if !x.cols.is_multiple_of(g) || out.rows != x.rows || out.cols != x.cols {
            return Err(shape_err("rms_norm"));
        }
        for (src, dst) in x
            .live()
            .chunks_exact(g)
            .zip(out.live_mut().chunks_exact_mut(g))
        {
            let ss: f64 = src.iter().map(|&v| (v * v) as f64).sum();
            let scale = 1.0 / ((ss / g as f64) as f32 + eps).sqrt();
            for ((d, &s), &wv) in dst.iter_mut().zip(src).zip(w) {
                *d = s * scale * wv;
            }
        }
        Ok(())
    }

    fn matmul(&self, _: &mut CpuExec, x: &CpuAct, w: &CpuWeight, out: &mut CpuAct) -> Result<()> {
        if w.vector.is_some() || x.cols != w.cols || out.cols != w.rows || out.rows != x.rows {
            return Err(shape_err("matmul"));
        }
        let m = WeightMatrix {
            ty: w.ty,
            rows: w.rows,
            cols: w.cols,
            data: w.data,
        };
        let rows = x.rows;
        kernels::matmul(&self.pool, &m, x.live(), rows, out.live_mut())
            .map_err(|e| BackendError::internal(e.to_string()))
    }

    fn add_bias(&self, _: &mut CpuExec, x: &mut CpuAct, b: &CpuWeight) -> Result<()> {
        let b = self.vector(b, x.cols, "add_bias")?;
        let cols = x.cols;
        for row in x.live_mut().chunks_exact_mut(cols) {
            row.iter_mut().zip(b).for_each(|(a, &b)| *a += b);
        }
        Ok(())
    }

    fn add(&self, _: &mut CpuExec, x: &mut CpuAct, y: &CpuAct) -> Result<()> {
        if x.rows != y.rows || x.cols != y.cols {
            return Err(shape_err("add"));
        }
        x.live_mut()
            .iter_mut()
            .zip(y.live())
            .for_each(|(a, &b)| *a += b);
        Ok(())
    }

    fn scale(&self, _: &mut CpuExec, x: &mut CpuAct, s: f32) -> Result<()> {
        x.live_mut().iter_mut().for_each(|a| *a *= s);
        Ok(())
    }

    fn rope(
        &self,
        ex: &mut CpuExec,
        x: &mut CpuAct,
        positions: &[i32],
        head_dim: usize,
        rope: &Rope,
    ) -> Result<()> {
        if positions.len() != x.rows
            || head_dim == 0
            || !x.cols.is_multiple_of(head_dim)
            || rope.n_rot > head_dim
        {
            return Err(shape_err("rope"));
        }
        let half = rope.n_rot / 2;
        let theta_scale = rope.base.powf(-2.0 / rope.n_rot as f32);
        let cs = &mut ex.rope;
        cs.clear();
        cs.resize(half, (0.0, 0.0));
        let cols = x.cols;
        // YaRN as ggml's `rope_yarn` computes it, in f32.
        let yarn = rope.yarn.map(|y| {
            let r = y.ramp(rope.n_rot, rope.base, rope.freq_scale);
            (r.ext_factor, r.low, r.span, r.mscale)
        });
        for (row, &pos) in x.live_mut().chunks_exact_mut(cols).zip(positions) {
            let mut theta = pos as f32;
            for (i, c) in cs.iter_mut().enumerate() {
                match yarn {
                    None => {
                        let t = theta * rope.freq_scale;
                        *c = (t.cos(), t.sin());
                    }
                    Some((ext, low, span, mscale)) => {
                        let interp = rope.freq_scale * theta;
                        let t = if ext != 0.0 {
                            let y = (i as f32 - low) / span;
                            let mix = (1.0 - y.clamp(0.0, 1.0)) * ext;
                            interp * (1.0 - mix) + theta * mix
                        } else {
                            interp
                        };
                        *c = (t.cos() * mscale, t.sin() * mscale);
                    }
                }
                theta *= theta_scale;
            }
            for head in row.chunks_exact_mut(head_dim) {
                for (i, &(cos, sin)) in cs.iter().enumerate() {
                    let (a, b) = match rope.style {
                        RopeStyle::Normal => (2 * i, 2 * i + 1),
                        RopeStyle::Neox => (i, i + half),
                    };
                    let (x0, x1) = (head[a], head[b]);
                    head[a] = x0 * cos - x1 * sin;
                    head[b] = x0 * sin + x1 * cos;
                }
            }
        }
        Ok(())
    }

    fn glu(&self, _: &mut CpuExec, gate: &mut CpuAct, up: &CpuAct, act: Activation) -> Result<()> {
        if gate.rows != up.rows || gate.cols != up.cols {
            return Err(shape_err("glu"));
        }
        match act {
            Activation::Silu => crate::vexp::silu_mul(gate.live_mut(), up.live()),
            Activation::SwigluOai => {
                gate.live_mut()
                    .iter_mut()
                    .zip(up.live())
                    .for_each(|(g, &u)| {
                        let x = g.min(SWIGLU_OAI_LIMIT);
                        let u = u.clamp(-SWIGLU_OAI_LIMIT, SWIGLU_OAI_LIMIT);
                        *g = x / (1.0 + (-SWIGLU_OAI_ALPHA * x).exp()) * (u + 1.0);
                    })
            }
            Activation::GeluTanh => {
                let table = gelu_table();
                gate.live_mut()
                    .iter_mut()
                    .zip(up.live())
                    .for_each(|(g, &u)| {
                        let x = *g;
                        *g = if x <= -10.0 {
                            0.0
                        } else if x >= 10.0 {
                            x * u
                        } else {
                            f16_bits_to_f32(table[half::f16::from_f32(x).to_bits() as usize]) * u
                        };
                    })
            }
        }
        Ok(())
    }

    fn gather_rows(
        &self,
        _: &mut CpuExec,
        x: &CpuAct,
        rows: &[usize],
        out: &mut CpuAct,
    ) -> Result<()> {
        if out.rows != rows.len() || out.cols != x.cols {
            return Err(shape_err("gather_rows"));
        }
        for (i, &r) in rows.iter().enumerate() {
            if r >= x.rows {
                return Err(shape_err("gather_rows"));
            }
            out.data[i * x.cols..(i + 1) * x.cols]
                .copy_from_slice(&x.data[r * x.cols..(r + 1) * x.cols]);
        }
        Ok(())
    }

    fn kv_alloc(&self, layers: &[KvShape], n_ctx: usize, n_seq: usize) -> Result<CpuKv> {
        let mut out = Vec::with_capacity(layers.len());
        for &shape in layers {
            let cells = shape.cells.clamp(1, n_ctx.max(1));
            let size = |dim: usize| {
                cells
                    .checked_mul(n_seq)
                    .and_then(|p| p.checked_mul(shape.n_head_kv))
                    .and_then(|p| p.checked_mul(dim))
                    .ok_or_else(|| {
                        BackendError::new(ErrorKind::OutOfMemory, "KV cache size overflows")
                    })
            };
            let k = alloc_zeroed::<u16>(size(shape.head_dim_k)?, "the KV cache")?;
            let v = alloc_zeroed::<u16>(size(shape.head_dim_v)?, "the KV cache")?;
            out.push(KvLayer { shape, cells, k, v });
        }
        Ok(CpuKv {
            layers: out,
            n_ctx,
            n_seq,
        })
    }

    fn kv_bytes(&self, kv: &CpuKv) -> u64 {
        kv.layers
            .iter()
            .map(|l| (l.k.len() + l.v.len()) as u64 * 2)
            .sum()
    }

    fn kv_copy(
        &self,
        _: &mut CpuExec,
        kv: &mut CpuKv,
        src: usize,
        dst: usize,
        n: usize,
    ) -> Result<()> {
        if src >= kv.n_seq || dst >= kv.n_seq || n > kv.n_ctx {
            return Err(shape_err("kv_copy"));
        }
        for l in &mut kv.layers {
            let cells = l.cells;
            for (buf, w) in [
                (&mut l.k, l.shape.n_head_kv * l.shape.head_dim_k),
                (&mut l.v, l.shape.n_head_kv * l.shape.head_dim_v),
            ] {
                // Positions 0..n, or the last `cells` of them in a ring (same cells in both).
                let (s, d) = (src * cells * w, dst * cells * w);
                buf.copy_within(s..s + n.min(cells) * w, d);
            }
        }
        Ok(())
    }

    fn attention(
        &self,
        ex: &mut CpuExec,
        kv: &mut CpuKv,
        layer: usize,
        q: &CpuAct,
        k: &CpuAct,
        v: &CpuAct,
        rows: &[RowPos],
        p: &Attention,
        out: &mut CpuAct,
    ) -> Result<()> {
        let n_ctx = kv.n_ctx;
        let l = kv
            .layers
            .get_mut(layer)
            .ok_or_else(|| shape_err("attention layer"))?;
        let (hk, hv) = (p.head_dim_k, p.head_dim_v);
        let (kw, vw) = (p.n_head_kv * hk, p.n_head_kv * hv);
        if q.cols != p.n_head * hk
            || k.cols != kw
            || v.cols != vw
            || out.cols != p.n_head * hv
            || rows.len() != q.rows
            || l.shape.n_head_kv * l.shape.head_dim_k != kw
            || p.n_head_kv == 0
            || !p.n_head.is_multiple_of(p.n_head_kv)
            || p.sinks.is_some_and(|s| s.len() != p.n_head)
        {
            return Err(shape_err("attention"));
        }
        for (i, r) in rows.iter().enumerate() {
            if r.pos >= n_ctx || r.seq >= kv.n_seq {
                return Err(shape_err("attention rows"));
            }
            let cell = r.seq * l.cells + r.pos % l.cells;
            let ko = cell * kw;
            kernels::f32_to_f16_slice(&k.data[i * kw..(i + 1) * kw], &mut l.k[ko..ko + kw]);
            let vo = cell * vw;
            kernels::f32_to_f16_slice(&v.data[i * vw..(i + 1) * vw], &mut l.v[vo..vo + vw]);
        }
        let (kc, vc, cells) = (&l.k[..], &l.v[..], l.cells);
        let group = p.n_head / p.n_head_kv;
        let lo_of = |r: &RowPos| p.window.map_or(0, |w| (r.pos + 1).saturating_sub(w));
        // One task per (rows, KV head): the query heads sharing a KV head, of up to
        // `ATT_ROWS` neighbouring rows of one sequence that start at the same position, read
        // its keys and values once; each row stops at its own position (`Group::his`) with
        // the operations it takes alone.
        let per = ATT_ROWS.min(ATT_HEADS / group).max(1);
        let mut spans: Vec<(usize, usize)> = Vec::new();
        let mut i = rows.len();
        while i > 0 {
            let last = &rows[i - 1];
            let mut n = 1;
            while n < per
                && n < i
                && rows[i - 1 - n].seq == last.seq
                && lo_of(&rows[i - 1 - n]) == lo_of(last)
            {
                n += 1;
            }
            spans.push((i - n, n));
            i -= n;
        }
        let n_tasks = spans.len() * p.n_head_kv;
        let out_ptr = SharedMut(out.data.as_mut_ptr());
        let out_cols = out.cols;
        // Tasks are claimed one by one, latest rows first: a causal prompt's last rows see
        // the most positions, so they start early and the threads finish together.
        let next = std::sync::atomic::AtomicUsize::new(0);
        for a in &ex.attn {
            a.lock()
                .map_err(|_| shape_err("attention scratch"))?
                .reserve(per * group, hk, hv);
        }
        let scratches = &ex.attn;
        self.pool.run(|t, _| {
            // Share `t` runs on one thread at a time: its scratch is uncontended.
            let Some(Ok(mut guard)) = scratches.get(t).map(|m| m.lock()) else {
                return;
            };
            let sc = &mut *guard;
            let (mut qs, mut accs, mut sums) = (
                std::mem::take(&mut sc.qs),
                std::mem::take(&mut sc.accs),
                std::mem::take(&mut sc.sums),
            );
            // Per query head of a task: the last position it sees, and its sink.
            let (mut his, mut sinks) = (vec![0usize; per * group], vec![0f32; per * group]);
            loop {
                let task = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if task >= n_tasks {
                    break;
                }
                // Latest rows first (`spans` runs from the end).
                let ((i0, n), kvh) = (spans[task / p.n_head_kv], task % p.n_head_kv);
                let gh = n * group;
                let (qs_t, accs_t, sums_t) =
                    (&mut qs[..gh * hk], &mut accs[..gh * hv], &mut sums[..gh]);
                let h0 = kvh * group;
                for a in 0..n {
                    let i = i0 + a;
                    let src = &q.data[i * q.cols + h0 * hk..i * q.cols + (h0 + group) * hk];
                    qs_t[a * group * hk..(a + 1) * group * hk].copy_from_slice(src);
                    his[a * group..(a + 1) * group].fill(rows[i].pos);
                    if let Some(s) = p.sinks {
                        sinks[a * group..(a + 1) * group].copy_from_slice(&s[h0..h0 + group]);
                    }
                }
                // The queries meet the f16 cache in f16, as in llama.cpp.
                attend::round_slice(qs_t);
                // Online softmax over the f16 cache with f32 accumulators.
                let r = rows[i0 + n - 1];
                let hi = rows[i0..i0 + n]
                    .iter()
                    .map(|r| r.pos)
                    .max()
                    .unwrap_or(r.pos);
                let base = r.seq * cells;
                let g = attend::Group {
                    k: &kc[base * kw + kvh * hk..],
                    v: &vc[base * vw + kvh * hv..],
                    k_stride: kw,
                    v_stride: vw,
                    qs: qs_t,
                    hk,
                    scale: p.scale,
                    softcap: p.softcap,
                    sinks: p.sinks.map(|_| &sinks[..gh]),
                    cells,
                    his: Some(&his[..gh]),
                };
                g.attend(lo_of(&r), hi, accs_t, sums_t, sc);
                for (j, &sum) in sums_t.iter().enumerate() {
                    let (i, hh) = (i0 + j / group, h0 + j % group);
                    let inv = if sum == 0.0 { 0.0 } else { 1.0 / sum };
                    // SAFETY: each (rows, KV head) task writes its own rows' heads: disjoint
                    // `hv` floats of `out` each.
                    unsafe {
                        let dst = std::slice::from_raw_parts_mut(
                            out_ptr.get().add(i * out_cols + hh * hv),
                            hv,
                        );
                        dst.iter_mut()
                            .zip(&accs_t[j * hv..(j + 1) * hv])
                            .for_each(|(d, &a)| *d = a * inv);
                    }
                }
            }
            (sc.qs, sc.accs, sc.sums) = (qs, accs, sums);
        });
        Ok(())
    }

    fn moe_route(
        &self,
        _: &mut CpuExec,
        logits: &CpuAct,
        k: usize,
        ids: &mut CpuAct,
        weights: &mut CpuAct,
    ) -> Result<()> {
        let n_expert = logits.cols;
        if k == 0
            || k > n_expert
            || ids.rows != logits.rows
            || weights.rows != logits.rows
            || ids.cols != k
            || weights.cols != k
        {
            return Err(shape_err("moe_route"));
        }
        // Better: larger, ties to the lower index (scanned first), NaN after every number.
        let better = |x: f32, best: f32| !x.is_nan() && (best.is_nan() || x > best);
        for ((row, id), wt) in logits
            .live()
            .chunks_exact(n_expert)
            .zip(ids.data.chunks_exact_mut(k))
            .zip(weights.data.chunks_exact_mut(k))
        {
            // Selection by k scans (k is small); the chosen ids are kept in `id`.
            for j in 0..k {
                let mut best: Option<usize> = None;
                for (e, &v) in row.iter().enumerate() {
                    if id[..j].iter().any(|&c| c as usize == e) {
                        continue;
                    }
                    if best.is_none_or(|b| better(v, row[b])) {
                        best = Some(e);
                    }
                }
                id[j] = best.unwrap_or(0) as f32;
            }
            let m = row[id[0] as usize];
            let mut sum = 0f32;
            for (w, &e) in wt.iter_mut().zip(id.iter()) {
                *w = (row[e as usize] - m).exp();
                sum += *w;
            }
            wt.iter_mut().for_each(|w| *w /= sum);
        }
        Ok(())
    }

    fn matmul_experts(
        &self,
        ex: &mut CpuExec,
        x: &CpuAct,
        w: &CpuWeight,
        bias: Option<&CpuWeight>,
        ids: &CpuAct,
        out: &mut CpuAct,
    ) -> Result<()> {
        let (n_expert, d_in) = (w.experts, w.cols);
        let d_out = w.rows / n_expert.max(1);
        let k = ids.cols;
        let n = x.rows;
        if w.vector.is_some()
            || n_expert == 0
            || w.rows != d_out * n_expert
            || ids.rows != n
            || out.rows != n
            || out.cols != k * d_out
            || !(x.cols == d_in || x.cols == k * d_in)
        {
            return Err(shape_err("matmul_experts"));
        }
        let s = &mut ex.moe;
        if d_in > s.cols || d_out > s.cols || s.rows == 0 {
            return Err(BackendError::internal(format!(
                "matmul_experts of {d_in} → {d_out} columns; the context's expert scratch holds {}",
                s.cols
            )));
        }
        let bias_row = match bias {
            Some(b) => {
                let rb =
                    b.ty.bytes_for(d_out as u64)
                        .ok_or_else(|| shape_err("matmul_experts bias"))?
                        as usize;
                if b.vector.is_some()
                    || b.cols != d_out
                    || b.rows != n_expert
                    || b.data.len() < rb * n_expert
                {
                    return Err(shape_err("matmul_experts bias"));
                }
                Some(rb)
            }
            None => None,
        };
        let id_list = &ids.data[..n * k];
        if let Some(&bad) = id_list
            .iter()
            .find(|&&v| !(v >= 0.0 && v.fract() == 0.0 && (v as usize) < n_expert))
        {
            return Err(BackendError::invalid(format!(
                "expert id {bad} out of 0..{n_expert}"
            )));
        }
        let w_bytes =
            w.ty.bytes_for((d_out * d_in) as u64)
                .ok_or_else(|| shape_err("matmul_experts"))? as usize;
        if w.data.len() != w_bytes * n_expert {
            return Err(shape_err("matmul_experts weight data"));
        }
        let per_slot = x.cols != d_in;
        // Group rows by expert: each expert's matrix is read once for all the rows that chose
        // it. The kernels give a row the same bits whatever the other rows, so the grouping
        // changes no result.
        for e in 0..n_expert {
            let m = WeightMatrix {
                ty: w.ty,
                rows: d_out,
                cols: d_in,
                data: &w.data[e * w_bytes..(e + 1) * w_bytes],
            };
            if let (Some(b), Some(rb)) = (bias, bias_row) {
                dequantize_row(b.ty, &b.data[e * rb..(e + 1) * rb], &mut s.bias[..d_out])
                    .map_err(|er| BackendError::internal(er.to_string()))?;
            }
            let mut start = 0;
            while start < n * k {
                s.src.clear();
                let mut end = start;
                while end < n * k && s.src.len() < s.rows {
                    if id_list[end] as usize == e {
                        let (i, j) = (end / k, end % k);
                        let xo = i * x.cols + if per_slot { j * d_in } else { 0 };
                        let g = s.src.len();
                        s.x[g * d_in..(g + 1) * d_in].copy_from_slice(&x.data[xo..xo + d_in]);
                        s.src.push((i, j));
                    }
                    end += 1;
                }
                start = end;
                let g = s.src.len();
                if g == 0 {
                    continue;
                }
                kernels::matmul(&self.pool, &m, &s.x[..g * d_in], g, &mut s.y[..g * d_out])
                    .map_err(|er| BackendError::internal(er.to_string()))?;
                for (r, &(i, j)) in s.src.iter().enumerate() {
                    let dst = &mut out.data[i * out.cols + j * d_out..][..d_out];
                    dst.copy_from_slice(&s.y[r * d_out..(r + 1) * d_out]);
                    if bias.is_some() {
                        dst.iter_mut()
                            .zip(&s.bias[..d_out])
                            .for_each(|(a, &b)| *a += b);
                    }
                }
            }
        }
        Ok(())
    }

    fn moe_combine(
        &self,
        _: &mut CpuExec,
        y: &CpuAct,
        weights: &CpuAct,
        out: &mut CpuAct,
    ) -> Result<()> {
        let k = weights.cols;
        let c = out.cols;
        if k == 0 || y.rows != weights.rows || out.rows != y.rows || y.cols != k * c {
            return Err(shape_err("moe_combine"));
        }
        for ((o, yr), wr) in out
            .live_mut()
            .chunks_exact_mut(c)
            .zip(y.live().chunks_exact(k * c))
            .zip(weights.live().chunks_exact(k))
        {
            o.iter_mut()
                .zip(&yr[..c])
                .for_each(|(a, &v)| *a = v * wr[0]);
            for (j, &wj) in wr.iter().enumerate().skip(1) {
                o.iter_mut()
                    .zip(&yr[j * c..(j + 1) * c])
                    .for_each(|(a, &v)| *a += v * wj);
            }
        }
        Ok(())
    }

    fn read(&self, _: &mut CpuExec, x: &CpuAct, out: &mut [f32]) -> Result<()> {
        if out.len() != x.rows * x.cols {
            return Err(shape_err("read"));
        }
        out.copy_from_slice(x.live());
        Ok(())
    }

    fn outputs(
        &self,
        ex: &mut CpuExec,
        logits: &mut CpuAct,
        outs: &mut [RowOutput<'_>],
    ) -> Result<()> {
        if outs.len() != logits.rows {
            return Err(shape_err("outputs"));
        }
        let cols = logits.cols;
        fn lock(
            m: &std::sync::Mutex<TopNScratch>,
        ) -> Result<std::sync::MutexGuard<'_, TopNScratch>> {
            m.lock()
                .map_err(|_| BackendError::internal("a selection scratch was poisoned"))
        }
        if outs.len() == 1 || ex.tops.len() == 1 {
            let mut top = lock(&ex.tops[0])?;
            for (row, req) in logits
                .live_mut()
                .chunks_exact_mut(cols)
                .zip(outs.iter_mut())
            {
                write_output_with(row, req, &mut top, crate::vexp::log_sum_exp)?;
            }
            return Ok(());
        }
        // Rows are independent: serve them on every thread, each with its own scratch.
        let items: Vec<std::sync::Mutex<(&mut [f32], &mut RowOutput<'_>)>> = logits
            .live_mut()
            .chunks_exact_mut(cols)
            .zip(outs.iter_mut())
            .map(std::sync::Mutex::new)
            .collect();
        let failed: std::sync::Mutex<Option<BackendError>> = std::sync::Mutex::new(None);
        let tops = &ex.tops;
        self.pool.run(|t, nt| {
            // Shares beyond the scratches (or a nested run as one share) leave their rows to
            // the first `k` shares.
            let k = tops.len().min(nt).max(1);
            let Some(scratch) = tops.get(t).filter(|_| t < k) else {
                return;
            };
            let r = (|| {
                let mut top = lock(scratch)?;
                for item in items.iter().skip(t).step_by(k) {
                    let mut g = item
                        .lock()
                        .map_err(|_| BackendError::internal("an output row was poisoned"))?;
                    let (row, req) = &mut *g;
                    write_output_with(row, req, &mut top, crate::vexp::log_sum_exp)?;
                }
                Ok::<(), BackendError>(())
            })();
            if let Err(e) = r {
                if let Ok(mut f) = failed.lock() {
                    f.get_or_insert(e);
                }
            }
        });
        match failed.into_inner() {
            Ok(None) => Ok(()),
            Ok(Some(e)) => Err(e),
            Err(_) => Err(BackendError::internal("output rows failed")),
        }
    }
}
