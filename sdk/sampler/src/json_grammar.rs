//! A byte-level recognizer of one JSON value (RFC 8259), as an [`Automaton`] for
//! constrained generation. Its state is small and copyable: the nesting is a bit stack
//! (object or array per level) of at most [`MAX_JSON_DEPTH`] levels.
//!
//! To keep generations finite and tidy: whitespace runs are at most [`MAX_WS_RUN`] bytes,
//! numbers at most [`MAX_NUMBER_LEN`] bytes, and nothing may follow the top-level value
//! (not even whitespace). Strings must be valid UTF-8 without raw control characters.

use crate::constraint::Automaton;
use crate::Error;

/// Deepest nesting of arrays and objects.
pub const MAX_JSON_DEPTH: u8 = 32;
/// Longest run of whitespace.
pub const MAX_WS_RUN: u8 = 32;
/// Longest number, in bytes.
pub const MAX_NUMBER_LEN: u8 = 40;

/// Where in a number the recognizer is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Num {
    /// After `-`.
    Minus,
    /// After a leading `0`.
    Zero,
    /// In the integer digits.
    Int,
    /// After `.`.
    Dot,
    /// In the fraction digits.
    Frac,
    /// After `e`/`E`.
    ExpMark,
    /// After the exponent's sign.
    ExpSign,
    /// In the exponent digits.
    Exp,
}

/// What the recognizer expects next.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Mode {
    /// A value (after `:`, `,` in an array, or at the start).
    Value,
    /// A value or `]` (just after `[`).
    ArrayFirst,
    /// A key or `}` (just after `{`).
    ObjectFirst,
    /// A key (after `,` in an object).
    Key,
    /// `:` after a key.
    Colon,
    /// `,` or the closing bracket, after a value inside a container.
    After,
    /// The top-level value is complete.
    Done,
    /// Inside a string; `cont` continuation bytes of a UTF-8 character are still due, the
    /// next within `lo..=hi`.
    Str {
        /// Whether the string is an object key.
        key: bool,
        /// Continuation bytes still due.
        cont: u8,
        /// Lowest allowed next continuation byte.
        lo: u8,
        /// Highest allowed next continuation byte.
        hi: u8,
    },
    /// After a backslash in a string.
    Esc {
        /// Whether the string is an object key.
        key: bool,
    },
    /// In a `\uXXXX` escape, `left` hex digits to go.
    Hex {
        /// Whether the string is an object key.
        key: bool,
        /// Hex digits still due.
        left: u8,
    },
    /// In a number.
    Number(Num),
    /// In `true`, `false` or `null` (`word` 0, 1, 2), `pos` bytes read.
    Literal {
        /// Which word.
        word: u8,
        /// Bytes of it read so far.
        pos: u8,
    },
}

/// The recognizer's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct JsonState {
    /// Bit `i` set: level `i` is an object (else an array).
    stack: u64,
    /// Open containers.
    depth: u8,
    /// Length of the current whitespace run or number.
    run: u8,
    /// What comes next.
    mode: Mode,
}

const WORDS: [&[u8]; 3] = [b"true", b"false", b"null"];

/// The JSON recognizer (stateless apart from its limits).
#[derive(Debug, Clone, Copy, Default)]
pub struct JsonGrammar;

impl JsonState {
    fn with(self, mode: Mode) -> Self {
        JsonState {
            mode,
            run: 0,
            ..self
        }
    }

    /// The first byte of a number.
    fn number_start(self, part: Num) -> Self {
        JsonState {
            mode: Mode::Number(part),
            run: 1,
            ..self
        }
    }

    fn top_is_object(&self) -> bool {
        self.depth > 0 && self.stack & (1 << (self.depth - 1)) != 0
    }

    /// After a complete value.
    fn after_value(self) -> Self {
        self.with(if self.depth == 0 {
            Mode::Done
        } else {
            Mode::After
        })
    }

    fn whitespace(self) -> Option<Self> {
        (self.run < MAX_WS_RUN).then_some(JsonState {
            run: self.run + 1,
            ..self
        })
    }

    fn open(self, object: bool) -> Option<Self> {
        if self.depth >= MAX_JSON_DEPTH {
            return None;
        }
        let bit = 1u64 << self.depth;
        let stack = if object {
            self.stack | bit
        } else {
            self.stack & !bit
        };
        Some(JsonState {
            stack,
            depth: self.depth + 1,
            run: 0,
            mode: if object {
                Mode::ObjectFirst
            } else {
                Mode::ArrayFirst
            },
        })
    }

    fn close(self) -> Self {
        JsonState {
            depth: self.depth.saturating_sub(1),
            ..self
        }
        .after_value()
    }

