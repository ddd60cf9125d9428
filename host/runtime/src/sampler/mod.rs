//! WebAssembly samplers (issue 3): every token Kiln emits is chosen by a sandboxed module that
//! follows `sdk/sampler/ABI.md` (version 1).
//!
//! - [`runtime`]: the process-wide wasmtime engine (pooling allocator, epoch ticker), loading,
//!   validation and the compiled-module caches ([`SamplerModule`]).
//! - [`instance`]: one instance per sequence ([`SequenceSampler`]): config, seed, the step
//!   buffer, deadlines and limits; every failure becomes a [`SamplerError`].
//! - [`builtin`]: the policies embedded in the binary (`greedy`, `chain`, `mirostat`,
//!   `constraint`) and the mapping of the CLI's sampling flags onto them.
//! - [`params`]: sampling settings in llama.cpp's terms (they configure the built-in `chain`).
//! - [`shape`]: the limits a module's shape must meet before it is compiled.
//! - [`schema`]: JSON Schemas turned into patterns for the built-in `constraint`.
//! - `oracle` (tests only): the native chain the WASM built-ins are checked against, and the
//!   benchmark that compares them.
//!
//! Text a module supplies (its `set_error` messages, names in its binary, parser and trap
//! messages that quote it) goes through [`escape_module_text`] where a [`Cause`] is built, so
//! that an error can be printed on a terminal, in a log line or in JSON as it is.

#[cfg(test)]
mod bench;
pub mod builtin;
pub mod instance;
#[cfg(test)]
pub(crate) mod oracle;
pub mod params;
pub mod runtime;
pub mod schema;
pub mod shape;
#[cfg(test)]
mod tests;

pub use instance::SequenceSampler;
pub use params::{random_seed, SamplingParams};
pub use runtime::SamplerModule;

use std::fmt;

/// The ABI version this host implements.
pub const ABI_VERSION: i32 = 1;
/// Largest module accepted, in bytes.
pub const MAX_MODULE_BYTES: usize = 16 << 20;
/// Largest configuration accepted, in bytes.
pub const MAX_CONFIG_BYTES: usize = 64 << 10;
/// Largest top-N view a module may ask for.
pub const MAX_TOP_N: usize = 4096;
/// Default memory limit of one instance, in bytes.
pub const DEFAULT_MEMORY_LIMIT: usize = 64 << 20;
/// Table elements allowed per instance.
pub const TABLE_ELEMENTS_LIMIT: usize = 10_000;
/// Default deadline of `kiln_sample`, `kiln_accept` and `kiln_mask`, in milliseconds.
pub const DEFAULT_DEADLINE_MS: u64 = 5;
/// The longest per-call deadline accepted, in milliseconds (ten seconds of CPU).
pub const MAX_DEADLINE_MS: u64 = 10_000;
/// Deadline of `kiln_init` (and `kiln_reset`, `kiln_abi_version`), in milliseconds.
pub const INIT_DEADLINE_MS: u64 = 1000;

/// Longest text from a module kept in an error, in bytes, after escaping (then cut, with `…`).
pub const MAX_MODULE_TEXT: usize = 1024;

/// Whether `c` must not reach a terminal as it is: control characters, and the invisible
/// characters that break or reorder lines (line and paragraph separators, bidirectional
/// controls, zero-width characters, the byte-order mark).
fn must_escape(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{61c}'
                | '\u{200b}'..='\u{200f}'
                | '\u{2028}'..='\u{202e}'
                | '\u{2060}'..='\u{2064}'
                | '\u{2066}'..='\u{2069}'
                | '\u{feff}'
                | '\u{fff9}'..='\u{fffb}'
        )
}

