//! Tests of the sampler runtime: hostile modules (written in WAT) each end with their
//! documented error while a concurrent sequence on another thread completes with the expected
//! tokens; the ABI's plumbing (views, history, masks, errors, reset, the compile cache); and
//! the built-in `chain` against the native oracle (`sampling.rs`) on thousands of rows.

use super::oracle::Sampler;
use super::params::SamplingParams;
use super::*;
use std::sync::Arc;

/// A deterministic generator for test data (splitmix64).
struct Rand(u64);

impl Rand {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn unit(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 24) as f32
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn row(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| (self.unit() - 0.5) * scale).collect()
    }
}

/// A module following the ABI: a bump allocator, and the given bodies of `kiln_init`
/// (params `$cfg $len $seed $nv`), `kiln_sample` (params `$buf $n $lse`), `kiln_accept`
/// (param `$tok`); `extra` adds fields (imports go first in `imports`).
fn wat(imports: &str, init: &str, sample: &str, accept: &str, extra: &str) -> String {
    format!(
        r#"(module
  {imports}
  (memory (export "memory") 1)
  (global $heap (mut i32) (i32.const 1024))
  (func (export "kiln_abi_version") (result i32) (i32.const 1))
  (func (export "kiln_alloc") (param $n i32) (result i32) (local $p i32)
    (local.set $p (global.get $heap))
    (global.set $heap (i32.and (i32.add (i32.add (global.get $heap) (local.get $n)) (i32.const 7)) (i32.const -8)))
    (block $ok
      (loop $more
        (br_if $ok (i32.le_u (global.get $heap) (i32.shl (memory.size) (i32.const 16))))
        (if (i32.eq (memory.grow (i32.const 1)) (i32.const -1)) (then (return (i32.const 0))))
        (br $more)))
    (local.get $p))
  (func (export "kiln_init") (param $cfg i32) (param $len i32) (param $seed i64) (param $nv i32) (result i32)
    {init})
  (func $sample (export "kiln_sample") (param $buf i32) (param $n i32) (param $lse f32) (result i32)
    (local $i i32) (local $best i32) (local $bv f32) (local $v f32)
    {sample})
  (func (export "kiln_accept") (param $tok i32) {accept})
  (func (export "kiln_reset"))
  {extra}
)"#
    )
}

/// Argmax of a full-view buffer (ties: lowest id).
const ARGMAX: &str = r#"
    (local.set $bv (f32.const -inf))
    (block $done (loop $l
      (br_if $done (i32.ge_u (local.get $i) (local.get $n)))
      (local.set $v (f32.load (i32.add (local.get $buf) (i32.shl (local.get $i) (i32.const 2)))))
      (if (f32.gt (local.get $v) (local.get $bv)) (then (local.set $bv (local.get $v)) (local.set $best (local.get $i))))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br $l)))
    (local.get $best)"#;

/// A well-behaved greedy module on the full view.
fn greedy_full() -> String {
    wat("", "(i32.const 0)", ARGMAX, "", "")
}

/// A module whose `kiln_sample` body is `sample` (full view).
fn sample_body(sample: &str) -> String {
    wat(
        r#"(import "kiln" "set_error" (func $set_error (param i32 i32)))"#,
        "(i32.const 0)",
        sample,
        "",
        r#"(data (i32.const 16) "bad thing")"#,
    )
}

fn load(name: &str, src: &str) -> Result<Arc<SamplerModule>, SamplerError> {
    SamplerModule::load(name, src.as_bytes())
}

fn cause(r: Result<impl std::fmt::Debug, SamplerError>) -> Cause {
    match r {
        Ok(v) => panic!("expected an error, got {v:?}"),
        Err(e) => e.cause,
    }
}

