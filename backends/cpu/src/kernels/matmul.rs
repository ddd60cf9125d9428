//! The matmul driver: argument checks, activation quantization, row chunking across the
//! pool's threads, and the choice between the one-row dot kernels and the tiled GEMM.
//!
//! Both paths compute every output with the same per-type arithmetic at a given level (see
//! the module docs of [`super`]), so the choice never changes a result's bits.

use super::quantize::{padded, ActBuf, ActMode, ActRow, BlockSums, Extras, Line};
use super::{scalar, SimdLevel, ThreadPool};
use kiln_sdk::quant::GgmlType;
use std::cell::RefCell;
use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};

/// A weight matrix in place: `rows` output features, each a row of `cols` input features
/// stored as consecutive blocks of `ty` (ggml's layout; `cols` is the tensor's `dims[0]`).
#[derive(Clone, Copy, Debug)]
pub struct WeightMatrix<'a> {
    /// Element type of the stored blocks.
    pub ty: GgmlType,
    /// Output features (rows).
    pub rows: usize,
    /// Input features per row (a multiple of the type's block size).
    pub cols: usize,
    /// `rows * cols / block_size * type_size` bytes, row after row.
    pub data: &'a [u8],
}

/// Why a matmul was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KernelError {
    /// The weight type has no kernel (see [`supports`]).
    Unsupported(GgmlType),
    /// A dimension or slice length does not fit; the message says which.
    Shape(String),
    /// The requested SIMD level cannot run on this CPU.
    LevelUnavailable(SimdLevel),
}

impl fmt::Display for KernelError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KernelError::Unsupported(t) => write!(f, "no CPU matmul kernel for {t} weights"),
            KernelError::Shape(m) => write!(f, "matmul shape mismatch: {m}"),
            KernelError::LevelUnavailable(l) => {
                write!(f, "SIMD level {} is not available on this CPU", l.name())
            }
        }
    }
}

impl std::error::Error for KernelError {}

/// Whether [`matmul`] handles weights of type `ty`.
pub fn supports(ty: GgmlType) -> bool {
    matches!(
        ty,
        GgmlType::F32
            | GgmlType::F16
            | GgmlType::BF16
            | GgmlType::Q4_0
            | GgmlType::Q4_1
            | GgmlType::Q5_0
            | GgmlType::Q5_1
            | GgmlType::Q8_0
            | GgmlType::Q2_K
            | GgmlType::Q3_K
            | GgmlType::Q4_K
            | GgmlType::Q5_K
            | GgmlType::Q6_K
            | GgmlType::MXFP4
    )
}

/// `out[i * rows + r] = dot(W[r], x[i])` for the `n` rows of `x` (`n * cols` values,
/// row-major), computed on `pool` at the active SIMD level ([`super::active_level`]).
///
/// Activations are quantized to 8 bits per 32 values (legacy types) or 256 values (k-quants)
/// for the quantized types, so results carry that rounding (relative error around 1e-3 of
/// `|W[r]| * |x[i]|`); float weights are multiplied in f32.
pub fn matmul(
    pool: &ThreadPool,
    w: &WeightMatrix<'_>,
    x: &[f32],
    n: usize,
    out: &mut [f32],
) -> Result<(), KernelError> {
    matmul_with(super::active_level(), pool, w, x, n, out)
}

