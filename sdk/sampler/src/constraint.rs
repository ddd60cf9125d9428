//! Constrained generation: a byte automaton (a [`Regex`] or the [`JsonGrammar`]) decides
//! which tokens may come next, and the sampler hands the host a mask of them.
//!
//! At init every token's bytes are read once (`token_bytes`) into a byte trie laid out in
//! preorder, so that a mask is one walk of the trie that skips every subtree the automaton
//! rejects. Masks are cached by automaton state. A token is allowed when its bytes keep the
//! automaton alive; end-of-generation tokens are allowed only where the text so far is
//! complete (an accepting state); tokens with no bytes are never allowed (they would not
//! advance the text).

use crate::chain::{ChainParams, ChainSampler, Transcript};
use crate::json::{parse_config, Fields, Value};
use crate::json_grammar::JsonGrammar;
use crate::regex::Regex;
use crate::{host, Choice, Error, Sampler, View, ViewKind};
use alloc::boxed::Box;
use alloc::collections::BTreeMap;
use alloc::format;
use alloc::vec::Vec;

/// Longest token (in bytes) that can be allowed; longer ones never are.
pub const MAX_CONSTRAINED_TOKEN: usize = 255;
/// Memory given to cached masks, in bytes.
pub const MASK_CACHE_BYTES: usize = 8 << 20;

/// A deterministic automaton over bytes.
pub trait Automaton {
    /// A state (small and copyable).
    type State: Copy + Ord;
    /// The state before any byte.
    fn start(&self) -> Self::State;
    /// The state after `byte`, or `None` when no accepted text continues this way. May build
    /// the automaton lazily, and fail when that exceeds a limit.
    fn step(&mut self, state: Self::State, byte: u8) -> Result<Option<Self::State>, Error>;
    /// Whether the text that led to `state` is complete.
    fn accepting(&self, state: Self::State) -> bool;
}

/// No token ends at this node.
const NO_TOKEN: u32 = u32::MAX;

/// A trie node, in preorder.
#[derive(Debug, Clone, Copy)]
struct Node {
    /// Index just past this node's subtree.
    end: u32,
    /// The token ending here, or `NO_TOKEN`.
    tok: u32,
    /// The byte on the edge into this node.
    byte: u8,
    /// Depth (1 = child of the root).
    depth: u8,
}

/// All tokens' bytes as a trie in preorder (one token per node: a token with the same bytes
/// as another gets a twin node).
#[derive(Debug, Clone, Default)]
pub struct TokenTrie {
    nodes: Vec<Node>,
    max_depth: usize,
}

