//! Portable kernels: every quantized block type decoded to the common form
//! `w = ws * u + mw` (unsigned byte `u` per value, `ws`/`mw` per 16 values), dot products
//! against quantized activations, and the float-weight dot products.
//!
//! These are the fallback on CPUs without AVX2 and the reference the SIMD levels are tested
//! against; the SIMD unpackers must produce exactly the same `u`, `ws` and `mw`.

use super::quantize::ActRow;
use kiln_sdk::quant::blocks::{
    BlockMxfp4, BlockQ2K, BlockQ3K, BlockQ4K, BlockQ4_0, BlockQ4_1, BlockQ5K, BlockQ5_0, BlockQ5_1,
    BlockQ6K, BlockQ8_0,
};
use kiln_sdk::quant::{f16_to_f32, GgmlType, QK_K};

/// The doubled E2M1 code points of MXFP4 (`code -> 2 * value`).
pub(crate) const MXFP4_DOUBLED: [i8; 16] =
    [0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12];

/// Half of the E8M0 scale `e`: `2^(e - 128)`, exact (subnormal for `e < 2`).
#[inline]
pub(crate) fn e8m0_half(e: u8) -> f32 {
    let bits = if e < 2 {
        0x0020_0000u32 << e
    } else {
        (e as u32 - 1) << 23
    };
    f32::from_bits(bits)
}

/// The 6-bit scale and min of sub-block `j` of a `Q4_K`/`Q5_K` super-block.
#[inline]
pub(crate) fn scale_min_k4(j: usize, s: &[u8; 12]) -> (u8, u8) {
    if j < 4 {
        (s[j] & 63, s[j + 4] & 63)
    } else {
        (
            (s[j + 4] & 0x0F) | ((s[j - 4] >> 6) << 4),
            (s[j + 4] >> 4) | ((s[j] >> 6) << 4),
        )
    }
}

/// The 16 signed 6-bit scales of a `Q3_K` super-block (already minus 32).
#[inline]
pub(crate) fn q3k_scales(s: &[u8; 12]) -> [i8; 16] {
    let mut out = [0i8; 16];
    for (i, o) in out.iter_mut().enumerate() {
        let lo = if i < 8 { s[i] & 0x0F } else { s[i - 8] >> 4 };
        let hi = (s[8 + i % 4] >> (2 * (i / 4))) & 3;
        *o = (lo | (hi << 4)) as i8 - 32;
    }
    out
}

