//! A small regular-expression engine over bytes, for constrained generation: pattern →
//! syntax tree → Thompson NFA → DFA built lazily, state by state, as the constraint explores
//! it. The whole generated text must match (the pattern is anchored at both ends).
//!
//! Syntax: literal characters (UTF-8), `.` (any character but `\n`), classes `[a-z0-9_]`,
//! `[^...]`, escapes `\d \w \s \D \W \S \n \r \t \f \v \0 \xHH \u{H…} \uHHHH` and `\` before
//! any ASCII punctuation, groups `( )` and `(?: )`, alternation `|`, quantifiers `* + ? {m}
//! {m,} {m,n}` (a trailing `?` for laziness is accepted and ignored: the language is the
//! same), and `^` / `$` at the very start / end. `.`, negated classes and `\D \W \S` match
//! one whole UTF-8 character, so the constrained text stays valid UTF-8. Non-ASCII
//! characters may appear in classes only as single characters, and not in negated ones.
//!
//! Hardening: the pattern, its nesting, repetition counts, the NFA and the DFA all have size
//! limits, and exceeding one is an error, never a panic or an unbounded allocation.

use crate::constraint::Automaton;
use crate::Error;
use alloc::boxed::Box;
use alloc::collections::BTreeMap;
use alloc::format;
use alloc::vec;
use alloc::vec::Vec;

/// Longest pattern accepted, in bytes.
pub const MAX_PATTERN: usize = 16 * 1024;
/// Deepest nesting of groups accepted.
pub const MAX_NESTING: usize = 64;
/// Largest repetition count in `{m,n}`.
pub const MAX_REPEAT: u32 = 1000;
/// Most NFA states.
pub const MAX_NFA_STATES: usize = 100_000;
/// Most DFA states built.
pub const MAX_DFA_STATES: usize = 20_000;
/// Most DFA transitions stored (states × byte classes; memory bound).
pub const MAX_DFA_TRANSITIONS: usize = 2_000_000;
/// Most NFA-state entries stored over all DFA states (memory bound).
pub const MAX_DFA_SET_ENTRIES: usize = 4_000_000;

/// A set of bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct ByteSet([u64; 4]);

impl ByteSet {
    const EMPTY: ByteSet = ByteSet([0; 4]);

    fn add(&mut self, b: u8) {
        self.0[(b >> 6) as usize] |= 1 << (b & 63);
    }
    fn add_range(&mut self, lo: u8, hi: u8) {
        for b in lo..=hi {
            self.add(b);
        }
    }
    fn range(lo: u8, hi: u8) -> Self {
        let mut s = Self::EMPTY;
        s.add_range(lo, hi);
        s
    }
    fn contains(&self, b: u8) -> bool {
        self.0[(b >> 6) as usize] & (1 << (b & 63)) != 0
    }
    fn union(&mut self, o: &ByteSet) {
        for i in 0..4 {
            self.0[i] |= o.0[i];
        }
    }
    /// The ASCII bytes not in the set.
    fn ascii_complement(&self) -> Self {
        ByteSet([!self.0[0], !self.0[1], 0, 0])
    }
    fn is_empty(&self) -> bool {
        self.0 == [0; 4]
    }
}

/// Syntax tree.
#[derive(Debug, Clone)]
enum Ast {
    Empty,
    Set(ByteSet),
    Concat(Vec<Ast>),
    Alt(Vec<Ast>),
    Repeat(Box<Ast>, u32, Option<u32>),
}

/// Well-formed UTF-8 sequences of 2 to 4 bytes, as byte ranges.
const UTF8_SEQUENCES: [&[(u8, u8)]; 8] = [
    &[(0xC2, 0xDF), (0x80, 0xBF)],
    &[(0xE0, 0xE0), (0xA0, 0xBF), (0x80, 0xBF)],
    &[(0xE1, 0xEC), (0x80, 0xBF), (0x80, 0xBF)],
    &[(0xED, 0xED), (0x80, 0x9F), (0x80, 0xBF)],
    &[(0xEE, 0xEF), (0x80, 0xBF), (0x80, 0xBF)],
    &[(0xF0, 0xF0), (0x90, 0xBF), (0x80, 0xBF), (0x80, 0xBF)],
    &[(0xF1, 0xF3), (0x80, 0xBF), (0x80, 0xBF), (0x80, 0xBF)],
    &[(0xF4, 0xF4), (0x80, 0x8F), (0x80, 0xBF), (0x80, 0xBF)],
];

