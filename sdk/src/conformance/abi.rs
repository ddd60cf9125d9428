//! The backend conformance suite: loads each synthetic model ([`super::models`]) through the
//! ABI, exactly as the host does, and checks the contract every backend keeps:
//! - determinism: a row's outputs do not depend on the rest of the batch, so a prompt gives
//!   the same bits evaluated at once or token by token, interleaved with other sequences, or
//!   decoded inside a batch of 8 mixed sequences (decode and prefill rows);
//! - sequences are independent; `seq_copy` and `seq_truncate` behave;
//! - outputs: top-N, log-sum-exp, target logits and bans agree with the full logits;
//! - the context's limits are enforced; bad input is an error with a message and leaves the
//!   context usable;
//! - accuracy: the logits are within a stated tolerance of the plain f32 reference
//!   ([`crate::model::RefOps`]) on the same weights.
//!
//! Run it from a test of your backend: `conformance::check(&lib, &Tolerance::default())` with
//! the [`BackendLib`] of your built library (see `tests/conformance.rs` of the workspace).

use super::models::{Synthetic, VOCAB};
use crate::abi::client::{BackendLib, ContextOptions, ModelContext};
use crate::abi::Status;
use crate::backend::{Batch, Context, ContextParams, Model, RowOutput, Want};
use crate::gguf::Gguf;
use crate::model::{RefOps, TransformerModel};
use crate::quant::GgmlType;
use std::sync::Arc;

/// How far a backend's logits may be from the reference model's, relative to the RMS of the
/// reference row: `max |Δ| ≤ rel × rms(reference row)`.
#[derive(Clone, Copy, Debug)]
pub struct Tolerance {
    /// For the F32-weight model.
    pub float: f32,
    /// For the quantized models (8-bit activations and an f16 KV cache are expected).
    pub quantized: f32,
    /// For the quantized mixture-of-experts model (gpt-oss): the 8-bit rounding of the
    /// router's input may reorder a near-tie of router logits and pick another expert, which
    /// moves that position's logits further than rounding alone.
    pub moe: f32,
}

impl Default for Tolerance {
    fn default() -> Self {
        Tolerance {
            float: 2e-2,
            quantized: 0.15,
            moe: 0.3,
        }
    }
}

/// What the suite measured, per model.
#[derive(Clone, Debug, Default)]
pub struct Report {
    /// One line per model: its name and the largest error against the reference.
    pub lines: Vec<String>,
}

fn fail(what: impl Into<String>) -> String {
    what.into()
}

fn same_bits(a: &[f32], b: &[f32], what: &str) -> Result<(), String> {
    if a.len() != b.len() {
        return Err(fail(format!("{what}: {} vs {} values", a.len(), b.len())));
    }
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        if x.to_bits() != y.to_bits() {
            return Err(fail(format!(
                "{what}: value {i} is {x:e}, expected {y:e} bit for bit (rows must not depend \
                 on the rest of the batch)"
            )));
        }
    }
    Ok(())
}

fn rms(v: &[f32]) -> f32 {
    (v.iter().map(|&x| x as f64 * x as f64).sum::<f64>() / v.len().max(1) as f64).sqrt() as f32
}

/// Largest `|a - b|` relative to `rms(b)`.
fn rel_err(a: &[f32], b: &[f32]) -> f32 {
    let r = rms(b).max(1e-6);
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs() / r)
        .fold(0.0, f32::max)
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

/// The reference model's logits of `tokens` (one sequence from position 0), in process.
fn reference_logits(gguf: &Gguf<'static>, tokens: &[i32]) -> Result<Vec<Vec<f32>>, String> {
    let model = Arc::new(
        TransformerModel::load(Arc::new(RefOps), gguf)
            .map_err(|e| fail(format!("reference model: {e}")))?,
    );
    let mut ctx = model
        .create_context(&ContextParams {
            n_ctx: 64,
            n_seq_max: 1,
            kv_type: GgmlType::F16,
            n_batch_max: 64,
            n_outputs_max: 64,
        })
        .map_err(|e| fail(format!("reference context: {e}")))?;
    let n = tokens.len();
    let mut rows = vec![vec![0f32; VOCAB]; n];
    let mut outs: Vec<RowOutput<'_>> = rows
        .iter_mut()
        .enumerate()
        .map(|(i, r)| RowOutput {
            row: i,
            want: Want::Logits(r),
            banned: &[],
            allowed: None,
            lse: None,
            target: None,
        })
        .collect();
    let pos: Vec<i32> = (0..n as i32).collect();
    ctx.forward(
        &Batch {
            tokens,
            positions: &pos,
            seq_ids: &vec![0; n],
        },
        &mut outs,
    )
    .map_err(|e| fail(format!("reference forward: {e}")))?;
    drop(outs);
    Ok(rows)
}

