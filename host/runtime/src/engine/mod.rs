//! The engine: one backend context with N sequence slots, driven by a scheduler thread.
//!
//! [`Engine::submit`] tokenizes a [`Request`], instantiates its sampler and primes it with the
//! prompt on the caller's thread, then queues it; the scheduler admits it into a free slot
//! (reusing the longest cached or running KV prefix), and every step builds one `forward`
//! batch from all active sequences — one row per decoding sequence, then chunks of pending
//! prompts up to the per-step token budget — samples each output with its own sampler and
//! streams [`Event`]s to the request's [`Handle`]. Cancelling (or dropping) a handle frees its
//! slot at the next step.

mod request;
mod scheduler;
mod text;

pub use request::{
    Event, Finish, Input, Request, SamplerSpec, Timings, TokenLogprob, Usage, MAX_TOP_LOGPROBS,
};

use crate::model::Model;
use crate::sampler::SequenceSampler;
use anyhow::{anyhow, Context as _, Result};
use kiln_sdk::abi::client::ContextOptions;
use kiln_sdk::backend::Profile;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How an engine is sized.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EngineOptions {
    /// Positions per sequence (prompt and generated tokens).
    pub n_ctx: u32,
    /// Sequences that run at once.
    pub n_slots: u32,
    /// Most tokens one step evaluates (decoding rows first, then prompt chunks).
    pub n_batch: u32,
    /// Requests that may wait for a slot; more are refused ([`SubmitError::QueueFull`]).
    pub queue: usize,
}

impl EngineOptions {
    /// One sequence of `n_ctx` positions, prompts in chunks of 512 tokens.
    pub fn single(n_ctx: u32) -> EngineOptions {
        EngineOptions {
            n_ctx,
            n_slots: 1,
            n_batch: 512,
            queue: 16,
        }
    }
}

/// Why a request was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    /// The request is invalid (the message says why): empty prompt, too long for the
    /// context, bad sampler configuration...
    #[error("{0}")]
    Invalid(String),
    /// Every slot is busy and the queue is full.
    #[error("the engine is busy: {0} requests are already waiting")]
    QueueFull(usize),
    /// The engine is shutting down.
    #[error("the engine is shutting down")]
    Closed,
}

/// Counters and gauges of an engine, for health checks and metrics.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct EngineStats {
    /// Requests admitted into a slot.
    pub admitted: u64,
    /// Requests finished, by how (end of generation, stop text, length, context full,
    /// sampler stop, cancelled, error).
    pub finished: [u64; 7],
    /// Prompt tokens of admitted requests.
    pub prompt_tokens: u64,
    /// Of those, tokens whose KV cache was reused.
    pub cached_tokens: u64,
    /// Generated tokens.
    pub generated_tokens: u64,
    /// Steps (`forward` calls).
    pub steps: u64,
    /// Requests waiting for a slot.
    pub queued: usize,
    /// Slots running a request.
    pub busy_slots: usize,
    /// Slots.
    pub n_slots: usize,
    /// KV positions holding tokens (running sequences and cached prefixes).
    pub kv_used: u64,
    /// KV positions in all.
    pub kv_capacity: u64,
}

impl EngineStats {
    /// Index of `f` in [`EngineStats::finished`].
    pub fn finish_index(f: &Finish) -> usize {
        match f {
            Finish::EndOfGeneration => 0,
            Finish::StopSequence(_) => 1,
            Finish::Length => 2,
            Finish::ContextFull => 3,
            Finish::SamplerStop => 4,
            Finish::Cancelled => 5,
            Finish::Error(_) => 6,
        }
    }
}

/// State shared by the engine's handles and its scheduler thread.
struct Shared {
    queued: AtomicUsize,
    closed: AtomicBool,
    active: AtomicUsize,
    next_id: AtomicU64,
    stats: Mutex<EngineStats>,
}

/// A request ready to run: tokenized, sampler instantiated and primed.
struct Pending {
    id: u64,
    prompt: Vec<u32>,
    sampler: SequenceSampler,
    max_tokens: Option<usize>,
    stop: Vec<String>,
    ignore_eos: bool,
    logprobs: Option<usize>,
    events: flume::Sender<Event>,
    cancel: Arc<AtomicBool>,
    submitted: Instant,
}

enum Msg {
    Submit(Box<Pending>),
    /// Starts (true) or stops profiling the context; the reply carries the counts so far, or
    /// `None` when the backend cannot profile.
    Profile(bool, flume::Sender<Option<Result<Profile, String>>>),
    /// Cancels every running and waiting request (the engine keeps running).
    CancelAll,
    Shutdown,
}

