//! Chat templates: renders a conversation into a prompt with the model's Jinja template.
//!
//! Templates come from model files, so they are untrusted: rendering runs with a work
//! budget (minijinja fuel, which also bounds the memory a template can build), a recursion
//! limit and no template loader (no `include`/`import` of files). Whitespace handling and
//! the helpers follow what Hugging Face templates expect: `trim_blocks`, `lstrip_blocks`,
//! `raise_exception`, `strftime_now`, a Python-style `tojson`, and Python string/dict
//! methods (`.strip()`, `.startswith()`, `.split()`, `.items()`...).

use anyhow::{anyhow, bail, Result};
use minijinja::syntax::SyntaxConfig;
use minijinja::value::{Kwargs, ValueKind};
use minijinja::{context, Environment, Error, ErrorKind, State, Value};
use serde::{Deserialize, Serialize};

/// One chat message, with the fields templates read for tool use (as Hugging Face templates
/// name them).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Message {
    /// "system", "user", "assistant", "tool", ...
    pub role: String,
    /// The message text.
    pub content: String,
    /// The name of the tool whose result this is, or of the participant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The tool calls an assistant message made: `[{"id", "type": "function", "function":
    /// {"name", "arguments": {...}}}]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<serde_json::Value>,
    /// The call a tool message answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
    /// An assistant's reasoning (`thinking`, as gpt-oss's template names it; clients send it
    /// back as `reasoning_content`). Templates decide whether to render it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thinking: Option<String>,
}

impl Message {
    /// A message with `role` and `content`.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Message {
            role: role.into(),
            content: content.into(),
            name: None,
            tool_calls: None,
            tool_call_id: None,
            thinking: None,
        }
    }
}

/// Name the template is stored under in its environment.
const TEMPLATE_NAME: &str = "chat_template";
/// Work budget of one render, before the allowance for the input's size.
const BASE_FUEL: u64 = 1_000_000;
/// Runtime recursion limit (macro calls, nested blocks).
const RECURSION_LIMIT: usize = 100;
/// Largest template source accepted.
const MAX_SOURCE_BYTES: usize = 1 << 20;
/// Largest `tojson` output.
const MAX_JSON_BYTES: usize = 16 << 20;
/// Deepest value `tojson` serializes.
const MAX_JSON_DEPTH: usize = 128;

/// ChatML, used when a model file has no template.
const CHATML: &str = "{%- for message in messages %}\
{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}\
{%- endfor %}\
{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}";

/// Gemma's turn format, used for Gemma models without a template: the system message is
/// folded into the first user turn and the assistant is called "model".
const GEMMA_TURNS: &str = "{{- bos_token }}\
{%- if messages and messages[0]['role'] == 'system' %}\
{%- set system = messages[0]['content'] | trim ~ '\n\n' %}{%- set turns = messages[1:] %}\
{%- else %}{%- set system = '' %}{%- set turns = messages %}{%- endif %}\
{%- for message in turns %}\
{%- set role = 'model' if message['role'] == 'assistant' else message['role'] %}\
{{- '<start_of_turn>' ~ role ~ '\n' ~ (system if loop.first else '') ~ message['content'] | trim ~ '<end_of_turn>\n' }}\
{%- endfor %}\
{%- if add_generation_prompt %}{{- '<start_of_turn>model\n' }}{%- endif %}";

/// A compiled chat template.
#[derive(Clone)]
pub struct ChatTemplate {
    env: Environment<'static>,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate").finish_non_exhaustive()
    }
}

