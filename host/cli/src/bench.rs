//! `kiln bench`: prompt-processing and generation throughput, in the manner of llama-bench
//! (a warm-up, then `-r` repetitions; median, mean and spread of tokens/s).

use crate::cli::ModelArgs;
use anyhow::{bail, Result};
use clap::Args;
use std::time::Instant;

/// `kiln bench` options.
#[derive(Args)]
pub struct BenchArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Prompt tokens per prompt-processing test (0 = skip).
    #[arg(short = 'p', long = "n-prompt", default_value_t = 512)]
    pub n_prompt: usize,
    /// Tokens per generation test (0 = skip).
    #[arg(short = 'n', long = "n-gen", default_value_t = 128)]
    pub n_gen: usize,
    /// Repetitions.
    #[arg(short = 'r', long = "repetitions", default_value_t = 5)]
    pub reps: usize,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Statistics of one test.
struct TestResult {
    name: String,
    n_tokens: usize,
    samples: Vec<f64>,
}

impl TestResult {
    fn sorted(&self) -> Vec<f64> {
        let mut s = self.samples.clone();
        s.sort_by(f64::total_cmp);
        s
    }
    fn median(&self) -> f64 {
        let s = self.sorted();
        let n = s.len();
        if n % 2 == 1 {
            s[n / 2]
        } else {
            (s[n / 2 - 1] + s[n / 2]) / 2.0
        }
    }
    fn mean(&self) -> f64 {
        self.samples.iter().sum::<f64>() / self.samples.len() as f64
    }
    fn stddev(&self) -> f64 {
        let m = self.mean();
        let n = self.samples.len();
        if n < 2 {
            return 0.0;
        }
        (self.samples.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (n - 1) as f64).sqrt()
    }
}

/// A deterministic token stream for benchmarks (valid ids, no special meaning).
fn bench_tokens(n: usize, n_vocab: usize) -> Vec<i32> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % n_vocab.min(32_000) as u64) as i32
        })
        .collect()
}

/// Runs the benchmark.
pub fn bench(a: BenchArgs) -> Result<()> {
    if a.reps == 0 {
        bail!("-r must be at least 1");
    }
    let engine = a.model.load()?;
    let n_vocab = engine.model.info().n_vocab as usize;
    let n_ctx = (a.n_prompt + a.n_gen).max(16) as u32;
    let mut ctx = engine.context(n_ctx)?;
    let mut logits = Vec::new();
    let mut results = Vec::new();
    if a.n_prompt > 0 {
        let toks = bench_tokens(a.n_prompt, n_vocab);
        let pos: Vec<i32> = (0..a.n_prompt as i32).collect();
        let seq = vec![0i32; a.n_prompt];
        let mut want = vec![0u8; a.n_prompt];
        want[a.n_prompt - 1] = 1;
        let mut samples = Vec::new();
        for rep in 0..=a.reps {
            ctx.seq_clear(0)?;
            let t = Instant::now();
            for start in (0..a.n_prompt).step_by(kiln_runtime::engine::PROMPT_BATCH) {
                let end = (start + kiln_runtime::engine::PROMPT_BATCH).min(a.n_prompt);
                ctx.forward_logits(
                    &toks[start..end],
                    &pos[start..end],
                    &seq[start..end],
                    &want[start..end],
                    &mut logits,
                )?;
            }
            if rep > 0 {
                samples.push(a.n_prompt as f64 / t.elapsed().as_secs_f64());
            }
        }
        results.push(TestResult {
            name: format!("pp{}", a.n_prompt),
            n_tokens: a.n_prompt,
            samples,
        });
    }
    if a.n_gen > 0 {
        let toks = bench_tokens(a.n_gen, n_vocab);
        let mut samples = Vec::new();
        for rep in 0..=a.reps {
            ctx.seq_clear(0)?;
            let t = Instant::now();
            for (i, &tok) in toks.iter().enumerate() {
                ctx.forward_logits(&[tok], &[i as i32], &[0], &[1], &mut logits)?;
            }
            if rep > 0 {
                samples.push(a.n_gen as f64 / t.elapsed().as_secs_f64());
            }
        }
        results.push(TestResult {
            name: format!("tg{}", a.n_gen),
            n_tokens: a.n_gen,
            samples,
        });
    }
    let model_name = engine
        .file
        .path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let threads = if a.model.threads == 0 {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    } else {
        a.model.threads as usize
    };
    if a.json {
        let rows: Vec<serde_json::Value> = results
            .iter()
            .map(|r| {
                serde_json::json!({
                    "model": model_name, "backend": engine.backend, "device": engine.device,
                    "threads": threads, "test": r.name, "n_tokens": r.n_tokens,
                    "median_ts": r.median(), "avg_ts": r.mean(), "stddev_ts": r.stddev(),
                    "min_ts": r.sorted()[0], "max_ts": r.sorted()[r.samples.len() - 1],
                    "samples_ts": r.samples,
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&rows)?);
    } else {
        println!(
            "| {:<40} | {:<12} | {:>7} | {:>6} | {:>10} | {:>18} |",
            "model", "backend", "threads", "test", "median t/s", "mean ± sd t/s"
        );
        println!(
            "|{:-<42}|{:-<14}|{:->9}|{:->8}|{:->12}|{:->20}|",
            "", "", "", "", "", ""
        );
        for r in &results {
            println!(
                "| {:<40} | {:<12} | {:>7} | {:>6} | {:>10.2} | {:>9.2} ± {:>6.2} |",
                model_name,
                engine.backend,
                threads,
                r.name,
                r.median(),
                r.mean(),
                r.stddev()
            );
        }
        println!("device: {}", engine.device);
    }
    Ok(())
}
