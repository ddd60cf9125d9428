//! Sampling settings in llama.cpp's terms, which configure the built-in `chain` sampler.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;

/// Sampling settings; `Default` gives llama.cpp's defaults with a random seed.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    /// Softmax temperature; ≤ 0 means greedy (argmax).
    pub temperature: f32,
    /// Keep the k most likely tokens; ≤ 0 turns it off.
    pub top_k: i32,
    /// Keep the smallest head whose probability reaches p; ≥ 1.0 turns it off.
    pub top_p: f32,
    /// Drop tokens less likely than `min_p` times the most likely one; ≤ 0 turns it off.
    pub min_p: f32,
    /// Repetition penalty for tokens among the last `penalty_last_n`; 1.0 turns it off.
    pub repeat_penalty: f32,
    /// Subtracted from a recent token's logit once per occurrence; 0 turns it off.
    pub frequency_penalty: f32,
    /// Subtracted once from the logit of any recent token; 0 turns it off.
    pub presence_penalty: f32,
    /// How many accepted tokens the penalties look back at; 0 turns penalties off.
    pub penalty_last_n: usize,
    /// Seed of the random draw.
    pub seed: u64,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            temperature: 0.8,
            top_k: 40,
            top_p: 0.95,
            min_p: 0.05,
            repeat_penalty: 1.0,
            frequency_penalty: 0.0,
            presence_penalty: 0.0,
            penalty_last_n: 64,
            seed: random_seed(),
        }
    }
}

/// A seed that differs from run to run (from the OS-seeded hasher keys and the clock).
pub fn random_seed() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    RandomState::new().hash_one(nanos)
}
