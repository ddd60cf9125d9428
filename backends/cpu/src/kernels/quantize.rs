//! Activation quantization: f32 rows to signed 8-bit values with a scale per 32 values
//! ([`ActMode::B32`], used with the legacy block types) or per 256 values
//! ([`ActMode::B256`], used with the k-quants), plus the scaled sum of every 16 values.
//!
//! A row of `k` values is padded with zeros to `kp` (a multiple of 64). Per block the scale is
//! `d = max|x| / 127` and `q = round_half_even(x * (127 / max|x|))`; every SIMD level uses these
//! exact operations, so they produce identical bytes.

use super::SimdLevel;

/// Granularity of the activation scales.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ActMode {
    /// One scale per 32 values.
    B32,
    /// One scale per 256 values (the row length must be a multiple of 256).
    B256,
}

impl ActMode {
    pub(crate) const fn len(self) -> usize {
        match self {
            ActMode::B32 => 32,
            ActMode::B256 => 256,
        }
    }
}

/// `k` rounded up to the padded row length used by all quantized buffers.
pub(crate) const fn padded(k: usize) -> usize {
    k.div_ceil(64) * 64
}

/// A 64-byte aligned chunk of bytes (so SIMD rows start on cache lines).
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
#[repr(C, align(64))]
pub(crate) struct Line(pub [u8; 64]);

impl Default for Line {
    fn default() -> Self {
        Line([0; 64])
    }
}

/// The per-row extras some kernels read besides `qs`, `d` and `xsum` (see [`ActRow`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Extras {
    /// Fill `off` with this factor `c` (for weights stored as `u - c`, `0..=255`).
    pub off: Option<i32>,
    /// Fill `xs32`.
    pub xs32: bool,
}

/// Reusable storage for `n` quantized activation rows of padded length `kp`.
#[derive(Default)]
pub(crate) struct ActBuf {
    qs: Vec<Line>,
    d: Vec<f32>,
    xsum: Vec<f32>,
    off: Vec<i32>,
    xs32: Vec<f32>,
    kp: usize,
    extras: Extras,
}

/// One quantized activation row: `qs` (`kp` values), `d` (one scale per 32 values; in
/// [`ActMode::B256`] the 8 entries of a super-block are equal) and `xsum` (`d * sum(q)` per 16
/// values), plus the [`Extras`] the matmul asked for (empty otherwise): `off` (`-c * sum(q)`
/// per 4 values, for weight types stored as `u - c`) and `xs32` (`xsum` summed per 32 values).
///
/// Every row of a call is quantized and extended by the same code, whatever the number of
/// rows, so a row's bytes and scales depend only on its values.
#[derive(Clone, Copy)]
pub(crate) struct ActRow<'a> {
    pub qs: &'a [i8],
    pub d: &'a [f32],
    pub xsum: &'a [f32],
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    pub off: &'a [i32],
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    pub xs32: &'a [f32],
}

/// Raw mutable views of the rows, for filling rows in parallel.
#[derive(Clone, Copy)]
pub(crate) struct ActPtrs {
    qs: *mut i8,
    d: *mut f32,
    xsum: *mut f32,
    off: *mut i32,
    xs32: *mut f32,
    kp: usize,
    extras: Extras,
}
// SAFETY: used to write disjoint rows from pool threads while the buffer is exclusively
// borrowed by the matmul that created the pointers.
unsafe impl Send for ActPtrs {}
unsafe impl Sync for ActPtrs {}

impl ActBuf {
    /// Makes room for `n` rows of padded length `kp` (a multiple of 64) with `extras`,
    /// reusing capacity.
    pub(crate) fn reset(&mut self, n: usize, kp: usize, extras: Extras) {
        debug_assert_eq!(kp % 64, 0);
        self.kp = kp;
        self.extras = Extras {
            off: extras.off.filter(|c| (0..=255).contains(c)),
            xs32: extras.xs32,
        };
        grow(&mut self.qs, n * kp / 64);
        grow(&mut self.d, n * kp / 32);
        grow(&mut self.xsum, n * kp / 16);
        if self.extras.off.is_some() {
            grow(&mut self.off, n * kp / 4);
        }
        if self.extras.xs32 {
            grow(&mut self.xs32, n * kp / 32);
        }
    }

