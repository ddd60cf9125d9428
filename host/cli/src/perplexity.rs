//! `kiln perplexity`: scores a text file the way llama.cpp's `llama-perplexity` does, so the
//! two can be compared number for number. The text is tokenized once (with BOS when the model
//! adds one, special-token text kept as plain text) and cut into non-overlapping chunks of the
//! context size; each chunk is evaluated from an empty cache, with its first token replaced by
//! BOS when the model adds one, and the second half of each chunk is scored: position `j`
//! predicts token `j + 1` for `j` in `n_ctx/2 .. n_ctx - 1`. The backend returns only what
//! that needs per scored row — the row's log-sum-exp and the logit of the next token — not
//! whole rows of logits.
//!
//! The estimate is `exp(mean NLL)` with the error `ppl * sqrt(var(NLL) / (count - 1))`, as
//! llama-perplexity reports it.

use crate::cli::ModelArgs;
use anyhow::{bail, Context, Result};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use kiln_sdk::abi::client::ContextOptions;
use kiln_sdk::backend::{Batch, RowOutput, Want};
use std::path::PathBuf;
use std::time::Instant;

/// `kiln perplexity` options.
#[derive(Args)]
pub struct PerplexityArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// The text file to score.
    #[arg(short = 'f', long = "file")]
    pub file: PathBuf,
    /// Chunks to score (default: all that fit in the text).
    #[arg(long)]
    pub chunks: Option<usize>,
    /// Tokens per forward call.
    #[arg(short = 'b', long = "batch", default_value_t = 512)]
    pub batch: usize,
    /// Print the result as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

/// Running sums of negative log-likelihoods.
#[derive(Default)]
struct Nll {
    sum: f64,
    sum2: f64,
    count: usize,
}

impl Nll {
    fn add(&mut self, v: f64) {
        self.sum += v;
        self.sum2 += v * v;
        self.count += 1;
    }
    fn ppl(&self) -> f64 {
        (self.sum / self.count.max(1) as f64).exp()
    }
    /// The standard error of the perplexity.
    fn error(&self) -> f64 {
        let n = self.count as f64;
        let mean = self.sum / n;
        let var = self.sum2 / n - mean * mean;
        if var > 0.0 && self.count > 1 {
            (var / (n - 1.0)).sqrt() * self.ppl()
        } else {
            0.0
        }
    }
}

