//! SentencePiece-style vocabularies (`tokenizer.ggml.model = "llama"`, e.g. Gemma 3).
//!
//! llama.cpp tokenizes these with a score-driven BPE: adjacent symbols merge when their
//! concatenation is a vocab piece, highest piece score first. The same result comes from a
//! `tokenizers` BPE whose merges are every split of a vocab piece into two vocab pieces,
//! ranked by the merged piece's score, with byte fallback (`<0xNN>` pieces) for characters
//! the vocab lacks. Spaces become "▁" before the model runs; there is no pre-tokenizer.

use std::collections::HashMap;

use anyhow::{anyhow, Result};
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::normalizers::Replace;

/// The SentencePiece word-boundary marker that stands for a space.
pub const SPACE_MARK: &str = "\u{2581}";

/// Derives BPE merges from a vocab with scores: each split of a piece into two pieces,
/// best merged-piece score first (ties: lower piece id, then shorter left part).
pub fn derive_merges(tokens: &[String], scores: &[f32]) -> Vec<(String, String)> {
    let mut index: HashMap<&str, u32> = HashMap::with_capacity(tokens.len());
    for (id, t) in tokens.iter().enumerate() {
        index.entry(t.as_str()).or_insert(id as u32);
    }
    // (score, piece id, split byte offset)
    let mut found: Vec<(f32, u32, u32)> = Vec::new();
    for (id, piece) in tokens.iter().enumerate() {
        // Only the canonical id of a duplicated text can be a merge result.
        if index.get(piece.as_str()) != Some(&(id as u32)) {
            continue;
        }
        for (k, _) in piece.char_indices().skip(1) {
            let (left, right) = piece.split_at(k);
            if index.contains_key(left) && index.contains_key(right) {
                let score = scores.get(id).copied().unwrap_or(0.0);
                found.push((score, id as u32, k as u32));
            }
        }
    }
    found.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
    found
        .into_iter()
        .map(|(_, id, k)| {
            let (l, r) = tokens[id as usize].split_at(k as usize);
            (l.to_string(), r.to_string())
        })
        .collect()
}

/// Builds the `tokenizers` pipeline for an SPM-style vocab. `unk` is the unknown token's
/// text, used when a character has no piece and no byte pieces either.
pub fn build(
    tokens: &[String],
    scores: &[f32],
    unk: Option<&str>,
) -> Result<tokenizers::Tokenizer> {
    let mut vocab = Vocab::with_capacity(tokens.len());
    for (id, text) in tokens.iter().enumerate() {
        vocab.entry(text.clone()).or_insert(id as u32);
    }
    let merges = derive_merges(tokens, scores);
    let mut builder = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .byte_fallback(true);
    if let Some(u) = unk {
        builder = builder.unk_token(u.to_string());
    }
    let bpe = builder
        .build()
        .map_err(|e| anyhow!("building the BPE model: {e}"))?;
    let mut tok = tokenizers::Tokenizer::new(bpe);
    let space = Replace::new(" ", SPACE_MARK).map_err(|e| anyhow!("space normalizer: {e}"))?;
    tok.with_normalizer(Some(space))
        .map_err(|e| anyhow!("setting the normalizer: {e}"))?;
    Ok(tok)
}

/// The byte a `<0xNN>` piece stands for.
pub fn parse_byte_piece(text: &str) -> Option<u8> {
    let hex = text.strip_prefix("<0x")?.strip_suffix('>')?;
    if hex.len() != 2 {
        return None;
    }
    u8::from_str_radix(hex, 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn merges_follow_scores() {
        let toks = s(&["a", "b", "c", "ab", "bc", "abc"]);
        let scores = [0.0, 0.0, 0.0, -3.0, -1.0, -2.0];
        let m = derive_merges(&toks, &scores);
        let m: Vec<(&str, &str)> = m.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
        assert_eq!(m, [("b", "c"), ("a", "bc"), ("ab", "c"), ("a", "b")]);
    }

    #[test]
    fn score_driven_encoding_and_byte_fallback() {
        let toks = s(&[
            "<unk>",
            "<0x21>",
            "a",
            "b",
            "c",
            "ab",
            "bc",
            "\u{2581}",
            "\u{2581}a",
        ]);
        let scores = [0.0, 0.0, 0.0, 0.0, 0.0, -3.0, -1.0, 0.0, -0.5];
        let tok = build(&toks, &scores, Some("<unk>")).unwrap();
        // "bc" outranks "ab": a|bc, not ab|c.
        let ids = tok.encode_fast("abc", false).unwrap().get_ids().to_vec();
        assert_eq!(ids, [2, 6]);
        // A space becomes "▁" and merges with the following "a"; "!" falls back to bytes.
        let ids = tok.encode_fast(" a!", false).unwrap().get_ids().to_vec();
        assert_eq!(ids, [8, 1]);
        // No piece and no byte piece: the unknown token.
        let ids = tok.encode_fast("z", false).unwrap().get_ids().to_vec();
        assert_eq!(ids, [0]);
    }

    #[test]
    fn byte_pieces() {
        assert_eq!(parse_byte_piece("<0x0A>"), Some(10));
        assert_eq!(parse_byte_piece("<0xFF>"), Some(255));
        assert_eq!(parse_byte_piece("<0xF>"), None);
        assert_eq!(parse_byte_piece("<0x0A"), None);
    }
}