/// One UTF-8 encoded character that is not ASCII (well-formed sequences only).
fn any_non_ascii() -> Ast {
    Ast::Alt(
        UTF8_SEQUENCES
            .iter()
            .map(|seq| {
                Ast::Concat(
                    seq.iter()
                        .map(|&(lo, hi)| Ast::Set(ByteSet::range(lo, hi)))
                        .collect(),
                )
            })
            .collect(),
    )
}

/// A character class under construction: ASCII members, listed non-ASCII characters, and
/// whether every non-ASCII character is in.
#[derive(Default)]
struct Class {
    ascii: ByteSet,
    chars: Vec<char>,
    all_non_ascii: bool,
}

impl Default for ByteSet {
    fn default() -> Self {
        Self::EMPTY
    }
}

impl Class {
    fn add_perl(&mut self, c: u8) {
        let (set, neg) = perl_class(c).unwrap_or((ByteSet::EMPTY, false));
        if neg {
            self.ascii.union(&set.ascii_complement());
            self.all_non_ascii = true;
        } else {
            self.ascii.union(&set);
        }
    }

    fn into_ast(self, negated: bool) -> Result<Ast, &'static str> {
        let (ascii, chars, all) = if negated {
            if !self.chars.is_empty() {
                return Err("non-ASCII characters in a negated class are not supported");
            }
            (
                self.ascii.ascii_complement(),
                Vec::new(),
                !self.all_non_ascii,
            )
        } else {
            (self.ascii, self.chars, self.all_non_ascii)
        };
        let mut alts = Vec::new();
        if !ascii.is_empty() {
            alts.push(Ast::Set(ascii));
        }
        if all {
            alts.push(any_non_ascii());
        } else {
            for ch in chars {
                alts.push(literal(ch));
            }
        }
        match alts.len() {
            0 => Err("the class matches nothing"),
            1 => Ok(alts.pop().unwrap_or(Ast::Empty)),
            _ => Ok(Ast::Alt(alts)),
        }
    }
}

/// The bytes of one character as a sequence.
fn literal(ch: char) -> Ast {
    let mut buf = [0u8; 4];
    let bytes = ch.encode_utf8(&mut buf).as_bytes();
    if bytes.len() == 1 {
        let mut s = ByteSet::EMPTY;
        s.add(bytes[0]);
        return Ast::Set(s);
    }
    Ast::Concat(
        bytes
            .iter()
            .map(|&b| {
                let mut s = ByteSet::EMPTY;
                s.add(b);
                Ast::Set(s)
            })
            .collect(),
    )
}

/// `\d \w \s` and their negations: (the positive ASCII set, negated?).
fn perl_class(c: u8) -> Option<(ByteSet, bool)> {
    let mut s = ByteSet::EMPTY;
    match c.to_ascii_lowercase() {
        b'd' => s.add_range(b'0', b'9'),
        b'w' => {
            s.add_range(b'0', b'9');
            s.add_range(b'a', b'z');
            s.add_range(b'A', b'Z');
            s.add(b'_');
        }
        b's' => {
            for b in [b' ', b'\t', b'\n', b'\r', 0x0b, 0x0c] {
                s.add(b);
            }
        }
        _ => return None,
    }
    Some((s, c.is_ascii_uppercase()))
}

struct Parser<'a> {
    p: &'a str,
    i: usize,
    depth: usize,
}

