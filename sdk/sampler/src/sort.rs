//! Small sorting routines: one instantiation of `core`'s sort is about 10–20 KB of wasm,
//! these are a few hundred bytes. [`heapsort`] for sorts off the hot path, [`sort`] (an
//! introsort) and [`select_nth`] (an introselect) for the sampling chain. All are O(n log n)
//! in the worst case (O(n) expected for selection) and allocate nothing. None is stable: with
//! a strict total order (as the samplers use) the result is unique anyway.

/// Sorts `v` in place so that `less(a, b)` never holds for a later `a` and an earlier `b`.
/// Not stable.
pub fn heapsort<T, F: FnMut(&T, &T) -> bool>(v: &mut [T], mut less: F) {
    let n = v.len();
    let mut sift = |v: &mut [T], mut root: usize, end: usize| loop {
        let mut child = 2 * root + 1;
        if child >= end {
            return;
        }
        if child + 1 < end && less(&v[child], &v[child + 1]) {
            child += 1;
        }
        if !less(&v[root], &v[child]) {
            return;
        }
        v.swap(root, child);
        root = child;
    };
    for i in (0..n / 2).rev() {
        sift(v, i, n);
    }
    for end in (1..n).rev() {
        v.swap(0, end);
        sift(v, 0, end);
    }
}

/// Runs shorter than this are insertion-sorted.
const SMALL: usize = 16;

fn insertion_sort<T, F: FnMut(&T, &T) -> bool>(v: &mut [T], less: &mut F) {
    for i in 1..v.len() {
        let mut j = i;
        while j > 0 && less(&v[j], &v[j - 1]) {
            v.swap(j, j - 1);
            j -= 1;
        }
    }
}

/// Partitions around a median-of-three pivot; returns the pivot's final index (everything
/// before it is less, nothing after it is).
fn partition<T, F: FnMut(&T, &T) -> bool>(v: &mut [T], less: &mut F) -> usize {
    let n = v.len();
    let (a, b, c) = (0, n / 2, n - 1);
    // Order v[a] <= v[b] <= v[c], then use v[b] as the pivot (moved to the end).
    if less(&v[b], &v[a]) {
        v.swap(a, b);
    }
    if less(&v[c], &v[b]) {
        v.swap(b, c);
        if less(&v[b], &v[a]) {
            v.swap(a, b);
        }
    }
    v.swap(b, n - 1);
    let mut store = 0;
    for j in 0..n - 1 {
        if less(&v[j], &v[n - 1]) {
            v.swap(store, j);
            store += 1;
        }
    }
    v.swap(store, n - 1);
    store
}

/// How many partitioning rounds before falling back to heapsort.
fn depth_budget(n: usize) -> u32 {
    2 * (usize::BITS - n.leading_zeros()) + 4
}

/// Sorts `v` in place by the strict order `less` (an introsort). Not stable.
pub fn sort<T, F: FnMut(&T, &T) -> bool>(v: &mut [T], mut less: F) {
    let mut budget = depth_budget(v.len());
    let mut v = v;
    loop {
        if v.len() <= SMALL {
            insertion_sort(v, &mut less);
            return;
        }
        if budget == 0 {
            heapsort(v, less);
            return;
        }
        budget -= 1;
        let p = partition(v, &mut less);
        let (left, rest) = v.split_at_mut(p);
        let right = &mut rest[1..];
        // Recurse into the smaller side, loop on the larger: O(log n) stack.
        if left.len() < right.len() {
            sort_bounded(left, &mut less, budget);
            v = right;
        } else {
            sort_bounded(right, &mut less, budget);
            v = left;
        }
    }
}

fn sort_bounded<T, F: FnMut(&T, &T) -> bool>(v: &mut [T], less: &mut F, budget: u32) {
    let mut budget = budget;
    let mut v = v;
    loop {
        if v.len() <= SMALL {
            insertion_sort(v, less);
            return;
        }
        if budget == 0 {
            heapsort(v, &mut *less);
            return;
        }
        budget -= 1;
        let p = partition(v, less);
        let (left, rest) = v.split_at_mut(p);
        let right = &mut rest[1..];
        if left.len() < right.len() {
            sort_bounded(left, less, budget);
            v = right;
        } else {
            sort_bounded(right, less, budget);
            v = left;
        }
    }
}

/// Reorders `v` so that `v[k]` is the element a sort would put there, with everything before
/// it not greater and everything after it not less (an introselect). `k < v.len()`, else
/// nothing happens.
pub fn select_nth<T, F: FnMut(&T, &T) -> bool>(v: &mut [T], k: usize, mut less: F) {
    if k >= v.len() {
        return;
    }
    let mut budget = depth_budget(v.len());
    let (mut lo, mut hi) = (0, v.len());
    while hi - lo > SMALL {
        if budget == 0 {
            heapsort(&mut v[lo..hi], less);
            return;
        }
        budget -= 1;
        let p = lo + partition(&mut v[lo..hi], &mut less);
        match k.cmp(&p) {
            core::cmp::Ordering::Equal => return,
            core::cmp::Ordering::Less => hi = p,
            core::cmp::Ordering::Greater => lo = p + 1,
        }
    }
    insertion_sort(&mut v[lo..hi], &mut less);
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec::Vec;

    #[test]
    fn sorts_like_std() {
        let mut r = crate::rng::Rng::new(3);
        for n in [0usize, 1, 2, 3, 10, 100, 1000] {
            let mut a: Vec<u64> = (0..n).map(|_| r.next_u64() % 50).collect();
            let mut b = a.clone();
            heapsort(&mut a, |x, y| x < y);
            b.sort();
            assert_eq!(a, b);
            heapsort(&mut a, |x, y| x > y);
            b.reverse();
            assert_eq!(a, b);
        }
    }

    #[test]
    fn introsort_and_select_agree_with_std() {
        let mut r = crate::rng::Rng::new(4);
        for n in [0usize, 1, 2, 5, 16, 17, 40, 100, 1000, 20_000] {
            for modulus in [3u64, 1000, u64::MAX] {
                for shape in 0..4 {
                    let mut a: Vec<u64> = (0..n).map(|_| r.next_u64() % modulus).collect();
                    match shape {
                        1 => a.sort(),
                        2 => a.sort_by(|x, y| y.cmp(x)),
                        3 => a
                            .iter_mut()
                            .enumerate()
                            .for_each(|(i, x)| *x = (i % 7) as u64),
                        _ => {}
                    }
                    let mut want = a.clone();
                    want.sort();
                    let mut got = a.clone();
                    sort(&mut got, |x, y| x < y);
                    assert_eq!(got, want, "sort n={n} mod={modulus} shape={shape}");
                    if n > 0 {
                        for k in [0, n / 3, n / 2, n - 1] {
                            let mut s = a.clone();
                            select_nth(&mut s, k, |x, y| x < y);
                            assert_eq!(s[k], want[k]);
                            assert!(s[..k].iter().all(|x| *x <= s[k]));
                            assert!(s[k + 1..].iter().all(|x| *x >= s[k]));
                        }
                    }
                }
            }
        }
    }
}
