//! What Kiln's CUDA backends share (the generic CUDA backend and the Blackwell FP4 one):
//!
//! - [`gpu`]: the driver, loaded at run time (no CUDA toolkit at build time), device discovery
//!   and the context;
//! - [`mem`]: device and pinned host buffers;
//! - [`nvrtc`]: kernels compiled at run time for the device's exact architecture, cached on
//!   disk;
//! - [`module`]: loaded kernels and their launch;
//! - [`graph`]: stream capture and replay of CUDA graphs;
//! - [`sources`]: the kernel sources of `kernels/`, embedded in the binary.
//!
//! cudarc panics when a library it needs is absent; every entry point here checks first.

pub mod gpu;
pub mod graph;
pub mod mem;
pub mod module;
pub mod nvrtc;
pub mod sources;

pub use cudarc::driver::sys;

/// An error of the CUDA driver or of NVRTC, with what was being done.
#[derive(Debug, Clone)]
pub struct CudaError {
    /// What failed, in words.
    pub message: String,
    /// The device ran out of memory.
    pub out_of_memory: bool,
}

impl std::fmt::Display for CudaError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for CudaError {}

impl CudaError {
    /// An error with a message.
    pub fn msg(message: impl Into<String>) -> Self {
        CudaError {
            message: message.into(),
            out_of_memory: false,
        }
    }
}

/// Result of this crate.
pub type Result<T> = std::result::Result<T, CudaError>;

/// Converts a driver error, naming the call.
pub(crate) fn drv(what: &str) -> impl FnOnce(cudarc::driver::DriverError) -> CudaError + '_ {
    move |e| {
        let name = e
            .error_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|_| format!("{:?}", e.0));
        CudaError {
            message: format!("{what}: {name}"),
            out_of_memory: e.0 == sys::CUresult::CUDA_ERROR_OUT_OF_MEMORY,
        }
    }
}

/// Extension to name the failing call of a driver result.
pub trait DriverResultExt<T> {
    /// Converts the error, naming the call.
    fn ctx(self, what: &str) -> Result<T>;
}

impl<T> DriverResultExt<T> for std::result::Result<T, cudarc::driver::DriverError> {
    fn ctx(self, what: &str) -> Result<T> {
        self.map_err(drv(what))
    }
}
