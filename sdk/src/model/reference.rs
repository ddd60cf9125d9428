//! [`RefOps`]: every [`Ops`] method in plain Rust, in f32 storage with f64 accumulation and an
//! f32 KV cache, written for clarity rather than speed. It is the yardstick of the per-op
//! conformance check ([`crate::conformance::ops`]) and, through [`super::TransformerModel`],
//! a complete (slow) reference model of every architecture.

use super::ops::{
    Activation, Attention, ExecSpec, KvShape, Ops, Rope, RopeStyle, RowPos, SWIGLU_OAI_ALPHA,
    SWIGLU_OAI_LIMIT,
};
use super::select::{write_output, TopNScratch};
use crate::backend::{BackendError, ErrorKind, Result, RowOutput};
use crate::gguf::TensorInfo;
use crate::quant::dequantize_row;

/// The reference operations.
#[derive(Debug, Default, Clone, Copy)]
pub struct RefOps;

/// A weight, dequantized to f32: `rows × cols` (vectors have one row; a 3-D expert tensor
/// stacks its `experts` matrices).
pub struct RefWeight {
    rows: usize,
    cols: usize,
    experts: usize,
    data: Vec<f32>,
}

/// The expert index stored in an ids activation, checked.
fn expert_id(v: f32, n_expert: usize) -> Result<usize> {
    if v >= 0.0 && v.fract() == 0.0 && (v as usize) < n_expert {
        Ok(v as usize)
    } else {
        Err(BackendError::invalid(format!(
            "expert id {v} out of 0..{n_expert}"
        )))
    }
}

/// An activation: `cap` rows reserved, `rows` in use.
pub struct RefAct {
    rows: usize,
    cap: usize,
    cols: usize,
    data: Vec<f32>,
}

struct RefKvLayer {
    shape: KvShape,
    /// `[seq][pos][head * dim]`.
    k: Vec<f32>,
    v: Vec<f32>,
}

/// An f32 KV cache.
pub struct RefKv {
    layers: Vec<RefKvLayer>,
    n_ctx: usize,
    n_seq: usize,
}

/// Execution state: the top-N scratch.
pub struct RefExec {
    top: TopNScratch,
}

fn shape(what: &str) -> BackendError {
    BackendError::internal(format!("shape mismatch in {what}"))
}

fn zeroed(n: usize, what: &str) -> Result<Vec<f32>> {
    let mut v = Vec::new();
    v.try_reserve_exact(n).map_err(|_| {
        BackendError::new(
            ErrorKind::OutOfMemory,
            format!("cannot allocate {n} floats for {what}"),
        )
    })?;
    v.resize(n, 0.0);
    Ok(v)
}

impl RefAct {
    fn live(&self) -> &[f32] {
        &self.data[..self.rows * self.cols]
    }
    fn live_mut(&mut self) -> &mut [f32] {
        &mut self.data[..self.rows * self.cols]
    }
}

/// `x * sigmoid(x)` in f64.
pub fn silu(x: f64) -> f64 {
    x / (1.0 + (-x).exp())
}

/// GELU, tanh approximation, in f64.
pub fn gelu_tanh(x: f64) -> f64 {
    let c = (2.0 / std::f64::consts::PI).sqrt();
    0.5 * x * (1.0 + (c * (x + 0.044_715 * x * x * x)).tanh())
}

/// gpt-oss's clamped SwiGLU of one gate and up value ([`Activation::SwigluOai`]), in f64.
pub fn swiglu_oai(gate: f64, up: f64) -> f64 {
    let limit = SWIGLU_OAI_LIMIT as f64;
    let g = gate.min(limit);
    let u = up.clamp(-limit, limit);
    g / (1.0 + (-(SWIGLU_OAI_ALPHA as f64) * g).exp()) * (u + 1.0)
}

/// The rotation angle of pair `i` of a head at `pos`, in f64 (without YaRN).
pub fn rope_angle(rope: &Rope, pos: i32, i: usize) -> f64 {
    let inv = (rope.base as f64).powf(-2.0 * i as f64 / rope.n_rot as f64);
    pos as f64 * rope.freq_scale as f64 * inv
}

