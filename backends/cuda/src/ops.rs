//! The SDK's model operations on a CUDA device.
//!
//! - Weights: uploaded once in their GGUF block layout (vectors as f32).
//! - Activations: f32 `[capacity × cols]` device buffers that never move.
//! - KV cache: f16, `[n_seq][n_ctx][width]` per layer and for keys and values.
//! - Steps: everything a step reads from the host (tokens, positions, rows, gathered row
//!   indices) goes through one pinned staging buffer and is copied to a fixed device
//!   buffer. A step of a shape seen before (rows, output rows) is captured as a CUDA graph
//!   the second time and replayed from then on: the ops then only fill the staging buffer,
//!   and the graph (whose first nodes copy it) runs in `outputs` (or `end`).
//! - Matmuls use one kernel family whose per-row arithmetic does not depend on how many rows
//!   share the launch, so results are batch-invariant bit for bit, as the `Ops` contract asks.

use kiln_cuda::graph::{self, Graph};
use kiln_cuda::mem::{DeviceBuffer, PinnedBuffer, Stream};
use kiln_cuda::module::{launch, Args, Func, Module};
use kiln_cuda::{gpu::Gpu, nvrtc, sources, CudaError};
use kiln_sdk::backend::{BackendError, ErrorKind, Result, RowOutput, Want};
use kiln_sdk::gguf::TensorInfo;
use kiln_sdk::model::ops::{
    Activation, Attention, ExecSpec, KvShape, Ops, Rope, RopeStyle, RowPos, Step,
};
use kiln_sdk::model::select::{write_output, TopNScratch};
use kiln_sdk::quant::{dequantize_row, GgmlType};
use std::collections::HashMap;
use std::sync::Mutex;

fn cu(e: CudaError) -> BackendError {
    if e.out_of_memory {
        BackendError::new(ErrorKind::OutOfMemory, format!("CUDA: {}", e.message))
    } else {
        BackendError::internal(format!("CUDA: {}", e.message))
    }
}

fn shape_err(what: &str) -> BackendError {
    BackendError::invalid(format!("{what}: shapes do not match"))
}

/// The kernel name suffix of a weight type, if the backend has kernels for it.
pub fn kernel_type(ty: GgmlType) -> Option<&'static str> {
    Some(match ty {
        GgmlType::F32 => "f32",
        GgmlType::F16 => "f16",
        GgmlType::BF16 => "bf16",
        GgmlType::Q4_0 => "q4_0",
        GgmlType::Q4_1 => "q4_1",
        GgmlType::Q5_0 => "q5_0",
        GgmlType::Q5_1 => "q5_1",
        GgmlType::Q8_0 => "q8_0",
        GgmlType::MXFP4 => "mxfp4",
        GgmlType::Q2_K => "q2_k",
        GgmlType::Q3_K => "q3_k",
        GgmlType::Q4_K => "q4_k",
        GgmlType::Q5_K => "q5_k",
        GgmlType::Q6_K => "q6_k",
        _ => return None,
    })
}

/// The kernels a compilation unit's source defines (those its instantiation macros generate,
/// then the plain ones), for the parts it keeps ([`sources::kept`]).
pub fn unit_kernel_names(src: &str) -> Vec<String> {
    let src = sources::kept(src);
    let mut names = Vec::new();
    for line in src.lines() {
        let arg = |mac: &str| {
            line.strip_prefix(mac)
                .and_then(|r| r.split([',', ')']).next())
                .map(str::trim)
        };
        if let Some(t) = arg("MMV_INST(") {
            for r in [1, 2, 4, 8, 16] {
                names.push(format!("mmv_{t}_r{r}"));
                names.push(format!("mmv_glu_{t}_r{r}"));
            }
            names.push(format!("mmv_exp_{t}"));
            names.push(format!("embed_{t}"));
        } else if let Some(t) = arg("MMQ_INST(") {
            for k in ["d", "p"] {
                names.push(format!("mmq_{t}_{k}"));
                names.push(format!("mmq_glu_{t}_{k}"));
            }
        } else if line.starts_with("MMV_SEG_R(") {
            // MMV_SEG_R(R, O, SUFFIX): the kernel is named by its last argument.
            if let Some(sfx) = line.rsplit(',').next().and_then(|r| r.split(')').next()) {
                names.push(format!("mmv_seg_r{}", sfx.trim()));
            }
        }
    }
    names.extend(sources::kernel_names(&src));
    names
}

/// Every kernel name of the program, unit by unit ([`sources::units`]).
pub fn all_kernel_names() -> Vec<Vec<String>> {
    sources::units()
        .iter()
        .map(|u| unit_kernel_names(&u.src))
        .collect()
}

/// Rows of one attention launch group (the partial-results buffer holds this many).
const ATT_GROUP: usize = 64;
/// Most key chunks of one row.
const ATT_MAX_SPLITS: usize = 64;
/// Candidates of a top-N kept on the device per row.
const CAND_CAP: usize = 16384;
/// Candidates per row copied with the statistics in the same transfer (`OUT_FAST` in
/// `outputs.cu`); a row with more takes a second copy.
const CAND_FAST: usize = 512;
/// Histogram bins of the top-N threshold search (`OUT_BINS`).
const OUT_BINS: usize = 4096;
/// Most blocks that share one row's statistics.
const OUT_PARTS: usize = 64;
/// Longest ban list served on the device (longer: the row is served on the host).
const DEVICE_BANS: usize = 4096;
/// Largest step (rows) captured as a graph.
const GRAPH_ROWS: usize = 64;
/// Graphs kept per context.
const GRAPH_CACHE: usize = 48;

/// A weight on the device.
pub struct CudaWeight {
    buf: DeviceBuffer,
    ty: GgmlType,
    /// Input features (values per row).
    cols: usize,
    /// Rows (output features × experts).
    rows: usize,
    experts: usize,
    /// Vectors (1-D tensors) are stored as f32.
    is_vector: bool,
}

/// An f32 activation on the device.
pub struct CudaAct {
    buf: DeviceBuffer,
    rows: usize,
    cols: usize,
    cap: usize,
}

impl CudaAct {
    fn ptr(&self) -> u64 {
        self.buf.ptr()
    }
    fn n(&self) -> usize {
        self.rows * self.cols
    }
}

struct KvLayer {
    k: DeviceBuffer,
    v: DeviceBuffer,
    kw: usize,
    vw: usize,
}

/// The f16 KV cache of a context.
pub struct CudaKv {
    layers: Vec<KvLayer>,
    n_ctx: usize,
    n_seq: usize,
    bytes: u64,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    Eager,
    Capture((usize, usize)),
    Replay((usize, usize)),
}

/// Per-context execution state: stream, staging, scratch and captured graphs.
pub struct CudaExec {
    stream: Stream,
    stage_h: PinnedBuffer,
    stage_d: DeviceBuffer,
    cursor: usize,
    /// Host identity (address, length) and device copy of the step's tokens, positions, rows.
    step_tokens: (usize, usize, u64),
    step_positions: (usize, usize, u64),
    step_rows: (usize, usize, u64),
    att_part: Option<DeviceBuffer>,
    /// The prompt matmuls' input quantized ahead (`mq_quantize`): bytes for up to
    /// `n_batch_max` rows of `max_cols`, then one 8-byte scale-and-sums record per 32 values;
    /// none when the integer kernels are off or no step has prompt-sized batches.
    mq_x: Option<DeviceBuffer>,
    /// Most rows of a step and widest activation (the sizes of `mq_x`).
    n_batch_max: usize,
    max_cols: usize,
    /// Per (row, head) of an attention launch group: finished splits (zero between launches).
    att_cnt: Option<DeviceBuffer>,
    // Outputs.
    n_vocab: usize,
    n_logit_rows: usize,
    /// Per output row: lse, target logit, candidate count, unused.
    stats_d: DeviceBuffer,
    /// Per output row: `parts` (max, sum of exp) pairs, a histogram (kept zeroed between
    /// steps by the kernels), and the first `CAND_FAST` candidates.
    part_d: DeviceBuffer,
    hist_d: DeviceBuffer,
    fast_d: DeviceBuffer,
    fast_h: PinnedBuffer,
    cand_v: DeviceBuffer,
    cand_i: DeviceBuffer,
    stats_h: PinnedBuffer,
    cand_h: PinnedBuffer,
    row_h: PinnedBuffer,
    top: TopNScratch,
    // Graphs.
    mode: Mode,
    graphs: HashMap<(usize, usize), (Graph, usize)>,
    /// Kernel launches queued in this step so far.
    launches: usize,
    /// A `rope_qk` not yet launched: `attention` on the same q and k fuses it with the cache
    /// store; anything else launches it first.
    pending_rope: Option<PendingRope>,
    /// Steps run and graph replays, for `KILN_CUDA_STATS=1`.
    steps: u64,
    replays: u64,
    /// `KILN_CUDA_STATS=1`: time graphs and outputs (with a sync after each graph).
    stats: bool,
    t_step: std::time::Duration,
    t_graph: std::time::Duration,
    t_outputs: std::time::Duration,
    step_t0: Option<std::time::Instant>,
    seen: HashMap<(usize, usize), u32>,
    /// Set by kernels that find bad device-side input (an expert id out of range); checked
    /// when the stream synchronizes.
    err_d: DeviceBuffer,
    err_h: PinnedBuffer,
    check_err: bool,
    bytes: u64,
}

