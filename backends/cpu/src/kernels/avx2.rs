//! AVX2 (+FMA, F16C) kernels: 32 values per step, `vpmaddubsw` + `vpmaddwd` integer dot
//! products of unsigned weight bytes (at most 63, so no i16 saturation) with signed
//! activation bytes; `Q8_0`/`MXFP4` use the signed form (`|w| * sign(x, w)`).
//!
//! Every function here is `unsafe` and compiled with the AVX2 target features; callers must
//! check [`super::SimdLevel::Avx2`] is available and pass the documented lengths.

#![allow(clippy::missing_safety_doc)]

use super::matmul::W8Tile;
use super::quantize::{ActMode, ActRow, Extras};
use core::arch::x86_64::*;
use kiln_sdk::quant::GgmlType;

#[inline]
#[target_feature(enable = "avx2,fma,f16c,bmi2")]
unsafe fn h1(p: *const u8) -> f32 {
    let a = (p as *const u16).read_unaligned();
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(a as i32)))
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c,bmi2")]
unsafe fn hsum(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)))
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c,bmi2")]
unsafe fn hsum_i32(v: __m256i) -> i32 {
    let s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256::<1>(v));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b01_00_11_10>(s));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b10_11_00_01>(s));
    _mm_cvtsi128_si32(s)
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c,bmi2")]
unsafe fn loadu256(p: *const u8) -> __m256i {
    _mm256_loadu_si256(p as *const __m256i)
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c,bmi2")]
unsafe fn loadu128(p: *const u8) -> __m128i {
    _mm_loadu_si128(p as *const __m128i)
}

/// Sum of 4 adjacent `u * x` byte products per i32 lane (`u` at most 127 per pair sum).
#[inline]
#[target_feature(enable = "avx2,fma,f16c,bmi2")]
unsafe fn dot4(u: __m256i, x: __m256i) -> __m256i {
    _mm256_madd_epi16(_mm256_maddubs_epi16(u, x), _mm256_set1_epi16(1))
}

/// Same for signed weights `w` (any i8) against `x` in -127..=127.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,bmi2")]
unsafe fn dot4_signed(w: __m256i, x: __m256i) -> __m256i {
    dot4(_mm256_abs_epi8(w), _mm256_sign_epi8(x, w))
}

// ---------------------------------------------------------------------------------------------
// Activation quantization
// ---------------------------------------------------------------------------------------------

#[inline]
#[target_feature(enable = "avx2,fma,f16c,bmi2")]
unsafe fn quantize_block(src: *const f32, bl: usize, qs: *mut i8, xsum: *mut f32) -> f32 {
    let abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFF_FFFF));
    let mut m = _mm256_setzero_ps();
    for i in (0..bl).step_by(8) {
        m = _mm256_max_ps(m, _mm256_and_ps(_mm256_loadu_ps(src.add(i)), abs_mask));
    }
    let m4 = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps::<1>(m));
    let m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
    let amax = _mm_cvtss_f32(_mm_max_ss(m4, _mm_movehdup_ps(m4)));
    let (d, id) = if amax > 0.0 {
        (amax / 127.0, 127.0 / amax)
    } else {
        (0.0, 0.0)
    };
    let idv = _mm256_set1_ps(id);
    let (lo, hi) = (_mm256_set1_epi32(-127), _mm256_set1_epi32(127));
    let q32 = |p: *const f32| {
        let v = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
            _mm256_mul_ps(_mm256_loadu_ps(p), idv),
        );
        _mm256_max_epi32(_mm256_min_epi32(_mm256_cvttps_epi32(v), hi), lo)
    };
    for i in (0..bl).step_by(16) {
        let a = q32(src.add(i));
        let b = q32(src.add(i + 8));
        let p16 = _mm256_permute4x64_epi64::<0b11_01_10_00>(_mm256_packs_epi32(a, b));
        let p8 = _mm_packs_epi16(
            _mm256_castsi256_si128(p16),
            _mm256_extracti128_si256::<1>(p16),
        );
        _mm_storeu_si128(qs.add(i) as *mut __m128i, p8);
        *xsum.add(i / 16) = d * hsum_i32(_mm256_add_epi32(a, b)) as f32;
    }
    d
}

/// See [`super::quantize::quantize_row`]; lengths are checked by the caller.
#[target_feature(enable = "avx2,fma,f16c,bmi2")]
pub(super) unsafe fn quantize_row(
    mode: ActMode,
    x: &[f32],
    qs: &mut [i8],
    d: &mut [f32],
    xsum: &mut [f32],
) {
    let k = x.len();
    let kp = qs.len();
    let bl = mode.len();
    let mut tmp = [0f32; 256];
    let mut start = 0;
    while start < kp {
        let src = if start + bl <= k {
            x.as_ptr().add(start)
        } else {
            tmp[..bl].fill(0.0);
            if start < k {
                tmp[..k - start].copy_from_slice(&x[start..]);
            }
            tmp.as_ptr()
        };
        let dd = quantize_block(
            src,
            bl,
            qs.as_mut_ptr().add(start),
            xsum.as_mut_ptr().add(start / 16),
        );
        d[start / 32..(start + bl) / 32].fill(dd);
        start += bl;
    }
}

// ---------------------------------------------------------------------------------------------
// Float helpers
// ---------------------------------------------------------------------------------------------

#[inline]
#[target_feature(enable = "avx2,fma,f16c,bmi2")]
unsafe fn load_f16x8(p: *const u16) -> __m256 {
    _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i))
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c,bmi2")]
unsafe fn load_bf16x8(p: *const u16) -> __m256 {
    _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(
        _mm_loadu_si128(p as *const __m128i),
    )))
}

/// Generic 4-accumulator dot product of 8-wide loads; scalar tail.
macro_rules! dot8 {
    ($a:expr, $b:expr, $n:expr, $load:ident, $scalar:expr) => {{
        let (a, b, n) = ($a, $b, $n);
        let (mut s0, mut s1, mut s2, mut s3) = (
            _mm256_setzero_ps(),
            _mm256_setzero_ps(),
            _mm256_setzero_ps(),
            _mm256_setzero_ps(),
        );
        let mut i = 0;
        while i + 32 <= n {
            s0 = _mm256_fmadd_ps($load(a.add(i)), _mm256_loadu_ps(b.add(i)), s0);
            s1 = _mm256_fmadd_ps($load(a.add(i + 8)), _mm256_loadu_ps(b.add(i + 8)), s1);
            s2 = _mm256_fmadd_ps($load(a.add(i + 16)), _mm256_loadu_ps(b.add(i + 16)), s2);
            s3 = _mm256_fmadd_ps($load(a.add(i + 24)), _mm256_loadu_ps(b.add(i + 24)), s3);
            i += 32;
        }
        while i + 8 <= n {
            s0 = _mm256_fmadd_ps($load(a.add(i)), _mm256_loadu_ps(b.add(i)), s0);
            i += 8;
        }
        let mut s = hsum(_mm256_add_ps(_mm256_add_ps(s0, s1), _mm256_add_ps(s2, s3)));
        while i < n {
            s += $scalar(*a.add(i)) * *b.add(i);
            i += 1;
        }
        s
    }};
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c,bmi2")]
unsafe fn load_f32x8(p: *const f32) -> __m256 {
    _mm256_loadu_ps(p)
}

#[target_feature(enable = "avx2,fma,f16c,bmi2")]
unsafe fn dot_f32_ptr(a: *const f32, b: *const f32, n: usize) -> f32 {
    dot8!(a, b, n, load_f32x8, |v: f32| v)
}

#[target_feature(enable = "avx2,fma,f16c,bmi2")]
unsafe fn dot_f16_ptr(a: *const u16, b: *const f32, n: usize) -> f32 {
    dot8!(a, b, n, load_f16x8, kiln_sdk::quant::f16_to_f32)
}

/// `sum(a * b)`, equal lengths.
#[target_feature(enable = "avx2,fma,f16c,bmi2")]
pub(super) unsafe fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    dot_f32_ptr(a.as_ptr(), b.as_ptr(), a.len().min(b.len()))
}

