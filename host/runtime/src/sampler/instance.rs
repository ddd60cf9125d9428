//! One sampler instance per sequence: its store (limits, deadline clock, token history), the
//! host functions of module `kiln`, and the calls of ABI version 1 with every failure turned
//! into a [`SamplerError`] that poisons only this instance.
//!
//! Deadlines: each call gets an epoch deadline; when it passes, the callback compares the CPU
//! time the calling thread spent in the call with the budget, so a thread that was merely
//! descheduled on a busy machine is given more time while a module that computes is stopped
//! within about a millisecond of its budget (with a wall-clock backstop).

use super::runtime::{self, LiveGuard, SamplerModule};
use super::TABLE_ELEMENTS_LIMIT;
use super::{escape_module_text, mask_allows, Cause, SamplerError, Step, View, Vocab};
use super::{
    DEFAULT_DEADLINE_MS, DEFAULT_MEMORY_LIMIT, INIT_DEADLINE_MS, MAX_CONFIG_BYTES, MAX_TOP_N,
};
use std::sync::Arc;
use std::time::{Duration, Instant};
use wasmtime::{Caller, Memory, ResourceLimiter, Store, Trap, TypedFunc, UpdateDeadline};

#[cfg(target_endian = "big")]
compile_error!("the sampler host writes logits in native byte order, which must be little-endian");

/// Longest `set_error` message kept, in bytes.
const MAX_ERROR_BYTES: usize = 4096;

/// The CPU time the calling thread has used (wall time where that clock is missing).
pub(crate) fn thread_cpu_time() -> Duration {
    #[cfg(unix)]
    {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `ts` is a valid out-pointer; the clock id is a constant of the platform.
        if unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) } == 0 {
            return Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32);
        }
    }
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    START.get_or_init(Instant::now).elapsed()
}

/// The budget of the call in progress.
#[derive(Debug)]
struct CallClock {
    cpu_start: Duration,
    wall_start: Instant,
    budget: Duration,
    /// Set when the callback stopped the call.
    hit: bool,
}

impl CallClock {
    fn start(&mut self, ms: u64) {
        self.cpu_start = thread_cpu_time();
        self.wall_start = Instant::now();
        self.budget = Duration::from_millis(ms);
        self.hit = false;
    }

    /// Called at the epoch deadline: stop, or ticks to wait before checking again.
    fn check(&mut self) -> UpdateDeadline {
        let used = thread_cpu_time().saturating_sub(self.cpu_start);
        let wall_cap = self.budget * 100 + Duration::from_secs(1);
        if used >= self.budget || self.wall_start.elapsed() >= wall_cap {
            self.hit = true;
            return UpdateDeadline::Interrupt;
        }
        let left = (self.budget - used).as_millis() as u64;
        UpdateDeadline::Continue(left.max(1))
    }
}

/// Memory and table limits of one instance; remembers what was refused.
#[derive(Debug)]
struct Limiter {
    memory: usize,
    tables: usize,
    hit: Option<String>,
}

impl ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _max: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.memory {
            let m = format!(
                "memory would grow from {} to {} KiB, past the limit of {} KiB",
                current >> 10,
                desired >> 10,
                self.memory >> 10
            );
            self.hit = Some(m.clone());
            return Err(wasmtime::Error::msg(m));
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        _max: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.tables {
            let m = format!(
                "a table would grow from {current} to {desired} elements, past the limit of {}",
                self.tables
            );
            self.hit = Some(m.clone());
            return Err(wasmtime::Error::msg(m));
        }
        Ok(true)
    }

    fn instances(&self) -> usize {
        1
    }

    fn tables(&self) -> usize {
        1
    }

    fn memories(&self) -> usize {
        1
    }
}

/// The host-side state of one instance.
pub struct SeqState {
    vocab: Arc<Vocab>,
    /// Tokens accepted since the last reset.
    history: Vec<u32>,
    /// The message of the last `set_error`.
    error: String,
    /// An ABI violation found by a host function.
    violation: Option<String>,
    limiter: Limiter,
    clock: CallClock,
}

