//! [`ThreadPool`]: persistent worker threads with low-latency fork-join dispatch.
//!
//! A dispatch publishes a type-erased pointer to the caller's closure and bumps a generation
//! counter. Idle workers spin on that counter for 20 µs (so the hundreds of small operations
//! of one decoded token each start within a fraction of a microsecond), then keep polling
//! while yielding their core for up to 300 µs, then park until they are unparked. Each worker's share is claimed by compare-and-swap on its slot: the
//! worker claims it when it wakes, but once the caller has run share 0 it claims and runs
//! every share no worker has started (a worker descheduled by a busy OS then costs nothing).
//! `run` returns when every share has run, so the closure may borrow from the caller's
//! stack; a caller left waiting more than 30 µs parks until the last worker unparks it.

use std::any::Any;
use std::cell::Cell;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle, Thread};
use std::time::{Duration, Instant};

/// How long an idle worker polls before parking.
const SPIN: Duration = Duration::from_micros(300);

/// How long of that an idle worker spins without yielding its core.
const HOT_SPIN: Duration = Duration::from_micros(20);

/// How long the caller spins for workers to finish before parking (a worker that takes
/// longer has usually been preempted, and may need the caller's core to continue).
const CALLER_SPIN: Duration = Duration::from_micros(30);

/// Polls between `PAUSE` hints while spinning. Back-to-back `PAUSE`s make KVM guests take
/// pause-loop exits (microseconds each), so the hint is issued only now and then; it still
/// yields pipeline resources to an SMT sibling.
const POLLS_PER_PAUSE: u32 = 256;

/// Calls the closure behind `data` (an `F`) for one share.
type CallFn = unsafe fn(data: *const (), idx: usize, n: usize);

unsafe fn call_closure<F: Fn(usize, usize) + Sync>(data: *const (), idx: usize, n: usize) {
    // SAFETY: `data` points to the `F` that `run` published and keeps alive until every
    // worker has reported completion.
    let f = unsafe { &*(data as *const F) };
    f(idx, n);
}

struct Worker {
    /// Set while the worker is (about to be) parked, so the dispatcher knows to unpark it.
    sleeping: AtomicBool,
    /// The generation whose share was last claimed (by the worker or by the caller). Before a
    /// dispatch of generation `g` it holds `g - 1`; exactly one party moves it to `g`.
    claimed: AtomicUsize,
}

struct Shared {
    /// Incremented once per dispatch (and once at shutdown).
    generation: AtomicUsize,
    /// The current job: closure pointer and its trampoline (as `usize`).
    job_data: AtomicUsize,
    job_call: AtomicUsize,
    /// Shares of the current job finished by workers.
    done: AtomicUsize,
    /// A worker's share panicked during the current job.
    panicked: AtomicBool,
    shutdown: AtomicBool,
    /// Set while the caller of `run` is (about to be) parked waiting for `done`.
    caller_parked: AtomicBool,
    /// The parked caller, to unpark.
    caller: Mutex<Option<Thread>>,
    workers: Vec<Worker>,
}

/// A fixed set of persistent threads for fork-join parallel loops.
///
/// `n_threads` counts the calling thread: a pool of 2 has one worker. [`ThreadPool::run`]
/// calls the closure once for every share `idx` in `0..n` and returns when all calls are done.
/// Share 0 runs on the caller; share `i` normally on worker `i`, but the caller runs it itself
/// if that worker has not started it by the time share 0 is done (so a worker the OS has not
/// scheduled never stalls the caller). Split work by `idx`, not by thread identity.
///
/// Panics: if the closure panics on any thread, `run` still waits for every other share to
/// finish (nothing borrowed can dangle), then re-raises the caller's panic or raises a new
/// one naming the worker failure. The pool stays usable afterwards.
///
/// Re-entrancy: a `run` issued while the pool is already running a job (from inside the
/// closure, or from another thread) does not deadlock; it calls the closure inline as
/// `f(0, 1)`.
pub struct ThreadPool {
    shared: Arc<Shared>,
    threads: Vec<Thread>,
    handles: Vec<JoinHandle<()>>,
    busy: AtomicBool,
}

thread_local! {
    /// True on the pool's worker threads (used to run nested jobs inline).
    static IN_WORKER: Cell<bool> = const { Cell::new(false) };
}