impl Parser<'_> {
    fn err(&self, what: &str) -> Error {
        Error::new(format!("regex: {what} at byte {}", self.i))
    }

    fn peek(&self) -> Option<char> {
        self.p[self.i..].chars().next()
    }

    fn next(&mut self) -> Option<char> {
        let c = self.peek()?;
        self.i += c.len_utf8();
        Some(c)
    }

    fn eat(&mut self, c: char) -> bool {
        if self.peek() == Some(c) {
            self.i += c.len_utf8();
            true
        } else {
            false
        }
    }

    fn alt(&mut self) -> Result<Ast, Error> {
        let mut alts = vec![self.concat()?];
        while self.eat('|') {
            alts.push(self.concat()?);
        }
        Ok(if alts.len() == 1 {
            alts.pop().unwrap_or(Ast::Empty)
        } else {
            Ast::Alt(alts)
        })
    }

    fn concat(&mut self) -> Result<Ast, Error> {
        let mut items = Vec::new();
        while let Some(c) = self.peek() {
            if c == '|' || c == ')' {
                break;
            }
            if c == '$' && self.i + 1 == self.p.len() {
                self.i += 1; // the implicit end anchor
                break;
            }
            items.push(self.repeat()?);
        }
        Ok(match items.len() {
            0 => Ast::Empty,
            1 => items.pop().unwrap_or(Ast::Empty),
            _ => Ast::Concat(items),
        })
    }

    fn number(&mut self) -> Option<u32> {
        let start = self.i;
        let mut v: u32 = 0;
        while let Some(d) = self.peek().and_then(|c| c.to_digit(10)) {
            v = v.saturating_mul(10).saturating_add(d);
            self.i += 1;
        }
        (self.i > start).then_some(v)
    }

    /// A quantifier after an atom, if any: (min, max).
    fn quantifier(&mut self) -> Result<Option<(u32, Option<u32>)>, Error> {
        let q = match self.peek() {
            Some('*') => (0, None),
            Some('+') => (1, None),
            Some('?') => (0, Some(1)),
            Some('{') => {
                self.i += 1;
                let min = self
                    .number()
                    .ok_or_else(|| self.err("expected a count in {}"))?;
                let max = if self.eat(',') {
                    self.number()
                } else {
                    Some(min)
                };
                if self.peek() != Some('}') {
                    return Err(self.err("expected '}'"));
                }
                if min > MAX_REPEAT || max.is_some_and(|m| m > MAX_REPEAT) {
                    return Err(self.err(&format!("repetition above {MAX_REPEAT}")));
                }
                if max.is_some_and(|m| m < min) {
                    return Err(self.err("repetition {m,n} with n < m"));
                }
                (min, max)
            }
            _ => return Ok(None),
        };
        self.i += 1; // the quantifier's last character
        self.eat('?'); // lazy: same language
        Ok(Some(q))
    }

    fn repeat(&mut self) -> Result<Ast, Error> {
        let atom = self.atom()?;
        let Some((min, max)) = self.quantifier()? else {
            return Ok(atom);
        };
        if matches!(self.peek(), Some('*' | '+' | '?' | '{')) {
            return Err(self.err("quantifier after a quantifier"));
        }
        Ok(Ast::Repeat(Box::new(atom), min, max))
    }

    fn atom(&mut self) -> Result<Ast, Error> {
        let start = self.i;
        let Some(c) = self.next() else {
            return Err(self.err("unexpected end"));
        };
        match c {
            '(' => {
                if self.depth >= MAX_NESTING {
                    return Err(self.err("groups nested too deeply"));
                }
                if self.eat('?') && !self.eat(':') {
                    return Err(self.err("only (?: ) groups are supported"));
                }
                self.depth += 1;
                let inner = self.alt()?;
                self.depth -= 1;
                if !self.eat(')') {
                    return Err(self.err("missing ')'"));
                }
                Ok(inner)
            }
            '[' => self.class(),
            '.' => {
                let mut s = ByteSet::range(0, 0x7f);
                s.0[0] &= !(1 << b'\n');
                Ok(Ast::Alt(vec![Ast::Set(s), any_non_ascii()]))
            }
            '\\' => self.escape(false).map(|e| match e {
                Escape::Char(ch) => literal(ch),
                Escape::Byte(b) => Ast::Set(ByteSet::range(b, b)),
                Escape::Class(ast) => ast,
            }),
            '^' if start == 0 => Ok(Ast::Empty),
            '^' | '$' => Err(self.err("anchors are only allowed at the start and end")),
            '*' | '+' | '?' | '{' => Err(self.err("quantifier without anything to repeat")),
            ')' => Err(self.err("unmatched ')'")),
            ch => Ok(literal(ch)),
        }
    }

    fn hex(&mut self, digits: usize) -> Result<u32, Error> {
        let mut v = 0u32;
        for _ in 0..digits {
            let d = self
                .next()
                .and_then(|c| c.to_digit(16))
                .ok_or_else(|| self.err("bad hex escape"))?;
            v = v * 16 + d;
        }
        Ok(v)
    }

    fn escape(&mut self, in_class: bool) -> Result<Escape, Error> {
        let Some(c) = self.next() else {
            return Err(self.err("trailing backslash"));
        };
        Ok(match c {
            'n' => Escape::Char('\n'),
            'r' => Escape::Char('\r'),
            't' => Escape::Char('\t'),
            'f' => Escape::Char('\u{c}'),
            'v' => Escape::Char('\u{b}'),
            '0' => Escape::Char('\0'),
            'x' => Escape::Byte(self.hex(2)? as u8),
            'u' => {
                let code = if self.eat('{') {
                    let start = self.i;
                    let mut v = 0u32;
                    while let Some(d) = self.peek().and_then(|c| c.to_digit(16)) {
                        v = v.saturating_mul(16).saturating_add(d);
                        self.i += 1;
                    }
                    if self.i == start || self.i - start > 6 || !self.eat('}') {
                        return Err(self.err("bad \\u{...} escape"));
                    }
                    v
                } else {
                    self.hex(4)?
                };
                Escape::Char(char::from_u32(code).ok_or_else(|| self.err("bad code point"))?)
            }
            'd' | 'w' | 's' | 'D' | 'W' | 'S' => {
                if in_class {
                    Escape::Class(Ast::Empty) // the class parser handles these itself
                } else {
                    let mut cl = Class::default();
                    cl.add_perl(c as u8);
                    Escape::Class(cl.into_ast(false).map_err(|e| self.err(e))?)
                }
            }
            c if c.is_ascii_punctuation() || c == ' ' => Escape::Char(c),
            _ => return Err(self.err(&format!("unsupported escape \\{c}"))),
        })
    }

    /// One class member: a character, a raw byte, or a `\d`-like set (already added).
    fn class_item(&mut self, cl: &mut Class) -> Result<Option<Member>, Error> {
        match self.next() {
            None => Err(self.err("missing ']'")),
            Some('\\') => {
                if let Some(c @ ('d' | 'w' | 's' | 'D' | 'W' | 'S')) = self.peek() {
                    self.i += 1;
                    cl.add_perl(c as u8);
                    return Ok(None);
                }
                match self.escape(true)? {
                    Escape::Char(ch) => Ok(Some(Member::Char(ch))),
                    Escape::Byte(b) => Ok(Some(Member::Byte(b))),
                    Escape::Class(_) => Ok(None),
                }
            }
            Some(ch) => Ok(Some(Member::Char(ch))),
        }
    }

    fn class(&mut self) -> Result<Ast, Error> {
        let negated = self.eat('^');
        let mut cl = Class::default();
        let mut first = true;
        loop {
            if self.peek() == Some(']') && !first {
                self.i += 1;
                break;
            }
            first = false;
            let Some(lo) = self.class_item(&mut cl)? else {
                continue;
            };
            let is_range = self.peek() == Some('-')
                && self.p[self.i + 1..]
                    .chars()
                    .next()
                    .is_some_and(|c| c != ']');
            if is_range {
                self.i += 1;
                let Some(hi) = self.class_item(&mut cl)? else {
                    return Err(self.err("a range cannot end with a class"));
                };
                let (lo, hi) = (lo.byte(), hi.byte());
                match (lo, hi) {
                    (Some(lo), Some(hi)) if lo <= hi => cl.ascii.add_range(lo, hi),
                    (Some(_), Some(_)) => return Err(self.err("range out of order")),
                    _ => return Err(self.err("ranges must have ASCII (or \\xHH) ends")),
                }
            } else {
                match lo {
                    Member::Byte(b) => cl.ascii.add(b),
                    Member::Char(ch) if ch.is_ascii() => cl.ascii.add(ch as u8),
                    Member::Char(ch) => cl.chars.push(ch),
                }
            }
        }
        cl.into_ast(negated).map_err(|e| self.err(e))
    }
}

