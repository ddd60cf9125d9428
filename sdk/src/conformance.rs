//! A conformance suite for backend libraries: loads a small synthetic model through the ABI
//! (exactly as the host does) and checks the contract every backend must keep — batched and
//! token-by-token evaluation agree, sequences are independent, `seq_copy`/`seq_truncate` behave,
//! top-N agrees with the full logits, and bad input is an error that leaves the context usable.
//!
//! Run it from a test of your backend: `conformance::check(&lib)` with the [`BackendLib`] of
//! your built library (see `tests/conformance.rs` of the workspace for the CPU backend).

use crate::abi::client::{BackendLib, ModelContext};
use crate::abi::Status;
use crate::gguf::{Gguf, GgufWriter};
use crate::quant::GgmlType;
use std::sync::Arc;

/// Vocabulary of the synthetic model.
pub const VOCAB: usize = 256;
const EMBD: usize = 64;
const HEADS: usize = 4;
const KV_HEADS: usize = 2;
const FF: usize = 128;
const LAYERS: usize = 2;

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> f32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        ((self.0 >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
    fn tensor(&mut self, n: usize, scale: f32) -> Vec<u8> {
        (0..n)
            .flat_map(|_| (self.next() * scale).to_le_bytes())
            .collect()
    }
}

/// A tiny random-weight `llama` model (F32 weights, 2 layers, grouped-query attention) as GGUF
/// bytes: enough to exercise every operation of the model code.
pub fn synthetic_llama(seed: u64) -> Vec<u8> {
    let mut r = Rng(seed | 1);
    let mut w = GgufWriter::new();
    w.add_str("general.architecture", "llama")
        .add_u32("llama.embedding_length", EMBD as u32)
        .add_u32("llama.block_count", LAYERS as u32)
        .add_u32("llama.feed_forward_length", FF as u32)
        .add_u32("llama.attention.head_count", HEADS as u32)
        .add_u32("llama.attention.head_count_kv", KV_HEADS as u32)
        .add_u32("llama.context_length", 128)
        .add_f32("llama.attention.layer_norm_rms_epsilon", 1e-5)
        .add_f32("llama.rope.freq_base", 10_000.0);
    let hd = EMBD / HEADS;
    let f32t = GgmlType::F32;
    let e = EMBD as u64;
    w.add_tensor(
        "token_embd.weight",
        f32t,
        &[e, VOCAB as u64],
        &r.tensor(EMBD * VOCAB, 1.0),
    );
    w.add_tensor("output_norm.weight", f32t, &[e], &r.tensor(EMBD, 1.0));
    for l in 0..LAYERS {
        let n = |s: &str| format!("blk.{l}.{s}");
        let kv = (KV_HEADS * hd) as u64;
        let s = 1.0 / (EMBD as f32).sqrt();
        w.add_tensor(&n("attn_norm.weight"), f32t, &[e], &r.tensor(EMBD, 1.0));
        w.add_tensor(
            &n("attn_q.weight"),
            f32t,
            &[e, e],
            &r.tensor(EMBD * EMBD, s),
        );
        w.add_tensor(
            &n("attn_k.weight"),
            f32t,
            &[e, kv],
            &r.tensor(EMBD * kv as usize, s),
        );
        w.add_tensor(
            &n("attn_v.weight"),
            f32t,
            &[e, kv],
            &r.tensor(EMBD * kv as usize, s),
        );
        w.add_tensor(
            &n("attn_output.weight"),
            f32t,
            &[e, e],
            &r.tensor(EMBD * EMBD, s),
        );
        w.add_tensor(&n("ffn_norm.weight"), f32t, &[e], &r.tensor(EMBD, 1.0));
        w.add_tensor(
            &n("ffn_gate.weight"),
            f32t,
            &[e, FF as u64],
            &r.tensor(EMBD * FF, s),
        );
        w.add_tensor(
            &n("ffn_up.weight"),
            f32t,
            &[e, FF as u64],
            &r.tensor(EMBD * FF, s),
        );
        w.add_tensor(
            &n("ffn_down.weight"),
            f32t,
            &[FF as u64, e],
            &r.tensor(EMBD * FF, s),
        );
    }
    w.finish()
}

fn fail(what: impl Into<String>) -> String {
    what.into()
}

fn close(a: &[f32], b: &[f32], tol: f32, what: &str) -> Result<(), String> {
    if a.len() != b.len() {
        return Err(fail(format!("{what}: {} vs {} values", a.len(), b.len())));
    }
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        if !x.is_finite() || (x - y).abs() > tol * (1.0 + y.abs()) {
            return Err(fail(format!("{what}: value {i} is {x}, expected {y}")));
        }
    }
    Ok(())
}