impl TokenTrie {
    /// Builds the trie of `(id, bytes)` pairs; empty byte strings and those longer than
    /// [`MAX_CONSTRAINED_TOKEN`] are left out.
    pub fn new(tokens: &[(u32, &[u8])]) -> Self {
        // Sort by bytes; the first four bytes as an integer decide most comparisons.
        let key = |t: &[u8]| {
            let mut k = [0u8; 4];
            let n = t.len().min(4);
            k[..n].copy_from_slice(&t[..n]);
            u32::from_be_bytes(k)
        };
        let mut keyed: Vec<(u32, u32)> = (0..tokens.len() as u32)
            .filter(|&i| (1..=MAX_CONSTRAINED_TOKEN).contains(&tokens[i as usize].1.len()))
            .map(|i| (key(tokens[i as usize].1), i))
            .collect();
        crate::sort::sort(&mut keyed, |a, b| {
            a.0 < b.0 || (a.0 == b.0 && tokens[a.1 as usize].1 < tokens[b.1 as usize].1)
        });
        let order: Vec<u32> = keyed.iter().map(|&(_, i)| i).collect();
        drop(keyed);
        let lcp = |a: &[u8], b: &[u8]| a.iter().zip(b).take_while(|(x, y)| x == y).count();
        // New nodes for token `t` after `prev`: at least one (a twin for a duplicate).
        let shared = |prev: &[u8], t: &[u8]| lcp(prev, t).min(t.len() - 1);
        // Exact size first (the allocator rounds to powers of two and never merges).
        let mut n_nodes = 0usize;
        let mut prev: &[u8] = &[];
        for &i in &order {
            let t = tokens[i as usize].1;
            n_nodes += t.len() - shared(prev, t);
            prev = t;
        }
        let mut nodes: Vec<Node> = Vec::with_capacity(n_nodes);
        let mut path: Vec<usize> = Vec::new(); // node at each depth of the previous token
        let mut prev: &[u8] = &[];
        let mut max_depth = 0;
        for &i in &order {
            let (id, t) = tokens[i as usize];
            let common = shared(prev, t);
            while path.len() > common {
                if let Some(node) = path.pop() {
                    nodes[node].end = nodes.len() as u32;
                }
            }
            for (d, &b) in t.iter().enumerate().skip(common) {
                path.push(nodes.len());
                nodes.push(Node {
                    end: 0,
                    tok: NO_TOKEN,
                    byte: b,
                    depth: (d + 1) as u8,
                });
            }
            if let Some(last) = nodes.last_mut() {
                last.tok = id;
            }
            max_depth = max_depth.max(t.len());
            prev = t;
        }
        for node in path {
            nodes[node].end = nodes.len() as u32;
        }
        TokenTrie { nodes, max_depth }
    }

    /// Number of nodes.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether the trie has no tokens.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Sets in `mask` the bit of every token whose bytes `auto` accepts from `start` (keeps
    /// it alive). `mask` needs one spare word at its end (it absorbs the nodes where no token
    /// ends, so that marking needs no branch). Transitions go through `memo`.
    pub fn walk<A: Automaton>(
        &self,
        auto: &mut A,
        start: A::State,
        memo: &mut Memo<A::State>,
        mask: &mut [u32],
    ) -> Result<(), Error> {
        if mask.is_empty() {
            return Ok(());
        }
        if memo.states.len() >= MEMO_STATES / 2 {
            memo.clear(); // keep room for this walk
        }
        let root = memo.intern(start)?;
        memo.path.clear();
        memo.path.resize(self.max_depth + 1, root);
        let sink = ((mask.len() - 1) * 32) as u32; // a bit of the spare word
        let nodes = &self.nodes[..];
        let mut i = 0;
        while i < nodes.len() {
            {
                // Fast loop over known transitions.
                let rows = &memo.rows[..];
                let path = &mut memo.path[..];
                while let Some(node) = nodes.get(i) {
                    let d = node.depth as usize;
                    let to = rows[path[d - 1] as usize * 256 + node.byte as usize];
                    if to == UNSEEN {
                        break;
                    }
                    if to == DEAD {
                        i = node.end as usize;
                        continue;
                    }
                    path[d] = to;
                    let t = node.tok.min(sink);
                    mask[(t / 32) as usize] |= 1 << (t % 32);
                    i += 1;
                }
            }
            if let Some(node) = nodes.get(i) {
                // A transition not met yet: compute it, then go on.
                let from = memo.path[node.depth as usize - 1];
                let to = match auto.step(memo.states[from as usize], node.byte)? {
                    None => DEAD,
                    Some(s) => memo.intern(s)?,
                };
                memo.rows[from as usize * 256 + node.byte as usize] = to;
            }
        }
        Ok(())
    }
}

/// Most automaton states a [`Memo`] holds (1 KiB of transitions each).
pub const MEMO_STATES: usize = 8192;
const UNSEEN: u32 = u32::MAX;
const DEAD: u32 = u32::MAX - 1;

/// The transitions of an automaton met so far, as a table: a trie walk then costs one
/// lookup per node, whatever the automaton.
#[derive(Debug, Clone)]
pub struct Memo<S> {
    ids: BTreeMap<S, u32>,
    states: Vec<S>,
    /// `rows[id * 256 + byte]`: the next state's id, `DEAD` or `UNSEEN`.
    rows: Vec<u32>,
    /// State id at each depth of the current trie path.
    path: Vec<u32>,
}

