//! Uploaded samplers (`/v1/samplers`): WebAssembly modules sent by clients, validated and
//! compiled at upload (with the runtime's bounds on their shape), kept in memory under the
//! sha256 of their bytes, and usable by id in requests' `sampler` field. Uploads are untrusted
//! network input: an API key is required when the server has one, the size is capped, and
//! everything a module says about itself is escaped before it reaches a log or a response.

use crate::error::{sanitize, ApiError};
use crate::AppState;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use kiln_runtime::sampler::{builtin, SamplerModule};
use serde_json::json;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// Most uploaded modules kept at once.
pub const MAX_UPLOADED: usize = 64;

/// The uploaded modules, by id.
#[derive(Default)]
pub struct Store {
    modules: Mutex<BTreeMap<String, (Arc<SamplerModule>, usize)>>,
}

impl Store {
    /// The module `id`, if uploaded.
    pub fn get(&self, id: &str) -> Option<Arc<SamplerModule>> {
        self.modules.lock().ok()?.get(id).map(|(m, _)| m.clone())
    }
}

fn describe(id: &str, m: &SamplerModule, bytes: usize) -> serde_json::Value {
    json!({
        "id": id, "object": "sampler", "bytes": bytes,
        "mask": m.has_mask(), "accept_prompt": m.has_accept_prompt(),
    })
}

/// `POST /v1/samplers`: the body is the module (`.wasm`, or WAT text).
pub async fn upload(State(st): State<Arc<AppState>>, headers: HeaderMap, body: Bytes) -> Response {
    if let Err(e) = st.authorize(&headers) {
        st.metrics.request("/v1/samplers", e.status.as_u16());
        return e.into_response();
    }
    if body.is_empty() {
        return ApiError::invalid("the body must be a WebAssembly module").into_response();
    }
    let id: String = Sha256::digest(&body)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    if let Some(m) = st.samplers.get(&id) {
        return Json(describe(&id, &m, body.len())).into_response();
    }
    let full = st
        .samplers
        .modules
        .lock()
        .map(|m| m.len() >= MAX_UPLOADED)
        .unwrap_or(true);
    if full {
        return ApiError::invalid(format!(
            "{MAX_UPLOADED} samplers are already uploaded; delete one first"
        ))
        .into_response();
    }
    let len = body.len();
    let name = format!("upload:{}", &id[..12]);
    // Validation and compilation are CPU work (bounded by the runtime's shape checks).
    let loaded = tokio::task::spawn_blocking(move || SamplerModule::load(&name, &body)).await;
    let module = match loaded {
        Ok(Ok(m)) => m,
        Ok(Err(e)) => {
            let err = ApiError::invalid(sanitize(&e.to_string()));
            st.metrics.request("/v1/samplers", 400);
            tracing::info!("sampler upload refused: {}", err.message);
            return err.into_response();
        }
        Err(e) => return ApiError::internal(format!("upload task failed: {e}")).into_response(),
    };
    if let Ok(mut m) = st.samplers.modules.lock() {
        m.insert(id.clone(), (module.clone(), len));
    }
    st.metrics.request("/v1/samplers", 200);
    tracing::info!("sampler {id} uploaded ({len} bytes)");
    (StatusCode::OK, Json(describe(&id, &module, len))).into_response()
}

/// `GET /v1/samplers`: the built-ins and the uploaded modules.
pub async fn list(State(st): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    if let Err(e) = st.authorize(&headers) {
        return e.into_response();
    }
    let mut data: Vec<serde_json::Value> = builtin::names()
        .into_iter()
        .map(|n| json!({"id": n, "object": "sampler", "builtin": true}))
        .collect();
    if let Ok(m) = st.samplers.modules.lock() {
        data.extend(m.iter().map(|(id, (m, len))| describe(id, m, *len)));
    }
    Json(json!({"object": "list", "data": data})).into_response()
}

/// `DELETE /v1/samplers/{id}`.
pub async fn remove(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    if let Err(e) = st.authorize(&headers) {
        return e.into_response();
    }
    let removed = st
        .samplers
        .modules
        .lock()
        .ok()
        .and_then(|mut m| m.remove(&id));
    match removed {
        Some(_) => Json(json!({"id": id, "object": "sampler", "deleted": true})).into_response(),
        None => ApiError::not_found(
            format!("no uploaded sampler `{}`", sanitize(&id)),
            "sampler_not_found",
        )
        .into_response(),
    }
}
