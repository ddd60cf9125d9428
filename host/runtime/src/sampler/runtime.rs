//! The process-wide wasmtime engine for samplers, and loading a module: size check, WAT text
//! turned into binary, the shape check ([`shape`](super::shape)), compilation through an
//! in-process and an on-disk cache, validation against ABI version 1, and the `InstancePre`
//! every sequence instantiates from.
//!
//! The engine uses epoch interruption (a background thread ticks every millisecond while
//! any instance exists) and the pooling allocator with [`MAX_INSTANCES`] slots. Each memory
//! slot reserves 4 GiB of address space (plus a 2 MiB guard) so that compiled code needs no
//! bounds checks and out-of-bounds accesses, even speculative ones, hit unmapped pages:
//! about 1 TiB of reserved, never committed, address space in all (measured: 15–20% faster
//! steps than explicit bounds checks with Spectre mitigation). Where the address space is
//! limited (`ulimit -v`), the engine falls back to compact 64 MiB slots with bounds checks
//! (256 of them, else 16).

use super::instance::{self, SeqState};
use super::{
    escape_module_text, shape, Cause, SamplerError, ABI_VERSION, DEFAULT_MEMORY_LIMIT,
    INIT_DEADLINE_MS, MAX_MODULE_BYTES,
};
use super::{Vocab, TABLE_ELEMENTS_LIMIT};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use wasmtime::{
    Config, Engine, ExternType, FuncType, InstanceAllocationStrategy, InstancePre, Linker, Module,
    OptLevel, PoolingAllocationConfig, ValType,
};

/// Instances (and memories) that may exist at once in the process.
pub const MAX_INSTANCES: u32 = 256;
/// Slots of the last-resort layout (for a small `ulimit -v`).
const FEW_INSTANCES: u32 = 16;
/// Address space of a memory slot in the guarded layout (no bounds checks needed).
const GUARDED_RESERVATION: u64 = 4 << 30;
/// Guard bytes after a slot in the guarded layout.
const GUARDED_GUARD: u64 = 2 << 20;
/// Guard bytes after a slot in the compact layout.
const COMPACT_GUARD: u64 = 64 << 10;
/// The wasmtime version, for the names of cached compiled modules.
const WASMTIME_VERSION: &str = env!("KILN_WASMTIME_VERSION");

