//! Times `kernels::matmul` for the weight shapes of SmolLM2-135M (Q4_1) and Qwen2.5-0.5B
//! (Q4_K_M: Q5_0, Q4_K, Q6_K, Q8_0), plus a few float-weight shapes (F32, F16, BF16), at
//! n = 1 (decoding) and n = 64 (a prompt batch), with 1 and 2 threads, and prints weight
//! bandwidth (GB/s) and GFLOP/s.
//!
//! Weights are rotated through at least 256 MiB of copies, so each call streams them from
//! memory as a real model (larger than the caches) does. The per-model lines add up the
//! matmuls of one token (decode; output layer included) or of 64 prompt tokens (output layer
//! excluded, as only the last prompt token needs logits).
//!
//! With `--per-call`, each call is timed on its own and the median is reported instead of the
//! best batch mean (steadier on a busy machine: a preempted call is an outlier, not a bias).
//! `--copies N` rotates through `N` copies of each matrix instead (`--copies 1` keeps small
//! matrices in cache, which times the kernels' arithmetic rather than memory).
//!
//! `cargo run --release -p kiln-backend-cpu --example matmul_bench [-- --quick] [--per-call]
//! [--copies N] [--filter TEXT]`

use kiln_backend_cpu::kernels::{self, ThreadPool, WeightMatrix};
use kiln_sdk::quant::{f32_to_f16, GgmlType};
use std::time::{Duration, Instant};

/// One benchmarked shape: type, input features, output features, and how many such matrices
/// one model layer stack has (for the per-token totals).
struct Shape {
    model: &'static str,
    name: &'static str,
    ty: GgmlType,
    cols: usize,
    rows: usize,
    count: usize,
    output_layer: bool,
}

const SHAPES: &[Shape] = &[
    Shape {
        model: "smollm2-135m",
        name: "attn_q/o",
        ty: GgmlType::Q4_1,
        cols: 576,
        rows: 576,
        count: 60,
        output_layer: false,
    },
    Shape {
        model: "smollm2-135m",
        name: "attn_k/v",
        ty: GgmlType::Q4_1,
        cols: 576,
        rows: 192,
        count: 60,
        output_layer: false,
    },
    Shape {
        model: "smollm2-135m",
        name: "ffn_up/gate",
        ty: GgmlType::Q4_1,
        cols: 576,
        rows: 1536,
        count: 60,
        output_layer: false,
    },
    Shape {
        model: "smollm2-135m",
        name: "ffn_down",
        ty: GgmlType::Q4_1,
        cols: 1536,
        rows: 576,
        count: 30,
        output_layer: false,
    },
    Shape {
        model: "smollm2-135m",
        name: "output",
        ty: GgmlType::Q8_0,
        cols: 576,
        rows: 49152,
        count: 1,
        output_layer: true,
    },
    Shape {
        model: "qwen2.5-0.5b",
        name: "attn_q/o",
        ty: GgmlType::Q5_0,
        cols: 896,
        rows: 896,
        count: 48,
        output_layer: false,
    },
    Shape {
        model: "qwen2.5-0.5b",
        name: "attn_k/v",
        ty: GgmlType::Q5_0,
        cols: 896,
        rows: 128,
        count: 36,
        output_layer: false,
    },
    Shape {
        model: "qwen2.5-0.5b",
        name: "attn_v",
        ty: GgmlType::Q8_0,
        cols: 896,
        rows: 128,
        count: 12,
        output_layer: false,
    },
    Shape {
        model: "qwen2.5-0.5b",
        name: "ffn_up/gate",
        ty: GgmlType::Q5_0,
        cols: 896,
        rows: 4864,
        count: 48,
        output_layer: false,
    },
    Shape {
        model: "qwen2.5-0.5b",
        name: "ffn_down",
        ty: GgmlType::Q4_K,
        cols: 4864,
        rows: 896,
        count: 12,
        output_layer: false,
    },
    Shape {
        model: "qwen2.5-0.5b",
        name: "ffn_down",
        ty: GgmlType::Q6_K,
        cols: 4864,
        rows: 896,
        count: 12,
        output_layer: false,
    },
    Shape {
        model: "qwen2.5-0.5b",
        name: "output",
        ty: GgmlType::Q8_0,
        cols: 896,
        rows: 151936,
        count: 1,
        output_layer: true,
    },
    Shape {
        model: "float-weights",
        name: "square",
        ty: GgmlType::F32,
        cols: 896,
        rows: 896,
        count: 1,
        output_layer: false,
    },
    Shape {
        model: "float-weights",
        name: "up",
        ty: GgmlType::F16,
        cols: 896,
        rows: 4864,
        count: 1,
        output_layer: false,
    },
    Shape {
        model: "float-weights",
        name: "square",
        ty: GgmlType::BF16,
        cols: 896,
        rows: 896,
        count: 1,
        output_layer: false,
    },
];

