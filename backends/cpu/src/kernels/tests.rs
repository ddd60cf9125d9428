//! Kernel tests against the SDK's reference dequantizer, and SIMD levels against scalar.
//!
//! Tolerances. The quantized kernels compute `sum(w[i] * xq[i])` where `xq` is `x` rounded to
//! 8 bits per block (legacy types: with the block scale rounded to f16 as ggml does, which adds
//! at most `127 * 2^-11` of a step), so `|result - sum(w * x)| <= sum(|w[i]| * amax(block of i)
//! * (1/254 + 1/16 / 127))`. Tests check that bound (plus float slack), and, much tighter,
//! agreement with the same sum computed in f64 from the test's own copy of the quantized
//! activations: `1e-4 * sum(|w[i] * xq[i]|)` (float rounding only). For `Q4_1`/`Q5_1`, whose
//! min term uses ggml's f16-rounded `Q8_1` block sums, the reference adds that term exactly.

use super::matmul::act_block_sums;
use super::quantize::{
    padded, quantize_row, quantize_row_scalar, round_scales_like_ggml, ActBuf, ActMode, BlockSums,
    Extras,
};
use super::{matmul_with, supports, KernelError, SimdLevel, ThreadPool, WeightMatrix};
use kiln_sdk::quant::{dequantize_row, f32_to_f16, GgmlType};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const QUANT_TYPES: [GgmlType; 11] = [
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

/// Byte offsets of the f16 scale fields of each block type.
fn f16_fields(ty: GgmlType) -> &'static [usize] {
    match ty {
        GgmlType::Q4_0 | GgmlType::Q5_0 | GgmlType::Q8_0 => &[0],
        GgmlType::Q4_1 | GgmlType::Q5_1 | GgmlType::Q4_K | GgmlType::Q5_K => &[0, 2],
        GgmlType::Q2_K => &[80, 82],
        GgmlType::Q3_K => &[108],
        GgmlType::Q6_K => &[208],
        _ => &[],
    }
}

/// Random valid weights: random bytes with sane f16 scales (and sane MXFP4 exponents).
fn random_weights(ty: GgmlType, rows: usize, cols: usize, rng: &mut StdRng) -> Vec<u8> {
    let (bs, ts) = (ty.block_size(), ty.type_size());
    let nblk = rows * cols / bs;
    let mut data = vec![0u8; nblk * ts];
    match ty {
        GgmlType::F32 => {
            for c in data.chunks_exact_mut(4) {
                c.copy_from_slice(&rng.gen_range(-1.0f32..1.0).to_le_bytes());
            }
        }
        GgmlType::F16 => {
            for c in data.chunks_exact_mut(2) {
                c.copy_from_slice(&f32_to_f16(rng.gen_range(-1.0f32..1.0)).to_le_bytes());
            }
        }
        GgmlType::BF16 => {
            for c in data.chunks_exact_mut(2) {
                let b = (rng.gen_range(-1.0f32..1.0).to_bits() >> 16) as u16;
                c.copy_from_slice(&b.to_le_bytes());
            }
        }
        _ => {
            rng.fill(&mut data[..]);
            for blk in data.chunks_exact_mut(ts) {
                for &off in f16_fields(ty) {
                    let v =
                        rng.gen_range(0.001f32..0.05) * if rng.gen_bool(0.2) { -1.0 } else { 1.0 };
                    blk[off..off + 2].copy_from_slice(&f32_to_f16(v).to_le_bytes());
                }
                if ty == GgmlType::MXFP4 {
                    blk[0] = rng.gen_range(118..=130);
                }
            }
        }
    }
    data
}

fn random_x(len: usize, rng: &mut StdRng) -> Vec<f32> {
    (0..len)
        .map(|i| {
            let v: f32 = rng.gen_range(-1.0..1.0);
            // A few outlier channels, as real activations have.
            if i % 97 == 5 {
                v * 20.0
            } else {
                v
            }
        })
        .collect()
}

