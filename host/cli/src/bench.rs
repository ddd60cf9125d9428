//! `kiln bench`: prompt-processing and generation throughput in the manner of llama-bench (a
//! warm-up, then `-r` repetitions; median, mean and spread of tokens/s), through the engine
//! that `kiln run` uses: the same scheduler, the same sampler (llama.cpp's default chain on
//! its top-N view, or the full row with `--full-logits`). With `--parallel N`, N sequences
//! decode together and the aggregate and per-sequence rates are reported. With
//! `--synthetic SHAPE:MIX`, the model is a random-weight one of a real model's shapes and
//! quantization mix ([`kiln_sdk::synthetic`]), generated once and cached.

use crate::cli::ModelArgs;
use anyhow::{bail, Context, Result};
use clap::Args;
use kiln_runtime::engine::{Engine, EngineOptions, Event, Finish, Input, Request, SamplerSpec};
use kiln_runtime::sampler::SamplingParams;
use kiln_sdk::synthetic;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// `kiln bench` options.
#[derive(Args)]
pub struct BenchArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Benchmark a random-weight model with a real model's shapes and quantization mix instead
    /// of a file, e.g. `qwen2-1.5b:q4_k_m`, `gpt-oss-20b:mxfp4` (shapes: llama-135m,
    /// qwen2-0.5b, qwen2-1.5b, qwen2-7b, gpt-oss-20b, gpt-oss-120b; mixes: f16, q8_0, q6_k,
    /// q5_0, q4_0, q4_1, q4_k_m, q5_k_m, mxfp4 for gpt-oss).
    #[arg(long, value_name = "SHAPE:MIX", conflicts_with = "model")]
    pub synthetic: Option<String>,
    /// Where the synthetic model is written (a GGUF llama.cpp loads too); default:
    /// `~/.cache/kiln/synthetic/SHAPE-MIX.gguf`. An existing file of the same spec and
    /// generator version is reused.
    #[arg(long, value_name = "PATH", requires = "synthetic")]
    pub synthetic_out: Option<PathBuf>,
    /// Prompt tokens per prompt-processing test (0 = skip).
    #[arg(short = 'p', long = "n-prompt", default_value_t = 512)]
    pub n_prompt: usize,
    /// Tokens per generation test (0 = skip).
    #[arg(short = 'n', long = "n-gen", default_value_t = 128)]
    pub n_gen: usize,
    /// Repetitions.
    #[arg(short = 'r', long = "repetitions", default_value_t = 5)]
    pub reps: usize,
    /// Sequences that generate together in the generation test.
    #[arg(long, default_value_t = 1)]
    pub parallel: usize,
    /// The sampler takes the full row of logits instead of the backend's top-N view.
    #[arg(long)]
    pub full_logits: bool,
    /// Prompt tokens per step (the engine's batch).
    #[arg(short = 'b', long = "batch", default_value_t = 512)]
    pub batch: usize,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// After the tests, profile one generation pass (with `--parallel` sequences): the
    /// backend's operations per step and per layer, and where the time goes.
    #[arg(long)]
    pub profile: bool,
}

/// Statistics of one test.
struct TestResult {
    name: String,
    n_tokens: usize,
    parallel: usize,
    /// Aggregate tok/s of each repetition.
    samples: Vec<f64>,
    /// Per-sequence tok/s of each repetition (the median over its sequences).
    per_seq: Vec<f64>,
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    if n == 0 {
        0.0
    } else if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}

impl TestResult {
    fn mean(&self) -> f64 {
        self.samples.iter().sum::<f64>() / self.samples.len().max(1) as f64
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

/// A deterministic token stream for benchmarks (valid ids, no special meaning); `salt`
/// changes it, so repetitions do not share a cached prefix.
fn bench_tokens(n: usize, n_vocab: usize, salt: u64) -> Vec<u32> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15 ^ salt.wrapping_mul(0x2545_F491_4F6C_DD1D);
    let range = n_vocab.clamp(1, 32_000) as u64;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % range) as u32
        })
        .collect()
}

/// Runs requests to completion; returns each one's (completion tokens, prompt ms, gen ms).
fn run_all(engine: &Engine, reqs: Vec<(Vec<u32>, Request)>) -> Result<Vec<(usize, f64, f64)>> {
    let mut handles = Vec::new();
    for (prompt, req) in reqs {
        handles.push(engine.submit_tokens(prompt, req)?);
    }
    let mut out = Vec::new();
    for h in handles {
        loop {
            match h.recv() {
                Some(Event::Token { .. }) => {}
                Some(Event::Done {
                    finish,
                    usage,
                    timings,
                    ..
                }) => {
                    if let Finish::Error(e) = finish {
                        bail!("{e}");
                    }
                    out.push((usage.completion_tokens, timings.prompt_ms, timings.gen_ms));
                    break;
                }
                None => bail!("the engine stopped during the benchmark"),
            }
        }
    }
    Ok(out)
}

