//! GPT-2-style byte-level BPE vocabularies (`tokenizer.ggml.model = "gpt2"`).
//!
//! Builds a `tokenizers` BPE over the GGUF's tokens and merges, with one regex split per
//! pattern llama.cpp uses for the `tokenizer.ggml.pre` type, then the byte-level mapping.
//! Bytes whose symbol the vocab lacks get placeholder ids at or above the vocab size, so
//! they block merges the way llama.cpp does and are filtered from the output afterwards.

use std::collections::HashMap;

use anyhow::{anyhow, Context, Result};
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::SplitDelimiterBehavior;

use super::unicode_ranges::expand_classes;

/// GPT-2's printable stand-in for each byte: bytes that are printable and not whitespace
/// keep their code point; the others are mapped, in order, to U+0100 and up.
pub fn byte_to_char_table() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut next = 256u32;
    for (b, slot) in table.iter_mut().enumerate() {
        let keeps = matches!(b, 0x21..=0x7E | 0xA1..=0xAC | 0xAE..=0xFF);
        let cp = if keeps {
            b as u32
        } else {
            let cp = next;
            next += 1;
            cp
        };
        // Every value here is below U+0200, so it is always a valid char.
        *slot = char::from_u32(cp).unwrap_or('\u{FFFD}');
    }
    table
}

/// Inverse of [`byte_to_char_table`].
pub fn char_to_byte_map() -> HashMap<char, u8> {
    byte_to_char_table()
        .iter()
        .enumerate()
        .map(|(b, &c)| (c, b as u8))
        .collect()
}

/// Decodes a byte-level token text to the bytes it stands for; characters outside the
/// byte-level alphabet are kept as their UTF-8.
pub fn decode_byte_level(text: &str, map: &HashMap<char, u8>) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len());
    for c in text.chars() {
        match map.get(&c) {
            Some(&b) => out.push(b),
            None => {
                let mut buf = [0u8; 4];
                out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            }
        }
    }
    out
}

/// GPT-2's split pattern, with llama.cpp's letter/digit classes.
const GPT2_PATTERN: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?{L}+| ?{N}+| ?[^\s{L}{N}]+|\s+(?!\S)";