/// Runs the suite against a backend library on every synthetic model whose weight types it
/// supports; returns what it measured, or a description of the first violation.
pub fn check(lib: &BackendLib, tol: &Tolerance) -> Result<Report, String> {
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
    let mut report = Report::default();
    for kind in Synthetic::ALL {
        let mut supported = true;
        for ty in kind.types() {
            supported &= lib.supports_type(ty).map_err(|e| fail(e.to_string()))?;
        }
        if !supported {
            report.lines.push(format!(
                "{}: skipped (weight types not supported)",
                kind.name()
            ));
            continue;
        }
        let line = check_model(lib, kind, tol).map_err(|e| format!("{}: {e}", kind.name()))?;
        report.lines.push(line);
    }
    Ok(report)
}

fn check_model(lib: &BackendLib, kind: Synthetic, tol: &Tolerance) -> Result<String, String> {
    let inst = lib
        .create(0, 0)
        .map_err(|e| fail(format!("backend_create: {e}")))?;
    let bytes: Arc<Vec<u8>> = Arc::new(kind.gguf(7));
    // SAFETY: the slice lives in `bytes`, which the model keeps alive and which outlives the
    // reference model built below.
    let view: &'static [u8] = unsafe { std::slice::from_raw_parts(bytes.as_ptr(), bytes.len()) };
    let gguf = Gguf::parse(view).map_err(|e| fail(format!("synthetic model: {e}")))?;
    if let Some(s) = lib.score_model(&gguf) {
        let (s, why) = s.map_err(|e| fail(format!("score_model: {e}")))?;
        if s == 0 {
            return Err(fail(format!(
                "score_model gives 0 ({why}) though every type is supported"
            )));
        }
    }
    // SAFETY: `gguf` borrows only `bytes`, handed over as the keep-alive.
    let model = unsafe { inst.load_model(&gguf, bytes.clone()) }
        .map_err(|e| fail(format!("model_load: {e}")))?;
    let info = model.info();
    if info.n_vocab as usize != VOCAB
        || info.n_layer as usize != kind.n_layer()
        || info.n_embd as usize != kind.n_embd()
    {
        return Err(fail(format!("model_info reports {info:?}")));
    }
    let n_ctx = 32;
    let opts = ContextOptions {
        n_ctx,
        n_seq_max: 8,
        n_batch_max: 16,
        n_outputs_max: 12,
    };
    let mut ctx = model
        .create_context(opts)
        .map_err(|e| fail(format!("context_create: {e}")))?;
    let f = ctx.info().map_err(|e| fail(e.to_string()))?;
    if f.n_ctx != n_ctx || f.n_seq_max != 8 || f.n_batch_max != 16 || f.n_outputs_max != 12 {
        return Err(fail(format!("context_info reports {f:?}")));
    }
    let toks: Vec<i32> = vec![3, 141, 59, 26, 5, 35, 89, 79, 32, 38];
    let n = toks.len();
    let e = |r: Result<(), crate::abi::client::CallError>| r.map_err(|e| fail(e.to_string()));

    // 1. A batch with every output equals token-by-token evaluation, bit for bit.
    let seq_ref = step_by_step(&mut ctx, 0, 0, &toks)?;
    e(ctx.seq_clear(0))?;
    let pos: Vec<i32> = (0..n as i32).collect();
    let mut logits = Vec::new();
    ctx.forward_logits(&toks, &pos, &vec![0; n], &vec![1; n], &mut logits)
        .map_err(|e| fail(format!("batched forward: {e}")))?;
    for (i, want) in seq_ref.iter().enumerate() {
        same_bits(
            &logits[i * VOCAB..(i + 1) * VOCAB],
            want,
            &format!("batched row {i}"),
        )?;
    }

    // 2. Accuracy against the reference model.
    let reference = reference_logits(&gguf, &toks)?;
    let limit = match kind {
        Synthetic::LlamaF32 => tol.float,
        Synthetic::GptOss => tol.moe,
        _ => tol.quantized,
    };
    let mut worst = 0f32;
    for (i, (got, want)) in seq_ref.iter().zip(&reference).enumerate() {
        let err = rel_err(got, want);
        worst = worst.max(err);
        if err > limit {
            return Err(fail(format!(
                "logits of position {i} are {err:.4} × rms away from the reference (limit {limit})"
            )));
        }
    }

    // 3. Two sequences interleaved in one batch are independent.
    e(ctx.seq_clear(0))?;
    e(ctx.seq_clear(1))?;
    let other: Vec<i32> = vec![200, 17, 4, 99, 250];
    let (mut bt, mut bp, mut bs) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..5 {
        bt.extend([toks[i], other[i]]);
        bp.extend([i as i32, i as i32]);
        bs.extend([0, 1]);
    }
    ctx.forward_logits(&bt, &bp, &bs, &[1; 10], &mut logits)
        .map_err(|e| fail(format!("two-sequence batch: {e}")))?;
    for i in 0..5 {
        same_bits(
            &logits[2 * i * VOCAB..(2 * i + 1) * VOCAB],
            &seq_ref[i],
            &format!("interleaved seq 0 row {i}"),
        )?;
    }
    e(ctx.seq_clear(0))?;
    let other_ref = step_by_step(&mut ctx, 0, 0, &other)?;
    for i in 0..5 {
        same_bits(
            &logits[(2 * i + 1) * VOCAB..(2 * i + 2) * VOCAB],
            &other_ref[i],
            &format!("interleaved seq 1 row {i}"),
        )?;
    }

    // 4. Decoded alone or inside a batch of 8 mixed sequences: the same bits.
    check_mixed_batches(&mut ctx, &toks, &seq_ref)?;

    // 5. Prefix reuse: copy 6 positions of seq 0 to seq 1, continue seq 1.
    e(ctx.seq_clear(0))?;
    step_by_step(&mut ctx, 0, 0, &toks[..6])?;
    ctx.seq_copy(0, 1, 6)
        .map_err(|e| fail(format!("seq_copy: {e}")))?;
    let cont = step_by_step(&mut ctx, 1, 6, &toks[6..])?;
    for (i, row) in cont.iter().enumerate() {
        same_bits(
            row,
            &seq_ref[6 + i],
            &format!("after seq_copy, row {}", 6 + i),
        )?;
    }

    // 6. Truncate and re-evaluate.
    ctx.seq_truncate(0, 3)
        .map_err(|e| fail(format!("seq_truncate: {e}")))?;
    let again = step_by_step(&mut ctx, 0, 3, &toks[3..5])?;
    same_bits(&again[1], &seq_ref[4], "after seq_truncate")?;

    // 7. Outputs: top-N, lse, target and bans agree with the logits.
    check_outputs(&mut ctx, &toks, &seq_ref[3])?;

    // 8. Limits and bad input: an error with a message, and nothing changes.
    check_bad_input(&mut ctx, &toks, &seq_ref, n_ctx)?;
    Ok(format!(
        "{}: conforms; max |Δlogit| vs reference {worst:.4} × rms (limit {limit})",
        kind.name()
    ))
}

