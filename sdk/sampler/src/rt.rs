//! The glue behind [`export_sampler!`](crate::export_sampler): checks every value the host
//! passes, turns pointers into slices, and errors into `set_error` plus a negative return.
//! Not meant to be called directly.

use crate::{host, Choice, Error, Sampler, View, ViewKind, MAX_TOP_N};
use alloc::format;
use core::cell::UnsafeCell;

/// The one sampler instance of a module (wasm modules are single-threaded).
pub struct Slot<T>(UnsafeCell<Option<Instance<T>>>);

// SAFETY: a wasm instance runs one call at a time on one thread; the slot is never shared
// between threads.
unsafe impl<T> Sync for Slot<T> {}

impl<T> Slot<T> {
    /// An empty slot.
    pub const fn new() -> Self {
        Slot(UnsafeCell::new(None))
    }

    /// The slot's content.
    #[allow(clippy::mut_from_ref)]
    fn get(&self) -> &mut Option<Instance<T>> {
        // SAFETY: single-threaded, and no export re-enters another while it holds this.
        unsafe { &mut *self.0.get() }
    }
}

impl<T> Default for Slot<T> {
    fn default() -> Self {
        Self::new()
    }
}

/// A sampler with what the runtime knows about it.
pub struct Instance<T> {
    sampler: T,
    view: ViewKind,
    n_vocab: usize,
}

impl<T: Sampler> Instance<T> {
    /// Builds the sampler; returns it with the ABI value of its view.
    pub fn new(config: &[u8], seed: u64, n_vocab: usize) -> Result<(Self, i32), Error> {
        if n_vocab == 0 {
            return Err(Error::new("the vocabulary is empty"));
        }
        let sampler = T::init(config, seed, n_vocab)?;
        let view = sampler.view();
        let code = match view {
            ViewKind::Full => 0,
            ViewKind::Top(n) if (1..=MAX_TOP_N).contains(&n) => n as i32,
            ViewKind::Top(n) => {
                return Err(Error::new(format!(
                    "sampler asked for a top-{n} view (allowed: 1..={MAX_TOP_N})"
                )))
            }
        };
        Ok((
            Instance {
                sampler,
                view,
                n_vocab,
            },
            code,
        ))
    }

    /// One step on a full row (`view` must be [`ViewKind::Full`]).
    pub fn sample_full(&mut self, logits: &mut [f32]) -> Result<i32, Error> {
        if self.view != ViewKind::Full {
            return Err(Error::new("the host passed a full row to a top-N sampler"));
        }
        if logits.len() != self.n_vocab {
            return Err(Error::new(format!(
                "the host passed {} logits for a vocabulary of {}",
                logits.len(),
                self.n_vocab
            )));
        }
        let choice = self.sampler.sample(View::Full(logits))?;
        self.check(choice)
    }

    /// One step on a top-N head (`view` must be [`ViewKind::Top`]).
    pub fn sample_top(&mut self, ids: &[i32], logits: &mut [f32], lse: f32) -> Result<i32, Error> {
        let ViewKind::Top(cap) = self.view else {
            return Err(Error::new(
                "the host passed a top-N view to a full-row sampler",
            ));
        };
        if ids.len() > cap || ids.len() != logits.len() {
            return Err(Error::new(format!(
                "the host passed a view of {} tokens to a top-{cap} sampler",
                ids.len()
            )));
        }
        if let Some(bad) = ids
            .iter()
            .find(|&&id| id < 0 || id as usize >= self.n_vocab)
        {
            return Err(Error::new(format!(
                "the host passed token id {bad} in the view"
            )));
        }
        let choice = self.sampler.sample(View::Top { ids, logits, lse })?;
        self.check(choice)
    }

    fn check(&self, choice: Choice) -> Result<i32, Error> {
        match choice {
            Choice::Stop => Ok(-1),
            Choice::Token(id) if (id as usize) < self.n_vocab => Ok(id as i32),
            Choice::Token(id) => Err(Error::new(format!(
                "sampler chose token {id}, outside the vocabulary of {}",
                self.n_vocab
            ))),
        }
    }

    /// The sampler itself.
    pub fn sampler(&mut self) -> &mut T {
        &mut self.sampler
    }
}

/// Reports `e` to the host and returns the ABI error code.
fn fail(e: &Error, code: i32) -> i32 {
    host::set_error(e.message());
    code
}

/// `kiln_alloc`: an 8-byte-aligned buffer of `size` bytes, or 0.
pub fn alloc(size: i32) -> i32 {
    let Ok(size) = usize::try_from(size) else {
        return 0;
    };
    let Ok(layout) = core::alloc::Layout::from_size_align(size.max(8), 8) else {
        return 0;
    };
    // SAFETY: the layout has a non-zero size.
    let p = unsafe { alloc::alloc::alloc(layout) };
    // Pointers are 32-bit on wasm32; anything else (a native test) cannot be represented.
    i32::try_from(p as usize).unwrap_or(0)
}