/// The regexes llama.cpp applies, in order, for a `tokenizer.ggml.pre` value of a gpt2 vocab.
/// `None` for types this host does not know.
pub fn pre_tokenizer_patterns(pre: &str) -> Option<Vec<String>> {
    let qwen2 = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n{L}{N}]?{L}+|{N}| ?[^\s{L}{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
    let llama3 = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n{L}{N}]?{L}+|{N}{1,3}| ?[^\s{L}{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
    // llama.cpp's rewrite of o200k's pattern (LLAMA_VOCAB_PRE_TYPE_GPT4O). The original
    // `[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+` word classes become "a letter
    // that is not a-z" then "a letter that is not A-Z": every non-ASCII letter counts as both
    // cases and combining marks (not letters) end a word; `(?i:'s|...)` becomes explicit
    // case pairs. llama.cpp runs it with std::regex on text whose non-ASCII code points are
    // collapsed to one byte per category, which for this pattern is the same as running it
    // on the text itself with llama.cpp's letter/digit classes.
    let gpt4o = r"[^\r\n{L}{N}]?((?={L})([^a-z]))*((?={L})([^A-Z]))+(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])?|[^\r\n{L}{N}]?((?={L})([^a-z]))+((?={L})([^A-Z]))*(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])?|{N}{1,3}| ?[^\s{L}{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+";
    let patterns: Vec<&str> = match pre {
        // gpt-oss (o200k_harmony), Llama 4 and others llama.cpp maps to the same type.
        "gpt-4o" | "llama4" | "kanana2" | "talkie" | "minimax-m2" => vec![gpt4o],
        "qwen2" | "megrez" | "deepseek-r1-qwen" => vec![qwen2],
        "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "pixtral" => vec![llama3],
        // Digits split one by one, then GPT-2's pattern.
        "smollm" | "starcoder" | "refact" | "command-r" | "codeshell" | "exaone" => {
            vec![r"{N}", GPT2_PATTERN]
        }
        "gpt-2" | "gpt2" | "phi-2" | "jina-es" | "jina-de" | "roberta-bpe" => vec![GPT2_PATTERN],
        _ => return None,
    };
    Some(patterns.into_iter().map(expand_classes).collect())
}

/// Names accepted by [`pre_tokenizer_patterns`], for error messages.
pub const KNOWN_PRE_TYPES: &str = "qwen2, megrez, deepseek-r1-qwen, llama3, llama-bpe, falcon3, \
pixtral, gpt-4o, llama4, kanana2, talkie, minimax-m2, smollm, starcoder, refact, command-r, codeshell, \
exaone, gpt-2, phi-2, roberta-bpe";

/// Builds the `tokenizers` pipeline for a gpt2 vocab. `tokens` are the GGUF token texts
/// (index = id); returned ids at or above `tokens.len()` are placeholders to drop.
pub fn build(tokens: &[String], merges: &[String], pre: &str) -> Result<tokenizers::Tokenizer> {
    let patterns = pre_tokenizer_patterns(pre).ok_or_else(|| {
        anyhow!(
            "unsupported tokenizer.ggml.pre {pre:?} for a gpt2 vocab (supported: {KNOWN_PRE_TYPES})"
        )
    })?;

    let n_vocab = tokens.len();
    let mut vocab = Vocab::with_capacity(n_vocab + 256);
    for (id, text) in tokens.iter().enumerate() {
        // Keep the first id of a duplicated text, as a lookup by text would.
        vocab.entry(text.clone()).or_insert(id as u32);
    }
    // Placeholders for byte symbols the vocab lacks (pitfall: llama.cpp drops such bytes
    // only after merging, so they must still separate their neighbours).
    let mut next_placeholder = n_vocab as u32;
    for c in byte_to_char_table() {
        let key = c.to_string();
        if !vocab.contains_key(&key) {
            vocab.insert(key, next_placeholder);
            next_placeholder += 1;
        }
    }

    let mut pairs = Vec::with_capacity(merges.len());
    let mut seen = std::collections::HashSet::with_capacity(merges.len());
    let mut skipped = 0usize;
    for m in merges {
        let Some((a, b)) = m.split_once(' ') else {
            skipped += 1;
            continue;
        };
        let merged = format!("{a}{b}");
        if !vocab.contains_key(a) || !vocab.contains_key(b) || !vocab.contains_key(&merged) {
            skipped += 1;
            continue;
        }
        // The first rank of a repeated pair wins.
        if seen.insert((a.to_string(), b.to_string())) {
            pairs.push((a.to_string(), b.to_string()));
        }
    }
    if skipped > 0 {
        tracing::warn!(
            skipped,
            "ignored merges that are malformed or name unknown tokens"
        );
    }

    let bpe = BPE::builder()
        .vocab_and_merges(vocab, pairs)
        .build()
        .map_err(|e| anyhow!("building the BPE model: {e}"))?;

    let mut steps: Vec<PreTokenizerWrapper> = Vec::with_capacity(patterns.len() + 1);
    for p in patterns {
        let split = Split::new(
            SplitPattern::Regex(p),
            SplitDelimiterBehavior::Isolated,
            false,
        )
        .map_err(|e| anyhow!("compiling a pre-tokenizer regex: {e}"))?;
        steps.push(split.into());
    }
    steps.push(ByteLevel::new(false, false, false).into());

    let mut tok = tokenizers::Tokenizer::new(bpe);
    tok.with_pre_tokenizer(Some(Sequence::new(steps)));
    if next_placeholder as usize - n_vocab > 0 {
        tracing::debug!(
            missing = next_placeholder as usize - n_vocab,
            "gpt2 vocab lacks some byte symbols; those bytes are dropped"
        );
    }
    Ok(tok)
}

/// Converts the GGUF's `tokenizer.ggml.merges` (raw bytes) to strings.
pub fn merges_from_bytes(raw: &[&[u8]]) -> Result<Vec<String>> {
    raw.iter()
        .enumerate()
        .map(|(i, b)| {
            std::str::from_utf8(b)
                .map(str::to_string)
                .with_context(|| format!("tokenizer.ggml.merges[{i}] is not UTF-8"))
        })
        .collect()
}

/// Errors unless every pattern of every known pre type compiles (used by tests).
#[cfg(test)]
pub fn check_all_patterns() -> Result<()> {
    for pre in ["qwen2", "llama3", "gpt-4o", "smollm", "gpt2"] {
        let Some(ps) = pre_tokenizer_patterns(pre) else {
            anyhow::bail!("{pre} unknown")
        };
        for p in ps {
            Split::new(
                SplitPattern::Regex(p),
                SplitDelimiterBehavior::Isolated,
                false,
            )
            .map_err(|e| anyhow!("{pre}: {e}"))?;
        }
    }
    Ok(())
}

/// The words the pre-tokenizer of `pre` cuts `text` into, before byte-level mapping and
/// BPE (used by tests).
#[cfg(test)]
pub fn split_words(pre: &str, text: &str) -> Result<Vec<String>> {
    use tokenizers::{OffsetReferential, OffsetType, PreTokenizedString, PreTokenizer};
    let patterns = pre_tokenizer_patterns(pre).ok_or_else(|| anyhow!("{pre} unknown"))?;
    let mut pts = PreTokenizedString::from(text);
    for p in patterns {
        let split = Split::new(
            SplitPattern::Regex(p),
            SplitDelimiterBehavior::Isolated,
            false,
        )
        .map_err(|e| anyhow!("{pre}: {e}"))?;
        split
            .pre_tokenize(&mut pts)
            .map_err(|e| anyhow!("{pre}: {e}"))?;
    }
    Ok(pts
        .get_splits(OffsetReferential::Original, OffsetType::Byte)
        .into_iter()
        .map(|(s, _, _)| s.to_string())
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Checks the gpt-4o split of each `(text, words)` case.
    fn check_gpt4o(cases: &[(&str, &[&str])]) {
        for (text, want) in cases {
            let got = split_words("gpt-4o", text).unwrap();
            assert_eq!(got, *want, "split of {text:?}");
        }
    }

    #[test]
    fn gpt4o_split_words_and_case() {
        check_gpt4o(&[
            ("Hello world", &["Hello", " world"]),
            // An upper-case run joins the lower-case run after it...
            ("HELLOWorld", &["HELLOWorld"]),
            ("CamelCaseXMLParser", &["Camel", "Case", "XMLParser"]),
            // ...but a lower-case run ends at the next capital.
            ("helloWorld", &["hello", "World"]),
            ("HELLO world", &["HELLO", " world"]),
            ("iPhone", &["i", "Phone"]),
            // One leading non-letter, non-digit (not \r or \n) joins the word.
            ("(foo) _bar", &["(foo", ")", " _", "bar"]),
            ("\nfoo", &["\n", "foo"]),
        ]);
    }

    #[test]
    fn gpt4o_split_contractions() {
        // Contractions attach to the word before them, in either case.
        check_gpt4o(&[
            (
                "I'm don't WE'LL they'Re",
                &["I'm", " don't", " WE'LL", " they'Re"],
            ),
            ("you'VE it's", &["you'VE", " it's"]),
            // Not a contraction: the apostrophe leads the next word.
            ("rock'n'roll", &["rock", "'n", "'roll"]),
            ("'s alone", &["'s", " alone"]),
            ("O'Neil's", &["O", "'Neil's"]),
        ]);
    }

    #[test]
    fn gpt4o_split_digits() {
        check_gpt4o(&[
            ("1234567 89", &["123", "456", "7", " ", "89"]),
            ("x1y22z333", &["x", "1", "y", "22", "z", "333"]),
            ("3.14159", &["3", ".", "141", "59"]),
            // Non-ASCII digits are digits too.
            ("٣٤٥٦", &["٣٤٥", "٦"]),
        ]);
    }

    #[test]
    fn gpt4o_split_whitespace_and_punctuation() {
        check_gpt4o(&[
            ("a   b", &["a", "  ", " b"]),
            ("a  ", &["a", "  "]),
            ("a \n\n b", &["a", " \n\n", " b"]),
            ("a\r\n\tb", &["a", "\r\n", "\tb"]),
            ("x!!\n\ny", &["x", "!!\n\n", "y"]),
            // "/" continues a punctuation run's trailing newlines; a lone one leads a word.
            ("a/b//c", &["a", "/b", "//", "c"]),
            ("end.\n/", &["end", ".\n/"]),
            ("\t\t", &["\t\t"]),
            ("\u{3000}word", &["\u{3000}word"]),
        ]);
    }

    #[test]
    fn gpt4o_split_non_ascii() {
        check_gpt4o(&[
            // CJK letters (no case) form one word, with a leading space.
            ("你好世界 日本語", &["你好世界", " 日本語"]),
            ("emoji 🚀🚀 ok👍", &["emoji", " 🚀🚀", " ok", "👍"]),
            // llama.cpp's rewrite: non-ASCII letters count as both cases, so a word of
            // non-ASCII capitals ends after its first letter when ASCII capitals follow...
            ("ÉCOLE école", &["É", "COLE", " école"]),
            ("ΑΒΓ αβγ", &["ΑΒΓ", " αβγ"]),
            // ...and combining marks are not letters: they lead the next word.
            ("cafe\u{301}s", &["cafe", "\u{301}s"]),
            ("e\u{301}", &["e", "\u{301}"]),
            ("Straße", &["Straße"]),
        ]);
    }

    #[test]
    fn byte_table_is_a_bijection_onto_gpt2_alphabet() {
        let t = byte_to_char_table();
        assert_eq!(t[b'A' as usize], 'A');
        assert_eq!(t[b' ' as usize], 'Ġ');
        assert_eq!(t[b'\n' as usize], 'Ċ');
        assert_eq!(t[0], 'Ā');
        assert_eq!(t[0xAD], 'Ń');
        let m = char_to_byte_map();
        assert_eq!(m.len(), 256);
        assert_eq!(decode_byte_level("ĠHelloĊ", &m), b" Hello\n");
        assert_eq!(decode_byte_level("<|im_end|>", &m), b"<|im_end|>");
    }

    #[test]
    fn known_patterns_compile() {
        check_all_patterns().unwrap();
        assert!(pre_tokenizer_patterns("no-such-pre").is_none());
    }
}
