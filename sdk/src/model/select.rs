//! Row outputs in host memory: bans, top-N selection, log-sum-exp and target logits, with
//! reusable scratch so that a step allocates nothing. Backends whose logits live in host
//! memory (the CPU backend, the reference ops) implement [`super::Ops::outputs`] with
//! [`write_output`]; a GPU backend does the same on the device.

use crate::backend::{BackendError, Result, RowOutput, Want};
use std::cmp::Ordering;

/// The sort key of a logit: NaN counts as −∞.
#[inline]
fn key(v: f32) -> f32 {
    if v.is_nan() {
        f32::NEG_INFINITY
    } else {
        v
    }
}

/// Whether `(a, ia)` ranks before `(b, ib)`: larger logit first, then lower id.
#[inline]
fn better(a: f32, ia: u32, b: f32, ib: u32) -> bool {
    match key(a).total_cmp(&key(b)) {
        Ordering::Greater => true,
        Ordering::Less => false,
        Ordering::Equal => ia < ib,
    }
}

/// Reusable buffers of [`top_n`] and [`write_output`]; reserve once with
/// [`TopNScratch::with_vocab`].
#[derive(Debug, Default)]
pub struct TopNScratch {
    heap: Vec<(f32, u32)>,
    idx: Vec<u32>,
    keep: Vec<(u32, f32)>,
}

impl TopNScratch {
    /// Scratch that never needs to grow for rows of up to `n_vocab` values.
    pub fn with_vocab(n_vocab: usize) -> TopNScratch {
        TopNScratch {
            heap: Vec::with_capacity(n_vocab.min(8 * 4096)),
            idx: Vec::with_capacity(n_vocab),
            keep: Vec::with_capacity(n_vocab),
        }
    }

    /// Bytes reserved.
    pub fn bytes(&self) -> u64 {
        (self.heap.capacity() * 8 + self.idx.capacity() * 4 + self.keep.capacity() * 8) as u64
    }
}

/// Writes the `ids.len()` largest values of `row`, best first (ties: lower id first; NaN
/// counts as −∞), into `ids` and `vals` (which must have the same length, at most
/// `row.len()`).
///
/// One pass keeps the best `n` seen so far in a min-heap; blocks of 16 values that cannot
/// enter it (none above its worst entry) are skipped with one vectorisable comparison, so
/// the cost is close to a read of the row.
pub fn top_n(row: &[f32], ids: &mut [i32], vals: &mut [f32], s: &mut TopNScratch) {
    let n = ids.len().min(vals.len()).min(row.len());
    if n == 0 {
        return;
    }
    if n == 1 {
        let (id, v) = argmax(row);
        ids[0] = id as i32;
        vals[0] = v;
        return;
    }
    if n.saturating_mul(4) >= row.len() || n > 4096 {
        // A large share of the row: select on an index array.
        s.idx.clear();
        s.idx.extend(0..row.len() as u32);
        let cmp = |a: &u32, b: &u32| {
            if better(row[*a as usize], *a, row[*b as usize], *b) {
                Ordering::Less
            } else if a == b {
                Ordering::Equal
            } else {
                Ordering::Greater
            }
        };
        if n < s.idx.len() {
            s.idx.select_nth_unstable_by(n, cmp);
        }
        let head = &mut s.idx[..n];
        head.sort_unstable_by(cmp);
        for (k, &id) in head.iter().enumerate() {
            ids[k] = id as i32;
            vals[k] = row[id as usize];
        }
        return;
    }
    if n >= 64 && by_threshold(row, ids, vals, s) {
        return;
    }
    // Min-heap by (key, then higher id = worse) of the best `n`; keys have NaN as −∞.
    let h = &mut s.heap;
    h.clear();
    for (i, &v) in row[..n].iter().enumerate() {
        h.push((key(v), i as u32));
    }
    let worse = |a: (f32, u32), b: (f32, u32)| a.0 < b.0 || (a.0 == b.0 && a.1 > b.1);
    // Heapify.
    for start in (0..n / 2).rev() {
        sift_down(h, start, worse);
    }
    // Scanning in id order, a later value that only ties the worst kept one is worse than
    // it (larger id): only strictly larger values enter.
    let mut t = h[0].0;
    let mut i = n;
    while i < row.len() {
        let end = (i + 16).min(row.len());
        let block = &row[i..end];
        if block.iter().fold(false, |a, &v| a | (v > t)) {
            for (j, &v) in block.iter().enumerate() {
                if v > t {
                    h[0] = (v, (i + j) as u32);
                    sift_down(h, 0, worse);
                    t = h[0].0;
                }
            }
        }
        i = end;
    }
    h.sort_unstable_by(|a, b| {
        if worse(*b, *a) {
            Ordering::Less
        } else if a.1 == b.1 {
            Ordering::Equal
        } else {
            Ordering::Greater
        }
    });
    for (k, &(_, id)) in h.iter().enumerate() {
        ids[k] = id as i32;
        vals[k] = row[id as usize];
    }
}

