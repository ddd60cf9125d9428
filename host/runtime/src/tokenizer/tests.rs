//! Tokenizer tests: llama.cpp's reference outputs (`shared/reference/*.json`) on the real
//! models, the pitfalls from `shared/notes/tokenizers-from-gguf.md`, and synthetic vocabs.

use super::*;
use kiln_sdk::gguf::GgufWriter;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::OnceLock;

const SMOLLM: &str = "smollm2-135m-instruct-q4_1";
const QWEN: &str = "qwen2.5-coder-0.5b-instruct-q4_k_m";
const QWEN_15B: &str = "qwen2.5-coder-1.5b-instruct-q4_k_m";
const GEMMA: &str = "gemma-3-270m-q4_k_m";

/// Prints why a test is skipped, or fails it when `KILN_REQUIRE_MODELS=1`.
fn skip(why: &str) {
    if std::env::var("KILN_REQUIRE_MODELS").as_deref() == Ok("1") {
        panic!("required input unavailable: {why}");
    }
    println!("skipped: {why}");
}

fn models_dir() -> PathBuf {
    match std::env::var_os("KILN_MODELS") {
        Some(d) => PathBuf::from(d),
        None => {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/kiln/models")
        }
    }
}

/// Builds the tokenizer of `<name>.gguf`; `None` if the file is missing.
fn build_from_file(name: &str) -> Option<Tokenizer> {
    let path = models_dir().join(format!("{name}.gguf"));
    let f = std::fs::File::open(&path).ok()?;
    // SAFETY: the model file is opened read-only and not modified while mapped.
    let map = unsafe { memmap2::Mmap::map(&f) }.expect("mmap model");
    let g = Gguf::parse(&map).expect("parse gguf");
    Some(Tokenizer::from_gguf(&g).expect("build tokenizer"))
}

/// The tokenizer of a model, built once per test binary.
fn model(name: &str) -> Option<&'static Tokenizer> {
    static CELLS: [OnceLock<Option<Tokenizer>>; 4] = [
        OnceLock::new(),
        OnceLock::new(),
        OnceLock::new(),
        OnceLock::new(),
    ];
    let i = [SMOLLM, QWEN, QWEN_15B, GEMMA]
        .iter()
        .position(|&n| n == name)
        .expect("known model");
    let t = CELLS[i].get_or_init(|| build_from_file(name)).as_ref();
    if t.is_none() {
        skip(&format!(
            "model {name}.gguf not in {}",
            models_dir().display()
        ));
    }
    t
}

/// The reference outputs for a model.
fn reference(name: &str) -> Option<serde_json::Value> {
    let dir = match std::env::var_os("KILN_REFERENCE") {
        Some(d) => PathBuf::from(d),
        None => PathBuf::from(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../../shared/reference"
        )),
    };
    let path = dir.join(format!("{name}.json"));
    match std::fs::read_to_string(&path) {
        Ok(s) => Some(serde_json::from_str(&s).expect("reference JSON")),
        Err(e) => {
            skip(&format!("reference {} unreadable: {e}", path.display()));
            None
        }
    }
}