    fn start_value(self, b: u8) -> Option<Self> {
        let s = |key| Mode::Str {
            key,
            cont: 0,
            lo: 0,
            hi: 0,
        };
        Some(match b {
            b'{' => return self.open(true),
            b'[' => return self.open(false),
            b'"' => self.with(s(false)),
            b'-' => self.number_start(Num::Minus),
            b'0' => self.number_start(Num::Zero),
            b'1'..=b'9' => self.number_start(Num::Int),
            b't' => self.with(Mode::Literal { word: 0, pos: 1 }),
            b'f' => self.with(Mode::Literal { word: 1, pos: 1 }),
            b'n' => self.with(Mode::Literal { word: 2, pos: 1 }),
            _ => return None,
        })
    }

    fn number(self, part: Num) -> Option<Self> {
        (self.run < MAX_NUMBER_LEN).then_some(JsonState {
            run: self.run + 1,
            mode: Mode::Number(part),
            ..self
        })
    }

    /// The step from `After` or `Done` (what follows a complete value).
    fn step_after(self, b: u8) -> Option<Self> {
        if self.mode == Mode::Done {
            return None;
        }
        match b {
            b' ' | b'\t' | b'\n' | b'\r' => self.whitespace(),
            b',' if self.top_is_object() => Some(self.with(Mode::Key)),
            b',' => Some(self.with(Mode::Value)),
            b'}' if self.top_is_object() => Some(self.close()),
            b']' if self.depth > 0 && !self.top_is_object() => Some(self.close()),
            _ => None,
        }
    }

    /// The next state after byte `b`, or `None` if no JSON text continues this way.
    #[inline]
    pub fn step(self, b: u8) -> Option<Self> {
        if let Mode::Str {
            cont: 0, key: _, ..
        } = self.mode
        {
            // The common case: plain text inside a string.
            if (0x20..0x80).contains(&b) && b != b'"' && b != b'\\' {
                return Some(self);
            }
        }
        self.step_slow(b)
    }

    fn step_slow(self, b: u8) -> Option<Self> {
        let ws = matches!(b, b' ' | b'\t' | b'\n' | b'\r');
        match self.mode {
            Mode::Value | Mode::ArrayFirst => {
                if ws {
                    self.whitespace()
                } else if b == b']' && self.mode == Mode::ArrayFirst {
                    Some(self.close())
                } else {
                    self.start_value(b)
                }
            }
            Mode::ObjectFirst | Mode::Key => match b {
                _ if ws => self.whitespace(),
                b'"' => Some(self.with(Mode::Str {
                    key: true,
                    cont: 0,
                    lo: 0,
                    hi: 0,
                })),
                b'}' if self.mode == Mode::ObjectFirst => Some(self.close()),
                _ => None,
            },
            Mode::Colon => match b {
                _ if ws => self.whitespace(),
                b':' => Some(self.with(Mode::Value)),
                _ => None,
            },
            Mode::After | Mode::Done => self.step_after(b),
            Mode::Str { key, cont, lo, hi } => {
                let str_mode = |cont, lo, hi| Some(self.with(Mode::Str { key, cont, lo, hi }));
                if cont > 0 {
                    return if (lo..=hi).contains(&b) {
                        str_mode(cont - 1, 0x80, 0xBF)
                    } else {
                        None
                    };
                }
                match b {
                    b'"' if key => Some(self.with(Mode::Colon)),
                    b'"' => Some(self.after_value()),
                    b'\\' => Some(self.with(Mode::Esc { key })),
                    0..=0x1f => None,
                    0x20..=0x7f => Some(self),
                    0xC2..=0xDF => str_mode(1, 0x80, 0xBF),
                    0xE0 => str_mode(2, 0xA0, 0xBF),
                    0xE1..=0xEC | 0xEE..=0xEF => str_mode(2, 0x80, 0xBF),
                    0xED => str_mode(2, 0x80, 0x9F),
                    0xF0 => str_mode(3, 0x90, 0xBF),
                    0xF1..=0xF3 => str_mode(3, 0x80, 0xBF),
                    0xF4 => str_mode(3, 0x80, 0x8F),
                    _ => None,
                }
            }
            Mode::Esc { key } => match b {
                b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => {
                    Some(self.with(Mode::Str {
                        key,
                        cont: 0,
                        lo: 0,
                        hi: 0,
                    }))
                }
                b'u' => Some(self.with(Mode::Hex { key, left: 4 })),
                _ => None,
            },
            Mode::Hex { key, left } => {
                if !b.is_ascii_hexdigit() {
                    None
                } else if left > 1 {
                    Some(self.with(Mode::Hex {
                        key,
                        left: left - 1,
                    }))
                } else {
                    Some(self.with(Mode::Str {
                        key,
                        cont: 0,
                        lo: 0,
                        hi: 0,
                    }))
                }
            }
            Mode::Number(part) => {
                let digit = b.is_ascii_digit();
                match (part, b) {
                    (Num::Minus, b'0') => self.number(Num::Zero),
                    (Num::Minus, b'1'..=b'9') => self.number(Num::Int),
                    (Num::Int, _) if digit => self.number(Num::Int),
                    (Num::Zero | Num::Int, b'.') => self.number(Num::Dot),
                    (Num::Dot | Num::Frac, _) if digit => self.number(Num::Frac),
                    (Num::Zero | Num::Int | Num::Frac, b'e' | b'E') => self.number(Num::ExpMark),
                    (Num::ExpMark, b'+' | b'-') => self.number(Num::ExpSign),
                    (Num::ExpMark | Num::ExpSign | Num::Exp, _) if digit => self.number(Num::Exp),
                    (Num::Zero | Num::Int | Num::Frac | Num::Exp, _) => {
                        // The number ended: the byte belongs to what follows it.
                        self.after_value().step_after(b)
                    }
                    _ => None,
                }
            }
            Mode::Literal { word, pos } => {
                let w = WORDS[word as usize];
                if w.get(pos as usize) != Some(&b) {
                    None
                } else if pos as usize + 1 == w.len() {
                    Some(self.after_value())
                } else {
                    Some(self.with(Mode::Literal { word, pos: pos + 1 }))
                }
            }
        }
    }