/// `sum(f16(a) * b)`, equal lengths.
#[target_feature(enable = "avx2,fma,f16c,bmi2")]
pub(super) unsafe fn dot_f16_f32(a: &[u16], b: &[f32]) -> f32 {
    dot_f16_ptr(a.as_ptr(), b.as_ptr(), a.len().min(b.len()))
}

/// `acc += alpha * f16(v)`, equal lengths.
#[target_feature(enable = "avx2,fma,f16c,bmi2")]
pub(super) unsafe fn axpy_f16(acc: &mut [f32], alpha: f32, v: &[u16]) {
    let n = acc.len().min(v.len());
    let (o, p) = (acc.as_mut_ptr(), v.as_ptr());
    let al = _mm256_set1_ps(alpha);
    let mut i = 0;
    while i + 8 <= n {
        _mm256_storeu_ps(
            o.add(i),
            _mm256_fmadd_ps(al, load_f16x8(p.add(i)), _mm256_loadu_ps(o.add(i))),
        );
        i += 8;
    }
    while i < n {
        *o.add(i) += alpha * kiln_sdk::quant::f16_to_f32(*p.add(i));
        i += 1;
    }
}

/// f32 to f16 bits, round to nearest even, equal lengths.
#[target_feature(enable = "avx2,fma,f16c,bmi2")]
pub(super) unsafe fn f32_to_f16(src: &[f32], dst: &mut [u16]) {
    let n = src.len().min(dst.len());
    let (s, o) = (src.as_ptr(), dst.as_mut_ptr());
    let mut i = 0;
    while i + 8 <= n {
        let h = _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(_mm256_loadu_ps(s.add(i)));
        _mm_storeu_si128(o.add(i) as *mut __m128i, h);
        i += 8;
    }
    while i < n {
        *o.add(i) = kiln_sdk::quant::f32_to_f16(*s.add(i));
        i += 1;
    }
}

/// f16 bits to f32, equal lengths.
#[target_feature(enable = "avx2,fma,f16c,bmi2")]
pub(super) unsafe fn f16_to_f32(src: &[u16], dst: &mut [f32]) {
    let n = src.len().min(dst.len());
    let (s, o) = (src.as_ptr(), dst.as_mut_ptr());
    let mut i = 0;
    while i + 8 <= n {
        _mm256_storeu_ps(o.add(i), load_f16x8(s.add(i)));
        i += 8;
    }
    while i < n {
        *o.add(i) = kiln_sdk::quant::f16_to_f32(*s.add(i));
        i += 1;
    }
}

/// Float codes of a weight row.
const FLOAT_F32: u8 = 0;
const FLOAT_F16: u8 = 1;
const FLOAT_BF16: u8 = 2;

/// 8 weights of a float row of type `TY` (F32/F16/BF16 bytes at `p`) from value `i`, or only
/// the first `n` (< 8) of them, zero padded, when `n < 8`; converted by the same instructions
/// either way.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,bmi2")]
unsafe fn load_float<const TY: u8>(p: *const u8, i: usize, n: usize) -> __m256 {
    if n >= 8 {
        return match TY {
            FLOAT_F16 => load_f16x8((p as *const u16).add(i)),
            FLOAT_BF16 => load_bf16x8((p as *const u16).add(i)),
            _ => _mm256_loadu_ps((p as *const f32).add(i)),
        };
    }
    if TY == FLOAT_F32 {
        let mut t = [0f32; 8];
        core::ptr::copy_nonoverlapping(
            (p as *const f32).add(i) as *const u8,
            t.as_mut_ptr() as *mut u8,
            4 * n,
        );
        return _mm256_loadu_ps(t.as_ptr());
    }
    let mut t = [0u16; 8];
    core::ptr::copy_nonoverlapping(
        (p as *const u16).add(i) as *const u8,
        t.as_mut_ptr() as *mut u8,
        2 * n,
    );
    match TY {
        FLOAT_F16 => load_f16x8(t.as_ptr()),
        _ => load_bf16x8(t.as_ptr()),
    }
}

/// 8 f32 values from `x + i`, or the first `n` (< 8) zero padded.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,bmi2")]
unsafe fn load_x(x: *const f32, i: usize, n: usize) -> __m256 {
    if n >= 8 {
        return _mm256_loadu_ps(x.add(i));
    }
    let mut t = [0f32; 8];
    core::ptr::copy_nonoverlapping(x.add(i), t.as_mut_ptr(), n);
    _mm256_loadu_ps(t.as_ptr())
}

/// Converts a float weight row (F32/F16/BF16 bytes) to f32.
#[target_feature(enable = "avx2,fma,f16c,bmi2")]
pub(super) unsafe fn float_row_to_f32(ty: GgmlType, src: &[u8], dst: &mut [f32]) {
    let n = dst.len().min(src.len() / ty.type_size());
    let (p, o) = (src.as_ptr(), dst.as_mut_ptr());
    let mut i = 0;
    while i < n {
        let m = n - i;
        let v = match ty {
            GgmlType::F16 => load_float::<FLOAT_F16>(p, i, m),
            GgmlType::BF16 => load_float::<FLOAT_BF16>(p, i, m),
            _ => load_float::<FLOAT_F32>(p, i, m),
        };
        if m >= 8 {
            _mm256_storeu_ps(o.add(i), v);
        } else {
            let mut t = [0f32; 8];
            _mm256_storeu_ps(t.as_mut_ptr(), v);
            core::ptr::copy_nonoverlapping(t.as_ptr(), o.add(i), m);
        }
        i += 8;
    }
}

// ---------------------------------------------------------------------------------------------
// Block decoders: one 32-value block -> (bytes, ws, mw); k-quant super-blocks -> 8 steps.
// ---------------------------------------------------------------------------------------------

/// 16 bytes of nibbles: low nibbles then high nibbles.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,bmi2")]
unsafe fn nib(q: *const u8) -> __m256i {
    let y = loadu128(q);
    _mm256_and_si256(
        _mm256_set_m128i(_mm_srli_epi16::<4>(y), y),
        _mm256_set1_epi8(0x0F),
    )
}

/// Byte `j` is 0x10 if bit `j` of the little-endian u32 at `p` is set.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,bmi2")]
unsafe fn qh_bytes(p: *const u8) -> __m256i {
    let qh = u32::from_le((p as *const u32).read_unaligned());
    let v = _mm256_set1_epi32(qh as i32);
    let shuf = _mm256_set_epi64x(
        0x0303_0303_0303_0303,
        0x0202_0202_0202_0202,
        0x0101_0101_0101_0101,
        0,
    );
    let b = _mm256_shuffle_epi8(v, shuf);
    let bit = _mm256_set1_epi64x(0x8040_2010_0804_0201u64 as i64);
    let m = _mm256_cmpeq_epi8(_mm256_and_si256(b, bit), bit);
    _mm256_and_si256(m, _mm256_set1_epi8(0x10))
}

type Legacy = (__m256i, f32, f32);

