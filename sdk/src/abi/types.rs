//! The `#[repr(C)]` types that cross the backend ABI. Mirrored by `sdk/include/kiln_backend.h`.
//!
//! Rules: only fixed-size integers, floats, raw pointers and fixed arrays; tables grow only by
//! appending fields; every call returns a [`Status`] code and fills a host-owned [`KilnError`].

/// `"KILN"` as a little-endian u32: first field of every backend header.
pub const ABI_MAGIC: u32 = u32::from_le_bytes(*b"KILN");
/// Major ABI version: a library with another major version is refused.
pub const ABI_MAJOR: u16 = 1;
/// Minor ABI version: bumped when fields are appended to a table.
pub const ABI_MINOR: u16 = 0;
/// The one exported symbol of a backend library: a static [`KilnBackendHeader`].
pub const ENTRY_SYMBOL: &str = "kiln_backend_header";

/// Status codes returned by every ABI function.
#[repr(i32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// Success.
    Ok = 0,
    /// An argument was invalid (null pointer, out-of-range id, inconsistent sizes).
    InvalidArgument = 1,
    /// The request is valid but this backend cannot do it (tensor type, architecture...).
    Unsupported = 2,
    /// Memory (host or device) ran out.
    OutOfMemory = 3,
    /// A sequence would grow past the context size.
    ContextFull = 4,
    /// Any other failure inside the backend.
    Internal = 5,
    /// The backend panicked; the panic was caught at the ABI boundary.
    Panic = 6,
}

impl Status {
    /// The status with code `c` (unknown codes map to `Internal`).
    pub fn from_code(c: i32) -> Status {
        match c {
            0 => Status::Ok,
            1 => Status::InvalidArgument,
            2 => Status::Unsupported,
            3 => Status::OutOfMemory,
            4 => Status::ContextFull,
            6 => Status::Panic,
            _ => Status::Internal,
        }
    }
}

/// Bytes in [`KilnError::message`].
pub const ERROR_MESSAGE_LEN: usize = 1020;

/// Error detail filled by the backend when a call fails: a code and a NUL-terminated message.
#[repr(C)]
pub struct KilnError {
    /// A [`Status`] code.
    pub code: i32,
    /// UTF-8 message, NUL-terminated (truncated to fit).
    pub message: [u8; ERROR_MESSAGE_LEN],
}

/// A borrowed byte string (not NUL-terminated).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct KilnStr {
    /// First byte; may be null when `len` is 0.
    pub ptr: *const u8,
    /// Length in bytes.
    pub len: u64,
}

/// What a backend says about itself.
#[repr(C)]
pub struct KilnBackendInfo {
    /// Short name, e.g. `"cpu"` (NUL-terminated).
    pub name: [u8; 64],
    /// The backend's own version (NUL-terminated).
    pub version: [u8; 64],
    /// One line for `kiln backends` (NUL-terminated).
    pub description: [u8; 256],
    /// Number of devices [`KilnBackendApi::get_device`] accepts.
    pub n_devices: u32,
}

/// Device kind: a CPU.
pub const DEVICE_CPU: u32 = 0;
/// Device kind: a GPU or other accelerator.
pub const DEVICE_GPU: u32 = 1;

/// One device of a backend.
#[repr(C)]
pub struct KilnDeviceInfo {
    /// Human-readable device name (NUL-terminated).
    pub name: [u8; 128],
    /// [`DEVICE_CPU`] or [`DEVICE_GPU`].
    pub kind: u32,
    /// Total memory in bytes (0 if unknown).
    pub total_memory: u64,
    /// Free memory in bytes (0 if unknown).
    pub free_memory: u64,
}

/// How well a backend suits this machine: 0 = unusable (with the reason), higher is better.
#[repr(C)]
pub struct KilnScore {
    /// 0 = unusable; CPU backends score around 100, GPU backends higher.
    pub score: u32,
    /// Why (NUL-terminated); required when `score` is 0.
    pub reason: [u8; 256],
}

/// Options for creating a backend instance.
#[repr(C)]
pub struct KilnBackendOptions {
    /// `size_of::<KilnBackendOptions>()` as the host knows it.
    pub struct_size: u32,
    /// Worker threads (0 = all cores).
    pub n_threads: u32,
    /// Device index.
    pub device: u32,
}

/// One metadata key/value of a GGUF file. `raw` is the value's exact GGUF encoding (without the
/// type tag), so arrays and strings are passed without conversion.
#[repr(C)]
pub struct KilnMetaKv {
    /// The key.
    pub key: KilnStr,
    /// GGUF value type id.
    pub value_type: u32,
    /// The encoded value.
    pub raw: KilnStr,
}

