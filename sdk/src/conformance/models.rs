//! Small random-weight models as GGUF bytes, one per kind of block the real architectures
//! use, for the conformance suites and tests. They are tiny (a few hundred KiB), but their
//! shapes exercise every path: grouped and multi-query attention, quantized weights of every
//! type, QKV biases, QK-norm, sliding windows, GELU and post-norms, tied and separate output
//! heads.

use crate::gguf::GgufWriter;
use crate::quant::random::{random_tensor, Rng};
use crate::quant::GgmlType;

/// Vocabulary of every synthetic model.
pub const VOCAB: usize = 256;

/// The synthetic models.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Synthetic {
    /// `llama`: F32 weights, 2 layers, grouped-query attention (64 hidden, 4 heads, 2 KV
    /// heads), tied output head.
    LlamaF32,
    /// `qwen2`: QKV biases, legacy and k-quant weights (Q4_0, Q4_1, Q5_0, Q8_0, Q4_K, Q5_K,
    /// Q6_K), 2 layers of 256 hidden, tied output head.
    Qwen2Quant,
    /// `gemma3`: QK-norm, post-norms, GELU, scaled embeddings, sliding window 4 on five of six
    /// layers, multi-query attention, weights in Q2_K, Q3_K, Q4_K, Q6_K, Q8_0, MXFP4, F16 and
    /// BF16, separate output head.
    Gemma3Quant,
}

impl Synthetic {
    /// Every synthetic model.
    pub const ALL: [Synthetic; 3] = [
        Synthetic::LlamaF32,
        Synthetic::Qwen2Quant,
        Synthetic::Gemma3Quant,
    ];

    /// A short name.
    pub fn name(self) -> &'static str {
        match self {
            Synthetic::LlamaF32 => "llama-f32",
            Synthetic::Qwen2Quant => "qwen2-quant",
            Synthetic::Gemma3Quant => "gemma3-quant",
        }
    }

    /// Hidden size.
    pub fn n_embd(self) -> usize {
        match self {
            Synthetic::LlamaF32 => 64,
            _ => 256,
        }
    }

    /// Blocks.
    pub fn n_layer(self) -> usize {
        match self {
            Synthetic::Gemma3Quant => 6,
            _ => 2,
        }
    }

    /// Every weight type the model uses.
    pub fn types(self) -> Vec<GgmlType> {
        let mut t: Vec<GgmlType> = Vec::new();
        let g = Gen::new(self, 0);
        for (_, ty, _) in g.tensors() {
            if !t.contains(&ty) {
                t.push(ty);
            }
        }
        t
    }

    /// The model as GGUF bytes (deterministic for `seed`).
    pub fn gguf(self, seed: u64) -> Vec<u8> {
        Gen::new(self, seed).build()
    }
}

/// The builder of one synthetic model.
struct Gen {
    kind: Synthetic,
    seed: u64,
    arch: &'static str,
    embd: usize,
    heads: usize,
    kv_heads: usize,
    ff: usize,
    layers: usize,
}

impl Gen {
    fn new(kind: Synthetic, seed: u64) -> Gen {
        let (arch, heads, kv_heads, ff) = match kind {
            Synthetic::LlamaF32 => ("llama", 4, 2, 128),
            Synthetic::Qwen2Quant => ("qwen2", 4, 2, 512),
            Synthetic::Gemma3Quant => ("gemma3", 4, 1, 512),
        };
        Gen {
            kind,
            seed,
            arch,
            embd: kind.n_embd(),
            heads,
            kv_heads,
            ff,
            layers: kind.n_layer(),
        }
    }

