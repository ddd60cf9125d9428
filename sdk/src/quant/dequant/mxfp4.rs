//! `MXFP4`: 32 FP4 (E2M1) values sharing one E8M0 power-of-two scale (OCP microscaling).
//!
//! The E2M1 values are kept doubled as integers ([`MXFP4_VALUES`]) and the scale halved
//! ([`e8m0_to_f32_half`]), so each element is one exact f32 multiply.

use super::{out_array, Dequantize};
use crate::quant::blocks::{BlockMxfp4, QK};

/// The 16 E2M1 code points, doubled so they are integers: code `c` means `MXFP4_VALUES[c] / 2`.
pub const MXFP4_VALUES: [i8; 16] = [0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12];

/// Half the value of the E8M0 scale `e`, i.e. `2^(e - 128)`, as an f32 (subnormal for
/// `e < 2`). Pairs with the doubled [`MXFP4_VALUES`].
#[inline(always)]
pub fn e8m0_to_f32_half(e: u8) -> f32 {
    let bits = if e < 2 {
        0x0020_0000u32 << e
    } else {
        (e as u32 - 1) << 23
    };
    f32::from_bits(bits)
}

impl Dequantize for BlockMxfp4 {
    fn dequantize(&self, out: &mut [f32]) {
        let out = out_array::<QK>(out);
        let d = e8m0_to_f32_half(self.e);
        let (lo, hi) = out.split_at_mut(QK / 2);
        for ((l, h), &b) in lo.iter_mut().zip(hi.iter_mut()).zip(&self.qs) {
            *l = d * MXFP4_VALUES[(b & 0x0F) as usize] as f32;
            *h = d * MXFP4_VALUES[(b >> 4) as usize] as f32;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn e8m0_half() {
        assert_eq!(e8m0_to_f32_half(127), 0.5);
        assert_eq!(e8m0_to_f32_half(130), 4.0);
        assert_eq!(e8m0_to_f32_half(1), 2f32.powi(-127));
        assert_eq!(e8m0_to_f32_half(0), 2f32.powi(-128));
        assert_eq!(e8m0_to_f32_half(255), 2f32.powi(127));
    }

    #[test]
    fn mxfp4_by_hand() {
        let mut qs = [0u8; 16];
        qs[0] = 0xF5; // element 0: code 5 = 3.0, element 16: code 15 = -6.0
        qs[3] = 0x09; // element 3: code 9 = -0.5
        let b = BlockMxfp4 { e: 128, qs }; // scale 2
        let mut out = [0f32; 32];
        b.dequantize(&mut out);
        assert_eq!((out[0], out[16], out[3], out[19]), (6.0, -12.0, -1.0, 0.0));
    }
}