fn dequant(ty: GgmlType, data: &[u8], rows: usize, cols: usize) -> Vec<f32> {
    let mut w = vec![0f32; rows * cols];
    dequantize_row(ty, data, &mut w).expect("reference dequantizer");
    w
}

fn act_mode(ty: GgmlType) -> ActMode {
    if ty.block_size() == 256 {
        ActMode::B256
    } else {
        ActMode::B32
    }
}

/// The activations as the kernels see them: `q * d` per value (padding dropped), and for
/// types with a min the difference of each 32-block's sum term from `d * sum(q)` (ggml's
/// rounded `Q8_1` sums), to be multiplied by the block's min.
fn quantized_x(ty: GgmlType, x: &[f32]) -> (Vec<f32>, Vec<f64>) {
    let kp = padded(x.len());
    let (mut qs, mut d, mut xs) = (vec![0i8; kp], vec![0f32; kp / 32], vec![0f32; kp / 16]);
    quantize_row_scalar(act_mode(ty), x, &mut qs, &mut d, &mut xs);
    if let Some(sums) = act_block_sums(ty) {
        round_scales_like_ggml(&qs, &mut d, &mut xs, sums);
    }
    let xq = (0..x.len()).map(|i| qs[i] as f32 * d[i / 32]).collect();
    let extra = (0..x.len() / 32)
        .map(|b| {
            let sq: i32 = qs[32 * b..32 * b + 32].iter().map(|&q| q as i32).sum();
            (xs[2 * b] + xs[2 * b + 1]) as f64 - d[b] as f64 * sq as f64
        })
        .collect();
    (xq, extra)
}

/// The f16 min of each block of `Q4_1`/`Q5_1` rows (zero for other types), row-major.
fn block_mins(ty: GgmlType, data: &[u8]) -> Vec<f64> {
    match ty {
        GgmlType::Q4_1 | GgmlType::Q5_1 => data
            .chunks_exact(ty.type_size())
            .map(|b| kiln_sdk::quant::f16_to_f32(u16::from_le_bytes([b[2], b[3]])) as f64)
            .collect(),
        _ => vec![0.0; data.len() / ty.type_size()],
    }
}

fn levels() -> Vec<SimdLevel> {
    SimdLevel::ALL
        .into_iter()
        .filter(|l| l.is_available())
        .collect()
}

/// Runs one case at every available level, checking against the references.
fn check_case(ty: GgmlType, rows: usize, cols: usize, n: usize, pool: &ThreadPool, seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    let data = random_weights(ty, rows, cols, &mut rng);
    let x = random_x(n * cols, &mut rng);
    let w = dequant(ty, &data, rows, cols);
    let m = WeightMatrix {
        ty,
        rows,
        cols,
        data: &data,
    };
    let float = matches!(ty, GgmlType::F32 | GgmlType::F16 | GgmlType::BF16);
    let bl = act_mode(ty).len().min(cols);
    let mins = block_mins(ty, &data);
    let bpr = cols / ty.block_size();
    let mut by_level = Vec::new();
    for level in levels() {
        let mut out = vec![f32::NAN; n * rows];
        matmul_with(level, pool, &m, &x, n, &mut out).expect("matmul");
        for i in 0..n {
            let xi = &x[i * cols..(i + 1) * cols];
            let (xq, extra) = if float {
                (xi.to_vec(), Vec::new())
            } else {
                quantized_x(ty, xi)
            };
            for r in 0..rows {
                let wr = &w[r * cols..(r + 1) * cols];
                let got = out[i * rows + r] as f64;
                let exact: f64 = wr.iter().zip(xi).map(|(&a, &b)| a as f64 * b as f64).sum();
                let min_term: f64 = extra.iter().zip(&mins[r * bpr..]).map(|(e, m)| e * m).sum();
                let onq: f64 = wr
                    .iter()
                    .zip(&xq)
                    .map(|(&a, &b)| a as f64 * b as f64)
                    .sum::<f64>()
                    + min_term;
                let mag: f64 = wr
                    .iter()
                    .zip(&xq)
                    .map(|(&a, &b)| (a as f64 * b as f64).abs())
                    .sum();
                let tight = 1e-4 * mag + 1e-6;
                assert!(
                    (got - onq).abs() <= tight,
                    "{ty} {level:?} rows={rows} cols={cols} n={n} i={i} r={r}: got {got}, want {onq} (tol {tight})"
                );
                // The 8-bit activation bound against the exact product.
                let qerr: f64 = if float {
                    0.0
                } else {
                    (0..cols)
                        .map(|c| {
                            let b0 = c / bl * bl;
                            let amax = xi[b0..b0 + bl].iter().fold(0f32, |a, v| a.max(v.abs()));
                            wr[c].abs() as f64 * amax as f64 * (1.0 / 254.0 + 1.0 / 16.0 / 127.0)
                        })
                        .sum()
                };
                let loose = 1.01 * qerr + min_term.abs() + 1e-4 * mag + 1e-6;
                assert!(
                    (got - exact).abs() <= loose,
                    "{ty} {level:?} rows={rows} cols={cols} n={n}: got {got}, exact {exact} (tol {loose})"
                );
            }
        }
        by_level.push((level, out));
    }
    // Levels agree closely with the scalar kernels.
    let (_, base) = &by_level[0];
    for (level, out) in &by_level[1..] {
        for (j, (&a, &b)) in base.iter().zip(out).enumerate() {
            let tol = 2e-4 * (a.abs().max(b.abs()) as f64) + 1e-3;
            assert!(
                ((a - b) as f64).abs() <= tol,
                "{ty} {level:?} vs scalar at {j}: {a} vs {b}"
            );
        }
    }
}