/// Small deterministic generator (xorshift64*).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn unit(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    }
}

/// Byte offsets of the f16 scales in a block of `ty`.
fn f16_fields(ty: GgmlType) -> &'static [usize] {
    match ty {
        GgmlType::Q4_0 | GgmlType::Q5_0 | GgmlType::Q8_0 => &[0],
        GgmlType::Q4_1 | GgmlType::Q5_1 | GgmlType::Q4_K | GgmlType::Q5_K => &[0, 2],
        GgmlType::Q6_K => &[208],
        _ => &[],
    }
}

/// `copies` random weight matrices of the shape, back to back, with sane scales (or values,
/// for float weights).
fn random_weights(s: &Shape, copies: usize, rng: &mut Rng) -> Vec<u8> {
    let ts = s.ty.type_size();
    let bytes = s.rows * s.cols / s.ty.block_size() * ts * copies;
    let mut data = vec![0u8; bytes];
    match s.ty {
        GgmlType::F32 => {
            for c in data.chunks_exact_mut(4) {
                c.copy_from_slice(&(0.05 * rng.unit()).to_le_bytes());
            }
            return data;
        }
        GgmlType::F16 => {
            for c in data.chunks_exact_mut(2) {
                c.copy_from_slice(&f32_to_f16(0.05 * rng.unit()).to_le_bytes());
            }
            return data;
        }
        GgmlType::BF16 => {
            for c in data.chunks_exact_mut(2) {
                let b = ((0.05 * rng.unit()).to_bits() >> 16) as u16;
                c.copy_from_slice(&b.to_le_bytes());
            }
            return data;
        }
        _ => {}
    }
    for c in data.chunks_mut(8) {
        let v = rng.next().to_le_bytes();
        c.copy_from_slice(&v[..c.len()]);
    }
    for blk in data.chunks_exact_mut(ts) {
        for &off in f16_fields(s.ty) {
            let v = f32_to_f16(0.01 + 0.01 * rng.unit());
            blk[off..off + 2].copy_from_slice(&v.to_le_bytes());
        }
    }
    data
}

