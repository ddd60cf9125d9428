//! Float helpers for the model glue (attention over an f16 KV cache, cache writes): dot
//! products, `acc += alpha * v` and f16 conversions, each dispatched to the active SIMD level.
//!
//! All of them work on the common prefix when the slices differ in length (never panic).

#[cfg_attr(not(target_arch = "x86_64"), allow(unused_imports))]
use super::{active_level, SimdLevel};
use kiln_sdk::quant::{f16_to_f32, f32_to_f16};

/// `sum(a[i] * b[i])` with `a` as f16 bits, over the shorter length.
pub fn dot_f16_f32(a: &[u16], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    match active_level() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the active level is available on this CPU; lengths are equal.
        SimdLevel::Avx512 => unsafe { super::avx512::dot_f16_f32(a, b) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
        SimdLevel::Avx2 => unsafe { super::avx2::dot_f16_f32(a, b) },
        _ => a.iter().zip(b).map(|(&x, &y)| f16_to_f32(x) * y).sum(),
    }
}

/// `sum(a[i] * b[i])` over the shorter length.
pub fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    match active_level() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the active level is available on this CPU; lengths are equal.
        SimdLevel::Avx512 => unsafe { super::avx512::dot_f32(a, b) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
        SimdLevel::Avx2 => unsafe { super::avx2::dot_f32(a, b) },
        _ => a.iter().zip(b).map(|(x, y)| x * y).sum(),
    }
}

/// `acc[i] += alpha * v[i]` with `v` as f16 bits, over the shorter length.
pub fn axpy_f16(acc: &mut [f32], alpha: f32, v: &[u16]) {
    let n = acc.len().min(v.len());
    let (acc, v) = (&mut acc[..n], &v[..n]);
    match active_level() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the active level is available on this CPU; lengths are equal.
        SimdLevel::Avx512 => unsafe { super::avx512::axpy_f16(acc, alpha, v) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
        SimdLevel::Avx2 => unsafe { super::avx2::axpy_f16(acc, alpha, v) },
        _ => {
            for (o, &h) in acc.iter_mut().zip(v) {
                *o += alpha * f16_to_f32(h);
            }
        }
    }
}

/// Converts f32 to f16 bits (round to nearest even, like [`f32_to_f16`]) over the shorter
/// length.
pub fn f32_to_f16_slice(src: &[f32], dst: &mut [u16]) {
    let n = src.len().min(dst.len());
    let (src, dst) = (&src[..n], &mut dst[..n]);
    match active_level() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the active level is available on this CPU; lengths are equal.
        SimdLevel::Avx512 => unsafe { super::avx512::f32_to_f16(src, dst) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
        SimdLevel::Avx2 => unsafe { super::avx2::f32_to_f16(src, dst) },
        _ => {
            for (o, &x) in dst.iter_mut().zip(src) {
                *o = f32_to_f16(x);
            }
        }
    }
}

/// Converts f16 bits to f32 over the shorter length.
pub fn f16_to_f32_slice(src: &[u16], dst: &mut [f32]) {
    let n = src.len().min(dst.len());
    let (src, dst) = (&src[..n], &mut dst[..n]);
    match active_level() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the active level is available on this CPU; lengths are equal.
        SimdLevel::Avx512 | SimdLevel::Avx2 => unsafe { super::avx2::f16_to_f32(src, dst) },
        _ => {
            for (o, &h) in dst.iter_mut().zip(src) {
                *o = f16_to_f32(h);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn rng() -> rand::rngs::StdRng {
        rand::rngs::StdRng::seed_from_u64(7)
    }

    #[test]
    fn f16_helpers_match_scalar() {
        let mut r = rng();
        for n in [0usize, 1, 7, 15, 16, 17, 63, 64, 100, 1000] {
            let a: Vec<f32> = (0..n).map(|_| r.gen_range(-4.0..4.0)).collect();
            let b: Vec<f32> = (0..n).map(|_| r.gen_range(-4.0..4.0)).collect();
            let mut h = vec![0u16; n];
            f32_to_f16_slice(&a, &mut h);
            for (x, &y) in a.iter().zip(&h) {
                assert_eq!(f32_to_f16(*x), y);
            }
            let mut back = vec![0f32; n];
            f16_to_f32_slice(&h, &mut back);
            for (&x, &y) in h.iter().zip(&back) {
                assert_eq!(f16_to_f32(x), y);
            }
            let want: f64 = h
                .iter()
                .zip(&b)
                .map(|(&x, &y)| f16_to_f32(x) as f64 * y as f64)
                .sum();
            let got = dot_f16_f32(&h, &b) as f64;
            assert!(
                (got - want).abs() <= 1e-4 * (1.0 + want.abs()),
                "n={n} {got} {want}"
            );
            let want32: f64 = a.iter().zip(&b).map(|(&x, &y)| x as f64 * y as f64).sum();
            assert!((dot_f32(&a, &b) as f64 - want32).abs() <= 1e-4 * (1.0 + want32.abs()));
            let mut acc = b.clone();
            axpy_f16(&mut acc, 0.75, &h);
            for i in 0..n {
                let w = b[i] + 0.75 * f16_to_f32(h[i]);
                assert!((acc[i] - w).abs() <= 1e-6 * (1.0 + w.abs()));
            }
        }
    }

    #[test]
    fn f16_special_values() {
        let src = [
            0.0f32,
            -0.0,
            f32::INFINITY,
            f32::NEG_INFINITY,
            65504.0,
            1e-8,
            70000.0,
        ];
        let mut h = [0u16; 7];
        f32_to_f16_slice(&src, &mut h);
        for (x, &y) in src.iter().zip(&h) {
            assert_eq!(f32_to_f16(*x), y, "{x}");
        }
        let mut nan = [0u16; 1];
        f32_to_f16_slice(&[f32::NAN], &mut nan);
        assert!(f16_to_f32(nan[0]).is_nan());
    }

    #[test]
    fn mismatched_lengths_use_prefix() {
        let h = [f32_to_f16(1.0); 5];
        assert_eq!(dot_f16_f32(&h, &[2.0; 3]), 6.0);
        let mut acc = [0f32; 2];
        axpy_f16(&mut acc, 1.0, &h);
        assert_eq!(acc, [1.0, 1.0]);
    }
}
