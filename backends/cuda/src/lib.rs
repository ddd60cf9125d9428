//! Kiln's CUDA backend: a `cdylib` exporting the Kiln backend ABI.
//!
//! Weights stay quantized on the device in their GGUF layout; [`ops`] implements the SDK's
//! model operations with the kernels of `kernels/` (compiled by NVRTC for the device, cached
//! on disk), so every architecture of the SDK runs here. Decode steps are captured once as
//! CUDA graphs and replayed. On a machine without a driver, NVRTC or a GPU of compute
//! capability 8.0+, the backend scores 0 and says why, and the host uses another.

pub mod ops;

use kiln_cuda::gpu;
use kiln_sdk::backend::{Backend, BackendError, BackendOptions, DeviceInfo, Result, Score};
use kiln_sdk::export_backend;
use kiln_sdk::gguf::Gguf;
use kiln_sdk::model::TransformerModel;
use kiln_sdk::quant::GgmlType;
use ops::CudaOps;
use std::sync::Arc;

/// The CUDA backend.
pub struct CudaBackend {
    ops: Arc<CudaOps>,
}

/// The device this process uses: `$KILN_CUDA_DEVICE`, else 0 (an unparsable variable gives
/// an ordinal no machine has, so the backend refuses and says why).
pub fn device_ordinal() -> usize {
    device_for(0).unwrap_or(usize::MAX)
}

/// `$KILN_CUDA_DEVICE` if set, else `asked` (the host's device index); an error names a value
/// that is not a device index.
fn device_for(asked: usize) -> std::result::Result<usize, String> {
    match std::env::var("KILN_CUDA_DEVICE") {
        Ok(v) => v.trim().parse().map_err(|_| {
            format!(
                "KILN_CUDA_DEVICE={:?} is not a device index",
                v.chars().take(40).collect::<String>()
            )
        }),
        Err(_) => Ok(asked),
    }
}

/// Why this machine cannot run the backend on device `ordinal`, if it cannot.
fn unusable_on(ordinal: std::result::Result<usize, String>) -> Option<String> {
    let ordinal = match ordinal {
        Ok(o) => o,
        Err(why) => return Some(why),
    };
    let devs = match gpu::devices() {
        Ok(d) => d,
        Err(e) => return Some(e.to_string()),
    };
    let Some(d) = devs.get(ordinal) else {
        return Some(format!("no CUDA device {ordinal} ({} found)", devs.len()));
    };
    if d.cc.0 < 8 {
        return Some(format!(
            "{} has compute capability {}.{}; this backend needs 8.0 or later",
            d.name, d.cc.0, d.cc.1
        ));
    }
    if !kiln_cuda::nvrtc::present() {
        return Some(
            "NVRTC (libnvrtc.so) not found: install the CUDA runtime compiler, or point \
             KILN_NVRTC at it"
                .into(),
        );
    }
    None
}

impl Backend for CudaBackend {
    type Model = TransformerModel<CudaOps>;
    const NAME: &'static str = "cuda";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    const DESCRIPTION: &'static str =
        "NVIDIA GPUs (compute capability 8.0+): quantized GGUF weights, NVRTC kernels, CUDA graphs";

    fn devices() -> Vec<DeviceInfo> {
        gpu::devices()
            .unwrap_or_default()
            .into_iter()
            .map(|d| DeviceInfo {
                name: format!("{} (sm_{}{})", d.name, d.cc.0, d.cc.1),
                is_gpu: true,
                total_memory: d.total_memory,
                free_memory: 0,
            })
            .collect()
    }

    fn score() -> Score {
        match unusable_on(device_for(0)) {
            Some(reason) => Score { score: 0, reason },
            None => {
                let d = gpu::devices()
                    .ok()
                    .and_then(|v| v.into_iter().nth(device_ordinal()));
                Score {
                    score: 300,
                    reason: d.map_or_else(
                        || "CUDA GPU".to_string(),
                        |d| format!("{} (sm_{}{}, {} SMs)", d.name, d.cc.0, d.cc.1, d.sms),
                    ),
                }
            }
        }
    }

    fn supports_type(ty: GgmlType) -> bool {
        ops::kernel_type(ty).is_some()
    }

    fn create(opts: &BackendOptions) -> Result<Self> {
        let ordinal = device_for(opts.device as usize);
        if let Some(why) = unusable_on(ordinal.clone()) {
            return Err(BackendError::unsupported(why));
        }
        let ordinal = ordinal.map_err(BackendError::unsupported)?;
        Ok(CudaBackend {
            ops: Arc::new(CudaOps::new(ordinal)?),
        })
    }

    fn load_model(&self, gguf: &Gguf<'static>) -> Result<Self::Model> {
        TransformerModel::load(self.ops.clone(), gguf)
    }
}

export_backend!(CudaBackend);
