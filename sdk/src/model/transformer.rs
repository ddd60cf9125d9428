//! The decoder-only transformer shared by every supported architecture, generic over [`Ops`]
//! and driven by the per-layer [`LayerSpec`]s of its [`Config`]. Implements [`Model`] and
//! [`Context`], so a backend that provides `Ops` is a complete backend.
//!
//! A context allocates everything a step needs when it is created (activations for
//! `n_batch_max` rows, the KV cache, the backend's execution state); a `forward` then only
//! sets the rows in use, so buffers keep their addresses and nothing grows with the model.

use super::config::{Config, Ffn, LayerSpec};
use super::ops::{kv_rewind_limit, Attention, ExecSpec, KvShape, Ops, RowPos, Step};
use crate::backend::{
    BackendError, Batch, Context, ContextInfo, ContextParams, ErrorKind, Model, ModelInfo, OpStat,
    Profile, Result, RowOutput,
};
use crate::gguf::Gguf;
use crate::quant::GgmlType;
use std::sync::Arc;
use std::time::Instant;

/// Output rows evaluated together by the output head (its logits buffer holds this many).
pub const LOGIT_ROWS: usize = 32;

/// The feed-forward weights of a layer.
enum FfnWeights<W> {
    Glu {
        gate: W,
        up: W,
        down: W,
    },
    Moe {
        router: W,
        router_b: W,
        gate: W,
        gate_b: W,
        up: W,
        up_b: W,
        down: W,
        down_b: W,
    },
}

struct Layer<W> {
    spec: LayerSpec,
    attn_norm: W,
    wq: W,
    wk: W,
    wv: W,
    wo: W,
    bq: Option<W>,
    bk: Option<W>,
    bv: Option<W>,
    q_norm: Option<W>,
    k_norm: Option<W>,
    bo: Option<W>,
    /// Attention sinks, one logit per query head, on the host (see [`Attention::sinks`]).
    sinks: Option<Vec<f32>>,
    post_attn_norm: Option<W>,
    ffn_norm: W,
    ffn: FfnWeights<W>,
    post_ffn_norm: Option<W>,
}

/// A transformer model whose weights live in backend `O`.
pub struct TransformerModel<O: Ops> {
    ops: Arc<O>,
    cfg: Config,
    tok_embd: O::Weight,
    output_norm: O::Weight,
    output: Option<O::Weight>,
    layers: Vec<Layer<O::Weight>>,
    weight_bytes: u64,
}

struct Loader<'g, 'o, O: Ops> {
    g: &'g Gguf<'static>,
    ops: &'o O,
    bytes: u64,
}

impl<O: Ops> Loader<'_, '_, O> {
    fn opt(&mut self, name: &str, dims: &[usize]) -> Result<Option<O::Weight>> {
        let Some(t) = self.g.tensor(name) else {
            return Ok(None);
        };
        let got: Vec<usize> = t.dims.iter().map(|&d| d as usize).collect();
        if got != dims {
            return Err(BackendError::invalid(format!(
                "tensor {name} has shape {got:?}, expected {dims:?}"
            )));
        }
        let w = self.ops.weight(t).map_err(|e| {
            BackendError::new(e.kind, format!("tensor {name} ({}): {}", t.ty, e.message))
        })?;
        self.bytes += self.ops.weight_bytes(&w);
        Ok(Some(w))
    }

    fn req(&mut self, name: &str, dims: &[usize]) -> Result<O::Weight> {
        self.opt(name, dims)?
            .ok_or_else(|| BackendError::invalid(format!("missing tensor {name}")))
    }