enum Escape {
    Char(char),
    Byte(u8),
    Class(Ast),
}

enum Member {
    Char(char),
    Byte(u8),
}

impl Member {
    fn byte(&self) -> Option<u8> {
        match *self {
            Member::Byte(b) => Some(b),
            Member::Char(c) if c.is_ascii() => Some(c as u8),
            Member::Char(_) => None,
        }
    }
}

/// NFA state.
#[derive(Debug, Clone, Copy)]
enum NState {
    /// Consume a byte of set `set`, go to `next`.
    Byte { set: u32, next: u32 },
    /// Go to both.
    Split(u32, u32),
    /// Accept.
    Match,
}

struct Compiler {
    states: Vec<NState>,
    sets: Vec<ByteSet>,
    set_ids: BTreeMap<ByteSet, u32>,
}

impl Compiler {
    fn push(&mut self, s: NState) -> Result<u32, Error> {
        if self.states.len() >= MAX_NFA_STATES {
            return Err(Error::new(format!(
                "regex: too large (more than {MAX_NFA_STATES} automaton states)"
            )));
        }
        self.states.push(s);
        Ok((self.states.len() - 1) as u32)
    }

    /// Compiles `ast` so that it continues to `next`; returns its start.
    fn compile(&mut self, ast: &Ast, next: u32) -> Result<u32, Error> {
        match ast {
            Ast::Empty => Ok(next),
            Ast::Set(s) => {
                let n = self.sets.len() as u32;
                let set = *self.set_ids.entry(*s).or_insert(n);
                if set == n {
                    self.sets.push(*s);
                }
                self.push(NState::Byte { set, next })
            }
            Ast::Concat(items) => {
                let mut cur = next;
                for item in items.iter().rev() {
                    cur = self.compile(item, cur)?;
                }
                Ok(cur)
            }
            Ast::Alt(alts) => {
                let mut cur = match alts.last() {
                    Some(a) => self.compile(a, next)?,
                    None => next,
                };
                for a in alts.iter().rev().skip(1) {
                    let s = self.compile(a, next)?;
                    cur = self.push(NState::Split(s, cur))?;
                }
                Ok(cur)
            }
            Ast::Repeat(inner, min, max) => {
                let mut cur = next;
                match max {
                    None => {
                        let lp = self.push(NState::Split(0, 0))?;
                        let body = self.compile(inner, lp)?;
                        self.states[lp as usize] = NState::Split(body, next);
                        cur = lp;
                    }
                    Some(max) => {
                        for _ in *min..*max {
                            let body = self.compile(inner, cur)?;
                            cur = self.push(NState::Split(body, next))?;
                        }
                    }
                }
                for _ in 0..*min {
                    cur = self.compile(inner, cur)?;
                }
                Ok(cur)
            }
        }
    }
}

