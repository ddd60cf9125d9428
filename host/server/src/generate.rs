//! `/v1/completions` and `/v1/chat/completions`: a request becomes one engine request per
//! choice (per prompt × `n`), run on the shared engine, and comes back whole or as a stream of
//! server-sent events. Sampling fields configure the built-in `chain` (`greedy` when plain),
//! `response_format` and forced tool calls become `constraint` patterns, and `sampler` names a
//! built-in or uploaded module.

use crate::error::{sanitize, ApiError};
use crate::openai::{self, ChatRequest, CompletionRequest, Sampling};
use crate::reasoning::ChatText;
use crate::tools::{self, ToolCall};
use crate::AppState;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures_util::stream::{self, Stream, StreamExt};
use kiln_runtime::engine::{
    Engine, Event, Finish, Handle, Input, Request, SamplerSpec, SubmitError, TokenLogprob, Usage,
};
use kiln_runtime::sampler::{builtin, random_seed};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Instant;

/// Most choices per request (`n` × prompts).
pub const MAX_CHOICES: usize = 16;

/// Which API a request came through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Api {
    Completion,
    Chat,
}

impl Api {
    fn endpoint(self) -> &'static str {
        match self {
            Api::Completion => "/v1/completions",
            Api::Chat => "/v1/chat/completions",
        }
    }
}

/// A validated request, ready to run.
struct Plan {
    api: Api,
    id: String,
    created: u64,
    model: String,
    prompts: Vec<Vec<u32>>,
    n: usize,
    template: Request,
    seed: u64,
    stream: bool,
    include_usage: bool,
    /// Alternatives per token when log-probabilities are asked for.
    logprobs: Option<usize>,
    /// Parse tool calls out of the text.
    tools: bool,
    /// Split the model's harmony channels into reasoning and answer (chat with gpt-oss).
    harmony: bool,
    parallel_tool_calls: bool,
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Checks `v` is in `lo..=hi`.
fn range(name: &str, v: Option<f32>, lo: f32, hi: f32) -> Result<(), ApiError> {
    match v {
        Some(x) if !(x.is_finite() && (lo..=hi).contains(&x)) => Err(ApiError::field(
            name,
            format!("`{name}` must be between {lo} and {hi}, got {x}"),
        )),
        _ => Ok(()),
    }
}

/// The sampler of a request: its `sampler` module, or the chain its fields configure —
/// inside the `constraint` sampler when `constraint` is given.
fn sampler_spec(
    st: &AppState,
    s: &Sampling,
    constraint: Option<Value>,
    n_vocab: usize,
) -> Result<SamplerSpec, ApiError> {
    let deadline_ms = st.opts.sampler_deadline_ms;
    if let Some(field) = &s.sampler {
        let set: Vec<&str> = [
            ("temperature", s.temperature.is_some()),
            ("top_p", s.top_p.is_some()),
            ("top_k", s.top_k.is_some()),
            ("min_p", s.min_p.is_some()),
            ("presence_penalty", s.presence_penalty.is_some()),
            ("frequency_penalty", s.frequency_penalty.is_some()),
            ("repeat_penalty", s.repeat_penalty.is_some()),
            ("repeat_last_n", s.repeat_last_n.is_some()),
            ("logit_bias", s.logit_bias.is_some()),
        ]
        .into_iter()
        .filter(|(_, set)| *set)
        .map(|(n, _)| n)
        .collect();
        if let Some(first) = set.first() {
            return Err(ApiError::field(
                first,
                format!("`{first}` cannot be combined with `sampler`: configure the sampler with its `config`"),
            ));
        }
        if constraint.is_some() {
            return Err(ApiError::field(
                "sampler",
                "`sampler` cannot be combined with `response_format` or a forced tool call",
            ));
        }
        let module = match builtin::load(&field.name) {
            Some(m) => m.map_err(|e| ApiError::internal(sanitize(&e.to_string())))?,
            None => st.samplers.get(&field.name).ok_or_else(|| {
                ApiError::field(
                    "sampler",
                    format!(
                        "no sampler `{}`: a built-in ({}) or the id of an uploaded module",
                        sanitize(&field.name),
                        builtin::names().join(", ")
                    ),
                )
            })?,
        };
        let config = match &field.config {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::String(s)) => s.clone().into_bytes(),
            Some(v) => v.to_string().into_bytes(),
        };
        if config.len() > kiln_runtime::sampler::MAX_CONFIG_BYTES {
            return Err(ApiError::field(
                "sampler",
                format!(
                    "the sampler's config has {} bytes, more than {}",
                    config.len(),
                    kiln_runtime::sampler::MAX_CONFIG_BYTES
                ),
            ));
        }
        return Ok(SamplerSpec {
            module,
            config,
            deadline_ms,
        });
    }
    range("temperature", s.temperature, 0.0, 2.0)?;
    range("top_p", s.top_p, 0.0, 1.0)?;
    range("min_p", s.min_p, 0.0, 1.0)?;
    range("presence_penalty", s.presence_penalty, -2.0, 2.0)?;
    range("frequency_penalty", s.frequency_penalty, -2.0, 2.0)?;
    range("repeat_penalty", s.repeat_penalty, 0.01, 10.0)?;
    if s.top_k.is_some_and(|k| k < 0) {
        return Err(ApiError::field("top_k", "`top_k` must be at least 0"));
    }
    if s.repeat_last_n.is_some_and(|n| n > 1 << 20) {
        return Err(ApiError::field(
            "repeat_last_n",
            "`repeat_last_n` is too large",
        ));
    }
    let mut bias = serde_json::Map::new();
    for (k, v) in s.logit_bias.iter().flatten() {
        let id = k.parse::<u32>().ok().filter(|&id| (id as usize) < n_vocab);
        let Some(id) = id else {
            return Err(ApiError::field(
                "logit_bias",
                format!(
                    "`logit_bias` key `{}` is not a token id of this model (0..{n_vocab})",
                    sanitize(k)
                ),
            ));
        };
        if !(v.is_finite() && (-100.0..=100.0).contains(v)) {
            return Err(ApiError::field(
                "logit_bias",
                format!("`logit_bias` values must be between -100 and 100, got {v}"),
            ));
        }
        bias.insert(id.to_string(), json!(v));
    }
    let temperature = s.temperature.unwrap_or(1.0);
    let chain = openai::object(vec![
        ("temperature", json!(temperature)),
        ("top_k", json!(s.top_k.unwrap_or(0))),
        ("top_p", json!(s.top_p.unwrap_or(1.0))),
        ("min_p", json!(s.min_p.unwrap_or(0.0))),
        ("repeat_penalty", json!(s.repeat_penalty.unwrap_or(1.0))),
        ("repeat_last_n", json!(s.repeat_last_n.unwrap_or(64))),
        (
            "frequency_penalty",
            json!(s.frequency_penalty.unwrap_or(0.0)),
        ),
        ("presence_penalty", json!(s.presence_penalty.unwrap_or(0.0))),
        ("logit_bias", Value::Object(bias.clone())),
    ]);
    let plain_greedy = temperature <= 0.0
        && bias.is_empty()
        && s.presence_penalty.unwrap_or(0.0) == 0.0
        && s.frequency_penalty.unwrap_or(0.0) == 0.0
        && s.repeat_penalty.unwrap_or(1.0) == 1.0;
    let (name, config) = match constraint {
        Some(Value::Object(mut c)) => {
            c.insert("sampler".into(), chain);
            ("constraint", Value::Object(c).to_string())
        }
        Some(_) => return Err(ApiError::internal("bad constraint")),
        None if plain_greedy => ("greedy", String::new()),
        None => ("chain", chain.to_string()),
    };
    let module = builtin::load(name)
        .ok_or_else(|| ApiError::internal(format!("the built-in `{name}` sampler is missing")))?
        .map_err(|e| ApiError::internal(sanitize(&e.to_string())))?;
    Ok(SamplerSpec {
        module,
        config: config.into_bytes(),
        deadline_ms,
    })
}

