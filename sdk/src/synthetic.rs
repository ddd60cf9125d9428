//! Synthetic models: random weights with the exact shapes, tensor names and quantization mix
//! of a real model, written as a GGUF that Kiln and llama.cpp both load. They measure speed
//! without downloading the model (`kiln bench --synthetic qwen2-1.5b:q4_k_m`), and give GPU
//! backends models of any size to test against the CPU.
//!
//! A spec is `SHAPE:MIX`: a shape of [`SHAPES`] and a mix of [`MIXES`]. The mixes follow
//! llama.cpp's quantization rules where they name the same thing (`q4_k_m`: `Q6_K` for the
//! output and for half of the `attn_v`/`ffn_down` layers, `Q4_K` elsewhere, and llama.cpp's
//! fallbacks for rows that are not whole 256-value super-blocks), so the files match the
//! published ones tensor for tensor. The vocabulary is a placeholder SentencePiece one.
//!
//! Files are streamed to disk tensor by tensor, so a 12 GB gpt-oss-20b needs no 12 GB of RAM.

use crate::gguf::GgufWriter;
use crate::quant::random::{random_blocks_into, Rng};
use crate::quant::GgmlType;
use std::fmt;
use std::io::Write;

/// Generator version, stored in the file (`kiln.synthetic.version`): files of another version
/// are regenerated rather than reused.
pub const VERSION: u32 = 1;

/// Mixture-of-experts hyper-parameters (gpt-oss).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Moe {
    /// Experts per layer.
    pub n_expert: usize,
    /// Experts each token uses.
    pub n_used: usize,
    /// Sliding window of the local layers.
    pub window: usize,
    /// YaRN factor.
    pub yarn_factor: f32,
    /// YaRN original context.
    pub yarn_orig_ctx: usize,
}

/// The shape of a real model.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Shape {
    /// Name used in specs (`qwen2-1.5b`).
    pub name: &'static str,
    /// `general.architecture`.
    pub arch: &'static str,
    /// Hidden size.
    pub n_embd: usize,
    /// Blocks.
    pub n_layer: usize,
    /// Query heads.
    pub n_head: usize,
    /// KV heads.
    pub n_head_kv: usize,
    /// Head size.
    pub head_dim: usize,
    /// Feed-forward size (per expert for MoE).
    pub n_ff: usize,
    /// Vocabulary.
    pub n_vocab: usize,
    /// Trained context.
    pub n_ctx_train: usize,
    /// RoPE base.
    pub rope_base: f32,
    /// RMS norm epsilon.
    pub eps: f32,
    /// The output projection is the embedding table (no `output.weight`).
    pub tied: bool,
    /// Biases on Q, K and V (and O for gpt-oss).
    pub attn_bias: bool,
    /// Experts, for MoE shapes.
    pub moe: Option<Moe>,
}

const GPT_OSS_MOE: Moe = Moe {
    n_expert: 32,
    n_used: 4,
    window: 128,
    yarn_factor: 32.0,
    yarn_orig_ctx: 4096,
};

