//! Reference dequantizers: every quantized block type back to `f32`.
//!
//! These are the scalar reference implementations that the optimized backends are tested
//! against. The float arithmetic of each format is done in a fixed order (scale products
//! first, then one multiply and at most one add/subtract per element, never fused), which
//! gives bit-identical results to the `gguf` Python package's `gguf.quants.dequantize`.
//!
//! Multi-byte fields are read as little-endian whatever the host, as stored in GGUF files.

mod kquants;
mod legacy;
mod mxfp4;

pub use kquants::{get_scale_min_k4, q3k_scales};
pub use mxfp4::{e8m0_to_f32_half, MXFP4_VALUES};

use super::blocks::{
    as_blocks, f16_to_f32, Block, BlockMxfp4, BlockQ2K, BlockQ3K, BlockQ4K, BlockQ4_0, BlockQ4_1,
    BlockQ5K, BlockQ5_0, BlockQ5_1, BlockQ6K, BlockQ8_0,
};
use super::types::GgmlType;

/// A block type that can be expanded to `f32`.
pub trait Dequantize: Block {
    /// Writes the block's `Self::N` values to `out`.
    ///
    /// # Panics
    ///
    /// If `out.len() != Self::N` (a caller bug, like `copy_from_slice`); [`dequantize_row`]
    /// and [`dequantize_blocks`] check lengths and return errors instead.
    fn dequantize(&self, out: &mut [f32]);
}

/// Why a dequantization request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuantError {
    /// The element count is not a whole number of blocks of the type.
    #[error("{n} elements is not a whole number of {ty} blocks of {block} elements")]
    NotWholeBlocks {
        /// The tensor type.
        ty: GgmlType,
        /// The requested element count.
        n: usize,
        /// Elements per block of `ty`.
        block: usize,
    },
    /// The source byte length does not match the element count.
    #[error("{ty} source holds {actual} bytes, {expected} expected")]
    SrcLength {
        /// The tensor type.
        ty: GgmlType,
        /// Bytes needed for the requested element count.
        expected: u64,
        /// Bytes given.
        actual: usize,
    },
    /// The destination length does not match the number of blocks given.
    #[error("destination holds {actual} floats, {expected} expected")]
    DstLength {
        /// Floats the blocks expand to.
        expected: usize,
        /// Floats given.
        actual: usize,
    },
    /// The type has no dequantizer (activation-only types such as `Q8_K`).
    #[error("dequantization of {0} is not supported")]
    Unsupported(GgmlType),
    /// The bytes are not aligned for a typed view of the blocks.
    #[error("{ty} block data is not aligned to {align} bytes")]
    Misaligned {
        /// The tensor type.
        ty: GgmlType,
        /// The alignment the block struct needs.
        align: usize,
    },
}

/// Views `bytes` as a slice of `B` blocks, with a [`QuantError`] on bad length or alignment.
pub fn blocks_of<B: Block>(bytes: &[u8]) -> Result<&[B], QuantError> {
    let size = std::mem::size_of::<B>();
    if !bytes.len().is_multiple_of(size) {
        return Err(QuantError::SrcLength {
            ty: B::TYPE,
            expected: (bytes.len() / size * size) as u64,
            actual: bytes.len(),
        });
    }
    as_blocks::<B>(bytes).map_err(|_| QuantError::Misaligned {
        ty: B::TYPE,
        align: std::mem::align_of::<B>(),
    })
}

/// Dequantizes a slice of typed blocks into `dst`, which must hold `blocks.len() * B::N` floats.
pub fn dequantize_blocks<B: Dequantize>(blocks: &[B], dst: &mut [f32]) -> Result<(), QuantError> {
    let expected = blocks.len() * B::N;
    if dst.len() != expected {
        return Err(QuantError::DstLength {
            expected,
            actual: dst.len(),
        });
    }
    for (b, out) in blocks.iter().zip(dst.chunks_exact_mut(B::N)) {
        b.dequantize(out);
    }
    Ok(())
}

