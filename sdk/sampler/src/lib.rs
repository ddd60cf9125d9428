//! `kiln-sampler`: write a Kiln sampler (a sandboxed WebAssembly module that chooses every
//! token, see `sdk/sampler/ABI.md`) in Rust.
//!
//! Implement [`Sampler`] for a type and call [`export_sampler!`] on it; build the crate as a
//! `cdylib` for `wasm32-unknown-unknown`. The crate is `no_std` (with `alloc`): on wasm32 it
//! brings a small global allocator and a trapping panic handler (features `allocator` and
//! `panic-handler`). On other targets the host functions are served by a mock ([`mock`]) so
//! that sampling logic can be unit-tested natively.
//!
//! Building blocks: [`chain`] (llama.cpp's penalties → top-k → top-p → min-p → temperature
//! chain, mirroring the host's native sampler exactly), [`mirostat`], [`stop`] (stop
//! strings), [`constraint`] (token masks from a byte automaton: [`regex`] or [`json_grammar`]),
//! [`json`] (a small configuration parser), [`rng`] and [`math`].

#![no_std]

extern crate alloc;
#[cfg(not(target_arch = "wasm32"))]
extern crate std;

pub mod chain;
pub mod constraint;
pub mod host;
pub mod json;
pub mod json_grammar;
pub mod math;
pub mod mirostat;
pub mod regex;
pub mod rng;
pub mod sort;
pub mod stop;

#[doc(hidden)]
pub mod rt;

#[cfg(all(target_arch = "wasm32", feature = "allocator"))]
mod wasm_alloc;

#[cfg(not(target_arch = "wasm32"))]
pub use host::mock;

/// On wasm32 a panic traps: the host ends this sequence with an error (the ABI allows it).
#[cfg(all(target_arch = "wasm32", feature = "panic-handler"))]
#[panic_handler]
fn panic(_: &core::panic::PanicInfo<'_>) -> ! {
    core::arch::wasm32::unreachable()
}

use alloc::string::String;
use core::fmt;

/// The version of the sampler ABI this crate implements (`kiln_abi_version`).
pub const ABI_VERSION: i32 = 1;

/// The minor version of the ABI this crate implements: 1.1 adds the optional export
/// `kiln_accept_prompt` (a whole prompt in one call). Modules keep returning
/// [`ABI_VERSION`] from `kiln_abi_version`; the host finds the optional exports by name.
pub const ABI_MINOR: i32 = 1;

/// The largest top-N view the ABI allows.
pub const MAX_TOP_N: usize = 4096;

/// An error a sampler returns; its message reaches the host through `set_error`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    message: String,
}

impl Error {
    /// An error with this message.
    pub fn new(message: impl Into<String>) -> Self {
        Error {
            message: message.into(),
        }
    }

    /// The message.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl From<&str> for Error {
    fn from(message: &str) -> Self {
        Error::new(message)
    }
}

impl From<String> for Error {
    fn from(message: String) -> Self {
        Error::new(message)
    }
}

/// Which logits a sampler wants each step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ViewKind {
    /// The whole row: `n_vocab` logits, index = token id.
    Full,
    /// The `N` best tokens (1 ..= [`MAX_TOP_N`]), best first, with the row's log-sum-exp.
    Top(usize),
}

/// The logits of one step, in the form the sampler asked for.
#[derive(Debug)]
pub enum View<'a> {
    /// The whole row (index = token id). The sampler may modify it in place.
    Full(&'a mut [f32]),
    /// The head of the row: `ids[i]` has logit `logits[i]`, best first.
    Top {
        /// Token ids, best first.
        ids: &'a [i32],
        /// Their logits (modifiable in place).
        logits: &'a mut [f32],
        /// The log-sum-exp of the full row: `exp(logit - lse)` is a token's probability.
        lse: f32,
    },
}

/// What a sampler chose.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Choice {
    /// Append this token.
    Token(u32),
    /// End the sequence normally (e.g. a stop string was reached).
    Stop,
}

/// A sampling policy, one instance per sequence. [`export_sampler!`] turns it into a module.
pub trait Sampler: Sized {
    /// Builds the sampler from its configuration bytes (conventionally JSON; may be empty),
    /// the sequence's seed and the vocabulary size. Bad configuration → `Err`.
    fn init(config: &[u8], seed: u64, n_vocab: usize) -> Result<Self, Error>;

    /// The view of the logits wanted at every step (asked once, right after [`Sampler::init`]).
    fn view(&self) -> ViewKind {
        ViewKind::Full
    }

