//! Native token sampling: the test oracle of the WASM `chain` and `greedy` samplers (compiled
//! for tests only; generation always goes through a WASM sampler).
//!
//! It follows the semantics of llama.cpp's default sampler chain:
//! penalties → top-k → top-p → min-p → temperature → softmax → seeded draw.
//! Greedy decoding (temperature ≤ 0) is the argmax after penalties, ties going to the lowest id.
//! Top-p and min-p look at the distribution *before* temperature, as in llama.cpp.
//!
//! Randomness comes from our own xoshiro256** generator seeded through splitmix64, so a seed
//! gives the same tokens whatever the dependency versions. Logits that are NaN count as −∞ and
//! +∞ counts as the largest finite value; no input makes the sampler panic.
//!
//! Performance: for a full row (vocab ~152k) nothing sorts the whole vocabulary: top-k uses a
//! linear-time selection, and without top-k the min-p cut (which needs only the maximum) comes
//! first and top-p sorts only as many leading candidates as it needs.

use std::collections::{HashMap, VecDeque};

use super::params::SamplingParams;

/// xoshiro256** seeded with splitmix64: small, fast, and stable across dependency updates.
#[derive(Debug, Clone)]
struct Rng {
    s: [u64; 4],
}

impl Rng {
    fn new(seed: u64) -> Self {
        let mut x = seed;
        let mut next = || {
            x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        };
        Rng {
            s: [next(), next(), next(), next()],
        }
    }

    fn next_u64(&mut self) -> u64 {
        let s = &mut self.s;
        let result = s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        result
    }

    /// Uniform in [0, 1).
    fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
}

/// A candidate token and its (adjusted) logit.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Cand {
    id: u32,
    logit: f32,
}

/// Total order "better first": higher logit, then lower id.
fn better(a: &Cand, b: &Cand) -> std::cmp::Ordering {
    b.logit.total_cmp(&a.logit).then(a.id.cmp(&b.id))
}

/// NaN → −∞, +∞ → largest finite (so that softmax stays defined).
fn sanitize(l: f32) -> f32 {
    if l.is_nan() {
        f32::NEG_INFINITY
    } else if l == f32::INFINITY {
        f32::MAX
    } else {
        l
    }
}

/// How many leading candidates top-p sorts before trying more.
const TOP_P_FIRST_CHUNK: usize = 256;

/// A stateful sampler: settings, penalty history and random state.
#[derive(Debug, Clone)]
pub struct Sampler {
    params: SamplingParams,
    rng: Rng,
    /// The last `penalty_last_n` accepted tokens, oldest first.
    history: VecDeque<u32>,
    /// Occurrences of each token in `history`.
    counts: HashMap<u32, u32>,
    /// Working copy of a full row.
    row: Vec<f32>,
    /// Working candidate set.
    cand: Vec<Cand>,
}

impl Sampler {
    /// A sampler for a vocabulary of `n_vocab` tokens (used to size its buffers).
    pub fn new(params: SamplingParams, n_vocab: usize) -> Self {
        let rng = Rng::new(params.seed);
        Sampler {
            history: VecDeque::with_capacity(params.penalty_last_n.min(1 << 16)),
            params,
            rng,
            counts: HashMap::new(),
            row: Vec::with_capacity(n_vocab),
            cand: Vec::with_capacity(n_vocab.min(1 << 12)),
        }
    }

    /// Samples a token from a full row of logits (index = token id). An empty row gives 0.
    pub fn sample(&mut self, logits: &[f32]) -> u32 {
        match self.prepare_row(logits) {
            Some(id) => id,
            None => self.draw(),
        }
    }

    /// Samples from only the head of a row: `ids[i]` has logit `logits[i]` (extra entries of
    /// the longer slice are ignored). Filters and normalisation see only these candidates.
    /// An empty head gives 0.
    #[allow(dead_code)] // for backends that return only the top-N logits; not yet called
    pub fn sample_top(&mut self, ids: &[u32], logits: &[f32]) -> u32 {
        match self.prepare_head(ids, logits) {
            Some(id) => id,
            None => self.draw(),
        }
    }