/// The CUDA implementation of the SDK's [`Ops`].
pub struct CudaOps {
    gpu: Gpu,
    module: Module,
    load: Mutex<Stream>,
    graphs: bool,
    /// Fused norms and projections (`KILN_CUDA_FUSE=0` turns them off, to compare).
    fuse: bool,
    /// Programmatic dependent launch (compute capability 9.0 and up; `KILN_CUDA_PDL=0`
    /// turns it off): a kernel starts while its predecessor finishes and fetches its weights
    /// before it waits for that kernel's results.
    pdl: bool,
    /// Integer tensor-core matmuls for the quantized weight types (`KILN_CUDA_MMQ=1` turns
    /// them on, for every number of rows: prompts ~3x faster, decoding ~3x slower for now;
    /// off, the f32 matrix-vector kernels serve every type).
    mmq: bool,
}

impl CudaOps {
    /// Opens device `ordinal` and loads the kernels (compiled now, or from the cache).
    pub fn new(ordinal: usize) -> Result<CudaOps> {
        let gpu = Gpu::open(ordinal).map_err(cu)?;
        let units = sources::units();
        let arch = gpu.arch();
        if units
            .iter()
            .any(|u| !nvrtc::is_cached(&u.name, &u.src, &arch))
        {
            eprintln!(
                "kiln-cuda: compiling the kernels for {} {arch} (once; cached in {})",
                gpu.props.name,
                nvrtc::cache_dir()
                    .map_or_else(|| "no cache directory".into(), |d| d.display().to_string())
            );
        }
        let (cubins, _cached) = nvrtc::compile_units_cached(&units, &arch).map_err(|e| {
            BackendError::internal(format!("compiling the CUDA kernels: {}", e.message))
        })?;
        let names: Vec<Vec<String>> = units.iter().map(|u| unit_kernel_names(&u.src)).collect();
        let module = Module::load_units(&cubins, &names).map_err(cu)?;
        let load = Mutex::new(Stream::new().map_err(cu)?);
        let graphs = std::env::var("KILN_CUDA_GRAPHS").map_or(true, |v| v != "0");
        let fuse = std::env::var("KILN_CUDA_FUSE").map_or(true, |v| v != "0");
        let pdl = gpu.props.cc.0 >= 9 && std::env::var("KILN_CUDA_PDL").map_or(true, |v| v != "0");
        let mmq = std::env::var("KILN_CUDA_MMQ").is_ok_and(|v| v == "1");
        Ok(CudaOps {
            gpu,
            module,
            load,
            graphs,
            fuse,
            pdl,
            mmq,
        })
    }

    /// The same, with graph capture on or off (on by default; `KILN_CUDA_GRAPHS=0` turns it
    /// off).
    pub fn with_graphs(mut self, on: bool) -> Self {
        self.graphs = on;
        self
    }

    /// The same, with the integer tensor-core matmuls on or off (off by default;
    /// `KILN_CUDA_MMQ=1` turns them on).
    pub fn with_mmq(mut self, on: bool) -> Self {
        self.mmq = on;
        self
    }

    /// Whether steps are captured as graphs.
    pub fn graphs_enabled(&self) -> bool {
        self.graphs
    }

    /// The device's name and architecture.
    pub fn device_name(&self) -> String {
        format!("{} ({})", self.gpu.props.name, self.gpu.arch())
    }

    fn bind(&self) -> Result<()> {
        self.gpu.bind().map_err(cu)
    }

    fn f(&self, name: &str) -> Result<Func> {
        self.module.func(name).map_err(cu)
    }

    /// Launches unless the step is being replayed from a graph.
    fn go(
        &self,
        ex: &mut CudaExec,
        name: &str,
        grid: (u32, u32, u32),
        block: u32,
        args: Args,
    ) -> Result<()> {
        if ex.pending_rope.is_some() {
            self.flush_rope(ex)?;
        }
        if matches!(ex.mode, Mode::Replay(_)) {
            return Ok(());
        }
        ex.launches += 1;
        let f = self.f(name)?;
        // SAFETY: every call site passes the kernel's parameters with buffers sized by the
        // shape checks before it.
        unsafe { launch(f, &ex.stream, grid, (block, 1, 1), 0, args, self.pdl) }.map_err(cu)
    }

    /// Launches a pending `rope_qk`, if any.
    fn flush_rope(&self, ex: &mut CudaExec) -> Result<()> {
        match ex.pending_rope.take() {
            Some(p) => self.go(
                ex,
                "rope",
                (blocks(p.pairs(), 256), 1, 1),
                256,
                p.args(p.qk()),
            ),
            None => Ok(()),
        }
    }

    fn vector(&self, w: &CudaWeight, len: usize, what: &str) -> Result<u64> {
        if !w.is_vector || w.cols != len {
            return Err(shape_err(what));
        }
        Ok(w.buf.ptr())
    }
}

fn blocks(n: usize, per: usize) -> u32 {
    n.div_ceil(per).max(1) as u32
}

impl CudaExec {
    /// Copies `data` into the staging buffer and (unless replaying) queues its copy to the
    /// device; returns the device address.
    fn stage(&mut self, data: &[u8]) -> Result<u64> {
        let at = self.cursor.next_multiple_of(16);
        let end = at + data.len();
        if end > self.stage_h.bytes() {
            return Err(BackendError::invalid(format!(
                "a step needs {end} bytes of staging; this context has {}",
                self.stage_h.bytes()
            )));
        }
        self.stage_h.as_mut_slice()[at..end].copy_from_slice(data);
        self.cursor = end;
        let dst = self.stage_d.ptr() + at as u64;
        if !matches!(self.mode, Mode::Replay(_)) && !data.is_empty() {
            // SAFETY: the pinned range stays untouched until the stream syncs at `end`.
            unsafe {
                self.stream
                    .htod(dst, &self.stage_h.as_slice()[at..end])
                    .map_err(cu)?;
            }
        }
        Ok(dst)
    }

    fn stage_i32(&mut self, v: impl Iterator<Item = i32>) -> Result<u64> {
        let bytes: Vec<u8> = v.flat_map(|x| x.to_le_bytes()).collect();
        self.stage(&bytes)
    }

    /// The device copy of a slice the step staged in `begin`, or a new staged copy.
    fn ids(&mut self, ids: &[i32], which: u8) -> Result<u64> {
        let known = match which {
            0 => self.step_tokens,
            _ => self.step_positions,
        };
        if (ids.as_ptr() as usize, ids.len()) == (known.0, known.1) {
            return Ok(known.2);
        }
        self.stage_i32(ids.iter().copied())
    }

    fn rows(&mut self, rows: &[RowPos]) -> Result<u64> {
        let known = self.step_rows;
        if (rows.as_ptr() as usize, rows.len()) == (known.0, known.1) {
            return Ok(known.2);
        }
        self.stage_i32(rows.iter().flat_map(|r| [r.seq as i32, r.pos as i32]))
    }

    /// After a sync: the error a kernel flagged since the last check, if any.
    fn device_error(&mut self) -> Result<()> {
        if !self.check_err {
            return Ok(());
        }
        // SAFETY: 4 bytes each side; synchronous.
        unsafe {
            let dst = std::slice::from_raw_parts_mut(self.err_h.as_ptr(), 4);
            self.stream.dtoh(dst, self.err_d.ptr()).map_err(cu)?;
        }
        self.stream.sync().map_err(cu)?;
        if self.err_h.as_slice()[..4] != [0; 4] {
            // SAFETY: the flag's 4 bytes.
            unsafe { self.stream.zero(self.err_d.ptr(), 4) }.map_err(cu)?;
            self.stream.sync().map_err(cu)?;
            return Err(BackendError::invalid(
                "an expert id out of range reached matmul_experts (its outputs are zero)",
            ));
        }
        Ok(())
    }

    /// Runs the captured or replayed graph of this step, once.
    fn flush_graph(&mut self) -> Result<()> {
        match self.mode {
            Mode::Capture(key) => {
                let g = graph::end_capture(&self.stream).map_err(cu)?;
                g.launch(&self.stream).map_err(cu)?;
                if self.graphs.len() >= GRAPH_CACHE {
                    self.graphs.clear();
                }
                self.graphs.insert(key, (g, self.launches));
                self.mode = Mode::Eager;
            }
            Mode::Replay(key) => {
                let (g, _) = self
                    .graphs
                    .get(&key)
                    .ok_or_else(|| BackendError::internal("replayed graph vanished"))?;
                let t0 = std::time::Instant::now();
                g.launch(&self.stream).map_err(cu)?;
                self.replays += 1;
                if self.stats {
                    self.stream.sync().map_err(cu)?;
                    self.t_graph += t0.elapsed();
                }
                self.mode = Mode::Eager;
            }
            Mode::Eager => {}
        }
        Ok(())
    }
}

impl Drop for CudaExec {
    fn drop(&mut self) {
        if std::env::var("KILN_CUDA_STATS").as_deref() == Ok("1") {
            let mut g: Vec<_> = self.graphs.iter().map(|(k, v)| (*k, v.1)).collect();
            g.sort();
            let per = |d: std::time::Duration, n: u64| d.as_secs_f64() * 1e6 / n.max(1) as f64;
            eprintln!(
                "kiln-cuda: {} steps, {} graph replays; captured (rows, outputs) -> kernels: {g:?}; \
                 per step: {:.1} us begin..end, {:.1} us per replayed graph (launch to sync), \
                 {:.1} us in outputs",
                self.steps,
                self.replays,
                per(self.t_step, self.steps),
                per(self.t_graph, self.replays),
                per(self.t_outputs, self.steps),
            );
        }
    }
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

impl Ops for CudaOps {
    type Weight = CudaWeight;
    type Act = CudaAct;
    type Kv = CudaKv;
    type Exec = CudaExec;