impl SeqState {
    fn new(vocab: Arc<Vocab>) -> SeqState {
        SeqState {
            vocab,
            history: Vec::new(),
            error: String::new(),
            violation: None,
            limiter: Limiter {
                memory: DEFAULT_MEMORY_LIMIT,
                tables: TABLE_ELEMENTS_LIMIT,
                hit: None,
            },
            clock: CallClock {
                cpu_start: Duration::ZERO,
                wall_start: Instant::now(),
                budget: Duration::ZERO,
                hit: false,
            },
        }
    }
}

/// Records an ABI violation and returns the trap that ends the call.
fn violation(caller: &mut Caller<'_, SeqState>, msg: String) -> wasmtime::Error {
    caller.data_mut().violation = Some(msg.clone());
    wasmtime::Error::msg(msg)
}

/// The module's memory, seen from a host function.
fn caller_memory(caller: &mut Caller<'_, SeqState>, func: &str) -> wasmtime::Result<Memory> {
    match caller.get_export("memory").and_then(|e| e.into_memory()) {
        Some(m) => Ok(m),
        None => Err(violation(
            caller,
            format!("{func}: the module has no exported memory"),
        )),
    }
}

/// The byte range `ptr..ptr+len` of the caller's memory, checked.
fn range(
    caller: &mut Caller<'_, SeqState>,
    mem: &Memory,
    func: &str,
    ptr: i32,
    len: usize,
) -> wasmtime::Result<usize> {
    let start = ptr as u32 as usize;
    if start
        .checked_add(len)
        .is_none_or(|end| end > mem.data_size(&*caller))
    {
        return Err(violation(
            caller,
            format!("{func}: {len} bytes at {start:#x} are outside the module's memory"),
        ));
    }
    Ok(start)
}

/// Defines the functions of module `kiln` (ABI.md, "What the host provides").
pub(crate) fn define_imports(linker: &mut wasmtime::Linker<SeqState>) -> wasmtime::Result<()> {
    linker.func_wrap("kiln", "n_vocab", |c: Caller<'_, SeqState>| {
        c.data().vocab.n_vocab() as i32
    })?;
    linker.func_wrap(
        "kiln",
        "token_bytes",
        |mut c: Caller<'_, SeqState>, id: i32, out: i32, cap: i32| -> wasmtime::Result<i32> {
            let vocab = c.data().vocab.clone();
            let Some(bytes) = u32::try_from(id).ok().and_then(|id| vocab.token_bytes(id)) else {
                return Ok(-1);
            };
            if cap < 0 {
                return Err(violation(
                    &mut c,
                    format!("token_bytes: negative capacity {cap}"),
                ));
            }
            let n = bytes.len().min(cap as usize);
            let mem = caller_memory(&mut c, "token_bytes")?;
            let start = range(&mut c, &mem, "token_bytes", out, n)?;
            mem.data_mut(&mut c)[start..start + n].copy_from_slice(&bytes[..n]);
            Ok(bytes.len().min(i32::MAX as usize) as i32)
        },
    )?;
    linker.func_wrap(
        "kiln",
        "special_token",
        |c: Caller<'_, SeqState>, kind: i32| {
            let s = c.data().vocab.special();
            let id = match kind {
                0 => s.bos,
                1 => s.eos,
                2 => s.eot,
                _ => None,
            };
            id.map_or(-1, |t| t as i32)
        },
    )?;
    linker.func_wrap("kiln", "is_eog", |c: Caller<'_, SeqState>, id: i32| {
        i32::from(u32::try_from(id).is_ok_and(|id| c.data().vocab.is_eog(id)))
    })?;
    linker.func_wrap("kiln", "seq_len", |c: Caller<'_, SeqState>| {
        c.data().history.len().min(i32::MAX as usize) as i32
    })?;
    linker.func_wrap(
        "kiln",
        "seq_tokens",
        |mut c: Caller<'_, SeqState>, start: i32, out: i32, cap: i32| -> wasmtime::Result<i32> {
            if start < 0 || cap < 0 {
                return Err(violation(
                    &mut c,
                    format!("seq_tokens: negative start {start} or capacity {cap}"),
                ));
            }
            let len = c.data().history.len();
            let from = (start as usize).min(len);
            let n = (cap as usize).min(len - from);
            let mem = caller_memory(&mut c, "seq_tokens")?;
            let at = range(&mut c, &mem, "seq_tokens", out, n * 4)?;
            let (data, state) = mem.data_and_store_mut(&mut c);
            for (i, &t) in state.history[from..from + n].iter().enumerate() {
                data[at + 4 * i..at + 4 * i + 4].copy_from_slice(&t.to_le_bytes());
            }
            Ok(n as i32)
        },
    )?;
    linker.func_wrap(
        "kiln",
        "set_error",
        |mut c: Caller<'_, SeqState>, ptr: i32, len: i32| -> wasmtime::Result<()> {
            if len < 0 {
                return Err(violation(
                    &mut c,
                    format!("set_error: negative length {len}"),
                ));
            }
            let n = (len as usize).min(MAX_ERROR_BYTES);
            let mem = caller_memory(&mut c, "set_error")?;
            let at = range(&mut c, &mem, "set_error", ptr, n)?;
            let (data, state) = mem.data_and_store_mut(&mut c);
            // The module's text: escaped and cut before it can reach any printer.
            state.error = escape_module_text(&String::from_utf8_lossy(&data[at..at + n]));
            Ok(())
        },
    )?;
    Ok(())
}