/// A running engine. Dropping it cancels whatever is still running and stops the scheduler.
pub struct Engine {
    model: Arc<Model>,
    opts: EngineOptions,
    tx: flume::Sender<Msg>,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

/// The stream of one request: its events, and a way to cancel it. Dropping the handle cancels
/// the request.
pub struct Handle {
    id: u64,
    rx: flume::Receiver<Event>,
    cancel: Arc<AtomicBool>,
}

impl Handle {
    /// The request's id (unique within its engine).
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The next event, waiting for it; `None` after `Done`.
    pub fn recv(&self) -> Option<Event> {
        self.rx.recv().ok()
    }

    /// The next event, waiting at most `timeout`; `Err(true)` on timeout, `Err(false)` after
    /// `Done`.
    pub fn recv_timeout(&self, timeout: Duration) -> std::result::Result<Event, bool> {
        self.rx.recv_timeout(timeout).map_err(|e| match e {
            flume::RecvTimeoutError::Timeout => true,
            flume::RecvTimeoutError::Disconnected => false,
        })
    }

    /// The next event, for async callers; `None` after `Done`.
    pub async fn recv_async(&self) -> Option<Event> {
        self.rx.recv_async().await.ok()
    }

    /// Asks the engine to stop the request; a `Done` with [`Finish::Cancelled`] follows.
    pub fn cancel(&self) {
        self.cancel.store(true, Ordering::Relaxed);
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.cancel();
    }
}

impl Engine {
    /// Creates the backend context and starts the scheduler thread.
    pub fn start(model: Arc<Model>, opts: EngineOptions) -> Result<Engine> {
        if opts.n_slots == 0 || opts.n_batch == 0 || opts.n_ctx == 0 {
            return Err(anyhow!(
                "the context size, the slots and the batch must be at least 1"
            ));
        }
        let ctx = model
            .backend_model
            .create_context(ContextOptions {
                n_ctx: opts.n_ctx,
                n_seq_max: opts.n_slots,
                n_batch_max: opts.n_batch.max(opts.n_slots),
                n_outputs_max: opts.n_slots,
            })
            .context("cannot create the context (KV cache)")?;
        let shared = Arc::new(Shared {
            queued: AtomicUsize::new(0),
            closed: AtomicBool::new(false),
            active: AtomicUsize::new(0),
            next_id: AtomicU64::new(1),
            stats: Mutex::new(EngineStats {
                n_slots: opts.n_slots as usize,
                kv_capacity: u64::from(opts.n_ctx) * u64::from(opts.n_slots),
                ..EngineStats::default()
            }),
        });
        let (tx, rx) = flume::unbounded();
        let sched = scheduler::Scheduler::new(model.clone(), ctx, opts, shared.clone(), rx);
        let thread = std::thread::Builder::new()
            .name("kiln-scheduler".into())
            .spawn(move || sched.run())
            .context("cannot start the scheduler thread")?;
        Ok(Engine {
            model,
            opts,
            tx,
            shared,
            thread: Some(thread),
        })
    }

    /// The model the engine runs.
    pub fn model(&self) -> &Arc<Model> {
        &self.model
    }

    /// How the engine is sized.
    pub fn options(&self) -> EngineOptions {
        self.opts
    }

    /// Starts (`true`, resetting the counts) or stops profiling the backend context, and
    /// returns the counts so far (operations, calls, time); `None` when the backend lacks the
    /// `kiln.profile.v1` capability.
    pub fn profile(&self, enable: bool) -> Option<Result<Profile>> {
        let (tx, rx) = flume::bounded(1);
        self.tx.send(Msg::Profile(enable, tx)).ok()?;
        rx.recv()
            .ok()
            .flatten()
            .map(|r| r.map_err(|e| anyhow!("{e}")))
    }

    /// Counters and gauges: requests, tokens, slots, queue, KV use.
    pub fn stats(&self) -> EngineStats {
        let mut s = self
            .shared
            .stats
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        s.queued = self.shared.queued.load(Ordering::Relaxed);
        s
    }

    /// Tokenizes the request's input (on the caller's thread).
    pub fn tokenize(&self, input: &Input) -> Result<Vec<u32>> {
        match input {
            Input::Text {
                text,
                parse_special,
            } => self.model.encode(text, *parse_special),
            Input::Chat(messages) => self.model.encode_chat(messages, true),
            Input::ChatTools { messages, tools } => {
                self.model
                    .encode_chat_with_tools(messages, Some(tools), true)
            }
            Input::Tokens(t) => Ok(t.clone()),
        }
    }