/// Large `n`: estimates a threshold that about `2n` values exceed from an evenly spaced
/// sample, collects those values, and selects exactly among them. Returns false (nothing
/// written) when fewer than `n` values exceed the estimate.
fn by_threshold(row: &[f32], ids: &mut [i32], vals: &mut [f32], s: &mut TopNScratch) -> bool {
    let n = ids.len().min(vals.len());
    let len = row.len();
    let samples = (8 * n).min(len);
    let stride = len / samples;
    // The sample (in `heap`, as (value, id)), and its rank that maps to ~2n in the row.
    let h = &mut s.heap;
    h.clear();
    h.extend((0..samples).map(|k| (key(row[k * stride]), (k * stride) as u32)));
    let rank = ((2 * n * samples) / len).clamp(1, samples) - 1;
    let desc = |a: &(f32, u32), b: &(f32, u32)| b.0.total_cmp(&a.0);
    h.select_nth_unstable_by(rank, desc);
    let t = h[rank].0;
    // Every value strictly above the threshold.
    let c = &mut s.keep;
    c.clear();
    for (i, &v) in row.iter().enumerate() {
        if v > t {
            c.push((i as u32, v));
        }
    }
    if c.len() < n {
        return false;
    }
    // Candidates are above a threshold: no NaN among them, plain comparisons suffice.
    let cmp = |a: &(u32, f32), b: &(u32, f32)| {
        if a.1 > b.1 || (a.1 == b.1 && a.0 < b.0) {
            Ordering::Less
        } else if a.0 == b.0 {
            Ordering::Equal
        } else {
            Ordering::Greater
        }
    };
    if c.len() > n {
        c.select_nth_unstable_by(n, cmp);
    }
    let head = &mut c[..n];
    head.sort_unstable_by(cmp);
    for (k, &(id, v)) in head.iter().enumerate() {
        ids[k] = id as i32;
        vals[k] = v;
    }
    true
}

/// Restores the heap property below `p`.
#[inline]
fn sift_down(h: &mut [(f32, u32)], mut p: usize, worse: impl Fn((f32, u32), (f32, u32)) -> bool) {
    let n = h.len();
    loop {
        let (l, r) = (2 * p + 1, 2 * p + 2);
        let mut m = p;
        if l < n && worse(h[l], h[m]) {
            m = l;
        }
        if r < n && worse(h[r], h[m]) {
            m = r;
        }
        if m == p {
            return;
        }
        h.swap(p, m);
        p = m;
    }
}

/// The first index of the largest value (NaN counts as −∞; index 0 if all are NaN/−∞).
fn argmax(row: &[f32]) -> (usize, f32) {
    let m = row
        .iter()
        .fold(f32::NEG_INFINITY, |a, &v| if v > a { v } else { a });
    let i = if m == f32::NEG_INFINITY {
        0
    } else {
        row.iter().position(|&v| v == m).unwrap_or(0)
    };
    (i, row[i])
}