/// Dequantizes `dst.len()` elements of type `ty` from `src`, which must be exactly
/// `ty.bytes_for(dst.len())` bytes long. Any alignment of `src` is accepted.
///
/// Supports `F32`, `F16`, `BF16` and every quantized weight type; activation-only types
/// (`Q8_1`, `Q8_K`) give [`QuantError::Unsupported`].
pub fn dequantize_row(ty: GgmlType, src: &[u8], dst: &mut [f32]) -> Result<(), QuantError> {
    let n = dst.len();
    let block = ty.block_size();
    if !n.is_multiple_of(block) {
        return Err(QuantError::NotWholeBlocks { ty, n, block });
    }
    let expected = ty
        .bytes_for(n as u64)
        .ok_or(QuantError::NotWholeBlocks { ty, n, block })?;
    if src.len() as u64 != expected {
        return Err(QuantError::SrcLength {
            ty,
            expected,
            actual: src.len(),
        });
    }
    match ty {
        GgmlType::F32 => {
            for (o, c) in dst.iter_mut().zip(src.chunks_exact(4)) {
                *o = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            }
        }
        GgmlType::F16 => {
            for (o, c) in dst.iter_mut().zip(src.chunks_exact(2)) {
                *o = f16_to_f32_exact(u16::from_le_bytes([c[0], c[1]]));
            }
        }
        GgmlType::BF16 => {
            for (o, c) in dst.iter_mut().zip(src.chunks_exact(2)) {
                *o = bf16_to_f32(u16::from_le_bytes([c[0], c[1]]));
            }
        }
        GgmlType::Q4_0 => run::<BlockQ4_0>(src, dst),
        GgmlType::Q4_1 => run::<BlockQ4_1>(src, dst),
        GgmlType::Q5_0 => run::<BlockQ5_0>(src, dst),
        GgmlType::Q5_1 => run::<BlockQ5_1>(src, dst),
        GgmlType::Q8_0 => run::<BlockQ8_0>(src, dst),
        GgmlType::Q2_K => run::<BlockQ2K>(src, dst),
        GgmlType::Q3_K => run::<BlockQ3K>(src, dst),
        GgmlType::Q4_K => run::<BlockQ4K>(src, dst),
        GgmlType::Q5_K => run::<BlockQ5K>(src, dst),
        GgmlType::Q6_K => run::<BlockQ6K>(src, dst),
        GgmlType::MXFP4 => run::<BlockMxfp4>(src, dst),
        GgmlType::Q8_1 | GgmlType::Q8_K => return Err(QuantError::Unsupported(ty)),
    }
    Ok(())
}

/// Half-precision bits to f32, keeping NaN payloads bit for bit (signaling NaNs stay
/// signaling, as in numpy), so that `F16` tensors convert exactly.
#[inline(always)]
pub fn f16_to_f32_exact(bits: u16) -> f32 {
    if bits & 0x7C00 == 0x7C00 && bits & 0x03FF != 0 {
        let sign = ((bits & 0x8000) as u32) << 16;
        f32::from_bits(sign | 0x7F80_0000 | ((bits & 0x03FF) as u32) << 13)
    } else {
        f16_to_f32(bits)
    }
}

/// Bfloat16 bits to f32 (exact: the bits become the high half of the f32).
#[inline(always)]
pub fn bf16_to_f32(bits: u16) -> f32 {
    f32::from_bits((bits as u32) << 16)
}

/// Dequantizes whole blocks; lengths are already checked by the caller.
fn run<B: Dequantize>(src: &[u8], dst: &mut [f32]) {
    let outs = dst.chunks_exact_mut(B::N);
    match as_blocks::<B>(src) {
        Ok(blocks) => {
            for (b, out) in blocks.iter().zip(outs) {
                b.dequantize(out);
            }
        }
        // Unaligned source: copy each block out first.
        Err(_) => {
            for (c, out) in src.chunks_exact(std::mem::size_of::<B>()).zip(outs) {
                bytemuck::pod_read_unaligned::<B>(c).dequantize(out);
            }
        }
    }
}

/// A little-endian `u16` field of a block as f16 → f32.
#[inline(always)]
fn le_f16(bits: u16) -> f32 {
    f16_to_f32(u16::from_le(bits))
}