impl<S: Copy + Ord> Default for Memo<S> {
    fn default() -> Self {
        Memo {
            ids: BTreeMap::new(),
            states: Vec::new(),
            rows: Vec::new(),
            path: Vec::new(),
        }
    }
}

impl<S: Copy + Ord> Memo<S> {
    fn clear(&mut self) {
        self.ids.clear();
        self.states.clear();
        self.rows.clear();
    }

    fn intern(&mut self, s: S) -> Result<u32, Error> {
        if let Some(&id) = self.ids.get(&s) {
            return Ok(id);
        }
        if self.states.len() >= MEMO_STATES {
            return Err(Error::new(
                "constraint: the automaton needs too many states for one step",
            ));
        }
        let id = self.states.len() as u32;
        self.states.push(s);
        self.ids.insert(s, id);
        self.rows.resize(self.rows.len() + 256, UNSEEN);
        Ok(id)
    }
}

/// What the constraint allows at the current step.
#[derive(Debug, PartialEq, Eq)]
pub enum Allowed<'a> {
    /// These tokens (a bitset over the vocabulary).
    Mask(&'a [u32]),
    /// The text is complete and nothing can extend it: stop.
    Finished,
    /// The text is incomplete and no token continues it (the vocabulary cannot express it).
    Stuck,
}

/// An automaton applied to tokens: the current state, the token trie and cached masks.
#[derive(Debug, Clone)]
pub struct Constrained<A: Automaton> {
    auto: A,
    trie: TokenTrie,
    eog: Vec<u32>,
    words: usize,
    state: A::State,
    /// Mask index by state; masks hold (bits, whether a non-EOG token is allowed).
    cache: BTreeMap<A::State, usize>,
    masks: Vec<(Vec<u32>, bool)>,
    max_cached: usize,
    memo: Memo<A::State>,
    /// The mask being computed, with the walk's spare word.
    scratch: Vec<u32>,
    bytes: Vec<u8>,
}

impl<A: Automaton> Constrained<A> {
    /// Reads the vocabulary from the host (`token_bytes`, `is_eog`) and builds the trie.
    pub fn new(auto: A, n_vocab: usize) -> Result<Self, Error> {
        let mut offsets: Vec<(u32, u32)> = Vec::with_capacity(n_vocab);
        let mut all: Vec<u8> = Vec::new();
        let mut eog = Vec::new();
        let mut buf = Vec::new();
        for id in 0..n_vocab as u32 {
            let start = all.len() as u32;
            if host::is_eog(id) {
                eog.push(id);
            } else if host::token_bytes(id, &mut buf) && buf.len() <= MAX_CONSTRAINED_TOKEN {
                all.extend_from_slice(&buf);
            }
            offsets.push((start, all.len() as u32));
        }
        let tokens: Vec<(u32, &[u8])> = offsets
            .iter()
            .enumerate()
            .map(|(id, &(a, b))| (id as u32, &all[a as usize..b as usize]))
            .collect();
        let trie = TokenTrie::new(&tokens);
        let mut c = Self::with_trie(auto, trie, eog, n_vocab);
        c.mask_index()?; // the first step's mask, while the deadline is long
        Ok(c)
    }

    /// From a ready trie and end-of-generation ids.
    pub fn with_trie(auto: A, trie: TokenTrie, eog: Vec<u32>, n_vocab: usize) -> Self {
        let words = n_vocab.div_ceil(32);
        Constrained {
            state: auto.start(),
            auto,
            trie,
            eog,
            words,
            cache: BTreeMap::new(),
            masks: Vec::new(),
            max_cached: (MASK_CACHE_BYTES / (4 * words.max(1))).max(1),
            memo: Memo::default(),
            scratch: Vec::new(),
            bytes: Vec::new(),
        }
    }

