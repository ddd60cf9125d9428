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
    let patterns: Vec<&str> = match pre {
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
pixtral, smollm, starcoder, refact, command-r, codeshell, exaone, gpt-2, phi-2, roberta-bpe";

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
    for pre in ["qwen2", "llama3", "smollm", "gpt2"] {
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

#[cfg(test)]
mod tests {
    use super::*;

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
