//! Parses the real model files (when present) and checks their layout against values
//! read independently with the Python `gguf` package.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Mutex;

use kiln_sdk::gguf::{encode_value, parse_value, Gguf, Value};

/// The models are large: parse them one at a time to bound memory.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// Reads a model from `$KILN_MODELS` (else `~/.cache/kiln/models`); `None` means skip.
fn load(file: &str) -> Option<Vec<u8>> {
    let dir = std::env::var_os("KILN_MODELS")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/kiln/models")))
        .unwrap_or_default();
    let path = dir.join(file);
    match std::fs::read(&path) {
        Ok(b) => Some(b),
        Err(e) => {
            if std::env::var("KILN_REQUIRE_MODELS").as_deref() == Ok("1") {
                panic!("model {} required but unreadable: {e}", path.display());
            }
            eprintln!("skipped: {} not readable ({e})", path.display());
            None
        }
    }
}

struct Expect {
    file: &'static str,
    arch: &'static str,
    n_kv: usize,
    data_offset: u64,
    types: &'static [(&'static str, usize)],
    n_vocab: usize,
    u32_keys: &'static [(&'static str, u64)],
    f32_keys: &'static [(&'static str, f32)],
    first_tokens: &'static [&'static [u8]],
    first_tensor: (&'static str, &'static [u64], &'static str),
}

/// Generic checks valid for every well-formed file, then the model-specific ones.
fn check(x: &Expect) {
    let _guard = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let Some(bytes) = load(x.file) else { return };
    let g = Gguf::parse(&bytes).unwrap_or_else(|e| panic!("{}: {e}", x.file));

    assert_eq!(g.version, 3);
    assert_eq!(g.alignment, 32);
    assert_eq!(g.data_offset, x.data_offset);
    assert_eq!(g.architecture(), Some(x.arch));
    assert_eq!(g.metadata.len(), x.n_kv);

    // Every value re-decodes from its raw span, and re-encodes to it.
    for e in &g.metadata {
        let v = parse_value(e.value_type, e.raw).unwrap_or_else(|err| panic!("{}: {err}", e.key));
        assert_eq!(v, e.value, "{}", e.key);
        assert_eq!(e.value.value_type(), e.value_type, "{}", e.key);
        assert_eq!(encode_value(&e.value), e.raw, "{}", e.key);
        if let Value::Array(a) = e.value {
            assert_eq!(a.iter().count(), a.len(), "{}", e.key);
        }
    }

    // Tensor type histogram.
    let mut hist: BTreeMap<&str, usize> = BTreeMap::new();
    for t in &g.tensors {
        *hist.entry(t.ty.name()).or_default() += 1;
    }
    let want: BTreeMap<&str, usize> = x.types.iter().copied().collect();
    assert_eq!(hist, want, "{}", x.file);
    assert_eq!(g.tensors.len(), want.values().sum::<usize>());

    // Layout: sizes, alignment, no overlap, last tensor ends at EOF.
    let mut end = 0;
    for t in &g.tensors {
        assert_eq!(t.data.len() as u64, t.ty.bytes_for(t.n_elements()).unwrap());
        assert_eq!(t.offset % 32, 0);
        assert_eq!(t.n_elements(), t.row_len() * t.n_rows());
        assert!(g.tensor(t.name).is_some_and(|u| std::ptr::eq(u, t)));
        end = end.max(g.data_offset + t.offset + t.data.len() as u64);
    }
    assert_eq!(end, bytes.len() as u64);

    let (name, dims, ty) = x.first_tensor;
    let t0 = &g.tensors[0];
    assert_eq!(
        (t0.name, t0.dims.as_slice(), t0.ty.name(), t0.offset),
        (name, dims, ty, 0)
    );

    // Tokenizer arrays.
    let toks = g.require_array("tokenizer.ggml.tokens").unwrap();
    let strings = toks.to_strings().unwrap();
    assert_eq!(strings.len(), x.n_vocab);
    assert_eq!(&strings[..x.first_tokens.len()], x.first_tokens);
    let tt = g
        .get_array("tokenizer.ggml.token_type")
        .unwrap()
        .unwrap()
        .to_i32s()
        .unwrap();
    assert_eq!(tt.len(), x.n_vocab);

    for &(k, v) in x.u32_keys {
        assert_eq!(g.require_u64(k).unwrap(), v, "{k}");
    }
    for &(k, v) in x.f32_keys {
        assert_eq!(g.require_f32(k).unwrap(), v, "{k}");
    }
}

