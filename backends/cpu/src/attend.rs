//! One query head attending over the f16 KV cache: an online softmax (running maximum and
//! denominator) whose value accumulator is kept in f32. The query meets the cache in f16, as
//! it does in llama.cpp. AVX-512 and AVX2 versions compute the same bits as the portable one
//! (the same fused multiply-adds in the same order), chosen once at run time.
//!
//! The accumulator is f32 rather than llama.cpp's f16 one-token path: at long contexts the f16
//! rounding drifts (Gemma 3 at 4096 positions lost 0.4% of perplexity against llama.cpp's own
//! prompt path, which accumulates in f32), and f32 costs nothing here.

use std::sync::OnceLock;

/// 0 = portable, 1 = AVX2+F16C+FMA, 2 = AVX-512F on top.
fn level() -> u8 {
    static S: OnceLock<u8> = OnceLock::new();
    *S.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            let base = std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
                && std::arch::is_x86_feature_detected!("f16c");
            let wide = base && std::arch::is_x86_feature_detected!("avx512f");
            let cap = match crate::kernels::active_level() {
                crate::kernels::SimdLevel::Scalar => 0,
                crate::kernels::SimdLevel::Avx2 => 1,
                crate::kernels::SimdLevel::Avx512 => 2,
            };
            (u8::from(base) + u8::from(wide)).min(cap)
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            0
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
    if level() > 0 {
        // SAFETY: features checked at run time.
        return unsafe { x86::round_slice(x) };
    }
    x.iter_mut().for_each(|v| *v = round_f16(*v));
}

/// The query heads that share one KV head (grouped-query attention), attending over cache
/// positions `lo..=hi` together: each block of keys is scored for every head in one pass and
/// each block of values is converted from f16 once for all of them. Keys of position `p` start
/// at `k[p * k_stride]`, values at `v[p * v_stride]`.
///
/// A head's result depends only on its query, the cache and `lo..=hi` (not on how many heads
/// share the pass, nor on other rows): the score of a position is one fixed sequence of
/// operations on that position's key.
pub struct Group<'a> {
    /// Key cache of the sequence, offset to this KV head.
    pub k: &'a [u16],
    /// Value cache of the sequence, offset to this KV head.
    pub v: &'a [u16],
    /// Elements between consecutive positions in `k`.
    pub k_stride: usize,
    /// Elements between consecutive positions in `v`.
    pub v_stride: usize,
    /// The queries, `hk` values each (f16-rounded), head after head.
    pub qs: &'a [f32],
    /// Key/query head size.
    pub hk: usize,
    /// Score multiplier.
    pub scale: f32,
    /// Optional score soft-cap.
    pub softcap: Option<f32>,
    /// Optional attention sinks, one per head of the group: a logit that joins the
    /// denominator and brings no value.
    pub sinks: Option<&'a [f32]>,
    /// Positions the cache holds (a ring: position `p` is at `p % cells`).
    pub cells: usize,
    /// Optional per head: the last position it attends to (at most `hi`; by default `hi`).
    /// Several rows of one sequence then share a pass (their heads stacked), each row
    /// stopping at its own position with the operations it takes alone.
    pub his: Option<&'a [usize]>,
}

/// Reusable buffers of [`Group::attend`], plus the caller's per-task queries, outputs and
/// denominators.
#[derive(Default)]
pub struct Scratch {
    probs: Vec<f32>,
    /// Per head of the block being run: the positions it adds (a prefix of the block; 0 when
    /// it adds nothing).
    lens: Vec<usize>,
    values: Vec<f32>,
    max: Vec<f32>,
    /// Queries of a task (`g * hk`).
    pub qs: Vec<f32>,
    /// Outputs of a task (`g * hv`).
    pub accs: Vec<f32>,
    /// Denominators of a task (`g`).
    pub sums: Vec<f32>,
}

impl Scratch {
    /// Sizes what [`Group::attend`] itself uses.
    fn reserve_block(&mut self, g: usize, hv: usize) {
        let grow = |v: &mut Vec<f32>, n: usize| v.resize(v.len().max(n), 0.0);
        grow(&mut self.probs, g * BLOCK);
        grow(&mut self.values, BLOCK * hv);
        self.max.reserve(g);
        self.lens.reserve(g);
    }

    /// Bytes held.
    pub fn bytes(&self) -> u64 {
        [
            &self.probs,
            &self.values,
            &self.max,
            &self.qs,
            &self.accs,
            &self.sums,
        ]
        .iter()
        .map(|v| v.capacity() as u64 * 4)
        .sum()
    }

