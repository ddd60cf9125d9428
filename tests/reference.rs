//! The forward pass against llama.cpp: for each reference generation, the prompt and then the
//! reference's own tokens are fed to the CPU backend (through the ABI, as the host does), and at
//! every step the logits of llama.cpp's top-10 must agree within a tolerance and our greedy pick
//! must equal the reference token wherever the reference margin is ≥ 0.01.
//! A second test runs `kiln run` greedily and compares the generated text.

use kiln_e2e::*;
use kiln_sdk::abi::client::{BackendLib, LoadedModel};
use kiln_sdk::abi::KilnBackendHeader;
use kiln_sdk::gguf::Gguf;
use std::sync::Arc;

/// Largest accepted |our logit − llama.cpp logit| over a reference top-10 entry.
const MAX_ABS_DIFF: f32 = 1.5;
/// Largest accepted mean |difference| over all compared logits of a generation.
const MAX_MEAN_DIFF: f32 = 0.5;

fn load_model(file: &std::path::Path) -> LoadedModel {
    // SAFETY: the CPU backend built in this workspace; the header symbol is a static.
    let lib = unsafe { libloading::Library::new(cpu_backend()) }.expect("load CPU backend");
    let header: *const KilnBackendHeader = unsafe { *lib.get(b"kiln_backend_header\0").expect("symbol") };
    let lib = unsafe { BackendLib::new(header, Arc::new(lib)) }.expect("ABI check");
    let inst = lib.create(0, 0).expect("instance");
    let f = std::fs::File::open(file).unwrap();
    let map = Arc::new(unsafe { memmap2::Mmap::map(&f) }.unwrap());
    let bytes: &'static [u8] = unsafe { std::slice::from_raw_parts(map.as_ptr(), map.len()) };
    let gguf = Gguf::parse(bytes).unwrap();
    unsafe { inst.load_model(&gguf, map.clone()) }.expect("model loads")
}

fn check_model(model_file: &str, reference_file: &str) {
    let Some(path) = model(model_file) else { return };
    let Some(r) = reference(reference_file) else { return };
    let model = load_model(&path);
    let mut ctx = model.create_context(512, 1).unwrap();
    let n_vocab = model.info().n_vocab as usize;
    let mut worst = 0f32;
    for g in r["generation"].as_array().unwrap() {
        let name = g["name"].as_str().unwrap();
        let ids = |k: &str| -> Vec<i32> { g[k].as_array().unwrap().iter().map(|v| v.as_i64().unwrap() as i32).collect() };
        let prompt = ids("prompt_ids");
        let generated = ids("generated_ids");
        let tops = g["per_step_top10_logits_unmasked"].as_array().unwrap();
        let margins: Vec<f64> = g["margin_among_allowed"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
        ctx.seq_clear(0).unwrap();
        let pos: Vec<i32> = (0..prompt.len() as i32).collect();
        let mut want = vec![0u8; prompt.len()];
        *want.last_mut().unwrap() = 1;
        let mut logits = Vec::new();
        ctx.forward_logits(&prompt, &pos, &vec![0; prompt.len()], &want, &mut logits).unwrap();
        let (mut sum, mut count) = (0f32, 0usize);
        for (step, &tok) in generated.iter().enumerate() {
            assert_eq!(logits.len(), n_vocab);
            let top: Vec<(usize, f32)> = tops[step]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| (p[0].as_u64().unwrap() as usize, p[1].as_f64().unwrap() as f32))
                .collect();
            if step == 0 && std::env::var_os("KILN_DEBUG_REF").is_some() {
                let v: Vec<(usize, f32)> = top.iter().map(|&(id, _)| (id, logits[id])).collect();
                eprintln!("{name} step0 ours {v:?}");
            }
            for &(id, want) in &top {
                let d = (logits[id] - want).abs();
                assert!(d <= MAX_ABS_DIFF, "{name} step {step}: logit of {id} is {} vs llama.cpp {want}", logits[id]);
                worst = worst.max(d);
                sum += d;
                count += 1;
            }
            // Reference tokens ranked above the chosen one were masked (EOS ignored).
            let chosen_rank = top.iter().position(|&(id, _)| id == tok as usize).unwrap_or(top.len());
            let masked: Vec<usize> = top[..chosen_rank].iter().map(|p| p.0).collect();
            let ours = (0..n_vocab)
                .filter(|i| !masked.contains(i))
                .max_by(|&a, &b| logits[a].total_cmp(&logits[b]).then(b.cmp(&a)))
                .unwrap();
            if margins[step] >= 0.01 {
                assert_eq!(ours as i32, tok, "{name} step {step}: greedy pick differs (margin {})", margins[step]);
            }
            let p = (prompt.len() + step) as i32;
            ctx.forward_logits(&[tok], &[p], &[0], &[1], &mut logits).unwrap();
        }
        let mean = sum / count as f32;
        eprintln!("{model_file} {name}: mean |Δlogit| {mean:.4}, worst so far {worst:.4}");
        assert!(mean <= MAX_MEAN_DIFF, "{name}: mean |Δlogit| {mean} > {MAX_MEAN_DIFF}");
    }
}

#[test]
fn smollm2_matches_llama_cpp() {
    check_model("smollm2-135m-instruct-q4_1.gguf", "smollm2-135m-instruct-q4_1.json");
}

#[test]
fn qwen2_matches_llama_cpp() {
    check_model("qwen2.5-coder-0.5b-instruct-q4_k_m.gguf", "qwen2.5-coder-0.5b-instruct-q4_k_m.json");
}

#[test]
fn gemma3_matches_llama_cpp() {
    check_model("gemma-3-270m-q4_k_m.gguf", "gemma-3-270m-q4_k_m.json");
}

/// `kiln run` greedy output equals llama.cpp's text for every case without a near-tie.
fn check_cli_text(model_file: &str, reference_file: &str) {
    let Some(path) = model(model_file) else { return };
    let Some(r) = reference(reference_file) else { return };
    for g in r["generation"].as_array().unwrap() {
        let margins = g["margin_among_allowed"].as_array().unwrap();
        if margins.iter().any(|m| m.as_f64().unwrap() < 0.01) {
            continue; // covered token by token above
        }
        let n = g["generated_ids"].as_array().unwrap().len().to_string();
        let o = kiln(
            &["run", "-m", path.to_str().unwrap(), "-p", g["prompt"].as_str().unwrap(), "-n", &n,
              "--temperature", "0", "--ignore-eos", "--ctx", "512"],
            &[],
        );
        let (out, err) = texts(&o);
        assert!(o.status.success(), "kiln run failed: {err}");
        let want = g["generated_text"].as_str().unwrap();
        assert_eq!(out.strip_suffix('\n').unwrap_or(&out), want, "{}", g["name"]);
        assert!(err.contains("tok/s"), "stats on stderr: {err}");
    }
}

#[test]
fn cli_greedy_text_smollm2() {
    check_cli_text("smollm2-135m-instruct-q4_1.gguf", "smollm2-135m-instruct-q4_1.json");
}

#[test]
fn cli_greedy_text_qwen2() {
    check_cli_text("qwen2.5-coder-0.5b-instruct-q4_k_m.gguf", "qwen2.5-coder-0.5b-instruct-q4_k_m.json");
}

#[test]
fn cli_greedy_text_gemma3() {
    check_cli_text("gemma-3-270m-q4_k_m.gguf", "gemma-3-270m-q4_k_m.json");
}
