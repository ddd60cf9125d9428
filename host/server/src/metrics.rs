//! Prometheus metrics (`GET /metrics`): requests by endpoint and status, prompt, cached-prompt
//! and generated tokens, time-to-first-token and inter-token-latency histograms, and the
//! engine's gauges (queue depth, busy slots, KV use) read at scrape time.

use crate::AppState;
use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::sync::Arc;
use std::time::Duration;

/// Labels of the request counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// The endpoint path.
    pub endpoint: String,
    /// The HTTP status.
    pub status: u16,
}

/// The server's metrics.
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    prompt_tokens: Counter,
    cached_tokens: Counter,
    generated_tokens: Counter,
    ttft: Histogram,
    itl: Histogram,
    queue: Gauge,
    busy: Gauge,
    slots: Gauge,
    kv_used: Gauge,
    kv_capacity: Gauge,
}

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("kiln");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "requests",
            "HTTP requests by endpoint and status",
            requests.clone(),
        );
        let prompt_tokens = Counter::default();
        registry.register(
            "prompt_tokens",
            "Prompt tokens of finished requests",
            prompt_tokens.clone(),
        );
        let cached_tokens = Counter::default();
        registry.register(
            "cached_prompt_tokens",
            "Prompt tokens whose KV cache was reused",
            cached_tokens.clone(),
        );
        let generated_tokens = Counter::default();
        registry.register(
            "generated_tokens",
            "Generated tokens",
            generated_tokens.clone(),
        );
        let ttft = Histogram::new(exponential_buckets(0.005, 2.0, 14));
        registry.register(
            "time_to_first_token_seconds",
            "Time from a request's arrival to its first token",
            ttft.clone(),
        );
        let itl = Histogram::new(exponential_buckets(0.001, 2.0, 14));
        registry.register(
            "inter_token_latency_seconds",
            "Time between two tokens of a stream",
            itl.clone(),
        );
        let queue = Gauge::default();
        registry.register("queue_depth", "Requests waiting for a slot", queue.clone());
        let busy = Gauge::default();
        registry.register(
            "slots_busy",
            "Sequence slots running a request",
            busy.clone(),
        );
        let slots = Gauge::default();
        registry.register("slots", "Sequence slots", slots.clone());
        let kv_used = Gauge::default();
        registry.register(
            "kv_used_tokens",
            "KV cache positions holding tokens",
            kv_used.clone(),
        );
        let kv_capacity = Gauge::default();
        registry.register(
            "kv_capacity_tokens",
            "KV cache positions in all",
            kv_capacity.clone(),
        );
        Metrics {
            registry,
            requests,
            prompt_tokens,
            cached_tokens,
            generated_tokens,
            ttft,
            itl,
            queue,
            busy,
            slots,
            kv_used,
            kv_capacity,
        }
    }

    /// Counts a finished request.
    pub fn request(&self, endpoint: &str, status: u16) {
        self.requests
            .get_or_create(&RequestLabels {
                endpoint: endpoint.to_string(),
                status,
            })
            .inc();
    }

    /// Adds a request's token counts.
    pub fn tokens(&self, prompt: usize, cached: usize, generated: usize) {
        self.prompt_tokens.inc_by(prompt as u64);
        self.cached_tokens.inc_by(cached as u64);
        self.generated_tokens.inc_by(generated as u64);
    }

    /// Records a time to first token, in seconds.
    pub fn first_token(&self, secs: f64) {
        if secs > 0.0 {
            self.ttft.observe(secs);
        }
    }

    /// Records the time between two tokens.
    pub fn inter_token(&self, d: Duration) {
        self.itl.observe(d.as_secs_f64());
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

/// `GET /metrics`.
pub async fn scrape(State(st): State<Arc<AppState>>) -> Response {
    let m = &st.metrics;
    if let Some(e) = st.engine.get() {
        let s = e.stats();
        m.queue.set(s.queued as i64);
        m.busy.set(s.busy_slots as i64);
        m.slots.set(s.n_slots as i64);
        m.kv_used.set(s.kv_used as i64);
        m.kv_capacity.set(s.kv_capacity as i64);
    }
    let mut out = String::new();
    if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &m.registry) {
        return crate::error::ApiError::internal(format!("encoding metrics: {e}")).into_response();
    }
    (
        [(
            CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        out,
    )
        .into_response()
}
