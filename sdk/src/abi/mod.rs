//! The stable C ABI between the Kiln host and backend libraries.
//!
//! - [`types`]: the `#[repr(C)]` structs and function table.
//! - [`layout`]: the same layout as C declarations: the C header and the layout fingerprint.
//! - [`export`]: backend-side glue behind `export_backend!`.
//! - [`client`]: host-side checks and safe wrappers.

pub mod client;
pub mod export;
pub mod layout;
pub mod types;

pub use types::*;
