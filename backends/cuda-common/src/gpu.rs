//! The CUDA driver, loaded at run time, and one device's primary context.

use crate::{CudaError, DriverResultExt, Result};
use cudarc::driver::{result, sys};

/// Whether the driver library (libcuda) can be loaded on this machine.
pub fn driver_present() -> bool {
    // SAFETY: only tries to open the library.
    unsafe { sys::is_culib_present() }
}

/// What the host learns of a device.
#[derive(Clone, Debug)]
pub struct DeviceProps {
    /// Ordinal.
    pub ordinal: usize,
    /// Marketing name.
    pub name: String,
    /// Compute capability (major, minor).
    pub cc: (i32, i32),
    /// Memory in bytes.
    pub total_memory: u64,
    /// Multiprocessors.
    pub sms: i32,
}

/// Initialises the driver and lists the devices. Errors when libcuda is absent or fails.
pub fn devices() -> Result<Vec<DeviceProps>> {
    if !driver_present() {
        return Err(CudaError::msg("no CUDA driver (libcuda) on this machine"));
    }
    result::init().ctx("cuInit")?;
    let n = result::device::get_count().ctx("cuDeviceGetCount")?;
    let mut out = Vec::new();
    for i in 0..n {
        let dev = result::device::get(i).ctx("cuDeviceGet")?;
        let attr = |a| unsafe { result::device::get_attribute(dev, a) }.ctx("cuDeviceGetAttribute");
        use sys::CUdevice_attribute::*;
        out.push(DeviceProps {
            ordinal: i as usize,
            name: result::device::get_name(dev).ctx("cuDeviceGetName")?,
            cc: (
                attr(CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR)?,
                attr(CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR)?,
            ),
            // SAFETY: `dev` is a valid device handle.
            total_memory: unsafe { result::device::total_mem(dev) }.ctx("cuDeviceTotalMem")? as u64,
            sms: attr(CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)?,
        });
    }
    Ok(out)
}

/// One device's primary context. Every call into CUDA from a thread binds it first
/// ([`Gpu::bind`]). The context is retained for the life of the process (never released):
/// device buffers, modules and graphs may outlive any one `Gpu`, and freeing them needs the
/// context alive.
pub struct Gpu {
    ctx: sys::CUcontext,
    /// The device's properties.
    pub props: DeviceProps,
}

// SAFETY: a CUDA context may be used from any thread once made current there (`bind`).
unsafe impl Send for Gpu {}
unsafe impl Sync for Gpu {}

impl Gpu {
    /// Opens device `ordinal` (its primary context).
    pub fn open(ordinal: usize) -> Result<Gpu> {
        let all = devices()?;
        let props = all.get(ordinal).cloned().ok_or_else(|| {
            CudaError::msg(format!("no CUDA device {ordinal} ({} found)", all.len()))
        })?;
        let dev = result::device::get(ordinal as i32).ctx("cuDeviceGet")?;
        // SAFETY: `dev` is valid; the retained context lives as long as the process.
        let ctx = unsafe { result::primary_ctx::retain(dev) }.ctx("cuDevicePrimaryCtxRetain")?;
        let gpu = Gpu { ctx, props };
        gpu.bind()?;
        Ok(gpu)
    }

    /// Makes this device's context current on the calling thread.
    pub fn bind(&self) -> Result<()> {
        // SAFETY: the context is alive while `self` is.
        unsafe { result::ctx::set_current(self.ctx) }.ctx("cuCtxSetCurrent")
    }

    /// Free and total device memory, in bytes.
    pub fn mem_info(&self) -> Result<(u64, u64)> {
        self.bind()?;
        let (f, t) = result::mem_get_info().ctx("cuMemGetInfo")?;
        Ok((f as u64, t as u64))
    }

    /// `sm_XY` of the device (with `a` for the architecture-specific features of 9.0+ parts
    /// when `specific`).
    pub fn arch(&self) -> String {
        format!("sm_{}{}", self.props.cc.0, self.props.cc.1)
    }
}
