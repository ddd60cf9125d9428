//! Model hyper-parameters read from GGUF metadata, per architecture.

use super::ops::{Activation, Rope, RopeStyle};
use crate::backend::{BackendError, Result};
use crate::gguf::Gguf;

/// Architectures the SDK's model code implements (`general.architecture` values).
pub const SUPPORTED_ARCHS: &[&str] = &["llama", "qwen2", "gemma3"];

/// A supported architecture.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arch {
    /// Llama family (SmolLM2, Llama 2/3...).
    Llama,
    /// Qwen2 / Qwen2.5: QKV bias.
    Qwen2,
    /// Gemma 3: local/global attention, QK-norm, sandwich norms, scaled embeddings, GELU.
    Gemma3,
}

/// Hyper-parameters of a transformer.
#[derive(Clone, Debug)]
pub struct Config {
    /// Architecture.
    pub arch: Arch,
    /// Architecture name as in the file.
    pub arch_name: String,
    /// Vocabulary size (rows of the embedding table).
    pub n_vocab: usize,
    /// Hidden size.
    pub n_embd: usize,
    /// Blocks.
    pub n_layer: usize,
    /// Feed-forward size.
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
    /// Rotary embedding of global-attention layers.
    pub rope: Rope,
    /// Rotary embedding of sliding-window layers (Gemma 3).
    pub rope_local: Rope,
    /// Sliding window size of local layers, if any.
    pub sliding_window: Option<usize>,
    /// Every `swa_pattern`-th layer is global when a sliding window is set.
    pub swa_pattern: usize,
    /// Trained context length.
    pub n_ctx_train: usize,
    /// Feed-forward activation.
    pub act: Activation,
    /// Multiplier of the input embeddings, if any.
    pub embed_scale: Option<f32>,
    /// Attention score multiplier.
    pub attn_scale: f32,
}

fn u(g: &Gguf<'_>, key: &str) -> Result<usize> {
    let v = g.require_u64(key)?;
    usize::try_from(v).map_err(|_| BackendError::invalid(format!("{key} = {v} is too large")))
}

fn u_or(g: &Gguf<'_>, key: &str, default: usize) -> Result<usize> {
    Ok(g.get_u64(key)?.map(|v| v as usize).unwrap_or(default))
}

impl Config {
    /// Reads the configuration of the model in `g`; an unknown architecture is an error naming
    /// the supported ones.
    pub fn from_gguf(g: &Gguf<'_>) -> Result<Config> {
        let name = g.require_str("general.architecture")?.to_string();
        let arch = match name.as_str() {
            "llama" => Arch::Llama,
            "qwen2" => Arch::Qwen2,
            "gemma3" => Arch::Gemma3,
            other => {
                return Err(BackendError::unsupported(format!(
                    "unsupported architecture '{other}' (supported: {})",
                    SUPPORTED_ARCHS.join(", ")
                )))
            }
        };
        let k = |s: &str| format!("{name}.{s}");
        let n_embd = u(g, &k("embedding_length"))?;
        let n_layer = u(g, &k("block_count"))?;
        let n_ff = u(g, &k("feed_forward_length"))?;
        let n_head = u(g, &k("attention.head_count"))?;
        let n_head_kv = u_or(g, &k("attention.head_count_kv"), n_head)?;
        if n_head == 0
            || n_head_kv == 0
            || !n_head.is_multiple_of(n_head_kv)
            || n_layer == 0
            || n_embd == 0
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
        if n_rot > head_dim_k || !n_rot.is_multiple_of(2) || head_dim_k == 0 {
            return Err(BackendError::invalid(format!(
                "bad rope dimension {n_rot} for head size {head_dim_k}"
            )));
        }
        let mut freq_scale = 1.0;
        if g.get_str(&k("rope.scaling.type"))? == Some("linear") {
            if let Some(f) = g.get_f32(&k("rope.scaling.factor"))? {
                if f > 0.0 {
                    freq_scale = 1.0 / f;
                }
            }
        }
        let n_ctx_train = u_or(g, &k("context_length"), 2048)?;
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
        let style = if arch == Arch::Llama {
            RopeStyle::Normal
        } else {
            RopeStyle::Neox
        };
        let rope = Rope {
            style,
            n_rot,
            base,
            freq_scale,
        };
        let mut cfg = Config {
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
            rope,
            rope_local: rope,
            sliding_window: None,
            swa_pattern: 1,
            n_ctx_train,
            act: Activation::Silu,
            embed_scale: None,
            attn_scale: 1.0 / (head_dim_k as f32).sqrt(),
        };
        if arch == Arch::Gemma3 {
            cfg.act = Activation::GeluTanh;
            cfg.embed_scale = Some((n_embd as f32).sqrt());
            cfg.sliding_window = g
                .get_u64(&k("attention.sliding_window"))?
                .map(|w| w as usize);
            cfg.swa_pattern = 6;
            cfg.rope_local = Rope {
                base: 10_000.0,
                freq_scale: 1.0,
                ..rope
            };
        }
        Ok(cfg)
    }

    /// Whether layer `l` uses sliding-window (local) attention.
    pub fn is_local(&self, l: usize) -> bool {
        self.sliding_window.is_some() && !(l + 1).is_multiple_of(self.swa_pattern)
    }

    /// KV-cache bytes per position per sequence with an f16 cache.
    pub fn kv_bytes_per_token(&self) -> u64 {
        (self.n_layer * self.n_head_kv * (self.head_dim_k + self.head_dim_v) * 2) as u64
    }
}
