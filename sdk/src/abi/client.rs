//! Host-side glue: checks a library's header and wraps its function table in safe types
//! ([`BackendLib`] → [`Instance`] → [`LoadedModel`] → [`ModelContext`]). Used by the Kiln
//! runtime and by the conformance suite; any host written in Rust can use it.
//!
//! Growth: a backend built for an older minor of the same major has a shorter function table.
//! Every function is read through an accessor that checks the table's size; one past it is
//! absent, and the capability it stands for is reported as missing (`None`), never called.
//! Every struct the host allocates carries the host's `struct_size`, so a backend of any
//! minor reads and writes only what both sides know.

use super::layout::fingerprint_at;
use super::types::*;
use crate::backend::{Batch, OpStat, Profile, RowOutput, Want};
use crate::gguf::Gguf;
use crate::quant::GgmlType;
use std::any::Any;
use std::fmt;
use std::mem::{offset_of, size_of};
use std::sync::Arc;

/// Something the host keeps alive for as long as a library or model is in use (the
/// `libloading::Library`, the file mapping).
pub type KeepAlive = Arc<dyn Any + Send + Sync>;

/// A failed ABI call: its status and the backend's message.
#[derive(Debug, Clone)]
pub struct CallError {
    /// Status returned.
    pub status: Status,
    /// The backend's message.
    pub message: String,
}

impl CallError {
    fn new(status: Status, message: impl Into<String>) -> Self {
        CallError {
            status,
            message: message.into(),
        }
    }
}

impl fmt::Display for CallError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.message.is_empty() {
            write!(f, "backend call failed ({:?})", self.status)
        } else {
            f.write_str(&self.message)
        }
    }
}

impl std::error::Error for CallError {}

/// Result of an ABI call.
pub type CallResult<T> = Result<T, CallError>;

fn new_error() -> KilnError {
    KilnError {
        code: 0,
        message: [0; ERROR_MESSAGE_LEN],
    }
}

