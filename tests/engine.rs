//! The engine (kiln-runtime's scheduler) on a real model and the CPU backend: determinism
//! whatever else is in the batch, prefix reuse from idle and running sequences, cancellation,
//! the bounded queue, stop texts, log-probabilities and limits.

use kiln_e2e::*;
use kiln_runtime::chat::Message;
use kiln_runtime::engine::{
    Engine, EngineOptions, Event, Finish, Handle, Input, Request, SamplerSpec, SubmitError, Usage,
};
use kiln_runtime::model::{LoadOptions, Model};
use kiln_runtime::sampler::SamplingParams;
use std::sync::Arc;
use std::time::{Duration, Instant};

const SMOL: &str = "smollm2-135m-instruct-q4_1.gguf";

fn load() -> Option<Arc<Model>> {
    let path = model(SMOL)?;
    Some(
        Model::load(
            &path,
            &LoadOptions {
                backend: Some(cpu_backend().to_string_lossy().into_owned()),
                threads: 2,
            },
        )
        .expect("SmolLM2 loads"),
    )
}

fn text(t: &str) -> Input {
    Input::Text {
        text: t.into(),
        parse_special: true,
    }
}

/// A sampled (not greedy) request: the chain at temperature 0.9 with a seed.
fn sampled(input: Input, seed: u64, max: usize) -> Request {
    let p = SamplingParams {
        temperature: 0.9,
        seed,
        ..SamplingParams::default()
    };
    let mut r = Request::new(input, SamplerSpec::from_params(&p).unwrap());
    r.seed = seed;
    r.max_tokens = Some(max);
    r.ignore_eos = true;
    r
}

struct Outcome {
    ids: Vec<u32>,
    text: String,
    finish: Finish,
    usage: Usage,
    ttft_ms: f64,
    logprobs: Vec<kiln_runtime::engine::TokenLogprob>,
}

fn collect(h: Handle) -> Outcome {
    let mut o = Outcome {
        ids: Vec::new(),
        text: String::new(),
        finish: Finish::Cancelled,
        usage: Usage::default(),
        ttft_ms: 0.0,
        logprobs: Vec::new(),
    };
    while let Some(ev) = h.recv() {
        match ev {
            Event::Token { id, text, logprob } => {
                o.ids.push(id);
                o.text.push_str(&text);
                o.logprobs.extend(logprob);
            }
            Event::Done {
                finish,
                text,
                usage,
                timings,
            } => {
                o.text.push_str(&text);
                o.finish = finish;
                o.usage = usage;
                o.ttft_ms = timings.ttft_ms;
            }
        }
    }
    o
}

#[test]
fn a_request_gets_the_same_tokens_alone_and_in_a_busy_batch() {
    let Some(model) = load() else { return };
    let engine = Engine::start(
        model,
        EngineOptions {
            n_ctx: 512,
            n_slots: 8,
            n_batch: 64,
            queue: 8,
        },
    )
    .unwrap();
    let probe = || sampled(text("The old lighthouse keeper"), 1234, 24);
    let alone = collect(engine.submit(probe()).unwrap());
    assert_eq!(alone.ids.len(), 24);
    // Seven others: long prompts still being evaluated in chunks, short ones decoding.
    let mut others = Vec::new();
    for k in 0..7u64 {
        let prompt = if k % 2 == 0 {
            "Tell me a long story about the sea, the wind and the sailors who ".repeat(4)
        } else {
            format!("Count to {k}:")
        };
        others.push(engine.submit(sampled(text(&prompt), k, 40)).unwrap());
    }
    let busy = collect(engine.submit(probe()).unwrap());
    for h in others {
        collect(h);
    }
    assert_eq!(busy.ids, alone.ids, "tokens changed inside a batch");
    assert_eq!(busy.text, alone.text);
}