    /// The current state.
    pub fn state(&self) -> A::State {
        self.state
    }

    /// Whether the text so far is complete.
    pub fn accepting(&self) -> bool {
        self.auto.accepting(self.state)
    }

    /// The mask index of the current state (computed and cached if new).
    fn mask_index(&mut self) -> Result<usize, Error> {
        if let Some(&i) = self.cache.get(&self.state) {
            return Ok(i);
        }
        if self.masks.len() >= self.max_cached {
            self.cache.clear();
            self.masks.clear();
        }
        self.scratch.clear();
        self.scratch.resize(self.words + 1, 0);
        self.trie.walk(
            &mut self.auto,
            self.state,
            &mut self.memo,
            &mut self.scratch,
        )?;
        let mut bits = self.scratch[..self.words].to_vec(); // without the spare word
        let any = bits.iter().any(|&w| w != 0);
        if self.auto.accepting(self.state) {
            for &t in &self.eog {
                if let Some(w) = bits.get_mut((t / 32) as usize) {
                    *w |= 1 << (t % 32);
                }
            }
        }
        self.masks.push((bits, any));
        let i = self.masks.len() - 1;
        self.cache.insert(self.state, i);
        Ok(i)
    }

    /// What may come next.
    pub fn allowed(&mut self) -> Result<Allowed<'_>, Error> {
        let i = self.mask_index()?;
        let (bits, any) = &self.masks[i];
        Ok(if *any {
            Allowed::Mask(bits)
        } else if self.auto.accepting(self.state) {
            // At most end-of-generation tokens remain: stopping is the same, and cheaper.
            Allowed::Finished
        } else {
            Allowed::Stuck
        })
    }

    /// Whether `token` is allowed now.
    pub fn is_allowed(&mut self, token: u32) -> Result<bool, Error> {
        let i = self.mask_index()?;
        let bits = &self.masks[i].0;
        Ok(bits
            .get((token / 32) as usize)
            .is_some_and(|w| w & (1 << (token % 32)) != 0))
    }

    /// Feeds an accepted token's bytes; `false` if they break the constraint (the state is
    /// then unchanged). End-of-generation tokens change nothing.
    pub fn advance(&mut self, token: u32) -> Result<bool, Error> {
        if self.eog.binary_search(&token).is_ok() {
            return Ok(true);
        }
        if !host::token_bytes(token, &mut self.bytes) {
            return Ok(false);
        }
        let mut s = self.state;
        for i in 0..self.bytes.len() {
            match self.auto.step(s, self.bytes[i])? {
                Some(t) => s = t,
                None => return Ok(false),
            }
        }
        self.state = s;
        Ok(true)
    }

    /// Back to the start (a new generated text).
    pub fn restart(&mut self) {
        self.state = self.auto.start();
    }
}

/// The automaton of a `constraint` policy.
#[derive(Debug, Clone)]
enum Engine {
    Regex(Box<Constrained<Regex>>),
    Json(Box<Constrained<JsonGrammar>>),
}

macro_rules! on_engine {
    ($e:expr, $c:ident => $body:expr) => {
        match $e {
            Engine::Regex($c) => $body,
            Engine::Json($c) => $body,
        }
    };
}

/// The `constraint` policy: the generated text must match a regex (`{"regex": "..."}`) or
/// be one JSON value (`{"json": true}`); the token is then picked by an inner chain
/// (`"sampler": {chain keys…}`, default greedy; its missing keys take the chain's defaults).
/// Uses the full view and `kiln_mask`.
#[derive(Debug, Clone)]
pub struct ConstraintSampler {
    engine: Engine,
    inner: ChainSampler,
    transcript: Transcript,
    /// An error met outside `sample` (mask, accept), reported by the next `sample`.
    error: Option<Error>,
}

impl ConstraintSampler {
    fn allowed(&mut self) -> Result<Allowed<'_>, Error> {
        on_engine!(&mut self.engine, c => c.allowed())
    }
}