/// `n`, `stream`, `stop`, `max_tokens` and seed, shared by both APIs.
#[allow(clippy::too_many_arguments)]
fn plan_common(
    st: &AppState,
    engine: &Engine,
    api: Api,
    model: &str,
    prompts: Vec<Vec<u32>>,
    n: Option<u32>,
    max_tokens: Option<u64>,
    stop: Option<openai::Stop>,
    stream: Option<bool>,
    stream_options: Option<openai::StreamOptions>,
    sampling: &Sampling,
    spec: SamplerSpec,
    logprobs: Option<usize>,
) -> Result<Plan, ApiError> {
    if model != st.opts.model_id {
        return Err(crate::model_not_found(model));
    }
    let n = n.unwrap_or(1) as usize;
    if n == 0 || n * prompts.len() > MAX_CHOICES {
        return Err(ApiError::field(
            "n",
            format!("`n` × prompts must be between 1 and {MAX_CHOICES}"),
        ));
    }
    let stream = stream.unwrap_or(false);
    if stream_options.is_some() && !stream {
        return Err(ApiError::field(
            "stream_options",
            "`stream_options` is only allowed with `stream: true`",
        ));
    }
    let stop = stop.map(openai::Stop::texts).unwrap_or_default();
    if stop.len() > 16 || stop.iter().any(|s| s.is_empty() || s.len() > 1024) {
        return Err(ApiError::field(
            "stop",
            "`stop` takes at most 16 non-empty texts of at most 1024 bytes",
        ));
    }
    let n_ctx = engine.options().n_ctx as usize;
    let max = match max_tokens {
        Some(0) => {
            return Err(ApiError::field(
                "max_tokens",
                "`max_tokens` must be at least 1",
            ))
        }
        Some(m) => Some(m as usize),
        None => None,
    };
    for p in &prompts {
        if p.is_empty() {
            return Err(ApiError::field("prompt", "the prompt is empty"));
        }
        let asked = p.len() + max.unwrap_or(0);
        if p.len() > n_ctx || (max.is_some() && asked > n_ctx + 1) {
            return Err(ApiError {
                code: Some("context_length_exceeded"),
                ..ApiError::field(
                    "max_tokens",
                    format!(
                        "This model's context holds {n_ctx} tokens; the prompt has {} and {} more were asked for. Shorten the prompt or lower max_tokens.",
                        p.len(),
                        max.unwrap_or(0)
                    ),
                )
            });
        }
    }
    let seed = sampling.seed.map_or_else(random_seed, |s| s as u64);
    let mut template = Request::new(Input::Tokens(Vec::new()), spec);
    template.max_tokens = max;
    template.stop = stop;
    template.ignore_eos = sampling.ignore_eos.unwrap_or(false);
    template.logprobs = logprobs;
    Ok(Plan {
        api,
        id: st.id(if api == Api::Chat { "chatcmpl" } else { "cmpl" }),
        created: now_secs(),
        model: model.to_string(),
        prompts,
        n,
        template,
        seed,
        stream,
        include_usage: stream_options.is_some_and(|o| o.include_usage),
        logprobs,
        tools: false,
        parallel_tool_calls: true,
        harmony: false,
    })
}