    /// Chooses the next token from this step's logits.
    fn sample(&mut self, view: View<'_>) -> Result<Choice, Error>;

    /// Records a token appended to the sequence: the prompt's first, then each chosen one.
    fn accept(&mut self, token: u32);

    /// Records a whole prompt at once (ABI 1.1, `kiln_accept_prompt`); the default accepts
    /// its tokens one by one. Override it when a prompt can be taken in faster than that.
    fn accept_prompt(&mut self, tokens: &[u32]) {
        for &t in tokens {
            self.accept(t);
        }
    }

    /// Starts a new sequence with the same configuration and seed.
    fn reset(&mut self);

    /// Before each step: `Some(bitset)` of the allowed tokens (bit `i % 32` of word `i / 32`),
    /// or `None` for no constraint. Exported only with `export_sampler!(Type, mask)`.
    fn mask(&mut self) -> Option<&[u32]> {
        None
    }
}

/// Generates the module's exports (`kiln_abi_version`, `kiln_alloc`, `kiln_init`,
/// `kiln_sample`, `kiln_accept`, `kiln_accept_prompt`, `kiln_reset`, and with `, mask` also
/// `kiln_mask`) for a type implementing [`Sampler`]. The exports exist only when compiling for
/// wasm32.
///
/// ```
/// use kiln_sampler::{export_sampler, Choice, Error, Sampler, View, ViewKind};
///
/// /// Always the most likely token.
/// struct Argmax;
///
/// impl Sampler for Argmax {
///     fn init(config: &[u8], _seed: u64, _n_vocab: usize) -> Result<Self, Error> {
///         if config.is_empty() { Ok(Argmax) } else { Err(Error::new("no configuration")) }
///     }
///     fn view(&self) -> ViewKind {
///         ViewKind::Top(1)
///     }
///     fn sample(&mut self, view: View<'_>) -> Result<Choice, Error> {
///         match view {
///             View::Top { ids, .. } if !ids.is_empty() => Ok(Choice::Token(ids[0] as u32)),
///             _ => Err(Error::new("empty view")),
///         }
///     }
///     fn accept(&mut self, _token: u32) {}
///     fn reset(&mut self) {}
/// }
///
/// export_sampler!(Argmax);
/// # fn main() {}
/// ```
#[macro_export]
macro_rules! export_sampler {
    (@common $t:ty) => {
        #[cfg(target_arch = "wasm32")]
        static __KILN_SAMPLER: $crate::rt::Slot<$t> = $crate::rt::Slot::new();

        /// ABI: the version implemented.
        #[cfg(target_arch = "wasm32")]
        #[unsafe(no_mangle)]
        pub extern "C" fn kiln_abi_version() -> i32 {
            $crate::ABI_VERSION
        }

        /// ABI: a buffer for the host to write into.
        #[cfg(target_arch = "wasm32")]
        #[unsafe(no_mangle)]
        pub extern "C" fn kiln_alloc(size: i32) -> i32 {
            $crate::rt::alloc(size)
        }

        /// ABI: builds the sampler; returns its view or a negative error.
        #[cfg(target_arch = "wasm32")]
        #[unsafe(no_mangle)]
        pub extern "C" fn kiln_init(config_ptr: i32, config_len: i32, seed: i64, n_vocab: i32) -> i32 {
            // SAFETY: the host wrote `config_len` bytes at `config_ptr` (the runtime checks
            // the range against the memory's size).
            unsafe { $crate::rt::init(&__KILN_SAMPLER, config_ptr, config_len, seed, n_vocab) }
        }

        /// ABI: chooses a token from the logits at `buf`.
        #[cfg(target_arch = "wasm32")]
        #[unsafe(no_mangle)]
        pub extern "C" fn kiln_sample(buf: i32, n: i32, lse: f32) -> i32 {
            // SAFETY: the host wrote the view at `buf` (the runtime checks the range).
            unsafe { $crate::rt::sample(&__KILN_SAMPLER, buf, n, lse) }
        }

        /// ABI: records a token appended to the sequence.
        #[cfg(target_arch = "wasm32")]
        #[unsafe(no_mangle)]
        pub extern "C" fn kiln_accept(token: i32) {
            $crate::rt::accept(&__KILN_SAMPLER, token)
        }

        /// ABI 1.1: records the `n` prompt tokens (i32) at `ptr`.
        #[cfg(target_arch = "wasm32")]
        #[unsafe(no_mangle)]
        pub extern "C" fn kiln_accept_prompt(ptr: i32, n: i32) {
            // SAFETY: the host wrote `n` tokens at `ptr` (the range is checked against the
            // memory's size).
            unsafe { $crate::rt::accept_prompt(&__KILN_SAMPLER, ptr, n) }
        }

        /// ABI: starts a new sequence.
        #[cfg(target_arch = "wasm32")]
        #[unsafe(no_mangle)]
        pub extern "C" fn kiln_reset() {
            $crate::rt::reset(&__KILN_SAMPLER)
        }
    };

    ($t:ty) => {
        $crate::export_sampler!(@common $t);
    };
    ($t:ty, mask) => {
        $crate::export_sampler!(@common $t);

        /// ABI: the allowed tokens for the next step (0 = no constraint).
        #[cfg(target_arch = "wasm32")]
        #[unsafe(no_mangle)]
        pub extern "C" fn kiln_mask() -> i32 {
            $crate::rt::mask(&__KILN_SAMPLER)
        }
    };
}
