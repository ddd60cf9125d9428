//! The host's tokenizer, built from a GGUF file's `tokenizer.*` metadata so that it
//! reproduces llama.cpp's token ids.
//!
//! Text is first partitioned on special tokens the way llama.cpp does (longest token text
//! first; control tokens only when special-token parsing is on, user-defined ones always);
//! each remaining raw fragment goes through a `tokenizers` pipeline: byte-level BPE for
//! `gpt2` vocabs ([`bpe_gpt2`]), score-driven BPE with byte fallback for SentencePiece-style
//! `llama` vocabs ([`spm`]). See `shared/notes/tokenizers-from-gguf.md` for why.

mod bpe_gpt2;
mod spm;
mod stream;
mod unicode_ranges;

#[cfg(test)]
mod tests;

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashSet};

use anyhow::{anyhow, bail, Context, Result};
use kiln_sdk::gguf::Gguf;

pub use stream::StreamDecoder;

/// Token attribute bits (a token can be control and unused at once).
mod attr {
    pub const NORMAL: u8 = 1;
    pub const UNKNOWN: u8 = 2;
    pub const CONTROL: u8 = 4;
    pub const USER_DEFINED: u8 = 8;
    pub const UNUSED: u8 = 16;
    pub const BYTE: u8 = 32;
}

/// Attribute bits for a GGUF `tokenizer.ggml.token_type` value.
fn attr_from_type(t: i32) -> u8 {
    match t {
        1 => attr::NORMAL,
        2 => attr::UNKNOWN,
        3 => attr::CONTROL,
        4 => attr::USER_DEFINED,
        5 => attr::UNUSED,
        6 => attr::BYTE,
        _ => 0,
    }
}

/// Token texts llama.cpp treats as end-of-generation (and so as control tokens) whatever
/// type the GGUF gives them.
const EOG_TEXTS: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<|return|>",
    "<|call|>",
    "<|flush|>",
    "<|calls|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "</s>",
    "<|eom_id|>",
    "<EOT>",
    "_<EOT>",
    "[EOT]",
    "[EOS]",
    "<|end_of_text|>",
    "<end_of_utterance>",
    "<eos>",
    "<turn|>",
    "<|tool_response>",
    "<\u{FF5C}end\u{2581}of\u{2581}sentence\u{FF5C}>",
];

/// Token texts llama.cpp always makes user-defined (gpt-oss's harmony format).
const HARMONY_USER_DEFINED: &[&str] = &["<|channel|>", "<|message|>", "<|start|>", "<|constrain|>"];

/// End-of-turn texts, searched when the GGUF names no `eot_token_id`.
const EOT_TEXTS: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "<|end_of_text|>",
    "<EOT>",
    "_<EOT>",
    "[EOT]",
    "<\u{FF5C}end\u{2581}of\u{2581}sentence\u{FF5C}>",
    "<end_of_utterance>",
];

/// Fill-in-the-middle roles: GGUF key suffix, texts searched when the key is absent, and
/// whether the role ends generation.
const FIM_ROLES: &[(&str, &[&str], bool)] = &[
    (
        "fim_pre_token_id",
        &[
            "<|fim_prefix|>",
            "<fim-prefix>",
            "<fim_prefix>",
            "<\u{FF5C}fim\u{2581}begin\u{FF5C}>",
            "<PRE>",
            "\u{2581}<PRE>",
            "<|code_prefix|>",
            "<|prefix|>",
        ],
        false,
    ),
    (
        "fim_suf_token_id",
        &[
            "<|fim_suffix|>",
            "<fim-suffix>",
            "<fim_suffix>",
            "<\u{FF5C}fim\u{2581}hole\u{FF5C}>",
            "<SUF>",
            "\u{2581}<SUF>",
            "<|code_suffix|>",
            "<|suffix|>",
        ],
        false,
    ),
    (
        "fim_mid_token_id",
        &[
            "<|fim_middle|>",
            "<fim-middle>",
            "<fim_middle>",
            "<\u{FF5C}fim\u{2581}end\u{FF5C}>",
            "<MID>",
            "\u{2581}<MID>",
            "<|code_middle|>",
            "<|middle|>",
        ],
        false,
    ),
    (
        "fim_pad_token_id",
        &["<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]"],
        true,
    ),
    (
        "fim_rep_token_id",
        &[
            "<|fim_repo|>",
            "<|repo_name|>",
            "<fim-repo>",
            "<REPO>",
            "<reponame>",
        ],
        true,
    ),
    ("fim_sep_token_id", &["<|file_sep|>"], true),
];

