//! `kiln-server`: `kiln serve`, an OpenAI-compatible HTTP server on kiln-runtime's engine.
//!
//! - [`openai`]: the request bodies, parsed strictly (every field honoured or refused by name).
//! - [`generate`]: requests → engine requests → responses, whole or streamed (SSE).
//! - [`tools`]: tool calls in the generated text, and the pattern that forces one.
//! - [`samplers`]: uploaded WebAssembly samplers (`/v1/samplers`).
//! - [`tokenize`]: `/tokenize` and `/detokenize` with the model's tokenizer.
//! - [`metrics`]: Prometheus metrics (`/metrics`).
//! - [`error`]: errors in the OpenAI format.
//!
//! The server listens at once; the model loads in the background (`/health` answers 503
//! until it is ready). SIGINT/SIGTERM stop new connections and requests, let the running ones
//! finish within a grace period, then cancel the rest and return.

pub mod error;
pub mod generate;
pub mod metrics;
pub mod openai;
pub mod reasoning;
pub mod samplers;
pub mod tokenize;
pub mod tools;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use error::ApiError;
use kiln_runtime::engine::{Engine, EngineOptions};
use kiln_runtime::model::{LoadOptions, Model};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

/// How `kiln serve` runs.
#[derive(Clone, Debug)]
pub struct ServeOptions {
    /// The model file.
    pub model_path: PathBuf,
    /// The id clients name it by (`model` in requests, `/v1/models`).
    pub model_id: String,
    /// Backend name or library path (`None`: the best for the model).
    pub backend: Option<String>,
    /// Worker threads (0 = all cores).
    pub threads: u32,
    /// Address to listen on.
    pub host: String,
    /// Port (0 = any free one; the chosen one is printed).
    pub port: u16,
    /// Requests must carry `Authorization: Bearer <key>` when set.
    pub api_key: Option<String>,
    /// Sequences decoding at once.
    pub parallel: u32,
    /// Positions per sequence (`None`: the model's, capped to memory).
    pub ctx: Option<u32>,
    /// Requests that may wait for a slot before the server answers 429.
    pub queue: usize,
    /// Most tokens one step evaluates.
    pub batch: u32,
    /// CPU milliseconds a sampler call may take.
    pub sampler_deadline_ms: u64,
    /// How long running requests may take to finish at shutdown.
    pub grace: Duration,
}

/// What `/health` reports about the loaded model.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ModelFacts {
    /// The model id.
    pub model: String,
    /// Architecture.
    pub architecture: String,
    /// Most common weight type.
    pub quantization: String,
    /// Backend name and version.
    pub backend: String,
    /// Device name.
    pub device: String,
    /// Positions per sequence.
    pub context: u32,
    /// Sequence slots.
    pub slots: u32,
    /// Bytes of weights.
    pub weight_bytes: u64,
    /// Bytes of KV cache (all slots).
    pub kv_bytes: u64,
}

/// The server's shared state.
pub struct AppState {
    /// The options.
    pub opts: ServeOptions,
    /// The engine, once the model is loaded.
    pub engine: OnceLock<Arc<Engine>>,
    /// Why loading failed, if it did.
    pub load_error: OnceLock<String>,
    /// Facts for `/health`.
    pub facts: OnceLock<ModelFacts>,
    /// Uploaded samplers.
    pub samplers: samplers::Store,
    /// Prometheus metrics.
    pub metrics: metrics::Metrics,
    /// Set when shutting down: new requests get 503.
    pub closing: std::sync::atomic::AtomicBool,
    /// When the server started.
    pub started: Instant,
    /// Ids of responses.
    pub next_id: std::sync::atomic::AtomicU64,
}

impl AppState {
    /// The engine, or 503 while loading / after a failed load / when shutting down.
    pub fn engine(&self) -> Result<Arc<Engine>, ApiError> {
        if self.closing.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(ApiError::unavailable("the server is shutting down"));
        }
        if let Some(e) = self.engine.get() {
            return Ok(e.clone());
        }
        match self.load_error.get() {
            Some(e) => Err(ApiError::unavailable(format!(
                "the model failed to load: {e}"
            ))),
            None => Err(ApiError::unavailable("the model is loading")),
        }
    }

    /// Checks the API key, when one is set.
    pub fn authorize(&self, headers: &HeaderMap) -> Result<(), ApiError> {
        let Some(key) = &self.opts.api_key else {
            return Ok(());
        };
        let given = headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        // Constant-time comparison of the key.
        let ok = given.is_some_and(|g| {
            g.len() == key.len()
                && g.bytes()
                    .zip(key.bytes())
                    .fold(0u8, |a, (x, y)| a | (x ^ y))
                    == 0
        });
        if ok {
            Ok(())
        } else {
            Err(ApiError::unauthorized())
        }
    }

    /// A new response id.
    pub fn id(&self, prefix: &str) -> String {
        let n = self
            .next_id
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        format!(
            "{prefix}-{n:x}{:x}",
            self.started.elapsed().as_nanos() & 0xffff_ffff
        )
    }
}

