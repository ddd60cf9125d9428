//! AVX-512 (F/BW/VL/DQ + VNNI) kernels: 64 values per step, `vpdpbusd` integer dot
//! products of unsigned weight bytes with signed activation bytes.
//!
//! Every function here is `unsafe` and compiled with the AVX-512 target features; callers must
//! check [`super::SimdLevel::Avx512`] is available and pass the documented lengths.

#![allow(clippy::missing_safety_doc)]

use super::matmul::W8Tile;
use super::quantize::{ActMode, ActRow, Extras};
use core::arch::x86_64::*;
use kiln_sdk::quant::GgmlType;

// ---------------------------------------------------------------------------------------------
// Small helpers
// ---------------------------------------------------------------------------------------------

/// Two f16 values (at `p0`, `p1`) as `[f0, f1, 0, 0]`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma,f16c,bmi2")]
unsafe fn h2(p0: *const u8, p1: *const u8) -> __m128 {
    let a = (p0 as *const u16).read_unaligned() as u32;
    let b = (p1 as *const u16).read_unaligned() as u32;
    _mm_cvtph_ps(_mm_cvtsi32_si128((a | (b << 16)) as i32))
}

/// One f16 value at `p`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma,f16c,bmi2")]
unsafe fn h1(p: *const u8) -> f32 {
    let a = (p as *const u16).read_unaligned();
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(a as i32)))
}

/// Lanes 0..8 take index `a`, lanes 8..16 index `b`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma,f16c,bmi2")]
unsafe fn idx_halves(a: i32, b: i32) -> __m512i {
    _mm512_mask_blend_epi32(0xFF00, _mm512_set1_epi32(a), _mm512_set1_epi32(b))
}

/// Lane `l` takes index `base + l / 4`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma,f16c,bmi2")]
unsafe fn idx_quarters(base: i32) -> __m512i {
    _mm512_add_epi32(
        _mm512_set1_epi32(base),
        _mm512_set_epi32(3, 3, 3, 3, 2, 2, 2, 2, 1, 1, 1, 1, 0, 0, 0, 0),
    )
}

#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma,f16c,bmi2")]
unsafe fn loadu512(p: *const u8) -> __m512i {
    _mm512_loadu_si512(p as *const _)
}

#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma,f16c,bmi2")]
unsafe fn loadu256(p: *const u8) -> __m256i {
    _mm256_loadu_si256(p as *const __m256i)
}

#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma,f16c,bmi2")]
unsafe fn loadu128(p: *const u8) -> __m128i {
    _mm_loadu_si128(p as *const __m128i)
}

/// Mask of the first `n` (<= 8) lanes.
#[inline]
fn mask8(n: usize) -> __mmask8 {
    if n >= 8 {
        0xFF
    } else {
        ((1u32 << n) - 1) as __mmask8
    }
}

/// Mask of the first `n` (<= 16) lanes.
#[inline]
fn mask16(n: usize) -> __mmask16 {
    if n >= 16 {
        0xFFFF
    } else {
        ((1u32 << n) - 1) as __mmask16
    }
}

// ---------------------------------------------------------------------------------------------
// Activation quantization
// ---------------------------------------------------------------------------------------------

/// Quantizes one block of `bl` values at `src` (all readable) into `qs`/`xsum`; returns `d`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma,f16c,bmi2")]
unsafe fn quantize_block(src: *const f32, bl: usize, qs: *mut i8, xsum: *mut f32) -> f32 {
    let mut m = _mm512_setzero_ps();
    for i in (0..bl).step_by(16) {
        m = _mm512_max_ps(m, _mm512_abs_ps(_mm512_loadu_ps(src.add(i))));
    }
    let amax = _mm512_reduce_max_ps(m);
    let (d, id) = if amax > 0.0 {
        (amax / 127.0, 127.0 / amax)
    } else {
        (0.0, 0.0)
    };
    let idv = _mm512_set1_ps(id);
    for i in (0..bl).step_by(16) {
        let v = _mm512_mul_ps(_mm512_loadu_ps(src.add(i)), idv);
        let q = _mm512_cvt_roundps_epi32::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(v);
        let q = _mm512_max_epi32(
            _mm512_min_epi32(q, _mm512_set1_epi32(127)),
            _mm512_set1_epi32(-127),
        );
        _mm_storeu_si128(qs.add(i) as *mut __m128i, _mm512_cvtsepi32_epi8(q));
        *xsum.add(i / 16) = d * _mm512_reduce_add_epi32(q) as f32;
    }
    d
}

/// `off[l] = -c * sum(qs[4l..4l + 4])` (as signed bytes); `qs.len()` is a multiple of 64 and
/// `off` holds `qs.len() / 4` lanes.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma,f16c,bmi2")]
pub(super) unsafe fn fill_offsets(qs: &[u8], c: u8, off: &mut [i32]) {
    let cv = _mm512_set1_epi8(c as i8);
    for s in 0..qs.len().min(off.len() * 4) / 64 {
        let t = _mm512_dpbusd_epi32(
            _mm512_setzero_si512(),
            cv,
            loadu512(qs.as_ptr().add(64 * s)),
        );
        _mm512_storeu_si512(
            off.as_mut_ptr().add(16 * s) as *mut _,
            _mm512_sub_epi32(_mm512_setzero_si512(), t),
        );
    }
}

/// See [`super::quantize::quantize_row`]; lengths are checked by the caller.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma,f16c,bmi2")]
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

/// `sum(a * b)`, equal lengths.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma,f16c,bmi2")]
pub(super) unsafe fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    dot_f32_ptr(a.as_ptr() as *const u8, b.as_ptr(), a.len().min(b.len()))
}

/// `sum(a * b)` with `a` read unaligned from bytes.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma,f16c,bmi2")]
unsafe fn dot_f32_ptr(a: *const u8, b: *const f32, n: usize) -> f32 {
    let a = a as *const f32;
    let (mut s0, mut s1, mut s2, mut s3) = (
        _mm512_setzero_ps(),
        _mm512_setzero_ps(),
        _mm512_setzero_ps(),
        _mm512_setzero_ps(),
    );
    let mut i = 0;
    while i + 64 <= n {
        s0 = _mm512_fmadd_ps(_mm512_loadu_ps(a.add(i)), _mm512_loadu_ps(b.add(i)), s0);
        s1 = _mm512_fmadd_ps(
            _mm512_loadu_ps(a.add(i + 16)),
            _mm512_loadu_ps(b.add(i + 16)),
            s1,
        );
        s2 = _mm512_fmadd_ps(
            _mm512_loadu_ps(a.add(i + 32)),
            _mm512_loadu_ps(b.add(i + 32)),
            s2,
        );
        s3 = _mm512_fmadd_ps(
            _mm512_loadu_ps(a.add(i + 48)),
            _mm512_loadu_ps(b.add(i + 48)),
            s3,
        );
        i += 64;
    }
    while i < n {
        let m = mask16(n - i);
        s0 = _mm512_fmadd_ps(
            _mm512_maskz_loadu_ps(m, a.add(i)),
            _mm512_maskz_loadu_ps(m, b.add(i)),
            s0,
        );
        i += 16;
    }
    _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(s0, s1), _mm512_add_ps(s2, s3)))
}

#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma,f16c,bmi2")]
unsafe fn load_f16x16(p: *const u16, m: __mmask16) -> __m512 {
    _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, p as *const i16))
}

#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma,f16c,bmi2")]
unsafe fn load_bf16x16(p: *const u16, m: __mmask16) -> __m512 {
    let h = _mm256_maskz_loadu_epi16(m, p as *const i16);
    _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(h)))
}

