//! The k-quant 256-element super-block formats: `Q2_K`, `Q3_K`, `Q4_K`, `Q5_K`, `Q6_K`.
//!
//! Each super-block has one or two f16 super-scales and per-group sub-scales. A group's
//! effective scale (and min) is computed first as `super * sub`, then each element is
//! `scale * q` or `(scale * q) - min`, giving the same f32 bits as the `gguf` Python package.
//!
//! Bit layout, for element `e` of the 256:
//! - `Q2_K`: 2 bits at shift `2 * ((e / 32) % 4)` of `qs[32 * (e / 128) + e % 32]`; group `e / 16`.
//! - `Q3_K`: low 2 bits as in `Q2_K`; bit `e / 32` of `hmask[e % 32]` *cleared* subtracts 4.
//! - `Q4_K`: nibble `(e / 32) % 2` of `qs[32 * (e / 64) + e % 32]`; group `e / 32`.
//! - `Q5_K`: `Q4_K`'s nibble plus bit `e / 32` of `qh[e % 32]` as bit 4.
//! - `Q6_K`: nibble `(e / 64) % 2` of `ql[64 * (e / 128) + e % 64]`, plus bits
//!   `2 * ((e / 32) % 4)` of `qh[32 * (e / 128) + e % 32]` as bits 4-5, minus 32; group `e / 16`.

use super::{le_f16, out_array, Dequantize};
use crate::quant::blocks::{BlockQ2K, BlockQ3K, BlockQ4K, BlockQ5K, BlockQ6K};
use crate::quant::types::QK_K;

/// Unpacks the 6-bit scale and 6-bit min of group `j` (0..8) from the 12 packed scale bytes of
/// a `Q4_K` / `Q5_K` super-block.
///
/// Bytes 0-3 hold the scales of groups 0-3 in their low 6 bits, bytes 4-7 the mins of groups
/// 0-3; groups 4-7 take their low 4 bits from the nibbles of bytes 8-11 (scale low, min high)
/// and their top 2 bits from the spare top bits of bytes 0-3 (scale) and 4-7 (min).
///
/// # Panics
///
/// If `j >= 8`.
#[inline(always)]
pub fn get_scale_min_k4(j: usize, q: &[u8; 12]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 0x3F, q[j + 4] & 0x3F)
    } else {
        let sc = (q[j + 4] & 0x0F) | ((q[j - 4] >> 6) << 4);
        let m = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
        (sc, m)
    }
}

/// Unpacks the 16 signed 6-bit group scales of a `Q3_K` super-block (already offset by -32).
///
/// Scale `i` takes its low 4 bits from byte `i % 8` (low nibble for `i < 8`, high nibble
/// otherwise) and its top 2 bits from bits `2 * (i / 4)` of byte `8 + i % 4`.
#[inline(always)]
pub fn q3k_scales(q: &[u8; 12]) -> [i8; 16] {
    let mut out = [0i8; 16];
    for (i, s) in out.iter_mut().enumerate() {
        let lo = (q[i % 8] >> (4 * (i / 8))) & 0x0F;
        let hi = (q[8 + i % 4] >> (2 * (i / 4))) & 0x03;
        *s = (lo | (hi << 4)) as i8 - 32;
    }
    out
}

impl Dequantize for BlockQ2K {
    fn dequantize(&self, out: &mut [f32]) {
        let out = out_array::<QK_K>(out);
        let (d, dmin) = (le_f16(self.d), le_f16(self.dmin));
        for (e, o) in out.iter_mut().enumerate() {
            let sc = self.scales[e / 16];
            let scale = d * (sc & 0x0F) as f32;
            let min = dmin * (sc >> 4) as f32;
            let q = (self.qs[32 * (e / 128) + e % 32] >> (2 * ((e / 32) % 4))) & 3;
            *o = scale * q as f32 - min;
        }
    }
}