    /// (name, type, dims) of every tensor, in file order.
    fn tensors(&self) -> Vec<(String, GgmlType, Vec<u64>)> {
        use GgmlType::*;
        let (e, ff) = (self.embd as u64, self.ff as u64);
        let hd = (self.embd / self.heads) as u64;
        let kv = self.kv_heads as u64 * hd;
        let v = VOCAB as u64;
        let mut t = Vec::new();
        let mut add = |n: String, ty: GgmlType, d: &[u64]| t.push((n, ty, d.to_vec()));
        // Per-layer weight types: [q, k, v, o, gate, up, down].
        let kinds: &[[GgmlType; 7]] = match self.kind {
            Synthetic::LlamaF32 => &[[F32; 7]],
            Synthetic::Qwen2Quant => &[
                [Q5_0, Q8_0, Q4_1, Q4_K, Q6_K, Q5_K, Q4_0],
                [Q4_K, Q4_0, Q8_0, Q5_0, Q4_1, Q6_K, Q5_K],
            ],
            Synthetic::Gemma3Quant => &[
                [Q4_K, Q6_K, Q8_0, MXFP4, Q2_K, Q3_K, F16],
                [BF16, Q8_0, Q6_K, Q4_K, MXFP4, Q5_K, Q3_K],
            ],
        };
        let embd_ty = match self.kind {
            Synthetic::LlamaF32 => F32,
            Synthetic::Qwen2Quant => Q8_0,
            Synthetic::Gemma3Quant => Q6_K,
        };
        add("token_embd.weight".into(), embd_ty, &[e, v]);
        add("output_norm.weight".into(), F32, &[e]);
        if self.kind == Synthetic::Gemma3Quant {
            add("output.weight".into(), F16, &[e, v]);
        }
        for l in 0..self.layers {
            let n = |s: &str| format!("blk.{l}.{s}");
            let k = kinds[l % kinds.len()];
            add(n("attn_norm.weight"), F32, &[e]);
            add(n("attn_q.weight"), k[0], &[e, e]);
            add(n("attn_k.weight"), k[1], &[e, kv]);
            add(n("attn_v.weight"), k[2], &[e, kv]);
            add(n("attn_output.weight"), k[3], &[e, e]);
            if self.kind == Synthetic::Qwen2Quant {
                add(n("attn_q.bias"), F32, &[e]);
                add(n("attn_k.bias"), F32, &[kv]);
                add(n("attn_v.bias"), F32, &[kv]);
            }
            if self.kind == Synthetic::Gemma3Quant {
                add(n("attn_q_norm.weight"), F32, &[hd]);
                add(n("attn_k_norm.weight"), F32, &[hd]);
                add(n("post_attention_norm.weight"), F32, &[e]);
                add(n("post_ffw_norm.weight"), F32, &[e]);
            }
            add(n("ffn_norm.weight"), F32, &[e]);
            add(n("ffn_gate.weight"), k[4], &[e, ff]);
            add(n("ffn_up.weight"), k[5], &[e, ff]);
            add(n("ffn_down.weight"), k[6], &[ff, e]);
        }
        t
    }

    fn build(&self) -> Vec<u8> {
        let mut rng = Rng::new(self.seed ^ 0x6b696c6e);
        let mut w = GgufWriter::new();
        let a = self.arch;
        let k = |s: &str| format!("{a}.{s}");
        w.add_str("general.architecture", a)
            .add_u32(&k("embedding_length"), self.embd as u32)
            .add_u32(&k("block_count"), self.layers as u32)
            .add_u32(&k("feed_forward_length"), self.ff as u32)
            .add_u32(&k("attention.head_count"), self.heads as u32)
            .add_u32(&k("attention.head_count_kv"), self.kv_heads as u32)
            .add_u32(&k("context_length"), 128)
            .add_f32(&k("attention.layer_norm_rms_epsilon"), 1e-5);
        if self.kind == Synthetic::Gemma3Quant {
            w.add_u32(&k("attention.sliding_window"), 4)
                .add_f32(&k("rope.freq_base"), 1_000_000.0);
        } else {
            w.add_f32(&k("rope.freq_base"), 10_000.0);
        }
        for (name, ty, dims) in self.tensors() {
            let n: u64 = dims.iter().product();
            let is_norm = name.ends_with("norm.weight");
            let data = if is_norm {
                // Norm weights near 1 (gemma's are stored as such in GGUF too).
                let vals: Vec<u8> = (0..n)
                    .flat_map(|_| (1.0 + 0.25 * rng.symmetric()).to_le_bytes())
                    .collect();
                vals
            } else {
                let fan_in = dims[0] as f32;
                let scale = if name.contains("bias") {
                    0.5
                } else if name == "token_embd.weight" {
                    1.0
                } else {
                    1.7 / fan_in.sqrt()
                };
                random_tensor(ty, n as usize, scale, &mut rng)
            };
            w.add_tensor(&name, ty, &dims, &data);
        }
        w.finish()
    }
}

/// The `llama` F32 model ([`Synthetic::LlamaF32`]) as GGUF bytes.
pub fn synthetic_llama(seed: u64) -> Vec<u8> {
    Synthetic::LlamaF32.gguf(seed)
}