fn ids_of(v: &serde_json::Value) -> Vec<u32> {
    v.as_array()
        .expect("id array")
        .iter()
        .map(|x| x.as_u64().expect("id") as u32)
        .collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Every `tokenization[]` case: ids exactly, and each piece's bytes.
fn check_tokenization(name: &str) {
    let (Some(tok), Some(r)) = (model(name), reference(name)) else {
        return;
    };
    let cases = r["tokenization"].as_array().expect("tokenization[]");
    assert!(!cases.is_empty());
    for case in cases {
        let case_name = case["name"].as_str().unwrap_or("?");
        let text = case["text"].as_str().expect("text");
        let parse_special = !case_name.contains("no_parse_special");
        let want = ids_of(&case["ids"]);
        let got = tok.encode(text, parse_special).unwrap();
        assert_eq!(got, want, "{name} {case_name}: ids for {text:?}");
        for p in case["pieces"].as_array().expect("pieces") {
            let id = p["id"].as_u64().expect("piece id") as u32;
            let want_hex = p["hex"].as_str().expect("hex");
            assert_eq!(
                hex(tok.token_bytes(id)),
                want_hex,
                "{name} {case_name}: bytes of token {id}"
            );
        }
        // The pieces of a case spell its text (after any BOS).
        let body: Vec<u32> = got
            .iter()
            .copied()
            .skip(usize::from(tok.adds_bos()))
            .collect();
        assert_eq!(tok.decode(&body), text, "{name} {case_name}: decode");
    }
}

/// Every `generation[]` case: prompt ids, and the generated ids decode to the text.
fn check_generation(name: &str) {
    let (Some(tok), Some(r)) = (model(name), reference(name)) else {
        return;
    };
    for case in r["generation"].as_array().expect("generation[]") {
        let case_name = case["name"].as_str().unwrap_or("?");
        let prompt = case["prompt"].as_str().expect("prompt");
        assert_eq!(
            tok.encode(prompt, true).unwrap(),
            ids_of(&case["prompt_ids"]),
            "{name} {case_name}: prompt ids"
        );
        let generated = ids_of(&case["generated_ids"]);
        assert_eq!(
            tok.decode(&generated),
            case["generated_text"].as_str().expect("generated_text"),
            "{name} {case_name}: generated text"
        );
    }
}

#[test]
fn reference_tokenization_smollm2() {
    check_tokenization(SMOLLM);
}

#[test]
fn reference_tokenization_qwen2() {
    check_tokenization(QWEN);
}

#[test]
fn reference_tokenization_gemma3() {
    check_tokenization(GEMMA);
}

#[test]
fn reference_generation_prompts() {
    for name in [SMOLLM, QWEN, GEMMA] {
        check_generation(name);
    }
}

#[test]
fn qwen_1_5b_shares_the_qwen2_vocab() {
    let (Some(small), Some(big)) = (model(QWEN), model(QWEN_15B)) else {
        return;
    };
    assert_eq!(small.n_vocab(), big.n_vocab());
    let text = "fn main() { println!(\"héllo 世界 🚀\"); }<|im_end|>\n\n  x";
    assert_eq!(
        small.encode(text, true).unwrap(),
        big.encode(text, true).unwrap()
    );
}

/// Pitfall 1: `</s>` is control by its text in Qwen (id 128247, an ordinary token in the
/// GGUF), and so one special token when parsing special tokens.
#[test]
fn qwen_slash_s_is_one_special_token() {
    let Some(tok) = model(QWEN) else { return };
    assert_eq!(tok.token_text(128247), Some("</s>"));
    assert!(tok.is_control(128247));
    assert!(tok.is_eog(128247));
    let with = tok.encode("a</s>b", true).unwrap();
    assert_eq!(with.len(), 3, "{with:?}");
    assert_eq!(with[1], 128247);
    let without = tok.encode("a</s>b", false).unwrap();
    assert!(!without.contains(&128247), "{without:?}");
    assert_eq!(tok.decode(&without), "a</s>b");
}

/// Pitfall 2: SmolLM2 lacks the byte symbol for 0x04; llama.cpp drops the byte after
/// merging, so `.\x04.` gives "." "." rather than "..".
#[test]
fn smollm_missing_byte_symbol_blocks_merges() {
    let Some(tok) = model(SMOLLM) else { return };
    let dot = tok.encode(".", false).unwrap();
    assert_eq!(dot.len(), 1);
    let dots = tok.encode("..", false).unwrap();
    assert_eq!(dots.len(), 1, "'..' is one token in this vocab");
    assert_eq!(tok.encode(".\x04.", false).unwrap(), [dot[0], dot[0]]);
    // Every id produced is a real vocab id.
    let ids = tok
        .encode("\x04\x06\u{13}\u{14}\u{16}\u{1D}ÿ", true)
        .unwrap();
    assert!(ids.iter().all(|&i| (i as usize) < tok.n_vocab()), "{ids:?}");
}

/// Pre-token splits (byte-level text) of `text` by `tok`'s pre-tokenizer.
fn pre_splits(tok: &Tokenizer, text: &str) -> Vec<String> {
    use tokenizers::{OffsetReferential, OffsetType, PreTokenizedString, PreTokenizer};
    let mut pts = PreTokenizedString::from(text);
    tok.hf
        .get_pre_tokenizer()
        .expect("gpt2 vocabs have a pre-tokenizer")
        .pre_tokenize(&mut pts)
        .expect("pre-tokenize");
    pts.get_splits(OffsetReferential::Original, OffsetType::Byte)
        .into_iter()
        .map(|(s, _, _)| s.to_string())
        .collect()
}

/// Pitfall 3: U+1C89 (a letter only since Unicode 16) is not a letter for llama.cpp.
#[test]
fn unicode16_letters_are_not_letters() {
    if let Some(tok) = model(QWEN) {
        // `[^\r\n\p{L}\p{N}]?\p{L}+`: the non-letter joins the following word.
        assert_eq!(pre_splits(tok, "a\u{1C89}b"), ["a", "á²īb"]);
        assert_eq!(
            tok.encode("a\u{1C89}b", false).unwrap(),
            [
                tok.encode("a", false).unwrap(),
                tok.encode("\u{1C89}b", false).unwrap()
            ]
            .concat()
        );
    }
    if let Some(tok) = model(SMOLLM) {
        // ` ?\p{L}+` and ` ?[^\s\p{L}\p{N}]+`: three pieces.
        assert_eq!(pre_splits(tok, "a\u{1C89}b"), ["a", "á²ī", "b"]);
        // Unicode 16 digits are not digits either: `\p{N}` would isolate each one.
        assert_eq!(pre_splits(tok, "\u{11BF0}\u{11BF1}"), ["ðĳ¯°ðĳ¯±"]);
    }
}

#[test]
fn gemma_bos_and_special_parsing() {
    let Some(tok) = model(GEMMA) else { return };
    assert_eq!(tok.bos(), Some(2));
    assert_eq!(tok.eos(), Some(1));
    assert_eq!(tok.encode("", true).unwrap(), [2]);
    assert_eq!(tok.encode("<bos>", true).unwrap(), [2, 2]);
    assert_ne!(tok.encode("<bos>", false).unwrap(), [2, 2]);
    // `</s>` is user-defined in the GGUF but control by its text: split out only when
    // parsing special tokens.
    assert_eq!(tok.token_text(212), Some("</s>"));
    assert!(tok.is_control(212));
    assert_eq!(tok.encode("</s>", true).unwrap(), [2, 212]);
    let plain = tok.encode("</s>", false).unwrap();
    assert!(!plain.contains(&212), "{plain:?}");
    assert_eq!(tok.decode(&plain[1..]), "</s>");
    // User-defined tokens (runs of newlines, HTML tags) split out either way.
    let nn = tok.encode("\n\n", false).unwrap();
    assert_eq!(nn.len(), 2, "{nn:?}");
    for parse in [true, false] {
        let ids = tok.encode("a\n\n<table>b", parse).unwrap();
        assert!(ids.contains(&nn[1]), "{ids:?}");
        assert_eq!(tok.decode(&ids[1..]), "a\n\n<table>b");
    }
    // Turn markers.
    let turn = tok
        .encode("<start_of_turn>user\nhi<end_of_turn>", true)
        .unwrap();
    assert_eq!(turn[1], 105);
    assert_eq!(*turn.last().unwrap(), 106);
    assert!(tok.is_eog(106) && tok.is_eog(1) && !tok.is_eog(105));
    assert_eq!(tok.token_bytes(106), b"<end_of_turn>");
    assert!(tok.chat_template().is_none());
}

#[test]
fn special_tokens_and_end_of_generation() {
    if let Some(tok) = model(QWEN) {
        assert_eq!(tok.n_vocab(), 151936);
        assert_eq!(tok.eos(), Some(151645));
        assert!(!tok.adds_bos());
        for id in [151643, 151645, 151662, 151663, 151664] {
            assert!(tok.is_eog(id), "{id} {:?}", tok.token_text(id));
        }
        for id in [151644, 151659, 9707] {
            assert!(!tok.is_eog(id), "{id} {:?}", tok.token_text(id));
        }
        assert!(tok.is_control(151644) && !tok.is_control(9707));
        assert!(tok
            .chat_template()
            .is_some_and(|t| t.contains("<|im_start|>")));
        // Unused tokens emit nothing; ids past the vocab too.
        assert_eq!(tok.token_bytes(151700), b"");
        assert_eq!(tok.token_bytes(u32::MAX), b"");
        assert_eq!(tok.token_text(u32::MAX), None);
        // User-defined tokens are split out even without special parsing.
        let ids = tok.encode("x<tool_call>y", false).unwrap();
        assert!(ids.contains(&151657), "{ids:?}");
    }
    if let Some(tok) = model(SMOLLM) {
        assert_eq!(tok.n_vocab(), 49152);
        assert_eq!((tok.bos(), tok.eos()), (Some(1), Some(2)));
        assert!(tok.is_eog(0) && tok.is_eog(2) && !tok.is_eog(1));
    }
}

#[test]
fn streaming_decode_matches_full_decode() {
    let Some(tok) = model(QWEN) else { return };
    let text = "Café naïve — 東京 🚀 👩\u{200d}👩\u{200d}👧 ok";
    let ids = tok.encode(text, false).unwrap();
    let mut d = StreamDecoder::new();
    let mut out = String::new();
    for &id in &ids {
        let piece = d.push(tok.token_bytes(id));
        assert!(!piece.contains('\u{FFFD}'), "{piece:?}");
        out.push_str(&piece);
    }
    out.push_str(&d.finish());
    assert_eq!(out, text);
    assert_eq!(tok.decode(&ids), text);
}

// ---- synthetic vocabularies (no model files needed) ----

/// A GGUF holding only tokenizer metadata; `extra` adds keys.
fn synthetic(
    model: &str,
    tokens: &[&str],
    types: &[i32],
    extra: impl Fn(&mut GgufWriter),
) -> Vec<u8> {
    let mut w = GgufWriter::new();
    w.add_str("general.architecture", "test");
    w.add_str("tokenizer.ggml.model", model);
    w.add_array_str("tokenizer.ggml.tokens", tokens);
    w.add_array_i32("tokenizer.ggml.token_type", types);
    extra(&mut w);
    w.finish()
}

#[test]
fn unknown_models_and_pre_types_are_clear_errors() {
    let bytes = synthetic("bert", &["a"], &[1], |_| {});
    let g = Gguf::parse(&bytes).unwrap();
    let err = Tokenizer::from_gguf(&g).unwrap_err().to_string();
    assert!(
        err.contains("unsupported tokenizer model \"bert\""),
        "{err}"
    );

    let bytes = synthetic("gpt2", &["a"], &[1], |w| {
        w.add_str("tokenizer.ggml.pre", "martian");
        w.add_array_str::<&str>("tokenizer.ggml.merges", &[]);
    });
    let g = Gguf::parse(&bytes).unwrap();
    let err = Tokenizer::from_gguf(&g).unwrap_err().to_string();
    assert!(
        err.contains("unsupported tokenizer.ggml.pre \"martian\""),
        "{err}"
    );

    let mut w = GgufWriter::new();
    w.add_str("general.architecture", "test");
    let bytes = w.finish();
    let g = Gguf::parse(&bytes).unwrap();
    let err = Tokenizer::from_gguf(&g).unwrap_err().to_string();
    assert!(err.contains("tokenizer.ggml.model missing"), "{err}");
}

#[test]
fn synthetic_gpt2_vocab() {
    // Byte-level symbols for "a", "b", " " (Ġ) plus merges, a control token and a
    // user-defined one; "<|x|>" contains "<|x" (user-defined) to check longest-first.
    let tokens = [
        "a",
        "b",
        "Ġ",
        "ab",
        "Ġab",
        "<|endoftext|>",
        "<|x",
        "<|x|>",
        "<",
        "|",
        "x",
        ">",
    ];
    let types = [1, 1, 1, 1, 1, 1, 4, 3, 1, 1, 1, 1];
    let bytes = synthetic("gpt2", &tokens, &types, |w| {
        w.add_str("tokenizer.ggml.pre", "qwen2");
        w.add_array_str("tokenizer.ggml.merges", &["a b", "Ġ ab"]);
        w.add_u32("tokenizer.ggml.eos_token_id", 5);
    });
    let g = Gguf::parse(&bytes).unwrap();
    let tok = Tokenizer::from_gguf(&g).unwrap();
    assert_eq!(tok.encode("ab ab", true).unwrap(), [3, 4]);
    // Text-classified control token (normal in the GGUF) is split only with parsing on.
    assert!(tok.is_control(5) && tok.is_eog(5));
    assert_eq!(tok.encode("ab<|endoftext|>", true).unwrap(), [3, 5]);
    assert_ne!(tok.encode("ab<|endoftext|>", false).unwrap(), [3, 5]);
    // Longest special text first: "<|x|>" wins over the user-defined "<|x".
    assert_eq!(tok.encode("<|x|>", true).unwrap(), [7]);
    assert_eq!(tok.encode("<|x|>", false).unwrap(), [6, 9, 11]);
    // Bytes without a symbol in the vocab ("c") are dropped.
    assert_eq!(tok.encode("acb", false).unwrap(), [0, 1]);
    assert_eq!(tok.token_bytes(4), b" ab");
    assert_eq!(tok.decode(&[3, 4, 5]), "ab ab<|endoftext|>");
    assert!(!tok.adds_bos() && tok.bos().is_none());
}

#[test]
fn synthetic_spm_vocab_with_space_prefix() {
    let tokens = [
        "<unk>", "<s>", "</s>", "<0x41>", "▁", "h", "i", "▁h", "▁hi", "<0xC3>", "<0xA9>",
    ];
    let types = [2, 3, 3, 6, 1, 1, 1, 1, 1, 6, 6];
    let scores = [0.0, 0.0, 0.0, 0.0, -1.0, -2.0, -3.0, -4.0, -5.0, 0.0, 0.0];
    let bytes = synthetic("llama", &tokens, &types, |w| {
        w.add_array_f32("tokenizer.ggml.scores", &scores);
    });
    let g = Gguf::parse(&bytes).unwrap();
    let tok = Tokenizer::from_gguf(&g).unwrap();
    // llama defaults: BOS 1 added, a space prefix before text.
    assert!(tok.adds_bos());
    assert_eq!((tok.bos(), tok.eos()), (Some(1), Some(2)));
    assert_eq!(tok.encode("hi", true).unwrap(), [1, 8]);
    // "é" has no piece: byte fallback; "A" has a byte piece only.
    assert_eq!(tok.encode("hiéA", true).unwrap(), [1, 8, 9, 10, 3]);
    assert_eq!(tok.decode(&[8, 9, 10, 3]), " hiéA");
    // After a special token the prefix space comes back.
    assert_eq!(tok.encode("hi</s>hi", true).unwrap(), [1, 8, 2, 8]);
    assert!(tok.is_eog(2));
    assert_eq!(tok.token_bytes(0), b"<unk>");
}
/// A small deterministic generator for randomized tests.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        self.0 >> 33
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// llama.cpp's partition, literally: for each special token (longest text first), split
/// every raw fragment at each non-overlapping occurrence, left to right.
fn naive_partition(texts: &[&str], attrs: &[u8], text: &str, parse_special: bool) -> Vec<Fragment> {
    let mut order: Vec<usize> = (0..texts.len())
        .filter(|&i| attrs[i] & (attr::CONTROL | attr::UNKNOWN | attr::USER_DEFINED) != 0)
        .collect();
    order.sort_by(|&a, &b| texts[b].len().cmp(&texts[a].len()).then(a.cmp(&b)));
    let mut frags = if text.is_empty() {
        vec![]
    } else {
        vec![Fragment::Raw(0, text.len())]
    };
    for id in order {
        if !parse_special && attrs[id] & (attr::CONTROL | attr::UNKNOWN) != 0 {
            continue;
        }
        let t = texts[id];
        let mut next = Vec::new();
        for f in frags {
            let Fragment::Raw(mut a, b) = f else {
                next.push(f);
                continue;
            };
            while let Some(k) = text[a..b].find(t) {
                if k > 0 {
                    next.push(Fragment::Raw(a, a + k));
                }
                next.push(Fragment::Token(id as u32));
                a += k + t.len();
            }
            if a < b {
                next.push(Fragment::Raw(a, b));
            }
        }
        frags = next;
    }
    frags
}

#[test]
fn partition_matches_llama_cpp_order_on_random_texts() {
    let texts = [
        "ab", "abc", "bc", "b", "cab", "<x>", "x>", "<", "ca", "abca", "bcab",
    ];
    let mut rng = Lcg(7);
    for round in 0..300 {
        let attrs: Vec<u8> = texts
            .iter()
            .map(|_| {
                [
                    attr::NORMAL,
                    attr::CONTROL,
                    attr::USER_DEFINED,
                    attr::UNKNOWN,
                ][rng.below(4)]
            })
            .collect();
        let owned: Vec<String> = texts.iter().map(|t| t.to_string()).collect();
        let m = SpecialMatcher::new(&owned, &attrs);
        for _ in 0..20 {
            let len = rng.below(40);
            let text: String = (0..len)
                .map(|_| ['a', 'b', 'c', '<', 'x', '>'][rng.below(6)])
                .collect();
            for parse in [true, false] {
                assert_eq!(
                    m.partition(&text, parse),
                    naive_partition(&texts, &attrs, &text, parse),
                    "round {round}: {text:?} parse_special={parse} attrs={attrs:?}"
                );
            }
        }
    }
}

#[test]
fn random_texts_round_trip() {
    let pool: Vec<char> = "aZ09 \t\n\r  .,;:!?'\"-_()[]{}<>|/\\@#$%^&*~`éüßçñÆøåÅ€£¥©®™ΩπΣжЖщ東京日本語中文한국어\
        ًا لعربيةעבריתहिन्दीไทย🚀👩\u{200d}👩\u{200d}👧🏳️\u{200d}🌈✅\u{301}\u{FEFF}\u{1C89}\u{11BF0}\u{0}\u{7F}"
        .chars()
        .collect();
    let specials = [
        "<|im_start|>",
        "<|im_end|>",
        "<bos>",
        "</s>",
        "<end_of_turn>",
        "<table>",
    ];
    for name in [SMOLLM, QWEN, GEMMA] {
        let Some(tok) = model(name) else { continue };
        let mut rng = Lcg(name.len() as u64);
        for _ in 0..300 {
            let mut text = String::new();
            for _ in 0..rng.below(60) {
                if rng.below(20) == 0 {
                    text.push_str(specials[rng.below(specials.len())]);
                } else {
                    text.push(pool[rng.below(pool.len())]);
                }
            }
            for parse in [true, false] {
                let ids = tok.encode(&text, parse).unwrap();
                assert!(ids.iter().all(|&i| (i as usize) < tok.n_vocab()));
                let body = &ids[usize::from(tok.adds_bos())..];
                assert_eq!(tok.decode(body), text, "{name} parse_special={parse}");
            }
        }
    }
}

#[test]
fn long_and_repetitive_inputs() {
    for name in [SMOLLM, QWEN, GEMMA] {
        let Some(tok) = model(name) else { continue };
        for text in [
            " ".repeat(100_000),
            "\n".repeat(50_000),
            "<".repeat(50_000),
            "<unused1>".repeat(5_000),
            "ab".repeat(50_000),
            "x\t \n".repeat(20_000),
        ] {
            let ids = tok.encode(&text, true).unwrap();
            assert_eq!(
                tok.decode(&ids[usize::from(tok.adds_bos())..]),
                text,
                "{name}"
            );
        }
    }
}

#[test]
fn tokenizer_and_decoder_can_be_shared_across_threads() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Tokenizer>();
    assert_send_sync::<StreamDecoder>();
    assert_send_sync::<crate::chat::ChatTemplate>();
}