#[test]
fn quantized_types_match_reference() {
    let pool = ThreadPool::new(2);
    for (t, ty) in QUANT_TYPES.into_iter().enumerate() {
        let bs = ty.block_size();
        // Odd block counts exercise the half-step tails of the 64-wide kernels.
        let col_options: &[usize] = if bs == 256 {
            &[256, 768]
        } else {
            &[32, 96, 576]
        };
        for &cols in col_options {
            for (k, &n) in [1usize, 3, 17].iter().enumerate() {
                for &rows in &[1usize, 7, 38] {
                    check_case(
                        ty,
                        rows,
                        cols,
                        n,
                        &pool,
                        (t * 1000 + k * 100 + rows + cols) as u64,
                    );
                }
            }
        }
    }
}

#[test]
fn float_types_match_reference() {
    let pool = ThreadPool::new(2);
    for ty in [GgmlType::F32, GgmlType::F16, GgmlType::BF16] {
        for cols in [1usize, 17, 64, 100] {
            for n in [1usize, 3, 17] {
                check_case(ty, 37, cols, n, &pool, cols as u64 * 31 + n as u64);
            }
        }
    }
}

#[test]
fn larger_shapes_and_thread_counts() {
    for threads in [1usize, 3] {
        let pool = ThreadPool::new(threads);
        check_case(GgmlType::Q4_K, 301, 1536, 5, &pool, 11);
        check_case(GgmlType::Q6_K, 67, 2048, 1, &pool, 12);
        check_case(GgmlType::Q4_1, 1031, 576, 1, &pool, 13);
        check_case(GgmlType::Q8_0, 70, 896, 9, &pool, 14);
    }
}