    fn weight(&self, t: &TensorInfo<'static>) -> Result<CudaWeight> {
        self.bind()?;
        let cols = t.dims.first().copied().unwrap_or(1) as usize;
        let rows = t.dims.iter().skip(1).product::<u64>() as usize;
        if t.dims.len() > 3 {
            return Err(BackendError::invalid(format!(
                "a weight of {} dimensions",
                t.dims.len()
            )));
        }
        // Vectors, and tensors whose rows are not whole 32-value chunks, become f32.
        if t.dims.len() == 1 || !cols.is_multiple_of(32) {
            let rb =
                t.ty.bytes_for(cols as u64)
                    .ok_or_else(|| BackendError::invalid("rows are not whole blocks"))?
                    as usize;
            let mut v = vec![0f32; cols * rows];
            for (r, out) in v.chunks_exact_mut(cols).enumerate() {
                let src = t
                    .data
                    .get(r * rb..(r + 1) * rb)
                    .ok_or_else(|| BackendError::invalid("tensor data is short"))?;
                dequantize_row(t.ty, src, out).map_err(|e| BackendError::invalid(e.to_string()))?;
            }
            return Ok(CudaWeight {
                buf: DeviceBuffer::from_host(&f32_bytes(&v)).map_err(cu)?,
                ty: GgmlType::F32,
                cols,
                rows,
                experts: 1,
                is_vector: rows == 1,
            });
        }
        if kernel_type(t.ty).is_none() {
            return Err(BackendError::unsupported(format!(
                "the CUDA backend has no kernel for {}",
                t.ty
            )));
        }
        let buf = {
            let _s = self
                .load
                .lock()
                .map_err(|_| BackendError::internal("upload stream poisoned"))?;
            DeviceBuffer::from_host(t.data).map_err(cu)?
        };
        Ok(CudaWeight {
            buf,
            ty: t.ty,
            cols,
            rows,
            experts: if t.dims.len() == 3 {
                t.dims[2] as usize
            } else {
                1
            },
            is_vector: false,
        })
    }

    fn weight_bytes(&self, w: &CudaWeight) -> u64 {
        w.buf.bytes() as u64
    }

    fn act(&self, rows: usize, cols: usize) -> Result<CudaAct> {
        self.bind()?;
        let n = rows
            .checked_mul(cols)
            .and_then(|n| n.checked_mul(4))
            .ok_or_else(|| {
                BackendError::new(ErrorKind::OutOfMemory, "activation size overflows")
            })?;
        Ok(CudaAct {
            buf: DeviceBuffer::zeroed(n).map_err(cu)?,
            rows,
            cols,
            cap: rows,
        })
    }

    fn set_rows(&self, x: &mut CudaAct, rows: usize) -> Result<()> {
        if rows > x.cap {
            return Err(BackendError::invalid(format!(
                "{rows} rows asked of an activation of {}",
                x.cap
            )));
        }
        x.rows = rows;
        Ok(())
    }

    fn act_shape(&self, x: &CudaAct) -> (usize, usize) {
        (x.rows, x.cols)
    }

    fn act_bytes(&self, x: &CudaAct) -> u64 {
        x.buf.bytes() as u64
    }

    fn kv_alloc(&self, layers: &[KvShape], n_ctx: usize, n_seq: usize) -> Result<CudaKv> {
        self.bind()?;
        let mut out = Vec::with_capacity(layers.len());
        let mut bytes = 0u64;
        for s in layers {
            let (kw, vw) = (s.n_head_kv * s.head_dim_k, s.n_head_kv * s.head_dim_v);
            let cells = n_ctx
                .checked_mul(n_seq)
                .ok_or_else(|| BackendError::new(ErrorKind::OutOfMemory, "KV size overflows"))?;
            let k = DeviceBuffer::zeroed(cells * kw * 2).map_err(cu)?;
            let v = DeviceBuffer::zeroed(cells * vw * 2).map_err(cu)?;
            bytes += (k.bytes() + v.bytes()) as u64;
            out.push(KvLayer { k, v, kw, vw });
        }
        Ok(CudaKv {
            layers: out,
            n_ctx,
            n_seq,
            bytes,
        })
    }

    fn kv_bytes(&self, kv: &CudaKv) -> u64 {
        kv.bytes
    }

    fn exec(&self, spec: &ExecSpec) -> Result<CudaExec> {
        self.bind()?;
        let stage = spec.n_batch_max * 64 + 64 * 1024 + spec.n_logit_rows * (DEVICE_BANS * 4 + 64);
        let rows = spec.n_logit_rows.max(1);
        let mut ex = CudaExec {
            stream: Stream::new().map_err(cu)?,
            stage_h: PinnedBuffer::alloc(stage).map_err(cu)?,
            stage_d: DeviceBuffer::alloc(stage).map_err(cu)?,
            cursor: 0,
            step_tokens: (0, 0, 0),
            step_positions: (0, 0, 0),
            step_rows: (0, 0, 0),
            att_part: None,
            mq_x: if self.mmq && spec.n_batch_max > MMQ_DEC_ROWS {
                Some(DeviceBuffer::alloc(spec.n_batch_max * spec.max_cols * 5 / 4).map_err(cu)?)
            } else {
                None
            },
            n_batch_max: spec.n_batch_max,
            max_cols: spec.max_cols,
            att_cnt: None,
            n_vocab: spec.n_vocab,
            n_logit_rows: rows,
            stats_d: DeviceBuffer::alloc(rows * 16).map_err(cu)?,
            part_d: DeviceBuffer::alloc(rows * OUT_PARTS * 8).map_err(cu)?,
            hist_d: DeviceBuffer::zeroed(rows * OUT_BINS * 4).map_err(cu)?,
            fast_d: DeviceBuffer::alloc(rows * CAND_FAST * 8).map_err(cu)?,
            fast_h: PinnedBuffer::alloc(rows * CAND_FAST * 8).map_err(cu)?,
            cand_v: DeviceBuffer::alloc(rows * CAND_CAP * 4).map_err(cu)?,
            cand_i: DeviceBuffer::alloc(rows * CAND_CAP * 4).map_err(cu)?,
            stats_h: PinnedBuffer::alloc(rows * 16).map_err(cu)?,
            cand_h: PinnedBuffer::alloc(CAND_CAP * 8).map_err(cu)?,
            row_h: PinnedBuffer::alloc(spec.n_vocab.max(1) * 4).map_err(cu)?,
            top: TopNScratch::default(),
            mode: Mode::Eager,
            graphs: HashMap::new(),
            launches: 0,
            pending_rope: None,
            steps: 0,
            replays: 0,
            stats: std::env::var("KILN_CUDA_STATS").as_deref() == Ok("1"),
            t_step: Default::default(),
            t_graph: Default::default(),
            t_outputs: Default::default(),
            step_t0: None,
            seen: HashMap::new(),
            err_d: DeviceBuffer::zeroed(4).map_err(cu)?,
            err_h: PinnedBuffer::alloc(4).map_err(cu)?,
            check_err: false,
            bytes: 0,
        };
        let bytes = (ex.stage_d.bytes()
            + ex.mq_x.as_ref().map_or(0, |b| b.bytes())
            + ex.stats_d.bytes()
            + ex.part_d.bytes()
            + ex.hist_d.bytes()
            + ex.fast_d.bytes()
            + ex.cand_v.bytes()
            + ex.cand_i.bytes()) as u64;
        ex.bytes = bytes;
        Ok(ex)
    }

    fn exec_bytes(&self, ex: &CudaExec) -> u64 {
        ex.bytes
            + ex.att_part.as_ref().map_or(0, |b| b.bytes() as u64)
            + ex.att_cnt.as_ref().map_or(0, |b| b.bytes() as u64)
    }

    fn begin(&self, ex: &mut CudaExec, step: &Step<'_>) -> Result<()> {
        self.bind()?;
        ex.cursor = 0;
        ex.launches = 0;
        // A rope left by a step that failed before its attention belongs to that step.
        ex.pending_rope = None;
        ex.steps += 1;
        if ex.stats {
            ex.step_t0 = Some(std::time::Instant::now());
        }
        let n = step.tokens.len();
        let key = (n, step.n_outputs);
        ex.mode = Mode::Eager;
        if self.graphs && n <= GRAPH_ROWS && step.n_outputs <= n {
            if ex.graphs.contains_key(&key) {
                ex.mode = Mode::Replay(key);
            } else {
                let seen = ex.seen.entry(key).or_insert(0);
                *seen += 1;
                if *seen >= 2 {
                    graph::begin_capture(&ex.stream).map_err(cu)?;
                    ex.mode = Mode::Capture(key);
                }
            }
        }
        let t = ex.stage_i32(step.tokens.iter().copied())?;
        ex.step_tokens = (step.tokens.as_ptr() as usize, step.tokens.len(), t);
        let p = ex.stage_i32(step.positions.iter().copied())?;
        ex.step_positions = (step.positions.as_ptr() as usize, step.positions.len(), p);
        let r = ex.stage_i32(step.rows.iter().flat_map(|r| [r.seq as i32, r.pos as i32]))?;
        ex.step_rows = (step.rows.as_ptr() as usize, step.rows.len(), r);
        Ok(())
    }

    fn abort(&self, ex: &mut CudaExec) {
        if let Mode::Capture(_) = ex.mode {
            graph::abort_capture(&ex.stream);
        }
        ex.mode = Mode::Eager;
    }