    /// A required vector of `len` values, read to f32 on the host.
    fn host_vec(&mut self, name: &str, len: usize) -> Result<Vec<f32>> {
        let t = self
            .g
            .tensor(name)
            .ok_or_else(|| BackendError::invalid(format!("missing tensor {name}")))?;
        if t.dims.len() != 1 || t.dims[0] as usize != len {
            return Err(BackendError::invalid(format!(
                "tensor {name} has shape {:?}, expected [{len}]",
                t.dims
            )));
        }
        let mut v = vec![0f32; len];
        crate::quant::dequantize_row(t.ty, t.data, &mut v)
            .map_err(|e| BackendError::invalid(format!("tensor {name} ({}): {e}", t.ty)))?;
        Ok(v)
    }

    /// Required when `want`, absent otherwise.
    fn when(&mut self, want: bool, name: &str, dims: &[usize]) -> Result<Option<O::Weight>> {
        if want {
            self.req(name, dims).map(Some)
        } else {
            Ok(None)
        }
    }
}

impl<O: Ops> TransformerModel<O> {
    /// Reads the configuration and prepares every weight of the model in `g`.
    pub fn load(ops: Arc<O>, g: &Gguf<'static>) -> Result<Self> {
        let cfg = Config::from_gguf(g)?;
        let (e, ff, hd) = (cfg.n_embd, cfg.n_ff, cfg.head_dim_k);
        let qd = cfg.n_head * cfg.head_dim_k;
        let kd = cfg.n_head_kv * cfg.head_dim_k;
        let vd = cfg.n_head_kv * cfg.head_dim_v;
        let od = cfg.n_head * cfg.head_dim_v;
        let mut ld = Loader {
            g,
            ops: &*ops,
            bytes: 0,
        };
        let tok_embd = ld.req("token_embd.weight", &[e, cfg.n_vocab])?;
        let output_norm = ld.req("output_norm.weight", &[e])?;
        let output = ld.opt("output.weight", &[e, cfg.n_vocab])?;
        let mut layers = Vec::with_capacity(cfg.n_layer);
        for (l, spec) in cfg.layers.iter().enumerate() {
            let n = |s: &str| format!("blk.{l}.{s}");
            let ffn = match spec.ffn {
                Ffn::Glu(_) => FfnWeights::Glu {
                    gate: ld.req(&n("ffn_gate.weight"), &[e, ff])?,
                    up: ld.req(&n("ffn_up.weight"), &[e, ff])?,
                    down: ld.req(&n("ffn_down.weight"), &[ff, e])?,
                },
                Ffn::Moe { n_expert: x, .. } => FfnWeights::Moe {
                    router: ld.req(&n("ffn_gate_inp.weight"), &[e, x])?,
                    router_b: ld.req(&n("ffn_gate_inp.bias"), &[x])?,
                    gate: ld.req(&n("ffn_gate_exps.weight"), &[e, ff, x])?,
                    gate_b: ld.req(&n("ffn_gate_exps.bias"), &[ff, x])?,
                    up: ld.req(&n("ffn_up_exps.weight"), &[e, ff, x])?,
                    up_b: ld.req(&n("ffn_up_exps.bias"), &[ff, x])?,
                    down: ld.req(&n("ffn_down_exps.weight"), &[ff, e, x])?,
                    down_b: ld.req(&n("ffn_down_exps.bias"), &[e, x])?,
                },
            };
            let sinks = if spec.attn_sinks {
                Some(ld.host_vec(&n("attn_sinks.weight"), cfg.n_head)?)
            } else {
                None
            };
            layers.push(Layer {
                attn_norm: ld.req(&n("attn_norm.weight"), &[e])?,
                wq: ld.req(&n("attn_q.weight"), &[e, qd])?,
                wk: ld.req(&n("attn_k.weight"), &[e, kd])?,
                wv: ld.req(&n("attn_v.weight"), &[e, vd])?,
                wo: ld.req(&n("attn_output.weight"), &[od, e])?,
                bq: ld.when(spec.qkv_bias, &n("attn_q.bias"), &[qd])?,
                bk: ld.when(spec.qkv_bias, &n("attn_k.bias"), &[kd])?,
                bv: ld.when(spec.qkv_bias, &n("attn_v.bias"), &[vd])?,
                q_norm: ld.when(spec.qk_norm, &n("attn_q_norm.weight"), &[hd])?,
                k_norm: ld.when(spec.qk_norm, &n("attn_k_norm.weight"), &[hd])?,
                bo: ld.when(spec.attn_out_bias, &n("attn_output.bias"), &[e])?,
                sinks,
                post_attn_norm: ld.when(spec.post_norms, &n("post_attention_norm.weight"), &[e])?,
                ffn_norm: ld.req(&n(&format!("{}.weight", cfg.arch.ffn_norm)), &[e])?,
                ffn,
                post_ffn_norm: ld.when(spec.post_norms, &n("post_ffw_norm.weight"), &[e])?,
                spec: spec.clone(),
            });
        }
        let weight_bytes = ld.bytes;
        Ok(TransformerModel {
            ops,
            cfg,
            tok_embd,
            output_norm,
            output,
            layers,
            weight_bytes,
        })
    }