    /// Records a generated (or prompt) token in the penalty history.
    pub fn accept(&mut self, token: u32) {
        let n = self.params.penalty_last_n;
        if n == 0 {
            return;
        }
        while self.history.len() >= n {
            if let Some(old) = self.history.pop_front() {
                if let Some(c) = self.counts.get_mut(&old) {
                    *c -= 1;
                    if *c == 0 {
                        self.counts.remove(&old);
                    }
                }
            }
        }
        self.history.push_back(token);
        *self.counts.entry(token).or_insert(0) += 1;
    }

    /// Forgets the penalty history and restarts the random sequence from the seed.
    pub fn reset(&mut self) {
        self.history.clear();
        self.counts.clear();
        self.rng = Rng::new(self.params.seed);
    }

    fn penalties_active(&self) -> bool {
        let p = &self.params;
        p.penalty_last_n > 0
            && !self.counts.is_empty()
            && (p.repeat_penalty != 1.0 || p.frequency_penalty != 0.0 || p.presence_penalty != 0.0)
    }

    /// llama.cpp's penalties for a token seen `count` times (count > 0).
    fn penalize(&self, logit: f32, count: u32) -> f32 {
        let p = &self.params;
        let mut l = logit;
        if p.repeat_penalty != 1.0 {
            if l <= 0.0 {
                l *= p.repeat_penalty;
            } else {
                l /= p.repeat_penalty;
            }
        }
        sanitize(l - count as f32 * p.frequency_penalty - p.presence_penalty)
    }

    fn greedy(&self) -> bool {
        // NaN temperature counts as greedy too.
        self.params.temperature.is_nan() || self.params.temperature <= 0.0
    }

    /// Full-row path up to the candidate set; returns the token when already decided.
    fn prepare_row(&mut self, logits: &[f32]) -> Option<u32> {
        let mut row = std::mem::take(&mut self.row);
        row.clear();
        row.extend(logits.iter().map(|&l| sanitize(l)));
        if self.penalties_active() {
            for (&id, &count) in &self.counts {
                if let Some(l) = row.get_mut(id as usize) {
                    *l = self.penalize(*l, count);
                }
            }
        }
        let decided = self.prepare_from_row(&row);
        self.row = row;
        decided
    }

    fn prepare_from_row(&mut self, row: &[f32]) -> Option<u32> {
        if row.is_empty() {
            return Some(0);
        }
        if self.greedy() {
            // First maximum wins: ties go to the lowest id.
            let mut best = 0;
            for (i, &l) in row.iter().enumerate() {
                if l > row[best] {
                    best = i;
                }
            }
            return Some(best as u32);
        }
        let ids = 0..=u32::MAX;
        let k = self.params.top_k;
        self.cand.clear();
        if k > 0 && (k as usize) < row.len() {
            // Linear-time top-k: keep a buffer of at most 2k candidates, compacting it to
            // the best k whenever it fills; `floor` is the k-th best logit seen so far.
            let k = k as usize;
            let mut floor = f32::NEG_INFINITY;
            let mut full = false;
            for (id, &l) in ids.zip(row) {
                // Later ids lose ties, so an equal logit never beats the floor.
                if !full || l > floor {
                    self.cand.push(Cand { id, logit: l });
                    if self.cand.len() >= 2 * k {
                        self.cand.select_nth_unstable_by(k - 1, better);
                        self.cand.truncate(k);
                        floor = self.cand[k - 1].logit;
                        full = true;
                    }
                }
            }
            self.filter(None);
        } else {
            // No top-k: cut by min-p while building the candidates (its threshold needs only
            // the maximum), and take top-p's normaliser from the whole row.
            let max = row.iter().fold(f32::NEG_INFINITY, |m, &l| m.max(l));
            let min_p = self.params.min_p;
            let threshold = if min_p > 0.0 && max > f32::NEG_INFINITY {
                (max + min_p.ln()).min(max)
            } else {
                f32::NEG_INFINITY
            };
            let z = (self.params.top_p < 1.0 && max > f32::NEG_INFINITY)
                .then(|| row.iter().map(|&l| f64::from((l - max).exp())).sum());
            self.cand.extend(
                ids.zip(row)
                    .filter(|&(_, &l)| l >= threshold)
                    .map(|(id, &l)| Cand { id, logit: l }),
            );
            self.filter(z);
        }
        None
    }