/// Sequence 0 decodes `toks[6..]` after a 6-token prompt, alone and then inside batches where
/// seven other sequences decode or prefill prompt chunks at the same time.
fn check_mixed_batches(
    ctx: &mut ModelContext,
    toks: &[i32],
    seq_ref: &[Vec<f32>],
) -> Result<(), String> {
    for s in 0..8 {
        ctx.seq_clear(s).map_err(|e| fail(e.to_string()))?;
    }
    let mut logits = Vec::new();
    // Warm the other sequences with different prompt lengths.
    let mut lens = [0usize; 8];
    let prompts: Vec<Vec<i32>> = (0..8)
        .map(|s| {
            (0..12)
                .map(|i| ((s * 37 + i * 11 + 1) % VOCAB) as i32)
                .collect()
        })
        .collect();
    for s in 1..8usize {
        let k = s % 3 + 1;
        let p: Vec<i32> = (0..k as i32).collect();
        ctx.forward_logits(
            &prompts[s][..k],
            &p,
            &vec![s as i32; k],
            &vec![0; k],
            &mut logits,
        )
        .map_err(|e| fail(format!("warming sequence {s}: {e}")))?;
        lens[s] = k;
    }
    // Sequence 0's prompt in the same batch as two other sequences' prompt chunks.
    let (mut bt, mut bp, mut bs, mut want) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for (i, &t) in toks[..6].iter().enumerate() {
        bt.push(t);
        bp.push(i as i32);
        bs.push(0);
        want.push(u8::from(i == 5));
    }
    for s in [2usize, 5] {
        for _ in 0..2 {
            bt.push(prompts[s][lens[s]]);
            bp.push(lens[s] as i32);
            bs.push(s as i32);
            want.push(0);
            lens[s] += 1;
        }
    }
    ctx.forward_logits(&bt, &bp, &bs, &want, &mut logits)
        .map_err(|e| fail(format!("mixed prefill batch: {e}")))?;
    same_bits(
        &logits[..VOCAB],
        &seq_ref[5],
        "prompt row inside a mixed batch",
    )?;
    // Decode steps: sequence 0 and every other sequence decode, two of them also prefill.
    for (step, &t) in toks[6..].iter().enumerate() {
        let (mut bt, mut bp, mut bs, mut want) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for s in (0..8usize).rev() {
            let (tok, p) = if s == 0 {
                (t, 6 + step)
            } else {
                (prompts[s][lens[s] % 12], lens[s])
            };
            let chunk = if s == 3 || s == 6 { 3 } else { 1 };
            for c in 0..chunk {
                let tok = if c == 0 {
                    tok
                } else {
                    prompts[s][(p + c) % 12]
                };
                bt.push(tok);
                bp.push((p + c) as i32);
                bs.push(s as i32);
                want.push(u8::from(c + 1 == chunk));
            }
            if s != 0 {
                lens[s] += chunk;
            }
        }
        ctx.forward_logits(&bt, &bp, &bs, &want, &mut logits)
            .map_err(|e| fail(format!("mixed decode batch {step}: {e}")))?;
        // Sequence 0 is the last output row (sequences were added in reverse order).
        let last = logits.len() / VOCAB - 1;
        same_bits(
            &logits[last * VOCAB..],
            &seq_ref[6 + step],
            &format!("decode step {step} inside a batch of 8 mixed sequences"),
        )?;
    }
    Ok(())
}