#[inline]
#[target_feature(enable = "avx2,fma,f16c,bmi2")]
unsafe fn blk_q4_0(p: *const u8) -> Legacy {
    let d = h1(p);
    (nib(p.add(2)), d, -8.0 * d)
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c,bmi2")]
unsafe fn blk_q4_1(p: *const u8) -> Legacy {
    (nib(p.add(4)), h1(p), h1(p.add(2)))
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c,bmi2")]
unsafe fn blk_q5_0(p: *const u8) -> Legacy {
    let d = h1(p);
    (
        _mm256_or_si256(nib(p.add(6)), qh_bytes(p.add(2))),
        d,
        -16.0 * d,
    )
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c,bmi2")]
unsafe fn blk_q5_1(p: *const u8) -> Legacy {
    (
        _mm256_or_si256(nib(p.add(8)), qh_bytes(p.add(4))),
        h1(p),
        h1(p.add(2)),
    )
}

/// `LANE_ONE[7 - j..15 - j]` selects lane `j`; `LANES_BELOW[8 - n..16 - n]` lanes `0..n`.
const LANE_ONE: [i32; 15] = [0, 0, 0, 0, 0, 0, 0, -1, 0, 0, 0, 0, 0, 0, 0];
const LANES_BELOW: [i32; 16] = [-1, -1, -1, -1, -1, -1, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0];

/// Mask of lane `j` (< 8).
#[inline]
#[target_feature(enable = "avx2,fma,f16c,bmi2")]
unsafe fn lane_one(j: usize) -> __m256 {
    _mm256_castsi256_ps(_mm256_loadu_si256(
        LANE_ONE.as_ptr().add(7 - j) as *const __m256i
    ))
}

/// Mask of lanes `0..n` (`n` clamped to 8).
#[inline]
#[target_feature(enable = "avx2,fma,f16c,bmi2")]
unsafe fn lanes_below(n: usize) -> __m256i {
    _mm256_loadu_si256(LANES_BELOW.as_ptr().add(8 - n.min(8)) as *const __m256i)
}

macro_rules! legacy_kernels {
    ($dot:ident, $unpack:ident, $blk:ident, $ts:expr) => {
        /// Dot product of one weight row (whole blocks) with a quantized activation row
        /// carrying `xs32`.
        ///
        /// The arithmetic, which [`micro_legacy`] reproduces exactly: block `b` adds
        /// `f32(dot4(u, q)) * (ws * d)` lane by lane to `acc`; its offset `mw` goes to lane
        /// `b % 8` of a vector that, every 8 blocks (and after the last), accumulates
        /// `mw * xs32` into `corr` (lanes past the row are zero). The result is
        /// `hsum(acc + corr)`.
        #[target_feature(enable = "avx2,fma,f16c,bmi2")]
        unsafe fn $dot(row: &[u8], a: ActRow<'_>) -> f32 {
            let nblk = row.len() / $ts;
            let p = row.as_ptr();
            let mut acc = _mm256_setzero_ps();
            let mut corr = _mm256_setzero_ps();
            let mut mv = _mm256_setzero_ps();
            for b in 0..nblk {
                let (z, ws, mw) = $blk(p.add(b * $ts));
                let t = dot4(z, loadu256(a.qs.as_ptr().add(32 * b) as *const u8));
                acc = _mm256_fmadd_ps(
                    _mm256_cvtepi32_ps(t),
                    _mm256_set1_ps(ws * *a.d.get_unchecked(b)),
                    acc,
                );
                mv = _mm256_blendv_ps(mv, _mm256_set1_ps(mw), lane_one(b % 8));
                if b % 8 == 7 {
                    let xs = _mm256_loadu_ps(a.xs32.as_ptr().add(b - 7));
                    corr = _mm256_fmadd_ps(mv, xs, corr);
                    mv = _mm256_setzero_ps();
                }
            }
            if nblk % 8 != 0 {
                let g = nblk / 8 * 8;
                let xs = _mm256_maskload_ps(a.xs32.as_ptr().add(g), lanes_below(nblk - g));
                corr = _mm256_fmadd_ps(mv, xs, corr);
            }
            hsum(_mm256_add_ps(acc, corr))
        }

        /// Unpacks one weight row to `u` (`kp`), `wl` (`kp / 4`), `mw` (`kp / 16`); padding
        /// is zeroed.
        #[target_feature(enable = "avx2,fma,f16c,bmi2")]
        pub(super) unsafe fn $unpack(row: &[u8], u: &mut [u8], wl: &mut [f32], mw: &mut [f32]) {
            let nblk = row.len() / $ts;
            let p = row.as_ptr();
            for b in 0..nblk {
                let (z, ws, m) = $blk(p.add(b * $ts));
                _mm256_storeu_si256(u.as_mut_ptr().add(32 * b) as *mut __m256i, z);
                _mm256_storeu_ps(wl.as_mut_ptr().add(8 * b), _mm256_set1_ps(ws));
                mw[2 * b] = m;
                mw[2 * b + 1] = m;
            }
            zero_tail(u, wl, mw, 32 * nblk);
        }
    };
}

fn zero_tail(u: &mut [u8], wl: &mut [f32], mw: &mut [f32], from: usize) {
    let (nu, nw, nm) = (u.len(), wl.len(), mw.len());
    u[from.min(nu)..].fill(0);
    wl[(from / 4).min(nw)..].fill(0.0);
    mw[(from / 16).min(nm)..].fill(0.0);
}

legacy_kernels!(dot_q4_0, unpack_q4_0, blk_q4_0, 18);
legacy_kernels!(dot_q4_1, unpack_q4_1, blk_q4_1, 20);
legacy_kernels!(dot_q5_0, unpack_q5_0, blk_q5_0, 22);
legacy_kernels!(dot_q5_1, unpack_q5_1, blk_q5_1, 24);

/// `Q8_0` dot product (signed form, no offsets).
#[target_feature(enable = "avx2,fma,f16c,bmi2")]
unsafe fn dot_q8_0(row: &[u8], a: ActRow<'_>) -> f32 {
    let nblk = row.len() / 34;
    let p = row.as_ptr();
    let mut acc = _mm256_setzero_ps();
    for b in 0..nblk {
        let q = p.add(34 * b);
        let t = dot4_signed(
            loadu256(q.add(2)),
            loadu256(a.qs.as_ptr().add(32 * b) as *const u8),
        );
        acc = _mm256_fmadd_ps(
            _mm256_cvtepi32_ps(t),
            _mm256_set1_ps(h1(q) * *a.d.get_unchecked(b)),
            acc,
        );
    }
    hsum(acc)
}

/// `MXFP4` dot product in `Q8_0`'s signed form: the E2M1 codes become their doubled values
/// (a byte shuffle), the scale is half the E8M0 power of two.
#[target_feature(enable = "avx2,fma,f16c,bmi2")]
unsafe fn dot_mxfp4(row: &[u8], a: ActRow<'_>) -> f32 {
    let nblk = row.len() / 17;
    let p = row.as_ptr();
    let table =
        _mm256_broadcastsi128_si256(loadu128(super::scalar::MXFP4_DOUBLED.as_ptr() as *const u8));
    let mut acc = _mm256_setzero_ps();
    for b in 0..nblk {
        let q = p.add(17 * b);
        let w = _mm256_shuffle_epi8(table, nib(q.add(1)));
        let t = dot4_signed(w, loadu256(a.qs.as_ptr().add(32 * b) as *const u8));
        let d = super::scalar::e8m0_half(*q);
        acc = _mm256_fmadd_ps(
            _mm256_cvtepi32_ps(t),
            _mm256_set1_ps(d * *a.d.get_unchecked(b)),
            acc,
        );
    }
    hsum(acc)
}

/// `MXFP4` unpacker (doubled values plus 128, as the scalar one).
#[target_feature(enable = "avx2,fma,f16c,bmi2")]
pub(super) unsafe fn unpack_mxfp4(row: &[u8], u: &mut [u8], wl: &mut [f32], mw: &mut [f32]) {
    let nblk = row.len() / 17;
    let p = row.as_ptr();
    let table =
        _mm256_broadcastsi128_si256(loadu128(super::scalar::MXFP4_DOUBLED.as_ptr() as *const u8));
    for b in 0..nblk {
        let q = p.add(17 * b);
        let d = super::scalar::e8m0_half(*q);
        let w = _mm256_shuffle_epi8(table, nib(q.add(1)));
        let z = _mm256_xor_si256(w, _mm256_set1_epi8(-128));
        _mm256_storeu_si256(u.as_mut_ptr().add(32 * b) as *mut __m256i, z);
        _mm256_storeu_ps(wl.as_mut_ptr().add(8 * b), _mm256_set1_ps(d));
        mw[2 * b] = -128.0 * d;
        mw[2 * b + 1] = -128.0 * d;
    }
    zero_tail(u, wl, mw, 32 * nblk);
}

/// `Q8_0` unpacker (bytes are the signed values plus 128, like the scalar one).
#[target_feature(enable = "avx2,fma,f16c,bmi2")]
pub(super) unsafe fn unpack_q8_0(row: &[u8], u: &mut [u8], wl: &mut [f32], mw: &mut [f32]) {
    let nblk = row.len() / 34;
    let p = row.as_ptr();
    for b in 0..nblk {
        let q = p.add(34 * b);
        let d = h1(q);
        let z = _mm256_xor_si256(loadu256(q.add(2)), _mm256_set1_epi8(-128));
        _mm256_storeu_si256(u.as_mut_ptr().add(32 * b) as *mut __m256i, z);
        _mm256_storeu_ps(wl.as_mut_ptr().add(8 * b), _mm256_set1_ps(d));
        mw[2 * b] = -128.0 * d;
        mw[2 * b + 1] = -128.0 * d;
    }
    zero_tail(u, wl, mw, 32 * nblk);
}

/// The integer parts of a `Q4_K`/`Q5_K` super-block at `p`: the 8 six-bit sub-block scales
/// (byte `j` of the `u64`), `d`, and the per-32 offsets `-(dmin * m)`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,bmi2")]
unsafe fn k4_ints(p: *const u8) -> (u64, f32, __m256) {
    let d = h1(p);
    let dmin = h1(p.add(2));
    let s = p.add(4);
    let a = u32::from_le((s as *const u32).read_unaligned());
    let b = u32::from_le((s.add(4) as *const u32).read_unaligned());
    let c = u32::from_le((s.add(8) as *const u32).read_unaligned());
    let sc =
        (a & 0x3F3F_3F3F) as u64 | (((c & 0x0F0F_0F0F) | ((a >> 2) & 0x3030_3030)) as u64) << 32;
    let mn = (b & 0x3F3F_3F3F) as u64
        | ((((c >> 4) & 0x0F0F_0F0F) | ((b >> 2) & 0x3030_3030)) as u64) << 32;
    let mnf = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_cvtsi64_si128(mn as i64)));
    (
        sc,
        d,
        _mm256_xor_ps(
            _mm256_mul_ps(mnf, _mm256_set1_ps(dmin)),
            _mm256_set1_ps(-0.0),
        ),
    )
}

/// The 8 sub-block scales (bytes of `sc`) as 16-bit lanes, `[sc_0 .. sc_7]` in both halves.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,bmi2")]
unsafe fn scale_words(sc: u64) -> __m256i {
    _mm256_broadcastsi128_si256(_mm_cvtepu8_epi16(_mm_cvtsi64_si128(sc as i64)))
}

/// Scale `j` of [`scale_words`] in every 16-bit lane.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,bmi2")]
unsafe fn pick_scale(words: __m256i, j: usize) -> __m256i {
    let lo = (2 * j) as i16;
    _mm256_shuffle_epi8(words, _mm256_set1_epi16(((lo + 1) << 8) | lo))
}

/// `sum + sc * dot(u, x)` in integers: the `maddubs` pairs (at most 2 * 31 * 127 in
/// magnitude) times the sub-block scale `sc` (every 16-bit lane of `scv`) with `madd`, exactly.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,bmi2")]
unsafe fn scaled4(sum: __m256i, u: __m256i, x: __m256i, scv: __m256i) -> __m256i {
    _mm256_add_epi32(sum, _mm256_madd_epi16(_mm256_maddubs_epi16(u, x), scv))
}

/// The integer-scale layout of a super-block's 64 lane scales (AVX2 `Q4_K`/`Q5_K` only): the
/// 8 six-bit sub-block scales as the raw bits of the first two floats (bytes below 64 never
/// form a NaN or infinity, so the bits survive any float move), `d` in the third, zeros after.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,bmi2")]
unsafe fn store_int_scales(sc: u64, d: f32, wl: *mut f32) {
    *wl = f32::from_bits(sc as u32);
    *wl.add(1) = f32::from_bits((sc >> 32) as u32);
    *wl.add(2) = d;
    for k in 3..8 {
        *wl.add(k) = 0.0;
    }
    for k in 1..8 {
        _mm256_storeu_ps(wl.add(8 * k), _mm256_setzero_ps());
    }
}

/// The scale bytes and `d` that [`store_int_scales`] wrote at `wl`.
#[inline]
unsafe fn load_int_scales(wl: *const f32) -> (u64, f32) {
    let lo = (*wl).to_bits() as u64;
    let hi = (*wl.add(1)).to_bits() as u64;
    (lo | (hi << 32), *wl.add(2))
}

/// Per-16 offsets from 8 per-32 ones: `([m0,m0,..,m3,m3], [m4,m4,..,m7,m7])`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,bmi2")]
unsafe fn pairs(m: __m256) -> (__m256, __m256) {
    (
        _mm256_permutevar8x32_ps(m, _mm256_set_epi32(3, 3, 2, 2, 1, 1, 0, 0)),
        _mm256_permutevar8x32_ps(m, _mm256_set_epi32(7, 7, 6, 6, 5, 5, 4, 4)),
    )
}

/// The values of sub-blocks `2j` (low nibbles) and `2j + 1` (high nibbles) of a `Q4_K`
/// (`Q5 == false`, 144 bytes) or `Q5_K` (176 bytes: bit `2j` / `2j + 1` of the 32 `qh` bytes
/// as the fifth bit) super-block at `p`. The two share their scales and mins.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,bmi2")]
unsafe fn k4_pair<const Q5: bool>(p: *const u8, j: usize) -> (__m256i, __m256i) {
    let m0f = _mm256_set1_epi8(0x0F);
    let y = loadu256(p.add(if Q5 { 48 } else { 16 } + 32 * j));
    let lo = _mm256_and_si256(y, m0f);
    let hi = _mm256_and_si256(_mm256_srli_epi16::<4>(y), m0f);
    if !Q5 {
        return (lo, hi);
    }
    let qh = loadu256(p.add(16));
    let one = _mm256_set1_epi8(1);
    let bit = |k: i32| {
        let b = _mm256_and_si256(_mm256_srl_epi16(qh, _mm_cvtsi32_si128(k)), one);
        _mm256_slli_epi16::<4>(b)
    };
    (
        _mm256_or_si256(lo, bit(2 * j as i32)),
        _mm256_or_si256(hi, bit(2 * j as i32 + 1)),
    )
}

/// `Q4_K` (`Q5 == false`) or `Q5_K` dot product in the integer-scale form: per super-block the
/// sub-block dot products times their six-bit scales, summed in integers (exact), then one
/// conversion and an FMA by `d * xd`; [`micro_k_int`] reproduces its arithmetic.
#[target_feature(enable = "avx2,fma,f16c,bmi2")]
unsafe fn dot_k4<const Q5: bool>(row: &[u8], a: ActRow<'_>) -> f32 {
    let ts = if Q5 { 176 } else { 144 };
    let nsb = row.len() / ts;
    let mut acc = _mm256_setzero_ps();
    let mut corr = _mm256_setzero_ps();
    for sb in 0..nsb {
        let p = row.as_ptr().add(ts * sb);
        let (sc, d, mw) = k4_ints(p);
        let words = scale_words(sc);
        let xq = a.qs.as_ptr().add(256 * sb) as *const u8;
        let mut sum = _mm256_setzero_si256();
        for j in 0..4 {
            let (lo, hi) = k4_pair::<Q5>(p, j);
            sum = scaled4(sum, lo, loadu256(xq.add(64 * j)), pick_scale(words, 2 * j));
            sum = scaled4(
                sum,
                hi,
                loadu256(xq.add(64 * j + 32)),
                pick_scale(words, 2 * j + 1),
            );
        }
        let f = d * *a.d.get_unchecked(8 * sb);
        acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sum), _mm256_set1_ps(f), acc);
        let (m0, m1) = pairs(mw);
        let xs = a.xsum.as_ptr().add(16 * sb);
        corr = _mm256_fmadd_ps(m0, _mm256_loadu_ps(xs), corr);
        corr = _mm256_fmadd_ps(m1, _mm256_loadu_ps(xs.add(8)), corr);
    }
    hsum(_mm256_add_ps(acc, corr))
}

