//! Model hyper-parameters read from GGUF metadata. An architecture is data ([`ArchSpec`]):
//! the facts in which it differs from the others. [`Config::from_gguf`] turns it and the file's
//! keys into one [`LayerSpec`] per block, so the model code has no per-architecture branches and
//! a new architecture adds a table entry (and new cases where it needs a new kind of block).

use super::ops::{Activation, Rope, RopeStyle, Yarn};
use crate::backend::{BackendError, Result};
use crate::gguf::Gguf;

/// Which layers use sliding-window (local) attention, and how they rotate.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SlidingWindow {
    /// Every `global_every`-th layer (1-based) is global; the others are local.
    pub global_every: usize,
    /// RoPE base of the local layers, which then use no position scaling (gemma3); `None`:
    /// the same RoPE as the global layers (gpt-oss).
    pub local_rope_base: Option<f32>,
}

/// What distinguishes an architecture, as data.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ArchSpec {
    /// `general.architecture` value.
    pub name: &'static str,
    /// RoPE pairing.
    pub rope_style: RopeStyle,
    /// Activation of the gated feed-forward block.
    pub act: Activation,
    /// Per-head RMS norm of queries and keys (`attn_q_norm`, `attn_k_norm`).
    pub qk_norm: bool,
    /// RMS norms after attention and after the feed-forward block (`post_attention_norm`,
    /// `post_ffw_norm`), before the residual adds.
    pub post_norms: bool,
    /// Input embeddings are multiplied by `sqrt(n_embd)`.
    pub embed_scale_sqrt: bool,
    /// Local/global attention layout, when the file sets `<arch>.attention.sliding_window`.
    pub sliding_window: Option<SlidingWindow>,
    /// Name of the norm before the feed-forward block (`blk.N.<name>.weight`): `ffn_norm`, or
    /// `post_attention_norm` for gpt-oss.
    pub ffn_norm: &'static str,
    /// The feed-forward block is a mixture of experts (`<arch>.expert_count`,
    /// `expert_used_count`, `expert_feed_forward_length`; router `ffn_gate_inp`, experts
    /// `ffn_{gate,up,down}_exps`, all with biases), routed by a softmax over the top-k logits.
    pub moe: bool,
    /// Per-head attention sinks (`blk.N.attn_sinks.weight`).
    pub attn_sinks: bool,
}

/// The architectures the SDK's model code runs.
pub const ARCHS: &[ArchSpec] = &[
    ArchSpec {
        name: "llama",
        rope_style: RopeStyle::Normal,
        act: Activation::Silu,
        qk_norm: false,
        post_norms: false,
        embed_scale_sqrt: false,
        sliding_window: None,
        ffn_norm: "ffn_norm",
        moe: false,
        attn_sinks: false,
    },
    ArchSpec {
        name: "qwen2",
        rope_style: RopeStyle::Neox,
        act: Activation::Silu,
        qk_norm: false,
        post_norms: false,
        embed_scale_sqrt: false,
        sliding_window: None,
        ffn_norm: "ffn_norm",
        moe: false,
        attn_sinks: false,
    },
    ArchSpec {
        name: "gemma3",
        rope_style: RopeStyle::Neox,
        act: Activation::GeluTanh,
        qk_norm: true,
        post_norms: true,
        embed_scale_sqrt: true,
        sliding_window: Some(SlidingWindow {
            global_every: 6,
            local_rope_base: Some(10_000.0),
        }),
        ffn_norm: "ffn_norm",
        moe: false,
        attn_sinks: false,
    },
    // OpenAI gpt-oss (llama.cpp's LLM_ARCH_OPENAI_MOE): even layers (0, 2, ...) use the
    // sliding window, every layer the same NeoX RoPE with YaRN; QKV and output biases,
    // attention sinks, and a top-k softmax-weighted MoE of clamped-SwiGLU experts.
    ArchSpec {
        name: "gpt-oss",
        rope_style: RopeStyle::Neox,
        act: Activation::SwigluOai,
        qk_norm: false,
        post_norms: false,
        embed_scale_sqrt: false,
        sliding_window: Some(SlidingWindow {
            global_every: 2,
            local_rope_base: None,
        }),
        ffn_norm: "post_attention_norm",
        moe: true,
        attn_sinks: true,
    },
];