#[test]
fn prefix_reuse_from_a_finished_and_from_a_running_sequence() {
    let Some(model) = load() else { return };
    let engine = Engine::start(
        model.clone(),
        EngineOptions {
            n_ctx: 1024,
            n_slots: 2,
            n_batch: 512,
            queue: 4,
        },
    )
    .unwrap();
    let system = "You are a careful assistant who answers questions about geography, history \
                  and the natural sciences in short, precise sentences. "
        .repeat(8);
    let chat = |q: &str| {
        Input::Chat(vec![
            Message::new("system", system.clone()),
            Message::new("user", q),
        ])
    };
    let greedy = |input: Input, max: usize| {
        let mut r = Request::new(input, SamplerSpec::greedy().unwrap());
        r.max_tokens = Some(max);
        r
    };
    let first = collect(
        engine
            .submit(greedy(chat("What is the capital of France?"), 8))
            .unwrap(),
    );
    assert_eq!(first.usage.cached_tokens, 0);
    let sys_tokens = model
        .encode_chat(&[Message::new("system", system.clone())], false)
        .unwrap()
        .len();
    assert!(sys_tokens > 150, "{sys_tokens}");
    // The same system prompt again: reused from the finished sequence's cache.
    let second = collect(engine.submit(greedy(chat("Where is Peru?"), 8)).unwrap());
    assert!(
        second.usage.cached_tokens >= sys_tokens - 2,
        "{} cached of {sys_tokens}",
        second.usage.cached_tokens
    );
    assert!(
        second.ttft_ms * 2.0 < first.ttft_ms,
        "first token after {:.1} ms with reuse, {:.1} ms without",
        second.ttft_ms,
        first.ttft_ms
    );
    // While a sequence runs, a request with its prefix copies from it.
    let long = engine
        .submit(greedy(text(&format!("{system} Once upon a time")), 200))
        .unwrap();
    // Wait until it decodes (its prompt is in the cache).
    match long.recv() {
        Some(Event::Token { .. }) => {}
        other => panic!("{other:?}"),
    }
    let copy = collect(
        engine
            .submit(greedy(text(&format!("{system} In a galaxy")), 4))
            .unwrap(),
    );
    assert!(
        copy.usage.cached_tokens >= sys_tokens - 10,
        "{} cached while the other sequence runs",
        copy.usage.cached_tokens
    );
    long.cancel();
    assert_eq!(collect(long).finish, Finish::Cancelled);
    let s = engine.stats();
    assert!(s.cached_tokens as usize >= second.usage.cached_tokens + copy.usage.cached_tokens);
}

#[test]
fn cancelling_or_dropping_a_handle_frees_its_slot() {
    let Some(model) = load() else { return };
    let engine = Engine::start(model, EngineOptions::single(512)).unwrap();
    let h = engine.submit(sampled(text("Once"), 1, 400)).unwrap();
    for _ in 0..3 {
        assert!(matches!(h.recv(), Some(Event::Token { .. })));
    }
    drop(h);
    // The slot is free again: a new request runs to its end.
    let o = collect(engine.submit(sampled(text("Twice"), 2, 5)).unwrap());
    assert_eq!((o.ids.len(), o.finish), (5, Finish::Length));
    let s = engine.stats();
    assert_eq!(s.busy_slots, 0);
    assert_eq!(s.finished[EngineStatsIdx::CANCELLED], 1);
}

/// Indexes of `EngineStats::finished`.
struct EngineStatsIdx;
impl EngineStatsIdx {
    const CANCELLED: usize = 5;
}

