//! A chat choice's generated text split for the response: reasoning (`reasoning_content`,
//! as vLLM and llama.cpp's server name it) and harmony's calls to `functions.*` for models in
//! harmony's format (gpt-oss), then tool calls out of the answer when the request has tools.

use crate::tools::{Splitter, ToolCall};
use kiln_runtime::harmony::{HarmonyDelta, HarmonyParser};
use serde_json::{json, Value};

/// What a piece of a choice's text gave.
#[derive(Debug, Default, PartialEq)]
pub struct ChatPiece {
    /// Reasoning to release (`reasoning_content`).
    pub reasoning: String,
    /// Answer text to release (`content`).
    pub content: String,
    /// Tool calls completed by this piece.
    pub calls: Vec<ToolCall>,
}

/// Splits one choice's text as it streams.
#[derive(Debug, Default)]
pub struct ChatText {
    harmony: Option<HarmonyParser>,
    tools: Option<Splitter>,
}

impl ChatText {
    /// A splitter for a model that does (`harmony`) or does not use harmony's channels, and
    /// a request with or without tools.
    pub fn new(harmony: bool, tools: bool) -> Self {
        ChatText {
            harmony: harmony.then(HarmonyParser::new),
            tools: tools.then(Splitter::default),
        }
    }

    /// Adds generated text.
    pub fn push(&mut self, text: &str) -> ChatPiece {
        match &mut self.harmony {
            Some(h) => {
                let d = h.push(text);
                self.answer(d, false)
            }
            None => self.answer(
                HarmonyDelta {
                    content: text.to_string(),
                    ..Default::default()
                },
                false,
            ),
        }
    }

    /// Ends the text: releases what was held back.
    pub fn finish(&mut self) -> ChatPiece {
        let d = match &mut self.harmony {
            Some(h) => h.finish(),
            None => HarmonyDelta::default(),
        };
        self.answer(d, true)
    }

    fn answer(&mut self, d: HarmonyDelta, last: bool) -> ChatPiece {
        let HarmonyDelta {
            reasoning,
            content,
            calls,
        } = d;
        let content = content.as_str();
        let mut piece = self.tool_calls(reasoning, content, last);
        // Harmony's calls to function tools, when the request has tools.
        if self.tools.is_some() {
            let harmony = calls.into_iter().filter_map(|c| {
                let name = c.recipient.strip_prefix("functions.")?;
                Some(ToolCall {
                    name: name.to_string(),
                    arguments: c.arguments.trim().to_string(),
                })
            });
            piece.calls.extend(harmony);
        }
        piece
    }

    fn tool_calls(&mut self, reasoning: String, content: &str, last: bool) -> ChatPiece {
        match &mut self.tools {
            Some(sp) => {
                let mut s = sp.push(content);
                if last {
                    let f = sp.finish();
                    s.content.push_str(&f.content);
                    s.calls.extend(f.calls);
                }
                ChatPiece {
                    reasoning,
                    content: s.content,
                    calls: s.calls,
                }
            }
            None => ChatPiece {
                reasoning,
                content: content.to_string(),
                calls: Vec::new(),
            },
        }
    }
}

/// The `message` of a whole chat response: `content` (a string, or null beside tool
/// calls), `reasoning_content` when the model reasoned (as llama.cpp's server, only when
/// there is some), `tool_calls` when it called any.
pub fn assistant_message(content: Value, reasoning: &str, tool_calls: Vec<Value>) -> Value {
    let mut message = json!({"role": "assistant", "content": content, "refusal": null});
    if !reasoning.is_empty() {
        message["reasoning_content"] = Value::String(reasoning.to_string());
    }
    if !tool_calls.is_empty() {
        message["tool_calls"] = Value::Array(tool_calls);
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_message_carries_reasoning_apart() {
        let mut ct = ChatText::new(true, false);
        let got = all(
            &mut ct,
            &["<|channel|>analysis<|message|>Why.<|end|><|start|>assistant<|channel|>final<|message|>Because."],
        );
        let m = assistant_message(Value::String(got.content), &got.reasoning, Vec::new());
        assert_eq!(
            m,
            json!({"role": "assistant", "content": "Because.", "reasoning_content": "Why.",
                   "refusal": null})
        );
        // No reasoning: no field, as for models without channels.
        let m = assistant_message(Value::String("x".into()), "", Vec::new());
        assert!(m.get("reasoning_content").is_none());
    }

    fn all(ct: &mut ChatText, pieces: &[&str]) -> ChatPiece {
        let mut out = ChatPiece::default();
        let mut got: Vec<ChatPiece> = pieces.iter().map(|p| ct.push(p)).collect();
        got.push(ct.finish());
        for p in got {
            out.reasoning.push_str(&p.reasoning);
            out.content.push_str(&p.content);
            out.calls.extend(p.calls);
        }
        out
    }

    #[test]
    fn plain_models_pass_text_through() {
        let mut ct = ChatText::new(false, false);
        let got = all(&mut ct, &["<|channel|>analysis", "<|message|>x"]);
        assert_eq!(got.content, "<|channel|>analysis<|message|>x");
        assert!(got.reasoning.is_empty());
    }

    #[test]
    fn harmony_reasoning_is_kept_apart() {
        let mut ct = ChatText::new(true, false);
        let got = all(
            &mut ct,
            &[
                "<|channel|>",
                "analysis",
                "<|message|>",
                "Think",
                "ing.",
                "<|end|>",
                "<|start|>",
                "assistant",
                "<|channel|>",
                "final",
                "<|message|>",
                "Answer",
            ],
        );
        assert_eq!(got.reasoning, "Thinking.");
        assert_eq!(got.content, "Answer");
    }

    #[test]
    fn harmony_calls_become_tool_calls() {
        let text = [
            "<|channel|>analysis<|message|>Need weather.<|end|>",
            "<|start|>assistant<|channel|>commentary to=functions.get_weather <|constrain|>json",
            "<|message|>{\"city\": ",
            "\"Paris\"}",
        ];
        let got = all(&mut ChatText::new(true, true), &text);
        assert_eq!(got.reasoning, "Need weather.");
        assert_eq!(got.content, "");
        assert_eq!(
            got.calls,
            [ToolCall {
                name: "get_weather".into(),
                arguments: "{\"city\": \"Paris\"}".into()
            }]
        );
        // Without tools in the request, no calls are reported.
        assert!(all(&mut ChatText::new(true, false), &text).calls.is_empty());
    }

    #[test]
    fn tool_calls_are_read_from_the_answer_only() {
        let mut ct = ChatText::new(true, true);
        let got = all(
            &mut ct,
            &[
                "<|channel|>analysis<|message|><tool_call>not a call</tool_call><|end|>",
                "<|start|>assistant<|channel|>final<|message|>",
                "<tool_call>{\"name\": \"f\", \"arguments\": {}}</tool_call>",
            ],
        );
        assert_eq!(got.reasoning, "<tool_call>not a call</tool_call>");
        assert_eq!(got.calls.len(), 1);
        assert_eq!(got.calls[0].name, "f");
    }
}
