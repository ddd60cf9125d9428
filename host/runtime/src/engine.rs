//! The inference engine of the CLI: loads a model on the chosen backend, evaluates prompts in
//! batches, and runs the sample → accept → forward loop with UTF-8-safe streaming output.
//! Every token is chosen by a WebAssembly sampler ([`crate::sampler`]): a module that asks for
//! the top-N view gets the backend's top N (plus the EOG ids to drop with `--ignore-eos`);
//! one that asks for the full row (or has a mask) gets the logits.

use crate::model_file::ModelFile;
use crate::plugins;
use crate::sampler::{SamplerModule, SequenceSampler, SpecialTokens, Step, View, Vocab};
use crate::tokenizer::{StreamDecoder, Tokenizer};
use anyhow::{bail, Context, Result};
use kiln_sdk::abi::client::{CallResult, LoadedModel, ModelContext, TopN};
use kiln_sdk::abi::Status;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

/// Tokens evaluated per forward call while processing a prompt.
pub const PROMPT_BATCH: usize = 512;

/// A model loaded on a backend, with its tokenizer.
pub struct Engine {
    /// The mapped file.
    pub file: ModelFile,
    /// The model inside the backend.
    pub model: LoadedModel,
    /// Its tokenizer.
    pub tokenizer: Tokenizer,
    /// Backend name.
    pub backend: String,
    /// Device name.
    pub device: String,
    /// Milliseconds spent loading (file, tokenizer, backend).
    pub load_ms: f64,
    /// End-of-generation token ids (masked when EOS is ignored, as llama.cpp does).
    pub eog_ids: Vec<u32>,
    /// What samplers learn of the vocabulary (one entry per output row of the model).
    pub vocab: Arc<Vocab>,
}

/// Why generation stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// The model emitted an end-of-generation token.
    EndOfGeneration,
    /// `-n` tokens were generated.
    Length,
    /// The context is full.
    ContextFull,
    /// The consumer asked to stop.
    Stopped,
    /// The sampler ended the sequence (e.g. a stop sequence).
    SamplerStop,
}

impl StopReason {
    /// A short human description.
    pub fn describe(self) -> &'static str {
        match self {
            StopReason::EndOfGeneration => "end of generation",
            StopReason::Length => "token limit reached",
            StopReason::ContextFull => "context full (raise --ctx)",
            StopReason::Stopped => "stopped",
            StopReason::SamplerStop => "the sampler stopped",
        }
    }
}

/// Counters of one generation.
#[derive(Debug, Clone)]
pub struct GenStats {
    /// Prompt tokens evaluated.
    pub prompt_tokens: usize,
    /// Milliseconds for them.
    pub prompt_ms: f64,
    /// Tokens generated.
    pub gen_tokens: usize,
    /// Milliseconds for them.
    pub gen_ms: f64,
    /// Why it stopped.
    pub stop: StopReason,
    /// Positions of sequence 0 held in the KV cache afterwards.
    pub n_cached: usize,
}

/// Generation settings.
pub struct GenOptions {
    /// Most tokens to generate (None = until EOS or the context is full).
    pub n_predict: Option<usize>,
    /// Keep going past end-of-generation tokens.
    pub ignore_eos: bool,
}

impl Engine {
    /// Loads `path` on `backend` (name, path, or best available) with `threads` (0 = all).
    pub fn load(path: &Path, backend: Option<&str>, threads: u32) -> Result<Engine> {
        let t0 = Instant::now();
        let file = ModelFile::open(path)?;
        let tokenizer = Tokenizer::from_gguf(file.gguf())
            .with_context(|| format!("cannot build the tokenizer of {}", path.display()))?;
        let be = plugins::choose(backend)?;
        tracing::info!(
            "backend {} {} from {}",
            be.desc.name,
            be.desc.version,
            be.path.display()
        );
        let instance = be
            .lib
            .create(threads, 0)
            .context("backend failed to start")?;
        // SAFETY: the GGUF view borrows only the file's mapping, kept alive by `keep_alive`.
        let model = unsafe { instance.load_model(file.gguf(), file.keep_alive()) }
            .with_context(|| format!("backend {} cannot load {}", be.desc.name, path.display()))?;
        if model.info().n_vocab as usize != tokenizer.n_vocab() {
            tracing::warn!(
                "model has {} output rows but the tokenizer {} tokens",
                model.info().n_vocab,
                tokenizer.n_vocab()
            );
        }
        let eog_ids: Vec<u32> = (0..tokenizer.n_vocab() as u32)
            .filter(|&t| tokenizer.is_eog(t))
            .collect();
        let special = SpecialTokens {
            bos: tokenizer.bos(),
            eos: tokenizer.eos(),
            eot: tokenizer.eot(),
        };
        let n_rows = model.info().n_vocab as usize;
        let vocab = Arc::new(Vocab::new(
            n_rows,
            |id| tokenizer.token_bytes(id),
            special,
            &eog_ids,
        ));
        let device = be
            .devices
            .first()
            .map(|d| d.name.clone())
            .unwrap_or_default();
        Ok(Engine {
            file,
            model,
            tokenizer,
            backend: format!("{} {}", be.desc.name, be.desc.version),
            device,
            load_ms: t0.elapsed().as_secs_f64() * 1e3,
            eog_ids,
            vocab,
        })
    }