    /// Queues a request; its events arrive on the returned handle.
    pub fn submit(&self, req: Request) -> std::result::Result<Handle, SubmitError> {
        if self.shared.closed.load(Ordering::Relaxed) {
            return Err(SubmitError::Closed);
        }
        let prompt = self
            .tokenize(&req.input)
            .map_err(|e| SubmitError::Invalid(format!("{e:#}")))?;
        self.submit_tokens(prompt, req)
    }

    /// Queues a request whose input is already tokenized (`req.input` is not read).
    pub fn submit_tokens(
        &self,
        prompt: Vec<u32>,
        req: Request,
    ) -> std::result::Result<Handle, SubmitError> {
        let n_vocab = self.model.n_vocab();
        if prompt.is_empty() {
            return Err(SubmitError::Invalid("the prompt is empty".into()));
        }
        if let Some(&t) = prompt.iter().find(|&&t| t as usize >= n_vocab) {
            return Err(SubmitError::Invalid(format!(
                "token id {t} is outside the vocabulary of {n_vocab}"
            )));
        }
        let n_ctx = self.opts.n_ctx as usize;
        if prompt.len() > n_ctx {
            return Err(SubmitError::Invalid(format!(
                "the prompt has {} tokens but the context holds {n_ctx}",
                prompt.len()
            )));
        }
        if let Some(k) = req.logprobs {
            if k > MAX_TOP_LOGPROBS {
                return Err(SubmitError::Invalid(format!(
                    "at most {MAX_TOP_LOGPROBS} alternatives per token can be reported, {k} asked"
                )));
            }
        }
        if req.max_tokens == Some(0) {
            return Err(SubmitError::Invalid("max_tokens must be at least 1".into()));
        }
        if req.stop.iter().any(|s| s.len() > 4096) || req.stop.len() > 64 {
            return Err(SubmitError::Invalid(
                "at most 64 stop texts of at most 4096 bytes each".into(),
            ));
        }
        // A place in the queue first: a full queue refuses before any work.
        let queued = self.shared.queued.fetch_add(1, Ordering::AcqRel);
        let busy = self.shared.active.load(Ordering::Acquire);
        let free_slots = (self.opts.n_slots as usize).saturating_sub(busy);
        if queued >= self.opts.queue + free_slots {
            self.shared.queued.fetch_sub(1, Ordering::AcqRel);
            return Err(SubmitError::QueueFull(queued));
        }
        let release = |e: SubmitError| {
            self.shared.queued.fetch_sub(1, Ordering::AcqRel);
            e
        };
        let spec = &req.sampler;
        let mut sampler = spec
            .module
            .instantiate(&spec.config, req.seed, self.model.vocab.clone())
            .map_err(|e| release(SubmitError::Invalid(e.to_string())))?;
        sampler.set_deadline_ms(spec.deadline_ms);
        sampler
            .accept_prompt(&prompt)
            .map_err(|e| release(SubmitError::Invalid(e.to_string())))?;
        let (tx, rx) = flume::unbounded();
        let cancel = Arc::new(AtomicBool::new(false));
        let id = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
        let pending = Pending {
            id,
            prompt,
            sampler,
            max_tokens: req.max_tokens,
            stop: req.stop,
            ignore_eos: req.ignore_eos,
            logprobs: req.logprobs,
            events: tx,
            cancel: cancel.clone(),
            submitted: Instant::now(),
        };
        self.tx
            .send(Msg::Submit(Box::new(pending)))
            .map_err(|_| release(SubmitError::Closed))?;
        Ok(Handle { id, rx, cancel })
    }

    /// Cancels every running and waiting request; each ends with [`Finish::Cancelled`]. New
    /// requests are still accepted.
    pub fn cancel_all(&self) {
        let _ = self.tx.send(Msg::CancelAll);
    }

    /// Stops accepting requests, lets the running and queued ones finish for at most
    /// `grace`, then cancels the rest and stops the scheduler. Returns whether everything
    /// finished within the grace period.
    pub fn shutdown(mut self, grace: Duration) -> bool {
        self.shared.closed.store(true, Ordering::Relaxed);
        let t0 = Instant::now();
        let mut idle = false;
        while t0.elapsed() < grace {
            if self.shared.queued.load(Ordering::Acquire) == 0
                && self.shared.active.load(Ordering::Acquire) == 0
            {
                idle = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        self.stop();
        idle
    }

    fn stop(&mut self) {
        let _ = self.tx.send(Msg::Shutdown);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.stop();
    }
}