/// Largest request body of the JSON endpoints.
pub const MAX_BODY: usize = 8 << 20;

/// The router of the API.
pub fn router(state: Arc<AppState>) -> Router {
    let upload_limit = kiln_runtime::sampler::MAX_MODULE_BYTES + (64 << 10);
    Router::new()
        .route("/v1/models", get(list_models))
        .route("/v1/models/{id}", get(get_model))
        .route("/v1/completions", post(generate::completions))
        .route("/v1/chat/completions", post(generate::chat))
        .route(
            "/v1/samplers",
            post(samplers::upload).layer(DefaultBodyLimit::max(upload_limit)),
        )
        .route("/v1/samplers", get(samplers::list))
        .route("/v1/samplers/{id}", delete(samplers::remove))
        .route("/tokenize", post(tokenize::tokenize))
        .route("/detokenize", post(tokenize::detokenize))
        .route("/health", get(health))
        .route("/metrics", get(metrics::scrape))
        .fallback(|| async {
            ApiError::not_found("no such endpoint", "unknown_url").into_response()
        })
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(state)
}

async fn list_models(State(st): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    if let Err(e) = st.authorize(&headers) {
        return e.into_response();
    }
    Json(serde_json::json!({
        "object": "list",
        "data": [model_object(&st)],
    }))
    .into_response()
}

fn model_object(st: &AppState) -> serde_json::Value {
    let created = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
        - st.started.elapsed().as_secs();
    serde_json::json!({
        "id": st.opts.model_id, "object": "model", "created": created, "owned_by": "kiln",
    })
}

async fn get_model(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    if let Err(e) = st.authorize(&headers) {
        return e.into_response();
    }
    if id != st.opts.model_id {
        return model_not_found(&id).into_response();
    }
    Json(model_object(&st)).into_response()
}

/// 404 for a model this server does not serve.
pub fn model_not_found(id: &str) -> ApiError {
    ApiError::not_found(
        format!(
            "The model `{}` does not exist on this server",
            error::sanitize(id)
        ),
        "model_not_found",
    )
}

async fn health(State(st): State<Arc<AppState>>) -> Response {
    let uptime = st.started.elapsed().as_secs_f64();
    let Some(engine) = st.engine.get() else {
        let (status, msg) = match st.load_error.get() {
            Some(e) => ("error", e.clone()),
            None => ("loading", String::new()),
        };
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(serde_json::json!({"status": status, "error": msg, "uptime_s": uptime})),
        )
            .into_response();
    };
    let s = engine.stats();
    let facts = st.facts.get().cloned();
    let closing = st.closing.load(std::sync::atomic::Ordering::Relaxed);
    let body = serde_json::json!({
        "status": if closing { "shutting_down" } else { "ok" },
        "model": facts.as_ref().map(|f| &f.model),
        "architecture": facts.as_ref().map(|f| &f.architecture),
        "quantization": facts.as_ref().map(|f| &f.quantization),
        "backend": facts.as_ref().map(|f| &f.backend),
        "device": facts.as_ref().map(|f| &f.device),
        "memory": {
            "weight_bytes": facts.as_ref().map(|f| f.weight_bytes),
            "kv_bytes": facts.as_ref().map(|f| f.kv_bytes),
            "kv_used_tokens": s.kv_used,
            "kv_capacity_tokens": s.kv_capacity,
        },
        "context": facts.as_ref().map(|f| f.context),
        "slots": {"busy": s.busy_slots, "total": s.n_slots},
        "queue": s.queued,
        "uptime_s": uptime,
    });
    let code = if closing {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    (code, Json(body)).into_response()
}

/// The most common weight type of the model file (its "quantization").
fn quantization(model: &Model) -> String {
    let mut count: std::collections::BTreeMap<String, u64> = Default::default();
    for t in &model.file.gguf().tensors {
        if t.dims.len() >= 2 {
            *count.entry(t.ty.to_string()).or_default() += t.data.len() as u64;
        }
    }
    count
        .into_iter()
        .max_by_key(|(_, n)| *n)
        .map_or_else(|| "unknown".to_string(), |(t, _)| t)
}

