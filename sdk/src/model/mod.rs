//! Model architectures, written once over [`Ops`] so that every backend runs every architecture.
//!
//! - [`config`]: architectures as data ([`ArchSpec`]) and the per-layer specs ([`LayerSpec`])
//!   read from GGUF metadata.
//! - [`ops`]: the operations a backend provides, and their contract.
//! - [`transformer`]: [`TransformerModel`], the model code over `Ops` (weights, scratch, KV
//!   bookkeeping, batch validation, outputs, profiling).
//! - [`reference`]: [`RefOps`], every operation in plain f32 Rust (the yardstick).
//! - [`select`]: bans, top-N and log-sum-exp on host rows.

pub mod config;
pub mod ops;
pub mod reference;
pub mod select;
pub mod transformer;

pub use config::{
    arch_spec, check_support, supported_archs, ArchSpec, Config, Ffn, LayerSpec, SlidingWindow,
    ARCHS,
};
pub use ops::{
    kv_rewind_limit, Activation, Attention, ExecSpec, KvShape, Ops, Rope, RopeStyle, RowPos, Step,
    Yarn, YarnRamp,
};
pub use reference::RefOps;
pub use transformer::{TransformerContext, TransformerModel};