/// `Q4_K` (`Q5 == false`) or `Q5_K` unpacker (scales in the integer-scale layout,
/// [`store_int_scales`]).
#[target_feature(enable = "avx2,fma,f16c,bmi2")]
unsafe fn unpack_k4<const Q5: bool>(row: &[u8], u: &mut [u8], wl: &mut [f32], mw: &mut [f32]) {
    let ts = if Q5 { 176 } else { 144 };
    let nsb = row.len() / ts;
    for sb in 0..nsb {
        let p = row.as_ptr().add(ts * sb);
        let (sc, d, m) = k4_ints(p);
        for j in 0..4 {
            let (lo, hi) = k4_pair::<Q5>(p, j);
            let o = u.as_mut_ptr().add(256 * sb + 64 * j);
            _mm256_storeu_si256(o as *mut __m256i, lo);
            _mm256_storeu_si256(o.add(32) as *mut __m256i, hi);
        }
        store_int_scales(sc, d, wl.as_mut_ptr().add(64 * sb));
        let (m0, m1) = pairs(m);
        _mm256_storeu_ps(mw.as_mut_ptr().add(16 * sb), m0);
        _mm256_storeu_ps(mw.as_mut_ptr().add(16 * sb + 8), m1);
    }
    zero_tail(u, wl, mw, 256 * nsb);
}