#[test]
fn smollm2_135m() {
    check(&Expect {
        file: "smollm2-135m-instruct-q4_1.gguf",
        arch: "llama",
        n_kv: 33,
        data_offset: 1_785_664,
        types: &[("Q4_1", 210), ("Q8_0", 1), ("F32", 61)],
        n_vocab: 49152,
        u32_keys: &[
            ("llama.block_count", 30),
            ("llama.context_length", 8192),
            ("llama.embedding_length", 576),
            ("llama.feed_forward_length", 1536),
            ("llama.attention.head_count", 9),
            ("llama.attention.head_count_kv", 3),
            ("tokenizer.ggml.bos_token_id", 1),
            ("tokenizer.ggml.eos_token_id", 2),
        ],
        f32_keys: &[
            ("llama.rope.freq_base", 100000.0),
            ("llama.attention.layer_norm_rms_epsilon", 1e-5),
        ],
        first_tokens: &[b"<|endoftext|>", b"<|im_start|>", b"<|im_end|>"],
        first_tensor: ("token_embd.weight", &[576, 49152], "Q8_0"),
    });
}

#[test]
fn smollm2_merges_and_flags() {
    let _guard = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let Some(bytes) = load("smollm2-135m-instruct-q4_1.gguf") else {
        return;
    };
    let g = Gguf::parse(&bytes).unwrap();
    let merges = g.require_array("tokenizer.ggml.merges").unwrap();
    assert_eq!(merges.len(), 48900);
    assert_eq!(merges.iter().next().unwrap().as_str(), Some("\u{120} t"));
    assert_eq!(
        g.get_bool("tokenizer.ggml.add_bos_token").unwrap(),
        Some(false)
    );
    assert_eq!(g.require_str("tokenizer.ggml.model").unwrap(), "gpt2");
    assert_eq!(g.require_str("tokenizer.chat_template").unwrap().len(), 368);
    let last = g.tensors.last().unwrap();
    assert_eq!((last.name, last.offset), ("output_norm.weight", 96_574_464));
    assert_eq!(last.dims, vec![576]);
}

#[test]
fn qwen25_coder_05b() {
    check(&Expect {
        file: "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
        arch: "qwen2",
        n_kv: 26,
        data_offset: 5_947_776,
        types: &[
            ("Q5_0", 133),
            ("Q8_0", 13),
            ("Q6_K", 12),
            ("Q4_K", 12),
            ("F32", 121),
        ],
        n_vocab: 151_936,
        u32_keys: &[
            ("qwen2.block_count", 24),
            ("qwen2.context_length", 32768),
            ("qwen2.embedding_length", 896),
            ("qwen2.feed_forward_length", 4864),
            ("qwen2.attention.head_count", 14),
            ("qwen2.attention.head_count_kv", 2),
            ("tokenizer.ggml.eos_token_id", 151_645),
        ],
        f32_keys: &[
            ("qwen2.rope.freq_base", 1e6),
            ("qwen2.attention.layer_norm_rms_epsilon", 1e-6),
        ],
        first_tokens: &[b"!", b"\"", b"#"],
        first_tensor: ("output.weight", &[896, 151_936], "Q8_0"),
    });
}

#[test]
fn qwen25_coder_15b() {
    check(&Expect {
        file: "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
        arch: "qwen2",
        n_kv: 26,
        data_offset: 5_950_528,
        types: &[("Q6_K", 29), ("Q4_K", 169), ("F32", 141)],
        n_vocab: 151_936,
        u32_keys: &[
            ("qwen2.block_count", 28),
            ("qwen2.embedding_length", 1536),
            ("qwen2.feed_forward_length", 8960),
            ("qwen2.attention.head_count", 12),
        ],
        f32_keys: &[("qwen2.rope.freq_base", 1e6)],
        first_tokens: &[b"!", b"\"", b"#"],
        first_tensor: ("output.weight", &[1536, 151_936], "Q6_K"),
    });
}

#[test]
fn gemma3_270m() {
    check(&Expect {
        file: "gemma-3-270m-q4_k_m.gguf",
        arch: "gemma3",
        n_kv: 33,
        data_offset: 6_525_120,
        types: &[
            ("Q5_0", 81),
            ("Q4_K", 27),
            ("Q8_0", 10),
            ("Q6_K", 9),
            ("F32", 109),
        ],
        n_vocab: 262_144,
        u32_keys: &[
            ("gemma3.block_count", 18),
            ("gemma3.embedding_length", 640),
            ("gemma3.attention.key_length", 256),
            ("gemma3.attention.sliding_window", 512),
            ("gemma3.attention.head_count_kv", 1),
            ("tokenizer.ggml.bos_token_id", 2),
        ],
        f32_keys: &[("gemma3.rope.freq_base", 1e6)],
        first_tokens: &[b"<pad>", b"<eos>", b"<bos>"],
        first_tensor: ("output_norm.weight", &[640], "F32"),
    });
}

#[test]
fn gemma3_scores() {
    let _guard = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let Some(bytes) = load("gemma-3-270m-q4_k_m.gguf") else {
        return;
    };
    let g = Gguf::parse(&bytes).unwrap();
    let scores = g
        .require_array("tokenizer.ggml.scores")
        .unwrap()
        .to_f32s()
        .unwrap();
    assert_eq!(scores.len(), 262_144);
    assert_eq!(&scores[..3], &[-1000.0; 3]);
    assert_eq!(scores[1000], -506.0);
    assert_eq!(
        g.get_bool("tokenizer.ggml.add_bos_token").unwrap(),
        Some(true)
    );
}