/// Which tokenizer algorithm a vocab uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// Byte-level BPE (`tokenizer.ggml.model = "gpt2"`).
    Gpt2,
    /// SentencePiece-style (`tokenizer.ggml.model = "llama"`).
    Spm,
}

/// A tokenizer for one model, built from its GGUF metadata.
pub struct Tokenizer {
    kind: Kind,
    hf: tokenizers::Tokenizer,
    texts: Vec<String>,
    #[allow(dead_code)] // read by `is_control`
    attrs: Vec<u8>,
    /// `token_bytes` of every id, concatenated; `piece_offs[id]..piece_offs[id + 1]`.
    piece_bytes: Vec<u8>,
    piece_offs: Vec<usize>,
    bos: Option<u32>,
    eos: Option<u32>,
    eot: Option<u32>,
    add_bos: bool,
    add_space_prefix: bool,
    eog: HashSet<u32>,
    specials: SpecialMatcher,
    chat_template: Option<String>,
    harmony: bool,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("kind", &self.kind)
            .field("n_vocab", &self.texts.len())
            .field("bos", &self.bos)
            .field("eos", &self.eos)
            .field("add_bos", &self.add_bos)
            .finish_non_exhaustive()
    }
}

/// Reads an optional token id key; ids outside the vocab are ignored with a warning.
fn token_id_key(g: &Gguf, key: &str, n_vocab: usize) -> Result<Option<u32>> {
    let Some(v) = g.get_u64(key).with_context(|| format!("reading {key}"))? else {
        return Ok(None);
    };
    if v >= n_vocab as u64 {
        tracing::warn!(
            key,
            id = v,
            n_vocab,
            "special token id out of range, ignored"
        );
        return Ok(None);
    }
    Ok(Some(v as u32))
}