    /// Sizes the buffers for `g` heads of `hk`-value keys and `hv`-value values (done by
    /// [`Group::attend`] too; calling it first keeps allocation out of later steps).
    pub fn reserve(&mut self, g: usize, hk: usize, hv: usize) {
        let grow = |v: &mut Vec<f32>, n: usize| v.resize(v.len().max(n), 0.0);
        self.reserve_block(g, hv);
        grow(&mut self.qs, g * hk);
        grow(&mut self.accs, g * hv);
        grow(&mut self.sums, g);
    }
}

impl Group<'_> {
    /// Runs positions `lo..=hi` for every head: `accs` (`g * hv`, zeroed first) receives each
    /// head's unnormalised output, `sums` (`g`) its softmax denominator.
    ///
    /// Positions go in blocks of [`BLOCK`] starting at `lo`: the block's scores, per head the
    /// block maximum, one rescale of the accumulator when it grows, the probabilities with a
    /// vectorised `exp`, then the values weighted by them.
    pub fn attend(
        &self,
        lo: usize,
        hi: usize,
        accs: &mut [f32],
        sums: &mut [f32],
        sc: &mut Scratch,
    ) {
        let (hk, g) = (self.hk, sums.len());
        let hv = accs.len().checked_div(g).unwrap_or(0);
        assert!(
            g > 0
                && accs.len() == g * hv
                && self.qs.len() == g * hk
                && self
                    .his
                    .is_none_or(|e| e.len() == g && e.iter().all(|&e| e <= hi)),
            "attention group shapes"
        );
        accs.iter_mut().for_each(|a| *a = 0.0);
        sums.iter_mut().for_each(|s| *s = 0.0);
        sc.reserve_block(g, hv);
        sc.max.clear();
        sc.max.resize(g, f32::NEG_INFINITY);
        let cells = self.cells.max(1);
        let mut start = lo;
        while start <= hi {
            // Blocks never cross the ring's end.
            let end = (start + BLOCK).min(hi + 1).min((start / cells + 1) * cells);
            let b = end - start;
            let slot = start % cells;
            assert!(
                (slot + b - 1) * self.k_stride + hk <= self.k.len()
                    && (slot + b - 1) * self.v_stride + hv <= self.v.len(),
                "attention range past the cache"
            );
            scores(
                &self.k[slot * self.k_stride..],
                self.k_stride,
                b,
                self.qs,
                hk,
                &mut sc.probs,
            );
            // AVX2: the values are read as f16 by one pass over the block for every head
            // (`mad_group`), after each head's probabilities; elsewhere they are converted
            // once per block and each head adds them in turn. The same operations per output.
            let fused = fused_values(hv);
            if !fused {
                for i in 0..b {
                    let at = slot + i;
                    crate::kernels::f16_to_f32_slice(
                        &self.v[at * self.v_stride..at * self.v_stride + hv],
                        &mut sc.values[i * hv..(i + 1) * hv],
                    );
                }
            }
            sc.lens.clear();
            for h in 0..g {
                // A head that stops earlier sees the block as it would alone: its prefix.
                let bh = match self.his {
                    Some(e) => (e[h] + 1).saturating_sub(start).min(b),
                    None => b,
                };
                sc.lens.push(bh);
                if bh == 0 {
                    continue;
                }
                let p = &mut sc.probs[h * BLOCK..h * BLOCK + bh];
                for s in p.iter_mut() {
                    let x = *s * self.scale;
                    *s = match self.softcap {
                        Some(c) => c * (x / c).tanh(),
                        None => x,
                    };
                }
                let mb = p
                    .iter()
                    .fold(f32::NEG_INFINITY, |a, &b| if b > a { b } else { a });
                if mb == f32::NEG_INFINITY {
                    // Every score of the block is −∞ (or NaN): it adds nothing.
                    sc.lens[h] = 0;
                    continue;
                }
                let acc = &mut accs[h * hv..(h + 1) * hv];
                let m = &mut sc.max[h];
                if mb > *m {
                    if *m != f32::NEG_INFINITY {
                        let f = crate::vexp::exp(*m - mb);
                        scale(acc, f);
                        sums[h] *= f;
                    }
                    *m = mb;
                }
                crate::vexp::exp_minus_in_place(p, *m);
                for &w in p.iter() {
                    sums[h] += w;
                }
                if !fused {
                    mad_block_f32(acc, &sc.values[..bh * hv], p);
                }
            }
            if fused {
                mad_group(
                    accs,
                    &self.v[slot * self.v_stride..],
                    self.v_stride,
                    &sc.lens,
                    &sc.probs,
                );
            }
            start = end;
        }
        if let Some(sinks) = self.sinks {
            // Each sink joins its head's final denominator against the running maximum; one
            // above it becomes the maximum, and what was accumulated is rescaled to it.
            for (h, &sink) in sinks.iter().enumerate().take(g) {
                let m = sc.max[h];
                if sink > m {
                    let f = (m - sink).exp();
                    scale(&mut accs[h * hv..(h + 1) * hv], f);
                    sums[h] = sums[h] * f + 1.0;
                } else {
                    sums[h] += (sink - m).exp();
                }
            }
        }
    }
}

