//! The request bodies of the OpenAI API this server implements, parsed strictly: every field
//! is either honoured or refused with a 400 naming it. Fields the OpenAI API defines as pure
//! metadata (`user`, `metadata`, `store`, `service_tier`) are accepted, logged and ignored;
//! any other unknown field is refused, as the OpenAI API itself does.

use crate::error::ApiError;
use kiln_runtime::chat::Message;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{Map, Value};
use std::collections::BTreeMap;

/// Fields accepted and ignored (metadata that changes nothing about the generation).
const IGNORED: &[&str] = &["user", "metadata", "store", "service_tier"];

/// Parses `body` as JSON into `T`, refusing unknown fields (other than [`IGNORED`]) by name and
/// naming the field of a type error.
pub fn parse<T: DeserializeOwned>(body: &[u8], known: &[&str]) -> Result<T, ApiError> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::invalid(format!("the request body is not valid JSON: {e}")))?;
    let Value::Object(map) = &v else {
        return Err(ApiError::invalid("the request body must be a JSON object"));
    };
    for k in map.keys() {
        if IGNORED.contains(&k.as_str()) {
            tracing::debug!(
                "ignoring request field `{}` (metadata)",
                crate::error::sanitize(k)
            );
        } else if !known.contains(&k.as_str()) {
            return Err(ApiError {
                code: Some("unknown_parameter"),
                ..ApiError::field(
                    k,
                    format!(
                        "Unrecognized request argument supplied: {}",
                        crate::error::sanitize(k)
                    ),
                )
            });
        }
    }
    let mut stripped = map.clone();
    stripped.retain(|k, _| !IGNORED.contains(&k.as_str()));
    serde_path_to_error::deserialize(Value::Object(stripped)).map_err(|e| {
        let path = e.path().to_string();
        let field = path.split(['.', '[']).next().unwrap_or("").to_string();
        ApiError::field(
            &field,
            format!(
                "invalid `{path}`: {}",
                crate::error::sanitize(&e.inner().to_string())
            ),
        )
    })
}

/// `stop`: one string or a list.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Stop {
    /// One stop text.
    One(String),
    /// Several.
    Many(Vec<String>),
}

impl Stop {
    /// The stop texts.
    pub fn texts(self) -> Vec<String> {
        match self {
            Stop::One(s) => vec![s],
            Stop::Many(v) => v,
        }
    }
}

/// `stream_options`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamOptions {
    /// Send a last chunk with the usage.
    #[serde(default)]
    pub include_usage: bool,
}

/// Kiln's `sampler` field: a built-in name or an uploaded module id, and its configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SamplerField {
    /// `greedy`, `chain`, `mirostat`, `constraint`, or the id of an uploaded module.
    pub name: String,
    /// Its configuration: a JSON value (sent as its text) or a string (sent as is).
    #[serde(default)]
    pub config: Option<Value>,
}

/// The sampling fields both endpoints share (OpenAI's and Kiln's extensions).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Sampling {
    /// 0..=2; 0 is greedy. Default 1.
    pub temperature: Option<f32>,
    /// 0..=1. Default 1 (off).
    pub top_p: Option<f32>,
    /// Kiln: top-k (0 = off, the default).
    pub top_k: Option<i32>,
    /// Kiln: min-p (0 = off, the default).
    pub min_p: Option<f32>,
    /// -2..=2.
    pub presence_penalty: Option<f32>,
    /// -2..=2.
    pub frequency_penalty: Option<f32>,
    /// llama.cpp's repetition penalty (1 = off); vLLM's name `repetition_penalty` too.
    #[serde(alias = "repetition_penalty")]
    pub repeat_penalty: Option<f32>,
    /// Kiln: tokens the penalties look back at (default 64).
    pub repeat_last_n: Option<usize>,
    /// Token id (as a string) → bias in -100..=100.
    pub logit_bias: Option<BTreeMap<String, f32>>,
    /// Seed of the sampler (choice `i` uses `seed + i`).
    pub seed: Option<i64>,
    /// Kiln: a sampler module instead of the fields above.
    pub sampler: Option<SamplerField>,
    /// Kiln: keep generating past end-of-generation tokens.
    pub ignore_eos: Option<bool>,
}