impl ChatTemplate {
    /// Compiles `source` (Jinja, as in Hugging Face `chat_template`s).
    pub fn new(source: &str) -> Result<Self> {
        if source.len() > MAX_SOURCE_BYTES {
            bail!(
                "chat template is too large ({} bytes, limit {MAX_SOURCE_BYTES})",
                source.len()
            );
        }
        let mut env = Environment::new();
        let syntax = SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .build()
            .map_err(|e| anyhow!("chat template syntax config: {e}"))?;
        env.set_syntax(syntax);
        env.set_recursion_limit(RECURSION_LIMIT);
        env.set_fuel(Some(BASE_FUEL));
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", strftime_now);
        env.add_filter("tojson", tojson);
        env.add_template_owned(TEMPLATE_NAME, source.to_string())
            .map_err(|e| anyhow!("chat template does not compile: {}", describe(&e)))?;
        Ok(ChatTemplate { env })
    }

    /// The ChatML template (`<|im_start|>role\n...<|im_end|>`), for models without one.
    pub fn chatml() -> Self {
        // The built-in source is known to compile; fall back to an empty template only
        // if the engine ever rejects it, which the tests rule out.
        Self::new(CHATML).unwrap_or_else(|_| ChatTemplate {
            env: Environment::new(),
        })
    }

    /// The template to use for a model of architecture `arch` (`general.architecture`)
    /// whose file has none: Gemma's turn format for Gemma models, ChatML otherwise.
    pub fn fallback(arch: &str) -> Self {
        if arch.starts_with("gemma") {
            if let Ok(t) = Self::new(GEMMA_TURNS) {
                return t;
            }
        }
        Self::chatml()
    }

    /// Renders `messages` into a prompt. `add_generation_prompt` appends the header that
    /// starts the assistant's turn; `bos_token`/`eos_token` are the texts templates may
    /// insert. Fails with a clear error on template errors, `raise_exception`, or when the
    /// template exceeds its work budget or recursion limit.
    pub fn render(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
        bos_token: &str,
        eos_token: &str,
    ) -> Result<String> {
        self.render_with_tools(messages, None, add_generation_prompt, bos_token, eos_token)
    }

    /// [`ChatTemplate::render`] with the tools the model may call (the `tools` variable of
    /// Hugging Face templates: `[{"type": "function", "function": {...}}]`).
    pub fn render_with_tools(
        &self,
        messages: &[Message],
        tools: Option<&serde_json::Value>,
        add_generation_prompt: bool,
        bos_token: &str,
        eos_token: &str,
    ) -> Result<String> {
        let extra = |v: &Option<serde_json::Value>| v.as_ref().map_or(0, |v| v.to_string().len());
        let input_bytes: usize = messages
            .iter()
            .map(|m| m.role.len() + m.content.len() + extra(&m.tool_calls))
            .sum::<usize>()
            + tools.map_or(0, |t| t.to_string().len());
        // Copying the input a few times must not run out of fuel (1 fuel ~ 64 bytes).
        let fuel = BASE_FUEL.saturating_add((input_bytes as u64 / 64).saturating_mul(16));
        let mut env = self.env.clone();
        env.set_fuel(Some(fuel));
        let tmpl = env
            .get_template(TEMPLATE_NAME)
            .map_err(|e| anyhow!("chat template: {}", describe(&e)))?;
        let ctx = context! {
            messages => Value::from(minijinja::value::Serde(messages)),
            tools => tools.map(|t| Value::from(minijinja::value::Serde(t))),
            add_generation_prompt => add_generation_prompt,
            bos_token => bos_token,
            eos_token => eos_token,
        };
        tmpl.render(ctx)
            .map_err(|e| anyhow!("rendering the chat template failed: {}", describe(&e)))
    }
}

/// A one-line description of a template error, naming the budget when it ran out.
fn describe(e: &Error) -> String {
    let mut s = match e.kind() {
        ErrorKind::OutOfFuel => {
            "it exceeded its work budget (too many steps or too much output)".to_string()
        }
        _ => e.to_string(),
    };
    if let (Some(name), Some(line)) = (e.name(), e.line()) {
        if e.kind() == ErrorKind::OutOfFuel {
            s.push_str(&format!(" (in {name}:{line})"));
        }
    }
    s
}