    fn end(&self, ex: &mut CudaExec) -> Result<()> {
        self.bind()?;
        let r = self.flush_rope(ex);
        let r = r.and(match ex.mode {
            Mode::Capture(_) | Mode::Replay(_) => ex.flush_graph(),
            Mode::Eager => Ok(()),
        });
        if r.is_err() {
            graph::abort_capture(&ex.stream);
        }
        ex.mode = Mode::Eager;
        let s = ex.stream.sync().map_err(cu);
        ex.step_tokens = (0, 0, 0);
        ex.step_positions = (0, 0, 0);
        ex.step_rows = (0, 0, 0);
        r.and(s)
    }

    fn write(&self, ex: &mut CudaExec, x: &mut CudaAct, data: &[f32]) -> Result<()> {
        self.bind()?;
        if data.len() != x.n() {
            return Err(shape_err("write"));
        }
        self.flush_rope(ex)?;
        ex.stream.sync().map_err(cu)?;
        // SAFETY: `x` holds at least `data.len()` floats; synchronous after the sync below.
        unsafe { ex.stream.htod(x.ptr(), &f32_bytes(data)) }.map_err(cu)?;
        ex.stream.sync().map_err(cu)?;
        if ex.mode == Mode::Eager {
            ex.cursor = 0;
        }
        Ok(())
    }

    fn read(&self, ex: &mut CudaExec, x: &CudaAct, out: &mut [f32]) -> Result<()> {
        self.bind()?;
        if out.len() != x.n() {
            return Err(shape_err("read"));
        }
        self.flush_rope(ex)?;
        let mut bytes = vec![0u8; out.len() * 4];
        // SAFETY: `x` holds `out.len()` floats; the stream syncs before `bytes` is read.
        unsafe { ex.stream.dtoh(&mut bytes, x.ptr()) }.map_err(cu)?;
        ex.stream.sync().map_err(cu)?;
        if ex.mode == Mode::Eager {
            ex.cursor = 0;
        }
        ex.device_error()?;
        for (o, b) in out.iter_mut().zip(bytes.chunks_exact(4)) {
            *o = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        }
        Ok(())
    }

    fn embed(
        &self,
        ex: &mut CudaExec,
        table: &CudaWeight,
        ids: &[i32],
        out: &mut CudaAct,
    ) -> Result<()> {
        if ids.len() != out.rows
            || table.cols != out.cols
            || table.is_vector
            || !table.cols.is_multiple_of(32)
        {
            return Err(shape_err("embed"));
        }
        if let Some(&bad) = ids.iter().find(|&&i| i < 0 || i as usize >= table.rows) {
            return Err(BackendError::invalid(format!(
                "token id {bad} out of 0..{}",
                table.rows
            )));
        }
        let d = ex.ids(ids, 0)?;
        let t = kernel_type(table.ty).ok_or_else(|| shape_err("embed type"))?;
        self.go(
            ex,
            &format!("embed_{t}"),
            (ids.len() as u32, 1, 1),
            128,
            Args::new()
                .u64(table.buf.ptr())
                .u64(d)
                .u64(out.ptr())
                .i32(table.cols as i32)
                .i32(table.rows as i32),
        )
    }

    fn rms_norm(
        &self,
        ex: &mut CudaExec,
        x: &CudaAct,
        w: &CudaWeight,
        eps: f32,
        out: &mut CudaAct,
    ) -> Result<()> {
        let g = w.cols;
        if !w.is_vector
            || g == 0
            || !x.cols.is_multiple_of(g)
            || out.cols != x.cols
            || out.rows != x.rows
        {
            return Err(shape_err("rms_norm"));
        }
        if x.rows == 0 {
            return Ok(());
        }
        if g == x.cols && g >= 512 {
            return self.go(
                ex,
                "rms_norm_row",
                (x.rows as u32, 1, 1),
                256,
                Args::new()
                    .u64(x.ptr())
                    .u64(w.buf.ptr())
                    .u64(out.ptr())
                    .i32(x.cols as i32)
                    .f32(eps),
            );
        }
        let groups = x.rows * (x.cols / g);
        self.go(
            ex,
            "rms_norm",
            (blocks(groups, 8), 1, 1),
            256,
            Args::new()
                .u64(x.ptr())
                .u64(w.buf.ptr())
                .u64(out.ptr())
                .i32(x.rows as i32)
                .i32(x.cols as i32)
                .i32(g as i32)
                .f32(eps),
        )
    }

    fn matmul(
        &self,
        ex: &mut CudaExec,
        x: &CudaAct,
        w: &CudaWeight,
        out: &mut CudaAct,
    ) -> Result<()> {
        self.mmv(ex, x, w, None, false, out)
    }

    fn matmul_bias(
        &self,
        ex: &mut CudaExec,
        x: &CudaAct,
        w: &CudaWeight,
        b: Option<&CudaWeight>,
        out: &mut CudaAct,
    ) -> Result<()> {
        self.mmv(ex, x, w, b, false, out)
    }

    fn matmul_qkv(
        &self,
        ex: &mut CudaExec,
        x: &CudaAct,
        w: [&CudaWeight; 3],
        b: [Option<&CudaWeight>; 3],
        out: [&mut CudaAct; 3],
    ) -> Result<()> {
        if !self.fuse || self.mixed_kernels(&w) {
            for ((w, b), o) in w.into_iter().zip(b).zip(out) {
                self.mmv(ex, x, w, b, false, o)?;
            }
            return Ok(());
        }
        self.qkv(ex, x, None, w, b, out)
    }

    fn norm_matmul_qkv(
        &self,
        ex: &mut CudaExec,
        x: &CudaAct,
        norm: &CudaWeight,
        eps: f32,
        h: &mut CudaAct,
        w: [&CudaWeight; 3],
        b: [Option<&CudaWeight>; 3],
        out: [&mut CudaAct; 3],
    ) -> Result<()> {
        if self.fuse && norm.is_vector && norm.cols == x.cols && !self.mixed_kernels(&w) {
            return self.qkv(ex, x, Some((norm, eps)), w, b, out);
        }
        self.rms_norm(ex, x, norm, eps, h)?;
        self.matmul_qkv(ex, h, w, b, out)
    }

    fn norm_matmul_glu(
        &self,
        ex: &mut CudaExec,
        x: &CudaAct,
        norm: &CudaWeight,
        eps: f32,
        h: &mut CudaAct,
        gate: &CudaWeight,
        up: &CudaWeight,
        act: Activation,
        out: &mut CudaAct,
        tmp: &mut CudaAct,
    ) -> Result<()> {
        if self.fuse && norm.is_vector && norm.cols == x.cols && same_layout(gate, up) {
            return self.glu_mmv(ex, x, Some((norm, eps)), gate, up, act, out, tmp);
        }
        self.rms_norm(ex, x, norm, eps, h)?;
        self.glu_mmv(ex, h, None, gate, up, act, out, tmp)
    }

    fn matmul_add(
        &self,
        ex: &mut CudaExec,
        x: &CudaAct,
        w: &CudaWeight,
        b: Option<&CudaWeight>,
        acc: &mut CudaAct,
        _tmp: &mut CudaAct,
    ) -> Result<()> {
        self.mmv(ex, x, w, b, true, acc)
    }

    fn matmul_glu(
        &self,
        ex: &mut CudaExec,
        x: &CudaAct,
        gate: &CudaWeight,
        up: &CudaWeight,
        act: Activation,
        out: &mut CudaAct,
        tmp: &mut CudaAct,
    ) -> Result<()> {
        self.glu_mmv(ex, x, None, gate, up, act, out, tmp)
    }

    fn add_bias(&self, ex: &mut CudaExec, x: &mut CudaAct, b: &CudaWeight) -> Result<()> {
        let bp = self.vector(b, x.cols, "add_bias")?;
        let n = x.n();
        self.go(
            ex,
            "add_bias",
            (blocks(n, 256), 1, 1),
            256,
            Args::new()
                .u64(x.ptr())
                .u64(bp)
                .i32(x.cols as i32)
                .i64(n as i64),
        )
    }

    fn add(&self, ex: &mut CudaExec, x: &mut CudaAct, y: &CudaAct) -> Result<()> {
        if x.rows != y.rows || x.cols != y.cols {
            return Err(shape_err("add"));
        }
        let n = x.n();
        self.go(
            ex,
            "add",
            (blocks(n, 256), 1, 1),
            256,
            Args::new().u64(x.ptr()).u64(y.ptr()).i64(n as i64),
        )
    }

    fn scale(&self, ex: &mut CudaExec, x: &mut CudaAct, s: f32) -> Result<()> {
        let n = x.n();
        self.go(
            ex,
            "scale",
            (blocks(n, 256), 1, 1),
            256,
            Args::new().u64(x.ptr()).f32(s).i64(n as i64),
        )
    }

    fn rope(
        &self,
        ex: &mut CudaExec,
        x: &mut CudaAct,
        positions: &[i32],
        head_dim: usize,
        rope: &Rope,
    ) -> Result<()> {
        self.rope2(ex, x, None, positions, head_dim, rope)
    }

    fn rope_qk(
        &self,
        ex: &mut CudaExec,
        q: &mut CudaAct,
        k: &mut CudaAct,
        positions: &[i32],
        head_dim: usize,
        rope: &Rope,
    ) -> Result<()> {
        if !self.fuse {
            return self.rope2(ex, q, Some(k), positions, head_dim, rope);
        }
        self.flush_rope(ex)?;
        let bad = |x: &CudaAct| {
            positions.len() != x.rows || head_dim == 0 || !x.cols.is_multiple_of(head_dim)
        };
        if bad(q) || bad(k) || rope.n_rot > head_dim || !rope.n_rot.is_multiple_of(2) {
            return Err(shape_err("rope"));
        }
        let pos = ex.ids(positions, 1)?;
        let (yarn, ext, low, span, mscale) = rope_yarn(rope);
        ex.pending_rope = Some(PendingRope {
            q: q.ptr(),
            qcols: q.cols,
            k: k.ptr(),
            kcols: k.cols,
            pos,
            rows: q.rows,
            head_dim,
            n_rot: rope.n_rot,
            neox: rope.style == RopeStyle::Neox,
            base: rope.base,
            freq_scale: rope.freq_scale,
            yarn,
            ext,
            low,
            span,
            mscale,
        });
        Ok(())
    }