/// Decodes one block of `ty` (`b` is exactly its bytes) to `u` (one byte per value) and
/// per-16 `ws`/`mw`, so that value `i` is `ws[i / 16] * u[i] + mw[i / 16]`.
///
/// The offsets are chosen so that `u` fits the SIMD kernels: at most 63 for every type but
/// `Q8_0` and `MXFP4`, whose `u` is the signed value plus 128 (and `mw = -128 * ws`).
pub(crate) fn unpack_block(ty: GgmlType, b: &[u8], u: &mut [u8], ws: &mut [f32], mw: &mut [f32]) {
    match ty {
        GgmlType::Q4_0 => {
            let tmp;
            // Blocks are read in place when aligned (they are in GGUF files), else copied.
            let blk: &BlockQ4_0 = match bytemuck::try_from_bytes(b) {
                Ok(r) => r,
                Err(_) => {
                    tmp = bytemuck::pod_read_unaligned::<BlockQ4_0>(b);
                    &tmp
                }
            };
            let d = f16_to_f32(blk.d);
            for (j, &q) in blk.qs.iter().enumerate() {
                u[j] = q & 0x0F;
                u[j + 16] = q >> 4;
            }
            ws[..2].fill(d);
            mw[..2].fill(-8.0 * d);
        }
        GgmlType::Q4_1 => {
            let tmp;
            // Blocks are read in place when aligned (they are in GGUF files), else copied.
            let blk: &BlockQ4_1 = match bytemuck::try_from_bytes(b) {
                Ok(r) => r,
                Err(_) => {
                    tmp = bytemuck::pod_read_unaligned::<BlockQ4_1>(b);
                    &tmp
                }
            };
            for (j, &q) in blk.qs.iter().enumerate() {
                u[j] = q & 0x0F;
                u[j + 16] = q >> 4;
            }
            ws[..2].fill(f16_to_f32(blk.d));
            mw[..2].fill(f16_to_f32(blk.m));
        }
        GgmlType::Q5_0 => {
            let tmp;
            // Blocks are read in place when aligned (they are in GGUF files), else copied.
            let blk: &BlockQ5_0 = match bytemuck::try_from_bytes(b) {
                Ok(r) => r,
                Err(_) => {
                    tmp = bytemuck::pod_read_unaligned::<BlockQ5_0>(b);
                    &tmp
                }
            };
            let d = f16_to_f32(blk.d);
            let qh = u32::from_le_bytes(blk.qh);
            for (j, &q) in blk.qs.iter().enumerate() {
                u[j] = (q & 0x0F) | ((((qh >> j) & 1) as u8) << 4);
                u[j + 16] = (q >> 4) | ((((qh >> (j + 16)) & 1) as u8) << 4);
            }
            ws[..2].fill(d);
            mw[..2].fill(-16.0 * d);
        }
        GgmlType::Q5_1 => {
            let tmp;
            // Blocks are read in place when aligned (they are in GGUF files), else copied.
            let blk: &BlockQ5_1 = match bytemuck::try_from_bytes(b) {
                Ok(r) => r,
                Err(_) => {
                    tmp = bytemuck::pod_read_unaligned::<BlockQ5_1>(b);
                    &tmp
                }
            };
            let qh = u32::from_le_bytes(blk.qh);
            for (j, &q) in blk.qs.iter().enumerate() {
                u[j] = (q & 0x0F) | ((((qh >> j) & 1) as u8) << 4);
                u[j + 16] = (q >> 4) | ((((qh >> (j + 16)) & 1) as u8) << 4);
            }
            ws[..2].fill(f16_to_f32(blk.d));
            mw[..2].fill(f16_to_f32(blk.m));
        }
        GgmlType::Q8_0 => {
            let tmp;
            // Blocks are read in place when aligned (they are in GGUF files), else copied.
            let blk: &BlockQ8_0 = match bytemuck::try_from_bytes(b) {
                Ok(r) => r,
                Err(_) => {
                    tmp = bytemuck::pod_read_unaligned::<BlockQ8_0>(b);
                    &tmp
                }
            };
            let d = f16_to_f32(blk.d);
            for (o, &q) in u.iter_mut().zip(&blk.qs) {
                *o = (q as u8) ^ 0x80;
            }
            ws[..2].fill(d);
            mw[..2].fill(-128.0 * d);
        }
        GgmlType::MXFP4 => {
            let tmp;
            // Blocks are read in place when aligned (they are in GGUF files), else copied.
            let blk: &BlockMxfp4 = match bytemuck::try_from_bytes(b) {
                Ok(r) => r,
                Err(_) => {
                    tmp = bytemuck::pod_read_unaligned::<BlockMxfp4>(b);
                    &tmp
                }
            };
            let d = e8m0_half(blk.e);
            // A table of the stored bytes, so the loop is a plain lookup.
            const T: [u8; 16] = {
                let mut t = [0u8; 16];
                let mut i = 0;
                while i < 16 {
                    t[i] = (MXFP4_DOUBLED[i] as u8) ^ 0x80;
                    i += 1;
                }
                t
            };
            let (lo, hi) = u[..32].split_at_mut(16);
            for ((l, h), &q) in lo.iter_mut().zip(hi.iter_mut()).zip(&blk.qs) {
                *l = T[(q & 0x0F) as usize];
                *h = T[(q >> 4) as usize];
            }
            ws[..2].fill(d);
            mw[..2].fill(-128.0 * d);
        }
        GgmlType::Q2_K => {
            let tmp;
            // Blocks are read in place when aligned (they are in GGUF files), else copied.
            let blk: &BlockQ2K = match bytemuck::try_from_bytes(b) {
                Ok(r) => r,
                Err(_) => {
                    tmp = bytemuck::pod_read_unaligned::<BlockQ2K>(b);
                    &tmp
                }
            };
            let d = f16_to_f32(blk.d);
            let dmin = f16_to_f32(blk.dmin);
            for (g, &sc) in blk.scales.iter().enumerate() {
                ws[g] = d * (sc & 0x0F) as f32;
                mw[g] = -(dmin * (sc >> 4) as f32);
            }
            // Value `128 n + 32 s + m` is bits `2s..2s+2` of `qs[32 n + m]`; loops of fixed
            // `(n, s)` so the compiler vectorises them.
            for n in 0..2 {
                let q = &blk.qs[32 * n..32 * n + 32];
                for s in 0..4 {
                    let o = &mut u[128 * n + 32 * s..128 * n + 32 * s + 32];
                    for (o, &b) in o.iter_mut().zip(q) {
                        *o = (b >> (2 * s)) & 3;
                    }
                }
            }
        }
        GgmlType::Q3_K => {
            let tmp;
            // Blocks are read in place when aligned (they are in GGUF files), else copied.
            let blk: &BlockQ3K = match bytemuck::try_from_bytes(b) {
                Ok(r) => r,
                Err(_) => {
                    tmp = bytemuck::pod_read_unaligned::<BlockQ3K>(b);
                    &tmp
                }
            };
            let d = f16_to_f32(blk.d);
            for (g, &sc) in q3k_scales(&blk.scales).iter().enumerate() {
                ws[g] = d * sc as f32;
                mw[g] = -4.0 * ws[g];
            }
            for n in 0..2 {
                let q = &blk.qs[32 * n..32 * n + 32];
                for s in 0..4 {
                    let o = &mut u[128 * n + 32 * s..128 * n + 32 * s + 32];
                    for ((o, &b), &h) in o.iter_mut().zip(q).zip(&blk.hmask) {
                        *o = ((b >> (2 * s)) & 3) | (((h >> (4 * n + s)) & 1) << 2);
                    }
                }
            }
        }
        GgmlType::Q4_K => {
            let tmp;
            // Blocks are read in place when aligned (they are in GGUF files), else copied.
            let blk: &BlockQ4K = match bytemuck::try_from_bytes(b) {
                Ok(r) => r,
                Err(_) => {
                    tmp = bytemuck::pod_read_unaligned::<BlockQ4K>(b);
                    &tmp
                }
            };
            let d = f16_to_f32(blk.d);
            let dmin = f16_to_f32(blk.dmin);
            for j in 0..8 {
                let (sc, m) = scale_min_k4(j, &blk.scales);
                ws[2 * j..2 * j + 2].fill(d * sc as f32);
                mw[2 * j..2 * j + 2].fill(-(dmin * m as f32));
            }
            for i in 0..4 {
                let q = &blk.qs[32 * i..32 * i + 32];
                let (lo, hi) = u[64 * i..64 * i + 64].split_at_mut(32);
                for ((l, h), &b) in lo.iter_mut().zip(hi.iter_mut()).zip(q) {
                    *l = b & 0x0F;
                    *h = b >> 4;
                }
            }
        }
        GgmlType::Q5_K => {
            let tmp;
            // Blocks are read in place when aligned (they are in GGUF files), else copied.
            let blk: &BlockQ5K = match bytemuck::try_from_bytes(b) {
                Ok(r) => r,
                Err(_) => {
                    tmp = bytemuck::pod_read_unaligned::<BlockQ5K>(b);
                    &tmp
                }
            };
            let d = f16_to_f32(blk.d);
            let dmin = f16_to_f32(blk.dmin);
            for j in 0..8 {
                let (sc, m) = scale_min_k4(j, &blk.scales);
                ws[2 * j..2 * j + 2].fill(d * sc as f32);
                mw[2 * j..2 * j + 2].fill(-(dmin * m as f32));
            }
            for i in 0..4 {
                let q = &blk.qs[32 * i..32 * i + 32];
                let (lo, hi) = u[64 * i..64 * i + 64].split_at_mut(32);
                for (((l, h), &b), &qh) in lo.iter_mut().zip(hi.iter_mut()).zip(q).zip(&blk.qh) {
                    *l = (b & 0x0F) | (((qh >> (2 * i)) & 1) << 4);
                    *h = (b >> 4) | (((qh >> (2 * i + 1)) & 1) << 4);
                }
            }
        }
        GgmlType::Q6_K => {
            let tmp;
            // Blocks are read in place when aligned (they are in GGUF files), else copied.
            let blk: &BlockQ6K = match bytemuck::try_from_bytes(b) {
                Ok(r) => r,
                Err(_) => {
                    tmp = bytemuck::pod_read_unaligned::<BlockQ6K>(b);
                    &tmp
                }
            };
            let d = f16_to_f32(blk.d);
            for (g, &sc) in blk.scales.iter().enumerate() {
                ws[g] = d * sc as f32;
                mw[g] = -32.0 * ws[g];
            }
            for n in 0..2 {
                let qh = &blk.qh[32 * n..32 * n + 32];
                for s in 0..4 {
                    let ql = &blk.ql[64 * n + 32 * (s % 2)..64 * n + 32 * (s % 2) + 32];
                    let shift = 4 * (s / 2);
                    let o = &mut u[128 * n + 32 * s..128 * n + 32 * s + 32];
                    for ((o, &l), &h) in o.iter_mut().zip(ql).zip(qh) {
                        *o = ((l >> shift) & 0x0F) | (((h >> (2 * s)) & 3) << 4);
                    }
                }
            }
        }
        _ => {
            // Callers only pass quantized types (checked by `matmul`); leave zeros.
            u.fill(0);
            ws.fill(0.0);
            mw.fill(0.0);
        }
    }
}