/// `raise_exception(msg)`: aborts the render with `msg`.
fn raise_exception(msg: String) -> Result<Value, Error> {
    Err(Error::new(
        ErrorKind::InvalidOperation,
        format!("template raised an exception: {msg}"),
    ))
}

/// `strftime_now(format)`: the current UTC time formatted like C's `strftime` (chrono's
/// implementation). A format chrono cannot read is a template error, not a panic.
fn strftime_now(format: String) -> Result<String, Error> {
    strftime(&format, chrono::Utc::now())
}

/// Formats `t` with a `strftime` format.
fn strftime(format: &str, t: chrono::DateTime<chrono::Utc>) -> Result<String, Error> {
    use chrono::format::{Item, StrftimeItems};
    let items: Vec<Item<'_>> = StrftimeItems::new(format).collect();
    if items.iter().any(|i| matches!(i, Item::Error)) {
        return Err(Error::new(
            ErrorKind::InvalidOperation,
            format!("strftime_now: unsupported format {format:?}"),
        ));
    }
    Ok(t.format_with_items(items.into_iter()).to_string())
}

/// `tojson` as Hugging Face defines it (Python's `json.dumps`, non-ASCII kept): keyword
/// arguments `indent`, `sort_keys`, `ensure_ascii`; separators `", "` / `": "`.
fn tojson(state: &State, value: &Value, kwargs: Kwargs) -> Result<String, Error> {
    let indent: Option<Value> = kwargs.get("indent")?;
    let sort_keys: Option<bool> = kwargs.get("sort_keys")?;
    let ensure_ascii: Option<bool> = kwargs.get("ensure_ascii")?;
    kwargs.assert_all_used()?;
    let indent = match indent {
        None => None,
        Some(v) if v.is_none() || v.is_undefined() => None,
        Some(v) => {
            let n = if let Some(s) = v.as_str() {
                s.chars().count()
            } else {
                usize::try_from(i64::try_from(v)?.max(0)).unwrap_or(0)
            };
            Some(" ".repeat(n.min(64)))
        }
    };
    let mut w = JsonWriter {
        out: String::new(),
        indent,
        sort_keys: sort_keys.unwrap_or(false),
        ensure_ascii: ensure_ascii.unwrap_or(false),
    };
    w.value(value, 0)?;
    state.consume_fuel((w.out.len() / 64) as u64)?;
    Ok(w.out)
}

/// Serializes minijinja values the way Python's `json.dumps` lays them out.
struct JsonWriter {
    out: String,
    indent: Option<String>,
    sort_keys: bool,
    ensure_ascii: bool,
}

impl JsonWriter {
    fn check_size(&self) -> Result<(), Error> {
        if self.out.len() > MAX_JSON_BYTES {
            return Err(Error::new(
                ErrorKind::InvalidOperation,
                "tojson output is too large",
            ));
        }
        Ok(())
    }

    fn newline(&mut self, depth: usize) {
        if let Some(ind) = &self.indent {
            self.out.push('\n');
            for _ in 0..depth {
                self.out.push_str(ind);
            }
        }
    }

    fn string(&mut self, s: &str) {
        self.out.push('"');
        for c in s.chars() {
            match c {
                '"' => self.out.push_str("\\\""),
                '\\' => self.out.push_str("\\\\"),
                '\n' => self.out.push_str("\\n"),
                '\r' => self.out.push_str("\\r"),
                '\t' => self.out.push_str("\\t"),
                '\u{8}' => self.out.push_str("\\b"),
                '\u{c}' => self.out.push_str("\\f"),
                c if (c as u32) < 0x20 || (self.ensure_ascii && (c as u32) > 0x7e) => {
                    let mut buf = [0u16; 2];
                    for unit in c.encode_utf16(&mut buf) {
                        self.out.push_str(&format!("\\u{unit:04x}"));
                    }
                }
                c => self.out.push(c),
            }
        }
        self.out.push('"');
    }