/// A compiled pattern: the NFA and its lazily built DFA. State 0 of the DFA is "dead".
#[derive(Debug, Clone)]
pub struct Regex {
    nfa: Vec<NState>,
    sets: Vec<ByteSet>,
    /// Byte → equivalence class (bytes no set tells apart).
    class_of: [u8; 256],
    /// A byte of each class.
    class_rep: Vec<u8>,
    /// DFA states: their NFA states (`Byte` and `Match` only, sorted).
    dfa_sets: Vec<Vec<u32>>,
    dfa_ids: BTreeMap<Vec<u32>, u32>,
    dfa_entries: usize,
    accepting: Vec<bool>,
    /// `trans[state * classes + class]`, `UNKNOWN` until computed.
    trans: Vec<u32>,
    start: u32,
    /// Closure work space.
    mark: Vec<u32>,
    generation: u32,
    stack: Vec<u32>,
}

const UNKNOWN: u32 = u32::MAX;

impl Regex {
    /// Compiles a pattern.
    pub fn new(pattern: &str) -> Result<Self, Error> {
        if pattern.len() > MAX_PATTERN {
            return Err(Error::new(format!(
                "regex: pattern longer than {MAX_PATTERN} bytes"
            )));
        }
        let mut p = Parser {
            p: pattern,
            i: 0,
            depth: 0,
        };
        let ast = p.alt()?;
        if p.i != pattern.len() {
            return Err(p.err("unmatched ')'"));
        }
        let mut c = Compiler {
            states: Vec::new(),
            sets: Vec::new(),
            set_ids: BTreeMap::new(),
        };
        let m = c.push(NState::Match)?;
        let start = c.compile(&ast, m)?;
        // Byte classes: refine "all bytes alike" by every set.
        let mut class_of = [0u8; 256];
        let mut n_classes = 1usize;
        for s in &c.sets {
            let mut remap: BTreeMap<(u8, bool), u8> = BTreeMap::new();
            let mut next = 0usize;
            for b in 0..=255u8 {
                let key = (class_of[b as usize], s.contains(b));
                let id = *remap.entry(key).or_insert_with(|| {
                    next += 1;
                    (next - 1) as u8
                });
                class_of[b as usize] = id;
            }
            n_classes = next;
        }
        let mut class_rep = vec![0u8; n_classes];
        for b in (0..=255u8).rev() {
            class_rep[class_of[b as usize] as usize] = b;
        }
        let mut re = Regex {
            mark: vec![0; c.states.len()],
            nfa: c.states,
            sets: c.sets,
            class_of,
            class_rep,
            dfa_sets: vec![Vec::new()],
            dfa_ids: BTreeMap::new(),
            dfa_entries: 0,
            accepting: vec![false],
            trans: vec![0; n_classes], // the dead state loops to itself
            start: 0,
            generation: 0,
            stack: Vec::new(),
        };
        re.dfa_ids.insert(Vec::new(), 0);
        let mut set = Vec::new();
        re.closure(&[start], &mut set);
        re.start = re.intern(set)?;
        Ok(re)
    }

