//! The sampler benchmark (a test, off the product path): per-step cost of the built-in WASM
//! `chain` and `greedy` samplers against the native oracle chain, on made-up logits, for the top-N view and for
//! the full row. Each step includes writing the view into the instance, `kiln_sample` and
//! `kiln_accept`; computing the top N (the backend's work) is not counted. Times are CPU
//! time of the benchmarking thread, so that other processes on a busy machine do not count.

//!
//! `cargo test --release -p kiln-runtime bench_sampler -- --ignored --nocapture`; the
//! environment variables `KILN_BENCH_VOCAB` (151936), `KILN_BENCH_TOP_N` (1024),
//! `KILN_BENCH_REPS` (7) and `KILN_BENCH_STEPS` (200) change the defaults.

use super::instance::thread_cpu_time;
use super::oracle::Sampler;
use super::params::SamplingParams;
use super::{builtin, SamplerModule, SequenceSampler, Step, View, Vocab};
use anyhow::{bail, Context, Result};
use std::sync::Arc;

/// Benchmark settings.
struct BenchSamplerArgs {
    vocab: usize,
    top_n: usize,
    reps: usize,
    steps: usize,
    deadline_ms: u64,
}

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[test]
#[ignore = "a benchmark: run with --ignored --nocapture"]
fn bench_sampler_wasm_vs_native() {
    let a = BenchSamplerArgs {
        vocab: env_or("KILN_BENCH_VOCAB", 151_936),
        top_n: env_or("KILN_BENCH_TOP_N", 1024),
        reps: env_or("KILN_BENCH_REPS", 7),
        steps: env_or("KILN_BENCH_STEPS", 200),
        deadline_ms: 1000,
    };
    if let Err(e) = bench_sampler(a) {
        panic!("{e:#}");
    }
}

/// Deterministic made-up logits: `rows` rows of `n` values, with the spread of real models.
fn rows(n: usize, rows: usize) -> Vec<Vec<f32>> {
    let mut x: u64 = 0x2545_F491_4F6C_DD1D;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        (x >> 40) as f32 / (1u64 << 24) as f32
    };
    (0..rows)
        .map(|_| (0..n).map(|_| (next() - 0.5) * 30.0).collect())
        .collect()
}

/// The top-N view of a row: ids, logits, log-sum-exp.
fn top_view(row: &[f32], n: usize) -> (Vec<i32>, Vec<f32>, f32) {
    let n = n.min(row.len());
    let mut ids = vec![0i32; n];
    let mut vals = vec![0f32; n];
    let mut scratch = kiln_sdk::model::select::TopNScratch::default();
    kiln_sdk::model::select::top_n(row, &mut ids, &mut vals, &mut scratch);
    (ids, vals, kiln_sdk::model::select::log_sum_exp(row))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Median over repetitions of the mean µs per step of `step`; `reset` runs after the
/// warm-up so that every sampler measured starts from its seed.
fn measure<S>(
    reps: usize,
    steps: usize,
    state: &mut S,
    step: impl Fn(&mut S, usize) -> Result<()>,
    reset: impl FnOnce(&mut S) -> Result<()>,
) -> Result<f64> {
    for i in 0..steps.min(20) {
        step(state, i)?; // warm-up
    }
    reset(state)?;
    let mut per_rep = Vec::with_capacity(reps);
    for _ in 0..reps {
        let t = thread_cpu_time();
        for i in 0..steps {
            step(state, i)?;
        }
        per_rep.push((thread_cpu_time() - t).as_secs_f64() * 1e6 / steps as f64);
    }
    Ok(median(per_rep))
}

/// The logits of the benchmark: full rows and their top-N views.
struct Data {
    rows: Vec<Vec<f32>>,
    views: Vec<(Vec<i32>, Vec<f32>, f32)>,
}

/// One WASM step: the view the module asked for, then `kiln_accept`.
fn wasm_step(s: &mut SequenceSampler, d: &Data, i: usize) -> Result<()> {
    let row = &d.rows[i % d.rows.len()];
    let step = match s.view() {
        View::TopN(n) => {
            let v = &d.views[i % d.views.len()];
            let k = n.min(v.0.len());
            s.sample_top(&v.0[..k], &v.1[..k], v.2)?
        }
        View::Full => s.sample_full(row)?,
    };
    if let Step::Token(t) = step {
        s.accept(t)?;
    }
    Ok(())
}

/// One native step on the same view.
fn native_step(s: &mut Sampler, view: View, d: &Data, i: usize) {
    let t = match view {
        View::TopN(n) => {
            let v = &d.views[i % d.views.len()];
            let k = n.min(v.0.len());
            s.sample_top(bytemuck::cast_slice(&v.0[..k]), &v.1[..k])
        }
        View::Full => s.sample(&d.rows[i % d.rows.len()]),
    };
    s.accept(t);
}

/// Runs the benchmark and prints a table.
fn bench_sampler(a: BenchSamplerArgs) -> Result<()> {
    if a.vocab == 0 || a.top_n == 0 || a.reps == 0 || a.steps == 0 {
        bail!("vocabulary, top-N, repetitions and steps must be positive");
    }
    let vocab = Arc::new(Vocab::synthetic(a.vocab));
    let rows = rows(a.vocab, 8);
    let views = rows.iter().map(|r| top_view(r, a.top_n)).collect();
    let data = Data { rows, views };
    let defaults = SamplingParams {
        seed: 42,
        ..SamplingParams::default()
    };
    let scenarios = [
        (
            "chain, llama.cpp defaults (k40 p.95 m.05 t.8)",
            defaults.clone(),
        ),
        (
            "chain, top-k off (p.95 m.05 t.8)",
            SamplingParams {
                top_k: 0,
                ..defaults.clone()
            },
        ),
        (
            "chain, defaults + repeat penalty 1.1",
            SamplingParams {
                repeat_penalty: 1.1,
                ..defaults.clone()
            },
        ),
        (
            "greedy (t=0)",
            SamplingParams {
                temperature: 0.0,
                ..defaults.clone()
            },
        ),
    ];
    println!(
        "vocab {}, top-N at most {} | median of {} x {} steps | CPU µs per step",
        a.vocab, a.top_n, a.reps, a.steps
    );
    println!(
        "{:<48} {:<10} {:>9} {:>9} {:>7}",
        "sampler and settings", "view", "wasm", "native", "ratio"
    );
    for (label, p) in scenarios {
        let (name, config) = builtin::for_params(&p);
        let module: Arc<SamplerModule> = builtin::load(name)
            .with_context(|| format!("this build has no built-in `{name}` sampler"))??;
        let mut s = module.instantiate(config.as_bytes(), p.seed, vocab.clone())?;
        s.set_deadline_ms(a.deadline_ms);
        let view = match s.view() {
            View::TopN(n) => View::TopN(n.min(a.top_n)),
            View::Full => View::Full,
        };
        let wasm = measure(
            a.reps,
            a.steps,
            &mut s,
            |s, i| wasm_step(s, &data, i),
            |s| Ok(s.reset()?),
        )?;
        let mut nat = Sampler::new(p.clone(), a.vocab);
        let native = measure(
            a.reps,
            a.steps,
            &mut nat,
            |s, i| {
                native_step(s, view, &data, i);
                Ok(())
            },
            |s| {
                s.reset();
                Ok(())
            },
        )?;
        let v = match view {
            View::TopN(n) => format!("top-{n}"),
            View::Full => "full".into(),
        };
        println!(
            "{label:<48} {v:<10} {wasm:>9.1} {native:>9.1} {:>7.2}",
            wasm / native
        );
    }
    Ok(())
}
