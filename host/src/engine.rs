//! The inference engine of the CLI: loads a model on the chosen backend, evaluates prompts in
//! batches, and runs the sample → accept → forward loop with UTF-8-safe streaming output.

use crate::model_file::ModelFile;
use crate::plugins;
use crate::sampling::Sampler;
use crate::tokenizer::{StreamDecoder, Tokenizer};
use anyhow::{bail, Context, Result};
use kiln_sdk::abi::client::{LoadedModel, ModelContext};
use kiln_sdk::abi::Status;
use std::path::Path;
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
}

impl StopReason {
    /// A short human description.
    pub fn describe(self) -> &'static str {
        match self {
            StopReason::EndOfGeneration => "end of generation",
            StopReason::Length => "token limit reached",
            StopReason::ContextFull => "context full (raise --ctx)",
            StopReason::Stopped => "stopped",
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
        tracing::info!("backend {} {} from {}", be.desc.name, be.desc.version, be.path.display());
        let instance = be.lib.create(threads, 0).context("backend failed to start")?;
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
        let eog_ids = (0..tokenizer.n_vocab() as u32).filter(|&t| tokenizer.is_eog(t)).collect();
        let device = be.devices.first().map(|d| d.name.clone()).unwrap_or_default();
        Ok(Engine {
            file,
            model,
            tokenizer,
            backend: format!("{} {}", be.desc.name, be.desc.version),
            device,
            load_ms: t0.elapsed().as_secs_f64() * 1e3,
            eog_ids,
        })
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
        self.model.create_context(n_ctx, 1).context("cannot create the context (KV cache)")
    }

    /// Evaluates `tokens` (appended at position `n_past` of sequence 0) in batches; returns the
    /// logits of the last token in `logits`.
    pub fn prefill(ctx: &mut ModelContext, n_past: usize, tokens: &[u32], logits: &mut Vec<f32>) -> Result<()> {
        let mut pos = n_past;
        for chunk in tokens.chunks(PROMPT_BATCH) {
            let toks: Vec<i32> = chunk.iter().map(|&t| t as i32).collect();
            let positions: Vec<i32> = (pos..pos + chunk.len()).map(|p| p as i32).collect();
            let seqs = vec![0i32; chunk.len()];
            let mut want = vec![0u8; chunk.len()];
            if pos + chunk.len() == n_past + tokens.len() {
                want[chunk.len() - 1] = 1;
            }
            ctx.forward_logits(&toks, &positions, &seqs, &want, logits)?;
            pos += chunk.len();
        }
        Ok(())
    }

    /// Generates from `prompt` (appended after `n_past` cached tokens of sequence 0), calling
    /// `emit` with each piece of text; `emit` returns false to stop. Returns the generated ids.
    pub fn generate(
        &self,
        ctx: &mut ModelContext,
        n_past: usize,
        prompt: &[u32],
        sampler: &mut Sampler,
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
            sampler.accept(t);
        }
        let mut logits = Vec::new();
        let t0 = Instant::now();
        Self::prefill(ctx, n_past, prompt, &mut logits)?;
        let prompt_ms = t0.elapsed().as_secs_f64() * 1e3;
        let mut pos = n_past + prompt.len();
        let mut out = Vec::new();
        let mut dec = StreamDecoder::new();
        let t1 = Instant::now();
        let stop = loop {
            if opts.n_predict.is_some_and(|n| out.len() >= n) {
                break StopReason::Length;
            }
            if opts.ignore_eos {
                for &t in &self.eog_ids {
                    if let Some(l) = logits.get_mut(t as usize) {
                        *l = f32::NEG_INFINITY;
                    }
                }
            }
            let tok = sampler.sample(&logits);
            sampler.accept(tok);
            if !opts.ignore_eos && self.tokenizer.is_eog(tok) {
                break StopReason::EndOfGeneration;
            }
            out.push(tok);
            let text = dec.push(self.tokenizer.token_bytes(tok));
            if !text.is_empty() && !emit(&text)? {
                break StopReason::Stopped;
            }
            if opts.n_predict.is_some_and(|n| out.len() >= n) {
                break StopReason::Length;
            }
            if pos >= n_ctx {
                break StopReason::ContextFull;
            }
            match ctx.forward_logits(&[tok as i32], &[pos as i32], &[0], &[1], &mut logits) {
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
            gen_tokens: out.len(),
            gen_ms: t1.elapsed().as_secs_f64() * 1e3,
            stop,
            n_cached: pos,
        };
        Ok((out, stats))
    }
}

/// Available memory in bytes (Linux `MemAvailable`).
pub fn available_memory() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemAvailable:"))?;
    line.split_whitespace().nth(1)?.parse::<u64>().ok().map(|kb| kb * 1024)
}
