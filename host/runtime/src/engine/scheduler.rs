//! The scheduler thread: owns the backend context and the slots, admits requests (with
//! prefix reuse), builds one batch per step, samples every output and streams events.
//!
//! Slot `i` is sequence `i` of the backend context. A slot remembers the tokens whose KV
//! cache it holds (`cached`), also after its request ends, so a later request that starts the
//! same way (the next turn of a chat, the same system prompt) reuses them: from the same slot
//! by truncation, or from another slot — idle or running — with `seq_copy`.

use super::request::{Event, Finish, Timings, TokenLogprob, Usage};
use super::text::{Piece, TextOut};
use super::{EngineOptions, EngineStats, Msg, Pending, Shared};
use crate::model::Model;
use crate::sampler::{SequenceSampler, Step, View};
use kiln_sdk::abi::client::ModelContext;
use kiln_sdk::abi::Status;
use kiln_sdk::backend::{Batch, RowOutput, Want};
use kiln_sdk::model::select::{top_n, TopNScratch};
use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

/// A running request.
struct Active {
    id: u64,
    sampler: SequenceSampler,
    /// Tokens still to evaluate: the rest of the prompt, or the last generated token.
    feed: Vec<u32>,
    /// How many of `feed` were evaluated.
    fed: usize,
    /// Whether the prompt is done (the sequence is decoding).
    decoding: bool,
    text: TextOut,
    events: flume::Sender<Event>,
    cancel: Arc<std::sync::atomic::AtomicBool>,
    max_tokens: Option<usize>,
    ignore_eos: bool,
    logprobs: Option<usize>,
    n_gen: usize,
    usage: Usage,
    submitted: Instant,
    admitted: Instant,
    first_token: Option<Instant>,
    last_token: Instant,
}

/// One sequence slot and its reusable output buffers.
struct Slot {
    seq: i32,
    /// Tokens whose KV cache this sequence holds, position by position.
    cached: Vec<u32>,
    last_used: u64,
    active: Option<Active>,
    top_ids: Vec<i32>,
    top_logits: Vec<f32>,
    logits: Vec<f32>,
    lse: f32,
    banned: Vec<i32>,
    allowed: Vec<i32>,
    use_allowed: bool,
}

/// What a slot asks of this step's output row.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Want2 {
    Top(usize),
    Full,
}

pub(super) struct Scheduler {
    model: Arc<Model>,
    ctx: ModelContext,
    opts: EngineOptions,
    shared: Arc<Shared>,
    rx: flume::Receiver<Msg>,
    slots: Vec<Slot>,
    waiting: VecDeque<Box<Pending>>,
    clock: u64,
    /// Batch buffers, reused every step.
    tokens: Vec<i32>,
    positions: Vec<i32>,
    seq_ids: Vec<i32>,
    /// (slot, batch row) of each output, in row order.
    outputs: Vec<(usize, usize)>,
    /// Capacity kept across steps for the output requests.
    requests: Vec<RowOutput<'static>>,
    top: TopNScratch,
    logprob_ids: Vec<i32>,
    logprob_vals: Vec<f32>,
}

