//! Decoding a token allocates nothing that grows with the model or the vocabulary: after a
//! warm-up, a decode step of the CPU backend (model code, ops and kernels, with a top-N
//! output over the whole vocabulary) makes no allocation larger than a few KiB — for a dense
//! model and for the synthetic gpt-oss (routing, expert matmuls, sinks).

use kiln_backend_cpu::ops::CpuOps;
use kiln_sdk::backend::{Batch, Context, ContextParams, Model, RowOutput, Want};
use kiln_sdk::gguf::Gguf;
use kiln_sdk::model::TransformerModel;
use kiln_sdk::quant::GgmlType;
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

/// Counts allocations while `ON` is set.
struct Counting;

static ON: AtomicBool = AtomicBool::new(false);
static COUNT: AtomicUsize = AtomicUsize::new(0);
static BYTES: AtomicUsize = AtomicUsize::new(0);
static LARGEST: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to the system allocator; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        if ON.load(Ordering::Relaxed) {
            COUNT.fetch_add(1, Ordering::Relaxed);
            BYTES.fetch_add(l.size(), Ordering::Relaxed);
            LARGEST.fetch_max(l.size(), Ordering::Relaxed);
        }
        // SAFETY: same contract as ours.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        if ON.load(Ordering::Relaxed) {
            COUNT.fetch_add(1, Ordering::Relaxed);
            BYTES.fetch_add(n, Ordering::Relaxed);
            LARGEST.fetch_max(n, Ordering::Relaxed);
        }
        // SAFETY: same contract as ours.
        unsafe { System.realloc(p, l, n) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn model_bytes() -> Option<(Vec<u8>, &'static str)> {
    let dir = std::env::var_os("KILN_MODELS")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::path::PathBuf::from(std::env::var_os("HOME").unwrap_or_default())
                .join(".cache/kiln/models")
        });
    let p = dir.join("smollm2-135m-instruct-q4_1.gguf");
    match std::fs::read(&p) {
        Ok(b) => Some((b, "SmolLM2-135M")),
        Err(_) => {
            assert!(
                std::env::var("KILN_REQUIRE_MODELS").as_deref() != Ok("1"),
                "{} is missing",
                p.display()
            );
            eprintln!("{} absent: using a synthetic model", p.display());
            None
        }
    }
}

#[test]
fn a_decode_step_allocates_nothing_that_grows_with_the_model() {
    let (bytes, name) = model_bytes().unwrap_or_else(|| {
        (
            kiln_sdk::conformance::Synthetic::Qwen2Quant.gguf(1),
            "synthetic qwen2",
        )
    });
    // One test, models in turn: the counters are global.
    decode_steps(bytes, name);
    decode_steps(
        kiln_sdk::conformance::Synthetic::GptOss.gguf(1),
        "synthetic gpt-oss (mixture of experts)",
    );
}

fn decode_steps(bytes: Vec<u8>, name: &str) {
    for c in [&COUNT, &BYTES, &LARGEST] {
        c.store(0, Ordering::SeqCst);
    }
    let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
    let gguf = Gguf::parse(bytes).unwrap();
    let model = Arc::new(TransformerModel::load(Arc::new(CpuOps::new(2)), &gguf).unwrap());
    let n_vocab = model.info().n_vocab as usize;
    let mut ctx = model
        .create_context(&ContextParams {
            n_ctx: 256,
            n_seq_max: 2,
            kv_type: GgmlType::F16,
            n_batch_max: 64,
            n_outputs_max: 2,
        })
        .unwrap();
    let top = n_vocab.min(1024);
    let (mut ids, mut vals, mut lse) = (vec![0i32; top], vec![0f32; top], 0f32);
    let mut token = 1i32;
    let steps = 48;
    for pos in 0..steps {
        if pos == 16 {
            ON.store(true, Ordering::SeqCst);
        }
        let mut outs = [RowOutput {
            row: 0,
            want: Want::TopN {
                ids: &mut ids,
                logits: &mut vals,
            },
            banned: &[],
            allowed: None,
            lse: Some(&mut lse),
            target: None,
        }];
        ctx.forward(
            &Batch {
                tokens: &[token],
                positions: &[pos],
                seq_ids: &[0],
            },
            &mut outs,
        )
        .unwrap();
        token = ids[0];
    }
    ON.store(false, Ordering::SeqCst);
    let (count, total, largest) = (
        COUNT.load(Ordering::SeqCst),
        BYTES.load(Ordering::SeqCst),
        LARGEST.load(Ordering::SeqCst),
    );
    let per_step = (steps - 16) as usize;
    println!(
        "{name} (vocab {n_vocab}): {} allocations per decode step, {} bytes, largest {largest}",
        count as f64 / per_step as f64,
        total / per_step
    );
    assert!(
        largest <= 4096,
        "a decode step allocated {largest} bytes at once (vocab {n_vocab})"
    );
    assert!(
        total / per_step <= 16 * 1024,
        "{total} bytes in {per_step} steps"
    );
}
