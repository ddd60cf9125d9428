//! Kiln SDK: everything a third party needs to write a Kiln backend.
//!
//! - [`abi`]: the versioned C ABI (types, C header, export glue, host-side wrappers).
//! - [`backend`]: the safe traits a backend implements, exported with [`export_backend!`].
//! - [`gguf`]: a zero-copy GGUF v2/v3 reader (and a writer for tests and synthetic models).
//! - [`quant`]: ggml block layouts and reference dequantizers.
//! - [`conformance`]: the contract every backend must keep, as a runnable suite.
//! - [`model`]: the transformer architectures, written once over a small set of [`model::Ops`].

pub mod abi;
pub mod backend;
pub mod conformance;
pub mod gguf;
pub mod model;
pub mod quant;
pub mod synthetic;
