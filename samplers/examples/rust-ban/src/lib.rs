//! The "ban" Kiln sampler in Rust (sampler ABI v1, see `sdk/sampler/ABI.md`).
//!
//! Policy: greedy over the full logits row, except that the token ids listed in the config
//! (`{"ban": [7042, 12]}`) are never chosen. An empty config bans nothing.
//!
//! Build: `cargo build --release --target wasm32-unknown-unknown`.

#![no_std]

extern crate alloc;

use alloc::vec;
use alloc::vec::Vec;
use kiln_sampler::json::{self, Value};
use kiln_sampler::{export_sampler, Choice, Error, Sampler, View};

const SHAPE: &str = r#"ban: config must be {"ban": [token ids]}"#;

/// Greedy with a list of banned tokens.
pub struct Ban {
    /// `banned[id]`: the token is never chosen.
    banned: Vec<bool>,
}

impl Sampler for Ban {
    fn init(config: &[u8], _seed: u64, n_vocab: usize) -> Result<Self, Error> {
        let mut banned = vec![false; n_vocab];
        let config = json::parse_config(config).map_err(|_| Error::new(SHAPE))?;
        for (key, value) in config.as_object().unwrap_or_default() {
            let ids = match (key.as_str(), value) {
                ("ban", Value::Array(ids)) => ids,
                _ => return Err(Error::new(SHAPE)),
            };
            for id in ids {
                let id = id.as_f64().ok_or_else(|| Error::new(SHAPE))?;
                if id.is_sign_negative() {
                    return Err(Error::new(SHAPE));
                }
                if id >= n_vocab as f64 {
                    return Err(Error::new("ban: token id out of range"));
                }
                // A whole number (`f64::fract` is not in `core`).
                if id != (id as u64) as f64 {
                    return Err(Error::new(SHAPE));
                }
                banned[id as usize] = true;
            }
        }
        Ok(Ban { banned })
    }

    fn sample(&mut self, view: View<'_>) -> Result<Choice, Error> {
        let View::Full(logits) = view else {
            return Err(Error::new("ban: expected the full view"));
        };
        let mut best: Option<(usize, f32)> = None;
        for (id, &logit) in logits.iter().enumerate() {
            // First maximum wins; NaN and -inf never do.
            if !self.banned[id] && logit > best.map_or(f32::NEG_INFINITY, |(_, l)| l) {
                best = Some((id, logit));
            }
        }
        match best {
            Some((id, _)) => Ok(Choice::Token(id as u32)),
            None => Err(Error::new("ban: every token is banned or -inf")),
        }
    }

    fn accept(&mut self, _token: u32) {}

    fn reset(&mut self) {}
}

export_sampler!(Ban);