fn check_outputs(ctx: &mut ModelContext, toks: &[i32], want: &[f32]) -> Result<(), String> {
    let mut order: Vec<usize> = (0..VOCAB).collect();
    order.sort_by(|&a, &b| want[b].total_cmp(&want[a]).then(a.cmp(&b)));
    let lse_of = |row: &[f32]| {
        let m = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        m + row
            .iter()
            .map(|&x| ((x - m) as f64).exp())
            .sum::<f64>()
            .ln() as f32
    };
    let banned = [order[0] as i32, order[3] as i32];
    let mut masked = want.to_vec();
    for &b in &banned {
        masked[b as usize] = f32::NEG_INFINITY;
    }
    let (mut ids, mut vals) = (vec![0i32; 8], vec![0f32; 8]);
    let (mut lse, mut tl, mut lse0) = (0f32, 0f32, 0f32);
    let mut full = vec![0f32; VOCAB];
    let mut full_lse = 0f32;
    let target = order[1] as u32;
    {
        let mut outs = [RowOutput {
            row: 3,
            want: Want::TopN {
                ids: &mut ids,
                logits: &mut vals,
            },
            banned: &banned,
            allowed: None,
            lse: Some(&mut lse),
            target: Some((target, &mut tl)),
        }];
        ctx.seq_clear(0).map_err(|e| fail(e.to_string()))?;
        ctx.forward(
            &Batch {
                tokens: &toks[..4],
                positions: &[0, 1, 2, 3],
                seq_ids: &[0; 4],
            },
            &mut outs,
        )
        .map_err(|e| fail(format!("top-N forward: {e}")))?;
    }
    // The same row again, as full logits with the same bans, and as a bare top-0.
    ctx.seq_truncate(0, 3).map_err(|e| fail(e.to_string()))?;
    {
        let mut outs = [RowOutput {
            row: 0,
            want: Want::Logits(&mut full),
            banned: &banned,
            allowed: None,
            lse: Some(&mut full_lse),
            target: None,
        }];
        ctx.forward(
            &Batch {
                tokens: &toks[3..4],
                positions: &[3],
                seq_ids: &[0],
            },
            &mut outs,
        )
        .map_err(|e| fail(format!("logits forward with bans: {e}")))?;
    }
    ctx.seq_truncate(0, 3).map_err(|e| fail(e.to_string()))?;
    {
        let mut outs = [RowOutput {
            row: 0,
            want: Want::TopN {
                ids: &mut [],
                logits: &mut [],
            },
            banned: &[],
            allowed: None,
            lse: Some(&mut lse0),
            target: None,
        }];
        ctx.forward(
            &Batch {
                tokens: &toks[3..4],
                positions: &[3],
                seq_ids: &[0],
            },
            &mut outs,
        )
        .map_err(|e| fail(format!("top-0 forward: {e}")))?;
    }
    // An allow-list: only two tokens keep their logits.
    let allowed = [order[5] as i32, order[2] as i32];
    let (mut aids, mut avals, mut alse) = ([0i32; 3], [0f32; 3], 0f32);
    ctx.seq_truncate(0, 3).map_err(|e| fail(e.to_string()))?;
    {
        let mut outs = [RowOutput {
            row: 0,
            want: Want::TopN {
                ids: &mut aids,
                logits: &mut avals,
            },
            banned: &[],
            allowed: Some(&allowed),
            lse: Some(&mut alse),
            target: None,
        }];
        ctx.forward(
            &Batch {
                tokens: &toks[3..4],
                positions: &[3],
                seq_ids: &[0],
            },
            &mut outs,
        )
        .map_err(|e| fail(format!("forward with an allow-list: {e}")))?;
    }
    let first_other = (0..VOCAB as i32)
        .find(|t| !allowed.contains(t))
        .unwrap_or(0);
    if aids != [order[2] as i32, order[5] as i32, first_other]
        || avals[2] != f32::NEG_INFINITY
        || avals[0].to_bits() != want[order[2]].to_bits()
    {
        return Err(fail(format!(
            "top-3 with allow-list {allowed:?} is {aids:?} {avals:?}, expected [{}, {}, {first_other}] with the last at -inf",
            order[2], order[5]
        )));
    }
    let two = [want[order[2]], want[order[5]]];
    if (alse - lse_of(&two)).abs() > 1e-3 * (1.0 + alse.abs()) {
        return Err(fail(format!(
            "log-sum-exp with an allow-list is {alse}, expected {}",
            lse_of(&two)
        )));
    }
    same_bits(&full, &masked, "logits with bans")?;
    let mut morder: Vec<usize> = (0..VOCAB).collect();
    morder.sort_by(|&a, &b| masked[b].total_cmp(&masked[a]).then(a.cmp(&b)));
    for k in 0..8 {
        if ids[k] as usize != morder[k] || vals[k].to_bits() != masked[morder[k]].to_bits() {
            return Err(fail(format!(
                "top-N entry {k} is ({}, {}), expected ({}, {}) once banned ids are removed",
                ids[k], vals[k], morder[k], masked[morder[k]]
            )));
        }
    }
    if tl.to_bits() != want[target as usize].to_bits() {
        return Err(fail(format!(
            "target logit {tl}, expected {}",
            want[target as usize]
        )));
    }
    for (what, got, exp) in [
        ("log-sum-exp with bans", lse, lse_of(&masked)),
        (
            "log-sum-exp of the logits output",
            full_lse,
            lse_of(&masked),
        ),
        ("log-sum-exp of a top-0 output", lse0, lse_of(want)),
    ] {
        if (got - exp).abs() > 1e-3 * (1.0 + exp.abs()) {
            return Err(fail(format!("{what} is {got}, expected {exp}")));
        }
    }
    Ok(())
}

