//! Elementary functions for `no_std` code (`core` has no `exp` or `ln`).
//!
//! The samplers must choose the same tokens as the host's native sampler, which uses the
//! platform's libm. These functions are therefore accurate to (nearly) the last bit: [`exp`]
//! uses a 64-entry table of 2^(j/64) kept in two parts and a degree-6 polynomial (error about
//! 0.51 ulp); the `f32` functions are evaluated in `f64` and rounded once, so they are
//! correctly rounded but in very rare double-rounding cases. glibc's `expf`/`logf` are not
//! always correctly rounded (about 0.06% / 0.5% of inputs differ in the last bit), so a
//! token can differ from the native sampler's only when such a value sits exactly on a
//! cut-off (top-p's running sum, min-p's threshold). Making the host use these functions
//! too would remove even that.

/// Table of 2^(j/64) for j in 0..64, as the bits of (nearest double, remainder).
const EXP2_TABLE: [(u64, u64); 64] = [
    (0x3ff0000000000000, 0x0000000000000000),
    (0x3ff02c9a3e778061, 0xbc719083535b085d),
    (0x3ff059b0d3158574, 0x3c8d73e2a475b465),
    (0x3ff0874518759bc8, 0x3c6186be4bb284ff),
    (0x3ff0b5586cf9890f, 0x3c98a62e4adc610b),
    (0x3ff0e3ec32d3d1a2, 0x3c403a1727c57b53),
    (0x3ff11301d0125b51, 0xbc96c51039449b3a),
    (0x3ff1429aaea92de0, 0xbc932fbf9af1369e),
    (0x3ff172b83c7d517b, 0xbc819041b9d78a76),
    (0x3ff1a35beb6fcb75, 0x3c8e5b4c7b4968e4),
    (0x3ff1d4873168b9aa, 0x3c9e016e00a2643c),
    (0x3ff2063b88628cd6, 0x3c8dc775814a8495),
    (0x3ff2387a6e756238, 0x3c99b07eb6c70573),
    (0x3ff26b4565e27cdd, 0x3c82bd339940e9d9),
    (0x3ff29e9df51fdee1, 0x3c8612e8afad1255),
    (0x3ff2d285a6e4030b, 0x3c90024754db41d5),
    (0x3ff306fe0a31b715, 0x3c86f46ad23182e4),
    (0x3ff33c08b26416ff, 0x3c932721843659a6),
    (0x3ff371a7373aa9cb, 0xbc963aeabf42eae2),
    (0x3ff3a7db34e59ff7, 0xbc75e436d661f5e3),
    (0x3ff3dea64c123422, 0x3c8ada0911f09ebc),
    (0x3ff4160a21f72e2a, 0xbc5ef3691c309278),
    (0x3ff44e086061892d, 0x3c489b7a04ef80d0),
    (0x3ff486a2b5c13cd0, 0x3c73c1a3b69062f0),
    (0x3ff4bfdad5362a27, 0x3c7d4397afec42e2),
    (0x3ff4f9b2769d2ca7, 0xbc94b309d25957e3),
    (0x3ff5342b569d4f82, 0xbc807abe1db13cad),
    (0x3ff56f4736b527da, 0x3c99bb2c011d93ad),
    (0x3ff5ab07dd485429, 0x3c96324c054647ad),
    (0x3ff5e76f15ad2148, 0x3c9ba6f93080e65e),
    (0x3ff6247eb03a5585, 0xbc9383c17e40b497),
    (0x3ff6623882552225, 0xbc9bb60987591c34),
    (0x3ff6a09e667f3bcd, 0xbc9bdd3413b26456),
    (0x3ff6dfb23c651a2f, 0xbc6bbe3a683c88ab),
    (0x3ff71f75e8ec5f74, 0xbc816e4786887a99),
    (0x3ff75feb564267c9, 0xbc90245957316dd3),
    (0x3ff7a11473eb0187, 0xbc841577ee04992f),
    (0x3ff7e2f336cf4e62, 0x3c705d02ba15797e),
    (0x3ff82589994cce13, 0xbc9d4c1dd41532d8),
    (0x3ff868d99b4492ed, 0xbc9fc6f89bd4f6ba),
    (0x3ff8ace5422aa0db, 0x3c96e9f156864b27),
    (0x3ff8f1ae99157736, 0x3c85cc13a2e3976c),
    (0x3ff93737b0cdc5e5, 0xbc675fc781b57ebc),
    (0x3ff97d829fde4e50, 0xbc9d185b7c1b85d1),
    (0x3ff9c49182a3f090, 0x3c7c7c46b071f2be),
    (0x3ffa0c667b5de565, 0xbc9359495d1cd533),
    (0x3ffa5503b23e255d, 0xbc9d2f6edb8d41e1),
    (0x3ffa9e6b5579fdbf, 0x3c90fac90ef7fd31),
    (0x3ffae89f995ad3ad, 0x3c97a1cd345dcc81),
    (0x3ffb33a2b84f15fb, 0xbc62805e3084d708),
    (0x3ffb7f76f2fb5e47, 0xbc75584f7e54ac3b),
    (0x3ffbcc1e904bc1d2, 0x3c823dd07a2d9e84),
    (0x3ffc199bdd85529c, 0x3c811065895048dd),
    (0x3ffc67f12e57d14b, 0x3c92884dff483cad),
    (0x3ffcb720dcef9069, 0x3c7503cbd1e949db),
    (0x3ffd072d4a07897c, 0xbc9cbc3743797a9c),
    (0x3ffd5818dcfba487, 0x3c82ed02d75b3707),
    (0x3ffda9e603db3285, 0x3c9c2300696db532),
    (0x3ffdfc97337b9b5f, 0xbc91a5cd4f184b5c),
    (0x3ffe502ee78b3ff6, 0x3c839e8980a9cc8f),
    (0x3ffea4afa2a490da, 0xbc9e9c23179c2893),
    (0x3ffefa1bee615a27, 0x3c9dc7f486a4b6b0),
    (0x3fff50765b6e4540, 0x3c99d3e12dd8a18b),
    (0x3fffa7c1819e90d8, 0x3c874853f3a5931e),
];