/// `Q4_K` dot product.
#[target_feature(enable = "avx2,fma,f16c,bmi2")]
unsafe fn dot_q4_k(row: &[u8], a: ActRow<'_>) -> f32 {
    dot_k4::<false>(row, a)
}

/// `Q5_K` dot product.
#[target_feature(enable = "avx2,fma,f16c,bmi2")]
unsafe fn dot_q5_k(row: &[u8], a: ActRow<'_>) -> f32 {
    dot_k4::<true>(row, a)
}

/// `Q4_K` unpacker.
#[target_feature(enable = "avx2,fma,f16c,bmi2")]
pub(super) unsafe fn unpack_q4_k(row: &[u8], u: &mut [u8], wl: &mut [f32], mw: &mut [f32]) {
    unpack_k4::<false>(row, u, wl, mw)
}

/// `Q5_K` unpacker.
#[target_feature(enable = "avx2,fma,f16c,bmi2")]
pub(super) unsafe fn unpack_q5_k(row: &[u8], u: &mut [u8], wl: &mut [f32], mw: &mut [f32]) {
    unpack_k4::<true>(row, u, wl, mw)
}

/// Stores 16 per-16 scales `ws` (two vectors of 8) as 64 per-4 lane scales at `wl`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,bmi2")]
unsafe fn store_lane_scales(ws: [__m256; 2], wl: *mut f32) {
    for (h, v) in ws.iter().enumerate() {
        for k in 0..4 {
            let i = 2 * k as i32;
            let idx = _mm256_setr_epi32(i, i, i, i, i + 1, i + 1, i + 1, i + 1);
            _mm256_storeu_ps(wl.add(32 * h + 8 * k), _mm256_permutevar8x32_ps(*v, idx));
        }
    }
}

/// The 2-bit fields of 32 bytes at `q`, in `Q2_K`/`Q3_K` value order: vector `s` holds bits
/// `2s..2s + 2` of every byte.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,bmi2")]
unsafe fn crumbs(q: *const u8) -> [__m256i; 4] {
    let y = loadu256(q);
    let m3 = _mm256_set1_epi8(3);
    [
        _mm256_and_si256(y, m3),
        _mm256_and_si256(_mm256_srli_epi16::<2>(y), m3),
        _mm256_and_si256(_mm256_srli_epi16::<4>(y), m3),
        _mm256_and_si256(_mm256_srli_epi16::<6>(y), m3),
    ]
}

/// `Q2_K` unpacker (as the scalar one: `ws = d * (sc & 15)`, `mw = -(dmin * (sc >> 4))`).
#[target_feature(enable = "avx2,fma,f16c,bmi2")]
pub(super) unsafe fn unpack_q2_k(row: &[u8], u: &mut [u8], wl: &mut [f32], mw: &mut [f32]) {
    let nsb = row.len() / 84;
    for sb in 0..nsb {
        let p = row.as_ptr().add(84 * sb);
        let (d, dmin) = (_mm256_set1_ps(h1(p.add(80))), _mm256_set1_ps(h1(p.add(82))));
        let sc = loadu128(p);
        let lo = _mm_and_si128(sc, _mm_set1_epi8(0x0F));
        let hi = _mm_and_si128(_mm_srli_epi16::<4>(sc), _mm_set1_epi8(0x0F));
        let f = |v: __m128i| {
            [
                _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(v)),
                _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128::<8>(v))),
            ]
        };
        let (l, h) = (f(lo), f(hi));
        store_lane_scales(
            [_mm256_mul_ps(d, l[0]), _mm256_mul_ps(d, l[1])],
            wl.as_mut_ptr().add(64 * sb),
        );
        let neg = _mm256_set1_ps(-0.0);
        for (k, hv) in h.iter().enumerate() {
            _mm256_storeu_ps(
                mw.as_mut_ptr().add(16 * sb + 8 * k),
                _mm256_xor_ps(_mm256_mul_ps(dmin, *hv), neg),
            );
        }
        for n in 0..2 {
            let c = crumbs(p.add(16 + 32 * n));
            for (s, v) in c.iter().enumerate() {
                let o = u.as_mut_ptr().add(256 * sb + 128 * n + 32 * s);
                _mm256_storeu_si256(o as *mut __m256i, *v);
            }
        }
    }
    zero_tail(u, wl, mw, 256 * nsb);
}

/// `Q3_K` unpacker (as the scalar one: two low bits, the `hmask` bit as the third,
/// `ws = d * scale`, `mw = -4 * ws`).
#[target_feature(enable = "avx2,fma,f16c,bmi2")]
pub(super) unsafe fn unpack_q3_k(row: &[u8], u: &mut [u8], wl: &mut [f32], mw: &mut [f32]) {
    let nsb = row.len() / 110;
    let one = _mm256_set1_epi8(1);
    for sb in 0..nsb {
        let p = row.as_ptr().add(110 * sb);
        let d = h1(p.add(108));
        let mut s12 = [0u8; 12];
        core::ptr::copy_nonoverlapping(p.add(96), s12.as_mut_ptr(), 12);
        let scales = super::scalar::q3k_scales(&s12);
        let mut ws = [0f32; 16];
        for (w, &c) in ws.iter_mut().zip(&scales) {
            *w = d * c as f32;
        }
        for (g, &w) in ws.iter().enumerate() {
            mw[16 * sb + g] = -4.0 * w;
        }
        store_lane_scales(
            [
                _mm256_loadu_ps(ws.as_ptr()),
                _mm256_loadu_ps(ws.as_ptr().add(8)),
            ],
            wl.as_mut_ptr().add(64 * sb),
        );
        let hm = loadu256(p);
        for n in 0..2 {
            let c = crumbs(p.add(32 + 32 * n));
            for (s, v) in c.iter().enumerate() {
                let k = (4 * n + s) as i32;
                let hb = _mm256_and_si256(_mm256_srl_epi16(hm, _mm_cvtsi32_si128(k)), one);
                let val = _mm256_or_si256(*v, _mm256_slli_epi16::<2>(hb));
                let o = u.as_mut_ptr().add(256 * sb + 128 * n + 32 * s);
                _mm256_storeu_si256(o as *mut __m256i, val);
            }
        }
    }
    zero_tail(u, wl, mw, 256 * nsb);
}

/// The 8 steps of a `Q6_K` super-block at `p`: bytes and the two per-16 scale indices.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,bmi2")]
unsafe fn q6k_steps(p: *const u8) -> [__m256i; 8] {
    let m0f = _mm256_set1_epi8(0x0F);
    let m30 = _mm256_set1_epi8(0x30);
    let mut z = [_mm256_setzero_si256(); 8];
    for n in 0..2 {
        let ql0 = loadu256(p.add(64 * n));
        let ql1 = loadu256(p.add(64 * n + 32));
        let qh = loadu256(p.add(128 + 32 * n));
        z[4 * n] = _mm256_or_si256(
            _mm256_and_si256(ql0, m0f),
            _mm256_and_si256(_mm256_slli_epi16::<4>(qh), m30),
        );
        z[4 * n + 1] = _mm256_or_si256(
            _mm256_and_si256(ql1, m0f),
            _mm256_and_si256(_mm256_slli_epi16::<2>(qh), m30),
        );
        z[4 * n + 2] = _mm256_or_si256(
            _mm256_and_si256(_mm256_srli_epi16::<4>(ql0), m0f),
            _mm256_and_si256(qh, m30),
        );
        z[4 * n + 3] = _mm256_or_si256(
            _mm256_and_si256(_mm256_srli_epi16::<4>(ql1), m0f),
            _mm256_and_si256(_mm256_srli_epi16::<2>(qh), m30),
        );
    }
    z
}

