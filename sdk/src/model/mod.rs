//! Model architectures, written once over [`Ops`] so that every backend runs every architecture.
//!
//! [`Config`] reads hyper-parameters from GGUF metadata; [`TransformerModel`] holds the weights
//! and implements the SDK's `Model`/`Context` traits (KV bookkeeping, batch validation).

pub mod config;
pub mod ops;
pub mod transformer;

pub use config::{Arch, Config, SUPPORTED_ARCHS};
pub use ops::{Activation, Attention, KvShape, Ops, Rope, RopeStyle, RowPos};
pub use transformer::{TransformerContext, TransformerModel};