/// `sum(f16(a) * b)` with `a` read unaligned from bytes.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma,f16c,bmi2")]
unsafe fn dot_f16_ptr(a: *const u16, b: *const f32, n: usize) -> f32 {
    let (mut s0, mut s1, mut s2, mut s3) = (
        _mm512_setzero_ps(),
        _mm512_setzero_ps(),
        _mm512_setzero_ps(),
        _mm512_setzero_ps(),
    );
    let mut i = 0;
    while i + 64 <= n {
        s0 = _mm512_fmadd_ps(load_f16x16(a.add(i), 0xFFFF), _mm512_loadu_ps(b.add(i)), s0);
        s1 = _mm512_fmadd_ps(
            load_f16x16(a.add(i + 16), 0xFFFF),
            _mm512_loadu_ps(b.add(i + 16)),
            s1,
        );
        s2 = _mm512_fmadd_ps(
            load_f16x16(a.add(i + 32), 0xFFFF),
            _mm512_loadu_ps(b.add(i + 32)),
            s2,
        );
        s3 = _mm512_fmadd_ps(
            load_f16x16(a.add(i + 48), 0xFFFF),
            _mm512_loadu_ps(b.add(i + 48)),
            s3,
        );
        i += 64;
    }
    while i < n {
        let m = mask16(n - i);
        s0 = _mm512_fmadd_ps(
            load_f16x16(a.add(i), m),
            _mm512_maskz_loadu_ps(m, b.add(i)),
            s0,
        );
        i += 16;
    }
    _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(s0, s1), _mm512_add_ps(s2, s3)))
}

/// `sum(f16(a) * b)`, equal lengths.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma,f16c,bmi2")]
pub(super) unsafe fn dot_f16_f32(a: &[u16], b: &[f32]) -> f32 {
    dot_f16_ptr(a.as_ptr(), b.as_ptr(), a.len().min(b.len()))
}

/// `acc += alpha * f16(v)`, equal lengths.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma,f16c,bmi2")]
pub(super) unsafe fn axpy_f16(acc: &mut [f32], alpha: f32, v: &[u16]) {
    let n = acc.len().min(v.len());
    let (o, v) = (acc.as_mut_ptr(), v.as_ptr());
    let al = _mm512_set1_ps(alpha);
    let mut i = 0;
    while i < n {
        let m = mask16(n - i);
        let r = _mm512_fmadd_ps(
            al,
            load_f16x16(v.add(i), m),
            _mm512_maskz_loadu_ps(m, o.add(i)),
        );
        _mm512_mask_storeu_ps(o.add(i), m, r);
        i += 16;
    }
}

/// f32 to f16 bits, round to nearest even, equal lengths.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma,f16c,bmi2")]
pub(super) unsafe fn f32_to_f16(src: &[f32], dst: &mut [u16]) {
    let n = src.len().min(dst.len());
    let (s, o) = (src.as_ptr(), dst.as_mut_ptr());
    let mut i = 0;
    while i < n {
        let m = mask16(n - i);
        let h = _mm512_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(_mm512_maskz_loadu_ps(m, s.add(i)));
        _mm256_mask_storeu_epi16(o.add(i) as *mut i16, m, h);
        i += 16;
    }
}

/// Converts a float weight row (F32/F16/BF16 bytes, `n` values) to f32.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma,f16c,bmi2")]
pub(super) unsafe fn float_row_to_f32(ty: GgmlType, src: &[u8], dst: &mut [f32]) {
    let n = dst.len().min(src.len() / ty.type_size());
    let o = dst.as_mut_ptr();
    let mut i = 0;
    while i < n {
        let m = mask16(n - i);
        let v = match ty {
            GgmlType::F16 => load_f16x16((src.as_ptr() as *const u16).add(i), m),
            GgmlType::BF16 => load_bf16x16((src.as_ptr() as *const u16).add(i), m),
            _ => _mm512_maskz_loadu_ps(m, (src.as_ptr() as *const f32).add(i)),
        };
        _mm512_mask_storeu_ps(o.add(i), m, v);
        i += 16;
    }
}

// ---------------------------------------------------------------------------------------------
// Block decoders. Legacy types: one step = two 32-value blocks, giving the 64 weight bytes,
// `[ws0, ws1, _, _]` and `[mw0, mw1, _, _]` (per block). K-quants: one super-block = four
// steps, giving 4 x 64 bytes, the per-lane scales of each step and the 16 per-16 offsets.
// ---------------------------------------------------------------------------------------------

/// 32 nibbles of each of two blocks (16 bytes at `q0`, `q1`) in value order.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma,f16c,bmi2")]
unsafe fn nib2(q0: *const u8, q1: *const u8) -> __m512i {
    let a = _mm512_broadcast_i32x4(loadu128(q0));
    let z = _mm512_mask_broadcast_i32x4(a, 0xFF00, loadu128(q1));
    const F: i64 = 0x0004_0004_0004_0004;
    let sh = _mm512_srlv_epi16(z, _mm512_set_epi64(F, F, 0, 0, F, F, 0, 0));
    _mm512_and_si512(sh, _mm512_set1_epi8(0x0F))
}

/// Bit `j` of the little-endian u32 at `p0` (then `p1`) as a 64-lane mask.
///
/// # Safety
/// `p0` and `p1` must each point to 4 readable bytes.
#[inline]
unsafe fn qh2(p0: *const u8, p1: *const u8) -> u64 {
    let a = (p0 as *const u32).read_unaligned();
    let b = (p1 as *const u32).read_unaligned();
    u32::from_le(a) as u64 | (u32::from_le(b) as u64) << 32
}

type Legacy = (__m512i, __m128, __m128);

#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma,f16c,bmi2")]
unsafe fn chunk_q4_0(p0: *const u8, p1: *const u8) -> Legacy {
    let s = h2(p0, p1);
    (
        nib2(p0.add(2), p1.add(2)),
        s,
        _mm_mul_ps(s, _mm_set1_ps(-8.0)),
    )
}

#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma,f16c,bmi2")]
unsafe fn chunk_q4_1(p0: *const u8, p1: *const u8) -> Legacy {
    (
        nib2(p0.add(4), p1.add(4)),
        h2(p0, p1),
        h2(p0.add(2), p1.add(2)),
    )
}

#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma,f16c,bmi2")]
unsafe fn chunk_q5_0(p0: *const u8, p1: *const u8) -> Legacy {
    let s = h2(p0, p1);
    let z = nib2(p0.add(6), p1.add(6));
    let z = _mm512_mask_add_epi8(z, qh2(p0.add(2), p1.add(2)), z, _mm512_set1_epi8(16));
    (z, s, _mm_mul_ps(s, _mm_set1_ps(-16.0)))
}

#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma,f16c,bmi2")]
unsafe fn chunk_q5_1(p0: *const u8, p1: *const u8) -> Legacy {
    let z = nib2(p0.add(8), p1.add(8));
    let z = _mm512_mask_add_epi8(z, qh2(p0.add(4), p1.add(4)), z, _mm512_set1_epi8(16));
    (z, h2(p0, p1), h2(p0.add(2), p1.add(2)))
}

#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma,f16c,bmi2")]
unsafe fn chunk_q8_0(p0: *const u8, p1: *const u8) -> Legacy {
    let s = h2(p0, p1);
    let z = _mm512_inserti64x4::<1>(
        _mm512_castsi256_si512(loadu256(p0.add(2))),
        loadu256(p1.add(2)),
    );
    let z = _mm512_xor_si512(z, _mm512_set1_epi8(-128));
    (z, s, _mm_mul_ps(s, _mm_set1_ps(-128.0)))
}

