//! The per-op conformance check: runs every [`Ops`] method of a backend on random inputs and
//! compares it with the plain f32 reference ([`RefOps`]), for every weight type the backend
//! supports. It also checks the contract's structural rules: rows are independent (a row
//! computed alone or inside a batch gives the same bits), activations keep their capacity,
//! and outputs apply bans before anything else.
//!
//! Tolerances ([`OpsTolerance`]) are relative to the RMS of the reference result. The
//! defaults fit a backend that computes in f32 with 8-bit quantized activations for
//! quantized weights, an f16 KV cache (f16 query and accumulator in attention), and table-based
//! GELU (as llama.cpp's CPU backend, and Kiln's, do). The inputs have outlier channels (12× the
//! typical value every 61 columns), as real activations do: with 8-bit activations in blocks
//! of 32 (or 256 for the k-quants) they dominate the quantization error of their block.
//!
//!
//! | operation | default limit (× RMS of the reference) |
//! |---|---|
//! | `embed`, `gather_rows`, `add`, `add_bias`, `scale`, `write`/`read` | 1e-6 |
//! | `rms_norm` | 1e-5 |
//! | `rope` (positions up to 4096) | 1e-3 |
//! | `glu` SiLU / GELU | 1e-5 / 4e-3 |
//! | `matmul`, float weights (F32, F16, BF16) | 1e-5 |
//! | `matmul`, weights in 32-value blocks (Q4_0…Q8_0, MXFP4) | 6e-2 |
//! | `matmul`, k-quant weights (256-value blocks) | 0.15 |
//! | `attention` (f16 cache; with and without sinks) | 1e-2 |
//! | `rope` with YaRN (factor 32, NeoX and normal) | 1e-3 |
//! | `glu` SwiGLU-OAI (clamped at ±7) | 1e-5 |
//! | `moe_route` (expert ids exact; weights) | 1e-5 |
//! | `matmul_experts` (2304 values per case) | 1.5 × `matmul`'s limit of the weight type |
//! | `moe_combine` | 1e-5 |
//! | `outputs` (top-N ids exact; lse, target) | 1e-6 |
//!
//! Use it from a test of your backend crate:
//! `kiln_sdk::conformance::ops::check(&MyOps::new(), &types, &OpsTolerance::default())`.

use crate::backend::{BackendError, RowOutput, Want};
use crate::gguf::TensorInfo;
use crate::model::ops::{
    Activation, Attention, ExecSpec, KvShape, Ops, Rope, RopeStyle, RowPos, Yarn,
};
use crate::model::RefOps;
use crate::quant::random::{random_tensor, Rng};
use crate::quant::GgmlType;

/// Limits of the per-op check, relative to the RMS of the reference result.
#[derive(Clone, Copy, Debug)]
pub struct OpsTolerance {
    /// Copies and element-wise arithmetic.
    pub exact: f32,
    /// `rms_norm`.
    pub norm: f32,
    /// `rope`.
    pub rope: f32,
    /// `glu` with SiLU.
    pub silu: f32,
    /// `glu` with GELU.
    pub gelu: f32,
    /// `matmul` with F32/F16/BF16 weights.
    pub matmul_float: f32,
    /// `matmul` with weights in 32-value blocks (legacy types, MXFP4).
    pub matmul_quant: f32,
    /// `matmul` with k-quant weights (256-value blocks, so 256-value activation blocks).
    pub matmul_kquant: f32,
    /// `attention`.
    pub attention: f32,
    /// `glu` with SwiGLU-OAI.
    pub swiglu_oai: f32,
    /// `moe_route` weights (the expert ids must match exactly).
    pub moe_route: f32,
    /// `moe_combine`.
    pub moe_combine: f32,
}

impl Default for OpsTolerance {
    fn default() -> Self {
        OpsTolerance {
            exact: 1e-6,
            norm: 1e-5,
            rope: 1e-3,
            silu: 1e-5,
            gelu: 4e-3,
            matmul_float: 1e-5,
            matmul_quant: 6e-2,
            matmul_kquant: 0.15,
            attention: 1e-2,
            swiglu_oai: 1e-5,
            moe_route: 1e-5,
            moe_combine: 1e-5,
        }
    }
}

/// What the check measured: one line per operation and case, with the largest error.
#[derive(Clone, Debug, Default)]
pub struct OpsReport {
    /// `op case: error (limit)` lines.
    pub lines: Vec<String>,
}

type R<T> = Result<T, String>;

fn be(what: &str) -> impl Fn(BackendError) -> String + '_ {
    move |e| format!("{what}: {e}")
}

/// Random tensor bytes that weights may borrow as `'static` while the store lives.
#[derive(Default)]
struct Store {
    bufs: Vec<Box<[u8]>>,
}

impl Store {
    /// A tensor of `ty` with `dims` (row length first) holding `data`.
    fn tensor(&mut self, ty: GgmlType, dims: &[u64], data: Vec<u8>) -> TensorInfo<'static> {
        let b = data.into_boxed_slice();
        // SAFETY: the boxed bytes never move and live in `self.bufs` until the store drops;
        // every weight made from them is dropped before the store (declared after it).
        let data: &'static [u8] = unsafe { std::slice::from_raw_parts(b.as_ptr(), b.len()) };
        self.bufs.push(b);
        TensorInfo {
            name: "conformance",
            ty,
            dims: dims.to_vec(),
            offset: 0,
            data,
        }
    }
}

fn rms(v: &[f32]) -> f32 {
    (v.iter().map(|&x| x as f64 * x as f64).sum::<f64>() / v.len().max(1) as f64).sqrt() as f32
}

fn rel_err(got: &[f32], want: &[f32]) -> f32 {
    let r = rms(want).max(1e-12);
    got.iter()
        .zip(want)
        .map(|(a, b)| if a == b { 0.0 } else { (a - b).abs() / r })
        .fold(
            0.0,
            |m: f32, e| if e.is_nan() { f32::INFINITY } else { m.max(e) },
        )
}

fn values(n: usize, scale: f32, rng: &mut Rng) -> Vec<f32> {
    (0..n)
        .map(|i| {
            let v = rng.symmetric() * scale;
            // A few outlier channels, as real activations have.
            if i % 61 == 7 {
                v * 12.0
            } else {
                v
            }
        })
        .collect()
}

