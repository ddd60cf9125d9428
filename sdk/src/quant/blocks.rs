//! Block layouts of the quantized ggml types, one `#[repr(C)]` struct per type.
//!
//! Each struct is byte-for-byte the on-disk block, so a tensor's bytes can be viewed as a
//! slice of blocks with [`as_blocks`]. Half-precision scales are stored as raw `u16` bits.

use super::types::{GgmlType, QK_K};
use bytemuck::{Pod, Zeroable};

/// A quantized block type: its ggml type and the number of elements it holds.
pub trait Block: Pod {
    /// The ggml type these blocks encode.
    const TYPE: GgmlType;
    /// Elements per block.
    const N: usize;
}

/// Elements in a legacy (non-k) block.
pub const QK: usize = 32;

/// `Q4_0`: 32 4-bit values `(q - 8) * d`; low nibbles are elements 0..16, high nibbles 16..32.
#[derive(Clone, Copy, Pod, Zeroable, Debug)]
#[repr(C)]
pub struct BlockQ4_0 {
    pub d: u16,
    pub qs: [u8; QK / 2],
}

/// `Q4_1`: 32 4-bit values `q * d + m`.
#[derive(Clone, Copy, Pod, Zeroable, Debug)]
#[repr(C)]
pub struct BlockQ4_1 {
    pub d: u16,
    pub m: u16,
    pub qs: [u8; QK / 2],
}

/// `Q5_0`: 32 5-bit values `(q - 16) * d`; bit 4 of element `j` is bit `j` of `qh`.
#[derive(Clone, Copy, Pod, Zeroable, Debug)]
#[repr(C)]
pub struct BlockQ5_0 {
    pub d: u16,
    pub qh: [u8; 4],
    pub qs: [u8; QK / 2],
}

/// `Q5_1`: 32 5-bit values `q * d + m`.
#[derive(Clone, Copy, Pod, Zeroable, Debug)]
#[repr(C)]
pub struct BlockQ5_1 {
    pub d: u16,
    pub m: u16,
    pub qh: [u8; 4],
    pub qs: [u8; QK / 2],
}

/// `Q8_0`: 32 signed bytes `q * d`.
#[derive(Clone, Copy, Pod, Zeroable, Debug)]
#[repr(C)]
pub struct BlockQ8_0 {
    pub d: u16,
    pub qs: [i8; QK],
}

/// `Q8_1`: like `Q8_0` plus `s = d * sum(qs)`; used for activations.
#[derive(Clone, Copy, Pod, Zeroable, Debug)]
#[repr(C)]
pub struct BlockQ8_1 {
    pub d: u16,
    pub s: u16,
    pub qs: [i8; QK],
}

/// `Q2_K`: 256 2-bit values in 16 groups, 4-bit scales and mins.
#[derive(Clone, Copy, Pod, Zeroable, Debug)]
#[repr(C)]
pub struct BlockQ2K {
    pub scales: [u8; QK_K / 16],
    pub qs: [u8; QK_K / 4],
    pub d: u16,
    pub dmin: u16,
}

/// `Q3_K`: 256 3-bit values (2 low bits in `qs`, high bit in `hmask`), 6-bit scales.
#[derive(Clone, Copy, Pod, Zeroable, Debug)]
#[repr(C)]
pub struct BlockQ3K {
    pub hmask: [u8; QK_K / 8],
    pub qs: [u8; QK_K / 4],
    pub scales: [u8; 12],
    pub d: u16,
}

/// `Q4_K`: 256 4-bit values in 8 groups of 32, 6-bit scales and mins packed in 12 bytes.
#[derive(Clone, Copy, Pod, Zeroable, Debug)]
#[repr(C)]
pub struct BlockQ4K {
    pub d: u16,
    pub dmin: u16,
    pub scales: [u8; 12],
    pub qs: [u8; QK_K / 2],
}

/// `Q5_K`: like `Q4_K` with a fifth bit per value in `qh`.
#[derive(Clone, Copy, Pod, Zeroable, Debug)]
#[repr(C)]
pub struct BlockQ5K {
    pub d: u16,
    pub dmin: u16,
    pub scales: [u8; 12],
    pub qh: [u8; QK_K / 8],
    pub qs: [u8; QK_K / 2],
}

/// `Q6_K`: 256 6-bit values (4 low bits in `ql`, 2 high in `qh`), 16 signed 8-bit scales.
#[derive(Clone, Copy, Pod, Zeroable, Debug)]
#[repr(C)]
pub struct BlockQ6K {
    pub ql: [u8; QK_K / 2],
    pub qh: [u8; QK_K / 4],
    pub scales: [i8; QK_K / 16],
    pub d: u16,
}

/// `Q8_K`: 256 signed bytes with an f32 scale and per-16 sums; used for activations.
#[derive(Clone, Copy, Pod, Zeroable, Debug)]
#[repr(C)]
pub struct BlockQ8K {
    pub d: f32,
    pub qs: [i8; QK_K],
    pub bsums: [i16; QK_K / 16],
}

/// `MXFP4`: 32 FP4 (E2M1) values sharing one E8M0 scale.
#[derive(Clone, Copy, Pod, Zeroable, Debug)]
#[repr(C)]
pub struct BlockMxfp4 {
    pub e: u8,
    pub qs: [u8; QK / 2],
}

macro_rules! impl_block {
    ($($t:ty => $ty:ident, $n:expr;)*) => {$(
        impl Block for $t {
            const TYPE: GgmlType = GgmlType::$ty;
            const N: usize = $n;
        }
        const _: () = assert!(std::mem::size_of::<$t>() == GgmlType::$ty.type_size());
    )*};
}

impl_block! {
    BlockQ4_0 => Q4_0, QK;
    BlockQ4_1 => Q4_1, QK;
    BlockQ5_0 => Q5_0, QK;
    BlockQ5_1 => Q5_1, QK;
    BlockQ8_0 => Q8_0, QK;
    BlockQ8_1 => Q8_1, QK;
    BlockQ2K => Q2_K, QK_K;
    BlockQ3K => Q3_K, QK_K;
    BlockQ4K => Q4_K, QK_K;
    BlockQ5K => Q5_K, QK_K;
    BlockQ6K => Q6_K, QK_K;
    BlockQ8K => Q8_K, QK_K;
    BlockMxfp4 => MXFP4, QK;
}

/// Views `bytes` as blocks of `B`. Fails if the length is not a whole number of blocks or the
/// pointer is not aligned for `B` (GGUF data is 32-byte aligned and every block size is even,
/// so weight rows always qualify).
pub fn as_blocks<B: Block>(bytes: &[u8]) -> Result<&[B], bytemuck::PodCastError> {
    bytemuck::try_cast_slice(bytes)
}

/// Half-precision bits to f32.
#[inline(always)]
pub fn f16_to_f32(bits: u16) -> f32 {
    half::f16::from_bits(bits).to_f32()
}

/// f32 to half-precision bits (round to nearest even).
#[inline(always)]
pub fn f32_to_f16(x: f32) -> u16 {
    half::f16::from_f32(x).to_bits()
}