fn check_bad_input(
    ctx: &mut ModelContext,
    toks: &[i32],
    seq_ref: &[Vec<f32>],
    n_ctx: u32,
) -> Result<(), String> {
    ctx.seq_clear(0).map_err(|e| fail(e.to_string()))?;
    step_by_step(ctx, 0, 0, &toks[..4])?;
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
        ctx.forward_logits(&[1], &[4], &[8], &[1], &mut l),
        "a sequence id past n_seq_max",
        Some(Status::InvalidArgument),
    )?;
    expect_error(
        ctx.seq_copy(0, 9, 2),
        "seq_copy to a missing sequence",
        Some(Status::InvalidArgument),
    )?;
    let big: Vec<i32> = (0..17).collect();
    expect_error(
        ctx.forward_logits(&big, &big, &[7; 17], &[0; 17], &mut l),
        "a batch larger than n_batch_max",
        Some(Status::InvalidArgument),
    )?;
    ctx.seq_clear(7).map_err(|e| fail(e.to_string()))?;
    let mut rows = vec![0f32; VOCAB * 13];
    let mut outs: Vec<RowOutput<'_>> = rows
        .chunks_exact_mut(VOCAB)
        .enumerate()
        .map(|(i, r)| RowOutput {
            row: i,
            want: Want::Logits(r),
            banned: &[],
            allowed: None,
            lse: None,
            target: None,
        })
        .collect();
    let r = ctx.forward(
        &Batch {
            tokens: &big[..13],
            positions: &big[..13],
            seq_ids: &[7; 13],
        },
        &mut outs,
    );
    expect_error(
        r,
        "more outputs than n_outputs_max",
        Some(Status::InvalidArgument),
    )?;
    drop(outs);
    ctx.seq_clear(7).map_err(|e| fail(e.to_string()))?;
    let mut tl = 0f32;
    let bad_outputs: [(&str, RowOutput<'_>); 2] = [
        (
            "a banned id past the vocabulary",
            RowOutput {
                row: 0,
                want: Want::TopN {
                    ids: &mut [],
                    logits: &mut [],
                },
                banned: &[VOCAB as i32],
                allowed: None,
                lse: None,
                target: None,
            },
        ),
        (
            "a target id past the vocabulary",
            RowOutput {
                row: 0,
                want: Want::TopN {
                    ids: &mut [],
                    logits: &mut [],
                },
                banned: &[],
                allowed: None,
                lse: None,
                target: Some((VOCAB as u32, &mut tl)),
            },
        ),
    ];
    for (what, o) in bad_outputs {
        let mut outs = [o];
        expect_error(
            ctx.forward(
                &Batch {
                    tokens: &[1],
                    positions: &[4],
                    seq_ids: &[0],
                },
                &mut outs,
            ),
            what,
            Some(Status::InvalidArgument),
        )?;
    }
    let mut outs = [
        RowOutput {
            row: 1,
            want: Want::TopN {
                ids: &mut [],
                logits: &mut [],
            },
            banned: &[],
            allowed: None,
            lse: None,
            target: None,
        },
        RowOutput {
            row: 0,
            want: Want::TopN {
                ids: &mut [],
                logits: &mut [],
            },
            banned: &[],
            allowed: None,
            lse: None,
            target: None,
        },
    ];
    expect_error(
        ctx.forward(
            &Batch {
                tokens: &[1, 2],
                positions: &[4, 5],
                seq_ids: &[0, 0],
            },
            &mut outs,
        ),
        "output rows out of order",
        Some(Status::InvalidArgument),
    )?;
    let mut fill = ctx.seq_clear(1).map_err(|e| fail(e.to_string()));
    for p in 0..n_ctx as i32 {
        if fill.is_err() {
            break;
        }
        fill = ctx
            .forward_logits(&[1], &[p], &[1], &[0], &mut l)
            .map_err(|e| fail(format!("filling the context: {e}")));
    }
    fill?;
    expect_error(
        ctx.forward_logits(&[1], &[n_ctx as i32], &[1], &[1], &mut l),
        "a position past the context",
        Some(Status::ContextFull),
    )?;
    let after = step_by_step(ctx, 0, 4, &toks[4..5])?;
    same_bits(&after[0], &seq_ref[4], "evaluation after rejected input")
}