/// Names of the supported architectures.
pub fn supported_archs() -> Vec<&'static str> {
    ARCHS.iter().map(|a| a.name).collect()
}

/// The feed-forward block of a layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ffn {
    /// `down(act(gate(x)) * up(x))`.
    Glu(Activation),
    /// Mixture of experts: router logits `W_r x + b_r`, the `n_used` largest, softmax over
    /// those; each selected expert computes `down(act(gate x + b_g, up x + b_u)) + b_d`, and
    /// the block's output is their weighted sum.
    Moe {
        /// Experts.
        n_expert: usize,
        /// Experts per token.
        n_used: usize,
        /// Gated activation of the experts.
        act: Activation,
    },
}

/// One transformer block, as the model code runs it.
#[derive(Clone, Debug, PartialEq)]
pub struct LayerSpec {
    /// Biases on the Q, K and V projections (present in the file).
    pub qkv_bias: bool,
    /// Per-head RMS norm of queries and keys.
    pub qk_norm: bool,
    /// RMS norms on the attention and feed-forward outputs before the residual adds.
    pub post_norms: bool,
    /// Rotary embedding of this layer.
    pub rope: Rope,
    /// Sliding window of this layer's attention.
    pub window: Option<usize>,
    /// Multiplier of `q·k`.
    pub attn_scale: f32,
    /// Soft-capping of attention scores.
    pub softcap: Option<f32>,
    /// Per-head attention sinks (`attn_sinks.weight`).
    pub attn_sinks: bool,
    /// Bias on the attention output projection (present in the file).
    pub attn_out_bias: bool,
    /// Feed-forward block.
    pub ffn: Ffn,
}

/// Hyper-parameters of a transformer.
#[derive(Clone, Debug)]
pub struct Config {
    /// What the architecture is.
    pub arch: &'static ArchSpec,
    /// Architecture name as in the file.
    pub arch_name: String,
    /// Vocabulary size (rows of the embedding table).
    pub n_vocab: usize,
    /// Hidden size.
    pub n_embd: usize,
    /// Blocks.
    pub n_layer: usize,
    /// Feed-forward size (of one expert, for a mixture of experts).
    pub n_ff: usize,
    /// Query heads.
    pub n_head: usize,
    /// KV heads.
    pub n_head_kv: usize,
    /// Key/query head size.
    pub head_dim_k: usize,
    /// Value head size.
    pub head_dim_v: usize,
    /// RMS norm epsilon.
    pub eps: f32,
    /// Trained context length.
    pub n_ctx_train: usize,
    /// Multiplier of the input embeddings, if any.
    pub embed_scale: Option<f32>,
    /// One spec per block.
    pub layers: Vec<LayerSpec>,
}

fn u(g: &Gguf<'_>, key: &str) -> Result<usize> {
    let v = g.require_u64(key)?;
    usize::try_from(v).map_err(|_| BackendError::invalid(format!("{key} = {v} is too large")))
}

fn u_or(g: &Gguf<'_>, key: &str, default: usize) -> Result<usize> {
    match g.get_u64(key)? {
        Some(v) => usize::try_from(v)
            .map_err(|_| BackendError::invalid(format!("{key} = {v} is too large"))),
        None => Ok(default),
    }
}

/// The [`ArchSpec`] of `name`, or an error naming the supported ones.
pub fn arch_spec(name: &str) -> Result<&'static ArchSpec> {
    ARCHS.iter().find(|a| a.name == name).ok_or_else(|| {
        BackendError::unsupported(format!(
            "unsupported architecture '{}' (supported: {})",
            name.escape_debug(),
            supported_archs().join(", ")
        ))
    })
}