/// `d * sc` for the 16 groups of a `Q6_K` super-block: `(groups 0..8, groups 8..16)`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,bmi2")]
unsafe fn q6k_scales(p: *const u8) -> (__m256, __m256) {
    let d = _mm256_set1_ps(h1(p.add(208)));
    let sc = loadu128(p.add(192));
    (
        _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(sc)), d),
        _mm256_mul_ps(
            _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128::<8>(sc))),
            d,
        ),
    )
}

/// Lane scales of step `s` (0..4) within an 8-group half: `[ws[2s] x4, ws[2s+1] x4]`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,bmi2")]
unsafe fn quarter_pair(v: __m256, s: i32) -> __m256 {
    let (a, b) = (2 * s, 2 * s + 1);
    _mm256_permutevar8x32_ps(v, _mm256_set_epi32(b, b, b, b, a, a, a, a))
}

/// `Q6_K` dot product.
#[target_feature(enable = "avx2,fma,f16c,bmi2")]
unsafe fn dot_q6_k(row: &[u8], a: ActRow<'_>) -> f32 {
    let nsb = row.len() / 210;
    let m32 = _mm256_set1_ps(-32.0);
    let mut acc = _mm256_setzero_ps();
    let mut corr = _mm256_setzero_ps();
    for sb in 0..nsb {
        let p = row.as_ptr().add(210 * sb);
        let z = q6k_steps(p);
        let (w0, w1) = q6k_scales(p);
        let xq = a.qs.as_ptr().add(256 * sb) as *const u8;
        let mut s = _mm256_setzero_ps();
        for (j, zj) in z.iter().enumerate() {
            let t = dot4(*zj, loadu256(xq.add(32 * j)));
            let w = if j < 4 { w0 } else { w1 };
            s = _mm256_fmadd_ps(_mm256_cvtepi32_ps(t), quarter_pair(w, (j % 4) as i32), s);
        }
        acc = _mm256_fmadd_ps(s, _mm256_set1_ps(*a.d.get_unchecked(8 * sb)), acc);
        let xs = a.xsum.as_ptr().add(16 * sb);
        corr = _mm256_fmadd_ps(_mm256_mul_ps(w0, m32), _mm256_loadu_ps(xs), corr);
        corr = _mm256_fmadd_ps(_mm256_mul_ps(w1, m32), _mm256_loadu_ps(xs.add(8)), corr);
    }
    hsum(_mm256_add_ps(acc, corr))
}

/// `Q6_K` unpacker.
#[target_feature(enable = "avx2,fma,f16c,bmi2")]
pub(super) unsafe fn unpack_q6_k(row: &[u8], u: &mut [u8], wl: &mut [f32], mw: &mut [f32]) {
    let nsb = row.len() / 210;
    let m32 = _mm256_set1_ps(-32.0);
    for sb in 0..nsb {
        let p = row.as_ptr().add(210 * sb);
        let z = q6k_steps(p);
        let (w0, w1) = q6k_scales(p);
        for (j, zj) in z.iter().enumerate() {
            _mm256_storeu_si256(u.as_mut_ptr().add(256 * sb + 32 * j) as *mut __m256i, *zj);
            let w = if j < 4 { w0 } else { w1 };
            _mm256_storeu_ps(
                wl.as_mut_ptr().add(64 * sb + 8 * j),
                quarter_pair(w, (j % 4) as i32),
            );
        }
        _mm256_storeu_ps(mw.as_mut_ptr().add(16 * sb), _mm256_mul_ps(w0, m32));
        _mm256_storeu_ps(mw.as_mut_ptr().add(16 * sb + 8), _mm256_mul_ps(w1, m32));
    }
    zero_tail(u, wl, mw, 256 * nsb);
}

/// Wraps one-row kernels into the multi-row [`super::matmul::DotFn`] form.
macro_rules! multi_row {
    ($($name:ident => $one:ident, $xs32:expr;)*) => {$(
        /// Dot products of `out.len()` consecutive weight rows with an activation row.
        #[target_feature(enable = "avx2,fma,f16c,bmi2")]
        unsafe fn $name(w: &[u8], row_bytes: usize, a: ActRow<'_>, out: &mut [f32]) {
            if $xs32 && a.xs32.len() * 32 < a.qs.len() {
                // Extras not filled in: the matmul always fills them; this only keeps a
                // misuse memory-safe.
                out.fill(f32::NAN);
                return;
            }
            for (r, o) in out.iter_mut().enumerate() {
                *o = $one(&w[r * row_bytes..(r + 1) * row_bytes], a);
            }
        }
    )*};
}

multi_row!(
    rows_q4_0 => dot_q4_0, true;
    rows_q4_1 => dot_q4_1, true;
    rows_q5_0 => dot_q5_0, true;
    rows_q5_1 => dot_q5_1, true;
    rows_q8_0 => dot_q8_0, false;
    rows_mxfp4 => dot_mxfp4, false;
    rows_q4_k => dot_q4_k, false;
    rows_q5_k => dot_q5_k, false;
    rows_q6_k => dot_q6_k, false;
);

/// Activation extras the AVX2 kernels of `ty` read: `xs32` for the unsigned legacy types.
pub(super) fn act_extras(ty: GgmlType) -> Extras {
    Extras {
        off: None,
        xs32: matches!(
            ty,
            GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Q5_0 | GgmlType::Q5_1
        ),
    }
}

/// Quantized-row dot product for `ty`; `None` where the tiled kernel serves one row too.
pub(super) fn dot_fn(ty: GgmlType) -> Option<super::matmul::DotFn> {
    Some(match ty {
        GgmlType::Q4_0 => rows_q4_0,
        GgmlType::Q4_1 => rows_q4_1,
        GgmlType::Q5_0 => rows_q5_0,
        GgmlType::Q5_1 => rows_q5_1,
        GgmlType::Q8_0 => rows_q8_0,
        GgmlType::MXFP4 => rows_mxfp4,
        GgmlType::Q4_K => rows_q4_k,
        GgmlType::Q5_K => rows_q5_k,
        GgmlType::Q6_K => rows_q6_k,
        _ => return None,
    })
}

/// Row unpacker for `ty`, `None` where the scalar unpacker is used instead.
pub(super) fn unpack_fn(ty: GgmlType) -> Option<super::matmul::UnpackFn> {
    Some(match ty {
        GgmlType::Q4_0 => unpack_q4_0,
        GgmlType::Q4_1 => unpack_q4_1,
        GgmlType::Q5_0 => unpack_q5_0,
        GgmlType::Q5_1 => unpack_q5_1,
        GgmlType::Q8_0 => unpack_q8_0,
        GgmlType::MXFP4 => unpack_mxfp4,
        GgmlType::Q2_K => unpack_q2_k,
        GgmlType::Q3_K => unpack_q3_k,
        GgmlType::Q4_K => unpack_q4_k,
        GgmlType::Q5_K => unpack_q5_k,
        GgmlType::Q6_K => unpack_q6_k,
        _ => return None,
    })
}

/// The tiled-path micro-kernel for `ty`: the arithmetic of its decode kernel.
pub(super) fn micro_fn(ty: GgmlType) -> Option<super::matmul::MicroQ8Fn> {
    Some(match ty {
        GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Q5_0 | GgmlType::Q5_1 => {
            micro_dyn::<{ LEGACY_UNSIGNED }>
        }
        GgmlType::Q8_0 | GgmlType::MXFP4 => micro_dyn::<{ LEGACY_SIGNED }>,
        GgmlType::Q2_K | GgmlType::Q3_K | GgmlType::Q6_K => micro_dyn::<{ KQUANT }>,
        GgmlType::Q4_K | GgmlType::Q5_K => micro_dyn::<{ KQUANT_INT }>,
        _ => return None,
    })
}

// ---------------------------------------------------------------------------------------------
// GEMM micro-kernels: the decode kernels' arithmetic per (weight row, activation row), on
// unpacked weight rows, register-tiled over R rows and C activation rows.
// ---------------------------------------------------------------------------------------------