type KChunk = ([__m512i; 4], [__m512; 4], __m512);

/// The 8 scales and 8 mins of a `Q4_K`/`Q5_K` super-block (12 bytes at `s`) as bytes.
///
/// # Safety
/// `s` must point to 12 readable bytes.
#[inline]
unsafe fn k4_scales(s: *const u8) -> (u64, u64) {
    let a = u32::from_le((s as *const u32).read_unaligned());
    let b = u32::from_le((s.add(4) as *const u32).read_unaligned());
    let c = u32::from_le((s.add(8) as *const u32).read_unaligned());
    let sc =
        (a & 0x3F3F_3F3F) as u64 | (((c & 0x0F0F_0F0F) | ((a >> 2) & 0x3030_3030)) as u64) << 32;
    let mn = (b & 0x3F3F_3F3F) as u64
        | ((((c >> 4) & 0x0F0F_0F0F) | ((b >> 2) & 0x3030_3030)) as u64) << 32;
    (sc, mn)
}

/// Per-step lane scales and per-16 offsets from 8 sub-block scales/mins (`Q4_K`, `Q5_K`).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma,f16c,bmi2")]
unsafe fn k4_factors(p: *const u8) -> ([__m512; 4], __m512) {
    let d = h1(p);
    let dmin = h1(p.add(2));
    let (sc, mn) = k4_scales(p.add(4));
    let scf = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_cvtsi64_si128(sc as i64)));
    let mnf = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_cvtsi64_si128(mn as i64)));
    let ws = _mm512_castps256_ps512(_mm256_mul_ps(scf, _mm256_set1_ps(d)));
    let mw8 = _mm256_xor_ps(
        _mm256_mul_ps(mnf, _mm256_set1_ps(dmin)),
        _mm256_set1_ps(-0.0),
    );
    let pairs = _mm512_set_epi32(7, 7, 6, 6, 5, 5, 4, 4, 3, 3, 2, 2, 1, 1, 0, 0);
    let mw = _mm512_permutexvar_ps(pairs, _mm512_castps256_ps512(mw8));
    let wl = [
        _mm512_permutexvar_ps(idx_halves(0, 1), ws),
        _mm512_permutexvar_ps(idx_halves(2, 3), ws),
        _mm512_permutexvar_ps(idx_halves(4, 5), ws),
        _mm512_permutexvar_ps(idx_halves(6, 7), ws),
    ];
    (wl, mw)
}

/// Low nibbles of 32 bytes then their high nibbles.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma,f16c,bmi2")]
unsafe fn nib_lo_hi(p: *const u8) -> __m512i {
    let y = loadu256(p);
    let z = _mm512_inserti64x4::<1>(_mm512_castsi256_si512(y), _mm256_srli_epi16::<4>(y));
    _mm512_and_si512(z, _mm512_set1_epi8(0x0F))
}

#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma,f16c,bmi2")]
unsafe fn chunk_q4_k(p: *const u8) -> KChunk {
    let (wl, mw) = k4_factors(p);
    let q = p.add(16);
    let z = [
        nib_lo_hi(q),
        nib_lo_hi(q.add(32)),
        nib_lo_hi(q.add(64)),
        nib_lo_hi(q.add(96)),
    ];
    (z, wl, mw)
}

#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma,f16c,bmi2")]
unsafe fn chunk_q5_k(p: *const u8) -> KChunk {
    let (wl, mw) = k4_factors(p);
    let qh = loadu256(p.add(16));
    let qh2 = _mm512_inserti64x4::<1>(_mm512_castsi256_si512(qh), qh);
    let q = p.add(48);
    let sixteen = _mm512_set1_epi8(16);
    let mut z = [_mm512_setzero_si512(); 4];
    for (i, zi) in z.iter_mut().enumerate() {
        let lo = nib_lo_hi(q.add(32 * i));
        let bits = _mm512_inserti64x4::<1>(
            _mm512_castsi256_si512(_mm256_set1_epi8((1u8 << (2 * i)) as i8)),
            _mm256_set1_epi8((1u8 << (2 * i + 1)) as i8),
        );
        *zi = _mm512_mask_add_epi8(lo, _mm512_test_epi8_mask(qh2, bits), lo, sixteen);
    }
    (z, wl, mw)
}

#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma,f16c,bmi2")]
unsafe fn chunk_q6_k(p: *const u8) -> KChunk {
    let d = h1(p.add(208));
    let sc = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(loadu128(p.add(192))));
    let ws = _mm512_mul_ps(sc, _mm512_set1_ps(d));
    let mw = _mm512_mul_ps(ws, _mm512_set1_ps(-32.0));
    let m0f = _mm512_set1_epi8(0x0F);
    let m30 = _mm512_set1_epi8(0x30);
    let mut z = [_mm512_setzero_si512(); 4];
    for n in 0..2 {
        let ql = loadu512(p.add(64 * n));
        let qh = loadu256(p.add(128 + 32 * n));
        let qhz = _mm512_inserti64x4::<1>(_mm512_castsi256_si512(qh), _mm256_srli_epi16::<2>(qh));
        z[2 * n] = _mm512_or_si512(
            _mm512_and_si512(ql, m0f),
            _mm512_and_si512(_mm512_slli_epi16::<4>(qhz), m30),
        );
        z[2 * n + 1] = _mm512_or_si512(
            _mm512_and_si512(_mm512_srli_epi16::<4>(ql), m0f),
            _mm512_and_si512(qhz, m30),
        );
    }
    let wl = [
        _mm512_permutexvar_ps(idx_quarters(0), ws),
        _mm512_permutexvar_ps(idx_quarters(4), ws),
        _mm512_permutexvar_ps(idx_quarters(8), ws),
        _mm512_permutexvar_ps(idx_quarters(12), ws),
    ];
    (z, wl, mw)
}

/// Bytes `(q >> 2s) & 3` of the 32 bytes at `q` for `s = s0` (low half) and `s0 + 1`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma,f16c,bmi2")]
unsafe fn crumbs(q: *const u8, s0: u32) -> __m512i {
    let y = loadu256(q);
    let lo = _mm256_srl_epi16(y, _mm_cvtsi32_si128(2 * s0 as i32));
    let hi = _mm256_srl_epi16(y, _mm_cvtsi32_si128(2 * s0 as i32 + 2));
    _mm512_and_si512(
        _mm512_inserti64x4::<1>(_mm512_castsi256_si512(lo), hi),
        _mm512_set1_epi8(3),
    )
}

/// Lane scales of the four 64-value steps from 16 per-16 scales.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma,f16c,bmi2")]
unsafe fn quarter_steps(ws: __m512) -> [__m512; 4] {
    [
        _mm512_permutexvar_ps(idx_quarters(0), ws),
        _mm512_permutexvar_ps(idx_quarters(4), ws),
        _mm512_permutexvar_ps(idx_quarters(8), ws),
        _mm512_permutexvar_ps(idx_quarters(12), ws),
    ]
}

#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma,f16c,bmi2")]
unsafe fn chunk_q2_k(p: *const u8) -> KChunk {
    let d = h1(p.add(80));
    let dmin = h1(p.add(82));
    let sc = _mm512_cvtepu8_epi32(loadu128(p));
    let ws = _mm512_mul_ps(
        _mm512_cvtepi32_ps(_mm512_and_si512(sc, _mm512_set1_epi32(0x0F))),
        _mm512_set1_ps(d),
    );
    let mn = _mm512_mul_ps(
        _mm512_cvtepi32_ps(_mm512_srli_epi32::<4>(sc)),
        _mm512_set1_ps(dmin),
    );
    let mw = _mm512_castsi512_ps(_mm512_xor_si512(
        _mm512_castps_si512(mn),
        _mm512_set1_epi32(i32::MIN),
    ));
    let q = p.add(16);
    let z = [
        crumbs(q, 0),
        crumbs(q, 2),
        crumbs(q.add(32), 0),
        crumbs(q.add(32), 2),
    ];
    (z, quarter_steps(ws), mw)
}

