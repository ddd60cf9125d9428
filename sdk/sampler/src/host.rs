//! Safe access to the host functions of the ABI (module `kiln`).
//!
//! On wasm32 these call the imports; on other targets they read a per-thread mock host
//! ([`mock`]) that tests fill with a vocabulary, end-of-generation tokens and a sequence.

use alloc::string::String;
use alloc::vec::Vec;

/// The kinds of special token [`special_token`] can ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Special {
    /// Beginning of sequence.
    Bos = 0,
    /// End of sequence.
    Eos = 1,
    /// End of turn.
    Eot = 2,
}

/// Longest token text [`token_bytes`] accepts (longer tokens read as invalid).
pub const MAX_TOKEN_BYTES: usize = 1 << 16;

#[cfg(target_arch = "wasm32")]
mod ffi {
    #[link(wasm_import_module = "kiln")]
    extern "C" {
        pub fn n_vocab() -> i32;
        pub fn token_bytes(id: i32, out: *mut u8, cap: i32) -> i32;
        pub fn special_token(kind: i32) -> i32;
        pub fn is_eog(id: i32) -> i32;
        pub fn seq_len() -> i32;
        pub fn seq_tokens(start: i32, out: *mut i32, cap: i32) -> i32;
        pub fn set_error(ptr: *const u8, len: i32);
    }
}

#[cfg(target_arch = "wasm32")]
mod imp {
    use super::ffi;

    pub fn n_vocab() -> i32 {
        // SAFETY: an import without arguments.
        unsafe { ffi::n_vocab() }
    }
    pub fn token_bytes(id: i32, out: &mut [u8]) -> i32 {
        let cap = out.len().min(i32::MAX as usize) as i32;
        // SAFETY: `out` is writable for `cap` bytes.
        unsafe { ffi::token_bytes(id, out.as_mut_ptr(), cap) }
    }
    pub fn special_token(kind: i32) -> i32 {
        // SAFETY: plain values.
        unsafe { ffi::special_token(kind) }
    }
    pub fn is_eog(id: i32) -> i32 {
        // SAFETY: plain values.
        unsafe { ffi::is_eog(id) }
    }
    pub fn seq_len() -> i32 {
        // SAFETY: an import without arguments.
        unsafe { ffi::seq_len() }
    }
    pub fn seq_tokens(start: i32, out: &mut [i32]) -> i32 {
        let cap = out.len().min(i32::MAX as usize) as i32;
        // SAFETY: `out` is writable for `cap` tokens.
        unsafe { ffi::seq_tokens(start, out.as_mut_ptr(), cap) }
    }
    pub fn set_error(msg: &str) {
        let len = msg.len().min(i32::MAX as usize) as i32;
        // SAFETY: `msg` is readable for `len` bytes.
        unsafe { ffi::set_error(msg.as_ptr(), len) }
    }
}

#[cfg(not(target_arch = "wasm32"))]
mod imp {
    use super::mock::with;

    pub fn n_vocab() -> i32 {
        with(|m| m.vocab.len() as i32)
    }
    pub fn token_bytes(id: i32, out: &mut [u8]) -> i32 {
        with(
            |m| match usize::try_from(id).ok().and_then(|i| m.vocab.get(i)) {
                Some(t) => {
                    let n = t.len().min(out.len());
                    out[..n].copy_from_slice(&t[..n]);
                    t.len() as i32
                }
                None => -1,
            },
        )
    }
    pub fn special_token(kind: i32) -> i32 {
        with(|m| match kind {
            0..=2 => m.special[kind as usize],
            _ => -1,
        })
    }
    pub fn is_eog(id: i32) -> i32 {
        with(|m| i32::from(m.eog.contains(&id)))
    }
    pub fn seq_len() -> i32 {
        with(|m| m.sequence.len() as i32)
    }
    pub fn seq_tokens(start: i32, out: &mut [i32]) -> i32 {
        with(|m| {
            let start = usize::try_from(start)
                .unwrap_or(usize::MAX)
                .min(m.sequence.len());
            let n = out.len().min(m.sequence.len() - start);
            out[..n].copy_from_slice(&m.sequence[start..start + n]);
            n as i32
        })
    }
    pub fn set_error(msg: &str) {
        with(|m| m.error = Some(msg.into()))
    }
}

