//! The built-in samplers, compiled from `samplers/builtin` by `host/runtime/build.rs` and embedded in
//! the binary, and the mapping of the CLI's sampling flags onto them.

use super::params::SamplingParams;
use super::{SamplerError, SamplerModule};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

// Defines `BUILTINS: &[(&str, &[u8])]`: (name, module bytes).
include!(concat!(env!("OUT_DIR"), "/builtin_samplers.rs"));

/// The names of the built-in samplers.
pub fn names() -> Vec<&'static str> {
    BUILTINS.iter().map(|(n, _)| *n).collect()
}

/// The module bytes of built-in sampler `name`.
pub fn bytes(name: &str) -> Option<&'static [u8]> {
    BUILTINS.iter().find(|(n, _)| *n == name).map(|(_, b)| *b)
}

/// Loads built-in sampler `name` (once per process); None if there is no such built-in.
pub fn load(name: &str) -> Option<Result<Arc<SamplerModule>, SamplerError>> {
    static LOADED: OnceLock<Mutex<HashMap<&'static str, Arc<SamplerModule>>>> = OnceLock::new();
    let (key, wasm) = BUILTINS.iter().find(|(n, _)| *n == name)?;
    let loaded = LOADED.get_or_init(Default::default);
    if let Some(m) = loaded.lock().unwrap_or_else(|p| p.into_inner()).get(key) {
        return Some(Ok(m.clone()));
    }
    let r = SamplerModule::load(key, wasm);
    if let Ok(m) = &r {
        loaded
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key, m.clone());
    }
    Some(r)
}

/// Whether the settings choose plain greedy decoding (temperature ≤ 0, no penalties), which
/// the `greedy` built-in does on a tiny top-N view.
pub fn is_plain_greedy(p: &SamplingParams) -> bool {
    let greedy = p.temperature.is_nan() || p.temperature <= 0.0;
    let penalties = p.penalty_last_n > 0
        && (p.repeat_penalty != 1.0 || p.frequency_penalty != 0.0 || p.presence_penalty != 0.0);
    greedy && !penalties
}

/// The `chain` configuration (JSON) of the CLI's sampling settings.
pub fn chain_config(p: &SamplingParams) -> String {
    // serde_json writes non-finite floats as null; the flags were checked to be finite.
    serde_json::json!({
        "temperature": p.temperature,
        "top_k": p.top_k,
        "top_p": p.top_p,
        "min_p": p.min_p,
        "repeat_penalty": p.repeat_penalty,
        "repeat_last_n": p.penalty_last_n,
        "frequency_penalty": p.frequency_penalty,
        "presence_penalty": p.presence_penalty,
    })
    .to_string()
}

/// The built-in sampler and configuration that implement the CLI's sampling settings:
/// `greedy` for plain greedy decoding, else `chain`.
pub fn for_params(p: &SamplingParams) -> (&'static str, String) {
    if is_plain_greedy(p) {
        ("greedy", String::new())
    } else {
        ("chain", chain_config(p))
    }
}