impl Tokenizer {
    /// Builds the tokenizer described by `g`'s `tokenizer.ggml.*` keys. Supports the `gpt2`
    /// (byte-level BPE) and `llama` (SentencePiece-style) models.
    pub fn from_gguf(g: &Gguf) -> Result<Self> {
        let model = g
            .get_str("tokenizer.ggml.model")?
            .ok_or_else(|| anyhow!("the GGUF has no tokenizer (tokenizer.ggml.model missing)"))?;
        let kind = match model {
            "gpt2" => Kind::Gpt2,
            "llama" => Kind::Spm,
            other => bail!(
                "unsupported tokenizer model {other:?} (tokenizer.ggml.model); supported: gpt2, llama"
            ),
        };

        let raw_tokens = g
            .get_array("tokenizer.ggml.tokens")?
            .ok_or_else(|| anyhow!("tokenizer.ggml.tokens missing"))?
            .to_strings()
            .ok_or_else(|| anyhow!("tokenizer.ggml.tokens is not an array of strings"))?;
        let n = raw_tokens.len();
        if n == 0 {
            bail!("tokenizer.ggml.tokens is empty");
        }
        if n > u32::MAX as usize / 2 {
            bail!("tokenizer.ggml.tokens has too many entries ({n})");
        }
        let mut lossy = 0usize;
        let texts: Vec<String> = raw_tokens
            .iter()
            .enumerate()
            .map(|(i, b)| {
                if b.is_empty() {
                    // As llama.cpp does: an empty token gets a unique placeholder text.
                    return format!("[EMPTY_{i}]");
                }
                match std::str::from_utf8(b) {
                    Ok(s) => s.to_string(),
                    Err(_) => {
                        lossy += 1;
                        String::from_utf8_lossy(b).into_owned()
                    }
                }
            })
            .collect();
        if lossy > 0 {
            tracing::warn!(
                lossy,
                "token texts that are not UTF-8 were converted lossily"
            );
        }

        let mut attrs: Vec<u8> = match g.get_array("tokenizer.ggml.token_type")? {
            None => vec![attr::NORMAL; n],
            Some(a) => {
                let t = a
                    .to_i32s()
                    .ok_or_else(|| anyhow!("tokenizer.ggml.token_type is not an integer array"))?;
                if t.len() < n {
                    bail!(
                        "tokenizer.ggml.token_type has {} entries for {n} tokens",
                        t.len()
                    );
                }
                t[..n].iter().map(|&x| attr_from_type(x)).collect()
            }
        };

        let (default_bos, default_eos, default_unk) = match kind {
            Kind::Spm => (Some(1), Some(2), Some(0)),
            Kind::Gpt2 => (None, None, None),
        };
        let in_range = |id: Option<u32>| id.filter(|&i| (i as usize) < n);
        let bos = token_id_key(g, "tokenizer.ggml.bos_token_id", n)?.or(in_range(default_bos));
        let eos = token_id_key(g, "tokenizer.ggml.eos_token_id", n)?.or(in_range(default_eos));
        let unk = token_id_key(g, "tokenizer.ggml.unknown_token_id", n)?.or(in_range(default_unk));
        let add_bos = g
            .get_bool("tokenizer.ggml.add_bos_token")?
            .unwrap_or(kind == Kind::Spm);
        let add_space_prefix = g
            .get_bool("tokenizer.ggml.add_space_prefix")?
            .unwrap_or(kind == Kind::Spm);

        // Special tokens llama.cpp finds by text, marking them control.
        let find_text = |names: &[&str]| -> Option<u32> {
            texts
                .iter()
                .position(|t| names.contains(&t.as_str()))
                .map(|i| i as u32)
        };
        let mut eog: HashSet<u32> = HashSet::new();
        let mark_control = |attrs: &mut Vec<u8>, id: u32| {
            attrs[id as usize] |= attr::CONTROL;
        };
        let eot = match token_id_key(g, "tokenizer.ggml.eot_token_id", n)? {
            Some(id) => Some(id),
            None => find_text(EOT_TEXTS).inspect(|&id| mark_control(&mut attrs, id)),
        };
        let eom = match token_id_key(g, "tokenizer.ggml.eom_token_id", n)? {
            Some(id) => Some(id),
            None => find_text(&["<|eom_id|>"]).inspect(|&id| mark_control(&mut attrs, id)),
        };
        for &(key, names, ends) in FIM_ROLES {
            let id = match token_id_key(g, &format!("tokenizer.ggml.{key}"), n)? {
                Some(id) => Some(id),
                None => find_text(names).inspect(|&id| mark_control(&mut attrs, id)),
            };
            if let (Some(id), true) = (id, ends) {
                eog.insert(id);
            }
        }
        for (id, t) in texts.iter().enumerate() {
            if EOG_TEXTS.contains(&t.as_str()) {
                eog.insert(id as u32);
                mark_control(&mut attrs, id as u32);
            }
        }
        eog.extend([eos, eot, eom].into_iter().flatten());
        // Tokenizers with both "<|return|>" and "<|call|>" (or "<|calls|>" and "<|flush|>")
        // use "<|end|>" inside a turn: it neither ends generation nor is control there.
        let eog_has = |eog: &HashSet<u32>, name: &str| {
            eog.iter().find(|&&id| texts[id as usize] == name).copied()
        };
        if let Some(end) = eog_has(&eog, "<|end|>") {
            let call = eog_has(&eog, "<|call|>").or(eog_has(&eog, "<|calls|>"));
            if call.is_some()
                && (eog_has(&eog, "<|return|>").is_some() || eog_has(&eog, "<|flush|>").is_some())
            {
                eog.remove(&end);
                attrs[end as usize] = attr::USER_DEFINED;
            }
        }
        // Harmony's (gpt-oss) structural tokens are always rendered and split out of text
        // even without special-token parsing: llama.cpp makes them user-defined.
        for (id, t) in texts.iter().enumerate() {
            if HARMONY_USER_DEFINED.contains(&t.as_str()) {
                attrs[id] = attr::USER_DEFINED;
            }
        }
        // With "<|tool_response>", "</s>" is ordinary text.
        if let (Some(s), Some(_)) = (eog_has(&eog, "</s>"), eog_has(&eog, "<|tool_response>")) {
            eog.remove(&s);
            attrs[s as usize] = attr::NORMAL;
        }

        let hf = match kind {
            Kind::Gpt2 => {
                let pre = g.get_str("tokenizer.ggml.pre")?.unwrap_or_else(|| {
                    tracing::warn!("tokenizer.ggml.pre missing; using GPT-2's pre-tokenizer");
                    "gpt2"
                });
                let pre = if pre == "default" { "gpt2" } else { pre };
                let raw_merges = g
                    .get_array("tokenizer.ggml.merges")?
                    .ok_or_else(|| anyhow!("tokenizer.ggml.merges missing (needed by gpt2)"))?
                    .to_strings()
                    .ok_or_else(|| anyhow!("tokenizer.ggml.merges is not an array of strings"))?;
                let merges = bpe_gpt2::merges_from_bytes(&raw_merges)?;
                bpe_gpt2::build(&texts, &merges, pre)?
            }
            Kind::Spm => {
                let scores = match g.get_array("tokenizer.ggml.scores")? {
                    None => vec![0.0; n],
                    Some(a) => {
                        let s = a
                            .to_f32s()
                            .ok_or_else(|| anyhow!("tokenizer.ggml.scores is not numeric"))?;
                        if s.len() < n {
                            bail!(
                                "tokenizer.ggml.scores has {} entries for {n} tokens",
                                s.len()
                            );
                        }
                        s
                    }
                };
                let unk_text = unk.map(|id| texts[id as usize].as_str());
                spm::build(&texts, &scores, unk_text)?
            }
        };

        let (piece_bytes, piece_offs) = build_piece_table(kind, &texts, &attrs);
        let specials = SpecialMatcher::new(&texts, &attrs);
        let chat_template = g.get_str("tokenizer.chat_template")?.map(str::to_string);
        let harmony = crate::harmony::is_harmony_vocab(|t| texts.iter().any(|x| x == t));

        Ok(Tokenizer {
            kind,
            hf,
            texts,
            attrs,
            piece_bytes,
            piece_offs,
            bos,
            eos,
            eot,
            add_bos,
            add_space_prefix,
            eog,
            specials,
            chat_template,
            harmony,
        })
    }

