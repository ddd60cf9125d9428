//! The harmony response format (gpt-oss): splits generated text into reasoning and answer.
//!
//! After the generation prompt `<|start|>assistant`, a harmony model writes one or more
//! messages, each a header and a body:
//!
//! ```text
//! <|channel|>analysis<|message|>…reasoning…<|end|><|start|>assistant<|channel|>final<|message|>…answer…<|return|>
//! ```
//!
//! The `analysis` channel is reasoning; `final` (and `commentary` without a recipient, the
//! preambles) is the answer. A message addressed to a tool (` to=functions.x` in its header)
//! is neither: it is a call, returned whole when its message ends. `<|return|>` and `<|call|>` end generation (the engine stops on
//! them and does not emit them); `<|end|>` ends one message, after which another may start.
//!
//! [`HarmonyParser`] works on text as it streams, in pieces of any size (a token or a byte
//! at a time), and holds back only what could be the start of a marker. It never fails:
//! text before any header, or after a stray marker, is taken as answer, and a model that
//! skips the analysis channel simply produces no reasoning.

/// The markers, as the tokenizer renders them.
const CHANNEL: &str = "<|channel|>";
const MESSAGE: &str = "<|message|>";
const START: &str = "<|start|>";
const END: &str = "<|end|>";
const RETURN: &str = "<|return|>";
const CALL: &str = "<|call|>";
const CONSTRAIN: &str = "<|constrain|>";
/// Every marker the parser looks for in a body.
const BODY_MARKERS: &[&str] = &[END, RETURN, CALL, START, CHANNEL, MESSAGE, CONSTRAIN];
/// A header longer than this without `<|message|>` is taken as answer text.
const MAX_HEADER: usize = 1024;

/// Token texts whose presence in a vocab marks a harmony model.
pub const HARMONY_TOKENS: &[&str] = &[CHANNEL, MESSAGE, START, END, RETURN];

/// A message the model addressed to a recipient (a tool call).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HarmonyCall {
    /// The recipient, e.g. `functions.get_weather`.
    pub recipient: String,
    /// The message's text (the call's arguments, JSON for function tools).
    pub arguments: String,
}

/// Text newly split off by [`HarmonyParser::push`] or [`HarmonyParser::finish`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HarmonyDelta {
    /// Reasoning (the analysis channel).
    pub reasoning: String,
    /// Answer (the final channel).
    pub content: String,
    /// Calls whose message ended.
    pub calls: Vec<HarmonyCall>,
}

impl HarmonyDelta {
    /// Whether neither part has text.
    pub fn is_empty(&self) -> bool {
        self.reasoning.is_empty() && self.content.is_empty() && self.calls.is_empty()
    }
}

/// Where a message body goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Dest {
    Reasoning,
    Content,
    Call,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Reading a header (up to `<|message|>`); `buf` holds it.
    Header,
    /// Inside a message body going to `Dest`; `buf` holds a possible marker prefix.
    Body(Dest),
    /// After `<|return|>` or `<|call|>` (when the text carries them): ignore the rest.
    Done,
}

/// Splits a harmony response into reasoning and answer as it streams.
#[derive(Clone, Debug)]
pub struct HarmonyParser {
    state: State,
    buf: String,
    /// The call whose message is being read.
    call: Option<HarmonyCall>,
}

impl Default for HarmonyParser {
    fn default() -> Self {
        Self::new()
    }
}

impl HarmonyParser {
    /// A parser for text generated right after `<|start|>assistant`.
    pub fn new() -> Self {
        HarmonyParser {
            state: State::Header,
            buf: String::new(),
            call: None,
        }
    }

    /// Whether `<|return|>` or `<|call|>` was seen in the text.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Adds generated text; returns what can be released now.
    pub fn push(&mut self, text: &str) -> HarmonyDelta {
        let mut out = HarmonyDelta::default();
        if self.state == State::Done {
            return out;
        }
        self.buf.push_str(text);
        loop {
            let progressed = match self.state {
                State::Done => {
                    self.buf.clear();
                    false
                }
                State::Header => self.step_header(&mut out),
                State::Body(dest) => self.step_body(dest, &mut out),
            };
            if !progressed {
                break;
            }
        }
        out
    }

    /// Ends the stream: releases held-back text. An unfinished header is dropped unless
    /// it cannot be one.
    pub fn finish(&mut self) -> HarmonyDelta {
        let mut out = HarmonyDelta::default();
        let rest = std::mem::take(&mut self.buf);
        match self.state {
            State::Body(dest) => self.emit(dest, &rest, &mut out),
            State::Header if !looks_like_header(&rest) => out.content.push_str(&rest),
            State::Header | State::Done => {}
        }
        self.end_call(&mut out);
        self.state = State::Done;
        out
    }

