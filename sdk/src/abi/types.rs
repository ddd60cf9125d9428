//! The `#[repr(C)]` types that cross the backend ABI. Mirrored by `sdk/include/kiln_backend.h`.
//!
//! Rules (see `sdk/ABI.md` for the versioning policy):
//! - only fixed-size integers, floats, raw pointers and fixed arrays cross;
//! - every struct that may grow starts with `struct_size`, set by whoever allocates it (the
//!   host, for the structs a backend fills too); a reader or writer touches only the fields
//!   that lie inside both its own layout and `struct_size`, and a field past `struct_size`
//!   counts as absent (zero);
//! - arrays of growable elements carry their element size next to their pointer;
//! - the function table grows only by appending; a function past the table's size is absent;
//! - every call returns a [`Status`] code and fills a host-owned [`KilnError`].

/// `"KILN"` as a little-endian u32: first field of every backend header.
pub const ABI_MAGIC: u32 = u32::from_le_bytes(*b"KILN");
/// Major ABI version: a library with another major version is refused.
pub const ABI_MAJOR: u16 = 2;
/// Minor ABI version: bumped when fields or functions are appended.
pub const ABI_MINOR: u16 = 1;
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
/// Its layout is frozen for the whole major version (it never grows).
#[repr(C)]
pub struct KilnError {
    /// A [`Status`] code.
    pub code: i32,
    /// UTF-8 message, NUL-terminated (truncated to fit).
    pub message: [u8; ERROR_MESSAGE_LEN],
}

/// A borrowed byte string (not NUL-terminated). Frozen for the major version.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct KilnStr {
    /// First byte; may be null when `len` is 0.
    pub ptr: *const u8,
    /// Length in bytes.
    pub len: u64,
}

