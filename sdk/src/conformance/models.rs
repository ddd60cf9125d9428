//! Small random-weight models as GGUF bytes, one per kind of block the real architectures
//! use, for the conformance suites and tests. They are tiny (a few hundred KiB), but their
//! shapes exercise every path: grouped and multi-query attention, quantized weights of every
//! type, QKV biases, QK-norm, sliding windows, GELU and post-norms, tied and separate output
//! heads, attention sinks, YaRN and a mixture of experts (gpt-oss).

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
    /// `gpt-oss`: 4 layers of 64 hidden, 4 heads of 32 (so `q` is wider than the hidden
    /// size) on 2 KV heads, sliding window 4 on layers 0 and 2, YaRN (factor 32), QKV and
    /// output biases, non-zero attention sinks, 8 experts of 64 (top-4) in MXFP4 with biases,
    /// Q8_0 attention and embeddings, F32 output head, router and norms ([`synthetic_gpt_oss`] sets
    /// another window).
    GptOss,
}

impl Synthetic {
    /// Every synthetic model.
    pub const ALL: [Synthetic; 4] = [
        Synthetic::LlamaF32,
        Synthetic::Qwen2Quant,
        Synthetic::Gemma3Quant,
        Synthetic::GptOss,
    ];

    /// A short name.
    pub fn name(self) -> &'static str {
        match self {
            Synthetic::LlamaF32 => "llama-f32",
            Synthetic::Qwen2Quant => "qwen2-quant",
            Synthetic::Gemma3Quant => "gemma3-quant",
            Synthetic::GptOss => "gpt-oss",
        }
    }

    /// Hidden size.
    pub fn n_embd(self) -> usize {
        match self {
            Synthetic::LlamaF32 | Synthetic::GptOss => 64,
            _ => 256,
        }
    }

    /// Blocks.
    pub fn n_layer(self) -> usize {
        match self {
            Synthetic::Gemma3Quant => 6,
            Synthetic::GptOss => 4,
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

/// The `gpt-oss` model ([`Synthetic::GptOss`]) with sliding window `window` and a trained
/// context of `n_ctx_train`, as GGUF bytes.
pub fn synthetic_gpt_oss(seed: u64, window: u32, n_ctx_train: u32) -> Vec<u8> {
    let mut g = Gen::new(Synthetic::GptOss, seed);
    g.window = window;
    g.n_ctx_train = n_ctx_train;
    g.build()
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
    window: u32,
    n_ctx_train: u32,
}

impl Gen {
    fn new(kind: Synthetic, seed: u64) -> Gen {
        let (arch, heads, kv_heads, ff) = match kind {
            Synthetic::LlamaF32 => ("llama", 4, 2, 128),
            Synthetic::Qwen2Quant => ("qwen2", 4, 2, 512),
            Synthetic::Gemma3Quant => ("gemma3", 4, 1, 512),
            Synthetic::GptOss => ("gpt-oss", 4, 2, 64),
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
            window: 4,
            n_ctx_train: 128,
        }
    }

    /// gpt-oss's tensors, with llama.cpp's names and shapes.
    fn gpt_oss_tensors(&self) -> Vec<(String, GgmlType, Vec<u64>)> {
        use GgmlType::*;
        let (e, ff, v) = (self.embd as u64, self.ff as u64, VOCAB as u64);
        let (hd, x) = (GPT_OSS_HEAD_DIM, GPT_OSS_EXPERTS);
        let (qd, kd) = (self.heads as u64 * hd, self.kv_heads as u64 * hd);
        let mut t = Vec::new();
        let mut add = |n: String, ty: GgmlType, d: &[u64]| t.push((n, ty, d.to_vec()));
        add("token_embd.weight".into(), Q8_0, &[e, v]);
        add("output_norm.weight".into(), F32, &[e]);
        add("output.weight".into(), F32, &[e, v]);
        for l in 0..self.layers {
            let n = |s: &str| format!("blk.{l}.{s}");
            add(n("attn_norm.weight"), F32, &[e]);
            add(n("attn_q.weight"), Q8_0, &[e, qd]);
            add(n("attn_q.bias"), F32, &[qd]);
            add(n("attn_k.weight"), Q8_0, &[e, kd]);
            add(n("attn_k.bias"), F32, &[kd]);
            add(n("attn_v.weight"), F32, &[e, kd]);
            add(n("attn_v.bias"), F32, &[kd]);
            add(n("attn_output.weight"), Q8_0, &[qd, e]);
            add(n("attn_output.bias"), F32, &[e]);
            add(n("attn_sinks.weight"), F32, &[self.heads as u64]);
            add(n("post_attention_norm.weight"), F32, &[e]);
            add(n("ffn_gate_inp.weight"), F32, &[e, x]);
            add(n("ffn_gate_inp.bias"), F32, &[x]);
            add(n("ffn_gate_exps.weight"), MXFP4, &[e, ff, x]);
            add(n("ffn_gate_exps.bias"), F32, &[ff, x]);
            add(n("ffn_up_exps.weight"), MXFP4, &[e, ff, x]);
            add(n("ffn_up_exps.bias"), F32, &[ff, x]);
            add(n("ffn_down_exps.weight"), MXFP4, &[ff, e, x]);
            add(n("ffn_down_exps.bias"), F32, &[e, x]);
        }
        t
    }

    /// (name, type, dims) of every tensor, in file order.
    fn tensors(&self) -> Vec<(String, GgmlType, Vec<u64>)> {
        use GgmlType::*;
        if self.kind == Synthetic::GptOss {
            return self.gpt_oss_tensors();
        }
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
            Synthetic::Gemma3Quant | Synthetic::GptOss => &[
                [Q4_K, Q6_K, Q8_0, MXFP4, Q2_K, Q3_K, F16],
                [BF16, Q8_0, Q6_K, Q4_K, MXFP4, Q5_K, Q3_K],
            ],
        };
        let embd_ty = match self.kind {
            Synthetic::LlamaF32 => F32,
            Synthetic::Qwen2Quant => Q8_0,
            Synthetic::Gemma3Quant | Synthetic::GptOss => Q6_K,
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
            .add_u32(&k("context_length"), self.n_ctx_train)
            .add_f32(&k("attention.layer_norm_rms_epsilon"), 1e-5);
        if self.kind == Synthetic::GptOss {
            // As convert_hf_to_gguf.py writes gpt-oss (a 4096-position original context, as
            // the real models have, so that YaRN's ramp falls inside the 16 pairs).
            w.add_u32(&k("expert_feed_forward_length"), self.ff as u32)
                .add_u32(&k("expert_count"), GPT_OSS_EXPERTS as u32)
                .add_u32(&k("expert_used_count"), 4)
                .add_u32(&k("attention.key_length"), GPT_OSS_HEAD_DIM as u32)
                .add_u32(&k("attention.value_length"), GPT_OSS_HEAD_DIM as u32)
                .add_u32(&k("attention.sliding_window"), self.window)
                .add_f32(&k("rope.freq_base"), 150_000.0)
                .add_str(&k("rope.scaling.type"), "yarn")
                .add_f32(&k("rope.scaling.factor"), 32.0)
                .add_u32(&k("rope.scaling.original_context_length"), 4096);
        } else if self.kind == Synthetic::Gemma3Quant {
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
                let scale = if name.contains("ffn_gate_inp.bias") {
                    // Router biases spread the experts' logits, so that the rounding of 8-bit
                    // activations rarely reorders a near-tie (which moves the logits far).
                    3.0
                } else if name.contains("bias") {
                    0.5
                } else if name.contains("attn_sinks") {
                    // Sinks around and above the scores.
                    2.0
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

/// Head size of the synthetic gpt-oss model.
const GPT_OSS_HEAD_DIM: u64 = 32;
/// Experts per layer of the synthetic gpt-oss model.
const GPT_OSS_EXPERTS: u64 = 8;

/// The `llama` F32 model ([`Synthetic::LlamaF32`]) as GGUF bytes.
pub fn synthetic_llama(seed: u64) -> Vec<u8> {
    Synthetic::LlamaF32.gguf(seed)
}
