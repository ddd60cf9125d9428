//! Host-side glue: checks a library's header and wraps its function table in safe types
//! ([`BackendLib`] → [`Instance`] → [`LoadedModel`] → [`ModelContext`]). Used by the `kiln`
//! host and by the conformance suite; any host written in Rust can use it.

use super::layout::FINGERPRINT;
use super::types::*;
use crate::gguf::Gguf;
use crate::quant::GgmlType;
use std::any::Any;
use std::fmt;
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
        Err(CallError {
            status: Status::from_code(code),
            message: c_buf_to_string(&err.message),
        })
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

/// The layout fingerprint of each ABI minor version this SDK knows (appending fields to a table
/// makes a new minor with a new fingerprint; add it here).
pub fn known_fingerprint(minor: u16) -> Option<u64> {
    match minor {
        ABI_MINOR => Some(FINGERPRINT),
        _ => None,
    }
}

/// Checks a library's header against this SDK. Reads only the header (and its SDK version
/// string): nothing of the library is called.
///
/// # Safety
/// `h` must be null or point to the library's exported header symbol.
pub unsafe fn check_header(h: *const KilnBackendHeader) -> Result<&'static KilnBackendApi, String> {
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
        read_c_str(h.sdk_version, 64)
    );
    if h.abi_major != ABI_MAJOR {
        return Err(format!(
            "incompatible backend ABI: the library was built for {theirs}; this host speaks {ours}"
        ));
    }
    if (h.header_size as usize) < std::mem::size_of::<KilnBackendHeader>() {
        return Err(format!(
            "corrupt backend header ({theirs}): header_size {} is smaller than {}",
            h.header_size,
            std::mem::size_of::<KilnBackendHeader>()
        ));
    }
    // Tables only grow by appending: a library of a newer minor carries our layout as a prefix;
    // one of a minor we know must carry exactly that minor's fingerprint.
    if known_fingerprint(h.abi_minor).is_some_and(|fp| fp != h.layout_fingerprint) {
        return Err(format!(
            "incompatible backend ABI layout: the library ({theirs}) has layout fingerprint \
             0x{:016x}, this host ({ours}) expects 0x{FINGERPRINT:016x}; rebuild it against this SDK",
            h.layout_fingerprint
        ));
    }
    if (h.api_size as usize) < std::mem::size_of::<KilnBackendApi>() {
        return Err(format!(
            "incompatible backend ({theirs}): its function table has {} bytes, this host needs {}",
            h.api_size,
            std::mem::size_of::<KilnBackendApi>()
        ));
    }
    let api = h
        .api
        .as_ref()
        .ok_or_else(|| format!("corrupt backend header ({theirs}): null table"))?;
    if api.struct_size != h.api_size {
        return Err(format!(
            "corrupt backend header ({theirs}): table size {} disagrees with header {}",
            api.struct_size, h.api_size
        ));
    }
    Ok(api)
}

/// Name, version and description of a backend.
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

/// A checked backend library.
#[derive(Clone)]
pub struct BackendLib {
    api: &'static KilnBackendApi,
    _keep: KeepAlive,
}

impl BackendLib {
    /// Checks `header` and wraps the library.
    ///
    /// # Safety
    /// `header` must be the library's exported header and `keep` must keep the library loaded.
    pub unsafe fn new(header: *const KilnBackendHeader, keep: KeepAlive) -> Result<Self, String> {
        let api = check_header(header)?;
        Ok(BackendLib { api, _keep: keep })
    }

