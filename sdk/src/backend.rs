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

/// Options for a context: its KV cache and the largest step it must evaluate.
#[derive(Debug, Clone)]
pub struct ContextParams {
    /// Positions per sequence.
    pub n_ctx: u32,
    /// Number of sequences (ids `0..n_seq_max`).
    pub n_seq_max: u32,
    /// KV cache element type.
    pub kv_type: GgmlType,
    /// Most rows a `forward` will carry.
    pub n_batch_max: u32,
    /// Most output rows a `forward` will ask for.
    pub n_outputs_max: u32,
}

/// Facts about a context.
#[derive(Debug, Clone)]
pub struct ContextInfo {
    /// Positions per sequence.
    pub n_ctx: u32,
    /// Sequences.
    pub n_seq_max: u32,
    /// Most rows per `forward`.
    pub n_batch_max: u32,
    /// Most output rows per `forward`.
    pub n_outputs_max: u32,
    /// Bytes reserved for the KV cache.
    pub kv_bytes: u64,
    /// Bytes reserved for activations and other per-step scratch.
    pub scratch_bytes: u64,
}

/// A batch to evaluate; all slices have the same length. Row `i` is token `tokens[i]` at
/// `positions[i]` of sequence `seq_ids[i]`.
#[derive(Debug, Clone, Copy)]
pub struct Batch<'a> {
    /// Token ids.
    pub tokens: &'a [i32],
    /// Positions within their sequences.
    pub positions: &'a [i32],
    /// Sequence ids.
    pub seq_ids: &'a [i32],
}

impl Batch<'_> {
    /// Number of rows.
    pub fn len(&self) -> usize {
        self.tokens.len()
    }
    /// True if the batch has no rows.
    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }
}

/// What an output row returns besides its log-sum-exp and target logit.
pub enum Want<'a> {
    /// The full row of `n_vocab` logits.
    Logits(&'a mut [f32]),
    /// The top `ids.len()` tokens, best first (ties: lower id first; NaN counts as −∞), and
    /// their logits (`logits.len() == ids.len()`; may be empty).
    TopN {
        /// Ids, best first.
        ids: &'a mut [i32],
        /// Their logits.
        logits: &'a mut [f32],
    },
}

/// One output row of a `forward`: which batch row, what to return, and what to ban first.
/// Banned tokens count as −∞ for everything the row returns.
pub struct RowOutput<'a> {
    /// The batch row (rows are listed in increasing order, each at most once).
    pub row: usize,
    /// Logits or top-N.
    pub want: Want<'a>,
    /// Token ids set to −∞ before anything else is computed (each `< n_vocab`).
    pub banned: &'a [i32],
    /// If set, only these token ids keep their logits (each `< n_vocab`); the rest are −∞.
    pub allowed: Option<&'a [i32]>,
    /// Where to write the row's log-sum-exp, if wanted.
    pub lse: Option<&'a mut f32>,
    /// A token whose logit to report, and where.
    pub target: Option<(u32, &'a mut f32)>,
}

/// Counters of one operation kind in a [`Profile`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpStat {
    /// Operation name.
    pub name: &'static str,
    /// Calls.
    pub calls: u64,
    /// Nanoseconds spent in them (host-observed).
    pub nanos: u64,
}

/// What a context did since profiling was enabled.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Profile {
    /// `forward` calls.
    pub n_forward: u64,
    /// Per operation kind, in first-call order.
    pub ops: Vec<OpStat>,
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
    /// How well this backend suits this machine, whatever the model.
    fn score() -> Score;
    /// Whether weights of `ty` can be loaded.
    fn supports_type(ty: GgmlType) -> bool;
    /// How well this backend runs the model in `gguf` (not loaded; tensor data may be absent).
    /// The default: the machine score when the SDK's model code knows the architecture and
    /// [`Backend::supports_type`] accepts every tensor type, else 0 with the reason.
    fn score_model(gguf: &Gguf<'_>) -> Score {
        let machine = Self::score();
        if machine.score == 0 {
            return machine;
        }
        match crate::model::check_support(gguf, Self::supports_type) {
            Ok(summary) => Score {
                score: machine.score,
                reason: format!("{summary}; {}", machine.reason),
            },
            Err(why) => Score {
                score: 0,
                reason: why,
            },
        }
    }
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
///
/// Determinism: the outputs of a row depend only on its token, position and the KV cache of
/// its sequence — never on the other rows of the batch, their number or their order — so a
/// sequence gives the same logits decoded alone or inside any batch.
pub trait Context: Send + 'static {
    /// Facts about the context.
    fn info(&self) -> ContextInfo;
    /// Forgets every position of `seq`.
    fn seq_clear(&mut self, seq: i32) -> Result<()>;
    /// Keeps positions `0..n_keep` of `seq`.
    fn seq_truncate(&mut self, seq: i32, n_keep: u32) -> Result<()>;
    /// Makes `dst` hold positions `0..n` of `src`.
    fn seq_copy(&mut self, src: i32, dst: i32, n: u32) -> Result<()>;
    /// Evaluates `batch` and writes `outputs`. On error nothing changed.
    fn forward(&mut self, batch: &Batch<'_>, outputs: &mut [RowOutput<'_>]) -> Result<()>;
    /// Starts (`true`, resetting the counts) or stops profiling, and returns the counts so far.
    fn profile(&mut self, enable: bool) -> Result<Profile> {
        let _ = enable;
        Err(BackendError::unsupported("this backend does not profile"))
    }
}