/// A new store for an instance of `module` (limits, deadline callback).
fn new_store(vocab: Arc<Vocab>) -> Result<Store<SeqState>, String> {
    let engine = runtime::engine()?;
    let mut store = Store::new(engine, SeqState::new(vocab));
    store.limiter(|s| &mut s.limiter);
    store.epoch_deadline_callback(|mut ctx| Ok(ctx.data_mut().clock.check()));
    Ok(store)
}

/// Runs `f` on `store` under a deadline of `ms`, turning failures into causes.
fn guarded<R>(
    store: &mut Store<SeqState>,
    call: &'static str,
    ms: u64,
    f: impl FnOnce(&mut Store<SeqState>) -> wasmtime::Result<R>,
) -> Result<R, Cause> {
    store.data_mut().clock.start(ms);
    store.data_mut().violation = None;
    store.set_epoch_deadline(ms.max(1));
    match f(store) {
        Ok(v) => Ok(v),
        Err(e) => Err(classify(store.data_mut(), call, ms, e)),
    }
}

fn classify(state: &mut SeqState, call: &'static str, ms: u64, e: wasmtime::Error) -> Cause {
    if state.clock.hit {
        return Cause::Deadline { call, ms };
    }
    if let Some(m) = state.limiter.hit.take() {
        return Cause::Limit(m);
    }
    if let Some(m) = state.violation.take() {
        return Cause::Abi(m);
    }
    // Trap texts may quote the module (function names from its name section): escaped.
    match e.downcast_ref::<Trap>() {
        Some(Trap::Interrupt) => Cause::Deadline { call, ms },
        Some(t) => Cause::Trap {
            call,
            trap: escape_module_text(&t.to_string()),
        },
        None => Cause::Trap {
            call,
            trap: escape_module_text(&format!("{e:#}")),
        },
    }
}

/// Instantiates `module` and returns `kiln_abi_version()` (run at load).
pub(crate) fn probe_version(
    module: &SamplerModule,
    vocab: Arc<Vocab>,
    ms: u64,
) -> Result<i32, SamplerError> {
    let err = |c| SamplerError::new(module.name(), c);
    let _live = LiveGuard::new();
    let mut store = new_store(vocab).map_err(|m| err(Cause::Host(m)))?;
    let instance = instantiate_in(&mut store, module).map_err(err)?;
    let f: TypedFunc<(), i32> = instance
        .get_typed_func(&mut store, "kiln_abi_version")
        .map_err(|e| {
            err(Cause::Invalid(format!(
                "kiln_abi_version: {}",
                escape_module_text(&e.to_string())
            )))
        })?;
    guarded(&mut store, "kiln_abi_version", ms, |s| f.call(s, ())).map_err(err)
}

fn instantiate_in(
    store: &mut Store<SeqState>,
    module: &SamplerModule,
) -> Result<wasmtime::Instance, Cause> {
    // Start functions run here, under the init deadline.
    guarded(store, "instantiation", INIT_DEADLINE_MS, |s| {
        module.pre.instantiate(s)
    })
    .map_err(|c| match c {
        Cause::Trap { call, trap } if !trap.contains("wasm trap") => {
            Cause::Host(format!("cannot create an instance ({call}): {trap}"))
        }
        other => other,
    })
}

