//! Random tensors of any weight type, for conformance checks, tests and synthetic models:
//! random bytes with sane f16 scales (and MXFP4 exponents), so every value is finite and of
//! the size real weights have. Deterministic for a seed.

use super::{f32_to_f16, GgmlType};

/// A small deterministic generator (xorshift64*), so the SDK needs no `rand` dependency.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator seeded with `seed`.
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `[-1, 1)`.
    pub fn symmetric(&mut self) -> f32 {
        ((self.next_u64() >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }

    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
}

/// Byte offsets of the f16 scale fields of one block of `ty`.
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

/// The typical magnitude of a dequantized value of `ty` when its f16 scale is 1 (random
/// quants and sub-block scales), so that scales can be chosen for a wanted magnitude.
fn unit_magnitude(ty: GgmlType) -> f32 {
    match ty {
        GgmlType::Q4_0 => 4.0,
        GgmlType::Q4_1 | GgmlType::Q5_0 => 8.0,
        GgmlType::Q5_1 => 16.0,
        GgmlType::Q8_0 => 64.0,
        GgmlType::Q2_K => 12.0,
        GgmlType::Q3_K => 32.0,
        GgmlType::Q4_K => 256.0,
        GgmlType::Q5_K => 512.0,
        GgmlType::Q6_K => 1024.0,
        _ => 1.0,
    }
}

/// `n` values of type `ty` (a whole number of blocks) whose dequantized magnitudes are about
/// `scale`: random quantized bytes with block scales chosen for that magnitude.
pub fn random_tensor(ty: GgmlType, n: usize, scale: f32, rng: &mut Rng) -> Vec<u8> {
    let (bs, ts) = (ty.block_size(), ty.type_size());
    let nblk = n / bs;
    let mut data = vec![0u8; nblk * ts];
    match ty {
        GgmlType::F32 => {
            for c in data.chunks_exact_mut(4) {
                c.copy_from_slice(&(rng.symmetric() * scale).to_le_bytes());
            }
        }
        GgmlType::F16 => {
            for c in data.chunks_exact_mut(2) {
                c.copy_from_slice(&f32_to_f16(rng.symmetric() * scale).to_le_bytes());
            }
        }
        GgmlType::BF16 => {
            for c in data.chunks_exact_mut(2) {
                let b = ((rng.symmetric() * scale).to_bits() >> 16) as u16;
                c.copy_from_slice(&b.to_le_bytes());
            }
        }
        _ => {
            for b in data.iter_mut() {
                *b = rng.next_u64() as u8;
            }
            for blk in data.chunks_exact_mut(ts) {
                for &off in f16_fields(ty) {
                    let mag = (0.2 + 0.8 * rng.symmetric().abs()) * scale / unit_magnitude(ty);
                    let v = if rng.below(5) == 0 { -mag } else { mag };
                    blk[off..off + 2].copy_from_slice(&f32_to_f16(v).to_le_bytes());
                }
                if ty == GgmlType::MXFP4 {
                    // e8m0 exponent: 2^(e - 127); values are multiples of 0.5 up to 6.
                    let e = (127.0 + (scale / 3.0).max(1e-30).log2()).round() as i64;
                    blk[0] = (e + rng.below(3) as i64 - 1).clamp(1, 254) as u8;
                }
            }
        }
    }
    data
}

/// Fills `out` (a whole number of blocks of `ty`) like [`random_tensor`], faster (eight
/// random bytes per draw): for synthetic models of many gigabytes. A different stream than
/// [`random_tensor`] for the same generator.
pub fn random_blocks_into(ty: GgmlType, scale: f32, rng: &mut Rng, out: &mut [u8]) {
    let ts = ty.type_size();
    match ty {
        GgmlType::F32 => {
            for c in out.chunks_exact_mut(4) {
                c.copy_from_slice(&(rng.symmetric() * scale).to_le_bytes());
            }
        }
        GgmlType::F16 => {
            for c in out.chunks_exact_mut(2) {
                c.copy_from_slice(&f32_to_f16(rng.symmetric() * scale).to_le_bytes());
            }
        }
        GgmlType::BF16 => {
            for c in out.chunks_exact_mut(2) {
                let b = ((rng.symmetric() * scale).to_bits() >> 16) as u16;
                c.copy_from_slice(&b.to_le_bytes());
            }
        }
        _ => {
            let mut chunks = out.chunks_exact_mut(8);
            for c in &mut chunks {
                c.copy_from_slice(&rng.next_u64().to_le_bytes());
            }
            let rest = chunks.into_remainder();
            let last = rng.next_u64().to_le_bytes();
            rest.copy_from_slice(&last[..rest.len()]);
            let unit = scale / unit_magnitude(ty);
            let e = (127.0 + (scale / 3.0).max(1e-30).log2()).round() as i64;
            for blk in out.chunks_exact_mut(ts) {
                let r = rng.next_u64();
                for (j, &off) in f16_fields(ty).iter().enumerate() {
                    let bits = (r >> (24 * j)) & 0xFF_FFFF;
                    let mag = (0.2 + 0.8 * (bits as f32 / (1u32 << 24) as f32)) * unit;
                    let v = if (r >> (56 + j)) & 7 == 0 { -mag } else { mag };
                    blk[off..off + 2].copy_from_slice(&f32_to_f16(v).to_le_bytes());
                }
                if ty == GgmlType::MXFP4 {
                    blk[0] = (e + (r % 3) as i64 - 1).clamp(1, 254) as u8;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::dequantize_row;

    #[test]
    fn random_tensors_are_finite_and_sized() {
        let mut rng = Rng::new(3);
        for ty in [
            GgmlType::F32,
            GgmlType::F16,
            GgmlType::BF16,
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
        ] {
            let n = 512;
            let data = random_tensor(ty, n, 1.0, &mut rng);
            let mut out = vec![0f32; n];
            dequantize_row(ty, &data, &mut out).unwrap();
            assert!(out.iter().all(|v| v.is_finite()), "{ty}");
            let rms = (out.iter().map(|v| v * v).sum::<f32>() / n as f32).sqrt();
            assert!(rms > 0.01 && rms < 20.0, "{ty}: rms {rms}");
        }
    }
}
