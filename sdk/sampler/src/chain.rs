//! The standard sampling chain with llama.cpp's semantics:
//! logit bias → penalties → top-k → top-p → min-p → temperature → softmax → seeded draw.
//!
//! [`Chain`] mirrors the host's native sampler (`host/runtime/src/sampler/oracle.rs`, the test oracle) step
//! for step, so that for the same settings, seed, logits and accepted tokens it chooses the
//! same token: NaN logits count as −∞ and +∞ as the largest finite value; greedy decoding
//! (temperature ≤ 0 or NaN) is the argmax after penalties with ties to the lowest id; top-p
//! and min-p see the distribution before temperature; candidates are ordered "higher logit,
//! then lower id", and the draw walks them in the same order with the same random stream.
//! The only possible difference is the last bit of `exp`/`ln` against the platform's libm
//! (see [`crate::math`]), which can matter only for a value exactly on a cut-off.
//!
//! [`ChainSampler`] is the complete `chain` policy: configuration keys, view choice, stop
//! strings.

use crate::json::{is_integer, parse_config, Fields, Value};
use crate::math::{exp, expf, lnf};
use crate::rng::Rng;
use crate::sort::{select_nth, sort};
use crate::stop::StopStrings;
use crate::{host, Choice, Error, Sampler, View, ViewKind, MAX_TOP_N};
use alloc::collections::{BTreeMap, VecDeque};
use alloc::format;
use alloc::vec::Vec;
use core::cmp::Ordering;

/// Largest `repeat_last_n` (and the value of `-1`, "the whole sequence").
pub const MAX_PENALTY_LAST_N: usize = 1 << 20;
/// The top-N view asked for when top-k allows one (raised to top-k when larger).
pub const PREFERRED_TOP_N: usize = 1024;
/// How many leading candidates top-p sorts before trying more (as the host).
const TOP_P_FIRST_CHUNK: usize = 256;

/// Settings of the chain. `Default` gives llama.cpp's defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct ChainParams {
    /// Softmax temperature; ≤ 0 means greedy.
    pub temperature: f32,
    /// Keep the k most likely tokens; ≤ 0 turns it off.
    pub top_k: i32,
    /// Keep the smallest head whose probability reaches p; ≥ 1 turns it off.
    pub top_p: f32,
    /// Drop tokens less likely than `min_p` times the most likely one; ≤ 0 turns it off.
    pub min_p: f32,
    /// Repetition penalty for tokens among the last `penalty_last_n`; 1 turns it off.
    pub repeat_penalty: f32,
    /// Subtracted from a recent token's logit once per occurrence; 0 turns it off.
    pub frequency_penalty: f32,
    /// Subtracted once from the logit of any recent token; 0 turns it off.
    pub presence_penalty: f32,
    /// How many accepted tokens the penalties look back at; 0 turns them off.
    pub penalty_last_n: usize,
    /// Added to a token's logit before everything else: (id, bias), sorted by id.
    pub logit_bias: Vec<(u32, f32)>,
}

impl Default for ChainParams {
    fn default() -> Self {
        ChainParams {
            temperature: 0.8,
            top_k: 40,
            top_p: 0.95,
            min_p: 0.05,
            repeat_penalty: 1.0,
            frequency_penalty: 0.0,
            presence_penalty: 0.0,
            penalty_last_n: 64,
            logit_bias: Vec::new(),
        }
    }
}

impl ChainParams {
    /// Greedy settings (temperature 0, other settings at their defaults).
    pub fn greedy() -> Self {
        ChainParams {
            temperature: 0.0,
            ..Self::default()
        }
    }

    /// Reads the chain's keys from a configuration object (missing keys keep the values of
    /// `base`): `temperature`, `top_k`, `top_p`, `min_p`, `repeat_penalty`, `repeat_last_n`
    /// (-1 = the whole sequence), `frequency_penalty`, `presence_penalty`, `logit_bias`
    /// (`{"id": bias}` or `[[id, bias], …]`; a bias of `false` bans the token).
    pub fn read(f: &mut Fields<'_>, base: ChainParams, n_vocab: usize) -> Result<Self, Error> {
        let last_n = f.int(
            "repeat_last_n",
            base.penalty_last_n as i64,
            -1,
            MAX_PENALTY_LAST_N as i64,
        )?;
        Ok(ChainParams {
            temperature: f.f32("temperature", base.temperature)?,
            top_k: f.int(
                "top_k",
                i64::from(base.top_k),
                i64::from(i32::MIN),
                i64::from(i32::MAX),
            )? as i32,
            top_p: f.f32("top_p", base.top_p)?,
            min_p: f.f32("min_p", base.min_p)?,
            repeat_penalty: f.f32("repeat_penalty", base.repeat_penalty)?,
            frequency_penalty: f.f32("frequency_penalty", base.frequency_penalty)?,
            presence_penalty: f.f32("presence_penalty", base.presence_penalty)?,
            penalty_last_n: if last_n < 0 {
                MAX_PENALTY_LAST_N
            } else {
                last_n as usize
            },
            logit_bias: match f.value("logit_bias") {
                None => base.logit_bias,
                Some(v) => parse_logit_bias(v, n_vocab)?,
            },
        })
    }

    /// Whether the settings make the penalties do anything.
    pub fn penalties_configured(&self) -> bool {
        self.penalty_last_n > 0
            && (self.repeat_penalty != 1.0
                || self.frequency_penalty != 0.0
                || self.presence_penalty != 0.0)
    }

    /// Whether decoding is greedy (temperature ≤ 0 or NaN).
    pub fn is_greedy(&self) -> bool {
        self.temperature.is_nan() || self.temperature <= 0.0
    }

    /// The view that gives exactly the full row's result.
    ///
    /// Penalties and logit biases can lift a token from outside any head into the
    /// candidates, so they need the full row. Otherwise greedy needs only the best token
    /// (top-1), and with top-k on (`0 < k < n_vocab`, `k <= 4096`) the chain never looks
    /// past the k best, so a head of max(k, 1024) tokens gives the same candidates in the
    /// same order (the extra room absorbs ties at the k-th place). Without top-k, top-p's
    /// normaliser and min-p's cut are over the whole row: full view.
    pub fn view(&self, n_vocab: usize) -> ViewKind {
        if self.penalties_configured() || !self.logit_bias.is_empty() {
            return ViewKind::Full;
        }
        if self.is_greedy() {
            return ViewKind::Top(1);
        }
        let k = self.top_k;
        if k > 0 && (k as usize) < n_vocab && (k as usize) <= MAX_TOP_N {
            let n = (k as usize).clamp(PREFERRED_TOP_N, MAX_TOP_N).min(n_vocab);
            return ViewKind::Top(n);
        }
        ViewKind::Full
    }
}