// ---- gpt-oss (o200k_harmony, pre "gpt-4o") against llama.cpp ----

/// Harmony's special tokens among ids 199998..201088 (the others are reserved).
const HARMONY_SPECIALS: &[(u32, &str)] = &[
    (199_998, "<|startoftext|>"),
    (199_999, "<|endoftext|>"),
    (200_002, "<|return|>"),
    (200_003, "<|constrain|>"),
    (200_005, "<|channel|>"),
    (200_006, "<|start|>"),
    (200_007, "<|end|>"),
    (200_008, "<|message|>"),
    (200_012, "<|call|>"),
];

/// The merge that makes token `tok` (rank `rank`): BPE over its bytes with the lower ranks
/// until two parts remain.
fn merge_of(tok: &[u8], rank: u32, ranks: &HashMap<Vec<u8>, u32>) -> Option<(Vec<u8>, Vec<u8>)> {
    let mut parts: Vec<Vec<u8>> = tok.iter().map(|&b| vec![b]).collect();
    while parts.len() > 2 {
        let best = (0..parts.len() - 1)
            .filter_map(|i| {
                let joined = [parts[i].as_slice(), parts[i + 1].as_slice()].concat();
                ranks.get(&joined).filter(|&&r| r < rank).map(|&r| (r, i))
            })
            .min()?;
        let right = parts.remove(best.1 + 1);
        parts[best.1].extend(right);
    }
    (parts.len() == 2).then(|| (parts[0].clone(), parts[1].clone()))
}