/// The two implementations side by side.
struct Pair<'o, O: Ops> {
    ops: &'o O,
    ex: O::Exec,
    r: RefOps,
    rex: <RefOps as Ops>::Exec,
    tol: OpsTolerance,
    report: OpsReport,
}

impl<O: Ops> Pair<'_, O> {
    fn acts(
        &mut self,
        rows: usize,
        cols: usize,
        data: &[f32],
    ) -> R<(O::Act, <RefOps as Ops>::Act)> {
        let mut a = self.ops.act(rows, cols).map_err(be("act"))?;
        self.ops
            .write(&mut self.ex, &mut a, data)
            .map_err(be("write"))?;
        let mut b = self.r.act(rows, cols).map_err(be("reference act"))?;
        self.r
            .write(&mut self.rex, &mut b, data)
            .map_err(be("reference write"))?;
        Ok((a, b))
    }

    fn read(&mut self, a: &O::Act) -> R<Vec<f32>> {
        let (r, c) = self.ops.act_shape(a);
        let mut v = vec![0f32; r * c];
        self.ops.read(&mut self.ex, a, &mut v).map_err(be("read"))?;
        Ok(v)
    }

    fn read_ref(&mut self, a: &<RefOps as Ops>::Act) -> R<Vec<f32>> {
        let (r, c) = self.r.act_shape(a);
        let mut v = vec![0f32; r * c];
        self.r
            .read(&mut self.rex, a, &mut v)
            .map_err(be("reference read"))?;
        Ok(v)
    }

    /// Compares and records.
    fn expect(&mut self, what: String, got: &[f32], want: &[f32], limit: f32) -> R<()> {
        if got.len() != want.len() {
            return Err(format!(
                "{what}: {} values, expected {}",
                got.len(),
                want.len()
            ));
        }
        let err = rel_err(got, want);
        if err > limit || err.is_nan() {
            let (i, _) = got
                .iter()
                .zip(want)
                .enumerate()
                .max_by(|a, b| ((a.1 .0 - a.1 .1).abs()).total_cmp(&(b.1 .0 - b.1 .1).abs()))
                .unwrap_or((0, (&0.0, &0.0)));
            return Err(format!(
                "{what}: error {err:.3e} × rms exceeds {limit:.1e} (value {i}: {} vs reference {})",
                got[i], want[i]
            ));
        }
        self.report
            .lines
            .push(format!("{what}: {err:.2e} (limit {limit:.0e})"));
        Ok(())
    }
}

fn same_bits(a: &[f32], b: &[f32], what: &str) -> R<()> {
    match a
        .iter()
        .zip(b)
        .position(|(x, y)| x.to_bits() != y.to_bits())
    {
        None if a.len() == b.len() => Ok(()),
        None => Err(format!("{what}: lengths differ")),
        Some(i) => Err(format!(
            "{what}: value {i} is {:e} inside a batch but {:e} alone (rows must be independent)",
            a[i], b[i]
        )),
    }
}

/// Runs every operation of `ops` against the reference for the weight types `types` (those
/// the backend supports). Returns the measured errors, or the first violation.
pub fn check<O: Ops>(ops: &O, types: &[GgmlType], tol: &OpsTolerance) -> R<OpsReport> {
    let mut store = Store::default();
    let spec = ExecSpec {
        n_batch_max: 16,
        n_logit_rows: 8,
        n_vocab: 3000,
        max_cols: 3000,
        expert_cols: MOE_IN.max(MOE_OUT),
    };
    let mut p = Pair {
        ops,
        ex: ops.exec(&spec).map_err(be("exec"))?,
        r: RefOps,
        rex: RefOps.exec(&spec).map_err(be("reference exec"))?,
        tol: *tol,
        report: OpsReport::default(),
    };
    let mut rng = Rng::new(0x5eed);
    check_acts(&mut p, &mut rng)?;
    check_elementwise(&mut p, &mut store, &mut rng)?;
    for &ty in types {
        check_embed(&mut p, &mut store, ty, &mut rng)?;
        check_matmul(&mut p, &mut store, ty, &mut rng)?;
        check_matmul_qkv(&mut p, &mut store, ty, &mut rng)?;
        check_norm_matmul_glu(&mut p, &mut store, ty, &mut rng)?;
    }
    check_rope(&mut p, &mut rng)?;
    check_attention(&mut p, &mut rng)?;
    check_outputs(&mut p, &mut rng)?;
    // The mixture-of-experts operations draw from their own generator, so that the cases
    // above keep their inputs.
    let mut rng = Rng::new(0x6d6f65);
    for &ty in types {
        check_matmul_experts(&mut p, &mut store, ty, &mut rng)?;
    }
    check_moe_route_combine(&mut p, &mut rng)?;
    Ok(p.report)
}

/// A backend's limit for matmuls of weight type `ty`.
fn matmul_limit(tol: &OpsTolerance, ty: GgmlType) -> f32 {
    if matches!(ty, GgmlType::F32 | GgmlType::F16 | GgmlType::BF16) {
        tol.matmul_float
    } else if ty.block_size() == crate::quant::QK_K {
        tol.matmul_kquant
    } else {
        tol.matmul_quant
    }
}

/// A random `rows x cols` weight of type `ty`, loaded by the backend and by the reference.
fn matrix<O: Ops>(
    p: &mut Pair<'_, O>,
    store: &mut Store,
    ty: GgmlType,
    rows: usize,
    cols: usize,
    rng: &mut Rng,
) -> R<(O::Weight, <RefOps as Ops>::Weight)> {
    let data = random_tensor(ty, rows * cols, 1.0 / (cols as f32).sqrt(), rng);
    let t = store.tensor(ty, &[cols as u64, rows as u64], data);
    Ok((
        p.ops.weight(&t).map_err(be(&format!("{ty} weight")))?,
        p.r.weight(&t).map_err(be("reference weight"))?,
    ))
}

