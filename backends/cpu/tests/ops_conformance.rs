//! The CPU backend's operations pass the SDK's per-op conformance check against the plain f32
//! reference, for every weight type the backend supports, at the SIMD level this machine runs
//! (`KILN_SIMD=avx2|scalar` checks the others).

use kiln_backend_cpu::kernels;
use kiln_backend_cpu::ops::CpuOps;
use kiln_sdk::conformance::ops::{check, OpsTolerance};
use kiln_sdk::quant::GgmlType;

const TYPES: [GgmlType; 14] = [
    GgmlType::F32,
    GgmlType::F16,
    GgmlType::BF16,
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
    GgmlType::Q8_0,
    GgmlType::Q2_K,
    GgmlType::Q3_K,
    GgmlType::Q4_K,
    GgmlType::Q5_K,
    GgmlType::Q6_K,
    GgmlType::MXFP4,
];

#[test]
fn cpu_ops_match_the_reference() {
    assert!(TYPES.iter().all(|&t| kernels::supports(t)));
    for threads in [1, 2] {
        let ops = CpuOps::new(threads);
        match check(&ops, &TYPES, &OpsTolerance::default()) {
            Ok(r) => {
                println!("{} threads, {}:", threads, kernels::simd_level());
                for l in r.lines {
                    println!("  {l}");
                }
            }
            Err(e) => panic!("{threads} threads, {}: {e}", kernels::simd_level()),
        }
    }
}