/// The shapes [`parse`] knows.
pub const SHAPES: &[Shape] = &[
    Shape {
        name: "llama-135m",
        arch: "llama",
        n_embd: 576,
        n_layer: 30,
        n_head: 9,
        n_head_kv: 3,
        head_dim: 64,
        n_ff: 1536,
        n_vocab: 49152,
        n_ctx_train: 8192,
        rope_base: 100_000.0,
        eps: 1e-5,
        tied: true,
        attn_bias: false,
        moe: None,
    },
    Shape {
        name: "qwen2-0.5b",
        arch: "qwen2",
        n_embd: 896,
        n_layer: 24,
        n_head: 14,
        n_head_kv: 2,
        head_dim: 64,
        n_ff: 4864,
        n_vocab: 151_936,
        n_ctx_train: 32_768,
        rope_base: 1_000_000.0,
        eps: 1e-6,
        tied: false,
        attn_bias: true,
        moe: None,
    },
    Shape {
        name: "qwen2-1.5b",
        arch: "qwen2",
        n_embd: 1536,
        n_layer: 28,
        n_head: 12,
        n_head_kv: 2,
        head_dim: 128,
        n_ff: 8960,
        n_vocab: 151_936,
        n_ctx_train: 32_768,
        rope_base: 1_000_000.0,
        eps: 1e-6,
        tied: false,
        attn_bias: true,
        moe: None,
    },
    Shape {
        name: "qwen2-7b",
        arch: "qwen2",
        n_embd: 3584,
        n_layer: 28,
        n_head: 28,
        n_head_kv: 4,
        head_dim: 128,
        n_ff: 18_944,
        n_vocab: 152_064,
        n_ctx_train: 32_768,
        rope_base: 1_000_000.0,
        eps: 1e-6,
        tied: false,
        attn_bias: true,
        moe: None,
    },
    Shape {
        name: "gpt-oss-20b",
        arch: "gpt-oss",
        n_embd: 2880,
        n_layer: 24,
        n_head: 64,
        n_head_kv: 8,
        head_dim: 64,
        n_ff: 2880,
        n_vocab: 201_088,
        n_ctx_train: 131_072,
        rope_base: 150_000.0,
        eps: 1e-5,
        tied: false,
        attn_bias: true,
        moe: Some(GPT_OSS_MOE),
    },
    Shape {
        name: "gpt-oss-120b",
        arch: "gpt-oss",
        n_embd: 2880,
        n_layer: 36,
        n_head: 64,
        n_head_kv: 8,
        head_dim: 64,
        n_ff: 2880,
        n_vocab: 201_088,
        n_ctx_train: 131_072,
        rope_base: 150_000.0,
        eps: 1e-5,
        tied: false,
        attn_bias: true,
        moe: Some(Moe {
            n_expert: 128,
            ..GPT_OSS_MOE
        }),
    },
];

/// Quantization mixes [`parse`] knows.
pub const MIXES: &[&str] = &[
    "f16", "q8_0", "q6_k", "q5_0", "q4_0", "q4_1", "q4_k_m", "q5_k_m", "mxfp4",
];

/// A parsed `SHAPE:MIX` spec.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Spec {
    /// The model shape.
    pub shape: Shape,
    /// The quantization mix (one of [`MIXES`]).
    pub mix: &'static str,
}

impl fmt::Display for Spec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.shape.name, self.mix)
    }
}

/// Why a spec was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecError(pub String);

impl fmt::Display for SpecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for SpecError {}

/// Parses `SHAPE:MIX` (e.g. `qwen2-1.5b:q4_k_m`, `gpt-oss-20b:mxfp4`).
pub fn parse(spec: &str) -> Result<Spec, SpecError> {
    let names = || SHAPES.iter().map(|s| s.name).collect::<Vec<_>>().join(", ");
    let (shape, mix) = spec.split_once(':').ok_or_else(|| {
        SpecError(format!(
            "synthetic model spec {spec:?} is not SHAPE:MIX (shapes: {}; mixes: {})",
            names(),
            MIXES.join(", ")
        ))
    })?;
    let shape = SHAPES
        .iter()
        .find(|s| s.name.eq_ignore_ascii_case(shape))
        .ok_or_else(|| {
            SpecError(format!(
                "unknown synthetic shape {shape:?} (known: {})",
                names()
            ))
        })?;
    let mix = MIXES
        .iter()
        .find(|m| m.eq_ignore_ascii_case(mix))
        .ok_or_else(|| {
            SpecError(format!(
                "unknown quantization mix {mix:?} (known: {})",
                MIXES.join(", ")
            ))
        })?;
    if (*mix == "mxfp4") != shape.moe.is_some() {
        return Err(SpecError(format!(
            "mix {mix} is for MoE shapes (MXFP4 experts) only; {} {}",
            shape.name,
            if shape.moe.is_some() {
                "takes mxfp4"
            } else {
                "has no experts"
            }
        )));
    }
    Ok(Spec { shape: *shape, mix })
}

