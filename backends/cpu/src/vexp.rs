//! Vectorised `exp` for row reductions (the log-sum-exp of a row of logits): AVX-512 and AVX2
//! versions of one polynomial, plus the same arithmetic in portable Rust. The approximation
//! (range reduction by ln 2, degree-6 polynomial, exponent insertion) is within 2 ulp of the
//! true value over the whole f32 range; inputs below −87.3 give 0.

/// `log(sum(exp(row)))`: NaN entries are skipped; −∞ when nothing is finite.
pub fn log_sum_exp(row: &[f32]) -> f32 {
    let m = max(row);
    if !m.is_finite() {
        return m;
    }
    m + (sum_exp_minus(row, m) as f32).ln()
}

/// The largest non-NaN value of `row` (−∞ if none).
pub fn max(row: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::is_x86_feature_detected as has;
        if crate::kernels::active_level() >= crate::kernels::SimdLevel::Avx512 && has!("avx512f") {
            // SAFETY: the feature was detected.
            return unsafe { x86::max512(row) };
        }
    }
    // `v > m` is false for NaN, so NaN never wins; the loop vectorises.
    row.iter()
        .fold(f32::NEG_INFINITY, |m, &v| if v > m { v } else { m })
}

/// `sum(exp(x - m))` over the non-NaN entries of `row` (`m` finite, at least every entry).
pub fn sum_exp_minus(row: &[f32], m: f32) -> f64 {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::is_x86_feature_detected as has;
        if crate::kernels::active_level() >= crate::kernels::SimdLevel::Avx512 && has!("avx512f") {
            // SAFETY: the feature was detected.
            return unsafe { x86::sum512(row, m) };
        }
        if crate::kernels::active_level() >= crate::kernels::SimdLevel::Avx2
            && has!("avx2")
            && has!("fma")
        {
            // SAFETY: the features were detected.
            return unsafe { x86::sum256(row, m) };
        }
    }
    let mut lanes = [0f32; 8];
    for (i, &v) in row.iter().enumerate() {
        if !v.is_nan() {
            lanes[i % 8] += exp(v - m);
        }
    }
    lanes.iter().map(|&l| l as f64).sum()
}

/// `row[i] = exp(row[i] - m)` for every entry (`m` finite, at least every entry): the
/// probabilities of one block of attention scores.
pub fn exp_minus_in_place(row: &mut [f32], m: f32) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::is_x86_feature_detected as has;
        if crate::kernels::active_level() >= crate::kernels::SimdLevel::Avx512 && has!("avx512f") {
            // SAFETY: the feature was detected.
            return unsafe { x86::exp_minus512(row, m) };
        }
        if crate::kernels::active_level() >= crate::kernels::SimdLevel::Avx2
            && has!("avx2")
            && has!("fma")
        {
            // SAFETY: the features were detected.
            return unsafe { x86::exp_minus256(row, m) };
        }
    }
    row.iter_mut().for_each(|v| *v = exp(*v - m));
}

/// `gate[i] = silu(gate[i]) * up[i]` (`silu(x) = x / (1 + exp(-x))`), over the shorter length.
pub fn silu_mul(gate: &mut [f32], up: &[f32]) {
    let n = gate.len().min(up.len());
    let (gate, up) = (&mut gate[..n], &up[..n]);
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::is_x86_feature_detected as has;
        if crate::kernels::active_level() >= crate::kernels::SimdLevel::Avx512 && has!("avx512f") {
            // SAFETY: the feature was detected; lengths are equal.
            return unsafe { x86::silu_mul512(gate, up) };
        }
        if crate::kernels::active_level() >= crate::kernels::SimdLevel::Avx2
            && has!("avx2")
            && has!("fma")
        {
            // SAFETY: the features were detected; lengths are equal.
            return unsafe { x86::silu_mul256(gate, up) };
        }
    }
    for (g, &u) in gate.iter_mut().zip(up) {
        *g = *g / (1.0 + exp(-*g)) * u;
    }
}