/// A norm weight of `n` values near 1, loaded by the backend and by the reference.
fn norm_weight<O: Ops>(
    p: &mut Pair<'_, O>,
    store: &mut Store,
    n: usize,
    rng: &mut Rng,
) -> R<(O::Weight, <RefOps as Ops>::Weight)> {
    let data: Vec<u8> = (0..n)
        .flat_map(|_| (1.0 + 0.3 * rng.symmetric()).to_le_bytes())
        .collect();
    let t = store.tensor(GgmlType::F32, &[n as u64], data);
    Ok((
        p.ops.weight(&t).map_err(be("norm weight"))?,
        p.r.weight(&t).map_err(be("reference weight"))?,
    ))
}

/// `rms_norm` of `x` (`rows x cols`, groups of the weight's length) into a buffer holding `y`,
/// against the reference.
#[allow(clippy::too_many_arguments)]
fn check_rms_norm<O: Ops>(
    p: &mut Pair<'_, O>,
    w: &O::Weight,
    rw: &<RefOps as Ops>::Weight,
    rows: usize,
    cols: usize,
    x: &[f32],
    y: &[f32],
    what: String,
) -> R<()> {
    let (a, ra) = p.acts(rows, cols, x)?;
    let (mut o, mut ro) = p.acts(rows, cols, y)?;
    p.ops
        .rms_norm(&mut p.ex, &a, w, 1e-6, &mut o)
        .map_err(be("rms_norm"))?;
    p.r.rms_norm(&mut p.rex, &ra, rw, 1e-6, &mut ro)
        .map_err(be("rms_norm"))?;
    let (got, want) = (p.read(&o)?, p.read_ref(&ro)?);
    p.expect(what, &got, &want, p.tol.norm)
}

fn check_acts<O: Ops>(p: &mut Pair<'_, O>, rng: &mut Rng) -> R<()> {
    let data = values(5 * 40, 1.0, rng);
    let (mut a, _) = p.acts(5, 40, &data)?;
    let back = p.read(&a)?;
    same_bits(&back, &data, "write then read")?;
    p.ops.set_rows(&mut a, 2).map_err(be("set_rows"))?;
    if p.ops.act_shape(&a) != (2, 40) {
        return Err("set_rows(2) did not give 2 rows in use".into());
    }
    let back = p.read(&a)?;
    same_bits(&back, &data[..80], "rows kept by set_rows")?;
    if p.ops.set_rows(&mut a, 6).is_ok() {
        return Err("set_rows past the capacity was accepted".into());
    }
    Ok(())
}

fn check_elementwise<O: Ops>(p: &mut Pair<'_, O>, store: &mut Store, rng: &mut Rng) -> R<()> {
    // rms_norm over long rows (backends may take another path for those).
    {
        let (rows, cols) = (3, 1536);
        let x = values(rows * cols, 2.0, rng);
        let (w, rw) = norm_weight(p, store, cols, rng)?;
        check_rms_norm(
            p,
            &w,
            &rw,
            rows,
            cols,
            &x,
            &x,
            format!("rms_norm rows of {cols}"),
        )?;
    }
    let (rows, cols) = (6, 256);
    let x = values(rows * cols, 2.0, rng);
    let y = values(rows * cols, 2.0, rng);
    let exact = p.tol.exact;
    // rms_norm over the full row and per 64-column head.
    for g in [cols, 64] {
        let (w, rw) = norm_weight(p, store, g, rng)?;
        check_rms_norm(
            p,
            &w,
            &rw,
            rows,
            cols,
            &x,
            &y,
            format!("rms_norm groups of {g}"),
        )?;
        // add_bias with the same vector as a bias (full rows only).
        if g == cols {
            let (mut a, mut ra) = p.acts(rows, cols, &x)?;
            p.ops
                .add_bias(&mut p.ex, &mut a, &w)
                .map_err(be("add_bias"))?;
            p.r.add_bias(&mut p.rex, &mut ra, &rw)
                .map_err(be("add_bias"))?;
            let (got, want) = (p.read(&a)?, p.read_ref(&ra)?);
            p.expect("add_bias".into(), &got, &want, exact)?;
        }
    }
    let (mut a, mut ra) = p.acts(rows, cols, &x)?;
    let (b, rb) = p.acts(rows, cols, &y)?;
    p.ops.add(&mut p.ex, &mut a, &b).map_err(be("add"))?;
    p.r.add(&mut p.rex, &mut ra, &rb).map_err(be("add"))?;
    let (got, want) = (p.read(&a)?, p.read_ref(&ra)?);
    p.expect("add".into(), &got, &want, exact)?;
    p.ops.scale(&mut p.ex, &mut a, 0.37).map_err(be("scale"))?;
    p.r.scale(&mut p.rex, &mut ra, 0.37).map_err(be("scale"))?;
    let (got, want) = (p.read(&a)?, p.read_ref(&ra)?);
    p.expect("scale".into(), &got, &want, exact)?;
    for (act, limit, name) in [
        (Activation::Silu, p.tol.silu, "glu silu"),
        (Activation::GeluTanh, p.tol.gelu, "glu gelu"),
        (Activation::SwigluOai, p.tol.swiglu_oai, "glu swiglu-oai"),
    ] {
        let (mut g, mut rg) = p.acts(rows, cols, &x)?;
        let (u, ru) = p.acts(rows, cols, &y)?;
        p.ops.glu(&mut p.ex, &mut g, &u, act).map_err(be(name))?;
        p.r.glu(&mut p.rex, &mut rg, &ru, act).map_err(be(name))?;
        let (got, want) = (p.read(&g)?, p.read_ref(&rg)?);
        p.expect(name.into(), &got, &want, limit)?;
    }
    let (a, ra) = p.acts(rows, cols, &x)?;
    let (mut o, mut ro) = p.acts(3, cols, &y[..3 * cols])?;
    p.ops
        .gather_rows(&mut p.ex, &a, &[4, 0, 5], &mut o)
        .map_err(be("gather_rows"))?;
    p.r.gather_rows(&mut p.rex, &ra, &[4, 0, 5], &mut ro)
        .map_err(be("gather_rows"))?;
    let (got, want) = (p.read(&o)?, p.read_ref(&ro)?);
    p.expect("gather_rows".into(), &got, &want, exact)?;
    Ok(())
}