    fn n_classes(&self) -> usize {
        self.class_rep.len()
    }

    /// The `Byte`/`Match` states reachable from `from` without consuming input, sorted.
    fn closure(&mut self, from: &[u32], out: &mut Vec<u32>) {
        self.generation = self.generation.wrapping_add(1);
        if self.generation == 0 {
            self.mark.fill(0);
            self.generation = 1;
        }
        let g = self.generation;
        out.clear();
        self.stack.clear();
        self.stack.extend_from_slice(from);
        while let Some(s) = self.stack.pop() {
            if self.mark[s as usize] == g {
                continue;
            }
            self.mark[s as usize] = g;
            match self.nfa[s as usize] {
                NState::Split(a, b) => {
                    self.stack.push(b);
                    self.stack.push(a);
                }
                _ => out.push(s),
            }
        }
        crate::sort::heapsort(out, |a, b| a < b);
    }

    /// The DFA state of an NFA state set, made if new.
    fn intern(&mut self, set: Vec<u32>) -> Result<u32, Error> {
        if let Some(&id) = self.dfa_ids.get(&set) {
            return Ok(id);
        }
        let max_states = MAX_DFA_STATES.min(MAX_DFA_TRANSITIONS / self.n_classes());
        if self.dfa_sets.len() >= max_states || self.dfa_entries + set.len() > MAX_DFA_SET_ENTRIES {
            return Err(Error::new(
                "regex: the pattern needs too many automaton states for this vocabulary",
            ));
        }
        let id = self.dfa_sets.len() as u32;
        self.dfa_entries += set.len();
        self.accepting.push(
            set.iter()
                .any(|&s| matches!(self.nfa[s as usize], NState::Match)),
        );
        self.dfa_sets.push(set.clone());
        self.dfa_ids.insert(set, id);
        let n = self.n_classes();
        self.trans.extend(core::iter::repeat_n(UNKNOWN, n));
        Ok(id)
    }