    /// Token ids for `text`, with BOS first when the GGUF asks for it. With
    /// `parse_special`, control-token texts (e.g. `<|im_start|>`) become those tokens;
    /// without, they are tokenized as ordinary text.
    pub fn encode(&self, text: &str, parse_special: bool) -> Result<Vec<u32>> {
        let mut out = Vec::with_capacity(text.len() / 3 + 2);
        if self.add_bos {
            if let Some(b) = self.bos {
                out.push(b);
            }
        }
        let n_vocab = self.texts.len();
        let mut prev_special = true;
        for frag in self.specials.partition(text, parse_special) {
            match frag {
                Fragment::Token(id) => {
                    out.push(id);
                    prev_special = true;
                }
                Fragment::Raw(a, b) => {
                    let raw = &text[a..b];
                    let prefixed;
                    let input = if self.kind == Kind::Spm && self.add_space_prefix && prev_special {
                        prefixed = format!(" {raw}");
                        prefixed.as_str()
                    } else {
                        raw
                    };
                    let enc = self
                        .hf
                        .encode_fast(input, false)
                        .map_err(|e| anyhow!("tokenizing text: {e}"))?;
                    // Ids at or above the vocab size are placeholders for dropped bytes.
                    out.extend(
                        enc.get_ids()
                            .iter()
                            .copied()
                            .filter(|&id| (id as usize) < n_vocab),
                    );
                    prev_special = false;
                }
            }
        }
        Ok(out)
    }