impl Config {
    /// Reads the configuration of the model in `g`; an unknown architecture is an error naming
    /// the supported ones.
    pub fn from_gguf(g: &Gguf<'_>) -> Result<Config> {
        let name = g.require_str("general.architecture")?.to_string();
        let arch = arch_spec(&name)?;
        let k = |s: &str| format!("{name}.{s}");
        let n_embd = u(g, &k("embedding_length"))?;
        let n_layer = u(g, &k("block_count"))?;
        let n_ff = if arch.moe {
            u(g, &k("expert_feed_forward_length"))?
        } else {
            u(g, &k("feed_forward_length"))?
        };
        let n_head = u(g, &k("attention.head_count"))?;
        let n_head_kv = u_or(g, &k("attention.head_count_kv"), n_head)?;
        if n_head == 0
            || n_head_kv == 0
            || !n_head.is_multiple_of(n_head_kv)
            || n_layer == 0
            || n_embd == 0
            || n_layer > 4096
        {
            return Err(BackendError::invalid(format!(
                "bad attention shape: {n_head} heads, {n_head_kv} KV heads, {n_layer} layers, {n_embd} hidden"
            )));
        }
        let head_dim_k = u_or(g, &k("attention.key_length"), n_embd / n_head)?;
        let head_dim_v = u_or(g, &k("attention.value_length"), head_dim_k)?;
        let eps = g
            .get_f32(&k("attention.layer_norm_rms_epsilon"))?
            .unwrap_or(1e-5);
        let base = g.get_f32(&k("rope.freq_base"))?.unwrap_or(10_000.0);
        let n_rot = u_or(g, &k("rope.dimension_count"), head_dim_k)?;
        if n_rot > head_dim_k || !n_rot.is_multiple_of(2) || head_dim_k == 0 || head_dim_v == 0 {
            return Err(BackendError::invalid(format!(
                "bad rope dimension {n_rot} for head size {head_dim_k}"
            )));
        }
        let n_ctx_train = u_or(g, &k("context_length"), 2048)?;
        let mut freq_scale = 1.0;
        let mut yarn = None;
        let scaling = g.get_str(&k("rope.scaling.type"))?;
        if matches!(scaling, Some("linear") | Some("yarn")) {
            if let Some(f) = g.get_f32(&k("rope.scaling.factor"))? {
                if f > 0.0 && f.is_finite() {
                    freq_scale = 1.0 / f;
                }
            }
        }
        if scaling == Some("yarn") {
            yarn = Some(yarn_params(g, &name, freq_scale, n_ctx_train)?);
        }
        let emb = g
            .tensor("token_embd.weight")
            .ok_or_else(|| BackendError::invalid("missing tensor token_embd.weight"))?;
        if emb.dims.len() != 2 || emb.dims[0] as usize != n_embd {
            return Err(BackendError::invalid(format!(
                "token_embd.weight has shape {:?}, expected [{n_embd}, vocab]",
                emb.dims
            )));
        }
        let n_vocab = emb.dims[1] as usize;
        let rope = Rope {
            style: arch.rope_style,
            n_rot,
            base,
            freq_scale,
            yarn,
        };
        let ffn = if arch.moe {
            let n_expert = u(g, &k("expert_count"))?;
            let n_used = u(g, &k("expert_used_count"))?;
            if n_expert == 0
                || n_expert > 4096
                || n_used == 0
                || n_used > n_expert
                || n_ff == 0
                || n_used.checked_mul(n_ff.max(n_embd)).is_none()
            {
                return Err(BackendError::invalid(format!(
                    "bad mixture of experts: {n_used} used of {n_expert} experts of size {n_ff}"
                )));
            }
            Ffn::Moe {
                n_expert,
                n_used,
                act: arch.act,
            }
        } else {
            Ffn::Glu(arch.act)
        };
        let window = match arch.sliding_window {
            Some(_) => g
                .get_u64(&k("attention.sliding_window"))?
                .map(|w| w as usize)
                .filter(|&w| w > 0),
            None => None,
        };
        let layers = (0..n_layer)
            .map(|l| {
                let local = match (arch.sliding_window, window) {
                    (Some(sw), Some(_)) => !(l + 1).is_multiple_of(sw.global_every.max(1)),
                    _ => false,
                };
                let layer_rope = match arch.sliding_window.and_then(|sw| sw.local_rope_base) {
                    Some(local_base) if local => Rope {
                        base: local_base,
                        freq_scale: 1.0,
                        yarn: None,
                        ..rope
                    },
                    _ => rope,
                };
                LayerSpec {
                    qkv_bias: g.tensor(&format!("blk.{l}.attn_q.bias")).is_some(),
                    qk_norm: arch.qk_norm,
                    post_norms: arch.post_norms,
                    rope: layer_rope,
                    window: if local { window } else { None },
                    attn_scale: 1.0 / (head_dim_k as f32).sqrt(),
                    softcap: None,
                    attn_sinks: arch.attn_sinks,
                    attn_out_bias: g.tensor(&format!("blk.{l}.attn_output.bias")).is_some(),
                    ffn,
                }
            })
            .collect();
        Ok(Config {
            arch,
            arch_name: name.clone(),
            n_vocab,
            n_embd,
            n_layer,
            n_ff,
            n_head,
            n_head_kv,
            head_dim_k,
            head_dim_v,
            eps,
            n_ctx_train,
            embed_scale: arch.embed_scale_sqrt.then(|| (n_embd as f32).sqrt()),
            layers,
        })
    }