/// The live parts of an instance.
struct Inner {
    store: Store<SeqState>,
    memory: Memory,
    sample: TypedFunc<(i32, i32, f32), i32>,
    accept: TypedFunc<i32, ()>,
    reset: TypedFunc<(), ()>,
    mask: Option<TypedFunc<(), i32>>,
    alloc: TypedFunc<i32, i32>,
    /// `kiln_accept_prompt` (ABI 1.1), when the module exports it.
    accept_prompt: Option<TypedFunc<(i32, i32), ()>>,
    view: View,
    /// Offset of the step buffer.
    buf: usize,
    /// Offset and size in bytes of the prompt buffer (0 until a prompt needs one).
    prompt_buf: usize,
    prompt_cap: usize,
}

/// Calls `kiln_alloc(size)` and checks the buffer it returns: non-null, 8-byte aligned, inside
/// memory.
fn alloc_buffer(
    store: &mut Store<SeqState>,
    memory: &Memory,
    alloc: &TypedFunc<i32, i32>,
    size: usize,
    what: &str,
) -> Result<usize, Cause> {
    let p = guarded(store, "kiln_alloc", INIT_DEADLINE_MS, |s| {
        alloc.call(s, size as i32)
    })?;
    let at = p as u32 as usize;
    if p == 0 {
        return Err(Cause::Abi(format!(
            "kiln_alloc({size}) for the {what} returned 0 (out of memory)"
        )));
    }
    if !at.is_multiple_of(8) {
        return Err(Cause::Abi(format!(
            "kiln_alloc({size}) returned {at:#x}, which is not 8-byte aligned"
        )));
    }
    if at + size > memory.data_size(&*store) {
        return Err(Cause::Abi(format!(
            "kiln_alloc({size}) returned {at:#x}, outside the module's memory"
        )));
    }
    Ok(at)
}

/// The sampler of one sequence: an instance of a [`SamplerModule`] with its configuration
/// and seed. Any failure poisons it: later calls return the same error until [`reset`].
///
/// [`reset`]: SequenceSampler::reset
pub struct SequenceSampler {
    module: Arc<SamplerModule>,
    config: Vec<u8>,
    seed: u64,
    vocab: Arc<Vocab>,
    deadline_ms: u64,
    inner: Option<Inner>,
    failed: Option<SamplerError>,
    /// The last mask, decoded; valid while `mask_active`.
    mask_words: Vec<u32>,
    mask_active: bool,
    _live: LiveGuard,
}

impl std::fmt::Debug for SequenceSampler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SequenceSampler")
            .field("module", &self.module.name())
            .field("view", &self.inner.as_ref().map(|i| i.view))
            .field("failed", &self.failed)
            .finish_non_exhaustive()
    }
}

fn create(
    module: &SamplerModule,
    config: &[u8],
    seed: u64,
    vocab: &Arc<Vocab>,
) -> Result<Inner, Cause> {
    let mut store = new_store(vocab.clone()).map_err(Cause::Host)?;
    let instance = instantiate_in(&mut store, module)?;
    let abi = |e: wasmtime::Error| Cause::Invalid(escape_module_text(&e.to_string()));
    let memory = instance
        .get_memory(&mut store, "memory")
        .ok_or_else(|| Cause::Invalid("no memory".into()))?;
    let alloc: TypedFunc<i32, i32> = instance
        .get_typed_func(&mut store, "kiln_alloc")
        .map_err(abi)?;
    let init: TypedFunc<(i32, i32, i64, i32), i32> = instance
        .get_typed_func(&mut store, "kiln_init")
        .map_err(abi)?;
    let sample = instance
        .get_typed_func(&mut store, "kiln_sample")
        .map_err(abi)?;
    let accept = instance
        .get_typed_func(&mut store, "kiln_accept")
        .map_err(abi)?;
    let reset = instance
        .get_typed_func(&mut store, "kiln_reset")
        .map_err(abi)?;
    let mask = if module.has_mask() {
        Some(
            instance
                .get_typed_func(&mut store, "kiln_mask")
                .map_err(abi)?,
        )
    } else {
        None
    };
    let accept_prompt = if module.has_accept_prompt() {
        Some(
            instance
                .get_typed_func(&mut store, "kiln_accept_prompt")
                .map_err(abi)?,
        )
    } else {
        None
    };
    let n_vocab = vocab.n_vocab();
    let allocate = |store: &mut Store<SeqState>, size: usize, what: &str| {
        alloc_buffer(store, &memory, &alloc, size, what)
    };
    let cfg_ptr = if config.is_empty() {
        0
    } else {
        let at = allocate(&mut store, config.len(), "configuration")?;
        memory.data_mut(&mut store)[at..at + config.len()].copy_from_slice(config);
        at
    };
    let r = guarded(&mut store, "kiln_init", INIT_DEADLINE_MS, |s| {
        init.call(
            s,
            (
                cfg_ptr as i32,
                config.len() as i32,
                seed as i64,
                n_vocab as i32,
            ),
        )
    })?;
    let view = match r {
        0 => View::Full,
        n if n > 0 && n as usize <= MAX_TOP_N => View::TopN(n as usize),
        n if n > 0 => {
            return Err(Cause::Abi(format!(
                "kiln_init returned a top-{n} view; at most {MAX_TOP_N}"
            )))
        }
        code => {
            let message = std::mem::take(&mut store.data_mut().error);
            return Err(Cause::Module {
                call: "kiln_init",
                code,
                message,
            });
        }
    };
    let bytes = match view {
        View::Full => 4 * n_vocab,
        View::TopN(n) => 8 * n,
    };
    let buf = allocate(&mut store, bytes.max(8), "step buffer")?;
    Ok(Inner {
        store,
        memory,
        sample,
        accept,
        reset,
        mask,
        alloc,
        accept_prompt,
        view,
        buf,
        prompt_buf: 0,
        prompt_cap: 0,
    })
}