/// 64 / ln 2.
const INV_STEP: f64 = f64::from_bits(0x4057_1547_652b_82fe);
/// ln 2 / 64, high part (20 low bits clear, so `k * STEP_HI` is exact).
const STEP_HI: f64 = f64::from_bits(0x3f86_2e42_fef0_0000);
/// ln 2 / 64 minus `STEP_HI`.
const STEP_LO: f64 = f64::from_bits(0x3d74_73de_6af2_78ed);
/// ln 2, high part (20 low bits clear).
const LN2_HI: f64 = f64::from_bits(0x3fe6_2e42_fef0_0000);
/// ln 2 minus `LN2_HI`.
const LN2_LO: f64 = f64::from_bits(0x3dd4_73de_6af2_78ed);
/// 1 / ln 2.
const INV_LN2: f64 = f64::from_bits(0x3ff7_1547_652b_82fe);
/// 1.5 · 2^52: adding and subtracting it rounds a small double to an integer.
const ROUND_SHIFT: f64 = 6_755_399_441_055_744.0;

/// 2^e for `-1022 <= e <= 1023`.
fn pow2i(e: i64) -> f64 {
    f64::from_bits(((e + 1023) as u64) << 52)
}

/// e^x.
pub fn exp(x: f64) -> f64 {
    if x.is_nan() {
        return x;
    }
    if x > 709.782_712_893_384 {
        return f64::INFINITY;
    }
    if x < -745.133_219_101_941_2 {
        return 0.0;
    }
    // x = k·ln2/64 + r with |r| <= ln2/128.
    let kf = (x * INV_STEP + ROUND_SHIFT) - ROUND_SHIFT;
    let k = kf as i64;
    let r = (x - kf * STEP_HI) - kf * STEP_LO;
    // e^r - 1 by its Taylor series (the first omitted term is below 2^-60 · r).
    let p = r
        * (1.0
            + r * (1.0 / 2.0
                + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    let (hi, lo) = EXP2_TABLE[(k & 63) as usize];
    let (hi, lo) = (f64::from_bits(hi), f64::from_bits(lo));
    let y = hi + (lo + hi * p);
    let e = k >> 6;
    if e > 1023 {
        y * pow2i(1023) * pow2i(e - 1023)
    } else if e < -1022 {
        // One rounding only, into the subnormal range.
        y * pow2i(-1022) * pow2i(e + 1022)
    } else {
        y * pow2i(e)
    }
}

/// Natural logarithm (relative error about 1e-16; NaN for negative inputs).
pub fn ln(x: f64) -> f64 {
    if x.is_nan() || x < 0.0 {
        return f64::NAN;
    }
    if x == 0.0 {
        return f64::NEG_INFINITY;
    }
    if x == f64::INFINITY {
        return x;
    }
    let mut bits = x.to_bits();
    let mut e = ((bits >> 52) & 0x7ff) as i64;
    if e == 0 {
        // Subnormal: scale into the normal range first.
        bits = (x * pow2i(54)).to_bits();
        e = ((bits >> 52) & 0x7ff) as i64 - 54;
    }
    e -= 1023;
    // m in [1, 2); moved to [sqrt(1/2), sqrt(2)) so that |s| below stays small.
    let mut m = f64::from_bits((bits & 0x000f_ffff_ffff_ffff) | 0x3ff0_0000_0000_0000);
    if m > core::f64::consts::SQRT_2 {
        m *= 0.5;
        e += 1;
    }
    // ln m = 2·atanh(s), s = (m-1)/(m+1), |s| < 0.172.
    let s = (m - 1.0) / (m + 1.0);
    let s2 = s * s;
    let mut poly = 0.0;
    let mut d = 23.0;
    while d > 1.0 {
        poly = s2 * (1.0 / d + poly);
        d -= 2.0;
    }
    let ln_m = 2.0 * s + 2.0 * s * poly;
    let ef = e as f64;
    ef * LN2_HI + (ef * LN2_LO + ln_m)
}

/// e^x with a relative error below 2^-43 (cheaper than [`exp`]: one table part and a
/// degree-4 polynomial); enough to round to `f32` correctly except in about one case in a
/// million, and for weights that need no last-bit agreement.
pub fn exp_fast(x: f64) -> f64 {
    if x.is_nan() {
        return x;
    }
    if x > 709.0 {
        return if x > 709.782_712_893_384 {
            f64::INFINITY
        } else {
            exp(x)
        };
    }
    if x < -708.0 {
        return exp(x); // near or in the subnormal range
    }
    let kf = (x * INV_STEP + ROUND_SHIFT) - ROUND_SHIFT;
    let k = kf as i64;
    let r = (x - kf * STEP_HI) - kf * STEP_LO;
    let p = r * (1.0 + r * (1.0 / 2.0 + r * (1.0 / 6.0 + r * (1.0 / 24.0))));
    let hi = f64::from_bits(EXP2_TABLE[(k & 63) as usize].0);
    (hi + hi * p) * pow2i(k >> 6)
}

/// e^x for `f32`, correctly rounded except in about one case in a million (computed in
/// `f64` with [`exp_fast`]).
pub fn expf(x: f32) -> f32 {
    exp_fast(f64::from(x)) as f32
}

/// Natural logarithm for `f32`, correctly rounded (computed in `f64`).
pub fn lnf(x: f32) -> f32 {
    ln(f64::from(x)) as f32
}

/// Base-2 logarithm for `f32` (computed in `f64`).
pub fn log2f(x: f32) -> f32 {
    (ln(f64::from(x)) * INV_LN2) as f32
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic pseudo-random doubles in [0, 1).
    fn uniform(n: usize, seed: u64) -> impl Iterator<Item = f64> {
        let mut rng = crate::rng::Rng::new(seed);
        (0..n).map(move |_| rng.next_f64())
    }

    #[test]
    fn exp_fast_is_accurate() {
        let mut worst = 0.0f64;
        for u in uniform(200_000, 3) {
            let x = (u - 0.5) * 1416.0;
            let (a, b) = (exp_fast(x), x.exp());
            if b > 0.0 && b.is_finite() && b > 1e-300 {
                worst = worst.max(((a - b) / b).abs());
            }
        }
        assert!(worst < 2e-13, "worst relative error {worst}");
        assert_eq!(exp_fast(f64::NEG_INFINITY), 0.0);
        assert_eq!(exp_fast(1000.0), f64::INFINITY);
        assert!(exp_fast(f64::NAN).is_nan());
        assert_eq!(exp_fast(-720.0), exp(-720.0));
    }

    #[test]
    fn exp_matches_std_closely() {
        let mut worst = 0.0f64;
        for u in uniform(200_000, 1) {
            let x = (u - 0.5) * 1400.0;
            let (a, b) = (exp(x), x.exp());
            let rel = ((a - b) / b).abs();
            worst = worst.max(rel);
        }
        assert!(worst < 3e-16, "worst relative error {worst}");
        assert_eq!(exp(0.0), 1.0);
        assert_eq!(exp(1.0), core::f64::consts::E);
        assert_eq!(exp(f64::NEG_INFINITY), 0.0);
        assert_eq!(exp(f64::INFINITY), f64::INFINITY);
        assert!(exp(f64::NAN).is_nan());
        assert_eq!(exp(-745.0), (-745.0f64).exp());
        assert_eq!(exp(-740.0), (-740.0f64).exp());
        assert_eq!(exp(709.0), 709.0f64.exp());
    }

    /// Distance in ulps of `f32` from the exact value (approximated in f64).
    fn f32_err(got: f32, exact: f64) -> f64 {
        let ulp = f64::from(f32::from_bits(got.abs().to_bits() + 1) - got.abs());
        ((f64::from(got) - exact) / ulp).abs()
    }

    #[test]
    fn f32_functions_are_correctly_rounded_and_match_std_nearly_always() {
        let (mut exp_diff, mut ln_diff, mut n) = (0, 0, 0);
        for u in uniform(2_000_000, 2) {
            n += 1;
            let x = ((u - 0.75) * 120.0) as f32;
            let (mine, std) = (expf(x), x.exp());
            if mine != std {
                exp_diff += 1;
                // Ours is the nearer one: the platform's libm rounded the other way.
                let exact = exp(f64::from(x));
                assert!(f32_err(mine, exact) <= f32_err(std, exact), "exp({x})");
            }
            let y = (u * u * 4.0) as f32;
            let (mine, std) = (lnf(y), y.ln());
            if mine != std {
                ln_diff += 1;
                let exact = ln(f64::from(y));
                assert!(f32_err(mine, exact) <= f32_err(std, exact), "ln({y})");
            }
        }
        std::println!("expf differs from std on {exp_diff}/{n}, lnf on {ln_diff}/{n}");
        // glibc's expf/logf are not always correctly rounded (about 0.06% and 0.5% of these
        // inputs); for the min-p values people write (0.01 … 1.00) ln agrees exactly.
        assert!(exp_diff * 1000 < n, "expf differs on {exp_diff} inputs");
        assert!(ln_diff * 100 < n, "lnf differs on {ln_diff} inputs");
        for p in (1..=100).map(|i| i as f32 / 100.0).chain([1e-6, 7.0]) {
            assert_eq!(lnf(p), p.ln(), "ln({p})");
        }
        assert_eq!(lnf(0.0), f32::NEG_INFINITY);
        assert!(lnf(-1.0).is_nan());
        assert_eq!(log2f(8.0), 3.0);
        assert_eq!(log2f(0.25), -2.0);
        assert_eq!(expf(-200.0), 0.0);
        assert_eq!(expf(100.0), f32::INFINITY);
    }
}