    /// The model's hyper-parameters.
    pub fn config(&self) -> &Config {
        &self.cfg
    }
}

/// The mixture-of-experts activations of one context.
struct MoeWork<A> {
    /// Router logits, `n × n_expert`.
    logits: A,
    /// Selected experts and their weights, `n × k`.
    ids: A,
    wts: A,
    /// Per-slot gate/up (`n × k·n_ff`) and down (`n × k·n_embd`) outputs.
    g: A,
    up: A,
    down: A,
}

/// The activations of one context, allocated once.
struct Work<A> {
    x: A,
    h: A,
    o: A,
    q: A,
    k: A,
    v: A,
    att: A,
    g: A,
    up: A,
    qn: Option<A>,
    kn: Option<A>,
    moe: Option<MoeWork<A>>,
    xo: A,
    xn: A,
    logits: A,
}

impl<A> Work<A> {
    fn all(&self) -> impl Iterator<Item = &A> {
        [
            &self.x,
            &self.h,
            &self.o,
            &self.q,
            &self.k,
            &self.v,
            &self.att,
            &self.g,
            &self.up,
            &self.xo,
            &self.xn,
            &self.logits,
        ]
        .into_iter()
        .chain(self.qn.iter())
        .chain(self.kn.iter())
        .chain(
            self.moe
                .iter()
                .flat_map(|m| [&m.logits, &m.ids, &m.wts, &m.g, &m.up, &m.down].into_iter()),
        )
    }
}

impl<O: Ops> Model for TransformerModel<O> {
    type Context = TransformerContext<O>;

    fn info(&self) -> ModelInfo {
        ModelInfo {
            n_vocab: self.cfg.n_vocab as u32,
            n_ctx_train: self.cfg.n_ctx_train as u32,
            n_layer: self.cfg.n_layer as u32,
            n_embd: self.cfg.n_embd as u32,
            weight_bytes: self.weight_bytes,
            kv_bytes_per_token: self.cfg.kv_bytes_per_token(),
            arch: self.cfg.arch_name.clone(),
        }
    }