/// Reads a NUL-terminated fixed buffer as a lossy string.
pub fn c_buf_to_string(buf: &[u8]) -> String {
    let n = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

fn check(code: i32, err: &KilnError) -> CallResult<()> {
    if code == Status::Ok as i32 {
        Ok(())
    } else {
        Err(CallError::new(
            Status::from_code(code),
            c_buf_to_string(&err.message),
        ))
    }
}

/// Reads at most `cap` bytes of a NUL-terminated string from a library.
///
/// # Safety
/// `p` must be null or point to readable memory up to its NUL or `cap` bytes.
unsafe fn read_c_str(p: *const u8, cap: usize) -> String {
    if p.is_null() {
        return "?".into();
    }
    let mut v = Vec::new();
    for i in 0..cap {
        let b = *p.add(i);
        if b == 0 {
            break;
        }
        v.push(b);
    }
    String::from_utf8_lossy(&v).into_owned()
}

/// The layout fingerprint of each minor version of the current major this SDK knows.
pub fn known_fingerprint(minor: u16) -> Option<u64> {
    (minor <= ABI_MINOR).then(|| fingerprint_at(minor))
}

/// Bytes of the function table in minor `minor`: every entry up to the last one it had.
fn api_size_at(minor: u16) -> usize {
    if minor >= 1 {
        size_of::<KilnBackendApi>()
    } else {
        offset_of!(KilnBackendApi, score_model)
    }
}

/// A struct of the ABI that the host allocates, zeroed, with its `struct_size` set.
trait Sized0: Sized {
    fn zeroed_sized() -> Self {
        // SAFETY: every type this is implemented for is plain data (integers, byte arrays,
        // raw pointers), valid when all-zero.
        let mut v: Self = unsafe { std::mem::zeroed() };
        // SAFETY: each of these structs starts with its u32 `struct_size`.
        unsafe { *(&mut v as *mut Self as *mut u32) = size_of::<Self>() as u32 };
        v
    }
}
impl Sized0 for KilnBackendInfo {}
impl Sized0 for KilnDeviceInfo {}
impl Sized0 for KilnScore {}
impl Sized0 for KilnModelInfo {}
impl Sized0 for KilnContextInfo {}
impl Sized0 for KilnProfile {}

/// Checks a library's header against this SDK. Reads only the header (and its SDK version
/// string): nothing of the library is called. Returns the table and the library's minor.
///
/// # Safety
/// `h` must be null or point to the library's exported header symbol.
pub unsafe fn check_header(
    h: *const KilnBackendHeader,
) -> Result<(*const KilnBackendApi, u16, usize), String> {
    let ours = format!(
        "ABI {ABI_MAJOR}.{ABI_MINOR}, SDK {}",
        env!("CARGO_PKG_VERSION")
    );
    let h = h.as_ref().ok_or("the backend header symbol is null")?;
    if h.magic != ABI_MAGIC {
        return Err(format!(
            "not a Kiln backend: header magic is 0x{:08x}, expected 0x{ABI_MAGIC:08x}",
            h.magic
        ));
    }
    let theirs = format!(
        "ABI {}.{}, SDK {}",
        h.abi_major,
        h.abi_minor,
        read_c_str(h.sdk_version, 64).escape_debug()
    );
    if h.abi_major != ABI_MAJOR {
        return Err(format!(
            "incompatible backend ABI: the library was built for {theirs}; this host speaks {ours}"
        ));
    }
    if (h.header_size as usize) < size_of::<KilnBackendHeader>() {
        return Err(format!(
            "corrupt backend header ({theirs}): header_size {} is smaller than {}",
            h.header_size,
            size_of::<KilnBackendHeader>()
        ));
    }
    // A minor this SDK knows must carry exactly that minor's fingerprint; a newer minor only
    // appended to ours, which the policy guarantees and the sizes below check.
    if let Some(fp) = known_fingerprint(h.abi_minor) {
        if fp != h.layout_fingerprint {
            return Err(format!(
                "incompatible backend ABI layout: the library ({theirs}) has layout fingerprint \
                 0x{:016x}, this host ({ours}) expects 0x{fp:016x} for that version; rebuild it \
                 against this SDK",
                h.layout_fingerprint
            ));
        }
    }
    let need = api_size_at(h.abi_minor.min(ABI_MINOR));
    if (h.api_size as usize) < need {
        return Err(format!(
            "incompatible backend ({theirs}): its function table has {} bytes, ABI {ABI_MAJOR}.{} has {need}",
            h.api_size,
            h.abi_minor
        ));
    }
    if h.api.is_null() {
        return Err(format!("corrupt backend header ({theirs}): null table"));
    }
    // SAFETY: the table is at least `need` bytes (checked above), which covers `struct_size`.
    let table_size = std::ptr::addr_of!((*h.api).struct_size).read();
    if table_size != h.api_size {
        return Err(format!(
            "corrupt backend header ({theirs}): table size {table_size} disagrees with header {}",
            h.api_size
        ));
    }
    Ok((h.api, h.abi_minor, h.api_size as usize))
}

/// Name, version, description and device count of a backend.
#[derive(Debug, Clone)]
pub struct BackendDescription {
    /// Short name.
    pub name: String,
    /// Version.
    pub version: String,
    /// One-line description.
    pub description: String,
    /// Devices.
    pub n_devices: u32,
}

/// A device as reported by a backend.
#[derive(Debug, Clone)]
pub struct Device {
    /// Name.
    pub name: String,
    /// True for accelerators.
    pub is_gpu: bool,
    /// Total memory (bytes, 0 = unknown).
    pub total_memory: u64,
    /// Free memory (bytes, 0 = unknown).
    pub free_memory: u64,
}

/// The function table of a library, read through size-checked accessors.
#[derive(Clone, Copy)]
struct Api {
    ptr: *const KilnBackendApi,
    size: usize,
}
// SAFETY: a pointer to an immutable static table of the library.
unsafe impl Send for Api {}
unsafe impl Sync for Api {}

/// Reads a base-layout entry (present in every minor: checked at load).
macro_rules! base_fn {
    ($api:expr, $f:ident) => {{
        let api: Api = $api;
        // SAFETY: `check_header` ensured the table covers the base layout.
        #[allow(unused_unsafe)]
        let f = unsafe { std::ptr::addr_of!((*api.ptr).$f).read() };
        f
    }};
}

impl Api {
    /// An appended entry if the table has it.
    fn appended<T: Copy>(&self, offset: usize) -> Option<T> {
        if self.size >= offset + size_of::<T>() {
            // SAFETY: in bounds of the library's table (checked); function pointers in it are
            // non-null by the ABI.
            Some(unsafe { ((self.ptr as *const u8).add(offset) as *const T).read_unaligned() })
        } else {
            None
        }
    }
}

/// A checked backend library.
#[derive(Clone)]
pub struct BackendLib {
    api: Api,
    minor: u16,
    _keep: KeepAlive,
}

impl BackendLib {
    /// Checks `header` and wraps the library.
    ///
    /// # Safety
    /// `header` must be the library's exported header and `keep` must keep the library loaded.
    pub unsafe fn new(header: *const KilnBackendHeader, keep: KeepAlive) -> Result<Self, String> {
        let (ptr, minor, size) = check_header(header)?;
        Ok(BackendLib {
            api: Api { ptr, size },
            minor,
            _keep: keep,
        })
    }

    /// The ABI minor version the library was built for.
    pub fn abi_minor(&self) -> u16 {
        self.minor
    }

    /// Name, version, description and device count.
    pub fn describe(&self) -> CallResult<BackendDescription> {
        let mut err = new_error();
        let mut out = KilnBackendInfo::zeroed_sized();
        // SAFETY: valid out pointers; the table was checked.
        check(
            unsafe { base_fn!(self.api, get_info)(&mut out, &mut err) },
            &err,
        )?;
        Ok(BackendDescription {
            name: c_buf_to_string(&out.name),
            version: c_buf_to_string(&out.version),
            description: c_buf_to_string(&out.description),
            n_devices: out.n_devices,
        })
    }

    /// Device `index`.
    pub fn device(&self, index: u32) -> CallResult<Device> {
        let mut err = new_error();
        let mut out = KilnDeviceInfo::zeroed_sized();
        // SAFETY: valid out pointers.
        check(
            unsafe { base_fn!(self.api, get_device)(index, &mut out, &mut err) },
            &err,
        )?;
        Ok(Device {
            name: c_buf_to_string(&out.name),
            is_gpu: out.kind == DEVICE_GPU,
            total_memory: out.total_memory,
            free_memory: out.free_memory,
        })
    }

    /// Score for this machine and its reason.
    pub fn score(&self) -> CallResult<(u32, String)> {
        let mut err = new_error();
        let mut out = KilnScore::zeroed_sized();
        // SAFETY: valid out pointers.
        check(
            unsafe { base_fn!(self.api, get_score)(&mut out, &mut err) },
            &err,
        )?;
        Ok((out.score, c_buf_to_string(&out.reason)))
    }

    /// Score for the model in `gguf` and its reason; `None` when the library predates
    /// per-model scoring (ABI 2.0).
    pub fn score_model(&self, gguf: &Gguf<'_>) -> Option<CallResult<(u32, String)>> {
        type F = unsafe extern "C" fn(*const KilnGgufView, *mut KilnScore, *mut KilnError) -> i32;
        let f: F = self.api.appended(offset_of!(KilnBackendApi, score_model))?;
        let view = ViewStorage::new(gguf);
        let mut err = new_error();
        let mut out = KilnScore::zeroed_sized();
        // SAFETY: the view borrows `gguf`, alive for the call; valid out pointers.
        let r = check(unsafe { f(&*view.view, &mut out, &mut err) }, &err);
        Some(r.map(|()| (out.score, c_buf_to_string(&out.reason))))
    }

    /// The optional capability `name`, or `None` (absent, or a library that predates lookup
    /// by name).
    pub fn proc_address(&self, name: &str) -> Option<*const std::ffi::c_void> {
        type F = unsafe extern "C" fn(*const u8) -> *const std::ffi::c_void;
        let f: F = self
            .api
            .appended(offset_of!(KilnBackendApi, get_proc_address))?;
        let mut c = name.as_bytes().to_vec();
        c.push(0);
        // SAFETY: a NUL-terminated string alive for the call.
        let p = unsafe { f(c.as_ptr()) };
        (!p.is_null()).then_some(p)
    }

    /// Whether weights of `ty` are supported.
    pub fn supports_type(&self, ty: GgmlType) -> CallResult<bool> {
        let mut err = new_error();
        let mut out = 0u8;
        // SAFETY: valid out pointers.
        check(
            unsafe { base_fn!(self.api, supports_type)(ty as u32, &mut out, &mut err) },
            &err,
        )?;
        Ok(out != 0)
    }

    /// Creates an instance with `n_threads` (0 = all) on device `device`.
    pub fn create(&self, n_threads: u32, device: u32) -> CallResult<Instance> {
        let mut err = new_error();
        let opts = KilnBackendOptions {
            struct_size: size_of::<KilnBackendOptions>() as u32,
            n_threads,
            device,
        };
        let mut out: *mut KilnBackend = std::ptr::null_mut();
        // SAFETY: valid pointers.
        check(
            unsafe { base_fn!(self.api, backend_create)(&opts, &mut out, &mut err) },
            &err,
        )?;
        if out.is_null() {
            return Err(CallError::new(
                Status::Internal,
                "backend_create returned null",
            ));
        }
        Ok(Instance {
            inner: Arc::new(InstanceInner {
                lib: self.clone(),
                ptr: out,
            }),
        })
    }
}

struct InstanceInner {
    lib: BackendLib,
    ptr: *mut KilnBackend,
}
// SAFETY: backends are required to be thread-safe for distinct objects; the handle is owned.
unsafe impl Send for InstanceInner {}
unsafe impl Sync for InstanceInner {}

impl Drop for InstanceInner {
    fn drop(&mut self) {
        // SAFETY: created by backend_create; all models hold an Arc to us, so none is left.
        unsafe { base_fn!(self.lib.api, backend_destroy)(self.ptr) }
    }
}

/// A backend instance.
#[derive(Clone)]
pub struct Instance {
    inner: Arc<InstanceInner>,
}

/// The C view of a GGUF plus the memory it borrows.
struct ViewStorage {
    _kv: Vec<KilnMetaKv>,
    _tensors: Vec<KilnTensorDesc>,
    view: Box<KilnGgufView>,
}

fn kstr(b: &[u8]) -> KilnStr {
    KilnStr {
        ptr: b.as_ptr(),
        len: b.len() as u64,
    }
}

impl ViewStorage {
    /// The view of `gguf`; valid while `gguf`'s borrowed data is.
    fn new(gguf: &Gguf<'_>) -> ViewStorage {
        let kv: Vec<KilnMetaKv> = gguf
            .metadata
            .iter()
            .map(|m| KilnMetaKv {
                key: kstr(m.key.as_bytes()),
                value_type: m.value_type as u32,
                raw: kstr(m.raw),
            })
            .collect();
        let tensors: Vec<KilnTensorDesc> = gguf
            .tensors
            .iter()
            .map(|t| {
                let mut dims = [1u64; 4];
                dims[..t.dims.len().min(4)].copy_from_slice(&t.dims[..t.dims.len().min(4)]);
                KilnTensorDesc {
                    name: kstr(t.name.as_bytes()),
                    ggml_type: t.ty as u32,
                    n_dims: t.dims.len() as u32,
                    dims,
                    data: t.data.as_ptr(),
                    n_bytes: t.data.len() as u64,
                }
            })
            .collect();
        let view = Box::new(KilnGgufView {
            struct_size: size_of::<KilnGgufView>() as u32,
            version: gguf.version,
            alignment: gguf.alignment,
            n_kv: kv.len() as u64,
            kv: kv.as_ptr(),
            n_tensors: tensors.len() as u64,
            tensors: tensors.as_ptr(),
        });
        ViewStorage {
            _kv: kv,
            _tensors: tensors,
            view,
        }
    }
}

impl Instance {
    /// Loads a model from a parsed GGUF.
    ///
    /// # Safety
    /// Every slice `gguf` borrows must live inside `keep` (e.g. the file's mapping), which the
    /// returned model keeps alive.
    pub unsafe fn load_model(&self, gguf: &Gguf<'_>, keep: KeepAlive) -> CallResult<LoadedModel> {
        let storage = ViewStorage::new(gguf);
        let params = KilnModelParams {
            struct_size: size_of::<KilnModelParams>() as u32,
            flags: 0,
        };
        let mut err = new_error();
        let mut out: *mut KilnModel = std::ptr::null_mut();
        check(
            base_fn!(self.inner.lib.api, model_load)(
                self.inner.ptr,
                &*storage.view,
                &params,
                &mut out,
                &mut err,
            ),
            &err,
        )?;
        if out.is_null() {
            return Err(CallError::new(Status::Internal, "model_load returned null"));
        }
        let inner = Arc::new(ModelInner {
            instance: self.clone(),
            ptr: out,
            _view: storage,
            _keep: keep,
        });
        let info = inner.info()?;
        Ok(LoadedModel { inner, info })
    }
}

struct ModelInner {
    instance: Instance,
    ptr: *mut KilnModel,
    _view: ViewStorage,
    _keep: KeepAlive,
}
// SAFETY: owned handle; see InstanceInner.
unsafe impl Send for ModelInner {}
unsafe impl Sync for ModelInner {}

impl ModelInner {
    fn lib(&self) -> &BackendLib {
        &self.instance.inner.lib
    }
    fn info(&self) -> CallResult<ModelFacts> {
        let mut err = new_error();
        let mut o = KilnModelInfo::zeroed_sized();
        // SAFETY: valid pointers.
        check(
            unsafe { base_fn!(self.lib().api, model_info)(self.ptr, &mut o, &mut err) },
            &err,
        )?;
        Ok(ModelFacts {
            n_vocab: o.n_vocab,
            n_ctx_train: o.n_ctx_train,
            n_layer: o.n_layer,
            n_embd: o.n_embd,
            weight_bytes: o.weight_bytes,
            kv_bytes_per_token: o.kv_bytes_per_token,
            arch: c_buf_to_string(&o.arch),
        })
    }
}

impl Drop for ModelInner {
    fn drop(&mut self) {
        // SAFETY: every context holds an Arc to us, so none is left.
        unsafe { base_fn!(self.lib().api, model_free)(self.ptr) }
    }
}

/// Facts about a loaded model.
#[derive(Debug, Clone)]
pub struct ModelFacts {
    /// Vocabulary size (logits per row).
    pub n_vocab: u32,
    /// Trained context length.
    pub n_ctx_train: u32,
    /// Blocks.
    pub n_layer: u32,
    /// Hidden size.
    pub n_embd: u32,
    /// Bytes of weights.
    pub weight_bytes: u64,
    /// KV bytes per position per sequence.
    pub kv_bytes_per_token: u64,
    /// Architecture.
    pub arch: String,
}

/// What a context must hold and serve.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ContextOptions {
    /// Positions per sequence.
    pub n_ctx: u32,
    /// Sequences.
    pub n_seq_max: u32,
    /// Most rows per `forward`.
    pub n_batch_max: u32,
    /// Most output rows per `forward`.
    pub n_outputs_max: u32,
}