/// What a weight matrix is, for the mix rules.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    Embd,
    Output,
    AttnQ,
    AttnK,
    AttnV,
    AttnO,
    FfnGate,
    FfnUp,
    FfnDown,
    Router,
    Experts,
}

/// llama.cpp's choice of layers that get more bits (`attn_v`, `ffn_down` in `*_M` mixes).
fn more_bits(i: usize, n: usize) -> bool {
    i < n / 8 || i >= 7 * n / 8 || (i - n / 8) % 3 == 2
}

/// llama.cpp's fallback for k-quants when a row is not whole super-blocks.
fn fit(ty: GgmlType, cols: usize) -> GgmlType {
    if cols.is_multiple_of(ty.block_size()) {
        return ty;
    }
    let alt = match ty {
        GgmlType::Q2_K | GgmlType::Q3_K => GgmlType::Q4_0,
        GgmlType::Q4_K => GgmlType::Q5_0,
        GgmlType::Q5_K => GgmlType::Q5_1,
        GgmlType::Q6_K => GgmlType::Q8_0,
        _ => GgmlType::F16,
    };
    if cols.is_multiple_of(alt.block_size()) {
        alt
    } else {
        GgmlType::F16
    }
}

/// The type of a matrix of `cols` inputs with role `role` in layer `layer` of `n_layer`.
fn pick(mix: &str, role: Role, layer: usize, n_layer: usize, cols: usize) -> GgmlType {
    use GgmlType as T;
    let base = match mix {
        "f16" => T::F16,
        "q8_0" => T::Q8_0,
        "q6_k" => T::Q6_K,
        "q5_0" => T::Q5_0,
        "q4_0" => T::Q4_0,
        "q4_1" => T::Q4_1,
        "q4_k_m" => T::Q4_K,
        "q5_k_m" => T::Q5_K,
        _ => T::Q8_0, // mxfp4: Q8_0 outside the experts, as the published gpt-oss files
    };
    let ty = match (mix, role) {
        (_, Role::Router) => T::F32,
        ("mxfp4", Role::Experts) => T::MXFP4,
        ("f16" | "q8_0" | "mxfp4", _) => base,
        (_, Role::Output) => T::Q6_K,
        ("q4_k_m" | "q5_k_m", Role::AttnV | Role::FfnDown) if more_bits(layer, n_layer) => T::Q6_K,
        _ => base,
    };
    fit(ty, cols)
}

/// One tensor of the file.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorPlan {
    /// GGUF name.
    pub name: String,
    /// Element type.
    pub ty: GgmlType,
    /// GGUF dims (`dims[0]` = row length).
    pub dims: Vec<u64>,
    /// Typical magnitude of the values.
    pub scale: f32,
}

impl TensorPlan {
    /// Bytes of data.
    pub fn bytes(&self) -> usize {
        let n: u64 = self.dims.iter().product();
        n as usize / self.ty.block_size() * self.ty.type_size()
    }
}