/// Text that came from a module, made safe to print: `\n`, `\r` and `\t` are written as
/// those escapes and every other control or invisible formatting character as `\u{1b}`;
/// text longer than [`MAX_MODULE_TEXT`] bytes (escaped) is cut at a character and ends
/// with `…`.
pub fn escape_module_text(s: &str) -> String {
    const MORE: char = '…';
    let mut out = String::new();
    let mut cut = None;
    for c in s.chars() {
        let before = out.len();
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if must_escape(c) => {
                use std::fmt::Write;
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
        if cut.is_none() && out.len() > MAX_MODULE_TEXT - MORE.len_utf8() {
            cut = Some(before);
        }
        if out.len() > MAX_MODULE_TEXT {
            out.truncate(cut.unwrap_or(before));
            out.push(MORE);
            break;
        }
    }
    out
}

/// What the module wants to see of each step's logits (the value `kiln_init` returned).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum View {
    /// The whole row, `n_vocab` logits.
    Full,
    /// The best `n` tokens (1..=4096), their logits and the row's log-sum-exp.
    TopN(usize),
}

/// The outcome of one `kiln_sample` call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// The chosen token.
    Token(u32),
    /// The module ended the sequence normally (e.g. a stop sequence was reached).
    Stop,
}

/// Why a sampler failed; each ends only the sequence (or the load) it happened in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cause {
    /// The module is not usable: bad size, not WebAssembly, missing or mistyped exports,
    /// forbidden imports, wrong ABI version.
    Invalid(String),
    /// A call ran past its deadline (milliseconds of CPU time).
    Deadline { call: &'static str, ms: u64 },
    /// The module tried to grow its memory or a table past the limit.
    Limit(String),
    /// The module trapped (unreachable, out-of-bounds access, stack overflow, ...).
    Trap { call: &'static str, trap: String },
    /// The module broke the ABI at run time (bad token id, bad pointer, bad return value).
    Abi(String),
    /// The module reported an error itself (negative return, with its `set_error` message).
    Module {
        call: &'static str,
        code: i32,
        message: String,
    },
    /// The configuration is larger than 64 KiB.
    ConfigTooLarge(usize),
    /// The mask allowed no token at this step.
    NothingAllowed,
    /// Wasmtime refused to run the module (e.g. instance slots exhausted).
    Host(String),
}

impl fmt::Display for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Cause::Invalid(m) => write!(f, "invalid module: {m}"),
            Cause::Deadline { call, ms } => write!(f, "{call} ran past its deadline of {ms} ms"),
            Cause::Limit(m) => write!(f, "resource limit exceeded: {m}"),
            Cause::Trap { call, trap } => write!(f, "trapped in {call}: {trap}"),
            Cause::Abi(m) => write!(f, "ABI violation: {m}"),
            Cause::Module {
                call,
                code,
                message,
            } if message.is_empty() => {
                write!(f, "{call} returned error {code}")
            }
            Cause::Module {
                call,
                code,
                message,
            } => write!(f, "{call} returned error {code}: {message}"),
            Cause::ConfigTooLarge(n) => {
                write!(
                    f,
                    "the configuration has {n} bytes, more than the {MAX_CONFIG_BYTES} allowed"
                )
            }
            Cause::NothingAllowed => write!(f, "the mask allows no token"),
            Cause::Host(m) => write!(f, "{m}"),
        }
    }
}

/// A sampler failure: the sampler's name and the cause. Displays as `sampler 'NAME': CAUSE`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("sampler '{name}': {cause}")]
pub struct SamplerError {
    /// The sampler's name (a built-in name or the file it came from).
    pub name: String,
    /// What went wrong.
    pub cause: Cause,
}

impl SamplerError {
    /// An error of sampler `name` (escaped like module text: it may be a file name).
    pub fn new(name: &str, cause: Cause) -> Self {
        SamplerError {
            name: escape_module_text(name),
            cause,
        }
    }
}

/// Token kinds of the `special_token` import.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SpecialTokens {
    /// Beginning of sequence.
    pub bos: Option<u32>,
    /// End of sequence.
    pub eos: Option<u32>,
    /// End of turn.
    pub eot: Option<u32>,
}