/// One tensor of a GGUF file; `data` points into the host's mapping of the file.
#[repr(C)]
pub struct KilnTensorDesc {
    /// Tensor name.
    pub name: KilnStr,
    /// ggml type id.
    pub ggml_type: u32,
    /// Number of used entries in `dims`.
    pub n_dims: u32,
    /// Dimensions, fastest-varying first (`dims[0]` = row length).
    pub dims: [u64; 4],
    /// First byte of the tensor data.
    pub data: *const u8,
    /// Size of the tensor data in bytes.
    pub n_bytes: u64,
}

/// The host's parsed view of a GGUF file. Everything it points to stays valid and unchanged
/// until the model loaded from it is freed.
#[repr(C)]
pub struct KilnGgufView {
    /// `size_of::<KilnGgufView>()` as the host knows it.
    pub struct_size: u32,
    /// GGUF version of the file.
    pub version: u32,
    /// Tensor data alignment.
    pub alignment: u64,
    /// Number of metadata entries.
    pub n_kv: u64,
    /// Metadata entries.
    pub kv: *const KilnMetaKv,
    /// Number of tensors.
    pub n_tensors: u64,
    /// Tensor descriptors.
    pub tensors: *const KilnTensorDesc,
}

/// Options for loading a model.
#[repr(C)]
pub struct KilnModelParams {
    /// `size_of::<KilnModelParams>()` as the host knows it.
    pub struct_size: u32,
    /// Reserved, 0.
    pub flags: u32,
}

/// Facts about a loaded model.
#[repr(C)]
pub struct KilnModelInfo {
    /// Rows of the output logits.
    pub n_vocab: u32,
    /// Context length the model was trained with.
    pub n_ctx_train: u32,
    /// Transformer blocks.
    pub n_layer: u32,
    /// Hidden size.
    pub n_embd: u32,
    /// Bytes of weights held by the backend (host memory for zero-copy CPU loads).
    pub weight_bytes: u64,
    /// KV-cache bytes one token position takes in one sequence.
    pub kv_bytes_per_token: u64,
    /// Architecture name (NUL-terminated).
    pub arch: [u8; 32],
}

/// Options for a context: the KV cache of up to `n_seq_max` sequences of `n_ctx` positions.
#[repr(C)]
pub struct KilnContextParams {
    /// `size_of::<KilnContextParams>()` as the host knows it.
    pub struct_size: u32,
    /// Positions per sequence.
    pub n_ctx: u32,
    /// Sequence ids accepted: `0..n_seq_max`.
    pub n_seq_max: u32,
    /// ggml type of the cache (F16 = 1).
    pub kv_type: u32,
}

/// Facts about a context.
#[repr(C)]
pub struct KilnContextInfo {
    /// Positions per sequence.
    pub n_ctx: u32,
    /// Sequences.
    pub n_seq_max: u32,
    /// Bytes reserved for the KV cache.
    pub kv_bytes: u64,
}

/// A batch of tokens to evaluate: entry `i` is token `tokens[i]` at `positions[i]` of sequence
/// `seq_ids[i]`; rows with `want_output[i] != 0` produce outputs, in batch order.
#[repr(C)]
pub struct KilnBatch {
    /// Entries in the batch.
    pub n_tokens: u32,
    /// Token ids.
    pub tokens: *const i32,
    /// Positions.
    pub positions: *const i32,
    /// Sequence ids.
    pub seq_ids: *const i32,
    /// Nonzero where the row's output is wanted.
    pub want_output: *const u8,
}

/// Output mode: full f32 logits rows.
pub const OUTPUT_LOGITS: u32 = 0;
/// Output mode: the top-N (ids, logits) of each row plus its log-sum-exp.
pub const OUTPUT_TOP_N: u32 = 1;

/// Where `forward` writes its outputs (host memory).
#[repr(C)]
pub struct KilnOutputs {
    /// [`OUTPUT_LOGITS`] or [`OUTPUT_TOP_N`].
    pub mode: u32,
    /// Rows, equal to the number of nonzero `want_output` entries.
    pub n_outputs: u32,
    /// `n_outputs * n_vocab` floats (logits mode).
    pub logits: *mut f32,
    /// N (top-N mode).
    pub top_n: u32,
    /// `n_outputs * top_n` ids, best first (top-N mode).
    pub top_ids: *mut i32,
    /// `n_outputs * top_n` logits matching `top_ids` (top-N mode).
    pub top_logits: *mut f32,
    /// `n_outputs` log-sum-exp values of the full rows (top-N mode).
    pub lse: *mut f32,
}

/// Opaque backend instance.
#[repr(C)]
pub struct KilnBackend {
    _private: [u8; 0],
}
/// Opaque loaded model.
#[repr(C)]
pub struct KilnModel {
    _private: [u8; 0],
}
/// Opaque context (KV cache + scratch).
#[repr(C)]
pub struct KilnContext {
    _private: [u8; 0],
}