/// Runs the benchmark.
pub fn bench(a: BenchArgs) -> Result<()> {
    if a.reps == 0 || a.parallel == 0 || a.batch == 0 {
        bail!("-r, --parallel and --batch must be at least 1");
    }
    let mut margs = a.model.clone();
    if let Some(spec) = &a.synthetic {
        let path = synthetic_model(spec, a.synthetic_out.as_deref())?;
        margs.model = Some(path.to_string_lossy().into_owned());
    }
    let model = margs.load()?;
    let n_vocab = model.n_vocab();
    let needed = (a.n_prompt.max(a.n_gen + 1)).max(16) as u32;
    // `--ctx` sets the context; by default it is just what the tests need.
    let n_ctx = match margs.ctx {
        Some(c) if c < needed => bail!(
            "--ctx {c} is smaller than the {needed} tokens these tests need (-p {}, -n {})",
            a.n_prompt,
            a.n_gen
        ),
        Some(c) => c,
        None => needed,
    };
    let engine = Engine::start(
        model.clone(),
        EngineOptions {
            n_ctx,
            n_slots: a.parallel as u32,
            n_batch: a.batch as u32,
            queue: a.parallel,
        },
    )?;
    let params = SamplingParams {
        seed: 42,
        top_k: if a.full_logits { 0 } else { 40 },
        ..SamplingParams::default()
    };
    let sampler = SamplerSpec::from_params(&params)?;
    let request = |max: usize| {
        let mut r = Request::new(Input::Tokens(Vec::new()), sampler.clone());
        r.seed = 42;
        r.max_tokens = Some(max);
        r.ignore_eos = true;
        r
    };
    let mut results = Vec::new();
    let mut salt = 0u64;
    if a.n_prompt > 0 {
        let mut samples = Vec::new();
        for rep in 0..=a.reps {
            salt += 1;
            let prompt = bench_tokens(a.n_prompt, n_vocab, salt);
            let r = run_all(&engine, vec![(prompt, request(1))])?;
            if rep > 0 {
                samples.push(a.n_prompt as f64 * 1e3 / r[0].1.max(1e-9));
            }
        }
        results.push(TestResult {
            name: format!("pp{}", a.n_prompt),
            n_tokens: a.n_prompt,
            parallel: 1,
            per_seq: samples.clone(),
            samples,
        });
    }
    if a.n_gen > 0 {
        let mut samples = Vec::new();
        let mut per_seq = Vec::new();
        for rep in 0..=a.reps {
            // One-token prompts: every sequence generates `n_gen` tokens, one forward each.
            let reqs = (0..a.parallel)
                .map(|_| {
                    salt += 1;
                    (bench_tokens(1, n_vocab, salt), request(a.n_gen))
                })
                .collect();
            let t0 = Instant::now();
            let r = run_all(&engine, reqs)?;
            let wall = t0.elapsed().as_secs_f64();
            if rep > 0 {
                let total: usize = r.iter().map(|x| x.0).sum();
                samples.push(total as f64 / wall);
                let rates: Vec<f64> = r
                    .iter()
                    .map(|&(n, p, g)| n as f64 * 1e3 / (p + g).max(1e-9))
                    .collect();
                per_seq.push(median(&rates));
            }
        }
        let name = if a.parallel > 1 {
            format!("tg{} x{}", a.n_gen, a.parallel)
        } else {
            format!("tg{}", a.n_gen)
        };
        results.push(TestResult {
            name,
            n_tokens: a.n_gen,
            parallel: a.parallel,
            samples,
            per_seq,
        });
    }
    let profile = if a.profile && a.n_gen > 0 {
        match engine.profile(true) {
            None => {
                eprintln!("[kiln] this backend cannot profile (no kiln.profile.v1)");
                None
            }
            Some(r) => {
                r?;
                let reqs = (0..a.parallel)
                    .map(|_| {
                        salt += 1;
                        (bench_tokens(1, n_vocab, salt), request(a.n_gen))
                    })
                    .collect();
                run_all(&engine, reqs)?;
                engine.profile(false).transpose()?
            }
        }
    } else {
        None
    };
    let model_name = model
        .file
        .path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let threads = if margs.threads == 0 {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    } else {
        margs.threads as usize
    };
    let view = if a.full_logits { "full" } else { "top-n" };
    if a.json {
        let rows: Vec<serde_json::Value> = results
            .iter()
            .map(|r| {
                let mut sorted = r.samples.clone();
                sorted.sort_by(f64::total_cmp);
                serde_json::json!({
                    "model": model_name, "backend": model.backend, "device": model.device,
                    "threads": threads, "test": r.name, "n_tokens": r.n_tokens,
                    "parallel": r.parallel, "sampler_view": view,
                    "median_ts": median(&r.samples), "avg_ts": r.mean(), "stddev_ts": r.stddev(),
                    "min_ts": sorted.first(), "max_ts": sorted.last(),
                    "samples_ts": r.samples, "per_seq_median_ts": median(&r.per_seq),
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&rows)?);
    } else {
        println!(
            "| {:<40} | {:<12} | {:>7} | {:>10} | {:>10} | {:>18} | {:>11} |",
            "model", "backend", "threads", "test", "median t/s", "mean ± sd t/s", "per seq t/s"
        );
        println!(
            "|{:-<42}|{:-<14}|{:->9}|{:->12}|{:->12}|{:->20}|{:->13}|",
            "", "", "", "", "", "", ""
        );
        for r in &results {
            println!(
                "| {:<40} | {:<12} | {:>7} | {:>10} | {:>10.2} | {:>9.2} ± {:>6.2} | {:>11.2} |",
                model_name,
                model.backend,
                threads,
                r.name,
                median(&r.samples),
                r.mean(),
                r.stddev(),
                median(&r.per_seq)
            );
        }
        println!("device: {} | sampler view: {view}", model.device);
    }
    if let Some(p) = profile {
        print_profile(&p, model.backend_model.info().n_layer as usize, a.json)?;
    }
    Ok(())
}

/// Prints a profile of one generation pass: per operation, calls per token and per layer.
fn print_profile(p: &kiln_sdk::backend::Profile, n_layer: usize, json: bool) -> Result<()> {
    let steps = p.n_forward.max(1) as f64;
    let total_ns: u64 = p.ops.iter().map(|o| o.nanos).sum();
    let calls: u64 = p.ops.iter().map(|o| o.calls).sum();
    if json {
        let ops: Vec<serde_json::Value> = p
            .ops
            .iter()
            .map(|o| {
                serde_json::json!({"op": o.name, "calls": o.calls, "nanos": o.nanos,
                    "calls_per_token": o.calls as f64 / steps})
            })
            .collect();
        eprintln!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "forwards": p.n_forward, "ops_per_token": calls as f64 / steps,
                "ops_per_layer": calls as f64 / steps / n_layer.max(1) as f64, "ops": ops
            }))?
        );
        return Ok(());
    }
    println!(
        "\nprofile: {} forward calls, {:.1} operations per step ({:.1} per layer of {n_layer})",
        p.n_forward,
        calls as f64 / steps,
        calls as f64 / steps / n_layer.max(1) as f64
    );
    println!(
        "| {:<12} | {:>10} | {:>10} | {:>7} |",
        "op", "per token", "µs/token", "time"
    );
    for o in &p.ops {
        println!(
            "| {:<12} | {:>10.1} | {:>10.1} | {:>6.1}% |",
            o.name,
            o.calls as f64 / steps,
            o.nanos as f64 / 1e3 / steps,
            100.0 * o.nanos as f64 / total_ns.max(1) as f64
        );
    }
    Ok(())
}