/// Names of the [`Sampling`] fields.
pub const SAMPLING_FIELDS: &[&str] = &[
    "temperature",
    "top_p",
    "top_k",
    "min_p",
    "presence_penalty",
    "frequency_penalty",
    "repeat_penalty",
    "repetition_penalty",
    "repeat_last_n",
    "logit_bias",
    "seed",
    "sampler",
    "ignore_eos",
];

/// `POST /v1/completions`.
#[derive(Debug, Clone, Deserialize)]
pub struct CompletionRequest {
    /// The model id.
    pub model: String,
    /// A string, a list of strings, a list of token ids, or a list of such lists.
    pub prompt: Value,
    /// Most tokens to generate (default 16, as OpenAI's).
    pub max_tokens: Option<u64>,
    /// Choices per prompt.
    pub n: Option<u32>,
    /// Stream with server-sent events.
    pub stream: Option<bool>,
    /// Streaming options.
    pub stream_options: Option<StreamOptions>,
    /// Stop texts.
    pub stop: Option<Stop>,
    /// Log-probabilities of the chosen and the `logprobs` most likely tokens (0..=5).
    pub logprobs: Option<u32>,
    /// Refused when true.
    pub echo: Option<bool>,
    /// Refused when set.
    pub suffix: Option<Value>,
    /// Refused unless 1 or equal to `n`.
    pub best_of: Option<u32>,
    /// Sampling.
    #[serde(flatten)]
    pub sampling: Sampling,
}

/// Fields of [`CompletionRequest`].
pub fn completion_fields() -> Vec<&'static str> {
    let mut v = vec![
        "model",
        "prompt",
        "max_tokens",
        "n",
        "stream",
        "stream_options",
        "stop",
        "logprobs",
        "echo",
        "suffix",
        "best_of",
    ];
    v.extend_from_slice(SAMPLING_FIELDS);
    v
}

/// One part of a message's content.
#[derive(Debug, Clone, Deserialize)]
pub struct ContentPart {
    /// `text` (others are refused).
    #[serde(rename = "type")]
    pub kind: String,
    /// The text of a `text` part.
    pub text: Option<String>,
}

/// A message's content: a string or a list of parts.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Content {
    /// Plain text.
    Text(String),
    /// Parts (only text parts are supported).
    Parts(Vec<ContentPart>),
}

/// A tool call in an assistant message.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
pub struct ToolCallIn {
    /// Its id.
    pub id: Option<String>,
    /// `function`.
    #[serde(rename = "type")]
    pub kind: Option<String>,
    /// The call.
    pub function: FunctionCallIn,
}

/// The function of a tool call.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
pub struct FunctionCallIn {
    /// The function's name.
    pub name: String,
    /// Its arguments as a JSON text.
    pub arguments: String,
}

/// One chat message.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChatMessage {
    /// `system`, `developer`, `user`, `assistant` or `tool`.
    pub role: String,
    /// Its content (may be null for an assistant message with tool calls).
    pub content: Option<Content>,
    /// A participant or tool name.
    pub name: Option<String>,
    /// An assistant's tool calls.
    pub tool_calls: Option<Vec<ToolCallIn>>,
    /// The call a tool message answers.
    pub tool_call_id: Option<String>,
    /// An assistant's refusal (kept as its content).
    pub refusal: Option<String>,
    /// An assistant's reasoning, as this server (and vLLM, llama.cpp) returns it; given to
    /// the template as `thinking`.
    pub reasoning_content: Option<String>,
}

/// A function a tool exposes.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
pub struct FunctionDef {
    /// Its name.
    pub name: String,
    /// What it does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Its parameters, as a JSON Schema.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parameters: Option<Value>,
    /// Strict schema adherence (arguments are always constrained when a call is forced).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strict: Option<bool>,
}