/// `log(sum(exp(row)))`, computed stably (NaN values are skipped; −∞ if nothing is finite).
pub fn log_sum_exp(row: &[f32]) -> f32 {
    let m = row
        .iter()
        .copied()
        .filter(|v| !v.is_nan())
        .fold(f32::NEG_INFINITY, f32::max);
    if !m.is_finite() {
        return m;
    }
    let s: f64 = row
        .iter()
        .filter(|v| !v.is_nan())
        .map(|&v| ((v - m) as f64).exp())
        .sum();
    m + s.ln() as f32
}

/// Sets the banned ids of `row` to −∞; an id outside the row is an error.
pub fn apply_bans(row: &mut [f32], banned: &[i32]) -> Result<()> {
    for &b in banned {
        let slot = usize::try_from(b).ok().and_then(|i| row.get_mut(i));
        match slot {
            Some(v) => *v = f32::NEG_INFINITY,
            None => {
                return Err(BackendError::invalid(format!(
                    "banned token id {b} out of 0..{}",
                    row.len()
                )))
            }
        }
    }
    Ok(())
}

/// Keeps only the logits of `allowed` (every other entry of `row` becomes −∞); an id outside
/// the row is an error.
pub fn apply_allowed(row: &mut [f32], allowed: &[i32], s: &mut TopNScratch) -> Result<()> {
    s.keep.clear();
    for &a in allowed {
        let v = usize::try_from(a)
            .ok()
            .and_then(|i| row.get(i))
            .ok_or_else(|| {
                BackendError::invalid(format!("allowed token id {a} out of 0..{}", row.len()))
            })?;
        s.keep.push((a as u32, *v));
    }
    row.fill(f32::NEG_INFINITY);
    for &(i, v) in &s.keep {
        row[i as usize] = v;
    }
    Ok(())
}

/// Checks an output request against a vocabulary of `n_vocab` before any work is done.
pub fn check_output(req: &RowOutput<'_>, n_vocab: usize) -> Result<()> {
    match &req.want {
        Want::Logits(l) if l.len() != n_vocab => {
            return Err(BackendError::invalid(format!(
                "output row {}: logits buffer of {} floats for a vocabulary of {n_vocab}",
                req.row,
                l.len()
            )))
        }
        Want::TopN { ids, logits } if ids.len() != logits.len() || ids.len() > n_vocab => {
            return Err(BackendError::invalid(format!(
                "output row {}: top-N of {} ids and {} logits for a vocabulary of {n_vocab}",
                req.row,
                ids.len(),
                logits.len()
            )))
        }
        _ => {}
    }
    let out_of_range = |v: &[i32]| v.iter().copied().find(|&b| b < 0 || b as usize >= n_vocab);
    if let Some(b) = out_of_range(req.banned) {
        return Err(BackendError::invalid(format!(
            "output row {}: banned token id {b} out of 0..{n_vocab}",
            req.row
        )));
    }
    if let Some(b) = req.allowed.and_then(out_of_range) {
        return Err(BackendError::invalid(format!(
            "output row {}: allowed token id {b} out of 0..{n_vocab}",
            req.row
        )));
    }
    if let Some((t, _)) = &req.target {
        if *t as usize >= n_vocab {
            return Err(BackendError::invalid(format!(
                "output row {}: target token id {t} out of 0..{n_vocab}",
                req.row
            )));
        }
    }
    Ok(())
}

/// Serves one output request from a logits row in host memory (which it modifies: bans).
pub fn write_output(row: &mut [f32], req: &mut RowOutput<'_>, s: &mut TopNScratch) -> Result<()> {
    write_output_with(row, req, s, log_sum_exp)
}