/// Every tensor of the model of `spec`, in file order.
pub fn plan(spec: &Spec) -> Vec<TensorPlan> {
    let s = &spec.shape;
    let (e, q, kv) = (
        s.n_embd as u64,
        (s.n_head * s.head_dim) as u64,
        (s.n_head_kv * s.head_dim) as u64,
    );
    let mut out = Vec::new();
    let mut mat = |name: String, role: Role, layer: usize, dims: Vec<u64>| {
        let cols = dims[0] as usize;
        out.push(TensorPlan {
            name,
            ty: pick(spec.mix, role, layer, s.n_layer, cols),
            scale: 1.0 / (cols as f32).sqrt(),
            dims,
        });
    };
    let n_vocab = s.n_vocab as u64;
    mat("token_embd.weight".into(), Role::Embd, 0, vec![e, n_vocab]);
    let mut vectors: Vec<(String, u64, f32)> = vec![("output_norm.weight".into(), e, 1.0)];
    for i in 0..s.n_layer {
        let b = |t: &str| format!("blk.{i}.{t}");
        vectors.push((b("attn_norm.weight"), e, 1.0));
        mat(b("attn_q.weight"), Role::AttnQ, i, vec![e, q]);
        mat(b("attn_k.weight"), Role::AttnK, i, vec![e, kv]);
        mat(b("attn_v.weight"), Role::AttnV, i, vec![e, kv]);
        mat(b("attn_output.weight"), Role::AttnO, i, vec![q, e]);
        if s.attn_bias {
            vectors.push((b("attn_q.bias"), q, 0.02));
            vectors.push((b("attn_k.bias"), kv, 0.02));
            vectors.push((b("attn_v.bias"), kv, 0.02));
        }
        match s.moe {
            None => {
                vectors.push((b("ffn_norm.weight"), e, 1.0));
                let f = s.n_ff as u64;
                mat(b("ffn_gate.weight"), Role::FfnGate, i, vec![e, f]);
                mat(b("ffn_up.weight"), Role::FfnUp, i, vec![e, f]);
                mat(b("ffn_down.weight"), Role::FfnDown, i, vec![f, e]);
            }
            Some(m) => {
                let (f, x) = (s.n_ff as u64, m.n_expert as u64);
                vectors.push((b("attn_output.bias"), e, 0.02));
                vectors.push((b("attn_sinks.weight"), s.n_head as u64, 0.5));
                vectors.push((b("post_attention_norm.weight"), e, 1.0));
                mat(b("ffn_gate_inp.weight"), Role::Router, i, vec![e, x]);
                vectors.push((b("ffn_gate_inp.bias"), x, 0.02));
                mat(b("ffn_gate_exps.weight"), Role::Experts, i, vec![e, f, x]);
                mat(b("ffn_up_exps.weight"), Role::Experts, i, vec![e, f, x]);
                mat(b("ffn_down_exps.weight"), Role::Experts, i, vec![f, e, x]);
                out_bias(&mut vectors, b("ffn_gate_exps.bias"), f * x);
                out_bias(&mut vectors, b("ffn_up_exps.bias"), f * x);
                out_bias(&mut vectors, b("ffn_down_exps.bias"), e * x);
            }
        }
    }
    if !s.tied {
        mat("output.weight".into(), Role::Output, 0, vec![e, n_vocab]);
    }
    for (name, n, scale) in vectors {
        // Expert biases are 2-D ([n, n_expert]); everything else here is a vector.
        let dims = match s.moe {
            Some(m) if name.ends_with("_exps.bias") => {
                vec![n / m.n_expert as u64, m.n_expert as u64]
            }
            _ => vec![n],
        };
        out.push(TensorPlan {
            name,
            ty: GgmlType::F32,
            dims,
            scale,
        });
    }
    out
}

fn out_bias(v: &mut Vec<(String, u64, f32)>, name: String, n: u64) {
    v.push((name, n, 0.02));
}

/// Metadata key under which the spec is stored.
pub const SPEC_KEY: &str = "kiln.synthetic.spec";
/// Metadata key under which [`VERSION`] is stored.
pub const VERSION_KEY: &str = "kiln.synthetic.version";