/// The vocabulary size.
pub fn n_vocab() -> usize {
    usize::try_from(imp::n_vocab()).unwrap_or(0)
}

/// Replaces `out` with the bytes of token `id`'s text; `false` (and `out` empty) for an
/// invalid id or a text longer than [`MAX_TOKEN_BYTES`].
pub fn token_bytes(id: u32, out: &mut Vec<u8>) -> bool {
    out.clear();
    let Ok(id) = i32::try_from(id) else {
        return false;
    };
    if out.capacity() < 64 {
        out.reserve(64);
    }
    out.resize(out.capacity().min(MAX_TOKEN_BYTES), 0);
    let n = imp::token_bytes(id, out);
    let Ok(len) = usize::try_from(n) else {
        out.clear();
        return false;
    };
    if len > MAX_TOKEN_BYTES {
        out.clear();
        return false;
    }
    if len > out.len() {
        out.resize(len, 0);
        if usize::try_from(imp::token_bytes(id, out)) != Ok(len) {
            out.clear();
            return false;
        }
    }
    out.truncate(len);
    true
}

/// The id of a special token, if the model has one.
pub fn special_token(kind: Special) -> Option<u32> {
    u32::try_from(imp::special_token(kind as i32)).ok()
}

/// Whether `id` ends generation (EOS, EOT, …).
pub fn is_eog(id: u32) -> bool {
    i32::try_from(id).is_ok_and(|id| imp::is_eog(id) == 1)
}

/// Tokens in the sequence so far (prompt and generated).
pub fn seq_len() -> usize {
    usize::try_from(imp::seq_len()).unwrap_or(0)
}

/// Copies tokens `start..start + out.len()` of the sequence (clipped) into `out`; returns
/// how many were copied.
pub fn seq_tokens(start: usize, out: &mut [i32]) -> usize {
    let Ok(start) = i32::try_from(start) else {
        return 0;
    };
    usize::try_from(imp::seq_tokens(start, out))
        .unwrap_or(0)
        .min(out.len())
}

/// Gives the host the message of the error about to be returned.
pub fn set_error(message: &str) {
    imp::set_error(message)
}

/// Sets the error message from an owned string (convenience for [`set_error`]).
pub fn set_error_string(message: String) {
    imp::set_error(&message)
}

/// A per-thread stand-in for the host, for native tests of sampling logic.
#[cfg(not(target_arch = "wasm32"))]
pub mod mock {
    use alloc::string::String;
    use alloc::vec::Vec;
    use core::cell::RefCell;

    /// What the mock host knows.
    #[derive(Debug, Clone, Default)]
    pub struct MockHost {
        /// Each token's text, index = id.
        pub vocab: Vec<Vec<u8>>,
        /// Ids that end generation.
        pub eog: Vec<i32>,
        /// BOS, EOS and EOT ids (-1 = none).
        pub special: [i32; 3],
        /// The sequence so far.
        pub sequence: Vec<i32>,
        /// The last message given to `set_error`.
        pub error: Option<String>,
    }

    std::thread_local! {
        static HOST: RefCell<MockHost> = RefCell::new(MockHost {
            special: [-1; 3],
            ..MockHost::default()
        });
    }

    /// Runs `f` on this thread's mock host.
    pub fn with<R>(f: impl FnOnce(&mut MockHost) -> R) -> R {
        HOST.with(|h| f(&mut h.borrow_mut()))
    }

    /// Sets the vocabulary (and clears the rest of the mock's state).
    pub fn set_vocab<T: AsRef<[u8]>>(tokens: &[T]) {
        with(|m| {
            *m = MockHost {
                vocab: tokens.iter().map(|t| t.as_ref().to_vec()).collect(),
                special: [-1; 3],
                ..MockHost::default()
            }
        })
    }

    /// Sets the tokens that end generation (the first is also EOS).
    pub fn set_eog(ids: &[i32]) {
        with(|m| {
            m.eog = ids.to_vec();
            m.special[1] = ids.first().copied().unwrap_or(-1);
        })
    }

    /// Replaces the sequence.
    pub fn set_sequence(tokens: &[i32]) {
        with(|m| m.sequence = tokens.to_vec())
    }

    /// Takes the last error message.
    pub fn take_error() -> Option<String> {
        with(|m| m.error.take())
    }
}
