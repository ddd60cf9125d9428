//! A loaded kernel module: its functions by name, and their launch.

use crate::mem::Stream;
use crate::{CudaError, DriverResultExt, Result};
use cudarc::driver::{result, sys};
use std::collections::HashMap;
use std::ffi::{c_void, CString};

/// A kernel function handle.
#[derive(Clone, Copy, Debug)]
pub struct Func(sys::CUfunction);

// SAFETY: function handles may be launched from any thread with the context current.
unsafe impl Send for Func {}
unsafe impl Sync for Func {}

/// Loaded modules (one per compilation unit) and every function in them that was asked for.
pub struct Module {
    raw: Vec<sys::CUmodule>,
    funcs: HashMap<String, Func>,
}

// SAFETY: as `Func`.
unsafe impl Send for Module {}
unsafe impl Sync for Module {}

impl Module {
    /// Loads a cubin (on the current context) and looks up `names`.
    pub fn load(cubin: &[u8], names: &[String]) -> Result<Module> {
        Self::load_units(&[cubin], &[names.to_vec()])
    }

    /// Loads several cubins (on the current context) and looks up in each the names it
    /// defines (`names[i]` for `cubins[i]`).
    pub fn load_units<B: AsRef<[u8]>>(cubins: &[B], names: &[Vec<String>]) -> Result<Module> {
        let mut m = Module {
            raw: Vec::with_capacity(cubins.len()),
            funcs: HashMap::new(),
        };
        for (cubin, names) in cubins.iter().zip(names) {
            // SAFETY: a cubin image produced by NVRTC for this device.
            let raw =
                unsafe { result::module::load_data(cubin.as_ref().as_ptr() as *const c_void) }
                    .ctx("cuModuleLoadData")?;
            m.raw.push(raw);
            for n in names {
                let c = CString::new(n.as_str()).map_err(|_| CudaError::msg("bad kernel name"))?;
                // SAFETY: valid module.
                let f = unsafe { result::module::get_function(raw, c) }
                    .ctx(&format!("cuModuleGetFunction({n})"))?;
                m.funcs.insert(n.clone(), Func(f));
            }
        }
        Ok(m)
    }

    /// A function by name.
    pub fn func(&self, name: &str) -> Result<Func> {
        self.funcs
            .get(name)
            .copied()
            .ok_or_else(|| CudaError::msg(format!("no kernel named {name}")))
    }
}

impl Drop for Module {
    fn drop(&mut self) {
        for &raw in &self.raw {
            // SAFETY: loaded once, unloaded once.
            let _ = unsafe { result::module::unload(raw) };
        }
    }
}

/// A launch's kernel parameters: pointers to each argument's value, in order.
#[derive(Default)]
pub struct Args {
    vals: Vec<u64>,
}

impl Args {
    /// New empty list.
    pub fn new() -> Self {
        Args {
            vals: Vec::with_capacity(16),
        }
    }
    /// A device pointer or 64-bit integer.
    pub fn u64(mut self, v: u64) -> Self {
        self.vals.push(v);
        self
    }
    /// A 32-bit integer.
    pub fn i32(mut self, v: i32) -> Self {
        self.vals.push(v as u32 as u64);
        self
    }
    /// A 64-bit signed integer.
    pub fn i64(mut self, v: i64) -> Self {
        self.vals.push(v as u64);
        self
    }
    /// A float.
    pub fn f32(mut self, v: f32) -> Self {
        self.vals.push(v.to_bits() as u64);
        self
    }
}

/// Launches `f` on `s` with a grid, a block, dynamic shared memory and `args`.
///
/// Each argument occupies its own 8-byte slot; the driver reads only the parameter's own
/// size from it (little-endian), so 32-bit values sit in the slot's low bytes.
///
/// With `pdl` (compute capability 9.0 and up), the launch allows programmatic dependent
/// launch: the kernel may start before the previous kernel of the stream has finished, so it
/// must execute `griddepcontrol.wait` before it touches memory that kernel writes or reads
/// (the kernels of `kernels/` do, through `pdl_wait`).
///
/// # Safety
/// The arguments must match the kernel's parameters, and every pointer must be valid for
/// what the kernel does with it.
pub unsafe fn launch(
    f: Func,
    s: &Stream,
    grid: (u32, u32, u32),
    block: (u32, u32, u32),
    smem: u32,
    args: Args,
    pdl: bool,
) -> Result<()> {
    let mut vals = args.vals;
    let mut ptrs: Vec<*mut c_void> = vals
        .iter_mut()
        .map(|v| v as *mut u64 as *mut c_void)
        .collect();
    if grid.0 == 0 || grid.1 == 0 || grid.2 == 0 {
        return Ok(());
    }
    if !pdl {
        return result::launch_kernel(f.0, grid, block, smem, s.raw(), &mut ptrs)
            .ctx("cuLaunchKernel");
    }
    // SAFETY: plain C structs; zero is a valid value for every field of the union.
    let mut attr: sys::CUlaunchAttribute = unsafe { std::mem::zeroed() };
    attr.id = sys::CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION;
    attr.value.programmaticStreamSerializationAllowed = 1;
    let cfg = sys::CUlaunchConfig {
        gridDimX: grid.0,
        gridDimY: grid.1,
        gridDimZ: grid.2,
        blockDimX: block.0,
        blockDimY: block.1,
        blockDimZ: block.2,
        sharedMemBytes: smem,
        hStream: s.raw(),
        attrs: &mut attr,
        numAttrs: 1,
    };
    // SAFETY: `cfg`, `attr` and the parameter pointers outlive the call, which copies them.
    unsafe { sys::cuLaunchKernelEx(&cfg, f.0, ptrs.as_mut_ptr(), std::ptr::null_mut()) }
        .result()
        .ctx("cuLaunchKernelEx")
}
