//! The forward pass against llama.cpp. For each reference generation, the prompt and then the
//! reference's own tokens are fed to the CPU backend (through the ABI, as the host does); at
//! every step the logits of llama.cpp's top-10 must agree within a tolerance, and our greedy
//! pick must equal llama.cpp's wherever llama.cpp's margin is at least [`MARGIN`].
//! A second test runs `kiln run` greedily and compares the generated text.
//!
//! Why a margin of 0.25 and not 0.01: both engines quantize activations to 8 bits, and
//! summation-order differences flip a few roundings, which the network amplifies: llama.cpp's own
//! logits differ from an exact (float64, dequantized-weights) evaluation by up to ~0.3 on these
//! models (Gemma, with larger logits, differs most: mean 0.2–0.3, worst ~1.6 here). On SmolLM2 "def quicksort(arr):" step 6, llama.cpp picks id 3725 by a margin of 0.091
//! while the exact evaluation picks 198 by 0.122, so no accurate engine can meet 0.01 there.

use kiln_e2e::*;
use kiln_sdk::abi::client::{BackendLib, ContextOptions, LoadedModel};
use kiln_sdk::abi::KilnBackendHeader;
use kiln_sdk::gguf::Gguf;
use std::sync::Arc;

/// Largest accepted |our logit − llama.cpp logit| over any reference top-10 entry.
const MAX_ABS_DIFF: f32 = 2.0;
/// Largest accepted mean |difference| over all compared logits of one generation.
const MAX_MEAN_DIFF: f32 = 0.4;
/// Greedy picks must agree wherever llama.cpp's margin among allowed tokens is at least this.
const MARGIN: f64 = 0.25;

fn load_model(file: &std::path::Path) -> LoadedModel {
    // SAFETY: the CPU backend built in this workspace; the header symbol is a static.
    let lib = unsafe { libloading::Library::new(cpu_backend()) }.expect("load CPU backend");
    let header: *const KilnBackendHeader =
        unsafe { *lib.get(b"kiln_backend_header\0").expect("symbol") };
    let lib = unsafe { BackendLib::new(header, Arc::new(lib)) }.expect("ABI check");
    let inst = lib.create(0, 0).expect("instance");
    let f = std::fs::File::open(file).unwrap();
    let map = Arc::new(unsafe { memmap2::Mmap::map(&f) }.unwrap());
    let bytes: &'static [u8] = unsafe { std::slice::from_raw_parts(map.as_ptr(), map.len()) };
    let gguf = Gguf::parse(bytes).unwrap();
    unsafe { inst.load_model(&gguf, map.clone()) }.expect("model loads")
}

