//! Kernels compiled at run time by NVRTC for the device's exact architecture, and cached on
//! disk (key: source, options, architecture and NVRTC version), so that building Kiln needs no
//! CUDA toolkit and a second start compiles nothing.
//!
//! NVRTC is found by its usual library names (`libnvrtc.so.13`, ...), or at the path in
//! `$KILN_NVRTC`; the cache lives in `$KILN_CUDA_CACHE`, else `$XDG_CACHE_HOME/kiln/cuda`, else
//! `~/.cache/kiln/cuda`.

use crate::{CudaError, Result};
use cudarc::nvrtc::sys;
use sha2::{Digest, Sha256};
use std::ffi::{c_char, CString};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// Loads `$KILN_NVRTC` (once) so that the loader's lookup by name finds it.
fn preload() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        if let Some(p) = std::env::var_os("KILN_NVRTC") {
            // SAFETY: loading NVRTC runs its initialisers; the user named this library. It is
            // kept loaded for the life of the process, so the loader matches its soname.
            // NVRTC opens its builtins library by name at compile time: load the one beside it
            // first (it is found by its soname then).
            let p = PathBuf::from(p);
            let mut libs: Vec<PathBuf> = p
                .parent()
                .and_then(|d| std::fs::read_dir(d).ok())
                .into_iter()
                .flatten()
                .flatten()
                .map(|e| e.path())
                .filter(|f| {
                    f.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with("libnvrtc-builtins.so"))
                })
                .collect();
            libs.push(p);
            #[cfg(unix)]
            for l in libs {
                unsafe {
                    use libloading::os::unix::{Library, RTLD_GLOBAL, RTLD_NOW};
                    if let Ok(lib) = Library::open(Some(&l), RTLD_NOW | RTLD_GLOBAL) {
                        std::mem::forget(lib);
                    }
                }
            }
        }
    });
}

/// Whether NVRTC can be loaded.
pub fn present() -> bool {
    preload();
    // SAFETY: only tries to open the library.
    unsafe { sys::is_culib_present() }
}

/// NVRTC's version (major, minor).
pub fn version() -> Result<(i32, i32)> {
    if !present() {
        return Err(CudaError::msg("NVRTC (libnvrtc) not found"));
    }
    let (mut a, mut b) = (0, 0);
    // SAFETY: out-pointers to locals.
    let r = unsafe { sys::nvrtcVersion(&mut a, &mut b) };
    if r != sys::nvrtcResult::NVRTC_SUCCESS {
        return Err(CudaError::msg(format!("nvrtcVersion: {r:?}")));
    }
    Ok((a, b))
}

/// Where compiled kernels are cached.
pub fn cache_dir() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("KILN_CUDA_CACHE") {
        return Some(PathBuf::from(p));
    }
    if let Some(p) = std::env::var_os("XDG_CACHE_HOME") {
        return Some(PathBuf::from(p).join("kiln").join("cuda"));
    }
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache").join("kiln").join("cuda"))
}

/// Compiler options for `arch` (`sm_90`, ...). `KILN_CUDA_LINEINFO=1` adds source lines for
/// profilers (they more than double the cubin: it embeds the PTX).
///
/// `--fmad=false`: the compiler may not fuse a multiply and an add on its own. Whether it
/// would differs between instantiations of one template (a kernel for 1 row and one for 16
/// could round the same expression differently), which would break batch invariance; the
/// kernels write `fmaf` where they want one.
fn options(arch: &str) -> Vec<String> {
    let mut o = vec![
        format!("--gpu-architecture={arch}"),
        "--std=c++17".into(),
        "--device-as-default-execution-space".into(),
        "--fmad=false".into(),
    ];
    if std::env::var("KILN_CUDA_LINEINFO").as_deref() == Ok("1") {
        o.push("-lineinfo".into());
    }
    o
}

/// Where the cubin of `src` for `arch` is cached in `dir` (None without NVRTC).
fn cache_path(dir: Option<&Path>, name: &str, src: &str, arch: &str) -> Option<PathBuf> {
    let (maj, min) = version().ok()?;
    let mut h = Sha256::new();
    h.update(src.as_bytes());
    for o in &options(arch) {
        h.update(o.as_bytes());
        h.update([0]);
    }
    h.update(format!("nvrtc {maj}.{min}").as_bytes());
    let key: String = h
        .finalize()
        .iter()
        .take(12)
        .map(|b| format!("{b:02x}"))
        .collect();
    dir.map(|d| d.join(format!("{name}-{arch}-{key}.cubin")))
}

/// Whether a compiled `src` for `arch` is in the cache ([`cache_dir`]).
pub fn is_cached(name: &str, src: &str, arch: &str) -> bool {
    is_cached_in(cache_dir().as_deref(), name, src, arch)
}

/// Whether a compiled `src` for `arch` is in the cache directory `dir`.
pub fn is_cached_in(dir: Option<&Path>, name: &str, src: &str, arch: &str) -> bool {
    cache_path(dir, name, src, arch).is_some_and(|p| p.is_file())
}

/// Compiles `src` to a cubin for `arch`, or takes it from the cache ([`cache_dir`]). Returns
/// the cubin and whether it came from the cache.
pub fn compile_cached(name: &str, src: &str, arch: &str) -> Result<(Vec<u8>, bool)> {
    compile_cached_in(cache_dir().as_deref(), name, src, arch)
}