    fn value(&mut self, v: &Value, depth: usize) -> Result<(), Error> {
        if depth > MAX_JSON_DEPTH {
            return Err(Error::new(
                ErrorKind::InvalidOperation,
                "tojson value is nested too deeply",
            ));
        }
        self.check_size()?;
        match v.kind() {
            ValueKind::Undefined | ValueKind::None => self.out.push_str("null"),
            ValueKind::Bool => self
                .out
                .push_str(if v.is_true() { "true" } else { "false" }),
            ValueKind::Number => {
                if let Ok(i) = i64::try_from(v.clone()) {
                    self.out.push_str(&i.to_string());
                } else if let Ok(f) = f64::try_from(v.clone()) {
                    if f.is_finite() {
                        let s = f.to_string();
                        self.out.push_str(&s);
                        if !s.contains(['.', 'e', 'E']) {
                            self.out.push_str(".0");
                        }
                    } else if f.is_nan() {
                        self.out.push_str("NaN");
                    } else if f > 0.0 {
                        self.out.push_str("Infinity");
                    } else {
                        self.out.push_str("-Infinity");
                    }
                } else {
                    self.out.push_str(&v.to_string());
                }
            }
            ValueKind::String => self.string(v.as_str().unwrap_or_default()),
            ValueKind::Map => {
                let mut keys: Vec<Value> = v.try_iter()?.collect();
                if self.sort_keys {
                    keys.sort();
                }
                if keys.is_empty() {
                    self.out.push_str("{}");
                    return Ok(());
                }
                self.out.push('{');
                for (i, k) in keys.iter().enumerate() {
                    if i > 0 {
                        self.out.push(',');
                        if self.indent.is_none() {
                            self.out.push(' ');
                        }
                    }
                    self.newline(depth + 1);
                    match k.as_str() {
                        Some(s) => self.string(s),
                        None => self.string(&k.to_string()),
                    }
                    self.out.push_str(": ");
                    let item = v.get_item(k)?;
                    self.value(&item, depth + 1)?;
                }
                self.newline(depth);
                self.out.push('}');
            }
            ValueKind::Seq | ValueKind::Iterable => {
                let items: Vec<Value> = v.try_iter()?.collect();
                if items.is_empty() {
                    self.out.push_str("[]");
                    return Ok(());
                }
                self.out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        self.out.push(',');
                        if self.indent.is_none() {
                            self.out.push(' ');
                        }
                    }
                    self.newline(depth + 1);
                    self.value(item, depth + 1)?;
                }
                self.newline(depth);
                self.out.push(']');
            }
            _ => {
                let s = v.to_string();
                self.string(&s);
            }
        }
        self.check_size()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    fn sys_user() -> Vec<Message> {
        vec![
            Message::new("system", "You are terse."),
            Message::new("user", "Hi there"),
        ]
    }

    /// The chat template stored in a model file; `None` (after printing why) when the
    /// model is not available and `KILN_REQUIRE_MODELS` is not set.
    fn model_template(file: &str) -> Option<Option<String>> {
        let dir = match std::env::var_os("KILN_MODELS") {
            Some(d) => std::path::PathBuf::from(d),
            None => std::path::PathBuf::from(std::env::var_os("HOME").unwrap_or_default())
                .join(".cache/kiln/models"),
        };
        let path = dir.join(file);
        let f = match std::fs::File::open(&path) {
            Ok(f) => f,
            Err(e) => {
                if std::env::var("KILN_REQUIRE_MODELS").as_deref() == Ok("1") {
                    panic!("model {} required but unavailable: {e}", path.display());
                }
                println!("skipped: model {} unavailable ({e})", path.display());
                return None;
            }
        };
        // SAFETY: the model file is opened read-only and not modified while mapped.
        let map = unsafe { memmap2::Mmap::map(&f) }.expect("mmap model");
        let g = kiln_sdk::gguf::Gguf::parse(&map).expect("parse gguf");
        let t = g.get_str("tokenizer.chat_template").expect("template key");
        Some(t.map(str::to_string))
    }

    #[test]
    fn smollm2_template_renders_chatml_with_system() {
        let Some(src) = model_template("smollm2-135m-instruct-q4_1.gguf") else {
            return;
        };
        let t = ChatTemplate::new(&src.expect("SmolLM2 has a template")).unwrap();
        let out = t
            .render(&sys_user(), true, "<|im_start|>", "<|im_end|>")
            .unwrap();
        assert_eq!(
            out,
            "<|im_start|>system\nYou are terse.<|im_end|>\n\
             <|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n"
        );
        // Without a system message the template adds its own.
        let out = t
            .render(&[Message::new("user", "Hi")], false, "", "")
            .unwrap();
        assert_eq!(
            out,
            "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging \
             Face<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
        );
    }

    #[test]
    fn qwen_templates_render_with_system() {
        for file in [
            "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
            "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
        ] {
            let Some(src) = model_template(file) else {
                continue;
            };
            let t = ChatTemplate::new(&src.expect("Qwen has a template")).unwrap();
            let out = t.render(&sys_user(), true, "", "<|im_end|>").unwrap();
            assert_eq!(
                out,
                "<|im_start|>system\nYou are terse.<|im_end|>\n\
                 <|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n",
                "{file}"
            );
            let out = t
                .render(
                    &[
                        Message::new("user", "Hi"),
                        Message::new("assistant", "Hello!"),
                        Message::new("user", "Bye"),
                    ],
                    true,
                    "",
                    "",
                )
                .unwrap();
            assert_eq!(
                out,
                "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful \
                 assistant.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n\
                 Hello!<|im_end|>\n<|im_start|>user\nBye<|im_end|>\n<|im_start|>assistant\n",
                "{file}"
            );
        }
    }

    #[test]
    fn gemma_has_no_template_and_chatml_fallback_renders() {
        if let Some(src) = model_template("gemma-3-270m-q4_k_m.gguf") {
            assert!(
                src.is_none(),
                "gemma-3-270m (base) GGUF carries no chat template"
            );
        }
        let out = ChatTemplate::chatml()
            .render(&sys_user(), true, "<bos>", "<eos>")
            .unwrap();
        assert_eq!(
            out,
            "<|im_start|>system\nYou are terse.<|im_end|>\n\
             <|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n"
        );
        let out = ChatTemplate::chatml()
            .render(&sys_user(), false, "", "")
            .unwrap();
        assert!(out.ends_with("Hi there<|im_end|>\n"), "{out:?}");
        let gemma = ChatTemplate::fallback("gemma3");
        let out = gemma.render(&sys_user(), true, "<bos>", "<eos>").unwrap();
        assert_eq!(
            out,
            "<bos><start_of_turn>user\nYou are terse.\n\nHi there<end_of_turn>\n\
             <start_of_turn>model\n"
        );
        let chat = [
            Message::new("user", "Hi"),
            Message::new("assistant", "Hello"),
            Message::new("user", "Bye"),
        ];
        let out = gemma.render(&chat, false, "", "").unwrap();
        assert_eq!(
            out,
            "<start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\nHello<end_of_turn>\n\
             <start_of_turn>user\nBye<end_of_turn>\n"
        );
        let out = ChatTemplate::fallback("llama")
            .render(&chat, false, "", "")
            .unwrap();
        assert!(
            out.starts_with("<|im_start|>user\nHi<|im_end|>\n"),
            "{out:?}"
        );
    }

    #[test]
    fn hf_style_template_features() {
        // A Gemma-3-like template: bos_token, raise_exception, trim/lstrip, pycompat methods.
        let src = "{{ bos_token }}
{%- if messages[0]['role'] == 'system' -%}
    {%- set first = messages[0]['content'] | trim + '\\n\\n' -%}
    {%- set rest = messages[1:] -%}
{%- else -%}
    {%- set first = '' -%}
    {%- set rest = messages -%}
{%- endif -%}
{%- for message in rest -%}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}
        {{ raise_exception('roles must alternate user/assistant') }}
    {%- endif -%}
    {%- set role = 'model' if message['role'] == 'assistant' else message['role'] -%}
    {{ '<start_of_turn>' + role + '\\n' + (first if loop.first else '') + message['content'].strip() + '<end_of_turn>\\n' }}
{%- endfor -%}
{%- if add_generation_prompt -%}{{ '<start_of_turn>model\\n' }}{%- endif -%}";
        let t = ChatTemplate::new(src).unwrap();
        let msgs = vec![
            Message::new("system", "Be brief. "),
            Message::new("user", "  Hello  "),
        ];
        let out = t.render(&msgs, true, "<bos>", "<eos>").unwrap();
        assert_eq!(
            out,
            "<bos><start_of_turn>user\nBe brief.\n\nHello<end_of_turn>\n<start_of_turn>model\n"
        );
        let bad = vec![Message::new("assistant", "x")];
        let err = t.render(&bad, true, "", "").unwrap_err().to_string();
        assert!(err.contains("roles must alternate"), "{err}");

        // trim_blocks / lstrip_blocks: block tags leave no blank lines or indentation.
        let t = ChatTemplate::new(
            "{% for m in messages %}\n    {% if m.role == 'user' %}\n[{{ m.content }}]\n    {% endif %}\n{% endfor %}\n",
        )
        .unwrap();
        let out = t.render(&sys_user(), false, "", "").unwrap();
        assert_eq!(out, "[Hi there]\n");

        // Python string methods and loop controls.
        let t = ChatTemplate::new(
            "{% for m in messages %}{% if m.content.startswith('You') %}{% continue %}{% endif %}\
             {{ m.content.split(' ')[0].upper() }}|{{ m.content.lstrip('H') }}{% endfor %}",
        )
        .unwrap();
        assert_eq!(t.render(&sys_user(), false, "", "").unwrap(), "HI|i there");
    }

    #[test]
    fn tojson_is_python_style() {
        let t = ChatTemplate::new(
            "{{ {'b': [1, 2.5, none, true], 'a': 'x<\"é'} | tojson }}|\
             {{ [1, {'k': 'v'}] | tojson(indent=2) }}|{{ 'é' | tojson(ensure_ascii=true) }}",
        )
        .unwrap();
        let out = t.render(&[], false, "", "").unwrap();
        assert_eq!(
            out,
            "{\"a\": \"x<\\\"é\", \"b\": [1, 2.5, null, true]}|\
             [\n  1,\n  {\n    \"k\": \"v\"\n  }\n]|\"\\u00e9\""
        );
    }

    #[test]
    fn strftime_formats_known_dates() {
        let at = |secs| chrono::DateTime::from_timestamp(secs, 0).unwrap();
        let f = |fmt: &str, secs| strftime(fmt, at(secs)).unwrap();
        // 2024-02-29 13:05:09 UTC, a Thursday.
        let t = 1_709_211_909;
        assert_eq!(f("%Y-%m-%d %H:%M:%S", t), "2024-02-29 13:05:09");
        assert_eq!(f("%d %b %Y", t), "29 Feb 2024");
        assert_eq!(
            f("%A %B %-d, %j %I%p %%", t),
            "Thursday February 29, 060 01PM %"
        );
        assert_eq!(f("%F %T %a", 0), "1970-01-01 00:00:00 Thu");
        assert_eq!(f("%D", 951_782_400), "02/29/00");
        // An unknown conversion is an error of the template, not a panic.
        let bad = ChatTemplate::new("{{ strftime_now('%Q') }}").unwrap();
        assert!(bad.render(&[], false, "", "").is_err());
        let t = ChatTemplate::new("{{ strftime_now('%Y') }}").unwrap();
        let year: i64 = t.render(&[], false, "", "").unwrap().parse().unwrap();
        assert!(year >= 2024, "{year}");
    }

    /// Renders `src` and expects a failure within a couple of seconds.
    fn assert_fails_fast(src: &str, needle: &str) {
        let start = Instant::now();
        let result = ChatTemplate::new(src).and_then(|t| t.render(&sys_user(), true, "", ""));
        let elapsed = start.elapsed();
        let err = match result {
            Ok(out) => panic!("hostile template rendered ({} bytes): {src}", out.len()),
            Err(e) => e.to_string(),
        };
        assert!(
            err.to_lowercase().contains(needle),
            "error for {src:?} should mention {needle:?}: {err}"
        );
        assert!(elapsed.as_secs_f64() < 3.0, "{src:?} took {elapsed:?}");
    }

    #[test]
    fn hostile_templates_fail_fast() {
        // Endless work: a huge range, nested loops, an unbounded while-like recursion.
        assert_fails_fast("{% for i in range(1000000000) %}x{% endfor %}", "range");
        assert_fails_fast(
            "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
            "budget",
        );
        // Deep recursion.
        assert_fails_fast(
            "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}",
            "recursion",
        );
        // Huge output and huge values.
        assert_fails_fast("{{ 'x' * 1000000000 }}", "budget");
        assert_fails_fast(
            "{% for i in range(100000) %}{{ 'y' * 100000 }}{% endfor %}",
            "budget",
        );
        assert_fails_fast(
            "{% set s = 'x' * 4000000 %}{{ s.replace('x', 'y' * 4000) }}",
            "budget",
        );
        assert_fails_fast(
            "{% set ns = namespace(s='ab') %}{% for i in range(64) %}{% set ns.s = ns.s + ns.s %}{% endfor %}{{ ns.s|length }}",
            "budget",
        );
        // No file access, explicit exceptions, parser depth.
        assert_fails_fast("{% include '/etc/passwd' %}", "not found");
        assert_fails_fast("{{ raise_exception('nope') }}", "nope");
        let deep = format!("{}1{}", "(".repeat(5000), ")".repeat(5000));
        assert_fails_fast(&format!("{{{{ {deep} }}}}"), "");
        assert!(ChatTemplate::new(&"x".repeat(MAX_SOURCE_BYTES + 1)).is_err());
    }

    #[test]
    fn large_legitimate_input_renders() {
        let big = "word ".repeat(2_000_000); // 10 MB
        let msgs = vec![Message::new("user", big.clone())];
        let out = ChatTemplate::chatml().render(&msgs, true, "", "").unwrap();
        assert!(out.len() > big.len());
    }

    /// gpt-oss's published template (macros, namespaces, loop slicing, `strftime_now`,
    /// `tojson`, `raise_exception`), read from the file `KILN_GPT_OSS_TEMPLATE` names (the
    /// `chat_template.jinja` of openai/gpt-oss-20b, or a gpt-oss GGUF's
    /// `tokenizer.chat_template`): third-party text is not kept in the repository. Without it
    /// the tests that need it say so and return.
    fn gpt_oss_template() -> Option<String> {
        let Some(path) = std::env::var_os("KILN_GPT_OSS_TEMPLATE") else {
            println!("skipped: set KILN_GPT_OSS_TEMPLATE to gpt-oss's chat_template.jinja");
            return None;
        };
        Some(std::fs::read_to_string(&path).expect("KILN_GPT_OSS_TEMPLATE is readable"))
    }

    /// The system header gpt-oss's template writes (today's date, medium reasoning).
    fn gpt_oss_system(tools: bool) -> String {
        let today = chrono::Utc::now().format("%Y-%m-%d");
        let calls = if tools {
            "\nCalls to these tools must go to the commentary channel: 'functions'."
        } else {
            ""
        };
        format!(
            "<|start|>system<|message|>You are ChatGPT, a large language model trained by OpenAI.\n\
             Knowledge cutoff: 2024-06\nCurrent date: {today}\n\nReasoning: medium\n\n\
             # Valid channels: analysis, commentary, final. Channel must be included for every \
             message.{calls}<|end|>"
        )
    }

    #[test]
    fn gpt_oss_template_renders() {
        let Some(src) = gpt_oss_template() else {
            return;
        };
        let t = ChatTemplate::new(&src).unwrap();
        let out = t
            .render(&sys_user(), true, "<|startoftext|>", "<|return|>")
            .unwrap();
        assert_eq!(
            out,
            format!(
                "{}<|start|>developer<|message|># Instructions\n\nYou are terse.\n\n<|end|>\
                 <|start|>user<|message|>Hi there<|end|><|start|>assistant",
                gpt_oss_system(false)
            )
        );
        // Earlier answers come back on the final channel; no developer message without a
        // system message.
        let chat = [
            Message::new("user", "Hi"),
            Message::new("assistant", "Hello!"),
            Message::new("user", "Bye"),
        ];
        let out = t.render(&chat, true, "", "").unwrap();
        assert_eq!(
            out,
            format!(
                "{}<|start|>user<|message|>Hi<|end|><|start|>assistant<|channel|>final<|message|>\
                 Hello!<|end|><|start|>user<|message|>Bye<|end|><|start|>assistant",
                gpt_oss_system(false)
            )
        );
        // An answer that carries channel markers is refused by the template itself.
        let bad = [
            Message::new("user", "Hi"),
            Message::new("assistant", "<|channel|>final<|message|>x"),
            Message::new("user", "Bye"),
        ];
        let err = t.render(&bad, true, "", "").unwrap_err().to_string();
        assert!(err.contains("<|channel|> tags"), "{err}");
    }

    #[test]
    fn gpt_oss_template_renders_tools_and_calls() {
        let Some(src) = gpt_oss_template() else {
            return;
        };
        let t = ChatTemplate::new(&src).unwrap();
        let tools = serde_json::json!([{"type": "function", "function": {
            "name": "get_weather", "description": "Current weather.",
            "parameters": {"type": "object", "properties": {
                "city": {"type": "string", "description": "City name"},
                "unit": {"type": "string", "enum": ["c", "f"]}},
                "required": ["city"]}}}]);
        let mut call = Message::new("assistant", "");
        call.tool_calls = Some(serde_json::json!([{"id": "c1", "type": "function",
            "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]));
        call.thinking = Some("Look it up.".into());
        let mut result = Message::new("tool", "sunny");
        result.tool_call_id = Some("c1".into());
        let msgs = [Message::new("user", "Weather in Paris?"), call, result];
        let out = t
            .render_with_tools(&msgs, Some(&tools), true, "", "")
            .unwrap();
        assert_eq!(
            out,
            format!(
                "{}<|start|>developer<|message|># Tools\n\n## functions\n\nnamespace functions {{\n\n\
                 // Current weather.\ntype get_weather = (_: {{\n// City name\ncity: string,\n\
                 unit?: \"c\" | \"f\",\n}}) => any;\n\n}} // namespace functions<|end|>\
                 <|start|>user<|message|>Weather in Paris?<|end|>\
                 <|start|>assistant<|channel|>analysis<|message|>Look it up.<|end|>\
                 <|start|>assistant to=functions.get_weather<|channel|>commentary json<|message|>\
                 {{\"city\": \"Paris\"}}<|call|>\
                 <|start|>functions.get_weather to=assistant<|channel|>commentary<|message|>\
                 \"sunny\"<|end|><|start|>assistant",
                gpt_oss_system(true)
            )
        );
    }

    #[test]
    fn messages_round_trip_through_serde() {
        let m: Message = serde_json::from_str(r#"{"role":"user","content":"hi"}"#).unwrap();
        assert_eq!(m, Message::new("user", "hi"));
        assert_eq!(
            serde_json::to_string(&m).unwrap(),
            r#"{"role":"user","content":"hi"}"#
        );
    }
}