/// Builds the plan of a completion request (tokenizing on a blocking thread).
fn plan_completion(st: &AppState, engine: &Engine, body: &[u8]) -> Result<Plan, ApiError> {
    let r: CompletionRequest = openai::parse(body, &openai::completion_fields())?;
    if r.echo == Some(true) {
        return Err(ApiError::unsupported(
            "echo",
            "the prompt is not repeated in the output",
        ));
    }
    if r.suffix.as_ref().is_some_and(|s| !s.is_null()) {
        return Err(ApiError::unsupported(
            "suffix",
            "insertion is not available",
        ));
    }
    if r.best_of.is_some_and(|b| b > 1 && Some(b) != r.n) {
        return Err(ApiError::unsupported(
            "best_of",
            "choices are not ranked server-side (use n)",
        ));
    }
    if r.logprobs.is_some_and(|l| l > 5) {
        return Err(ApiError::field(
            "logprobs",
            "`logprobs` must be between 0 and 5",
        ));
    }
    let model = engine.model();
    let prompts = openai::prompts(r.prompt)?
        .into_iter()
        .map(|p| match p {
            openai::Prompt::Text(t) => model
                .encode(&t, true)
                .map_err(|e| ApiError::field("prompt", sanitize(&format!("{e:#}")))),
            openai::Prompt::Tokens(t) => {
                match t.iter().find(|&&id| id as usize >= model.n_vocab()) {
                    Some(id) => Err(ApiError::field(
                        "prompt",
                        format!(
                            "token id {id} is not in the vocabulary of {}",
                            model.n_vocab()
                        ),
                    )),
                    None => Ok(t),
                }
            }
        })
        .collect::<Result<Vec<_>, _>>()?;
    let spec = sampler_spec(st, &r.sampling, None, model.n_vocab())?;
    plan_common(
        st,
        engine,
        Api::Completion,
        &r.model,
        prompts,
        r.n,
        Some(r.max_tokens.unwrap_or(16)),
        r.stop,
        r.stream,
        r.stream_options,
        &r.sampling,
        spec,
        r.logprobs.map(|l| l as usize),
    )
}