#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma,f16c,bmi2")]
unsafe fn chunk_q3_k(p: *const u8) -> KChunk {
    let d = h1(p.add(108));
    let s = p.add(96);
    let a = u64::from_le((s as *const u64).read_unaligned());
    let c = u32::from_le((s.add(8) as *const u32).read_unaligned()) as u64;
    const M4: u64 = 0x0F0F_0F0F_0F0F_0F0F;
    const M2: u64 = 0x0303_0303;
    let ha = (c & M2) | ((c >> 2) & M2) << 32;
    let hb = ((c >> 4) & M2) | ((c >> 6) & M2) << 32;
    let lo = (a & M4) | (ha << 4);
    let hi = ((a >> 4) & M4) | (hb << 4);
    let sc = _mm512_cvtepu8_epi32(_mm_set_epi64x(hi as i64, lo as i64));
    let sc = _mm512_sub_epi32(sc, _mm512_set1_epi32(32));
    let ws = _mm512_mul_ps(_mm512_cvtepi32_ps(sc), _mm512_set1_ps(d));
    let mw = _mm512_mul_ps(ws, _mm512_set1_ps(-4.0));
    let hm = loadu256(p);
    let hm2 = _mm512_inserti64x4::<1>(_mm512_castsi256_si512(hm), hm);
    let q = p.add(32);
    let four = _mm512_set1_epi8(4);
    let mut z = [_mm512_setzero_si512(); 4];
    for (j, zj) in z.iter_mut().enumerate() {
        let (n, s0) = (j / 2, 2 * (j % 2) as u32);
        let lo2 = crumbs(q.add(32 * n), s0);
        let bit = 4 * n as u32 + s0;
        let bits = _mm512_inserti64x4::<1>(
            _mm512_castsi256_si512(_mm256_set1_epi8((1u8 << bit) as i8)),
            _mm256_set1_epi8((1u8 << (bit + 1)) as i8),
        );
        *zj = _mm512_mask_add_epi8(lo2, _mm512_test_epi8_mask(hm2, bits), lo2, four);
    }
    (z, quarter_steps(ws), mw)
}

/// Half the E8M0 scales of two MXFP4 blocks, `[s0, s1, 0, 0]`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma,f16c,bmi2")]
unsafe fn e8m0x2(p0: *const u8, p1: *const u8) -> __m128 {
    _mm_set_ps(
        0.0,
        0.0,
        super::scalar::e8m0_half(*p1),
        super::scalar::e8m0_half(*p0),
    )
}

#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma,f16c,bmi2")]
unsafe fn chunk_mxfp4(p0: *const u8, p1: *const u8) -> Legacy {
    let mut t = [0u8; 16];
    for (o, &v) in t.iter_mut().zip(&super::scalar::MXFP4_DOUBLED) {
        *o = (v as u8) ^ 0x80;
    }
    let table = _mm512_broadcast_i32x4(_mm_loadu_si128(t.as_ptr() as *const __m128i));
    let z = _mm512_shuffle_epi8(table, nib2(p0.add(1), p1.add(1)));
    let s = e8m0x2(p0, p1);
    (z, s, _mm_mul_ps(s, _mm_set1_ps(-128.0)))
}

// ---------------------------------------------------------------------------------------------
// Row kernels: dot product with one activation row, and unpacking to the byte form.
// ---------------------------------------------------------------------------------------------

macro_rules! legacy_kernels {
    ($unpack:ident, $chunk:ident, $ts:expr) => {
        /// Unpacks one weight row to bytes `u` (`kp`), lane scales `wl` (`kp / 4`) and
        /// per-16 offsets `mw` (`kp / 16`); padding is zeroed.
        #[target_feature(
            enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma,f16c,bmi2"
        )]
        pub(super) unsafe fn $unpack(row: &[u8], u: &mut [u8], wl: &mut [f32], mw: &mut [f32]) {
            let nblk = row.len() / $ts;
            let p = row.as_ptr();
            let idx01 = idx_halves(0, 1);
            let nsteps = nblk.div_ceil(2);
            for s in 0..nsteps {
                let b0 = 2 * s;
                let tail = b0 + 1 >= nblk;
                let b1 = if tail { b0 } else { b0 + 1 };
                let (mut z, sw, m2) = $chunk(p.add(b0 * $ts), p.add(b1 * $ts));
                let mut w = _mm512_permutexvar_ps(idx01, _mm512_castps128_ps512(sw));
                let mut m4 = _mm_permute_ps::<0b01_01_00_00>(m2);
                if tail {
                    z = _mm512_maskz_mov_epi8(0xFFFF_FFFF, z);
                    w = _mm512_maskz_mov_ps(0x00FF, w);
                    m4 = _mm_blend_ps::<0b1100>(m4, _mm_setzero_ps());
                }
                _mm512_storeu_si512(u.as_mut_ptr().add(64 * s) as *mut _, z);
                _mm512_storeu_ps(wl.as_mut_ptr().add(16 * s), w);
                _mm_storeu_ps(mw.as_mut_ptr().add(4 * s), m4);
            }
            zero_tail(u, wl, mw, 64 * nsteps);
        }
    };
}

macro_rules! k_kernels {
    ($dot:ident, $unpack:ident, $chunk:ident, $ts:expr) => {
        /// Dot products of `out.len()` consecutive weight rows (`row_bytes` each, whole
        /// super-blocks) with a quantized activation row, walked in memory order.
        #[target_feature(
            enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma,f16c,bmi2"
        )]
        pub(super) unsafe fn $dot(w: &[u8], row_bytes: usize, a: ActRow<'_>, out: &mut [f32]) {
            let nsb = row_bytes / $ts;
            let zero = _mm512_setzero_si512();
            for (r, o) in out.iter_mut().enumerate() {
                let p = w.as_ptr().add(r * row_bytes);
                let mut acc = _mm512_setzero_ps();
                let mut corr = _mm512_setzero_ps();
                for sb in 0..nsb {
                    let (z, wl, mw) = $chunk(p.add(sb * $ts));
                    let xq = a.qs.as_ptr().add(256 * sb) as *const u8;
                    let t0 = _mm512_cvtepi32_ps(_mm512_dpbusd_epi32(zero, z[0], loadu512(xq)));
                    let t1 =
                        _mm512_cvtepi32_ps(_mm512_dpbusd_epi32(zero, z[1], loadu512(xq.add(64))));
                    let t2 =
                        _mm512_cvtepi32_ps(_mm512_dpbusd_epi32(zero, z[2], loadu512(xq.add(128))));
                    let t3 =
                        _mm512_cvtepi32_ps(_mm512_dpbusd_epi32(zero, z[3], loadu512(xq.add(192))));
                    let s01 = _mm512_fmadd_ps(t1, wl[1], _mm512_mul_ps(t0, wl[0]));
                    let s23 = _mm512_fmadd_ps(t3, wl[3], _mm512_mul_ps(t2, wl[2]));
                    acc = _mm512_fmadd_ps(
                        _mm512_add_ps(s01, s23),
                        _mm512_set1_ps(*a.d.get_unchecked(8 * sb)),
                        acc,
                    );
                    corr = _mm512_fmadd_ps(mw, _mm512_loadu_ps(a.xsum.as_ptr().add(16 * sb)), corr);
                }
                *o = _mm512_reduce_add_ps(_mm512_add_ps(acc, corr));
            }
        }

        /// Unpacks one weight row to bytes `u` (`kp`), lane scales `wl` (`kp / 4`) and
        /// per-16 offsets `mw` (`kp / 16`); padding is zeroed.
        #[target_feature(
            enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma,f16c,bmi2"
        )]
        pub(super) unsafe fn $unpack(row: &[u8], u: &mut [u8], wl: &mut [f32], mw: &mut [f32]) {
            let nsb = row.len() / $ts;
            let p = row.as_ptr();
            for sb in 0..nsb {
                let (z, w, m) = $chunk(p.add(sb * $ts));
                for j in 0..4 {
                    _mm512_storeu_si512(u.as_mut_ptr().add(256 * sb + 64 * j) as *mut _, z[j]);
                    _mm512_storeu_ps(wl.as_mut_ptr().add(64 * sb + 16 * j), w[j]);
                }
                _mm512_storeu_ps(mw.as_mut_ptr().add(16 * sb), m);
            }
            zero_tail(u, wl, mw, 256 * nsb);
        }
    };
}

