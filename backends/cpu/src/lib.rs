//! Kiln's CPU backend: a `cdylib` exporting the Kiln backend ABI.
//!
//! [`kernels`] holds the SIMD quantized dot products, matmul and thread pool; [`ops`] maps the
//! SDK's model operations onto them; this file describes the backend and exports it.

mod attend;
pub mod kernels;
pub mod ops;
pub mod vexp;

use kiln_sdk::backend::{Backend, BackendOptions, DeviceInfo, Result, Score};
use kiln_sdk::export_backend;
use kiln_sdk::gguf::Gguf;
use kiln_sdk::model::TransformerModel;
use kiln_sdk::quant::GgmlType;
use ops::CpuOps;
use std::sync::Arc;

/// The CPU backend.
pub struct CpuBackend {
    ops: Arc<CpuOps>,
}

fn cpu_name() -> String {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = info
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|| std::env::consts::ARCH.to_string());
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    format!("{model} ({cores} threads, {})", kernels::simd_level())
}

fn meminfo(key: &str) -> u64 {
    let info = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    info.lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

impl Backend for CpuBackend {
    type Model = TransformerModel<CpuOps>;
    const NAME: &'static str = "cpu";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    const DESCRIPTION: &'static str = "portable CPU backend: SIMD quantized kernels, f16 KV cache";

    fn devices() -> Vec<DeviceInfo> {
        vec![DeviceInfo {
            name: cpu_name(),
            is_gpu: false,
            total_memory: meminfo("MemTotal:"),
            free_memory: meminfo("MemAvailable:"),
        }]
    }

    fn score() -> Score {
        let level = kernels::simd_level();
        let score = if level == "scalar" { 50 } else { 100 };
        Score {
            score,
            reason: format!("runs anywhere; {level} kernels"),
        }
    }

    fn supports_type(ty: GgmlType) -> bool {
        kernels::supports(ty)
    }

    fn create(opts: &BackendOptions) -> Result<Self> {
        Ok(CpuBackend {
            ops: Arc::new(CpuOps::new(opts.n_threads as usize)),
        })
    }

    fn load_model(&self, gguf: &Gguf<'static>) -> Result<Self::Model> {
        TransformerModel::load(self.ops.clone(), gguf)
    }
}

export_backend!(CpuBackend);