/// gpt-oss's vocab as a GGUF, the way llama.cpp's converter writes it: o200k_base's tokens
/// (byte-level texts), merges derived from their ranks, harmony's special tokens (control)
/// and reserved ones up to 201088 tokens.
fn gpt_oss_vocab_gguf() -> Vec<u8> {
    let bpe = tiktoken_rs::o200k_base().expect("o200k_base");
    let n_base = 199_998u32;
    let table = bpe_gpt2::byte_to_char_table();
    let enc = |b: &[u8]| -> String { b.iter().map(|&x| table[x as usize]).collect() };
    let mut ranks = HashMap::new();
    let mut by_rank = Vec::with_capacity(n_base as usize);
    for r in 0..n_base {
        let bytes = bpe
            ._decode_native_and_split(vec![r])
            .next()
            .expect("token bytes");
        ranks.insert(bytes.clone(), r);
        by_rank.push(bytes);
    }
    let mut merges = Vec::new();
    for (r, tok) in by_rank.iter().enumerate() {
        if tok.len() < 2 {
            continue;
        }
        let (a, b) = merge_of(tok, r as u32, &ranks).expect("every token has a merge");
        merges.push(format!("{} {}", enc(&a), enc(&b)));
    }
    let mut tokens: Vec<String> = by_rank.iter().map(|b| enc(b)).collect();
    let mut types = vec![1i32; tokens.len()];
    for id in n_base..201_088 {
        let text = HARMONY_SPECIALS
            .iter()
            .find(|(i, _)| *i == id)
            .map_or_else(|| format!("<|reserved_{id}|>"), |(_, t)| t.to_string());
        tokens.push(text);
        types.push(3);
    }
    let mut w = GgufWriter::new();
    w.add_str("general.architecture", "gpt-oss");
    w.add_str("tokenizer.ggml.model", "gpt2");
    w.add_str("tokenizer.ggml.pre", "gpt-4o");
    w.add_array_str("tokenizer.ggml.tokens", &tokens);
    w.add_array_i32("tokenizer.ggml.token_type", &types);
    w.add_array_str("tokenizer.ggml.merges", &merges);
    w.add_u32("tokenizer.ggml.bos_token_id", 199_998);
    w.add_u32("tokenizer.ggml.eos_token_id", 200_002);
    w.add_u32("tokenizer.ggml.padding_token_id", 199_999);
    w.add_bool("tokenizer.ggml.add_bos_token", false);
    w.finish()
}