/// Parses `{"id": bias, …}` or `[[id, bias], …]`; `false` as a bias bans the token.
fn parse_logit_bias(v: &Value, n_vocab: usize) -> Result<Vec<(u32, f32)>, Error> {
    let id_of = |s: &str| -> Result<u32, Error> {
        match s.parse::<u32>() {
            Ok(id) if (id as usize) < n_vocab => Ok(id),
            _ => Err(Error::new(format!(
                "logit_bias: \"{s}\" is not a token id below {n_vocab}"
            ))),
        }
    };
    let bias_of = |v: &Value| -> Result<f32, Error> {
        match v {
            Value::Bool(false) => Ok(f32::NEG_INFINITY),
            Value::Number(b) if (*b as f32).is_finite() => Ok(*b as f32),
            other => Err(Error::new(format!(
                "logit_bias: a bias must be a number or false, not {}",
                other.kind()
            ))),
        }
    };
    let mut out = Vec::new();
    match v {
        Value::Object(members) => {
            for (k, b) in members {
                out.push((id_of(k)?, bias_of(b)?));
            }
        }
        Value::Array(items) => {
            for item in items {
                match item.as_array() {
                    Some([Value::Number(id), b]) if is_integer(*id) && *id >= 0.0 => {
                        if *id >= n_vocab as f64 {
                            return Err(Error::new(format!(
                                "logit_bias: {} is not a token id below {n_vocab}",
                                *id as u64
                            )));
                        }
                        out.push((*id as u32, bias_of(b)?));
                    }
                    _ => return Err(Error::new("logit_bias: expected [id, bias] pairs")),
                }
            }
        }
        other => {
            return Err(Error::new(format!(
                "logit_bias must be an object, not {}",
                other.kind()
            )))
        }
    }
    crate::sort::heapsort(&mut out, |a, b| a.0 < b.0);
    if out.windows(2).any(|w| w[0].0 == w[1].0) {
        return Err(Error::new("logit_bias: a token appears twice"));
    }
    Ok(out)
}

/// A candidate token and its (adjusted) logit.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Cand {
    /// Token id.
    pub id: u32,
    /// Logit after sanitizing, bias and penalties.
    pub logit: f32,
}

/// Total order "better first": higher logit, then lower id.
pub fn better(a: &Cand, b: &Cand) -> Ordering {
    b.logit.total_cmp(&a.logit).then(a.id.cmp(&b.id))
}

/// Whether `a` comes strictly before `b` in the [`better`] order.
pub fn is_better(a: &Cand, b: &Cand) -> bool {
    better(a, b).is_lt()
}

/// Runs longer than this are sorted by [`radix_sort_cands`].
const RADIX_MIN: usize = 512;

/// A 64-bit key whose ascending order is the [`better`] order: the logit's total-order bits,
/// inverted, then the id.
fn cand_key(c: &Cand) -> u64 {
    let b = c.logit.to_bits();
    let t = if b >> 31 == 1 { !b } else { b | 0x8000_0000 };
    (u64::from(!t) << 32) | u64::from(c.id)
}

/// The candidate a [`cand_key`] was made from.
fn key_cand(k: u64) -> Cand {
    let t = !((k >> 32) as u32);
    let b = if t >> 31 == 1 { t & 0x7FFF_FFFF } else { !t };
    Cand {
        id: k as u32,
        logit: f32::from_bits(b),
    }
}

/// Sorts candidates into [`better`] order (the order is total, so the result is unique):
/// short runs by comparison, long ones by an LSD radix sort on [`cand_key`] (11-bit digits,
/// skipping digits all keys share), which keeps large nuclei fast on a full row.
pub fn sort_cands(v: &mut [Cand], keys: &mut Vec<u64>, spare: &mut Vec<u64>) {
    if v.len() <= RADIX_MIN {
        sort(v, is_better);
        return;
    }
    keys.clear();
    keys.extend(v.iter().map(cand_key));
    spare.clear();
    spare.resize(keys.len(), 0);
    let mut shift = 0;
    while shift < 64 {
        let mut count = [0usize; 2048];
        for &k in keys.iter() {
            count[((k >> shift) & 2047) as usize] += 1;
        }
        if count.iter().all(|&c| c == 0 || c == keys.len()) {
            shift += 11;
            continue; // every key has the same digit here
        }
        let mut sum = 0;
        for c in count.iter_mut() {
            let n = *c;
            *c = sum;
            sum += n;
        }
        for &k in keys.iter() {
            let d = ((k >> shift) & 2047) as usize;
            spare[count[d]] = k;
            count[d] += 1;
        }
        core::mem::swap(keys, spare);
        shift += 11;
    }
    for (c, &k) in v.iter_mut().zip(keys.iter()) {
        *c = key_cand(k);
    }
}

/// NaN → −∞, +∞ → largest finite.
pub fn sanitize(l: f32) -> f32 {
    if l.is_nan() {
        f32::NEG_INFINITY
    } else if l == f32::INFINITY {
        f32::MAX
    } else {
        l
    }
}

/// Values the streaming scans test at once for "anything above the bar?".
const SCAN_CHUNK: usize = 16;
/// Smallest candidate buffer of the streaming top-k (the buffer holds max(2k, this)).
const TOP_K_MIN_BUFFER: usize = 512;

/// Whether any value of `chunk` is greater than `bar` (NaN never is): four vector
/// compares OR-ed together, one test.
#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
#[inline(always)]
fn any_above(chunk: &[f32; SCAN_CHUNK], bar: f32) -> bool {
    use core::arch::wasm32::{f32x4, f32x4_gt, f32x4_splat, v128_any_true, v128_or};
    let b = f32x4_splat(bar);
    let mut acc = f32x4_splat(0.0);
    for q in chunk.as_chunks::<4>().0 {
        // Four consecutive loads: LLVM makes them one `v128.load`.
        acc = v128_or(acc, f32x4_gt(f32x4(q[0], q[1], q[2], q[3]), b));
    }
    v128_any_true(acc)
}

/// Whether any value of `chunk` is greater than `bar` (NaN never is). Branch-free, so that
/// the compiler can vectorize it.
#[cfg(not(all(target_arch = "wasm32", target_feature = "simd128")))]
#[inline(always)]
fn any_above(chunk: &[f32; SCAN_CHUNK], bar: f32) -> bool {
    chunk.iter().fold(false, |a, &x| a | (x > bar))
}

/// The start of the first [`SCAN_CHUNK`]-long chunk of `row[from..]` (counting from `from`)
/// that has a value above `bar`, else the start of the short tail (which the caller checks
/// value by value), else `row.len()`.
fn next_chunk_above(row: &[f32], from: usize, bar: f32) -> usize {
    let rest = row.get(from..).unwrap_or(&[]);
    let (chunks, tail) = rest.as_chunks::<SCAN_CHUNK>();
    for (c, chunk) in chunks.iter().enumerate() {
        if any_above(chunk, bar) {
            return from + c * SCAN_CHUNK;
        }
    }
    row.len() - tail.len()
}

/// The id of the largest sanitized value of a non-empty row; ties go to the lowest id.
fn argmax(row: &[f32]) -> u32 {
    let mut best = 0;
    let mut top = sanitize(row[0]);
    let mut i = 1;
    loop {
        // Raw values: NaN is never above, and +∞ (sanitized to the maximum) is re-checked.
        i = next_chunk_above(row, i, top);
        if i >= row.len() {
            return best as u32;
        }
        let end = (i + SCAN_CHUNK).min(row.len());
        for (j, &l) in (i..end).zip(&row[i..end]) {
            let l = sanitize(l);
            if l > top {
                top = l;
                best = j;
            }
        }
        i = end;
    }
}

