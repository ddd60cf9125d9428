//! Backend-side glue: turns a [`Backend`] implementation into the C function table.
//! Every exported function checks its pointers, catches panics and reports errors through the
//! host's [`KilnError`]; backend authors use `export_backend!` and never see this code.

use super::types::*;
use crate::backend::{
    Backend, BackendError, BackendOptions, Batch, Context, ContextParams, ErrorKind, Model, Outputs,
};
use crate::gguf::{parse_value, Gguf, MetaEntry, TensorInfo, ValueType};
use crate::quant::GgmlType;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

/// Copies `s` into a fixed C string buffer, truncating at a char boundary and NUL-terminating.
pub fn write_c_str(buf: &mut [u8], s: &str) {
    let Some(cap) = buf.len().checked_sub(1) else {
        return;
    };
    let mut n = s.len().min(cap);
    while n > 0 && !s.is_char_boundary(n) {
        n -= 1;
    }
    buf[..n].copy_from_slice(&s.as_bytes()[..n]);
    buf[n] = 0;
}

fn status_of(kind: ErrorKind) -> Status {
    match kind {
        ErrorKind::InvalidArgument => Status::InvalidArgument,
        ErrorKind::Unsupported => Status::Unsupported,
        ErrorKind::OutOfMemory => Status::OutOfMemory,
        ErrorKind::ContextFull => Status::ContextFull,
        ErrorKind::Internal => Status::Internal,
    }
}

unsafe fn report(err: *mut KilnError, status: Status, msg: &str) -> i32 {
    if let Some(e) = err.as_mut() {
        e.code = status as i32;
        write_c_str(&mut e.message, msg);
    }
    status as i32
}

/// Runs `f`, converting errors and panics into a status code plus message in `err`.
unsafe fn guard(err: *mut KilnError, f: impl FnOnce() -> Result<(), BackendError>) -> i32 {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(())) => Status::Ok as i32,
        Ok(Err(e)) => report(err, status_of(e.kind), &e.message),
        Err(payload) => {
            let what = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            report(err, Status::Panic, &format!("backend panicked: {what}"))
        }
    }
}

fn null(what: &str) -> BackendError {
    BackendError::invalid(format!("null pointer: {what}"))
}

unsafe fn bytes<'a>(s: KilnStr, what: &str) -> Result<&'a [u8], BackendError> {
    if s.len == 0 {
        return Ok(&[]);
    }
    if s.ptr.is_null() {
        return Err(null(what));
    }
    let len = usize::try_from(s.len)
        .map_err(|_| BackendError::invalid(format!("{what}: length too large")))?;
    Ok(std::slice::from_raw_parts(s.ptr, len))
}

unsafe fn slice<'a, T>(p: *const T, n: u64, what: &str) -> Result<&'a [T], BackendError> {
    if n == 0 {
        return Ok(&[]);
    }
    if p.is_null() {
        return Err(null(what));
    }
    let n = usize::try_from(n)
        .map_err(|_| BackendError::invalid(format!("{what}: count too large")))?;
    Ok(std::slice::from_raw_parts(p, n))
}

unsafe fn slice_mut<'a, T>(p: *mut T, n: usize, what: &str) -> Result<&'a mut [T], BackendError> {
    if n == 0 {
        return Ok(&mut []);
    }
    if p.is_null() {
        return Err(null(what));
    }
    Ok(std::slice::from_raw_parts_mut(p, n))
}