/// The metadata of the model of `spec` (architecture keys, a placeholder SentencePiece
/// vocabulary, the spec itself).
fn metadata(spec: &Spec, seed: u64) -> GgufWriter {
    let s = &spec.shape;
    let a = s.arch;
    let k = |key: &str| format!("{a}.{key}");
    let mut w = GgufWriter::new();
    w.add_str("general.architecture", a)
        .add_str("general.name", &format!("synthetic {spec}"))
        .add_str(SPEC_KEY, &spec.to_string())
        .add_u32(VERSION_KEY, VERSION)
        .add_u64("kiln.synthetic.seed", seed)
        .add_u32("general.quantization_version", 2)
        .add_u32(&k("block_count"), s.n_layer as u32)
        .add_u32(&k("context_length"), s.n_ctx_train as u32)
        .add_u32(&k("embedding_length"), s.n_embd as u32)
        .add_u32(&k("feed_forward_length"), s.n_ff as u32)
        .add_u32(&k("attention.head_count"), s.n_head as u32)
        .add_u32(&k("attention.head_count_kv"), s.n_head_kv as u32)
        .add_u32(&k("attention.key_length"), s.head_dim as u32)
        .add_u32(&k("attention.value_length"), s.head_dim as u32)
        .add_u32(&k("rope.dimension_count"), s.head_dim as u32)
        .add_f32(&k("rope.freq_base"), s.rope_base)
        .add_f32(&k("attention.layer_norm_rms_epsilon"), s.eps)
        .add_u32(&k("vocab_size"), s.n_vocab as u32);
    if let Some(m) = s.moe {
        w.add_u32(&k("expert_count"), m.n_expert as u32)
            .add_u32(&k("expert_used_count"), m.n_used as u32)
            .add_u32(&k("expert_feed_forward_length"), s.n_ff as u32)
            .add_u32(&k("attention.sliding_window"), m.window as u32)
            .add_str(&k("rope.scaling.type"), "yarn")
            .add_f32(&k("rope.scaling.factor"), m.yarn_factor)
            .add_u32(
                &k("rope.scaling.original_context_length"),
                m.yarn_orig_ctx as u32,
            );
    }
    // A SentencePiece vocabulary: <unk>, <s>, </s>, the 256 byte tokens, then placeholders.
    let n = s.n_vocab;
    let mut tokens: Vec<String> = Vec::with_capacity(n);
    let mut types: Vec<i32> = Vec::with_capacity(n);
    tokens.extend(["<unk>", "<s>", "</s>"].map(String::from));
    types.extend([2, 3, 3]);
    for b in 0..=255u8 {
        tokens.push(format!("<0x{b:02X}>"));
        types.push(6);
    }
    let mut i = 0usize;
    while tokens.len() < n {
        tokens.push(format!("\u{2581}w{i}"));
        types.push(1);
        i += 1;
    }
    tokens.truncate(n);
    types.truncate(n);
    let scores: Vec<f32> = (0..n).map(|i| -(i as f32)).collect();
    w.add_str("tokenizer.ggml.model", "llama")
        .add_array_str("tokenizer.ggml.tokens", &tokens)
        .add_array_f32("tokenizer.ggml.scores", &scores)
        .add_array_i32("tokenizer.ggml.token_type", &types)
        .add_u32("tokenizer.ggml.unknown_token_id", 0)
        .add_u32("tokenizer.ggml.bos_token_id", 1)
        .add_u32("tokenizer.ggml.eos_token_id", 2)
        .add_bool("tokenizer.ggml.add_bos_token", false);
    w
}

/// Total bytes of tensor data of the model of `spec`.
pub fn data_bytes(spec: &Spec) -> u64 {
    plan(spec).iter().map(|t| t.bytes() as u64).sum()
}