/// Splits `out` into the block's fixed-size array, panicking on a caller length bug.
#[inline(always)]
fn out_array<const N: usize>(out: &mut [f32]) -> &mut [f32; N] {
    let len = out.len();
    match out.try_into() {
        Ok(a) => a,
        Err(_) => panic!("dequantize: output holds {len} floats, block has {N}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::f32_to_f16;

    #[test]
    fn float_types() {
        let mut out = [0f32; 2];
        let src: Vec<u8> = [1.5f32, -2.25]
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect();
        dequantize_row(GgmlType::F32, &src, &mut out).unwrap();
        assert_eq!(out, [1.5, -2.25]);

        let src: Vec<u8> = [f32_to_f16(0.5), f32_to_f16(-3.0)]
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect();
        dequantize_row(GgmlType::F16, &src, &mut out).unwrap();
        assert_eq!(out, [0.5, -3.0]);

        // bf16 0x3FC0 = 1.5, 0xC010 = -2.25
        dequantize_row(GgmlType::BF16, &[0xC0, 0x3F, 0x10, 0xC0], &mut out).unwrap();
        assert_eq!(out, [1.5, -2.25]);
    }

    #[test]
    fn errors() {
        let mut out = [0f32; 32];
        assert_eq!(
            dequantize_row(GgmlType::Q4_0, &[0; 17], &mut out),
            Err(QuantError::SrcLength {
                ty: GgmlType::Q4_0,
                expected: 18,
                actual: 17
            })
        );
        assert!(matches!(
            dequantize_row(GgmlType::Q4_0, &[0; 18], &mut out[..31]),
            Err(QuantError::NotWholeBlocks { .. })
        ));
        let mut big = [0f32; 256];
        assert_eq!(
            dequantize_row(GgmlType::Q8_K, &[0; 292], &mut big),
            Err(QuantError::Unsupported(GgmlType::Q8_K))
        );
        assert_eq!(
            dequantize_row(GgmlType::Q8_1, &[0; 36], &mut out),
            Err(QuantError::Unsupported(GgmlType::Q8_1))
        );
        let blocks = [BlockQ8_0 { d: 0, qs: [0; 32] }];
        assert_eq!(
            dequantize_blocks(&blocks, &mut out[..16]),
            Err(QuantError::DstLength {
                expected: 32,
                actual: 16
            })
        );
        // Odd start address: a typed view fails, dequantize_row copes.
        let mut buf = [0u8; 2 * 34 + 1];
        buf[1..3].copy_from_slice(&f32_to_f16(1.0).to_le_bytes());
        buf[3] = 5;
        let start = if (buf.as_ptr() as usize).is_multiple_of(2) {
            1
        } else {
            0
        };
        let src = &buf[start..start + 34];
        assert!(matches!(
            blocks_of::<BlockQ8_0>(src),
            Err(QuantError::Misaligned { .. })
        ));
        dequantize_row(GgmlType::Q8_0, src, &mut out).unwrap();
        assert_eq!(out[0], if start == 1 { 5.0 } else { 0.0 });
        assert!(dequantize_row(GgmlType::F32, &[], &mut []).is_ok());
    }

    #[test]
    fn unaligned_matches_aligned() {
        // The same Q4_K block through the typed-view path and the copying path.
        let mut block: Vec<u8> = (0..144).map(|i| (i * 37 % 251) as u8).collect();
        let h = f32_to_f16(0.25).to_le_bytes();
        block[0..2].copy_from_slice(&h);
        block[2..4].copy_from_slice(&h);
        let mut shifted = vec![0u8];
        shifted.extend_from_slice(&block);
        let (mut a, mut b) = ([0f32; 256], [0f32; 256]);
        dequantize_row(GgmlType::Q4_K, &block, &mut a).unwrap();
        dequantize_row(GgmlType::Q4_K, &shifted[1..], &mut b).unwrap();
        assert_ne!(a, [0f32; 256]);
        assert_eq!(a.map(f32::to_bits), b.map(f32::to_bits));
    }
}