    /// Whether the text so far is a complete JSON value.
    pub fn accepting(&self) -> bool {
        self.depth == 0
            && matches!(
                self.mode,
                Mode::Done | Mode::Number(Num::Zero | Num::Int | Num::Frac | Num::Exp)
            )
    }
}

impl JsonGrammar {
    /// The state before any byte.
    pub fn start_state() -> JsonState {
        JsonState {
            stack: 0,
            depth: 0,
            run: 0,
            mode: Mode::Value,
        }
    }
}

impl Automaton for JsonGrammar {
    type State = JsonState;

    fn start(&self) -> JsonState {
        Self::start_state()
    }

    #[inline]
    fn step(&mut self, state: JsonState, byte: u8) -> Result<Option<JsonState>, Error> {
        Ok(state.step(byte))
    }

    fn accepting(&self, state: JsonState) -> bool {
        state.accepting()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn valid(text: &[u8]) -> bool {
        let mut s = JsonGrammar::start_state();
        for &b in text {
            match s.step(b) {
                Some(t) => s = t,
                None => return false,
            }
        }
        s.accepting()
    }

    fn alive(text: &[u8]) -> bool {
        let mut s = JsonGrammar::start_state();
        text.iter().all(|&b| match s.step(b) {
            Some(t) => {
                s = t;
                true
            }
            None => false,
        })
    }

    #[test]
    fn accepts_json() {
        for ok in [
            &b"0"[..],
            b"-12.5e+3",
            b"1E9",
            b"true",
            b"null",
            b"\"a\\n\\u00e9 \xc3\xa9 \xf0\x9f\x98\x80\"",
            b"[]",
            b"{}",
            b" [1, 2 ,3]",
            b"{\"a\": [true, {\"b\": null}], \"c\": -0}",
            b"[[[[]]]]",
            b"{\n  \"k\": \"v\"\n}",
            b"[0,1e5,2.0]",
        ] {
            assert!(valid(ok), "{:?}", core::str::from_utf8(ok));
        }
    }

    #[test]
    fn refuses_non_json() {
        for bad in [
            &b"01"[..],
            b"[1,]",
            b"{\"a\"}",
            b"{\"a\":1,}",
            b"{a:1}",
            b"[1 2]",
            b"tru e",
            b"\"\x01\"",
            b"\"\\x\"",
            b"\"\\u12g4\"",
            b"\"\xc0\x80\"",
            b"\"\xed\xa0\x80\"",
            b"\"\xff\"",
            b"1.",
            b"-",
            b"1e",
            b"[}",
            b"{]",
            b"1 ",
            b"{} ",
            b"nulll",
            b"[1]]",
        ] {
            assert!(!valid(bad), "{:?}", bad);
        }
        // Prefixes of valid text stay alive; invalid ones die.
        assert!(alive(b"{\"a\": [1, tr"));
        assert!(!valid(b"{\"a\": [1, tr"));
        assert!(!alive(b"{\"a\" ["));
        assert!(alive(b"\"\xe2\x82"));
    }

    #[test]
    fn limits_hold() {
        let ok = [b'['; MAX_JSON_DEPTH as usize];
        assert!(alive(&ok));
        let deep = [b'['; MAX_JSON_DEPTH as usize + 1];
        assert!(!alive(&deep));
        assert!(alive(&[b' '; MAX_WS_RUN as usize]));
        assert!(!alive(&[b' '; MAX_WS_RUN as usize + 1]));
        assert!(valid(&[b'7'; MAX_NUMBER_LEN as usize]));
        assert!(!alive(&[b'7'; MAX_NUMBER_LEN as usize + 1]));
        // Runs reset between tokens of whitespace.
        let mut spaced = alloc::vec::Vec::new();
        spaced.push(b'[');
        for _ in 0..10 {
            spaced.extend_from_slice(&[b' '; MAX_WS_RUN as usize]);
            spaced.extend_from_slice(b"1,");
        }
        spaced.extend_from_slice(b"1]");
        assert!(valid(&spaced));
    }
}