    /// The exact bytes token `id` emits (empty for unknown ids and unused tokens).
    pub fn token_bytes(&self, id: u32) -> &[u8] {
        let i = id as usize;
        if i >= self.texts.len() {
            return &[];
        }
        &self.piece_bytes[self.piece_offs[i]..self.piece_offs[i + 1]]
    }

    /// The text of `ids`, joined; invalid UTF-8 becomes U+FFFD.
    // Part of the tokenizer's API; not every build of the binary calls it.
    #[allow(dead_code)]
    pub fn decode(&self, ids: &[u32]) -> String {
        let mut bytes = Vec::new();
        for &id in ids {
            bytes.extend_from_slice(self.token_bytes(id));
        }
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// Number of tokens in the vocab.
    pub fn n_vocab(&self) -> usize {
        self.texts.len()
    }

    /// The beginning-of-sequence token, if the model has one.
    pub fn bos(&self) -> Option<u32> {
        self.bos
    }

    /// The end-of-sequence token, if the model has one.
    pub fn eos(&self) -> Option<u32> {
        self.eos
    }

    /// The end-of-turn token (`tokenizer.ggml.eot_token_id`, else found by its text).
    pub fn eot(&self) -> Option<u32> {
        self.eot
    }

    /// Whether generating `id` ends generation (EOS, end-of-turn and similar tokens).
    pub fn is_eog(&self, id: u32) -> bool {
        self.eog.contains(&id)
    }

    /// Whether `id` is a control token (including those llama.cpp marks by their text).
    // Part of the tokenizer's API; not every build of the binary calls it.
    #[allow(dead_code)]
    pub fn is_control(&self, id: u32) -> bool {
        self.attrs
            .get(id as usize)
            .is_some_and(|a| a & attr::CONTROL != 0)
    }

    /// The chat template stored in the GGUF (`tokenizer.chat_template`), if any.
    pub fn chat_template(&self) -> Option<&str> {
        self.chat_template.as_deref()
    }

    /// Whether the vocab has harmony's tokens (gpt-oss): generated text then carries
    /// channels that [`crate::harmony::HarmonyParser`] splits into reasoning and answer.
    pub fn uses_harmony(&self) -> bool {
        self.harmony
    }

    /// The raw vocab text of token `id` (byte-level or "▁"-escaped as stored).
    pub fn token_text(&self, id: u32) -> Option<&str> {
        self.texts.get(id as usize).map(String::as_str)
    }

    /// Whether the tokenizer prepends BOS to encoded text.
    // Part of the tokenizer's API; not every build of the binary calls it.
    #[allow(dead_code)]
    pub fn adds_bos(&self) -> bool {
        self.add_bos
    }
}

/// Computes every token's output bytes, as llama.cpp's token-to-piece does with special
/// tokens rendered: control, unknown and user-defined tokens give their text; normal
/// tokens are byte-level decoded (gpt2) or have "▁" turned into spaces (SPM); byte tokens
/// give their byte; unused tokens give nothing.
fn build_piece_table(kind: Kind, texts: &[String], attrs: &[u8]) -> (Vec<u8>, Vec<usize>) {
    let byte_map = bpe_gpt2::char_to_byte_map();
    let mut bytes = Vec::with_capacity(texts.iter().map(String::len).sum());
    let mut offs = Vec::with_capacity(texts.len() + 1);
    offs.push(0);
    for (text, &a) in texts.iter().zip(attrs) {
        if a & (attr::CONTROL | attr::UNKNOWN | attr::USER_DEFINED) != 0 {
            bytes.extend_from_slice(text.as_bytes());
        } else if a & attr::NORMAL != 0 {
            match kind {
                Kind::Gpt2 => bytes.extend(bpe_gpt2::decode_byte_level(text, &byte_map)),
                Kind::Spm => bytes.extend_from_slice(text.replace(spm::SPACE_MARK, " ").as_bytes()),
            }
        } else if a & attr::BYTE != 0 {
            match spm::parse_byte_piece(text) {
                Some(b) => bytes.push(b),
                None => bytes.extend_from_slice(text.as_bytes()),
            }
        }
        offs.push(bytes.len());
    }
    (bytes, offs)
}

/// A piece of partitioned input: raw text (a byte range) or a special token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fragment {
    Raw(usize, usize),
    Token(u32),
}

