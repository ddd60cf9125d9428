//! Quantized tensor formats: type ids, block layouts and reference dequantizers.

pub mod blocks;
pub mod dequant;
pub mod random;
pub mod types;

pub use blocks::{as_blocks, f16_to_f32, f32_to_f16, Block};
pub use dequant::{dequantize_row, Dequantize, QuantError};
pub use types::{GgmlType, QK_K};