    /// A sampler of `module` for one sequence of this model, with `config` and `seed`; calls
    /// get `deadline_ms` each.
    pub fn sampler(
        &self,
        module: &Arc<SamplerModule>,
        config: &[u8],
        seed: u64,
        deadline_ms: u64,
    ) -> Result<SequenceSampler> {
        let mut s = module.instantiate(config, seed, self.vocab.clone())?;
        s.set_deadline_ms(deadline_ms);
        Ok(s)
    }

    /// The context size to use: `requested`, else the model's trained length, capped so the KV
    /// cache takes at most half of the available memory.
    pub fn context_size(&self, requested: Option<u32>) -> Result<u32> {
        let info = self.model.info();
        let per_token = info.kv_bytes_per_token.max(1);
        if let Some(n) = requested {
            if n == 0 {
                bail!("--ctx must be at least 1");
            }
            return Ok(n);
        }
        let train = info.n_ctx_train.max(1);
        let avail = available_memory().unwrap_or(8 << 30) / 2;
        let fit = (avail / per_token).clamp(256, u32::MAX as u64) as u32;
        Ok(train.min(fit))
    }

    /// Creates a one-sequence context of `n_ctx` positions.
    pub fn context(&self, n_ctx: u32) -> Result<ModelContext> {
        self.model
            .create_context(n_ctx, 1)
            .context("cannot create the context (KV cache)")
    }

    /// Evaluates `tokens` (appended at position `n_past` of sequence 0) in batches; the
    /// output of the last token lands in `out`, as `mode` asks.
    fn prefill(
        ctx: &mut ModelContext,
        n_past: usize,
        tokens: &[u32],
        mode: Mode,
        out: &mut StepOut,
    ) -> CallResult<()> {
        let mut pos = n_past;
        for chunk in tokens.chunks(PROMPT_BATCH) {
            let last = pos + chunk.len() == n_past + tokens.len();
            forward(ctx, chunk, pos, last.then_some(mode), out)?;
            pos += chunk.len();
        }
        Ok(())
    }

    /// One sampling step on the output of the last forward call.
    fn choose(
        &self,
        sampler: &mut SequenceSampler,
        mode: Mode,
        out: &mut StepOut,
        ignore_eos: bool,
    ) -> Result<Step> {
        match mode {
            Mode::Full => {
                if ignore_eos {
                    for &t in &self.eog_ids {
                        if let Some(l) = out.logits.get_mut(t as usize) {
                            *l = f32::NEG_INFINITY;
                        }
                    }
                }
                Ok(sampler.sample_row(&mut out.logits)?)
            }
            Mode::Top { keep, .. } => {
                let top = &out.top;
                if !ignore_eos {
                    let n = keep.min(top.ids.len());
                    return Ok(sampler.sample_top(&top.ids[..n], &top.logits[..n], top.lse)?);
                }
                // Drop the end-of-generation tokens (as if masked to −∞), keep N, and take
                // their share out of the log-sum-exp (exactly for those in the view).
                let (mut ids, mut logits) = (Vec::with_capacity(keep), Vec::with_capacity(keep));
                let mut eog_share = 0.0f64;
                for (&id, &l) in top.ids.iter().zip(&top.logits) {
                    if self.vocab.is_eog(id as u32) {
                        eog_share += f64::from(l - top.lse).exp();
                    } else if ids.len() < keep {
                        ids.push(id);
                        logits.push(l);
                    }
                }
                if ids.is_empty() {
                    bail!("no token left to sample once the end-of-generation tokens are dropped");
                }
                let rest = 1.0 - eog_share;
                let lse = if rest > 1e-12 && top.lse.is_finite() {
                    top.lse + rest.ln() as f32
                } else {
                    top.lse
                };
                Ok(sampler.sample_top(&ids, &logits, lse)?)
            }
        }
    }

