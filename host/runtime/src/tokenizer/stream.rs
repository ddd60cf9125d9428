//! UTF-8-safe streaming of token bytes.
//!
//! A token can end in the middle of a multi-byte character (byte-level BPE, `<0xNN>` byte
//! pieces), so generated text is buffered until each character is complete.

/// Turns a stream of byte chunks into text, holding back an incomplete trailing character.
#[derive(Debug, Default, Clone)]
pub struct StreamDecoder {
    pending: Vec<u8>,
}

impl StreamDecoder {
    /// A decoder with nothing buffered.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `bytes` and returns the text of every character now complete. Invalid
    /// sequences become U+FFFD; an incomplete sequence at the end is kept for later.
    pub fn push(&mut self, bytes: &[u8]) -> String {
        self.pending.extend_from_slice(bytes);
        let mut out = String::new();
        let mut start = 0;
        loop {
            match std::str::from_utf8(&self.pending[start..]) {
                Ok(s) => {
                    out.push_str(s);
                    start = self.pending.len();
                    break;
                }
                Err(e) => {
                    let valid = e.valid_up_to();
                    // The prefix up to `valid` is valid UTF-8 by definition.
                    out.push_str(&String::from_utf8_lossy(
                        &self.pending[start..start + valid],
                    ));
                    match e.error_len() {
                        Some(n) => {
                            out.push('\u{FFFD}');
                            start += valid + n;
                        }
                        None => {
                            // Incomplete character at the end: keep it.
                            start += valid;
                            break;
                        }
                    }
                }
            }
        }
        self.pending.drain(..start);
        out
    }

    /// Whether bytes are held back waiting for the rest of a character.
    #[allow(dead_code)] // part of the API; not every build of the binary calls it
    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Flushes whatever is left (an incomplete character becomes U+FFFD) and resets.
    pub fn finish(&mut self) -> String {
        let out = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_multibyte_characters_across_pushes() {
        let text = "aé東🚀z";
        let bytes = text.as_bytes();
        for chunk in 1..=4 {
            let mut d = StreamDecoder::new();
            let mut out = String::new();
            for c in bytes.chunks(chunk) {
                let piece = d.push(c);
                assert!(!piece.contains('\u{FFFD}'), "chunk {chunk}: {piece:?}");
                out.push_str(&piece);
            }
            out.push_str(&d.finish());
            assert_eq!(out, text, "chunk size {chunk}");
        }
    }

    #[test]
    fn holds_back_then_releases() {
        let mut d = StreamDecoder::new();
        assert_eq!(d.push(b"x\xF0\x9F"), "x");
        assert!(d.has_pending());
        assert_eq!(d.push(b"\x9A\x80!"), "\u{1F680}!");
        assert!(!d.has_pending());
    }

    #[test]
    fn invalid_bytes_become_replacement_and_finish_flushes() {
        let mut d = StreamDecoder::new();
        assert_eq!(d.push(b"a\xFFb"), "a\u{FFFD}b");
        assert_eq!(d.push(b"\xE6\x9D"), "");
        assert_eq!(d.finish(), "\u{FFFD}");
        assert_eq!(d.finish(), "");
        // A broken sequence followed by a new character.
        assert_eq!(d.push(b"\xE6a"), "\u{FFFD}a");
    }
}