/// Rebuilds the SDK's [`Gguf`] from the host's C view.
///
/// # Safety
/// `view` and everything it points to must stay valid and unchanged for `'static` — in ABI
/// terms, until the model loaded from it is freed.
pub unsafe fn gguf_from_view(view: &KilnGgufView) -> Result<Gguf<'static>, BackendError> {
    if (view.struct_size as usize) < std::mem::size_of::<KilnGgufView>() {
        return Err(BackendError::invalid(
            "GGUF view struct is smaller than ABI 1.0's",
        ));
    }
    let kvs = slice(view.kv, view.n_kv, "view.kv")?;
    let mut metadata = Vec::with_capacity(kvs.len());
    for kv in kvs {
        let key = std::str::from_utf8(bytes(kv.key, "metadata key")?)
            .map_err(|_| BackendError::invalid("metadata key is not UTF-8"))?;
        let value_type = ValueType::from_u32(kv.value_type).ok_or_else(|| {
            BackendError::invalid(format!(
                "metadata {key}: unknown value type {}",
                kv.value_type
            ))
        })?;
        let raw = bytes(kv.raw, "metadata value")?;
        let value = parse_value(value_type, raw)?;
        metadata.push(MetaEntry {
            key,
            value_type,
            raw,
            value,
        });
    }
    let descs = slice(view.tensors, view.n_tensors, "view.tensors")?;
    let mut tensors = Vec::with_capacity(descs.len());
    for d in descs {
        let name = std::str::from_utf8(bytes(d.name, "tensor name")?)
            .map_err(|_| BackendError::invalid("tensor name is not UTF-8"))?;
        let ty = GgmlType::from_u32(d.ggml_type).ok_or_else(|| {
            BackendError::unsupported(format!("tensor {name}: unknown ggml type {}", d.ggml_type))
        })?;
        if d.n_dims == 0 || d.n_dims > 4 {
            return Err(BackendError::invalid(format!(
                "tensor {name}: {} dims",
                d.n_dims
            )));
        }
        let dims = d.dims[..d.n_dims as usize].to_vec();
        let n_el = dims.iter().try_fold(1u64, |a, &x| a.checked_mul(x));
        let want = n_el.and_then(|n| ty.bytes_for(n));
        if want != Some(d.n_bytes) {
            return Err(BackendError::invalid(format!(
                "tensor {name}: {} bytes for {ty} {:?}",
                d.n_bytes, dims
            )));
        }
        let data = slice(d.data, d.n_bytes, "tensor data")?;
        tensors.push(TensorInfo {
            name,
            ty,
            dims,
            offset: 0,
            data,
        });
    }
    Ok(Gguf::from_parts(
        view.version,
        view.alignment,
        metadata,
        tensors,
    )?)
}

struct BackendHandle<B: Backend> {
    backend: B,
}

struct ModelHandle<M: Model> {
    model: Arc<M>,
    n_vocab: usize,
}

struct ContextHandle<C: Context> {
    ctx: C,
    n_vocab: usize,
}

unsafe extern "C" fn get_info<B: Backend>(out: *mut KilnBackendInfo, err: *mut KilnError) -> i32 {
    guard(err, || {
        let out = out.as_mut().ok_or_else(|| null("out"))?;
        write_c_str(&mut out.name, B::NAME);
        write_c_str(&mut out.version, B::VERSION);
        write_c_str(&mut out.description, B::DESCRIPTION);
        out.n_devices = B::devices().len() as u32;
        Ok(())
    })
}

unsafe extern "C" fn get_device<B: Backend>(
    index: u32,
    out: *mut KilnDeviceInfo,
    err: *mut KilnError,
) -> i32 {
    guard(err, || {
        let out = out.as_mut().ok_or_else(|| null("out"))?;
        let devs = B::devices();
        let d = devs.get(index as usize).ok_or_else(|| {
            BackendError::invalid(format!("no device {index} ({} devices)", devs.len()))
        })?;
        write_c_str(&mut out.name, &d.name);
        out.kind = if d.is_gpu { DEVICE_GPU } else { DEVICE_CPU };
        out.total_memory = d.total_memory;
        out.free_memory = d.free_memory;
        Ok(())
    })
}

unsafe extern "C" fn get_score<B: Backend>(out: *mut KilnScore, err: *mut KilnError) -> i32 {
    guard(err, || {
        let out = out.as_mut().ok_or_else(|| null("out"))?;
        let s = B::score();
        out.score = s.score;
        write_c_str(&mut out.reason, &s.reason);
        Ok(())
    })
}

unsafe extern "C" fn supports_type<B: Backend>(ty: u32, out: *mut u8, err: *mut KilnError) -> i32 {
    guard(err, || {
        let out = out.as_mut().ok_or_else(|| null("out"))?;
        *out = GgmlType::from_u32(ty).is_some_and(B::supports_type) as u8;
        Ok(())
    })
}

unsafe extern "C" fn backend_create<B: Backend>(
    opts: *const KilnBackendOptions,
    out: *mut *mut KilnBackend,
    err: *mut KilnError,
) -> i32 {
    guard(err, || {
        let opts = opts.as_ref().ok_or_else(|| null("opts"))?;
        let out = out.as_mut().ok_or_else(|| null("out"))?;
        let o = BackendOptions {
            n_threads: opts.n_threads,
            device: opts.device,
        };
        let backend = B::create(&o)?;
        *out = Box::into_raw(Box::new(BackendHandle { backend })) as *mut KilnBackend;
        Ok(())
    })
}

unsafe extern "C" fn backend_destroy<B: Backend>(backend: *mut KilnBackend) {
    if !backend.is_null() {
        let _ = catch_unwind(AssertUnwindSafe(|| {
            drop(Box::from_raw(backend as *mut BackendHandle<B>))
        }));
    }
}