/// What the host functions tell a module about the vocabulary; shared by every instance of a
/// model through an `Arc`.
#[derive(Debug, Clone)]
pub struct Vocab {
    /// All token texts, concatenated.
    bytes: Vec<u8>,
    /// Token `i` is `bytes[offs[i]..offs[i + 1]]`.
    offs: Vec<u32>,
    /// Special tokens.
    special: SpecialTokens,
    /// End-of-generation flags, one bit per token.
    eog: Vec<u32>,
}

impl Vocab {
    /// A vocabulary of `n_vocab` tokens whose texts `text(id)` gives.
    pub fn new<'a>(
        n_vocab: usize,
        text: impl Fn(u32) -> &'a [u8],
        special: SpecialTokens,
        eog_ids: &[u32],
    ) -> Vocab {
        let mut bytes = Vec::new();
        let mut offs = Vec::with_capacity(n_vocab + 1);
        offs.push(0);
        for id in 0..n_vocab as u32 {
            bytes.extend_from_slice(text(id));
            offs.push(bytes.len() as u32);
        }
        let mut eog = vec![0u32; n_vocab.div_ceil(32)];
        for &t in eog_ids.iter().filter(|&&t| (t as usize) < n_vocab) {
            eog[t as usize / 32] |= 1 << (t % 32);
        }
        let valid = |t: Option<u32>| t.filter(|&t| (t as usize) < n_vocab);
        let special = SpecialTokens {
            bos: valid(special.bos),
            eos: valid(special.eos),
            eot: valid(special.eot),
        };
        Vocab {
            bytes,
            offs,
            special,
            eog,
        }
    }

    /// A made-up vocabulary for tests and benchmarks: token `i` is the text `<i>`, and the
    /// last token is EOS (an end-of-generation token).
    pub fn synthetic(n_vocab: usize) -> Vocab {
        let texts: Vec<Vec<u8>> = (0..n_vocab)
            .map(|i| format!("<{i}>").into_bytes())
            .collect();
        let eos = n_vocab.checked_sub(1).map(|e| e as u32);
        let eog: Vec<u32> = eos.into_iter().collect();
        Vocab::new(
            n_vocab,
            |i| &texts[i as usize],
            SpecialTokens {
                bos: None,
                eos,
                eot: None,
            },
            &eog,
        )
    }

    /// Number of tokens.
    pub fn n_vocab(&self) -> usize {
        self.offs.len() - 1
    }

    /// The text of token `id`, if it exists.
    pub fn token_bytes(&self, id: u32) -> Option<&[u8]> {
        let i = id as usize;
        (i < self.n_vocab()).then(|| &self.bytes[self.offs[i] as usize..self.offs[i + 1] as usize])
    }

    /// The special tokens.
    pub fn special(&self) -> SpecialTokens {
        self.special
    }

    /// Whether `id` ends generation.
    pub fn is_eog(&self, id: u32) -> bool {
        self.eog
            .get(id as usize / 32)
            .is_some_and(|w| w & (1 << (id % 32)) != 0)
    }
}

/// Sets every logit the `mask` bitset disallows to −∞; returns whether any token is allowed
/// (a logit of −∞ that the mask allows still counts as allowed).
pub fn apply_mask(mask: &[u32], logits: &mut [f32]) -> bool {
    let mut any = false;
    for (w, chunk) in logits.chunks_mut(32).enumerate() {
        let bits = mask.get(w).copied().unwrap_or(0);
        if bits == u32::MAX {
            any = true;
            continue;
        }
        any |= bits != 0;
        for (b, l) in chunk.iter_mut().enumerate() {
            if bits & (1 << b) == 0 {
                *l = f32::NEG_INFINITY;
            }
        }
    }
    any
}

/// Whether the `mask` bitset allows token `id`.
pub fn mask_allows(mask: &[u32], id: u32) -> bool {
    mask.get(id as usize / 32)
        .is_some_and(|w| w & (1 << (id % 32)) != 0)
}