/// The function table of a backend. Every function returns a [`Status`] code and, on failure,
/// fills `err`. Functions are called from one host thread at a time per context.
#[repr(C)]
pub struct KilnBackendApi {
    /// `size_of::<KilnBackendApi>()` as the backend was built.
    pub struct_size: u32,
    /// Name, version, device count.
    pub get_info: unsafe extern "C" fn(out: *mut KilnBackendInfo, err: *mut KilnError) -> i32,
    /// Device `index`.
    pub get_device:
        unsafe extern "C" fn(index: u32, out: *mut KilnDeviceInfo, err: *mut KilnError) -> i32,
    /// Suitability for this machine.
    pub get_score: unsafe extern "C" fn(out: *mut KilnScore, err: *mut KilnError) -> i32,
    /// Writes 1 to `out` if weights of ggml type `ggml_type` are supported.
    pub supports_type:
        unsafe extern "C" fn(ggml_type: u32, out: *mut u8, err: *mut KilnError) -> i32,
    /// Creates a backend instance.
    pub backend_create: unsafe extern "C" fn(
        opts: *const KilnBackendOptions,
        out: *mut *mut KilnBackend,
        err: *mut KilnError,
    ) -> i32,
    /// Frees a backend instance (after all its models).
    pub backend_destroy: unsafe extern "C" fn(backend: *mut KilnBackend),
    /// Loads a model from a GGUF view.
    pub model_load: unsafe extern "C" fn(
        backend: *mut KilnBackend,
        view: *const KilnGgufView,
        params: *const KilnModelParams,
        out: *mut *mut KilnModel,
        err: *mut KilnError,
    ) -> i32,
    /// Facts about a model.
    pub model_info: unsafe extern "C" fn(
        model: *const KilnModel,
        out: *mut KilnModelInfo,
        err: *mut KilnError,
    ) -> i32,
    /// Frees a model (after all its contexts).
    pub model_free: unsafe extern "C" fn(model: *mut KilnModel),
    /// Creates a context for a model.
    pub context_create: unsafe extern "C" fn(
        model: *const KilnModel,
        params: *const KilnContextParams,
        out: *mut *mut KilnContext,
        err: *mut KilnError,
    ) -> i32,
    /// Facts about a context.
    pub context_info: unsafe extern "C" fn(
        ctx: *const KilnContext,
        out: *mut KilnContextInfo,
        err: *mut KilnError,
    ) -> i32,
    /// Frees a context.
    pub context_free: unsafe extern "C" fn(ctx: *mut KilnContext),
    /// Forgets every position of sequence `seq`.
    pub seq_clear:
        unsafe extern "C" fn(ctx: *mut KilnContext, seq: i32, err: *mut KilnError) -> i32,
    /// Keeps only positions `0..n_keep` of sequence `seq`.
    pub seq_truncate: unsafe extern "C" fn(
        ctx: *mut KilnContext,
        seq: i32,
        n_keep: u32,
        err: *mut KilnError,
    ) -> i32,
    /// Makes `dst` hold positions `0..n` of `src` (prefix reuse, forks); `dst` is cleared first.
    pub seq_copy: unsafe extern "C" fn(
        ctx: *mut KilnContext,
        src: i32,
        dst: i32,
        n: u32,
        err: *mut KilnError,
    ) -> i32,
    /// Evaluates a batch and writes the requested outputs.
    pub forward: unsafe extern "C" fn(
        ctx: *mut KilnContext,
        batch: *const KilnBatch,
        out: *const KilnOutputs,
        err: *mut KilnError,
    ) -> i32,
}

/// The static a backend library exports under [`ENTRY_SYMBOL`]. The host reads and checks it
/// before calling any function.
#[repr(C)]
pub struct KilnBackendHeader {
    /// [`ABI_MAGIC`].
    pub magic: u32,
    /// [`ABI_MAJOR`] the library was built with.
    pub abi_major: u16,
    /// [`ABI_MINOR`] the library was built with.
    pub abi_minor: u16,
    /// `size_of::<KilnBackendHeader>()` as built.
    pub header_size: u32,
    /// `size_of::<KilnBackendApi>()` as built.
    pub api_size: u32,
    /// Fingerprint of the ABI layout the library was built with ([`super::layout::FINGERPRINT`]).
    pub layout_fingerprint: u64,
    /// SDK version the library was built with (NUL-terminated).
    pub sdk_version: *const u8,
    /// The function table.
    pub api: *const KilnBackendApi,
}

/// Wrapper making the header a shareable `static` (it only points at other statics).
#[repr(transparent)]
pub struct ExportedHeader(pub KilnBackendHeader);
// SAFETY: the header and everything it points to are immutable statics.
unsafe impl Sync for ExportedHeader {}

/// Wrapper making an API table a shareable `static`.
#[repr(transparent)]
pub struct ExportedApi(pub KilnBackendApi);
// SAFETY: a table of function pointers, never mutated.
unsafe impl Sync for ExportedApi {}