    /// KV-cache bytes per position per sequence with an f16 cache.
    pub fn kv_bytes_per_token(&self) -> u64 {
        (self.n_layer * self.n_head_kv * (self.head_dim_k + self.head_dim_v) * 2) as u64
    }
}

/// YaRN as llama.cpp sets it up for a file whose `rope.scaling.type` is `yarn`: `ext_factor`
/// 1, `beta_fast`/`beta_slow` from `rope.scaling.yarn_beta_fast`/`_slow` (32 and 1), the
/// original context from `rope.scaling.original_context_length` (else the trained one), and
/// `attn_factor = get_mscale(factor) / (1 + 0.1 ln factor) * rope.scaling.attn_factor` in f32
/// (llama.cpp cancels ggml's own `mscale` this way and ggml applies it again, so the net
/// magnitude is `1 + 0.1 ln factor`, up to f32 rounding).
fn yarn_params(g: &Gguf<'_>, name: &str, freq_scale: f32, n_ctx_train: usize) -> Result<Yarn> {
    let k = |s: &str| format!("{name}.{s}");
    if let Some(m) = g.get_f32(&k("rope.scaling.yarn_log_multiplier"))? {
        if m != 0.0 {
            return Err(BackendError::unsupported(format!(
                "YaRN with rope.scaling.yarn_log_multiplier = {m}"
            )));
        }
    }
    let factor = 1.0 / freq_scale;
    let get_mscale = |s: f32| if s <= 1.0 { 1.0 } else { 0.1 * s.ln() + 1.0 };
    let attn_factor = get_mscale(factor)
        * (1.0 / (1.0 + 0.1 * factor.ln()))
        * g.get_f32(&k("rope.scaling.attn_factor"))?.unwrap_or(1.0);
    let n_ctx_orig = u_or(g, &k("rope.scaling.original_context_length"), n_ctx_train)?;
    let beta_fast = g
        .get_f32(&k("rope.scaling.yarn_beta_fast"))?
        .unwrap_or(32.0);
    let beta_slow = g.get_f32(&k("rope.scaling.yarn_beta_slow"))?.unwrap_or(1.0);
    if n_ctx_orig == 0 || !(beta_fast > 0.0 && beta_slow > 0.0 && attn_factor.is_finite()) {
        return Err(BackendError::invalid(format!(
            "bad YaRN parameters: original context {n_ctx_orig}, beta {beta_fast}/{beta_slow}"
        )));
    }
    Ok(Yarn {
        ext_factor: 1.0,
        attn_factor,
        beta_fast,
        beta_slow,
        n_ctx_orig,
    })
}

/// Whether the SDK's model code can run the model in `g` with a backend that supports the
/// weight types `supports` accepts: a one-line summary, or the reason it cannot.
pub fn check_support(
    g: &Gguf<'_>,
    supports: impl Fn(crate::quant::GgmlType) -> bool,
) -> std::result::Result<String, String> {
    let cfg = Config::from_gguf(g).map_err(|e| e.message)?;
    let mut types: Vec<crate::quant::GgmlType> = Vec::new();
    for t in &g.tensors {
        if !supports(t.ty) {
            return Err(format!(
                "no kernel for tensor {} of type {}",
                t.name.escape_debug(),
                t.ty
            ));
        }
        if !types.contains(&t.ty) {
            types.push(t.ty);
        }
    }
    let names: Vec<String> = types.iter().map(|t| t.to_string()).collect();
    Ok(format!("{} with {}", cfg.arch_name, names.join("/")))
}