/// The reference sequence: a `chain` (built-in) instance sampling on its own thread, checked
/// token by token against the native oracle. It signals `ready` once its instance exists and
/// keeps sampling until `done` is set (and for at least 300 steps); returns its step count.
fn concurrent_good_sequence(
    ready: Arc<std::sync::Barrier>,
    done: Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<usize> {
    std::thread::spawn(move || {
        let module = builtin::load("chain")
            .expect("the built-in chain is embedded")
            .expect("chain loads");
        let p = SamplingParams {
            seed: 77,
            repeat_penalty: 1.1,
            ..SamplingParams::default()
        };
        let vocab = Arc::new(Vocab::synthetic(32_000));
        let mut wasm = module
            .instantiate(builtin::chain_config(&p).as_bytes(), p.seed, vocab)
            .expect("instantiate");
        wasm.set_deadline_ms(2000); // this thread competes with hostile ones for 2 cores
        let mut native = Sampler::new(p, 32_000);
        let mut r = Rand(5);
        ready.wait();
        let mut step = 0;
        while step < 300 || !done.load(std::sync::atomic::Ordering::Acquire) {
            let mut row = r.row(32_000, 20.0);
            let want = native_step(&mut native, wasm.view(), &row);
            let got = match wasm
                .sample_row(&mut row)
                .expect("the good sequence carries on")
            {
                Step::Token(t) => t,
                Step::Stop => panic!("chain stopped"),
            };
            assert_eq!(got, want, "step {step}");
            native.accept(got);
            wasm.accept(got).expect("accept");
            step += 1;
        }
        step
    })
}

/// The native oracle's choice: always on the full row, whatever view the WASM chain asked
/// for (the chain picks a top-N view only where it gives exactly the full row's result).
fn native_step(native: &mut Sampler, _view: View, row: &[f32]) -> u32 {
    native.sample(row)
}

/// Runs `hostile` while a good sequence runs on another thread; both must end as expected.
fn with_concurrent_sequence<T>(hostile: impl FnOnce() -> T) -> T {
    let ready = Arc::new(std::sync::Barrier::new(2));
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let good = concurrent_good_sequence(ready.clone(), done.clone());
    ready.wait();
    let out = hostile();
    done.store(true, std::sync::atomic::Ordering::Release);
    let steps = good.join().expect("the concurrent sequence panicked");
    assert!(steps >= 300, "{steps}");
    out
}

/// Instantiates `src` on a small vocabulary and samples one full-view step.
fn one_step(src: &str, config: &[u8]) -> Result<Step, SamplerError> {
    let m = load("hostile", src)?;
    let mut s = m.instantiate(config, 1, Arc::new(Vocab::synthetic(100)))?;
    let row: Vec<f32> = (0..100).map(|i| i as f32).collect();
    s.sample_full(&row)
}

#[test]
fn well_behaved_wat_greedy_works() {
    let m = load("greedy.wat", &greedy_full()).unwrap();
    let mut s = m
        .instantiate(b"", 0, Arc::new(Vocab::synthetic(1000)))
        .unwrap();
    assert_eq!(s.view(), View::Full);
    let mut r = Rand(1);
    for _ in 0..50 {
        let row = r.row(1000, 10.0);
        let want = (0..1000)
            .max_by(|&a, &b| row[a].total_cmp(&row[b]).then(b.cmp(&a)))
            .unwrap() as u32;
        assert_eq!(s.sample_full(&row).unwrap(), Step::Token(want));
        s.accept(want).unwrap();
    }
}

#[test]
fn infinite_loop_hits_the_deadline() {
    let c = with_concurrent_sequence(|| {
        let src = sample_body("(loop $forever (br $forever)) (i32.const 0)");
        let m = load("loop", &src).unwrap();
        let mut s = m
            .instantiate(b"", 1, Arc::new(Vocab::synthetic(100)))
            .unwrap();
        s.set_deadline_ms(20);
        let t = std::time::Instant::now();
        let c = cause(s.sample_full(&[0.0; 100]));
        assert!(
            t.elapsed() < std::time::Duration::from_secs(5),
            "took {:?}",
            t.elapsed()
        );
        // Poisoned: later calls give the same error at once.
        assert_eq!(cause(s.sample_full(&[0.0; 100])), c);
        c
    });
    assert_eq!(
        c,
        Cause::Deadline {
            call: "kiln_sample",
            ms: 20
        }
    );
    assert_eq!(
        SamplerError::new("loop", c).to_string(),
        "sampler 'loop': kiln_sample ran past its deadline of 20 ms"
    );
}

#[test]
fn infinite_loop_in_init_and_start_hit_the_init_deadline() {
    let src = wat(
        "",
        "(loop $forever (br $forever)) (i32.const 0)",
        ARGMAX,
        "",
        "",
    );
    let m = load("init-loop", &src).unwrap();
    let c = cause(m.instantiate(b"", 1, Arc::new(Vocab::synthetic(10))));
    assert_eq!(
        c,
        Cause::Deadline {
            call: "kiln_init",
            ms: INIT_DEADLINE_MS
        }
    );
    let src = wat(
        "",
        "(i32.const 0)",
        ARGMAX,
        "",
        "(func $start (loop $f (br $f))) (start $start)",
    );
    assert!(matches!(
        cause(load("start-loop", &src)),
        Cause::Deadline {
            call: "instantiation",
            ..
        }
    ));
}

#[test]
fn memory_grow_bomb_hits_the_limit() {
    let c = with_concurrent_sequence(|| {
        let src = sample_body(
            "(loop $grow (br_if $grow (i32.ne (memory.grow (i32.const 16)) (i32.const -1)))) (i32.const 0)",
        );
        cause(one_step(&src, b""))
    });
    let Cause::Limit(m) = &c else { panic!("{c:?}") };
    assert!(m.contains("past the limit of 65536 KiB"), "{m}");
    // A module that declares more memory than allowed cannot even start.
    let src = greedy_full().replace(
        r#"(memory (export "memory") 1)"#,
        r#"(memory (export "memory") 2000)"#,
    );
    let c = cause(load("big", &src));
    assert!(
        matches!(c, Cause::Invalid(ref m) if m.contains("memory")),
        "{c:?}"
    );
}

#[test]
fn traps_end_the_sequence() {
    let c = with_concurrent_sequence(|| cause(one_step(&sample_body("(unreachable)"), b"")));
    let Cause::Trap {
        call: "kiln_sample",
        trap,
    } = &c
    else {
        panic!("{c:?}")
    };
    assert!(trap.contains("unreachable"), "{trap}");
    let oob = sample_body("(drop (i32.load (i32.const -16))) (i32.const 0)");
    let Cause::Trap { trap, .. } = cause(one_step(&oob, b"")) else {
        panic!()
    };
    assert!(trap.contains("out of bounds"), "{trap}");
    let recursion = sample_body("(call $sample (local.get $buf) (local.get $n) (local.get $lse))");
    assert!(matches!(
        cause(one_step(&recursion, b"")),
        Cause::Trap { .. }
    ));
}

#[test]
fn out_of_range_tokens_and_error_codes() {
    let c = with_concurrent_sequence(|| cause(one_step(&sample_body("(i32.const 100)"), b"")));
    assert_eq!(
        c,
        Cause::Abi("kiln_sample returned token 100, outside 0..100".into())
    );
    let c = cause(one_step(
        &sample_body("(call $set_error (i32.const 16) (i32.const 9)) (i32.const -2)"),
        b"",
    ));
    assert_eq!(
        c,
        Cause::Module {
            call: "kiln_sample",
            code: -2,
            message: "bad thing".into()
        }
    );
    assert_eq!(
        one_step(&sample_body("(i32.const -1)"), b"").unwrap(),
        Step::Stop
    );
    let c = cause(one_step(
        &sample_body("(call $set_error (i32.const -8) (i32.const 9)) (i32.const -2)"),
        b"",
    ));
    assert!(
        matches!(c, Cause::Abi(ref m) if m.contains("set_error")),
        "{c:?}"
    );
}

#[test]
fn oversized_config_is_refused() {
    let c = with_concurrent_sequence(|| {
        cause(one_step(&greedy_full(), &vec![b' '; MAX_CONFIG_BYTES + 1]))
    });
    assert_eq!(c, Cause::ConfigTooLarge(MAX_CONFIG_BYTES + 1));
    // The largest allowed config reaches kiln_init intact: init returns its last byte.
    let init = "(i32.sub (i32.const 0) (i32.load8_u (i32.add (local.get $cfg) (i32.sub (local.get $len) (i32.const 1)))))";
    let m = load("cfg", &wat("", init, ARGMAX, "", "")).unwrap();
    let mut config = vec![b'x'; MAX_CONFIG_BYTES];
    config[MAX_CONFIG_BYTES - 1] = 7;
    assert!(matches!(
        cause(m.instantiate(&config, 1, Arc::new(Vocab::synthetic(10)))),
        Cause::Module {
            call: "kiln_init",
            code: -7,
            ..
        }
    ));
}

#[test]
fn modules_that_break_the_interface_are_refused_at_load() {
    let msg = |src: &str| match cause(load("bad.wasm", src)) {
        Cause::Invalid(m) => m,
        other => panic!("{other:?}"),
    };
    let wrong_sig = greedy_full().replace(
        r#"(func (export "kiln_accept") (param $tok i32)"#,
        r#"(func (export "kiln_accept") (param $tok i64)"#,
    );
    with_concurrent_sequence(|| {
        assert_eq!(
            msg(&wrong_sig),
            "its export `kiln_accept` has type (i64) -> (), the ABI's is (i32) -> ()"
        );
    });
    let missing = greedy_full().replace(r#"(func (export "kiln_reset"))"#, "");
    assert_eq!(msg(&missing), "it does not export `kiln_reset` (() -> ())");
    let no_memory = greedy_full().replace(r#"(memory (export "memory") 1)"#, "(memory 1)");
    assert_eq!(msg(&no_memory), "it does not export `memory`");
    let wasi = wat(
        r#"(import "wasi_snapshot_preview1" "fd_write" (func (param i32 i32 i32 i32) (result i32)))"#,
        "(i32.const 0)",
        ARGMAX,
        "",
        "",
    );
    assert!(msg(&wasi)
        .starts_with("it imports `wasi_snapshot_preview1.fd_write`, which is not allowed"));
    let unknown = wat(
        r#"(import "kiln" "clock" (func (result i64)))"#,
        "(i32.const 0)",
        ARGMAX,
        "",
        "",
    );
    assert!(msg(&unknown).starts_with("it imports `kiln.clock`"));
    let mistyped = wat(
        r#"(import "kiln" "n_vocab" (func (result i64)))"#,
        "(i32.const 0)",
        ARGMAX,
        "",
        "",
    );
    assert_eq!(
        msg(&mistyped),
        "its import `kiln.n_vocab` has type () -> (i64), the ABI's is () -> (i32)"
    );
    let memory_import = greedy_full().replace(
        r#"(memory (export "memory") 1)"#,
        r#"(import "kiln" "memory" (memory 1)) (export "memory" (memory 0))"#,
    );
    assert!(msg(&memory_import).contains("kiln.memory"));
    let v2 = greedy_full().replace("(result i32) (i32.const 1))", "(result i32) (i32.const 2))");
    assert_eq!(
        msg(&v2),
        "kiln_abi_version() returned 2; this host implements 1"
    );
    assert!(msg("this is not wasm").starts_with("it cannot be compiled as WebAssembly"));
    let big = vec![0u8; MAX_MODULE_BYTES + 1];
    assert!(
        matches!(SamplerModule::load("big", &big).unwrap_err().cause, Cause::Invalid(m) if m.contains("more than"))
    );
}

#[test]
fn bad_init_and_alloc_results_are_abi_violations() {
    let vocab = || Arc::new(Vocab::synthetic(10));
    let m = load("n5000", &wat("", "(i32.const 5000)", ARGMAX, "", "")).unwrap();
    assert_eq!(
        cause(m.instantiate(b"", 1, vocab())),
        Cause::Abi("kiln_init returned a top-5000 view; at most 4096".into())
    );
    let zero = greedy_full().replace("(local.get $p))", "(drop (local.get $p)) (i32.const 0))");
    let c = cause(load("zero", &zero).unwrap().instantiate(b"", 1, vocab()));
    assert!(
        matches!(c, Cause::Abi(ref m) if m.contains("returned 0")),
        "{c:?}"
    );
    let odd = greedy_full().replace("(local.get $p))", "(i32.add (local.get $p) (i32.const 1)))");
    let c = cause(load("odd", &odd).unwrap().instantiate(b"", 1, vocab()));
    assert!(
        matches!(c, Cause::Abi(ref m) if m.contains("aligned")),
        "{c:?}"
    );
    let far = greedy_full().replace(
        "(local.get $p))",
        "(drop (local.get $p)) (i32.const 0x7ffffff8))",
    );
    let c = cause(load("far", &far).unwrap().instantiate(b"", 1, vocab()));
    assert!(
        matches!(c, Cause::Abi(ref m) if m.contains("outside")),
        "{c:?}"
    );
}

#[test]
fn top_n_view_history_and_host_functions() {
    // init: top-3 view; sample: the id at index 1 of the view plus 1000 × seq_len, checked
    // against the history and token text through the host functions.
    let imports = r#"(import "kiln" "seq_len" (func $seq_len (result i32)))
        (import "kiln" "seq_tokens" (func $seq_tokens (param i32 i32 i32) (result i32)))
        (import "kiln" "token_bytes" (func $token_bytes (param i32 i32 i32) (result i32)))
        (import "kiln" "special_token" (func $special (param i32) (result i32)))
        (import "kiln" "is_eog" (func $is_eog (param i32) (result i32)))
        (import "kiln" "n_vocab" (func $nv (result i32)))"#;
    let sample = r#"
        ;; the last accepted token must be 42 + seq_len
        (drop (call $seq_tokens (i32.sub (call $seq_len) (i32.const 1)) (i32.const 64) (i32.const 1)))
        (if (i32.ne (i32.load (i32.const 64)) (i32.add (i32.const 40) (call $seq_len))) (then (unreachable)))
        ;; token 12's text is "<12>" (4 bytes); only 2 fit; out-of-range id → -1
        (if (i32.ne (call $token_bytes (i32.const 12) (i32.const 80) (i32.const 2)) (i32.const 4)) (then (unreachable)))
        (if (i32.ne (i32.load16_u (i32.const 80)) (i32.const 0x313c)) (then (unreachable)))
        (if (i32.ne (call $token_bytes (i32.const 50) (i32.const 80) (i32.const 2)) (i32.const -1)) (then (unreachable)))
        (if (i32.ne (call $special (i32.const 1)) (i32.const 49)) (then (unreachable)))
        (if (i32.ne (call $special (i32.const 0)) (i32.const -1)) (then (unreachable)))
        (if (i32.ne (call $is_eog (i32.const 49)) (i32.const 1)) (then (unreachable)))
        (if (i32.ne (call $nv) (i32.const 50)) (then (unreachable)))
        (if (i32.ne (local.get $n) (i32.const 3)) (then (unreachable)))
        ;; logits follow the ids
        (if (f32.ne (f32.load (i32.add (local.get $buf) (i32.const 16))) (f32.const 2.5)) (then (unreachable)))
        (if (f32.ne (local.get $lse) (f32.const 9.0)) (then (unreachable)))
        (i32.load (i32.add (local.get $buf) (i32.const 4)))"#;
    let m = load("top3", &wat(imports, "(i32.const 3)", sample, "", "")).unwrap();
    let mut s = m
        .instantiate(b"", 1, Arc::new(Vocab::synthetic(50)))
        .unwrap();
    assert_eq!(s.view(), View::TopN(3));
    for t in [41, 42, 43] {
        s.accept(t).unwrap();
    }
    assert_eq!(
        s.sample_top(&[7, 8, 9], &[3.0, 2.5, 1.0], 9.0).unwrap(),
        Step::Token(8)
    );
    // A bad history makes it trap; reset gives a fresh, working instance.
    s.accept(3).unwrap();
    assert!(matches!(
        s.sample_top(&[7, 8, 9], &[3.0, 2.5, 1.0], 9.0)
            .unwrap_err()
            .cause,
        Cause::Trap { .. }
    ));
    s.reset().unwrap();
    s.accept(41).unwrap();
    assert_eq!(
        s.sample_top(&[1, 2, 3], &[3.0, 2.5, 1.0], 9.0).unwrap(),
        Step::Token(2)
    );
    // More ids than the view holds is a host error, not a module one.
    assert!(matches!(
        s.sample_top(&[1, 2, 3, 4], &[0.0; 4], 0.0)
            .unwrap_err()
            .cause,
        Cause::Host(_)
    ));
}

#[test]
fn masks_constrain_and_are_enforced() {
    // The mask allows tokens 3 and 35 only; sample returns the argmax of the masked row or,
    // with config byte 'x', always token 4.
    let extra = r#"(func (export "kiln_mask") (result i32)
        (i32.store (i32.const 128) (i32.const 8))
        (i32.store (i32.const 132) (i32.const 8))
        (i32.const 128))"#;
    let init = "(if (i32.gt_u (local.get $len) (i32.const 0)) (then (global.set $cheat (i32.const 1)))) (i32.const 0)";
    let sample = format!("(if (global.get $cheat) (then (return (i32.const 4)))) {ARGMAX}");
    let src = wat(
        "(global $cheat (mut i32) (i32.const 0))",
        init,
        &sample,
        "",
        extra,
    );
    let m = load("mask", &src).unwrap();
    assert!(m.has_mask());
    let vocab = Arc::new(Vocab::synthetic(40));
    let mut s = m.instantiate(b"", 1, vocab.clone()).unwrap();
    let mut row: Vec<f32> = (0..40).map(|i| -(i as f32)).collect();
    assert_eq!(s.sample_row(&mut row).unwrap(), Step::Token(3));
    let mut row: Vec<f32> = (0..40).map(|i| i as f32).collect();
    assert_eq!(s.sample_row(&mut row).unwrap(), Step::Token(35));
    let mut cheat = m.instantiate(b"x", 1, vocab).unwrap();
    let mut row = vec![0.0f32; 40];
    let c = cheat.sample_row(&mut row).unwrap_err().cause;
    assert_eq!(
        c,
        Cause::Abi("kiln_sample chose token 4, which its mask disallows".into())
    );
    // A mask that allows nothing ends the sequence.
    let none = src.replace(
        "(i32.const 8))\n        (i32.store (i32.const 132) (i32.const 8))",
        "(i32.const 0))\n        (i32.store (i32.const 132) (i32.const 0))",
    );
    let m = load("none", &none).unwrap();
    let mut s = m
        .instantiate(b"", 1, Arc::new(Vocab::synthetic(40)))
        .unwrap();
    assert_eq!(
        s.sample_row(&mut [0.0; 40]).unwrap_err().cause,
        Cause::NothingAllowed
    );
}

#[test]
fn many_sequences_share_one_module() {
    let m = load("greedy.wat", &greedy_full()).unwrap();
    let handles: Vec<_> = (0..8)
        .map(|k| {
            let m = m.clone();
            std::thread::spawn(move || {
                let mut seqs: Vec<_> = (0..20)
                    .map(|_| {
                        m.instantiate(b"", k, Arc::new(Vocab::synthetic(64)))
                            .unwrap()
                    })
                    .collect();
                for (i, s) in seqs.iter_mut().enumerate() {
                    s.set_deadline_ms(2000);
                    let mut row = vec![0.0f32; 64];
                    row[(i * 7 + k as usize) % 64] = 1.0;
                    assert_eq!(
                        s.sample_full(&row).unwrap(),
                        Step::Token(((i * 7 + k as usize) % 64) as u32)
                    );
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
}

#[test]
fn compiled_modules_are_cached_on_disk_and_corruption_recompiles() {
    let engine = runtime::engine().unwrap();
    let dir = std::env::temp_dir().join(format!("kiln-sampler-cache-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let src = greedy_full();
    let bytes = src.as_bytes();
    let path = dir.join("m.cwasm");
    let (_, cached) = runtime::load_or_compile(engine, bytes, Some(&path)).unwrap();
    assert!(!cached && path.is_file());
    let (_, cached) = runtime::load_or_compile(engine, bytes, Some(&path)).unwrap();
    assert!(cached);
    // Flip a byte: the checksum catches it, the module is recompiled and the file rewritten.
    let mut data = std::fs::read(&path).unwrap();
    let mid = data.len() / 2;
    data[mid] ^= 0x55;
    std::fs::write(&path, &data).unwrap();
    let (_, cached) = runtime::load_or_compile(engine, bytes, Some(&path)).unwrap();
    assert!(!cached);
    let (_, cached) = runtime::load_or_compile(engine, bytes, Some(&path)).unwrap();
    assert!(cached);
    std::fs::write(&path, b"short").unwrap();
    assert!(
        !runtime::load_or_compile(engine, bytes, Some(&path))
            .unwrap()
            .1
    );
    let _ = std::fs::remove_dir_all(&dir);
    assert!(runtime::cache_file_name(&[0xab; 32]).starts_with("abababab"));
}

#[test]
fn vocab_and_mask_helpers() {
    let v = Vocab::synthetic(70);
    assert_eq!(v.n_vocab(), 70);
    assert_eq!(v.token_bytes(69), Some(&b"<69>"[..]));
    assert_eq!(v.token_bytes(70), None);
    assert!(v.is_eog(69) && !v.is_eog(3) && !v.is_eog(1000));
    let mut row = vec![1.0f32; 70];
    let mut mask = vec![0u32; 3];
    mask[2] = 1 << 5; // token 69
    assert!(apply_mask(&mask, &mut row));
    assert_eq!(row.iter().filter(|l| l.is_finite()).count(), 1);
    assert!(mask_allows(&mask, 69) && !mask_allows(&mask, 68));
    assert!(!apply_mask(&[0; 3], &mut row));
}

/// The parameter space of the oracle comparison.
fn oracle_settings() -> Vec<SamplingParams> {
    let base = SamplingParams {
        seed: 0,
        ..SamplingParams::default()
    };
    let mut v = vec![
        SamplingParams {
            temperature: 0.0,
            ..base.clone()
        },
        SamplingParams {
            temperature: 0.0,
            repeat_penalty: 1.3,
            ..base.clone()
        },
        base.clone(),
        SamplingParams {
            top_k: 1,
            ..base.clone()
        },
        SamplingParams {
            top_k: 5,
            top_p: 1.0,
            min_p: 0.0,
            ..base.clone()
        },
        SamplingParams {
            top_k: 0,
            top_p: 0.9,
            min_p: 0.0,
            ..base.clone()
        },
        SamplingParams {
            top_k: 0,
            top_p: 1.0,
            min_p: 0.1,
            ..base.clone()
        },
        SamplingParams {
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            temperature: 1.0,
            ..base.clone()
        },
        SamplingParams {
            top_k: 300,
            top_p: 0.99,
            min_p: 0.0,
            temperature: 1.5,
            ..base.clone()
        },
        SamplingParams {
            top_k: 40,
            temperature: 0.3,
            ..base.clone()
        },
        SamplingParams {
            top_k: 2000,
            top_p: 0.5,
            temperature: 5.0,
            ..base.clone()
        },
        SamplingParams {
            repeat_penalty: 1.2,
            frequency_penalty: 0.3,
            presence_penalty: 0.5,
            penalty_last_n: 16,
            ..base.clone()
        },
        SamplingParams {
            top_k: 0,
            repeat_penalty: 0.8,
            frequency_penalty: -0.2,
            penalty_last_n: 64,
            ..base.clone()
        },
    ];
    for (i, p) in v.iter_mut().enumerate() {
        p.seed = 1000 + i as u64;
    }
    v
}

/// Runs the WASM chain (or greedy) and the native oracle side by side on `rows` random rows
/// of `n_vocab` logits after a random history; returns how many steps were compared.
fn compare_with_oracle(p: &SamplingParams, n_vocab: usize, rows: usize, seed: u64) -> usize {
    let (name, config) = builtin::for_params(p);
    let module = builtin::load(name)
        .expect("built-in embedded")
        .expect("loads");
    let vocab = Arc::new(Vocab::synthetic(n_vocab));
    let mut wasm = module
        .instantiate(config.as_bytes(), p.seed ^ seed, vocab)
        .unwrap();
    wasm.set_deadline_ms(5000);
    let mut native = Sampler::new(
        SamplingParams {
            seed: p.seed ^ seed,
            ..p.clone()
        },
        n_vocab,
    );
    let mut r = Rand(seed);
    for _ in 0..r.below(40) {
        let t = r.below(n_vocab) as u32;
        wasm.accept(t).unwrap();
        native.accept(t);
    }
    for step in 0..rows {
        let scale = [1.0, 8.0, 30.0][step % 3];
        let mut row = r.row(n_vocab, scale);
        if step % 7 == 3 {
            // Ties and repeated values (+ 0.0 turns -0.0 into 0.0: the backend's top-N orders
            // -0.0 below 0.0, native greedy sees them equal).
            for l in row.iter_mut() {
                *l = (*l * 0.5).round() + 0.0;
            }
        }
        let want = native_step(&mut native, wasm.view(), &row);
        let got = match wasm.sample_row(&mut row).unwrap() {
            Step::Token(t) => t,
            Step::Stop => panic!("stop"),
        };
        assert_eq!(
            got,
            want,
            "{name} {config} vocab {n_vocab} seed {seed} step {step} view {:?}",
            wasm.view()
        );
        native.accept(got);
        wasm.accept(got).unwrap();
    }
    rows
}

#[test]
fn wasm_chain_matches_the_native_oracle_on_small_vocabs() {
    let mut steps = 0;
    for (i, p) in oracle_settings().iter().enumerate() {
        for (j, n) in [2usize, 17, 100, 1000, 5000].into_iter().enumerate() {
            for seed in 0..2 {
                steps += compare_with_oracle(p, n, 40, (i * 31 + j * 7 + seed) as u64);
            }
        }
    }
    assert!(steps >= 5000, "{steps}");
}

#[test]
fn wasm_chain_matches_the_native_oracle_on_a_151936_vocab() {
    let mut steps = 0;
    for (i, p) in oracle_settings().iter().enumerate() {
        steps += compare_with_oracle(p, 151_936, 40, 900 + i as u64);
    }
    assert!(steps >= 500, "{steps}");
}

#[test]
fn builtins_are_embedded_and_load() {
    for name in ["greedy", "chain", "mirostat", "constraint"] {
        let m = builtin::load(name)
            .unwrap_or_else(|| panic!("{name} is not embedded"))
            .unwrap();
        assert_eq!(m.name(), name);
    }
    assert!(builtin::load("nope").is_none());
}

#[test]
fn a_prompt_reaches_a_module_in_one_call_when_it_takes_prompts() {
    // Globals count the calls; kiln_sample returns 1000 × prompt calls + single accepts, and
    // checks the tokens and seq_len the prompt call saw.
    let imports = r#"(import "kiln" "seq_len" (func $seq_len (result i32)))"#;
    let extra = r#"
        (global $prompts (mut i32) (i32.const 0))
        (global $singles (mut i32) (i32.const 0))
        (func (export "kiln_accept_prompt") (param $p i32) (param $n i32)
          (global.set $prompts (i32.add (global.get $prompts) (i32.const 1)))
          ;; the prompt is 10, 11, 12, ... and seq_len already counts it
          (if (i32.ne (i32.load (local.get $p)) (i32.const 10)) (then (unreachable)))
          (if (i32.ne (i32.load (i32.add (local.get $p) (i32.shl (i32.sub (local.get $n) (i32.const 1)) (i32.const 2))))
                      (i32.add (i32.const 9) (local.get $n))) (then (unreachable)))
          (if (i32.ne (call $seq_len) (local.get $n)) (then (unreachable))))"#;
    let sample = "(i32.add (i32.mul (global.get $prompts) (i32.const 1000)) (global.get $singles))";
    let accept = "(global.set $singles (i32.add (global.get $singles) (i32.const 1)))";
    let with = load(
        "prompt",
        &wat(imports, "(i32.const 0)", sample, accept, extra),
    )
    .unwrap();
    assert!(with.has_accept_prompt());
    let without = load(
        "single",
        &wat(
            "",
            "(i32.const 0)",
            "(global.get $singles)",
            accept,
            "(global $singles (mut i32) (i32.const 0))",
        ),
    )
    .unwrap();
    assert!(!without.has_accept_prompt());
    let vocab = Arc::new(Vocab::synthetic(10_000));
    let row = vec![0f32; 10_000];
    for n in [1usize, 700, 3000] {
        let prompt: Vec<u32> = (10..10 + n as u32).collect();
        let mut s = with.instantiate(b"", 1, vocab.clone()).unwrap();
        s.accept_prompt(&prompt).unwrap();
        // A second, longer prompt after a reset reuses or grows the buffer.
        assert_eq!(s.sample_full(&row).unwrap(), Step::Token(1000));
        s.accept(5).unwrap();
        assert_eq!(s.sample_full(&row).unwrap(), Step::Token(1001));
        // A module without the export gets one kiln_accept per token.
        let mut s = without.instantiate(b"", 1, vocab.clone()).unwrap();
        s.accept_prompt(&prompt).unwrap();
        assert_eq!(s.sample_full(&row).unwrap(), Step::Token(n as u32));
    }
    // Growing prompts on one instance.
    let mut s = with.instantiate(b"", 1, vocab.clone()).unwrap();
    for (k, n) in [10usize, 5000, 20].iter().enumerate() {
        s.reset().unwrap();
        let prompt: Vec<u32> = (10..10 + *n as u32).collect();
        s.accept_prompt(&prompt).unwrap();
        assert_eq!(
            s.sample_full(&row).unwrap(),
            Step::Token(1000 * (k as u32 + 1))
        );
    }
}

#[test]
fn builtins_take_prompts_in_one_call() {
    for name in builtin::names() {
        let m = builtin::load(name).unwrap().unwrap();
        assert!(m.has_accept_prompt(), "{name}");
    }
}

/// Whether `s` is safe to print: no control characters.
fn printable(s: &str) -> bool {
    !s.chars().any(char::is_control)
}

#[test]
fn module_text_is_escaped_and_cut() {
    assert_eq!(escape_module_text("plain é 日本"), "plain é 日本");
    assert_eq!(
        escape_module_text("a\u{1b}[2J\nb\tc\r\0\u{7f}\u{9b}"),
        "a\\u{1b}[2J\\nb\\tc\\r\\u{0}\\u{7f}\\u{9b}"
    );
    // Characters that reorder or hide text are escaped too.
    assert_eq!(
        escape_module_text("x\u{202e}y\u{2028}z\u{feff}"),
        "x\\u{202e}y\\u{2028}z\\u{feff}"
    );
    // Long text is cut at a character (or a whole escape) and marked.
    let long = escape_module_text(&"é".repeat(5000));
    assert!(
        long.len() <= MAX_MODULE_TEXT && long.ends_with('…'),
        "{}",
        long.len()
    );
    let escapes = escape_module_text(&"\u{1b}".repeat(1000));
    assert!(escapes.len() <= MAX_MODULE_TEXT && escapes.ends_with("\\u{1b}…"));
    let exact = "a".repeat(MAX_MODULE_TEXT);
    assert_eq!(escape_module_text(&exact), exact);
    // A sampler's name (a file name) is escaped too.
    let e = SamplerError::new("evil\u{1b}]0;title\u{7}.wasm", Cause::NothingAllowed);
    assert!(printable(&e.to_string()), "{e}");
    assert!(e
        .to_string()
        .starts_with("sampler 'evil\\u{1b}]0;title\\u{7}.wasm'"));
}

#[test]
fn module_supplied_text_reaches_errors_escaped() {
    // The set_error message: ESC sequences, newlines, a bell, 4 KiB long.
    let message = "\\1b[31mred\\0a\\0dfake log line\\07".to_string() + &"x".repeat(4000);
    let src = wat(
        r#"(import "kiln" "set_error" (func $set_error (param i32 i32)))"#,
        "(i32.const 0)",
        "(call $set_error (i32.const 64) (i32.const 4024)) (i32.const -2)",
        "",
        &format!(r#"(data (i32.const 64) "{message}")"#),
    );
    let e = one_step(&src, b"").unwrap_err();
    let shown = e.to_string();
    assert!(printable(&shown), "{shown}");
    assert!(
        shown.starts_with(
            "sampler 'hostile': kiln_sample returned error -2: \\u{1b}[31mred\\n\\rfake log line\\u{7}xxx"
        ),
        "{shown}"
    );
    assert!(shown.len() < MAX_MODULE_TEXT + 100 && shown.ends_with('…'));

    // An import name, refused by the ABI check.
    let src = wat(
        r#"(import "kiln" "n_vocab\1b[2J\0a" (func (result i32)))"#,
        "(i32.const 0)",
        ARGMAX,
        "",
        "",
    );
    let shown = load("bad.wasm", &src).unwrap_err().to_string();
    assert!(printable(&shown), "{shown}");
    assert!(
        shown.contains("it imports `kiln.n_vocab\\u{1b}[2J\\n`, which is not allowed"),
        "{shown}"
    );

    // Export names, quoted by the compiler's validation (a duplicate name).
    let src = greedy_full().replace(
        r#"(func (export "kiln_reset"))"#,
        r#"(func (export "kiln_reset")) (func (export "x\1b[8m\0a")) (func (export "x\1b[8m\0a"))"#,
    );
    let shown = load("bad.wasm", &src).unwrap_err().to_string();
    assert!(printable(&shown), "{shown}");
    assert!(
        shown.contains("duplicate export name `x\\u{1b}[8m\\n`"),
        "{shown}"
    );

    // A WAT syntax error next to a comment holding raw control characters: the message and
    // position are kept, the quoted source line is not.
    let src =
        "(module\n  ;; \u{1b}[2J\u{1b}]0;owned\u{7} comment\n  (func (i32.bogus \"\\1b\"))\n)";
    let shown = load("bad.wat", src).unwrap_err().to_string();
    assert!(printable(&shown), "{shown}");
    assert_eq!(
        shown,
        "sampler 'bad.wat': invalid module: it cannot be compiled as WebAssembly: unknown \
         operator or unexpected token (at <anon>:3:10)"
    );
    // Raw control characters in a string.
    let src = "(module (func (export \"\u{1b}[31m\n\")))";
    let shown = load("bad.wat", src).unwrap_err().to_string();
    assert!(printable(&shown), "{shown}");
    assert!(shown.contains("'\\u{1b}' (at <anon>:1:24)"), "{shown}");
    // A trap in a function whose name (name section) holds control characters.
    let src = sample_body("(unreachable)").replace(
        "(func $sample (export \"kiln_sample\")",
        "(func $sample (@name \"\\1b]0;owned\\07\\0a\") (export \"kiln_sample\")",
    );
    assert!(src.contains("@name"));
    let shown = one_step(&src, b"").unwrap_err().to_string();
    assert!(printable(&shown), "{shown}");
    assert!(
        shown.contains("trapped in kiln_sample") && shown.contains("unreachable"),
        "{shown}"
    );
    // Raw control characters in the source outside strings and comments.
    let shown = load("bad.wat", "(module \u{1b}[31m\n\u{7})")
        .unwrap_err()
        .to_string();
    assert!(printable(&shown), "{shown}");
}