/// [`matmul`] at an explicit SIMD level (errors if the CPU lacks it).
pub fn matmul_with(
    level: SimdLevel,
    pool: &ThreadPool,
    w: &WeightMatrix<'_>,
    x: &[f32],
    n: usize,
    out: &mut [f32],
) -> Result<(), KernelError> {
    if !supports(w.ty) {
        return Err(KernelError::Unsupported(w.ty));
    }
    if !level.is_available() {
        return Err(KernelError::LevelUnavailable(level));
    }
    let (bs, ts) = (w.ty.block_size(), w.ty.type_size());
    if !w.cols.is_multiple_of(bs) {
        return Err(KernelError::Shape(format!(
            "{} columns is not a whole number of {} blocks",
            w.cols, w.ty
        )));
    }
    let row_bytes = w.cols / bs * ts;
    let shape = |what: &str, want: Option<usize>, got: usize| match want {
        Some(v) if v == got => Ok(()),
        _ => Err(KernelError::Shape(format!(
            "{what} has {got} elements, {want:?} expected"
        ))),
    };
    shape(
        "weight data (bytes)",
        w.rows.checked_mul(row_bytes),
        w.data.len(),
    )?;
    shape("input", n.checked_mul(w.cols), x.len())?;
    shape("output", n.checked_mul(w.rows), out.len())?;
    if n == 0 || w.rows == 0 {
        return Ok(());
    }
    if w.cols == 0 {
        out.fill(0.0);
        return Ok(());
    }
    let out = OutPtr {
        p: out.as_mut_ptr(),
        rows: w.rows,
    };
    match w.ty {
        GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 => {
            float_matmul(level, pool, w, row_bytes, x, n, out)
        }
        _ => quant_matmul(level, pool, w, row_bytes, x, n, out),
    }
    Ok(())
}

/// Quantized-row dot products: `(rows, row bytes, activation row, out)` for `out.len()`
/// consecutive rows.
pub(crate) type DotFn = unsafe fn(&[u8], usize, ActRow<'_>, &mut [f32]);
/// Row unpacker: `(row bytes, u, wl, mw)`, see [`W8Tile`].
pub(crate) type UnpackFn = unsafe fn(&[u8], &mut [u8], &mut [f32], &mut [f32]);
/// `rr x cc` (each 1..=4) quantized micro-kernel: `(rr, cc, tile, first tile row, activation
/// rows, cols)`, results in `[..rr][..cc]`; see `micro_dyn` in the SIMD modules.
pub(crate) type MicroQ8Fn =
    unsafe fn(usize, usize, &W8Tile<'_>, usize, &[ActRow<'_>; 4], usize) -> [[f32; 4]; 4];

/// Expands to a `match` running `$go!(R, C)` for `(rr, cc)` in `1..=4 x 1..=4`.
#[cfg_attr(not(target_arch = "x86_64"), allow(unused_macros))]
macro_rules! micro_match {
    ($go:ident, $rr:expr, $cc:expr) => {
        match ($rr, $cc) {
            (1, 1) => $go!(1, 1),
            (1, 2) => $go!(1, 2),
            (1, 3) => $go!(1, 3),
            (1, 4) => $go!(1, 4),
            (2, 1) => $go!(2, 1),
            (2, 2) => $go!(2, 2),
            (2, 3) => $go!(2, 3),
            (2, 4) => $go!(2, 4),
            (3, 1) => $go!(3, 1),
            (3, 2) => $go!(3, 2),
            (3, 3) => $go!(3, 3),
            (3, 4) => $go!(3, 4),
            (4, 1) => $go!(4, 1),
            (4, 2) => $go!(4, 2),
            (4, 3) => $go!(4, 3),
            (4, 4) => $go!(4, 4),
            _ => {}
        }
    };
}
#[cfg_attr(not(target_arch = "x86_64"), allow(unused_imports))]
pub(crate) use micro_match;

/// Unpacked weight rows: per row `kp` bytes `u`, `kp / 4` lane scales `wl` (one per 4
/// values, as the SIMD integer dot products produce one i32 per 4 bytes) and `kp / 16`
/// offsets `mw`, so that value `i` is `wl[i / 4] * u[i] + mw[i / 16]`.
pub(crate) struct W8Tile<'a> {
    u: &'a [u8],
    wl: &'a [f32],
    mw: &'a [f32],
    kp: usize,
}

impl W8Tile<'_> {
    /// `(u, wl, mw)` of row `r`.
    #[inline]
    pub(crate) fn row(&self, r: usize) -> (&[u8], &[f32], &[f32]) {
        let kp = self.kp;
        (
            &self.u[r * kp..(r + 1) * kp],
            &self.wl[r * kp / 4..(r + 1) * kp / 4],
            &self.mw[r * kp / 16..(r + 1) * kp / 16],
        )
    }

    /// Start pointers of `u`, `wl` and `mw` for rows `r0..r0 + R` (the micro-kernels' view).
    #[inline]
    pub(crate) fn row_ptrs<const R: usize>(
        &self,
        r0: usize,
    ) -> ([*const u8; R], [*const f32; R], [*const f32; R]) {
        let mut wq = [core::ptr::null::<u8>(); R];
        let mut wsc = [core::ptr::null::<f32>(); R];
        let mut wmw = [core::ptr::null::<f32>(); R];
        for r in 0..R {
            let (u, wl, mw) = self.row(r0 + r);
            wq[r] = u.as_ptr();
            wsc[r] = wl.as_ptr();
            wmw[r] = mw.as_ptr();
        }
        (wq, wsc, wmw)
    }
}

