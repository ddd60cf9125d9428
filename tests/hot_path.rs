//! The host side of a decode step (scheduler, ABI client, sampler runtime, event stream)
//! allocates nothing that grows with the vocabulary or the model: while a request decodes
//! through the engine, no allocation is larger than a few KiB and each token costs at most a
//! few small ones (its text and event). The backend's own side is checked by the CPU
//! backend's `hot_path` test.

use kiln_e2e::*;
use kiln_runtime::engine::{Engine, EngineOptions, Event, Input, Request, SamplerSpec};
use kiln_runtime::model::{LoadOptions, Model};
use kiln_runtime::sampler::SamplingParams;
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

struct Counting;

static ON: AtomicBool = AtomicBool::new(false);
static COUNT: AtomicUsize = AtomicUsize::new(0);
static BYTES: AtomicUsize = AtomicUsize::new(0);
static LARGEST: AtomicUsize = AtomicUsize::new(0);

fn note(size: usize) {
    if ON.load(Ordering::Relaxed) {
        COUNT.fetch_add(1, Ordering::Relaxed);
        BYTES.fetch_add(size, Ordering::Relaxed);
        LARGEST.fetch_max(size, Ordering::Relaxed);
    }
}

// SAFETY: forwards to the system allocator; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        note(l.size());
        // SAFETY: same contract as ours.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        note(n);
        // SAFETY: same contract as ours.
        unsafe { System.realloc(p, l, n) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[test]
fn decoding_through_the_engine_allocates_nothing_that_grows_with_the_vocabulary() {
    let Some(path) = model("smollm2-135m-instruct-q4_1.gguf") else {
        return;
    };
    let model = Model::load(
        &path,
        &LoadOptions {
            backend: Some(cpu_backend().to_string_lossy().into_owned()),
            threads: 2,
        },
    )
    .unwrap();
    let n_vocab = model.n_vocab();
    let engine = Engine::start(model, EngineOptions::single(256)).unwrap();
    // The default chain (top-N view) and a full-row chain (top-k off): both paths.
    for top_k in [40, 0] {
        let params = SamplingParams {
            seed: 3,
            top_k,
            ..SamplingParams::default()
        };
        let mut req = Request::new(
            Input::Text {
                text: "Once upon a time".into(),
                parse_special: true,
            },
            SamplerSpec::from_params(&params).unwrap(),
        );
        req.max_tokens = Some(64);
        req.ignore_eos = true;
        let h = engine.submit(req).unwrap();
        let (mut n, mut counted) = (0, 0);
        COUNT.store(0, Ordering::SeqCst);
        BYTES.store(0, Ordering::SeqCst);
        LARGEST.store(0, Ordering::SeqCst);
        while let Some(ev) = h.recv() {
            if let Event::Token { .. } = ev {
                n += 1;
                match n {
                    16 => ON.store(true, Ordering::SeqCst),
                    17..=47 => counted += 1,
                    48 => {
                        counted += 1;
                        ON.store(false, Ordering::SeqCst);
                    }
                    _ => {}
                }
            }
            drop(ev);
        }
        ON.store(false, Ordering::SeqCst);
        let (count, bytes, largest) = (
            COUNT.load(Ordering::SeqCst),
            BYTES.load(Ordering::SeqCst),
            LARGEST.load(Ordering::SeqCst),
        );
        println!(
            "top_k {top_k}: {:.1} allocations and {} bytes per token, largest {largest} (vocab {n_vocab})",
            count as f64 / counted as f64,
            bytes / counted.max(1)
        );
        assert_eq!(counted, 32);
        assert!(
            largest <= 4096,
            "an allocation of {largest} bytes while decoding"
        );
        assert!(
            bytes / counted <= 8192,
            "{bytes} bytes for {counted} tokens"
        );
    }
}