/// Facts about a context.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ContextFacts {
    /// Positions per sequence.
    pub n_ctx: u32,
    /// Sequences.
    pub n_seq_max: u32,
    /// Most rows per `forward`.
    pub n_batch_max: u32,
    /// Most output rows per `forward`.
    pub n_outputs_max: u32,
    /// Bytes of the KV cache.
    pub kv_bytes: u64,
    /// Bytes of activations and other scratch.
    pub scratch_bytes: u64,
}

/// A model loaded by a backend.
#[derive(Clone)]
pub struct LoadedModel {
    inner: Arc<ModelInner>,
    info: ModelFacts,
}

impl LoadedModel {
    /// Facts about the model.
    pub fn info(&self) -> &ModelFacts {
        &self.info
    }

    /// The library the model was loaded by.
    pub fn lib(&self) -> &BackendLib {
        self.inner.lib()
    }

    /// Creates a context (f16 KV cache).
    pub fn create_context(&self, o: ContextOptions) -> CallResult<ModelContext> {
        let params = KilnContextParams {
            struct_size: size_of::<KilnContextParams>() as u32,
            n_ctx: o.n_ctx,
            n_seq_max: o.n_seq_max,
            kv_type: GgmlType::F16 as u32,
            n_batch_max: o.n_batch_max,
            n_outputs_max: o.n_outputs_max,
        };
        let mut err = new_error();
        let mut out: *mut KilnContext = std::ptr::null_mut();
        // SAFETY: valid pointers.
        check(
            unsafe {
                base_fn!(self.inner.lib().api, context_create)(
                    self.inner.ptr,
                    &params,
                    &mut out,
                    &mut err,
                )
            },
            &err,
        )?;
        if out.is_null() {
            return Err(CallError::new(
                Status::Internal,
                "context_create returned null",
            ));
        }
        let profile: Option<ProfileFn> = self
            .inner
            .lib()
            .proc_address(CAP_PROFILE)
            // SAFETY: the ABI defines this capability's function type.
            .map(|p| unsafe { std::mem::transmute::<*const std::ffi::c_void, ProfileFn>(p) });
        Ok(ModelContext {
            model: self.inner.clone(),
            ptr: out,
            n_vocab: self.info.n_vocab as usize,
            rows: Vec::with_capacity(o.n_outputs_max.min(4096) as usize),
            profile,
        })
    }
}