impl SamplerModule {
    /// Creates the sampler of one sequence: instantiates the module, writes `config` (at most
    /// 64 KiB), calls `kiln_init` with `seed` and the vocabulary size, and allocates the step
    /// buffer of the view it asked for.
    pub fn instantiate(
        self: &Arc<Self>,
        config: &[u8],
        seed: u64,
        vocab: Arc<Vocab>,
    ) -> Result<SequenceSampler, SamplerError> {
        if config.len() > MAX_CONFIG_BYTES {
            return Err(SamplerError::new(
                self.name(),
                Cause::ConfigTooLarge(config.len()),
            ));
        }
        let live = LiveGuard::new();
        let inner =
            create(self, config, seed, &vocab).map_err(|c| SamplerError::new(self.name(), c))?;
        Ok(SequenceSampler {
            module: self.clone(),
            config: config.to_vec(),
            seed,
            mask_words: vec![0; vocab.n_vocab().div_ceil(32)],
            vocab,
            deadline_ms: DEFAULT_DEADLINE_MS,
            inner: Some(inner),
            failed: None,
            mask_active: false,
            _live: live,
        })
    }
}

impl SequenceSampler {
    /// The module this sampler runs.
    pub fn module(&self) -> &Arc<SamplerModule> {
        &self.module
    }

    /// Sets the deadline of `kiln_sample`, `kiln_accept` and `kiln_mask` (milliseconds of CPU
    /// time, clamped to 1..=[`MAX_DEADLINE_MS`](super::MAX_DEADLINE_MS)).
    pub fn set_deadline_ms(&mut self, ms: u64) {
        self.deadline_ms = ms.clamp(1, super::MAX_DEADLINE_MS);
    }

    /// The view the module asked for at init.
    pub fn view(&self) -> View {
        self.inner.as_ref().map_or(View::Full, |i| i.view)
    }

    /// Poisons the sampler with `cause` and returns the error.
    pub fn fail(&mut self, cause: Cause) -> SamplerError {
        let e = SamplerError::new(self.module.name(), cause);
        self.failed = Some(e.clone());
        self.inner = None;
        e
    }