    fn glu(
        &self,
        ex: &mut CudaExec,
        gate: &mut CudaAct,
        up: &CudaAct,
        act: Activation,
    ) -> Result<()> {
        if gate.rows != up.rows || gate.cols != up.cols {
            return Err(shape_err("glu"));
        }
        let a = act_code(act);
        let n = gate.n();
        self.go(
            ex,
            "glu",
            (blocks(n, 256), 1, 1),
            256,
            Args::new()
                .u64(gate.ptr())
                .u64(up.ptr())
                .i32(a)
                .i64(n as i64),
        )
    }

    fn gather_rows(
        &self,
        ex: &mut CudaExec,
        x: &CudaAct,
        rows: &[usize],
        out: &mut CudaAct,
    ) -> Result<()> {
        if rows.len() != out.rows || x.cols != out.cols || rows.iter().any(|&r| r >= x.rows) {
            return Err(shape_err("gather_rows"));
        }
        let d = ex.stage_i32(rows.iter().map(|&r| r as i32))?;
        self.go(
            ex,
            "gather_rows",
            (rows.len() as u32, 1, 1),
            256,
            Args::new()
                .u64(x.ptr())
                .u64(d)
                .u64(out.ptr())
                .i32(x.cols as i32),
        )
    }

    fn kv_copy(
        &self,
        ex: &mut CudaExec,
        kv: &mut CudaKv,
        src: usize,
        dst: usize,
        n: usize,
    ) -> Result<()> {
        self.bind()?;
        if src >= kv.n_seq || dst >= kv.n_seq || n > kv.n_ctx {
            return Err(shape_err("kv_copy"));
        }
        if src == dst || n == 0 {
            return Ok(());
        }
        self.flush_rope(ex)?;
        for l in &kv.layers {
            for (buf, w) in [(&l.k, l.kw), (&l.v, l.vw)] {
                let row = kv.n_ctx * w * 2;
                // SAFETY: both sequences' ranges lie inside the layer's buffer.
                unsafe {
                    ex.stream
                        .dtod(
                            buf.ptr() + (dst * row) as u64,
                            buf.ptr() + (src * row) as u64,
                            n * w * 2,
                        )
                        .map_err(cu)?;
                }
            }
        }
        ex.stream.sync().map_err(cu)
    }

    fn attention(
        &self,
        ex: &mut CudaExec,
        kv: &mut CudaKv,
        layer: usize,
        q: &CudaAct,
        k: &CudaAct,
        v: &CudaAct,
        rows: &[RowPos],
        p: &Attention,
        out: &mut CudaAct,
    ) -> Result<()> {
        let n_ctx = kv.n_ctx;
        let l = kv
            .layers
            .get(layer)
            .ok_or_else(|| shape_err("attention layer"))?;
        let (hk, hv) = (p.head_dim_k, p.head_dim_v);
        let (kw, vw) = (p.n_head_kv * hk, p.n_head_kv * hv);
        if q.cols != p.n_head * hk
            || k.cols != kw
            || v.cols != vw
            || out.cols != p.n_head * hv
            || rows.len() != q.rows
            || k.rows != q.rows
            || v.rows != q.rows
            || out.rows != q.rows
            || l.kw != kw
            || l.vw != vw
            || p.n_head_kv == 0
            || !p.n_head.is_multiple_of(p.n_head_kv)
            || hk % 8 != 0
            || hv % 2 != 0
            || hk > 256
            || hv > 256
            || p.sinks.is_some_and(|s| s.len() != p.n_head)
        {
            return Err(shape_err("attention"));
        }
        if rows.iter().any(|r| r.pos >= n_ctx || r.seq >= kv.n_seq) {
            return Err(shape_err("attention rows"));
        }
        let n = rows.len();
        if n == 0 {
            return Ok(());
        }
        let d_rows = ex.rows(rows)?;
        let sinks = match p.sinks {
            Some(s) => ex.stage(&f32_bytes(s))?,
            None => 0,
        };
        match ex.pending_rope.take() {
            Some(pr)
                if pr.q == q.ptr()
                    && pr.k == k.ptr()
                    && pr.rows == n
                    && pr.qcols == q.cols
                    && pr.kcols == kw
                    && pr.head_dim == hk =>
            {
                // The pairs, then one thread per stored key or value.
                let n_thr = pr.pairs() + n * (kw + vw);
                self.go(
                    ex,
                    "rope_kv_store",
                    (blocks(n_thr, 256), 1, 1),
                    256,
                    pr.args(pr.qk().u64(v.ptr()).i32(vw as i32))
                        .u64(l.k.ptr())
                        .u64(l.v.ptr())
                        .u64(d_rows)
                        .i32(n_ctx as i32),
                )?;
            }
            pending => {
                ex.pending_rope = pending;
                self.kv_store(ex, l, k, v, d_rows, n, n_ctx, kw, vw)?;
            }
        }
        let chunk = (n_ctx.div_ceil(ATT_MAX_SPLITS)).max(128);
        let splits = n_ctx.div_ceil(chunk);
        let part_floats = ATT_GROUP * p.n_head * splits * (hv + 2);
        let need = part_floats * 4;
        if ex.att_part.as_ref().is_none_or(|b| b.bytes() < need) {
            if matches!(ex.mode, Mode::Capture(_) | Mode::Replay(_)) && ex.att_part.is_some() {
                return Err(BackendError::internal(
                    "attention scratch would move inside a captured step",
                ));
            }
            self.bind()?;
            ex.att_part = Some(DeviceBuffer::alloc(need).map_err(cu)?);
        }
        let cnt_need = ATT_GROUP * p.n_head.max(128) * 4;
        if ex.att_cnt.as_ref().is_none_or(|b| b.bytes() < cnt_need) {
            if matches!(ex.mode, Mode::Capture(_) | Mode::Replay(_)) && ex.att_cnt.is_some() {
                return Err(BackendError::internal(
                    "attention counters would move inside a captured step",
                ));
            }
            self.bind()?;
            ex.att_cnt = Some(DeviceBuffer::zeroed(cnt_need).map_err(cu)?);
        }
        let part = ex.att_part.as_ref().map_or(0, |b| b.ptr());
        let cnt = ex.att_cnt.as_ref().map_or(0, |b| b.ptr());
        let window = p.window.map_or(0, |w| w.min(i32::MAX as usize) as i32);
        let softcap = p.softcap.unwrap_or(0.0);
        for g0 in (0..n).step_by(ATT_GROUP) {
            let g = (n - g0).min(ATT_GROUP);
            let rp = d_rows + (g0 * 8) as u64;
            self.go(
                ex,
                "attn_split",
                (p.n_head as u32, g as u32, splits as u32),
                128,
                Args::new()
                    .u64(q.ptr() + (g0 * q.cols * 4) as u64)
                    .u64(l.k.ptr())
                    .u64(l.v.ptr())
                    .u64(rp)
                    .u64(part)
                    .i32(n_ctx as i32)
                    .i32(p.n_head as i32)
                    .i32(p.n_head_kv as i32)
                    .i32(hk as i32)
                    .i32(hv as i32)
                    .f32(p.scale)
                    .i32(window)
                    .f32(softcap)
                    .i32(chunk as i32)
                    .i32(splits as i32)
                    .u64(cnt)
                    .u64(sinks)
                    .u64(out.ptr() + (g0 * out.cols * 4) as u64),
            )?;
        }
        Ok(())
    }

    fn moe_route(
        &self,
        ex: &mut CudaExec,
        logits: &CudaAct,
        k: usize,
        ids: &mut CudaAct,
        weights: &mut CudaAct,
    ) -> Result<()> {
        if k == 0
            || k > 32
            || k > logits.cols
            || ids.cols != k
            || weights.cols != k
            || ids.rows != logits.rows
            || weights.rows != logits.rows
        {
            return Err(shape_err("moe_route"));
        }
        self.go(
            ex,
            "moe_route",
            (blocks(logits.rows, 4), 1, 1),
            128,
            Args::new()
                .u64(logits.ptr())
                .u64(ids.ptr())
                .u64(weights.ptr())
                .i32(logits.rows as i32)
                .i32(logits.cols as i32)
                .i32(k as i32),
        )
    }