unsafe extern "C" fn model_load<B: Backend>(
    backend: *mut KilnBackend,
    view: *const KilnGgufView,
    params: *const KilnModelParams,
    out: *mut *mut KilnModel,
    err: *mut KilnError,
) -> i32 {
    guard(err, || {
        let h = (backend as *const BackendHandle<B>)
            .as_ref()
            .ok_or_else(|| null("backend"))?;
        let view = view.as_ref().ok_or_else(|| null("view"))?;
        params.as_ref().ok_or_else(|| null("params"))?;
        let out = out.as_mut().ok_or_else(|| null("out"))?;
        let gguf = gguf_from_view(view)?;
        let model = h.backend.load_model(&gguf)?;
        let n_vocab = model.info().n_vocab as usize;
        let handle = ModelHandle {
            model: Arc::new(model),
            n_vocab,
        };
        *out = Box::into_raw(Box::new(handle)) as *mut KilnModel;
        Ok(())
    })
}

unsafe extern "C" fn model_info<B: Backend>(
    model: *const KilnModel,
    out: *mut KilnModelInfo,
    err: *mut KilnError,
) -> i32 {
    guard(err, || {
        let h = (model as *const ModelHandle<B::Model>)
            .as_ref()
            .ok_or_else(|| null("model"))?;
        let out = out.as_mut().ok_or_else(|| null("out"))?;
        let i = h.model.info();
        out.n_vocab = i.n_vocab;
        out.n_ctx_train = i.n_ctx_train;
        out.n_layer = i.n_layer;
        out.n_embd = i.n_embd;
        out.weight_bytes = i.weight_bytes;
        out.kv_bytes_per_token = i.kv_bytes_per_token;
        write_c_str(&mut out.arch, &i.arch);
        Ok(())
    })
}

unsafe extern "C" fn model_free<B: Backend>(model: *mut KilnModel) {
    if !model.is_null() {
        let _ = catch_unwind(AssertUnwindSafe(|| {
            drop(Box::from_raw(model as *mut ModelHandle<B::Model>))
        }));
    }
}

unsafe extern "C" fn context_create<B: Backend>(
    model: *const KilnModel,
    params: *const KilnContextParams,
    out: *mut *mut KilnContext,
    err: *mut KilnError,
) -> i32 {
    guard(err, || {
        let h = (model as *const ModelHandle<B::Model>)
            .as_ref()
            .ok_or_else(|| null("model"))?;
        let p = params.as_ref().ok_or_else(|| null("params"))?;
        let out = out.as_mut().ok_or_else(|| null("out"))?;
        let kv_type = GgmlType::from_u32(p.kv_type)
            .ok_or_else(|| BackendError::invalid(format!("unknown KV type {}", p.kv_type)))?;
        let params = ContextParams {
            n_ctx: p.n_ctx,
            n_seq_max: p.n_seq_max,
            kv_type,
        };
        let ctx = h.model.create_context(&params)?;
        let handle = ContextHandle {
            ctx,
            n_vocab: h.n_vocab,
        };
        *out = Box::into_raw(Box::new(handle)) as *mut KilnContext;
        Ok(())
    })
}

unsafe extern "C" fn context_info<B: Backend>(
    ctx: *const KilnContext,
    out: *mut KilnContextInfo,
    err: *mut KilnError,
) -> i32 {
    guard(err, || {
        let h = (ctx as *const ContextHandle<<B::Model as Model>::Context>)
            .as_ref()
            .ok_or_else(|| null("ctx"))?;
        let out = out.as_mut().ok_or_else(|| null("out"))?;
        let i = h.ctx.info();
        out.n_ctx = i.n_ctx;
        out.n_seq_max = i.n_seq_max;
        out.kv_bytes = i.kv_bytes;
        Ok(())
    })
}

unsafe extern "C" fn context_free<B: Backend>(ctx: *mut KilnContext) {
    if !ctx.is_null() {
        let _ = catch_unwind(AssertUnwindSafe(|| {
            drop(Box::from_raw(
                ctx as *mut ContextHandle<<B::Model as Model>::Context>,
            ))
        }));
    }
}

unsafe fn ctx_mut<'a, B: Backend>(
    ctx: *mut KilnContext,
) -> Result<&'a mut ContextHandle<<B::Model as Model>::Context>, BackendError> {
    (ctx as *mut ContextHandle<<B::Model as Model>::Context>)
        .as_mut()
        .ok_or_else(|| null("ctx"))
}

unsafe extern "C" fn seq_clear<B: Backend>(
    ctx: *mut KilnContext,
    seq: i32,
    err: *mut KilnError,
) -> i32 {
    guard(err, || ctx_mut::<B>(ctx)?.ctx.seq_clear(seq))
}