/// [`micro_dyn`] form: unsigned legacy types (offsets through `a.xs32`).
const LEGACY_UNSIGNED: u8 = 0;
/// [`micro_dyn`] form: `Q8_0` and `MXFP4` (signed bytes, no offsets).
const LEGACY_SIGNED: u8 = 1;
/// [`micro_dyn`] form: k-quants.
const KQUANT: u8 = 2;
/// [`micro_dyn`] form: `Q4_K`/`Q5_K` with integer sub-block scales ([`store_int_scales`]).
const KQUANT_INT: u8 = 3;
/// Activation rows per [`micro_k_int`] tile.
const KINT_COLS: usize = 4;
/// Weight rows per [`micro_k_int`] tile.
const KINT_ROWS: usize = 1;

/// The legacy decode kernels (`legacy_kernels`, [`dot_q8_0`] when `SIGNED`) for `R` unpacked
/// rows (from `r0`) times `C` activation rows over `cols` values.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,bmi2")]
unsafe fn micro_legacy<const R: usize, const C: usize, const SIGNED: bool>(
    w: &W8Tile<'_>,
    r0: usize,
    a: [ActRow<'_>; C],
    cols: usize,
) -> [[f32; C]; R] {
    let nblk = cols / 32;
    let mut acc = [[_mm256_setzero_ps(); C]; R];
    let (wq, wsc, wmw) = w.row_ptrs::<R>(r0);
    for b in 0..nblk {
        for r in 0..R {
            let mut wv = loadu256(wq[r].add(32 * b));
            if SIGNED {
                wv = _mm256_xor_si256(wv, _mm256_set1_epi8(-128));
            }
            let wlv = _mm256_loadu_ps(wsc[r].add(8 * b));
            for c in 0..C {
                let xv = loadu256(a[c].qs.as_ptr().add(32 * b) as *const u8);
                let t = if SIGNED {
                    dot4_signed(wv, xv)
                } else {
                    dot4(wv, xv)
                };
                let sc = _mm256_mul_ps(wlv, _mm256_broadcast_ss(a[c].d.get_unchecked(b)));
                acc[r][c] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(t), sc, acc[r][c]);
            }
        }
    }
    let mut out = [[0f32; C]; R];
    if SIGNED {
        for r in 0..R {
            for c in 0..C {
                out[r][c] = hsum(acc[r][c]);
            }
        }
        return out;
    }
    // The per-block offsets are the even entries of the per-16 ones.
    let even = _mm256_setr_epi32(0, 2, 4, 6, 0, 2, 4, 6);
    for r in 0..R {
        let mut corr = [_mm256_setzero_ps(); C];
        for g in (0..nblk).step_by(8) {
            let valid = nblk - g;
            let lo = _mm256_maskload_ps(wmw[r].add(2 * g), lanes_below(2 * valid));
            let hi = _mm256_maskload_ps(
                wmw[r].add(2 * g + 8),
                lanes_below((2 * valid).saturating_sub(8)),
            );
            let mb = _mm256_blend_ps::<0xF0>(
                _mm256_permutevar8x32_ps(lo, even),
                _mm256_permutevar8x32_ps(hi, even),
            );
            for c in 0..C {
                let xs = _mm256_maskload_ps(a[c].xs32.as_ptr().add(g), lanes_below(valid));
                corr[c] = _mm256_fmadd_ps(mb, xs, corr[c]);
            }
        }
        for c in 0..C {
            out[r][c] = hsum(_mm256_add_ps(acc[r][c], corr[c]));
        }
    }
    out
}

