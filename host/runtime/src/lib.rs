//! `kiln-runtime`: the Kiln inference host as a library.
//!
//! - [`plugins`]: backend discovery, ABI checks and per-model scoring.
//! - [`model_file`]: a GGUF file mapped and parsed once.
//! - [`tokenizer`]: tokenizers built from GGUF metadata, byte-exact with llama.cpp.
//! - [`chat`]: chat templates (sandboxed Jinja).
//! - [`harmony`]: gpt-oss's response format split into reasoning and answer.
//! - [`sampler`]: the WebAssembly sampler runtime.
//! - [`model`]: a model loaded on the backend that suits it, with its tokenizer and template.
//! - [`engine`]: the multi-sequence scheduler: submit requests, stream their events.
//!
//! ```no_run
//! use kiln_runtime::engine::{Engine, EngineOptions, Event, Input, Request, SamplerSpec};
//! use kiln_runtime::model::{LoadOptions, Model};
//! # fn main() -> anyhow::Result<()> {
//! let model = Model::load("model.gguf".as_ref(), &LoadOptions::default())?;
//! let engine = Engine::start(model, EngineOptions::single(4096))?;
//! let input = Input::Text { text: "The capital of France is".into(), parse_special: true };
//! let mut req = Request::new(input, SamplerSpec::greedy()?);
//! req.max_tokens = Some(16);
//! let handle = engine.submit(req)?;
//! while let Some(event) = handle.recv() {
//!     match event {
//!         Event::Token { text, .. } => print!("{text}"),
//!         Event::Done { finish, text, .. } => println!("{text}\n[{}]", finish.describe()),
//!     }
//! }
//! # Ok(()) }
//! ```

pub mod chat;
pub mod engine;
pub mod harmony;
pub mod model;
pub mod model_file;
pub mod plugins;
pub mod sampler;
pub mod tokenizer;