/// Streams the model of `spec` (weights drawn from `seed`) to `w`. `progress(done, total)`
/// is called after each tensor with the data bytes written so far.
pub fn write<W: Write>(
    spec: &Spec,
    seed: u64,
    w: &mut W,
    mut progress: impl FnMut(u64, u64),
) -> std::io::Result<()> {
    let tensors = plan(spec);
    let total: u64 = tensors.iter().map(|t| t.bytes() as u64).sum();
    let mut g = metadata(spec, seed);
    let first = g.n_tensors();
    for t in &tensors {
        g.add_tensor_deferred(&t.name, t.ty, &t.dims, t.bytes());
    }
    let mut done = 0u64;
    g.write_to(w, |i, buf| {
        let t = &tensors[i - first];
        // Each tensor has its own stream, so a tensor's values do not depend on the others.
        let mut rng = Rng::new(seed ^ (i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
        if t.ty == GgmlType::F32 && t.scale == 1.0 {
            // Norm weights: around 1.
            for c in buf.chunks_exact_mut(4) {
                c.copy_from_slice(&(1.0 + 0.1 * rng.symmetric()).to_le_bytes());
            }
        } else {
            random_blocks_into(t.ty, t.scale, &mut rng, buf);
        }
        done += buf.len() as u64;
        progress(done, total);
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gguf::Gguf;

    #[test]
    fn specs_parse_and_refuse_clearly() {
        let s = parse("qwen2-1.5b:q4_k_m").unwrap();
        assert_eq!(s.to_string(), "qwen2-1.5b:q4_k_m");
        assert!(parse("qwen2-1.5b").unwrap_err().0.contains("SHAPE:MIX"));
        assert!(parse("nope:q4_0")
            .unwrap_err()
            .0
            .contains("known: llama-135m"));
        assert!(parse("qwen2-0.5b:q9").unwrap_err().0.contains("q4_k_m"));
        assert!(parse("qwen2-0.5b:mxfp4").is_err());
        assert!(parse("gpt-oss-20b:q4_0").is_err());
        assert!(parse("GPT-OSS-20B:MXFP4").is_ok());
    }

    /// The mixes reproduce the published files' types (Qwen2.5 Q4_K_M 0.5B and 1.5B).
    #[test]
    fn q4_k_m_matches_the_published_mix() {
        let count = |spec: &str| {
            let mut m = std::collections::BTreeMap::new();
            for t in plan(&parse(spec).unwrap()) {
                if t.dims.len() > 1 {
                    *m.entry(format!("{:?}", t.ty)).or_insert(0) += 1;
                }
            }
            m
        };
        // 0.5B: rows of 896 are not whole super-blocks, so Q4_K falls back to Q5_0 and Q6_K
        // to Q8_0, except ffn_down (rows of 4864).
        let m = count("qwen2-0.5b:q4_k_m");
        assert_eq!(m.get("Q5_0"), Some(&(1 + 24 * 5 + 12)), "{m:?}");
        assert_eq!(m.get("Q8_0"), Some(&(12 + 1)), "{m:?}");
        assert_eq!(m.get("Q6_K"), Some(&12), "{m:?}");
        assert_eq!(m.get("Q4_K"), Some(&12), "{m:?}");
        let m = count("qwen2-1.5b:q4_k_m");
        assert_eq!(m.get("Q6_K"), Some(&(14 + 14 + 1)), "{m:?}");
        assert_eq!(m.get("Q4_K"), Some(&(1 + 28 * 5 + 14 + 14)), "{m:?}");
        let m = count("gpt-oss-20b:mxfp4");
        assert_eq!(m.get("MXFP4"), Some(&(24 * 3)), "{m:?}");
    }

    #[test]
    fn a_small_model_writes_and_parses() {
        let spec = parse("llama-135m:q4_1").unwrap();
        let mut buf = Vec::new();
        let mut last = (0, 0);
        write(&spec, 7, &mut buf, |d, t| last = (d, t)).unwrap();
        assert_eq!(last.0, last.1);
        assert_eq!(last.1, data_bytes(&spec));
        let g = Gguf::parse(&buf).unwrap();
        assert_eq!(g.get_str(SPEC_KEY).unwrap(), Some("llama-135m:q4_1"));
        assert_eq!(g.get_str("general.architecture").unwrap(), Some("llama"));
        let plan = plan(&spec);
        assert_eq!(g.tensors.len(), plan.len());
        for (t, p) in g.tensors.iter().zip(&plan) {
            assert_eq!(t.name, p.name);
            assert_eq!(t.ty, p.ty);
        }
        // Same seed, same bytes.
        let mut again = Vec::new();
        write(&spec, 7, &mut again, |_, _| {}).unwrap();
        assert!(buf == again);
    }
}