    /// Sends body text where its message goes.
    fn emit(&mut self, dest: Dest, text: &str, out: &mut HarmonyDelta) {
        match dest {
            Dest::Reasoning => out.reasoning.push_str(text),
            Dest::Content => out.content.push_str(text),
            Dest::Call => {
                if let Some(c) = &mut self.call {
                    c.arguments.push_str(text);
                }
            }
        }
    }

    /// Returns the call being read, if any, its message having ended.
    fn end_call(&mut self, out: &mut HarmonyDelta) {
        if let Some(c) = self.call.take() {
            out.calls.push(c);
        }
    }

    /// One step in a header; returns whether the state changed or text was consumed.
    fn step_header(&mut self, out: &mut HarmonyDelta) -> bool {
        // A message may begin with `<|start|>` (after `<|end|>`): skip it.
        if let Some(rest) = self.buf.strip_prefix(START) {
            self.buf = rest.to_string();
            return true;
        }
        if !looks_like_header(&self.buf) {
            // Not a header: answer text (stray text, or a model writing no header). It
            // starts with no marker, so the body step makes progress.
            self.state = State::Body(Dest::Content);
            return true;
        }
        if let Some(at) = self.buf.find(MESSAGE) {
            let header = self.buf[..at].to_string();
            self.buf.replace_range(..at + MESSAGE.len(), "");
            let dest = dest_of(&header);
            if dest == Dest::Call {
                self.call = Some(HarmonyCall {
                    recipient: recipient_of(&header).to_string(),
                    arguments: String::new(),
                });
            }
            self.state = State::Body(dest);
            return true;
        }
        // Ends of turn inside a header: an empty message.
        if let Some((at, m)) = first_marker(&self.buf, &[END, RETURN, CALL]) {
            self.buf.replace_range(..at + m.len(), "");
            self.state = if m == END { State::Header } else { State::Done };
            return true;
        }
        if self.buf.len() > MAX_HEADER {
            // Too long for a header: answer text, released as it is.
            out.content.push_str(&self.buf);
            self.buf.clear();
            self.state = State::Body(Dest::Content);
            return true;
        }
        false
    }

    /// One step in a body; returns whether the state changed.
    fn step_body(&mut self, dest: Dest, out: &mut HarmonyDelta) -> bool {
        match first_marker(&self.buf, BODY_MARKERS) {
            Some((at, m)) => {
                let before = self.buf[..at].to_string();
                self.emit(dest, &before, out);
                let after = at + m.len();
                match m {
                    END => {
                        self.buf.replace_range(..after, "");
                        self.state = State::Header;
                    }
                    RETURN | CALL => {
                        self.buf.clear();
                        self.state = State::Done;
                    }
                    // A new message without `<|end|>` first.
                    START | CHANNEL => {
                        self.buf.replace_range(..at, "");
                        self.state = State::Header;
                    }
                    // Stray header markers inside a body: dropped.
                    _ => {
                        self.buf.replace_range(..after, "");
                        return true;
                    }
                }
                self.end_call(out);
                true
            }
            None => {
                // Release all but a tail that may begin a marker.
                let keep = marker_prefix_len(&self.buf);
                let cut = self.buf.len() - keep;
                let text = self.buf[..cut].to_string();
                self.emit(dest, &text, out);
                self.buf.replace_range(..cut, "");
                false
            }
        }
    }
}

/// Whether `text` may be (the beginning of) a message header: empty, or starting with
/// `<|channel|>` or a role name (`assistant`), or a prefix of either.
fn looks_like_header(text: &str) -> bool {
    const STARTS: &[&str] = &[CHANNEL, "assistant", START];
    STARTS
        .iter()
        .any(|s| text.starts_with(s) || s.starts_with(text))
}

/// Where a message with this header goes: reasoning for the analysis channel, nothing for
/// a message to a recipient (a tool call), the answer otherwise.
fn dest_of(header: &str) -> Dest {
    if header.contains(" to=") || header.starts_with("to=") {
        return Dest::Call;
    }
    let channel = header
        .split_once(CHANNEL)
        .map(|(_, c)| c)
        .unwrap_or("")
        .split(|c: char| c.is_whitespace() || c == '<')
        .next()
        .unwrap_or("");
    match channel {
        "analysis" => Dest::Reasoning,
        _ => Dest::Content,
    }
}