    pub(crate) fn ptrs(&mut self) -> ActPtrs {
        ActPtrs {
            qs: self.qs.as_mut_ptr() as *mut i8,
            d: self.d.as_mut_ptr(),
            xsum: self.xsum.as_mut_ptr(),
            off: self.off.as_mut_ptr(),
            xs32: self.xs32.as_mut_ptr(),
            kp: self.kp,
            extras: self.extras,
        }
    }

    /// Row `i` (must be `< n`).
    #[inline]
    pub(crate) fn row(&self, i: usize) -> ActRow<'_> {
        let kp = self.kp;
        let qs: &[u8] = bytemuck::cast_slice(&self.qs[i * kp / 64..(i + 1) * kp / 64]);
        ActRow {
            qs: bytemuck::cast_slice(qs),
            d: &self.d[i * kp / 32..(i + 1) * kp / 32],
            xsum: &self.xsum[i * kp / 16..(i + 1) * kp / 16],
            off: match self.extras.off {
                Some(_) => &self.off[i * kp / 4..(i + 1) * kp / 4],
                None => &[],
            },
            xs32: if self.extras.xs32 {
                &self.xs32[i * kp / 32..(i + 1) * kp / 32]
            } else {
                &[]
            },
        }
    }
}

fn grow<T: Default + Clone>(v: &mut Vec<T>, n: usize) {
    if v.len() < n {
        v.resize(n, T::default());
    }
}

impl ActPtrs {
    /// Quantizes `x` (one row, `x.len() <= kp`) into row `i`, with the extras.
    ///
    /// # Safety
    /// Row `i` must be in bounds of the buffer the pointers came from, not written by anyone
    /// else meanwhile, and `level` must be available on this CPU.
    pub(crate) unsafe fn quantize_row(
        &self,
        level: SimdLevel,
        mode: ActMode,
        ggml_scales: Option<BlockSums>,
        i: usize,
        x: &[f32],
    ) {
        let kp = self.kp;
        // SAFETY: the caller guarantees row `i` is in bounds and exclusively ours.
        let (qs, d, xsum) = unsafe {
            (
                std::slice::from_raw_parts_mut(self.qs.add(i * kp), kp),
                std::slice::from_raw_parts_mut(self.d.add(i * kp / 32), kp / 32),
                std::slice::from_raw_parts_mut(self.xsum.add(i * kp / 16), kp / 16),
            )
        };
        quantize_row(level, mode, x, qs, d, xsum);
        if let Some(sums) = ggml_scales {
            round_scales_like_ggml(qs, d, xsum, sums);
        }
        if let Some(c) = self.extras.off {
            // SAFETY: as above; `reset` sized `off` for every row when `extras.off` is set.
            let off = unsafe { std::slice::from_raw_parts_mut(self.off.add(i * kp / 4), kp / 4) };
            fill_offsets(level, qs, c, off);
        }
        if self.extras.xs32 {
            // SAFETY: as above, for `xs32`.
            let xs32 =
                unsafe { std::slice::from_raw_parts_mut(self.xs32.add(i * kp / 32), kp / 32) };
            for (o, x) in xs32.iter_mut().zip(xsum.chunks_exact(2)) {
                *o = x[0] + x[1];
            }
        }
    }
}

/// `off[l] = -c * sum(qs[4l..4l + 4])` (exact integers, so every level gives the same).
#[cfg_attr(not(target_arch = "x86_64"), allow(unused_variables))]
fn fill_offsets(level: SimdLevel, qs: &[i8], c: i32, off: &mut [i32]) {
    #[cfg(target_arch = "x86_64")]
    if level == SimdLevel::Avx512 && SimdLevel::Avx512.is_available() {
        // SAFETY: feature checked; `off` holds `qs.len() / 4` lanes, `c` is in `0..=255`.
        unsafe { super::avx512::fill_offsets(bytemuck::cast_slice(qs), c as u8, off) };
        return;
    }
    for (o, q) in off.iter_mut().zip(qs.chunks_exact(4)) {
        *o = -c * q.iter().map(|&v| v as i32).sum::<i32>();
    }
}