    /// Head path up to the candidate set; returns the token when already decided.
    fn prepare_head(&mut self, ids: &[u32], logits: &[f32]) -> Option<u32> {
        self.cand.clear();
        self.cand
            .extend(ids.iter().zip(logits).map(|(&id, &l)| Cand {
                id,
                logit: sanitize(l),
            }));
        if self.cand.is_empty() {
            return Some(0);
        }
        if self.penalties_active() {
            let mut cand = std::mem::take(&mut self.cand);
            for c in &mut cand {
                if let Some(&count) = self.counts.get(&c.id) {
                    c.logit = self.penalize(c.logit, count);
                }
            }
            self.cand = cand;
        }
        if self.greedy() {
            return self.cand.iter().copied().min_by(better).map(|c| c.id);
        }
        self.filter(None);
        None
    }

    /// Top-k, top-p and min-p on `self.cand` (non-empty), in llama.cpp's order.
    ///
    /// Top-p and min-p both keep a prefix of the candidates in "better" order, and min-p's
    /// threshold depends only on the maximum, which top-p always keeps; so the result of
    /// top-p then min-p is the shorter of the two prefixes. Top-p's probabilities are
    /// normalised over all candidates it receives, which costs one linear pass unless the
    /// caller passes that normaliser as `z_hint` (relative to the candidates' maximum).
    fn filter(&mut self, z_hint: Option<f64>) {
        let cand = &mut self.cand;
        let mut sorted = false;
        let k = self.params.top_k;
        if k > 0 && (k as usize) < cand.len() {
            let k = k as usize;
            cand.select_nth_unstable_by(k - 1, better);
            cand.truncate(k);
        }
        if k > 0 && cand.len() <= TOP_P_FIRST_CHUNK.max(k as usize) {
            cand.sort_unstable_by(better);
            sorted = true;
        }
        if cand.len() <= 1 {
            return;
        }
        let top_p = self.params.top_p;
        let min_p = self.params.min_p;
        let use_top_p = top_p < 1.0;
        let use_min_p = min_p > 0.0;
        if !use_top_p && !use_min_p {
            return;
        }
        let max = if sorted {
            cand[0].logit
        } else {
            cand.iter().fold(f32::NEG_INFINITY, |m, c| m.max(c.logit))
        };
        if max == f32::NEG_INFINITY {
            return; // all impossible: the draw picks the lowest id
        }
        // Top-p's normaliser, over the candidates top-p receives (before min-p's cut).
        let z: f64 = match z_hint {
            Some(z) => z,
            None if use_top_p => cand.iter().map(|c| f64::from((c.logit - max).exp())).sum(),
            None => 1.0,
        };
        if use_min_p {
            // p_i ≥ min_p · p_max  ⇔  logit_i ≥ max + ln(min_p); never drop the maximum.
            let threshold = (max + min_p.ln()).min(max);
            if sorted {
                let keep = cand.partition_point(|c| c.logit >= threshold).max(1);
                cand.truncate(keep);
            } else {
                cand.retain(|c| c.logit >= threshold);
            }
        }
        if !use_top_p {
            return;
        }
        let target = f64::from(top_p);
        let mut cum = 0.0f64;
        let mut done = if sorted { cand.len() } else { 0 };
        let mut want = TOP_P_FIRST_CHUNK;
        let mut i = 0;
        loop {
            if done < cand.len() {
                // Sort the next chunk of best candidates only.
                let end = want.min(cand.len());
                let rest = &mut cand[done..];
                if end - done < rest.len() {
                    rest.select_nth_unstable_by(end - done - 1, better);
                }
                cand[done..end].sort_unstable_by(better);
                done = end;
                want = want.saturating_mul(8);
            }
            while i < done {
                cum += f64::from((cand[i].logit - max).exp()) / z;
                i += 1;
                if cum >= target {
                    cand.truncate(i);
                    return;
                }
            }
            if done == cand.len() {
                return; // never reached p (rounding): keep everything
            }
        }
    }

