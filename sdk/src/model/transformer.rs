//! The decoder-only transformer shared by every supported architecture, generic over [`Ops`].
//! Implements [`Model`] and [`Context`], so a backend that provides `Ops` is a complete backend.

use super::config::{Arch, Config};
use super::ops::{Attention, KvShape, Ops, RowPos};
use crate::backend::{
    BackendError, Batch, Context, ContextInfo, ContextParams, ErrorKind, Model, ModelInfo, Outputs,
    Result,
};
use crate::gguf::Gguf;
use crate::quant::GgmlType;
use std::sync::Arc;

struct Layer<W> {
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
    post_attn_norm: Option<W>,
    ffn_norm: W,
    gate: W,
    up: W,
    down: W,
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
}

impl<O: Ops> TransformerModel<O> {
    /// Reads the configuration and prepares every weight of the model in `g`.
    pub fn load(ops: Arc<O>, g: &Gguf<'static>) -> Result<Self> {
        let cfg = Config::from_gguf(g)?;
        let (e, ff) = (cfg.n_embd, cfg.n_ff);
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
        let gemma = cfg.arch == Arch::Gemma3;
        let mut layers = Vec::with_capacity(cfg.n_layer);
        for l in 0..cfg.n_layer {
            let n = |s: &str| format!("blk.{l}.{s}");
            let bias = cfg.arch == Arch::Qwen2;
            layers.push(Layer {
                attn_norm: ld.req(&n("attn_norm.weight"), &[e])?,
                wq: ld.req(&n("attn_q.weight"), &[e, qd])?,
                wk: ld.req(&n("attn_k.weight"), &[e, kd])?,
                wv: ld.req(&n("attn_v.weight"), &[e, vd])?,
                wo: ld.req(&n("attn_output.weight"), &[od, e])?,
                bq: if bias {
                    ld.opt(&n("attn_q.bias"), &[qd])?
                } else {
                    None
                },
                bk: if bias {
                    ld.opt(&n("attn_k.bias"), &[kd])?
                } else {
                    None
                },
                bv: if bias {
                    ld.opt(&n("attn_v.bias"), &[vd])?
                } else {
                    None
                },
                q_norm: if gemma {
                    Some(ld.req(&n("attn_q_norm.weight"), &[cfg.head_dim_k])?)
                } else {
                    None
                },
                k_norm: if gemma {
                    Some(ld.req(&n("attn_k_norm.weight"), &[cfg.head_dim_k])?)
                } else {
                    None
                },
                post_attn_norm: if gemma {
                    Some(ld.req(&n("post_attention_norm.weight"), &[e])?)
                } else {
                    None
                },
                ffn_norm: ld.req(&n("ffn_norm.weight"), &[e])?,
                gate: ld.req(&n("ffn_gate.weight"), &[e, ff])?,
                up: ld.req(&n("ffn_up.weight"), &[e, ff])?,
                down: ld.req(&n("ffn_down.weight"), &[ff, e])?,
                post_ffn_norm: if gemma {
                    Some(ld.req(&n("post_ffw_norm.weight"), &[e])?)
                } else {
                    None
                },
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
        if p.n_ctx == 0 || p.n_seq_max == 0 {
            return Err(BackendError::invalid(
                "context needs n_ctx > 0 and n_seq_max > 0",
            ));
        }
        let shape = KvShape {
            n_head_kv: self.cfg.n_head_kv,
            head_dim_k: self.cfg.head_dim_k,
            head_dim_v: self.cfg.head_dim_v,
        };
        let layers = vec![shape; self.cfg.n_layer];
        let kv = self
            .ops
            .kv_alloc(&layers, p.n_ctx as usize, p.n_seq_max as usize)?;
        Ok(TransformerContext {
            model: self.clone(),
            kv,
            n_ctx: p.n_ctx as usize,
            seq_len: vec![0; p.n_seq_max as usize],
        })
    }
}

/// The KV cache and sequence bookkeeping of one context of a [`TransformerModel`].
pub struct TransformerContext<O: Ops> {
    model: Arc<TransformerModel<O>>,
    kv: O::Kv,
    n_ctx: usize,
    seq_len: Vec<usize>,
}

impl<O: Ops> TransformerContext<O> {
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

    /// Checks the batch and returns each row's place; nothing is changed on error.
    fn plan(&self, batch: &Batch<'_>) -> Result<Vec<RowPos>> {
        let n_vocab = self.model.cfg.n_vocab;
        let mut len = self.seq_len.clone();
        let mut rows = Vec::with_capacity(batch.len());
        for i in 0..batch.len() {
            let tok = batch.tokens[i];
            if tok < 0 || tok as usize >= n_vocab {
                return Err(BackendError::invalid(format!(
                    "token id {tok} out of 0..{n_vocab}"
                )));
            }
            let seq = self.seq(batch.seq_ids[i])?;
            let pos = batch.positions[i];
            if pos < 0 || pos as usize != len[seq] {
                return Err(BackendError::invalid(format!(
                    "position {pos} of sequence {seq}: the next position is {} (truncate first to rewrite)",
                    len[seq]
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
            len[seq] += 1;
            rows.push(RowPos {
                seq,
                pos: pos as usize,
            });
        }
        Ok(rows)
    }
}

impl<O: Ops> Context for TransformerContext<O> {
    fn info(&self) -> ContextInfo {
        ContextInfo {
            n_ctx: self.n_ctx as u32,
            n_seq_max: self.seq_len.len() as u32,
            kv_bytes: self.model.ops.kv_bytes(&self.kv),
        }
    }

    fn seq_clear(&mut self, seq: i32) -> Result<()> {
        let s = self.seq(seq)?;
        self.seq_len[s] = 0;
        Ok(())
    }

    fn seq_truncate(&mut self, seq: i32, n_keep: u32) -> Result<()> {
        let s = self.seq(seq)?;
        self.seq_len[s] = self.seq_len[s].min(n_keep as usize);
        Ok(())
    }

    fn seq_copy(&mut self, src: i32, dst: i32, n: u32) -> Result<()> {
        let (s, d) = (self.seq(src)?, self.seq(dst)?);
        let n = (n as usize).min(self.seq_len[s]);
        if s != d {
            self.model.ops.kv_copy(&mut self.kv, s, d, n)?;
        }
        self.seq_len[d] = n;
        Ok(())
    }

    fn forward(&mut self, batch: &Batch<'_>, out: &mut Outputs<'_>) -> Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        let rows = self.plan(batch)?;
        let m = &*self.model;
        let (ops, c) = (&*m.ops, &m.cfg);
        let n = batch.len();
        let positions = batch.positions;
        let (qd, kd, vd, od) = (
            c.n_head * c.head_dim_k,
            c.n_head_kv * c.head_dim_k,
            c.n_head_kv * c.head_dim_v,
            c.n_head * c.head_dim_v,
        );
        let mut x = ops.act(n, c.n_embd);
        let mut h = ops.act(n, c.n_embd);
        let mut o = ops.act(n, c.n_embd);
        let mut q = ops.act(n, qd);
        let mut k = ops.act(n, kd);
        let mut v = ops.act(n, vd);
        let mut att = ops.act(n, od);
        let mut g = ops.act(n, c.n_ff);
        let mut up = ops.act(n, c.n_ff);
        let (mut qn, mut kn) = if c.arch == Arch::Gemma3 {
            (Some(ops.act(n, qd)), Some(ops.act(n, kd)))
        } else {
            (None, None)
        };
        ops.embed(&m.tok_embd, batch.tokens, &mut x)?;
        if let Some(s) = c.embed_scale {
            ops.scale(&mut x, s)?;
        }
        for (l, w) in m.layers.iter().enumerate() {
            let local = c.is_local(l);
            ops.rms_norm(&x, &w.attn_norm, c.eps, &mut h)?;
            ops.matmul(&h, &w.wq, &mut q)?;
            ops.matmul(&h, &w.wk, &mut k)?;
            ops.matmul(&h, &w.wv, &mut v)?;
            if let Some(b) = &w.bq {
                ops.add_bias(&mut q, b)?;
            }
            if let Some(b) = &w.bk {
                ops.add_bias(&mut k, b)?;
            }
            if let Some(b) = &w.bv {
                ops.add_bias(&mut v, b)?;
            }
            if let (Some(qw), Some(tmp)) = (&w.q_norm, qn.as_mut()) {
                ops.rms_norm(&q, qw, c.eps, tmp)?;
                std::mem::swap(&mut q, tmp);
            }
            if let (Some(kw), Some(tmp)) = (&w.k_norm, kn.as_mut()) {
                ops.rms_norm(&k, kw, c.eps, tmp)?;
                std::mem::swap(&mut k, tmp);
            }
            let rope = if local { &c.rope_local } else { &c.rope };
            ops.rope(&mut q, positions, c.head_dim_k, rope)?;
            ops.rope(&mut k, positions, c.head_dim_k, rope)?;
            let p = Attention {
                n_head: c.n_head,
                n_head_kv: c.n_head_kv,
                head_dim_k: c.head_dim_k,
                head_dim_v: c.head_dim_v,
                scale: c.attn_scale,
                window: if local { c.sliding_window } else { None },
                softcap: None,
            };
            ops.attention(&mut self.kv, l, &q, &k, &v, &rows, &p, &mut att)?;
            ops.matmul(&att, &w.wo, &mut o)?;
            if let Some(pn) = &w.post_attn_norm {
                ops.rms_norm(&o, pn, c.eps, &mut h)?;
                ops.add(&mut x, &h)?;
            } else {
                ops.add(&mut x, &o)?;
            }
            ops.rms_norm(&x, &w.ffn_norm, c.eps, &mut h)?;
            ops.matmul(&h, &w.gate, &mut g)?;
            ops.matmul(&h, &w.up, &mut up)?;
            ops.glu(&mut g, &up, c.act)?;
            ops.matmul(&g, &w.down, &mut o)?;
            if let Some(pn) = &w.post_ffn_norm {
                ops.rms_norm(&o, pn, c.eps, &mut h)?;
                ops.add(&mut x, &h)?;
            } else {
                ops.add(&mut x, &o)?;
            }
        }
        for r in &rows {
            self.seq_len[r.seq] = self.seq_len[r.seq].max(r.pos + 1);
        }
        let wanted: Vec<usize> = (0..n).filter(|&i| batch.want_output[i] != 0).collect();
        if wanted.is_empty() {
            return Ok(());
        }
        let mut xo = ops.act(wanted.len(), c.n_embd);
        ops.gather_rows(&x, &wanted, &mut xo)?;
        let mut xn = ops.act(wanted.len(), c.n_embd);
        ops.rms_norm(&xo, &m.output_norm, c.eps, &mut xn)?;
        let mut logits = ops.act(wanted.len(), c.n_vocab);
        ops.matmul(&xn, m.output.as_ref().unwrap_or(&m.tok_embd), &mut logits)?;
        match out {
            Outputs::Logits(buf) => ops.read(&logits, buf),
            Outputs::TopN {
                n,
                ids,
                logits: vals,
                lse,
            } => ops.top_n(&logits, *n, ids, vals, lse),
        }
    }
}
