//! Compute kernels of the CPU backend: quantized matrix products computed on the blocks
//! directly, f16 helpers for the KV cache, and the thread pool that runs them.
//!
//! # Design
//!
//! A matmul quantizes the activation rows once to 8 bits ([`quantize`]: a scale per 32 values
//! for the legacy block types, per 256 for the k-quants, plus scaled sums per 16 values), then
//! computes integer dot products against the weight blocks. Every weight type is described the
//! same way: per value an unsigned byte `u`, per group of 16 values a scale `ws` and an offset
//! `mw`, so that `w = ws * u + mw`; the offset term is `mw * sum(x)` over the group, which the
//! per-16 activation sums give directly. One row (`n == 1`, decoding) is a dot product straight
//! from the blocks; several rows (prompt batches) first unpack a chunk of weight rows to that
//! byte form and then run a register-tiled GEMM over all activation rows, so each weight byte
//! is decoded once per call. Work is split across threads by output rows.
//!
//! # Batch invariance
//!
//! The bits of `out[i * rows + r]` depend only on the weights, activation row `i` and the SIMD
//! level: not on `n`, on the row's position, on the other rows or on the thread count. A
//! sequence decoded alone and inside a batch therefore gets identical logits. This holds
//! because, per level and weight type, there is one arithmetic per (weight row, activation
//! row), which every path follows operation for operation:
//!
//! - Each activation row is quantized, and given the extras its kernels read (`-c * sum(q)`
//!   per 4 values, block sums per 32), by the same code whatever `n` is.
//! - The one-row ("decode") kernels define the order: which products go to which
//!   accumulator and in which order, how the offset terms are collected, and the final
//!   horizontal reduction (one helper everywhere). The GEMM micro-kernels apply exactly these
//!   operations to each (row, column) pair of their tile, from the unpacked bytes and scales
//!   (the unpackers produce the very values the decode kernels compute, which the tests
//!   check). Where a decode kernel keeps several accumulators per row for instruction-level
//!   parallelism (the legacy types on AVX-512, the float types), the micro-kernel computes
//!   them in separate passes over the values, so that its registers hold one or two
//!   accumulators per pair; the operations of each accumulator and their order stay the same.
//!   Types without a fused decode kernel at a level decode through the tiled kernel itself.
//! - Only explicit intrinsics are used (`fmadd` where a fused multiply-add is meant, separate
//!   `mul` and `add` otherwise); Rust never contracts float operations on its own.
//! - The scalar level sums per block as its one-row kernel does; float weights use one
//!   chunked summation per level for every `n`.
//!
//! Results still differ between SIMD levels (the tests bound that difference).
//!
//! SIMD levels ([`SimdLevel`]) are detected once at run time: AVX-512 (F/BW/VL/DQ/VNNI), AVX2
//! (with FMA and F16C) and a portable scalar fallback that every other target uses. The
//! environment variable `KILN_SIMD` (`scalar`, `avx2`, `avx512`), read once, caps the level;
//! [`matmul_with`] picks one explicitly (tests compare them).

mod float;
mod matmul;
mod pool;
mod quantize;
mod scalar;

#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;
#[cfg(test)]
mod tests;

pub use float::{axpy_f16, dot_f16_f32, dot_f32, f16_to_f32_slice, f32_to_f16_slice};
pub use matmul::{matmul, matmul_with, supports, KernelError, WeightMatrix};
pub use pool::ThreadPool;

use std::sync::OnceLock;

/// An instruction-set level the kernels can run at, from slowest to fastest.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SimdLevel {
    /// Portable Rust, no SIMD intrinsics.
    Scalar,
    /// x86-64 AVX2 with FMA and F16C.
    Avx2,
    /// x86-64 AVX-512 F/BW/VL/DQ with VNNI (plus everything [`SimdLevel::Avx2`] needs).
    Avx512,
}

impl SimdLevel {
    /// Every level, slowest first.
    pub const ALL: [SimdLevel; 3] = [SimdLevel::Scalar, SimdLevel::Avx2, SimdLevel::Avx512];

    /// The level's short name, as accepted by `KILN_SIMD` (the AVX-512 one is `avx512-vnni`).
    pub const fn name(self) -> &'static str {
        match self {
            SimdLevel::Scalar => "scalar",
            SimdLevel::Avx2 => "avx2",
            SimdLevel::Avx512 => "avx512-vnni",
        }
    }

    /// Whether this CPU can run the level's kernels.
    pub fn is_available(self) -> bool {
        self <= hardware_level()
    }

    /// The highest level this CPU supports, ignoring `KILN_SIMD`.
    pub fn detect() -> SimdLevel {
        hardware_level()
    }
}

fn hardware_level() -> SimdLevel {
    static HW: OnceLock<SimdLevel> = OnceLock::new();
    *HW.get_or_init(detect_hardware)
}

#[cfg(target_arch = "x86_64")]
fn detect_hardware() -> SimdLevel {
    use std::arch::is_x86_feature_detected as has;
    let avx2 = has!("avx2") && has!("fma") && has!("f16c") && has!("bmi2");
    if !avx2 {
        return SimdLevel::Scalar;
    }
    let avx512 = has!("avx512f")
        && has!("avx512bw")
        && has!("avx512vl")
        && has!("avx512dq")
        && has!("avx512vnni");
    if avx512 {
        SimdLevel::Avx512
    } else {
        SimdLevel::Avx2
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn detect_hardware() -> SimdLevel {
    SimdLevel::Scalar
}

/// The level used by [`matmul`] and the f16 helpers: the hardware level, capped by the
/// `KILN_SIMD` environment variable (read once; unknown values are ignored).
pub fn active_level() -> SimdLevel {
    static ACTIVE: OnceLock<SimdLevel> = OnceLock::new();
    *ACTIVE.get_or_init(|| {
        let hw = hardware_level();
        let cap = match std::env::var("KILN_SIMD").ok().as_deref().map(str::trim) {
            Some("scalar") => SimdLevel::Scalar,
            Some("avx2") => SimdLevel::Avx2,
            Some("avx512") | Some("avx512-vnni") => SimdLevel::Avx512,
            _ => hw,
        };
        cap.min(hw)
    })
}

/// The name of the active SIMD level (`"avx512-vnni"`, `"avx2"` or `"scalar"`), for logs.
pub fn simd_level() -> &'static str {
    active_level().name()
}
