//! [`Model`]: a GGUF file loaded on the backend that suits it best (or the one asked for),
//! with its tokenizer, chat template and what samplers learn of its vocabulary.

use crate::chat::{ChatTemplate, Message};
use crate::model_file::ModelFile;
use crate::plugins;
use crate::sampler::{SpecialTokens, Vocab};
use crate::tokenizer::Tokenizer;
use anyhow::{Context, Result};
use kiln_sdk::abi::client::LoadedModel;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

/// How to load a model.
#[derive(Clone, Debug, Default)]
pub struct LoadOptions {
    /// Backend name or library path; `None` = the best one for this model.
    pub backend: Option<String>,
    /// Worker threads (0 = all cores).
    pub threads: u32,
}

/// A model loaded on a backend, with everything needed to turn text into requests.
pub struct Model {
    /// The mapped file.
    pub file: ModelFile,
    /// The model inside the backend.
    pub backend_model: LoadedModel,
    /// Its tokenizer.
    pub tokenizer: Tokenizer,
    /// The chat template: the file's own, or a built-in fallback for its architecture.
    pub template: ChatTemplate,
    /// Backend name and version.
    pub backend: String,
    /// Why the backend was chosen (its score and reason for this model).
    pub backend_reason: String,
    /// Device name.
    pub device: String,
    /// Milliseconds spent loading (file, tokenizer, backend).
    pub load_ms: f64,
    /// End-of-generation token ids.
    pub eog_ids: Vec<u32>,
    /// What samplers learn of the vocabulary (one entry per output row of the model).
    pub vocab: Arc<Vocab>,
}

impl Model {
    /// Loads `path` on the backend `opts` names, or on the best-scoring one for this model.
    pub fn load(path: &Path, opts: &LoadOptions) -> Result<Arc<Model>> {
        let t0 = Instant::now();
        let file = ModelFile::open(path)?;
        let tokenizer = Tokenizer::from_gguf(file.gguf())
            .with_context(|| format!("cannot build the tokenizer of {}", path.display()))?;
        let choice = plugins::choose_for(opts.backend.as_deref(), file.gguf())?;
        let be = choice.backend;
        tracing::info!(
            "backend {} {} from {} ({})",
            be.desc.name,
            be.desc.version,
            be.path.display(),
            choice.reason
        );
        let instance = be
            .lib
            .create(opts.threads, 0)
            .context("backend failed to start")?;
        // SAFETY: the GGUF view borrows only the file's mapping, kept alive by `keep_alive`.
        let backend_model = unsafe { instance.load_model(file.gguf(), file.keep_alive()) }
            .with_context(|| format!("backend {} cannot load {}", be.desc.name, path.display()))?;
        let n_rows = backend_model.info().n_vocab as usize;
        if n_rows != tokenizer.n_vocab() {
            tracing::warn!(
                "model has {} output rows but the tokenizer {} tokens",
                n_rows,
                tokenizer.n_vocab()
            );
        }
        let eog_ids: Vec<u32> = (0..tokenizer.n_vocab() as u32)
            .filter(|&t| tokenizer.is_eog(t) && (t as usize) < n_rows)
            .collect();
        let special = SpecialTokens {
            bos: tokenizer.bos(),
            eos: tokenizer.eos(),
            eot: tokenizer.eot(),
        };
        let vocab = Arc::new(Vocab::new(
            n_rows,
            |id| tokenizer.token_bytes(id),
            special,
            &eog_ids,
        ));
        let template = match tokenizer.chat_template() {
            Some(src) => ChatTemplate::new(src).context("the model's chat template is invalid")?,
            None => ChatTemplate::fallback(backend_model.info().arch.as_str()),
        };
        let device = be
            .devices
            .first()
            .map(|d| d.name.clone())
            .unwrap_or_default();
        Ok(Arc::new(Model {
            file,
            backend_model,
            tokenizer,
            template,
            backend: format!("{} {}", be.desc.name, be.desc.version),
            backend_reason: choice.reason,
            device,
            load_ms: t0.elapsed().as_secs_f64() * 1e3,
            eog_ids,
            vocab,
        }))
    }

    /// Output rows of the model (its vocabulary as the backend sees it).
    pub fn n_vocab(&self) -> usize {
        self.backend_model.info().n_vocab as usize
    }

    /// Tokenizes `text` as a raw prompt (BOS added when the model asks for it); special-token
    /// text is parsed unless `parse_special` is false.
    pub fn encode(&self, text: &str, parse_special: bool) -> Result<Vec<u32>> {
        self.tokenizer.encode(text, parse_special)
    }

    /// Renders `messages` with the chat template (with the assistant's turn opened when
    /// `add_generation_prompt`) and tokenizes the result; a template that writes the BOS text
    /// itself does not get a second BOS from the tokenizer.
    pub fn encode_chat(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
    ) -> Result<Vec<u32>> {
        self.encode_chat_with_tools(messages, None, add_generation_prompt)
    }

    /// [`Model::encode_chat`] with the tools the model may call.
    pub fn encode_chat_with_tools(
        &self,
        messages: &[Message],
        tools: Option<&serde_json::Value>,
        add_generation_prompt: bool,
    ) -> Result<Vec<u32>> {
        let text = self.render_chat_with_tools(messages, tools, add_generation_prompt)?;
        let mut ids = self.tokenizer.encode(&text, true)?;
        if let Some(bos) = self.tokenizer.bos() {
            if ids.len() >= 2 && ids[0] == bos && ids[1] == bos {
                ids.remove(0);
            }
        }
        Ok(ids)
    }

    /// The chat template's text for `messages`.
    pub fn render_chat(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String> {
        self.render_chat_with_tools(messages, None, add_generation_prompt)
    }

    /// The chat template's text for `messages` and `tools`.
    pub fn render_chat_with_tools(
        &self,
        messages: &[Message],
        tools: Option<&serde_json::Value>,
        add_generation_prompt: bool,
    ) -> Result<String> {
        let text = |id: Option<u32>| {
            id.and_then(|i| self.tokenizer.token_text(i))
                .unwrap_or("")
                .to_string()
        };
        let (bos, eos) = (text(self.tokenizer.bos()), text(self.tokenizer.eos()));
        self.template
            .render_with_tools(messages, tools, add_generation_prompt, &bos, &eos)
    }

    /// The context size to use: `requested`, else the model's trained length, capped so that
    /// `n_seq` sequences' KV caches take at most half of the available memory.
    pub fn context_size(&self, requested: Option<u32>, n_seq: u32) -> Result<u32> {
        let info = self.backend_model.info();
        if let Some(n) = requested {
            if n == 0 {
                anyhow::bail!("the context size must be at least 1");
            }
            return Ok(n);
        }
        let per_token = info.kv_bytes_per_token.max(1) * u64::from(n_seq.max(1));
        let train = info.n_ctx_train.max(1);
        let avail = available_memory().unwrap_or(8 << 30) / 2;
        let fit = (avail / per_token).clamp(256, u32::MAX as u64) as u32;
        Ok(train.min(fit))
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