/// The k-quant decode kernels ([`dot_q4_k`], [`dot_q6_k`]) for `R` unpacked rows (from `r0`)
/// times `C` activation rows over `cols` values (whole super-blocks): per super-block an
/// 8-step `fma` chain of `f32(dot4(u, q)) * ws` scaled by `d` into `acc`, the offsets
/// `mw * xsum` into `corr`, then `hsum(acc + corr)`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,bmi2")]
unsafe fn micro_k<const R: usize, const C: usize>(
    w: &W8Tile<'_>,
    r0: usize,
    a: [ActRow<'_>; C],
    cols: usize,
) -> [[f32; C]; R] {
    let nsb = cols / 256;
    let mut acc = [[_mm256_setzero_ps(); C]; R];
    let (wq, wsc, wmw) = w.row_ptrs::<R>(r0);
    for sb in 0..nsb {
        let mut s = [[_mm256_setzero_ps(); C]; R];
        for j in 0..8 {
            for r in 0..R {
                let wv = loadu256(wq[r].add(256 * sb + 32 * j));
                let wlv = _mm256_loadu_ps(wsc[r].add(64 * sb + 8 * j));
                for c in 0..C {
                    let xv = loadu256(a[c].qs.as_ptr().add(256 * sb + 32 * j) as *const u8);
                    let t = _mm256_cvtepi32_ps(dot4(wv, xv));
                    s[r][c] = _mm256_fmadd_ps(t, wlv, s[r][c]);
                }
            }
        }
        for c in 0..C {
            let d = _mm256_set1_ps(*a[c].d.get_unchecked(8 * sb));
            for r in 0..R {
                acc[r][c] = _mm256_fmadd_ps(s[r][c], d, acc[r][c]);
            }
        }
    }
    k_finish(acc, wmw, &a, nsb)
}

/// The end of the k-quant micro-kernels: the offsets `mw * xsum` of every super-block into
/// `corr`, then `hsum(acc + corr)` per (row, activation row).
#[inline]
#[target_feature(enable = "avx2,fma,f16c,bmi2")]
unsafe fn k_finish<const R: usize, const C: usize>(
    acc: [[__m256; C]; R],
    wmw: [*const f32; R],
    a: &[ActRow<'_>; C],
    nsb: usize,
) -> [[f32; C]; R] {
    let mut out = [[0f32; C]; R];
    for r in 0..R {
        let mut corr = [_mm256_setzero_ps(); C];
        for sb in 0..nsb {
            let m0 = _mm256_loadu_ps(wmw[r].add(16 * sb));
            let m1 = _mm256_loadu_ps(wmw[r].add(16 * sb + 8));
            for c in 0..C {
                let xs = a[c].xsum.as_ptr().add(16 * sb);
                corr[c] = _mm256_fmadd_ps(m0, _mm256_loadu_ps(xs), corr[c]);
                corr[c] = _mm256_fmadd_ps(m1, _mm256_loadu_ps(xs.add(8)), corr[c]);
            }
        }
        for c in 0..C {
            out[r][c] = hsum(_mm256_add_ps(acc[r][c], corr[c]));
        }
    }
    out
}

/// [`dot_k4`]'s arithmetic for `R` unpacked rows (integer-scale layout, from `r0`) times `C`
/// activation rows: per super-block the scaled integer sums, one conversion and an FMA by
/// `d * xd`; the offsets as [`micro_k`] takes them.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,bmi2")]
unsafe fn micro_k_int<const R: usize, const C: usize>(
    w: &W8Tile<'_>,
    r0: usize,
    a: [ActRow<'_>; C],
    cols: usize,
) -> [[f32; C]; R] {
    let nsb = cols / 256;
    let mut acc = [[_mm256_setzero_ps(); C]; R];
    let (wq, wsc, wmw) = w.row_ptrs::<R>(r0);
    for sb in 0..nsb {
        let mut words = [_mm256_setzero_si256(); R];
        let mut d = [0f32; R];
        for r in 0..R {
            let (sc, dr) = load_int_scales(wsc[r].add(64 * sb));
            words[r] = scale_words(sc);
            d[r] = dr;
        }
        let mut sum = [[_mm256_setzero_si256(); C]; R];
        for j in 0..8 {
            let mut xv = [_mm256_setzero_si256(); C];
            for c in 0..C {
                xv[c] = loadu256(a[c].qs.as_ptr().add(256 * sb + 32 * j) as *const u8);
            }
            for r in 0..R {
                let wv = loadu256(wq[r].add(256 * sb + 32 * j));
                let scv = pick_scale(words[r], j);
                for c in 0..C {
                    sum[r][c] = scaled4(sum[r][c], wv, xv[c], scv);
                }
            }
        }
        for c in 0..C {
            let xd = *a[c].d.get_unchecked(8 * sb);
            for r in 0..R {
                let f = _mm256_set1_ps(d[r] * xd);
                acc[r][c] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sum[r][c]), f, acc[r][c]);
            }
        }
    }
    k_finish(acc, wmw, &a, nsb)
}

/// Runs the `rr` x `cc` (each 1..=4) micro-kernel of form `FORM` (as tiles of up to 2 x 4,
/// or 2 x 2 for the k-quants) for rows `r0..` of `w` and activation rows `a[..cc]`.
#[target_feature(enable = "avx2,fma,f16c,bmi2")]
unsafe fn micro_dyn<const FORM: u8>(
    rr: usize,
    cc: usize,
    w: &W8Tile<'_>,
    r0: usize,
    a: &[ActRow<'_>; 4],
    cols: usize,
) -> [[f32; 4]; 4] {
    let mut out = [[0f32; 4]; 4];
    let cmax = match FORM {
        KQUANT => 2,
        KQUANT_INT => KINT_COLS,
        _ => 4,
    };
    let mut r = 0;
    while r < rr {
        let h = (rr - r).min(if FORM == KQUANT_INT { KINT_ROWS } else { 2 });
        let mut c0 = 0;
        while c0 < cc {
            let wd = (cc - c0).min(cmax);
            macro_rules! go {
                ($r:literal, $c:literal) => {{
                    let act: [ActRow<'_>; $c] = core::array::from_fn(|j| a[c0 + j]);
                    let res = match FORM {
                        LEGACY_UNSIGNED => micro_legacy::<$r, $c, false>(w, r0 + r, act, cols),
                        LEGACY_SIGNED => micro_legacy::<$r, $c, true>(w, r0 + r, act, cols),
                        KQUANT_INT => micro_k_int::<$r, $c>(w, r0 + r, act, cols),
                        _ => micro_k::<$r, $c>(w, r0 + r, act, cols),
                    };
                    for i in 0..$r {
                        out[r + i][c0..c0 + $c].copy_from_slice(&res[i]);
                    }
                }};
            }
            super::matmul::micro_match!(go, h, wd);
            c0 += wd;
        }
        r += h;
    }
    out
}

/// Dot product of a float weight row (raw bytes of type `TY` at `w`) with `x` over `k` values:
/// 8-value chunk `q` (the last one zero padded) goes to accumulator `q % 4`, and the result is
/// `hsum((acc0 + acc1) + (acc2 + acc3))`. [`micro_float_cm`] reproduces it for tiles.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,bmi2")]
unsafe fn dot_float<const TY: u8>(w: *const u8, x: *const f32, k: usize) -> f32 {
    let mut acc = [_mm256_setzero_ps(); 4];
    macro_rules! chunk {
        ($q:expr, $n:expr, $j:expr) => {{
            let i = 8 * $q;
            let xv = load_x(x, i, $n);
            acc[$j] = _mm256_fmadd_ps(load_float::<TY>(w, i, $n), xv, acc[$j]);
        }};
    }
    let (groups, nq) = (k / 32, k.div_ceil(8));
    for g in 0..groups {
        chunk!(4 * g, 8, 0);
        chunk!(4 * g + 1, 8, 1);
        chunk!(4 * g + 2, 8, 2);
        chunk!(4 * g + 3, 8, 3);
    }
    // The last 1 to 3 chunks (the last one possibly partial; out of line: it copies), each the
    // end of its chain.
    let q = 4 * groups;
    for t in 0..nq - q {
        let n = (k - 8 * (q + t)).min(8);
        match t {
            0 => chunk!(q, n, 0),
            1 => chunk!(q + 1, n, 1),
            _ => chunk!(q + 2, n, 2),
        }
    }
    let s01 = _mm256_add_ps(acc[0], acc[1]);
    let s23 = _mm256_add_ps(acc[2], acc[3]);
    hsum(_mm256_add_ps(s01, s23))
}

/// Decode-path dot products of consecutive float weight rows (`row_bytes` apart, raw bytes
/// of type `ty`) with `x` ([`dot_float`]), rows in memory order.
#[target_feature(enable = "avx2,fma,f16c,bmi2")]
pub(super) unsafe fn dot_float_rows(
    ty: GgmlType,
    w: &[u8],
    row_bytes: usize,
    x: &[f32],
    out: &mut [f32],
) {
    let k = x.len().min(row_bytes / ty.type_size());
    macro_rules! rows {
        ($ty:expr) => {
            for (r, o) in out.iter_mut().enumerate() {
                *o = dot_float::<{ $ty }>(w.as_ptr().add(r * row_bytes), x.as_ptr(), k);
            }
        };
    }
    match ty {
        GgmlType::F16 => rows!(FLOAT_F16),
        GgmlType::BF16 => rows!(FLOAT_BF16),
        _ => rows!(FLOAT_F32),
    }
}

/// [`dot_float`] for `R` f32 weight rows times `C` f32 rows over `k` values, all stored
/// chain-major ([`super::matmul::chain_major`] with 8 lanes): each accumulator's chunks are
/// contiguous, so the tile runs one sequential pass per accumulator with one register per
/// pair.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,bmi2")]
unsafe fn micro_float_cm<const R: usize, const C: usize>(
    w: [*const f32; R],
    x: [*const f32; C],
    k: usize,
) -> [[f32; C]; R] {
    // The chunk at value `i` (`$n` values, 8 or a zero-padded tail) into `acc`.
    macro_rules! chunk {
        ($i:expr, $n:expr, $acc:ident) => {{
            let i = $i;
            let mut xv = [_mm256_setzero_ps(); C];
            for c in 0..C {
                xv[c] = load_x(x[c], i, $n);
            }
            for r in 0..R {
                let wv = load_x(w[r], i, $n);
                for c in 0..C {
                    $acc[r][c] = _mm256_fmadd_ps(wv, xv[c], $acc[r][c]);
                }
            }
        }};
    }
    let (groups, nq) = (k / 32, k.div_ceil(8));
    let zero = [[_mm256_setzero_ps(); C]; R];
    let (mut a0, mut a1, mut a2, mut a3) = (zero, zero, zero, zero);
    // Each pass's registers are parked in memory before the next one.
    for g in 0..groups {
        chunk!(8 * g, 8, a0);
    }
    a0 = core::hint::black_box(a0);
    for g in 0..groups {
        chunk!(8 * (groups + g), 8, a1);
    }
    a1 = core::hint::black_box(a1);
    for g in 0..groups {
        chunk!(8 * (2 * groups + g), 8, a2);
    }
    a2 = core::hint::black_box(a2);
    for g in 0..groups {
        chunk!(8 * (3 * groups + g), 8, a3);
    }
    // The tail chunks keep their places (out of line: they copy).
    let q = 4 * groups;
    for t in 0..nq - q {
        let i = 8 * (q + t);
        let n = (k - i).min(8);
        match t {
            0 => chunk!(i, n, a0),
            1 => chunk!(i, n, a1),
            _ => chunk!(i, n, a2),
        }
    }
    let mut out = [[0f32; C]; R];
    for r in 0..R {
        for c in 0..C {
            let s01 = _mm256_add_ps(a0[r][c], a1[r][c]);
            let s23 = _mm256_add_ps(a2[r][c], a3[r][c]);
            out[r][c] = hsum(_mm256_add_ps(s01, s23));
        }
    }
    out
}

/// Runs the `rr` x `cc` (each 1..=4) chain-major float micro-kernel (as tiles of up to 2 x 4)
/// for f32 rows `w[..rr]` and `x[..cc]` of `k` values.
#[target_feature(enable = "avx2,fma,f16c,bmi2")]
pub(super) unsafe fn micro_float_dyn(
    rr: usize,
    cc: usize,
    w: &[&[f32]; 4],
    x: &[&[f32]; 4],
    k: usize,
) -> [[f32; 4]; 4] {
    let mut out = [[0f32; 4]; 4];
    let mut r0 = 0;
    while r0 < rr {
        let h = (rr - r0).min(2);
        macro_rules! go {
            ($r:literal, $c:literal) => {{
                let wp = core::array::from_fn(|j| w[r0 + j].as_ptr());
                let xp = core::array::from_fn(|j| x[j].as_ptr());
                let res = micro_float_cm::<$r, $c>(wp, xp, k);
                for i in 0..$r {
                    out[r0 + i][..$c].copy_from_slice(&res[i]);
                }
            }};
        }
        super::matmul::micro_match!(go, h, cc);
        r0 += h;
    }
    out
}