    fn create_context(self: &Arc<Self>, p: &ContextParams) -> Result<TransformerContext<O>> {
        if p.kv_type != GgmlType::F16 {
            return Err(BackendError::unsupported(format!(
                "KV cache type {} (only F16)",
                p.kv_type
            )));
        }
        if p.n_ctx == 0 || p.n_seq_max == 0 || p.n_batch_max == 0 {
            return Err(BackendError::invalid(
                "context needs n_ctx, n_seq_max and n_batch_max > 0",
            ));
        }
        let c = &self.cfg;
        let ops = &*self.ops;
        let shapes: Vec<KvShape> = c
            .layers
            .iter()
            .map(|l| KvShape {
                n_head_kv: c.n_head_kv,
                head_dim_k: c.head_dim_k,
                head_dim_v: c.head_dim_v,
                window: l.window,
                cells: match l.window {
                    Some(w) => (p.n_ctx as usize).min(w.saturating_add(p.n_batch_max as usize)),
                    None => p.n_ctx as usize,
                },
            })
            .collect();
        let rewind = kv_rewind_limit(&shapes, p.n_ctx as usize);
        let kv = ops.kv_alloc(&shapes, p.n_ctx as usize, p.n_seq_max as usize)?;
        let n = p.n_batch_max as usize;
        let n_out = (p.n_outputs_max as usize).clamp(1, LOGIT_ROWS);
        let (qd, kd, vd, od) = (
            c.n_head * c.head_dim_k,
            c.n_head_kv * c.head_dim_k,
            c.n_head_kv * c.head_dim_v,
            c.n_head * c.head_dim_v,
        );
        let qk_norm = c.layers.iter().any(|l| l.qk_norm);
        let moe_shape = c.layers.iter().find_map(|l| match l.ffn {
            Ffn::Moe {
                n_expert, n_used, ..
            } => Some((n_expert, n_used)),
            Ffn::Glu(_) => None,
        });
        let moe = match moe_shape {
            Some((n_expert, k)) => Some(MoeWork {
                logits: ops.act(n, n_expert)?,
                ids: ops.act(n, k)?,
                wts: ops.act(n, k)?,
                g: ops.act(n, k * c.n_ff)?,
                up: ops.act(n, k * c.n_ff)?,
                down: ops.act(n, k * c.n_embd)?,
            }),
            None => None,
        };
        let dense = c.layers.iter().any(|l| matches!(l.ffn, Ffn::Glu(_)));
        let ff_cols = if dense { c.n_ff } else { 0 };
        let work = Work {
            x: ops.act(n, c.n_embd)?,
            h: ops.act(n, c.n_embd)?,
            o: ops.act(n, c.n_embd)?,
            q: ops.act(n, qd)?,
            k: ops.act(n, kd)?,
            v: ops.act(n, vd)?,
            att: ops.act(n, od)?,
            g: ops.act(n, ff_cols)?,
            up: ops.act(n, ff_cols)?,
            qn: if qk_norm { Some(ops.act(n, qd)?) } else { None },
            kn: if qk_norm { Some(ops.act(n, kd)?) } else { None },
            moe,
            xo: ops.act(n_out, c.n_embd)?,
            xn: ops.act(n_out, c.n_embd)?,
            logits: ops.act(n_out, c.n_vocab)?,
        };
        let (n_expert, k) = moe_shape.unwrap_or((0, 0));
        let max_cols = [
            c.n_embd,
            qd,
            kd,
            vd,
            od,
            c.n_ff,
            c.n_vocab,
            n_expert,
            k * c.n_ff,
            k * c.n_embd,
        ]
        .into_iter()
        .max()
        .unwrap_or(0);
        let ex = ops.exec(&ExecSpec {
            n_batch_max: n,
            n_logit_rows: n_out,
            n_vocab: c.n_vocab,
            max_cols,
            expert_cols: if moe_shape.is_some() {
                c.n_embd.max(c.n_ff)
            } else {
                0
            },
        })?;
        let scratch_bytes = work.all().map(|a| ops.act_bytes(a)).sum::<u64>() + ops.exec_bytes(&ex);
        Ok(TransformerContext {
            model: self.clone(),
            kv,
            ex,
            work,
            n_ctx: p.n_ctx as usize,
            n_batch_max: n,
            n_outputs_max: p.n_outputs_max as usize,
            seq_len: vec![0; p.n_seq_max as usize],
            plan_len: Vec::with_capacity(p.n_seq_max as usize),
            rows: Vec::with_capacity(n),
            out_rows: Vec::with_capacity(n_out),
            scratch_bytes,
            rewind,
            prof: Prof::default(),
        })
    }
}

/// Profiling counters (kept only while enabled).
#[derive(Default)]
struct Prof {
    on: bool,
    n_forward: u64,
    ops: Vec<OpStat>,
}

impl Prof {
    #[inline]
    fn start(&self) -> Option<Instant> {
        self.on.then(Instant::now)
    }