    /// Number of DFA states built so far (including the dead state).
    pub fn dfa_states(&self) -> usize {
        self.dfa_sets.len()
    }

    /// Whether the whole of `text` matches.
    pub fn is_match(&mut self, text: &[u8]) -> Result<bool, Error> {
        let mut s = self.start;
        for &b in text {
            match self.next_state(s, b)? {
                0 => return Ok(false),
                t => s = t,
            }
        }
        Ok(self.accepting[s as usize])
    }

    /// The DFA transition (0 = dead).
    #[inline]
    fn next_state(&mut self, s: u32, b: u8) -> Result<u32, Error> {
        let c = self.class_of[b as usize] as usize;
        let idx = s as usize * self.class_rep.len() + c;
        match self.trans.get(idx) {
            Some(&t) if t != UNKNOWN => Ok(t),
            _ => self.build_transition(s, c, idx),
        }
    }

    /// Computes (and stores) a transition not built yet.
    #[cold]
    #[inline(never)]
    fn build_transition(&mut self, s: u32, c: usize, idx: usize) -> Result<u32, Error> {
        if idx >= self.trans.len() || s as usize >= self.dfa_sets.len() {
            return Err(Error::new("regex: invalid automaton state"));
        }
        let rep = self.class_rep[c];
        let targets: Vec<u32> = self.dfa_sets[s as usize]
            .iter()
            .filter_map(|&n| match self.nfa[n as usize] {
                NState::Byte { set, next } if self.sets[set as usize].contains(rep) => Some(next),
                _ => None,
            })
            .collect();
        let mut set = Vec::new();
        self.closure(&targets, &mut set);
        let t = self.intern(set)?;
        self.trans[idx] = t;
        Ok(t)
    }
}

impl Automaton for Regex {
    type State = u32;

    fn start(&self) -> u32 {
        self.start
    }

    #[inline]
    fn step(&mut self, state: u32, byte: u8) -> Result<Option<u32>, Error> {
        // Every NFA state can reach `Match` (classes are never empty), so a non-empty DFA
        // state is alive.
        Ok(match self.next_state(state, byte)? {
            0 => None,
            t => Some(t),
        })
    }