fn check_embed<O: Ops>(
    p: &mut Pair<'_, O>,
    store: &mut Store,
    ty: GgmlType,
    rng: &mut Rng,
) -> R<()> {
    let (vocab, cols) = (40usize, 256usize);
    let t = store.tensor(
        ty,
        &[cols as u64, vocab as u64],
        random_tensor(ty, vocab * cols, 1.0, rng),
    );
    let w = p.ops.weight(&t).map_err(be(&format!("{ty} weight")))?;
    let rw = p.r.weight(&t).map_err(be("reference weight"))?;
    let ids = [3i32, 0, 39, 17, 3];
    let zeros = vec![0f32; ids.len() * cols];
    let (mut o, mut ro) = p.acts(ids.len(), cols, &zeros)?;
    p.ops
        .embed(&mut p.ex, &w, &ids, &mut o)
        .map_err(be("embed"))?;
    p.r.embed(&mut p.rex, &rw, &ids, &mut ro)
        .map_err(be("embed"))?;
    let (got, want) = (p.read(&o)?, p.read_ref(&ro)?);
    p.expect(format!("embed {ty}"), &got, &want, p.tol.exact)
}

/// Rows of a prompt-sized batch: backends may switch kernels at some row count, and a row's
/// bits must not change with it.
const PROMPT_BATCH: usize = 70;

/// `n` activation rows of `cols`: the first 9 from `rng`, any more from a generator of their
/// own (so the checks after them draw the same values whatever `n` is).
fn batch_values(n: usize, cols: usize, rng: &mut Rng) -> Vec<f32> {
    let mut x = values(n.min(9) * cols, 1.0, rng);
    if n > 9 {
        let mut more = Rng::new(0xba7c ^ cols as u64);
        x.extend(values((n - 9) * cols, 1.0, &mut more));
    }
    x
}

fn check_matmul<O: Ops>(
    p: &mut Pair<'_, O>,
    store: &mut Store,
    ty: GgmlType,
    rng: &mut Rng,
) -> R<()> {
    let limit = matmul_limit(&p.tol, ty);
    for (rows, cols, n) in [
        (7usize, 256usize, 9usize),
        (67, 768, PROMPT_BATCH),
        (1030, 2048, 9),
    ] {
        let (w, rw) = matrix(p, store, ty, rows, cols, rng)?;
        let x = batch_values(n, cols, rng);
        let zeros = vec![0f32; n * rows];
        let (a, ra) = p.acts(n, cols, &x)?;
        let (mut o, mut ro) = p.acts(n, rows, &zeros)?;
        p.ops
            .matmul(&mut p.ex, &a, &w, &mut o)
            .map_err(be(&format!("matmul {ty}")))?;
        p.r.matmul(&mut p.rex, &ra, &rw, &mut ro)
            .map_err(be("reference matmul"))?;
        let (got, want) = (p.read(&o)?, p.read_ref(&ro)?);
        p.expect(
            format!("matmul {ty} {rows}x{cols}, {n} rows"),
            &got,
            &want,
            limit,
        )?;
        // Rows are independent: each row alone gives the same bits.
        for i in [0, 4, n - 1] {
            let (a1, _) = p.acts(1, cols, &x[i * cols..(i + 1) * cols])?;
            let (mut o1, _) = p.acts(1, rows, &zeros[..rows])?;
            p.ops
                .matmul(&mut p.ex, &a1, &w, &mut o1)
                .map_err(be("matmul of one row"))?;
            let alone = p.read(&o1)?;
            same_bits(
                &got[i * rows..(i + 1) * rows],
                &alone,
                &format!("matmul {ty} row {i}"),
            )?;
        }
    }
    Ok(())
}