/// The engine, created on first use, with the tag of its memory layout for the names of
/// cached code ("" for the guarded layout); or why it could not be created.
static ENGINE: OnceLock<Result<(Engine, &'static str), String>> = OnceLock::new();
/// Live instances; the epoch ticker sleeps while there are none.
static LIVE: AtomicUsize = AtomicUsize::new(0);
/// The ticker thread, started with the engine.
static TICKER: OnceLock<std::thread::Thread> = OnceLock::new();
/// Compiled modules by the sha256 of their bytes.
static COMPILED: OnceLock<Mutex<HashMap<[u8; 32], Module>>> = OnceLock::new();

/// An engine configuration: epoch interruption, the pooling allocator with `slots` slots of
/// `reservation` bytes followed by `guard` bytes.
fn config(slots: u32, reservation: u64, guard: u64) -> Config {
    let mut pool = PoolingAllocationConfig::new();
    pool.total_core_instances(slots)
        .total_memories(slots)
        .total_tables(slots)
        .max_memories_per_module(1)
        .max_tables_per_module(1)
        .table_elements(TABLE_ELEMENTS_LIMIT)
        .max_memory_size(DEFAULT_MEMORY_LIMIT)
        .max_unused_warm_slots(16);
    let mut cfg = Config::new();
    cfg.epoch_interruption(true)
        .cranelift_opt_level(OptLevel::Speed)
        .memory_reservation(reservation)
        .memory_guard_size(guard)
        .memory_may_move(false)
        .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    cfg
}

/// The shared engine, creating it (and its epoch ticker) on first use.
pub fn engine() -> Result<&'static Engine, String> {
    let r = ENGINE.get_or_init(|| {
        // Fallbacks where the address space is limited: compact slots, then fewer of them.
        let layouts = [
            (MAX_INSTANCES, GUARDED_RESERVATION, GUARDED_GUARD, ""),
            (
                MAX_INSTANCES,
                DEFAULT_MEMORY_LIMIT as u64,
                COMPACT_GUARD,
                "-compact",
            ),
            (
                FEW_INSTANCES,
                DEFAULT_MEMORY_LIMIT as u64,
                COMPACT_GUARD,
                "-compact",
            ),
        ];
        let mut last = String::new();
        let mut engine = None;
        for (slots, reservation, guard, tag) in layouts {
            match Engine::new(&config(slots, reservation, guard)) {
                Ok(e) => {
                    engine = Some((e, tag));
                    break;
                }
                Err(e) => {
                    tracing::info!("{slots} sampler slots of {reservation} bytes unavailable: {e}");
                    last = e.to_string();
                }
            }
        }
        let (engine, tag) =
            engine.ok_or_else(|| format!("cannot start the WebAssembly engine: {last}"))?;
        let ticking = engine.clone();
        let spawned = std::thread::Builder::new()
            .name("kiln-sampler-epoch".into())
            .spawn(move || loop {
                if LIVE.load(Ordering::Acquire) == 0 {
                    std::thread::park_timeout(Duration::from_millis(100));
                    continue;
                }
                std::thread::sleep(Duration::from_millis(1));
                ticking.increment_epoch();
            });
        match spawned {
            Ok(handle) => {
                let _ = TICKER.set(handle.thread().clone());
            }
            Err(e) => return Err(format!("cannot start the sampler deadline thread: {e}")),
        }
        Ok((engine, tag))
    });
    r.as_ref().map(|(e, _)| e).map_err(Clone::clone)
}

/// The memory layout's tag in cache file names.
fn layout_tag() -> &'static str {
    ENGINE
        .get()
        .and_then(|r| r.as_ref().ok())
        .map_or("", |(_, t)| t)
}

/// Counts a live instance (so deadlines tick); the guard uncounts it when dropped.
pub(crate) struct LiveGuard(());

impl LiveGuard {
    pub(crate) fn new() -> LiveGuard {
        if LIVE.fetch_add(1, Ordering::AcqRel) == 0 {
            if let Some(t) = TICKER.get() {
                t.unpark();
            }
        }
        LiveGuard(())
    }
}

impl Drop for LiveGuard {
    fn drop(&mut self) {
        LIVE.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A validated sampler module, compiled and pre-linked, ready to serve sequences.
pub struct SamplerModule {
    /// Its name (built-in name or file name).
    name: String,
    /// Pre-linked instantiation.
    pub(crate) pre: InstancePre<SeqState>,
    /// Whether it exports `kiln_mask`.
    has_mask: bool,
    /// Whether it exports `kiln_accept_prompt` (ABI 1.1).
    has_accept_prompt: bool,
}

impl std::fmt::Debug for SamplerModule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SamplerModule")
            .field("name", &self.name)
            .field("has_mask", &self.has_mask)
            .field("has_accept_prompt", &self.has_accept_prompt)
            .finish()
    }
}

/// The exports of ABI version 1 (1.1 adds `kiln_accept_prompt`), their signatures, and
/// whether they are required.
const EXPORTS: &[(&str, &str, bool)] = &[
    ("kiln_abi_version", "() -> (i32)", true),
    ("kiln_alloc", "(i32) -> (i32)", true),
    ("kiln_init", "(i32, i32, i64, i32) -> (i32)", true),
    ("kiln_sample", "(i32, i32, f32) -> (i32)", true),
    ("kiln_accept", "(i32) -> ()", true),
    ("kiln_reset", "() -> ()", true),
    ("kiln_mask", "() -> (i32)", false),
    ("kiln_accept_prompt", "(i32, i32) -> ()", false),
];