/// The rotation angle of pair `i` at `pos` and the magnitude multiplier of its cosine and
/// sine, in f64, YaRN included ([`super::ops::Yarn`]).
pub fn rope_angle_scale(rope: &Rope, pos: i32, i: usize) -> (f64, f64) {
    let Some(y) = rope.yarn else {
        return (rope_angle(rope, pos, i), 1.0);
    };
    let extrap = pos as f64 * (rope.base as f64).powf(-2.0 * i as f64 / rope.n_rot as f64);
    let interp = rope.freq_scale as f64 * extrap;
    let mut mscale = y.attn_factor as f64;
    if y.ext_factor == 0.0 {
        return (interp, mscale);
    }
    let [low, high] = y.corr_dims(rope.n_rot, rope.base);
    let t = (i as f64 - low as f64) / (high as f64 - low as f64).max(0.001);
    let mix = (1.0 - t.clamp(0.0, 1.0)) * y.ext_factor as f64;
    mscale *= 1.0 + 0.1 * (1.0 / rope.freq_scale as f64).ln();
    (interp * (1.0 - mix) + extrap * mix, mscale)
}

impl Ops for RefOps {
    type Weight = RefWeight;
    type Act = RefAct;
    type Kv = RefKv;
    type Exec = RefExec;

    fn weight(&self, t: &TensorInfo<'static>) -> Result<RefWeight> {
        let cols = t.dims.first().copied().unwrap_or(1) as usize;
        let rows = t.dims.iter().skip(1).product::<u64>() as usize;
        let experts = if t.dims.len() == 3 {
            t.dims[2] as usize
        } else {
            1
        };
        let mut data = zeroed(rows * cols, "a weight")?;
        dequantize_row(t.ty, t.data, &mut data)
            .map_err(|e| BackendError::unsupported(e.to_string()))?;
        Ok(RefWeight {
            rows,
            cols,
            experts,
            data,
        })
    }

    fn weight_bytes(&self, w: &RefWeight) -> u64 {
        w.data.len() as u64 * 4
    }

    fn act(&self, rows: usize, cols: usize) -> Result<RefAct> {
        Ok(RefAct {
            rows,
            cap: rows,
            cols,
            data: zeroed(rows * cols, "an activation")?,
        })
    }

    fn set_rows(&self, x: &mut RefAct, rows: usize) -> Result<()> {
        if rows > x.cap {
            return Err(shape("set_rows"));
        }
        x.rows = rows;
        Ok(())
    }

    fn act_shape(&self, x: &RefAct) -> (usize, usize) {
        (x.rows, x.cols)
    }

    fn act_bytes(&self, x: &RefAct) -> u64 {
        x.data.len() as u64 * 4
    }

    fn kv_alloc(&self, layers: &[KvShape], n_ctx: usize, n_seq: usize) -> Result<RefKv> {
        let mut out = Vec::with_capacity(layers.len());
        for &shape in layers {
            let per = n_ctx * n_seq * shape.n_head_kv;
            out.push(RefKvLayer {
                shape,
                k: zeroed(per * shape.head_dim_k, "the KV cache")?,
                v: zeroed(per * shape.head_dim_v, "the KV cache")?,
            });
        }
        Ok(RefKv {
            layers: out,
            n_ctx,
            n_seq,
        })
    }

    fn kv_bytes(&self, kv: &RefKv) -> u64 {
        kv.layers
            .iter()
            .map(|l| (l.k.len() + l.v.len()) as u64 * 4)
            .sum()
    }

    fn exec(&self, spec: &ExecSpec) -> Result<RefExec> {
        Ok(RefExec {
            top: TopNScratch::with_vocab(spec.n_vocab),
        })
    }

    fn exec_bytes(&self, ex: &RefExec) -> u64 {
        ex.top.bytes()
    }

    fn write(&self, _: &mut RefExec, x: &mut RefAct, data: &[f32]) -> Result<()> {
        let live = x.live_mut();
        if live.len() != data.len() {
            return Err(shape("write"));
        }
        live.copy_from_slice(data);
        Ok(())
    }

    fn read(&self, _: &mut RefExec, x: &RefAct, out: &mut [f32]) -> Result<()> {
        if out.len() != x.rows * x.cols {
            return Err(shape("read"));
        }
        out.copy_from_slice(x.live());
        Ok(())
    }

    fn embed(&self, _: &mut RefExec, t: &RefWeight, ids: &[i32], out: &mut RefAct) -> Result<()> {
        if out.rows != ids.len() || out.cols != t.cols {
            return Err(shape("embed"));
        }
        for (i, &id) in ids.iter().enumerate() {
            let id = usize::try_from(id)
                .ok()
                .filter(|&r| r < t.rows)
                .ok_or_else(|| BackendError::invalid(format!("token id {id} out of range")))?;
            out.data[i * t.cols..(i + 1) * t.cols]
                .copy_from_slice(&t.data[id * t.cols..(id + 1) * t.cols]);
        }
        Ok(())
    }