/// An empty vector of output requests reusing `v`'s allocation (only the lifetime changes, so
/// the in-place collect keeps the buffer).
fn recycle<'a, 'b>(mut v: Vec<RowOutput<'a>>) -> Vec<RowOutput<'b>> {
    v.clear();
    v.into_iter().map(|_| unreachable!()).collect()
}

/// The longest common prefix of two token lists.
fn common_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

impl Scheduler {
    pub(super) fn new(
        model: Arc<Model>,
        ctx: ModelContext,
        opts: EngineOptions,
        shared: Arc<Shared>,
        rx: flume::Receiver<Msg>,
    ) -> Scheduler {
        let n = opts.n_slots as usize;
        let n_vocab = model.n_vocab();
        let slots = (0..n)
            .map(|i| Slot {
                seq: i as i32,
                cached: Vec::new(),
                last_used: 0,
                active: None,
                top_ids: Vec::new(),
                top_logits: Vec::new(),
                logits: Vec::new(),
                lse: 0.0,
                banned: Vec::new(),
                allowed: Vec::new(),
                use_allowed: false,
            })
            .collect();
        let nb = opts.n_batch.max(opts.n_slots) as usize;
        Scheduler {
            model,
            ctx,
            opts,
            shared,
            rx,
            slots,
            waiting: VecDeque::new(),
            clock: 0,
            tokens: Vec::with_capacity(nb),
            positions: Vec::with_capacity(nb),
            seq_ids: Vec::with_capacity(nb),
            outputs: Vec::with_capacity(n),
            requests: Vec::with_capacity(n),
            top: TopNScratch::with_vocab(n_vocab),
            logprob_ids: Vec::with_capacity(super::MAX_TOP_LOGPROBS),
            logprob_vals: Vec::with_capacity(super::MAX_TOP_LOGPROBS),
        }
    }

    fn busy(&self) -> usize {
        self.slots.iter().filter(|s| s.active.is_some()).count()
    }

    /// The scheduler loop; returns on shutdown.
    pub(super) fn run(mut self) {
        loop {
            // Take new requests: wait when idle, otherwise only look.
            let idle = self.busy() == 0 && self.waiting.is_empty();
            let first = if idle {
                match self.rx.recv() {
                    Ok(m) => Some(m),
                    Err(_) => break,
                }
            } else {
                self.rx.try_recv().ok()
            };
            let mut shutdown = false;
            for msg in first
                .into_iter()
                .chain(std::iter::from_fn(|| self.rx.try_recv().ok()))
            {
                match msg {
                    Msg::Submit(p) => self.waiting.push_back(p),
                    Msg::Profile(enable, reply) => {
                        let r = self
                            .ctx
                            .profile(enable)
                            .map(|r| r.map_err(|e| e.to_string()));
                        let _ = reply.send(r);
                    }
                    Msg::CancelAll => {
                        for p in &self.waiting {
                            p.cancel.store(true, Ordering::Relaxed);
                        }
                        for s in &self.slots {
                            if let Some(a) = &s.active {
                                a.cancel.store(true, Ordering::Relaxed);
                            }
                        }
                    }
                    Msg::Shutdown => shutdown = true,
                }
            }
            if shutdown {
                break;
            }
            self.drop_cancelled();
            self.admit();
            self.step();
            self.publish();
        }
        // Shutdown: everything still running or waiting is cancelled.
        for i in 0..self.slots.len() {
            if self.slots[i].active.is_some() {
                self.finish(i, Finish::Cancelled);
            }
        }
        while let Some(p) = self.waiting.pop_front() {
            self.shared.queued.fetch_sub(1, Ordering::AcqRel);
            let _ = p.events.send(Event::Done {
                finish: Finish::Cancelled,
                text: String::new(),
                usage: Usage {
                    prompt_tokens: p.prompt.len(),
                    ..Usage::default()
                },
                timings: Timings::default(),
            });
            self.count_finish(&Finish::Cancelled);
        }
        self.publish();
    }

    fn count_finish(&self, f: &Finish) {
        let mut s = self.shared.stats.lock().unwrap_or_else(|p| p.into_inner());
        s.finished[EngineStats::finish_index(f)] += 1;
    }

    /// Updates the shared gauges.
    fn publish(&self) {
        let busy = self.busy();
        self.shared.active.store(busy, Ordering::Release);
        let mut s = self.shared.stats.lock().unwrap_or_else(|p| p.into_inner());
        s.busy_slots = busy;
        s.kv_used = self.slots.iter().map(|s| s.cached.len() as u64).sum();
    }

    /// Requests cancelled while waiting end without running.
    fn drop_cancelled(&mut self) {
        let mut i = 0;
        while i < self.waiting.len() {
            if self.waiting[i].cancel.load(Ordering::Relaxed) {
                if let Some(p) = self.waiting.remove(i) {
                    self.shared.queued.fetch_sub(1, Ordering::AcqRel);
                    let _ = p.events.send(Event::Done {
                        finish: Finish::Cancelled,
                        text: String::new(),
                        usage: Usage {
                            prompt_tokens: p.prompt.len(),
                            ..Usage::default()
                        },
                        timings: Timings {
                            queued_ms: p.submitted.elapsed().as_secs_f64() * 1e3,
                            ..Timings::default()
                        },
                    });
                    self.count_finish(&Finish::Cancelled);
                }
            } else {
                i += 1;
            }
        }
        for i in 0..self.slots.len() {
            let gone = self.slots[i]
                .active
                .as_ref()
                .is_some_and(|a| a.cancel.load(Ordering::Relaxed) || a.events.is_disconnected());
            if gone {
                self.finish(i, Finish::Cancelled);
            }
        }
    }

    /// Moves waiting requests into free slots, reusing the longest KV prefix available.
    fn admit(&mut self) {
        while !self.waiting.is_empty() {
            let free: Vec<usize> = (0..self.slots.len())
                .filter(|&i| self.slots[i].active.is_none())
                .collect();
            if free.is_empty() {
                return;
            }
            let Some(p) = self.waiting.pop_front() else {
                return;
            };
            self.shared.queued.fetch_sub(1, Ordering::AcqRel);
            let prompt = &p.prompt;
            // At least the last prompt token is evaluated, for its logits.
            let limit = prompt.len() - 1;
            let lcp = |s: &Slot| common_prefix(&s.cached, prompt).min(limit);
            // The free slot whose own cache helps most (the least recently used on ties).
            let own = free
                .iter()
                .copied()
                .max_by_key(|&i| {
                    (
                        lcp(&self.slots[i]),
                        std::cmp::Reverse(self.slots[i].last_used),
                    )
                })
                .unwrap_or(free[0]);
            let own_len = lcp(&self.slots[own]);
            // Any slot (running ones too) with a longer prefix is copied from.
            let src = (0..self.slots.len())
                .filter(|&i| i != own)
                .max_by_key(|&i| lcp(&self.slots[i]))
                .filter(|&i| lcp(&self.slots[i]) > own_len);
            let (dst, mut reused) = match src {
                Some(s) => {
                    let n = lcp(&self.slots[s]);
                    // Copy into the least recently used free slot (keep good caches).
                    let dst = free
                        .iter()
                        .copied()
                        .filter(|&i| i != s)
                        .min_by_key(|&i| self.slots[i].last_used)
                        .unwrap_or(own);
                    let (src_seq, dst_seq) = (self.slots[s].seq, self.slots[dst].seq);
                    match self.ctx.seq_copy(src_seq, dst_seq, n as u32) {
                        Ok(()) => {
                            let head = self.slots[s].cached[..n].to_vec();
                            self.slots[dst].cached = head;
                            (dst, n)
                        }
                        Err(e) => {
                            tracing::debug!("seq_copy: {e}; using the slot's own cache");
                            (own, own_len)
                        }
                    }
                }
                None => (own, own_len),
            };
            let slot = &mut self.slots[dst];
            if let Err(e) = self.ctx.seq_truncate(slot.seq, reused as u32) {
                // E.g. a sliding-window cache that no longer holds the window before `reused`:
                // evaluate the whole prompt.
                tracing::debug!("seq_truncate: {e}; evaluating the prompt");
                reused = 0;
                if let Err(e) = self.ctx.seq_clear(slot.seq) {
                    tracing::warn!("seq_clear failed: {e}");
                }
            }
            slot.cached.truncate(reused);
            self.clock += 1;
            slot.last_used = self.clock;
            let now = Instant::now();
            let p = *p;
            let usage = Usage {
                prompt_tokens: p.prompt.len(),
                cached_tokens: reused,
                completion_tokens: 0,
            };
            {
                let mut s = self.shared.stats.lock().unwrap_or_else(|e| e.into_inner());
                s.admitted += 1;
                s.prompt_tokens += p.prompt.len() as u64;
                s.cached_tokens += reused as u64;
            }
            tracing::debug!(
                "request {} admitted to slot {dst}: {} prompt tokens, {reused} reused",
                p.id,
                p.prompt.len()
            );
            let mut feed = p.prompt;
            feed.drain(..reused);
            slot.active = Some(Active {
                id: p.id,
                sampler: p.sampler,
                feed,
                fed: 0,
                decoding: false,
                text: TextOut::new(&p.stop),
                events: p.events,
                cancel: p.cancel,
                max_tokens: p.max_tokens,
                ignore_eos: p.ignore_eos,
                logprobs: p.logprobs,
                n_gen: 0,
                usage,
                submitted: p.submitted,
                admitted: now,
                first_token: None,
                last_token: now,
            });
            self.shared.active.fetch_add(1, Ordering::AcqRel);
        }
    }

    /// Ends the request in slot `i` with `finish`.
    fn finish(&mut self, i: usize, finish: Finish) {
        let Some(mut a) = self.slots[i].active.take() else {
            return;
        };
        self.shared.active.fetch_sub(1, Ordering::AcqRel);
        let text = match finish {
            Finish::StopSequence(_) | Finish::Cancelled => String::new(),
            _ => a.text.finish(),
        };
        let end = Instant::now();
        let first = a.first_token.unwrap_or(end);
        let timings = Timings {
            queued_ms: (a.admitted - a.submitted).as_secs_f64() * 1e3,
            prompt_ms: (first - a.admitted).as_secs_f64() * 1e3,
            gen_ms: (a.last_token.max(first) - first).as_secs_f64() * 1e3,
            ttft_ms: (first - a.submitted).as_secs_f64() * 1e3,
        };
        a.usage.completion_tokens = a.n_gen;
        tracing::debug!(
            "request {} done: {} ({} + {} tokens)",
            a.id,
            finish.describe(),
            a.usage.prompt_tokens,
            a.n_gen
        );
        self.count_finish(&finish);
        let _ = a.events.send(Event::Done {
            finish,
            text,
            usage: a.usage,
            timings,
        });
        self.clock += 1;
        self.slots[i].last_used = self.clock;
        self.publish();
    }

    /// One `forward`: decoding rows, then prompt chunks within the token budget; then
    /// sampling.
    fn step(&mut self) {
        let n_ctx = self.opts.n_ctx as usize;
        let mut budget = self.opts.n_batch.max(self.opts.n_slots) as usize;
        self.tokens.clear();
        self.positions.clear();
        self.seq_ids.clear();
        self.outputs.clear();
        // Sequences at the end of the context stop here.
        for i in 0..self.slots.len() {
            let full = self.slots[i]
                .active
                .as_ref()
                .is_some_and(|a| a.decoding && self.slots[i].cached.len() >= n_ctx);
            if full {
                self.finish(i, Finish::ContextFull);
            }
        }
        // Decoding sequences first: one row each, so a long prompt never stalls them.
        for phase in [true, false] {
            for i in 0..self.slots.len() {
                if budget == 0 {
                    break;
                }
                let slot = &self.slots[i];
                let Some(a) = slot.active.as_ref() else {
                    continue;
                };
                if a.decoding != phase || a.fed >= a.feed.len() {
                    continue;
                }
                let take = (a.feed.len() - a.fed).min(budget);
                let pos0 = slot.cached.len() + a.fed;
                for k in 0..take {
                    self.tokens.push(a.feed[a.fed + k] as i32);
                    self.positions.push((pos0 + k) as i32);
                    self.seq_ids.push(slot.seq);
                }
                if a.fed + take == a.feed.len() {
                    self.outputs.push((i, self.tokens.len() - 1));
                }
                budget -= take;
                if let Some(a) = self.slots[i].active.as_mut() {
                    a.fed += take;
                }
            }
        }
        if self.tokens.is_empty() {
            return;
        }
        // The outputs must be listed in row order.
        self.outputs.sort_by_key(|&(_, row)| row);
        let outputs = std::mem::take(&mut self.outputs);
        let mut failed = Vec::new();
        for &(i, _) in &outputs {
            if let Err(e) = self.prepare_output(i) {
                failed.push((i, e));
            }
        }
        let result = self.forward(&outputs, &failed);
        // Whatever was evaluated is now in the cache.
        for i in 0..self.slots.len() {
            let slot = &mut self.slots[i];
            if let Some(a) = slot.active.as_mut() {
                if a.fed > 0 {
                    if result.is_ok() {
                        slot.cached.extend_from_slice(&a.feed[..a.fed]);
                        a.feed.drain(..a.fed);
                    }
                    a.fed = 0;
                }
            }
        }
        {
            let mut s = self.shared.stats.lock().unwrap_or_else(|p| p.into_inner());
            s.steps += 1;
        }
        for (i, e) in failed {
            self.finish(i, Finish::Error(e));
        }
        match result {
            Ok(()) => {
                for &(i, _) in &outputs {
                    if self.slots[i].active.is_some() {
                        self.sample(i);
                    }
                }
            }
            Err(e) => {
                let why = format!("the backend failed: {e}");
                tracing::error!("{why}");
                for i in 0..self.slots.len() {
                    if self.slots[i].active.is_some() {
                        let f = if e.status == Status::ContextFull {
                            Finish::ContextFull
                        } else {
                            Finish::Error(why.clone())
                        };
                        self.finish(i, f);
                    }
                }
            }
        }
        self.outputs = outputs;
    }

    /// What slot `i`'s sampler wants this step, with its bans (end-of-generation tokens when
    /// EOS is ignored, and the sampler's mask).
    fn prepare_output(&mut self, i: usize) -> Result<(), String> {
        let n_vocab = self.model.n_vocab();
        let eog = &self.model.eog_ids;
        let slot = &mut self.slots[i];
        let Some(a) = slot.active.as_mut() else {
            return Ok(());
        };
        slot.banned.clear();
        slot.allowed.clear();
        slot.use_allowed = false;
        match a.sampler.mask() {
            Err(e) => return Err(e.to_string()),
            Ok(None) => {}
            Ok(Some(mask)) => {
                let allowed = (0..n_vocab)
                    .filter(|&t| crate::sampler::mask_allows(mask, t as u32))
                    .count();
                if allowed * 2 <= n_vocab {
                    slot.use_allowed = true;
                    slot.allowed.extend(
                        (0..n_vocab as u32)
                            .filter(|&t| crate::sampler::mask_allows(mask, t))
                            .filter(|&t| !a.ignore_eos || !eog.contains(&t))
                            .map(|t| t as i32),
                    );
                } else {
                    slot.banned.extend(
                        (0..n_vocab as u32)
                            .filter(|&t| !crate::sampler::mask_allows(mask, t))
                            .map(|t| t as i32),
                    );
                }
            }
        }
        if a.ignore_eos && !slot.use_allowed {
            slot.banned.extend(eog.iter().map(|&t| t as i32));
        }
        let want = Self::want_of(a, n_vocab);
        match want {
            Want2::Top(n) => {
                slot.top_ids.resize(n, 0);
                slot.top_logits.resize(n, 0.0);
            }
            Want2::Full => slot.logits.resize(n_vocab, 0.0),
        }
        Ok(())
    }

    fn want_of(a: &Active, n_vocab: usize) -> Want2 {
        match a.sampler.view() {
            View::TopN(n) => Want2::Top(n.max(a.logprobs.unwrap_or(0)).min(n_vocab).max(1)),
            View::Full => Want2::Full,
        }
    }

    /// Runs the batch with the outputs of `outputs` (those in `failed` ask for nothing).
    fn forward(
        &mut self,
        outputs: &[(usize, usize)],
        failed: &[(usize, String)],
    ) -> kiln_sdk::abi::client::CallResult<()> {
        let n_vocab = self.model.n_vocab();
        let mut reqs: Vec<RowOutput<'_>> = recycle(std::mem::take(&mut self.requests));
        for (i, slot) in self.slots.iter_mut().enumerate() {
            let Some(&(_, row)) = outputs.iter().find(|(s, _)| *s == i) else {
                continue;
            };
            if failed.iter().any(|(f, _)| *f == i) {
                continue;
            }
            let Some(a) = slot.active.as_ref() else {
                continue;
            };
            let want = match Self::want_of(a, n_vocab) {
                Want2::Top(_) => Want::TopN {
                    ids: &mut slot.top_ids,
                    logits: &mut slot.top_logits,
                },
                Want2::Full => Want::Logits(&mut slot.logits),
            };
            reqs.push(RowOutput {
                row,
                want,
                banned: &slot.banned,
                allowed: slot.use_allowed.then_some(&slot.allowed[..]),
                lse: Some(&mut slot.lse),
                target: None,
            });
        }
        reqs.sort_by_key(|r| r.row);
        let batch = Batch {
            tokens: &self.tokens,
            positions: &self.positions,
            seq_ids: &self.seq_ids,
        };
        let r = self.ctx.forward(&batch, &mut reqs);
        self.requests = recycle(reqs);
        r
    }

    /// Samples slot `i`'s output, emits the token and decides whether the request goes on.
    fn sample(&mut self, i: usize) {
        if let Some(f) = self.sample_token(i) {
            self.finish(i, f);
        }
    }

    /// The sampling step of [`Self::sample`]; returns how the request ends, if it does.
    fn sample_token(&mut self, i: usize) -> Option<Finish> {
        let n_vocab = self.model.n_vocab();
        let Scheduler {
            slots,
            model,
            shared,
            top,
            logprob_ids,
            logprob_vals,
            ..
        } = self;
        let slot = &mut slots[i];
        let a = slot.active.as_mut()?;
        let now = Instant::now();
        let want = Self::want_of(a, n_vocab);
        let step = match want {
            Want2::Top(n) => {
                // Banned tokens come last, at −∞: the sampler sees only the others.
                let valid = slot
                    .top_logits
                    .iter()
                    .take_while(|v| **v > f32::NEG_INFINITY)
                    .count();
                if valid == 0 {
                    let e = a.sampler.fail(crate::sampler::Cause::NothingAllowed);
                    return Some(Finish::Error(e.to_string()));
                }
                let k = match a.sampler.view() {
                    View::TopN(k) => k.min(n).min(valid),
                    View::Full => valid,
                };
                a.sampler
                    .sample_top(&slot.top_ids[..k], &slot.top_logits[..k], slot.lse)
            }
            Want2::Full => a.sampler.sample_full(&slot.logits),
        };
        let tok = match step {
            Ok(Step::Token(t)) => t,
            Ok(Step::Stop) => return Some(Finish::SamplerStop),
            Err(e) => return Some(Finish::Error(e.to_string())),
        };
        if let Err(e) = a.sampler.accept(tok) {
            return Some(Finish::Error(e.to_string()));
        }
        a.first_token.get_or_insert(now);
        a.last_token = now;
        if !a.ignore_eos && model.tokenizer.is_eog(tok) {
            return Some(Finish::EndOfGeneration);
        }
        let lse = slot.lse;
        let logprob = a.logprobs.map(|k| match want {
            Want2::Top(_) => TokenLogprob {
                logprob: slot
                    .top_ids
                    .iter()
                    .position(|&t| t == tok as i32)
                    .map_or(f32::NEG_INFINITY, |p| slot.top_logits[p] - lse),
                top: slot
                    .top_ids
                    .iter()
                    .zip(&slot.top_logits)
                    .take(k)
                    .map(|(&t, &l)| (t as u32, l - lse))
                    .collect(),
            },
            Want2::Full => {
                logprob_ids.resize(k.min(n_vocab), 0);
                logprob_vals.resize(k.min(n_vocab), 0.0);
                top_n(&slot.logits, logprob_ids, logprob_vals, top);
                TokenLogprob {
                    logprob: slot.logits[tok as usize] - lse,
                    top: logprob_ids
                        .iter()
                        .zip(logprob_vals.iter())
                        .map(|(&t, &l)| (t as u32, l - lse))
                        .collect(),
                }
            }
        });
        a.n_gen += 1;
        shared
            .stats
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .generated_tokens += 1;
        let (text, stop) = match a.text.push(model.tokenizer.token_bytes(tok)) {
            Piece::Text(t) => (t, None),
            Piece::Stop { before, stop } => (before, Some(stop)),
        };
        let event = Event::Token {
            id: tok,
            text,
            logprob,
        };
        if a.events.send(event).is_err() {
            return Some(Finish::Cancelled);
        }
        if let Some(s) = stop {
            return Some(Finish::StopSequence(s));
        }
        if a.max_tokens.is_some_and(|m| a.n_gen >= m) {
            return Some(Finish::Length);
        }
        a.feed.clear();
        a.feed.push(tok);
        a.fed = 0;
        a.decoding = true;
        None
    }
}