/// Scalar-unpacks a row and expands the per-16 scales to per-4 lane scales (for types that
/// have no SIMD unpacker).
pub(crate) fn unpack_scalar_expanded(
    ty: GgmlType,
    row: &[u8],
    u: &mut [u8],
    wl: &mut [f32],
    mw: &mut [f32],
) {
    let ng = mw.len();
    scalar::unpack_row(ty, row, u, &mut wl[..ng], mw);
    for g in (0..ng).rev() {
        let v = wl[g];
        wl[4 * g..4 * g + 4].fill(v);
    }
}

/// The output matrix, written from several threads at disjoint `(i, r)` positions.
#[derive(Clone, Copy)]
struct OutPtr {
    p: *mut f32,
    rows: usize,
}
// SAFETY: every thread writes only the rows of the chunks it claimed, inside one `run`.
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

impl OutPtr {
    /// # Safety
    /// `(i, r)` must be in bounds and written by no other thread concurrently.
    #[inline]
    unsafe fn write(&self, i: usize, r: usize, v: f32) {
        // SAFETY: see above.
        unsafe { *self.p.add(i * self.rows + r) = v }
    }
}

/// Per-thread reusable buffers.
#[derive(Default)]
struct Scratch {
    u: Vec<Line>,
    wl: Vec<f32>,
    mw: Vec<f32>,
    f: Vec<f32>,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
    static ACTS: RefCell<ActBuf> = RefCell::new(ActBuf::default());
    static XPERM: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

fn with_scratch<R>(f: impl FnOnce(&mut Scratch) -> R) -> R {
    SCRATCH.with(|c| match c.try_borrow_mut() {
        Ok(mut s) => f(&mut s),
        Err(_) => f(&mut Scratch::default()),
    })
}

/// The calling thread's buffer for chain-major copies of float activation rows.
fn with_xperm<R>(f: impl FnOnce(&mut Vec<f32>) -> R) -> R {
    XPERM.with(|c| match c.try_borrow_mut() {
        Ok(mut s) => f(&mut s),
        Err(_) => f(&mut Vec::new()),
    })
}

fn with_acts<R>(f: impl FnOnce(&mut ActBuf) -> R) -> R {
    ACTS.with(|c| match c.try_borrow_mut() {
        Ok(mut s) => f(&mut s),
        Err(_) => f(&mut ActBuf::default()),
    })
}

fn grow<T: Clone>(v: &mut Vec<T>, n: usize, fill: T) {
    if v.len() < n {
        v.resize(n, fill);
    }
}

/// Rows per work item for the one-row path.
fn dot_chunk(rows: usize, nt: usize) -> usize {
    (rows / (nt * 8)).clamp(16, 1024).next_multiple_of(16)
}

/// Rows per work item for the GEMM path (a multiple of the 4-row micro-kernel).
fn gemm_chunk(rows: usize, nt: usize) -> usize {
    (rows / (nt * 4)).clamp(4, 32).next_multiple_of(4)
}

/// Calls `f(r0, r1)` for chunks of `chunk` rows, across the pool's threads.
///
/// The chunks are split into one contiguous range per share; each share walks its own range
/// in order (one sequential stream, which the hardware prefetchers follow) and then helps with
/// the others' remaining chunks, so a slow or preempted thread does not hold up the rest.
fn for_chunks(pool: &ThreadPool, rows: usize, chunk: usize, f: impl Fn(usize, usize) + Sync) {
    let nchunks = rows.div_ceil(chunk);
    let nt = pool.n_threads().min(nchunks).max(1);
    if nt == 1 {
        for c in 0..nchunks {
            f(c * chunk, ((c + 1) * chunk).min(rows));
        }
        return;
    }
    // Range `t` holds chunks `bounds(t)..bounds(t + 1)`; `next[t]` is its next unclaimed one.
    let bounds = |t: usize| t * nchunks / nt;
    let next: Vec<AtomicUsize> = (0..nt).map(|t| AtomicUsize::new(bounds(t))).collect();
    pool.run(|share, n| {
        // With fewer shares than ranges (a nested call runs as one share), cover them all.
        let home = share * nt / n.max(1);
        for k in 0..nt {
            let t = (home + k) % nt;
            let end = bounds(t + 1);
            loop {
                let c = next[t].fetch_add(1, Ordering::Relaxed);
                if c >= end {
                    break;
                }
                f(c * chunk, ((c + 1) * chunk).min(rows));
            }
        }
    });
}

/// The kernels of one level for one quantized type.
struct QuantKernels {
    /// Extras the kernels read from every activation row.
    extras: Extras,
    /// The one-row kernel for `n == 1`; without one, `n == 1` takes the tiled path too.
    dot: Option<RowDot>,
    /// The row unpacker of the tiled path (`None`: the scalar one, expanded).
    unpack: Option<UnpackFn>,
    /// The tiled path's micro-kernel (`None`: the scalar level).
    micro: Option<MicroQ8Fn>,
}

impl QuantKernels {
    fn new(level: SimdLevel, ty: GgmlType) -> Self {
        match level {
            #[cfg(target_arch = "x86_64")]
            SimdLevel::Avx512 => QuantKernels {
                extras: super::avx512::act_extras(ty),
                dot: super::avx512::dot_fn(ty).map(RowDot::Simd),
                unpack: super::avx512::unpack_fn(ty),
                micro: super::avx512::micro_fn(ty),
            },
            #[cfg(target_arch = "x86_64")]
            SimdLevel::Avx2 => QuantKernels {
                extras: super::avx2::act_extras(ty),
                dot: super::avx2::dot_fn(ty).map(RowDot::Simd),
                unpack: super::avx2::unpack_fn(ty),
                micro: super::avx2::micro_fn(ty),
            },
            _ => QuantKernels {
                extras: Extras::default(),
                dot: Some(RowDot::Scalar(ty)),
                unpack: None,
                micro: None,
            },
        }
    }
}

enum RowDot {
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    Simd(DotFn),
    Scalar(GgmlType),
}

impl RowDot {
    /// Dot products of the `out.len()` rows in `rows` (`row_bytes` each) with `a`.
    ///
    /// # Safety
    /// The level this was made for must be available; rows are whole blocks and `a` has the
    /// matching padded length and extras.
    #[inline]
    unsafe fn call(&self, rows: &[u8], row_bytes: usize, a: ActRow<'_>, out: &mut [f32]) {
        match self {
            // SAFETY: see above.
            RowDot::Simd(f) => unsafe { f(rows, row_bytes, a, out) },
            RowDot::Scalar(ty) => {
                for (r, o) in out.iter_mut().enumerate() {
                    *o = scalar::dot_row(*ty, &rows[r * row_bytes..(r + 1) * row_bytes], a);
                }
            }
        }
    }
}

/// How activation scales are rounded for weights of type `ty`: legacy types meet ggml-style
/// `Q8_0`/`Q8_1` activation blocks (f16 scales); k-quants meet `Q8_K` blocks, whose f32 scale
/// needs no rounding.
pub(crate) fn act_block_sums(ty: GgmlType) -> Option<BlockSums> {
    match ty {
        _ if is_k_quant(ty) => None,
        GgmlType::Q4_1 | GgmlType::Q5_1 => Some(BlockSums::Q8_1),
        _ => Some(BlockSums::Exact),
    }
}

fn is_k_quant(ty: GgmlType) -> bool {
    ty.block_size() == kiln_sdk::quant::QK_K
}

fn quant_matmul(
    level: SimdLevel,
    pool: &ThreadPool,
    w: &WeightMatrix<'_>,
    row_bytes: usize,
    x: &[f32],
    n: usize,
    out: OutPtr,
) {
    let mode = if is_k_quant(w.ty) {
        ActMode::B256
    } else {
        ActMode::B32
    };
    let ggml_scales = act_block_sums(w.ty);
    let (rows, cols) = (w.rows, w.cols);
    let kp = padded(cols);
    let nt = pool.n_threads();
    let kernels = QuantKernels::new(level, w.ty);
    with_acts(|acts| {
        acts.reset(n, kp, kernels.extras);
        let ptrs = acts.ptrs();
        let quant = |i: usize| {
            // SAFETY: `i < n` rows were reserved above; each row is written by one thread.
            unsafe { ptrs.quantize_row(level, mode, ggml_scales, i, &x[i * cols..(i + 1) * cols]) }
        };
        if n >= 4 && nt > 1 {
            pool.run(|t, nt| (t..n).step_by(nt).for_each(quant));
        } else {
            (0..n).for_each(quant);
        }
        let acts: &ActBuf = acts;
        if let (1, Some(dot)) = (n, &kernels.dot) {
            let a = acts.row(0);
            for_chunks(pool, rows, dot_chunk(rows, nt), |r0, r1| {
                let mut res = [0f32; 64];
                for r in (r0..r1).step_by(64) {
                    let nr = (r1 - r).min(64);
                    let wr = &w.data[r * row_bytes..(r + nr) * row_bytes];
                    // SAFETY: level checked by `matmul_with`; rows and acts sizes match.
                    unsafe { dot.call(wr, row_bytes, a, &mut res[..nr]) };
                    for (j, &v) in res[..nr].iter().enumerate() {
                        // SAFETY: row `r + j` belongs to this chunk only.
                        unsafe { out.write(0, r + j, v) };
                    }
                }
            });
            return;
        }
        let (unpack, micro) = (kernels.unpack, kernels.micro);
        // The activation rows in groups of 4 (the last one padded with its last row).
        let groups: Vec<[ActRow<'_>; 4]> = (0..n)
            .step_by(4)
            .map(|c| std::array::from_fn(|j| acts.row((c + j).min(n - 1))))
            .collect();
        let bs = w.ty.block_size();
        let chunk = gemm_chunk(rows, nt);
        for_chunks(pool, rows, chunk, |r0, r1| {
            with_scratch(|s| {
                let nr = r1 - r0;
                grow(&mut s.u, chunk * kp / 64, Line([0; 64]));
                grow(&mut s.wl, chunk * kp / 4, 0.0);
                grow(&mut s.mw, chunk * kp / 16, 0.0);
                let ub: &mut [u8] = bytemuck::cast_slice_mut(&mut s.u[..]);
                for (j, r) in (r0..r1).enumerate() {
                    let row = &w.data[r * row_bytes..(r + 1) * row_bytes];
                    let u = &mut ub[j * kp..(j + 1) * kp];
                    let wl = &mut s.wl[j * kp / 4..(j + 1) * kp / 4];
                    let mw = &mut s.mw[j * kp / 16..(j + 1) * kp / 16];
                    match (micro, unpack) {
                        // SAFETY: level checked by `matmul_with`; buffer sizes as documented.
                        (Some(_), Some(f)) => unsafe { f(row, u, wl, mw) },
                        (Some(_), None) => unpack_scalar_expanded(w.ty, row, u, wl, mw),
                        (None, _) => scalar::unpack_row(w.ty, row, u, &mut wl[..kp / 16], mw),
                    }
                }
                let tile = W8Tile {
                    u: ub,
                    wl: &s.wl,
                    mw: &s.mw,
                    kp,
                };
                match micro {
                    Some(micro) => {
                        for r in (0..nr).step_by(4) {
                            let rr = (nr - r).min(4);
                            for (g, a) in groups.iter().enumerate() {
                                let c = 4 * g;
                                let cc = (n - c).min(4);
                                // SAFETY: level checked; `rr`, `cc` in 1..=4; rows in the tile;
                                // the activation rows carry the extras the kernel asked for.
                                let res = unsafe { micro(rr, cc, &tile, r, a, cols) };
                                for (i, rv) in res.iter().enumerate().take(rr) {
                                    for (j, &v) in rv.iter().enumerate().take(cc) {
                                        // SAFETY: rows `r0..r1` belong to this chunk only.
                                        unsafe { out.write(c + j, r0 + r + i, v) };
                                    }
                                }
                            }
                        }
                    }
                    None => {
                        for j in 0..nr {
                            let (u, wl, mw) = tile.row(j);
                            for i in 0..n {
                                let a = acts.row(i);
                                let v = scalar::dot_unpacked_row(bs, u, &wl[..kp / 16], mw, a);
                                // SAFETY: rows `r0..r1` belong to this chunk only.
                                unsafe { out.write(i, r0 + j, v) };
                            }
                        }
                    }
                }
            })
        });
    })
}

/// `rr x cc` (each 1..=4) float micro-kernel over chain-major f32 rows: `(rr, cc, weight rows,
/// activation rows, k)`, results in `[..rr][..cc]`.
type MicroFloatFn = unsafe fn(usize, usize, &[&[f32]; 4], &[&[f32]; 4], usize) -> [[f32; 4]; 4];

/// The level's float micro-kernel and the lanes of its chunks (see [`chain_major`]).
fn micro_float(level: SimdLevel) -> Option<(MicroFloatFn, usize)> {
    match level {
        #[cfg(target_arch = "x86_64")]
        SimdLevel::Avx512 => Some((super::avx512::micro_float_dyn, 16)),
        #[cfg(target_arch = "x86_64")]
        SimdLevel::Avx2 => Some((super::avx2::micro_float_dyn, 8)),
        _ => None,
    }
}

/// Copies `src` to `dst` (same length) chain-major for float kernels whose chunk `q` of `L`
/// values feeds accumulator `q % 4`: the whole groups of 4 chunks are stored accumulator by
/// accumulator (chunks 0, 4, 8, .. then 1, 5, 9, ..), the rest in place.
pub(crate) fn chain_major<const L: usize>(src: &[f32], dst: &mut [f32]) {
    let groups = src.len() / (4 * L);
    let (head, tail) = src.split_at(4 * groups * L);
    let (dhead, dtail) = dst.split_at_mut(4 * groups * L);
    for (g, group) in head.chunks_exact(4 * L).enumerate() {
        for (j, c) in group.chunks_exact(L).enumerate() {
            dhead[(j * groups + g) * L..][..L].copy_from_slice(c);
        }
    }
    dtail.copy_from_slice(tail);
}

/// [`chain_major`] for `lanes` (8 or 16) values per chunk.
fn chain_major_lanes(lanes: usize, src: &[f32], dst: &mut [f32]) {
    if lanes == 16 {
        chain_major::<16>(src, dst)
    } else {
        chain_major::<8>(src, dst)
    }
}

/// Dot products of the `out.len()` float rows in `rows` (`row_bytes` each) with `x`, with the
/// arithmetic of the level's float micro-kernel for one pair.
fn float_rows(
    level: SimdLevel,
    ty: GgmlType,
    rows: &[u8],
    row_bytes: usize,
    x: &[f32],
    out: &mut [f32],
) {
    match level {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: level checked by `matmul_with`; rows hold `x.len()` values of `ty`.
        SimdLevel::Avx512 => unsafe { super::avx512::dot_float_rows(ty, rows, row_bytes, x, out) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
        SimdLevel::Avx2 => unsafe { super::avx2::dot_float_rows(ty, rows, row_bytes, x, out) },
        _ => {
            for (r, o) in out.iter_mut().enumerate() {
                *o = scalar::dot_float_row(ty, &rows[r * row_bytes..(r + 1) * row_bytes], x);
            }
        }
    }
}

fn float_to_f32(level: SimdLevel, ty: GgmlType, row: &[u8], dst: &mut [f32]) {
    match level {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: level checked by `matmul_with`.
        SimdLevel::Avx512 => unsafe { super::avx512::float_row_to_f32(ty, row, dst) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: level checked by `matmul_with`.
        SimdLevel::Avx2 => unsafe { super::avx2::float_row_to_f32(ty, row, dst) },
        _ => scalar::float_row_to_f32(ty, row, dst),
    }
}

/// Float weights: one arithmetic per level for every `n`. One row (`n == 1`) reads each weight
/// row in place, rows in memory order; batches first convert a chunk of weight rows to f32
/// (exactly, chain-major like the activation rows) and run the tiled form of the same kernel
/// on the copies, so the conversion is done once per call.
fn float_matmul(
    level: SimdLevel,
    pool: &ThreadPool,
    w: &WeightMatrix<'_>,
    row_bytes: usize,
    x: &[f32],
    n: usize,
    out: OutPtr,
) {
    let (rows, k) = (w.rows, w.cols);
    let nt = pool.n_threads();
    let micro = micro_float(level);
    let row = |r: usize| &w.data[r * row_bytes..(r + 1) * row_bytes];
    if n == 1 {
        for_chunks(pool, rows, dot_chunk(rows, nt), |r0, r1| {
            let mut res = [0f32; 64];
            for r in (r0..r1).step_by(64) {
                let nr = (r1 - r).min(64);
                let wr = &w.data[r * row_bytes..(r + nr) * row_bytes];
                float_rows(level, w.ty, wr, row_bytes, x, &mut res[..nr]);
                for (j, &v) in res[..nr].iter().enumerate() {
                    // SAFETY: row `r + j` belongs to this chunk only.
                    unsafe { out.write(0, r + j, v) };
                }
            }
        });
        return;
    }
    // The SIMD kernels read activation and weight rows chain-major.
    let lanes = micro.map_or(0, |(_, l)| l);
    with_xperm(|xp| {
        let x: &[f32] = if lanes > 0 {
            grow(xp, n * k, 0.0);
            for (src, dst) in x.chunks_exact(k).zip(xp.chunks_exact_mut(k)).take(n) {
                chain_major_lanes(lanes, src, dst);
            }
            &xp[..n * k]
        } else {
            x
        };
        let xrow = |i: usize| &x[i * k..(i + 1) * k];
        let chunk = gemm_chunk(rows, nt);
        for_chunks(pool, rows, chunk, |r0, r1| {
            with_scratch(|s| {
                let nr = r1 - r0;
                grow(&mut s.f, chunk * k, 0.0);
                grow(&mut s.wl, k, 0.0);
                for (j, r) in (r0..r1).enumerate() {
                    let dst = &mut s.f[j * k..(j + 1) * k];
                    if lanes > 0 {
                        float_to_f32(level, w.ty, row(r), &mut s.wl[..k]);
                        chain_major_lanes(lanes, &s.wl[..k], dst);
                    } else {
                        float_to_f32(level, w.ty, row(r), dst);
                    }
                }
                let f = &s.f;
                let wrow = |j: usize| &f[j * k..(j + 1) * k];
                for r in (0..nr).step_by(4) {
                    let rr = (nr - r).min(4);
                    for c in (0..n).step_by(4) {
                        let cc = (n - c).min(4);
                        let res = match micro {
                            Some((micro, _)) => {
                                let wr: [&[f32]; 4] =
                                    std::array::from_fn(|i| wrow(r + i.min(rr - 1)));
                                let xr: [&[f32]; 4] =
                                    std::array::from_fn(|j| xrow(c + j.min(cc - 1)));
                                // SAFETY: level checked; `rr`, `cc` in 1..=4; all rows hold `k`
                                // values, chain-major.
                                unsafe { micro(rr, cc, &wr, &xr, k) }
                            }
                            None => {
                                let mut res = [[0f32; 4]; 4];
                                for (i, rv) in res.iter_mut().enumerate().take(rr) {
                                    for (j, v) in rv.iter_mut().enumerate().take(cc) {
                                        *v = scalar::dot_f32_chunked(wrow(r + i), xrow(c + j));
                                    }
                                }
                                res
                            }
                        };
                        for (i, rv) in res.iter().enumerate().take(rr) {
                            for (j, &v) in rv.iter().enumerate().take(cc) {
                                // SAFETY: rows `r0..r1` belong to this chunk only.
                                unsafe { out.write(c + j, r0 + r + i, v) };
                            }
                        }
                    }
                }
            })
        });
    })
}