/// The current size of linear memory in bytes (wasm32), or "unlimited" elsewhere.
fn memory_bytes() -> usize {
    #[cfg(target_arch = "wasm32")]
    {
        core::arch::wasm32::memory_size(0).saturating_mul(65536)
    }
    #[cfg(not(target_arch = "wasm32"))]
    {
        usize::MAX
    }
}

/// Checks that `[ptr, ptr + len)` lies in memory and `ptr` is `align`-aligned; returns it.
fn range(ptr: i32, len: usize, align: usize) -> Option<*mut u8> {
    let start = usize::try_from(ptr).ok()?;
    if start == 0 || start % align != 0 {
        return None;
    }
    let end = start.checked_add(len)?;
    (end <= memory_bytes()).then_some(start as *mut u8)
}

/// `kiln_init`.
///
/// # Safety
/// `config_ptr` must point to `config_len` readable bytes (the range is checked against the
/// memory's size, which makes any in-range value safe on wasm32).
pub unsafe fn init<T: Sampler>(
    slot: &Slot<T>,
    config_ptr: i32,
    config_len: i32,
    seed: i64,
    n_vocab: i32,
) -> i32 {
    let slot = slot.get();
    *slot = None;
    let Ok(n_vocab) = usize::try_from(n_vocab) else {
        return fail(&Error::new("negative vocabulary size"), -1);
    };
    let config: &[u8] = match usize::try_from(config_len) {
        Ok(0) => &[],
        Ok(len) => match range(config_ptr, len, 1) {
            // SAFETY: the range lies in linear memory.
            Some(p) => unsafe { core::slice::from_raw_parts(p, len) },
            None => return fail(&Error::new("configuration pointer out of range"), -1),
        },
        Err(_) => return fail(&Error::new("negative configuration length"), -1),
    };
    match Instance::<T>::new(config, seed as u64, n_vocab) {
        Ok((instance, code)) => {
            *slot = Some(instance);
            code
        }
        Err(e) => fail(&e, -1),
    }
}

/// `kiln_sample`.
///
/// # Safety
/// `buf` must hold the view the sampler asked for (checked against the memory's size).
pub unsafe fn sample<T: Sampler>(slot: &Slot<T>, buf: i32, n: i32, lse: f32) -> i32 {
    let Some(instance) = slot.get().as_mut() else {
        return fail(&Error::new("kiln_sample before a successful kiln_init"), -2);
    };
    let Ok(n) = usize::try_from(n) else {
        return fail(&Error::new("negative view length"), -2);
    };
    let result = match instance.view {
        ViewKind::Full => match range(buf, n.saturating_mul(4), 4) {
            // SAFETY: in range, aligned, and nothing else refers to this memory now.
            Some(p) => {
                instance.sample_full(unsafe { core::slice::from_raw_parts_mut(p.cast(), n) })
            }
            None => Err(Error::new("view buffer out of range")),
        },
        ViewKind::Top(_) => match range(buf, n.saturating_mul(8), 4) {
            Some(p) => {
                // SAFETY: in range and aligned; the ids and the logits do not overlap.
                let (ids, logits) = unsafe {
                    (
                        core::slice::from_raw_parts(p.cast::<i32>(), n),
                        core::slice::from_raw_parts_mut(p.add(4 * n).cast::<f32>(), n),
                    )
                };
                instance.sample_top(ids, logits, lse)
            }
            None => Err(Error::new("view buffer out of range")),
        },
    };
    result.unwrap_or_else(|e| fail(&e, -2))
}

/// `kiln_accept`.
pub fn accept<T: Sampler>(slot: &Slot<T>, token: i32) {
    if let (Some(instance), Ok(token)) = (slot.get().as_mut(), u32::try_from(token)) {
        instance.sampler.accept(token);
    }
}

/// `kiln_accept_prompt` (ABI 1.1): the `n` tokens at `ptr`, in order. Out-of-range
/// arguments accept nothing (the host never sends them).
///
/// # Safety
/// `ptr` must point to `n` readable i32 values (checked against the memory's size).
pub unsafe fn accept_prompt<T: Sampler>(slot: &Slot<T>, ptr: i32, n: i32) {
    let Some(instance) = slot.get().as_mut() else {
        return;
    };
    let Ok(n) = usize::try_from(n) else {
        return;
    };
    if n == 0 {
        return;
    }
    let Some(p) = n.checked_mul(4).and_then(|len| range(ptr, len, 4)) else {
        return;
    };
    // SAFETY: the range lies in linear memory and is 4-aligned; any bits are a valid u32.
    let tokens = unsafe { core::slice::from_raw_parts(p.cast::<u32>(), n) };
    instance.sampler.accept_prompt(tokens);
}