/// Seed of the synthetic models' weights (fixed, so every run measures the same file).
const SYNTHETIC_SEED: u64 = 0x6b69_6c6e;

/// The file of the synthetic model `spec`: `out`, or the cache's, reused when it holds the
/// same spec from the same generator version; generated (with a progress bar) otherwise.
pub fn synthetic_model(spec: &str, out: Option<&Path>) -> Result<PathBuf> {
    let spec = synthetic::parse(spec)?;
    let path = match out {
        Some(p) => p.to_path_buf(),
        None => {
            let dir = crate::catalog::models_dir()
                .parent()
                .map(|p| p.join("synthetic"))
                .unwrap_or_else(|| PathBuf::from("synthetic"));
            dir.join(format!("{}-{}.gguf", spec.shape.name, spec.mix))
        }
    };
    if is_synthetic(&path, &spec) {
        eprintln!("[kiln] synthetic model {spec}: {}", path.display());
        return Ok(path);
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let total = synthetic::data_bytes(&spec);
    let tmp = path.with_extension("gguf.partial");
    let pb = crate::catalog::progress_bar(total, &format!("generating {spec}"));
    let write = || -> Result<()> {
        let f =
            std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        let mut w = std::io::BufWriter::with_capacity(1 << 22, f);
        synthetic::write(&spec, SYNTHETIC_SEED, &mut w, |done, _| {
            pb.set_position(done)
        })
        .with_context(|| format!("writing {}", tmp.display()))?;
        let f = w.into_inner().map_err(|e| e.into_error())?;
        f.sync_all()?;
        std::fs::rename(&tmp, &path).with_context(|| format!("renaming to {}", path.display()))?;
        Ok(())
    };
    let r = write();
    pb.finish_and_clear();
    if r.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    r?;
    eprintln!(
        "[kiln] synthetic model {spec}: {} ({:.1} GB)",
        path.display(),
        total as f64 / 1e9
    );
    Ok(path)
}

/// Whether `path` is a complete synthetic model of `spec` from this generator version.
fn is_synthetic(path: &Path, spec: &synthetic::Spec) -> bool {
    let Ok(f) = std::fs::File::open(path) else {
        return false;
    };
    // SAFETY: mapped read-only; a file changed underneath only yields a parse error here.
    let Ok(map) = (unsafe { memmap2::Mmap::map(&f) }) else {
        return false;
    };
    let Ok(g) = kiln_sdk::gguf::Gguf::parse(&map) else {
        return false;
    };
    g.get_str(synthetic::SPEC_KEY).ok().flatten() == Some(spec.to_string().as_str())
        && g.get_u64(synthetic::VERSION_KEY).ok().flatten() == Some(synthetic::VERSION as u64)
}