    #[inline]
    fn record(&mut self, name: &'static str, t0: Option<Instant>) {
        let Some(t0) = t0 else { return };
        let nanos = t0.elapsed().as_nanos() as u64;
        match self.ops.iter_mut().find(|o| o.name == name) {
            Some(o) => {
                o.calls += 1;
                o.nanos += nanos;
            }
            None => self.ops.push(OpStat {
                name,
                calls: 1,
                nanos,
            }),
        }
    }
}

/// Runs one `Ops` call, timing it when profiling is on.
macro_rules! op {
    ($prof:expr, $name:literal, $call:expr) => {{
        let t0 = $prof.start();
        let r = $call;
        $prof.record($name, t0);
        r
    }};
}

/// The KV cache, scratch and sequence bookkeeping of one context of a [`TransformerModel`].
pub struct TransformerContext<O: Ops> {
    model: Arc<TransformerModel<O>>,
    kv: O::Kv,
    ex: O::Exec,
    work: Work<O::Act>,
    n_ctx: usize,
    n_batch_max: usize,
    n_outputs_max: usize,
    seq_len: Vec<usize>,
    /// Planning buffers, reused by every step.
    plan_len: Vec<usize>,
    rows: Vec<RowPos>,
    out_rows: Vec<usize>,
    scratch_bytes: u64,
    /// How far a sequence can be rewound (sliding-window layers keep a ring of positions).
    rewind: Option<usize>,
    prof: Prof,
}

impl<O: Ops> TransformerContext<O> {
    /// A sequence of `len` positions can be continued from `n`: its sliding-window layers still
    /// hold the window before `n`.
    fn check_rewind(&self, len: usize, n: usize) -> Result<()> {
        match self.rewind {
            Some(r) if n > 0 && len - n > r => Err(BackendError::new(
                ErrorKind::Unsupported,
                format!(
                    "cannot rewind from {len} to {n} positions: the sliding-window layers keep \
                     only {r} positions past their window (clear the sequence instead)"
                ),
            )),
            _ => Ok(()),
        }
    }

    fn seq(&self, seq: i32) -> Result<usize> {
        usize::try_from(seq)
            .ok()
            .filter(|&s| s < self.seq_len.len())
            .ok_or_else(|| {
                BackendError::invalid(format!(
                    "sequence id {seq} out of 0..{}",
                    self.seq_len.len()
                ))
            })
    }