/// [`compile_cached`] with the cache in `dir` (None: no cache).
pub fn compile_cached_in(
    dir: Option<&Path>,
    name: &str,
    src: &str,
    arch: &str,
) -> Result<(Vec<u8>, bool)> {
    version()?;
    let opts = options(arch);
    let path = cache_path(dir, name, src, arch);
    if let Some(p) = &path {
        if let Ok(bin) = std::fs::read(p) {
            if !bin.is_empty() {
                return Ok((bin, true));
            }
        }
    }
    let bin = compile(name, src, &opts)?;
    if let Some(p) = &path {
        // A cache that cannot be written only costs the next start a compile.
        if let Some(dir) = p.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        let tmp = p.with_extension(format!("tmp{}", std::process::id()));
        if std::fs::write(&tmp, &bin).is_ok() {
            let _ = std::fs::rename(&tmp, p);
        }
    }
    Ok((bin, false))
}

/// Compiles every unit for `arch` (or takes it from the cache in `dir`), the units in
/// parallel on up to as many threads as the machine has cores (NVRTC compiles separate
/// programs concurrently; each compile holds a few hundred MB, so the threads are bounded).
/// Returns the cubins in the units' order and how many came from the cache.
pub fn compile_units_cached_in(
    dir: Option<&Path>,
    units: &[crate::sources::Unit],
    arch: &str,
) -> Result<(Vec<Vec<u8>>, usize)> {
    version()?;
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(units.len())
        .max(1);
    let next = std::sync::atomic::AtomicUsize::new(0);
    // One slot per unit: its cubin and whether it came from the cache.
    type Slot = std::sync::Mutex<Option<Result<(Vec<u8>, bool)>>>;
    let results: Vec<Slot> = units.iter().map(|_| std::sync::Mutex::new(None)).collect();
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some(u) = units.get(i) else { break };
                let r = compile_cached_in(dir, &u.name, &u.src, arch);
                if let Ok(mut slot) = results[i].lock() {
                    *slot = Some(r);
                }
            });
        }
    });
    let mut bins = Vec::with_capacity(units.len());
    let mut cached = 0;
    for (u, slot) in units.iter().zip(results) {
        let r =
            slot.into_inner().ok().flatten().unwrap_or_else(|| {
                Err(CudaError::msg(format!("unit {} was not compiled", u.name)))
            });
        let (bin, c) = r?;
        cached += c as usize;
        bins.push(bin);
    }
    Ok((bins, cached))
}

/// [`compile_units_cached_in`] with the cache in [`cache_dir`].
pub fn compile_units_cached(
    units: &[crate::sources::Unit],
    arch: &str,
) -> Result<(Vec<Vec<u8>>, usize)> {
    compile_units_cached_in(cache_dir().as_deref(), units, arch)
}

/// Compiles `src` for `arch` without the cache (for checks: every kernel must compile).
pub fn compile_for(name: &str, src: &str, arch: &str) -> Result<Vec<u8>> {
    version()?;
    compile(name, src, &options(arch))
}

fn compile(name: &str, src: &str, opts: &[String]) -> Result<Vec<u8>> {
    let csrc = CString::new(src).map_err(|_| CudaError::msg("kernel source holds a NUL"))?;
    let cname = CString::new(name).map_err(|_| CudaError::msg("kernel name holds a NUL"))?;
    let err = |what: &str, r: sys::nvrtcResult| CudaError::msg(format!("{what}: {r:?}"));
    let mut prog: sys::nvrtcProgram = std::ptr::null_mut();
    // SAFETY: valid C strings; no headers.
    let r = unsafe {
        sys::nvrtcCreateProgram(
            &mut prog,
            csrc.as_ptr(),
            cname.as_ptr(),
            0,
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    if r != sys::nvrtcResult::NVRTC_SUCCESS {
        return Err(err("nvrtcCreateProgram", r));
    }
    struct Prog(sys::nvrtcProgram);
    impl Drop for Prog {
        fn drop(&mut self) {
            // SAFETY: created above, destroyed once.
            unsafe {
                let _ = sys::nvrtcDestroyProgram(&mut self.0);
            }
        }
    }
    let prog = Prog(prog);
    let copts: Vec<CString> = opts
        .iter()
        .map(|o| CString::new(o.as_str()).unwrap_or_default())
        .collect();
    let ptrs: Vec<*const c_char> = copts.iter().map(|c| c.as_ptr()).collect();
    // SAFETY: valid program and option strings.
    let r = unsafe { sys::nvrtcCompileProgram(prog.0, ptrs.len() as i32, ptrs.as_ptr()) };
    if r != sys::nvrtcResult::NVRTC_SUCCESS {
        let mut n = 0usize;
        // SAFETY: valid program; the log buffer has the size NVRTC reports.
        let log = unsafe {
            sys::nvrtcGetProgramLogSize(prog.0, &mut n);
            let mut buf = vec![0u8; n.max(1)];
            sys::nvrtcGetProgramLog(prog.0, buf.as_mut_ptr() as *mut c_char);
            String::from_utf8_lossy(&buf[..n.saturating_sub(1)]).into_owned()
        };
        return Err(CudaError::msg(format!(
            "NVRTC could not compile {name}: {r:?}\n{log}"
        )));
    }
    let mut n = 0usize;
    // SAFETY: valid program; the buffer has the size NVRTC reports.
    unsafe {
        let r = sys::nvrtcGetCUBINSize(prog.0, &mut n);
        if r != sys::nvrtcResult::NVRTC_SUCCESS {
            return Err(err("nvrtcGetCUBINSize", r));
        }
        let mut bin = vec![0u8; n];
        let r = sys::nvrtcGetCUBIN(prog.0, bin.as_mut_ptr() as *mut c_char);
        if r != sys::nvrtcResult::NVRTC_SUCCESS {
            return Err(err("nvrtcGetCUBIN", r));
        }
        Ok(bin)
    }
}