/// `matmul_qkv` over three weights (this type, Q8_0, this type; with and without biases)
/// gives the bits of three `matmul_bias` calls.
fn check_matmul_qkv<O: Ops>(
    p: &mut Pair<'_, O>,
    store: &mut Store,
    ty: GgmlType,
    rng: &mut Rng,
) -> R<()> {
    let cols = 768;
    let parts = [
        (ty, 40usize, true),
        (GgmlType::Q8_0, 16, false),
        (ty, 24, true),
    ];
    let mut ws = Vec::new();
    let mut bs = Vec::new();
    let mut rws = Vec::new();
    let mut rbs = Vec::new();
    for &(t, rows, bias) in &parts {
        let (w, rw) = matrix(p, store, t, rows, cols, rng)?;
        ws.push(w);
        rws.push(rw);
        if bias {
            let v: Vec<u8> = values(rows, 0.5, rng)
                .iter()
                .flat_map(|f| f.to_le_bytes())
                .collect();
            let ten = store.tensor(GgmlType::F32, &[rows as u64], v);
            bs.push(Some(p.ops.weight(&ten).map_err(be("bias"))?));
            rbs.push(Some(p.r.weight(&ten).map_err(be("reference bias"))?));
        } else {
            bs.push(None);
            rbs.push(None);
        }
    }
    // The fused norm: against the reference's norm then matmuls, and a row alone against the
    // same row in a batch.
    let limit = p
        .tol
        .matmul_kquant
        .max(p.tol.matmul_quant)
        .max(p.tol.matmul_float);
    let (nw, rnw) = norm_weight(p, store, cols, rng)?;
    let x = batch_values(PROMPT_BATCH, cols, rng);
    let mut batch = Vec::new();
    for n in [PROMPT_BATCH, 1] {
        let (a, ra) = p.acts(n, cols, &x[..n * cols])?;
        let (mut h, mut rh) = p.acts(n, cols, &x[..n * cols])?;
        let mut o = Vec::new();
        let mut ro = Vec::new();
        for &(_, rows, _) in &parts {
            let (g, r) = p.acts(n, rows, &vec![0f32; n * rows])?;
            o.push(g);
            ro.push(r);
        }
        let [o0, o1, o2] = &mut o[..] else {
            return Err("three outputs".into());
        };
        p.ops
            .norm_matmul_qkv(
                &mut p.ex,
                &a,
                &nw,
                1e-6,
                &mut h,
                [&ws[0], &ws[1], &ws[2]],
                [bs[0].as_ref(), bs[1].as_ref(), bs[2].as_ref()],
                [o0, o1, o2],
            )
            .map_err(be(&format!("norm_matmul_qkv {ty}")))?;
        let [r0, r1, r2] = &mut ro[..] else {
            return Err("three outputs".into());
        };
        p.r.norm_matmul_qkv(
            &mut p.rex,
            &ra,
            &rnw,
            1e-6,
            &mut rh,
            [&rws[0], &rws[1], &rws[2]],
            [rbs[0].as_ref(), rbs[1].as_ref(), rbs[2].as_ref()],
            [r0, r1, r2],
        )
        .map_err(be("reference norm_matmul_qkv"))?;
        for i in 0..3 {
            let (got, want) = (p.read(&o[i])?, p.read_ref(&ro[i])?);
            p.expect(
                format!("norm_matmul_qkv {ty} part {i}, {n} rows"),
                &got,
                &want,
                limit,
            )?;
            if n == PROMPT_BATCH {
                batch.push(got);
            } else {
                let rows = parts[i].1;
                same_bits(
                    &batch[i][..rows],
                    &got,
                    &format!("norm_matmul_qkv {ty} part {i}: row 0 alone"),
                )?;
            }
        }
    }
    for n in [1usize, 9] {
        let x = values(n * cols, 1.0, rng);
        let (a, _) = p.acts(n, cols, &x)?;
        let mut fused = Vec::new();
        let mut apart = Vec::new();
        for &(_, rows, _) in &parts {
            fused.push(p.acts(n, rows, &vec![0f32; n * rows])?.0);
            apart.push(p.acts(n, rows, &vec![0f32; n * rows])?.0);
        }
        let [f0, f1, f2] = &mut fused[..] else {
            return Err("three outputs".into());
        };
        p.ops
            .matmul_qkv(
                &mut p.ex,
                &a,
                [&ws[0], &ws[1], &ws[2]],
                [bs[0].as_ref(), bs[1].as_ref(), bs[2].as_ref()],
                [f0, f1, f2],
            )
            .map_err(be(&format!("matmul_qkv {ty}")))?;
        for i in 0..3 {
            p.ops
                .matmul_bias(&mut p.ex, &a, &ws[i], bs[i].as_ref(), &mut apart[i])
                .map_err(be("matmul_bias"))?;
            let (got, want) = (p.read(&fused[i])?, p.read(&apart[i])?);
            same_bits(&got, &want, &format!("matmul_qkv {ty} part {i}, {n} rows"))?;
        }
    }
    Ok(())
}

/// `norm_matmul_glu` against the reference's norm then `matmul_glu`, and a row alone against
/// the same row in a batch.
fn check_norm_matmul_glu<O: Ops>(
    p: &mut Pair<'_, O>,
    store: &mut Store,
    ty: GgmlType,
    rng: &mut Rng,
) -> R<()> {
    let (cols, rows) = (768, 72);
    // The product of two projections (and SiLU): up to four times a projection's error (the
    // CPU's 8-bit activations reach 3.8x on Q4_0 over 70 rows x 72 outputs).
    let limit = 4.0 * matmul_limit(&p.tol, ty);
    let (g, rg) = matrix(p, store, ty, rows, cols, rng)?;
    let (u, ru) = matrix(p, store, ty, rows, cols, rng)?;
    let (nw, rnw) = norm_weight(p, store, cols, rng)?;
    let x = batch_values(PROMPT_BATCH, cols, rng);
    let mut batch = Vec::new();
    for n in [PROMPT_BATCH, 1] {
        let (a, ra) = p.acts(n, cols, &x[..n * cols])?;
        let (mut h, mut rh) = p.acts(n, cols, &x[..n * cols])?;
        let zeros = vec![0f32; n * rows];
        let (mut o, mut ro) = p.acts(n, rows, &zeros)?;
        let (mut t, mut rt) = p.acts(n, rows, &zeros)?;
        p.ops
            .norm_matmul_glu(
                &mut p.ex,
                &a,
                &nw,
                1e-6,
                &mut h,
                &g,
                &u,
                Activation::Silu,
                &mut o,
                &mut t,
            )
            .map_err(be(&format!("norm_matmul_glu {ty}")))?;
        p.r.norm_matmul_glu(
            &mut p.rex,
            &ra,
            &rnw,
            1e-6,
            &mut rh,
            &rg,
            &ru,
            Activation::Silu,
            &mut ro,
            &mut rt,
        )
        .map_err(be("reference norm_matmul_glu"))?;
        let (got, want) = (p.read(&o)?, p.read_ref(&ro)?);
        p.expect(
            format!("norm_matmul_glu {ty}, {n} rows"),
            &got,
            &want,
            limit,
        )?;
        if n == PROMPT_BATCH {
            batch = got;
        } else {
            same_bits(
                &batch[..rows],
                &got,
                &format!("norm_matmul_glu {ty}: row 0 alone"),
            )?;
        }
    }
    Ok(())
}

fn check_rope<O: Ops>(p: &mut Pair<'_, O>, rng: &mut Rng) -> R<()> {
    let (rows, hd, heads) = (6usize, 64usize, 3usize);
    let cols = hd * heads;
    let x = values(rows * cols, 1.0, rng);
    let positions = [0i32, 1, 7, 100, 1000, 4095];
    // gpt-oss's YaRN: factor 32 over 4096 trained positions, base 150000.
    let yarn = Yarn {
        ext_factor: 1.0,
        attn_factor: (0.1 * 32f32.ln() + 1.0) * (1.0 / (1.0 + 0.1 * 32f32.ln())),
        beta_fast: 32.0,
        beta_slow: 1.0,
        n_ctx_orig: 4096,
    };
    for style in [RopeStyle::Normal, RopeStyle::Neox] {
        for (n_rot, freq_scale, base, yarn) in [
            (64usize, 1.0f32, 10_000.0f32, None),
            (32, 0.25, 1_000_000.0, None),
            (64, 1.0 / 32.0, 150_000.0, Some(yarn)),
            (
                32,
                0.5,
                10_000.0,
                Some(Yarn {
                    ext_factor: 0.5,
                    attn_factor: 0.9,
                    ..yarn
                }),
            ),
        ] {
            let rope = Rope {
                style,
                n_rot,
                base,
                freq_scale,
                yarn,
            };
            let (mut a, mut ra) = p.acts(rows, cols, &x)?;
            p.ops
                .rope(&mut p.ex, &mut a, &positions, hd, &rope)
                .map_err(be("rope"))?;
            p.r.rope(&mut p.rex, &mut ra, &positions, hd, &rope)
                .map_err(be("rope"))?;
            let (got, want) = (p.read(&a)?, p.read_ref(&ra)?);
            p.expect(
                format!(
                    "rope {style:?} n_rot {n_rot} scale {freq_scale}{}",
                    if yarn.is_some() { " yarn" } else { "" }
                ),
                &got,
                &want,
                p.tol.rope,
            )?;
        }
    }
    Ok(())
}

