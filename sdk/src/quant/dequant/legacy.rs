//! The legacy 32-element formats: `Q4_0`, `Q4_1`, `Q5_0`, `Q5_1`, `Q8_0`.
//!
//! Element `j < 16` is in the low nibble of `qs[j]`, element `j + 16` in its high nibble;
//! the 5-bit formats take bit 4 of element `j` from bit `j` of the little-endian `qh` word.
//! Values are `d * q` (signed formats) or `(d * q) + m` (offset formats), in that order.

use super::{le_f16, out_array, Dequantize};
use crate::quant::blocks::{BlockQ4_0, BlockQ4_1, BlockQ5_0, BlockQ5_1, BlockQ8_0, QK};

/// The 32 unsigned quants of a 4-bit block, in element order.
#[inline(always)]
fn nibbles(qs: &[u8; QK / 2]) -> [u8; QK] {
    let mut q = [0u8; QK];
    for (j, &b) in qs.iter().enumerate() {
        q[j] = b & 0x0F;
        q[j + QK / 2] = b >> 4;
    }
    q
}

/// The 32 unsigned 5-bit quants of a 5-bit block, in element order.
#[inline(always)]
fn fives(qh: &[u8; 4], qs: &[u8; QK / 2]) -> [u8; QK] {
    let hi = u32::from_le_bytes(*qh);
    let mut q = nibbles(qs);
    for (j, v) in q.iter_mut().enumerate() {
        *v |= (((hi >> j) & 1) as u8) << 4;
    }
    q
}

impl Dequantize for BlockQ4_0 {
    fn dequantize(&self, out: &mut [f32]) {
        let out = out_array::<QK>(out);
        let d = le_f16(self.d);
        for (o, q) in out.iter_mut().zip(nibbles(&self.qs)) {
            *o = d * (q as i32 - 8) as f32;
        }
    }
}

impl Dequantize for BlockQ4_1 {
    fn dequantize(&self, out: &mut [f32]) {
        let out = out_array::<QK>(out);
        let (d, m) = (le_f16(self.d), le_f16(self.m));
        for (o, q) in out.iter_mut().zip(nibbles(&self.qs)) {
            *o = d * q as f32 + m;
        }
    }
}

impl Dequantize for BlockQ5_0 {
    fn dequantize(&self, out: &mut [f32]) {
        let out = out_array::<QK>(out);
        let d = le_f16(self.d);
        for (o, q) in out.iter_mut().zip(fives(&self.qh, &self.qs)) {
            *o = d * (q as i32 - 16) as f32;
        }
    }
}

impl Dequantize for BlockQ5_1 {
    fn dequantize(&self, out: &mut [f32]) {
        let out = out_array::<QK>(out);
        let (d, m) = (le_f16(self.d), le_f16(self.m));
        for (o, q) in out.iter_mut().zip(fives(&self.qh, &self.qs)) {
            *o = d * q as f32 + m;
        }
    }
}

impl Dequantize for BlockQ8_0 {
    fn dequantize(&self, out: &mut [f32]) {
        let out = out_array::<QK>(out);
        let d = le_f16(self.d);
        for (o, &q) in out.iter_mut().zip(&self.qs) {
            *o = d * q as f32;
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
    fn q4_0_by_hand() {
        let mut qs = [0u8; 16];
        qs[0] = 0x3A; // element 0: 10 - 8 = 2, element 16: 3 - 8 = -5
        qs[15] = 0xF0; // element 15: -8, element 31: 7
        let b = BlockQ4_0 { d: h(0.5), qs };
        let mut out = [0f32; 32];
        b.dequantize(&mut out);
        assert_eq!((out[0], out[16], out[15], out[31]), (1.0, -2.5, -4.0, 3.5));
        assert_eq!(out[1], -4.0);
    }

    #[test]
    fn q4_1_by_hand() {
        let mut qs = [0u8; 16];
        qs[2] = 0x9F; // element 2: 15, element 18: 9
        let b = BlockQ4_1 {
            d: h(0.25),
            m: h(-1.0),
            qs,
        };
        let mut out = [0f32; 32];
        b.dequantize(&mut out);
        assert_eq!((out[2], out[18], out[0]), (2.75, 1.25, -1.0));
    }

    #[test]
    fn q5_by_hand() {
        let mut qs = [0u8; 16];
        qs[1] = 0x21; // element 1: low 1, element 17: low 2
                      // High bits set for elements 1 and 31.
        let qh = (1u32 << 1 | 1u32 << 31).to_le_bytes();
        let b0 = BlockQ5_0 { d: h(2.0), qh, qs };
        let mut out = [0f32; 32];
        b0.dequantize(&mut out);
        // element 1: 17 - 16 = 1; element 17: 2 - 16 = -14; element 31: 16 - 16 = 0
        assert_eq!((out[1], out[17], out[31], out[0]), (2.0, -28.0, 0.0, -32.0));
        let b1 = BlockQ5_1 {
            d: h(2.0),
            m: h(0.5),
            qh,
            qs,
        };
        b1.dequantize(&mut out);
        assert_eq!((out[1], out[17], out[31], out[0]), (34.5, 4.5, 32.5, 0.5));
    }

    #[test]
    fn q8_0_by_hand() {
        let mut qs = [0i8; 32];
        qs[0] = -128;
        qs[31] = 127;
        let b = BlockQ8_0 { d: h(0.125), qs };
        let mut out = [0f32; 32];
        b.dequantize(&mut out);
        assert_eq!((out[0], out[31], out[5]), (-16.0, 15.875, 0.0));
    }
}