/// Zeroes the unpacked buffers from value `from` on.
fn zero_tail(u: &mut [u8], wl: &mut [f32], mw: &mut [f32], from: usize) {
    let (nu, nw, nm) = (u.len(), wl.len(), mw.len());
    u[from.min(nu)..].fill(0);
    wl[(from / 4).min(nw)..].fill(0.0);
    mw[(from / 16).min(nm)..].fill(0.0);
}

legacy_kernels!(unpack_q4_0, chunk_q4_0, 18);
legacy_kernels!(unpack_q4_1, chunk_q4_1, 20);
legacy_kernels!(unpack_q5_0, chunk_q5_0, 22);
legacy_kernels!(unpack_q5_1, chunk_q5_1, 24);
legacy_kernels!(unpack_q8_0, chunk_q8_0, 34);
legacy_kernels!(unpack_mxfp4, chunk_mxfp4, 17);

/// The 64 weight bytes of two legacy blocks at `p0`, `p1` (value order): 4-bit (`KIND` 4),
/// 5-bit (`KIND` 5, high bits at `QH`), 8-bit plus 128 (`KIND` 8) or MXFP4 codes plus 128
/// (`KIND` 1); nibbles/bytes at `QS`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma,f16c,bmi2")]
unsafe fn bytes2<const KIND: u32, const QS: usize, const QH: usize>(
    p0: *const u8,
    p1: *const u8,
) -> __m512i {
    if KIND == 8 {
        let z = _mm512_inserti64x4::<1>(
            _mm512_castsi256_si512(loadu256(p0.add(QS))),
            loadu256(p1.add(QS)),
        );
        return _mm512_xor_si512(z, _mm512_set1_epi8(-128));
    }
    let z = nib2(p0.add(QS), p1.add(QS));
    if KIND == 1 {
        const T: [u8; 16] = {
            let mut t = [0u8; 16];
            let mut i = 0;
            while i < 16 {
                t[i] = (super::scalar::MXFP4_DOUBLED[i] as u8) ^ 0x80;
                i += 1;
            }
            t
        };
        let table = _mm512_broadcast_i32x4(loadu128(T.as_ptr()));
        return _mm512_shuffle_epi8(table, z);
    }
    if KIND == 5 {
        _mm512_mask_add_epi8(z, qh2(p0.add(QH), p1.add(QH)), z, _mm512_set1_epi8(16))
    } else {
        z
    }
}

/// The weight scales of two legacy blocks, `[s0, s1, 0, 0]`: f16 at offset 0, or the halved
/// E8M0 byte for MXFP4 (`KIND` 1).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma,f16c,bmi2")]
unsafe fn scales2<const KIND: u32>(p0: *const u8, p1: *const u8) -> __m128 {
    if KIND == 1 {
        return e8m0x2(p0, p1);
    }
    let a = _mm_cvtsi32_si128((p0 as *const u16).read_unaligned() as i32);
    _mm_cvtph_ps(_mm_insert_epi16::<1>(
        a,
        (p1 as *const u16).read_unaligned() as i32,
    ))
}

/// The f16 scales and mins at offsets 0 and 2 of two legacy blocks, `[d0, m0, d1, m1]`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma,f16c,bmi2")]
unsafe fn scales_mins2(p0: *const u8, p1: *const u8) -> __m128 {
    let a = _mm_cvtsi32_si128((p0 as *const i32).read_unaligned());
    _mm_cvtph_ps(_mm_insert_epi32::<1>(
        a,
        (p1 as *const i32).read_unaligned(),
    ))
}

/// Decode-path dot products of consecutive legacy-type rows (`row_bytes` apart; blocks of `TS`
/// bytes, scale at 0, f16 min at 2 when `MIN`) with one activation row, one result per entry
/// of `out`, rows walked in memory order (which keeps the hardware prefetchers streaming).
///
/// The arithmetic per row, which the micro-kernel [`micro_legacy`] reproduces exactly: step
/// `s` (64 values, blocks `2s` and `2s + 1`; an odd last block pairs with zero activations)
/// adds `f32(dot4(u, q) + off) * (ws * d)` lane by lane to accumulator `s % 2`. Types without
/// a min store `u - c`; their `-c * sum(q)` comes in through the accumulator input of
/// `vpdpbusd` (`a.off`). Types with a min put the mins of every 4 steps (8 blocks; zero past
/// the row) in an 8-lane vector and accumulate `m * xs32` into `corr`. The result is
/// `reduce(acc0 + acc1 + corr)` (`corr` in the low 8 lanes). The caller checks the needed
/// extra is filled.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma,f16c,bmi2")]
unsafe fn legacy_steps<
    const TS: usize,
    const KIND: u32,
    const QS: usize,
    const QH: usize,
    const MIN: bool,