/// One token that partitions text.
#[derive(Clone, Copy, Debug)]
struct Special {
    id: u32,
    len: usize,
    /// Control or unknown: only split out when special-token parsing is on.
    needs_parse_special: bool,
}

/// A byte trie node; `next` is sorted by byte.
#[derive(Default, Debug)]
struct TrieNode {
    next: Vec<(u8, u32)>,
    /// Index into `SpecialMatcher::tokens` of the token ending here.
    terminal: Option<u32>,
    /// The nearest proper ancestor where a token ends (a shorter token, same start).
    shorter: Option<u32>,
}

/// Finds control, unknown and user-defined token texts in input, in llama.cpp's order:
/// tokens with longer texts first, each splitting the raw text left over by earlier ones at
/// its leftmost non-overlapping occurrences.
#[derive(Debug)]
struct SpecialMatcher {
    tokens: Vec<Special>,
    nodes: Vec<TrieNode>,
    /// Whether some token splits text even without special-token parsing.
    has_user_defined: bool,
}

impl SpecialMatcher {
    fn new(texts: &[String], attrs: &[u8]) -> Self {
        let mut tokens: Vec<Special> = texts
            .iter()
            .zip(attrs)
            .enumerate()
            .filter(|(_, (t, &a))| {
                !t.is_empty() && a & (attr::CONTROL | attr::UNKNOWN | attr::USER_DEFINED) != 0
            })
            .map(|(id, (t, &a))| Special {
                id: id as u32,
                len: t.len(),
                needs_parse_special: a & (attr::CONTROL | attr::UNKNOWN) != 0,
            })
            .collect();
        // The rank of a token is its index here: longest text first, then lowest id.
        tokens.sort_by(|a, b| b.len.cmp(&a.len).then(a.id.cmp(&b.id)));
        let mut nodes = vec![TrieNode::default()];
        for (rank, tok) in tokens.iter().enumerate() {
            let mut cur = 0usize;
            for &byte in texts[tok.id as usize].as_bytes() {
                cur = match nodes[cur].next.binary_search_by_key(&byte, |&(b, _)| b) {
                    Ok(i) => nodes[cur].next[i].1 as usize,
                    Err(i) => {
                        let new = nodes.len();
                        nodes.push(TrieNode::default());
                        nodes[cur].next.insert(i, (byte, new as u32));
                        new
                    }
                };
            }
            // Duplicate texts: the first (lowest rank) keeps the node.
            if nodes[cur].terminal.is_none() {
                nodes[cur].terminal = Some(rank as u32);
            }
        }
        // Link every node to its nearest terminal proper ancestor (parents come first in a
        // breadth-first walk from the root).
        let mut queue = std::collections::VecDeque::from([0usize]);
        while let Some(v) = queue.pop_front() {
            let link = if nodes[v].terminal.is_some() {
                Some(v as u32)
            } else {
                nodes[v].shorter
            };
            for k in 0..nodes[v].next.len() {
                let c = nodes[v].next[k].1 as usize;
                nodes[c].shorter = link;
                queue.push_back(c);
            }
        }
        let has_user_defined = tokens.iter().any(|t| !t.needs_parse_special);
        SpecialMatcher {
            tokens,
            nodes,
            has_user_defined,
        }
    }