impl Sampler for ConstraintSampler {
    fn init(config: &[u8], seed: u64, n_vocab: usize) -> Result<Self, Error> {
        let v = parse_config(config)?;
        let mut f = Fields::new(&v, "constraint")?;
        let regex = f.str("regex")?;
        let json = f.bool("json", false)?;
        let inner = match f.value("sampler") {
            Some(sub) => ChainSampler::from_config(
                sub,
                ChainParams::default(),
                seed,
                n_vocab,
                "constraint.sampler",
            )?,
            None => ChainSampler::from_config(
                &Value::Object(Vec::new()),
                ChainParams::greedy(),
                seed,
                n_vocab,
                "constraint.sampler",
            )?,
        };
        f.finish()?;
        let engine = match (regex, json) {
            (Some(p), false) => Engine::Regex(Box::new(Constrained::new(Regex::new(p)?, n_vocab)?)),
            (None, true) => Engine::Json(Box::new(Constrained::new(JsonGrammar, n_vocab)?)),
            (Some(_), true) => {
                return Err(Error::new(
                    "constraint: give either \"regex\" or \"json\", not both",
                ))
            }
            (None, false) => {
                return Err(Error::new(
                    "constraint: needs \"regex\": \"...\" or \"json\": true",
                ))
            }
        };
        Ok(ConstraintSampler {
            engine,
            inner,
            transcript: Transcript::default(),
            error: None,
        })
    }

    fn view(&self) -> ViewKind {
        ViewKind::Full
    }

    fn mask(&mut self) -> Option<&[u32]> {
        if self.error.is_some() {
            return None;
        }
        // Computed (and cached) here once, so that `sample` finds it ready.
        match on_engine!(&mut self.engine, c => c.allowed().map(|a| matches!(a, Allowed::Mask(_))))
        {
            Ok(true) => {}
            Ok(false) => return None,
            Err(e) => {
                self.error = Some(e);
                return None;
            }
        }
        match self.allowed() {
            Ok(Allowed::Mask(bits)) => Some(bits),
            _ => None,
        }
    }

    fn sample(&mut self, view: View<'_>) -> Result<Choice, Error> {
        if let Some(e) = self.error.take() {
            return Err(e);
        }
        let View::Full(row) = view else {
            return Err(Error::new("constraint needs the full view"));
        };
        let first_allowed = match self.allowed()? {
            Allowed::Finished => {
                self.transcript.chose_none();
                return Ok(Choice::Stop);
            }
            Allowed::Stuck => {
                return Err(Error::new(
                    "constraint: no token of the vocabulary can continue the text",
                ))
            }
            Allowed::Mask(bits) => {
                // The host already masked the row; doing it again keeps this exact even if
                // it did not.
                let mut first = None;
                for (w, &word) in bits.iter().enumerate() {
                    for bit in 0..32 {
                        let id = w * 32 + bit;
                        if id >= row.len() {
                            break;
                        }
                        if word & (1 << bit) == 0 {
                            row[id] = f32::NEG_INFINITY;
                        } else if first.is_none() {
                            first = Some(id as u32);
                        }
                    }
                }
                first
            }
        };
        let mut id = self.inner.pick_row(row);
        if !on_engine!(&mut self.engine, c => c.is_allowed(id))? {
            // Only when every allowed token had logit -inf: take the lowest allowed id.
            id = first_allowed.unwrap_or(0);
        }
        let choice = self.inner.finish_choice(id);
        match choice {
            Choice::Token(t) => self.transcript.chose(t),
            Choice::Stop => self.transcript.chose_none(),
        }
        Ok(choice)
    }

    fn accept(&mut self, token: u32) {
        let ours = self.transcript.accepted(token);
        self.inner.accept(token);
        let result = on_engine!(&mut self.engine, c => {
            if ours {
                c.advance(token)
            } else {
                c.restart();
                Ok(true)
            }
        });
        match result {
            Ok(true) => {}
            Ok(false) => {
                self.error = Some(Error::new(format!(
                    "constraint: token {token} does not fit the constraint"
                )))
            }
            Err(e) => self.error = Some(e),
        }
    }

