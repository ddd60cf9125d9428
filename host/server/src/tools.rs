//! Tool calls: how the model writes them (`<tool_call>{"name": ..., "arguments": {...}}</tool_call>`,
//! the format of Hermes-style templates such as Qwen2.5's), how they are read back out of the
//! generated text — also while it streams — and the pattern that forces one when the request
//! requires it.

use serde_json::Value;

/// Opens a call in the generated text.
pub const OPEN: &str = "<tool_call>";
/// Closes it.
pub const CLOSE: &str = "</tool_call>";

/// A call read out of the text.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolCall {
    /// The function's name.
    pub name: String,
    /// Its arguments, as JSON text.
    pub arguments: String,
}

/// What a piece of streamed text gave.
#[derive(Debug, Default, PartialEq)]
pub struct Split {
    /// Plain content to release.
    pub content: String,
    /// Calls completed by this piece.
    pub calls: Vec<ToolCall>,
}

/// Splits generated text into content and tool calls as it streams: text that might begin
/// `<tool_call>` is held back, a call's text is buffered until `</tool_call>`.
#[derive(Debug, Default)]
pub struct Splitter {
    held: String,
    in_call: bool,
}

/// The length of the longest suffix of `text` that is a proper prefix of `tag`.
fn partial_tag(text: &str, tag: &str) -> usize {
    (1..tag.len().min(text.len() + 1))
        .rev()
        .find(|&n| text.is_char_boundary(text.len() - n) && text.ends_with(&tag[..n]))
        .unwrap_or(0)
}

/// Reads one call's JSON (`{"name": ..., "arguments": {...}}`, arguments possibly a string).
pub fn parse_call(body: &str) -> Option<ToolCall> {
    let v: Value = serde_json::from_str(body.trim()).ok()?;
    let name = v.get("name")?.as_str()?.to_string();
    let arguments = match v.get("arguments").or_else(|| v.get("parameters")) {
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
        None => "{}".to_string(),
    };
    Some(ToolCall { name, arguments })
}

impl Splitter {
    /// Adds streamed text.
    pub fn push(&mut self, text: &str) -> Split {
        self.held.push_str(text);
        let mut out = Split::default();
        loop {
            if self.in_call {
                let Some(end) = self.held.find(CLOSE) else {
                    return out;
                };
                let body = self.held[..end].to_string();
                self.held.drain(..end + CLOSE.len());
                self.in_call = false;
                match parse_call(&body) {
                    Some(c) => out.calls.push(c),
                    // Not a call after all: keep it as text.
                    None => out.content.push_str(&format!("{OPEN}{body}{CLOSE}")),
                }
            } else if let Some(start) = self.held.find(OPEN) {
                out.content.push_str(&self.held[..start]);
                self.held.drain(..start + OPEN.len());
                self.in_call = true;
            } else {
                let keep = partial_tag(&self.held, OPEN);
                let cut = self.held.len() - keep;
                out.content.push_str(&self.held[..cut]);
                self.held.drain(..cut);
                return out;
            }
        }
    }

    /// The rest at the end of the generation (an unclosed call is tried as a call, then kept
    /// as text).
    pub fn finish(&mut self) -> Split {
        let mut out = Split::default();
        let rest = std::mem::take(&mut self.held);
        if self.in_call {
            self.in_call = false;
            match parse_call(&rest) {
                Some(c) => out.calls.push(c),
                None => out.content = format!("{OPEN}{rest}"),
            }
        } else {
            out.content = rest;
        }
        out
    }
}

/// Escapes `s` for the constraint sampler's regex syntax.
pub fn regex_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 2);
    for c in s.chars() {
        if c.is_ascii_punctuation() {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// The pattern of one forced call of `name` whose arguments match `args` (a regex).
pub fn call_pattern(name: &str, args: &str) -> String {
    let name_json = serde_json::to_string(name).unwrap_or_default();
    format!(
        "{}\\n\\{{\"name\": {}, \"arguments\": {}\\}}\\n{}",
        regex_escape(OPEN),
        regex_escape(&name_json),
        args,
        regex_escape(CLOSE)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls_are_split_out_while_streaming() {
        let mut s = Splitter::default();
        let mut content = String::new();
        let mut calls = Vec::new();
        for piece in [
            "Let me check. <tool",
            "_call>\n{\"name\": \"get_weather\", ",
            "\"arguments\": {\"city\": \"Paris\"}}\n</tool_",
            "call> done <",
            "b>",
        ] {
            let out = s.push(piece);
            content.push_str(&out.content);
            calls.extend(out.calls);
        }
        let out = s.finish();
        content.push_str(&out.content);
        assert_eq!(content, "Let me check.  done <b>");
        assert_eq!(
            calls,
            vec![ToolCall {
                name: "get_weather".into(),
                arguments: r#"{"city":"Paris"}"#.into()
            }]
        );
        // Something that is not a call stays text.
        let mut s = Splitter::default();
        let a = s.push("<tool_call>not json</tool_call>x");
        assert_eq!(a.content, "<tool_call>not json</tool_call>x");
        assert!(a.calls.is_empty());
    }

    #[test]
    fn call_pattern_matches_exactly_the_forced_call() {
        let p = call_pattern("f.x", "\\{\"a\": [0-9]+\\}");
        let mut re = kiln_sampler::regex::Regex::new(&p).expect("the pattern compiles");
        let call = "<tool_call>\n{\"name\": \"f.x\", \"arguments\": {\"a\": 42}}\n</tool_call>";
        assert!(re.is_match(call.as_bytes()).unwrap(), "{p}");
        // The name's `.` is literal, and nothing else passes.
        for other in [
            call.replace("f.x", "fax"),
            call.replace("42", "x"),
            call.replace("</tool_call>", ""),
        ] {
            assert!(!re.is_match(other.as_bytes()).unwrap(), "{other}");
        }
    }
}