/// Builds the plan of a chat request.
fn plan_chat(st: &AppState, engine: &Engine, body: &[u8]) -> Result<Plan, ApiError> {
    let r: ChatRequest = openai::parse(body, &openai::chat_fields())?;
    if let Some(m) = &r.modalities {
        if m.iter().any(|x| x != "text") {
            return Err(ApiError::unsupported(
                "modalities",
                "only text is generated",
            ));
        }
    }
    let max_tokens = match (r.max_tokens, r.max_completion_tokens) {
        (Some(a), Some(b)) if a != b => {
            return Err(ApiError::field(
                "max_completion_tokens",
                "give one of `max_tokens` and `max_completion_tokens`",
            ))
        }
        (a, b) => b.or(a),
    };
    let logprobs = match (r.logprobs, r.top_logprobs) {
        (_, Some(k)) if k > 20 => {
            return Err(ApiError::field(
                "top_logprobs",
                "`top_logprobs` must be between 0 and 20",
            ))
        }
        (Some(true), k) => Some(k.unwrap_or(0) as usize),
        (_, Some(_)) => {
            return Err(ApiError::field(
                "top_logprobs",
                "`top_logprobs` needs `logprobs: true`",
            ))
        }
        _ => None,
    };
    let model = engine.model();
    let n_vocab = model.n_vocab();
    // response_format → a constraint.
    let mut constraint = match &r.response_format {
        None => None,
        Some(f) => match f.kind.as_str() {
            "text" => None,
            "json_object" => Some(json!({"json": true})),
            "json_schema" => {
                let schema = f
                    .json_schema
                    .as_ref()
                    .and_then(|j| j.schema.clone())
                    .ok_or_else(|| {
                        ApiError::field(
                            "response_format",
                            "`response_format.json_schema.schema` is required",
                        )
                    })?;
                let pattern = kiln_runtime::sampler::schema::schema_to_regex(&schema)
                    .map_err(|e| ApiError::field("response_format", sanitize(&e.to_string())))?;
                Some(json!({ "regex": pattern }))
            }
            other => {
                return Err(ApiError::field(
                    "response_format",
                    format!(
                        "unknown `response_format.type` `{}` (text, json_object or json_schema)",
                        sanitize(other)
                    ),
                ))
            }
        },
    };
    // Tools: what the template sees, whether calls are parsed, and whether one is forced.
    let tools = r.tools.unwrap_or_default();
    for (i, t) in tools.iter().enumerate() {
        if t.kind != "function" {
            return Err(ApiError::field(
                &format!("tools[{i}].type"),
                "only `function` tools are supported",
            ));
        }
    }
    let choice = match r.tool_choice {
        None if tools.is_empty() => "none".to_string(),
        None => "auto".to_string(),
        Some(openai::ToolChoice::Mode(m)) if ["none", "auto", "required"].contains(&m.as_str()) => {
            m
        }
        Some(openai::ToolChoice::Mode(m)) => {
            return Err(ApiError::field(
                "tool_choice",
                format!(
                    "unknown `tool_choice` `{}` (none, auto, required or a named function)",
                    sanitize(&m)
                ),
            ))
        }
        Some(openai::ToolChoice::Named { kind, function }) => {
            if kind != "function" {
                return Err(ApiError::field(
                    "tool_choice",
                    "`tool_choice.type` must be `function`",
                ));
            }
            if !tools.iter().any(|t| t.function.name == function.name) {
                return Err(ApiError::field(
                    "tool_choice",
                    format!(
                        "`tool_choice` names `{}`, which is not among `tools`",
                        sanitize(&function.name)
                    ),
                ));
            }
            format!("name:{}", function.name)
        }
    };
    if choice != "none" && tools.is_empty() {
        return Err(ApiError::field(
            "tool_choice",
            "`tool_choice` needs `tools`",
        ));
    }
    let forced: Vec<&openai::Tool> = match choice.as_str() {
        "required" => tools.iter().collect(),
        c if c.starts_with("name:") => tools.iter().filter(|t| t.function.name == c[5..]).collect(),
        _ => Vec::new(),
    };
    let parallel = r.parallel_tool_calls.unwrap_or(true);
    if !forced.is_empty() {
        if constraint.is_some() {
            return Err(ApiError::field(
                "response_format",
                "`response_format` cannot be combined with a forced tool call",
            ));
        }
        let mut alternatives = Vec::new();
        for t in &forced {
            let args = match &t.function.parameters {
                Some(p) => kiln_runtime::sampler::schema::schema_to_regex(p).map_err(|e| {
                    ApiError::field(
                        "tools",
                        format!(
                            "parameters of `{}`: {}",
                            sanitize(&t.function.name),
                            sanitize(&e.to_string())
                        ),
                    )
                })?,
                None => "\\{\\}".to_string(),
            };
            alternatives.push(format!(
                "(?:{})",
                tools::call_pattern(&t.function.name, &args)
            ));
        }
        let one = alternatives.join("|");
        // One call, or (parallel calls allowed) several, newline-separated.
        let pattern = if parallel && forced.len() > 1 {
            format!("(?:{one})(?:\\n(?:{one})){{0,3}}")
        } else {
            format!("(?:{one})")
        };
        constraint = Some(json!({ "regex": pattern }));
    }
    let messages = openai::to_messages(r.messages)?;
    let tools_value = if tools.is_empty() || choice == "none" {
        None
    } else {
        Some(serde_json::to_value(&tools).map_err(|e| ApiError::internal(e.to_string()))?)
    };
    let prompt = match &tools_value {
        Some(t) => model.encode_chat_with_tools(&messages, Some(t), true),
        None => model.encode_chat(&messages, true),
    }
    .map_err(|e| ApiError::field("messages", sanitize(&format!("{e:#}"))))?;
    let spec = sampler_spec(st, &r.sampling, constraint, n_vocab)?;
    let mut plan = plan_common(
        st,
        engine,
        Api::Chat,
        &r.model,
        vec![prompt],
        r.n,
        max_tokens,
        r.stop,
        r.stream,
        r.stream_options,
        &r.sampling,
        spec,
        logprobs,
    )?;
    plan.tools = tools_value.is_some();
    plan.harmony = engine.model().tokenizer.uses_harmony();
    plan.parallel_tool_calls = parallel;
    Ok(plan)
}

/// One running choice.
struct Choice {
    index: usize,
    prompt: usize,
    handle: Handle,
}

/// Submits every choice of `plan`; on a refusal, the ones already submitted are cancelled.
fn submit(engine: &Engine, plan: &Plan) -> Result<Vec<Choice>, ApiError> {
    let mut out = Vec::new();
    for (p, prompt) in plan.prompts.iter().enumerate() {
        for j in 0..plan.n {
            let index = p * plan.n + j;
            let mut req = plan.template.clone();
            req.seed = plan.seed.wrapping_add(index as u64);
            match engine.submit_tokens(prompt.clone(), req) {
                Ok(handle) => out.push(Choice {
                    index,
                    prompt: p,
                    handle,
                }),
                Err(e) => {
                    for c in &out {
                        c.handle.cancel();
                    }
                    return Err(match e {
                        SubmitError::QueueFull(_) => ApiError::busy(e.to_string()),
                        SubmitError::Closed => ApiError::unavailable(e.to_string()),
                        SubmitError::Invalid(m) => ApiError::invalid(sanitize(&m)),
                    });
                }
            }
        }
    }
    Ok(out)
}

/// The finish reason of the OpenAI API.
fn finish_reason(f: &Finish, called: bool) -> &'static str {
    match f {
        _ if called => "tool_calls",
        Finish::Length | Finish::ContextFull => "length",
        _ => "stop",
    }
}