    /// Checks the batch and its outputs and fills `rows`; nothing is changed on error.
    fn plan(&mut self, batch: &Batch<'_>, outs: &[RowOutput<'_>]) -> Result<()> {
        let n = batch.len();
        if batch.positions.len() != n || batch.seq_ids.len() != n {
            return Err(BackendError::invalid("batch slices differ in length"));
        }
        if n > self.n_batch_max {
            return Err(BackendError::invalid(format!(
                "the batch has {n} rows; this context takes at most {}",
                self.n_batch_max
            )));
        }
        if outs.len() > self.n_outputs_max {
            return Err(BackendError::invalid(format!(
                "{} output rows asked; this context returns at most {}",
                outs.len(),
                self.n_outputs_max
            )));
        }
        let n_vocab = self.model.cfg.n_vocab;
        let mut prev: Option<usize> = None;
        for o in outs {
            if o.row >= n || prev.is_some_and(|p| o.row <= p) {
                return Err(BackendError::invalid(format!(
                    "output row {} is out of order or outside the batch of {n} rows",
                    o.row
                )));
            }
            prev = Some(o.row);
            super::select::check_output(o, n_vocab)?;
        }
        self.plan_len.clear();
        self.plan_len.extend_from_slice(&self.seq_len);
        self.rows.clear();
        for i in 0..n {
            let tok = batch.tokens[i];
            if tok < 0 || tok as usize >= n_vocab {
                return Err(BackendError::invalid(format!(
                    "token id {tok} out of 0..{n_vocab}"
                )));
            }
            let seq = self.seq(batch.seq_ids[i])?;
            let pos = batch.positions[i];
            if pos < 0 || pos as usize != self.plan_len[seq] {
                return Err(BackendError::invalid(format!(
                    "position {pos} of sequence {seq}: the next position is {} (truncate first to rewrite)",
                    self.plan_len[seq]
                )));
            }
            if pos as usize >= self.n_ctx {
                return Err(BackendError::new(
                    ErrorKind::ContextFull,
                    format!(
                        "sequence {seq} is full: position {pos} is past the context size {}",
                        self.n_ctx
                    ),
                ));
            }
            self.plan_len[seq] += 1;
            self.rows.push(RowPos {
                seq,
                pos: pos as usize,
            });
        }
        Ok(())
    }

    /// The layers and the output head of a planned step.
    fn run(&mut self, batch: &Batch<'_>, outs: &mut [RowOutput<'_>]) -> Result<()> {
        let m = &*self.model;
        let (ops, c) = (&*m.ops, &m.cfg);
        let n = batch.len();
        let Self {
            kv,
            ex,
            work: w,
            rows,
            out_rows,
            prof,
            ..
        } = self;
        for a in [
            &mut w.x, &mut w.h, &mut w.o, &mut w.q, &mut w.k, &mut w.v, &mut w.att, &mut w.g,
            &mut w.up,
        ] {
            ops.set_rows(a, n)?;
        }
        for a in [w.qn.as_mut(), w.kn.as_mut()].into_iter().flatten() {
            ops.set_rows(a, n)?;
        }
        if let Some(m) = w.moe.as_mut() {
            for a in [
                &mut m.logits,
                &mut m.ids,
                &mut m.wts,
                &mut m.g,
                &mut m.up,
                &mut m.down,
            ] {
                ops.set_rows(a, n)?;
            }
        }
        op!(
            prof,
            "embed",
            ops.embed(ex, &m.tok_embd, batch.tokens, &mut w.x)
        )?;
        if let Some(s) = c.embed_scale {
            op!(prof, "scale", ops.scale(ex, &mut w.x, s))?;
        }
        for (l, lw) in m.layers.iter().enumerate() {
            let spec = &lw.spec;
            op!(
                prof,
                "norm_matmul_qkv",
                ops.norm_matmul_qkv(
                    ex,
                    &w.x,
                    &lw.attn_norm,
                    c.eps,
                    &mut w.h,
                    [&lw.wq, &lw.wk, &lw.wv],
                    [lw.bq.as_ref(), lw.bk.as_ref(), lw.bv.as_ref()],
                    [&mut w.q, &mut w.k, &mut w.v],
                )
            )?;
            // QK-norm writes into separate buffers (no swapping: every step uses the same
            // buffers in the same roles).
            let q = match (&lw.q_norm, w.qn.as_mut()) {
                (Some(qw), Some(t)) => {
                    op!(prof, "rms_norm", ops.rms_norm(ex, &w.q, qw, c.eps, t))?;
                    t
                }
                _ => &mut w.q,
            };
            let k = match (&lw.k_norm, w.kn.as_mut()) {
                (Some(kw), Some(t)) => {
                    op!(prof, "rms_norm", ops.rms_norm(ex, &w.k, kw, c.eps, t))?;
                    t
                }
                _ => &mut w.k,
            };
            let hd = c.head_dim_k;
            op!(
                prof,
                "rope",
                ops.rope_qk(ex, q, k, batch.positions, hd, &spec.rope)
            )?;
            let p = Attention {
                n_head: c.n_head,
                n_head_kv: c.n_head_kv,
                head_dim_k: c.head_dim_k,
                head_dim_v: c.head_dim_v,
                scale: spec.attn_scale,
                window: spec.window,
                softcap: spec.softcap,
                sinks: lw.sinks.as_deref(),
            };
            op!(
                prof,
                "attention",
                ops.attention(ex, kv, l, q, k, &w.v, rows, &p, &mut w.att)
            )?;
            if let Some(pn) = &lw.post_attn_norm {
                op!(
                    prof,
                    "matmul",
                    ops.matmul_bias(ex, &w.att, &lw.wo, lw.bo.as_ref(), &mut w.o)
                )?;
                op!(
                    prof,
                    "rms_norm",
                    ops.rms_norm(ex, &w.o, pn, c.eps, &mut w.h)
                )?;
                op!(prof, "add", ops.add(ex, &mut w.x, &w.h))?;
            } else {
                op!(
                    prof,
                    "matmul_add",
                    ops.matmul_add(ex, &w.att, &lw.wo, lw.bo.as_ref(), &mut w.x, &mut w.o)
                )?;
            }
            match (&lw.ffn, spec.ffn) {
                (FfnWeights::Glu { gate, up, down }, Ffn::Glu(act)) => {
                    op!(
                        prof,
                        "norm_matmul_glu",
                        ops.norm_matmul_glu(
                            ex,
                            &w.x,
                            &lw.ffn_norm,
                            c.eps,
                            &mut w.h,
                            gate,
                            up,
                            act,
                            &mut w.g,
                            &mut w.up
                        )
                    )?;
                    if lw.post_ffn_norm.is_some() {
                        op!(prof, "matmul", ops.matmul(ex, &w.g, down, &mut w.o))?;
                    } else {
                        op!(
                            prof,
                            "matmul_add",
                            ops.matmul_add(ex, &w.g, down, None, &mut w.x, &mut w.o)
                        )?;
                    }
                }
                (
                    FfnWeights::Moe {
                        router,
                        router_b,
                        gate,
                        gate_b,
                        up,
                        up_b,
                        down,
                        down_b,
                    },
                    Ffn::Moe { n_used, act, .. },
                ) => {
                    op!(
                        prof,
                        "rms_norm",
                        ops.rms_norm(ex, &w.x, &lw.ffn_norm, c.eps, &mut w.h)
                    )?;
                    let m = w
                        .moe
                        .as_mut()
                        .ok_or_else(|| BackendError::internal("no expert activations"))?;
                    op!(prof, "matmul", ops.matmul(ex, &w.h, router, &mut m.logits))?;
                    op!(prof, "add_bias", ops.add_bias(ex, &mut m.logits, router_b))?;
                    op!(
                        prof,
                        "moe_route",
                        ops.moe_route(ex, &m.logits, n_used, &mut m.ids, &mut m.wts)
                    )?;
                    op!(
                        prof,
                        "matmul_experts",
                        ops.matmul_experts(ex, &w.h, gate, Some(gate_b), &m.ids, &mut m.g)
                    )?;
                    op!(
                        prof,
                        "matmul_experts",
                        ops.matmul_experts(ex, &w.h, up, Some(up_b), &m.ids, &mut m.up)
                    )?;
                    op!(prof, "glu", ops.glu(ex, &mut m.g, &m.up, act))?;
                    op!(
                        prof,
                        "matmul_experts",
                        ops.matmul_experts(ex, &m.g, down, Some(down_b), &m.ids, &mut m.down)
                    )?;
                    op!(
                        prof,
                        "moe_combine",
                        ops.moe_combine(ex, &m.down, &m.wts, &mut w.o)
                    )?;
                }
                _ => {
                    return Err(BackendError::internal(
                        "layer weights do not match its spec",
                    ))
                }
            }
            if let Some(pn) = &lw.post_ffn_norm {
                op!(
                    prof,
                    "rms_norm",
                    ops.rms_norm(ex, &w.o, pn, c.eps, &mut w.h)
                )?;
                op!(prof, "add", ops.add(ex, &mut w.x, &w.h))?;
            } else if matches!(lw.ffn, FfnWeights::Moe { .. }) {
                op!(prof, "add", ops.add(ex, &mut w.x, &w.o))?;
            }
        }
        let head = m.output.as_ref().unwrap_or(&m.tok_embd);
        let chunk = ops.act_shape(&w.logits).0.max(1);
        let mut start = 0;
        while start < outs.len() {
            let end = (start + chunk).min(outs.len());
            out_rows.clear();
            out_rows.extend(outs[start..end].iter().map(|o| o.row));
            let k = out_rows.len();
            ops.set_rows(&mut w.xo, k)?;
            ops.set_rows(&mut w.xn, k)?;
            ops.set_rows(&mut w.logits, k)?;
            op!(
                prof,
                "gather_rows",
                ops.gather_rows(ex, &w.x, out_rows, &mut w.xo)
            )?;
            op!(
                prof,
                "rms_norm",
                ops.rms_norm(ex, &w.xo, &m.output_norm, c.eps, &mut w.xn)
            )?;
            op!(prof, "matmul", ops.matmul(ex, &w.xn, head, &mut w.logits))?;
            op!(
                prof,
                "outputs",
                ops.outputs(ex, &mut w.logits, &mut outs[start..end])
            )?;
            start = end;
        }
        Ok(())
    }
}