    /// The rank of the token ending at `node`, if it may split text in this mode.
    fn allowed(&self, node: usize, parse_special: bool) -> Option<u32> {
        let rank = self.nodes[node].terminal?;
        (parse_special || !self.tokens[rank as usize].needs_parse_special).then_some(rank)
    }

    /// The next shorter allowed token on the trie path to `node`: (node, rank).
    fn shorter_allowed(&self, node: usize, parse_special: bool) -> Option<(usize, u32)> {
        let mut cur = self.nodes[node].shorter;
        while let Some(n) = cur {
            if let Some(rank) = self.allowed(n as usize, parse_special) {
                return Some((n as usize, rank));
            }
            cur = self.nodes[n as usize].shorter;
        }
        None
    }

    /// Splits `text` into raw fragments and special tokens.
    ///
    /// Occurrences are visited in (rank, start) order — as llama.cpp splits on one token
    /// after another — from a heap holding, per start, the longest token not yet ruled out;
    /// an occurrence overlapping earlier claims gives way to the next shorter token at the
    /// same start. Memory stays linear in the text.
    fn partition(&self, text: &str, parse_special: bool) -> Vec<Fragment> {
        let bytes = text.as_bytes();
        if bytes.is_empty() {
            return Vec::new();
        }
        if self.tokens.is_empty() || !(parse_special || self.has_user_defined) {
            return vec![Fragment::Raw(0, bytes.len())];
        }
        let mut heap: BinaryHeap<Reverse<(u32, u32, u32)>> = BinaryHeap::new();
        for start in 0..bytes.len() {
            let mut cur = 0usize;
            let mut deepest = None;
            for &byte in &bytes[start..] {
                match self.nodes[cur]
                    .next
                    .binary_search_by_key(&byte, |&(b, _)| b)
                {
                    Ok(i) => cur = self.nodes[cur].next[i].1 as usize,
                    Err(_) => break,
                }
                if let Some(rank) = self.allowed(cur, parse_special) {
                    deepest = Some((cur, rank));
                }
            }
            if let Some((node, rank)) = deepest {
                heap.push(Reverse((rank, start as u32, node as u32)));
            }
        }
        if heap.is_empty() {
            return vec![Fragment::Raw(0, bytes.len())];
        }
        let mut claimed = vec![false; bytes.len()];
        let mut accepted: Vec<(usize, usize, u32)> = Vec::new();
        while let Some(Reverse((rank, start, node))) = heap.pop() {
            let s = start as usize;
            if claimed[s] {
                // Every token starting inside a claimed span is ruled out.
                continue;
            }
            let tok = self.tokens[rank as usize];
            let e = s + tok.len;
            if claimed[s..e].iter().any(|&c| c) {
                if let Some((n, r)) = self.shorter_allowed(node as usize, parse_special) {
                    heap.push(Reverse((r, start, n as u32)));
                }
                continue;
            }
            claimed[s..e].iter_mut().for_each(|c| *c = true);
            accepted.push((s, e, tok.id));
        }
        accepted.sort_unstable();
        let mut out = Vec::with_capacity(accepted.len() * 2 + 1);
        let mut pos = 0;
        for (s, e, id) in accepted {
            if s > pos {
                out.push(Fragment::Raw(pos, s));
            }
            out.push(Fragment::Token(id));
            pos = e;
        }
        if pos < bytes.len() {
            out.push(Fragment::Raw(pos, bytes.len()));
        }
        out
    }
}
