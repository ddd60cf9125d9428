//! `kiln-runtime`: the Kiln inference host as a library.
//!
//! - [`plugins`]: backend discovery, ABI checks and per-model scoring.
//! - [`model_file`]: a GGUF file mapped and parsed once.
//! - [`tokenizer`]: tokenizers built from GGUF metadata, byte-exact with llama.cpp.
//! - [`chat`]: chat templates (sandboxed Jinja).
//! - [`sampler`]: the WebAssembly sampler runtime.
//! - [`engine`]: a loaded model and its generation loop.

pub mod chat;
pub mod engine;
pub mod model_file;
pub mod plugins;
pub mod sampler;
pub mod tokenizer;