/// What a backend says about itself (filled by the backend).
#[repr(C)]
pub struct KilnBackendInfo {
    /// `size_of::<KilnBackendInfo>()` as the host knows it.
    pub struct_size: u32,
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

/// One device of a backend (filled by the backend).
#[repr(C)]
pub struct KilnDeviceInfo {
    /// `size_of::<KilnDeviceInfo>()` as the host knows it.
    pub struct_size: u32,
    /// Human-readable device name (NUL-terminated).
    pub name: [u8; 128],
    /// [`DEVICE_CPU`] or [`DEVICE_GPU`].
    pub kind: u32,
    /// Total memory in bytes (0 if unknown).
    pub total_memory: u64,
    /// Free memory in bytes (0 if unknown).
    pub free_memory: u64,
}

/// How well a backend suits this machine or this model: 0 = unusable (with the reason),
/// higher is better (filled by the backend).
#[repr(C)]
pub struct KilnScore {
    /// `size_of::<KilnScore>()` as the host knows it.
    pub struct_size: u32,
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
/// type tag), so arrays and strings are passed without conversion. Frozen for the major version.
#[repr(C)]
pub struct KilnMetaKv {
    /// The key.
    pub key: KilnStr,
    /// GGUF value type id.
    pub value_type: u32,
    /// The encoded value.
    pub raw: KilnStr,
}

/// One tensor of a GGUF file; `data` points into the host's mapping of the file. Frozen for
/// the major version.
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
/// until the model loaded from it is freed (or, for `score_model`, until the call returns).
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

/// Facts about a loaded model (filled by the backend).
#[repr(C)]
pub struct KilnModelInfo {
    /// `size_of::<KilnModelInfo>()` as the host knows it.
    pub struct_size: u32,
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
    /// KV-cache bytes one token position takes in one sequence (summed over layers; a
    /// sliding-window layer counts while its window is not full).
    pub kv_bytes_per_token: u64,
    /// Architecture name (NUL-terminated).
    pub arch: [u8; 32],
}

/// Options for a context: the KV cache of up to `n_seq_max` sequences of `n_ctx` positions,
/// and the scratch to evaluate batches of up to `n_batch_max` rows with up to `n_outputs_max`
/// output rows. The backend allocates everything here, once: a `forward` that stays within
/// these limits allocates nothing that grows with the model.
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
    /// Most rows (tokens) a `forward` call will carry.
    pub n_batch_max: u32,
    /// Most output rows a `forward` call will ask for.
    pub n_outputs_max: u32,
}

/// Facts about a context (filled by the backend).
#[repr(C)]
pub struct KilnContextInfo {
    /// `size_of::<KilnContextInfo>()` as the host knows it.
    pub struct_size: u32,
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

/// A batch to evaluate: row `i` is token `tokens[i]` at `positions[i]` of sequence
/// `seq_ids[i]`. Within one sequence, rows must follow each other in position order.
#[repr(C)]
pub struct KilnBatch {
    /// `size_of::<KilnBatch>()` as the host knows it.
    pub struct_size: u32,
    /// Rows in the batch (at most the context's `n_batch_max`).
    pub n_tokens: u32,
    /// Token ids.
    pub tokens: *const i32,
    /// Positions.
    pub positions: *const i32,
    /// Sequence ids.
    pub seq_ids: *const i32,
}

/// Output kind: the full row of f32 logits.
pub const OUTPUT_LOGITS: u32 = 1;
/// Output kind: the top N (ids, logits) of the row, best first (ties: lower id first).
pub const OUTPUT_TOP_N: u32 = 2;

/// What one output row asks for and where it goes (host memory). Tokens that are banned (in
/// `banned`, or missing from `allowed` when `allowed` is not null) count as −∞ for everything
/// this row returns (its logits, its top N, `lse`, `target_logit`).
#[repr(C)]
pub struct KilnRowOutput {
    /// The batch row (`0..n_tokens`); rows are listed in increasing order, each at most once.
    pub row: u32,
    /// [`OUTPUT_LOGITS`] or [`OUTPUT_TOP_N`].
    pub kind: u32,
    /// N for [`OUTPUT_TOP_N`] (0 is allowed: only `lse` and `target_logit`).
    pub top_n: u32,
    /// Number of `banned` ids.
    pub n_banned: u32,
    /// Token ids to set to −∞ before anything else (out-of-range ids are an error).
    pub banned: *const i32,
    /// Number of `allowed` ids.
    pub n_allowed: u32,
    /// If not null: only these token ids keep their logits; every other one is −∞
    /// (`n_allowed` may be 0: nothing is allowed).
    pub allowed: *const i32,
    /// `n_vocab` floats ([`OUTPUT_LOGITS`]).
    pub logits: *mut f32,
    /// `top_n` ids ([`OUTPUT_TOP_N`]).
    pub top_ids: *mut i32,
    /// `top_n` logits matching `top_ids` ([`OUTPUT_TOP_N`]).
    pub top_logits: *mut f32,
    /// If not null: the log-sum-exp of the row.
    pub lse: *mut f32,
    /// A token id whose logit to report in `target_logit`, or −1.
    pub target: i32,
    /// If not null and `target >= 0`: the logit of `target`.
    pub target_logit: *mut f32,
}

/// The outputs a `forward` call writes: one [`KilnRowOutput`] per output row.
#[repr(C)]
pub struct KilnOutputs {
    /// `size_of::<KilnOutputs>()` as the host knows it.
    pub struct_size: u32,
    /// Entries in `rows` (at most the context's `n_outputs_max`).
    pub n_rows: u32,
    /// `size_of::<KilnRowOutput>()` as the host knows it (the stride of `rows`).
    pub row_size: u32,
    /// The requests.
    pub rows: *const KilnRowOutput,
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

/// Profiling counters of one operation kind (capability [`CAP_PROFILE`]).
#[repr(C)]
pub struct KilnOpStat {
    /// Operation name (NUL-terminated), e.g. `"matmul"`.
    pub name: [u8; 32],
    /// Calls since profiling was enabled.
    pub calls: u64,
    /// Nanoseconds spent in them (host-observed; 0 where the backend cannot time).
    pub nanos: u64,
}

/// Most operation kinds a [`KilnProfile`] reports.
pub const PROFILE_MAX_OPS: usize = 32;

/// Profile of a context since profiling was enabled (capability [`CAP_PROFILE`]).
#[repr(C)]
pub struct KilnProfile {
    /// `size_of::<KilnProfile>()` as the host knows it.
    pub struct_size: u32,
    /// `forward` calls counted.
    pub n_forward: u64,
    /// Entries used in `ops`.
    pub n_ops: u32,
    /// Per operation kind.
    pub ops: [KilnOpStat; PROFILE_MAX_OPS],
}

/// Name of the optional profiling capability: a function of type [`ProfileFn`].
pub const CAP_PROFILE: &str = "kiln.profile.v1";

/// `kiln.profile.v1`: `enable` = 1 starts (and resets) counting, 0 stops; when `out` is not
/// null, the counts so far are written to it.
pub type ProfileFn = unsafe extern "C" fn(
    ctx: *mut KilnContext,
    enable: u32,
    out: *mut KilnProfile,
    err: *mut KilnError,
) -> i32;

/// The function table of a backend. Every function returns a [`Status`] code and, on failure,
/// fills `err`. Functions are called from one host thread at a time per context. Entries
/// after `forward` were appended in later minor versions: read them only when
/// `struct_size` covers them (the host's `client` does).
#[repr(C)]
pub struct KilnBackendApi {
    /// `size_of::<KilnBackendApi>()` as the backend was built.
    pub struct_size: u32,
    /// Name, version, device count.
    pub get_info: unsafe extern "C" fn(out: *mut KilnBackendInfo, err: *mut KilnError) -> i32,
    /// Device `index`.
    pub get_device:
        unsafe extern "C" fn(index: u32, out: *mut KilnDeviceInfo, err: *mut KilnError) -> i32,
    /// Suitability for this machine, whatever the model.
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
    /// Evaluates a batch and writes the requested outputs. On error nothing changed.
    pub forward: unsafe extern "C" fn(
        ctx: *mut KilnContext,
        batch: *const KilnBatch,
        outputs: *const KilnOutputs,
        err: *mut KilnError,
    ) -> i32,
    /// (2.1) How well this backend runs the model in `view` (architecture and tensor types),
    /// without loading it: a score and the reason.
    pub score_model: unsafe extern "C" fn(
        view: *const KilnGgufView,
        out: *mut KilnScore,
        err: *mut KilnError,
    ) -> i32,
    /// (2.1) The optional capability called `name` (NUL-terminated, e.g. [`CAP_PROFILE`]),
    /// or null when the backend does not have it.
    pub get_proc_address: unsafe extern "C" fn(name: *const u8) -> *const std::ffi::c_void,
}

/// The static a backend library exports under [`ENTRY_SYMBOL`]. The host reads and checks it
/// before calling any function. Frozen for the major version.
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