impl Dequantize for BlockQ3K {
    fn dequantize(&self, out: &mut [f32]) {
        let out = out_array::<QK_K>(out);
        let d = le_f16(self.d);
        let scales = q3k_scales(&self.scales);
        for (e, o) in out.iter_mut().enumerate() {
            let scale = d * scales[e / 16] as f32;
            let lo = (self.qs[32 * (e / 128) + e % 32] >> (2 * ((e / 32) % 4))) & 3;
            let hi_set = (self.hmask[e % 32] >> (e / 32)) & 1 != 0;
            let q = lo as i32 - if hi_set { 0 } else { 4 };
            *o = scale * q as f32;
        }
    }
}

/// Group scales and mins of a `Q4_K` / `Q5_K` super-block, as f32 products.
#[inline(always)]
fn k4_group_scales(d: u16, dmin: u16, packed: &[u8; 12]) -> [(f32, f32); 8] {
    let (d, dmin) = (le_f16(d), le_f16(dmin));
    let mut out = [(0f32, 0f32); 8];
    for (j, o) in out.iter_mut().enumerate() {
        let (sc, m) = get_scale_min_k4(j, packed);
        *o = (d * sc as f32, dmin * m as f32);
    }
    out
}

impl Dequantize for BlockQ4K {
    fn dequantize(&self, out: &mut [f32]) {
        let out = out_array::<QK_K>(out);
        let groups = k4_group_scales(self.d, self.dmin, &self.scales);
        for (e, o) in out.iter_mut().enumerate() {
            let (scale, min) = groups[e / 32];
            let q = (self.qs[32 * (e / 64) + e % 32] >> (4 * ((e / 32) % 2))) & 0x0F;
            *o = scale * q as f32 - min;
        }
    }
}

impl Dequantize for BlockQ5K {
    fn dequantize(&self, out: &mut [f32]) {
        let out = out_array::<QK_K>(out);
        let groups = k4_group_scales(self.d, self.dmin, &self.scales);
        for (e, o) in out.iter_mut().enumerate() {
            let (scale, min) = groups[e / 32];
            let lo = (self.qs[32 * (e / 64) + e % 32] >> (4 * ((e / 32) % 2))) & 0x0F;
            let hi = (self.qh[e % 32] >> (e / 32)) & 1;
            *o = scale * (lo | (hi << 4)) as f32 - min;
        }
    }
}

