//! Property tests: every truncation of a valid GGUF file is rejected, and random byte
//! corruptions of its header/metadata/tensor-info region never panic.
//!
//! Uses the SmolLM2 model when present, else a synthetic `GgufWriter` file.

use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};

use kiln_sdk::gguf::{encode_value, parse_value, Gguf, GgufWriter, Value};
use kiln_sdk::quant::GgmlType;
use proptest::prelude::*;
use proptest::test_runner::Config;

/// The file under test and the end of its header region (its data offset).
struct Sample {
    bytes: Vec<u8>,
    header_end: usize,
}

/// A synthetic file shaped like a small model (used when the real one is absent).
fn synthetic() -> Vec<u8> {
    let mut w = GgufWriter::new();
    let tokens: Vec<String> = (0..500).map(|i| format!("tok{i}")).collect();
    w.add_str("general.architecture", "llama")
        .add_u32("llama.block_count", 2)
        .add_f32("llama.rope.freq_base", 10000.0)
        .add_bool("tokenizer.ggml.add_bos_token", true)
        .add_array_str("tokenizer.ggml.tokens", &tokens)
        .add_array_i32("tokenizer.ggml.token_type", &[1; 500])
        .add_array_f32("tokenizer.ggml.scores", &[0.5; 500])
        .add_u64("big", 1 << 40);
    for i in 0..6 {
        w.add_tensor(
            &format!("blk.{i}.w"),
            GgmlType::Q8_0,
            &[64, 3],
            &[i as u8; 204],
        )
        .add_tensor(&format!("blk.{i}.n"), GgmlType::F32, &[5], &[0; 20]);
    }
    w.finish()
}

fn sample() -> &'static Sample {
    static S: OnceLock<Sample> = OnceLock::new();
    S.get_or_init(|| {
        let dir = std::env::var_os("KILN_MODELS")
            .map(PathBuf::from)
            .or_else(|| {
                std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/kiln/models"))
            })
            .unwrap_or_default();
        let path = dir.join("smollm2-135m-instruct-q4_1.gguf");
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) => {
                if std::env::var("KILN_REQUIRE_MODELS").as_deref() == Ok("1") {
                    panic!("model {} required but unreadable: {e}", path.display());
                }
                eprintln!("skipped real model ({e}): using a synthetic file");
                synthetic()
            }
        };
        let header_end = Gguf::parse(&bytes).expect("sample parses").data_offset as usize;
        Sample { bytes, header_end }
    })
}

/// Exercises everything reachable from a parsed file; must not panic.
fn walk(g: &Gguf<'_>) {
    for e in &g.metadata {
        let v = parse_value(e.value_type, e.raw).expect("raw span re-parses");
        assert_eq!(encode_value(&v), e.raw);
        if let Value::Array(a) = e.value {
            assert_eq!(a.iter().count(), a.len());
            let _ = (a.to_strings(), a.to_f32s(), a.to_i32s(), a.to_u32s());
        }
        let _ = (e.value.as_str(), e.value.as_f32(), e.value.as_i64());
    }
    for t in &g.tensors {
        assert!(g.tensor(t.name).is_some());
        assert_eq!(Some(t.data.len() as u64), t.ty.bytes_for(t.n_elements()));
    }
    let _ = g.architecture();
}

proptest! {
    #![proptest_config(Config { cases: 2000, failure_persistence: None, ..Config::default() })]

    #[test]
    fn every_truncation_is_rejected(pick in prop_oneof![
        6 => (0.0f64..1.0).prop_map(|f| (f, 0u8)),   // header / metadata / tensor infos
        1 => (0.0f64..1.0).prop_map(|f| (f, 1u8)),   // last bytes of the infos + padding
        3 => (0.0f64..1.0).prop_map(|f| (f, 2u8)),   // tensor data
    ]) {
        let s = sample();
        let (f, region) = pick;
        let (lo, hi) = match region {
            0 => (0, s.header_end),
            1 => (s.header_end.saturating_sub(4096), s.header_end),
            _ => (s.header_end, s.bytes.len()),
        };
        let len = lo + ((hi - lo) as f64 * f) as usize;
        prop_assert!(len < s.bytes.len());
        prop_assert!(Gguf::parse(&s.bytes[..len]).is_err(), "truncation to {} accepted", len);
    }

    #[test]
    fn header_corruption_never_panics(
        edits in prop::collection::vec((0u8..4, 0.0f64..1.0, any::<u8>()), 1..6)
    ) {
        static BUF: OnceLock<Mutex<Vec<u8>>> = OnceLock::new();
        let s = sample();
        let buf = BUF.get_or_init(|| Mutex::new(s.bytes.clone()));
        let mut b = buf.lock().unwrap_or_else(|e| e.into_inner());
        let mut touched = Vec::new();
        for (region, f, byte) in edits {
            // Weighted: the first 64 bytes (header + first key), the first 4 KiB, the
            // last 32 KiB before the data (tensor infos), or anywhere before the data.
            let end = s.header_end;
            let (lo, hi) = match region {
                0 => (0, 64.min(end)),
                1 => (0, 4096.min(end)),
                2 => (end.saturating_sub(32 << 10), end),
                _ => (0, end),
            };
            let at = (lo + ((hi - lo) as f64 * f) as usize).min(hi - 1);
            touched.push(at);
            b[at] = byte;
        }
        if let Ok(g) = Gguf::parse(&b) {
            walk(&g);
        }
        for at in touched {
            b[at] = s.bytes[at];
        }
    }
}

#[test]
fn sample_is_valid() {
    let s = sample();
    let g = Gguf::parse(&s.bytes).unwrap();
    walk(&g);
    assert!(!g.tensors.is_empty());
}