/// Keeps the best `k` of `cand` (`0 < k < cand.len()`); returns the k-th best logit.
fn keep_best(cand: &mut Vec<Cand>, k: usize) -> f32 {
    select_nth(cand, k - 1, is_better);
    cand.truncate(k);
    cand[k - 1].logit
}

/// Collects into `cand` a superset of the `k` best (sanitized) entries of `row`
/// (`0 < k < row.len()`) in one streaming pass: a buffer of max(2k, 512) candidates is
/// compacted to the best k whenever it fills, and the k-th best logit seen so far is the bar
/// a later value must beat (a later id loses ties, so an equal value never does). Whole
/// chunks below the bar are skipped with a vector compare.
fn collect_top_k(cand: &mut Vec<Cand>, row: &[f32], k: usize) {
    let cap = (2 * k).max(TOP_K_MIN_BUFFER);
    cand.clear();
    cand.reserve(cap);
    let head = cap.min(row.len());
    cand.extend((0..=u32::MAX).zip(&row[..head]).map(|(id, &l)| Cand {
        id,
        logit: sanitize(l),
    }));
    if head == row.len() {
        return; // the filters' top-k selects from these
    }
    let mut bar = keep_best(cand, k);
    let mut i = head;
    loop {
        i = next_chunk_above(row, i, bar);
        if i >= row.len() {
            return;
        }
        let end = (i + SCAN_CHUNK).min(row.len());
        for (id, &l) in (i as u32..).zip(&row[i..end]) {
            if l > bar {
                cand.push(Cand {
                    id,
                    logit: sanitize(l),
                });
                if cand.len() >= cap {
                    bar = keep_best(cand, k);
                }
            }
        }
        i = end;
    }
}

/// The chain's state for one sequence: settings, penalty history, random generator.
#[derive(Debug, Clone)]
pub struct Chain {
    params: ChainParams,
    seed: u64,
    rng: Rng,
    /// The last `penalty_last_n` accepted tokens, oldest first.
    history: VecDeque<u32>,
    /// Occurrences of each token in `history`.
    counts: BTreeMap<u32, u32>,
    /// Working candidate set.
    cand: Vec<Cand>,
    /// Radix sort buffers.
    keys: Vec<u64>,
    spare: Vec<u64>,
}

impl Chain {
    /// A chain with these settings and seed.
    pub fn new(params: ChainParams, seed: u64) -> Self {
        Chain {
            history: VecDeque::with_capacity(params.penalty_last_n.min(1 << 12)),
            params,
            seed,
            rng: Rng::new(seed),
            counts: BTreeMap::new(),
            cand: Vec::new(),
            keys: Vec::new(),
            spare: Vec::new(),
        }
    }

    /// The settings.
    pub fn params(&self) -> &ChainParams {
        &self.params
    }

    /// Samples from a full row (index = token id). Only the entries of biased and penalized
    /// tokens are modified (in place: sanitized, biased, penalized); every other value is
    /// sanitized on the fly, so a step makes no full pass that writes the row. An empty row
    /// gives 0.
    pub fn sample_row(&mut self, row: &mut [f32]) -> u32 {
        if row.is_empty() {
            return 0;
        }
        for &(id, bias) in &self.params.logit_bias {
            if let Some(l) = row.get_mut(id as usize) {
                *l = sanitize(sanitize(*l) + bias);
            }
        }
        if self.penalties_active() {
            for (&id, &count) in &self.counts {
                if let Some(l) = row.get_mut(id as usize) {
                    *l = self.penalize(sanitize(*l), count);
                }
            }
        }
        match self.prepare_from_row(row) {
            Some(id) => id,
            None => self.draw(),
        }
    }

    /// Samples from only the head of a row: `ids[i]` has logit `logits[i]` (ids must be
    /// non-negative; extra entries of the longer slice are ignored). Filters and
    /// normalisation see only these candidates. An empty head gives 0.
    pub fn sample_top(&mut self, ids: &[i32], logits: &[f32]) -> u32 {
        match self.prepare_head(ids, logits) {
            Some(id) => id,
            None => self.draw(),
        }
    }

    /// Samples from a view (a full row or a head).
    pub fn sample_view(&mut self, view: View<'_>) -> u32 {
        match view {
            View::Full(row) => self.sample_row(row),
            View::Top { ids, logits, .. } => self.sample_top(ids, logits),
        }
    }

    /// Records an accepted token in the penalty history.
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

    /// Forgets the history and restarts the random stream from the seed.
    pub fn reset(&mut self) {
        self.history.clear();
        self.counts.clear();
        self.rng = Rng::new(self.seed);
    }