    /// Name, version, description and device count.
    pub fn describe(&self) -> CallResult<BackendDescription> {
        let mut err = new_error();
        let mut out = KilnBackendInfo {
            name: [0; 64],
            version: [0; 64],
            description: [0; 256],
            n_devices: 0,
        };
        // SAFETY: valid out pointers; the table was checked.
        check(unsafe { (self.api.get_info)(&mut out, &mut err) }, &err)?;
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
        let mut out = KilnDeviceInfo {
            name: [0; 128],
            kind: 0,
            total_memory: 0,
            free_memory: 0,
        };
        // SAFETY: valid out pointers.
        check(
            unsafe { (self.api.get_device)(index, &mut out, &mut err) },
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
        let mut out = KilnScore {
            score: 0,
            reason: [0; 256],
        };
        // SAFETY: valid out pointers.
        check(unsafe { (self.api.get_score)(&mut out, &mut err) }, &err)?;
        Ok((out.score, c_buf_to_string(&out.reason)))
    }

    /// Whether weights of `ty` are supported.
    pub fn supports_type(&self, ty: GgmlType) -> CallResult<bool> {
        let mut err = new_error();
        let mut out = 0u8;
        // SAFETY: valid out pointers.
        check(
            unsafe { (self.api.supports_type)(ty as u32, &mut out, &mut err) },
            &err,
        )?;
        Ok(out != 0)
    }

    /// Creates an instance with `n_threads` (0 = all) on device `device`.
    pub fn create(&self, n_threads: u32, device: u32) -> CallResult<Instance> {
        let mut err = new_error();
        let opts = KilnBackendOptions {
            struct_size: std::mem::size_of::<KilnBackendOptions>() as u32,
            n_threads,
            device,
        };
        let mut out: *mut KilnBackend = std::ptr::null_mut();
        // SAFETY: valid pointers.
        check(
            unsafe { (self.api.backend_create)(&opts, &mut out, &mut err) },
            &err,
        )?;
        if out.is_null() {
            return Err(CallError {
                status: Status::Internal,
                message: "backend_create returned null".into(),
            });
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
        unsafe { (self.lib.api.backend_destroy)(self.ptr) }
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

impl Instance {
    /// Loads a model from a parsed GGUF.
    ///
    /// # Safety
    /// Every slice `gguf` borrows must live inside `keep` (e.g. the file's mapping), which the
    /// returned model keeps alive.
    pub unsafe fn load_model(&self, gguf: &Gguf<'_>, keep: KeepAlive) -> CallResult<LoadedModel> {
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
            struct_size: std::mem::size_of::<KilnGgufView>() as u32,
            version: gguf.version,
            alignment: gguf.alignment,
            n_kv: kv.len() as u64,
            kv: kv.as_ptr(),
            n_tensors: tensors.len() as u64,
            tensors: tensors.as_ptr(),
        });
        let storage = ViewStorage {
            _kv: kv,
            _tensors: tensors,
            view,
        };
        let params = KilnModelParams {
            struct_size: std::mem::size_of::<KilnModelParams>() as u32,
            flags: 0,
        };
        let mut err = new_error();
        let mut out: *mut KilnModel = std::ptr::null_mut();
        let api = self.inner.lib.api;
        check(
            (api.model_load)(self.inner.ptr, &*storage.view, &params, &mut out, &mut err),
            &err,
        )?;
        if out.is_null() {
            return Err(CallError {
                status: Status::Internal,
                message: "model_load returned null".into(),
            });
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
    fn api(&self) -> &'static KilnBackendApi {
        self.instance.inner.lib.api
    }
    fn info(&self) -> CallResult<ModelFacts> {
        let mut err = new_error();
        let mut o = KilnModelInfo {
            n_vocab: 0,
            n_ctx_train: 0,
            n_layer: 0,
            n_embd: 0,
            weight_bytes: 0,
            kv_bytes_per_token: 0,
            arch: [0; 32],
        };
        // SAFETY: valid pointers.
        check(
            unsafe { (self.api().model_info)(self.ptr, &mut o, &mut err) },
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
        unsafe { (self.api().model_free)(self.ptr) }
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

    /// Creates a context of `n_seq_max` sequences × `n_ctx` positions with an f16 KV cache.
    pub fn create_context(&self, n_ctx: u32, n_seq_max: u32) -> CallResult<ModelContext> {
        let params = KilnContextParams {
            struct_size: std::mem::size_of::<KilnContextParams>() as u32,
            n_ctx,
            n_seq_max,
            kv_type: GgmlType::F16 as u32,
        };
        let mut err = new_error();
        let mut out: *mut KilnContext = std::ptr::null_mut();
        // SAFETY: valid pointers.
        check(
            unsafe {
                (self.inner.api().context_create)(self.inner.ptr, &params, &mut out, &mut err)
            },
            &err,
        )?;
        if out.is_null() {
            return Err(CallError {
                status: Status::Internal,
                message: "context_create returned null".into(),
            });
        }
        Ok(ModelContext {
            model: self.inner.clone(),
            ptr: out,
            n_vocab: self.info.n_vocab as usize,
        })
    }
}

/// A context (KV cache) of a loaded model. Use from one thread at a time.
pub struct ModelContext {
    model: Arc<ModelInner>,
    ptr: *mut KilnContext,
    n_vocab: usize,
}
// SAFETY: owned handle, &mut access only.
unsafe impl Send for ModelContext {}

impl Drop for ModelContext {
    fn drop(&mut self) {
        // SAFETY: created by context_create.
        unsafe { (self.model.api().context_free)(self.ptr) }
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

impl ModelContext {
    /// Vocabulary size.
    pub fn n_vocab(&self) -> usize {
        self.n_vocab
    }

    /// Positions per sequence, sequences, KV bytes.
    pub fn info(&self) -> CallResult<(u32, u32, u64)> {
        let mut err = new_error();
        let mut o = KilnContextInfo {
            n_ctx: 0,
            n_seq_max: 0,
            kv_bytes: 0,
        };
        // SAFETY: valid pointers.
        check(
            unsafe { (self.model.api().context_info)(self.ptr, &mut o, &mut err) },
            &err,
        )?;
        Ok((o.n_ctx, o.n_seq_max, o.kv_bytes))
    }

    /// Forgets sequence `seq`.
    pub fn seq_clear(&mut self, seq: i32) -> CallResult<()> {
        let mut err = new_error();
        // SAFETY: valid pointers.
        check(
            unsafe { (self.model.api().seq_clear)(self.ptr, seq, &mut err) },
            &err,
        )
    }

    /// Keeps positions `0..n_keep` of `seq`.
    pub fn seq_truncate(&mut self, seq: i32, n_keep: u32) -> CallResult<()> {
        let mut err = new_error();
        // SAFETY: valid pointers.
        check(
            unsafe { (self.model.api().seq_truncate)(self.ptr, seq, n_keep, &mut err) },
            &err,
        )
    }

    /// Makes `dst` hold positions `0..n` of `src`.
    pub fn seq_copy(&mut self, src: i32, dst: i32, n: u32) -> CallResult<()> {
        let mut err = new_error();
        // SAFETY: valid pointers.
        check(
            unsafe { (self.model.api().seq_copy)(self.ptr, src, dst, n, &mut err) },
            &err,
        )
    }

    fn batch(
        tokens: &[i32],
        positions: &[i32],
        seq_ids: &[i32],
        want: &[u8],
    ) -> CallResult<KilnBatch> {
        let n = tokens.len();
        if positions.len() != n || seq_ids.len() != n || want.len() != n {
            return Err(CallError {
                status: Status::InvalidArgument,
                message: "batch slices differ in length".into(),
            });
        }
        Ok(KilnBatch {
            n_tokens: n as u32,
            tokens: tokens.as_ptr(),
            positions: positions.as_ptr(),
            seq_ids: seq_ids.as_ptr(),
            want_output: want.as_ptr(),
        })
    }

    /// Evaluates a batch; returns the full logits of the wanted rows (`n_out * n_vocab`).
    pub fn forward_logits(
        &mut self,
        tokens: &[i32],
        positions: &[i32],
        seq_ids: &[i32],
        want: &[u8],
        logits: &mut Vec<f32>,
    ) -> CallResult<()> {
        let batch = Self::batch(tokens, positions, seq_ids, want)?;
        let n_out = want.iter().filter(|&&w| w != 0).count();
        logits.resize(n_out * self.n_vocab, 0.0);
        let out = KilnOutputs {
            mode: OUTPUT_LOGITS,
            n_outputs: n_out as u32,
            logits: logits.as_mut_ptr(),
            top_n: 0,
            top_ids: std::ptr::null_mut(),
            top_logits: std::ptr::null_mut(),
            lse: std::ptr::null_mut(),
        };
        let mut err = new_error();
        // SAFETY: every pointer is valid for the sizes the ABI documents.
        check(
            unsafe { (self.model.api().forward)(self.ptr, &batch, &out, &mut err) },
            &err,
        )
    }

    /// Evaluates a batch; returns the device-side top-`n` of each wanted row.
    pub fn forward_top_n(
        &mut self,
        tokens: &[i32],
        positions: &[i32],
        seq_ids: &[i32],
        want: &[u8],
        n: usize,
    ) -> CallResult<Vec<TopN>> {
        let batch = Self::batch(tokens, positions, seq_ids, want)?;
        let n_out = want.iter().filter(|&&w| w != 0).count();
        let mut ids = vec![0i32; n_out * n];
        let mut logits = vec![0f32; n_out * n];
        let mut lse = vec![0f32; n_out];
        let out = KilnOutputs {
            mode: OUTPUT_TOP_N,
            n_outputs: n_out as u32,
            logits: std::ptr::null_mut(),
            top_n: n as u32,
            top_ids: ids.as_mut_ptr(),
            top_logits: logits.as_mut_ptr(),
            lse: lse.as_mut_ptr(),
        };
        let mut err = new_error();
        // SAFETY: every pointer is valid for the sizes the ABI documents.
        check(
            unsafe { (self.model.api().forward)(self.ptr, &batch, &out, &mut err) },
            &err,
        )?;
        Ok((0..n_out)
            .map(|r| TopN {
                ids: ids[r * n..(r + 1) * n].to_vec(),
                logits: logits[r * n..(r + 1) * n].to_vec(),
                lse: lse[r],
            })
            .collect())
    }
}