>(
    w: *const u8,
    row_bytes: usize,
    a: ActRow<'_>,
    out: &mut [f32],
) {
    let nblk = row_bytes / TS;
    let (full, total) = (nblk / 2, nblk.div_ceil(2));
    let zero = _mm512_setzero_si512();
    // Opaque indices: otherwise LLVM moves the permutes across the scale products (two zmm
    // permutes and a zmm multiply instead of one permute of an xmm product).
    let idx01 = core::hint::black_box(idx_halves(0, 1));
    let idx02 = core::hint::black_box(idx_halves(0, 2));
    for (r, o) in out.iter_mut().enumerate() {
        let p = w.add(r * row_bytes);
        let mut acc = [_mm512_setzero_ps(); 2];
        let mut corr = _mm256_setzero_ps();
        // One step into `acc[$par]`; evaluates to the step's mins `[m0, m1, _, _]`.
        macro_rules! step {
            ($s:expr, $par:expr, $half:expr) => {{
                let s = $s;
                let b0 = 2 * s;
                let (p0, p1) = (p.add(b0 * TS), p.add(if $half { b0 } else { b0 + 1 } * TS));
                let xq = loadu512(a.qs.as_ptr().add(64 * s) as *const u8);
                let src = if MIN {
                    zero
                } else {
                    loadu512(a.off.as_ptr().add(16 * s) as *const u8)
                };
                let f = _mm512_cvtepi32_ps(_mm512_dpbusd_epi32(
                    src,
                    bytes2::<KIND, QS, QH>(p0, p1),
                    xq,
                ));
                let xd = _mm_castpd_ps(_mm_load_sd(a.d.as_ptr().add(2 * s) as *const f64));
                let (sc, mp) = if MIN {
                    // `[d0, m0, d1, m1] * [x0, x0, x1, x1]`: the scale products in lanes 0
                    // and 2.
                    let dm = scales_mins2(p0, p1);
                    let p = _mm_mul_ps(dm, _mm_unpacklo_ps(xd, xd));
                    let sc = _mm512_permutexvar_ps(idx02, _mm512_castps128_ps512(p));
                    (sc, _mm_shuffle_ps::<0b11_01_11_01>(dm, dm))
                } else {
                    let p = _mm_mul_ps(scales2::<KIND>(p0, p1), xd);
                    let sc = _mm512_permutexvar_ps(idx01, _mm512_castps128_ps512(p));
                    (sc, _mm_setzero_ps())
                };
                acc[$par] = _mm512_fmadd_ps(f, sc, acc[$par]);
                mp
            }};
        }
        let mut s = 0;
        if MIN {
            while s + 4 <= full {
                let m0 = step!(s, 0, false);
                let m1 = step!(s + 1, 1, false);
                let m2 = step!(s + 2, 0, false);
                let m3 = step!(s + 3, 1, false);
                let mv = _mm256_set_m128(_mm_movelh_ps(m2, m3), _mm_movelh_ps(m0, m1));
                let xs = _mm256_loadu_ps(a.xs32.as_ptr().add(2 * s));
                corr = _mm256_fmadd_ps(mv, xs, corr);
                s += 4;
            }
        }
        // The last (up to 3) full steps and the half step; with a min, their mins go to lanes
        // `2j`, `2j + 1` of `mv` (the half step's second lane stays zero).
        let s0 = s;
        let mut mv = _mm256_setzero_pd();
        macro_rules! keep {
            ($s:expr, $mp:expr) => {{
                let mp = $mp;
                if MIN {
                    let k = 1u8 << ($s - s0);
                    mv = _mm256_mask_broadcastsd_pd(mv, k, _mm_castps_pd(mp));
                }
            }};
        }
        while s + 2 <= full {
            keep!(s, step!(s, 0, false));
            keep!(s + 1, step!(s + 1, 1, false));
            s += 2;
        }
        if s < full {
            keep!(s, step!(s, 0, false));
            s += 1;
        }
        if s < total {
            let mp = if s % 2 == 0 {
                step!(s, 0, true)
            } else {
                step!(s, 1, true)
            };
            keep!(s, _mm_blend_ps::<0b1110>(mp, _mm_setzero_ps()));
        }
        if MIN && s0 < total {
            let m = mask8(2 * (total - s0));
            let xs = _mm256_maskz_loadu_ps(m, a.xs32.as_ptr().add(2 * s0));
            corr = _mm256_fmadd_ps(_mm256_castpd_ps(mv), xs, corr);
        }
        let mut sum = _mm512_add_ps(acc[0], acc[1]);
        if MIN {
            sum = _mm512_add_ps(sum, _mm512_zextps256_ps512(corr));
        }
        *o = _mm512_reduce_add_ps(sum);
    }
}

/// Activation extras the AVX-512 kernels of `ty` read: `off` for the legacy types stored as
/// `u - c`, `xs32` for those with a min.
pub(super) fn act_extras(ty: GgmlType) -> Extras {
    let off = |c| Extras {
        off: Some(c),
        xs32: false,
    };
    match ty {
        GgmlType::Q4_0 => off(8),
        GgmlType::Q5_0 => off(16),
        GgmlType::Q8_0 | GgmlType::MXFP4 => off(128),
        GgmlType::Q4_1 | GgmlType::Q5_1 => Extras {
            off: None,
            xs32: true,
        },
        _ => Extras::default(),
    }
}

macro_rules! legacy_dot_fn {
    ($name:ident, $ty:expr, $ts:expr, $kind:expr, $qs:expr, $qh:expr, $m:expr) => {
        /// Dot products of `out.len()` consecutive weight rows (`row_bytes` each) with a
        /// quantized activation row carrying the extras of [`act_extras`].
        #[target_feature(
            enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma,f16c,bmi2"
        )]
        pub(super) unsafe fn $name(w: &[u8], row_bytes: usize, a: ActRow<'_>, out: &mut [f32]) {
            let nblk = row_bytes / $ts;
            let ready = if $m == 0 {
                a.off.len() * 4 >= a.qs.len()
            } else {
                a.xs32.len() * 32 >= a.qs.len()
            };
            if !ready || a.qs.len() < 32 * (nblk + nblk % 2) {
                // Extras not filled in (or a short activation row): the matmul always fills
                // them; this only keeps a misuse memory-safe.
                out.fill(f32::NAN);
                return;
            }
            legacy_steps::<$ts, $kind, $qs, $qh, { $m != 0 }>(w.as_ptr(), row_bytes, a, out);
        }
    };
}

legacy_dot_fn!(dot_q4_0, GgmlType::Q4_0, 18, 4, 2, 0, 0);
legacy_dot_fn!(dot_q4_1, GgmlType::Q4_1, 20, 4, 4, 0, 2);
legacy_dot_fn!(dot_q5_0, GgmlType::Q5_0, 22, 5, 6, 2, 0);
legacy_dot_fn!(dot_q5_1, GgmlType::Q5_1, 24, 5, 8, 4, 2);
legacy_dot_fn!(dot_q8_0, GgmlType::Q8_0, 34, 8, 2, 0, 0);
legacy_dot_fn!(dot_mxfp4, GgmlType::MXFP4, 17, 1, 1, 0, 0);

k_kernels!(dot_q4_k, unpack_q4_k, chunk_q4_k, 144);
k_kernels!(dot_q5_k, unpack_q5_k, chunk_q5_k, 176);
k_kernels!(dot_q6_k, unpack_q6_k, chunk_q6_k, 210);
k_kernels!(dot_q2_k, unpack_q2_k, chunk_q2_k, 84);
k_kernels!(dot_q3_k, unpack_q3_k, chunk_q3_k, 110);

/// Quantized-row dot product for `ty`, `None` where the scalar kernel is used instead.
pub(super) fn dot_fn(ty: GgmlType) -> Option<super::matmul::DotFn> {
    Some(match ty {
        GgmlType::Q4_0 => dot_q4_0,
        GgmlType::Q4_1 => dot_q4_1,
        GgmlType::Q5_0 => dot_q5_0,
        GgmlType::Q5_1 => dot_q5_1,
        GgmlType::Q8_0 => dot_q8_0,
        GgmlType::Q4_K => dot_q4_k,
        GgmlType::Q5_K => dot_q5_k,
        GgmlType::Q6_K => dot_q6_k,
        GgmlType::Q2_K => dot_q2_k,
        GgmlType::Q3_K => dot_q3_k,
        GgmlType::MXFP4 => dot_mxfp4,
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
        GgmlType::Q4_K => unpack_q4_k,
        GgmlType::Q5_K => unpack_q5_k,
        GgmlType::Q6_K => unpack_q6_k,
        GgmlType::Q2_K => unpack_q2_k,
        GgmlType::Q3_K => unpack_q3_k,
        GgmlType::MXFP4 => unpack_mxfp4,
        _ => return None,
    })
}

/// The tiled-path micro-kernel reproducing the decode kernel of `ty`.
pub(super) fn micro_fn(ty: GgmlType) -> Option<super::matmul::MicroQ8Fn> {
    Some(match ty {
        GgmlType::Q4_0 | GgmlType::Q5_0 | GgmlType::Q8_0 | GgmlType::MXFP4 => {
            micro_dyn::<{ LEGACY_OFF }>
        }
        GgmlType::Q4_1 | GgmlType::Q5_1 => micro_dyn::<{ LEGACY_MIN }>,
        GgmlType::Q2_K | GgmlType::Q3_K | GgmlType::Q4_K | GgmlType::Q5_K | GgmlType::Q6_K => {
            micro_dyn::<{ KQUANT }>
        }
        _ => return None,
    })
}