/// A tool.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
pub struct Tool {
    /// `function`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The function.
    pub function: FunctionDef,
}

/// `tool_choice`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum ToolChoice {
    /// `none`, `auto` or `required`.
    Mode(String),
    /// `{"type": "function", "function": {"name": ...}}`.
    Named {
        /// `function`.
        #[serde(rename = "type")]
        kind: String,
        /// The function to call.
        function: NamedFunction,
    },
}

/// The function of a named `tool_choice`.
#[derive(Debug, Clone, Deserialize)]
pub struct NamedFunction {
    /// Its name.
    pub name: String,
}

/// `response_format`.
#[derive(Debug, Clone, Deserialize)]
pub struct ResponseFormat {
    /// `text`, `json_object` or `json_schema`.
    #[serde(rename = "type")]
    pub kind: String,
    /// For `json_schema`.
    pub json_schema: Option<JsonSchemaFormat>,
}

/// `response_format.json_schema`.
#[derive(Debug, Clone, Deserialize)]
pub struct JsonSchemaFormat {
    /// Its name.
    pub name: Option<String>,
    /// What it is for.
    pub description: Option<String>,
    /// The schema.
    pub schema: Option<Value>,
    /// Strict adherence (always, here).
    pub strict: Option<bool>,
}

/// `POST /v1/chat/completions`.
#[derive(Debug, Clone, Deserialize)]
pub struct ChatRequest {
    /// The model id.
    pub model: String,
    /// The conversation.
    pub messages: Vec<ChatMessage>,
    /// Most tokens to generate (deprecated name).
    pub max_tokens: Option<u64>,
    /// Most tokens to generate.
    pub max_completion_tokens: Option<u64>,
    /// Choices.
    pub n: Option<u32>,
    /// Stream with server-sent events.
    pub stream: Option<bool>,
    /// Streaming options.
    pub stream_options: Option<StreamOptions>,
    /// Stop texts.
    pub stop: Option<Stop>,
    /// Report log-probabilities of the chosen tokens.
    pub logprobs: Option<bool>,
    /// And of this many most likely tokens (0..=20).
    pub top_logprobs: Option<u32>,
    /// `text`, `json_object` or `json_schema`.
    pub response_format: Option<ResponseFormat>,
    /// Tools the model may call.
    pub tools: Option<Vec<Tool>>,
    /// Whether and which tool the model must call.
    pub tool_choice: Option<ToolChoice>,
    /// Whether several calls may be made in one reply (default true).
    pub parallel_tool_calls: Option<bool>,
    /// Refused unless `["text"]`.
    pub modalities: Option<Vec<String>>,
    /// Sampling.
    #[serde(flatten)]
    pub sampling: Sampling,
}

/// Fields of [`ChatRequest`].
pub fn chat_fields() -> Vec<&'static str> {
    let mut v = vec![
        "model",
        "messages",
        "max_tokens",
        "max_completion_tokens",
        "n",
        "stream",
        "stream_options",
        "stop",
        "logprobs",
        "top_logprobs",
        "response_format",
        "tools",
        "tool_choice",
        "parallel_tool_calls",
        "modalities",
    ];
    v.extend_from_slice(SAMPLING_FIELDS);
    v
}

/// The text of a message's content.
pub fn content_text(c: Option<Content>, field: &str) -> Result<String, ApiError> {
    match c {
        None => Ok(String::new()),
        Some(Content::Text(s)) => Ok(s),
        Some(Content::Parts(parts)) => {
            let mut out = String::new();
            for p in parts {
                if p.kind != "text" {
                    return Err(ApiError::unsupported(
                        field,
                        &format!(
                            "content parts of type `{}` (only text is)",
                            crate::error::sanitize(&p.kind)
                        ),
                    ));
                }
                out.push_str(p.text.as_deref().unwrap_or(""));
            }
            Ok(out)
        }
    }
}