    /// Generates from `prompt` (appended after `n_past` cached tokens of sequence 0), calling
    /// `emit` with each piece of text; `emit` returns false to stop. Every token is chosen by
    /// `sampler`, which is first given the prompt's tokens. Returns the generated ids.
    pub fn generate(
        &self,
        ctx: &mut ModelContext,
        n_past: usize,
        prompt: &[u32],
        sampler: &mut SequenceSampler,
        opts: &GenOptions,
        emit: &mut dyn FnMut(&str) -> Result<bool>,
    ) -> Result<(Vec<u32>, GenStats)> {
        let (n_ctx, _, _) = ctx.info()?;
        let n_ctx = n_ctx as usize;
        if prompt.is_empty() {
            bail!("the prompt is empty");
        }
        if n_past + prompt.len() > n_ctx {
            bail!(
                "the prompt has {} tokens but the context holds {} (raise --ctx)",
                n_past + prompt.len(),
                n_ctx
            );
        }
        for &t in prompt {
            sampler.accept(t)?;
        }
        let n_vocab = self.model.info().n_vocab as usize;
        let mode = match sampler.view() {
            // A mask needs the whole row; so does a view as large as the vocabulary.
            View::TopN(n) if !sampler.module().has_mask() && n < n_vocab => {
                let extra = if opts.ignore_eos {
                    self.eog_ids.len()
                } else {
                    0
                };
                Mode::Top {
                    request: (n + extra).min(n_vocab),
                    keep: n,
                }
            }
            _ => Mode::Full,
        };
        let mut out = StepOut::default();
        let t0 = Instant::now();
        Self::prefill(ctx, n_past, prompt, mode, &mut out)?;
        let prompt_ms = t0.elapsed().as_secs_f64() * 1e3;
        let mut pos = n_past + prompt.len();
        let mut generated = Vec::new();
        let mut dec = StreamDecoder::new();
        let t1 = Instant::now();
        let stop = loop {
            if opts.n_predict.is_some_and(|n| generated.len() >= n) {
                break StopReason::Length;
            }
            let tok = match self.choose(sampler, mode, &mut out, opts.ignore_eos)? {
                Step::Token(t) => t,
                Step::Stop => break StopReason::SamplerStop,
            };
            sampler.accept(tok)?;
            if !opts.ignore_eos && self.tokenizer.is_eog(tok) {
                break StopReason::EndOfGeneration;
            }
            generated.push(tok);
            let text = dec.push(self.tokenizer.token_bytes(tok));
            if !text.is_empty() && !emit(&text)? {
                break StopReason::Stopped;
            }
            if opts.n_predict.is_some_and(|n| generated.len() >= n) {
                break StopReason::Length;
            }
            if pos >= n_ctx {
                break StopReason::ContextFull;
            }
            match forward(ctx, &[tok], pos, Some(mode), &mut out) {
                Ok(()) => pos += 1,
                Err(e) if e.status == Status::ContextFull => break StopReason::ContextFull,
                Err(e) => return Err(e.into()),
            }
        };
        let rest = dec.finish();
        if !rest.is_empty() {
            emit(&rest)?;
        }
        let stats = GenStats {
            prompt_tokens: prompt.len(),
            prompt_ms,
            gen_tokens: generated.len(),
            gen_ms: t1.elapsed().as_secs_f64() * 1e3,
            stop,
            n_cached: pos,
        };
        Ok((generated, stats))
    }
}

/// What a forward call returns for the last token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// The full row of logits.
    Full,
    /// The backend's top `request`; the sampler sees at most `keep` of them.
    Top { request: usize, keep: usize },
}

/// The output of the last forward call.
#[derive(Default)]
struct StepOut {
    logits: Vec<f32>,
    top: TopN,
}

/// Evaluates `tokens` at positions `pos..` of sequence 0; with `mode`, the last token's
/// output lands in `out`.
fn forward(
    ctx: &mut ModelContext,
    tokens: &[u32],
    pos: usize,
    mode: Option<Mode>,
    out: &mut StepOut,
) -> CallResult<()> {
    let toks: Vec<i32> = tokens.iter().map(|&t| t as i32).collect();
    let positions: Vec<i32> = (pos..pos + tokens.len()).map(|p| p as i32).collect();
    let seqs = vec![0i32; tokens.len()];
    let mut want = vec![0u8; tokens.len()];
    if mode.is_some() {
        if let Some(w) = want.last_mut() {
            *w = 1;
        }
    }
    match mode {
        Some(Mode::Top { request, .. }) => {
            let mut rows = ctx.forward_top_n(&toks, &positions, &seqs, &want, request)?;
            out.top = rows.pop().unwrap_or_default();
            Ok(())
        }
        _ => ctx.forward_logits(&toks, &positions, &seqs, &want, &mut out.logits),
    }
}

/// Available memory in bytes (Linux `MemAvailable`).
pub fn available_memory() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemAvailable:"))?;
    line.split_whitespace()
        .nth(1)?
        .parse::<u64>()
        .ok()
        .map(|kb| kb * 1024)
}