fn check_attention<O: Ops>(p: &mut Pair<'_, O>, rng: &mut Rng) -> R<()> {
    struct Case {
        name: &'static str,
        n_head: usize,
        n_head_kv: usize,
        hd: usize,
        window: Option<usize>,
        softcap: Option<f32>,
        sinks: Option<Vec<f32>>,
    }
    let cases = [
        Case {
            name: "grouped-query",
            n_head: 4,
            n_head_kv: 2,
            hd: 64,
            window: None,
            softcap: None,
            sinks: None,
        },
        Case {
            name: "multi-query, window 3",
            n_head: 4,
            n_head_kv: 1,
            hd: 128,
            window: Some(3),
            softcap: None,
            sinks: None,
        },
        Case {
            name: "multi-head, softcap 30",
            n_head: 2,
            n_head_kv: 2,
            hd: 64,
            window: None,
            softcap: Some(30.0),
            sinks: None,
        },
        // Sinks below, near and far above the scores (the last dominates the denominator).
        Case {
            name: "grouped-query, sinks",
            n_head: 4,
            n_head_kv: 2,
            hd: 64,
            window: None,
            softcap: None,
            sinks: Some(vec![-3.0, 0.5, 2.0, 9.0]),
        },
        Case {
            name: "grouped-query, window 3, sinks",
            n_head: 4,
            n_head_kv: 2,
            hd: 64,
            window: Some(3),
            softcap: None,
            sinks: Some(vec![1.0, -0.25, 4.0, 0.0]),
        },
    ];
    for c in cases {
        let (n_ctx, n_seq) = (16usize, 3usize);
        let shape = KvShape {
            n_head_kv: c.n_head_kv,
            head_dim_k: c.hd,
            head_dim_v: c.hd,
            window: c.window,
            cells: n_ctx,
        };
        let mut kv = p
            .ops
            .kv_alloc(&[shape, shape], n_ctx, n_seq)
            .map_err(be("kv_alloc"))?;
        let mut rkv =
            p.r.kv_alloc(&[shape, shape], n_ctx, n_seq)
                .map_err(be("kv_alloc"))?;
        let par = Attention {
            n_head: c.n_head,
            n_head_kv: c.n_head_kv,
            head_dim_k: c.hd,
            head_dim_v: c.hd,
            scale: 1.0 / (c.hd as f32).sqrt(),
            window: c.window,
            softcap: c.softcap,
            sinks: c.sinks.as_deref(),
        };
        let (qd, kd) = (c.n_head * c.hd, c.n_head_kv * c.hd);
        let mut len = [0usize; 3];
        // Steps of mixed rows: a prompt chunk, then decode rows of several sequences.
        let steps: [&[usize]; 4] = [&[0, 0, 0, 0, 0], &[1, 1, 0], &[0, 1, 2, 2], &[2, 0, 1]];
        let mut outs_by_row = Vec::new();
        for (si, seqs) in steps.iter().enumerate() {
            let rows: Vec<RowPos> = seqs
                .iter()
                .map(|&s| {
                    len[s] += 1;
                    RowPos {
                        seq: s,
                        pos: len[s] - 1,
                    }
                })
                .collect();
            let n = rows.len();
            let q = values(n * qd, 1.5, rng);
            let k = values(n * kd, 1.5, rng);
            let v = values(n * kd, 1.0, rng);
            let (mut qa, mut rq) = p.acts(n, qd, &q)?;
            let (mut ka, mut rk) = p.acts(n, kd, &k)?;
            let (va, rv) = p.acts(n, kd, &v)?;
            let zeros = vec![0f32; n * qd];
            let (mut o, mut ro) = p.acts(n, qd, &zeros)?;
            // As a model's layer: rotary embeddings of q and k right before the attention
            // (half the dims rotated, so the store also sees unrotated ones).
            let positions: Vec<i32> = rows.iter().map(|r| r.pos as i32).collect();
            let rope = Rope {
                style: RopeStyle::Neox,
                n_rot: c.hd / 2,
                base: 10000.0,
                freq_scale: 1.0,
                yarn: None,
            };
            p.ops
                .rope_qk(&mut p.ex, &mut qa, &mut ka, &positions, c.hd, &rope)
                .map_err(be("rope_qk"))?;
            p.r.rope_qk(&mut p.rex, &mut rq, &mut rk, &positions, c.hd, &rope)
                .map_err(be("reference rope_qk"))?;
            p.ops
                .attention(&mut p.ex, &mut kv, 1, &qa, &ka, &va, &rows, &par, &mut o)
                .map_err(be("attention"))?;
            p.r.attention(&mut p.rex, &mut rkv, 1, &rq, &rk, &rv, &rows, &par, &mut ro)
                .map_err(be("attention"))?;
            let (got, want) = (p.read(&o)?, p.read_ref(&ro)?);
            p.expect(
                format!("attention {} step {si}", c.name),
                &got,
                &want,
                p.tol.attention,
            )?;
            outs_by_row.push((rows, q, got));
        }
        // kv_copy: sequence 0 copied to 2 answers as sequence 0 does.
        p.ops
            .kv_copy(&mut p.ex, &mut kv, 0, 2, len[0])
            .map_err(be("kv_copy"))?;
        let (rows, q, _) = &outs_by_row[3];
        let i0 = rows.iter().position(|r| r.seq == 0).unwrap_or(0);
        let r0 = rows[i0];
        let q1 = &q[i0 * qd..(i0 + 1) * qd];
        // The next position of sequence 0, and of its copy: the same query, key and value
        // must give the same bits.
        let mut alone = Vec::new();
        for seq in [0usize, 2] {
            let (qa, _) = p.acts(1, qd, q1)?;
            let kvals = vec![0.5f32; kd];
            let (ka, _) = p.acts(1, kd, &kvals)?;
            let (va, _) = p.acts(1, kd, &kvals)?;
            let (mut o, _) = p.acts(1, qd, &vec![0f32; qd])?;
            let row = [RowPos {
                seq,
                pos: r0.pos + 1,
            }];
            p.ops
                .attention(&mut p.ex, &mut kv, 1, &qa, &ka, &va, &row, &par, &mut o)
                .map_err(be("attention after kv_copy"))?;
            alone.push(p.read(&o)?);
        }
        same_bits(
            &alone[1],
            &alone[0],
            &format!("attention {} after kv_copy", c.name),
        )?;
    }
    Ok(())
}

