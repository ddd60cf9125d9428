//! Conformance: the contract every backend keeps, as runnable checks.
//!
//! - [`abi`]: the whole backend through the C ABI, on the synthetic models of [`models`]
//!   (determinism across batches, sequences, outputs, limits, bad input, accuracy against the
//!   reference model).
//! - [`ops`]: each [`crate::model::Ops`] method against the plain f32 reference, for every
//!   supported weight type, with stated tolerances.
//! - [`models`]: small random-weight GGUF models covering every kind of block.

pub mod abi;
pub mod models;
pub mod ops;

pub use abi::{check, Report, Tolerance};
pub use models::{synthetic_gpt_oss, synthetic_llama, Synthetic, VOCAB};
