//! What a client submits to the [`super::Engine`] and what it gets back.

use crate::chat::Message;
use crate::sampler::{builtin, SamplerModule, SamplingParams, DEFAULT_DEADLINE_MS};
use anyhow::{Context, Result};
use std::sync::Arc;

/// The prompt of a request.
#[derive(Clone, Debug)]
pub enum Input {
    /// Raw text, tokenized as is (BOS added when the model asks for it).
    Text {
        /// The text.
        text: String,
        /// Parse special-token text (e.g. `<|im_start|>`); false treats it as plain text.
        parse_special: bool,
    },
    /// Chat messages, rendered with the model's chat template, the assistant's turn opened.
    Chat(Vec<Message>),
    /// Chat messages and the tools the model may call (the template's `tools`).
    ChatTools {
        /// The conversation.
        messages: Vec<Message>,
        /// `[{"type": "function", "function": {"name", "description", "parameters"}}]`.
        tools: serde_json::Value,
    },
    /// Token ids, used as they are.
    Tokens(Vec<u32>),
}

/// The sampler of a request: a WebAssembly module and its configuration.
#[derive(Clone)]
pub struct SamplerSpec {
    /// The compiled module.
    pub module: Arc<SamplerModule>,
    /// Its configuration bytes (JSON by convention).
    pub config: Vec<u8>,
    /// CPU milliseconds each call may take.
    pub deadline_ms: u64,
}

impl SamplerSpec {
    /// The built-in sampler that implements llama.cpp-style settings: `greedy` for plain
    /// greedy decoding, else `chain` configured with them.
    pub fn from_params(p: &SamplingParams) -> Result<SamplerSpec> {
        let (name, config) = builtin::for_params(p);
        let module = builtin::load(name)
            .with_context(|| format!("this build of kiln has no built-in `{name}` sampler"))??;
        Ok(SamplerSpec {
            module,
            config: config.into_bytes(),
            deadline_ms: DEFAULT_DEADLINE_MS,
        })
    }

    /// Greedy decoding (the built-in `greedy`).
    pub fn greedy() -> Result<SamplerSpec> {
        Self::from_params(&SamplingParams {
            temperature: 0.0,
            ..SamplingParams::default()
        })
    }
}

impl std::fmt::Debug for SamplerSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SamplerSpec")
            .field("module", &self.module.name())
            .field("config_bytes", &self.config.len())
            .field("deadline_ms", &self.deadline_ms)
            .finish()
    }
}

/// One generation request.
#[derive(Clone, Debug)]
pub struct Request {
    /// The prompt.
    pub input: Input,
    /// Who chooses each token.
    pub sampler: SamplerSpec,
    /// Seed of the sampler.
    pub seed: u64,
    /// Most tokens to generate (`None`: until end of generation or a full context).
    pub max_tokens: Option<usize>,
    /// Texts that end the generation when produced; they are not part of the output.
    pub stop: Vec<String>,
    /// Keep generating past end-of-generation tokens (they are never chosen).
    pub ignore_eos: bool,
    /// `Some(k)`: report each token's log-probability and the `k` most likely alternatives
    /// (`k` at most [`MAX_TOP_LOGPROBS`]).
    pub logprobs: Option<usize>,
}

/// Most alternatives a request may ask for with [`Request::logprobs`].
pub const MAX_TOP_LOGPROBS: usize = 20;

impl Request {
    /// A request for `input` with `sampler` and defaults for the rest.
    pub fn new(input: Input, sampler: SamplerSpec) -> Request {
        Request {
            input,
            sampler,
            seed: 0,
            max_tokens: None,
            stop: Vec::new(),
            ignore_eos: false,
            logprobs: None,
        }
    }
}

/// A token's log-probability under the model (log-softmax of the logits, temperature 1,
/// before any sampler transformation; banned tokens excluded).
#[derive(Clone, Debug, PartialEq)]
pub struct TokenLogprob {
    /// The token's log-probability.
    pub logprob: f32,
    /// The most likely tokens and their log-probabilities, best first.
    pub top: Vec<(u32, f32)>,
}

/// Why a generation ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Finish {
    /// The model produced an end-of-generation token.
    EndOfGeneration,
    /// A stop text was produced (it is not part of the output).
    StopSequence(String),
    /// `max_tokens` tokens were generated.
    Length,
    /// The sequence filled the context.
    ContextFull,
    /// The sampler ended the sequence.
    SamplerStop,
    /// The client cancelled (or went away).
    Cancelled,
    /// The engine failed this request; the message says why.
    Error(String),
}

impl Finish {
    /// A short human description.
    pub fn describe(&self) -> String {
        match self {
            Finish::EndOfGeneration => "end of generation".into(),
            Finish::StopSequence(s) => format!("stop text {s:?}"),
            Finish::Length => "token limit reached".into(),
            Finish::ContextFull => "context full".into(),
            Finish::SamplerStop => "the sampler stopped".into(),
            Finish::Cancelled => "cancelled".into(),
            Finish::Error(e) => format!("error: {e}"),
        }
    }
}

/// Token counts of a request.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    /// Prompt tokens.
    pub prompt_tokens: usize,
    /// Prompt tokens whose KV cache was reused instead of computed.
    pub cached_tokens: usize,
    /// Generated tokens.
    pub completion_tokens: usize,
}

/// Where a request's time went, in milliseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Timings {
    /// Waiting for a free slot.
    pub queued_ms: f64,
    /// From admission to the first token (prompt processing, shared with other requests).
    pub prompt_ms: f64,
    /// From the first token to the last.
    pub gen_ms: f64,
    /// From submission to the first token.
    pub ttft_ms: f64,
}

/// What a request's handle receives, in order: tokens, then exactly one `Done`.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// A generated token.
    Token {
        /// Its id.
        id: u32,
        /// The text this token completes: UTF-8 safe, with text that might begin a stop
        /// sequence held back until it is known not to (so it may be empty).
        text: String,
        /// Its log-probability, when the request asked for it.
        logprob: Option<TokenLogprob>,
    },
    /// The end of the request.
    Done {
        /// Why it ended.
        finish: Finish,
        /// Text released at the end (held back before), if any.
        text: String,
        /// Token counts.
        usage: Usage,
        /// Time spent.
        timings: Timings,
    },
}
