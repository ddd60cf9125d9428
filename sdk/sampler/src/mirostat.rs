//! Mirostat 2.0 (Basu et al., 2021) with llama.cpp's semantics: the logits are divided by
//! the temperature, softmaxed, and the tokens whose surprise `-log2 p` exceeds `mu` are cut
//! (the best one always stays); the draw is from the renormalised rest, and `mu` moves by
//! `eta` times the gap between the chosen token's surprise (after renormalising) and `tau`.
//! `mu` starts at `2 tau`.

use crate::chain::{better, sanitize, sort_cands, Cand, Transcript};
use crate::json::{parse_config, Fields};
use crate::math::{exp_fast as exp, ln, log2f};
use crate::rng::Rng;
use crate::stop::StopStrings;
use crate::{host, Choice, Error, Sampler, View, ViewKind};
use alloc::vec::Vec;

/// Mirostat 2.0 state for one sequence.
#[derive(Debug, Clone)]
pub struct Mirostat {
    tau: f32,
    eta: f32,
    temperature: f32,
    mu: f32,
    seed: u64,
    rng: Rng,
    cand: Vec<Cand>,
    keys: Vec<u64>,
    spare: Vec<u64>,
}

impl Mirostat {
    /// Target surprise `tau`, learning rate `eta`, temperature applied first (≤ 0: greedy).
    pub fn new(tau: f32, eta: f32, temperature: f32, seed: u64) -> Self {
        Mirostat {
            tau,
            eta,
            temperature,
            mu: 2.0 * tau,
            seed,
            rng: Rng::new(seed),
            cand: Vec::new(),
            keys: Vec::new(),
            spare: Vec::new(),
        }
    }

    /// The current maximum surprise `mu`.
    pub fn mu(&self) -> f32 {
        self.mu
    }

    /// Samples from a full row of logits (index = token id); an empty row gives 0.
    pub fn sample(&mut self, row: &[f32]) -> u32 {
        let t = self.temperature;
        let greedy = t.is_nan() || t <= 0.0;
        // Scaled logits: l / t (greedy keeps only the best, as llama.cpp's temperature 0).
        let scale = if greedy { 1.0 } else { 1.0 / f64::from(t) };
        let mut best: Option<Cand> = None;
        for (id, &l) in (0..=u32::MAX).zip(row) {
            let c = Cand {
                id,
                logit: sanitize(l),
            };
            if best.is_none_or(|b| better(&c, &b).is_lt()) {
                best = Some(c);
            }
        }
        let Some(best) = best else {
            return 0;
        };
        let max = f64::from(best.logit);
        if greedy || best.logit == f32::NEG_INFINITY {
            self.update(0.0);
            return best.id;
        }
        // log of the softmax normaliser, relative to the maximum.
        let z: f64 = row
            .iter()
            .map(|&l| {
                let l = sanitize(l);
                if l == f32::NEG_INFINITY {
                    0.0
                } else {
                    exp((f64::from(l) - max) * scale)
                }
            })
            .sum();
        // -log2 p <= mu  ⇔  (l - max)·scale >= ln z - mu·ln 2.
        let cut = ln(z) - f64::from(self.mu) * core::f64::consts::LN_2;
        self.cand.clear();
        self.cand
            .extend((0..=u32::MAX).zip(row).filter_map(|(id, &l)| {
                let l = sanitize(l);
                (l != f32::NEG_INFINITY && (f64::from(l) - max) * scale >= cut)
                    .then_some(Cand { id, logit: l })
            }));
        if self.cand.is_empty() {
            self.cand.push(best);
        }
        sort_cands(&mut self.cand, &mut self.keys, &mut self.spare);
        let weight = |c: &Cand| exp((f64::from(c.logit) - max) * scale);
        let total: f64 = self.cand.iter().map(weight).sum();
        let u = self.rng.next_f64() * total;
        let mut acc = 0.0;
        let mut chosen = self.cand[self.cand.len() - 1];
        for c in &self.cand {
            acc += weight(c);
            if u < acc {
                chosen = *c;
                break;
            }
        }
        let p = (weight(&chosen) / total) as f32;
        self.update(-log2f(p));
        chosen.id
    }

    fn update(&mut self, surprise: f32) {
        let mu = self.mu - self.eta * (surprise - self.tau);
        // Keep mu usable whatever the inputs (NaN would freeze the cut).
        self.mu = if mu.is_finite() { mu } else { 2.0 * self.tau };
    }

    /// Restarts: `mu = 2 tau`, random stream from the seed.
    pub fn reset(&mut self) {
        self.mu = 2.0 * self.tau;
        self.rng = Rng::new(self.seed);
    }
}

/// The `mirostat` policy. Configuration keys: `tau` (5.0), `eta` (0.1), `temperature` (0.8,
/// as llama.cpp's default; ≤ 0 = greedy), `stop` (strings). Uses the full view: the
/// normaliser and the surprise cut need the whole distribution.
#[derive(Debug, Clone)]
pub struct MirostatSampler {
    mirostat: Mirostat,
    stop: StopStrings,
    transcript: Transcript,
    bytes: Vec<u8>,
}

impl Sampler for MirostatSampler {
    fn init(config: &[u8], seed: u64, _n_vocab: usize) -> Result<Self, Error> {
        let v = parse_config(config)?;
        let mut f = Fields::new(&v, "mirostat")?;
        let tau = f.f32("tau", 5.0)?;
        let eta = f.f32("eta", 0.1)?;
        let temperature = f.f32("temperature", 0.8)?;
        let stop = StopStrings::from_value(f.value("stop"))?;
        f.finish()?;
        if tau < 0.0 || eta < 0.0 {
            return Err(Error::new("mirostat: tau and eta must not be negative"));
        }
        Ok(MirostatSampler {
            mirostat: Mirostat::new(tau, eta, temperature, seed),
            stop,
            transcript: Transcript::default(),
            bytes: Vec::new(),
        })
    }

