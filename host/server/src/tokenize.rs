//! `/tokenize` and `/detokenize`, shaped as llama.cpp's server has them: clients count tokens,
//! find the id of a word (to ban or bias it) and turn ids back into text with the model's own
//! tokenizer.

use crate::error::ApiError;
use crate::openai::parse;
use crate::AppState;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;
use std::sync::Arc;

/// Most ids one `/detokenize` request may carry.
pub const MAX_IDS: usize = 1 << 20;

#[derive(Deserialize)]
struct TokenizeRequest {
    content: String,
    /// Add the model's BOS when it asks for one (llama.cpp's default: false).
    #[serde(default)]
    add_special: bool,
    /// Parse special-token text (`<|im_start|>`) into its token (default: true).
    #[serde(default = "yes")]
    parse_special: bool,
    /// Return `{id, piece}` objects instead of bare ids.
    #[serde(default)]
    with_pieces: bool,
}

fn yes() -> bool {
    true
}

#[derive(Deserialize)]
struct DetokenizeRequest {
    tokens: Vec<u32>,
}

/// `POST /tokenize`: `{"content": "...", "add_special", "parse_special", "with_pieces"}` →
/// `{"tokens": [ids]}` (or `[{"id", "piece"}]`).
pub async fn tokenize(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    match run_tokenize(&st, &headers, &body) {
        Ok(v) => Json(v).into_response(),
        Err(e) => e.into_response(),
    }
}

fn run_tokenize(
    st: &AppState,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<serde_json::Value, ApiError> {
    st.authorize(headers)?;
    let engine = st.engine()?;
    let req: TokenizeRequest = parse(
        body,
        &["content", "add_special", "parse_special", "with_pieces"],
    )?;
    let model = engine.model();
    let mut ids = model
        .encode(&req.content, req.parse_special)
        .map_err(|e| ApiError::field("content", format!("cannot tokenize: {e:#}")))?;
    if !req.add_special
        && model.tokenizer.adds_bos()
        && ids.first() == model.tokenizer.bos().as_ref()
    {
        ids.remove(0);
    }
    if !req.with_pieces {
        return Ok(json!({ "tokens": ids }));
    }
    let pieces: Vec<_> = ids
        .iter()
        .map(|&id| {
            let bytes = model.tokenizer.token_bytes(id);
            match std::str::from_utf8(bytes) {
                Ok(s) => json!({"id": id, "piece": s}),
                // A piece that is part of a UTF-8 sequence goes back as its bytes.
                Err(_) => json!({"id": id, "piece": bytes}),
            }
        })
        .collect();
    Ok(json!({ "tokens": pieces }))
}

/// `POST /detokenize`: `{"tokens": [ids]}` → `{"content": "..."}`.
pub async fn detokenize(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    match run_detokenize(&st, &headers, &body) {
        Ok(v) => Json(v).into_response(),
        Err(e) => e.into_response(),
    }
}

fn run_detokenize(
    st: &AppState,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<serde_json::Value, ApiError> {
    st.authorize(headers)?;
    let engine = st.engine()?;
    let req: DetokenizeRequest = parse(body, &["tokens"])?;
    if req.tokens.len() > MAX_IDS {
        return Err(ApiError::field(
            "tokens",
            format!("at most {MAX_IDS} tokens per request"),
        ));
    }
    let model = engine.model();
    let n = model.tokenizer.n_vocab();
    if let Some(bad) = req.tokens.iter().find(|&&t| t as usize >= n) {
        return Err(ApiError::field(
            "tokens",
            format!("token id {bad} is outside the vocabulary (0..{n})"),
        ));
    }
    Ok(json!({ "content": model.tokenizer.decode(&req.tokens) }))
}