impl ThreadPool {
    /// A pool of `n_threads` threads in total, including the caller (0 is treated as 1).
    /// If the OS refuses to spawn a thread, the pool keeps the ones it got.
    pub fn new(n_threads: usize) -> Self {
        let want = n_threads.max(1) - 1;
        let shared = Arc::new(Shared {
            generation: AtomicUsize::new(0),
            job_data: AtomicUsize::new(0),
            job_call: AtomicUsize::new(0),
            done: AtomicUsize::new(0),
            panicked: AtomicBool::new(false),
            shutdown: AtomicBool::new(false),
            caller_parked: AtomicBool::new(false),
            caller: Mutex::new(None),
            workers: (0..want)
                .map(|_| Worker {
                    sleeping: AtomicBool::new(false),
                    claimed: AtomicUsize::new(0),
                })
                .collect(),
        });
        let mut threads = Vec::with_capacity(want);
        let mut handles = Vec::with_capacity(want);
        for i in 0..want {
            let sh = Arc::clone(&shared);
            let spawned = thread::Builder::new()
                .name(format!("kiln-cpu-{}", i + 1))
                .spawn(move || worker_loop(&sh, i));
            match spawned {
                Ok(h) => {
                    threads.push(h.thread().clone());
                    handles.push(h);
                }
                Err(_) => break,
            }
        }
        ThreadPool {
            shared,
            threads,
            handles,
            busy: AtomicBool::new(false),
        }
    }

    /// Threads that share the work of [`ThreadPool::run`], the caller included.
    pub fn n_threads(&self) -> usize {
        self.handles.len() + 1
    }

    /// Calls `f(idx, n)` for every `idx` in `0..n` (`n = self.n_threads()`), share 0 on the
    /// calling thread, and returns once all shares have returned. See the type's docs for
    /// panics and re-entrancy.
    pub fn run<F: Fn(usize, usize) + Sync>(&self, f: F) {
        let nw = self.handles.len();
        if nw == 0
            || IN_WORKER.with(Cell::get)
            || self
                .busy
                .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
                .is_err()
        {
            f(0, 1);
            return;
        }
        let n = nw + 1;
        let sh = &*self.shared;
        sh.done.store(0, Ordering::Relaxed);
        sh.job_data
            .store(&f as *const F as usize, Ordering::Relaxed);
        sh.job_call
            .store(call_closure::<F> as CallFn as usize, Ordering::Relaxed);
        let gen = sh.generation.fetch_add(1, Ordering::SeqCst) + 1;
        for (w, t) in sh.workers.iter().zip(&self.threads) {
            if w.sleeping.load(Ordering::SeqCst) {
                t.unpark();
            }
        }
        let mut mine = catch_unwind(AssertUnwindSafe(|| f(0, n)));
        // Run the shares no worker has started yet.
        let mut stolen = 0;
        for (i, w) in sh.workers.iter().enumerate() {
            if w.claimed
                .compare_exchange(gen - 1, gen, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
            {
                stolen += 1;
                let r = catch_unwind(AssertUnwindSafe(|| f(i + 1, n)));
                if mine.is_ok() {
                    mine = r;
                }
            }
        }
        // Wait for the shares workers started: they borrow `f`.
        let want = nw - stolen;
        let start = Instant::now();
        let mut spins = 0u32;
        while sh.done.load(Ordering::Acquire) != want {
            spins = spins.wrapping_add(1);
            if !spins.is_multiple_of(POLLS_PER_PAUSE) {
                continue;
            }
            if start.elapsed() < CALLER_SPIN {
                std::hint::spin_loop();
                continue;
            }
            // Park until the last worker finishes (it unparks us).
            *sh.caller.lock().unwrap_or_else(|e| e.into_inner()) = Some(thread::current());
            sh.caller_parked.store(true, Ordering::SeqCst);
            while sh.done.load(Ordering::SeqCst) != want {
                thread::park_timeout(Duration::from_millis(1));
            }
            sh.caller_parked.store(false, Ordering::SeqCst);
            break;
        }
        let worker_panicked = sh.panicked.swap(false, Ordering::Relaxed);
        self.busy.store(false, Ordering::Release);
        if let Err(p) = mine {
            resume_unwind(p);
        }
        if worker_panicked {
            panic!("a kiln CPU thread pool worker panicked");
        }
    }
}

fn worker_loop(sh: &Shared, i: usize) {
    IN_WORKER.with(|c| c.set(true));
    let me = &sh.workers[i];
    let mut seen = 0usize;
    loop {
        let start = Instant::now();
        let mut spins = 0u32;
        let gen = loop {
            let g = sh.generation.load(Ordering::Acquire);
            if g != seen {
                break g;
            }
            spins = spins.wrapping_add(1);
            if !spins.is_multiple_of(POLLS_PER_PAUSE) {
                continue;
            }
            let waited = start.elapsed();
            if waited < HOT_SPIN {
                std::hint::spin_loop();
                continue;
            }
            if waited < SPIN {
                // Keep polling, but let any runnable thread on this core (often our own
                // caller, on a busy machine) go first.
                thread::yield_now();
                continue;
            }
            me.sleeping.store(true, Ordering::SeqCst);
            if sh.generation.load(Ordering::SeqCst) == seen {
                thread::park();
            }
            me.sleeping.store(false, Ordering::SeqCst);
        };
        seen = gen;
        if sh.shutdown.load(Ordering::Acquire) {
            return;
        }
        // Claim our share of this generation, unless the caller already ran it.
        if me
            .claimed
            .compare_exchange(gen - 1, gen, Ordering::AcqRel, Ordering::Relaxed)
            .is_err()
        {
            continue;
        }
        let data = sh.job_data.load(Ordering::Relaxed) as *const ();
        let call = sh.job_call.load(Ordering::Relaxed);
        // SAFETY: `call` was stored from a `CallFn` by `run` before the generation bump
        // that we observed with Acquire ordering.
        let call: CallFn = unsafe { std::mem::transmute::<usize, CallFn>(call) };
        let n = sh.workers.len() + 1;
        // SAFETY: we claimed this generation's share, so `run` keeps the closure alive until
        // our `done` increment.
        let r: Result<(), Box<dyn Any + Send>> =
            catch_unwind(AssertUnwindSafe(|| unsafe { call(data, i + 1, n) }));
        if r.is_err() {
            sh.panicked.store(true, Ordering::Relaxed);
        }
        sh.done.fetch_add(1, Ordering::SeqCst);
        if sh.caller_parked.load(Ordering::SeqCst) {
            if let Some(t) = sh.caller.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
                t.unpark();
            }
        }
    }
}