impl<O: Ops> Context for TransformerContext<O> {
    fn info(&self) -> ContextInfo {
        ContextInfo {
            n_ctx: self.n_ctx as u32,
            n_seq_max: self.seq_len.len() as u32,
            n_batch_max: self.n_batch_max as u32,
            n_outputs_max: self.n_outputs_max as u32,
            kv_bytes: self.model.ops.kv_bytes(&self.kv),
            scratch_bytes: self.scratch_bytes,
        }
    }

    fn seq_clear(&mut self, seq: i32) -> Result<()> {
        let s = self.seq(seq)?;
        self.seq_len[s] = 0;
        Ok(())
    }

    fn seq_truncate(&mut self, seq: i32, n_keep: u32) -> Result<()> {
        let s = self.seq(seq)?;
        let n = self.seq_len[s].min(n_keep as usize);
        self.check_rewind(self.seq_len[s], n)?;
        self.seq_len[s] = n;
        Ok(())
    }

    fn seq_copy(&mut self, src: i32, dst: i32, n: u32) -> Result<()> {
        let (s, d) = (self.seq(src)?, self.seq(dst)?);
        let n = (n as usize).min(self.seq_len[s]);
        self.check_rewind(self.seq_len[s], n)?;
        if s != d {
            let ops = &*self.model.ops;
            ops.kv_copy(&mut self.ex, &mut self.kv, s, d, n)?;
        }
        self.seq_len[d] = n;
        Ok(())
    }