/// Input and output size of the expert matrices of [`check_matmul_experts`].
const MOE_IN: usize = 256;
const MOE_OUT: usize = 64;

/// Routes `rows` random router rows with the reference: expert ids as f32, and the weights.
fn random_routes(rows: usize, n_expert: usize, k: usize, rng: &mut Rng) -> R<(Vec<f32>, Vec<f32>)> {
    let logits = values(rows * n_expert, 2.0, rng);
    let r = RefOps;
    let mut ex = r
        .exec(&ExecSpec {
            n_batch_max: rows,
            n_logit_rows: 1,
            n_vocab: 1,
            max_cols: n_expert,
            expert_cols: 0,
        })
        .map_err(be("reference exec"))?;
    let mut a = r.act(rows, n_expert).map_err(be("act"))?;
    r.write(&mut ex, &mut a, &logits).map_err(be("write"))?;
    let mut ids = r.act(rows, k).map_err(be("act"))?;
    let mut w = r.act(rows, k).map_err(be("act"))?;
    r.moe_route(&mut ex, &a, k, &mut ids, &mut w)
        .map_err(be("reference moe_route"))?;
    let (mut vi, mut vw) = (vec![0f32; rows * k], vec![0f32; rows * k]);
    r.read(&mut ex, &ids, &mut vi).map_err(be("read"))?;
    r.read(&mut ex, &w, &mut vw).map_err(be("read"))?;
    Ok((vi, vw))
}

fn check_matmul_experts<O: Ops>(
    p: &mut Pair<'_, O>,
    store: &mut Store,
    ty: GgmlType,
    rng: &mut Rng,
) -> R<()> {
    // Four times the values of a `matmul` case, so a wider tail of the activations'
    // quantization error: 1.5 × the limit.
    let limit = 1.5 * matmul_limit(&p.tol, ty);
    let (n_expert, k, n) = (8usize, 4usize, 9usize);
    let (d_in, d_out) = (MOE_IN, MOE_OUT);
    let t = store.tensor(
        ty,
        &[d_in as u64, d_out as u64, n_expert as u64],
        random_tensor(ty, n_expert * d_out * d_in, 1.0 / (d_in as f32).sqrt(), rng),
    );
    let w = p
        .ops
        .weight(&t)
        .map_err(be(&format!("{ty} expert weight")))?;
    let rw = p.r.weight(&t).map_err(be("reference weight"))?;
    let bdata: Vec<u8> = (0..d_out * n_expert)
        .flat_map(|_| (0.5 * rng.symmetric()).to_le_bytes())
        .collect();
    let bt = store.tensor(GgmlType::F32, &[d_out as u64, n_expert as u64], bdata);
    let b = p.ops.weight(&bt).map_err(be("expert bias"))?;
    let rb = p.r.weight(&bt).map_err(be("reference bias"))?;
    let (ids, _) = random_routes(n, n_expert, k, rng)?;
    // Shared input (gate/up) and per-slot input (down); with and without the bias.
    for (per_slot, bias) in [(false, true), (true, true), (false, false)] {
        let cols = if per_slot { k * d_in } else { d_in };
        let x = values(n * cols, 1.0, rng);
        let zeros = vec![0f32; n * k * d_out];
        let (a, ra) = p.acts(n, cols, &x)?;
        let (ia, ria) = p.acts(n, k, &ids)?;
        let (mut o, mut ro) = p.acts(n, k * d_out, &zeros)?;
        let name = format!(
            "matmul_experts {ty} {n_expert}x{d_out}x{d_in} top-{k}{}{}",
            if per_slot { " per-slot input" } else { "" },
            if bias { " + bias" } else { "" }
        );
        p.ops
            .matmul_experts(&mut p.ex, &a, &w, bias.then_some(&b), &ia, &mut o)
            .map_err(be(&name))?;
        p.r.matmul_experts(&mut p.rex, &ra, &rw, bias.then_some(&rb), &ria, &mut ro)
            .map_err(be("reference matmul_experts"))?;
        let (got, want) = (p.read(&o)?, p.read_ref(&ro)?);
        p.expect(name.clone(), &got, &want, limit)?;
        // Rows are independent: each row alone gives the same bits.
        for i in [0, 5, n - 1] {
            let (a1, _) = p.acts(1, cols, &x[i * cols..(i + 1) * cols])?;
            let (i1, _) = p.acts(1, k, &ids[i * k..(i + 1) * k])?;
            let (mut o1, _) = p.acts(1, k * d_out, &zeros[..k * d_out])?;
            p.ops
                .matmul_experts(&mut p.ex, &a1, &w, bias.then_some(&b), &i1, &mut o1)
                .map_err(be("matmul_experts of one row"))?;
            let alone = p.read(&o1)?;
            same_bits(
                &got[i * k * d_out..(i + 1) * k * d_out],
                &alone,
                &format!("{name} row {i}"),
            )?;
        }
    }
    // An expert id out of range is an error, not a panic.
    let (a, _) = p.acts(1, d_in, &vec![0.5; d_in])?;
    let (i1, _) = p.acts(1, k, &[0.0, 1.0, 2.0, n_expert as f32])?;
    let (mut o1, _) = p.acts(1, k * d_out, &vec![0f32; k * d_out])?;
    // A device backend, whose ids live on the device, may report it at the next call that
    // synchronizes (here `read`) instead.
    let direct = p.ops.matmul_experts(&mut p.ex, &a, &w, None, &i1, &mut o1);
    if direct.is_ok() && p.read(&o1).is_ok() {
        return Err(format!(
            "matmul_experts {ty} accepted expert id {n_expert} of {n_expert}"
        ));
    }
    Ok(())
}