// ---------------------------------------------------------------------------------------------
// GEMM micro-kernels: the decode kernels' arithmetic per (weight row, activation row), on
// unpacked weight rows, register-tiled over R rows and C activation rows.
// ---------------------------------------------------------------------------------------------

/// [`micro_dyn`] form: legacy types stored as `u - c` (offset through `a.off`).
const LEGACY_OFF: u8 = 0;
/// [`micro_dyn`] form: legacy types with a min (`a.xs32`).
const LEGACY_MIN: u8 = 1;
/// [`micro_dyn`] form: k-quants.
const KQUANT: u8 = 2;

/// [`legacy_steps`] for `R` unpacked rows (from `r0`) times `C` activation rows over `cols`
/// values; `MIN` selects the form with a min. The even steps run first, then the odd ones,
/// so each pair holds one accumulator at a time.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma,f16c,bmi2")]
unsafe fn micro_legacy<const R: usize, const C: usize, const MIN: bool>(
    w: &W8Tile<'_>,
    r0: usize,
    a: [ActRow<'_>; C],
    cols: usize,
) -> [[f32; C]; R] {
    let total = cols.div_ceil(64);
    let idx01 = idx_halves(0, 1);
    let zero = _mm512_setzero_si512();
    let (wq, wsc, wmw) = w.row_ptrs::<R>(r0);
    let mut sum = [[_mm512_setzero_ps(); C]; R];
    for par in 0..2 {
        let mut acc = [[_mm512_setzero_ps(); C]; R];
        for s in (par..total).step_by(2) {
            let mut xl = [_mm512_setzero_ps(); C];
            for c in 0..C {
                let xd = _mm_castpd_ps(_mm_load_sd(a[c].d.as_ptr().add(2 * s) as *const f64));
                xl[c] = _mm512_permutexvar_ps(idx01, _mm512_castps128_ps512(xd));
            }
            for r in 0..R {
                let wv = loadu512(wq[r].add(64 * s));
                let wlv = _mm512_loadu_ps(wsc[r].add(16 * s));
                for c in 0..C {
                    let src = if MIN {
                        zero
                    } else {
                        loadu512(a[c].off.as_ptr().add(16 * s) as *const u8)
                    };
                    let xq = loadu512(a[c].qs.as_ptr().add(64 * s) as *const u8);
                    let f = _mm512_cvtepi32_ps(_mm512_dpbusd_epi32(src, wv, xq));
                    acc[r][c] = _mm512_fmadd_ps(f, _mm512_mul_ps(wlv, xl[c]), acc[r][c]);
                }
            }
        }
        for r in 0..R {
            for c in 0..C {
                sum[r][c] = if par == 0 {
                    acc[r][c]
                } else {
                    _mm512_add_ps(sum[r][c], acc[r][c])
                };
            }
        }
    }
    if MIN {
        // The per-block mins are the even entries of the per-16 offsets.
        let even = _mm256_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14);
        let mut corr = [[_mm256_setzero_ps(); C]; R];
        for g in (0..total).step_by(4) {
            let n = 4 * (total - g);
            let m = mask8(n / 2);
            let mut xs = [_mm256_setzero_ps(); C];
            for c in 0..C {
                xs[c] = _mm256_maskz_loadu_ps(m, a[c].xs32.as_ptr().add(2 * g));
            }
            for r in 0..R {
                let lo = _mm256_maskz_loadu_ps(mask8(n), wmw[r].add(4 * g));
                let hi = _mm256_maskz_loadu_ps(mask8(n.saturating_sub(8)), wmw[r].add(4 * g + 8));
                let mb = _mm256_permutex2var_ps(lo, even, hi);
                for c in 0..C {
                    corr[r][c] = _mm256_fmadd_ps(mb, xs[c], corr[r][c]);
                }
            }
        }
        for r in 0..R {
            for c in 0..C {
                sum[r][c] = _mm512_add_ps(sum[r][c], _mm512_zextps256_ps512(corr[r][c]));
            }
        }
    }
    let mut out = [[0f32; C]; R];
    for r in 0..R {
        for c in 0..C {
            out[r][c] = _mm512_reduce_add_ps(sum[r][c]);
        }
    }
    out
}