/// Positions per block of [`Group::attend`].
pub const BLOCK: usize = 32;

/// `out[h * BLOCK + j] = dot(k[j * stride..][..hk], qs[h * hk..][..hk])` for `j < b` and every
/// head `h`. The SIMD versions score four positions at a time and reduce them together; a
/// position's score is the same whichever of the four slots it takes.
fn scores(k: &[u16], stride: usize, b: usize, qs: &[f32], hk: usize, out: &mut [f32]) {
    let g = qs.len() / hk.max(1);
    assert!(
        b <= BLOCK && out.len() >= g * BLOCK && (b == 0 || k.len() >= (b - 1) * stride + hk),
        "attention scores shapes"
    );
    #[cfg(target_arch = "x86_64")]
    match level() {
        // SAFETY: features checked at run time; every key row read is in `k` (asserted).
        2 if hk.is_multiple_of(16) => return unsafe { x86::scores512(k, stride, b, qs, hk, out) },
        // SAFETY: as above.
        1 if hk.is_multiple_of(8) => return unsafe { x86::scores256(k, stride, b, qs, hk, out) },
        _ => {}
    }
    for h in 0..g {
        let q = &qs[h * hk..(h + 1) * hk];
        for j in 0..b {
            let kr = &k[j * stride..j * stride + hk];
            out[h * BLOCK + j] = kr
                .iter()
                .zip(q)
                .map(|(&a, &b)| half::f16::from_bits(a).to_f32() * b)
                .sum();
        }
    }
}

/// For each `j` in order, `acc[i] = fma(v[j * acc.len() + i], w[j], acc[i])`; the SIMD
/// versions keep a slice of `acc` in registers across the positions (same operations, same
/// bits).
fn mad_block_f32(acc: &mut [f32], v: &[f32], w: &[f32]) {
    let hv = acc.len();
    assert!(v.len() >= w.len() * hv, "value block too short");
    #[cfg(target_arch = "x86_64")]
    match level() {
        // SAFETY: features checked at run time; `v` covers every row read (asserted above).
        2 => return unsafe { x86::mad_block512(acc, v, w) },
        // SAFETY: as above.
        1 => return unsafe { x86::mad_block256(acc, v, w) },
        _ => {}
    }
    for (j, &s) in w.iter().enumerate() {
        for (a, &x) in acc.iter_mut().zip(&v[j * hv..(j + 1) * hv]) {
            *a = x.mul_add(s, *a);
        }
    }
}

/// Whether [`Group::attend`] reads the values through [`mad_group`] (AVX2 only: the AVX-512
/// and portable paths convert a block once and add it per head).
fn fused_values(hv: usize) -> bool {
    level() == 1 && hv.is_multiple_of(8)
}

/// [`mad_block_f32`] for every head `h` of the group at once, reading the f16 values
/// of positions `0..lens[h]` (`v[j * stride..][..hv]`) directly: `accs[h * hv + i] =
/// fma(v_j[i], probs[h * BLOCK + j], accs[h * hv + i])` for each `j` in order, the same
/// operations as converting the block first. Only called where [`fused_values`] holds.
fn mad_group(accs: &mut [f32], v: &[u16], stride: usize, lens: &[usize], probs: &[f32]) {
    let g = lens.len();
    let hv = accs.len() / g.max(1);
    let b = lens.iter().copied().max().unwrap_or(0);
    assert!(
        b <= BLOCK
            && probs.len() >= g * BLOCK
            && accs.len() == g * hv
            && hv.is_multiple_of(8)
            && (b == 0 || v.len() >= (b - 1) * stride + hv),
        "attention value shapes"
    );
    #[cfg(target_arch = "x86_64")]
    if level() >= 1 {
        // SAFETY: features checked at run time; every value row read is in `v` (asserted).
        return unsafe { x86::mad_group256(accs, v, stride, lens, probs) };
    }
    unreachable!("mad_group without AVX2");
}