unsafe extern "C" fn seq_truncate<B: Backend>(
    ctx: *mut KilnContext,
    seq: i32,
    n_keep: u32,
    err: *mut KilnError,
) -> i32 {
    guard(err, || ctx_mut::<B>(ctx)?.ctx.seq_truncate(seq, n_keep))
}

unsafe extern "C" fn seq_copy<B: Backend>(
    ctx: *mut KilnContext,
    src: i32,
    dst: i32,
    n: u32,
    err: *mut KilnError,
) -> i32 {
    guard(err, || ctx_mut::<B>(ctx)?.ctx.seq_copy(src, dst, n))
}

unsafe extern "C" fn forward<B: Backend>(
    ctx: *mut KilnContext,
    batch: *const KilnBatch,
    out: *const KilnOutputs,
    err: *mut KilnError,
) -> i32 {
    guard(err, || {
        let h = ctx_mut::<B>(ctx)?;
        let b = batch.as_ref().ok_or_else(|| null("batch"))?;
        let o = out.as_ref().ok_or_else(|| null("outputs"))?;
        let n = b.n_tokens as u64;
        let batch = Batch {
            tokens: slice(b.tokens, n, "batch.tokens")?,
            positions: slice(b.positions, n, "batch.positions")?,
            seq_ids: slice(b.seq_ids, n, "batch.seq_ids")?,
            want_output: slice(b.want_output, n, "batch.want_output")?,
        };
        let n_out = batch.n_outputs();
        if n_out != o.n_outputs as usize {
            return Err(BackendError::invalid(format!(
                "outputs.n_outputs is {} but the batch wants {n_out} rows",
                o.n_outputs
            )));
        }
        let mut outputs = match o.mode {
            OUTPUT_LOGITS => {
                Outputs::Logits(slice_mut(o.logits, n_out * h.n_vocab, "outputs.logits")?)
            }
            OUTPUT_TOP_N => {
                let k = o.top_n as usize;
                if k == 0 || k > h.n_vocab {
                    return Err(BackendError::invalid(format!(
                        "top_n {k} out of 1..={}",
                        h.n_vocab
                    )));
                }
                Outputs::TopN {
                    n: k,
                    ids: slice_mut(o.top_ids, n_out * k, "outputs.top_ids")?,
                    logits: slice_mut(o.top_logits, n_out * k, "outputs.top_logits")?,
                    lse: slice_mut(o.lse, n_out, "outputs.lse")?,
                }
            }
            m => return Err(BackendError::invalid(format!("unknown output mode {m}"))),
        };
        h.ctx.forward(&batch, &mut outputs)
    })
}

/// The function table for backend `B` (used by `export_backend!`).
pub const fn api_table<B: Backend>() -> KilnBackendApi {
    KilnBackendApi {
        struct_size: std::mem::size_of::<KilnBackendApi>() as u32,
        get_info: get_info::<B>,
        get_device: get_device::<B>,
        get_score: get_score::<B>,
        supports_type: supports_type::<B>,
        backend_create: backend_create::<B>,
        backend_destroy: backend_destroy::<B>,
        model_load: model_load::<B>,
        model_info: model_info::<B>,
        model_free: model_free::<B>,
        context_create: context_create::<B>,
        context_info: context_info::<B>,
        context_free: context_free::<B>,
        seq_clear: seq_clear::<B>,
        seq_truncate: seq_truncate::<B>,
        seq_copy: seq_copy::<B>,
        forward: forward::<B>,
    }
}

/// The header pointing at `api` (used by `export_backend!`).
pub const fn header(api: &'static ExportedApi) -> KilnBackendHeader {
    KilnBackendHeader {
        magic: ABI_MAGIC,
        abi_major: ABI_MAJOR,
        abi_minor: ABI_MINOR,
        header_size: std::mem::size_of::<KilnBackendHeader>() as u32,
        api_size: std::mem::size_of::<KilnBackendApi>() as u32,
        layout_fingerprint: super::layout::FINGERPRINT,
        sdk_version: concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr(),
        api: &api.0,
    }
}

/// Exports `$ty` (a [`crate::backend::Backend`]) as a Kiln backend library: defines the
/// `kiln_backend_header` symbol the host looks for. Use once, in a `cdylib` crate.
#[macro_export]
macro_rules! export_backend {
    ($ty:ty) => {
        #[doc(hidden)]
        static __KILN_BACKEND_API: $crate::abi::ExportedApi =
            $crate::abi::ExportedApi($crate::abi::export::api_table::<$ty>());
        /// The Kiln backend header (ABI entry point).
        #[no_mangle]
        #[allow(non_upper_case_globals)]
        pub static kiln_backend_header: $crate::abi::ExportedHeader =
            $crate::abi::ExportedHeader($crate::abi::export::header(&__KILN_BACKEND_API));
    };
}