/// The optional exports a module has.
#[derive(Clone, Copy, Debug, Default)]
struct Optional {
    mask: bool,
    accept_prompt: bool,
}

/// The imports of module `kiln` and their signatures.
const IMPORTS: &[(&str, &str)] = &[
    ("n_vocab", "() -> (i32)"),
    ("token_bytes", "(i32, i32, i32) -> (i32)"),
    ("special_token", "(i32) -> (i32)"),
    ("is_eog", "(i32) -> (i32)"),
    ("seq_len", "() -> (i32)"),
    ("seq_tokens", "(i32, i32, i32) -> (i32)"),
    ("set_error", "(i32, i32) -> ()"),
];

fn val_name(v: &ValType) -> &'static str {
    match v {
        ValType::I32 => "i32",
        ValType::I64 => "i64",
        ValType::F32 => "f32",
        ValType::F64 => "f64",
        ValType::V128 => "v128",
        ValType::Ref(_) => "ref",
    }
}

/// A function type written as `(i32, i32) -> (i32)`.
fn signature(f: &FuncType) -> String {
    let list = |it: &mut dyn Iterator<Item = ValType>| {
        it.map(|v| val_name(&v)).collect::<Vec<_>>().join(", ")
    };
    format!(
        "({}) -> ({})",
        list(&mut f.params()),
        list(&mut f.results())
    )
}

fn kind_name(t: &ExternType) -> &'static str {
    match t {
        ExternType::Func(_) => "a function",
        ExternType::Global(_) => "a global",
        ExternType::Table(_) => "a table",
        ExternType::Memory(_) => "a memory",
        ExternType::Tag(_) => "a tag",
    }
}

/// Checks a compiled module's imports and exports against the ABI (not yet its version).
fn check_interface(module: &Module) -> Result<Optional, String> {
    for imp in module.imports() {
        // Names come from the module: escaped (and cut) before they reach a message.
        let what = escape_module_text(&format!("{}.{}", imp.module(), imp.name()));
        let known = IMPORTS
            .iter()
            .find(|(n, _)| imp.module() == "kiln" && *n == imp.name());
        let Some((_, want)) = known else {
            return Err(format!(
                "it imports `{what}`, which is not allowed (only functions of module `kiln` listed in \
                 the ABI: {})",
                IMPORTS.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", ")
            ));
        };
        match imp.ty() {
            ExternType::Func(f) if signature(&f) == *want => {}
            ExternType::Func(f) => {
                return Err(format!(
                    "its import `{what}` has type {}, the ABI's is {want}",
                    signature(&f)
                ))
            }
            other => {
                return Err(format!(
                    "its import `{what}` is {}, not a function",
                    kind_name(&other)
                ))
            }
        }
    }
    match module.get_export("memory") {
        Some(ExternType::Memory(m)) if m.is_64() => {
            return Err(
                "its exported `memory` is a 64-bit memory; the ABI needs a 32-bit one".into(),
            )
        }
        Some(ExternType::Memory(m)) if m.is_shared() => {
            return Err("its exported `memory` is shared; the ABI needs an unshared one".into())
        }
        Some(ExternType::Memory(_)) => {}
        Some(other) => {
            return Err(format!(
                "its export `memory` is {}, not a memory",
                kind_name(&other)
            ))
        }
        None => return Err("it does not export `memory`".into()),
    }
    let mut opt = Optional::default();
    for &(name, want, required) in EXPORTS {
        match module.get_export(name) {
            Some(ExternType::Func(f)) if signature(&f) == want => {
                opt.mask |= name == "kiln_mask";
                opt.accept_prompt |= name == "kiln_accept_prompt";
            }
            Some(ExternType::Func(f)) => {
                return Err(format!(
                    "its export `{name}` has type {}, the ABI's is {want}",
                    signature(&f)
                ))
            }
            Some(other) => {
                return Err(format!(
                    "its export `{name}` is {}, not a function",
                    kind_name(&other)
                ))
            }
            None if required => return Err(format!("it does not export `{name}` ({want})")),
            None => {}
        }
    }
    Ok(opt)
}