/// `acc[i] *= s`.
fn scale(acc: &mut [f32], s: f32) {
    #[cfg(target_arch = "x86_64")]
    match level() {
        // SAFETY: features checked at run time.
        2 => return unsafe { x86::scale512(acc, s) },
        // SAFETY: features checked at run time.
        1 => return unsafe { x86::scale(acc, s) },
        _ => {}
    }
    acc.iter_mut().for_each(|a| *a *= s);
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
            _mm256_storeu_ps(p.add(i), _mm256_mul_ps(_mm256_loadu_ps(p.add(i)), sv));
        }
        for a in &mut acc[n8..] {
            *a *= s;
        }
    }

    /// [`super::mad_block_f32`]: 32 columns of `acc` in four registers at a time.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn mad_block256(acc: &mut [f32], v: &[f32], w: &[f32]) {
        let hv = acc.len();
        let (pa, pv) = (acc.as_mut_ptr(), v.as_ptr());
        let mut c = 0;
        while c + 32 <= hv {
            let mut a = [
                _mm256_loadu_ps(pa.add(c)),
                _mm256_loadu_ps(pa.add(c + 8)),
                _mm256_loadu_ps(pa.add(c + 16)),
                _mm256_loadu_ps(pa.add(c + 24)),
            ];
            for (j, &s) in w.iter().enumerate() {
                let sv = _mm256_set1_ps(s);
                let row = pv.add(j * hv + c);
                for (k, ak) in a.iter_mut().enumerate() {
                    *ak = _mm256_fmadd_ps(_mm256_loadu_ps(row.add(8 * k)), sv, *ak);
                }
            }
            for (k, ak) in a.iter().enumerate() {
                _mm256_storeu_ps(pa.add(c + 8 * k), *ak);
            }
            c += 32;
        }
        if c < hv {
            for (j, &s) in w.iter().enumerate() {
                for i in c..hv {
                    acc[i] = v[j * hv + i].mul_add(s, acc[i]);
                }
            }
        }
    }

    /// [`super::mad_group`]: up to four heads × 16 columns in eight registers; each position's
    /// 16 values are converted from f16 once for those heads.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn mad_group256(
        accs: &mut [f32],
        v: &[u16],
        stride: usize,
        lens: &[usize],
        probs: &[f32],
    ) {
        let g = lens.len();
        let hv = accs.len() / g;
        let (pa, pv, pp) = (accs.as_mut_ptr(), v.as_ptr(), probs.as_ptr());
        let mut next = 0;
        loop {
            // The next (up to) four heads that add anything.
            let mut hs = [0usize; 4];
            let mut n = 0;
            while next < g && n < 4 {
                if lens[next] > 0 {
                    hs[n] = next;
                    n += 1;
                }
                next += 1;
            }
            if n == 0 {
                break;
            }
            let hs = &hs[..n];
            let hl: [usize; 4] = core::array::from_fn(|i| if i < n { lens[hs[i]] } else { 0 });
            let b = hl.iter().copied().max().unwrap_or(0);
            let mut c = 0;
            while c < hv {
                // 16 columns, or the last 8.
                let two = c + 16 <= hv;
                let mut a = [[_mm256_setzero_ps(); 2]; 4];
                for (i, &h) in hs.iter().enumerate() {
                    a[i][0] = _mm256_loadu_ps(pa.add(h * hv + c));
                    if two {
                        a[i][1] = _mm256_loadu_ps(pa.add(h * hv + c + 8));
                    }
                }
                for j in 0..b {
                    let row = pv.add(j * stride + c);
                    let v0 = _mm256_cvtph_ps(_mm_loadu_si128(row as *const __m128i));
                    let v1 = if two {
                        _mm256_cvtph_ps(_mm_loadu_si128(row.add(8) as *const __m128i))
                    } else {
                        v0
                    };
                    for i in 0..n {
                        if j >= hl[i] {
                            continue;
                        }
                        let w = _mm256_set1_ps(*pp.add(hs[i] * super::BLOCK + j));
                        a[i][0] = _mm256_fmadd_ps(v0, w, a[i][0]);
                        a[i][1] = _mm256_fmadd_ps(v1, w, a[i][1]);
                    }
                }
                for (i, &h) in hs.iter().enumerate() {
                    _mm256_storeu_ps(pa.add(h * hv + c), a[i][0]);
                    if two {
                        _mm256_storeu_ps(pa.add(h * hv + c + 8), a[i][1]);
                    }
                }
                c += if two { 16 } else { 8 };
            }
        }
    }

    /// [`super::mad_block_f32`]: 64 columns of `acc` in four registers at a time.
    #[target_feature(enable = "avx512f,avx2,fma,f16c")]
    pub unsafe fn mad_block512(acc: &mut [f32], v: &[f32], w: &[f32]) {
        let hv = acc.len();
        let (pa, pv) = (acc.as_mut_ptr(), v.as_ptr());
        let mut c = 0;
        while c + 64 <= hv {
            let mut a = [
                _mm512_loadu_ps(pa.add(c)),
                _mm512_loadu_ps(pa.add(c + 16)),
                _mm512_loadu_ps(pa.add(c + 32)),
                _mm512_loadu_ps(pa.add(c + 48)),
            ];
            for (j, &s) in w.iter().enumerate() {
                let sv = _mm512_set1_ps(s);
                let row = pv.add(j * hv + c);
                for (k, ak) in a.iter_mut().enumerate() {
                    *ak = _mm512_fmadd_ps(_mm512_loadu_ps(row.add(16 * k)), sv, *ak);
                }
            }
            for (k, ak) in a.iter().enumerate() {
                _mm512_storeu_ps(pa.add(c + 16 * k), *ak);
            }
            c += 64;
        }
        if c < hv {
            for (j, &s) in w.iter().enumerate() {
                for i in c..hv {
                    acc[i] = v[j * hv + i].mul_add(s, acc[i]);
                }
            }
        }
    }

    /// Four 8-lane sums reduced together: `[sum(t0), sum(t1), sum(t2), sum(t3)]`, each as
    /// `((l0 + l1) + (l2 + l3)) + ((l4 + l5) + (l6 + l7))`.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn reduce4(t: [__m256; 4]) -> [f32; 4] {
        let u01 = _mm256_hadd_ps(t[0], t[1]);
        let u23 = _mm256_hadd_ps(t[2], t[3]);
        let v = _mm256_hadd_ps(u01, u23);
        let r = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
        let mut out = [0f32; 4];
        _mm_storeu_ps(out.as_mut_ptr(), r);
        out
    }

    /// The scores of four key rows against `N` queries of `hk` values (a multiple of 8): each
    /// key chunk is converted once for the `N` queries; each score is the same whatever `N`.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn score4<const N: usize>(
        rows: [*const u16; 4],
        qs: [*const f32; N],
        hk: usize,
    ) -> [[f32; 4]; N] {
        let mut acc = [[_mm256_setzero_ps(); 4]; N];
        let mut c = 0;
        while c < hk {
            let x: [__m256; N] = core::array::from_fn(|i| _mm256_loadu_ps(qs[i].add(c)));
            for t in 0..4 {
                let kv = _mm256_cvtph_ps(_mm_loadu_si128(rows[t].add(c) as *const __m128i));
                for i in 0..N {
                    acc[i][t] = _mm256_fmadd_ps(kv, x[i], acc[i][t]);
                }
            }
            c += 8;
        }
        let mut out = [[0f32; 4]; N];
        for (o, a) in out.iter_mut().zip(acc) {
            *o = reduce4(a);
        }
        out
    }

    /// [`super::scores`] with 8-lane accumulators (`hk` a multiple of 8).
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn scores256(
        k: &[u16],
        stride: usize,
        b: usize,
        qs: &[f32],
        hk: usize,
        out: &mut [f32],
    ) {
        let g = qs.len() / hk;
        let mut j = 0;
        while j < b {
            // Slots past the block repeat its last position and are not stored.
            let rows: [*const u16; 4] =
                core::array::from_fn(|t| k.as_ptr().add((j + t).min(b - 1) * stride));
            // Heads in pairs: each key chunk is converted once for two queries (each score
            // takes the same operations as alone).
            let mut h = 0;
            while h < g {
                let n = (g - h).min(2);
                let r = if n == 2 {
                    score4::<2>(
                        rows,
                        [qs.as_ptr().add(h * hk), qs.as_ptr().add((h + 1) * hk)],
                        hk,
                    )
                } else {
                    let [r] = score4::<1>(rows, [qs.as_ptr().add(h * hk)], hk);
                    [r, r]
                };
                for (i, ri) in r.iter().enumerate().take(n) {
                    for t in 0..4.min(b - j) {
                        out[(h + i) * super::BLOCK + j + t] = ri[t];
                    }
                }
                h += n;
            }
            j += 4;
        }
    }

    /// [`super::scores`] with 16-lane accumulators (`hk` a multiple of 16).
    #[target_feature(enable = "avx512f,avx2,fma,f16c")]
    pub unsafe fn scores512(
        k: &[u16],
        stride: usize,
        b: usize,
        qs: &[f32],
        hk: usize,
        out: &mut [f32],
    ) {
        let g = qs.len() / hk;
        let mut j = 0;
        while j < b {
            let rows: [*const u16; 4] =
                core::array::from_fn(|t| k.as_ptr().add((j + t).min(b - 1) * stride));
            for h in 0..g {
                let q = qs.as_ptr().add(h * hk);
                let mut acc = [_mm512_setzero_ps(); 4];
                let mut c = 0;
                while c < hk {
                    let qv = _mm512_loadu_ps(q.add(c));
                    for t in 0..4 {
                        let kv =
                            _mm512_cvtph_ps(_mm256_loadu_si256(rows[t].add(c) as *const __m256i));
                        acc[t] = _mm512_fmadd_ps(kv, qv, acc[t]);
                    }
                    c += 16;
                }
                let halves: [__m256; 4] = core::array::from_fn(|t| {
                    _mm256_add_ps(
                        _mm512_castps512_ps256(acc[t]),
                        _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(acc[t]))),
                    )
                });
                let r = reduce4(halves);
                for t in 0..4.min(b - j) {
                    out[h * super::BLOCK + j + t] = r[t];
                }
            }
            j += 4;
        }
    }

    #[target_feature(enable = "avx512f,avx2,fma,f16c")]
    pub unsafe fn scale512(acc: &mut [f32], s: f32) {
        let n16 = acc.len() / 16 * 16;
        let p = acc.as_mut_ptr();
        let sv = _mm512_set1_ps(s);
        for i in (0..n16).step_by(16) {
            _mm512_storeu_ps(p.add(i), _mm512_mul_ps(_mm512_loadu_ps(p.add(i)), sv));
        }
        scale(&mut acc[n16..], s);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn simd_and_portable_agree() {
        let mut x: Vec<f32> = (0..80).map(|i| (i as f32 * 0.37).sin() * 3.0).collect();
        let v: Vec<f32> = (0..80 * 5)
            .map(|i| half::f16::from_f32((i as f32 * 0.11).cos()).to_f32())
            .collect();
        let w = [0.731f32, 0.2, -0.5, 1e-3, 0.9];
        let mut y = x.clone();
        mad_block_f32(&mut x, &v, &w);
        scale(&mut x, 0.5117);
        for (j, &s) in w.iter().enumerate() {
            for (i, a) in y.iter_mut().enumerate() {
                *a = v[j * 80 + i].mul_add(s, *a);
            }
        }
        y.iter_mut().for_each(|a| *a *= 0.5117);
        assert_eq!(x, y);
        let mut z = vec![1.0001f32, 65519.0, -2.71, 1e-8];
        round_slice(&mut z);
        assert_eq!(z, vec![1.0, 65504.0, -2.7109375, round_f16(1e-8)]);
    }

    /// The AVX2 value pass over several heads at once (`mad_group256`: heads in fours, 16 and
    /// 8 columns, heads left out) gives each head the bits of converting the block and adding
    /// it alone; the paired-head scores give each head the bits it gets alone.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn avx2_grouped_values_and_scores_match_one_head_at_a_time() {
        if !(std::arch::is_x86_feature_detected!("avx2")
            && std::arch::is_x86_feature_detected!("fma")
            && std::arch::is_x86_feature_detected!("f16c"))
        {
            eprintln!("no AVX2 here: nothing to check");
            return;
        }
        let f = |i: usize, m: f32| half::f16::from_f32(((i as f32) * m).sin() * 3.0).to_bits();
        for (g, hv, stride, b) in [
            (5, 40, 48, 32),
            (3, 64, 64, 7),
            (1, 8, 8, 1),
            (9, 24, 30, 19),
        ] {
            let v: Vec<u16> = (0..b * stride).map(|i| f(i, 0.13)).collect();
            let probs: Vec<f32> = (0..g * BLOCK)
                .map(|i| ((i as f32) * 0.71).cos().abs())
                .collect();

            let init: Vec<f32> = (0..g * hv).map(|i| (i as f32 * 0.3).sin()).collect();
            let mut got = init.clone();
            // Heads 2, 6, ... add nothing; heads 1, 4, ... stop half way.
            let lens: Vec<usize> = (0..g)
                .map(|h| match (h % 4, h % 3) {
                    (2, _) => 0,
                    (_, 1) => b / 2,
                    _ => b,
                })
                .collect();
            // SAFETY: AVX2, FMA and F16C checked above; `v` holds b rows of `stride`.
            unsafe { x86::mad_group256(&mut got, &v, stride, &lens, &probs) };
            let mut want = init.clone();
            for h in 0..g {
                for j in 0..lens[h] {
                    for i in 0..hv {
                        let x = half::f16::from_bits(v[j * stride + i]).to_f32();
                        let a = &mut want[h * hv + i];
                        *a = x.mul_add(probs[h * BLOCK + j], *a);
                    }
                }
            }
            assert_eq!(got, want, "g {g} hv {hv} b {b}");
        }
        for (g, hk, b) in [(3, 64, 32), (4, 32, 5), (7, 128, 13)] {
            let k: Vec<u16> = (0..b * hk).map(|i| f(i, 0.37)).collect();
            let qs: Vec<f32> = (0..g * hk).map(|i| (i as f32 * 0.7).cos()).collect();
            let mut all = vec![0f32; g * BLOCK];
            // SAFETY: as above; `k` holds b rows of hk.
            unsafe { x86::scores256(&k, hk, b, &qs, hk, &mut all) };
            for h in 0..g {
                let mut one = vec![0f32; BLOCK];
                // SAFETY: as above.
                unsafe { x86::scores256(&k, hk, b, &qs[h * hk..(h + 1) * hk], hk, &mut one) };
                assert_eq!(all[h * BLOCK..h * BLOCK + b], one[..b], "g {g} head {h}");
            }
        }
    }

    /// Plain f64 softmax attention of query `q` over positions `lo..=hi`.
    #[allow(clippy::too_many_arguments)]
    fn naive(
        k: &[u16],
        v: &[u16],
        hk: usize,
        hv: usize,
        q: &[f32],
        lo: usize,
        hi: usize,
        scale: f32,
    ) -> Vec<f64> {
        let f = |x: u16| half::f16::from_bits(x).to_f32() as f64;
        let scores: Vec<f64> = (lo..=hi)
            .map(|p| (0..hk).map(|d| f(k[p * hk + d]) * q[d] as f64).sum::<f64>() * scale as f64)
            .collect();
        let m = scores.iter().copied().fold(f64::MIN, f64::max);
        let w: Vec<f64> = scores.iter().map(|s| (s - m).exp()).collect();
        let z: f64 = w.iter().sum();
        (0..hv)
            .map(|d| (lo..=hi).map(|p| w[p - lo] * f(v[p * hv + d])).sum::<f64>() / z)
            .collect()
    }

    #[test]
    fn groups_match_a_plain_softmax_and_each_other() {
        let (hk, hv, n, g) = (64, 48, 150, 3);
        let f = |i: usize, m: f32| half::f16::from_f32(((i as f32) * m).sin()).to_bits();
        let k: Vec<u16> = (0..n * hk).map(|i| f(i, 0.37)).collect();
        let v: Vec<u16> = (0..n * hv).map(|i| f(i, 0.11)).collect();
        let mut qs: Vec<f32> = (0..g * hk).map(|i| (i as f32 * 0.7).cos() * 2.0).collect();
        round_slice(&mut qs);
        fn group<'a>(k: &'a [u16], v: &'a [u16], hk: usize, hv: usize, qs: &'a [f32]) -> Group<'a> {
            Group {
                k,
                v,
                k_stride: hk,
                v_stride: hv,
                qs,
                hk,
                scale: 0.3,
                softcap: None,
                sinks: None,
                cells: usize::MAX,
                his: None,
            }
        }
        let mut sc = Scratch::default();
        for (lo, hi) in [(0, 0), (3, 39), (0, 149), (17, 130), (100, 101)] {
            let (mut accs, mut sums) = (vec![0f32; g * hv], vec![0f32; g]);
            group(&k, &v, hk, hv, &qs).attend(lo, hi, &mut accs, &mut sums, &mut sc);
            for h in 0..g {
                let want = naive(&k, &v, hk, hv, &qs[h * hk..(h + 1) * hk], lo, hi, 0.3);
                for d in 0..hv {
                    let got = accs[h * hv + d] as f64 / sums[h] as f64;
                    assert!(
                        (got - want[d]).abs() < 1e-5,
                        "{lo}..={hi} head {h} dim {d}: {got} vs {}",
                        want[d]
                    );
                }
                // One head alone gives the same bits as inside the group.
                let (mut a1, mut s1) = (vec![0f32; hv], vec![0f32; 1]);
                group(&k, &v, hk, hv, &qs[h * hk..(h + 1) * hk])
                    .attend(lo, hi, &mut a1, &mut s1, &mut sc);
                assert_eq!(a1, accs[h * hv..(h + 1) * hv], "head {h}");
                assert_eq!(s1[0], sums[h]);
            }
        }
    }

    #[test]
    fn stacked_rows_stopping_early_match_each_row_alone() {
        // Three rows' heads in one pass, each stopping at its own position (`his`), give the
        // bits of each row's pass alone, whatever the block boundaries.
        let (hk, hv, n, g) = (64, 48, 150, 2);
        let f = |i: usize, m: f32| half::f16::from_f32(((i as f32) * m).sin()).to_bits();
        let k: Vec<u16> = (0..n * hk).map(|i| f(i, 0.37)).collect();
        let v: Vec<u16> = (0..n * hv).map(|i| f(i, 0.11)).collect();
        let mut qs: Vec<f32> = (0..3 * g * hk)
            .map(|i| (i as f32 * 0.7).cos() * 2.0)
            .collect();
        round_slice(&mut qs);
        let sinks = [0.3f32, -1.0, 0.3, -1.0, 0.3, -1.0];
        fn mk<'a>(k: &'a [u16], v: &'a [u16], hv: usize, qs: &'a [f32], s: &'a [f32]) -> Group<'a> {
            Group {
                k,
                v,
                k_stride: 64,
                v_stride: hv,
                qs,
                hk: 64,
                scale: 0.3,
                softcap: None,
                sinks: Some(s),
                cells: usize::MAX,
                his: None,
            }
        }
        let mut sc = Scratch::default();
        for (lo, ends) in [(0, [31, 32, 33]), (5, [140, 100, 149]), (0, [0, 1, 2])] {
            let his: Vec<usize> = ends.iter().flat_map(|&e| [e; 2]).collect();
            let hi = *ends.iter().max().unwrap();
            let (mut accs, mut sums) = (vec![0f32; 3 * g * hv], vec![0f32; 3 * g]);
            Group {
                his: Some(&his),
                ..mk(&k, &v, hv, &qs, &sinks)
            }
            .attend(lo, hi, &mut accs, &mut sums, &mut sc);
            for (r, &e) in ends.iter().enumerate() {
                let (mut a1, mut s1) = (vec![0f32; g * hv], vec![0f32; g]);
                mk(&k, &v, hv, &qs[r * g * hk..(r + 1) * g * hk], &sinks[..g])
                    .attend(lo, e, &mut a1, &mut s1, &mut sc);
                assert_eq!(a1, accs[r * g * hv..(r + 1) * g * hv], "{lo}..={e}");
                assert_eq!(s1, sums[r * g..(r + 1) * g], "{lo}..={e}");
            }
        }
    }

    #[test]
    fn a_ring_of_cells_holds_the_window() {
        // Positions 0..150 written into a ring of 37 cells (position p at p % 37): a window
        // of the last 30 positions reads the same values as from the full cache.
        let (hk, hv, n, cells) = (32, 16, 150, 37);
        let f = |i: usize, m: f32| half::f16::from_f32(((i as f32) * m).sin()).to_bits();
        let k: Vec<u16> = (0..n * hk).map(|i| f(i, 0.37)).collect();
        let v: Vec<u16> = (0..n * hv).map(|i| f(i, 0.11)).collect();
        let (mut kr, mut vr) = (vec![0u16; cells * hk], vec![0u16; cells * hv]);
        for p in 0..n {
            let c = p % cells;
            kr[c * hk..(c + 1) * hk].copy_from_slice(&k[p * hk..(p + 1) * hk]);
            vr[c * hv..(c + 1) * hv].copy_from_slice(&v[p * hv..(p + 1) * hv]);
        }
        let mut qs: Vec<f32> = (0..hk).map(|i| (i as f32 * 0.7).cos() * 2.0).collect();
        round_slice(&mut qs);
        let ring = Group {
            k: &kr,
            v: &vr,
            k_stride: hk,
            v_stride: hv,
            qs: &qs,
            hk,
            scale: 0.3,
            softcap: None,
            sinks: Some(&[0.5]),
            cells,
            his: None,
        };
        let mut sc = Scratch::default();
        // The ring holds positions 113..150 (cells 2..37, then 0..2): windows that wrap.
        for hi in [142, 145, 148, 149] {
            let lo = hi - 29;
            let (mut acc, mut sum) = (vec![0f32; hv], vec![0f32; 1]);
            ring.attend(lo, hi, &mut acc, &mut sum, &mut sc);
            let full = Group {
                k: &k,
                v: &v,
                cells: usize::MAX,
                ..ring
            };
            let (mut acc2, mut sum2) = (vec![0f32; hv], vec![0f32; 1]);
            full.attend(lo, hi, &mut acc2, &mut sum2, &mut sc);
            for d in 0..hv {
                let (a, b) = (acc[d] / sum[0], acc2[d] / sum2[0]);
                assert!((a - b).abs() < 1e-5, "{lo}..={hi} dim {d}: {a} vs {b}");
            }
        }
    }

    #[test]
    fn a_softcap_bounds_the_scores() {
        let (hk, hv, n) = (16, 16, 40);
        let k: Vec<u16> = (0..n * hk)
            .map(|i| half::f16::from_f32(if i % 3 == 0 { 60.0 } else { -60.0 }).to_bits())
            .collect();
        let v: Vec<u16> = (0..n * hv)
            .map(|i| half::f16::from_f32((i % 7) as f32).to_bits())
            .collect();
        let qs = vec![1.0f32; hk];
        let g = Group {
            k: &k,
            v: &v,
            k_stride: hk,
            v_stride: hv,
            qs: &qs,
            hk,
            scale: 1.0,
            softcap: Some(5.0),
            sinks: None,
            cells: usize::MAX,
            his: None,
        };
        let (mut acc, mut sum) = (vec![0f32; hv], vec![0f32; 1]);
        g.attend(0, n - 1, &mut acc, &mut sum, &mut Scratch::default());
        assert!(sum[0].is_finite() && sum[0] >= 1.0);
        assert!(acc.iter().all(|a| a.is_finite()));
    }
}