impl Drop for ThreadPool {
    fn drop(&mut self) {
        self.shared.shutdown.store(true, Ordering::Release);
        self.shared.generation.fetch_add(1, Ordering::SeqCst);
        for t in &self.threads {
            t.unpark();
        }
        for h in self.handles.drain(..) {
            let _ = h.join();
        }
    }
}

impl std::fmt::Debug for ThreadPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ThreadPool")
            .field("n_threads", &self.n_threads())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU64;

    #[test]
    fn every_share_runs_once() {
        let pool = ThreadPool::new(3);
        assert_eq!(pool.n_threads(), 3);
        for _ in 0..1000 {
            let hits = [AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)];
            pool.run(|i, n| {
                assert_eq!(n, 3);
                hits[i].fetch_add(1, Ordering::Relaxed);
            });
            assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 1));
        }
    }

    #[test]
    fn parks_and_wakes() {
        let pool = ThreadPool::new(2);
        let sum = AtomicU64::new(0);
        pool.run(|i, _| {
            sum.fetch_add(i as u64 + 1, Ordering::Relaxed);
        });
        std::thread::sleep(Duration::from_millis(20));
        pool.run(|i, _| {
            sum.fetch_add(i as u64 + 1, Ordering::Relaxed);
        });
        assert_eq!(sum.load(Ordering::Relaxed), 6);
    }

    #[test]
    fn worker_panic_propagates_and_pool_survives() {
        let pool = ThreadPool::new(2);
        let r = catch_unwind(AssertUnwindSafe(|| {
            pool.run(|i, _| {
                if i == 1 {
                    panic!("boom");
                }
            })
        }));
        assert!(r.is_err());
        let r = catch_unwind(AssertUnwindSafe(|| {
            pool.run(|i, _| {
                if i == 0 {
                    panic!("boom");
                }
            })
        }));
        assert!(r.is_err());
        let count = AtomicU64::new(0);
        pool.run(|_, _| {
            count.fetch_add(1, Ordering::Relaxed);
        });
        assert_eq!(count.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn nested_run_is_inline() {
        let pool = ThreadPool::new(2);
        let count = AtomicU64::new(0);
        pool.run(|_, _| {
            pool.run(|i, n| {
                assert_eq!((i, n), (0, 1));
                count.fetch_add(1, Ordering::Relaxed);
            });
        });
        assert_eq!(count.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn single_thread_pool() {
        let pool = ThreadPool::new(0);
        assert_eq!(pool.n_threads(), 1);
        let count = AtomicU64::new(0);
        pool.run(|i, n| {
            assert_eq!((i, n), (0, 1));
            count.fetch_add(1, Ordering::Relaxed);
        });
        assert_eq!(count.load(Ordering::Relaxed), 1);
    }
}