    fn rms_norm(
        &self,
        _: &mut RefExec,
        x: &RefAct,
        w: &RefWeight,
        eps: f32,
        out: &mut RefAct,
    ) -> Result<()> {
        let g = w.data.len();
        if g == 0 || !x.cols.is_multiple_of(g) || out.rows != x.rows || out.cols != x.cols {
            return Err(shape("rms_norm"));
        }
        for (src, dst) in x
            .live()
            .chunks_exact(g)
            .zip(out.live_mut().chunks_exact_mut(g))
        {
            let ms = src.iter().map(|&v| v as f64 * v as f64).sum::<f64>() / g as f64;
            let s = 1.0 / (ms + eps as f64).sqrt();
            for ((d, &v), &wv) in dst.iter_mut().zip(src).zip(&w.data) {
                *d = (v as f64 * s * wv as f64) as f32;
            }
        }
        Ok(())
    }

    fn matmul(&self, _: &mut RefExec, x: &RefAct, w: &RefWeight, out: &mut RefAct) -> Result<()> {
        if x.cols != w.cols || out.cols != w.rows || out.rows != x.rows {
            return Err(shape("matmul"));
        }
        for i in 0..x.rows {
            let xr = &x.data[i * x.cols..(i + 1) * x.cols];
            for r in 0..w.rows {
                let wr = &w.data[r * w.cols..(r + 1) * w.cols];
                let s: f64 = wr.iter().zip(xr).map(|(&a, &b)| a as f64 * b as f64).sum();
                out.data[i * out.cols + r] = s as f32;
            }
        }
        Ok(())
    }

    fn add_bias(&self, _: &mut RefExec, x: &mut RefAct, b: &RefWeight) -> Result<()> {
        if b.data.len() != x.cols {
            return Err(shape("add_bias"));
        }
        let cols = x.cols;
        for row in x.live_mut().chunks_exact_mut(cols) {
            row.iter_mut().zip(&b.data).for_each(|(a, &b)| *a += b);
        }
        Ok(())
    }

    fn add(&self, _: &mut RefExec, x: &mut RefAct, y: &RefAct) -> Result<()> {
        if x.rows != y.rows || x.cols != y.cols {
            return Err(shape("add"));
        }
        x.live_mut()
            .iter_mut()
            .zip(y.live())
            .for_each(|(a, &b)| *a += b);
        Ok(())
    }

    fn scale(&self, _: &mut RefExec, x: &mut RefAct, s: f32) -> Result<()> {
        x.live_mut().iter_mut().for_each(|a| *a *= s);
        Ok(())
    }

    fn rope(
        &self,
        _: &mut RefExec,
        x: &mut RefAct,
        positions: &[i32],
        head_dim: usize,
        rope: &Rope,
    ) -> Result<()> {
        if positions.len() != x.rows
            || head_dim == 0
            || !x.cols.is_multiple_of(head_dim)
            || rope.n_rot > head_dim
        {
            return Err(shape("rope"));
        }
        let half = rope.n_rot / 2;
        let cols = x.cols;
        for (row, &pos) in x.live_mut().chunks_exact_mut(cols).zip(positions) {
            for head in row.chunks_exact_mut(head_dim) {
                for i in 0..half {
                    let (t, m) = rope_angle_scale(rope, pos, i);
                    let (a, b) = match rope.style {
                        RopeStyle::Normal => (2 * i, 2 * i + 1),
                        RopeStyle::Neox => (i, i + half),
                    };
                    let (x0, x1) = (head[a] as f64, head[b] as f64);
                    let (c, s) = (t.cos() * m, t.sin() * m);
                    head[a] = (x0 * c - x1 * s) as f32;
                    head[b] = (x0 * s + x1 * c) as f32;
                }
            }
        }
        Ok(())
    }

    fn glu(&self, _: &mut RefExec, gate: &mut RefAct, up: &RefAct, act: Activation) -> Result<()> {
        if gate.rows != up.rows || gate.cols != up.cols {
            return Err(shape("glu"));
        }
        for (g, &u) in gate.live_mut().iter_mut().zip(up.live()) {
            let x = *g as f64;
            *g = match act {
                Activation::Silu => silu(x) * u as f64,
                Activation::GeluTanh => gelu_tanh(x) * u as f64,
                Activation::SwigluOai => swiglu_oai(x, u as f64),
            } as f32;
        }
        Ok(())
    }