#[test]
fn a_full_queue_refuses_and_bad_requests_are_errors() {
    let Some(model) = load() else { return };
    let engine = Engine::start(
        model,
        EngineOptions {
            n_ctx: 64,
            n_slots: 1,
            n_batch: 64,
            queue: 1,
        },
    )
    .unwrap();
    let running = engine.submit(sampled(text("One"), 1, 60)).unwrap();
    // Wait until it runs, so the queue holds only what follows.
    assert!(matches!(running.recv(), Some(Event::Token { .. })));
    let queued = engine.submit(sampled(text("Two"), 2, 4)).unwrap();
    match engine.submit(sampled(text("Three"), 3, 4)) {
        Err(SubmitError::QueueFull(_)) => {}
        other => panic!("expected a full queue, got {:?}", other.map(|h| h.id())),
    }
    running.cancel();
    assert_eq!(collect(queued).finish, Finish::Length);
    let long = "word ".repeat(200);
    match engine.submit(sampled(text(&long), 1, 4)) {
        Err(SubmitError::Invalid(m)) => assert!(m.contains("the context holds 64"), "{m}"),
        other => panic!("{:?}", other.map(|h| h.id())),
    }
    match engine.submit(sampled(Input::Tokens(vec![]), 1, 4)) {
        Err(SubmitError::Invalid(m)) => assert!(m.contains("empty"), "{m}"),
        other => panic!("{:?}", other.map(|h| h.id())),
    }
    match engine.submit(sampled(Input::Tokens(vec![u32::MAX]), 1, 4)) {
        Err(SubmitError::Invalid(m)) => assert!(m.contains("vocabulary"), "{m}"),
        other => panic!("{:?}", other.map(|h| h.id())),
    }
    // A generation that fills the context ends with that reason.
    let o = collect(
        engine
            .submit(sampled(text("Once upon a time"), 1, 1000))
            .unwrap(),
    );
    assert_eq!(o.finish, Finish::ContextFull);
    assert_eq!(o.usage.prompt_tokens + o.usage.completion_tokens, 64 + 1);
}

#[test]
fn stop_texts_and_logprobs() {
    let Some(model) = load() else { return };
    let engine = Engine::start(model, EngineOptions::single(256)).unwrap();
    let mut r = Request::new(
        text("The capital of France is"),
        SamplerSpec::greedy().unwrap(),
    );
    r.max_tokens = Some(32);
    let plain = collect(engine.submit(r.clone()).unwrap());
    assert!(plain.text.starts_with(" Paris."), "{:?}", plain.text);
    r.stop = vec![".".into()];
    r.logprobs = Some(3);
    let stopped = collect(engine.submit(r).unwrap());
    assert_eq!(stopped.text, " Paris");
    assert_eq!(stopped.finish, Finish::StopSequence(".".into()));
    assert_eq!(stopped.logprobs.len(), stopped.ids.len());
    for (lp, &id) in stopped.logprobs.iter().zip(&stopped.ids) {
        assert_eq!(lp.top.len(), 3);
        // Greedy picks the most likely token.
        assert_eq!(lp.top[0].0, id);
        assert!(lp.logprob <= 0.0 && (lp.logprob - lp.top[0].1).abs() < 1e-6);
        let mass: f32 = lp.top.iter().map(|t| t.1.exp()).sum();
        assert!(mass <= 1.0 + 1e-4, "{mass}");
        assert!(lp.top.windows(2).all(|w| w[0].1 >= w[1].1));
    }
}

#[test]
fn shutdown_lets_running_requests_finish_within_the_grace_period() {
    let Some(model) = load() else { return };
    // The context is large enough that the long request cannot end on its own within the
    // grace period even on a fast machine (8192 tokens take over 10 s at 400 tok/s).
    let engine = Engine::start(
        model,
        EngineOptions {
            n_ctx: 8192,
            n_slots: 2,
            n_batch: 64,
            queue: 2,
        },
    )
    .unwrap();
    let short = engine.submit(sampled(text("Hi"), 1, 8)).unwrap();
    let long = engine.submit(sampled(text("Hello"), 2, 100_000)).unwrap();
    let t0 = Instant::now();
    let reader = std::thread::spawn(move || (collect(short), collect(long)));
    let idle = engine.shutdown(Duration::from_millis(1500));
    let (short, long) = reader.join().unwrap();
    assert!(!idle, "the long request cannot finish in time");
    assert_eq!(short.finish, Finish::Length);
    assert_eq!(long.finish, Finish::Cancelled);
    assert!(t0.elapsed() < Duration::from_secs(10));
}