#[test]
fn simd_quantizer_is_bit_exact() {
    let mut rng = StdRng::seed_from_u64(3);
    for level in levels() {
        for (mode, len) in [
            (ActMode::B32, 96usize),
            (ActMode::B32, 100),
            (ActMode::B32, 576),
            (ActMode::B256, 768),
        ] {
            let mut x = random_x(len, &mut rng);
            x[7] = 0.0;
            if len == 96 {
                x[32..64].fill(0.0);
            }
            let kp = padded(len);
            let mut a = (vec![0i8; kp], vec![0f32; kp / 32], vec![0f32; kp / 16]);
            let mut b = a.clone();
            quantize_row_scalar(mode, &x, &mut a.0, &mut a.1, &mut a.2);
            quantize_row(level, mode, &x, &mut b.0, &mut b.1, &mut b.2);
            assert_eq!(a, b, "{level:?} {mode:?} {len}");
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[test]
fn simd_unpackers_are_bit_exact() {
    use super::matmul::unpack_scalar_expanded;
    let mut rng = StdRng::seed_from_u64(5);
    for ty in QUANT_TYPES {
        let cols = if ty.block_size() == 256 { 512 } else { 96 };
        let data = random_weights(ty, 1, cols, &mut rng);
        let kp = padded(cols);
        let mut want = (vec![0u8; kp], vec![0f32; kp / 4], vec![0f32; kp / 16]);
        unpack_scalar_expanded(ty, &data, &mut want.0, &mut want.1, &mut want.2);
        let fns = [
            (SimdLevel::Avx2, super::avx2::unpack_fn(ty)),
            (SimdLevel::Avx512, super::avx512::unpack_fn(ty)),
        ];
        for (level, f) in fns {
            let Some(f) = f else { continue };
            if !level.is_available() {
                continue;
            }
            let mut got = (vec![7u8; kp], vec![7f32; kp / 4], vec![7f32; kp / 16]);
            // SAFETY: level checked; buffer sizes as documented.
            unsafe { f(&data, &mut got.0, &mut got.1, &mut got.2) };
            assert_eq!(want.0, got.0, "{ty} {level:?} bytes");
            let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
            if level == SimdLevel::Avx2 && matches!(ty, GgmlType::Q4_K | GgmlType::Q5_K) {
                // AVX2's integer-scale layout: per super-block the 8 six-bit scales as the
                // raw bits of the first two floats, then `d`; `d * sc_j` is the scalar
                // unpacker's scale of sub-block j, bit for bit.
                for sb in 0..kp / 256 {
                    let l = &got.1[64 * sb..64 * sb + 64];
                    let sc = l[0].to_bits() as u64 | (l[1].to_bits() as u64) << 32;
                    for j in 0..8 {
                        let s = ((sc >> (8 * j)) & 0xFF) as u8;
                        assert!(s < 64, "{ty} six-bit scale");
                        let ws = l[2] * s as f32;
                        assert_eq!(
                            ws.to_bits(),
                            want.1[64 * sb + 8 * j].to_bits(),
                            "{ty} scale"
                        );
                    }
                    assert!(l[3..].iter().all(|&v| v == 0.0));
                }
            } else {
                assert_eq!(bits(&want.1), bits(&got.1), "{ty} {level:?} scales");
            }
            assert_eq!(bits(&want.2), bits(&got.2), "{ty} {level:?} offsets");
        }
    }
}

#[test]
fn scalar_unpack_matches_reference_dequantizer() {
    let mut rng = StdRng::seed_from_u64(9);
    for ty in QUANT_TYPES {
        let cols = if ty.block_size() == 256 { 512 } else { 96 };
        let data = random_weights(ty, 1, cols, &mut rng);
        let w = dequant(ty, &data, 1, cols);
        let kp = padded(cols);
        let (mut u, mut ws, mut mw) = (vec![0u8; kp], vec![0f32; kp / 16], vec![0f32; kp / 16]);
        super::scalar::unpack_row(ty, &data, &mut u, &mut ws, &mut mw);
        for i in 0..cols {
            let v = ws[i / 16] * u[i] as f32 + mw[i / 16];
            assert!(
                (v - w[i]).abs() <= 1e-6 * (1.0 + w[i].abs()),
                "{ty} value {i}: {v} vs {}",
                w[i]
            );
        }
    }
}

#[test]
fn rejects_bad_arguments() {
    let pool = ThreadPool::new(2);
    let data = vec![0u8; 18 * 2];
    let x = vec![0f32; 64];
    let mut out = vec![0f32; 1];
    let m = WeightMatrix {
        ty: GgmlType::Q4_0,
        rows: 1,
        cols: 64,
        data: &data,
    };
    assert!(super::matmul(&pool, &m, &x, 1, &mut out).is_ok());
    let bad = WeightMatrix {
        ty: GgmlType::Q4_0,
        rows: 2,
        cols: 64,
        data: &data,
    };
    assert!(matches!(
        super::matmul(&pool, &bad, &x, 1, &mut out),
        Err(KernelError::Shape(_))
    ));
    let bad = WeightMatrix {
        ty: GgmlType::Q4_0,
        rows: 1,
        cols: 48,
        data: &data,
    };
    assert!(matches!(
        super::matmul(&pool, &bad, &x[..48], 1, &mut out),
        Err(KernelError::Shape(_))
    ));
    assert!(matches!(
        super::matmul(&pool, &m, &x[..63], 1, &mut out),
        Err(KernelError::Shape(_))
    ));
    assert!(matches!(
        super::matmul(&pool, &m, &x, 1, &mut [0f32; 2]),
        Err(KernelError::Shape(_))
    ));
    let q8k = WeightMatrix {
        ty: GgmlType::Q8_K,
        rows: 1,
        cols: 256,
        data: &[],
    };
    assert_eq!(
        super::matmul(&pool, &q8k, &x, 1, &mut out),
        Err(KernelError::Unsupported(GgmlType::Q8_K))
    );
    assert!(!supports(GgmlType::Q8_K) && !supports(GgmlType::Q8_1));
    let huge = WeightMatrix {
        ty: GgmlType::F32,
        rows: usize::MAX,
        cols: 4,
        data: &[],
    };
    assert!(matches!(
        super::matmul(&pool, &huge, &x[..4], 1, &mut out),
        Err(KernelError::Shape(_))
    ));
    // Empty shapes are fine.
    let empty = WeightMatrix {
        ty: GgmlType::Q4_0,
        rows: 0,
        cols: 64,
        data: &[],
    };
    assert!(super::matmul(&pool, &empty, &x, 1, &mut []).is_ok());
}

#[test]
fn activation_rows_do_not_depend_on_n() {
    let mut rng = StdRng::seed_from_u64(21);
    let cols = 544;
    let xs: Vec<Vec<f32>> = (0..5).map(|_| random_x(cols, &mut rng)).collect();
    let configs = [
        (
            ActMode::B32,
            Some(BlockSums::Exact),
            Extras {
                off: Some(8),
                xs32: false,
            },
        ),
        (
            ActMode::B32,
            Some(BlockSums::Q8_1),
            Extras {
                off: None,
                xs32: true,
            },
        ),
        (
            ActMode::B32,
            Some(BlockSums::Exact),
            Extras {
                off: Some(128),
                xs32: true,
            },
        ),
    ];
    let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
    for level in levels() {
        for (mode, sums, extras) in configs {
            let quantize = |rows: &[&Vec<f32>]| {
                let mut buf = ActBuf::default();
                buf.reset(rows.len(), padded(cols), extras);
                let ptrs = buf.ptrs();
                for (i, x) in rows.iter().enumerate() {
                    // SAFETY: row `i` was reserved by `reset`; the level is available.
                    unsafe { ptrs.quantize_row(level, mode, sums, i, x) };
                }
                buf
            };
            let batch = quantize(&xs.iter().collect::<Vec<_>>());
            for (i, x) in xs.iter().enumerate() {
                let alone = quantize(&[x]);
                let (a, b) = (alone.row(0), batch.row(i));
                assert_eq!(a.qs, b.qs, "{level:?} {extras:?} row {i} bytes");
                assert_eq!(bits(a.d), bits(b.d), "{level:?} row {i} scales");
                assert_eq!(bits(a.xsum), bits(b.xsum), "{level:?} row {i} sums");
                assert_eq!(a.off, b.off, "{level:?} row {i} offsets");
                assert_eq!(bits(a.xs32), bits(b.xs32), "{level:?} row {i} block sums");
                assert_eq!(a.off.is_empty(), extras.off.is_none());
                assert_eq!(a.xs32.is_empty(), !extras.xs32);
            }
        }
    }
}

/// `(rows, cols)` cases for the invariance tests: row counts that are not multiples of the
/// micro-kernels' tiles, and column counts covering every tail: odd block counts (a half
/// 64-value step), whole and partial groups of steps, and float rows ending in 1 to 3 chunks
/// or a partial one.
fn invariance_shapes(ty: GgmlType) -> &'static [(usize, usize)] {
    match ty.block_size() {
        256 => &[(7, 256), (38, 768), (5, 2304)],
        32 => &[
            (7, 32),
            (3, 96),
            (6, 224),
            (38, 544),
            (9, 576),
            (5, 1056),
            (2, 1536),
        ],
        _ => &[(7, 1), (38, 17), (5, 64), (6, 100), (9, 1000)],
    }
}

/// A pool of activation rows: random ones with outliers, plus an all-zero row, a row of tiny
/// values and a row with one huge value.
fn activation_pool(cols: usize, rng: &mut StdRng) -> Vec<Vec<f32>> {
    let mut pool: Vec<Vec<f32>> = (0..61).map(|_| random_x(cols, rng)).collect();
    pool.push(vec![0.0; cols]);
    pool.push((0..cols).map(|i| (i as f32 - 7.5) * 1e-30).collect());
    let mut spike = random_x(cols, rng);
    spike[cols / 2] = 3.0e4;
    pool.push(spike);
    pool
}

/// Checks that every output of a batched matmul is bit-identical to the `n == 1` matmul of
/// its activation row alone, for several batch sizes, positions and thread counts.
fn check_batch_invariance(ty: GgmlType, rows: usize, cols: usize, seed: u64) {
    let pools = [ThreadPool::new(1), ThreadPool::new(2)];
    let mut rng = StdRng::seed_from_u64(seed);
    let data = random_weights(ty, rows, cols, &mut rng);
    let xs = activation_pool(cols, &mut rng);
    let m = WeightMatrix {
        ty,
        rows,
        cols,
        data: &data,
    };
    let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
    for level in levels() {
        let alone: Vec<Vec<u32>> = xs
            .iter()
            .map(|x| {
                let mut out = vec![f32::NAN; rows];
                matmul_with(level, &pools[0], &m, x, 1, &mut out).expect("matmul");
                bits(&out)
            })
            .collect();
        for (j, x) in xs.iter().enumerate().step_by(5) {
            let mut out = vec![f32::NAN; rows];
            matmul_with(level, &pools[1], &m, x, 1, &mut out).expect("matmul");
            assert_eq!(
                bits(&out),
                alone[j],
                "{ty} {level:?} n=1 two threads, row {j}"
            );
        }
        for n in [2usize, 3, 5, 8, 17, 64] {
            for trial in 0..2 {
                // A random selection of `n` distinct pool rows, in random order.
                let mut idx: Vec<usize> = (0..xs.len()).collect();
                for k in 0..n {
                    let j = rng.gen_range(k..idx.len());
                    idx.swap(k, j);
                }
                idx.truncate(n);
                let x: Vec<f32> = idx.iter().flat_map(|&j| xs[j].iter().copied()).collect();
                for pool in &pools {
                    let mut out = vec![f32::NAN; n * rows];
                    matmul_with(level, pool, &m, &x, n, &mut out).expect("matmul");
                    for (i, &j) in idx.iter().enumerate() {
                        assert_eq!(
                            bits(&out[i * rows..(i + 1) * rows]),
                            alone[j],
                            "{ty} {level:?} rows={rows} cols={cols} n={n} trial={trial} \
                             threads={} position {i} (pool row {j})",
                            pool.n_threads()
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn matmul_is_batch_invariant_quantized() {
    for (t, ty) in QUANT_TYPES.into_iter().enumerate() {
        for (k, &(rows, cols)) in invariance_shapes(ty).iter().enumerate() {
            check_batch_invariance(ty, rows, cols, (t * 10 + k) as u64);
        }
    }
}

#[test]
fn matmul_is_batch_invariant_float() {
    for (t, ty) in [GgmlType::F32, GgmlType::F16, GgmlType::BF16]
        .into_iter()
        .enumerate()
    {
        for (k, &(rows, cols)) in invariance_shapes(ty).iter().enumerate() {
            check_batch_invariance(ty, rows, cols, (100 + t * 10 + k) as u64);
        }
    }
}