/// Seconds per call: the best of several timed batches, or with `per_call` the median of
/// individually timed calls.
fn time(
    pool: &ThreadPool,
    mats: &[WeightMatrix<'_>],
    x: &[f32],
    n: usize,
    out: &mut [f32],
    budget: Duration,
    per_call: bool,
) -> f64 {
    let mut i = 0;
    let mut call = |out: &mut [f32]| {
        kernels::matmul(pool, &mats[i % mats.len()], x, n, out).expect("matmul");
        i += 1;
    };
    for _ in 0..mats.len().clamp(2, 8) {
        call(out);
    }
    if per_call {
        let mut times = Vec::new();
        let start = Instant::now();
        while start.elapsed() < budget || times.len() < 5 {
            let t = Instant::now();
            call(out);
            times.push(t.elapsed().as_secs_f64());
        }
        times.sort_by(f64::total_cmp);
        return times[times.len() / 2];
    }
    let mut best = f64::INFINITY;
    let start = Instant::now();
    while start.elapsed() < budget {
        let t = Instant::now();
        let mut calls = 0u32;
        while t.elapsed() < budget / 8 || calls < 2 {
            call(out);
            calls += 1;
        }
        best = best.min(t.elapsed().as_secs_f64() / calls as f64);
    }
    best
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--quick");
    let per_call = args.iter().any(|a| a == "--per-call");
    let copies_arg = args
        .iter()
        .position(|a| a == "--copies")
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse::<usize>().ok());
    let filter = args
        .iter()
        .position(|a| a == "--filter")
        .and_then(|i| args.get(i + 1))
        .cloned();
    let budget = Duration::from_millis(if quick { 150 } else { 600 });
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    println!(
        "kiln CPU matmul bench — SIMD level: {}",
        kernels::simd_level()
    );
    println!(
        "{:<13} {:<12} {:<5} {:>12} {:>3} {:>3} {:>10} {:>8} {:>9}",
        "model", "matrix", "type", "in->out", "n", "thr", "time", "GB/s", "GFLOP/s"
    );
    let pools: Vec<ThreadPool> = [1usize, 2].iter().map(|&t| ThreadPool::new(t)).collect();
    // (model, n, threads) -> seconds for the model's matmuls
    let mut totals: Vec<(&str, usize, usize, f64)> = Vec::new();
    for s in SHAPES {
        let label = format!(
            "{} {} {} {}->{}",
            s.model,
            s.name,
            s.ty.name(),
            s.cols,
            s.rows
        );
        if filter.as_ref().is_some_and(|f| !label.contains(f.as_str())) {
            continue;
        }
        let mbytes = s.rows * s.cols / s.ty.block_size() * s.ty.type_size();
        let copies = copies_arg.unwrap_or_else(|| (256usize << 20).div_ceil(mbytes).clamp(1, 4096));
        let data = random_weights(s, copies, &mut rng);
        let mats: Vec<WeightMatrix<'_>> = data
            .chunks_exact(mbytes)
            .map(|d| WeightMatrix {
                ty: s.ty,
                rows: s.rows,
                cols: s.cols,
                data: d,
            })
            .collect();
        for n in [1usize, 4, 16, 64] {
            let x: Vec<f32> = (0..n * s.cols).map(|_| rng.unit()).collect();
            let mut out = vec![0f32; n * s.rows];
            for pool in &pools {
                let t = time(pool, &mats, &x, n, &mut out, budget, per_call);
                let gbs = mbytes as f64 / t / 1e9;
                let gflops = 2.0 * (s.rows * s.cols * n) as f64 / t / 1e9;
                println!(
                    "{:<13} {:<12} {:<5} {:>12} {:>3} {:>3} {:>8.1}µs {:>8.1} {:>9.1}",
                    s.model,
                    s.name,
                    s.ty.name(),
                    format!("{}->{}", s.cols, s.rows),
                    n,
                    pool.n_threads(),
                    t * 1e6,
                    gbs,
                    gflops
                );
                if n == 1 || !s.output_layer {
                    match totals
                        .iter_mut()
                        .find(|e| e.0 == s.model && e.1 == n && e.2 == pool.n_threads())
                    {
                        Some(e) => e.3 += t * s.count as f64,
                        None => totals.push((s.model, n, pool.n_threads(), t * s.count as f64)),
                    }
                }
            }
        }
    }
    println!();
    println!(
        "Matmul time per model (all layers; decode includes the output layer, prompt excludes it):"
    );
    for (model, n, thr, t) in totals {
        let what = if n == 1 { "decode" } else { "prompt" };
        println!(
            "  {model:<13} {what} n={n:<3} threads={thr}: {:>8.2} ms -> {:>7.1} tok/s (matmuls only)",
            t * 1e3,
            n as f64 / t
        );
    }
}
