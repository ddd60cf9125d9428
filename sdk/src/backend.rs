//! The safe Rust side of a backend: implement [`Backend`] (and usually reuse
//! [`crate::model::TransformerModel`] for [`Model`]), then `export_backend!(YourType)`.
//! No `unsafe` is needed in backend code; the SDK's glue converts to and from the C ABI.

use crate::gguf::Gguf;
use crate::quant::GgmlType;
use std::fmt;
use std::sync::Arc;

/// An error returned by backend code; it reaches the host as a status code plus message.
#[derive(Debug, Clone)]
pub struct BackendError {
    /// What kind of failure.
    pub kind: ErrorKind,
    /// A readable, one-line message.
    pub message: String,
}

/// The kind of a [`BackendError`], mapped onto ABI status codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// Bad argument from the caller.
    InvalidArgument,
    /// Not supported by this backend.
    Unsupported,
    /// Out of memory.
    OutOfMemory,
    /// A sequence would overflow its context.
    ContextFull,
    /// Anything else.
    Internal,
}

impl BackendError {
    /// An error of `kind` with `message`.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        BackendError {
            kind,
            message: message.into(),
        }
    }
    /// An invalid-argument error.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidArgument, message)
    }
    /// An unsupported-feature error.
    pub fn unsupported(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Unsupported, message)
    }
    /// An internal error.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Internal, message)
    }
}

impl fmt::Display for BackendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for BackendError {}

impl From<crate::gguf::GgufError> for BackendError {
    fn from(e: crate::gguf::GgufError) -> Self {
        BackendError::invalid(e.to_string())
    }
}

/// Result type of backend code.
pub type Result<T, E = BackendError> = std::result::Result<T, E>;

/// A device a backend can run on.
#[derive(Debug, Clone)]
pub struct DeviceInfo {
    /// Human-readable name.
    pub name: String,
    /// True for GPUs and other accelerators.
    pub is_gpu: bool,
    /// Total memory in bytes (0 if unknown).
    pub total_memory: u64,
    /// Free memory in bytes (0 if unknown).
    pub free_memory: u64,
}

/// How well a backend suits this machine.
#[derive(Debug, Clone)]
pub struct Score {
    /// 0 = unusable; higher is better.
    pub score: u32,
    /// Why this score (required when 0).
    pub reason: String,
}

/// Options for [`Backend::create`].
#[derive(Debug, Clone, Default)]
pub struct BackendOptions {
    /// Worker threads, 0 = all cores.
    pub n_threads: u32,
    /// Device index.
    pub device: u32,
}

/// Facts about a loaded model.
#[derive(Debug, Clone)]
pub struct ModelInfo {
    /// Output vocabulary size.
    pub n_vocab: u32,
    /// Trained context length.
    pub n_ctx_train: u32,
    /// Transformer blocks.
    pub n_layer: u32,
    /// Hidden size.
    pub n_embd: u32,
    /// Bytes of weights.
    pub weight_bytes: u64,
    /// KV bytes per position per sequence.
    pub kv_bytes_per_token: u64,
    /// Architecture name.
    pub arch: String,
}

/// Options for a context.
#[derive(Debug, Clone)]
pub struct ContextParams {
    /// Positions per sequence.
    pub n_ctx: u32,
    /// Number of sequences (ids `0..n_seq_max`).
    pub n_seq_max: u32,
    /// KV cache element type.
    pub kv_type: GgmlType,
}

/// Facts about a context.
#[derive(Debug, Clone)]
pub struct ContextInfo {
    /// Positions per sequence.
    pub n_ctx: u32,
    /// Sequences.
    pub n_seq_max: u32,
    /// Bytes reserved for the KV cache.
    pub kv_bytes: u64,
}

/// A batch to evaluate; all slices have the same length.
#[derive(Debug, Clone, Copy)]
pub struct Batch<'a> {
    /// Token ids.
    pub tokens: &'a [i32],
    /// Positions within their sequences.
    pub positions: &'a [i32],
    /// Sequence ids.
    pub seq_ids: &'a [i32],
    /// Nonzero where the row's output is wanted.
    pub want_output: &'a [u8],
}

impl Batch<'_> {
    /// Number of entries.
    pub fn len(&self) -> usize {
        self.tokens.len()
    }
    /// True if the batch has no entries.
    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }
    /// Number of rows whose output is wanted.
    pub fn n_outputs(&self) -> usize {
        self.want_output.iter().filter(|&&w| w != 0).count()
    }
}

/// Where [`Context::forward`] writes the outputs of the wanted rows, in batch order.
pub enum Outputs<'a> {
    /// Full logits rows: `n_outputs * n_vocab` floats.
    Logits(&'a mut [f32]),
    /// The top `n` of each row, best first, and each row's log-sum-exp.
    TopN {
        /// N.
        n: usize,
        /// `n_outputs * n` ids.
        ids: &'a mut [i32],
        /// `n_outputs * n` logits.
        logits: &'a mut [f32],
        /// `n_outputs` log-sum-exp values.
        lse: &'a mut [f32],
    },
}

/// A backend library's entry point. One type per library, exported with `export_backend!`.
pub trait Backend: Sized + Send + Sync + 'static {
    /// The model type this backend loads.
    type Model: Model;
    /// Short name (`"cpu"`, `"cuda"`).
    const NAME: &'static str;
    /// The backend's own version.
    const VERSION: &'static str;
    /// One line shown by `kiln backends`.
    const DESCRIPTION: &'static str;

    /// The devices this backend can use on this machine.
    fn devices() -> Vec<DeviceInfo>;
    /// How well this backend suits this machine.
    fn score() -> Score;
    /// Whether weights of `ty` can be loaded.
    fn supports_type(ty: GgmlType) -> bool;
    /// Creates an instance.
    fn create(opts: &BackendOptions) -> Result<Self>;
    /// Loads a model. The GGUF data outlives the returned model (the host keeps the file mapped
    /// until the model is freed), so the model may keep borrowing tensor data.
    fn load_model(&self, gguf: &Gguf<'static>) -> Result<Self::Model>;
}

/// A loaded model.
pub trait Model: Sized + Send + Sync + 'static {
    /// The context type (KV cache + scratch) of this model.
    type Context: Context;
    /// Facts about the model.
    fn info(&self) -> ModelInfo;
    /// Creates a context.
    fn create_context(self: &Arc<Self>, params: &ContextParams) -> Result<Self::Context>;
}

/// A context: the KV cache of several sequences and the scratch space to evaluate batches.
pub trait Context: Send + 'static {
    /// Facts about the context.
    fn info(&self) -> ContextInfo;
    /// Forgets every position of `seq`.
    fn seq_clear(&mut self, seq: i32) -> Result<()>;
    /// Keeps positions `0..n_keep` of `seq`.
    fn seq_truncate(&mut self, seq: i32, n_keep: u32) -> Result<()>;
    /// Makes `dst` hold positions `0..n` of `src`.
    fn seq_copy(&mut self, src: i32, dst: i32, n: u32) -> Result<()>;
    /// Evaluates `batch` and writes the outputs of its wanted rows.
    fn forward(&mut self, batch: &Batch<'_>, out: &mut Outputs<'_>) -> Result<()>;
}