    fn matmul_experts(
        &self,
        ex: &mut CudaExec,
        x: &CudaAct,
        w: &CudaWeight,
        bias: Option<&CudaWeight>,
        ids: &CudaAct,
        out: &mut CudaAct,
    ) -> Result<()> {
        let ne = w.experts;
        if w.is_vector || ne == 0 || !w.rows.is_multiple_of(ne) || !w.cols.is_multiple_of(32) {
            return Err(shape_err("matmul_experts"));
        }
        let (k_in, n_out, k) = (w.cols, w.rows / ne, ids.cols);
        let x_slots = if x.cols == k_in {
            0
        } else if x.cols == k * k_in {
            1
        } else {
            return Err(shape_err("matmul_experts input"));
        };
        if ids.rows != x.rows || out.rows != x.rows || out.cols != k * n_out || k == 0 {
            return Err(shape_err("matmul_experts"));
        }
        let bp = match bias {
            Some(b) if b.ty == GgmlType::F32 && b.cols == n_out && b.rows == ne => b.buf.ptr(),
            Some(b) if b.is_vector && b.cols == n_out * ne => b.buf.ptr(),
            Some(_) => return Err(shape_err("matmul_experts bias")),
            None => 0,
        };
        let t = kernel_type(w.ty).ok_or_else(|| shape_err("matmul_experts type"))?;
        ex.check_err = true;
        self.go(
            ex,
            &format!("mmv_exp_{t}"),
            (blocks(n_out, 4), k as u32, x.rows as u32),
            128,
            Args::new()
                .u64(w.buf.ptr())
                .u64(bp)
                .u64(ids.ptr())
                .u64(x.ptr())
                .u64(out.ptr())
                .i32(k_in as i32)
                .i32(n_out as i32)
                .i32(k as i32)
                .i32(ne as i32)
                .i32(x_slots)
                .i32(x.cols as i32)
                .i32(out.cols as i32)
                .u64(ex.err_d.ptr()),
        )
    }

    fn moe_combine(
        &self,
        ex: &mut CudaExec,
        y: &CudaAct,
        weights: &CudaAct,
        out: &mut CudaAct,
    ) -> Result<()> {
        let k = weights.cols;
        if k == 0 || y.cols != k * out.cols || y.rows != out.rows || weights.rows != out.rows {
            return Err(shape_err("moe_combine"));
        }
        let n = out.n();
        self.go(
            ex,
            "moe_combine",
            (blocks(n, 256), 1, 1),
            256,
            Args::new()
                .u64(y.ptr())
                .u64(weights.ptr())
                .u64(out.ptr())
                .i32(out.rows as i32)
                .i32(out.cols as i32)
                .i32(k as i32),
        )
    }

    fn outputs(
        &self,
        ex: &mut CudaExec,
        logits: &mut CudaAct,
        outs: &mut [RowOutput<'_>],
    ) -> Result<()> {
        self.bind()?;
        self.flush_rope(ex)?;
        ex.flush_graph()?;
        let t0 = std::time::Instant::now();
        let r = self.outputs_inner(ex, logits, outs);
        ex.t_outputs += t0.elapsed();
        r
    }
}

impl CudaOps {
    /// Bans, statistics and top-N candidates on the device; the rest on the host.
    fn outputs_inner(
        &self,
        ex: &mut CudaExec,
        logits: &mut CudaAct,
        outs: &mut [RowOutput<'_>],
    ) -> Result<()> {
        let n = outs.len();
        if n != logits.rows || n > ex.n_logit_rows || logits.cols != ex.n_vocab {
            return Err(shape_err("outputs"));
        }
        if n == 0 {
            return Ok(());
        }
        let vocab = logits.cols;
        // Rows served on the host: full logits, allow-lists and long ban lists.
        let on_host: Vec<bool> = outs
            .iter()
            .map(|o| {
                matches!(o.want, Want::Logits(_))
                    || o.allowed.is_some()
                    || o.banned.len() > DEVICE_BANS
            })
            .collect();
        // Bans of device rows.
        let mut off = vec![0i32];
        let mut ids: Vec<i32> = Vec::new();
        for (o, &h) in outs.iter().zip(&on_host) {
            if !h {
                for &b in o.banned {
                    if b < 0 || b as usize >= vocab {
                        return Err(BackendError::invalid(format!(
                            "banned token id {b} out of 0..{vocab}"
                        )));
                    }
                    ids.push(b);
                }
            }
            off.push(ids.len() as i32);
        }
        if !ids.is_empty() {
            let d_ids = ex.stage_i32(ids.iter().copied())?;
            let d_off = ex.stage_i32(off.iter().copied())?;
            self.go(
                ex,
                "ban",
                (n as u32, 1, 1),
                128,
                Args::new()
                    .u64(logits.ptr())
                    .i32(vocab as i32)
                    .u64(d_ids)
                    .u64(d_off),
            )?;
        }
        let mut req = Vec::with_capacity(2 * n);
        for (o, &h) in outs.iter().zip(&on_host) {
            let top = match (&o.want, h) {
                (Want::TopN { ids, .. }, false) if !ids.is_empty() => ids.len() as i32,
                _ => 0,
            };
            let target = match (&o.target, h) {
                (Some((t, _)), false) if (*t as usize) < vocab => *t as i32,
                _ => -1,
            };
            req.push(top);
            req.push(target);
        }
        let d_req = ex.stage_i32(req.iter().copied())?;
        let parts = vocab.div_ceil(2048).clamp(1, OUT_PARTS);
        self.go(
            ex,
            "stats_part",
            (n as u32, parts as u32, 1),
            256,
            Args::new()
                .u64(logits.ptr())
                .i32(vocab as i32)
                .u64(d_req)
                .u64(ex.part_d.ptr())
                .u64(ex.hist_d.ptr()),
        )?;
        self.go(
            ex,
            "stats_final",
            (n as u32, 1, 1),
            1024,
            Args::new()
                .u64(logits.ptr())
                .i32(vocab as i32)
                .u64(d_req)
                .u64(ex.part_d.ptr())
                .i32(parts as i32)
                .u64(ex.hist_d.ptr())
                .u64(ex.stats_d.ptr()),
        )?;
        self.go(
            ex,
            "stats_cands",
            (n as u32, parts as u32, 1),
            256,
            Args::new()
                .u64(logits.ptr())
                .i32(vocab as i32)
                .u64(d_req)
                .u64(ex.stats_d.ptr())
                .u64(ex.fast_d.ptr())
                .u64(ex.cand_v.ptr())
                .u64(ex.cand_i.ptr())
                .i32(CAND_CAP as i32),
        )?;
        // One transfer for the statistics and one for the first candidates of every row.
        // SAFETY: `stats_h` holds `n_logit_rows * 16` bytes and `fast_h` `n_logit_rows *
        // CAND_FAST * 8`; the stream syncs before either is read.
        unsafe {
            let dst = std::slice::from_raw_parts_mut(ex.stats_h.as_ptr(), n * 16);
            ex.stream.dtoh(dst, ex.stats_d.ptr()).map_err(cu)?;
            if req.chunks_exact(2).any(|r| r[0] > 0) {
                let dst = std::slice::from_raw_parts_mut(ex.fast_h.as_ptr(), n * CAND_FAST * 8);
                ex.stream.dtoh(dst, ex.fast_d.ptr()).map_err(cu)?;
            }
        }
        ex.stream.sync().map_err(cu)?;
        ex.device_error()?;
        let stats: Vec<[f32; 4]> = ex.stats_h.as_slice()[..n * 16]
            .chunks_exact(16)
            .map(|c| {
                let f = |i: usize| {
                    f32::from_le_bytes([c[4 * i], c[4 * i + 1], c[4 * i + 2], c[4 * i + 3]])
                };
                [f(0), f(1), f(2), f(3)]
            })
            .collect();
        for (i, o) in outs.iter_mut().enumerate() {
            if on_host[i] {
                self.host_row(ex, logits, i, o)?;
                continue;
            }
            let [lse, tval, count_bits, _] = stats[i];
            let count = count_bits.to_bits() as usize;
            if let Want::TopN { ids, logits: vals } = &mut o.want {
                if !ids.is_empty() {
                    if count > CAND_CAP {
                        // Too many ties at the threshold: select on the host.
                        self.host_row(ex, logits, i, o)?;
                        continue;
                    }
                    let m = count;
                    let mut c: Vec<(f32, i32)> = if m <= CAND_FAST {
                        // Already here, with the statistics.
                        let raw = &ex.fast_h.as_slice()[i * CAND_FAST * 8..][..m * 8];
                        raw.chunks_exact(8)
                            .map(|p| {
                                (
                                    f32::from_le_bytes([p[0], p[1], p[2], p[3]]),
                                    i32::from_le_bytes([p[4], p[5], p[6], p[7]]),
                                )
                            })
                            .collect()
                    } else {
                        // SAFETY: `cand_h` holds `CAND_CAP * 8` bytes; synced before reading.
                        unsafe {
                            let hv = std::slice::from_raw_parts_mut(ex.cand_h.as_ptr(), m * 4);
                            ex.stream
                                .dtoh(hv, ex.cand_v.ptr() + (i * CAND_CAP * 4) as u64)
                                .map_err(cu)?;
                            let hi = std::slice::from_raw_parts_mut(
                                ex.cand_h.as_ptr().add(CAND_CAP * 4),
                                m * 4,
                            );
                            ex.stream
                                .dtoh(hi, ex.cand_i.ptr() + (i * CAND_CAP * 4) as u64)
                                .map_err(cu)?;
                        }
                        ex.stream.sync().map_err(cu)?;
                        let raw = ex.cand_h.as_slice();
                        let rd = |at: usize| [raw[at], raw[at + 1], raw[at + 2], raw[at + 3]];
                        (0..m)
                            .map(|j| {
                                (
                                    f32::from_le_bytes(rd(4 * j)),
                                    i32::from_le_bytes(rd(CAND_CAP * 4 + 4 * j)),
                                )
                            })
                            .collect()
                    };
                    let key = |v: f32| if v.is_nan() { f32::NEG_INFINITY } else { v };
                    c.sort_by(|a, b| key(b.0).total_cmp(&key(a.0)).then(a.1.cmp(&b.1)));
                    if c.len() < ids.len() {
                        return Err(BackendError::internal(format!(
                            "top-{}: the device found {} candidates",
                            ids.len(),
                            c.len()
                        )));
                    }
                    for (j, (v, id)) in c.iter().take(ids.len()).enumerate() {
                        ids[j] = *id;
                        vals[j] = *v;
                    }
                }
            }
            if let Some(l) = o.lse.as_deref_mut() {
                *l = lse;
            }
            if let Some((_, out)) = o.target.as_mut() {
                **out = tval;
            }
        }
        Ok(())
    }
}

/// A `rope_qk` whose launch waits for the `attention` that may fuse it (see `rope_kv_store`).
struct PendingRope {
    q: u64,
    qcols: usize,
    k: u64,
    kcols: usize,
    /// The staged positions.
    pos: u64,
    rows: usize,
    head_dim: usize,
    n_rot: usize,
    neox: bool,
    base: f32,
    freq_scale: f32,
    yarn: i32,
    ext: f32,
    low: f32,
    span: f32,
    mscale: f32,
}

impl PendingRope {
    /// Threads that rotate a pair (one per pair of each query and key head of each row).
    fn pairs(&self) -> usize {
        self.rows * (self.qcols + self.kcols) / self.head_dim * (self.n_rot / 2)
    }