/// The recipient a header names (`to=NAME`, up to a space or a marker).
fn recipient_of(header: &str) -> &str {
    let Some((_, rest)) = header.split_once("to=") else {
        return "";
    };
    rest.split(|c: char| c.is_whitespace() || c == '<')
        .next()
        .unwrap_or("")
}

/// The earliest of `markers` in `text`: (byte offset, marker).
fn first_marker(text: &str, markers: &[&'static str]) -> Option<(usize, &'static str)> {
    markers
        .iter()
        .filter_map(|m| text.find(m).map(|at| (at, *m)))
        .min_by_key(|&(at, _)| at)
}

/// The length of the longest tail of `text` that is a proper prefix of a marker.
fn marker_prefix_len(text: &str) -> usize {
    // Every marker starts with '<' and has no other '<': only the last one can begin a
    // marker prefix.
    let Some(at) = text.rfind('<') else {
        return 0;
    };
    let tail = &text[at..];
    if BODY_MARKERS
        .iter()
        .any(|m| m.len() > tail.len() && m.starts_with(tail))
    {
        tail.len()
    } else {
        0
    }
}

/// Whether a vocab with these token texts uses the harmony format.
pub fn is_harmony_vocab(mut has_token: impl FnMut(&str) -> bool) -> bool {
    HARMONY_TOKENS.iter().all(|t| has_token(t))
}

#[cfg(test)]
mod tests {
    use super::*;

    const FULL: &str = "<|channel|>analysis<|message|>User says hi. Respond.<|end|>\
<|start|>assistant<|channel|>final<|message|>Hello! How can I help?";

    /// Feeds `pieces` one by one; returns everything released.
    fn run_all<'a>(pieces: impl IntoIterator<Item = &'a str>) -> HarmonyDelta {
        let mut p = HarmonyParser::new();
        let mut all = HarmonyDelta::default();
        let mut add = |d: HarmonyDelta| {
            all.reasoning.push_str(&d.reasoning);
            all.content.push_str(&d.content);
            all.calls.extend(d.calls);
        };
        for piece in pieces {
            add(p.push(piece));
        }
        add(p.finish());
        all
    }

    /// Feeds `pieces` one by one; returns (reasoning, content).
    fn run<'a>(pieces: impl IntoIterator<Item = &'a str>) -> (String, String) {
        let all = run_all(pieces);
        (all.reasoning, all.content)
    }

    fn whole(text: &str) -> (String, String) {
        run([text])
    }

    fn char_by_char(text: &str) -> (String, String) {
        let chars: Vec<String> = text.chars().map(String::from).collect();
        run(chars.iter().map(String::as_str))
    }

    /// Splits at the markers, as a tokenizer that renders each marker as one token would.
    fn by_tokens(text: &str) -> Vec<String> {
        let mut out = Vec::new();
        let mut rest = text;
        while !rest.is_empty() {
            match first_marker(rest, BODY_MARKERS) {
                Some((0, m)) => {
                    out.push(m.to_string());
                    rest = &rest[m.len()..];
                }
                Some((at, _)) => {
                    // Ordinary text in pieces of up to 3 chars.
                    let mut chunk = String::new();
                    for c in rest[..at].chars() {
                        chunk.push(c);
                        if chunk.chars().count() == 3 {
                            out.push(std::mem::take(&mut chunk));
                        }
                    }
                    if !chunk.is_empty() {
                        out.push(chunk);
                    }
                    rest = &rest[at..];
                }
                None => {
                    out.push(rest.to_string());
                    rest = "";
                }
            }
        }
        out
    }

    /// Every way of streaming `text` gives `want`.
    fn check(text: &str, want: (&str, &str)) {
        let want = (want.0.to_string(), want.1.to_string());
        assert_eq!(whole(text), want, "whole: {text:?}");
        assert_eq!(char_by_char(text), want, "char by char: {text:?}");
        let toks = by_tokens(text);
        assert_eq!(
            run(toks.iter().map(String::as_str)),
            want,
            "by tokens: {text:?}"
        );
        // Every split into two pieces.
        for (i, _) in text.char_indices() {
            assert_eq!(
                run([&text[..i], &text[i..]]),
                want,
                "split at {i}: {text:?}"
            );
        }
    }

    #[test]
    fn analysis_then_final() {
        check(FULL, ("User says hi. Respond.", "Hello! How can I help?"));
        // With <|return|> in the text (when the engine is told to keep it).
        check(
            &format!("{FULL}<|return|>ignored"),
            ("User says hi. Respond.", "Hello! How can I help?"),
        );
    }

    #[test]
    fn final_only_and_no_header() {
        check("<|channel|>final<|message|>Just this.", ("", "Just this."));
        // No header at all: the text is the answer.
        check(
            "Plain answer, no channels.",
            ("", "Plain answer, no channels."),
        );
        check("", ("", ""));
        // "<" text that is not a marker is released.
        check(
            "<|channel|>final<|message|>a < b and <|x|> <|en",
            ("", "a < b and <|x|> <|en"),
        );
    }

    #[test]
    fn unfinished_streams() {
        // Cut off in the analysis: reasoning only.
        check(
            "<|channel|>analysis<|message|>Thinking about",
            ("Thinking about", ""),
        );
        // Cut off in a header: nothing.
        check(
            "<|channel|>analysis<|message|>x<|end|><|start|>assistant<|chan",
            ("x", ""),
        );
        check("<|channel|>fin", ("", ""));
    }

    #[test]
    fn stray_and_missing_markers() {
        // No <|end|> between messages.
        check(
            "<|channel|>analysis<|message|>r1<|start|>assistant<|channel|>final<|message|>c1",
            ("r1", "c1"),
        );
        check(
            "<|channel|>analysis<|message|>r1<|channel|>final<|message|>c1",
            ("r1", "c1"),
        );
        // Text before the first header, and a stray <|message|> in a body.
        check("Hi<|channel|>final<|message|>a<|message|>b", ("", "Hiab"));
        // <|end|> then text that is not a header: answer.
        check(
            "<|channel|>analysis<|message|>r<|end|>then text",
            ("r", "then text"),
        );
        // Several analysis messages.
        check(
            "<|channel|>analysis<|message|>a<|end|><|start|>assistant<|channel|>analysis<|message|>b<|end|><|start|>assistant<|channel|>final<|message|>c<|end|>",
            ("ab", "c"),
        );
    }

    #[test]
    fn tool_calls_and_commentary() {
        // A call to a tool is neither reasoning nor answer; <|call|> ends.
        check(
            "<|channel|>analysis<|message|>Need weather.<|end|><|start|>assistant<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>{\"city\":\"Paris\"}<|call|>",
            ("Need weather.", ""),
        );
        check(
            "<|start|>assistant to=functions.f<|channel|>commentary json<|message|>{}",
            ("", ""),
        );
        // A commentary preamble (no recipient) is shown.
        check(
            "<|channel|>commentary<|message|>Let me check.<|end|>",
            ("", "Let me check."),
        );
    }

    #[test]
    fn calls_are_returned_whole() {
        let call = |r: &str, a: &str| HarmonyCall {
            recipient: r.into(),
            arguments: a.into(),
        };
        let text = "<|channel|>analysis<|message|>Need weather.<|end|><|start|>assistant<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>{\"city\":\"Paris\"}";
        let want = vec![call("functions.get_weather", "{\"city\":\"Paris\"}")];
        // The engine stops at <|call|> without emitting it: the call ends with the text.
        assert_eq!(run_all([text]).calls, want);
        let chars: Vec<String> = text.chars().map(String::from).collect();
        assert_eq!(run_all(chars.iter().map(String::as_str)).calls, want);
        assert_eq!(run_all([text, "<|call|>"]).calls, want);
        // Recipient before the channel; two calls in a row.
        let two = "<|start|>assistant to=functions.a<|channel|>commentary json<|message|>{}<|end|><|start|>assistant to=functions.b<|channel|>commentary json<|message|>[1]";
        assert_eq!(
            run_all([two]).calls,
            vec![call("functions.a", "{}"), call("functions.b", "[1]")]
        );
        // No call: none returned.
        assert!(run_all([FULL]).calls.is_empty());
    }

    #[test]
    fn long_non_header_text_is_released() {
        let text = format!("<|channel|>{}", "x".repeat(MAX_HEADER + 10));
        assert_eq!(whole(&text), (String::new(), text.clone()));
    }

    #[test]
    fn multibyte_text_survives() {
        check(
            "<|channel|>analysis<|message|>日本語 🚀<|end|><|start|>assistant<|channel|>final<|message|>é<ü",
            ("日本語 🚀", "é<ü"),
        );
    }

    #[test]
    fn detects_harmony_vocabs() {
        let harmony = [
            "<|channel|>",
            "<|message|>",
            "<|start|>",
            "<|end|>",
            "<|return|>",
        ];
        assert!(is_harmony_vocab(|t| harmony.contains(&t)));
        let chatml = ["<|im_start|>", "<|im_end|>", "<|end|>"];
        assert!(!is_harmony_vocab(|t| chatml.contains(&t)));
    }
}