/// The text of a token for log-probabilities, and its bytes.
fn token_json(engine: &Engine, id: u32, logprob: f32) -> Value {
    let bytes = engine.model().tokenizer.token_bytes(id);
    json!({
        "token": String::from_utf8_lossy(bytes),
        "logprob": logprob,
        "bytes": bytes,
    })
}

/// Chat `logprobs.content` entries of one token.
fn chat_logprob(engine: &Engine, id: u32, lp: &TokenLogprob) -> Value {
    let mut v = token_json(engine, id, lp.logprob);
    v["top_logprobs"] = Value::Array(
        lp.top
            .iter()
            .map(|&(t, l)| token_json(engine, t, l))
            .collect(),
    );
    v
}

/// What one choice produced, for a whole response.
#[derive(Default)]
struct Collected {
    text: String,
    reasoning: String,
    calls: Vec<ToolCall>,
    tokens: Vec<(u32, Option<TokenLogprob>)>,
    finish: Option<Finish>,
    usage: Usage,
    ttft_ms: f64,
}

impl Collected {
    fn add(&mut self, p: crate::reasoning::ChatPiece) {
        self.reasoning.push_str(&p.reasoning);
        self.text.push_str(&p.content);
        self.calls.extend(p.calls);
    }
}

/// Metrics and the log line of a finished request.
struct Outcome {
    status: u16,
    prompt_tokens: usize,
    cached_tokens: usize,
    completion_tokens: usize,
}

fn record(st: &AppState, api: Api, t0: Instant, o: &Outcome, id: &str) {
    let ms = t0.elapsed().as_secs_f64() * 1e3;
    st.metrics.request(api.endpoint(), o.status);
    st.metrics
        .tokens(o.prompt_tokens, o.cached_tokens, o.completion_tokens);
    tracing::info!(
        "request {id} {} {} prompt {} (cached {}) completion {} tokens, {ms:.1} ms",
        api.endpoint(),
        o.status,
        o.prompt_tokens,
        o.cached_tokens,
        o.completion_tokens
    );
}

/// Records a request exactly once: by [`Recorder::finish`] when its response is complete, or,
/// when the client goes away first (the response future or stream is dropped), as status 499
/// with the tokens generated until then. The engine cancels the dropped sequences itself.
struct Recorder {
    st: Arc<AppState>,
    api: Api,
    t0: Instant,
    id: String,
    /// Tokens generated so far (for the 499 record).
    generated: std::sync::atomic::AtomicUsize,
    done: std::sync::atomic::AtomicBool,
}

impl Recorder {
    fn new(st: Arc<AppState>, api: Api, t0: Instant, id: String) -> Arc<Recorder> {
        Arc::new(Recorder {
            st,
            api,
            t0,
            id,
            generated: 0.into(),
            done: false.into(),
        })
    }