    /// The rope kernels' leading arguments: queries and keys with their widths.
    fn qk(&self) -> Args {
        Args::new()
            .u64(self.q)
            .i32(self.qcols as i32)
            .u64(self.k)
            .i32(self.kcols as i32)
    }

    /// `head` (the tensors' arguments) followed by the rope kernels' common arguments.
    fn args(&self, head: Args) -> Args {
        head.u64(self.pos)
            .i32(self.rows as i32)
            .i32(self.head_dim as i32)
            .i32(self.n_rot as i32)
            .i32(self.neox as i32)
            .f32(self.base)
            .f32(self.freq_scale)
            .i32(self.yarn)
            .f32(self.ext)
            .f32(self.low)
            .f32(self.span)
            .f32(self.mscale)
    }
}

/// The YaRN arguments of the rope kernels: (on, ext_factor, low, span, mscale).
fn rope_yarn(rope: &Rope) -> (i32, f32, f32, f32, f32) {
    match rope.yarn {
        None => (0, 0.0, 0.0, 1.0, 1.0),
        Some(y) => {
            let r = y.ramp(rope.n_rot, rope.base, rope.freq_scale);
            (1, r.ext_factor, r.low, r.span, r.mscale)
        }
    }
}

/// Outputs per warp of the matmul kernels for `n` rows (`mmv_glu` if `glu`): at 16 rows per
/// block x loads, not weight loads, bound them, so a warp reuses each for several outputs
/// (the `R = 16` kernels). The results do not depend on it.
fn mmv_outs(n: usize, glu: bool) -> usize {
    match (rows_per_block(n), glu) {
        (16, false) => 4,
        (16, true) => 2,
        _ => 1,
    }
}

fn rows_per_block(n: usize) -> usize {
    match n {
        0 | 1 => 1,
        2..=3 => 2,
        4..=7 => 4,
        8..=15 => 8,
        _ => 16,
    }
}

/// Whether two weights share type and shape (so one kernel can read both).
fn same_layout(a: &CudaWeight, b: &CudaWeight) -> bool {
    a.ty == b.ty && a.rows == b.rows && a.cols == b.cols
}

/// Warps that share one output of a matrix-vector product (1, 2 or 4, each a slice of K):
/// more for long rows, and for few outputs, so that enough loads are in flight. A function of
/// the shape alone, so results stay batch-invariant.
fn mmv_split(k: usize, n: usize) -> usize {
    let chunks = k / 32;
    if chunks >= 128 || (n <= 1024 && chunks >= 16) {
        4
    } else if chunks >= 64 {
        2
    } else {
        1
    }
}

/// Rows up to which the integer tensor-core matmuls use their decode kernels (`mmq_*_d`: 16
/// rows per block row, each warp one K slice of 8 outputs); more rows take the prompt kernels
/// (`mmq_*_p`). Both give the same bits, so the choice is free.
const MMQ_DEC_ROWS: usize = 16;
/// Chunks of 32 values per K slice (`MMQ_SLICE` in `kernels/mmq.cu`).
const MMQ_SLICE: usize = 16;
/// Most warps per decode block (`MMQ_DEC_MAXW`).
const MMQ_DEC_MAXW: usize = 8;
/// Rows and outputs of one prompt-kernel block (`MMQ_PRE_ROWS`, `MMQ_PRE_COLS`).
const MMQ_PRE_ROWS: usize = 64;
const MMQ_PRE_COLS: usize = 64;

/// Whether the integer tensor-core kernels take weights of type `ty`.
fn mmq_type(ty: GgmlType) -> bool {
    kernel_type(ty).is_some() && !matches!(ty, GgmlType::F32 | GgmlType::F16 | GgmlType::BF16)
}

/// Tiles of 8 outputs per decode block (`mmq_tpc`): enough (tile, slice) units for 4 warps.
fn mmq_tpc(k: usize) -> usize {
    match (k / 32).div_ceil(MMQ_SLICE) {
        0 | 1 => 4,
        2 | 3 => 2,
        _ => 1,
    }
}

/// Threads per decode block (`mmq_dec_warps`): a warp per (tile, slice) unit, at most
/// `MMQ_DEC_MAXW` warps.
fn mmq_dec_threads(k: usize) -> u32 {
    let units = mmq_tpc(k) * (k / 32).div_ceil(MMQ_SLICE);
    32 * units.min(MMQ_DEC_MAXW) as u32
}

/// Launch shape of an integer tensor-core matmul: `n_out` outputs of rows of `k` values, for
/// `rows` rows (`glu`: gate and up pairs, half the outputs per prompt block).
struct MmqLaunch {
    /// Kernel name suffix: `d` (decode) or `p` (prompt).
    sfx: &'static str,
    /// Blocks along the outputs and along the rows.
    grid: (u32, u32),
    /// Threads per block.
    threads: u32,
}

fn mmq_launch(k: usize, n_out: usize, rows: usize, glu: bool) -> MmqLaunch {
    if rows <= MMQ_DEC_ROWS {
        MmqLaunch {
            sfx: "d",
            grid: (blocks(n_out, 8 * mmq_tpc(k)), blocks(rows, 16)),
            threads: mmq_dec_threads(k),
        }
    } else {
        let cols = if glu { MMQ_PRE_COLS / 2 } else { MMQ_PRE_COLS };
        MmqLaunch {
            sfx: "p",
            grid: (blocks(n_out, cols), blocks(rows, MMQ_PRE_ROWS)),
            threads: 128,
        }
    }
}

fn act_code(act: Activation) -> i32 {
    match act {
        Activation::Silu => 0,
        Activation::GeluTanh => 1,
        Activation::SwigluOai => 2,
    }
}

impl CudaOps {
    /// Whether some of `w` take the integer kernels and others the f32 ones: one launch
    /// cannot serve both, and each must give the bits of its own `matmul`.
    fn mixed_kernels(&self, w: &[&CudaWeight; 3]) -> bool {
        self.mmq && w.iter().any(|w| mmq_type(w.ty)) && !w.iter().all(|w| mmq_type(w.ty))
    }

    /// The last kernel arguments of an integer matmul launch `l` on `x`: none for a decode
    /// kernel; for a prompt kernel, `x` (times the norm weight at `nw`, if not 0) is quantized
    /// ahead (`mq_quantize`) and the addresses of its bytes and per-chunk records follow.
    fn mmq_input(
        &self,
        ex: &mut CudaExec,
        l: &MmqLaunch,
        x: &CudaAct,
        nw: u64,
        args: Args,
    ) -> Result<Args> {
        if l.sfx != "p" {
            return Ok(args);
        }
        let (rows, k) = (x.rows, x.cols);
        let buf = match &ex.mq_x {
            Some(b) if rows <= ex.n_batch_max && k <= ex.max_cols => b.ptr(),
            _ => {
                return Err(BackendError::internal(
                    "no room to quantize a prompt's input",
                ))
            }
        };
        let xm = buf + (ex.n_batch_max * ex.max_cols) as u64;
        self.go(
            ex,
            "mq_quantize",
            (blocks(k / 32, 32), rows as u32, 1),
            128,
            Args::new()
                .u64(x.ptr())
                .i32(x.cols as i32)
                .u64(nw)
                .i32(k as i32)
                .i32(rows as i32)
                .u64(buf)
                .u64(xm),
        )?;
        Ok(args.u64(buf).u64(xm))
    }

    fn check_mmv(&self, x: &CudaAct, w: &CudaWeight, out: &CudaAct) -> Result<()> {
        if w.is_vector
            || w.experts != 1
            || x.cols != w.cols
            || out.cols != w.rows
            || out.rows != x.rows
            || !w.cols.is_multiple_of(32)
        {
            return Err(shape_err("matmul"));
        }
        Ok(())
    }