/// [`write_output`] with the backend's own log-sum-exp (e.g. a vectorised one).
pub fn write_output_with(
    row: &mut [f32],
    req: &mut RowOutput<'_>,
    s: &mut TopNScratch,
    lse: impl Fn(&[f32]) -> f32,
) -> Result<()> {
    apply_bans(row, req.banned)?;
    if let Some(a) = req.allowed {
        apply_allowed(row, a, s)?;
    }
    match &mut req.want {
        Want::Logits(out) => {
            if out.len() != row.len() {
                return Err(BackendError::invalid("logits buffer size mismatch"));
            }
            out.copy_from_slice(row);
        }
        Want::TopN { ids, logits } => top_n(row, ids, logits, s),
    }
    if let Some(l) = req.lse.as_deref_mut() {
        *l = lse(row);
    }
    if let Some((t, out)) = req.target.as_mut() {
        **out = *row
            .get(*t as usize)
            .ok_or_else(|| BackendError::invalid(format!("target token id {t} out of range")))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference(row: &[f32], n: usize) -> Vec<(i32, f32)> {
        let mut idx: Vec<usize> = (0..row.len()).collect();
        idx.sort_by(|&a, &b| key(row[b]).total_cmp(&key(row[a])).then(a.cmp(&b)));
        idx.iter().take(n).map(|&i| (i as i32, row[i])).collect()
    }

    #[test]
    fn top_n_matches_a_full_sort_on_both_paths() {
        let mut x: u64 = 12345;
        let mut s = TopNScratch::with_vocab(5000);
        for len in [1usize, 7, 100, 5000] {
            let row: Vec<f32> = (0..len)
                .map(|i| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    match i % 97 {
                        0 => f32::NAN,
                        1 => f32::NEG_INFINITY,
                        2 => 3.0, // ties
                        _ => ((x >> 40) % 64) as f32 / 8.0,
                    }
                })
                .collect();
            for n in [1, 2, 5, 64, len / 2, len] {
                let n = n.min(len);
                let (mut ids, mut vals) = (vec![0i32; n], vec![0f32; n]);
                top_n(&row, &mut ids, &mut vals, &mut s);
                let want = reference(&row, n);
                let got: Vec<(i32, f32)> = ids.iter().copied().zip(vals.iter().copied()).collect();
                for (g, w) in got.iter().zip(&want) {
                    assert_eq!(g.0, w.0, "len {len} n {n}");
                    assert_eq!(g.1.to_bits(), w.1.to_bits());
                }
            }
        }
    }

    #[test]
    fn top_n_handles_ties_and_empty_rows_on_the_threshold_path() {
        let mut s = TopNScratch::with_vocab(4000);
        for fill in [1.0f32, f32::NEG_INFINITY, f32::NAN] {
            let mut row = vec![fill; 4000];
            row[3999] = 2.0;
            let (mut ids, mut vals) = (vec![0i32; 100], vec![0f32; 100]);
            top_n(&row, &mut ids, &mut vals, &mut s);
            assert_eq!(ids[0], 3999);
            assert_eq!(&ids[1..4], &[0, 1, 2], "{fill}");
            assert_eq!(
                reference(&row, 100).iter().map(|p| p.0).collect::<Vec<_>>(),
                ids
            );
        }
    }

    #[test]
    fn bans_reach_every_output() {
        let mut row = vec![1.0f32, 5.0, 3.0, 4.0];
        let mut lse = 0.0;
        let mut tl = 0.0;
        let (mut ids, mut vals) = ([0i32; 2], [0f32; 2]);
        let mut req = RowOutput {
            row: 0,
            want: Want::TopN {
                ids: &mut ids,
                logits: &mut vals,
            },
            banned: &[1],
            allowed: None,
            lse: Some(&mut lse),
            target: Some((1, &mut tl)),
        };
        write_output(&mut row, &mut req, &mut TopNScratch::default()).unwrap();
        assert_eq!(ids, [3, 2]);
        assert_eq!(tl, f32::NEG_INFINITY);
        let want = (1f64.exp() + 3f64.exp() + 4f64.exp()).ln() as f32;
        assert!((lse - want).abs() < 1e-6);
        let bad = RowOutput {
            row: 0,
            want: Want::TopN {
                ids: &mut [],
                logits: &mut [],
            },
            banned: &[4],
            allowed: None,
            lse: None,
            target: None,
        };
        assert!(check_output(&bad, 4).is_err());
    }
}