    fn token(&self) {
        self.generated
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    fn finish(&self, o: &Outcome) {
        if !self.done.swap(true, std::sync::atomic::Ordering::Relaxed) {
            record(&self.st, self.api, self.t0, o, &self.id);
        }
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        if !self.done.load(std::sync::atomic::Ordering::Relaxed) {
            let o = Outcome {
                status: 499,
                prompt_tokens: 0,
                cached_tokens: 0,
                completion_tokens: self.generated.load(std::sync::atomic::Ordering::Relaxed),
            };
            record(&self.st, self.api, self.t0, &o, &self.id);
            tracing::info!("request {} cancelled: the client went away", self.id);
        }
    }
}

/// Usage of a response: each prompt counted once (its first choice's figures).
fn usage_json(choices: &[(usize, Usage)], n_prompts: usize) -> (Value, Outcome) {
    let mut prompt = 0;
    let mut cached = 0;
    let mut completion = 0;
    for p in 0..n_prompts {
        if let Some((_, u)) = choices.iter().find(|(q, _)| *q == p) {
            prompt += u.prompt_tokens;
            cached += u.cached_tokens;
        }
    }
    for (_, u) in choices {
        completion += u.completion_tokens;
    }
    (
        json!({
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": cached},
        }),
        Outcome {
            status: 200,
            prompt_tokens: prompt,
            cached_tokens: cached,
            completion_tokens: completion,
        },
    )
}

/// Whether an engine error is the client's (its sampler failed) rather than the server's.
fn error_of(msg: &str) -> ApiError {
    if msg.starts_with("sampler '") {
        ApiError::invalid(sanitize(msg))
    } else {
        ApiError::internal(sanitize(msg))
    }
}

/// Waits for every choice and writes the whole response.
async fn respond_whole(
    st: Arc<AppState>,
    engine: Arc<Engine>,
    plan: Plan,
    choices: Vec<Choice>,
    t0: Instant,
) -> Response {
    let rec = Recorder::new(st.clone(), plan.api, t0, plan.id.clone());
    let mut results: Vec<(usize, usize, Collected)> = Vec::new();
    for c in choices {
        let mut col = Collected::default();
        let mut split = ChatText::new(plan.harmony, plan.tools);
        let mut last = None::<Instant>;
        while let Some(ev) = c.handle.recv_async().await {
            match ev {
                Event::Token { id, text, logprob } => {
                    rec.token();
                    let now = Instant::now();
                    if let Some(prev) = last {
                        st.metrics.inter_token(now - prev);
                    }
                    last = Some(now);
                    let s = split.push(&text);
                    col.add(s);
                    col.tokens.push((id, logprob));
                }
                Event::Done {
                    finish,
                    text,
                    usage,
                    timings,
                } => {
                    let s = split.push(&text);
                    col.add(s);
                    col.add(split.finish());
                    col.usage = usage;
                    col.ttft_ms = timings.ttft_ms;
                    col.finish = Some(finish);
                }
            }
        }
        st.metrics.first_token(col.ttft_ms / 1e3);
        results.push((c.index, c.prompt, col));
    }
    let usages: Vec<(usize, Usage)> = results.iter().map(|(_, p, c)| (*p, c.usage)).collect();
    let (usage, mut outcome) = usage_json(&usages, plan.prompts.len());
    if let Some((_, _, c)) = results
        .iter()
        .find(|(_, _, c)| matches!(c.finish, Some(Finish::Error(_)) | None))
    {
        let err = match &c.finish {
            Some(Finish::Error(e)) => error_of(e),
            _ => ApiError::internal("the engine stopped"),
        };
        outcome.status = err.status.as_u16();
        rec.finish(&outcome);
        return err.into_response();
    }
    let mut out_choices = Vec::new();
    for (index, _, c) in &results {
        let finish = c.finish.clone().unwrap_or(Finish::Cancelled);
        let calls = if plan.parallel_tool_calls {
            &c.calls[..]
        } else {
            &c.calls[..c.calls.len().min(1)]
        };
        let reason = finish_reason(&finish, !calls.is_empty());
        let v = match plan.api {
            Api::Chat => {
                let tool_calls: Vec<Value> = calls
                    .iter()
                    .enumerate()
                    .map(|(k, call)| {
                        json!({"id": format!("call_{}_{index}_{k}", plan.id), "type": "function",
                               "function": {"name": call.name, "arguments": call.arguments}})
                    })
                    .collect();
                let content = if calls.is_empty() || !c.text.trim().is_empty() {
                    Value::String(if calls.is_empty() {
                        c.text.clone()
                    } else {
                        c.text.trim().to_string()
                    })
                } else {
                    Value::Null
                };
                let message =
                    crate::reasoning::assistant_message(content, &c.reasoning, tool_calls);
                let logprobs = plan.logprobs.map(|_| {
                    json!({"content": c.tokens.iter().filter_map(|(id, lp)| lp.as_ref().map(|lp| chat_logprob(&engine, *id, lp))).collect::<Vec<_>>(), "refusal": null})
                });
                json!({"index": index, "message": message, "logprobs": logprobs, "finish_reason": reason})
            }
            Api::Completion => {
                let logprobs = plan
                    .logprobs
                    .map(|_| completion_logprobs(&engine, &c.tokens));
                json!({"index": index, "text": c.text, "logprobs": logprobs, "finish_reason": reason})
            }
        };
        out_choices.push(v);
    }
    out_choices.sort_by_key(|v| v["index"].as_u64());
    let object = match plan.api {
        Api::Chat => "chat.completion",
        Api::Completion => "text_completion",
    };
    rec.finish(&outcome);
    Json(json!({
        "id": plan.id, "object": object, "created": plan.created, "model": plan.model,
        "system_fingerprint": fingerprint(&engine),
        "choices": out_choices, "usage": usage,
    }))
    .into_response()
}

/// The legacy completions `logprobs` object.
fn completion_logprobs(engine: &Engine, tokens: &[(u32, Option<TokenLogprob>)]) -> Value {
    let mut text = Vec::new();
    let mut lps = Vec::new();
    let mut tops = Vec::new();
    let mut offsets = Vec::new();
    let mut at = 0usize;
    for (id, lp) in tokens {
        let bytes = engine.model().tokenizer.token_bytes(*id);
        let s = String::from_utf8_lossy(bytes).into_owned();
        offsets.push(at);
        at += s.len();
        text.push(Value::String(s));
        lps.push(lp.as_ref().map_or(Value::Null, |l| json!(l.logprob)));
        let mut top = serde_json::Map::new();
        for &(t, l) in lp.iter().flat_map(|l| &l.top) {
            let b = engine.model().tokenizer.token_bytes(t);
            top.insert(String::from_utf8_lossy(b).into_owned(), json!(l));
        }
        tops.push(Value::Object(top));
    }
    json!({"tokens": text, "token_logprobs": lps, "top_logprobs": tops, "text_offset": offsets})
}

/// Identifies the configuration that produced a response.
fn fingerprint(engine: &Engine) -> String {
    format!("kiln-{}", engine.model().backend.replace(' ', "-"))
}

/// One streamed event of one choice, or the end of one choice.
enum Piece {
    Chunk(Value),
    Done(usize, Usage, f64),
    Failed(ApiError),
}

/// What every choice stream of one response shares.
#[derive(Clone)]
struct StreamCtx {
    st: Arc<AppState>,
    engine: Arc<Engine>,
    api: Api,
    logprobs: bool,
    tools: bool,
    harmony: bool,
    parallel_calls: bool,
    /// Response id, creation time, model id.
    head: (String, u64, String),
    rec: Arc<Recorder>,
}

/// The stream of one choice: its chunks, then its end.
fn choice_stream(ctx: StreamCtx, c: Choice) -> impl Stream<Item = Piece> + Send {
    let StreamCtx {
        st,
        engine,
        api,
        logprobs,
        tools,
        harmony,
        parallel_calls,
        head,
        rec,
    } = ctx;
    struct S {
        rec: Arc<Recorder>,
        st: Arc<AppState>,
        engine: Arc<Engine>,
        c: Choice,
        split: ChatText,
        started: bool,
        calls: usize,
        last: Option<Instant>,
        done: bool,
        queue: std::collections::VecDeque<Piece>,
    }
    let (id, created, model) = head;
    let chunk = move |choice: Value, api: Api| match api {
        Api::Chat => json!({"id": id, "object": "chat.completion.chunk", "created": created,
                            "model": model, "choices": [choice]}),
        Api::Completion => json!({"id": id, "object": "text_completion", "created": created,
                                  "model": model, "choices": [choice]}),
    };
    let state = S {
        rec,
        st,
        engine,
        c,
        split: ChatText::new(harmony, tools),
        started: false,
        calls: 0,
        last: None,
        done: false,
        queue: Default::default(),
    };
    stream::unfold(state, move |mut s| {
        let chunk = chunk.clone();
        async move {
            loop {
                if let Some(p) = s.queue.pop_front() {
                    return Some((p, s));
                }
                if s.done {
                    return None;
                }
                let index = s.c.index;
                if api == Api::Chat && !s.started {
                    s.started = true;
                    s.queue.push_back(Piece::Chunk(chunk(
                        json!({"index": index, "delta": {"role": "assistant", "content": ""},
                               "logprobs": null, "finish_reason": null}),
                        api,
                    )));
                    continue;
                }
                let Some(ev) = s.c.handle.recv_async().await else {
                    s.done = true;
                    s.queue
                        .push_back(Piece::Failed(ApiError::internal("the engine stopped")));
                    continue;
                };
                let (text, lp, end) = match ev {
                    Event::Token { id, text, logprob } => {
                        s.rec.token();
                        let now = Instant::now();
                        if let Some(prev) = s.last {
                            s.st.metrics.inter_token(now - prev);
                        }
                        s.last = Some(now);
                        let lp = if logprobs {
                            logprob.map(|l| (id, l))
                        } else {
                            None
                        };
                        (text, lp, None)
                    }
                    Event::Done {
                        finish,
                        text,
                        usage,
                        timings,
                    } => (text, None, Some((finish, usage, timings.ttft_ms))),
                };
                // Text (and tool calls) of this event.
                let mut sp = s.split.push(&text);
                if end.is_some() {
                    let f = s.split.finish();
                    sp.reasoning.push_str(&f.reasoning);
                    sp.content.push_str(&f.content);
                    sp.calls.extend(f.calls);
                }
                let (reasoning, content, calls) = (sp.reasoning, sp.content, sp.calls);
                let lp_json = lp.map(|(id, l)| match api {
                    Api::Chat => {
                        json!({"content": [chat_logprob(&s.engine, id, &l)], "refusal": null})
                    }
                    Api::Completion => completion_logprobs(&s.engine, &[(id, Some(l))]),
                });
                if !reasoning.is_empty() {
                    s.queue.push_back(Piece::Chunk(chunk(
                        json!({"index": index, "delta": {"reasoning_content": reasoning},
                               "logprobs": null, "finish_reason": null}),
                        api,
                    )));
                }
                if !content.is_empty() || lp_json.is_some() {
                    let choice = match api {
                        Api::Chat => json!({"index": index, "delta": {"content": content},
                                            "logprobs": lp_json, "finish_reason": null}),
                        Api::Completion => json!({"index": index, "text": content,
                                                  "logprobs": lp_json, "finish_reason": null}),
                    };
                    s.queue.push_back(Piece::Chunk(chunk(choice, api)));
                }
                for call in calls {
                    if !parallel_calls && s.calls > 0 {
                        continue;
                    }
                    let k = s.calls;
                    s.calls += 1;
                    s.queue.push_back(Piece::Chunk(chunk(
                        json!({"index": index, "delta": {"tool_calls": [{"index": k,
                            "id": format!("call_{index}_{k}_{}", s.st.started.elapsed().as_nanos()),
                            "type": "function",
                            "function": {"name": call.name, "arguments": call.arguments}}]},
                            "logprobs": null, "finish_reason": null}),
                        api,
                    )));
                }
                if let Some((finish, usage, ttft)) = end {
                    s.done = true;
                    if let Finish::Error(e) = &finish {
                        s.queue.push_back(Piece::Failed(error_of(e)));
                        continue;
                    }
                    let reason = finish_reason(&finish, s.calls > 0);
                    let last = match api {
                        Api::Chat => json!({"index": index, "delta": {}, "logprobs": null,
                                            "finish_reason": reason}),
                        Api::Completion => json!({"index": index, "text": "", "logprobs": null,
                                                  "finish_reason": reason}),
                    };
                    s.queue.push_back(Piece::Chunk(chunk(last, api)));
                    s.queue.push_back(Piece::Done(s.c.prompt, usage, ttft));
                }
            }
        }
    })
}

/// Streams every choice as server-sent events; `data: [DONE]` ends the stream.
fn respond_stream(
    st: Arc<AppState>,
    engine: Arc<Engine>,
    plan: Plan,
    choices: Vec<Choice>,
    t0: Instant,
) -> Response {
    let head = (plan.id.clone(), plan.created, plan.model.clone());
    let rec = Recorder::new(st.clone(), plan.api, t0, plan.id.clone());
    let ctx = StreamCtx {
        st: st.clone(),
        engine: engine.clone(),
        api: plan.api,
        logprobs: plan.logprobs.is_some(),
        tools: plan.tools,
        harmony: plan.harmony,
        parallel_calls: plan.parallel_tool_calls,
        head,
        rec: rec.clone(),
    };
    let streams: Vec<_> = choices
        .into_iter()
        .map(|c| Box::pin(choice_stream(ctx.clone(), c)))
        .collect();
    let merged = stream::select_all(streams);
    let n_prompts = plan.prompts.len();
    let include_usage = plan.include_usage;
    let api = plan.api;
    let id = plan.id.clone();
    let created = plan.created;
    let model = plan.model.clone();
    struct Tail {
        usages: Vec<(usize, Usage)>,
        failed: Option<ApiError>,
        st: Arc<AppState>,
    }
    let tail = std::sync::Arc::new(std::sync::Mutex::new(Tail {
        usages: Vec::new(),
        failed: None,
        st: st.clone(),
    }));
    let t2 = tail.clone();
    let events = merged.filter_map(move |p| {
        let tail = t2.clone();
        async move {
            match p {
                Piece::Chunk(v) => Some(v.to_string()),
                Piece::Done(prompt, usage, ttft) => {
                    if let Ok(mut t) = tail.lock() {
                        t.usages.push((prompt, usage));
                        t.st.metrics.first_token(ttft / 1e3);
                    }
                    None
                }
                Piece::Failed(e) => {
                    let body = e.body().to_string();
                    if let Ok(mut t) = tail.lock() {
                        t.failed.get_or_insert(e);
                    }
                    Some(body)
                }
            }
        }
    });
    let end = stream::once(async move {
        let mut out = Vec::new();
        let (usage, mut outcome, failed) = match tail.lock() {
            Ok(t) => {
                let (u, o) = usage_json(&t.usages, n_prompts);
                (u, o, t.failed.clone())
            }
            Err(_) => (
                Value::Null,
                Outcome {
                    status: 500,
                    prompt_tokens: 0,
                    cached_tokens: 0,
                    completion_tokens: 0,
                },
                None,
            ),
        };
        if let Some(e) = &failed {
            outcome.status = e.status.as_u16();
        }
        if include_usage && failed.is_none() {
            let object = match api {
                Api::Chat => "chat.completion.chunk",
                Api::Completion => "text_completion",
            };
            out.push(
                json!({"id": id, "object": object, "created": created, "model": model,
                            "choices": [], "usage": usage})
                .to_string(),
            );
        }
        rec.finish(&outcome);
        out.push("[DONE]".to_string());
        stream::iter(out)
    })
    .flatten();
    let sse = events
        .chain(end)
        .map(|data| Ok::<_, std::convert::Infallible>(SseEvent::default().data(data)));
    Sse::new(sse)
        .keep_alive(KeepAlive::default())
        .into_response()
}

/// Runs a request end to end.
async fn handle(st: Arc<AppState>, headers: HeaderMap, body: Bytes, api: Api) -> Response {
    let t0 = Instant::now();
    let fail = |st: &AppState, e: ApiError| {
        st.metrics.request(api.endpoint(), e.status.as_u16());
        tracing::info!(
            "request - {} {} {}",
            api.endpoint(),
            e.status.as_u16(),
            sanitize(&e.message)
        );
        e.into_response()
    };
    if let Err(e) = st.authorize(&headers) {
        return fail(&st, e);
    }
    let engine = match st.engine() {
        Ok(e) => e,
        Err(e) => return fail(&st, e),
    };
    // Tokenizing, templating and instantiating samplers is CPU work: off the async threads.
    let st2 = st.clone();
    let eng = engine.clone();
    let planned = tokio::task::spawn_blocking(move || {
        let plan = match api {
            Api::Completion => plan_completion(&st2, &eng, &body),
            Api::Chat => plan_chat(&st2, &eng, &body),
        }?;
        let choices = submit(&eng, &plan)?;
        Ok::<_, ApiError>((plan, choices))
    })
    .await;
    let (plan, choices) = match planned {
        Ok(Ok(x)) => x,
        Ok(Err(e)) => return fail(&st, e),
        Err(e) => return fail(&st, ApiError::internal(format!("request task failed: {e}"))),
    };
    if plan.stream {
        respond_stream(st, engine, plan, choices, t0)
    } else {
        respond_whole(st, engine, plan, choices, t0).await
    }
}

/// `POST /v1/completions`.
pub async fn completions(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    handle(st, headers, body, Api::Completion).await
}

/// `POST /v1/chat/completions`.
pub async fn chat(State(st): State<Arc<AppState>>, headers: HeaderMap, body: Bytes) -> Response {
    handle(st, headers, body, Api::Chat).await
}
