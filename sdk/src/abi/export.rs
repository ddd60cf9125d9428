//! Backend-side glue: turns a [`Backend`] implementation into the C function table.
//! Every exported function checks its pointers, catches panics and reports errors through the
//! host's [`KilnError`]; backend authors use `export_backend!` and never see this code.

use super::types::*;
use crate::backend::{
    Backend, BackendError, BackendOptions, Batch, Context, ContextParams, ErrorKind, Model,
    RowOutput, Want,
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

/// A struct of the ABI that may grow in later minors: `BASE` is its size in the major's base
/// layout (the least a peer may give), and it starts with its `struct_size`.
pub(crate) trait Grows: Sized {
    /// Size in the base layout of the major version.
    const BASE: usize;
    /// Name for error messages.
    const NAME: &'static str;
}

macro_rules! grows {
    ($($t:ty),*) => {$(
        impl Grows for $t {
            const BASE: usize = std::mem::size_of::<$t>();
            const NAME: &'static str = stringify!($t);
        }
    )*};
}
grows!(
    KilnBackendInfo,
    KilnDeviceInfo,
    KilnScore,
    KilnBackendOptions,
    KilnGgufView,
    KilnModelParams,
    KilnModelInfo,
    KilnContextParams,
    KilnContextInfo,
    KilnBatch,
    KilnOutputs,
    KilnProfile
);

/// The `struct_size` a peer wrote at the start of `p`, checked against `T`'s base size.
///
/// # Safety
/// `p` must be null or point to at least 4 readable bytes.
unsafe fn given_size<T: Grows>(p: *const T) -> Result<usize, BackendError> {
    let n = (p as *const u32)
        .as_ref()
        .map(|&n| n as usize)
        .ok_or_else(|| null(T::NAME))?;
    if n < T::BASE {
        return Err(BackendError::invalid(format!(
            "{}: struct_size {n} is smaller than the {} bytes of ABI {ABI_MAJOR}.0",
            T::NAME,
            T::BASE
        )));
    }
    Ok(n)
}

/// Reads a struct the host filled: the bytes both sides know; fields past the host's
/// `struct_size` read as zero.
///
/// # Safety
/// `p` must point to `struct_size` readable bytes; an all-zero `T` must be valid.
unsafe fn read_in<T: Grows>(p: *const T) -> Result<T, BackendError> {
    let n = given_size(p)?.min(std::mem::size_of::<T>());
    let mut v = std::mem::MaybeUninit::<T>::zeroed();
    std::ptr::copy_nonoverlapping(p as *const u8, v.as_mut_ptr() as *mut u8, n);
    Ok(v.assume_init())
}

/// Writes `value` into a struct the host allocated: only the bytes both sides know, and never
/// its `struct_size` (the first 4 bytes).
///
/// # Safety
/// `p` must point to `struct_size` writable bytes.
unsafe fn write_out<T: Grows>(p: *mut T, value: &T) -> Result<(), BackendError> {
    let n = given_size(p)?.min(std::mem::size_of::<T>());
    std::ptr::copy_nonoverlapping(
        (value as *const T as *const u8).add(4),
        (p as *mut u8).add(4),
        n - 4,
    );
    Ok(())
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
pub unsafe fn gguf_from_view(view: *const KilnGgufView) -> Result<Gguf<'static>, BackendError> {
    let view = read_in(view)?;
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
    /// The output requests of a call, kept for their capacity (empty between calls).
    outs: Vec<RowOutput<'static>>,
}

unsafe extern "C" fn get_info<B: Backend>(out: *mut KilnBackendInfo, err: *mut KilnError) -> i32 {
    guard(err, || {
        let mut v = KilnBackendInfo {
            struct_size: 0,
            name: [0; 64],
            version: [0; 64],
            description: [0; 256],
            n_devices: B::devices().len() as u32,
        };
        write_c_str(&mut v.name, B::NAME);
        write_c_str(&mut v.version, B::VERSION);
        write_c_str(&mut v.description, B::DESCRIPTION);
        write_out(out, &v)
    })
}

unsafe extern "C" fn get_device<B: Backend>(
    index: u32,
    out: *mut KilnDeviceInfo,
    err: *mut KilnError,
) -> i32 {
    guard(err, || {
        given_size(out)?;
        let devs = B::devices();
        let d = devs.get(index as usize).ok_or_else(|| {
            BackendError::invalid(format!("no device {index} ({} devices)", devs.len()))
        })?;
        let mut v = KilnDeviceInfo {
            struct_size: 0,
            name: [0; 128],
            kind: if d.is_gpu { DEVICE_GPU } else { DEVICE_CPU },
            total_memory: d.total_memory,
            free_memory: d.free_memory,
        };
        write_c_str(&mut v.name, &d.name);
        write_out(out, &v)
    })
}

unsafe extern "C" fn get_score<B: Backend>(out: *mut KilnScore, err: *mut KilnError) -> i32 {
    guard(err, || {
        given_size(out)?;
        write_score(out, B::score())
    })
}

unsafe fn write_score(out: *mut KilnScore, s: crate::backend::Score) -> Result<(), BackendError> {
    let mut v = KilnScore {
        struct_size: 0,
        score: s.score,
        reason: [0; 256],
    };
    write_c_str(&mut v.reason, &s.reason);
    write_out(out, &v)
}

unsafe extern "C" fn score_model<B: Backend>(
    view: *const KilnGgufView,
    out: *mut KilnScore,
    err: *mut KilnError,
) -> i32 {
    guard(err, || {
        given_size(out)?;
        let gguf = gguf_from_view(view)?;
        write_score(out, B::score_model(&gguf))
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
        let opts = read_in(opts)?;
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
        read_in(params)?;
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
        let i = h.model.info();
        let mut v = KilnModelInfo {
            struct_size: 0,
            n_vocab: i.n_vocab,
            n_ctx_train: i.n_ctx_train,
            n_layer: i.n_layer,
            n_embd: i.n_embd,
            weight_bytes: i.weight_bytes,
            kv_bytes_per_token: i.kv_bytes_per_token,
            arch: [0; 32],
        };
        write_c_str(&mut v.arch, &i.arch);
        write_out(out, &v)
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
        let p = read_in(params)?;
        let out = out.as_mut().ok_or_else(|| null("out"))?;
        let kv_type = GgmlType::from_u32(p.kv_type)
            .ok_or_else(|| BackendError::invalid(format!("unknown KV type {}", p.kv_type)))?;
        let params = ContextParams {
            n_ctx: p.n_ctx,
            n_seq_max: p.n_seq_max,
            kv_type,
            n_batch_max: p.n_batch_max,
            n_outputs_max: p.n_outputs_max,
        };
        let ctx = h.model.create_context(&params)?;
        let handle = ContextHandle {
            ctx,
            n_vocab: h.n_vocab,
            outs: Vec::with_capacity(p.n_outputs_max.min(4096) as usize),
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
        let i = h.ctx.info();
        let v = KilnContextInfo {
            struct_size: 0,
            n_ctx: i.n_ctx,
            n_seq_max: i.n_seq_max,
            n_batch_max: i.n_batch_max,
            n_outputs_max: i.n_outputs_max,
            kv_bytes: i.kv_bytes,
            scratch_bytes: i.scratch_bytes,
        };
        write_out(out, &v)
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

/// One host output request as the SDK's [`RowOutput`] (slices checked for null).
unsafe fn row_output<'a>(r: &KilnRowOutput, n_vocab: usize) -> Result<RowOutput<'a>, BackendError> {
    let want = match r.kind {
        OUTPUT_LOGITS => Want::Logits(slice_mut(r.logits, n_vocab, "outputs.logits")?),
        OUTPUT_TOP_N => {
            let k = r.top_n as usize;
            if k > n_vocab {
                return Err(BackendError::invalid(format!(
                    "top_n {k} is larger than the vocabulary ({n_vocab})"
                )));
            }
            Want::TopN {
                ids: slice_mut(r.top_ids, k, "outputs.top_ids")?,
                logits: slice_mut(r.top_logits, k, "outputs.top_logits")?,
            }
        }
        k => return Err(BackendError::invalid(format!("unknown output kind {k}"))),
    };
    let target = if r.target >= 0 && !r.target_logit.is_null() {
        Some((r.target as u32, &mut *r.target_logit))
    } else {
        None
    };
    let allowed = if r.allowed.is_null() {
        None
    } else {
        Some(slice(r.allowed, r.n_allowed as u64, "outputs.allowed")?)
    };
    Ok(RowOutput {
        row: r.row as usize,
        want,
        banned: slice(r.banned, r.n_banned as u64, "outputs.banned")?,
        allowed,
        lse: r.lse.as_mut(),
        target,
    })
}

unsafe extern "C" fn forward<B: Backend>(
    ctx: *mut KilnContext,
    batch: *const KilnBatch,
    outputs: *const KilnOutputs,
    err: *mut KilnError,
) -> i32 {
    guard(err, || {
        let h = ctx_mut::<B>(ctx)?;
        let b = read_in(batch)?;
        let o = read_in(outputs)?;
        let n = b.n_tokens as u64;
        let batch = Batch {
            tokens: slice(b.tokens, n, "batch.tokens")?,
            positions: slice(b.positions, n, "batch.positions")?,
            seq_ids: slice(b.seq_ids, n, "batch.seq_ids")?,
        };
        let stride = o.row_size as usize;
        if o.n_rows > 0 && stride < std::mem::size_of::<KilnRowOutput>() {
            return Err(BackendError::invalid(format!(
                "outputs.row_size {stride} is smaller than the {} bytes of ABI {ABI_MAJOR}.0",
                std::mem::size_of::<KilnRowOutput>()
            )));
        }
        let base = o.rows as *const u8;
        if o.n_rows > 0 && base.is_null() {
            return Err(null("outputs.rows"));
        }
        // Reuse the vector's capacity; it is emptied before returning, so no request outlives
        // the call although the vector's type says 'static.
        let mut outs: Vec<RowOutput<'static>> = std::mem::take(&mut h.outs);
        outs.clear();
        let mut r = (|| {
            for i in 0..o.n_rows as usize {
                let req = &*(base.add(i * stride) as *const KilnRowOutput);
                outs.push(row_output(req, h.n_vocab)?);
            }
            h.ctx.forward(&batch, &mut outs)
        })();
        outs.clear();
        h.outs = outs;
        if let Err(e) = &mut r {
            e.message = format!("forward: {}", e.message);
        }
        r
    })
}

unsafe extern "C" fn profile<B: Backend>(
    ctx: *mut KilnContext,
    enable: u32,
    out: *mut KilnProfile,
    err: *mut KilnError,
) -> i32 {
    guard(err, || {
        let h = ctx_mut::<B>(ctx)?;
        if !out.is_null() {
            given_size(out)?;
        }
        let p = h.ctx.profile(enable != 0)?;
        if out.is_null() {
            return Ok(());
        }
        let mut v = KilnProfile {
            struct_size: 0,
            n_forward: p.n_forward,
            n_ops: p.ops.len().min(PROFILE_MAX_OPS) as u32,
            ops: std::array::from_fn(|_| KilnOpStat {
                name: [0; 32],
                calls: 0,
                nanos: 0,
            }),
        };
        for (dst, src) in v.ops.iter_mut().zip(&p.ops) {
            write_c_str(&mut dst.name, src.name);
            dst.calls = src.calls;
            dst.nanos = src.nanos;
        }
        write_out(out, &v)
    })
}

unsafe extern "C" fn get_proc_address<B: Backend>(name: *const u8) -> *const std::ffi::c_void {
    let found = catch_unwind(|| {
        if name.is_null() {
            return std::ptr::null();
        }
        // Capability names are short; never read past 128 bytes of a missing terminator.
        let mut n = 0;
        while n < 128 && *name.add(n) != 0 {
            n += 1;
        }
        let name = std::slice::from_raw_parts(name, n);
        if name == CAP_PROFILE.as_bytes() {
            profile::<B> as ProfileFn as *const std::ffi::c_void
        } else {
            std::ptr::null()
        }
    });
    found.unwrap_or(std::ptr::null())
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
        score_model: score_model::<B>,
        get_proc_address: get_proc_address::<B>,
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