    /// Temperature, softmax and the seeded draw over `self.cand` (non-empty).
    fn draw(&mut self) -> u32 {
        let cand = &self.cand;
        let t = f64::from(self.params.temperature);
        let max = cand.iter().fold(f32::NEG_INFINITY, |m, c| m.max(c.logit));
        let lowest = cand.iter().map(|c| c.id).min().unwrap_or(0);
        if max == f32::NEG_INFINITY {
            return lowest;
        }
        let weight = |c: &Cand| {
            if c.logit == f32::NEG_INFINITY {
                0.0
            } else {
                ((f64::from(c.logit) - f64::from(max)) / t).exp()
            }
        };
        let total: f64 = cand.iter().map(weight).sum();
        if !(total > 0.0 && total.is_finite()) {
            return lowest;
        }
        let u = self.rng.next_f64() * total;
        let mut acc = 0.0;
        let mut last = lowest;
        for c in cand {
            let w = weight(c);
            if w > 0.0 {
                acc += w;
                last = c.id;
                if u < acc {
                    return c.id;
                }
            }
        }
        last
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(seed: u64) -> SamplingParams {
        SamplingParams {
            seed,
            ..SamplingParams::default()
        }
    }

    fn plain(seed: u64) -> SamplingParams {
        SamplingParams {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            ..params(seed)
        }
    }

    fn greedy() -> SamplingParams {
        SamplingParams {
            temperature: 0.0,
            ..params(1)
        }
    }

    fn ln_probs(p: &[f64]) -> Vec<f32> {
        p.iter().map(|&x| x.ln() as f32).collect()
    }

    /// Deterministic pseudo-random logits.
    fn random_row(n: usize, seed: u64, scale: f32) -> Vec<f32> {
        let mut r = Rng::new(seed);
        (0..n)
            .map(|_| (r.next_f64() as f32 - 0.5) * scale)
            .collect()
    }

    /// The candidate set the chain keeps for a full row, sorted by id.
    fn kept(s: &mut Sampler, row: &[f32]) -> Vec<u32> {
        assert!(s.prepare_row(row).is_none());
        let mut ids: Vec<u32> = s.cand.iter().map(|c| c.id).collect();
        ids.sort_unstable();
        ids
    }

    /// Straightforward reference of the filters: full sort, then top-k, top-p, min-p.
    fn reference_kept(p: &SamplingParams, row: &[f32]) -> Vec<u32> {
        let mut c: Vec<Cand> = row
            .iter()
            .enumerate()
            .map(|(i, &l)| Cand {
                id: i as u32,
                logit: sanitize(l),
            })
            .collect();
        c.sort_by(better);
        if p.top_k > 0 {
            c.truncate(p.top_k as usize);
        }
        if p.top_p < 1.0 {
            let max = f64::from(c[0].logit);
            let z: f64 = c.iter().map(|x| (f64::from(x.logit) - max).exp()).sum();
            let mut cum = 0.0;
            for i in 0..c.len() {
                cum += (f64::from(c[i].logit) - max).exp() / z;
                if cum >= f64::from(p.top_p) {
                    c.truncate(i + 1);
                    break;
                }
            }
        }
        if p.min_p > 0.0 {
            let pmax = 1.0;
            let max = f64::from(c[0].logit);
            c.retain(|x| (f64::from(x.logit) - max).exp() >= f64::from(p.min_p) * pmax - 1e-12);
        }
        let mut ids: Vec<u32> = c.iter().map(|x| x.id).collect();
        ids.sort_unstable();
        ids
    }

    #[test]
    fn greedy_picks_argmax_with_lowest_id_on_ties() {
        let mut s = Sampler::new(greedy(), 5);
        assert_eq!(s.sample(&[0.1, 2.0, -1.0, 1.9, 0.0]), 1);
        assert_eq!(s.sample(&[3.0, 1.0, 3.0]), 0);
        assert_eq!(s.sample_top(&[7, 3, 9], &[1.0, 5.0, 5.0]), 3);
        assert_eq!(s.sample_top(&[9, 3], &[5.0, 5.0]), 3);
        let row = random_row(151_936, 3, 20.0);
        let arg = (0..row.len())
            .max_by(|&a, &b| row[a].total_cmp(&row[b]))
            .unwrap();
        assert_eq!(s.sample(&row), arg as u32);
    }

    #[test]
    fn penalties_change_the_pick() {
        let row = [2.0f32, 1.9, -1.0, 0.5];
        let mut s = Sampler::new(
            SamplingParams {
                repeat_penalty: 1.1,
                ..greedy()
            },
            4,
        );
        assert_eq!(s.sample(&row), 0);
        s.accept(0);
        assert_eq!(s.sample(&row), 1); // 2.0 / 1.1 < 1.9
        assert_eq!(s.sample_top(&[0, 1], &[2.0, 1.9]), 1);
        // Negative logits are multiplied: -1.0 → -1.1, still below.
        let mut s = Sampler::new(
            SamplingParams {
                repeat_penalty: 2.0,
                ..greedy()
            },
            2,
        );
        s.accept(0);
        assert_eq!(s.sample(&[-1.0, -1.5]), 1); // -2.0 < -1.5
        assert_eq!(s.sample(&[-1.0, -3.0]), 0); // -2.0 > -3.0

        // Frequency and presence: subtract count·freq + presence.
        let mut s = Sampler::new(
            SamplingParams {
                frequency_penalty: 0.15,
                presence_penalty: 0.0,
                ..greedy()
            },
            3,
        );
        s.accept(0);
        assert_eq!(s.sample(&[1.0, 0.8, 0.0]), 0); // 1.0 - 0.15 = 0.85 > 0.8
        s.reset();
        s.accept(0);
        s.accept(0);
        assert_eq!(s.sample(&[1.0, 0.8, 0.0]), 1); // 1.0 - 0.3 = 0.7 < 0.8
        let mut s = Sampler::new(
            SamplingParams {
                presence_penalty: 0.5,
                ..greedy()
            },
            3,
        );
        s.accept(2);
        s.accept(2);
        s.accept(2);
        assert_eq!(s.sample(&[0.0, 0.1, 0.55]), 1); // 0.55 - 0.5 = 0.05

        // The window forgets old tokens.
        let mut s = Sampler::new(
            SamplingParams {
                repeat_penalty: 10.0,
                penalty_last_n: 2,
                ..greedy()
            },
            4,
        );
        s.accept(0);
        assert_eq!(s.sample(&[2.0, 1.0, 0.0, 0.0]), 1);
        s.accept(3);
        s.accept(3);
        assert_eq!(s.sample(&[2.0, 1.0, 0.0, 0.0]), 0);
        // penalty_last_n = 0 turns penalties off.
        let mut s = Sampler::new(
            SamplingParams {
                repeat_penalty: 10.0,
                penalty_last_n: 0,
                ..greedy()
            },
            2,
        );
        s.accept(0);
        assert_eq!(s.sample(&[2.0, 1.0]), 0);
    }

    #[test]
    fn top_k_one_equals_greedy() {
        let mut g = Sampler::new(greedy(), 1000);
        for seed in 0..20 {
            let row = random_row(1000, seed, 8.0);
            let mut s = Sampler::new(
                SamplingParams {
                    top_k: 1,
                    temperature: 1.5,
                    ..params(seed)
                },
                1000,
            );
            assert_eq!(s.sample(&row), g.sample(&row));
            let ids: Vec<u32> = (0..1000).collect();
            assert_eq!(s.sample_top(&ids, &row), g.sample(&row));
        }
    }

    #[test]
    fn same_seed_same_sequence_different_seed_different() {
        let row = vec![0.0f32; 64];
        let run = |seed: u64| {
            let mut s = Sampler::new(plain(seed), 64);
            (0..100).map(|_| s.sample(&row)).collect::<Vec<_>>()
        };
        assert_eq!(run(7), run(7));
        assert_ne!(run(7), run(8));
        // reset restarts the sequence.
        let mut s = Sampler::new(plain(7), 64);
        let first: Vec<u32> = (0..10).map(|_| s.sample(&row)).collect();
        s.reset();
        let again: Vec<u32> = (0..10).map(|_| s.sample(&row)).collect();
        assert_eq!(first, again);
        // Default seeds differ between samplers.
        assert_ne!(params(0).seed, SamplingParams::default().seed);
        assert_ne!(
            SamplingParams::default().seed,
            SamplingParams::default().seed
        );
    }

    fn chi_square(counts: &[usize], probs: &[f64]) -> f64 {
        let n: usize = counts.iter().sum();
        counts
            .iter()
            .zip(probs)
            .map(|(&c, &p)| {
                let e = p * n as f64;
                (c as f64 - e).powi(2) / e
            })
            .sum()
    }

    #[test]
    fn draws_follow_the_distribution_after_temperature() {
        let probs = [0.1, 0.2, 0.3, 0.4];
        let row = ln_probs(&probs);
        for (t, expect) in [
            (1.0f32, probs.to_vec()),
            (0.5, probs.iter().map(|p| p * p / 0.3).collect::<Vec<_>>()),
            (2.0, {
                let s: f64 = probs.iter().map(|p: &f64| p.sqrt()).sum();
                probs.iter().map(|p| p.sqrt() / s).collect()
            }),
        ] {
            let mut s = Sampler::new(
                SamplingParams {
                    temperature: t,
                    ..plain(12345)
                },
                4,
            );
            let mut counts = [0usize; 4];
            for _ in 0..40_000 {
                counts[s.sample(&row) as usize] += 1;
            }
            // 3 degrees of freedom: P(chi² > 16.27) = 0.001.
            let chi = chi_square(&counts, &expect);
            assert!(chi < 16.27, "t={t} counts={counts:?} chi²={chi}");
        }
    }

    #[test]
    fn top_p_cutoff() {
        let row = ln_probs(&[0.5, 0.3, 0.15, 0.05]);
        let p = |top_p| SamplingParams {
            top_p,
            top_k: 0,
            min_p: 0.0,
            ..params(1)
        };
        assert_eq!(kept(&mut Sampler::new(p(0.75), 4), &row), [0, 1]);
        assert_eq!(kept(&mut Sampler::new(p(0.9), 4), &row), [0, 1, 2]);
        assert_eq!(kept(&mut Sampler::new(p(0.4), 4), &row), [0]);
        assert_eq!(kept(&mut Sampler::new(p(0.99), 4), &row), [0, 1, 2, 3]);
        // Draws only ever give kept tokens, and both of them.
        let mut s = Sampler::new(p(0.75), 4);
        let mut seen = [0usize; 4];
        for _ in 0..2000 {
            seen[s.sample(&row) as usize] += 1;
        }
        assert!(seen[0] > 0 && seen[1] > 0 && seen[2] == 0 && seen[3] == 0);
        // Top-p looks at the distribution before temperature.
        let hot = SamplingParams {
            temperature: 5.0,
            ..p(0.75)
        };
        assert_eq!(kept(&mut Sampler::new(hot, 4), &row), [0, 1]);
    }

    #[test]
    fn min_p_cutoff() {
        let row = ln_probs(&[0.5, 0.3, 0.15, 0.05]);
        let p = |min_p| SamplingParams {
            min_p,
            top_k: 0,
            top_p: 1.0,
            ..params(1)
        };
        // Threshold = min_p × 0.5.
        assert_eq!(kept(&mut Sampler::new(p(0.2), 4), &row), [0, 1, 2]);
        assert_eq!(kept(&mut Sampler::new(p(0.5), 4), &row), [0, 1]);
        assert_eq!(kept(&mut Sampler::new(p(0.05), 4), &row), [0, 1, 2, 3]);
        assert_eq!(kept(&mut Sampler::new(p(1.0), 4), &row), [0]);
        assert_eq!(kept(&mut Sampler::new(p(7.0), 4), &row), [0]);
        // With top-k on (sorted path) too.
        let with_k = SamplingParams { top_k: 3, ..p(0.2) };
        assert_eq!(kept(&mut Sampler::new(with_k, 4), &row), [0, 1, 2]);
    }

    #[test]
    fn fast_filters_match_a_full_sort_reference() {
        let settings = [
            (40, 0.95, 0.05),
            (0, 0.95, 0.05),
            (0, 0.9, 0.0),
            (0, 1.0, 0.1),
            (0, 0.999, 0.0),
            (300, 0.99, 0.0),
            (5000, 0.5, 0.0),
            (5000, 1.0, 0.0),
            (7, 1.0, 0.0),
        ];
        for (n, seed) in [(10usize, 1u64), (1000, 2), (5000, 3), (151_936, 4)] {
            for scale in [1.0f32, 10.0, 40.0] {
                let row = random_row(n, seed + scale as u64, scale);
                for &(top_k, top_p, min_p) in &settings {
                    let p = SamplingParams {
                        top_k,
                        top_p,
                        min_p,
                        ..params(9)
                    };
                    let want = reference_kept(&p, &row);
                    let mut s = Sampler::new(p.clone(), n);
                    assert_eq!(kept(&mut s, &row), want, "n={n} scale={scale} {p:?}");
                    // The head path over the whole row agrees.
                    let ids: Vec<u32> = (0..n as u32).collect();
                    assert!(s.prepare_head(&ids, &row).is_none());
                    let mut got: Vec<u32> = s.cand.iter().map(|c| c.id).collect();
                    got.sort_unstable();
                    assert_eq!(got, want, "head n={n} scale={scale} {p:?}");
                }
            }
        }
    }

    #[test]
    fn full_row_and_head_draw_alike() {
        let row = random_row(500, 11, 6.0);
        let ids: Vec<u32> = (0..500).collect();
        let mut a = Sampler::new(params(5), 500);
        let mut b = Sampler::new(params(5), 500);
        for _ in 0..50 {
            let x = a.sample(&row);
            assert_eq!(x, b.sample_top(&ids, &row));
            a.accept(x);
            b.accept(x);
        }
    }

    #[test]
    fn nan_and_infinite_logits_do_not_panic() {
        let nan = f32::NAN;
        let inf = f32::INFINITY;
        let rows: [&[f32]; 6] = [
            &[nan, 1.0, nan],
            &[nan, nan, nan],
            &[f32::NEG_INFINITY; 3],
            &[1.0, inf, 2.0, inf],
            &[-inf, nan, inf],
            &[],
        ];
        let all_params = [
            greedy(),
            params(1),
            plain(2),
            SamplingParams {
                top_k: 0,
                ..params(3)
            },
            SamplingParams {
                temperature: 1e-6,
                repeat_penalty: 0.0,
                frequency_penalty: f32::NAN,
                top_p: f32::NAN,
                min_p: f32::NAN,
                ..params(4)
            },
            SamplingParams {
                temperature: f32::INFINITY,
                ..params(4)
            },
        ];
        for p in &all_params {
            let mut s = Sampler::new(p.clone(), 4);
            s.accept(0);
            s.accept(2);
            for row in rows {
                let t = s.sample(row);
                assert!(row.is_empty() || (t as usize) < row.len());
                let ids: Vec<u32> = (10..10 + row.len() as u32).collect();
                let t = s.sample_top(&ids, row);
                assert!(row.is_empty() || ids.contains(&t));
            }
        }
        let mut s = Sampler::new(greedy(), 4);
        assert_eq!(s.sample(&[nan, 1.0, nan]), 1);
        assert_eq!(s.sample(&[1.0, inf, 2.0, inf]), 1);
        let mut s = Sampler::new(params(1), 4);
        for _ in 0..100 {
            assert_eq!(s.sample(&[nan, 1.0, nan]), 1);
            let t = s.sample(&[1.0, inf, 2.0, inf]);
            assert!(t == 1 || t == 3);
        }
    }

    #[test]
    #[ignore = "timing; run with --ignored --nocapture"]
    fn speed_on_a_large_vocab() {
        let row = random_row(151_936, 1, 30.0);
        for (name, p) in [
            ("default", params(1)),
            (
                "no top-k",
                SamplingParams {
                    top_k: 0,
                    ..params(1)
                },
            ),
            (
                "top-p only",
                SamplingParams {
                    top_k: 0,
                    min_p: 0.0,
                    ..params(1)
                },
            ),
            ("greedy", greedy()),
        ] {
            let mut s = Sampler::new(p, row.len());
            let start = std::time::Instant::now();
            for _ in 0..100 {
                let t = s.sample(&row);
                s.accept(t);
            }
            println!("{name}: {:?} per token", start.elapsed() / 100);
        }
    }
}