/// The gpt-oss tokenizer, built once per test binary.
fn gpt_oss() -> &'static Tokenizer {
    static CELL: OnceLock<Tokenizer> = OnceLock::new();
    CELL.get_or_init(|| {
        let bytes = gpt_oss_vocab_gguf();
        let g = Gguf::parse(&bytes).expect("parse gguf");
        Tokenizer::from_gguf(&g).expect("build tokenizer")
    })
}

/// Every case llama.cpp tokenized (`testdata/gpt-oss-llama-cpp.json`: tricky texts and
/// random ones, special-token parsing on and off) gives the same ids.
#[test]
fn gpt_oss_matches_llama_cpp() {
    let tok = gpt_oss();
    let r: serde_json::Value =
        serde_json::from_str(include_str!("testdata/gpt-oss-llama-cpp.json")).expect("JSON");
    let cases = r["cases"].as_array().expect("cases");
    assert!(cases.len() > 400);
    let mut failed = Vec::new();
    for case in cases {
        let text = case["text"].as_str().expect("text");
        let parse = case["parse_special"].as_bool().expect("parse_special");
        let want = ids_of(&case["ids"]);
        let got = tok.encode(text, parse).unwrap();
        if got != want {
            failed.push(format!(
                "{text:?} parse_special={parse}: {got:?} != {want:?}"
            ));
        }
        assert_eq!(tok.decode(&got), text);
    }
    assert!(
        failed.is_empty(),
        "{} cases differ:\n{}",
        failed.len(),
        failed.join("\n")
    );
}