    fn live(&mut self) -> Result<&mut Inner, SamplerError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        match self.inner.as_mut() {
            Some(i) => Ok(i),
            None => Err(SamplerError::new(
                self.module.name(),
                Cause::Host("the sampler has no instance".into()),
            )),
        }
    }

    /// Runs a guarded call; a failure poisons the sampler.
    fn call<R>(
        &mut self,
        name: &'static str,
        ms: u64,
        f: impl FnOnce(&mut Inner) -> wasmtime::Result<R>,
    ) -> Result<R, SamplerError> {
        let inner = self.live()?;
        inner.store.data_mut().clock.start(ms);
        inner.store.data_mut().violation = None;
        inner.store.set_epoch_deadline(ms.max(1));
        match f(inner) {
            Ok(v) => Ok(v),
            Err(e) => {
                let cause = classify(inner.store.data_mut(), name, ms, e);
                Err(self.fail(cause))
            }
        }
    }

    /// Appends `token` to the sequence: records it for `seq_tokens` and calls `kiln_accept`.
    pub fn accept(&mut self, token: u32) -> Result<(), SamplerError> {
        let ms = self.deadline_ms;
        self.live()?.store.data_mut().history.push(token);
        self.call("kiln_accept", ms, |i| {
            i.accept.call(&mut i.store, token as i32)
        })
    }

    /// Appends a whole prompt: its tokens are recorded for `seq_tokens` and accepted in order
    /// — in one `kiln_accept_prompt` call when the module exports it (ABI 1.1), else one
    /// `kiln_accept` per token.
    pub fn accept_prompt(&mut self, tokens: &[u32]) -> Result<(), SamplerError> {
        if tokens.is_empty() {
            return Ok(());
        }
        if self.live()?.accept_prompt.is_none() {
            for &t in tokens {
                self.accept(t)?;
            }
            return Ok(());
        }
        let bytes = tokens.len() * 4;
        let inner = self.live()?;
        if bytes > inner.prompt_cap {
            let cap = bytes.max(2 * inner.prompt_cap).max(4096);
            let at = alloc_buffer(
                &mut inner.store,
                &inner.memory,
                &inner.alloc,
                cap,
                "prompt buffer",
            );
            match at {
                Ok(at) => {
                    inner.prompt_buf = at;
                    inner.prompt_cap = cap;
                }
                Err(c) => return Err(self.fail(c)),
            }
        }
        let inner = self.live()?;
        let at = inner.prompt_buf;
        inner.store.data_mut().history.extend_from_slice(tokens);
        let data = inner.memory.data_mut(&mut inner.store);
        for (dst, &t) in data[at..at + bytes].chunks_exact_mut(4).zip(tokens) {
            dst.copy_from_slice(&t.to_le_bytes());
        }
        let n = tokens.len() as i32;
        // One call for the whole prompt: the init deadline applies (a prompt is long work).
        self.call("kiln_accept_prompt", INIT_DEADLINE_MS, |i| {
            match &i.accept_prompt {
                Some(f) => f.call(&mut i.store, (at as i32, n)),
                None => Ok(()),
            }
        })
    }

    /// Starts a new sequence with the same config and seed (`kiln_reset`); a poisoned sampler
    /// gets a fresh instance instead.
    pub fn reset(&mut self) -> Result<(), SamplerError> {
        self.mask_active = false;
        if self.failed.is_some() || self.inner.is_none() {
            let inner = create(&self.module, &self.config, self.seed, &self.vocab)
                .map_err(|c| SamplerError::new(self.module.name(), c))?;
            self.inner = Some(inner);
            self.failed = None;
            return Ok(());
        }
        let inner = self.live()?;
        inner.store.data_mut().history.clear();
        inner.store.data_mut().error.clear();
        self.call("kiln_reset", INIT_DEADLINE_MS, |i| {
            i.reset.call(&mut i.store, ())
        })
    }

    /// Calls `kiln_mask` (when the module exports it): `None` = no constraint this step, else
    /// the bitset of allowed tokens (`ceil(n_vocab / 32)` words). The next sample must pick
    /// an allowed token.
    pub fn mask(&mut self) -> Result<Option<&[u32]>, SamplerError> {
        self.mask_active = false;
        if !self.module.has_mask() {
            return Ok(None);
        }
        let ms = self.deadline_ms;
        let p = self.call("kiln_mask", ms, |i| match &i.mask {
            Some(f) => f.call(&mut i.store, ()),
            None => Ok(0),
        })?;
        if p == 0 {
            return Ok(None);
        }
        let words = self.mask_words.len();
        let at = p as u32 as usize;
        let src = self
            .inner
            .as_ref()
            .and_then(|i| i.memory.data(&i.store).get(at..at + 4 * words));
        let Some(src) = src else {
            let c = Cause::Abi(format!(
                "kiln_mask returned {at:#x}; {} bytes there are outside memory",
                4 * words
            ));
            return Err(self.fail(c));
        };
        for (w, b) in self.mask_words.iter_mut().zip(src.chunks_exact(4)) {
            *w = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        }
        self.mask_active = true;
        Ok(Some(&self.mask_words))
    }

    /// One step on the full view: `logits` has `n_vocab` entries (already masked by the
    /// caller when [`mask`](Self::mask) returned a bitset).
    pub fn sample_full(&mut self, logits: &[f32]) -> Result<Step, SamplerError> {
        let n = self.vocab.n_vocab();
        if logits.len() != n {
            return Err(self.fail(Cause::Host(format!(
                "a row of {} logits for a vocabulary of {n}",
                logits.len()
            ))));
        }
        let inner = self.live()?;
        if inner.view != View::Full {
            let c = Cause::Host("a full row given to a sampler of the top-N view".into());
            return Err(self.fail(c));
        }
        let buf = inner.buf;
        inner.memory.data_mut(&mut inner.store)[buf..buf + 4 * n]
            .copy_from_slice(bytemuck::cast_slice(logits));
        self.run_sample(n, f32::NAN)
    }

    /// One step on the top-N view: `ids` best first (at most N of them), `logits[i]` the
    /// logit of `ids[i]`, `lse` the log-sum-exp of the full row.
    pub fn sample_top(
        &mut self,
        ids: &[i32],
        logits: &[f32],
        lse: f32,
    ) -> Result<Step, SamplerError> {
        let n = ids.len();
        let inner = self.live()?;
        let View::TopN(cap) = inner.view else {
            return Err(self.fail(Cause::Host(
                "a top-N view given to a sampler of the full view".into(),
            )));
        };
        if n == 0 || n > cap || logits.len() < n {
            let c = Cause::Host(format!(
                "a top-N view of {n} ids and {} logits for N = {cap}",
                logits.len()
            ));
            return Err(self.fail(c));
        }
        let buf = inner.buf;
        let data = inner.memory.data_mut(&mut inner.store);
        data[buf..buf + 4 * n].copy_from_slice(bytemuck::cast_slice(ids));
        data[buf + 4 * n..buf + 8 * n].copy_from_slice(bytemuck::cast_slice(&logits[..n]));
        self.run_sample(n, lse)
    }

    fn run_sample(&mut self, n: usize, lse: f32) -> Result<Step, SamplerError> {
        let ms = self.deadline_ms;
        let r = self.call("kiln_sample", ms, |i| {
            let buf = i.buf as i32;
            i.sample.call(&mut i.store, (buf, n as i32, lse))
        })?;
        let n_vocab = self.vocab.n_vocab();
        let mask_active = std::mem::take(&mut self.mask_active);
        match r {
            -1 => Ok(Step::Stop),
            t if t >= 0 && (t as usize) < n_vocab => {
                if mask_active && !mask_allows(&self.mask_words, t as u32) {
                    return Err(self.fail(Cause::Abi(format!(
                        "kiln_sample chose token {t}, which its mask disallows"
                    ))));
                }
                Ok(Step::Token(t as u32))
            }
            t if t >= 0 => Err(self.fail(Cause::Abi(format!(
                "kiln_sample returned token {t}, outside 0..{n_vocab}"
            )))),
            code => {
                let message = match self.inner.as_mut() {
                    Some(i) => std::mem::take(&mut i.store.data_mut().error),
                    None => String::new(),
                };
                Err(self.fail(Cause::Module {
                    call: "kiln_sample",
                    code,
                    message,
                }))
            }
        }
    }

    /// One step from a full row, whatever the view: the mask (when the module has one) sets
    /// disallowed logits to −∞, then the row goes in whole or as its top N.
    pub fn sample_row(&mut self, logits: &mut [f32]) -> Result<Step, SamplerError> {
        if let Some(mask) = self.mask()? {
            if !super::apply_mask(mask, logits) {
                return Err(self.fail(Cause::NothingAllowed));
            }
        }
        match self.view() {
            View::Full => self.sample_full(logits),
            View::TopN(n) => {
                let n = n.min(logits.len()).max(1);
                let mut ids = vec![0i32; n];
                let mut vals = vec![0f32; n];
                let mut scratch = kiln_sdk::model::select::TopNScratch::default();
                kiln_sdk::model::select::top_n(logits, &mut ids, &mut vals, &mut scratch);
                let lse = kiln_sdk::model::select::log_sum_exp(logits);
                self.sample_top(&ids, &vals, lse)
            }
        }
    }
}