/// Decodes a whole row of `nblk` blocks of `ty` into `u` (`kp` bytes), `ws` and `mw`
/// (`kp / 16` each); the padding past the row is zeroed.
pub(crate) fn unpack_row(ty: GgmlType, row: &[u8], u: &mut [u8], ws: &mut [f32], mw: &mut [f32]) {
    let (bs, ts) = (ty.block_size(), ty.type_size());
    let nblk = row.len() / ts;
    for b in 0..nblk {
        let (e0, g0) = (b * bs, b * bs / 16);
        unpack_block(
            ty,
            &row[b * ts..(b + 1) * ts],
            &mut u[e0..e0 + bs],
            &mut ws[g0..g0 + bs / 16],
            &mut mw[g0..g0 + bs / 16],
        );
    }
    u[nblk * bs..].fill(0);
    ws[nblk * bs / 16..].fill(0.0);
    mw[nblk * bs / 16..].fill(0.0);
}

/// Dot product of one unpacked block (`u`: `BS` values, `ws`/`mw`: one per 16) with the
/// block's quantized activations (`qs`; `d` from the block's first scale; `xsum` one per 16),
/// accumulated per group of 16 in order.
#[inline(always)]
fn dot_block<const BS: usize>(
    u: &[u8],
    ws: &[f32],
    mw: &[f32],
    qs: &[i8],
    d: &[f32],
    xsum: &[f32],
) -> f32 {
    let (u, qs) = (&u[..BS], &qs[..BS]);
    let mut acc = 0f32;
    for (g, ((&w_s, &w_m), &xs)) in ws[..BS / 16]
        .iter()
        .zip(&mw[..BS / 16])
        .zip(&xsum[..BS / 16])
        .enumerate()
    {
        let isum: i32 = u[16 * g..16 * g + 16]
            .iter()
            .zip(&qs[16 * g..16 * g + 16])
            .map(|(&w, &x)| w as i32 * x as i32)
            .sum();
        acc += w_s * d[g / 2] * isum as f32 + w_m * xs;
    }
    acc
}