/// The k-quant decode kernel ([`k_kernels`]) for `R` unpacked rows (from `r0`) times `C`
/// activation rows over `cols` values (whole super-blocks).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma,f16c,bmi2")]
unsafe fn micro_k<const R: usize, const C: usize>(
    w: &W8Tile<'_>,
    r0: usize,
    a: [ActRow<'_>; C],
    cols: usize,
) -> [[f32; C]; R] {
    let nsb = cols / 256;
    let zero = _mm512_setzero_si512();
    let mut acc = [[_mm512_setzero_ps(); C]; R];
    let (wq, wsc, wmw) = w.row_ptrs::<R>(r0);
    for sb in 0..nsb {
        let mut dv = [_mm512_setzero_ps(); C];
        for c in 0..C {
            dv[c] = _mm512_set1_ps(*a[c].d.get_unchecked(8 * sb));
        }
        for r in 0..R {
            let u = wq[r].add(256 * sb);
            let z = [
                loadu512(u),
                loadu512(u.add(64)),
                loadu512(u.add(128)),
                loadu512(u.add(192)),
            ];
            let wl = wsc[r].add(64 * sb);
            let wl = [
                _mm512_loadu_ps(wl),
                _mm512_loadu_ps(wl.add(16)),
                _mm512_loadu_ps(wl.add(32)),
                _mm512_loadu_ps(wl.add(48)),
            ];
            for c in 0..C {
                let xq = a[c].qs.as_ptr().add(256 * sb) as *const u8;
                let t0 = _mm512_cvtepi32_ps(_mm512_dpbusd_epi32(zero, z[0], loadu512(xq)));
                let t1 = _mm512_cvtepi32_ps(_mm512_dpbusd_epi32(zero, z[1], loadu512(xq.add(64))));
                let t2 = _mm512_cvtepi32_ps(_mm512_dpbusd_epi32(zero, z[2], loadu512(xq.add(128))));
                let t3 = _mm512_cvtepi32_ps(_mm512_dpbusd_epi32(zero, z[3], loadu512(xq.add(192))));
                let s01 = _mm512_fmadd_ps(t1, wl[1], _mm512_mul_ps(t0, wl[0]));
                let s23 = _mm512_fmadd_ps(t3, wl[3], _mm512_mul_ps(t2, wl[2]));
                acc[r][c] = _mm512_fmadd_ps(_mm512_add_ps(s01, s23), dv[c], acc[r][c]);
            }
        }
    }
    let mut corr = [[_mm512_setzero_ps(); C]; R];
    for sb in 0..nsb {
        for r in 0..R {
            let mv = _mm512_loadu_ps(wmw[r].add(16 * sb));
            for c in 0..C {
                let xs = _mm512_loadu_ps(a[c].xsum.as_ptr().add(16 * sb));
                corr[r][c] = _mm512_fmadd_ps(mv, xs, corr[r][c]);
            }
        }
    }
    let mut out = [[0f32; C]; R];
    for r in 0..R {
        for c in 0..C {
            out[r][c] = _mm512_reduce_add_ps(_mm512_add_ps(acc[r][c], corr[r][c]));
        }
    }
    out
}

/// Runs the `rr` x `cc` (each 1..=4) micro-kernel of form `FORM` for rows `r0..` of `w` and
/// activation rows `a[..cc]` (as tiles of up to 4 x 2); results land in `[..rr][..cc]`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma,f16c,bmi2")]
unsafe fn micro_dyn<const FORM: u8>(
    rr: usize,
    cc: usize,
    w: &W8Tile<'_>,
    r0: usize,
    a: &[ActRow<'_>; 4],
    cols: usize,
) -> [[f32; 4]; 4] {
    let mut out = [[0f32; 4]; 4];
    macro_rules! go {
        ($r:literal, $c:literal) => {{
            let act: [ActRow<'_>; $c] = core::array::from_fn(|j| a[j]);
            let res = match FORM {
                LEGACY_OFF => micro_legacy::<$r, $c, false>(w, r0, act, cols),
                LEGACY_MIN => micro_legacy::<$r, $c, true>(w, r0, act, cols),
                _ => micro_k::<$r, $c>(w, r0, act, cols),
            };
            for i in 0..$r {
                out[i][..$c].copy_from_slice(&res[i]);
            }
        }};
    }
    super::matmul::micro_match!(go, rr, cc);
    out
}

// ---------------------------------------------------------------------------------------------
// Float weights
// ---------------------------------------------------------------------------------------------

/// 16 weights of a float row of type `ty` (F32/F16/BF16 bytes at `p`) from value `i`, lanes
/// past `m` zero.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma,f16c,bmi2")]
unsafe fn load_float<const TY: u8>(p: *const u8, i: usize, m: __mmask16) -> __m512 {
    match TY {
        FLOAT_F16 => load_f16x16((p as *const u16).add(i), m),
        FLOAT_BF16 => load_bf16x16((p as *const u16).add(i), m),
        _ => _mm512_maskz_loadu_ps(m, (p as *const f32).add(i)),
    }
}

const FLOAT_F32: u8 = 0;
const FLOAT_F16: u8 = 1;
const FLOAT_BF16: u8 = 2;

/// Dot product of a float weight row (raw bytes of type `TY` at `w`) with `x` over `k` values:
/// 16-value chunk `q` (the last one masked) goes to accumulator `q % 4`, and the result is
/// `reduce((acc0 + acc1) + (acc2 + acc3))`. [`micro_float_cm`] reproduces it for tiles.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma,f16c,bmi2")]
unsafe fn dot_float<const TY: u8>(w: *const u8, x: *const f32, k: usize) -> f32 {
    let mut acc = [_mm512_setzero_ps(); 4];
    macro_rules! chunk {
        ($q:expr, $m:expr, $j:expr) => {{
            let i = 16 * $q;
            let m: __mmask16 = $m;
            let xv = _mm512_maskz_loadu_ps(m, x.add(i));
            acc[$j] = _mm512_fmadd_ps(load_float::<TY>(w, i, m), xv, acc[$j]);
        }};
    }
    let (groups, nq) = (k / 64, k.div_ceil(16));
    for g in 0..groups {
        chunk!(4 * g, 0xFFFF, 0);
        chunk!(4 * g + 1, 0xFFFF, 1);
        chunk!(4 * g + 2, 0xFFFF, 2);
        chunk!(4 * g + 3, 0xFFFF, 3);
    }
    // The last 1 to 3 chunks (the last one possibly partial), each the end of its chain.
    let q = 4 * groups;
    for t in 0..nq - q {
        let m = mask16(k - 16 * (q + t));
        match t {
            0 => chunk!(q, m, 0),
            1 => chunk!(q + 1, m, 1),
            _ => chunk!(q + 2, m, 2),
        }
    }
    let s01 = _mm512_add_ps(acc[0], acc[1]);
    let s23 = _mm512_add_ps(acc[2], acc[3]);
    _mm512_reduce_add_ps(_mm512_add_ps(s01, s23))
}

/// Decode-path dot products of consecutive float weight rows (`row_bytes` apart, raw bytes
/// of type `ty`) with `x` ([`dot_float`]), rows in memory order.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma,f16c,bmi2")]
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
/// chain-major ([`super::matmul::chain_major`] with 16 lanes): each accumulator's chunks are
/// contiguous, so the tile runs one sequential pass per accumulator with one register per
/// pair.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma,f16c,bmi2")]
unsafe fn micro_float_cm<const R: usize, const C: usize>(
    w: [*const f32; R],
    x: [*const f32; C],
    k: usize,
) -> [[f32; C]; R] {
    // The chunk at value `i` (lanes past mask `$m` zero) into `acc`.
    macro_rules! chunk {
        ($i:expr, $m:expr, $acc:ident) => {{
            let (i, m): (usize, __mmask16) = ($i, $m);
            let mut xv = [_mm512_setzero_ps(); C];
            for c in 0..C {
                xv[c] = _mm512_maskz_loadu_ps(m, x[c].add(i));
            }
            for r in 0..R {
                let wv = _mm512_maskz_loadu_ps(m, w[r].add(i));
                for c in 0..C {
                    $acc[r][c] = _mm512_fmadd_ps(wv, xv[c], $acc[r][c]);
                }
            }
        }};
    }
    let (groups, nq) = (k / 64, k.div_ceil(16));
    let zero = [[_mm512_setzero_ps(); C]; R];
    let (mut a0, mut a1, mut a2, mut a3) = (zero, zero, zero, zero);
    // Each pass's registers are parked in memory before the next one.
    for g in 0..groups {
        chunk!(16 * g, 0xFFFF, a0);
    }
    a0 = core::hint::black_box(a0);
    for g in 0..groups {
        chunk!(16 * (groups + g), 0xFFFF, a1);
    }
    a1 = core::hint::black_box(a1);
    for g in 0..groups {
        chunk!(16 * (2 * groups + g), 0xFFFF, a2);
    }
    a2 = core::hint::black_box(a2);
    for g in 0..groups {
        chunk!(16 * (3 * groups + g), 0xFFFF, a3);
    }
    // The tail chunks keep their places.
    let q = 4 * groups;
    for t in 0..nq - q {
        let i = 16 * (q + t);
        let m = mask16(k - i);
        match t {
            0 => chunk!(i, m, a0),
            1 => chunk!(i, m, a1),
            _ => chunk!(i, m, a2),
        }
    }
    let mut out = [[0f32; C]; R];
    for r in 0..R {
        for c in 0..C {
            let s01 = _mm512_add_ps(a0[r][c], a1[r][c]);
            let s23 = _mm512_add_ps(a2[r][c], a3[r][c]);
            out[r][c] = _mm512_reduce_add_ps(_mm512_add_ps(s01, s23));
        }
    }
    out
}

/// Runs the `rr` x `cc` (each 1..=4) chain-major float micro-kernel for f32 rows `w[..rr]`
/// and `x[..cc]` of `k` values.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma,f16c,bmi2")]
pub(super) unsafe fn micro_float_dyn(
    rr: usize,
    cc: usize,
    w: &[&[f32]; 4],
    x: &[&[f32]; 4],
    k: usize,
) -> [[f32; 4]; 4] {
    let mut out = [[0f32; 4]; 4];
    macro_rules! go {
        ($r:literal, $c:literal) => {{
            let wp = core::array::from_fn(|j| w[j].as_ptr());
            let xp = core::array::from_fn(|j| x[j].as_ptr());
            let res = micro_float_cm::<$r, $c>(wp, xp, k);
            for i in 0..$r {
                out[i][..$c].copy_from_slice(&res[i]);
            }
        }};
    }
    super::matmul::micro_match!(go, rr, cc);
    out
}