/// Token-by-token logits of `tokens` on `seq`, starting at position `start`.
fn step_by_step(
    ctx: &mut ModelContext,
    seq: i32,
    start: usize,
    tokens: &[i32],
) -> Result<Vec<Vec<f32>>, String> {
    let mut out = Vec::new();
    let mut logits = Vec::new();
    for (i, &t) in tokens.iter().enumerate() {
        ctx.forward_logits(&[t], &[(start + i) as i32], &[seq], &[1], &mut logits)
            .map_err(|e| fail(format!("forward of one token failed: {e}")))?;
        out.push(logits.clone());
    }
    Ok(out)
}

fn expect_error(
    r: Result<(), crate::abi::client::CallError>,
    what: &str,
    status: Option<Status>,
) -> Result<(), String> {
    match r {
        Ok(()) => Err(fail(format!("{what} was accepted"))),
        Err(e) if e.message.is_empty() => Err(fail(format!("{what}: error without a message"))),
        Err(e) if status.is_some_and(|s| s != e.status) => Err(fail(format!(
            "{what}: status {:?}, expected {:?} ({})",
            e.status, status, e.message
        ))),
        Err(_) => Ok(()),
    }
}

/// Runs the suite against a backend library; returns a description of the first violation.
/// `tol` is the relative tolerance between batched and token-by-token logits (1e-3 suits
/// backends that compute in f32 with quantized activations).
pub fn check(lib: &BackendLib, tol: f32) -> Result<(), String> {
    let desc = lib.describe().map_err(|e| fail(format!("get_info: {e}")))?;
    if desc.name.is_empty() {
        return Err(fail("backend name is empty"));
    }
    for i in 0..desc.n_devices {
        lib.device(i)
            .map_err(|e| fail(format!("get_device({i}): {e}")))?;
    }
    if lib.device(desc.n_devices).is_ok() {
        return Err(fail("get_device accepts an index past n_devices"));
    }
    let (score, reason) = lib.score().map_err(|e| fail(format!("get_score: {e}")))?;
    if score == 0 {
        return Err(fail(format!(
            "backend scores 0 on this machine ({reason}); nothing to check"
        )));
    }
    if !lib
        .supports_type(GgmlType::F32)
        .map_err(|e| fail(e.to_string()))?
    {
        return Err(fail("backend does not support F32 weights"));
    }
    let inst = lib
        .create(0, 0)
        .map_err(|e| fail(format!("backend_create: {e}")))?;
    let bytes: Arc<Vec<u8>> = Arc::new(synthetic_llama(7));
    // SAFETY: the slice lives in `bytes`, which the model keeps alive.
    let view: &'static [u8] = unsafe { std::slice::from_raw_parts(bytes.as_ptr(), bytes.len()) };
    let gguf = Gguf::parse(view).map_err(|e| fail(format!("synthetic model: {e}")))?;
    // SAFETY: `gguf` borrows only `bytes`, handed over as the keep-alive.
    let model = unsafe { inst.load_model(&gguf, bytes.clone()) }
        .map_err(|e| fail(format!("model_load: {e}")))?;
    let info = model.info();
    if info.n_vocab as usize != VOCAB
        || info.n_layer as usize != LAYERS
        || info.n_embd as usize != EMBD
    {
        return Err(fail(format!("model_info reports {info:?}")));
    }
    let n_ctx = 32;
    let mut ctx = model
        .create_context(n_ctx, 2)
        .map_err(|e| fail(format!("context_create: {e}")))?;
    let (c, s, _) = ctx.info().map_err(|e| fail(e.to_string()))?;
    if c != n_ctx || s != 2 {
        return Err(fail(format!("context_info reports ctx {c}, seqs {s}")));
    }
    let toks: Vec<i32> = vec![3, 141, 59, 26, 5, 35, 89, 79, 32, 38];
    let n = toks.len();

    // 1. A batch with every output equals token-by-token evaluation.
    let seq_ref = step_by_step(&mut ctx, 0, 0, &toks)?;
    ctx.seq_clear(0).map_err(|e| fail(e.to_string()))?;
    let pos: Vec<i32> = (0..n as i32).collect();
    let mut logits = Vec::new();
    ctx.forward_logits(&toks, &pos, &vec![0; n], &vec![1; n], &mut logits)
        .map_err(|e| fail(format!("batched forward: {e}")))?;
    for (i, want) in seq_ref.iter().enumerate() {
        close(
            &logits[i * VOCAB..(i + 1) * VOCAB],
            want,
            tol,
            &format!("batched row {i}"),
        )?;
    }

    // 2. Two sequences interleaved in one batch are independent.
    ctx.seq_clear(0).map_err(|e| fail(e.to_string()))?;
    ctx.seq_clear(1).map_err(|e| fail(e.to_string()))?;
    let other: Vec<i32> = vec![200, 17, 4, 99, 250];
    let mut bt = Vec::new();
    let (mut bp, mut bs) = (Vec::new(), Vec::new());
    for i in 0..5 {
        bt.extend([toks[i], other[i]]);
        bp.extend([i as i32, i as i32]);
        bs.extend([0, 1]);
    }
    ctx.forward_logits(&bt, &bp, &bs, &[1; 10], &mut logits)
        .map_err(|e| fail(format!("two-sequence batch: {e}")))?;
    for i in 0..5 {
        close(
            &logits[2 * i * VOCAB..(2 * i + 1) * VOCAB],
            &seq_ref[i],
            tol,
            &format!("interleaved seq 0 row {i}"),
        )?;
    }
    ctx.seq_clear(0).map_err(|e| fail(e.to_string()))?;
    let other_ref = step_by_step(&mut ctx, 0, 0, &other)?;
    for i in 0..5 {
        close(
            &logits[(2 * i + 1) * VOCAB..(2 * i + 2) * VOCAB],
            &other_ref[i],
            tol,
            &format!("interleaved seq 1 row {i}"),
        )?;
    }

    // 3. Prefix reuse: copy 6 positions of seq 0 to seq 1, continue seq 1.
    ctx.seq_clear(0).map_err(|e| fail(e.to_string()))?;
    step_by_step(&mut ctx, 0, 0, &toks[..6])?;
    ctx.seq_copy(0, 1, 6)
        .map_err(|e| fail(format!("seq_copy: {e}")))?;
    let cont = step_by_step(&mut ctx, 1, 6, &toks[6..])?;
    for (i, row) in cont.iter().enumerate() {
        close(
            row,
            &seq_ref[6 + i],
            tol,
            &format!("after seq_copy, row {}", 6 + i),
        )?;
    }

    // 4. Truncate and re-evaluate.
    ctx.seq_truncate(0, 3)
        .map_err(|e| fail(format!("seq_truncate: {e}")))?;
    let again = step_by_step(&mut ctx, 0, 3, &toks[3..5])?;
    close(&again[1], &seq_ref[4], tol, "after seq_truncate")?;

    // 5. Top-N agrees with the logits.
    ctx.seq_clear(0).map_err(|e| fail(e.to_string()))?;
    let top = ctx
        .forward_top_n(&toks[..4], &[0, 1, 2, 3], &[0; 4], &[0, 0, 0, 1], 8)
        .map_err(|e| fail(format!("top-N forward: {e}")))?;
    let want = &seq_ref[3];
    let mut order: Vec<usize> = (0..VOCAB).collect();
    order.sort_by(|&a, &b| want[b].total_cmp(&want[a]));
    let t = &top[0];
    for (k, &id) in t.ids.iter().enumerate() {
        if (want[id as usize] - t.logits[k]).abs() > tol * (1.0 + t.logits[k].abs()) {
            return Err(fail(format!(
                "top-N logit {k} of id {id} is {}, logits say {}",
                t.logits[k], want[id as usize]
            )));
        }
        if (want[id as usize] - want[order[k]]).abs() > tol * (1.0 + want[order[k]].abs()) {
            return Err(fail(format!(
                "top-N entry {k} is id {id}, expected {}",
                order[k]
            )));
        }
    }
    let m = want.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let lse = m + want
        .iter()
        .map(|&x| ((x - m) as f64).exp())
        .sum::<f64>()
        .ln() as f32;
    close(&[t.lse], &[lse], tol, "top-N log-sum-exp")?;

    // 6. Bad input is an error with a message, and changes nothing.
    let before = ctx.info().map_err(|e| fail(e.to_string()))?;
    let mut l = Vec::new();
    expect_error(
        ctx.forward_logits(&[VOCAB as i32], &[4], &[0], &[1], &mut l),
        "a token id past the vocabulary",
        Some(Status::InvalidArgument),
    )?;
    expect_error(
        ctx.forward_logits(&[-1], &[4], &[0], &[1], &mut l),
        "a negative token id",
        Some(Status::InvalidArgument),
    )?;
    expect_error(
        ctx.forward_logits(&[1], &[9], &[0], &[1], &mut l),
        "a position gap",
        None,
    )?;
    expect_error(
        ctx.forward_logits(&[1], &[4], &[7], &[1], &mut l),
        "a sequence id past n_seq_max",
        Some(Status::InvalidArgument),
    )?;
    expect_error(
        ctx.seq_copy(0, 5, 2),
        "seq_copy to a missing sequence",
        Some(Status::InvalidArgument),
    )?;
    let mut fill_seq = ctx.seq_clear(1).map_err(|e| fail(e.to_string()));
    for p in 0..n_ctx as i32 {
        if fill_seq.is_err() {
            break;
        }
        fill_seq = ctx
            .forward_logits(&[1], &[p], &[1], &[0], &mut l)
            .map_err(|e| fail(format!("filling the context: {e}")));
    }
    fill_seq?;
    expect_error(
        ctx.forward_logits(&[1], &[n_ctx as i32], &[1], &[1], &mut l),
        "a position past the context",
        Some(Status::ContextFull),
    )?;
    if ctx.info().map_err(|e| fail(e.to_string()))?.0 != before.0 {
        return Err(fail("context changed after rejected input"));
    }
    let after = step_by_step(&mut ctx, 0, 4, &toks[4..5])?;
    close(
        &after[0],
        &seq_ref[4],
        tol,
        "evaluation after rejected input",
    )?;
    Ok(())
}