/// How the per-16 sums of a 32-value activation block are formed when the scales follow
/// ggml's `Q8_0`/`Q8_1` blocks (see [`round_scales_like_ggml`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum BlockSums {
    /// `d * sum(q)` per 16 values with the rounded `d` (exact): weights without a min.
    Exact,
    /// Both halves carry half of ggml's `Q8_1` sum `f16(d * sum(q))` with the unrounded `d`:
    /// weights with a min (`Q4_1`, `Q5_1`).
    Q8_1,
}

/// Rounds the scale of every 32-value block to f16 as ggml's `Q8_0`/`Q8_1` activation blocks
/// store it, and re-forms the block sums to match. The integer values are already ggml's (same
/// `127 / max|x|` multiplier, ties to even), so dot products then agree with llama.cpp's up to
/// float summation order: that keeps greedy decoding identical to llama.cpp's.
pub(crate) fn round_scales_like_ggml(qs: &[i8], d: &mut [f32], xsum: &mut [f32], sums: BlockSums) {
    for (b, db) in d.iter_mut().enumerate() {
        let exact = *db;
        let rounded = half::f16::from_f32(exact).to_f32();
        *db = rounded;
        let s16 = |h: usize| -> i32 {
            qs[b * 32 + h * 16..b * 32 + h * 16 + 16]
                .iter()
                .map(|&q| q as i32)
                .sum()
        };
        let (lo, hi) = (s16(0), s16(1));
        match sums {
            BlockSums::Exact => {
                xsum[2 * b] = rounded * lo as f32;
                xsum[2 * b + 1] = rounded * hi as f32;
            }
            BlockSums::Q8_1 => {
                let s = half::f16::from_f32(exact * (lo + hi) as f32).to_f32();
                xsum[2 * b] = s * 0.5;
                xsum[2 * b + 1] = s * 0.5;
            }
        }
    }
}

/// Quantizes `x` into `qs` (`kp` values, zero padded), `d` and `xsum` with the given level.
pub(crate) fn quantize_row(
    level: SimdLevel,
    mode: ActMode,
    x: &[f32],
    qs: &mut [i8],
    d: &mut [f32],
    xsum: &mut [f32],
) {
    let kp = qs.len();
    assert!(x.len() <= kp && d.len() == kp / 32 && xsum.len() == kp / 16 && kp.is_multiple_of(64));
    assert!(mode == ActMode::B32 || x.len().is_multiple_of(256));
    match level {
        #[cfg(target_arch = "x86_64")]
        SimdLevel::Avx512 if SimdLevel::Avx512.is_available() => {
            // SAFETY: feature checked above; lengths asserted.
            unsafe { super::avx512::quantize_row(mode, x, qs, d, xsum) }
        }
        #[cfg(target_arch = "x86_64")]
        SimdLevel::Avx2 | SimdLevel::Avx512 if SimdLevel::Avx2.is_available() => {
            // SAFETY: feature checked above; lengths asserted.
            unsafe { super::avx2::quantize_row(mode, x, qs, d, xsum) }
        }
        _ => quantize_row_scalar(mode, x, qs, d, xsum),
    }
}

/// Portable reference quantizer (see the module docs for the exact arithmetic).
pub(crate) fn quantize_row_scalar(
    mode: ActMode,
    x: &[f32],
    qs: &mut [i8],
    d: &mut [f32],
    xsum: &mut [f32],
) {
    let k = x.len();
    let kp = qs.len();
    let bl = mode.len();
    let mut start = 0;
    while start < kp {
        let end = (start + bl).min(kp);
        let valid = if start < k {
            &x[start..end.min(k)]
        } else {
            &[][..]
        };
        let amax = valid.iter().fold(0f32, |m, v| m.max(v.abs()));
        let (dd, id) = if amax > 0.0 {
            (amax / 127.0, 127.0 / amax)
        } else {
            (0.0, 0.0)
        };
        for (i, q) in qs[start..end].iter_mut().enumerate() {
            *q = match valid.get(i) {
                Some(&v) => ((v * id).round_ties_even() as i32).clamp(-127, 127) as i8,
                None => 0,
            };
        }
        d[start / 32..end / 32].fill(dd);
        start = end;
    }
    for (g, s) in xsum.iter_mut().enumerate() {
        let sum: i32 = qs[g * 16..g * 16 + 16].iter().map(|&q| q as i32).sum();
        *s = d[g / 2] * sum as f32;
    }
}