/// Where compiled modules are cached: `$KILN_SAMPLER_CACHE`, else `~/.cache/kiln/samplers`.
fn cache_dir() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os("KILN_SAMPLER_CACHE").filter(|d| !d.is_empty()) {
        return Some(PathBuf::from(d));
    }
    let home = std::env::var_os("HOME").filter(|h| !h.is_empty())?;
    Some(PathBuf::from(home).join(".cache/kiln/samplers"))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Reads a cache file (compiled code followed by the sha256 of that code) and deserializes
/// it; None when absent, corrupt or made by an incompatible engine.
fn read_cached(engine: &Engine, path: &std::path::Path) -> Option<Module> {
    let data = std::fs::read(path).ok()?;
    let (code, sum) = data.split_at_checked(data.len().checked_sub(32)?)?;
    if Sha256::digest(code).as_slice() != sum {
        tracing::warn!("corrupt compiled sampler {}, recompiling", path.display());
        return None;
    }
    // SAFETY: the file was written by `write_cached` (the checksum matches), so it holds code
    // that this engine's `Module::serialize` produced; wasmtime checks that the engine's
    // version and settings are compatible.
    match unsafe { Module::deserialize(engine, code) } {
        Ok(m) => Some(m),
        Err(e) => {
            tracing::info!(
                "cached sampler {} unusable ({e}), recompiling",
                path.display()
            );
            None
        }
    }
}

/// Writes a cache file atomically (temporary file, then rename).
fn write_cached(module: &Module, path: &std::path::Path) -> std::io::Result<()> {
    let mut data = module
        .serialize()
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    let sum = Sha256::digest(&data);
    data.extend_from_slice(&sum);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    static N: AtomicUsize = AtomicUsize::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let tmp = path.with_extension(format!("tmp{}-{n}", std::process::id()));
    std::fs::write(&tmp, &data)?;
    std::fs::rename(&tmp, path).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

/// The compiled module of `bytes` from the cache file `path` (when it is valid), else
/// compiled and written there; the flag says whether it came from the file.
pub(crate) fn load_or_compile(
    engine: &Engine,
    bytes: &[u8],
    path: Option<&std::path::Path>,
) -> Result<(Module, bool), String> {
    if let Some(m) = path.and_then(|p| read_cached(engine, p)) {
        return Ok((m, true));
    }
    let m = Module::new(engine, bytes).map_err(|e| {
        format!(
            "it cannot be compiled as WebAssembly: {}",
            escape_module_text(&format!("{e:#}"))
        )
    })?;
    if let Some(p) = path {
        if let Err(e) = write_cached(&m, p) {
            tracing::warn!("cannot cache the compiled sampler at {}: {e}", p.display());
        }
    }
    Ok((m, false))
}

/// The name of the cache file of a module whose bytes hash to `hash`.
pub(crate) fn cache_file_name(hash: &[u8; 32]) -> String {
    format!("{}-{WASMTIME_VERSION}{}.cwasm", hex(hash), layout_tag())
}

/// The binary of a module given as binary or as WAT text; a WAT syntax error keeps its
/// message and position, without the quoted source line, escaped.
fn to_binary(bytes: &[u8]) -> Result<std::borrow::Cow<'_, [u8]>, String> {
    wat::parse_bytes(bytes).map_err(|e| {
        let text = e.to_string();
        let mut lines = text.lines();
        let message = lines.next().unwrap_or_default();
        let at = lines.find_map(|l| l.trim_start().strip_prefix("--> "));
        let what = match at {
            Some(at) => format!("{message} (at {})", at.trim()),
            None => message.to_string(),
        };
        format!(
            "it cannot be compiled as WebAssembly: {}",
            escape_module_text(&what)
        )
    })
}