    fn penalties_active(&self) -> bool {
        !self.counts.is_empty() && self.params.penalties_configured()
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

    /// Full-row path up to the candidate set; returns the token when already decided. The
    /// row's values are sanitized as they are read.
    fn prepare_from_row(&mut self, row: &[f32]) -> Option<u32> {
        if row.is_empty() {
            return Some(0);
        }
        if self.params.is_greedy() {
            return Some(argmax(row));
        }
        let k = self.params.top_k;
        if k > 0 && (k as usize) < row.len() {
            collect_top_k(&mut self.cand, row, k as usize);
            self.filter(None);
        } else {
            // No top-k: cut by min-p while collecting (its threshold needs only the
            // maximum), and take top-p's normaliser from the whole row.
            let max = row
                .iter()
                .fold(f32::NEG_INFINITY, |m, &l| m.max(sanitize(l)));
            let min_p = self.params.min_p;
            let threshold = if min_p > 0.0 && max > f32::NEG_INFINITY {
                (max + lnf(min_p)).min(max)
            } else {
                f32::NEG_INFINITY
            };
            let z = (self.params.top_p < 1.0 && max > f32::NEG_INFINITY).then(|| {
                row.iter()
                    .map(|&l| f64::from(expf(sanitize(l) - max)))
                    .sum::<f64>()
            });
            self.cand.clear();
            self.cand.extend(
                (0..=u32::MAX)
                    .zip(row)
                    .map(|(id, &l)| Cand {
                        id,
                        logit: sanitize(l),
                    })
                    .filter(|c| c.logit >= threshold),
            );
            self.filter(z);
        }
        None
    }

    /// Head path up to the candidate set; returns the token when already decided.
    fn prepare_head(&mut self, ids: &[i32], logits: &[f32]) -> Option<u32> {
        self.cand.clear();
        self.cand
            .extend(ids.iter().zip(logits).map(|(&id, &l)| Cand {
                id: id as u32,
                logit: sanitize(l),
            }));
        if self.cand.is_empty() {
            return Some(0);
        }
        if !self.params.logit_bias.is_empty() {
            let bias = &self.params.logit_bias;
            for c in &mut self.cand {
                if let Ok(i) = bias.binary_search_by_key(&c.id, |&(id, _)| id) {
                    c.logit = sanitize(c.logit + bias[i].1);
                }
            }
        }
        if self.penalties_active() {
            let mut cand = core::mem::take(&mut self.cand);
            for c in &mut cand {
                if let Some(&count) = self.counts.get(&c.id) {
                    c.logit = self.penalize(c.logit, count);
                }
            }
            self.cand = cand;
        }
        if self.params.is_greedy() {
            return self.cand.iter().copied().min_by(better).map(|c| c.id);
        }
        self.filter(None);
        None
    }

    /// Top-k, top-p and min-p on `self.cand` (non-empty), in llama.cpp's order.
    ///
    /// Both top-p and min-p keep a prefix of the candidates in "better" order, and min-p's
    /// threshold depends only on the maximum, which top-p keeps; so top-p then min-p keeps
    /// the shorter prefix. Top-p's probabilities are normalised over all candidates it
    /// receives (`z_hint` when the caller already summed them, relative to the maximum).
    fn filter(&mut self, z_hint: Option<f64>) {
        let cand = &mut self.cand;
        let (keys, spare) = (&mut self.keys, &mut self.spare);
        let mut sorted = false;
        let k = self.params.top_k;
        if k > 0 && (k as usize) < cand.len() {
            let k = k as usize;
            select_nth(cand, k - 1, is_better);
            cand.truncate(k);
        }
        if k > 0 && cand.len() <= TOP_P_FIRST_CHUNK.max(k as usize) {
            sort_cands(cand, keys, spare);
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
        let z: f64 = match z_hint {
            Some(z) => z,
            None if use_top_p => cand.iter().map(|c| f64::from(expf(c.logit - max))).sum(),
            None => 1.0,
        };
        if use_min_p {
            // p_i >= min_p · p_max  ⇔  logit_i >= max + ln(min_p); never drop the maximum.
            let threshold = (max + lnf(min_p)).min(max);
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
        let mut i = 0;
        loop {
            if done < cand.len() {
                // Sort only the best few first (a peaked distribution needs no more), then,
                // if p is not reached yet, all the rest at once. (The host sorts growing
                // chunks; the order, hence every sum, is the same.)
                if done == 0 && cand.len() > TOP_P_FIRST_CHUNK {
                    select_nth(cand, TOP_P_FIRST_CHUNK - 1, is_better);
                    sort_cands(&mut cand[..TOP_P_FIRST_CHUNK], keys, spare);
                    done = TOP_P_FIRST_CHUNK;
                } else {
                    sort_cands(&mut cand[done..], keys, spare);
                    done = cand.len();
                }
            }
            while i < done {
                cum += f64::from(expf(cand[i].logit - max)) / z;
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
                exp((f64::from(c.logit) - f64::from(max)) / t)
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

/// Tracks which accepted tokens are the sampler's own choices: the text since the prompt.
///
/// After [`Transcript::chose`], the next accepted token is ours when it is that token;
/// any other accepted token is prompt text, which starts a new generated text.
#[derive(Debug, Clone, Default)]
pub struct Transcript {
    pending: Option<u32>,
}

impl Transcript {
    /// Records that the sampler returned `token`.
    pub fn chose(&mut self, token: u32) {
        self.pending = Some(token);
    }

    /// Records that the sampler returned no token.
    pub fn chose_none(&mut self) {
        self.pending = None;
    }

    /// Classifies an accepted token: `true` = generated (our last choice), `false` = prompt.
    pub fn accepted(&mut self, token: u32) -> bool {
        self.pending.take() == Some(token)
    }
}

/// The `chain` policy: [`Chain`] with stop strings and the view of [`ChainParams::view`].
///
/// Configuration (JSON object, every key optional): the keys of [`ChainParams::read`] and
/// `stop` (a string or an array of strings).
#[derive(Debug, Clone)]
pub struct ChainSampler {
    chain: Chain,
    stop: StopStrings,
    transcript: Transcript,
    view: ViewKind,
    /// Bytes of the token last chosen (when there are stop strings).
    bytes: Vec<u8>,
}

impl ChainSampler {
    /// Builds the policy from a configuration object; missing keys take `base`'s values.
    pub fn from_config(
        config: &Value,
        base: ChainParams,
        seed: u64,
        n_vocab: usize,
        context: &str,
    ) -> Result<Self, Error> {
        let mut f = Fields::new(config, context)?;
        let params = ChainParams::read(&mut f, base, n_vocab)?;
        let stop = StopStrings::from_value(f.value("stop"))?;
        f.finish()?;
        Ok(ChainSampler {
            view: params.view(n_vocab),
            chain: Chain::new(params, seed),
            stop,
            transcript: Transcript::default(),
            bytes: Vec::new(),
        })
    }

    /// The chain.
    pub fn chain(&self) -> &Chain {
        &self.chain
    }

    /// Whether choosing `id` would complete a stop string (keeps the token's bytes).
    fn stops_at(&mut self, id: u32) -> bool {
        if self.stop.is_empty() {
            return false;
        }
        host::token_bytes(id, &mut self.bytes);
        self.stop.hits(&self.bytes)
    }

    /// The chain's pick on a full row (no stop-string check; see [`ChainSampler::finish_choice`]).
    pub fn pick_row(&mut self, row: &mut [f32]) -> u32 {
        self.chain.sample_row(row)
    }

    /// The stop-string check and bookkeeping after the chain picked `id`.
    pub fn finish_choice(&mut self, id: u32) -> Choice {
        if self.stops_at(id) {
            self.transcript.chose_none();
            Choice::Stop
        } else {
            self.transcript.chose(id);
            Choice::Token(id)
        }
    }
}

impl Sampler for ChainSampler {
    fn init(config: &[u8], seed: u64, n_vocab: usize) -> Result<Self, Error> {
        let v = parse_config(config)?;
        Self::from_config(&v, ChainParams::default(), seed, n_vocab, "chain")
    }

    fn view(&self) -> ViewKind {
        self.view
    }

    fn sample(&mut self, view: View<'_>) -> Result<Choice, Error> {
        let id = self.chain.sample_view(view);
        Ok(self.finish_choice(id))
    }

    fn accept(&mut self, token: u32) {
        if self.transcript.accepted(token) {
            self.stop.push(&self.bytes);
        } else {
            self.stop.clear();
        }
        self.chain.accept(token);
    }

    fn reset(&mut self) {
        self.chain.reset();
        self.stop.clear();
        self.transcript = Transcript::default();
    }
}

/// The `greedy` policy: the most likely token (ties to the lowest id), from a top-1 view.
/// Configuration: `{}` (or empty).
#[derive(Debug, Clone, Default)]
pub struct GreedySampler;

impl Sampler for GreedySampler {
    fn init(config: &[u8], _seed: u64, _n_vocab: usize) -> Result<Self, Error> {
        let v = parse_config(config)?;
        Fields::new(&v, "greedy")?.finish()?;
        Ok(GreedySampler)
    }

    fn view(&self) -> ViewKind {
        ViewKind::Top(1)
    }

    fn sample(&mut self, view: View<'_>) -> Result<Choice, Error> {
        let best = match view {
            View::Top { ids, logits, .. } => ids
                .iter()
                .zip(logits.iter())
                .map(|(&id, &l)| Cand {
                    id: id as u32,
                    logit: sanitize(l),
                })
                .min_by(better),
            View::Full(row) => (0..=u32::MAX)
                .zip(row.iter())
                .map(|(id, &l)| Cand {
                    id,
                    logit: sanitize(l),
                })
                .min_by(better),
        };
        best.map(|c| Choice::Token(c.id))
            .ok_or_else(|| Error::new("greedy: the host passed an empty view"))
    }

    fn accept(&mut self, _token: u32) {}

    fn reset(&mut self) {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::json::parse;
    use crate::mock;
    use alloc::vec;

    fn params() -> ChainParams {
        ChainParams::default()
    }

    fn plain() -> ChainParams {
        ChainParams {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            ..params()
        }
    }

    fn greedy() -> ChainParams {
        ChainParams::greedy()
    }

    fn ln_probs(p: &[f64]) -> Vec<f32> {
        p.iter().map(|&x| crate::math::ln(x) as f32).collect()
    }

    fn random_row(n: usize, seed: u64, scale: f32) -> Vec<f32> {
        let mut r = Rng::new(seed);
        (0..n)
            .map(|_| (r.next_f64() as f32 - 0.5) * scale)
            .collect()
    }

    /// The candidates the filters keep for a full row, sorted by id.
    fn kept(c: &mut Chain, row: &[f32]) -> Vec<u32> {
        assert!(c.prepare_from_row(row).is_none());
        let mut ids: Vec<u32> = c.cand.iter().map(|c| c.id).collect();
        ids.sort_unstable();
        ids
    }

    /// Plain reference of the filters: full sort, then top-k, top-p, min-p.
    fn reference_kept(p: &ChainParams, row: &[f32]) -> Vec<u32> {
        let mut c: Vec<Cand> = (0..)
            .zip(row)
            .map(|(id, &l)| Cand {
                id,
                logit: sanitize(l),
            })
            .collect();
        c.sort_by(better);
        if p.top_k > 0 {
            c.truncate(p.top_k as usize);
        }
        let max = f64::from(c[0].logit);
        if p.top_p < 1.0 {
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
            c.retain(|x| (f64::from(x.logit) - max).exp() >= f64::from(p.min_p) - 1e-12);
        }
        let mut ids: Vec<u32> = c.iter().map(|x| x.id).collect();
        ids.sort_unstable();
        ids
    }

    #[test]
    fn greedy_takes_the_argmax_with_ties_to_the_lowest_id() {
        let mut c = Chain::new(greedy(), 1);
        assert_eq!(c.sample_row(&mut [0.1, 2.0, -1.0, 1.9, 0.0]), 1);
        assert_eq!(c.sample_row(&mut [3.0, 1.0, 3.0]), 0);
        assert_eq!(c.sample_top(&[7, 3, 9], &[1.0, 5.0, 5.0]), 3);
        assert_eq!(c.sample_top(&[9, 3], &[5.0, 5.0]), 3);
        assert_eq!(c.sample_row(&mut []), 0);
        assert_eq!(c.sample_top(&[], &[]), 0);
    }

    #[test]
    fn penalties_and_bias_change_the_pick() {
        let mut c = Chain::new(
            ChainParams {
                repeat_penalty: 1.1,
                ..greedy()
            },
            1,
        );
        assert_eq!(c.sample_row(&mut [2.0, 1.9, -1.0, 0.5]), 0);
        c.accept(0);
        assert_eq!(c.sample_row(&mut [2.0, 1.9, -1.0, 0.5]), 1); // 2.0 / 1.1 < 1.9
        assert_eq!(c.sample_top(&[0, 1], &[2.0, 1.9]), 1);
        // Negative logits are multiplied.
        let mut c = Chain::new(
            ChainParams {
                repeat_penalty: 2.0,
                ..greedy()
            },
            1,
        );
        c.accept(0);
        assert_eq!(c.sample_row(&mut [-1.0, -1.5]), 1);
        assert_eq!(c.sample_row(&mut [-1.0, -3.0]), 0);
        // Frequency (per occurrence) and presence (once).
        let mut c = Chain::new(
            ChainParams {
                frequency_penalty: 0.15,
                ..greedy()
            },
            1,
        );
        c.accept(0);
        assert_eq!(c.sample_row(&mut [1.0, 0.8, 0.0]), 0);
        c.accept(0);
        assert_eq!(c.sample_row(&mut [1.0, 0.8, 0.0]), 1);
        let mut c = Chain::new(
            ChainParams {
                presence_penalty: 0.5,
                ..greedy()
            },
            1,
        );
        for _ in 0..3 {
            c.accept(2);
        }
        assert_eq!(c.sample_row(&mut [0.0, 0.1, 0.55]), 1);
        // The window forgets; a window of 0 disables penalties.
        let mut c = Chain::new(
            ChainParams {
                repeat_penalty: 10.0,
                penalty_last_n: 2,
                ..greedy()
            },
            1,
        );
        c.accept(0);
        assert_eq!(c.sample_row(&mut [2.0, 1.0, 0.0, 0.0]), 1);
        c.accept(3);
        c.accept(3);
        assert_eq!(c.sample_row(&mut [2.0, 1.0, 0.0, 0.0]), 0);
        let mut c = Chain::new(
            ChainParams {
                repeat_penalty: 10.0,
                penalty_last_n: 0,
                ..greedy()
            },
            1,
        );
        c.accept(0);
        assert_eq!(c.sample_row(&mut [2.0, 1.0]), 0);
        // Logit bias: before penalties; `false` (-inf) bans.
        let mut c = Chain::new(
            ChainParams {
                logit_bias: vec![(0, f32::NEG_INFINITY), (2, 5.0)],
                ..greedy()
            },
            1,
        );
        assert_eq!(c.sample_row(&mut [9.0, 1.0, 0.0]), 2);
        assert_eq!(c.sample_row(&mut [9.0, 1.0, -9.0]), 1);
        assert_eq!(c.sample_top(&[0, 1], &[9.0, 1.0]), 1);
    }

    #[test]
    fn top_k_one_is_greedy_and_seeds_repeat() {
        let mut g = Chain::new(greedy(), 0);
        for seed in 0..20 {
            let row = random_row(1000, seed, 8.0);
            let mut c = Chain::new(
                ChainParams {
                    top_k: 1,
                    temperature: 1.5,
                    ..params()
                },
                seed,
            );
            let want = g.sample_row(&mut row.clone());
            assert_eq!(c.sample_row(&mut row.clone()), want);
            let ids: Vec<i32> = (0..1000).collect();
            assert_eq!(c.sample_top(&ids, &row), want);
        }
        let row = vec![0.0f32; 64];
        let run = |seed: u64| {
            let mut c = Chain::new(plain(), seed);
            (0..100)
                .map(|_| c.sample_row(&mut row.clone()))
                .collect::<Vec<_>>()
        };
        assert_eq!(run(7), run(7));
        assert_ne!(run(7), run(8));
        let mut c = Chain::new(plain(), 7);
        let first: Vec<u32> = (0..10).map(|_| c.sample_row(&mut row.clone())).collect();
        c.reset();
        let again: Vec<u32> = (0..10).map(|_| c.sample_row(&mut row.clone())).collect();
        assert_eq!(first, again);
    }

    #[test]
    fn draws_follow_the_tempered_distribution() {
        let probs = [0.1, 0.2, 0.3, 0.4];
        let row = ln_probs(&probs);
        for (t, expect) in [
            (1.0f32, probs.to_vec()),
            (0.5, probs.iter().map(|p| p * p / 0.3).collect::<Vec<_>>()),
        ] {
            let mut c = Chain::new(
                ChainParams {
                    temperature: t,
                    ..plain()
                },
                12345,
            );
            let mut counts = [0usize; 4];
            for _ in 0..40_000 {
                counts[c.sample_row(&mut row.clone()) as usize] += 1;
            }
            let chi: f64 = counts
                .iter()
                .zip(&expect)
                .map(|(&n, &p)| {
                    let e = p * 40_000.0;
                    (n as f64 - e) * (n as f64 - e) / e
                })
                .sum();
            assert!(chi < 16.27, "t={t} counts={counts:?} chi²={chi}"); // p = 0.001, 3 dof
        }
    }

    #[test]
    fn top_p_and_min_p_cut_where_expected() {
        let row = ln_probs(&[0.5, 0.3, 0.15, 0.05]);
        let p = |top_p, min_p| ChainParams {
            top_p,
            min_p,
            top_k: 0,
            ..params()
        };
        assert_eq!(kept(&mut Chain::new(p(0.75, 0.0), 1), &row), [0, 1]);
        assert_eq!(kept(&mut Chain::new(p(0.9, 0.0), 1), &row), [0, 1, 2]);
        assert_eq!(kept(&mut Chain::new(p(0.4, 0.0), 1), &row), [0]);
        assert_eq!(kept(&mut Chain::new(p(1.0, 0.2), 1), &row), [0, 1, 2]);
        assert_eq!(kept(&mut Chain::new(p(1.0, 0.5), 1), &row), [0, 1]);
        assert_eq!(kept(&mut Chain::new(p(1.0, 7.0), 1), &row), [0]);
        // Top-p looks at the distribution before temperature.
        let hot = ChainParams {
            temperature: 5.0,
            ..p(0.75, 0.0)
        };
        assert_eq!(kept(&mut Chain::new(hot, 1), &row), [0, 1]);
    }

    #[test]
    fn fast_filters_match_a_full_sort() {
        let settings = [
            (40, 0.95, 0.05),
            (0, 0.95, 0.05),
            (0, 0.9, 0.0),
            (0, 1.0, 0.1),
            (300, 0.99, 0.0),
            (5000, 0.5, 0.0),
            (7, 1.0, 0.0),
        ];
        for (n, seed) in [(10usize, 1u64), (1000, 2), (50_000, 3)] {
            for scale in [1.0f32, 10.0, 40.0] {
                let row = random_row(n, seed + scale as u64, scale);
                for &(top_k, top_p, min_p) in &settings {
                    let p = ChainParams {
                        top_k,
                        top_p,
                        min_p,
                        ..params()
                    };
                    let want = reference_kept(&p, &row);
                    let mut c = Chain::new(p.clone(), 9);
                    assert_eq!(kept(&mut c, &row), want, "n={n} scale={scale} {p:?}");
                    let ids: Vec<i32> = (0..n as i32).collect();
                    assert!(c.prepare_head(&ids, &row).is_none());
                    let mut got: Vec<u32> = c.cand.iter().map(|c| c.id).collect();
                    got.sort_unstable();
                    assert_eq!(got, want, "head n={n} scale={scale} {p:?}");
                }
            }
        }
    }

    #[test]
    fn streaming_top_k_and_argmax_break_ties_like_a_full_sort() {
        let mut r = Rng::new(17);
        let mut cand = Vec::new();
        for n in [2usize, 17, 600, 5_000, 40_000] {
            for levels in [2u64, 7, 1 << 20] {
                let row: Vec<f32> = (0..n)
                    .map(|_| match r.next_u64() % 100 {
                        0 => f32::NAN,
                        1 => f32::INFINITY,
                        2 => f32::NEG_INFINITY,
                        3 => f32::MAX,
                        _ => (r.next_u64() % levels) as f32 - (levels / 2) as f32,
                    })
                    .collect();
                let mut all: Vec<Cand> = (0..)
                    .zip(&row)
                    .map(|(id, &l)| Cand {
                        id,
                        logit: sanitize(l),
                    })
                    .collect();
                all.sort_by(better);
                assert_eq!(argmax(&row), all[0].id, "argmax n={n} levels={levels}");
                for k in [1usize, 3, 40, 300, 2_000] {
                    if k >= n {
                        continue;
                    }
                    collect_top_k(&mut cand, &row, k);
                    select_nth(&mut cand, k - 1, is_better);
                    cand.truncate(k);
                    cand.sort_by(better);
                    assert_eq!(cand[..], all[..k], "n={n} levels={levels} k={k}");
                }
            }
        }
    }

    /// Must match the generator of the golden tokens below.
    fn golden_row(r: &mut Rng, n: usize, scale: f32) -> Vec<f32> {
        (0..n)
            .map(|_| {
                let u = r.next_f64();
                if u < 0.002 {
                    f32::NAN
                } else {
                    (r.next_f64() as f32 - 0.5) * scale
                }
            })
            .collect()
    }

    /// Tokens chosen by the host's native sampler (`host/runtime/src/sampler/oracle.rs`) for these
    /// settings, sizes, seeds and rows (generated once with it; each row's choice is
    /// accepted before the next step).
    const GOLDEN: [&[u32]; 24] = [
        &[2, 0, 1, 1, 4, 1, 1, 3, 6, 3, 2, 0, 1, 0, 1, 1],
        &[
            430, 101, 174, 341, 321, 370, 182, 190, 463, 218, 151, 404, 255, 100, 178, 307,
        ],
        &[
            6355, 19609, 1561, 2220, 871, 8036, 4313, 9386, 18548, 17110, 2631, 13140, 17367,
            16761, 11468, 12184,
        ],
        &[2, 3, 5, 5, 1, 2, 6, 0, 1, 6, 5, 2, 1, 0, 1, 2],
        &[
            180, 391, 314, 420, 248, 238, 179, 54, 55, 235, 193, 321, 279, 184, 187, 138,
        ],
        &[
            7387, 19893, 5294, 6469, 9352, 4718, 13996, 3738, 5711, 7744, 15033, 19776, 10549,
            2716, 11812, 14837,
        ],
        &[1, 2, 6, 3, 2, 1, 0, 4, 6, 4, 3, 5, 0, 1, 6, 1],
        &[
            419, 295, 429, 216, 78, 363, 249, 45, 436, 209, 66, 166, 463, 121, 221, 230,
        ],
        &[
            19402, 8, 14146, 11533, 5435, 18707, 17460, 19721, 990, 6604, 19058, 15629, 5469,
            13406, 12567, 1080,
        ],
        &[2, 0, 6, 0, 5, 6, 2, 3, 0, 0, 2, 4, 6, 1, 5, 5],
        &[
            385, 347, 252, 235, 217, 350, 383, 347, 429, 58, 377, 179, 210, 297, 3, 167,
        ],
        &[
            11028, 16599, 14729, 4853, 750, 703, 10294, 9145, 1288, 4185, 19927, 15771, 4383, 7615,
            3036, 14776,
        ],
        &[3, 0, 5, 1, 2, 1, 3, 6, 2, 2, 1, 0, 6, 6, 6, 2],
        &[
            476, 188, 406, 14, 145, 174, 361, 298, 317, 492, 18, 424, 164, 314, 99, 393,
        ],
        &[
            8326, 4824, 14132, 653, 8216, 1333, 17694, 222, 13565, 13451, 10052, 12068, 13540,
            2510, 12277, 14510,
        ],
        &[1, 3, 3, 0, 4, 5, 6, 5, 5, 2, 0, 1, 3, 6, 4, 4],
        &[
            228, 119, 285, 348, 465, 136, 186, 456, 38, 172, 112, 336, 491, 453, 322, 214,
        ],
        &[
            3028, 1824, 9651, 9794, 9132, 10192, 7114, 4008, 12981, 3146, 16002, 394, 9248, 12523,
            19469, 18683,
        ],
        &[1, 2, 1, 2, 1, 0, 3, 0, 0, 4, 6, 2, 1, 6, 6, 6],
        &[
            388, 348, 194, 180, 272, 257, 181, 467, 482, 488, 112, 229, 414, 141, 468, 130,
        ],
        &[
            7873, 5457, 14762, 2180, 14708, 17787, 3762, 14675, 10524, 9872, 1398, 617, 16690,
            12627, 4916, 125,
        ],
        &[6, 2, 2, 1, 2, 4, 6, 1, 1, 0, 5, 0, 5, 1, 6, 4],
        &[
            245, 472, 51, 341, 93, 59, 371, 169, 215, 386, 395, 119, 279, 118, 199, 48,
        ],
        &[
            9812, 4176, 16047, 689, 18802, 18815, 13449, 5197, 18898, 15355, 1112, 1080, 779,
            10352, 136, 1210,
        ],
    ];

    #[test]
    fn matches_the_native_samplers_golden_tokens() {
        /// (temperature, top_k, top_p, min_p, repeat, frequency, presence, last_n)
        type Setting = (f32, i32, f32, f32, f32, f32, f32, usize);
        let settings: [Setting; 8] = [
            (0.8, 40, 0.95, 0.05, 1.0, 0.0, 0.0, 64),
            (0.0, 40, 0.95, 0.05, 1.1, 0.0, 0.0, 64),
            (1.0, 0, 1.0, 0.0, 1.0, 0.0, 0.0, 64),
            (0.7, 0, 0.9, 0.05, 1.1, 0.0, 0.0, 64),
            (1.2, 0, 0.95, 0.0, 1.0, 0.1, 0.2, 16),
            (0.5, 100, 0.5, 0.1, 1.3, 0.5, 0.0, 8),
            (1.5, 3, 1.0, 0.0, 0.9, 0.0, 0.3, 32),
            (1.0, 300, 0.8, 0.02, 1.0, 0.0, 0.0, 64),
        ];
        let mut golden = GOLDEN.iter();
        for (si, &(t, k, p, m, rp, fp, pp, last)) in settings.iter().enumerate() {
            for (ni, &n) in [7usize, 500, 20_000].iter().enumerate() {
                let seed = (si * 10 + ni) as u64 * 0x9E37_79B9 + 1;
                let mut r = Rng::new(seed ^ 0xABCD);
                let params = ChainParams {
                    temperature: t,
                    top_k: k,
                    top_p: p,
                    min_p: m,
                    repeat_penalty: rp,
                    frequency_penalty: fp,
                    presence_penalty: pp,
                    penalty_last_n: last,
                    logit_bias: Vec::new(),
                };
                let view = params.view(n);
                let mut c = Chain::new(params.clone(), seed);
                let mut head = Chain::new(params, seed);
                let want = golden.next().unwrap();
                for (step, &expected) in want.iter().enumerate() {
                    let row = golden_row(&mut r, n, [4.0f32, 12.0, 30.0][step % 3]);
                    let got = c.sample_row(&mut row.clone());
                    assert_eq!(got, expected, "settings {si}, n={n}, step {step}");
                    c.accept(got);
                    // The view the chain asks for gives the same token.
                    if let ViewKind::Top(top) = view {
                        let mut ids: Vec<i32> = (0..n as i32).collect();
                        let key = |i: &i32| sanitize(row[*i as usize]);
                        ids.sort_by(|a, b| key(b).total_cmp(&key(a)).then(a.cmp(b)));
                        ids.truncate(top);
                        let logits: Vec<f32> = ids.iter().map(|&i| row[i as usize]).collect();
                        assert_eq!(head.sample_top(&ids, &logits), expected, "top-{top} view");
                    } else {
                        head.sample_row(&mut row.clone());
                    }
                    head.accept(got);
                }
            }
        }
    }

    #[test]
    fn radix_sort_orders_like_better() {
        let mut r = Rng::new(11);
        let specials = [
            0.0f32,
            -0.0,
            f32::NEG_INFINITY,
            f32::MAX,
            f32::MIN,
            1e-40,
            -1e-40,
        ];
        for n in [RADIX_MIN + 1, 5000, 100_000] {
            let mut v: Vec<Cand> = (0..n as u32)
                .map(|id| {
                    let u = r.next_u64();
                    let logit = if u.is_multiple_of(10) {
                        specials[(u / 10 % 7) as usize]
                    } else {
                        ((u >> 11) % 64) as f32 * 0.5 - 16.0 // many ties
                    };
                    Cand {
                        id: id * 7 % n as u32,
                        logit,
                    }
                })
                .collect();
            let mut want = v.clone();
            want.sort_by(better);
            let (mut a, mut b) = (Vec::new(), Vec::new());
            sort_cands(&mut v, &mut a, &mut b);
            assert!(v
                .iter()
                .zip(&want)
                .all(|(x, y)| x.id == y.id && x.logit.to_bits() == y.logit.to_bits()));
        }
    }

    #[test]
    fn nan_and_infinite_logits_do_not_panic() {
        let (nan, inf) = (f32::NAN, f32::INFINITY);
        let rows: [&[f32]; 5] = [
            &[nan, 1.0, nan],
            &[nan, nan, nan],
            &[f32::NEG_INFINITY; 3],
            &[1.0, inf, 2.0, inf],
            &[-inf, nan, inf],
        ];
        for p in [
            greedy(),
            params(),
            plain(),
            ChainParams {
                temperature: 1e-6,
                repeat_penalty: 0.0,
                frequency_penalty: f32::NAN,
                top_p: f32::NAN,
                min_p: f32::NAN,
                ..params()
            },
            ChainParams {
                temperature: f32::INFINITY,
                ..params()
            },
        ] {
            let mut c = Chain::new(p, 4);
            c.accept(0);
            c.accept(2);
            for row in rows {
                let t = c.sample_row(&mut row.to_vec());
                assert!((t as usize) < row.len());
                let ids: Vec<i32> = (10..10 + row.len() as i32).collect();
                assert!(ids.contains(&(c.sample_top(&ids, row) as i32)));
            }
        }
        let mut c = Chain::new(params(), 1);
        for _ in 0..100 {
            assert_eq!(c.sample_row(&mut [nan, 1.0, nan]), 1);
            let t = c.sample_row(&mut [1.0, inf, 2.0, inf]);
            assert!(t == 1 || t == 3);
        }
    }

    #[test]
    fn config_keys_defaults_and_errors() {
        let read = |text: &str| -> Result<ChainParams, Error> {
            let v = parse_config(text.as_bytes())?;
            let mut f = Fields::new(&v, "chain")?;
            let p = ChainParams::read(&mut f, ChainParams::default(), 100)?;
            f.finish()?;
            Ok(p)
        };
        assert_eq!(read("").unwrap(), ChainParams::default());
        let p = read(
            r#"{"temperature": 0.5, "top_k": 10, "top_p": 0.9, "min_p": 0.1, "repeat_penalty": 1.2,
                "repeat_last_n": -1, "frequency_penalty": 0.3, "presence_penalty": 0.4,
                "logit_bias": {"5": -2.5, "1": false}}"#,
        )
        .unwrap();
        assert_eq!(
            p,
            ChainParams {
                temperature: 0.5,
                top_k: 10,
                top_p: 0.9,
                min_p: 0.1,
                repeat_penalty: 1.2,
                frequency_penalty: 0.3,
                presence_penalty: 0.4,
                penalty_last_n: MAX_PENALTY_LAST_N,
                logit_bias: vec![(1, f32::NEG_INFINITY), (5, -2.5)],
            }
        );
        assert_eq!(
            read(r#"{"logit_bias": [[3, 1], [2, -1]]}"#)
                .unwrap()
                .logit_bias,
            vec![(2, -1.0), (3, 1.0)]
        );
        for bad in [
            r#"{"temprature": 1}"#,
            r#"{"top_k": 1.5}"#,
            r#"{"top_k": "40"}"#,
            r#"{"repeat_last_n": -2}"#,
            r#"{"temperature": 1e300}"#,
            r#"{"logit_bias": {"100": 1}}"#,
            r#"{"logit_bias": {"x": 1}}"#,
            r#"{"logit_bias": {"1": true}}"#,
            r#"{"logit_bias": [[1, 1], [1, 2]]}"#,
            r#"{"logit_bias": [[1]]}"#,
            r#"{"logit_bias": 3}"#,
            "[]",
            "{",
        ] {
            assert!(read(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn view_choice() {
        let v = |p: ChainParams, n| p.view(n);
        assert_eq!(v(params(), 151_936), ViewKind::Top(1024));
        assert_eq!(v(params(), 50), ViewKind::Top(50));
        assert_eq!(v(params(), 30), ViewKind::Full); // top-k keeps everything: full row
        assert_eq!(v(greedy(), 151_936), ViewKind::Top(1));
        assert_eq!(
            v(
                ChainParams {
                    top_k: 2000,
                    ..params()
                },
                151_936
            ),
            ViewKind::Top(2000)
        );
        assert_eq!(
            v(
                ChainParams {
                    top_k: 5000,
                    ..params()
                },
                151_936
            ),
            ViewKind::Full
        );
        assert_eq!(
            v(
                ChainParams {
                    top_k: 0,
                    ..params()
                },
                151_936
            ),
            ViewKind::Full
        );
        assert_eq!(
            v(
                ChainParams {
                    top_k: 40,
                    ..params()
                },
                40
            ),
            ViewKind::Full
        );
        assert_eq!(
            v(
                ChainParams {
                    repeat_penalty: 1.1,
                    ..params()
                },
                1000
            ),
            ViewKind::Full
        );
        assert_eq!(
            v(
                ChainParams {
                    repeat_penalty: 1.1,
                    ..greedy()
                },
                1000
            ),
            ViewKind::Full
        );
        assert_eq!(
            v(
                ChainParams {
                    repeat_penalty: 1.1,
                    penalty_last_n: 0,
                    ..params()
                },
                1000
            ),
            ViewKind::Top(1000)
        );
        assert_eq!(
            v(
                ChainParams {
                    logit_bias: vec![(1, 1.0)],
                    ..params()
                },
                1000
            ),
            ViewKind::Full
        );
    }

    #[test]
    fn chain_sampler_stops_on_stop_strings() {
        mock::set_vocab(&[&b"Hello"[..], b" wor", b"ld", b"!", b"\n"]);
        let mut s =
            ChainSampler::init(br#"{"temperature": 0, "stop": ["world", "\n\n"]}"#, 1, 5).unwrap();
        assert_eq!(s.view(), ViewKind::Top(1));
        let pick = |s: &mut ChainSampler, id: i32| {
            s.sample(View::Top {
                ids: &[id],
                logits: &mut [1.0],
                lse: 0.0,
            })
        };
        // The prompt ("Hello") is not generated text.
        s.accept(0);
        assert_eq!(pick(&mut s, 1), Ok(Choice::Token(1)));
        s.accept(1);
        assert_eq!(pick(&mut s, 2), Ok(Choice::Stop)); // " wor" + "ld"
                                                       // A new prompt token starts a new text.
        s.accept(0);
        assert_eq!(pick(&mut s, 2), Ok(Choice::Token(2)));
        s.accept(2);
        assert_eq!(pick(&mut s, 4), Ok(Choice::Token(4)));
        s.accept(4);
        assert_eq!(pick(&mut s, 4), Ok(Choice::Stop));
        s.reset();
        assert_eq!(pick(&mut s, 4), Ok(Choice::Token(4)));
        assert!(ChainSampler::init(br#"{"stop": [""]}"#, 1, 5).is_err());
        // Greedy policy: `{}` only, best of the view.
        let mut g = GreedySampler::init(b"", 0, 5).unwrap();
        assert_eq!(g.view(), ViewKind::Top(1));
        assert_eq!(
            g.sample(View::Top {
                ids: &[3, 1],
                logits: &mut [2.0, 2.0],
                lse: 0.0
            }),
            Ok(Choice::Token(1))
        );
        assert_eq!(
            g.sample(View::Full(&mut [0.0, f32::NAN, 1.0])),
            Ok(Choice::Token(2))
        );
        assert!(g.sample(View::Full(&mut [])).is_err());
        assert!(GreedySampler::init(br#"{"temperature": 0}"#, 0, 5).is_err());
        let _ = parse(b"{}").unwrap();
    }
}