/// Runs `kiln perplexity`.
pub fn perplexity(a: PerplexityArgs) -> Result<()> {
    if a.batch == 0 {
        bail!("--batch must be at least 1");
    }
    let text =
        std::fs::read(&a.file).with_context(|| format!("cannot read {}", a.file.display()))?;
    let text = String::from_utf8(text)
        .map_err(|_| anyhow::anyhow!("{} is not UTF-8 text", a.file.display()))?;
    let model = a.model.load()?;
    let n_ctx = a
        .model
        .ctx
        .ok_or_else(|| anyhow::anyhow!("give the context size with --ctx (e.g. 512)"))?
        as usize;
    if n_ctx < 4 {
        bail!("--ctx must be at least 4");
    }
    let t0 = Instant::now();
    let tokens = model.encode(&text, false)?;
    let n_vocab = model.n_vocab();
    if let Some(&t) = tokens.iter().find(|&&t| t as usize >= n_vocab) {
        bail!("the tokenizer gave token {t}, outside the model's {n_vocab} output rows");
    }
    if tokens.len() < 2 * n_ctx {
        bail!(
            "{} tokenizes to {} tokens; a context of {n_ctx} needs at least {}",
            a.file.display(),
            tokens.len(),
            2 * n_ctx
        );
    }
    let max_chunks = tokens.len() / n_ctx;
    let n_chunks = a.chunks.unwrap_or(max_chunks).min(max_chunks);
    if n_chunks == 0 {
        bail!("--chunks must be at least 1");
    }
    let batch = a.batch.min(n_ctx);
    let first = n_ctx / 2;
    let mut ctx = model
        .backend_model
        .create_context(ContextOptions {
            n_ctx: n_ctx as u32,
            n_seq_max: 1,
            n_batch_max: batch as u32,
            n_outputs_max: batch as u32,
        })
        .context("cannot create the context")?;
    let bos = model.tokenizer.bos().filter(|_| model.tokenizer.adds_bos());
    if !a.json {
        eprintln!(
            "[kiln] {}: {} tokens, {n_chunks} chunks of {n_ctx} (scoring the second half of each), backend {}",
            a.file.display(),
            tokens.len(),
            model.backend
        );
    }
    let pb = ProgressBar::new((n_chunks * n_ctx) as u64);
    pb.set_style(
        ProgressStyle::with_template(
            "{bar:30} {pos}/{len} tokens [{elapsed_precise} < {eta_precise}] {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    if a.json {
        pb.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let mut nll = Nll::default();
    let mut running = Vec::with_capacity(n_chunks);
    // Per scored row: its log-sum-exp and the logit of the next token.
    let mut lse = vec![0f32; batch];
    let mut tgt = vec![0f32; batch];
    let positions: Vec<i32> = (0..n_ctx as i32).collect();
    let seq_ids = vec![0i32; batch];
    for c in 0..n_chunks {
        let start = c * n_ctx;
        let mut chunk: Vec<i32> = tokens[start..start + n_ctx]
            .iter()
            .map(|&t| t as i32)
            .collect();
        if let Some(b) = bos {
            chunk[0] = b as i32;
        }
        ctx.seq_clear(0)?;
        for b0 in (0..n_ctx).step_by(batch) {
            let b1 = (b0 + batch).min(n_ctx);
            // Rows at positions first..n_ctx-1 are scored against the next token.
            let scored: Vec<usize> = (b0..b1).filter(|&j| j >= first && j + 1 < n_ctx).collect();
            let mut outs: Vec<RowOutput<'_>> = scored
                .iter()
                .zip(lse.iter_mut().zip(tgt.iter_mut()))
                .map(|(&j, (l, t))| RowOutput {
                    row: j - b0,
                    want: Want::TopN {
                        ids: &mut [],
                        logits: &mut [],
                    },
                    banned: &[],
                    allowed: None,
                    lse: Some(l),
                    target: Some((tokens[start + j + 1], t)),
                })
                .collect();
            ctx.forward(
                &Batch {
                    tokens: &chunk[b0..b1],
                    positions: &positions[b0..b1],
                    seq_ids: &seq_ids[..b1 - b0],
                },
                &mut outs,
            )?;
            drop(outs);
            for k in 0..scored.len() {
                nll.add(f64::from(lse[k]) - f64::from(tgt[k]));
            }
            pb.inc((b1 - b0) as u64);
        }
        running.push(nll.ppl());
        pb.set_message(format!("PPL {:.4} ± {:.5}", nll.ppl(), nll.error()));
        if !a.json {
            pb.println(format!("[{}] {:.4} ± {:.5}", c + 1, nll.ppl(), nll.error()));
        }
    }
    pb.finish_and_clear();
    let secs = t0.elapsed().as_secs_f64();
    if a.json {
        let v = serde_json::json!({
            "model": model.file.path.file_name().map(|n| n.to_string_lossy().into_owned()),
            "backend": model.backend,
            "n_ctx": n_ctx,
            "chunks": n_chunks,
            "n_tokens": tokens.len(),
            "scored": nll.count,
            "ppl": nll.ppl(),
            "ppl_error": nll.error(),
            "running": running,
            "seconds": secs,
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        println!(
            "Final estimate: PPL = {:.4} +/- {:.5} ({} tokens scored in {n_chunks} chunks of {n_ctx}, {:.1} s)",
            nll.ppl(),
            nll.error(),
            nll.count,
            secs
        );
    }
    Ok(())
}