/// The compiled module of `bytes`: from memory, from disk, or compiled (and cached).
fn compile(engine: &Engine, bytes: &[u8]) -> Result<Module, String> {
    let hash: [u8; 32] = Sha256::digest(bytes).into();
    let compiled = COMPILED.get_or_init(Default::default);
    if let Some(m) = compiled
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(&hash)
    {
        return Ok(m.clone());
    }
    let path = cache_dir().map(|d| d.join(cache_file_name(&hash)));
    let (module, _) = load_or_compile(engine, bytes, path.as_deref())?;
    compiled
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(hash, module.clone());
    Ok(module)
}

impl SamplerModule {
    /// Loads, validates and pre-links a sampler module (binary wasm, or WAT text); `name`
    /// names it in every message. Refuses a module that does not follow ABI version 1, or
    /// whose shape is past the [`shape`](super::shape) limits (checked before compiling).
    pub fn load(name: &str, bytes: &[u8]) -> Result<Arc<SamplerModule>, SamplerError> {
        let invalid = |m: String| SamplerError::new(name, Cause::Invalid(m));
        let too_big =
            |n: usize| format!("it has {n} bytes, more than the {MAX_MODULE_BYTES} allowed");
        if bytes.len() > MAX_MODULE_BYTES {
            return Err(invalid(too_big(bytes.len())));
        }
        let binary = to_binary(bytes).map_err(invalid)?;
        if binary.len() > MAX_MODULE_BYTES {
            return Err(invalid(too_big(binary.len())));
        }
        shape::check(&binary).map_err(invalid)?;
        let engine = engine().map_err(|e| SamplerError::new(name, Cause::Host(e)))?;
        let module = compile(engine, &binary).map_err(invalid)?;
        let optional = check_interface(&module).map_err(invalid)?;
        let mut linker: Linker<SeqState> = Linker::new(engine);
        instance::define_imports(&mut linker)
            .map_err(|e| SamplerError::new(name, Cause::Host(e.to_string())))?;
        let pre = linker.instantiate_pre(&module).map_err(|e| {
            invalid(format!(
                "it cannot be linked: {}",
                escape_module_text(&format!("{e:#}"))
            ))
        })?;
        let sm = Arc::new(SamplerModule {
            name: name.to_string(),
            pre,
            has_mask: optional.mask,
            has_accept_prompt: optional.accept_prompt,
        });
        // The version check needs an instance; it runs no user code but start functions and
        // `kiln_abi_version`, both under the init deadline.
        let version =
            instance::probe_version(&sm, Arc::new(Vocab::synthetic(0)), INIT_DEADLINE_MS)?;
        if version != ABI_VERSION {
            return Err(invalid(format!(
                "kiln_abi_version() returned {version}; this host implements {ABI_VERSION}"
            )));
        }
        Ok(sm)
    }

    /// Loads a sampler from a `.wasm` (or `.wat`) file.
    pub fn load_file(path: &std::path::Path) -> Result<Arc<SamplerModule>, SamplerError> {
        let name = path.display().to_string();
        let meta = std::fs::metadata(path).map_err(|e| {
            SamplerError::new(&name, Cause::Invalid(format!("cannot read the file: {e}")))
        })?;
        if meta.len() > MAX_MODULE_BYTES as u64 {
            return Err(SamplerError::new(
                &name,
                Cause::Invalid(format!(
                    "it has {} bytes, more than the {MAX_MODULE_BYTES} allowed",
                    meta.len()
                )),
            ));
        }
        let bytes = std::fs::read(path).map_err(|e| {
            SamplerError::new(&name, Cause::Invalid(format!("cannot read the file: {e}")))
        })?;
        Self::load(&name, &bytes)
    }

    /// The sampler's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether the module exports `kiln_mask` (a constraint).
    pub fn has_mask(&self) -> bool {
        self.has_mask
    }

    /// Whether the module takes a whole prompt in one call (`kiln_accept_prompt`, ABI 1.1).
    pub fn has_accept_prompt(&self) -> bool {
        self.has_accept_prompt
    }
}