/// `kiln_reset`.
pub fn reset<T: Sampler>(slot: &Slot<T>) {
    if let Some(instance) = slot.get().as_mut() {
        instance.sampler.reset();
    }
}

/// `kiln_mask`: 0, or a pointer to `ceil(n_vocab / 32)` words.
pub fn mask<T: Sampler>(slot: &Slot<T>) -> i32 {
    let Some(instance) = slot.get().as_mut() else {
        return 0;
    };
    let words = instance.n_vocab.div_ceil(32);
    match instance.sampler.mask() {
        Some(bits) if bits.len() >= words => i32::try_from(bits.as_ptr() as usize).unwrap_or(0),
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mock;
    use alloc::vec;
    use alloc::vec::Vec;

    struct Echo {
        top: usize,
        seen: Vec<u32>,
    }

    impl Sampler for Echo {
        fn init(config: &[u8], _seed: u64, _n: usize) -> Result<Self, Error> {
            match config {
                b"full" => Ok(Echo {
                    top: 0,
                    seen: vec![],
                }),
                b"big" => Ok(Echo {
                    top: 5000,
                    seen: vec![],
                }),
                b"top" => Ok(Echo {
                    top: 2,
                    seen: vec![],
                }),
                _ => Err(Error::new("bad config")),
            }
        }
        fn view(&self) -> ViewKind {
            if self.top == 0 {
                ViewKind::Full
            } else {
                ViewKind::Top(self.top)
            }
        }
        fn sample(&mut self, view: View<'_>) -> Result<Choice, Error> {
            match view {
                View::Full(l) => Ok(Choice::Token(l.len() as u32 - 1 + self.seen.len() as u32)),
                View::Top { ids, .. } => Ok(if ids.is_empty() {
                    Choice::Stop
                } else {
                    Choice::Token(ids[0] as u32)
                }),
            }
        }
        fn accept(&mut self, token: u32) {
            self.seen.push(token);
        }
        fn reset(&mut self) {
            self.seen.clear();
        }
    }

    #[test]
    fn instance_checks_views_and_choices() {
        assert_eq!(
            Instance::<Echo>::new(b"x", 1, 4).err(),
            Some(Error::new("bad config"))
        );
        assert!(Instance::<Echo>::new(b"big", 1, 4).is_err());
        assert!(Instance::<Echo>::new(b"full", 1, 0).is_err());
        let (mut inst, code) = Instance::<Echo>::new(b"full", 1, 4).unwrap();
        assert_eq!(code, 0);
        assert_eq!(inst.sample_full(&mut [0.0; 4]), Ok(3));
        assert!(inst.sample_full(&mut [0.0; 3]).is_err());
        assert!(inst.sample_top(&[1], &mut [0.0], 0.0).is_err());
        inst.sampler().accept(1);
        // Chose token 4 of a vocabulary of 4.
        assert!(inst.sample_full(&mut [0.0; 4]).is_err());
        let (mut inst, code) = Instance::<Echo>::new(b"top", 1, 4).unwrap();
        assert_eq!(code, 2);
        assert_eq!(inst.sample_top(&[3, 1], &mut [1.0, 0.0], 0.0), Ok(3));
        assert_eq!(inst.sample_top(&[], &mut [], 0.0), Ok(-1));
        assert!(inst
            .sample_top(&[3, 1, 2], &mut [1.0, 0.0, 0.0], 0.0)
            .is_err());
        assert!(inst.sample_top(&[4], &mut [1.0], 0.0).is_err());
        assert!(inst.sample_top(&[-1], &mut [1.0], 0.0).is_err());
        assert!(inst.sample_full(&mut [0.0; 4]).is_err());
    }

    #[test]
    fn errors_reach_set_error() {
        mock::set_vocab(&[b"a"]);
        assert_eq!(fail(&Error::new("boom"), -2), -2);
        assert_eq!(mock::take_error().as_deref(), Some("boom"));
        let slot = Slot::<Echo>::new();
        // SAFETY: no pointer is dereferenced before kiln_init succeeded.
        assert_eq!(unsafe { sample(&slot, 8, 1, 0.0) }, -2);
        assert!(mock::take_error().unwrap().contains("before"));
        // SAFETY: a zero length reads nothing.
        assert_eq!(unsafe { init(&slot, 0, 0, 1, 4) }, -1);
        assert_eq!(mock::take_error().as_deref(), Some("bad config"));
        assert_eq!(mask(&slot), 0);
        assert_eq!(range(0, 4, 4), None);
        assert_eq!(range(6, 4, 4), None);
        assert_eq!(range(-8, 4, 4), None);
    }
}
