//! The text side of a sequence: UTF-8-safe detokenization and stop texts. Text that could be
//! the beginning of a stop text is held back until it is known not to be; a stop text ends
//! the generation and is never emitted.

use crate::tokenizer::StreamDecoder;

/// The output text of one sequence.
#[derive(Debug, Default)]
pub struct TextOut {
    dec: StreamDecoder,
    stops: Vec<String>,
    /// Decoded text not yet released (it may begin a stop text).
    held: String,
}

/// What one token's text gave.
#[derive(Debug, PartialEq, Eq)]
pub enum Piece {
    /// Text to release now (possibly empty).
    Text(String),
    /// A stop text was completed: release the text before it, then end.
    Stop {
        /// Text before the stop text.
        before: String,
        /// The stop text found.
        stop: String,
    },
}

impl TextOut {
    /// Output text that ends at any of `stops` (empty ones are ignored).
    pub fn new(stops: &[String]) -> TextOut {
        TextOut {
            dec: StreamDecoder::new(),
            stops: stops.iter().filter(|s| !s.is_empty()).cloned().collect(),
            held: String::new(),
        }
    }

    /// Adds a token's bytes.
    pub fn push(&mut self, bytes: &[u8]) -> Piece {
        let text = self.dec.push(bytes);
        if self.stops.is_empty() {
            return Piece::Text(text);
        }
        self.held.push_str(&text);
        // The earliest complete stop text wins.
        let found = self
            .stops
            .iter()
            .filter_map(|s| self.held.find(s.as_str()).map(|at| (at, s)))
            .min_by_key(|&(at, s)| (at, std::cmp::Reverse(s.len())));
        if let Some((at, s)) = found {
            let stop = s.clone();
            let before = self.held[..at].to_string();
            self.held.clear();
            return Piece::Stop { before, stop };
        }
        // Keep the longest tail that is a prefix of some stop text.
        let keep = self
            .stops
            .iter()
            .map(|s| longest_suffix_prefix(&self.held, s))
            .max()
            .unwrap_or(0);
        let cut = self.held.len() - keep;
        let out = self.held[..cut].to_string();
        self.held.drain(..cut);
        Piece::Text(out)
    }

    /// Everything still held back (at the end of a generation that did not stop on a text).
    pub fn finish(&mut self) -> String {
        let mut out = std::mem::take(&mut self.held);
        out.push_str(&self.dec.finish());
        out
    }
}

/// The length of the longest suffix of `text` that is a proper prefix of `stop`, on char
/// boundaries.
fn longest_suffix_prefix(text: &str, stop: &str) -> usize {
    let max = text.len().min(stop.len().saturating_sub(1));
    (1..=max)
        .rev()
        .find(|&n| {
            let start = text.len() - n;
            text.is_char_boundary(start) && stop.as_bytes().starts_with(&text.as_bytes()[start..])
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(stops: &[&str], pieces: &[&str]) -> (String, Option<String>) {
        let stops: Vec<String> = stops.iter().map(|s| s.to_string()).collect();
        let mut t = TextOut::new(&stops);
        let mut out = String::new();
        for p in pieces {
            match t.push(p.as_bytes()) {
                Piece::Text(s) => out.push_str(&s),
                Piece::Stop { before, stop } => {
                    out.push_str(&before);
                    return (out, Some(stop));
                }
            }
        }
        out.push_str(&t.finish());
        (out, None)
    }

    #[test]
    fn stop_texts_end_and_are_not_emitted() {
        assert_eq!(
            run(&["\n\n"], &["Hello", "\n", "\n", "more"]),
            ("Hello".into(), Some("\n\n".into()))
        );
        assert_eq!(
            run(&["END"], &["a E", "N", "D b"]),
            ("a ".into(), Some("END".into()))
        );
        // A partial match that fails is released.
        assert_eq!(run(&["END"], &["a E", "N", "x"]), ("a ENx".into(), None));
        // Held text is released at the end.
        assert_eq!(run(&["END"], &["a E"]), ("a E".into(), None));
        // The earliest stop wins; multi-byte text is never split.
        assert_eq!(
            run(&["é!", "!"], &["caf", "é", "!"]),
            ("caf".into(), Some("é!".into()))
        );
        assert_eq!(run(&[], &["x", "y"]), ("xy".into(), None));
    }
}