    fn forward(&mut self, batch: &Batch<'_>, outs: &mut [RowOutput<'_>]) -> Result<()> {
        if batch.is_empty() {
            if outs.is_empty() {
                return Ok(());
            }
            return Err(BackendError::invalid("outputs asked of an empty batch"));
        }
        self.plan(batch, outs)?;
        let ops = self.model.ops.clone();
        ops.begin(
            &mut self.ex,
            &Step {
                tokens: batch.tokens,
                positions: batch.positions,
                rows: &self.rows,
                n_outputs: outs.len(),
            },
        )?;
        let r = self.run(batch, outs);
        if r.is_err() {
            ops.abort(&mut self.ex);
        }
        let e = ops.end(&mut self.ex);
        r?;
        e?;
        for r in &self.rows {
            self.seq_len[r.seq] = self.seq_len[r.seq].max(r.pos + 1);
        }
        if self.prof.on {
            self.prof.n_forward += 1;
        }
        Ok(())
    }

    fn profile(&mut self, enable: bool) -> Result<Profile> {
        let out = Profile {
            n_forward: self.prof.n_forward,
            ops: self.prof.ops.clone(),
        };
        if enable {
            self.prof = Prof {
                on: true,
                ..Prof::default()
            };
        } else {
            self.prof.on = false;
        }
        Ok(out)
    }
}