    fn gather_rows(
        &self,
        _: &mut RefExec,
        x: &RefAct,
        rows: &[usize],
        out: &mut RefAct,
    ) -> Result<()> {
        if out.rows != rows.len() || out.cols != x.cols {
            return Err(shape("gather_rows"));
        }
        for (i, &r) in rows.iter().enumerate() {
            if r >= x.rows {
                return Err(shape("gather_rows"));
            }
            out.data[i * x.cols..(i + 1) * x.cols]
                .copy_from_slice(&x.data[r * x.cols..(r + 1) * x.cols]);
        }
        Ok(())
    }

    fn kv_copy(
        &self,
        _: &mut RefExec,
        kv: &mut RefKv,
        src: usize,
        dst: usize,
        n: usize,
    ) -> Result<()> {
        if src >= kv.n_seq || dst >= kv.n_seq || n > kv.n_ctx {
            return Err(shape("kv_copy"));
        }
        let n_ctx = kv.n_ctx;
        for l in &mut kv.layers {
            for (buf, w) in [
                (&mut l.k, l.shape.n_head_kv * l.shape.head_dim_k),
                (&mut l.v, l.shape.n_head_kv * l.shape.head_dim_v),
            ] {
                let s = src * n_ctx * w;
                buf.copy_within(s..s + n * w, dst * n_ctx * w);
            }
        }
        Ok(())
    }

    fn attention(
        &self,
        _: &mut RefExec,
        kv: &mut RefKv,
        layer: usize,
        q: &RefAct,
        k: &RefAct,
        v: &RefAct,
        rows: &[RowPos],
        p: &Attention,
        out: &mut RefAct,
    ) -> Result<()> {
        let (n_ctx, n_seq) = (kv.n_ctx, kv.n_seq);
        let l = kv
            .layers
            .get_mut(layer)
            .ok_or_else(|| shape("attention layer"))?;
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
        {
            return Err(shape("attention"));
        }
        for (i, r) in rows.iter().enumerate() {
            if r.pos >= n_ctx || r.seq >= n_seq {
                return Err(shape("attention rows"));
            }
            let ko = (r.seq * n_ctx + r.pos) * kw;
            l.k[ko..ko + kw].copy_from_slice(&k.data[i * kw..(i + 1) * kw]);
            let vo = (r.seq * n_ctx + r.pos) * vw;
            l.v[vo..vo + vw].copy_from_slice(&v.data[i * vw..(i + 1) * vw]);
        }
        let group = p.n_head / p.n_head_kv;
        let mut scores = Vec::new();
        let mut acc = vec![0f64; hv];
        for (i, r) in rows.iter().enumerate() {
            let lo = p.window.map_or(0, |w| (r.pos + 1).saturating_sub(w));
            for h in 0..p.n_head {
                let kvh = h / group;
                let qh = &q.data[i * q.cols + h * hk..i * q.cols + (h + 1) * hk];
                scores.clear();
                for t in lo..=r.pos {
                    let kr = &l.k[(r.seq * n_ctx + t) * kw + kvh * hk..][..hk];
                    let mut s = qh
                        .iter()
                        .zip(kr)
                        .map(|(&a, &b)| a as f64 * b as f64)
                        .sum::<f64>()
                        * p.scale as f64;
                    if let Some(c) = p.softcap {
                        s = c as f64 * (s / c as f64).tanh();
                    }
                    scores.push(s);
                }
                let sink = match p.sinks {
                    Some(s) => Some(*s.get(h).ok_or_else(|| shape("attention sinks"))? as f64),
                    None => None,
                };
                let m = scores
                    .iter()
                    .copied()
                    .chain(sink)
                    .fold(f64::NEG_INFINITY, f64::max);
                let mut sum = sink.map_or(0.0, |s| (s - m).exp());
                acc.iter_mut().for_each(|a| *a = 0.0);
                for (j, t) in (lo..=r.pos).enumerate() {
                    let e = (scores[j] - m).exp();
                    sum += e;
                    let vr = &l.v[(r.seq * n_ctx + t) * vw + kvh * hv..][..hv];
                    acc.iter_mut()
                        .zip(vr)
                        .for_each(|(a, &b)| *a += e * b as f64);
                }
                let dst = &mut out.data[i * out.cols + h * hv..i * out.cols + (h + 1) * hv];
                for (d, &a) in dst.iter_mut().zip(&acc) {
                    *d = (a / sum) as f32;
                }
            }
        }
        Ok(())
    }