/// A context (KV cache + scratch) of a loaded model. Use from one thread at a time.
pub struct ModelContext {
    model: Arc<ModelInner>,
    ptr: *mut KilnContext,
    n_vocab: usize,
    /// The C output requests of a call, reused.
    rows: Vec<KilnRowOutput>,
    profile: Option<ProfileFn>,
}
// SAFETY: owned handle, &mut access only.
unsafe impl Send for ModelContext {}

impl Drop for ModelContext {
    fn drop(&mut self) {
        // SAFETY: created by context_create.
        unsafe { base_fn!(self.model.lib().api, context_free)(self.ptr) }
    }
}

/// Top-N outputs of one row.
#[derive(Debug, Clone, Default)]
pub struct TopN {
    /// Ids, best first.
    pub ids: Vec<i32>,
    /// Their logits.
    pub logits: Vec<f32>,
    /// Log-sum-exp of the full row.
    pub lse: f32,
}

fn null_row() -> KilnRowOutput {
    KilnRowOutput {
        row: 0,
        kind: 0,
        top_n: 0,
        n_banned: 0,
        banned: std::ptr::null(),
        n_allowed: 0,
        allowed: std::ptr::null(),
        logits: std::ptr::null_mut(),
        top_ids: std::ptr::null_mut(),
        top_logits: std::ptr::null_mut(),
        lse: std::ptr::null_mut(),
        target: -1,
        target_logit: std::ptr::null_mut(),
    }
}