fn check_model(model_file: &str, reference_file: &str) {
    let Some(path) = model(model_file) else {
        return;
    };
    let Some(r) = reference(reference_file) else {
        return;
    };
    let model = load_model(&path);
    let mut ctx = model
        .create_context(ContextOptions {
            n_ctx: 512,
            n_seq_max: 1,
            n_batch_max: 512,
            n_outputs_max: 1,
        })
        .unwrap();
    let n_vocab = model.info().n_vocab as usize;
    let mut failures = Vec::new();
    for g in r["generation"].as_array().unwrap() {
        let name = g["name"].as_str().unwrap();
        let ids = |k: &str| -> Vec<i32> {
            g[k].as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_i64().unwrap() as i32)
                .collect()
        };
        let prompt = ids("prompt_ids");
        let generated = ids("generated_ids");
        let tops = g["per_step_top10_logits_unmasked"].as_array().unwrap();
        let margins: Vec<f64> = g["margin_among_allowed"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        ctx.seq_clear(0).unwrap();
        let pos: Vec<i32> = (0..prompt.len() as i32).collect();
        let mut want = vec![0u8; prompt.len()];
        *want.last_mut().unwrap() = 1;
        let mut logits = Vec::new();
        ctx.forward_logits(&prompt, &pos, &vec![0; prompt.len()], &want, &mut logits)
            .unwrap();
        let (mut sum, mut count, mut worst) = (0f32, 0usize, 0f32);
        let mut disagreements = Vec::new();
        for (step, &tok) in generated.iter().enumerate() {
            assert_eq!(logits.len(), n_vocab);
            let top: Vec<(usize, f32)> = tops[step]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| {
                    (
                        p[0].as_u64().unwrap() as usize,
                        p[1].as_f64().unwrap() as f32,
                    )
                })
                .collect();
            for &(id, want) in &top {
                let d = (logits[id] - want).abs();
                worst = worst.max(d);
                sum += d;
                count += 1;
            }
            // Reference tokens ranked above the chosen one were masked (EOS ignored).
            let chosen_rank = top
                .iter()
                .position(|&(id, _)| id == tok as usize)
                .unwrap_or(top.len());
            let masked: Vec<usize> = top[..chosen_rank].iter().map(|p| p.0).collect();
            let ours = (0..n_vocab)
                .filter(|i| !masked.contains(i))
                .max_by(|&a, &b| logits[a].total_cmp(&logits[b]).then(b.cmp(&a)))
                .unwrap();
            if ours as i32 != tok {
                disagreements.push((step, margins[step]));
                if margins[step] >= MARGIN {
                    failures.push(format!(
                        "{name} step {step}: we pick {ours}, llama.cpp {tok} by margin {:.3}",
                        margins[step]
                    ));
                }
            }
            let p = (prompt.len() + step) as i32;
            ctx.forward_logits(&[tok], &[p], &[0], &[1], &mut logits)
                .unwrap();
        }
        let mean = sum / count as f32;
        eprintln!("{model_file} {name}: mean |Δlogit| {mean:.3}, max {worst:.3}, picks differing at (step, margin) {disagreements:?}");
        if mean > MAX_MEAN_DIFF {
            failures.push(format!("{name}: mean |Δlogit| {mean:.3} > {MAX_MEAN_DIFF}"));
        }
        if worst > MAX_ABS_DIFF {
            failures.push(format!("{name}: max |Δlogit| {worst:.3} > {MAX_ABS_DIFF}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn smollm2_matches_llama_cpp() {
    check_model(
        "smollm2-135m-instruct-q4_1.gguf",
        "smollm2-135m-instruct-q4_1.json",
    );
}

#[test]
fn qwen2_matches_llama_cpp() {
    check_model(
        "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
        "qwen2.5-coder-0.5b-instruct-q4_k_m.json",
    );
}

#[test]
fn gemma3_matches_llama_cpp() {
    check_model("gemma-3-270m-q4_k_m.gguf", "gemma-3-270m-q4_k_m.json");
}

/// `kiln run` (free-running, greedy) reproduces llama.cpp's generated text, and where it
/// diverges, llama.cpp's own margin at that token is below [`MARGIN`] (a near-tie). Token texts
/// of the reference come from `kiln tokenize --pieces` of the reference text, used only when
/// that tokenization gives back exactly the reference ids.
fn check_cli_text(model_file: &str, reference_file: &str) {
    let Some(path) = model(model_file) else {
        return;
    };
    let Some(r) = reference(reference_file) else {
        return;
    };
    let p = path.to_str().unwrap();
    let mut compared = 0;
    for g in r["generation"].as_array().unwrap() {
        let name = g["name"].as_str().unwrap();
        let ids: Vec<i64> = g["generated_ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_i64().unwrap())
            .collect();
        let margins: Vec<f64> = g["margin_among_allowed"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        let text = g["generated_text"].as_str().unwrap();
        let o = kiln(
            &["tokenize", "-m", p, "--no-special", "--pieces", text],
            &[],
        );
        assert!(o.status.success(), "{}", texts(&o).1);
        let pieces: serde_json::Value = serde_json::from_str(texts(&o).0.trim()).unwrap();
        let pieces = pieces.as_array().unwrap();
        let skip = pieces.len().saturating_sub(ids.len());
        let re_ids: Vec<i64> = pieces[skip..]
            .iter()
            .map(|p| p["id"].as_i64().unwrap())
            .collect();
        if re_ids != ids {
            eprintln!(
                "{name}: the reference text does not re-tokenize to its ids; not compared as text"
            );
            continue;
        }
        let pieces: Vec<&str> = pieces[skip..]
            .iter()
            .map(|p| p["piece"].as_str().unwrap())
            .collect();
        let o = kiln(
            &[
                "run",
                "-m",
                p,
                "-p",
                g["prompt"].as_str().unwrap(),
                "-n",
                &ids.len().to_string(),
                "--temperature",
                "0",
                "--ignore-eos",
                "--ctx",
                "512",
            ],
            &[],
        );
        let (out, err) = texts(&o);
        assert!(o.status.success(), "kiln run failed: {err}");
        assert!(err.contains("tok/s"), "stats on stderr: {err}");
        // How many reference tokens our text reproduces.
        let (mut j, mut prefix) = (0, String::new());
        while j < pieces.len() && out.starts_with(&(prefix.clone() + pieces[j])) {
            prefix.push_str(pieces[j]);
            j += 1;
        }
        if j < ids.len() {
            assert!(
                margins[j] < MARGIN,
                "{name}: diverged at token {j}, where llama.cpp's margin is {:.3}\n ours: {out:?}\nwant: {text:?}",
                margins[j]
            );
        }
        eprintln!(
            "{model_file} {name}: {j} of {} tokens identical as text{}",
            ids.len(),
            if j < ids.len() {
                format!(" (then a near-tie, margin {:.3})", margins[j])
            } else {
                String::new()
            }
        );
        compared += 1;
    }
    assert!(
        compared > 0,
        "no generation of {model_file} could be compared as text"
    );
}

#[test]
fn cli_greedy_text_smollm2() {
    check_cli_text(
        "smollm2-135m-instruct-q4_1.gguf",
        "smollm2-135m-instruct-q4_1.json",
    );
}

#[test]
fn cli_greedy_text_qwen2() {
    check_cli_text(
        "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
        "qwen2.5-coder-0.5b-instruct-q4_k_m.json",
    );
}

#[test]
fn cli_greedy_text_gemma3() {
    check_cli_text("gemma-3-270m-q4_k_m.gguf", "gemma-3-270m-q4_k_m.json");
}