/// Dot product of a row unpacked by [`unpack_row`] (`ws`, `mw` per 16 values) with one
/// quantized activation row: a partial sum per block of `bs` values, added up in order.
/// This is exactly [`dot_row`]'s arithmetic; the padding past the last whole block is skipped.
pub(crate) fn dot_unpacked_row(bs: usize, u: &[u8], ws: &[f32], mw: &[f32], a: ActRow<'_>) -> f32 {
    fn row<const BS: usize>(u: &[u8], ws: &[f32], mw: &[f32], a: ActRow<'_>) -> f32 {
        let nblk = (a.qs.len() / BS).min(u.len() / BS);
        let g = BS / 16;
        let mut acc = 0f32;
        for b in 0..nblk {
            acc += dot_block::<BS>(
                &u[b * BS..],
                &ws[b * g..],
                &mw[b * g..],
                &a.qs[b * BS..],
                &a.d[b * BS / 32..],
                &a.xsum[b * g..],
            );
        }
        acc
    }
    if bs == QK_K {
        row::<QK_K>(u, ws, mw, a)
    } else {
        row::<32>(u, ws, mw, a)
    }
}

/// Dot product of one quantized weight row (whole blocks of `ty`) with an activation row.
pub(crate) fn dot_row(ty: GgmlType, row: &[u8], a: ActRow<'_>) -> f32 {
    fn blocks<const BS: usize>(ty: GgmlType, row: &[u8], a: ActRow<'_>) -> f32 {
        let mut u = [0u8; BS];
        let mut ws = [0f32; QK_K / 16];
        let mut mw = [0f32; QK_K / 16];
        let g = BS / 16;
        let mut acc = 0f32;
        for (b, blk) in row.chunks_exact(ty.type_size()).enumerate() {
            unpack_block(ty, blk, &mut u, &mut ws[..g], &mut mw[..g]);
            acc += dot_block::<BS>(
                &u,
                &ws,
                &mw,
                &a.qs[b * BS..],
                &a.d[b * BS / 32..],
                &a.xsum[b * g..],
            );
        }
        acc
    }
    if ty.block_size() == QK_K {
        blocks::<QK_K>(ty, row, a)
    } else {
        blocks::<32>(ty, row, a)
    }
}