    fn view(&self) -> ViewKind {
        ViewKind::Full
    }

    fn sample(&mut self, view: View<'_>) -> Result<Choice, Error> {
        let View::Full(row) = view else {
            return Err(Error::new("mirostat needs the full view"));
        };
        let id = self.mirostat.sample(row);
        if !self.stop.is_empty() {
            host::token_bytes(id, &mut self.bytes);
            if self.stop.hits(&self.bytes) {
                self.transcript.chose_none();
                return Ok(Choice::Stop);
            }
        }
        self.transcript.chose(id);
        Ok(Choice::Token(id))
    }

    fn accept(&mut self, token: u32) {
        if self.transcript.accepted(token) {
            self.stop.push(&self.bytes);
        } else {
            self.stop.clear();
        }
    }

    fn reset(&mut self) {
        self.mirostat.reset();
        self.stop.clear();
        self.transcript = Transcript::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::math::ln;
    use crate::mock;
    use alloc::vec;

    fn ln_probs(p: &[f64]) -> Vec<f32> {
        p.iter().map(|&x| ln(x) as f32).collect()
    }

    #[test]
    fn truncates_by_surprise_and_draws_from_the_rest() {
        // Surprises 1, 2, 3, 3 bits; mu = 2 tau = 2.2 keeps tokens 0 and 1 (p 2/3, 1/3).
        let row = ln_probs(&[0.5, 0.25, 0.125, 0.125]);
        let mut m = Mirostat::new(1.1, 0.0, 1.0, 9);
        assert_eq!(m.mu(), 2.2);
        let mut counts = [0usize; 4];
        for _ in 0..30_000 {
            counts[m.sample(&row) as usize] += 1;
        }
        assert_eq!(counts[2] + counts[3], 0, "{counts:?}");
        let share = counts[0] as f64 / 30_000.0;
        assert!((share - 2.0 / 3.0).abs() < 0.015, "{counts:?}");
    }

    #[test]
    fn mu_follows_the_observed_surprise() {
        let row = ln_probs(&[0.5, 0.25, 0.125, 0.125]);
        for seed in 0..10 {
            let mut m = Mirostat::new(1.1, 1.0, 1.0, seed);
            let t = m.sample(&row);
            // After renormalising over {0, 1}: p = 2/3 or 1/3.
            let p: f64 = if t == 0 { 2.0 / 3.0 } else { 1.0 / 3.0 };
            let surprise = -ln(p) / core::f64::consts::LN_2;
            assert!((f64::from(m.mu()) - (2.2 - (surprise - 1.1))).abs() < 1e-5);
        }
        // Deterministic, and reset restarts.
        let run = |seed| {
            let mut m = Mirostat::new(3.0, 0.1, 0.8, seed);
            (0..50).map(|_| m.sample(&row)).collect::<Vec<_>>()
        };
        assert_eq!(run(5), run(5));
        let mut m = Mirostat::new(3.0, 0.1, 0.8, 5);
        let a: Vec<u32> = (0..50).map(|_| m.sample(&row)).collect();
        m.reset();
        assert_eq!(m.mu(), 6.0);
        let b: Vec<u32> = (0..50).map(|_| m.sample(&row)).collect();
        assert_eq!(a, b);
    }

    #[test]
    fn small_tau_is_nearly_greedy_and_zero_temperature_is_greedy() {
        let row = [0.0f32, 3.0, 2.9, f32::NAN, -1.0];
        let mut m = Mirostat::new(0.0, 0.1, 1.0, 1);
        for _ in 0..100 {
            assert_eq!(m.sample(&row), 1);
        }
        let mut m = Mirostat::new(5.0, 0.1, 0.0, 1);
        for _ in 0..100 {
            assert_eq!(m.sample(&row), 1);
        }
        assert_eq!(m.sample(&[]), 0);
        assert_eq!(Mirostat::new(5.0, 0.1, 1.0, 1).sample(&[f32::NAN; 3]), 0);
    }

    #[test]
    fn policy_config_and_stop() {
        mock::set_vocab(&[&b"a"[..], b"b", b"STOP"]);
        assert!(MirostatSampler::init(
            br#"{"tau": 3, "eta": 0.2, "temperature": 1, "stop": ["STOP"]}"#,
            1,
            3
        )
        .is_ok());
        for bad in [&br#"{"tau": -1}"#[..], br#"{"mu": 1}"#, br#"{"eta": "x"}"#] {
            assert!(MirostatSampler::init(bad, 1, 3).is_err());
        }
        let mut s = MirostatSampler::init(br#"{"temperature": 0, "stop": "STOP"}"#, 1, 3).unwrap();
        assert_eq!(s.view(), ViewKind::Full);
        assert_eq!(
            s.sample(View::Full(&mut [1.0, 0.0, 0.0])),
            Ok(Choice::Token(0))
        );
        s.accept(0);
        assert_eq!(s.sample(View::Full(&mut [0.0, 0.0, 1.0])), Ok(Choice::Stop));
        assert!(s
            .sample(View::Top {
                ids: &[0],
                logits: &mut [0.0],
                lse: 0.0
            })
            .is_err());
        let _ = vec![0u8];
    }
}
