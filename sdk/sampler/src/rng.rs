//! The seeded random generator: xoshiro256** whose state comes from splitmix64.
//!
//! This is the same generator, seeded the same way, as the host's native sampler, so a seed
//! gives the same stream of numbers in both.

/// xoshiro256** seeded through splitmix64.
#[derive(Debug, Clone)]
pub struct Rng {
    s: [u64; 4],
}

impl Rng {
    /// A generator whose four state words are the first four splitmix64 outputs of `seed`.
    pub fn new(seed: u64) -> Self {
        let mut x = seed;
        let mut next = || {
            x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        };
        Rng {
            s: [next(), next(), next(), next()],
        }
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let s = &mut self.s;
        let result = s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        result
    }

    /// Uniform in [0, 1): the top 53 bits of [`Rng::next_u64`] scaled by 2^-53.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reference values computed independently (a separate big-integer implementation of
    /// splitmix64 and xoshiro256**); splitmix64(0)'s first output 0xe220a8397b1dcdaf is the
    /// published one.
    #[test]
    fn stream_matches_reference_values() {
        assert_eq!(
            Rng::new(0).s,
            [
                0xe220_a839_7b1d_cdaf,
                0x6e78_9e6a_a1b9_65f4,
                0x06c4_5d18_8009_454f,
                0xf88b_b8a8_724c_81ec
            ]
        );
        let cases: [(u64, [u64; 4]); 3] = [
            (
                0,
                [
                    0x99ec_5f36_cb75_f2b4,
                    0xbf6e_1f78_4956_452a,
                    0x1a5f_849d_4933_e6e0,
                    0x6aa5_94f1_262d_2d2c,
                ],
            ),
            (
                42,
                [
                    0x1578_0b2e_0c2e_c716,
                    0x6104_d986_6d11_3a7e,
                    0xae17_5332_39e4_99a1,
                    0xecb8_ad47_03b3_60a1,
                ],
            ),
            (
                u64::MAX,
                [
                    0x8f55_20d5_2a7e_ad08,
                    0xc476_a018_caa1_802d,
                    0x81de_31c0_d260_469e,
                    0xbf65_8d7e_065f_3c2f,
                ],
            ),
        ];
        for (seed, want) in cases {
            let mut r = Rng::new(seed);
            let got = [r.next_u64(), r.next_u64(), r.next_u64(), r.next_u64()];
            assert_eq!(got, want, "seed {seed}");
        }
        let mut r = Rng::new(7);
        let f = [r.next_f64(), r.next_f64(), r.next_f64()];
        assert_eq!(
            f,
            [0.7005764821796896, 0.2787512294737843, 0.8396274618764198]
        );
    }
}