    fn moe_route(
        &self,
        _: &mut RefExec,
        logits: &RefAct,
        k: usize,
        ids: &mut RefAct,
        weights: &mut RefAct,
    ) -> Result<()> {
        let n_expert = logits.cols;
        if k == 0
            || k > n_expert
            || ids.rows != logits.rows
            || weights.rows != logits.rows
            || ids.cols != k
            || weights.cols != k
        {
            return Err(shape("moe_route"));
        }
        let mut order: Vec<usize> = Vec::with_capacity(n_expert);
        for i in 0..logits.rows {
            let row = &logits.data[i * n_expert..(i + 1) * n_expert];
            order.clear();
            order.extend(0..n_expert);
            // Decreasing logits, ties to the lower index, NaN last.
            order.sort_by(|&a, &b| {
                let (x, y) = (row[a], row[b]);
                match (x.is_nan(), y.is_nan()) {
                    (true, true) => a.cmp(&b),
                    (true, false) => std::cmp::Ordering::Greater,
                    (false, true) => std::cmp::Ordering::Less,
                    _ => y.total_cmp(&x).then(a.cmp(&b)),
                }
            });
            let top = &order[..k];
            let m = row[top[0]] as f64;
            let sum: f64 = top.iter().map(|&e| (row[e] as f64 - m).exp()).sum();
            for (j, &e) in top.iter().enumerate() {
                ids.data[i * k + j] = e as f32;
                weights.data[i * k + j] = ((row[e] as f64 - m).exp() / sum) as f32;
            }
        }
        Ok(())
    }

    fn matmul_experts(
        &self,
        _: &mut RefExec,
        x: &RefAct,
        w: &RefWeight,
        bias: Option<&RefWeight>,
        ids: &RefAct,
        out: &mut RefAct,
    ) -> Result<()> {
        let (n_expert, d_in) = (w.experts, w.cols);
        let d_out = w.rows / n_expert.max(1);
        let k = ids.cols;
        if n_expert < 1
            || w.rows != d_out * n_expert
            || ids.rows != x.rows
            || out.rows != x.rows
            || out.cols != k * d_out
            || !(x.cols == d_in || x.cols == k * d_in)
            || bias.is_some_and(|b| b.data.len() != d_out * n_expert)
        {
            return Err(shape("matmul_experts"));
        }
        let per_slot = x.cols != d_in;
        for i in 0..x.rows {
            for j in 0..k {
                let e = expert_id(ids.data[i * k + j], n_expert)?;
                let xo = i * x.cols + if per_slot { j * d_in } else { 0 };
                let xr = &x.data[xo..xo + d_in];
                for r in 0..d_out {
                    let wr = &w.data[(e * d_out + r) * d_in..][..d_in];
                    let mut s: f64 = wr.iter().zip(xr).map(|(&a, &b)| a as f64 * b as f64).sum();
                    if let Some(b) = bias {
                        s += b.data[e * d_out + r] as f64;
                    }
                    out.data[i * out.cols + j * d_out + r] = s as f32;
                }
            }
        }
        Ok(())
    }

    fn moe_combine(
        &self,
        _: &mut RefExec,
        y: &RefAct,
        weights: &RefAct,
        out: &mut RefAct,
    ) -> Result<()> {
        let k = weights.cols;
        if k == 0 || y.rows != weights.rows || out.rows != y.rows || y.cols != k * out.cols {
            return Err(shape("moe_combine"));
        }
        let c = out.cols;
        for i in 0..y.rows {
            for col in 0..c {
                let s: f64 = (0..k)
                    .map(|j| {
                        weights.data[i * k + j] as f64 * y.data[i * y.cols + j * c + col] as f64
                    })
                    .sum();
                out.data[i * c + col] = s as f32;
            }
        }
        Ok(())
    }

    fn outputs(
        &self,
        ex: &mut RefExec,
        logits: &mut RefAct,
        outs: &mut [RowOutput<'_>],
    ) -> Result<()> {
        if outs.len() != logits.rows {
            return Err(shape("outputs"));
        }
        let cols = logits.cols;
        for (row, req) in logits
            .live_mut()
            .chunks_exact_mut(cols)
            .zip(outs.iter_mut())
        {
            write_output(row, req, &mut ex.top)?;
        }
        Ok(())
    }
}