/// Loads the model and starts the engine (on a blocking thread).
fn load(st: &AppState) -> anyhow::Result<()> {
    let o = &st.opts;
    let model = Model::load(
        &o.model_path,
        &LoadOptions {
            backend: o.backend.clone(),
            threads: o.threads,
        },
    )?;
    let n_ctx = model.context_size(o.ctx, o.parallel)?;
    let engine = Engine::start(
        model.clone(),
        EngineOptions {
            n_ctx,
            n_slots: o.parallel,
            n_batch: o.batch,
            queue: o.queue,
        },
    )?;
    let info = model.backend_model.info();
    let _ = st.facts.set(ModelFacts {
        model: o.model_id.clone(),
        architecture: info.arch.clone(),
        quantization: quantization(&model),
        backend: model.backend.clone(),
        device: model.device.clone(),
        context: n_ctx,
        slots: o.parallel,
        weight_bytes: info.weight_bytes,
        kv_bytes: info.kv_bytes_per_token * u64::from(n_ctx) * u64::from(o.parallel),
    });
    tracing::info!(
        "model {} ready on {} ({}), context {n_ctx} × {} slots, loaded in {:.0} ms",
        error::sanitize(&o.model_id),
        model.backend,
        model.device,
        o.parallel,
        model.load_ms
    );
    let _ = st.engine.set(Arc::new(engine));
    Ok(())
}

/// Runs the server until SIGINT/SIGTERM; returns once everything is stopped.
pub fn run(opts: ServeOptions) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .worker_threads(2)
        .thread_name("kiln-http")
        .build()?;
    rt.block_on(serve(opts))
}

async fn serve(opts: ServeOptions) -> anyhow::Result<()> {
    // A file that is not a readable GGUF fails here, before the server listens; the slow part
    // (the backend's load) happens in the background.
    kiln_runtime::model_file::ModelFile::open(&opts.model_path)?;
    let addr: SocketAddr = format!("{}:{}", opts.host, opts.port)
        .parse()
        .map_err(|e| anyhow::anyhow!("bad address {}:{}: {e}", opts.host, opts.port))?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e}"))?;
    let local = listener.local_addr()?;
    let grace = opts.grace;
    let state = Arc::new(AppState {
        samplers: samplers::Store::default(),
        metrics: metrics::Metrics::new(),
        opts,
        engine: OnceLock::new(),
        load_error: OnceLock::new(),
        facts: OnceLock::new(),
        closing: false.into(),
        started: Instant::now(),
        next_id: 1.into(),
    });
    // stdout carries the address, for scripts and tests that start the server on port 0.
    println!("kiln serve listening on http://{local}");
    tracing::info!("listening on http://{local}");
    {
        let st = state.clone();
        std::thread::Builder::new()
            .name("kiln-load".into())
            .spawn(move || {
                if let Err(e) = load(&st) {
                    let msg = error::sanitize(&format!("{e:#}"));
                    tracing::error!("loading the model failed: {msg}");
                    let _ = st.load_error.set(msg);
                }
            })?;
    }
    let app = router(state.clone());
    let shutdown_state = state.clone();
    let server = axum::serve(listener, app).with_graceful_shutdown(async move {
        wait_for_signal().await;
        tracing::info!("shutting down: no new requests; running ones have {grace:?} to finish");
        shutdown_state
            .closing
            .store(true, std::sync::atomic::Ordering::Relaxed);
    });
    // Past the grace period, running requests are cancelled (their streams end cleanly).
    let watchdog_state = state.clone();
    let watchdog = tokio::spawn(async move {
        while !watchdog_state
            .closing
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let t0 = Instant::now();
        while t0.elapsed() < grace {
            let busy = watchdog_state
                .engine
                .get()
                .map_or(0, |e| e.stats().busy_slots + e.stats().queued);
            if busy == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if let Some(e) = watchdog_state.engine.get() {
            let s = e.stats();
            if s.busy_slots + s.queued > 0 {
                tracing::warn!(
                    "grace period over: cancelling {} running and {} queued requests",
                    s.busy_slots,
                    s.queued
                );
            }
            e.cancel_all();
        }
    });
    server.await?;
    let _ = watchdog.await;
    if let Some(engine) = state.engine.get() {
        engine.cancel_all();
    }
    tracing::info!("stopped");
    Ok(())
}

async fn wait_for_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}

/// A body as raw bytes with the JSON content checks left to the handlers.
pub type Body = Bytes;