/// Converts `n` float weights of type `ty` (F32/F16/BF16 bytes) to f32.
pub(crate) fn float_row_to_f32(ty: GgmlType, src: &[u8], dst: &mut [f32]) {
    match ty {
        GgmlType::F32 => {
            for (o, c) in dst.iter_mut().zip(src.chunks_exact(4)) {
                *o = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            }
        }
        GgmlType::F16 => {
            for (o, c) in dst.iter_mut().zip(src.chunks_exact(2)) {
                *o = f16_to_f32(u16::from_le_bytes([c[0], c[1]]));
            }
        }
        GgmlType::BF16 => {
            for (o, c) in dst.iter_mut().zip(src.chunks_exact(2)) {
                *o = f32::from_bits((u16::from_le_bytes([c[0], c[1]]) as u32) << 16);
            }
        }
        _ => dst.fill(0.0),
    }
}

/// Values per partial sum of the float dot products.
const FLOAT_CHUNK: usize = 64;

/// `sum(w * x)` over the shorter length: a partial sum per 64 values, added up in order.
pub(crate) fn dot_f32_chunked(w: &[f32], x: &[f32]) -> f32 {
    let mut acc = 0f32;
    for (wc, xc) in w.chunks(FLOAT_CHUNK).zip(x.chunks(FLOAT_CHUNK)) {
        acc += wc.iter().zip(xc).map(|(a, b)| a * b).sum::<f32>();
    }
    acc
}

/// Dot product of a float weight row (F32/F16/BF16 bytes) with `x`: [`dot_f32_chunked`] of
/// the converted row.
pub(crate) fn dot_float_row(ty: GgmlType, row: &[u8], x: &[f32]) -> f32 {
    let mut buf = [0f32; FLOAT_CHUNK];
    let mut acc = 0f32;
    let es = ty.type_size();
    for (c, xs) in row.chunks(FLOAT_CHUNK * es).zip(x.chunks(FLOAT_CHUNK)) {
        let m = xs.len().min(c.len() / es);
        float_row_to_f32(ty, c, &mut buf[..m]);
        acc += buf[..m].iter().zip(xs).map(|(a, b)| a * b).sum::<f32>();
    }
    acc
}