/// The conversation as the chat template reads it.
pub fn to_messages(msgs: Vec<ChatMessage>) -> Result<Vec<Message>, ApiError> {
    if msgs.is_empty() {
        return Err(ApiError::field("messages", "`messages` must not be empty"));
    }
    let mut out = Vec::with_capacity(msgs.len());
    for (i, m) in msgs.into_iter().enumerate() {
        let field = format!("messages[{i}]");
        let role = match m.role.as_str() {
            "system" | "developer" => "system",
            "user" => "user",
            "assistant" => "assistant",
            "tool" => "tool",
            other => {
                return Err(ApiError::field(
                    &field,
                    format!(
                        "unknown role `{}` (system, developer, user, assistant or tool)",
                        crate::error::sanitize(other)
                    ),
                ))
            }
        };
        let mut content = content_text(m.content, &format!("{field}.content"))?;
        if let (true, Some(r)) = (content.is_empty(), m.refusal) {
            content = r;
        }
        let tool_calls = match m.tool_calls {
            Some(calls) if role == "assistant" => {
                // Templates expect the arguments as an object where they parse as one.
                let v: Vec<Value> = calls
                    .into_iter()
                    .map(|c| {
                        let args = serde_json::from_str::<Value>(&c.function.arguments)
                            .unwrap_or(Value::String(c.function.arguments));
                        serde_json::json!({
                            "id": c.id,
                            "type": "function",
                            "function": {"name": c.function.name, "arguments": args},
                        })
                    })
                    .collect();
                Some(Value::Array(v))
            }
            Some(_) => {
                return Err(ApiError::field(
                    &format!("{field}.tool_calls"),
                    "only assistant messages carry tool calls",
                ))
            }
            None => None,
        };
        out.push(Message {
            role: role.to_string(),
            content,
            name: m.name,
            tool_calls,
            tool_call_id: m.tool_call_id,
            thinking: m.reasoning_content.filter(|_| role == "assistant"),
        });
    }
    Ok(out)
}

/// The prompts of a completion request: text or token ids, one or several.
pub enum Prompt {
    /// A text.
    Text(String),
    /// Token ids.
    Tokens(Vec<u32>),
}

/// Reads `prompt`: a string, a list of strings, a list of token ids, or a list of lists.
pub fn prompts(v: Value) -> Result<Vec<Prompt>, ApiError> {
    let bad = || {
        ApiError::field(
            "prompt",
            "`prompt` must be a string, a list of strings, a list of token ids or a list of lists of token ids",
        )
    };
    let ids = |a: &[Value]| -> Result<Vec<u32>, ApiError> {
        a.iter()
            .map(|x| {
                x.as_u64()
                    .and_then(|n| u32::try_from(n).ok())
                    .ok_or_else(bad)
            })
            .collect()
    };
    let out = match v {
        Value::String(s) => vec![Prompt::Text(s)],
        Value::Array(a) if a.is_empty() => return Err(bad()),
        Value::Array(a) if a.iter().all(|x| x.is_string()) => a
            .into_iter()
            .map(|x| Prompt::Text(x.as_str().unwrap_or_default().to_string()))
            .collect(),
        Value::Array(a) if a.iter().all(|x| x.is_number()) => vec![Prompt::Tokens(ids(&a)?)],
        Value::Array(a) if a.iter().all(|x| x.is_array()) => a
            .into_iter()
            .map(|x| match x {
                Value::Array(inner) => ids(&inner).map(Prompt::Tokens),
                _ => Err(bad()),
            })
            .collect::<Result<_, _>>()?,
        _ => return Err(bad()),
    };
    Ok(out)
}

/// A JSON object from an optional map (for building sampler configurations).
pub fn object(pairs: Vec<(&str, Value)>) -> Value {
    let mut m = Map::new();
    for (k, v) in pairs {
        m.insert(k.to_string(), v);
    }
    Value::Object(m)
}
