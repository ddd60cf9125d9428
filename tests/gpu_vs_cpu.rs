//! The CUDA backend against the CPU backend on the real catalog models, both loaded through
//! the ABI as the host loads them: a prompt, then 64 greedy steps on the CPU; the CUDA backend
//! is fed the same tokens. Reports max |Δlogit|, cosine similarity and top-1 agreement per
//! model, and fails when they fall outside the limits below. Skipped, saying why, where the
//! CUDA backend cannot run (no GPU); `KILN_REQUIRE_GPU=1` makes that a failure.

use kiln_e2e::*;
use kiln_sdk::abi::client::{BackendLib, ContextOptions, LoadedModel};
use kiln_sdk::abi::KilnBackendHeader;
use kiln_sdk::gguf::Gguf;
use std::path::Path;
use std::sync::Arc;

/// Steps compared after the prompt.
const STEPS: usize = 64;

fn lib(path: &Path) -> BackendLib {
    // SAFETY: a backend built in this workspace; the header symbol is a static.
    let lib = unsafe { libloading::Library::new(path) }.expect("load backend");
    let header: *const KilnBackendHeader =
        unsafe { *lib.get(b"kiln_backend_header\0").expect("symbol") };
    unsafe { BackendLib::new(header, Arc::new(lib)) }.expect("ABI check")
}

fn load(lib: &BackendLib, file: &Path) -> LoadedModel {
    let inst = lib.create(0, 0).expect("instance");
    let f = std::fs::File::open(file).unwrap();
    let map = Arc::new(unsafe { memmap2::Mmap::map(&f) }.unwrap());
    let bytes: &'static [u8] = unsafe { std::slice::from_raw_parts(map.as_ptr(), map.len()) };
    let gguf = Gguf::parse(bytes).unwrap();
    unsafe { inst.load_model(&gguf, map.clone()) }.expect("model loads")
}

fn cuda_lib() -> Option<BackendLib> {
    let p = profile_dir().join(format!(
        "{}kiln_backend_cuda{}",
        std::env::consts::DLL_PREFIX,
        std::env::consts::DLL_SUFFIX
    ));
    let required = std::env::var("KILN_REQUIRE_GPU").as_deref() == Ok("1");
    if !p.exists() {
        assert!(!required, "{} is missing", p.display());
        eprintln!("skipped: {} is not built", p.display());
        return None;
    }
    let l = lib(&p);
    let (score, why) = l.score().expect("score");
    if score == 0 {
        assert!(!required, "KILN_REQUIRE_GPU=1 but: {why}");
        eprintln!("skipped: the CUDA backend cannot run here: {why}");
        return None;
    }
    Some(l)
}

/// Logits of the last prompt row and of each following step; `follow` gives the tokens to
/// feed (else greedy).
fn run(model: &LoadedModel, prompt: &[i32], follow: Option<&[i32]>) -> (Vec<Vec<f32>>, Vec<i32>) {
    let mut ctx = model
        .create_context(ContextOptions {
            n_ctx: 1024,
            n_seq_max: 1,
            n_batch_max: 512,
            n_outputs_max: 1,
        })
        .unwrap();
    let pos: Vec<i32> = (0..prompt.len() as i32).collect();
    let mut want = vec![0u8; prompt.len()];
    *want.last_mut().unwrap() = 1;
    let mut l = Vec::new();
    ctx.forward_logits(prompt, &pos, &vec![0; prompt.len()], &want, &mut l)
        .unwrap();
    let mut all = vec![l.clone()];
    let mut toks = Vec::new();
    for s in 0..STEPS {
        let next = match follow {
            Some(f) => f[s],
            None => argmax(&l),
        };
        toks.push(next);
        ctx.forward_logits(&[next], &[(prompt.len() + s) as i32], &[0], &[1], &mut l)
            .unwrap();
        all.push(l.clone());
    }
    (all, toks)
}

fn argmax(v: &[f32]) -> i32 {
    (0..v.len())
        .max_by(|&a, &b| v[a].total_cmp(&v[b]).then(b.cmp(&a)))
        .unwrap_or(0) as i32
}

#[test]
fn cuda_follows_the_cpu_on_real_models() {
    let Some(cuda) = cuda_lib() else { return };
    let cpu = lib(&cpu_backend());
    let mut failures = Vec::new();
    let mut seen = 0;
    for file in [
        "smollm2-135m-instruct-q4_1.gguf",
        "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
        "gemma-3-270m-q4_k_m.gguf",
        "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
    ] {
        let dir = std::env::var_os("KILN_MODELS")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| {
                std::path::PathBuf::from(std::env::var_os("HOME").unwrap_or_default())
                    .join(".cache/kiln/models")
            });
        let path = dir.join(file);
        if !path.exists() {
            eprintln!("{file}: not present, not compared");
            continue;
        }
        seen += 1;
        let prompt: Vec<i32> = (0..96).map(|i: i32| (i * 7919 + 13) % 5000 + 100).collect();
        let (want, toks) = run(&load(&cpu, &path), &prompt, None);
        let (got, _) = run(&load(&cuda, &path), &prompt, Some(&toks));
        let (mut max_abs, mut min_cos, mut agree) = (0f32, 1f64, 0usize);
        for (g, w) in got.iter().zip(&want) {
            let d = g
                .iter()
                .zip(w)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            let dot: f64 = g.iter().zip(w).map(|(&a, &b)| a as f64 * b as f64).sum();
            let n = |v: &[f32]| v.iter().map(|&a| (a as f64).powi(2)).sum::<f64>().sqrt();
            max_abs = max_abs.max(d);
            min_cos = min_cos.min(dot / (n(g) * n(w)).max(1e-30));
            agree += (argmax(g) == argmax(w)) as usize;
        }
        println!(
            "{file}: max |Δlogit| {max_abs:.3}, min cosine {min_cos:.5}, top-1 agreement {agree}/{} over the prompt's last row and {STEPS} greedy steps",
            got.len()
        );
        if min_cos < 0.99 || agree * 10 < got.len() * 9 {
            failures.push(file);
        }
    }
    assert!(
        seen > 0 || !models_required(),
        "no catalog model present and KILN_REQUIRE_MODELS=1"
    );
    assert!(failures.is_empty(), "CUDA off the CPU: {failures:?}");
}