fn check_moe_route_combine<O: Ops>(p: &mut Pair<'_, O>, rng: &mut Rng) -> R<()> {
    for (n_expert, k) in [(8usize, 4usize), (32, 4), (128, 4), (5, 1), (6, 6)] {
        let n = 11;
        let mut logits = values(n * n_expert, 2.0, rng);
        // Ties go to the lower index.
        logits[3] = logits[1];
        let (a, ra) = p.acts(n, n_expert, &logits)?;
        let z = vec![0f32; n * k];
        let (mut ids, mut rids) = p.acts(n, k, &z)?;
        let (mut w, mut rw) = p.acts(n, k, &z)?;
        p.ops
            .moe_route(&mut p.ex, &a, k, &mut ids, &mut w)
            .map_err(be("moe_route"))?;
        p.r.moe_route(&mut p.rex, &ra, k, &mut rids, &mut rw)
            .map_err(be("reference moe_route"))?;
        let (gi, wi) = (p.read(&ids)?, p.read_ref(&rids)?);
        same_bits(
            &gi,
            &wi,
            &format!("moe_route {n_expert} experts top-{k}: ids"),
        )?;
        let (gw, ww) = (p.read(&w)?, p.read_ref(&rw)?);
        p.expect(
            format!("moe_route {n_expert} experts top-{k}: weights"),
            &gw,
            &ww,
            p.tol.moe_route,
        )?;
        // moe_combine of per-slot rows with these weights.
        let cols = 96;
        let y = values(n * k * cols, 1.0, rng);
        let (ya, rya) = p.acts(n, k * cols, &y)?;
        let zo = vec![0f32; n * cols];
        let (mut o, mut ro) = p.acts(n, cols, &zo)?;
        p.ops
            .moe_combine(&mut p.ex, &ya, &w, &mut o)
            .map_err(be("moe_combine"))?;
        p.r.moe_combine(&mut p.rex, &rya, &rw, &mut ro)
            .map_err(be("reference moe_combine"))?;
        let (got, want) = (p.read(&o)?, p.read_ref(&ro)?);
        p.expect(
            format!("moe_combine top-{k}"),
            &got,
            &want,
            p.tol.moe_combine,
        )?;
    }
    Ok(())
}

fn check_outputs<O: Ops>(p: &mut Pair<'_, O>, rng: &mut Rng) -> R<()> {
    let (rows, vocab) = (3usize, 3000usize);
    let mut x = values(rows * vocab, 4.0, rng);
    x[17] = f32::NAN;
    x[vocab + 5] = 1e9;
    let (mut a, mut ra) = p.acts(rows, vocab, &x)?;
    let banned = [5i32, 2999, 100];
    let mut full = vec![0f32; vocab];
    let mut rfull = vec![0f32; vocab];
    let (mut ids, mut vals, mut rids, mut rvals) = (
        vec![0i32; 50],
        vec![0f32; 50],
        vec![0i32; 50],
        vec![0f32; 50],
    );
    let (mut lse, mut rlse, mut tl, mut rtl, mut lse2, mut rlse2) =
        (0f32, 0f32, 0f32, 0f32, 0f32, 0f32);
    {
        let mut outs = [
            RowOutput {
                row: 0,
                want: Want::Logits(&mut full),
                banned: &banned,
                allowed: None,
                lse: None,
                target: None,
            },
            RowOutput {
                row: 1,
                want: Want::TopN {
                    ids: &mut ids,
                    logits: &mut vals,
                },
                banned: &banned,
                allowed: None,
                lse: Some(&mut lse),
                target: Some((7, &mut tl)),
            },
            RowOutput {
                row: 2,
                want: Want::TopN {
                    ids: &mut [],
                    logits: &mut [],
                },
                banned: &[],
                allowed: None,
                lse: Some(&mut lse2),
                target: None,
            },
        ];
        p.ops
            .outputs(&mut p.ex, &mut a, &mut outs)
            .map_err(be("outputs"))?;
        let mut routs = [
            RowOutput {
                row: 0,
                want: Want::Logits(&mut rfull),
                banned: &banned,
                allowed: None,
                lse: None,
                target: None,
            },
            RowOutput {
                row: 1,
                want: Want::TopN {
                    ids: &mut rids,
                    logits: &mut rvals,
                },
                banned: &banned,
                allowed: None,
                lse: Some(&mut rlse),
                target: Some((7, &mut rtl)),
            },
            RowOutput {
                row: 2,
                want: Want::TopN {
                    ids: &mut [],
                    logits: &mut [],
                },
                banned: &[],
                allowed: None,
                lse: Some(&mut rlse2),
                target: None,
            },
        ];
        p.r.outputs(&mut p.rex, &mut ra, &mut routs)
            .map_err(be("reference outputs"))?;
    }
    same_bits(&full, &rfull, "outputs: logits with bans")?;
    if ids != rids {
        return Err(format!(
            "outputs: top-N ids {:?} differ from the reference {:?}",
            &ids[..8],
            &rids[..8]
        ));
    }
    same_bits(&vals, &rvals, "outputs: top-N logits")?;
    p.expect(
        "outputs lse".into(),
        &[lse, lse2, tl],
        &[rlse, rlse2, rtl],
        p.tol.exact,
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reference_passes_its_own_check() {
        let types = [
            GgmlType::F32,
            GgmlType::Q8_0,
            GgmlType::Q4_K,
            GgmlType::MXFP4,
        ];
        let r = check(&RefOps, &types, &OpsTolerance::default()).unwrap();
        assert!(r.lines.iter().any(|l| l.starts_with("matmul Q4_K")));
    }
}