impl Dequantize for BlockQ6K {
    fn dequantize(&self, out: &mut [f32]) {
        let out = out_array::<QK_K>(out);
        let d = le_f16(self.d);
        for (e, o) in out.iter_mut().enumerate() {
            let scale = d * self.scales[e / 16] as f32;
            let lo = (self.ql[64 * (e / 128) + e % 64] >> (4 * ((e / 64) % 2))) & 0x0F;
            let hi = (self.qh[32 * (e / 128) + e % 32] >> (2 * ((e / 32) % 4))) & 0x03;
            let q = (lo | (hi << 4)) as i32 - 32;
            *o = scale * q as f32;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::f32_to_f16;

    fn h(x: f32) -> u16 {
        f32_to_f16(x).to_le()
    }

    #[test]
    fn scale_min_k4_by_hand() {
        // Group 1: scale 0x2A, min 0x15 directly. Group 5: scale = 0x9 | (0b10 << 4) = 0x29,
        // min = 0x7 | (0b01 << 4) = 0x17.
        let mut q = [0u8; 12];
        q[1] = 0x2A | (0b10 << 6);
        q[5] = 0x15 | (0b01 << 6);
        q[9] = 0x79;
        assert_eq!(get_scale_min_k4(1, &q), (0x2A, 0x15));
        assert_eq!(get_scale_min_k4(5, &q), (0x29, 0x17));
        assert_eq!(get_scale_min_k4(0, &q), (0, 0));
    }

    #[test]
    fn q3k_scales_by_hand() {
        let mut q = [0u8; 12];
        q[3] = 0xA5; // scale 3 low = 5, scale 11 low = 0xA
        q[11] = 0b11_00_10_01; // scale 3 hi = 1, 7 hi = 2, 11 hi = 0, 15 hi = 3
        let s = q3k_scales(&q);
        assert_eq!(s[3], 0x15 - 32);
        assert_eq!(s[11], 0x0A - 32);
        assert_eq!(s[7], 0x20 - 32);
        assert_eq!(s[15], 0x30 - 32);
        assert_eq!(s[0], -32);
    }

    #[test]
    fn q2k_by_hand() {
        let mut b = BlockQ2K {
            scales: [0; 16],
            qs: [0; 64],
            d: h(0.5),
            dmin: h(0.25),
        };
        b.scales[9] = 0x43; // group 9 (elements 144..160): scale 3, min 4
        b.qs[32 + 16] = 0b10 << 2; // shift 2 of qs[48]: element 128 + 32 + 16 = 176
        b.scales[11] = 0x21; // group 11 (176..192): scale 1, min 2
        b.qs[32 + 17] = 0b11; // shift 0 -> element 128 + 17 = 145, group 9
        let mut out = [0f32; 256];
        b.dequantize(&mut out);
        assert_eq!(out[176], 0.5 * 2.0 - 0.5);
        assert_eq!(out[145], 1.5 * 3.0 - 1.0);
        assert_eq!(out[144], -1.0);
        assert_eq!(out[0], 0.0);
    }

    #[test]
    fn q3k_by_hand() {
        let mut b = BlockQ3K {
            hmask: [0; 32],
            qs: [0; 64],
            scales: [0; 12],
            d: h(0.5),
        };
        b.scales[2] = 0x0F; // scale 2 (elements 32..48) low = 15, hi = 2 -> 47 - 32 = 15
        b.scales[10] = 0b10;
        b.qs[3] = 0b10 << 2; // element 32 + 3, low bits 2
        b.hmask[3] = 1 << 1; // element 35 high bit set: no -4
        b.qs[4] = 0b01 << 2; // element 36: 1 - 4 = -3
        let mut out = [0f32; 256];
        b.dequantize(&mut out);
        assert_eq!(out[35], 7.5 * 2.0);
        assert_eq!(out[36], 7.5 * -3.0);
        assert_eq!(out[0], -16.0 * -4.0);
    }

    #[test]
    fn q4k_q5k_by_hand() {
        let mut scales = [0u8; 12];
        scales[1] = 3; // group 1 (32..64): scale 3
        scales[5] = 2; // group 1 min 2
        let mut qs = [0u8; 128];
        qs[5] = 0x70; // element 32 + 5: high nibble 7
        let b4 = BlockQ4K {
            d: h(0.5),
            dmin: h(0.25),
            scales,
            qs,
        };
        let mut out = [0f32; 256];
        b4.dequantize(&mut out);
        assert_eq!(out[37], 1.5 * 7.0 - 0.5);
        assert_eq!(out[5], 0.0);
        let mut qh = [0u8; 32];
        qh[5] = 1 << 1; // element 37 bit 4
        let b5 = BlockQ5K {
            d: h(0.5),
            dmin: h(0.25),
            scales,
            qh,
            qs,
        };
        b5.dequantize(&mut out);
        assert_eq!(out[37], 1.5 * 23.0 - 0.5);
        assert_eq!(out[38], -0.5);
    }

    #[test]
    fn q6k_by_hand() {
        let mut b = BlockQ6K {
            ql: [0; 128],
            qh: [0; 64],
            scales: [0; 16],
            d: h(0.5),
        };
        b.scales[13] = -3; // group 13: elements 208..224
                           // element 210: half 1, (210 / 64) % 2 = 1 -> high nibble of ql[64 + 18]
        b.ql[64 + 18] = 0x50;
        // bits 4-5: shift 2 * ((210 / 32) % 4) = 2 * 2 of qh[32 + 18]
        b.qh[32 + 18] = 0b11 << 4;
        let mut out = [0f32; 256];
        b.dequantize(&mut out);
        assert_eq!(out[210], -1.5 * (0x35 - 32) as f32);
        assert_eq!(out[209], -1.5 * -32.0);
    }
}