    fn accepting(&self, state: u32) -> bool {
        self.accepting.get(state as usize).copied().unwrap_or(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(p: &str, t: &str) -> bool {
        Regex::new(p).unwrap().is_match(t.as_bytes()).unwrap()
    }

    #[test]
    fn matches_basic_syntax() {
        let cases: &[(&str, &[&str], &[&str])] = &[
            ("abc", &["abc"], &["", "ab", "abcd", "xabc"]),
            ("a|bc|", &["a", "bc", ""], &["b", "abc"]),
            (
                "a*b+c?",
                &["b", "aab", "abbbc", "bc"],
                &["", "a", "ac", "bcc"],
            ),
            ("(ab)*", &["", "ab", "abab"], &["a", "aba"]),
            ("(?:x|y){2,3}", &["xy", "yyx"], &["x", "xyxy"]),
            ("a{3}", &["aaa"], &["aa", "aaaa"]),
            ("a{2,}", &["aa", "aaaaa"], &["a"]),
            ("a{0}b", &["b"], &["ab"]),
            ("[a-c0-9_]+", &["a0_", "cc9"], &["d", "", "A"]),
            ("[^a-z]", &["A", "é", "0"], &["a", "", "ab"]),
            ("[]a]", &["]", "a"], &["b"]),
            ("[a-]", &["a", "-"], &["b"]),
            ("\\d{2}-\\w+\\s", &["12-ab_ ", "00-x\n"], &["1-a ", "12-- "]),
            ("\\D\\W\\S", &["a-é"], &["1a ", "aa "]),
            (".", &["a", "é", "😀", "\t"], &["\n", "ab", ""]),
            ("\\.\\*\\\\\\(", &[".*\\("], &["a*\\("]),
            ("\\x41\\u0042\\u{43}", &["ABC"], &["AB"]),
            ("^yes|no$", &["yes", "no"], &["yesno"]),
            ("é+", &["é", "éé"], &["e"]),
            ("[éa]", &["é", "a"], &["e"]),
            ("a*?b+?c??", &["aabbc", "b"], &["c"]),
            ("(a*)*", &["", "aaa"], &["b"]),
            ("\\{\"k\": \\d+\\}", &["{\"k\": 12}"], &["{\"k\": }"]),
            ("[\\d\\s]+", &["1 2"], &["a"]),
            ("[\\]\\-]", &["]", "-"], &["\\"]),
        ];
        for (p, yes, no) in cases {
            for t in *yes {
                assert!(m(p, t), "{p:?} should match {t:?}");
            }
            for t in *no {
                assert!(!m(p, t), "{p:?} should not match {t:?}");
            }
        }
    }

    #[test]
    fn dot_and_negations_keep_utf8_valid() {
        let mut re = Regex::new(".*").unwrap();
        assert!(re.is_match("héllo 😀".as_bytes()).unwrap());
        assert!(!re.is_match(b"\xff").unwrap());
        assert!(!re.is_match(b"\xc3").unwrap()); // incomplete
        assert!(!re.is_match(b"\xc0\x80").unwrap()); // overlong
        assert!(!re.is_match(b"\xed\xa0\x80").unwrap()); // surrogate
        assert!(!re.is_match(b"\xf4\x90\x80\x80").unwrap()); // above U+10FFFF
                                                             // But a prefix of a valid character keeps the automaton alive.
        let s = re.start();
        let s = re.step(s, 0xc3).unwrap().unwrap();
        assert!(!re.accepting(s));
        assert!(re.step(s, 0xa9).unwrap().is_some_and(|t| re.accepting(t)));
    }

    #[test]
    fn refuses_bad_or_huge_patterns() {
        for bad in [
            "(",
            ")",
            "a)",
            "[a",
            "[z-a]",
            "*",
            "a**",
            "a{2,1}",
            "a{1001}",
            "\\",
            "\\q",
            "\\xZZ",
            "a^",
            "$a",
            "(?i)a",
            "[é-ü]",
            "[^é]",
            "[^\\x00-\\x7f\\D]",
            "a{",
            "a{x}",
        ] {
            assert!(Regex::new(bad).is_err(), "{bad:?}");
        }
        // Nesting and size limits.
        let deep = "(".repeat(100) + &")".repeat(100);
        assert!(Regex::new(&deep).unwrap_err().message().contains("nested"));
        assert!(Regex::new("(a{1000}){1000}")
            .unwrap_err()
            .message()
            .contains("too large"));
        assert!(Regex::new(&"a".repeat(MAX_PATTERN + 1)).is_err());
        // A DFA explosion is an error when met, not a crash.
        let mut re = Regex::new("[ab]*a[ab]{14}").unwrap();
        let mut s = re.start();
        let mut result = Ok(());
        for i in 0..100_000u32 {
            match re.step(
                s,
                if (i * 2654435761u32) >> 31 == 1 {
                    b'a'
                } else {
                    b'b'
                },
            ) {
                Ok(Some(t)) => s = t,
                Ok(None) => unreachable!(),
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
        assert!(re.dfa_states() <= MAX_DFA_STATES);
        let _ = result; // 2^15 states may or may not be reached by this walk; neither panics
    }

    #[test]
    fn automaton_reports_dead_and_accepting() {
        let mut re = Regex::new("ab|ac").unwrap();
        let s = re.start();
        assert!(!re.accepting(s));
        let a = re.step(s, b'a').unwrap().unwrap();
        assert!(re.step(s, b'b').unwrap().is_none());
        let ab = re.step(a, b'b').unwrap().unwrap();
        assert!(re.accepting(ab));
        assert!(re.step(ab, b'b').unwrap().is_none());
    }
}