impl ModelContext {
    /// Vocabulary size.
    pub fn n_vocab(&self) -> usize {
        self.n_vocab
    }

    fn api(&self) -> Api {
        self.model.lib().api
    }

    /// Sizes and memory of the context.
    pub fn info(&self) -> CallResult<ContextFacts> {
        let mut err = new_error();
        let mut o = KilnContextInfo::zeroed_sized();
        // SAFETY: valid pointers.
        check(
            unsafe { base_fn!(self.api(), context_info)(self.ptr, &mut o, &mut err) },
            &err,
        )?;
        Ok(ContextFacts {
            n_ctx: o.n_ctx,
            n_seq_max: o.n_seq_max,
            n_batch_max: o.n_batch_max,
            n_outputs_max: o.n_outputs_max,
            kv_bytes: o.kv_bytes,
            scratch_bytes: o.scratch_bytes,
        })
    }

    /// Forgets sequence `seq`.
    pub fn seq_clear(&mut self, seq: i32) -> CallResult<()> {
        let mut err = new_error();
        // SAFETY: valid pointers.
        check(
            unsafe { base_fn!(self.api(), seq_clear)(self.ptr, seq, &mut err) },
            &err,
        )
    }

    /// Keeps positions `0..n_keep` of `seq`.
    pub fn seq_truncate(&mut self, seq: i32, n_keep: u32) -> CallResult<()> {
        let mut err = new_error();
        // SAFETY: valid pointers.
        check(
            unsafe { base_fn!(self.api(), seq_truncate)(self.ptr, seq, n_keep, &mut err) },
            &err,
        )
    }