#[test]
fn gpt_oss_special_tokens() {
    let tok = gpt_oss();
    assert!(tok.uses_harmony());
    // <|return|> and <|call|> end generation; <|end|> only ends a message.
    assert!(tok.is_eog(200_002) && tok.is_eog(200_012));
    assert!(!tok.is_eog(200_007));
    // Harmony's structure tokens are split out even without special-token parsing, and
    // render as their text.
    let ids = tok
        .encode(
            "<|start|>assistant<|channel|>final<|message|>Hi<|end|>",
            false,
        )
        .unwrap();
    assert_eq!(ids[0], 200_006);
    assert!(ids.contains(&200_005) && ids.contains(&200_008) && ids.contains(&200_007));
    assert_eq!(tok.decode(&[200_005, 200_007]), "<|channel|><|end|>");
    // Control tokens need special-token parsing.
    assert_eq!(tok.encode("<|return|>", true).unwrap(), [200_002]);
    assert_ne!(tok.encode("<|return|>", false).unwrap(), [200_002]);
    assert!(!tok.adds_bos());
}

#[test]
fn gpt_oss_long_and_repetitive_inputs() {
    let tok = gpt_oss();
    for text in [
        " ".repeat(100_000),
        "\n".repeat(50_000),
        "A".repeat(200_000),
        "ab".repeat(100_000),
        "aB".repeat(100_000),
        "本".repeat(100_000),
        "É".repeat(100_000),
        "1".repeat(100_000),
        "x\t \n".repeat(20_000),
        "<|start|>".repeat(10_000),
    ] {
        let start = std::time::Instant::now();
        let ids = tok.encode(&text, false).unwrap();
        assert_eq!(tok.decode(&ids), text);
        assert!(
            start.elapsed().as_secs_f64() < 10.0,
            "{:?}… took {:?}",
            &text[..8],
            start.elapsed()
        );
    }
}
