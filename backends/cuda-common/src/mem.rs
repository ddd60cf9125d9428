//! Device buffers, pinned host buffers and streams (RAII over the driver's handles).

use crate::{DriverResultExt, Result};
use cudarc::driver::{result, sys};
use std::ffi::c_void;

/// Device memory, freed on drop.
pub struct DeviceBuffer {
    ptr: sys::CUdeviceptr,
    bytes: usize,
    ctx: sys::CUcontext,
}

// SAFETY: a device pointer is plain data; the driver may be called from any thread.
unsafe impl Send for DeviceBuffer {}
unsafe impl Sync for DeviceBuffer {}

impl DeviceBuffer {
    /// Allocates `bytes` (at least 1) on the current context's device.
    pub fn alloc(bytes: usize) -> Result<DeviceBuffer> {
        let ctx = result::ctx::get_current()
            .ctx("cuCtxGetCurrent")?
            .ok_or_else(|| crate::CudaError::msg("no current CUDA context"))?;
        // SAFETY: plain allocation; freed in `Drop`.
        let ptr = unsafe { result::malloc_sync(bytes.max(1)) }.ctx("cuMemAlloc")?;
        Ok(DeviceBuffer { ptr, bytes, ctx })
    }

    /// Allocates and fills with zeros.
    pub fn zeroed(bytes: usize) -> Result<DeviceBuffer> {
        let b = Self::alloc(bytes)?;
        // SAFETY: `b` owns `bytes` bytes.
        unsafe { result::memset_d8_sync(b.ptr, 0, bytes.max(1)) }.ctx("cuMemsetD8")?;
        Ok(b)
    }

    /// Allocates and copies `data` in (synchronously).
    pub fn from_host(data: &[u8]) -> Result<DeviceBuffer> {
        let b = Self::alloc(data.len())?;
        // SAFETY: `b` holds `data.len()` bytes.
        unsafe { result::memcpy_htod_sync(b.ptr, data) }.ctx("cuMemcpyHtoD")?;
        Ok(b)
    }

    /// The device address.
    pub fn ptr(&self) -> sys::CUdeviceptr {
        self.ptr
    }

    /// Size in bytes.
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

impl Drop for DeviceBuffer {
    fn drop(&mut self) {
        // SAFETY: allocated by `alloc` in `ctx`, freed once.
        unsafe {
            let _ = result::ctx::set_current(self.ctx);
            let _ = result::free_sync(self.ptr);
        }
    }
}

/// Page-locked host memory (for asynchronous copies and graph memcpy nodes), freed on drop.
pub struct PinnedBuffer {
    ptr: *mut u8,
    bytes: usize,
}

// SAFETY: plain host memory, owned.
unsafe impl Send for PinnedBuffer {}
unsafe impl Sync for PinnedBuffer {}

impl PinnedBuffer {
    /// Allocates `bytes` (at least 1) of zeroed pinned memory.
    pub fn alloc(bytes: usize) -> Result<PinnedBuffer> {
        // SAFETY: freed in `Drop`.
        let ptr = unsafe { result::malloc_host(bytes.max(1), 0) }.ctx("cuMemHostAlloc")? as *mut u8;
        // SAFETY: `ptr` holds `bytes` bytes.
        unsafe { std::ptr::write_bytes(ptr, 0, bytes.max(1)) };
        Ok(PinnedBuffer { ptr, bytes })
    }

    /// The bytes.
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: owned allocation of `bytes` bytes.
        unsafe { std::slice::from_raw_parts(self.ptr, self.bytes) }
    }

    /// The bytes, mutably.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: owned allocation of `bytes` bytes.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.bytes) }
    }

    /// The host address.
    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr
    }

    /// Size in bytes.
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

impl Drop for PinnedBuffer {
    fn drop(&mut self) {
        // SAFETY: allocated by `cuMemHostAlloc`, freed once.
        let _ = unsafe { result::free_host(self.ptr as *mut c_void) };
    }
}

/// A non-blocking stream, destroyed on drop.
pub struct Stream {
    raw: sys::CUstream,
}

// SAFETY: a stream handle may be used from any thread with its context current.
unsafe impl Send for Stream {}
unsafe impl Sync for Stream {}

impl Stream {
    /// Creates a stream on the current context.
    pub fn new() -> Result<Stream> {
        let raw = result::stream::create(result::stream::StreamKind::NonBlocking)
            .ctx("cuStreamCreate")?;
        Ok(Stream { raw })
    }

    /// The raw handle.
    pub fn raw(&self) -> sys::CUstream {
        self.raw
    }

    /// Waits for everything queued.
    pub fn sync(&self) -> Result<()> {
        // SAFETY: valid stream.
        unsafe { result::stream::synchronize(self.raw) }.ctx("cuStreamSynchronize")
    }

    /// Queues a host-to-device copy. `src` must stay valid and unchanged until the copy has
    /// run (pinned memory for a truly asynchronous copy).
    ///
    /// # Safety
    /// `dst` must hold `src.len()` bytes.
    pub unsafe fn htod(&self, dst: sys::CUdeviceptr, src: &[u8]) -> Result<()> {
        result::memcpy_htod_async(dst, src, self.raw).ctx("cuMemcpyHtoDAsync")
    }

    /// Queues a device-to-host copy.
    ///
    /// # Safety
    /// `src` must hold `dst.len()` bytes; `dst` must stay valid until the stream syncs.
    pub unsafe fn dtoh(&self, dst: &mut [u8], src: sys::CUdeviceptr) -> Result<()> {
        result::memcpy_dtoh_async(dst, src, self.raw).ctx("cuMemcpyDtoHAsync")
    }

    /// Queues a device-to-device copy.
    ///
    /// # Safety
    /// Both ranges must be valid for `bytes`.
    pub unsafe fn dtod(
        &self,
        dst: sys::CUdeviceptr,
        src: sys::CUdeviceptr,
        bytes: usize,
    ) -> Result<()> {
        result::memcpy_dtod_async(dst, src, bytes, self.raw).ctx("cuMemcpyDtoDAsync")
    }

    /// Queues a fill with zero bytes.
    ///
    /// # Safety
    /// `dst` must be valid for `bytes`.
    pub unsafe fn zero(&self, dst: sys::CUdeviceptr, bytes: usize) -> Result<()> {
        result::memset_d8_async(dst, 0, bytes, self.raw).ctx("cuMemsetD8Async")
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        // SAFETY: created in `new`, destroyed once.
        let _ = unsafe { result::stream::destroy(self.raw) };
    }
}