    fn reset(&mut self) {
        self.inner.reset();
        self.transcript = Transcript::default();
        self.error = None;
        on_engine!(&mut self.engine, c => c.restart());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::json;
    use crate::mock;
    use crate::rng::Rng;
    use alloc::vec;

    /// A small vocabulary: every byte, plus words, JSON pieces, UTF-8 fragments, duplicates,
    /// an empty token and two end-of-generation tokens (ids 0 and 1).
    fn vocab() -> Vec<Vec<u8>> {
        let mut v: Vec<Vec<u8>> = vec![b"<eos>".to_vec(), b"<eot>".to_vec()];
        v.extend((0..=255u8).map(|b| vec![b]));
        for w in [
            "yes",
            "no",
            "ye",
            " ",
            ", ",
            ".",
            "because",
            " because",
            "{\"",
            "\":",
            "\": ",
            "\"}",
            "true",
            "false",
            "null",
            "1.5",
            "-0",
            "e+1",
            "[]",
            "[1,",
            "2]",
            "{}",
            "\\n",
            "\\u00",
            "é",
            "日本",
            "ab",
            "ab",
            "abc",
            "\n",
            "  ",
            "\"a\"",
            "},{",
            "0123456789",
        ] {
            v.push(w.as_bytes().to_vec());
        }
        v.push(vec![0xC3]); // the first half of "é"
        v.push(vec![0xA9, b'x']);
        v.push(Vec::new());
        v
    }

    fn setup() -> Vec<Vec<u8>> {
        let v = vocab();
        mock::set_vocab(&v);
        mock::set_eog(&[0, 1]);
        v
    }

    /// What the mask must be after `text`, by brute force on a fresh automaton.
    fn brute<A: Automaton>(auto: &mut A, text: &[u8], v: &[Vec<u8>]) -> Vec<bool> {
        let mut state = auto.start();
        for &b in text {
            state = auto.step(state, b).unwrap().unwrap();
        }
        (0..v.len())
            .map(|t| {
                if t < 2 {
                    return auto.accepting(state);
                }
                if v[t].is_empty() || v[t].len() > MAX_CONSTRAINED_TOKEN {
                    return false;
                }
                let mut s = state;
                for &b in &v[t] {
                    match auto.step(s, b).unwrap() {
                        Some(n) => s = n,
                        None => return false,
                    }
                }
                true
            })
            .collect()
    }

    fn bits_of(mask: &[u32], n: usize) -> Vec<bool> {
        (0..n)
            .map(|t| mask[t / 32] & (1 << (t % 32)) != 0)
            .collect()
    }

    /// Walks random allowed tokens and checks every mask on the way against brute force.
    fn check_masks<A: Automaton + Clone>(auto: A, seed: u64) {
        let v = setup();
        let mut c = Constrained::new(auto.clone(), v.len()).unwrap();
        let mut oracle = auto;
        let mut r = Rng::new(seed);
        let mut text = Vec::new();
        for _ in 0..40 {
            let want = brute(&mut oracle, &text, &v);
            let got = match c.allowed().unwrap() {
                Allowed::Mask(m) => bits_of(m, v.len()),
                Allowed::Finished | Allowed::Stuck => vec![false; v.len()],
            };
            let want_text: Vec<bool> = want.iter().enumerate().map(|(t, &w)| w && t >= 2).collect();
            if want_text.iter().any(|&w| w) {
                assert_eq!(got, want);
            } else {
                assert!(got.iter().all(|&g| !g));
                break;
            }
            let allowed: Vec<usize> = (2..v.len()).filter(|&t| want[t]).collect();
            let t = allowed[(r.next_u64() % allowed.len() as u64) as usize];
            assert!(c.is_allowed(t as u32).unwrap());
            assert!(c.advance(t as u32).unwrap());
            text.extend_from_slice(&v[t]);
        }
    }

    #[test]
    fn masks_equal_brute_force() {
        for (i, p) in [
            "(yes|no), because [a-z ]{3,10}\\.",
            ".*",
            "[0-9]+(\\.[0-9]+)?",
            "(ab)*c?",
            "日本|é+x",
        ]
        .iter()
        .enumerate()
        {
            check_masks(Regex::new(p).unwrap(), i as u64);
        }
        for seed in 0..6 {
            check_masks(JsonGrammar, seed);
        }
    }

    #[test]
    fn trie_keeps_duplicates_and_prefixes() {
        let toks: Vec<(u32, &[u8])> = vec![
            (0, b"ab"),
            (1, b"a"),
            (2, b"ab"),
            (3, b""),
            (4, b"abc"),
            (5, b"b"),
        ];
        let trie = TokenTrie::new(&toks);
        // a, ab, ab (twin), abc, b
        assert_eq!(trie.len(), 5);
        let mut re = Regex::new(".*").unwrap();
        let start = re.start();
        let mut mask = vec![0u32; 2];
        trie.walk(&mut re, start, &mut Memo::default(), &mut mask)
            .unwrap();
        assert_eq!(mask[0], 0b110111);
        let mut re = Regex::new("ab").unwrap();
        let start = re.start();
        let mut mask = vec![0u32; 2];
        trie.walk(&mut re, start, &mut Memo::default(), &mut mask)
            .unwrap();
        assert_eq!(mask[0], 0b000111);
    }

    #[test]
    fn eog_only_when_complete_then_finished() {
        let v = setup();
        let mut c = Constrained::new(Regex::new("yes|ye").unwrap(), v.len()).unwrap();
        let Allowed::Mask(m) = c.allowed().unwrap() else {
            panic!("expected a mask")
        };
        assert!(!bits_of(m, v.len())[0]);
        let ye = v.iter().position(|t| t == b"ye").unwrap() as u32;
        assert!(c.advance(ye).unwrap());
        let Allowed::Mask(m) = c.allowed().unwrap() else {
            panic!("expected a mask")
        };
        let bits = bits_of(m, v.len());
        assert!(bits[0] && bits[1] && bits[2 + b's' as usize]);
        let s = 2 + u32::from(b's');
        assert!(c.advance(s).unwrap());
        assert_eq!(c.allowed().unwrap(), Allowed::Finished);
        assert!(!c.advance(s).unwrap()); // "yess" breaks it; the state stays
        assert_eq!(c.allowed().unwrap(), Allowed::Finished);
        c.restart();
        assert!(matches!(c.allowed().unwrap(), Allowed::Mask(_)));
        // A pattern the vocabulary cannot spell at all.
        mock::set_vocab(&[&b"<eos>"[..], b"a"]);
        mock::set_eog(&[0]);
        let mut c = Constrained::new(Regex::new("b").unwrap(), 2).unwrap();
        assert_eq!(c.allowed().unwrap(), Allowed::Stuck);
    }

    /// Runs the policy with random logits until it stops; returns the text.
    fn generate(config: &str, seed: u64, steps: usize) -> Result<(Vec<u8>, bool), Error> {
        let v = setup();
        let n = v.len();
        let mut s = ConstraintSampler::init(config.as_bytes(), seed, n)?;
        assert_eq!(s.view(), ViewKind::Full);
        s.accept(5); // a prompt token: not part of the text
        let mut r = Rng::new(seed);
        let mut text = Vec::new();
        for _ in 0..steps {
            let mask = s.mask().map(|m| m.to_vec());
            let mut row: Vec<f32> = (0..n).map(|_| (r.next_f64() * 8.0) as f32).collect();
            if let Some(m) = &mask {
                for (t, l) in row.iter_mut().enumerate() {
                    if m[t / 32] & (1 << (t % 32)) == 0 {
                        *l = f32::NEG_INFINITY;
                    }
                }
            }
            match s.sample(View::Full(&mut row))? {
                Choice::Stop => return Ok((text, true)),
                Choice::Token(t) if t < 2 => return Ok((text, true)),
                Choice::Token(t) => {
                    if let Some(m) = &mask {
                        assert!(m[t as usize / 32] & (1 << (t % 32)) != 0);
                    }
                    text.extend_from_slice(&v[t as usize]);
                    s.accept(t);
                }
            }
        }
        Ok((text, false))
    }

    #[test]
    fn policy_generates_matching_text() {
        for seed in 0..8 {
            let pattern = "(yes|no), because [a-z ]{3,10}\\.";
            let cfg = alloc::format!(
                r#"{{"regex": "{}", "sampler": {{"temperature": 1.0, "top_k": 0}}}}"#,
                pattern.replace('\\', "\\\\")
            );
            let (text, done) = generate(&cfg, seed, 100).unwrap();
            assert!(done);
            assert!(
                Regex::new(pattern).unwrap().is_match(&text).unwrap(),
                "{:?}",
                core::str::from_utf8(&text)
            );
        }
        for seed in 0..8 {
            let (text, done) = generate(
                r#"{"json": true, "sampler": {"temperature": 1.0, "top_k": 0}}"#,
                seed,
                400,
            )
            .unwrap();
            let mut s = JsonGrammar::start_state();
            for &b in &text {
                s = s.step(b).unwrap();
            }
            if done {
                assert!(s.accepting(), "{:?}", core::str::from_utf8(&text));
                // (Our parser refuses lone surrogates and numbers beyond f64; JSON does not.)
                if let Err(e) = json::parse(&text) {
                    let text_has_u = text.windows(2).any(|w| w == b"\\u");
                    assert!(text_has_u || e.message().contains("out of range"), "{e}");
                }
            }
        }
        // Deterministic.
        let cfg = r#"{"regex": "[a-c]{4}", "sampler": {"temperature": 1}}"#;
        assert_eq!(generate(cfg, 1, 10).unwrap(), generate(cfg, 1, 10).unwrap());
    }

    #[test]
    fn policy_config_errors_and_stuck_vocabulary() {
        setup();
        for bad in [
            "",
            "{}",
            r#"{"regex": "a", "json": true}"#,
            r#"{"regex": "("}"#,
            r#"{"regex": 3}"#,
            r#"{"json": 1}"#,
            r#"{"json": true, "sampler": {"top_q": 1}}"#,
            r#"{"json": true, "sampler": 1}"#,
            r#"{"json": true, "extra": 1}"#,
        ] {
            assert!(
                ConstraintSampler::init(bad.as_bytes(), 1, vocab().len()).is_err(),
                "{bad}"
            );
        }
        // Nothing in the vocabulary spells "q" after "x": an error, not a panic.
        mock::set_vocab(&[&b"<eos>"[..], b"x"]);
        mock::set_eog(&[0]);
        let mut s = ConstraintSampler::init(br#"{"regex": "xq"}"#, 1, 2).unwrap();
        assert!(s.mask().is_some());
        assert_eq!(s.sample(View::Full(&mut [0.0, 0.0])), Ok(Choice::Token(1)));
        s.accept(1);
        assert!(s.mask().is_none());
        assert!(s.sample(View::Full(&mut [0.0, 0.0])).is_err());
        // A token that breaks the constraint, accepted anyway, is reported.
        let mut s = ConstraintSampler::init(br#"{"regex": "x"}"#, 1, 2).unwrap();
        assert_eq!(s.sample(View::Full(&mut [0.0, 0.0])), Ok(Choice::Token(1)));
        s.accept(1);
        assert_eq!(s.sample(View::Full(&mut [0.0, 0.0])), Ok(Choice::Stop));
        s.reset();
        assert_eq!(s.sample(View::Full(&mut [5.0, 0.0])), Ok(Choice::Token(1)));
    }
}