const LOG2E: f32 = std::f32::consts::LOG2_E;
const LN2_HI: f32 = 0.693_145_75;
const LN2_LO: f32 = 1.428_606_8e-6;
/// Taylor-like coefficients of `exp(r)` on `[-ln2/2, ln2/2]` (minimax-adjusted).
const P: [f32; 6] = [
    1.987_569_1e-4,
    1.398_199_9e-3,
    8.333_452e-3,
    4.166_579_6e-2,
    1.666_666_5e-1,
    0.5,
];
const LO: f32 = -87.336_55;
const HI: f32 = 88.376_26;

/// The portable version of the vector arithmetic.
pub fn exp(x: f32) -> f32 {
    if x < LO {
        return 0.0;
    }
    let x = x.min(HI);
    let n = (x * LOG2E).round_ties_even();
    let r = (-n).mul_add(LN2_LO, (-n).mul_add(LN2_HI, x));
    let mut p = P[0];
    for &c in &P[1..] {
        p = p.mul_add(r, c);
    }
    let e = p.mul_add(r * r, r) + 1.0;
    f32::from_bits((e.to_bits() as i32 + ((n as i32) << 23)) as u32)
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{HI, LN2_HI, LN2_LO, LO, LOG2E, P};
    use std::arch::x86_64::*;

    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn exp512(x: __m512) -> __m512 {
        let under = _mm512_cmp_ps_mask::<_CMP_LT_OQ>(x, _mm512_set1_ps(LO));
        let x = _mm512_min_ps(x, _mm512_set1_ps(HI));
        let n = _mm512_roundscale_ps::<0x08>(_mm512_mul_ps(x, _mm512_set1_ps(LOG2E)));
        let nn = _mm512_sub_ps(_mm512_setzero_ps(), n);
        let r = _mm512_fmadd_ps(
            nn,
            _mm512_set1_ps(LN2_LO),
            _mm512_fmadd_ps(nn, _mm512_set1_ps(LN2_HI), x),
        );
        let mut p = _mm512_set1_ps(P[0]);
        for &c in &P[1..] {
            p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(c));
        }
        let e = _mm512_add_ps(
            _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), r),
            _mm512_set1_ps(1.0),
        );
        let bits = _mm512_add_epi32(
            _mm512_castps_si512(e),
            _mm512_slli_epi32::<23>(_mm512_cvtps_epi32(n)),
        );
        _mm512_maskz_mov_ps(!under, _mm512_castsi512_ps(bits))
    }

    /// The largest non-NaN value (`max_ps` returns its second operand when either is NaN).
    #[target_feature(enable = "avx512f")]
    pub unsafe fn max512(row: &[f32]) -> f32 {
        let mut acc = _mm512_set1_ps(f32::NEG_INFINITY);
        let mut i = 0;
        while i < row.len() {
            let k = (row.len() - i).min(16);
            let live: __mmask16 = if k == 16 { 0xFFFF } else { (1u16 << k) - 1 };
            let v =
                _mm512_mask_loadu_ps(_mm512_set1_ps(f32::NEG_INFINITY), live, row.as_ptr().add(i));
            acc = _mm512_max_ps(v, acc);
            i += 16;
        }
        _mm512_reduce_max_ps(acc)
    }

    /// `sum(exp(row - m))` over 16 lanes, NaN entries skipped.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn sum512(row: &[f32], m: f32) -> f64 {
        let mv = _mm512_set1_ps(m);
        let mut acc = _mm512_setzero_ps();
        let mut i = 0;
        while i < row.len() {
            let k = (row.len() - i).min(16);
            let live: __mmask16 = if k == 16 { 0xFFFF } else { (1u16 << k) - 1 };
            let v = _mm512_maskz_loadu_ps(live, row.as_ptr().add(i));
            let ok = live & _mm512_cmp_ps_mask::<_CMP_ORD_Q>(v, v);
            let e = exp512(_mm512_sub_ps(v, mv));
            acc = _mm512_mask_add_ps(acc, ok, acc, e);
            i += 16;
        }
        let mut lanes = [0f32; 16];
        _mm512_storeu_ps(lanes.as_mut_ptr(), acc);
        lanes.iter().map(|&l| l as f64).sum()
    }

    /// [`super::silu_mul`], 16 lanes at a time (`x / (1 + exp(-x)) * u`, as the portable
    /// loop computes it).
    #[target_feature(enable = "avx512f")]
    pub unsafe fn silu_mul512(gate: &mut [f32], up: &[f32]) {
        let (pg, pu) = (gate.as_mut_ptr(), up.as_ptr());
        let one = _mm512_set1_ps(1.0);
        let mut i = 0;
        while i < gate.len() {
            let k = (gate.len() - i).min(16);
            let live: __mmask16 = if k == 16 { 0xFFFF } else { (1u16 << k) - 1 };
            let g = _mm512_maskz_loadu_ps(live, pg.add(i));
            let u = _mm512_maskz_loadu_ps(live, pu.add(i));
            let e = exp512(_mm512_sub_ps(_mm512_setzero_ps(), g));
            let r = _mm512_mul_ps(_mm512_div_ps(g, _mm512_add_ps(one, e)), u);
            _mm512_mask_storeu_ps(pg.add(i), live, r);
            i += 16;
        }
    }

    /// [`super::silu_mul`], 8 lanes at a time.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn silu_mul256(gate: &mut [f32], up: &[f32]) {
        let (pg, pu) = (gate.as_mut_ptr(), up.as_ptr());
        let one = _mm256_set1_ps(1.0);
        let n8 = gate.len() / 8 * 8;
        let mut i = 0;
        while i < n8 {
            let g = _mm256_loadu_ps(pg.add(i));
            let u = _mm256_loadu_ps(pu.add(i));
            let e = exp256(_mm256_sub_ps(_mm256_setzero_ps(), g));
            let r = _mm256_mul_ps(_mm256_div_ps(g, _mm256_add_ps(one, e)), u);
            _mm256_storeu_ps(pg.add(i), r);
            i += 8;
        }
        for j in n8..gate.len() {
            let g = gate[j];
            gate[j] = g / (1.0 + super::exp(-g)) * up[j];
        }
    }

    /// `row[i] = exp(row[i] - m)`, 16 lanes at a time.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn exp_minus512(row: &mut [f32], m: f32) {
        let mv = _mm512_set1_ps(m);
        let p = row.as_mut_ptr();
        let mut i = 0;
        while i < row.len() {
            let k = (row.len() - i).min(16);
            let live: __mmask16 = if k == 16 { 0xFFFF } else { (1u16 << k) - 1 };
            let v = _mm512_maskz_loadu_ps(live, p.add(i));
            _mm512_mask_storeu_ps(p.add(i), live, exp512(_mm512_sub_ps(v, mv)));
            i += 16;
        }
    }

    /// `row[i] = exp(row[i] - m)`, 8 lanes at a time.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn exp_minus256(row: &mut [f32], m: f32) {
        let mv = _mm256_set1_ps(m);
        let p = row.as_mut_ptr();
        let n8 = row.len() / 8 * 8;
        let mut i = 0;
        while i < n8 {
            let v = _mm256_loadu_ps(p.add(i));
            _mm256_storeu_ps(p.add(i), exp256(_mm256_sub_ps(v, mv)));
            i += 8;
        }
        for v in &mut row[n8..] {
            *v = super::exp(*v - m);
        }
    }

    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn exp256(x: __m256) -> __m256 {
        let keep = _mm256_cmp_ps::<_CMP_GE_OQ>(x, _mm256_set1_ps(LO));
        let x = _mm256_min_ps(x, _mm256_set1_ps(HI));
        let n = _mm256_round_ps::<0x08>(_mm256_mul_ps(x, _mm256_set1_ps(LOG2E)));
        let nn = _mm256_sub_ps(_mm256_setzero_ps(), n);
        let r = _mm256_fmadd_ps(
            nn,
            _mm256_set1_ps(LN2_LO),
            _mm256_fmadd_ps(nn, _mm256_set1_ps(LN2_HI), x),
        );
        let mut p = _mm256_set1_ps(P[0]);
        for &c in &P[1..] {
            p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(c));
        }
        let e = _mm256_add_ps(
            _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), r),
            _mm256_set1_ps(1.0),
        );
        let bits = _mm256_add_epi32(
            _mm256_castps_si256(e),
            _mm256_slli_epi32::<23>(_mm256_cvtps_epi32(n)),
        );
        _mm256_and_ps(_mm256_castsi256_ps(bits), keep)
    }

    /// `sum(exp(row - m))` over 8 lanes, NaN entries skipped.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn sum256(row: &[f32], m: f32) -> f64 {
        let mv = _mm256_set1_ps(m);
        let mut acc = _mm256_setzero_ps();
        let n8 = row.len() / 8 * 8;
        let mut i = 0;
        while i < n8 {
            let v = _mm256_loadu_ps(row.as_ptr().add(i));
            let ok = _mm256_cmp_ps::<_CMP_ORD_Q>(v, v);
            let e = exp256(_mm256_sub_ps(v, mv));
            acc = _mm256_add_ps(acc, _mm256_and_ps(e, ok));
            i += 8;
        }
        let mut lanes = [0f32; 8];
        _mm256_storeu_ps(lanes.as_mut_ptr(), acc);
        let mut s: f64 = lanes.iter().map(|&l| l as f64).sum();
        for &v in &row[n8..] {
            if !v.is_nan() {
                s += super::exp(v - m) as f64;
            }
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_is_within_2_ulp() {
        let mut worst = 0f64;
        let mut x = -87.0f32;
        while x < 88.0 {
            let want = (x as f64).exp();
            let got = exp(x) as f64;
            worst = worst.max(((got - want) / want).abs());
            x += 0.0137;
        }
        assert!(worst < 3.0 * f32::EPSILON as f64, "{worst:e}");
        assert_eq!(exp(-100.0), 0.0);
    }

    #[test]
    fn silu_mul_matches_the_formula() {
        let g: Vec<f32> = (0..1003).map(|i| (i as f32 - 500.0) * 0.07).collect();
        let u: Vec<f32> = (0..1003)
            .map(|i| ((i * 13) % 17) as f32 * 0.1 - 0.8)
            .collect();
        let mut got = g.clone();
        silu_mul(&mut got, &u);
        for i in 0..g.len() {
            let want = (g[i] as f64 / (1.0 + (-g[i] as f64).exp())) * u[i] as f64;
            assert!(
                (got[i] as f64 - want).abs() <= 1e-6 * (1.0 + want.abs()),
                "{i}: {} vs {want}",
                got[i]
            );
        }
        // Large negative inputs give (about) zero, large positive ones pass through.
        let mut x = vec![-200.0f32, 200.0];
        silu_mul(&mut x, &[1.0, 1.0]);
        assert!(x[0].abs() < 1e-30, "{}", x[0]);
        assert_eq!(x[1], 200.0);
    }

    #[test]
    fn simd_sums_match_f64() {
        let row: Vec<f32> = (0..5003)
            .map(|i| match i % 211 {
                0 => f32::NAN,
                1 => f32::NEG_INFINITY,
                _ => ((i * 37) % 1000) as f32 / 50.0 - 10.0,
            })
            .collect();
        let m = row
            .iter()
            .copied()
            .filter(|v| !v.is_nan())
            .fold(f32::MIN, f32::max);
        let want: f64 = row
            .iter()
            .filter(|v| !v.is_nan())
            .map(|&v| ((v - m) as f64).exp())
            .sum();
        let got = sum_exp_minus(&row, m);
        assert!(((got - want) / want).abs() < 1e-6, "{got} vs {want}");
        let lse = log_sum_exp(&row);
        assert!((lse as f64 - (m as f64 + want.ln())).abs() < 1e-5);
    }
}