    /// `out = act(gate·x) * (up·x)`, with `x` RMS-normed first by `norm` (fused; gate and
    /// up of one type).
    #[allow(clippy::too_many_arguments)]
    fn glu_mmv(
        &self,
        ex: &mut CudaExec,
        x: &CudaAct,
        norm: Option<(&CudaWeight, f32)>,
        gate: &CudaWeight,
        up: &CudaWeight,
        act: Activation,
        out: &mut CudaAct,
        tmp: &mut CudaAct,
    ) -> Result<()> {
        if !same_layout(gate, up) {
            if norm.is_some() {
                return Err(shape_err("matmul_glu"));
            }
            self.mmv(ex, x, gate, None, false, out)?;
            self.mmv(ex, x, up, None, false, tmp)?;
            return self.glu(ex, out, tmp, act);
        }
        self.check_mmv(x, gate, out)?;
        let t = kernel_type(gate.ty).ok_or_else(|| shape_err("matmul type"))?;
        let (n, r) = (x.rows, rows_per_block(x.rows));
        if n == 0 {
            return Ok(());
        }
        let (np, eps) = self.norm_arg(norm, x.cols)?;
        // The parameters both kernel families share (`mmv_glu` then takes its split).
        let args = Args::new()
            .u64(gate.buf.ptr())
            .u64(up.buf.ptr())
            .u64(x.ptr())
            .u64(out.ptr())
            .i32(gate.cols as i32)
            .i32(gate.rows as i32)
            .i32(n as i32)
            .i32(x.cols as i32)
            .i32(out.cols as i32)
            .i32(act_code(act));
        if self.mmq && mmq_type(gate.ty) {
            let l = mmq_launch(gate.cols, gate.rows, n, true);
            let args = self.mmq_input(ex, &l, x, np, args.u64(np).f32(eps))?;
            return self.go(
                ex,
                &format!("mmq_glu_{t}_{}", l.sfx),
                (l.grid.0, l.grid.1, 1),
                l.threads,
                args,
            );
        }
        let split = mmv_split(gate.cols, gate.rows);
        let outs = mmv_outs(n, true);
        self.go(
            ex,
            &format!("mmv_glu_{t}_r{r}"),
            (blocks(gate.rows, 4 / split * outs), blocks(n, r), 1),
            128,
            args.i32(split as i32).u64(np).f32(eps),
        )
    }

    /// The kernel arguments of an optional fused RMS norm over rows of `cols`: the weight's
    /// address (0: none) and epsilon.
    fn norm_arg(&self, norm: Option<(&CudaWeight, f32)>, cols: usize) -> Result<(u64, f32)> {
        match norm {
            Some((nw, eps)) => Ok((self.vector(nw, cols, "norm weight")?, eps)),
            None => Ok((0, 0.0)),
        }
    }

    /// Up to three projections of `x` (RMS-normed first with `norm`, fused) in one launch.
    fn qkv(
        &self,
        ex: &mut CudaExec,
        x: &CudaAct,
        norm: Option<(&CudaWeight, f32)>,
        w: [&CudaWeight; 3],
        b: [Option<&CudaWeight>; 3],
        out: [&mut CudaAct; 3],
    ) -> Result<()> {
        let (n, r) = (x.rows, rows_per_block(x.rows));
        let outs = mmv_outs(n, false);
        let (np, eps) = self.norm_arg(norm, x.cols)?;
        // The integer kernels when every segment has a quantized type (a function of the
        // weights alone, so every number of rows takes the same path).
        let int8 = self.mmq && w.iter().all(|w| mmq_type(w.ty));
        let mut args = Args::new()
            .u64(x.ptr())
            .i32(x.cols as i32)
            .i32(n as i32)
            .i32(x.cols as i32)
            .u64(np)
            .f32(eps);
        let mut nblk_total = 0u32;
        for ((w, b), o) in w.into_iter().zip(b).zip(out) {
            self.check_mmv(x, w, o)?;
            let bp = match b {
                Some(b) => self.vector(b, w.rows, "matmul bias")?,
                None => 0,
            };
            kernel_type(w.ty).ok_or_else(|| shape_err("matmul type"))?;
            if int8 {
                let nblk = mmq_launch(w.cols, w.rows, n, false).grid.0;
                nblk_total += nblk;
                args = args
                    .u64(w.buf.ptr())
                    .u64(bp)
                    .u64(o.ptr())
                    .i32(w.ty as i32)
                    .i32(w.rows as i32)
                    .i32(o.cols as i32)
                    .i32(nblk as i32);
                continue;
            }
            let split = mmv_split(w.cols, w.rows);
            let nblk = blocks(w.rows, 4 / split * outs);
            nblk_total += nblk;
            args = args
                .u64(w.buf.ptr())
                .u64(bp)
                .u64(o.ptr())
                .i32(w.ty as i32)
                .i32(w.rows as i32)
                .i32(o.cols as i32)
                .i32(split as i32)
                .i32(nblk as i32);
        }
        if n == 0 {
            return Ok(());
        }
        if int8 {
            let l = mmq_launch(x.cols, 1, n, false);
            let args = self.mmq_input(ex, &l, x, np, args)?;
            return self.go(
                ex,
                &format!("mmq_seg_{}", l.sfx),
                (nblk_total, l.grid.1, 1),
                l.threads,
                args,
            );
        }
        self.go(
            ex,
            &format!("mmv_seg_r{r}"),
            (nblk_total, blocks(n, r), 1),
            128,
            args,
        )
    }

    /// `out = W·x (+ b)`, or `out += W·x (+ b)` when `accumulate`.
    fn mmv(
        &self,
        ex: &mut CudaExec,
        x: &CudaAct,
        w: &CudaWeight,
        b: Option<&CudaWeight>,
        accumulate: bool,
        out: &mut CudaAct,
    ) -> Result<()> {
        self.check_mmv(x, w, out)?;
        let bp = match b {
            Some(b) => self.vector(b, w.rows, "matmul bias")?,
            None => 0,
        };
        let t = kernel_type(w.ty).ok_or_else(|| shape_err("matmul type"))?;
        let (n, r) = (x.rows, rows_per_block(x.rows));
        if n == 0 {
            return Ok(());
        }
        // The parameters both kernel families share (`mmv` then takes its split).
        let args = Args::new()
            .u64(w.buf.ptr())
            .u64(x.ptr())
            .u64(out.ptr())
            .i32(w.cols as i32)
            .i32(w.rows as i32)
            .i32(n as i32)
            .i32(x.cols as i32)
            .i32(out.cols as i32)
            .u64(bp)
            .i32(accumulate as i32);
        if self.mmq && mmq_type(w.ty) {
            let l = mmq_launch(w.cols, w.rows, n, false);
            let args = self.mmq_input(ex, &l, x, 0, args)?;
            return self.go(
                ex,
                &format!("mmq_{t}_{}", l.sfx),
                (l.grid.0, l.grid.1, 1),
                l.threads,
                args,
            );
        }
        let split = mmv_split(w.cols, w.rows);
        let outs = mmv_outs(n, false);
        self.go(
            ex,
            &format!("mmv_{t}_r{r}"),
            (blocks(w.rows, 4 / split * outs), blocks(n, r), 1),
            128,
            args.i32(split as i32),
        )
    }

    /// Stores a step's keys and values into a layer's cache at the staged rows `d_rows`.
    #[allow(clippy::too_many_arguments)]
    fn kv_store(
        &self,
        ex: &mut CudaExec,
        l: &KvLayer,
        k: &CudaAct,
        v: &CudaAct,
        d_rows: u64,
        n: usize,
        n_ctx: usize,
        kw: usize,
        vw: usize,
    ) -> Result<()> {
        self.go(
            ex,
            "kv_store",
            (n as u32, 1, 1),
            128,
            Args::new()
                .u64(k.ptr())
                .u64(v.ptr())
                .u64(l.k.ptr())
                .u64(l.v.ptr())
                .u64(d_rows)
                .i32(n_ctx as i32)
                .i32(kw as i32)
                .i32(vw as i32),
        )
    }

    /// Rotary embeddings of `x1` and, if given, `x2` in one launch.
    fn rope2(
        &self,
        ex: &mut CudaExec,
        x1: &mut CudaAct,
        x2: Option<&mut CudaAct>,
        positions: &[i32],
        head_dim: usize,
        rope: &Rope,
    ) -> Result<()> {
        let bad = |x: &CudaAct| {
            positions.len() != x.rows || head_dim == 0 || !x.cols.is_multiple_of(head_dim)
        };
        if bad(x1)
            || x2.as_deref().is_some_and(bad)
            || rope.n_rot > head_dim
            || !rope.n_rot.is_multiple_of(2)
        {
            return Err(shape_err("rope"));
        }
        let d = ex.ids(positions, 1)?;
        let (yarn, ext, low, span, mscale) = rope_yarn(rope);
        let (p2, c2) = x2.map_or((0, 0), |x| (x.ptr(), x.cols));
        let heads = x1.cols / head_dim + if p2 != 0 { c2 / head_dim } else { 0 };
        let n = x1.rows * heads * (rope.n_rot / 2);
        self.go(
            ex,
            "rope",
            (blocks(n, 256), 1, 1),
            256,
            Args::new()
                .u64(x1.ptr())
                .i32(x1.cols as i32)
                .u64(p2)
                .i32(c2 as i32)
                .u64(d)
                .i32(x1.rows as i32)
                .i32(head_dim as i32)
                .i32(rope.n_rot as i32)
                .i32((rope.style == RopeStyle::Neox) as i32)
                .f32(rope.base)
                .f32(rope.freq_scale)
                .i32(yarn)
                .f32(ext)
                .f32(low)
                .f32(span)
                .f32(mscale),
        )
    }

    /// Serves output row `i` on the host from a copy of its logits.
    fn host_row(
        &self,
        ex: &mut CudaExec,
        logits: &CudaAct,
        i: usize,
        o: &mut RowOutput<'_>,
    ) -> Result<()> {
        let cols = logits.cols;
        // SAFETY: `row_h` holds `n_vocab` floats; synced before reading.
        unsafe {
            let dst = std::slice::from_raw_parts_mut(ex.row_h.as_ptr(), cols * 4);
            ex.stream
                .dtoh(dst, logits.ptr() + (i * cols * 4) as u64)
                .map_err(cu)?;
        }
        ex.stream.sync().map_err(cu)?;
        let mut row: Vec<f32> = ex.row_h.as_slice()[..cols * 4]
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        write_output(&mut row, o, &mut ex.top)
    }
}
