//! Letter and digit classes matching llama.cpp's (pre-Unicode-16) character tables.
//!
//! The regex engine classes 4,382 code points that Unicode 16 added as letters or digits;
//! llama.cpp does not, so a pre-tokenizer regex using plain `\p{L}` / `\p{N}` splits text
//! containing them differently. The classes built here subtract those ranges.

/// Unicode 16 letters/digits that llama.cpp (commit 0c1e570) does not class as such
/// (inclusive ranges), found by sweeping every code point.
pub const UNICODE16_EXCLUDED: &[(u32, u32)] = &[
    (0x1C89, 0x1C8A),
    (0xA7CB, 0xA7CD),
    (0xA7DA, 0xA7DC),
    (0x105C0, 0x105F3),
    (0x10D40, 0x10D65),
    (0x10D6F, 0x10D85),
    (0x10EC2, 0x10EC4),
    (0x11380, 0x11389),
    (0x1138B, 0x1138B),
    (0x1138E, 0x1138E),
    (0x11390, 0x113B5),
    (0x113B7, 0x113B7),
    (0x113D1, 0x113D1),
    (0x113D3, 0x113D3),
    (0x116D0, 0x116E3),
    (0x11BC0, 0x11BE0),
    (0x11BF0, 0x11BF9),
    (0x13460, 0x143FA),
    (0x16100, 0x1611D),
    (0x16130, 0x16139),
    (0x16D40, 0x16D6C),
    (0x16D70, 0x16D79),
    (0x18CFF, 0x18CFF),
    (0x1CCF0, 0x1CCF9),
    (0x1E5D0, 0x1E5ED),
    (0x1E5F0, 0x1E5FA),
];

/// The excluded ranges as the body of a regex character class, e.g. `\x{1C89}-\x{1C8A}...`.
fn excluded_class_body() -> String {
    let mut s = String::new();
    for &(lo, hi) in UNICODE16_EXCLUDED {
        if lo == hi {
            s.push_str(&format!("\\x{{{lo:X}}}"));
        } else {
            s.push_str(&format!("\\x{{{lo:X}}}-\\x{{{hi:X}}}"));
        }
    }
    s
}

/// A bracketed class equal to `\p{<cat>}` minus the excluded ranges; it can stand alone or
/// be nested inside another class (`[^\s<class>]`).
fn class_minus_excluded(cat: &str) -> String {
    format!("[\\p{{{cat}}}--[{}]]", excluded_class_body())
}

/// Expands the placeholders `{L}` (letters) and `{N}` (numbers) in a pre-tokenizer pattern
/// into classes that agree with llama.cpp. Write `{L}` wherever `\p{L}` would go, inside a
/// class or outside one.
pub fn expand_classes(pattern: &str) -> String {
    let letters = class_minus_excluded("L");
    let numbers = class_minus_excluded("N");
    pattern.replace("{L}", &letters).replace("{N}", &numbers)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_are_sorted_and_disjoint() {
        for w in UNICODE16_EXCLUDED.windows(2) {
            assert!(w[0].0 <= w[0].1 && w[0].1 < w[1].0, "{w:x?}");
        }
        let total: u32 = UNICODE16_EXCLUDED.iter().map(|(a, b)| b - a + 1).sum();
        assert_eq!(total, 4382);
    }

    #[test]
    fn expanded_classes_exclude_new_code_points() {
        let letters = expand_classes("{L}+");
        assert_eq!(leftovers(&letters, "abcé"), Vec::<String>::new());
        assert_eq!(leftovers(&letters, "a\u{1C89}b"), ["\u{1C89}"]);
        assert_eq!(leftovers(&letters, "x\u{13460}"), ["\u{13460}"]);
        let digits = expand_classes("{N}+");
        assert_eq!(leftovers(&digits, "0123٣"), Vec::<String>::new());
        assert_eq!(leftovers(&digits, "1\u{11BF0}2"), ["\u{11BF0}"]);
        let other = expand_classes("[^\\s{L}{N}]+");
        assert_eq!(
            leftovers(&other, "\u{1C89}\u{11BF0}!"),
            Vec::<String>::new()
        );
        assert_eq!(leftovers(&other, "a7"), ["a7"]);
        // Plain \p{L} (what the regex engine says) does class U+1C89 as a letter: the
        // exclusion above is doing real work.
        assert_eq!(leftovers("\\p{L}+", "a\u{1C89}b"), Vec::<String>::new());
    }

    /// The parts of `text` that `pattern` does not match, via the tokenizer's own regex
    /// engine (a Split pre-tokenizer that removes the matches).
    fn leftovers(pattern: &str, text: &str) -> Vec<String> {
        use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
        use tokenizers::{OffsetReferential, OffsetType, PreTokenizedString, PreTokenizer};
        let split = Split::new(
            SplitPattern::Regex(pattern.to_string()),
            tokenizers::SplitDelimiterBehavior::Removed,
            false,
        )
        .expect("pattern compiles");
        let mut pts = PreTokenizedString::from(text);
        split.pre_tokenize(&mut pts).expect("pre-tokenize");
        pts.get_splits(OffsetReferential::Original, OffsetType::Byte)
            .into_iter()
            .map(|(s, _, _)| s.to_string())
            .collect()
    }
}
