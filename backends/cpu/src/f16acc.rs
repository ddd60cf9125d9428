//! f16-accumulator vector steps of the attention kernel (llama.cpp's CPU flash attention keeps
//! its output accumulator in f16; matching it keeps greedy decoding identical). Values are held
//! in f32 slices but always rounded to f16 after each step. AVX2+F16C+FMA with a portable
//! fallback, chosen once at run time.

use std::sync::OnceLock;

fn simd() -> bool {
    static S: OnceLock<bool> = OnceLock::new();
    *S.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
                && std::arch::is_x86_feature_detected!("f16c")
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            false
        }
    })
}

#[inline]
fn round_f16(x: f32) -> f32 {
    half::f16::from_f32(x).to_f32()
}

/// `x[i] = f16(x[i])` for every element.
pub fn round_slice(x: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if simd() {
        // SAFETY: features checked at run time.
        return unsafe { x86::round_slice(x) };
    }
    x.iter_mut().for_each(|v| *v = round_f16(*v));
}

/// `acc[i] = f16(acc[i] * s)`.
pub fn scale(acc: &mut [f32], s: f32) {
    #[cfg(target_arch = "x86_64")]
    if simd() {
        // SAFETY: features checked at run time.
        return unsafe { x86::scale(acc, s) };
    }
    acc.iter_mut().for_each(|a| *a = round_f16(*a * s));
}

/// `acc[i] = f16(fma(v[i], s, acc[i]))` with `v` in f16 bits.
pub fn mad(acc: &mut [f32], v: &[u16], s: f32) {
    debug_assert_eq!(acc.len(), v.len());
    #[cfg(target_arch = "x86_64")]
    if simd() {
        // SAFETY: features checked at run time.
        return unsafe { x86::mad(acc, v, s) };
    }
    for (a, &b) in acc.iter_mut().zip(v) {
        *a = round_f16(half::f16::from_bits(b).to_f32().mul_add(s, *a));
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn round_slice(x: &mut [f32]) {
        let n8 = x.len() / 8 * 8;
        let p = x.as_mut_ptr();
        for i in (0..n8).step_by(8) {
            let v = _mm256_loadu_ps(p.add(i));
            let h = _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(v);
            _mm256_storeu_ps(p.add(i), _mm256_cvtph_ps(h));
        }
        for v in &mut x[n8..] {
            *v = super::round_f16(*v);
        }
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn scale(acc: &mut [f32], s: f32) {
        let n8 = acc.len() / 8 * 8;
        let p = acc.as_mut_ptr();
        let sv = _mm256_set1_ps(s);
        for i in (0..n8).step_by(8) {
            let v = _mm256_mul_ps(_mm256_loadu_ps(p.add(i)), sv);
            let h = _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(v);
            _mm256_storeu_ps(p.add(i), _mm256_cvtph_ps(h));
        }
        for a in &mut acc[n8..] {
            *a = super::round_f16(*a * s);
        }
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn mad(acc: &mut [f32], v: &[u16], s: f32) {
        let n = acc.len().min(v.len());
        let n8 = n / 8 * 8;
        let (pa, pv) = (acc.as_mut_ptr(), v.as_ptr());
        let sv = _mm256_set1_ps(s);
        for i in (0..n8).step_by(8) {
            let vf = _mm256_cvtph_ps(_mm_loadu_si128(pv.add(i) as *const __m128i));
            let r = _mm256_fmadd_ps(vf, sv, _mm256_loadu_ps(pa.add(i)));
            let h = _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(r);
            _mm256_storeu_ps(pa.add(i), _mm256_cvtph_ps(h));
        }
        for i in n8..n {
            let b = half::f16::from_bits(v[i]).to_f32();
            acc[i] = super::round_f16(b.mul_add(s, acc[i]));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn simd_and_portable_agree() {
        let mut x: Vec<f32> = (0..37).map(|i| (i as f32 * 0.37).sin() * 3.0).collect();
        let v: Vec<u16> = (0..37)
            .map(|i| half::f16::from_f32((i as f32 * 0.11).cos()).to_bits())
            .collect();
        let mut y = x.clone();
        mad(&mut x, &v, 0.731);
        scale(&mut x, 0.5117);
        for (a, &b) in y.iter_mut().zip(&v) {
            *a = round_f16(half::f16::from_bits(b).to_f32().mul_add(0.731, *a));
            *a = round_f16(*a * 0.5117);
        }
        assert_eq!(x, y);
        let mut z = vec![1.0001f32, 65519.0, -2.71, 1e-8];
        round_slice(&mut z);
        assert_eq!(z, vec![1.0, 65504.0, -2.7109375, round_f16(1e-8)]);
    }
}