    /// Makes `dst` hold positions `0..n` of `src`.
    pub fn seq_copy(&mut self, src: i32, dst: i32, n: u32) -> CallResult<()> {
        let mut err = new_error();
        // SAFETY: valid pointers.
        check(
            unsafe { base_fn!(self.api(), seq_copy)(self.ptr, src, dst, n, &mut err) },
            &err,
        )
    }

    /// Evaluates `batch` and writes `outputs` (rows in increasing order). Allocates nothing
    /// once the context has served as many outputs before.
    pub fn forward(&mut self, batch: &Batch<'_>, outputs: &mut [RowOutput<'_>]) -> CallResult<()> {
        let n = batch.len();
        if batch.positions.len() != n || batch.seq_ids.len() != n {
            return Err(CallError::new(
                Status::InvalidArgument,
                "batch slices differ in length",
            ));
        }
        self.rows.clear();
        for o in outputs.iter_mut() {
            let mut r = null_row();
            r.row = u32::try_from(o.row).unwrap_or(u32::MAX);
            match &mut o.want {
                Want::Logits(l) => {
                    if l.len() != self.n_vocab {
                        return Err(CallError::new(
                            Status::InvalidArgument,
                            format!(
                                "a logits buffer of {} floats for a vocabulary of {}",
                                l.len(),
                                self.n_vocab
                            ),
                        ));
                    }
                    r.kind = OUTPUT_LOGITS;
                    r.logits = l.as_mut_ptr();
                }
                Want::TopN { ids, logits } => {
                    if ids.len() != logits.len() {
                        return Err(CallError::new(
                            Status::InvalidArgument,
                            "top-N ids and logits differ in length",
                        ));
                    }
                    r.kind = OUTPUT_TOP_N;
                    r.top_n = ids.len() as u32;
                    r.top_ids = ids.as_mut_ptr();
                    r.top_logits = logits.as_mut_ptr();
                }
            }
            r.n_banned = o.banned.len() as u32;
            r.banned = o.banned.as_ptr();
            if let Some(a) = o.allowed {
                r.n_allowed = a.len() as u32;
                // A non-null pointer even for an empty list: "nothing is allowed".
                r.allowed = if a.is_empty() {
                    std::ptr::NonNull::dangling().as_ptr()
                } else {
                    a.as_ptr()
                };
            }
            if let Some(l) = o.lse.as_deref_mut() {
                r.lse = l;
            }
            if let Some((t, out)) = o.target.as_mut() {
                r.target = i32::try_from(*t).unwrap_or(i32::MAX);
                r.target_logit = &mut **out;
            }
            self.rows.push(r);
        }
        let b = KilnBatch {
            struct_size: size_of::<KilnBatch>() as u32,
            n_tokens: n as u32,
            tokens: batch.tokens.as_ptr(),
            positions: batch.positions.as_ptr(),
            seq_ids: batch.seq_ids.as_ptr(),
        };
        let outs = KilnOutputs {
            struct_size: size_of::<KilnOutputs>() as u32,
            n_rows: self.rows.len() as u32,
            row_size: size_of::<KilnRowOutput>() as u32,
            rows: self.rows.as_ptr(),
        };
        let mut err = new_error();
        // SAFETY: every pointer is valid for the sizes the ABI documents, for the call.
        let r = check(
            unsafe { base_fn!(self.api(), forward)(self.ptr, &b, &outs, &mut err) },
            &err,
        );
        self.rows.clear();
        r
    }

    /// Evaluates a batch; returns the full logits of the rows where `want` is nonzero
    /// (`n_out * n_vocab`). A convenience for tests and tools; the runtime uses [`Self::forward`].
    pub fn forward_logits(
        &mut self,
        tokens: &[i32],
        positions: &[i32],
        seq_ids: &[i32],
        want: &[u8],
        logits: &mut Vec<f32>,
    ) -> CallResult<()> {
        let n_vocab = self.n_vocab;
        let rows: Vec<usize> = (0..want.len()).filter(|&i| want[i] != 0).collect();
        logits.resize(rows.len() * n_vocab, 0.0);
        let mut outs: Vec<RowOutput<'_>> = rows
            .iter()
            .zip(logits.chunks_exact_mut(n_vocab.max(1)))
            .map(|(&row, l)| RowOutput {
                row,
                want: Want::Logits(l),
                banned: &[],
                allowed: None,
                lse: None,
                target: None,
            })
            .collect();
        let batch = Batch {
            tokens,
            positions,
            seq_ids,
        };
        self.forward(&batch, &mut outs)
    }

    /// Evaluates a batch; returns the top-`n` and log-sum-exp of each row where `want` is
    /// nonzero. A convenience for tests and tools.
    pub fn forward_top_n(
        &mut self,
        tokens: &[i32],
        positions: &[i32],
        seq_ids: &[i32],
        want: &[u8],
        n: usize,
    ) -> CallResult<Vec<TopN>> {
        let rows: Vec<usize> = (0..want.len()).filter(|&i| want[i] != 0).collect();
        let mut tops: Vec<TopN> = rows
            .iter()
            .map(|_| TopN {
                ids: vec![0; n],
                logits: vec![0.0; n],
                lse: 0.0,
            })
            .collect();
        let mut outs: Vec<RowOutput<'_>> = rows
            .iter()
            .zip(tops.iter_mut())
            .map(|(&row, t)| RowOutput {
                row,
                want: Want::TopN {
                    ids: &mut t.ids,
                    logits: &mut t.logits,
                },
                banned: &[],
                allowed: None,
                lse: Some(&mut t.lse),
                target: None,
            })
            .collect();
        let batch = Batch {
            tokens,
            positions,
            seq_ids,
        };
        self.forward(&batch, &mut outs)?;
        drop(outs);
        Ok(tops)
    }

    /// Whether the backend can profile this context ([`CAP_PROFILE`]).
    pub fn can_profile(&self) -> bool {
        self.profile.is_some()
    }

    /// Starts (`true`, resetting the counts) or stops profiling; returns the counts so far.
    /// `None` when the backend lacks the capability.
    pub fn profile(&mut self, enable: bool) -> Option<CallResult<Profile>> {
        let f = self.profile?;
        let mut err = new_error();
        let mut out = KilnProfile::zeroed_sized();
        // SAFETY: a capability function of the documented type; valid pointers.
        let r = check(
            unsafe { f(self.ptr, enable as u32, &mut out, &mut err) },
            &err,
        );
        Some(r.map(|()| {
            Profile {
                n_forward: out.n_forward,
                ops: out.ops[..(out.n_ops as usize).min(PROFILE_MAX_OPS)]
                    .iter()
                    .map(|o| OpStat {
                        name: intern(&c_buf_to_string(&o.name)),
                        calls: o.calls,
                        nanos: o.nanos,
                    })
                    .collect(),
            }
        }))
    }
}

/// Operation names from a profile, kept for the life of the process (a handful of distinct
/// short names).
fn intern(s: &str) -> &'static str {
    use std::collections::HashSet;
    use std::sync::Mutex;
    static NAMES: Mutex<Option<HashSet<&'static str>>> = Mutex::new(None);
    let mut g = NAMES.lock().unwrap_or_else(|p| p.into_inner());
    let set = g.get_or_insert_with(HashSet::new);
    if let Some(&n) = set.get(s) {
        return n;
    }
    if set.len() >= 256 {
        return "other";
    }
    let leaked: &'static str = Box::leak(s.to_string().into_boxed_str());
    set.insert(leaked);
    leaked
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_differ_between_minors() {
        use crate::abi::layout::FINGERPRINT;
        assert_eq!(known_fingerprint(ABI_MINOR), Some(FINGERPRINT));
        assert_ne!(fingerprint_at(0), fingerprint_at(1));
        assert_eq!(known_fingerprint(ABI_MINOR + 1), None);
        assert!(api_size_at(0) < api_size_at(1));
    }
}
